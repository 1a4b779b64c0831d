//! SFT data: one chat conversation per row (`messages` + metadata), in the layout TRL's
//! SFTTrainer, torchtune's `chat_dataset` and `datasets` read unchanged.
//!
//! Parquet: `messages` is `list<struct<role: string, content: string>>`; the metadata
//! columns are `instance_id, iteration, source, resolved, n_turns, sample_idx,
//! exit_reason, patch`. Reading accepts Parquet (by extension) or JSONL / a JSON array, and
//! needs only `messages`: the other columns are optional with defaults (`n_turns` = the
//! number of assistant messages), extra columns (`tools`, …) are ignored, and large or view
//! string/list types (as pyarrow or `datasets` may write them) are accepted.

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::rollout::{Message, Role};
use crate::SchemaError;

/// `source` of rows read without a `source` column.
pub const DEFAULT_SOURCE: &str = "external";

/// One SFT example: a whole agent trajectory as chat messages, plus where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftRecord {
    pub messages: Vec<Message>,
    pub instance_id: String,
    /// The RFT iteration whose policy sampled it (null for outside data).
    pub iteration: Option<i64>,
    /// Where it came from: a policy id (`oracle`, `local:…`), `warm_start:<file>`, …
    pub source: String,
    pub resolved: Option<bool>,
    /// Assistant turns (LM calls).
    pub n_turns: i64,
    pub sample_idx: Option<i64>,
    pub exit_reason: Option<String>,
    pub patch: Option<String>,
}

impl SftRecord {
    /// The number of assistant messages (the default of `n_turns`).
    pub fn assistant_turns(messages: &[Message]) -> i64 {
        messages.iter().filter(|m| m.role == Role::Assistant).count() as i64
    }
}

/// The Arrow schema of [`SftRecord`] rows.
pub fn sft_schema() -> SchemaRef {
    let s = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let i = |name: &str, nullable: bool| Field::new(name, DataType::Int64, nullable);
    let message = Fields::from(vec![s("role", false), s("content", false)]);
    Arc::new(Schema::new(vec![
        Field::new("messages", DataType::List(Arc::new(Field::new("item", DataType::Struct(message), true))), false),
        s("instance_id", false),
        i("iteration", true),
        s("source", false),
        Field::new("resolved", DataType::Boolean, true),
        i("n_turns", false),
        i("sample_idx", true),
        s("exit_reason", true),
        s("patch", true),
    ]))
}

/// Writes SFT records as Parquet (atomically: temp file + rename). Zero records give a
/// valid, empty file.
pub fn write_sft(path: &Path, records: &[SftRecord]) -> Result<(), SchemaError> {
    crate::parquet_io::write_parquet(path, sft_schema(), records)
}

/// Writes SFT records as JSONL (atomically), one `{messages, instance_id, …}` object a line.
pub fn write_sft_jsonl(path: &Path, records: &[SftRecord]) -> Result<(), SchemaError> {
    crate::write_jsonl(path, records, |r| format!("record of {}", r.instance_id))
}

/// Reads SFT data from Parquet (`.parquet`) or JSONL / a JSON array (anything else).
///
/// Only `messages` is required. Errors name the file and the problem: an empty file, no
/// `messages` column, a column of the wrong type, an unknown role, a malformed row.
pub fn read_sft(path: &Path) -> Result<Vec<SftRecord>, SchemaError> {
    let format = |message: String| SchemaError::Format { path: path.to_path_buf(), message };
    let meta = std::fs::metadata(path).map_err(|source| SchemaError::Io { path: path.to_path_buf(), source })?;
    if meta.len() == 0 {
        return Err(format("empty file: an SFT dataset needs at least one row with a `messages` column".into()));
    }
    let is_parquet = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    if is_parquet {
        check_parquet_schema(path)?;
    }
    let rows = crate::task::read_rows(path)?;
    if rows.is_empty() {
        return Err(format("empty file: no rows".into()));
    }
    let unit = if is_parquet || is_json_array(path) { "row" } else { "line" };
    rows.into_iter()
        .map(|(row, value)| {
            let value = value.map_err(|m| format(format!("{unit} {row}: {m}")))?;
            record_from_json(value).map_err(|m| format(format!("{unit} {row}: {m}")))
        })
        .collect()
}

fn is_json_array(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    head[..n].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// The tolerant row shape: only `messages` is required; unknown fields are ignored.
#[derive(Deserialize)]
struct RawRow {
    messages: Option<Vec<RawMessage>>,
    #[serde(default)]
    instance_id: Option<String>,
    #[serde(default)]
    iteration: Option<i64>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    resolved: Option<bool>,
    #[serde(default)]
    n_turns: Option<i64>,
    #[serde(default)]
    sample_idx: Option<i64>,
    #[serde(default)]
    exit_reason: Option<String>,
    #[serde(default)]
    patch: Option<String>,
}

#[derive(Deserialize)]
struct RawMessage {
    role: Option<String>,
    content: Option<String>,
}

fn record_from_json(value: serde_json::Value) -> Result<SftRecord, String> {
    if !value.is_object() {
        return Err(format!("expected a JSON object, got {}", json_kind(&value)));
    }
    let raw: RawRow = serde_json::from_value(value).map_err(|e| format!("malformed: {e}"))?;
    let raw_messages = raw.messages.ok_or("no `messages` (every row needs a list of {role, content})")?;
    if raw_messages.is_empty() {
        return Err("`messages` is empty".into());
    }
    let mut messages = Vec::with_capacity(raw_messages.len());
    for (m_idx, m) in raw_messages.into_iter().enumerate() {
        let role = match m.role.as_deref() {
            Some("system") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some(other) => {
                return Err(format!("message {m_idx}: unknown role `{other}` (expected system, user or assistant)"))
            }
            None => return Err(format!("message {m_idx}: no `role`")),
        };
        let content = m.content.ok_or_else(|| format!("message {m_idx}: no `content`"))?;
        messages.push(Message { role, content });
    }
    let n_turns = raw.n_turns.unwrap_or_else(|| SftRecord::assistant_turns(&messages));
    Ok(SftRecord {
        messages,
        instance_id: raw.instance_id.unwrap_or_default(),
        iteration: raw.iteration,
        source: raw.source.unwrap_or_else(|| DEFAULT_SOURCE.to_string()),
        resolved: raw.resolved,
        n_turns,
        sample_idx: raw.sample_idx,
        exit_reason: raw.exit_reason,
        patch: raw.patch,
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// What a known column's Arrow type must be.
#[derive(Clone, Copy)]
enum Kind {
    String,
    Integer,
    Boolean,
}

impl Kind {
    fn accepts(self, t: &DataType) -> bool {
        match self {
            Kind::String => is_string(t),
            Kind::Integer => t.is_integer(),
            Kind::Boolean => matches!(t, DataType::Boolean),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Integer => "integer",
            Kind::Boolean => "bool",
        }
    }
}

const METADATA_COLUMNS: [(&str, Kind); 8] = [
    ("instance_id", Kind::String),
    ("iteration", Kind::Integer),
    ("source", Kind::String),
    ("resolved", Kind::Boolean),
    ("n_turns", Kind::Integer),
    ("sample_idx", Kind::Integer),
    ("exit_reason", Kind::String),
    ("patch", Kind::String),
];

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// The `messages` column must be a list of structs with string `role` and `content`.
fn messages_type_ok(t: &DataType) -> bool {
    let item = match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) | DataType::LargeListView(f) => f,
        _ => return false,
    };
    let DataType::Struct(fields) = item.data_type() else { return false };
    ["role", "content"]
        .iter()
        .all(|name| fields.iter().any(|f| f.name() == name && is_string(f.data_type())))
}

fn check_parquet_schema(path: &Path) -> Result<(), SchemaError> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let format = |message: String| SchemaError::Format { path: path.to_path_buf(), message };
    let file = std::fs::File::open(path).map_err(|source| SchemaError::Io { path: path.to_path_buf(), source })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| SchemaError::Parquet { path: path.to_path_buf(), message: e.to_string() })?;
    let schema = builder.schema();
    let messages = schema.field_with_name("messages").map_err(|_| {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        format(format!("no `messages` column (columns: {})", names.join(", ")))
    })?;
    if !messages_type_ok(messages.data_type()) {
        return Err(format(format!(
            "column `messages` has type {}, expected list<struct<role: string, content: string>>",
            messages.data_type()
        )));
    }
    for (name, kind) in METADATA_COLUMNS {
        if let Ok(f) = schema.field_with_name(name) {
            if !kind.accepts(f.data_type()) {
                return Err(format(format!("column `{name}` has type {}, expected {}", f.data_type(), kind.name())));
            }
        }
    }
    if builder.metadata().file_metadata().num_rows() == 0 {
        return Err(format("empty file: no rows".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, iteration: Option<i64>) -> SftRecord {
        let messages = vec![
            Message::system("sys"),
            Message::user("fix it"),
            Message::assistant("<function=execute_bash><parameter=command>ls</parameter></function>"),
            Message::user("EXECUTION RESULT of [execute_bash]:\na.py"),
            Message::assistant("<function=finish></function>"),
        ];
        SftRecord {
            n_turns: SftRecord::assistant_turns(&messages),
            messages,
            instance_id: id.into(),
            iteration,
            source: "oracle".into(),
            resolved: Some(true),
            sample_idx: Some(1),
            exit_reason: Some("submitted".into()),
            patch: Some("diff --git a/a.py b/a.py\n".into()),
        }
    }

    #[test]
    fn parquet_and_jsonl_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let records = vec![record("a__b-1", Some(0)), record("a__b-2", None)];
        let p = dir.path().join("sft.parquet");
        write_sft(&p, &records).unwrap();
        assert_eq!(read_sft(&p).unwrap(), records);
        let j = dir.path().join("sft.jsonl");
        write_sft_jsonl(&j, &records).unwrap();
        assert_eq!(read_sft(&j).unwrap(), records);
    }

    #[test]
    fn written_schema_is_the_trl_layout() {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sft.parquet");
        write_sft(&p, &[record("x-1", Some(2))]).unwrap();
        let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&p).unwrap()).unwrap();
        assert!(messages_type_ok(b.schema().field_with_name("messages").unwrap().data_type()));
    }

    #[test]
    fn minimal_jsonl_gets_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(
            &p,
            r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}],"tools":"[]","extra":{"x":1}}"#,
        )
        .unwrap();
        let r = &read_sft(&p).unwrap()[0];
        assert_eq!(r.n_turns, 1);
        assert_eq!(r.source, DEFAULT_SOURCE);
        assert_eq!(r.instance_id, "");
        assert_eq!(r.iteration, None);
    }

    /// (file name, contents, expected fragment of the error).
    #[test]
    fn bad_inputs_name_the_problem() {
        let cases: &[(&str, &str, &str)] = &[
            ("empty.jsonl", "", "empty file"),
            ("blank.jsonl", "\n\n", "empty file"),
            ("norole.jsonl", r#"{"messages":[{"content":"x"}]}"#, "line 1: message 0: no `role`"),
            ("tool.jsonl", "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}\n{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "line 2: message 0: unknown role `tool`"),
            ("nomsg.jsonl", r#"{"prompt":"x"}"#, "line 1: no `messages`"),
            ("notjson.jsonl", "{oops", "line 1: not valid JSON"),
            ("badtype.jsonl", r#"{"messages":"hello"}"#, "line 1: malformed"),
            ("array.json", r#"[{"messages":[{"role":"bot","content":"x"}]}]"#, "row 0: message 0: unknown role `bot`"),
            ("empty.parquet", "", "empty file"),
            ("garbage.parquet", "not parquet", "parquet error"),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (name, text, want) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            let err = read_sft(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err:?} lacks {want:?}");
            assert!(err.contains(name), "{name}: {err:?} does not name the file");
        }
    }

    #[test]
    fn parquet_schema_errors() {
        use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, cols: Vec<(&str, ArrayRef)>| {
            let p = dir.path().join(name);
            let batch = RecordBatch::try_from_iter(cols).unwrap();
            let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&p).unwrap(), batch.schema(), None).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
            p
        };
        let strings = |v: &[&str]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
        let p = write("nomessages.parquet", vec![("text", strings(&["a"]))]);
        let e = read_sft(&p).unwrap_err().to_string();
        assert!(e.contains("no `messages` column (columns: text)"), "{e}");
        let p = write("strmessages.parquet", vec![("messages", strings(&["a"]))]);
        let e = read_sft(&p).unwrap_err().to_string();
        assert!(e.contains("column `messages` has type Utf8, expected list<struct<role: string, content: string>>"), "{e}");
        // A good messages column next to a mistyped metadata column.
        let good = dir.path().join("good.parquet");
        write_sft(&good, &[record("x", None)]).unwrap();
        let batch = {
            use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
            let mut r = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&good).unwrap()).unwrap().build().unwrap();
            r.next().unwrap().unwrap()
        };
        let p = write(
            "intid.parquet",
            vec![("messages", batch.column(0).clone()), ("instance_id", Arc::new(Int64Array::from(vec![7])) as ArrayRef)],
        );
        let e = read_sft(&p).unwrap_err().to_string();
        assert!(e.contains("column `instance_id` has type Int64, expected string"), "{e}");
        let p = dir.path().join("zero.parquet");
        write_sft(&p, &[]).unwrap();
        assert!(read_sft(&p).unwrap_err().to_string().contains("empty file: no rows"));
    }
}
