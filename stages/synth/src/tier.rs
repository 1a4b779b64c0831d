//! Difficulty as data: what makes a synthesized task easy or hard, measured from its row
//! (gold patch, problem statement) and its provenance (mutation kind, file, line), and the
//! tier it falls in. `swegym dataset stats` shows the tiers; a run config selects by them.
//!
//! - **easy**: the gold patch changes one line, and the statement's quoted traceback shows
//!   that line (`file:line: in function`): the report leads to the line, never to the fix.
//! - **medium**: one changed line, the statement names the function only.
//! - **hard**: more than one changed line or file.

use serde::{Deserialize, Serialize};

use crate::split::Split;
use crate::MutationKind;

/// A task's difficulty tier; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Easy,
    Medium,
    Hard,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Easy, Tier::Medium, Tier::Hard];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Easy => "easy",
            Tier::Medium => "medium",
            Tier::Hard => "hard",
        }
    }

    pub fn parse(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// What makes one task easy or hard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difficulty {
    /// Lines of the buggy files the gold patch changes (the larger of removed and added).
    pub lines_changed: usize,
    pub files_changed: usize,
    /// The statement quotes a traceback entry at the bug's line (`file:line: in …`).
    pub statement_shows_line: bool,
    /// Some failing test's traceback passed through the bug's line (measured when the
    /// synth run had tracebacks on; `None` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback_hits_line: Option<bool>,
    pub statement_chars: usize,
    pub tier: Tier,
}

/// The difficulty of a task from its gold patch and statement, the bug's file and its line
/// in the buggy file.
pub fn difficulty(patch: &str, statement: &str, file: &str, line: usize, traceback_hits_line: Option<bool>) -> Difficulty {
    let (mut removed, mut added, mut files) = (0, 0, 0);
    for l in patch.lines() {
        if l.starts_with("diff --git ") {
            files += 1;
        } else if l.starts_with('-') && !l.starts_with("---") {
            removed += 1;
        } else if l.starts_with('+') && !l.starts_with("+++") {
            added += 1;
        }
    }
    let lines_changed = usize::max(removed, added);
    let statement_shows_line = statement.contains(&format!("{file}:{line}: in "));
    let tier = match (lines_changed, files) {
        (1, 1) if statement_shows_line => Tier::Easy,
        (1, 1) => Tier::Medium,
        _ => Tier::Hard,
    };
    Difficulty { lines_changed, files_changed: files, statement_shows_line, traceback_hits_line, statement_chars: statement.chars().count(), tier }
}

/// One synthesized instance's provenance (`synth_manifest.jsonl`; not part of the task row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestRow {
    pub instance_id: String,
    pub repo: String,
    pub split: Split,
    pub kind: MutationKind,
    pub file: String,
    pub function: String,
    /// 1-based line of the edit.
    pub line: usize,
    pub fail_to_pass: usize,
    pub pass_to_pass: usize,
    /// Written by synth runs since difficulty tiers exist; older manifests are measured
    /// from the rows when read ([`difficulty`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difficulty: Option<Difficulty>,
}

/// The manifest's file name in a synthesized dataset's folder.
pub const MANIFEST_FILE: &str = "synth_manifest.jsonl";

/// A synthesized dataset's manifest, by instance id.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    rows: std::collections::HashMap<String, ManifestRow>,
}

impl Manifest {
    /// Reads `<dir>/synth_manifest.jsonl`; `Ok(None)` when the folder has none.
    pub fn in_folder(dir: &std::path::Path) -> Result<Option<Manifest>, String> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut rows = std::collections::HashMap::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let row: ManifestRow = serde_json::from_str(line).map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))?;
            rows.insert(row.instance_id.clone(), row);
        }
        Ok(Some(Manifest { rows }))
    }

    pub fn get(&self, instance_id: &str) -> Option<&ManifestRow> {
        self.rows.get(instance_id)
    }

    /// A task's difficulty: as its synth run wrote it, else measured from the row (older
    /// manifests). `None` when the manifest does not know the task.
    pub fn difficulty(&self, instance_id: &str, patch: &str, statement: &str) -> Option<Difficulty> {
        let row = self.rows.get(instance_id)?;
        Some(row.difficulty.clone().unwrap_or_else(|| difficulty(patch, statement, &row.file, row.line, None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_LINE: &str = "diff --git a/p/m.py b/p/m.py\n--- a/p/m.py\n+++ b/p/m.py\n@@ -5,3 +5,3 @@\n a\n-    return itearble\n+    return iterable\n b\n";

    #[test]
    fn tiers() {
        let shown = "...\n```\np/m.py:6: in f\n    return itearble\n```\n";
        let d = difficulty(ONE_LINE, shown, "p/m.py", 6, Some(true));
        assert_eq!((d.lines_changed, d.files_changed, d.statement_shows_line, d.tier), (1, 1, true, Tier::Easy));
        assert_eq!(difficulty(ONE_LINE, "no traceback", "p/m.py", 6, None).tier, Tier::Medium);
        // A traceback at another line does not lead to the bug.
        assert_eq!(difficulty(ONE_LINE, shown, "p/m.py", 7, Some(false)).tier, Tier::Medium);
        let two = ONE_LINE.replace(" b\n", "-x\n+y\n");
        assert_eq!(difficulty(&two, shown, "p/m.py", 6, None).tier, Tier::Hard);
        assert_eq!(Tier::parse("easy"), Some(Tier::Easy));
    }

    #[test]
    fn old_manifest_rows_read() {
        let row: ManifestRow = serde_json::from_str(r#"{"instance_id":"i","repo":"o/r","split":"train","kind":"comparison_operator","file":"t/__init__.py","function":"_format","line":1220,"fail_to_pass":81,"pass_to_pass":107}"#).unwrap();
        assert_eq!(row.difficulty, None);
        assert_eq!(row.kind, MutationKind::ComparisonOperator);
    }
}
