//! OpenHands' StuckDetector rules over the episode's history.
//!
//! The rules (OpenHands `controller/stuck.py`, documented in the SDK's agent-stuck-detector
//! guide), over the events since the task prompt:
//! 1. the last 4 actions are the same and so are the last 4 observations;
//! 2. the last 3 actions are the same and the last 3 observations are all errors;
//! 3. monologue: the last 3 plain messages of the agent (replies with no call) are the same
//!    and no observation came between them;
//! 4. ping-pong: the last 6 steps alternate A, B, A, B, A, B in both actions and
//!    observations (OpenHands looks at the last 6 action/observation pairs).
//!
//! "Same action" compares the parsed call (the reasoning text around it is ignored);
//! observations compare their full text. OpenHands' fifth trigger (repeated context-window
//! errors) does not arise here: the first one ends the rollout as `context_exceeded`.

use crate::action::Action;

/// One event of the history, as the detector sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A tool call and what it returned.
    Step { action: Action, observation: String, is_error: bool },
    /// A reply with no function call at all (its trimmed text).
    Message(String),
}

/// Which rule fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StuckRule {
    RepeatedActionObservation,
    RepeatedActionError,
    Monologue,
    PingPong,
}

impl StuckRule {
    pub fn describe(self) -> &'static str {
        match self {
            StuckRule::RepeatedActionObservation => "the same action and observation 4 times in a row",
            StuckRule::RepeatedActionError => "the same action failing 3 times in a row",
            StuckRule::Monologue => "the same message 3 times with no action in between",
            StuckRule::PingPong => "alternating between two actions for 6 steps",
        }
    }
}

/// The history and the rules over it.
#[derive(Debug, Default)]
pub struct StuckDetector {
    events: Vec<Event>,
}

impl StuckDetector {
    pub fn new() -> StuckDetector {
        StuckDetector::default()
    }

    pub fn push(&mut self, event: Event) {
        self.events.push(event);
    }

    /// The first rule that fires on the history as it is now.
    pub fn check(&self) -> Option<StuckRule> {
        let steps: Vec<(&Action, &str, bool)> = self
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Step { action, observation, is_error } => Some((action, observation.as_str(), *is_error)),
                Event::Message(_) => None,
            })
            .collect();
        if let Some(last4) = steps.len().checked_sub(4).map(|i| &steps[i..]) {
            if last4.iter().all(|s| s.0 == last4[0].0 && s.1 == last4[0].1) {
                return Some(StuckRule::RepeatedActionObservation);
            }
        }
        if let Some(last3) = steps.len().checked_sub(3).map(|i| &steps[i..]) {
            if last3.iter().all(|s| s.0 == last3[0].0 && s.2) {
                return Some(StuckRule::RepeatedActionError);
            }
        }
        if self.is_monologue() {
            return Some(StuckRule::Monologue);
        }
        if let Some(last6) = steps.len().checked_sub(6).map(|i| &steps[i..]) {
            let (a, b) = (last6[0], last6[1]);
            let alternates = last6.iter().enumerate().all(|(i, s)| {
                let want = if i % 2 == 0 { a } else { b };
                s.0 == want.0 && s.1 == want.1
            });
            if alternates && (a.0 != b.0 || a.1 != b.1) {
                return Some(StuckRule::PingPong);
            }
        }
        None
    }

    fn is_monologue(&self) -> bool {
        let messages: Vec<(usize, &str)> = self
            .events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Event::Message(m) => Some((i, m.as_str())),
                Event::Step { .. } => None,
            })
            .collect();
        let Some(last3) = messages.len().checked_sub(3).map(|i| &messages[i..]) else {
            return false;
        };
        let same = last3.iter().all(|(_, m)| *m == last3[0].1);
        let (from, to) = (last3[0].0, last3[2].0);
        let observation_between = self.events[from + 1..to].iter().any(|e| matches!(e, Event::Step { .. }));
        same && !observation_between
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(cmd: &str, obs: &str) -> Event {
        Event::Step { action: Action::ExecuteBash { command: cmd.into() }, observation: obs.into(), is_error: false }
    }

    fn err(cmd: &str, obs: &str) -> Event {
        Event::Step { action: Action::ExecuteBash { command: cmd.into() }, observation: obs.into(), is_error: true }
    }

    fn msg(m: &str) -> Event {
        Event::Message(m.into())
    }

    fn check(events: Vec<Event>, expect: Option<StuckRule>) {
        let mut d = StuckDetector::new();
        for e in events.clone() {
            d.push(e);
        }
        assert_eq!(d.check(), expect, "events: {events:?}");
    }

    #[test]
    fn rules() {
        use StuckRule::*;
        // Rule 1: 4 identical action+observation; 3 is not enough.
        check(vec![step("ls", "a"), step("ls", "a"), step("ls", "a")], None);
        check(vec![step("ls", "a"), step("ls", "a"), step("ls", "a"), step("ls", "a")], Some(RepeatedActionObservation));
        check(vec![step("ls", "a"), step("ls", "a"), step("ls", "a"), step("ls", "b")], None);
        check(vec![step("ls", "a"), step("pwd", "a"), step("ls", "a"), step("ls", "a")], None);
        // Messages between steps do not break rule 1 (OpenHands filters them out).
        check(vec![step("ls", "a"), msg("hm"), step("ls", "a"), step("ls", "a"), step("ls", "a")], Some(RepeatedActionObservation));
        // Rule 2: the same action failing 3 times (observations may differ).
        check(vec![err("x", "e1"), err("x", "e2"), err("x", "e3")], Some(RepeatedActionError));
        check(vec![err("x", "e1"), step("x", "ok"), err("x", "e3")], None);
        check(vec![err("x", "e1"), err("y", "e2"), err("x", "e3")], None);
        // Rule 3: monologue.
        check(vec![msg("I think"), msg("I think"), msg("I think")], Some(Monologue));
        check(vec![msg("I think"), msg("I think")], None);
        check(vec![msg("I think"), msg("I think!"), msg("I think")], None);
        check(vec![msg("I think"), step("ls", "a"), msg("I think"), msg("I think")], None);
        // Rule 4: ping-pong over 6 steps.
        let ab = |n: usize| (0..n).map(|i| if i % 2 == 0 { step("ls", "a") } else { step("pwd", "/testbed") }).collect::<Vec<_>>();
        check(ab(5), None);
        check(ab(6), Some(PingPong));
        let mut broken = ab(6);
        broken[3] = step("pwd", "/tmp");
        check(broken, None);
        // Varied work is fine.
        check(vec![step("ls", "a"), step("cat x", "b"), step("ls", "a"), step("grep y", "c"), step("ls", "a"), step("cat x", "b")], None);
    }
}
