//! A task instance in the SWE-Gym / SWE-bench schema, and its loaders (JSONL, JSON array, Parquet).
//!
//! SWE-Gym stores `FAIL_TO_PASS` / `PASS_TO_PASS` as lists, SWE-bench as JSON-encoded
//! strings; both are accepted. A malformed row is reported as a [`RowError`] with its
//! row number and (when it can be read) instance id, and the other rows still load.
//!
//! A row with no `FAIL_TO_PASS` test is a bad row unless [`LoadOptions`] allow it: no test
//! can tell a fix from a no-op there, so any patch that keeps `PASS_TO_PASS` green would
//! pass its grading — a reward any policy trained on it learns to collect.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::SchemaError;

/// One SWE-bench / SWE-Gym task instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub instance_id: String,
    pub repo: String,
    pub base_commit: String,
    /// The gold fix (non-test files).
    #[serde(default)]
    pub patch: String,
    /// The diff that adds or changes tests; applied only when grading.
    pub test_patch: String,
    #[serde(default)]
    pub problem_statement: String,
    #[serde(default)]
    pub hints_text: String,
    #[serde(rename = "FAIL_TO_PASS", deserialize_with = "de_fail_to_pass")]
    pub fail_to_pass: Vec<String>,
    #[serde(rename = "PASS_TO_PASS", deserialize_with = "de_pass_to_pass")]
    pub pass_to_pass: Vec<String>,
    /// The repo version key selecting the environment spec (SWE-bench writes "3.0").
    #[serde(deserialize_with = "de_version")]
    pub version: String,
    /// SWE-bench has it, SWE-Gym does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_setup_commit: Option<String>,
    #[serde(default)]
    pub created_at: String,
}

impl Task {
    /// The files the `test_patch` touches (the test targets, as SWE-bench's `get_test_directives`).
    pub fn test_files(&self) -> Vec<String> {
        diff_files(&self.test_patch)
    }

    /// The files the gold `patch` touches.
    pub fn gold_files(&self) -> Vec<String> {
        diff_files(&self.patch)
    }
}

/// Paths named by the `diff --git a/X b/Y` headers of a unified diff (the `b/` side), in order.
pub fn diff_files(diff: &str) -> Vec<String> {
    let mut files = Vec::new();
    for line in diff.lines() {
        if let Some(rest) = line.strip_prefix("diff --git ") {
            if let Some(idx) = rest.find(" b/") {
                let path = rest[idx + 3..].trim().to_string();
                if !files.contains(&path) {
                    files.push(path);
                }
            }
        }
    }
    files
}

/// A row that could not be read as a [`Task`].
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    pub path: PathBuf,
    /// 1-based line number (JSONL) or row index (JSON array, Parquet).
    pub row: usize,
    pub instance_id: Option<String>,
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} row {}", self.path.display(), self.row)?;
        if let Some(id) = &self.instance_id {
            write!(f, " ({id})")?;
        }
        write!(f, ": {}; fix or remove this row", self.message)
    }
}

/// The outcome of loading a task file: the good rows and the bad ones.
#[derive(Debug, Default)]
pub struct TaskLoad {
    pub tasks: Vec<Task>,
    pub errors: Vec<RowError>,
}

/// What [`load_tasks_with`] accepts beyond a well-formed row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Load rows whose `FAIL_TO_PASS` is empty (they are still never graded resolved).
    pub allow_no_fail_to_pass: bool,
}

/// The message of a row with no `FAIL_TO_PASS` test.
const NO_FAIL_TO_PASS: &str = "FAIL_TO_PASS is empty: no test tells a fix from a no-op (any patch keeping PASS_TO_PASS green would pass); list the tests the fix makes pass, or load it anyway with --allow-no-fail-to-pass";

/// Loads tasks from `.jsonl`, `.json` (an array, or JSONL in disguise) or `.parquet`;
/// rows without a `FAIL_TO_PASS` test are bad rows ([`LoadOptions::default`]).
pub fn load_tasks(path: &Path) -> Result<TaskLoad, SchemaError> {
    load_tasks_with(path, LoadOptions::default())
}

/// Writes tasks as JSONL in the SWE-bench schema, one row a line (atomically), as
/// [`load_tasks`] reads them back: the dataset files `swegym synth` and `swegym mine` write.
pub fn write_tasks<T: std::borrow::Borrow<Task> + Serialize>(path: &Path, tasks: &[T]) -> Result<(), SchemaError> {
    crate::write_jsonl(path, tasks, |t| format!("task {}", t.borrow().instance_id))
}

/// [`load_tasks`] with options.
pub fn load_tasks_with(path: &Path, options: LoadOptions) -> Result<TaskLoad, SchemaError> {
    let rows = read_rows(path)?;
    let mut load = TaskLoad::default();
    let mut seen = std::collections::HashSet::new();
    for (row, value) in rows {
        let value = match value {
            Ok(v) => v,
            Err(message) => {
                load.errors.push(RowError { path: path.to_path_buf(), row, instance_id: None, message });
                continue;
            }
        };
        let instance_id = value.get("instance_id").and_then(|v| v.as_str()).map(str::to_string);
        match serde_json::from_value::<Task>(value) {
            Ok(task) if task.fail_to_pass.is_empty() && !options.allow_no_fail_to_pass => {
                load.errors.push(RowError { path: path.to_path_buf(), row, instance_id, message: NO_FAIL_TO_PASS.into() });
            }
            Ok(task) => {
                if !seen.insert(task.instance_id.clone()) {
                    load.errors.push(RowError {
                        path: path.to_path_buf(),
                        row,
                        instance_id,
                        message: "duplicate instance_id (an earlier row has it)".into(),
                    });
                } else {
                    load.tasks.push(task);
                }
            }
            Err(e) => load.errors.push(RowError { path: path.to_path_buf(), row, instance_id, message: e.to_string() }),
        }
    }
    Ok(load)
}

type Row = (usize, Result<serde_json::Value, String>);

/// Reads a file of JSON objects in any of the supported layouts, one entry per row.
pub(crate) fn read_rows(path: &Path) -> Result<Vec<Row>, SchemaError> {
    let io_err = |source| SchemaError::Io { path: path.to_path_buf(), source };
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext == "parquet" {
        return read_parquet_rows(path);
    }
    let text = std::fs::read_to_string(path).map_err(io_err)?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let values: Vec<serde_json::Value> = serde_json::from_str(trimmed).map_err(|e| SchemaError::Format {
            path: path.to_path_buf(),
            message: format!("not a valid JSON array: {e}"),
        })?;
        return Ok(values.into_iter().enumerate().map(|(i, v)| (i, Ok(v))).collect());
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| (i + 1, serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))))
        .collect())
}

fn read_parquet_rows(path: &Path) -> Result<Vec<Row>, SchemaError> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let pq_err = |e: &dyn std::fmt::Display| SchemaError::Parquet { path: path.to_path_buf(), message: e.to_string() };
    let file = std::fs::File::open(path).map_err(|source| SchemaError::Io { path: path.to_path_buf(), source })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| pq_err(&e))?.build().map_err(|e| pq_err(&e))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| pq_err(&e))?;
        let mut buf = Vec::new();
        {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut buf);
            writer.write(&batch).map_err(|e| pq_err(&e))?;
            writer.finish().map_err(|e| pq_err(&e))?;
        }
        for line in String::from_utf8_lossy(&buf).lines() {
            let row = rows.len();
            rows.push((row, serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))));
        }
    }
    Ok(rows)
}

fn de_fail_to_pass<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    de_test_list(de, "FAIL_TO_PASS")
}

fn de_pass_to_pass<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    de_test_list(de, "PASS_TO_PASS")
}

/// Accepts a list of strings, a JSON-encoded string of such a list, or null (= empty); any
/// other value is an error naming `field` and what it holds.
fn de_test_list<'de, D: Deserializer<'de>>(de: D, field: &str) -> Result<Vec<String>, D::Error> {
    use serde::de::Error;
    let expected = "a list of test ids, or a JSON string holding one";
    let value = serde_json::Value::deserialize(de)?;
    let list = match value {
        serde_json::Value::Null => return Ok(Vec::new()),
        serde_json::Value::String(s) if s.trim().is_empty() => return Ok(Vec::new()),
        serde_json::Value::String(s) => serde_json::from_str::<serde_json::Value>(&s)
            .map_err(|e| D::Error::custom(format!("{field} is a string but not JSON ({e}); it must be {expected}")))?,
        other => other,
    };
    let serde_json::Value::Array(items) = list else {
        return Err(D::Error::custom(format!("{field} is {}; it must be {expected}", describe(&list))));
    };
    items
        .into_iter()
        .map(|item| match item {
            serde_json::Value::String(s) => Ok(s),
            other => Err(D::Error::custom(format!("{field} holds {}; every test id must be a string", describe(&other)))),
        })
        .collect()
}

/// A JSON value as a few words for a message (`the number 42`).
fn describe(value: &serde_json::Value) -> String {
    let shown = value.to_string();
    let shown = if shown.chars().count() > 40 { format!("{}…", shown.chars().take(40).collect::<String>()) } else { shown };
    let kind = match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "the boolean",
        serde_json::Value::Number(_) => "the number",
        serde_json::Value::String(_) => "the string",
        serde_json::Value::Array(_) => "the list",
        serde_json::Value::Object(_) => "the object",
    };
    format!("{kind} {shown}")
}

/// Accepts `"3.0"` or `3.0` (some exports write the version as a number).
fn de_version<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        N(serde_json::Number),
    }
    Ok(match Raw::deserialize(de)? {
        Raw::S(s) => s,
        Raw::N(n) => {
            let s = n.to_string();
            if s.contains('.') { s } else { format!("{s}.0") }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(f2p: &str) -> String {
        format!(
            r#"{{"instance_id":"o__r-1","repo":"o/r","base_commit":"abc","patch":"","test_patch":"diff --git a/t.py b/t.py\n","problem_statement":"p","hints_text":"","FAIL_TO_PASS":{f2p},"PASS_TO_PASS":[],"version":"1.0","created_at":"x"}}"#
        )
    }

    #[test]
    fn accepts_lists_and_encoded_strings() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        let a = row(r#"["t.py::a"]"#);
        let b = row(r#""[\"t.py::a\"]""#).replace("o__r-1", "o__r-2");
        std::fs::write(&p, format!("{a}\n{b}\n")).unwrap();
        let load = load_tasks(&p).unwrap();
        assert!(load.errors.is_empty(), "{:?}", load.errors);
        assert_eq!(load.tasks.len(), 2);
        assert_eq!(load.tasks[0].fail_to_pass, load.tasks[1].fail_to_pass);
        assert_eq!(load.tasks[0].environment_setup_commit, None);
        assert_eq!(load.tasks[0].test_files(), vec!["t.py".to_string()]);
    }

    #[test]
    fn written_tasks_load_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        std::fs::write(&p, format!("{}\n{}\n", row(r#"["t.py::a"]"#), row(r#"["t.py::b"]"#).replace("o__r-1", "o__r-2"))).unwrap();
        let tasks = load_tasks(&p).unwrap().tasks;
        let out = dir.path().join("out.jsonl");
        write_tasks(&out, &tasks.iter().collect::<Vec<&Task>>()).unwrap();
        assert_eq!(load_tasks(&out).unwrap().tasks, tasks);
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(!dir.path().join("out.jsonl.tmp").exists());
    }

    #[test]
    fn bad_row_is_reported_and_the_rest_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        let good = row(r#"["a"]"#);
        let bad_f2p = row(r#""not a list""#).replace("o__r-1", "o__r-bad");
        std::fs::write(&p, format!("{good}\n{{oops\n{bad_f2p}\n")).unwrap();
        let load = load_tasks(&p).unwrap();
        assert_eq!(load.tasks.len(), 1);
        assert_eq!(load.errors.len(), 2);
        assert_eq!(load.errors[0].row, 2);
        assert_eq!(load.errors[1].row, 3);
        assert_eq!(load.errors[1].instance_id.as_deref(), Some("o__r-bad"));
        assert!(load.errors[1].to_string().contains("o__r-bad"));
    }

    #[test]
    fn a_task_without_fail_to_pass_is_a_bad_row_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        let good = row(r#"["a"]"#);
        let empty = row("[]").replace("o__r-1", "o__r-empty");
        let null = row("null").replace("o__r-1", "o__r-null");
        std::fs::write(&p, format!("{good}\n{empty}\n{null}\n")).unwrap();
        let load = load_tasks(&p).unwrap();
        assert_eq!(load.tasks.len(), 1);
        let messages: Vec<String> = load.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].contains("row 2 (o__r-empty): FAIL_TO_PASS is empty"), "{}", messages[0]);
        assert!(messages[0].contains("--allow-no-fail-to-pass"), "{}", messages[0]);
        let allowed = load_tasks_with(&p, LoadOptions { allow_no_fail_to_pass: true }).unwrap();
        assert_eq!((allowed.tasks.len(), allowed.errors.len()), (3, 0));
    }

    #[test]
    fn a_test_list_of_the_wrong_kind_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        let number = row("42");
        let ints = row("[1, 2]").replace("o__r-1", "o__r-2");
        let p2p = row(r#"["a"]"#).replace(r#""PASS_TO_PASS":[]"#, r#""PASS_TO_PASS":{"x":1}"#).replace("o__r-1", "o__r-3");
        std::fs::write(&p, format!("{number}\n{ints}\n{p2p}\n")).unwrap();
        let messages: Vec<String> = load_tasks(&p).unwrap().errors.iter().map(|e| e.to_string()).collect();
        assert!(messages[0].contains("FAIL_TO_PASS is the number 42; it must be a list of test ids"), "{}", messages[0]);
        assert!(messages[1].contains("FAIL_TO_PASS holds the number 1; every test id must be a string"), "{}", messages[1]);
        assert!(messages[2].contains(r#"PASS_TO_PASS is the object {"x":1}"#), "{}", messages[2]);
        assert!(messages.iter().all(|m| !m.contains("untagged")), "{messages:?}");
    }

    #[test]
    fn numeric_version_becomes_string() {
        let v: Task = serde_json::from_str(&row("[]").replace(r#""version":"1.0""#, r#""version":3.0"#)).unwrap();
        assert_eq!(v.version, "3.0");
    }
}
