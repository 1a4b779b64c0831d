//! Parquet codecs: rows with an explicit Arrow schema, written atomically, readable by pyarrow.

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use crate::SchemaError;

/// The Arrow schema of [`crate::Verdict`] rows.
pub fn verdict_schema() -> SchemaRef {
    let s = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let u = |name: &str| Field::new(name, DataType::UInt32, false);
    Arc::new(Schema::new(vec![
        s("instance_id", false),
        s("model_name_or_path", false),
        s("status", false),
        Field::new("resolved", DataType::Boolean, false),
        Field::new("empty_patch", DataType::Boolean, false),
        s("apply_method", true),
        u("fail_to_pass_passed"),
        u("fail_to_pass_total"),
        u("pass_to_pass_passed"),
        u("pass_to_pass_total"),
        Field::new("failed_tests", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), false),
        Field::new("test_exit_code", DataType::Int32, true),
        Field::new("test_seconds", DataType::Float64, false),
        Field::new("total_seconds", DataType::Float64, false),
        s("error", true),
    ]))
}

/// Writes serde rows as one Parquet file with the given schema (zstd), via a temp file + rename.
pub fn write_parquet<T: Serialize>(path: &Path, schema: SchemaRef, rows: &[T]) -> Result<(), SchemaError> {
    let err = |message: String| SchemaError::Parquet { path: path.to_path_buf(), message };
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .build_decoder()
        .map_err(|e| err(e.to_string()))?;
    let tmp = path.with_extension("parquet.tmp");
    let file = std::fs::File::create(&tmp).map_err(|source| SchemaError::Io { path: tmp.clone(), source })?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(|e| err(e.to_string()))?))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| err(e.to_string()))?;
    for chunk in rows.chunks(1024) {
        decoder.serialize(chunk).map_err(|e| err(format!("row does not fit the schema: {e}")))?;
        if let Some(batch) = decoder.flush().map_err(|e| err(e.to_string()))? {
            writer.write(&batch).map_err(|e| err(e.to_string()))?;
        }
    }
    writer.close().map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|source| SchemaError::Io { path: path.to_path_buf(), source })?;
    Ok(())
}

/// The number of rows a Parquet file holds (from its footer; no data is read).
pub fn parquet_num_rows(path: &Path) -> Result<i64, SchemaError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|source| SchemaError::Io { path: path.to_path_buf(), source })?;
    let reader = SerializedFileReader::new(file).map_err(|e| SchemaError::Parquet { path: path.to_path_buf(), message: e.to_string() })?;
    Ok(reader.metadata().file_metadata().num_rows())
}

/// Reads a Parquet file back as JSON objects, one per row (for tests and small tools).
pub fn read_parquet_json(path: &Path) -> Result<Vec<serde_json::Value>, SchemaError> {
    let rows = crate::task::read_rows(path)?;
    rows.into_iter()
        .map(|(row, v)| v.map_err(|m| SchemaError::Format { path: path.to_path_buf(), message: format!("row {row}: {m}") }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EvalStatus, Verdict};

    #[test]
    fn verdicts_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.parquet");
        let v = Verdict {
            instance_id: "a__b-1".into(),
            model_name_or_path: "m".into(),
            status: EvalStatus::PatchApplyFailed,
            resolved: false,
            empty_patch: false,
            apply_method: None,
            fail_to_pass_passed: 0,
            fail_to_pass_total: 2,
            pass_to_pass_passed: 3,
            pass_to_pass_total: 3,
            failed_tests: vec!["t::x: MISSING".into()],
            test_exit_code: Some(1),
            test_seconds: 0.5,
            total_seconds: 1.5,
            error: Some("boom".into()),
        };
        write_parquet(&p, verdict_schema(), std::slice::from_ref(&v)).unwrap();
        let rows = read_parquet_json(&p).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["status"], "patch_apply_failed");
        assert_eq!(rows[0]["failed_tests"][0], "t::x: MISSING");
        let back: Verdict = serde_json::from_value(rows[0].clone()).unwrap();
        assert_eq!(back, v);
    }
}
