//! Which train tasks a policy-sampling stage of the RFT loop samples (`[sampling]
//! curriculum` and `tasks_per_iteration`).
//!
//! A task's state is what happened the last time an iteration sampled it: solved in every
//! rollout (always), in some (sometimes), in none (never), or not sampled yet. `skip_solved`
//! leaves the always-solved ones out (they teach nothing new). With a budget of N tasks per
//! iteration, the stage takes, in this order: tasks solved sometimes (the policy is on the
//! edge there, and its resolved rollouts are the ones worth training on), tasks not sampled
//! yet, tasks never solved, and last (curriculum `all` only) tasks always solved; within a
//! group, those sampled longest ago first, then a fixed order drawn from the run's seed. The
//! picked tasks keep the split's order.

use std::collections::BTreeMap;

use swegym_sample::Rollout;
use swegym_schema::Task;

/// What one sampling stage takes, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    pub tasks: Vec<Task>,
    pub counts: PickCounts,
}

/// The picked tasks by their state when last sampled, and the tasks left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PickCounts {
    pub sometimes: usize,
    pub unsampled: usize,
    pub never: usize,
    pub always: usize,
    /// Left out by `skip_solved` (solved in every rollout when last sampled).
    pub skipped_solved: usize,
    /// Left out by the per-iteration budget.
    pub over_budget: usize,
}

impl PickCounts {
    /// One line for the run's log: "60 of 226 train tasks: 20 solved sometimes, …".
    pub fn line(&self, total: usize) -> String {
        let picked = self.sometimes + self.unsampled + self.never + self.always;
        let mut s = format!(
            "{picked} of {total} train tasks: {} solved sometimes, {} not sampled yet, {} never solved, {} always solved when last sampled",
            self.sometimes, self.unsampled, self.never, self.always
        );
        if self.skipped_solved > 0 {
            s.push_str(&format!("; skipped {} solved in every rollout", self.skipped_solved));
        }
        if self.over_budget > 0 {
            s.push_str(&format!("; {} left for later (tasks_per_iteration)", self.over_budget));
        }
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Sometimes,
    Unsampled,
    Never,
    Always,
}

/// Picks from `tasks` given the graded train rollouts of the earlier iterations
/// (`history[j]` = iteration j's; an iteration that sampled nothing is an empty list).
pub fn pick(tasks: &[Task], history: &[Vec<Rollout>], skip_solved: bool, budget: Option<usize>, seed: u64) -> Pick {
    // (state, iteration last sampled) per task sampled before.
    let mut last: BTreeMap<&str, (State, usize)> = BTreeMap::new();
    for (j, rollouts) in history.iter().enumerate() {
        for (id, outcome) in swegym_schema::per_task(rollouts) {
            let state = match outcome.resolved {
                r if r >= 1.0 => State::Always,
                r if r > 0.0 => State::Sometimes,
                _ => State::Never,
            };
            if let Some(task) = tasks.iter().find(|t| t.instance_id == id) {
                last.insert(task.instance_id.as_str(), (state, j));
            }
        }
    }
    let mut counts = PickCounts::default();
    // (index in tasks, state, sort key)
    let mut eligible = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        let (state, when) = match last.get(t.instance_id.as_str()) {
            Some(&(s, j)) => (s, j),
            None => (State::Unsampled, 0),
        };
        if skip_solved && state == State::Always {
            counts.skipped_solved += 1;
            continue;
        }
        eligible.push((i, state, (state, when, seeded_rank(seed, &t.instance_id))));
    }
    if let Some(n) = budget {
        if eligible.len() > n {
            eligible.sort_by_key(|e| e.2);
            counts.over_budget = eligible.len() - n;
            eligible.truncate(n);
            eligible.sort_by_key(|e| e.0);
        }
    }
    for (_, state, _) in &eligible {
        match state {
            State::Sometimes => counts.sometimes += 1,
            State::Unsampled => counts.unsampled += 1,
            State::Never => counts.never += 1,
            State::Always => counts.always += 1,
        }
    }
    Pick { tasks: eligible.into_iter().map(|(i, _, _)| tasks[i].clone()).collect(), counts }
}

/// A fixed pseudo-random rank of a task under `seed` (FNV-1a over the id, then splitmix64),
/// so a budgeted pick does not follow the split's file order (files group by library).
fn seeded_rank(seed: u64, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = (seed ^ h).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> Task {
        serde_json::from_value(serde_json::json!({
            "instance_id": id, "repo": "o/r", "base_commit": "0", "problem_statement": "p", "test_patch": "", "version": "1",
            "FAIL_TO_PASS": ["t"], "PASS_TO_PASS": []
        }))
        .unwrap()
    }

    fn rollout(id: &str, sample_idx: u32, resolved: bool) -> Rollout {
        let mut r: Rollout = serde_json::from_value(serde_json::json!({
            "instance_id": id, "sample_idx": sample_idx, "iteration": 0, "policy_id": "p", "messages": [], "patch": "",
            "empty_patch": false, "exit_reason": "submitted", "turns": 1, "prompt_tokens": 0, "completion_tokens": 0,
            "wall_seconds": 0.0, "temperature": 1.0, "seed": 0,
        }))
        .unwrap();
        r.resolved = Some(resolved);
        r
    }

    fn ids(p: &Pick) -> Vec<&str> {
        p.tasks.iter().map(|t| t.instance_id.as_str()).collect()
    }

    #[test]
    fn without_a_budget_it_is_the_old_skip_list() {
        let tasks: Vec<Task> = ["a", "b", "c", "d"].iter().map(|i| task(i)).collect();
        let it0 = vec![rollout("a", 0, true), rollout("a", 1, true), rollout("b", 0, true), rollout("b", 1, false), rollout("c", 0, false)];
        let p = pick(&tasks, std::slice::from_ref(&it0), true, None, 0);
        assert_eq!(ids(&p), ["b", "c", "d"]);
        assert_eq!(p.counts, PickCounts { sometimes: 1, unsampled: 1, never: 1, always: 0, skipped_solved: 1, over_budget: 0 });
        // curriculum all: everything, always-solved included
        let p = pick(&tasks, &[it0], false, None, 0);
        assert_eq!(ids(&p), ["a", "b", "c", "d"]);
        assert_eq!(p.counts.always, 1);
        // a task solved always, then never, is eligible again (the last time counts)
        let later = vec![rollout("a", 0, false)];
        let p = pick(&tasks, &[vec![rollout("a", 0, true)], later], true, None, 0);
        assert_eq!(p.counts.skipped_solved, 0);
        assert_eq!(p.counts.never, 1);
    }

    #[test]
    fn a_budget_takes_sometimes_then_unsampled_then_never_in_split_order() {
        let tasks: Vec<Task> = (0..10).map(|i| task(&format!("t{i}"))).collect();
        let it0 = vec![rollout("t9", 0, true), rollout("t9", 1, false), rollout("t0", 0, false), rollout("t5", 0, true)];
        let p = pick(&tasks, std::slice::from_ref(&it0), true, Some(3), 7);
        assert_eq!(p.tasks.len(), 3);
        assert_eq!(p.counts.sometimes, 1);
        assert_eq!(p.counts.unsampled, 2);
        assert_eq!(p.counts.over_budget, 6);
        assert!(ids(&p).contains(&"t9"));
        assert!(!ids(&p).contains(&"t0"), "never-solved tasks come after the unsampled ones");
        let order: Vec<usize> = ids(&p).iter().map(|i| i[1..].parse().unwrap()).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "the split's order: {order:?}");
        // deterministic under one seed; the unsampled ones differ with the seed (some seed)
        assert_eq!(pick(&tasks, std::slice::from_ref(&it0), true, Some(3), 7), p);
        assert!((0..20).any(|s| ids(&pick(&tasks, std::slice::from_ref(&it0), true, Some(3), s)) != ids(&p)));
        // the first iteration with a budget: a seeded share of the split, all unsampled
        let first = pick(&tasks, &[], true, Some(4), 7);
        assert_eq!(first.counts, PickCounts { unsampled: 4, over_budget: 6, ..PickCounts::default() });
        // the next takes the ones not sampled yet before re-sampling (rotation)
        let graded: Vec<Rollout> = first.tasks.iter().map(|t| rollout(&t.instance_id, 0, false)).collect();
        let second = pick(&tasks, &[graded], true, Some(4), 7);
        assert!(second.tasks.iter().all(|t| !first.tasks.contains(t)), "{:?} then {:?}", ids(&first), ids(&second));
        assert!(second.counts.line(10).starts_with("4 of 10 train tasks: 0 solved sometimes, 4 not sampled yet"));
    }
}
