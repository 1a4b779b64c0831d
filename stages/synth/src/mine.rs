//! Mining a local git history for task candidates, as SWE-bench builds its instances
//! minus GitHub: a commit (or a merge, against its first parent) that changes both
//! Python source and Python tests gives base = parent, `patch` = the non-test part of the
//! diff, `test_patch` = the test part, and the commit message as the problem statement.
//! Binary files (which a text diff cannot carry) are left out of both.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::{DropReason, SynthError};

/// Which commits to look at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MineOptions {
    /// `git log --since` (e.g. `2023-01-01`).
    pub since: Option<String>,
    /// Newest commits looked at, at most.
    pub max_commits: Option<usize>,
    /// Also merges (diffed against their first parent).
    pub include_merges: bool,
}

/// One candidate from one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinedCommit {
    pub commit: String,
    /// The base: the (first) parent.
    pub parent: String,
    /// Committer date, ISO 8601.
    pub created_at: String,
    /// The full commit message.
    pub message: String,
    pub patch: String,
    pub test_patch: String,
}

impl MinedCommit {
    /// The instance id of its task: `<prefix>-<first 12 hex digits of the commit>`.
    pub fn instance_id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", &self.commit[..12])
    }

    /// The commit message's first line.
    pub fn subject(&self) -> &str {
        self.message.lines().next().unwrap_or_default()
    }
}

/// Candidates, newest first, and how many commits were passed over and why.
#[derive(Debug, Clone, Default)]
pub struct Mined {
    pub candidates: Vec<MinedCommit>,
    pub commits_seen: usize,
    pub skipped: BTreeMap<DropReason, u32>,
}

fn git(repo: &Path, args: &[&str]) -> Result<String, SynthError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .map_err(|e| SynthError::io(format!("running git in {}", repo.display()), e))?;
    if !out.status.success() {
        return Err(SynthError::Git {
            repo: repo.to_path_buf(),
            command: format!("git {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Splits a `git diff` into per-file sections: (path on the `b/` side, section text).
pub fn file_sections(diff: &str) -> Vec<(String, String)> {
    let mut sections: Vec<(String, String)> = Vec::new();
    for line in diff.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("diff --git ") {
            let path = rest.find(" b/").map(|i| rest[i + 3..].trim_end().to_string()).unwrap_or_default();
            sections.push((path, String::new()));
        }
        if let Some((_, text)) = sections.last_mut() {
            text.push_str(line);
        }
    }
    sections
}

/// A file section of a text diff whose content git left out (a binary file).
fn is_binary_section(section: &str) -> bool {
    section.lines().any(|l| l.starts_with("Binary files ") && l.ends_with(" differ"))
}

/// Walks the history from HEAD; `is_test_path` says which files are tests (the harness's rule).
pub fn mine(repo: &Path, opts: &MineOptions, is_test_path: &dyn Fn(&str) -> bool) -> Result<Mined, SynthError> {
    if !repo.join(".git").exists() && !repo.join("HEAD").exists() {
        return Err(SynthError::BadInput(format!("{}: not a git repository; pass the path of a clone with --repo", repo.display())));
    }
    let mut args = vec!["log".to_string(), "--format=%H%x1f%P%x1f%cI%x1f%B%x1e".to_string()];
    if let Some(since) = &opts.since {
        args.push(format!("--since={since}"));
    }
    if !opts.include_merges {
        args.push("--no-merges".into());
    }
    if let Some(n) = opts.max_commits {
        args.push(format!("--max-count={n}"));
    }
    args.push("HEAD".into());
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = git(repo, &arg_refs)?;
    let mut mined = Mined::default();
    for record in log.split('\x1e') {
        let record = record.trim_start_matches('\n');
        let fields: Vec<&str> = record.splitn(4, '\x1f').collect();
        let [commit, parents, date, message] = fields.as_slice() else {
            continue;
        };
        mined.commits_seen += 1;
        let Some(parent) = parents.split_whitespace().next() else {
            continue; // the root commit has no base
        };
        let diff = git(repo, &["diff", "--no-color", "--no-ext-diff", "--no-renames", parent, commit])?;
        let (mut patch, mut test_patch) = (String::new(), String::new());
        let (mut source_py, mut test_py) = (false, false);
        for (path, text) in file_sections(&diff) {
            if is_binary_section(&text) {
                // `Binary files a/x and b/x differ` carries no content: as text it cannot
                // be applied, and a release's logo or icon is no part of a task.
                tracing::debug!(commit = %commit, path = %path, "binary file left out of the patches");
                continue;
            }
            if is_test_path(&path) {
                test_py |= path.ends_with(".py");
                test_patch.push_str(&text);
            } else {
                source_py |= path.ends_with(".py");
                patch.push_str(&text);
            }
        }
        if !(source_py && test_py) {
            *mined.skipped.entry(DropReason::NotSourceAndTests).or_default() += 1;
            continue;
        }
        mined.candidates.push(MinedCommit {
            commit: commit.to_string(),
            parent: parent.to_string(),
            created_at: date.to_string(),
            message: message.trim().to_string(),
            patch,
            test_patch,
        });
    }
    Ok(mined)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) -> String {
        let out = Command::new("bash").arg("-c").arg(script).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn a_fix_with_a_test_is_a_candidate_and_a_docs_change_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let c = "git -c user.name=t -c user.email=t@t commit -q";
        sh(d, &format!("git init -q -b main && mkdir -p pkg tests && printf 'def f(a):\\n    return a\\n' > pkg/m.py && printf 'x\\n' > README && git add -A && {c} -m init"));
        sh(d, &format!("printf 'def f(a):\\n    return a + 1\\n' > pkg/m.py && printf 'from pkg.m import f\\ndef test_f():\\n    assert f(1) == 2\\n' > tests/test_m.py && printf '\\x89PNG\\x00\\x01' > logo.png && git add -A && {c} -m 'Fix f' -m 'f must add one.'"));
        sh(d, &format!("printf 'y\\n' > README && {c} -am docs"));
        let is_test = |p: &str| p.starts_with("tests/");
        let mined = mine(d, &MineOptions::default(), &is_test).unwrap();
        assert_eq!(mined.commits_seen, 3);
        assert_eq!(mined.skipped[&DropReason::NotSourceAndTests], 1);
        let [m] = mined.candidates.as_slice() else { panic!("{:?}", mined.candidates) };
        assert_eq!(m.parent, sh(d, "git rev-parse HEAD~2"));
        assert_eq!(m.commit, sh(d, "git rev-parse HEAD~1"));
        assert_eq!(m.message, "Fix f\n\nf must add one.");
        assert_eq!(m.subject(), "Fix f");
        assert_eq!(m.instance_id("local__repo"), format!("local__repo-{}", &m.commit[..12]));
        assert!(m.patch.starts_with("diff --git a/pkg/m.py b/pkg/m.py") && m.patch.contains("+    return a + 1"), "{}", m.patch);
        assert!(m.test_patch.starts_with("diff --git a/tests/test_m.py") && !m.test_patch.contains("pkg/m.py"), "{}", m.test_patch);
        assert!(!m.patch.contains("logo.png"), "a binary file is left out: {}", m.patch);
    }
}
