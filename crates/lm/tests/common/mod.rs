//! Helpers shared by the integration tests: fixture paths and the cached SmolLM2 GGUF.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub fn fixture(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_path(name)).unwrap()).unwrap()
}

/// The SmolLM2 GGUF that `make setup` puts in the cache, or `None` (with the reason
/// printed) when it is absent; CI runs setup first, so there it is always present.
pub fn smollm2_gguf() -> Option<PathBuf> {
    let cache = std::env::var_os("SWEGYM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/swegym"));
    let path = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipped: {} is absent (run `make setup`)", path.display());
        None
    }
}
