//! The oracle: knows the task's gold patch and plays the trajectory an expert would —
//! look at the repository, `grep -n` a symbol the fix touches, view the region, make the gold
//! edits with `str_replace_editor`, run the tests of the failing test files, finish. Its
//! rollouts are the warm-start (off-policy) SFT data for models too weak to solve anything
//! yet, as SWE-Gym used gpt-4o / Claude trajectories.
//!
//! Each gold hunk becomes a `str_replace` whose `old_str` is the changed lines with one line
//! of context on each side. If the editor refuses it (not unique, not found), the next try
//! uses the whole hunk; if that fails too, the hunk goes in through `git apply` of a
//! heredoc. New files are `create`d, deleted ones `rm`ed, renames and binary sections
//! applied with `git apply`. The policy keeps no state: the step and try are replayed from
//! the conversation (each earlier reply and its observation), so one oracle serves many
//! concurrent rollouts.
//!
//! With a slip rate ([`OraclePolicy::with_slips`]) it is an imperfect expert: in that share
//! of rollouts (drawn from the rollout's seed, so a rerun slips the same way) it either
//! makes a near-miss edit (one changed line of the fix comes out with a flipped comparison,
//! operator, boolean, identity or membership test, `min`/`max`, `elif`, a negated return
//! value, a call's two arguments swapped or an integer off by one, in every try of that
//! edit) or stops editing before the fix is complete, then runs the tests and finishes as
//! usual. Its thoughts are
//! the same either way; only the edit and what the tools answer differ. This gives rollouts
//! with mixed outcomes on machines where no model resolves a task yet — what a verifier
//! (issue: Best@k) is trained and measured on — with the outcome always decided by the
//! real evaluation, not by the oracle.

use swegym_schema::patch::{split_file_diffs, FileDiff};
use swegym_schema::{Role, Task};

use super::{Completion, Policy, PolicyError, PolicyRequest};
use crate::action::{Action, EditorArgs, EditorCommand};
use crate::prompt::Scaffold;

const TESTBED: &str = swegym_sandbox::TESTBED;

/// The expert policy; see the module documentation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OraclePolicy {
    slip_rate: f64,
    scaffold: Scaffold,
}

impl OraclePolicy {
    /// The exact expert: every rollout makes the gold edits.
    pub fn exact() -> Self {
        OraclePolicy { slip_rate: 0.0, scaffold: Scaffold::OpenHands }
    }

    /// The same expert playing the trajectory the scaffold's agent would: with
    /// [`Scaffold::Compact`] it views a few lines around the first change, makes each edit
    /// (one changed line: the bare line as `old_str`), and finishes — no exploring, no test
    /// run, no thoughts, so that a small model's SFT targets are short.
    pub fn with_scaffold(self, scaffold: Scaffold) -> Self {
        OraclePolicy { scaffold, ..self }
    }

    /// An expert that slips in a `rate` share of its rollouts (0 ≤ rate ≤ 1).
    pub fn with_slips(rate: f64) -> Result<Self, String> {
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("the oracle's slip rate must be in [0, 1], got {rate}"));
        }
        Ok(OraclePolicy { slip_rate: rate, scaffold: Scaffold::OpenHands })
    }
}

/// How a rollout of a slipping oracle goes wrong; the numbers pick where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slip {
    None,
    /// One changed line of one gold hunk is replaced by a near miss ([`near_misses`]).
    WrongEdit(u64),
    /// The edits from one gold hunk on are left out (from the first: an empty patch).
    StopEarly(u64),
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The slip of the rollout with this seed: none in `1 - rate` of seeds; otherwise a wrong
/// edit twice as often as stopping early. No seed, no slip.
fn slip_for(rate: f64, seed: Option<u64>) -> Slip {
    let Some(seed) = seed.filter(|_| rate > 0.0) else { return Slip::None };
    let a = splitmix(seed ^ 0x0a3c_1e55_0f0a_c1e5);
    if (a >> 11) as f64 / (1u64 << 53) as f64 >= rate {
        return Slip::None;
    }
    let b = splitmix(a);
    if b % 3 == 2 {
        Slip::StopEarly(b / 3)
    } else {
        Slip::WrongEdit(b / 3)
    }
}

/// The rewrites a near miss is made of: (text in the line, its replacement), the first
/// occurrence of each.
const NEAR_MISSES: &[(&str, &str)] = &[
    (" < ", " <= "),
    (" <= ", " < "),
    (" > ", " >= "),
    (" >= ", " > "),
    (" == ", " != "),
    (" != ", " == "),
    (" and ", " or "),
    (" or ", " and "),
    (" is not ", " is "),
    (" is ", " is not "),
    ("True", "False"),
    ("False", "True"),
    (" + ", " - "),
    (" - ", " + "),
    (" * ", " // "),
    ("+=", "-="),
    ("-=", "+="),
    (" not in ", " in "),
    (" in ", " not in "),
    ("max(", "min("),
    ("min(", "max("),
    ("elif ", "if "),
    ("return ", "return not "),
];

/// One hunk of a file section.
#[derive(Debug, Clone, PartialEq)]
struct Hunk {
    old_start: usize,
    old_count: usize,
    /// The function context after the second `@@`.
    context: String,
    /// (' ' | '-' | '+', line text without the newline).
    lines: Vec<(char, String)>,
    /// The hunk as diff text (header included).
    text: String,
}

impl Hunk {
    /// (old, new) over `lines[from..to]`.
    fn strings(&self, from: usize, to: usize) -> (String, String) {
        let side = |keep: char| {
            self.lines[from..to].iter().filter(|(k, _)| *k == ' ' || *k == keep).map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")
        };
        (side('-'), side('+'))
    }

    /// One changed line (one removed, one added, the same indentation): the two lines
    /// without their indentation.
    fn one_line(&self) -> Option<(String, String)> {
        let removed: Vec<&String> = self.lines.iter().filter(|(k, _)| *k == '-').map(|(_, l)| l).collect();
        let added: Vec<&String> = self.lines.iter().filter(|(k, _)| *k == '+').map(|(_, l)| l).collect();
        let ([old], [new]) = (removed.as_slice(), added.as_slice()) else { return None };
        let indent = |l: &str| l.len() - l.trim_start().len();
        (indent(old) == indent(new) && !old.trim().is_empty()).then(|| (old.trim().to_string(), new.trim().to_string()))
    }

    /// The 1-based line (old side) of the first changed line.
    fn first_changed_line(&self) -> usize {
        self.old_start + self.lines.iter().take_while(|(k, _)| *k == ' ').count()
    }

    /// The changed lines with one context line on each side.
    fn tight(&self) -> (String, String) {
        let first = self.lines.iter().position(|(k, _)| *k != ' ').unwrap_or(0);
        let last = self.lines.iter().rposition(|(k, _)| *k != ' ').unwrap_or(self.lines.len().saturating_sub(1));
        self.strings(first.saturating_sub(1), (last + 2).min(self.lines.len()))
    }

    fn full(&self) -> (String, String) {
        self.strings(0, self.lines.len())
    }

    /// Line `i` (an added line) becomes `text`, in `lines` and in the diff text. Added
    /// lines equal to it earlier in the hunk keep theirs: the diff text's `n`-th such line
    /// is `lines`' `n`-th (consecutive equal lines share the newline between them, so
    /// each search starts one byte after the last match).
    fn replace_line(&mut self, i: usize, text: String) {
        let line = &self.lines[i].1;
        let earlier = self.lines[..i].iter().filter(|(k, l)| *k == '+' && l == line).count();
        let pattern = format!("\n+{line}\n");
        let mut at = None;
        let mut from = 0;
        for _ in 0..=earlier {
            at = self.text[from..].find(&pattern).map(|p| from + p);
            match at {
                Some(p) => from = p + 1,
                None => break,
            }
        }
        if let Some(at) = at {
            self.text.replace_range(at..at + pattern.len(), &format!("\n+{text}\n"));
        }
        self.lines[i].1 = text;
    }
}

/// Near misses of a hunk's added lines: (line index, the line rewritten by one of
/// [`NEAR_MISSES`], [`shift_integer`] or [`swap_arguments`]), none equal to a removed line
/// (that would undo the edit instead of getting it wrong).
fn near_misses(hunk: &Hunk) -> Vec<(usize, String)> {
    let removed: Vec<&str> = hunk.lines.iter().filter(|(k, _)| *k == '-').map(|(_, l)| l.as_str()).collect();
    let mut out = Vec::new();
    for (i, (kind, line)) in hunk.lines.iter().enumerate() {
        if *kind != '+' || !hunk.text.contains(&format!("\n+{line}\n")) {
            continue;
        }
        // ` in ` of a loop or of ` not in ` is no comparison to flip
        let flippable = |from: &str| {
            line.contains(from) && !(from == " in " && (line.contains(" not in ") || line.trim_start().starts_with("for "))) && !(from == " is " && line.contains(" is not "))
        };
        let mut candidates: Vec<String> = NEAR_MISSES.iter().filter(|(from, _)| flippable(from)).map(|(from, to)| line.replacen(from, to, 1)).collect();
        candidates.extend(shift_integer(line));
        candidates.extend(swap_arguments(line));
        for c in candidates {
            if c != *line && !removed.contains(&c.as_str()) && !out.iter().any(|(j, o): &(usize, String)| *j == i && *o == c) {
                out.push((i, c));
            }
        }
    }
    out
}

/// `line` with its first integer literal (digits not part of a name or a float) one larger,
/// and one smaller (0 becomes -1; a negative literal does not become -0).
fn shift_integer(line: &str) -> Vec<String> {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'.')) {
            let end = (i..b.len()).find(|&j| !b[j].is_ascii_digit()).unwrap_or(b.len());
            let next = b.get(end).copied();
            if !next.is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b'.') && end - i <= 9 {
                let Ok(n) = line[i..end].parse::<u64>() else { return Vec::new() };
                let negative = i > 0 && b[i - 1] == b'-';
                let with = |v: String| format!("{}{v}{}", &line[..i], &line[end..]);
                let mut out = vec![with((n + 1).to_string())];
                match (n, negative) {
                    (0, false) => out.push(with("-1".to_string())),
                    (0 | 1, true) => {}
                    _ => out.push(with((n - 1).to_string())),
                }
                return out;
            }
            i = end;
        } else {
            i += 1;
        }
    }
    Vec::new()
}

/// `line` with the two arguments of its first two-argument call swapped (`f(a, b)` →
/// `f(b, a)`; arguments without brackets, quotes or keywords).
fn swap_arguments(line: &str) -> Option<String> {
    let mut from = 0;
    while let Some(open) = line[from..].find('(').map(|o| from + o) {
        from = open + 1;
        if open == 0 || !line.as_bytes()[open - 1].is_ascii_alphanumeric() && line.as_bytes()[open - 1] != b'_' {
            continue; // a parenthesised expression, not a call
        }
        let close = line[open + 1..].find(')').map(|c| open + 1 + c)?;
        let inner = &line[open + 1..close];
        if inner.contains(['(', '[', '{', '"', '\'', '=']) {
            continue;
        }
        if let Some((a, b)) = inner.split_once(',') {
            let (a, b) = (a.trim(), b.trim());
            if !a.is_empty() && !b.is_empty() && !b.contains(',') && a != b {
                return Some(format!("{}{b}, {a}{}", &line[..open + 1], &line[close..]));
            }
        }
    }
    None
}

/// Makes `steps` go wrong as `slip` says. A plan without [`Step::Edit`]s (only whole-file
/// changes) does not slip.
fn apply_slip(steps: &mut Vec<Step>, slip: Slip) {
    let edits: Vec<usize> = steps.iter().enumerate().filter(|(_, s)| matches!(s, Step::Edit { .. })).map(|(i, _)| i).collect();
    if edits.is_empty() {
        return;
    }
    match slip {
        Slip::None => {}
        Slip::WrongEdit(pick) => {
            let mut candidates: Vec<(usize, usize, String)> = Vec::new();
            for &s in &edits {
                if let Step::Edit { hunk, .. } = &steps[s] {
                    candidates.extend(near_misses(hunk).into_iter().map(|(line, text)| (s, line, text)));
                }
            }
            if candidates.is_empty() {
                return apply_slip(steps, Slip::StopEarly(pick));
            }
            let (s, line, text) = candidates.swap_remove((pick % candidates.len() as u64) as usize);
            if let Step::Edit { hunk, .. } = &mut steps[s] {
                hunk.replace_line(line, text);
            }
        }
        Slip::StopEarly(pick) => {
            let cut = edits[(pick % edits.len() as u64) as usize];
            let kept: Vec<Step> = std::mem::take(steps).into_iter().enumerate().filter(|(i, s)| !(matches!(s, Step::Edit { .. }) && *i >= cut)).map(|(_, s)| s).collect();
            *steps = kept;
        }
    }
}

fn parse_hunks(section: &str) -> Vec<Hunk> {
    let mut hunks: Vec<Hunk> = Vec::new();
    for line in section.split_inclusive('\n') {
        let bare = line.trim_end_matches('\n');
        if let Some(rest) = bare.strip_prefix("@@ -") {
            let (ranges, context) = rest.split_once(" @@").unwrap_or((rest, ""));
            let old = ranges.split(' ').next().unwrap_or("1");
            let (start, count) = match old.split_once(',') {
                Some((s, c)) => (s.parse().unwrap_or(1), c.parse().unwrap_or(1)),
                None => (old.parse().unwrap_or(1), 1),
            };
            hunks.push(Hunk { old_start: start, old_count: count, context: context.trim().to_string(), lines: Vec::new(), text: line.to_string() });
        } else if let Some(h) = hunks.last_mut() {
            h.text.push_str(line);
            match bare.chars().next() {
                Some(k @ (' ' | '-' | '+')) => h.lines.push((k, bare[1..].to_string())),
                None => h.lines.push((' ', String::new())),
                _ => {} // "\ No newline at end of file"
            }
        }
    }
    hunks
}

/// One step of the plan; edits have up to three renderings (tries).
#[derive(Debug, Clone)]
enum Step {
    Act { thought: String, action: Action },
    /// `compact`: the first try is the bare changed line ([`Hunk::one_line`]), no thoughts.
    Edit { path: String, hunk: Hunk, header: String, compact: bool },
}

impl Step {
    fn tries(&self) -> usize {
        match self {
            Step::Act { .. } => 1,
            Step::Edit { compact: false, .. } => 3,
            Step::Edit { compact: true, .. } => 4,
        }
    }

    fn render(&self, attempt: usize) -> String {
        let (thought, action) = match self {
            Step::Act { thought, action } => (thought.clone(), action.clone()),
            Step::Edit { path, hunk, header, compact } => {
                let abs = format!("{TESTBED}/{path}");
                let editor = |(old, new): (String, String)| {
                    Action::StrReplaceEditor(EditorArgs {
                        command: EditorCommand::StrReplace,
                        path: abs.clone(),
                        file_text: None,
                        old_str: Some(old),
                        new_str: Some(new),
                        insert_line: None,
                        view_range: None,
                    })
                };
                if *compact {
                    // Without thoughts; the bare line first, then the usual tries.
                    let action = match (attempt, hunk.one_line()) {
                        (0, Some(pair)) => editor(pair),
                        (0 | 1, _) => editor(hunk.tight()),
                        (2, _) => editor(hunk.full()),
                        _ => Action::ExecuteBash { command: git_apply(&format!("{header}{}", hunk.text)) },
                    };
                    return action.render();
                }
                match attempt {
                    0 => (format!("Now I'll make the change in `{path}` around line {}.", hunk.old_start), editor(hunk.tight())),
                    1 => ("That snippet was not unique; I'll include more surrounding context.".to_string(), editor(hunk.full())),
                    _ => (
                        "The editor could not place this change; I'll apply it as a patch instead.".to_string(),
                        Action::ExecuteBash { command: git_apply(&format!("{header}{}", hunk.text)) },
                    ),
                }
            }
        };
        if thought.is_empty() {
            return action.render();
        }
        format!("{thought}\n{}", action.render())
    }
}

fn git_apply(patch: &str) -> String {
    format!("cd {TESTBED} && git apply --verbose <<'SWEGYM_PATCH_EOF'\n{}SWEGYM_PATCH_EOF", if patch.ends_with('\n') { patch.to_string() } else { format!("{patch}\n") })
}

/// A word of the fix to grep for: the function named in the first hunk header, else the
/// longest identifier of the first changed line.
fn symbol(hunk: &Hunk) -> Option<String> {
    let ctx = hunk.context.as_str();
    for kw in ["def ", "class "] {
        if let Some(i) = ctx.find(kw) {
            let name: String = ctx[i + kw.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                return Some(format!("{kw}{name}"));
            }
        }
    }
    let line = hunk.lines.iter().find(|(k, _)| *k != ' ')?;
    line.1
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.len() >= 4 && !w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .max_by_key(|w| w.len())
        .map(str::to_string)
}

fn view(path: String, range: Option<Vec<i64>>) -> Action {
    Action::StrReplaceEditor(EditorArgs { command: EditorCommand::View, path, file_text: None, old_str: None, new_str: None, insert_line: None, view_range: range })
}

/// The whole trajectory for a task, as the scaffold's agent plays it.
fn plan(task: &Task, scaffold: Scaffold) -> Result<Vec<Step>, PolicyError> {
    let files: Vec<FileDiff> = split_file_diffs(&task.patch).into_iter().filter(FileDiff::changes_content).collect();
    if files.is_empty() {
        return Err(PolicyError::Unsupported(format!("{}: the oracle needs a gold patch and this task has none", task.instance_id)));
    }
    match scaffold {
        Scaffold::OpenHands => Ok(expert_plan(task, &files)),
        Scaffold::Compact => Ok(compact_plan(&files)),
    }
}

/// The compact scaffold's trajectory: per modified file, view the lines around its first
/// change and make its edits; other file changes go in as in the full plan; then finish.
fn compact_plan(files: &[FileDiff]) -> Vec<Step> {
    let mut steps = Vec::new();
    for f in files {
        let path = f.path().to_string();
        let hunks = parse_hunks(&f.text);
        if f.is_new || f.is_deleted || f.is_rename_or_copy || f.is_binary || hunks.is_empty() {
            steps.extend(expert_file_steps(f));
            continue;
        }
        let header: String = f.text.lines().take_while(|l| !l.starts_with("@@")).map(|l| format!("{l}\n")).collect();
        let line = hunks[0].first_changed_line();
        steps.push(Step::Act { thought: String::new(), action: view(format!("{TESTBED}/{path}"), Some(vec![line.saturating_sub(6).max(1) as i64, (line + 2) as i64])) });
        for hunk in hunks {
            steps.push(Step::Edit { path: path.clone(), hunk, header: header.clone(), compact: true });
        }
    }
    steps.push(Step::Act { thought: String::new(), action: Action::Finish { message: "Fixed.".into() } });
    steps
}

/// The full expert trajectory (OpenHands scaffold).
fn expert_plan(task: &Task, files: &[FileDiff]) -> Vec<Step> {
    let mut steps = vec![Step::Act {
        thought: "I'll start by exploring the repository structure to understand where the relevant code lives.".into(),
        action: view(TESTBED.to_string(), None),
    }];
    let first_modified = files.iter().find(|f| !f.is_new && !f.is_deleted && !f.is_rename_or_copy && !f.is_binary);
    if let Some(f) = first_modified {
        if let Some(sym) = parse_hunks(&f.text).first().and_then(symbol) {
            steps.push(Step::Act {
                thought: format!("The issue points at `{sym}`. Let me find where it is defined."),
                action: Action::ExecuteBash { command: format!("grep -n {} {TESTBED}/{}", crate::editor::quote(&sym), f.path()) },
            });
        }
    }
    for f in files {
        steps.extend(expert_file_steps(f));
    }
    // The failing tests' files as they exist before the test patch (files it creates do not
    // exist yet in the agent's workspace).
    let new_test_files: Vec<String> = split_file_diffs(&task.test_patch).into_iter().filter(|f| f.is_new).map(|f| f.path().to_string()).collect();
    let mut test_files: Vec<String> = Vec::new();
    for t in &task.fail_to_pass {
        let file = t.split("::").next().unwrap_or(t).split_whitespace().next().unwrap_or("").to_string();
        if file.ends_with(".py") && !new_test_files.contains(&file) && !test_files.contains(&file) {
            test_files.push(file);
        }
    }
    if !test_files.is_empty() {
        steps.push(Step::Act {
            thought: "Now let me run the related tests to make sure the change works and nothing else broke.".into(),
            action: Action::ExecuteBash {
                command: format!("cd {TESTBED} && python -m pytest -q -p no:cacheprovider {} 2>&1 | tail -n 15", test_files.join(" ")),
            },
        });
    }
    let changed: Vec<String> = files.iter().map(|f| format!("`{}`", f.path())).collect();
    steps.push(Step::Act {
        thought: "The change is complete.".into(),
        action: Action::Finish { message: format!("I fixed the issue described in the PR by editing {}.", changed.join(", ")) },
    });
    steps
}

/// The expert's steps for one file of the gold patch.
fn expert_file_steps(f: &FileDiff) -> Vec<Step> {
    let mut steps = Vec::new();
    {
        let path = f.path().to_string();
        let header: String = f.text.lines().take_while(|l| !l.starts_with("@@")).map(|l| format!("{l}\n")).collect();
        if f.is_rename_or_copy || f.is_binary || (!f.is_new && !f.is_deleted && !f.text.contains("\n@@")) {
            steps.push(Step::Act {
                thought: format!("I'll apply the change to `{path}` as a patch."),
                action: Action::ExecuteBash { command: git_apply(&f.text) },
            });
        } else if f.is_new {
            let mut text: String = parse_hunks(&f.text).iter().flat_map(|h| h.lines.iter()).filter(|(k, _)| *k == '+').map(|(_, l)| format!("{l}\n")).collect();
            if f.text.contains("\\ No newline at end of file") {
                text.pop();
            }
            steps.push(Step::Act {
                thought: format!("The fix needs a new file, `{path}`."),
                action: Action::StrReplaceEditor(EditorArgs {
                    command: EditorCommand::Create,
                    path: format!("{TESTBED}/{path}"),
                    file_text: Some(text),
                    old_str: None,
                    new_str: None,
                    insert_line: None,
                    view_range: None,
                }),
            });
        } else if f.is_deleted {
            steps.push(Step::Act {
                thought: format!("`{path}` is no longer needed; I'll remove it."),
                action: Action::ExecuteBash { command: format!("rm {TESTBED}/{path}") },
            });
        } else {
            let hunks = parse_hunks(&f.text);
            if let Some(h) = hunks.first() {
                let from = h.old_start.saturating_sub(5).max(1) as i64;
                let to = (h.old_start + h.old_count + 5) as i64;
                steps.push(Step::Act {
                    thought: format!("Let me look at the relevant part of `{path}`."),
                    action: view(format!("{TESTBED}/{path}"), Some(vec![from, to])),
                });
            }
            for hunk in hunks {
                steps.push(Step::Edit { path: path.clone(), hunk, header: header.clone(), compact: false });
            }
        }
    }
    steps
}

/// Whether an observation says the tool call failed.
fn failed(observation: &str) -> bool {
    let body = observation.split_once('\n').map_or("", |(_, b)| b);
    body.starts_with("ERROR:") || (observation.starts_with("EXECUTION RESULT of [execute_bash]") && !observation.contains("[Command finished with exit code 0]"))
}

#[async_trait::async_trait]
impl Policy for OraclePolicy {
    fn id(&self) -> String {
        if self.slip_rate > 0.0 {
            format!("oracle-slips{}", self.slip_rate)
        } else {
            "oracle".into()
        }
    }

    async fn complete(&self, request: PolicyRequest<'_>) -> Result<Completion, PolicyError> {
        let mut steps = plan(request.task, self.scaffold)?;
        apply_slip(&mut steps, slip_for(self.slip_rate, request.params.seed));
        // Replay the conversation: which step, which try.
        let (mut step, mut attempt) = (0usize, 0usize);
        let msgs = request.messages;
        for (i, m) in msgs.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            let observation = msgs.get(i + 1).filter(|o| o.role == Role::User).map(|o| o.content.as_str()).unwrap_or("");
            if !observation.starts_with("EXECUTION RESULT of [") {
                continue; // not executed (a format error): say it again
            }
            let tries = steps.get(step).map_or(1, Step::tries);
            if failed(observation) && attempt + 1 < tries {
                attempt += 1;
            } else {
                step += 1;
                attempt = 0;
            }
        }
        let text = steps.get(step).unwrap_or_else(|| steps.last().expect("a plan ends with finish")).render(attempt);
        let prompt_tokens = self.count_tokens(msgs) as u64;
        let completion_tokens = text.chars().count().div_ceil(4) as u64;
        Ok(Completion { text, prompt_tokens, completion_tokens })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(patch: &str) -> Task {
        serde_json::from_value(serde_json::json!({
            "instance_id": "o__r-1", "repo": "o/r", "base_commit": "abc", "version": "1.0", "patch": patch,
            "test_patch": "diff --git a/tests/test_a.py b/tests/test_a.py\n--- a/tests/test_a.py\n+++ b/tests/test_a.py\n@@ -1 +1,2 @@\n x\n+y\n",
            "FAIL_TO_PASS": ["tests/test_a.py::test_x"], "PASS_TO_PASS": [],
        }))
        .unwrap()
    }

    const TWO_HUNKS: &str = "diff --git a/src/m.py b/src/m.py\n--- a/src/m.py\n+++ b/src/m.py\n@@ -10,7 +10,7 @@ def f(data):\n     for item in data:\n         try:\n             v = item[k]\n-        except KeyError:\n+        except (KeyError, TypeError):\n             pass\n         else:\n             use(v)\n@@ -30,6 +30,7 @@ def g(data):\n     try:\n         v = data[k]\n     except KeyError:\n         pass\n+    log(v)\n     return v\n";

    #[test]
    fn hunks_become_str_replace_strings() {
        let hunks = parse_hunks(TWO_HUNKS);
        assert_eq!(hunks.len(), 2);
        assert_eq!((hunks[0].old_start, hunks[0].old_count, hunks[0].context.as_str()), (10, 7, "def f(data):"));
        assert_eq!(
            hunks[0].tight(),
            ("            v = item[k]\n        except KeyError:\n            pass".into(), "            v = item[k]\n        except (KeyError, TypeError):\n            pass".into())
        );
        assert_eq!(hunks[1].tight(), ("        pass\n    return v".into(), "        pass\n    log(v)\n    return v".into()));
        let (old, new) = hunks[1].full();
        assert!(old.starts_with("    try:\n") && old.ends_with("    return v") && new.contains("    log(v)\n"));
        assert_eq!(symbol(&hunks[0]).as_deref(), Some("def f"));
    }

    #[tokio::test]
    async fn the_compact_trajectory_views_edits_the_bare_line_and_finishes() {
        use swegym_schema::Message;
        let patch = "diff --git a/p/m.py b/p/m.py\n--- a/p/m.py\n+++ b/p/m.py\n@@ -10,5 +10,5 @@ def f(items):\n     a = 1\n     b = 2\n-    return len(ietms)\n+    return len(items)\n     c = 3\n";
        let t = task(patch);
        let params = crate::policy::SamplingParams::default();
        let oracle = OraclePolicy::exact().with_scaffold(Scaffold::Compact);
        let mut msgs = vec![Message::system("s"), Message::user("u")];
        let mut replies = Vec::new();
        for _ in 0..3 {
            let c = oracle.complete(PolicyRequest { task: &t, messages: &msgs, params: &params }).await.unwrap();
            msgs.push(Message::assistant(c.text.clone()));
            msgs.push(Message::user("EXECUTION RESULT of [str_replace_editor]:\nok"));
            replies.push(c.text);
        }
        assert!(replies[0].starts_with("<function=str_replace_editor>") && replies[0].contains("<parameter=view_range>[6, 14]</parameter>"), "{}", replies[0]);
        let edit = crate::action::parse_action(&replies[1]).unwrap();
        let Action::StrReplaceEditor(a) = edit else { panic!("{}", replies[1]) };
        assert_eq!((a.old_str.as_deref(), a.new_str.as_deref()), (Some("return len(ietms)"), Some("return len(items)")));
        assert!(replies[1].starts_with("<function="), "no thought: {}", replies[1]);
        assert!(matches!(crate::action::parse_action(&replies[2]).unwrap(), Action::Finish { .. }));
        // A refused bare line is retried with context.
        msgs.truncate(6);
        msgs[5] = Message::user("EXECUTION RESULT of [str_replace_editor]:\nERROR:\nNo replacement was performed. Multiple occurrences");
        let retry = oracle.complete(PolicyRequest { task: &t, messages: &msgs, params: &params }).await.unwrap().text;
        assert!(retry.contains("    b = 2\n    return len(ietms)\n    c = 3"), "{retry}");
    }

    #[tokio::test]
    async fn trajectory_replays_from_the_conversation() {
        use swegym_schema::Message;
        let t = task(TWO_HUNKS);
        let params = crate::policy::SamplingParams::default();
        let mut msgs = vec![Message::system("s"), Message::user("u")];
        let mut kinds = Vec::new();
        for turn in 0..12 {
            let c = OraclePolicy::exact().complete(PolicyRequest { task: &t, messages: &msgs, params: &params }).await.unwrap();
            let action = crate::action::parse_action(&c.text).unwrap();
            kinds.push(match &action {
                Action::StrReplaceEditor(a) => a.command.as_str().to_string(),
                other => other.tool_name().to_string(),
            });
            if matches!(action, Action::Finish { .. }) {
                break;
            }
            msgs.push(Message::assistant(c.text));
            // The second hunk's first try fails once (as if not unique).
            let obs = if turn == 4 { "ERROR:\nNo replacement was performed." } else { "ok\n[Command finished with exit code 0]" };
            msgs.push(Message::user(format!("EXECUTION RESULT of [{}]:\n{obs}", action.tool_name())));
        }
        assert_eq!(kinds, ["view", "execute_bash", "view", "str_replace", "str_replace", "str_replace", "execute_bash", "finish"]);
        // The retry uses the whole hunk.
        let retry = &msgs[12].content;
        assert!(retry.contains("more surrounding context") && retry.contains("<parameter=old_str>\n    try:\n"), "{retry}");
    }

    const COMPARE: &str = "diff --git a/src/m.py b/src/m.py\n--- a/src/m.py\n+++ b/src/m.py\n@@ -4,3 +4,3 @@ def pos(n):\n     x = n\n-    if x > 0 and x < 10:\n+    if x >= 0 and x < 10:\n         return True\n";

    #[test]
    fn near_misses_get_the_fix_wrong_without_undoing_it() {
        let hunk = &parse_hunks(COMPARE)[0];
        let texts: Vec<String> = near_misses(hunk).into_iter().map(|(i, t)| {
            assert_eq!(i, 2);
            t
        }).collect();
        // ` >= ` -> ` > ` would give back the removed line, so it is not offered.
        assert_eq!(texts, ["    if x >= 0 and x <= 10:", "    if x >= 0 or x < 10:", "    if x >= 1 and x < 10:", "    if x >= -1 and x < 10:"]);
        assert_eq!(shift_integer("a = b1 + 2.5 + 40"), ["a = b1 + 2.5 + 41", "a = b1 + 2.5 + 39"]);
        assert_eq!(shift_integer("n = len(rows[0])"), ["n = len(rows[1])", "n = len(rows[-1])"]);
        assert_eq!(shift_integer("return -1"), ["return -2"]);
        assert!(shift_integer("x_2 = y").is_empty());
        assert_eq!(swap_arguments("rows.insert(index, LINE)").as_deref(), Some("rows.insert(LINE, index)"));
        assert_eq!(swap_arguments("x = (a, b) + f(c)"), None);
        assert_eq!(swap_arguments("f(a, g(b))"), None);
        let flips = |line: &str| {
            let h = &parse_hunks(&format!("@@ -1,1 +1,1 @@\n-    pass\n+{line}\n"))[0];
            near_misses(h).into_iter().map(|(_, t)| t).collect::<Vec<_>>()
        };
        assert_eq!(flips("    if k not in seen:"), ["    if k in seen:"]);
        assert_eq!(flips("    for k in seen:"), Vec::<String>::new());
        assert_eq!(flips("    return x"), ["    return not x"]);
        assert_eq!(flips("    elif v is not bytes:"), ["    elif v is bytes:", "    if v is not bytes:"]);
        // TWO_HUNKS' added lines have nothing to flip.
        assert!(parse_hunks(TWO_HUNKS).iter().all(|h| near_misses(h).is_empty()));
    }

    #[test]
    fn a_near_miss_rewrites_the_added_line_it_names() {
        // two equal added lines (next to each other and apart): the second of them changes
        let mut h = parse_hunks("@@ -1,2 +1,5 @@\n a\n+    n += 1\n+    n += 1\n-    pass\n+    x = 0\n+    n += 1\n")[0].clone();
        h.replace_line(2, "    n -= 1".into());
        assert_eq!(h.text, "@@ -1,2 +1,5 @@\n a\n+    n += 1\n+    n -= 1\n-    pass\n+    x = 0\n+    n += 1\n");
        h.replace_line(5, "    n += 2".into());
        assert_eq!(h.text, "@@ -1,2 +1,5 @@\n a\n+    n += 1\n+    n -= 1\n-    pass\n+    x = 0\n+    n += 2\n");
        assert_eq!(h.full().1, "a\n    n += 1\n    n -= 1\n    x = 0\n    n += 2");
        h.replace_line(1, "    n = 1".into());
        assert!(h.text.starts_with("@@ -1,2 +1,5 @@\n a\n+    n = 1\n+    n -= 1\n"), "{}", h.text);
    }

    #[test]
    fn slips_follow_the_rate_and_the_seed() {
        let draws: Vec<Slip> = (0..3000u64).map(|s| slip_for(0.5, Some(s))).collect();
        let none = draws.iter().filter(|s| **s == Slip::None).count();
        let wrong = draws.iter().filter(|s| matches!(s, Slip::WrongEdit(_))).count();
        assert!((1400..1600).contains(&none), "{none}");
        assert!((900..1100).contains(&wrong), "{wrong}");
        assert!((0..3000u64).all(|s| slip_for(0.0, Some(s)) == Slip::None && slip_for(1.0, Some(s)) != Slip::None));
        assert_eq!(slip_for(1.0, None), Slip::None);
        assert_eq!(slip_for(0.5, Some(42)), slip_for(0.5, Some(42)));
        assert!(OraclePolicy::with_slips(1.5).is_err());
        assert_eq!(OraclePolicy::with_slips(0.5).unwrap().id(), "oracle-slips0.5");
        assert_eq!(OraclePolicy::exact().id(), "oracle");
    }

    #[test]
    fn a_wrong_edit_is_wrong_in_every_try() {
        let mut steps = plan(&task(COMPARE), Scaffold::OpenHands).unwrap();
        apply_slip(&mut steps, Slip::WrongEdit(1));
        let edit = steps.iter().find(|s| matches!(s, Step::Edit { .. })).unwrap();
        for attempt in 0..3 {
            let text = edit.render(attempt);
            assert!(text.contains("if x >= 0 or x < 10:") && !text.contains("if x >= 0 and x < 10:\n"), "{attempt}: {text}");
        }
        assert!(edit.render(2).contains("\n+    if x >= 0 or x < 10:\n"));
        // The thoughts are the exact oracle's.
        let exact = plan(&task(COMPARE), Scaffold::OpenHands).unwrap();
        let thought = |s: &Step| s.render(0).lines().next().unwrap().to_string();
        assert_eq!(steps.iter().map(thought).collect::<Vec<_>>(), exact.iter().map(thought).collect::<Vec<_>>());
    }

    #[test]
    fn stopping_early_leaves_out_the_rest_of_the_fix() {
        let edits = |steps: &[Step]| steps.iter().filter(|s| matches!(s, Step::Edit { .. })).count();
        let mut steps = plan(&task(TWO_HUNKS), Scaffold::OpenHands).unwrap();
        assert_eq!(edits(&steps), 2);
        apply_slip(&mut steps, Slip::StopEarly(1));
        assert_eq!(edits(&steps), 1);
        let mut steps = plan(&task(TWO_HUNKS), Scaffold::OpenHands).unwrap();
        let n = steps.len();
        apply_slip(&mut steps, Slip::StopEarly(0));
        assert_eq!((edits(&steps), steps.len()), (0, n - 2));
        // Nothing to get wrong in TWO_HUNKS' lines: a wrong edit becomes stopping early.
        let mut steps = plan(&task(TWO_HUNKS), Scaffold::OpenHands).unwrap();
        apply_slip(&mut steps, Slip::WrongEdit(2));
        assert_eq!(edits(&steps), 0);
        // The run ends as usual: the tests, then finish.
        let last: Vec<String> = steps[steps.len() - 2..].iter().map(|s| s.render(0)).collect();
        assert!(last[0].contains("python -m pytest") && last[1].contains("<function=finish>"), "{last:?}");
    }

    #[test]
    fn new_deleted_and_renamed_files() {
        let patch = "diff --git a/src/new.py b/src/new.py\nnew file mode 100644\n--- /dev/null\n+++ b/src/new.py\n@@ -0,0 +1,2 @@\n+a = 1\n+b = 2\ndiff --git a/src/old.py b/src/old.py\ndeleted file mode 100644\n--- a/src/old.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\ndiff --git a/src/a.py b/src/b.py\nsimilarity index 100%\nrename from src/a.py\nrename to src/b.py\n";
        let steps = plan(&task(patch), Scaffold::OpenHands).unwrap();
        let texts: Vec<String> = steps.iter().map(|s| s.render(0)).collect();
        assert!(texts.iter().any(|t| t.contains("<parameter=command>create</parameter>") && t.contains("<parameter=file_text>\na = 1\nb = 2\n\n</parameter>")), "{texts:#?}");
        assert!(texts.iter().any(|t| t.contains("rm /testbed/src/old.py")));
        assert!(texts.iter().any(|t| t.contains("git apply --verbose <<'SWEGYM_PATCH_EOF'\ndiff --git a/src/a.py b/src/b.py\n")));
        assert!(plan(&task(""), Scaffold::OpenHands).is_err());
    }
}
