//! A SWE-bench prediction (`instance_id, model_name_or_path, model_patch`) and its loader.

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::task::{read_rows, RowError};
use crate::SchemaError;

/// One model patch to grade, in SWE-bench's predictions format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub instance_id: String,
    #[serde(default)]
    pub model_name_or_path: String,
    /// `null` in the file is read as the empty patch.
    #[serde(default, deserialize_with = "de_null_string")]
    pub model_patch: String,
}

fn de_null_string<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(de)?.unwrap_or_default())
}

/// Loads predictions from JSONL, a JSON array, or a JSON object keyed by instance id
/// (the other layout SWE-bench accepts). Bad rows are returned apart, the rest load.
pub fn load_predictions(path: &Path) -> Result<(Vec<Prediction>, Vec<RowError>), SchemaError> {
    let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Io { path: path.to_path_buf(), source })?;
    if text.trim_start().starts_with('{') && !text.trim_end().contains('\n') || is_keyed_object(&text) {
        if let Ok(map) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text) {
            if map.values().all(|v| v.is_object()) && !map.contains_key("instance_id") {
                let mut preds = Vec::new();
                let mut errors = Vec::new();
                for (row, (key, value)) in map.into_iter().enumerate() {
                    match serde_json::from_value::<Prediction>(value) {
                        Ok(p) => preds.push(p),
                        Err(e) => errors.push(RowError {
                            path: path.to_path_buf(),
                            row,
                            instance_id: Some(key),
                            message: e.to_string(),
                        }),
                    }
                }
                return Ok((preds, errors));
            }
        }
    }
    let mut preds = Vec::new();
    let mut errors = Vec::new();
    for (row, value) in read_rows(path)? {
        let value = match value {
            Ok(v) => v,
            Err(message) => {
                errors.push(RowError { path: path.to_path_buf(), row, instance_id: None, message });
                continue;
            }
        };
        let instance_id = value.get("instance_id").and_then(|v| v.as_str()).map(str::to_string);
        match serde_json::from_value::<Prediction>(value) {
            Ok(p) => preds.push(p),
            Err(e) => errors.push(RowError { path: path.to_path_buf(), row, instance_id, message: e.to_string() }),
        }
    }
    Ok((preds, errors))
}

fn is_keyed_object(text: &str) -> bool {
    let t = text.trim();
    t.starts_with('{') && t.ends_with('}') && serde_json::from_str::<serde_json::Value>(t).is_ok_and(|v| {
        v.as_object().is_some_and(|m| !m.contains_key("instance_id"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jsonl_and_keyed_object() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("p.jsonl");
        std::fs::write(&a, "{\"instance_id\":\"x\",\"model_name_or_path\":\"m\",\"model_patch\":null}\n{\"instance_id\":\"y\",\"model_patch\":\"diff\"}\n").unwrap();
        let (p, e) = load_predictions(&a).unwrap();
        assert!(e.is_empty());
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].model_patch, "");
        let b = dir.path().join("p.json");
        std::fs::write(&b, r#"{"x": {"instance_id":"x","model_name_or_path":"m","model_patch":"d"}}"#).unwrap();
        let (p, e) = load_predictions(&b).unwrap();
        assert!(e.is_empty());
        assert_eq!(p[0].model_patch, "d");
    }
}
