//! Dataset statistics in the shape of the SWE-Gym paper's dataset table (Table 2):
//! issue-text words, files and lines edited by the gold patch, FAIL_TO_PASS and total test counts.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::task::{diff_files, Task};

/// Mean, median and max of one per-instance quantity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub mean: f64,
    pub median: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Summary {
        if values.is_empty() {
            return Summary { mean: 0.0, median: 0.0, max: 0.0 };
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Summary { mean: v.iter().sum::<f64>() / n as f64, median, max: v[n - 1] }
    }
}

/// The whole table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetStats {
    pub instances: usize,
    pub repos: usize,
    pub instances_per_repo: BTreeMap<String, usize>,
    pub issue_words: Summary,
    pub gold_files_edited: Summary,
    pub gold_lines_edited: Summary,
    pub fail_to_pass: Summary,
    pub pass_to_pass: Summary,
    pub total_tests: Summary,
}

/// Lines added plus lines removed by a unified diff (headers excluded).
pub fn diff_lines_edited(diff: &str) -> usize {
    diff.lines()
        .filter(|l| (l.starts_with('+') && !l.starts_with("+++")) || (l.starts_with('-') && !l.starts_with("---")))
        .count()
}

impl DatasetStats {
    pub fn compute(tasks: &[Task]) -> DatasetStats {
        let col = |f: &dyn Fn(&Task) -> usize| tasks.iter().map(|t| f(t) as f64).collect::<Vec<_>>();
        let mut per_repo = BTreeMap::new();
        for t in tasks {
            *per_repo.entry(t.repo.clone()).or_insert(0) += 1;
        }
        DatasetStats {
            instances: tasks.len(),
            repos: per_repo.len(),
            instances_per_repo: per_repo,
            issue_words: Summary::of(&col(&|t| t.problem_statement.split_whitespace().count())),
            gold_files_edited: Summary::of(&col(&|t| diff_files(&t.patch).len())),
            gold_lines_edited: Summary::of(&col(&|t| diff_lines_edited(&t.patch))),
            fail_to_pass: Summary::of(&col(&|t| t.fail_to_pass.len())),
            pass_to_pass: Summary::of(&col(&|t| t.pass_to_pass.len())),
            total_tests: Summary::of(&col(&|t| t.fail_to_pass.len() + t.pass_to_pass.len())),
        }
    }

    /// The table as text: one row per quantity, mean / median / max columns.
    pub fn to_table(&self) -> String {
        let mut s = format!("{} instances from {} repos\n\n", self.instances, self.repos);
        s.push_str(&format!("{:<28} {:>10} {:>10} {:>10}\n", "", "mean", "median", "max"));
        let rows: [(&str, Summary); 6] = [
            ("issue text: words", self.issue_words),
            ("gold patch: files edited", self.gold_files_edited),
            ("gold patch: lines edited", self.gold_lines_edited),
            ("tests: FAIL_TO_PASS", self.fail_to_pass),
            ("tests: PASS_TO_PASS", self.pass_to_pass),
            ("tests: total", self.total_tests),
        ];
        for (name, v) in rows {
            s.push_str(&format!("{:<28} {:>10.1} {:>10.1} {:>10.0}\n", name, v.mean, v.median, v.max));
        }
        s.push_str("\ninstances per repo\n");
        let mut repos: Vec<_> = self.instances_per_repo.iter().collect();
        repos.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (repo, n) in repos {
            s.push_str(&format!("  {repo:<40} {n:>6}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_and_line_counts() {
        let s = Summary::of(&[1.0, 5.0, 3.0, 10.0]);
        assert_eq!((s.mean, s.median, s.max), (4.75, 4.0, 10.0));
        let d = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n+d\n";
        assert_eq!(diff_lines_edited(d), 3);
    }
}
