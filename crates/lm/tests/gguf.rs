//! The GGUF reader against llama.cpp's `gguf` Python package (fixtures made by
//! `scripts/make_gguf_fixtures.py`), and its one-line errors on bad files.

mod common;

use common::{fixture, fixture_path, smollm2_gguf};

use swegym_lm::{CausalLm, Dtype, GgmlType, GgufError, GgufFile, MetadataValue, Tokenizer};




#[test]
fn metadata_of_every_value_type_matches_gguf_py() {
    let f = GgufFile::open(fixture_path("quant_types.gguf")).unwrap();
    let expected = fixture("quant_types.json");
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    let m = |k: &str| f.get(k).unwrap().clone();
    assert_eq!(m("test.u8"), MetadataValue::U8(200));
    assert_eq!(m("test.i8"), MetadataValue::I8(-100));
    assert_eq!(m("test.u16"), MetadataValue::U16(60000));
    assert_eq!(m("test.i16"), MetadataValue::I16(-30000));
    assert_eq!(m("test.u32"), MetadataValue::U32(4_000_000_000));
    assert_eq!(m("test.i32"), MetadataValue::I32(-2_000_000_000));
    assert_eq!(m("test.f32"), MetadataValue::F32(0.25));
    assert_eq!(m("test.bool"), MetadataValue::Bool(true));
    assert_eq!(m("test.u64"), MetadataValue::U64((1 << 40) + 3));
    assert_eq!(m("test.i64"), MetadataValue::I64(-(1 << 40)));
    assert_eq!(m("test.f64"), MetadataValue::F64(1.5e-300));
    let meta = &expected["metadata"];
    assert_eq!(f.get_str("test.string").unwrap(), meta["test.string"].as_str().unwrap());
    assert_eq!(f.get_i64_array("test.array_i32").unwrap().unwrap(), vec![1, -2, 3]);
    assert_eq!(f.get_str_array("test.array_str").unwrap(), vec!["a", "bc", ""]);
    // typed getters name the file and key on a mismatch
    let err = f.get_u64("test.string").unwrap_err().to_string();
    assert!(err.contains("quant_types.gguf") && err.contains("test.string"), "{err}");
    assert!(f.get_u64("no.such.key").unwrap_err().to_string().contains("missing"));
}

#[test]
fn dequantization_matches_gguf_py_for_every_supported_type() {
    let f = GgufFile::open(fixture_path("quant_types.gguf")).unwrap();
    let expected = fixture("quant_types.json");
    let mut checked = Vec::new();
    for (name, t) in expected["tensors"].as_object().unwrap() {
        let info = f.tensor_info(name).unwrap();
        assert_eq!(info.ty.to_string(), t["type"].as_str().unwrap(), "{name}");
        let dims: Vec<u64> = t["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(info.dims, dims, "{name}");
        if !info.ty.can_dequantize() {
            let err = f.dequantize(name).unwrap_err();
            assert!(matches!(err, GgufError::UnsupportedType { .. }), "{err}");
            continue;
        }
        let (values, shape) = f.dequantize(name).unwrap();
        assert_eq!(shape, vec![dims[1] as i64, dims[0] as i64]);
        let want: Vec<f32> = t["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(values.len(), want.len(), "{name}");
        let max_diff = values.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max_diff == 0.0, "{name}: max abs diff {max_diff} vs gguf-py");
        checked.push(info.ty);
    }
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0,
               GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        assert!(checked.contains(&ty), "fixture lacks {ty}");
    }
}

/// Writes `bytes` to a temp file and returns the error opening it gives.
fn open_error(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    let err = GgufFile::open(&path).unwrap_err().to_string();
    assert!(err.contains("bad.gguf"), "error does not name the file: {err}");
    assert!(!err.contains('\n'), "error is not one line: {err}");
    err
}

#[test]
fn bad_files_give_one_line_errors_naming_the_problem() {
    let good = std::fs::read(fixture_path("quant_types.gguf")).unwrap();
    let f = GgufFile::open(fixture_path("quant_types.gguf")).unwrap();

    let mut wrong_magic = good.clone();
    wrong_magic[..4].copy_from_slice(b"GGML");
    assert!(open_error(&wrong_magic).contains("not a GGUF file"));

    assert!(open_error(b"GG").contains("truncated"));
    // cut inside the header (metadata)
    assert!(open_error(&good[..200]).contains("truncated"));
    // cut inside the tensor data: the last tensor runs past the end
    let err = open_error(&good[..good.len() - 100]);
    assert!(err.contains("runs past the end") && err.contains("tensor"), "{err}");

    let mut version = good.clone();
    version[4..8].copy_from_slice(&9u32.to_le_bytes());
    assert!(open_error(&version).contains("unsupported GGUF version 9"));

    // an unknown ggml type id: patch the type field of the last tensor info
    let last = f.tensors().last().unwrap();
    let name = last.name.as_bytes();
    let pos = good.windows(name.len()).rposition(|w| w == name).unwrap();
    let type_pos = pos + name.len() + 4 + 8 * last.dims.len();
    let mut unknown = good.clone();
    unknown[type_pos..type_pos + 4].copy_from_slice(&77u32.to_le_bytes());
    let err = open_error(&unknown);
    assert!(err.contains("unknown ggml type id 77") && err.contains(&last.name), "{err}");

    assert!(open_error(b"").contains("truncated"));
}

#[test]
fn smollm2_gguf_header_and_tensors_match_gguf_py() {
    let Some(path) = smollm2_gguf() else { return };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_u64("llama.block_count").unwrap(), 30);
    assert_eq!(f.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    let expected = fixture("smollm2_gguf_reference.json");
    for (name, t) in expected["tensors"].as_object().unwrap() {
        let info = f.tensor_info(name).unwrap();
        assert_eq!(info.ty.to_string(), t["type"].as_str().unwrap());
        let (values, _) = f.dequantize(name).unwrap();
        let first16: Vec<f32> = t["first16"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(&values[..16], &first16[..], "{name}");
        let sum: f64 = values.iter().map(|&v| v as f64).sum();
        let sum_abs: f64 = values.iter().map(|&v| (v as f64).abs()).sum();
        let (want_sum, want_abs) = (t["sum"].as_f64().unwrap(), t["sum_abs"].as_f64().unwrap());
        assert!((sum - want_sum).abs() <= 1e-9 * want_abs.max(1.0), "{name}: sum {sum} vs {want_sum}");
        assert!((sum_abs - want_abs).abs() <= 1e-9 * want_abs.max(1.0), "{name}: sum_abs {sum_abs} vs {want_abs}");
    }
}

#[test]
fn gguf_without_model_metadata_fails_by_key() {
    // quant_types.gguf says architecture "llama" but has none of the llama.* keys and no
    // tokenizer: loading it as a model or tokenizer names the file and the missing key
    let f = GgufFile::open(fixture_path("quant_types.gguf")).unwrap();
    let err = CausalLm::from_gguf(&f, Dtype::F32, tch::Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("quant_types.gguf") && err.contains("llama.embedding_length: missing"), "{err}");
    let err = Tokenizer::from_gguf(&f).unwrap_err().to_string();
    assert!(err.contains("quant_types.gguf") && err.contains("tokenizer.ggml.model: missing"), "{err}");
}

/// A GGUF whose tensor data is corrupt (NaN written into an f32 norm of the real SmolLM2
/// file) fails at load naming the file and the tensor, instead of loading and giving NaN
/// logits.
#[test]
fn corrupt_gguf_tensor_data_fails_by_name() {
    let Some(path) = smollm2_gguf() else { return };
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("corrupt.gguf");
    std::fs::copy(&path, &copy).unwrap();
    let name = "blk.3.attn_norm.weight";
    let offset = {
        let f = GgufFile::open(&copy).unwrap();
        let info = f.tensor_info(name).unwrap();
        assert_eq!(info.ty, GgmlType::F32, "{name} is stored as f32 in this file");
        f.tensor_file_offset(info)
    };
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
        file.seek(SeekFrom::Start(offset + 4 * 10)).unwrap();
        for _ in 0..2 {
            file.write_all(&f32::NAN.to_le_bytes()).unwrap();
        }
    }
    let f = GgufFile::open(&copy).unwrap();
    let err = CausalLm::from_gguf(&f, Dtype::F32, tch::Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("corrupt.gguf") && err.contains("not all finite numbers (2 NaN or infinite)"), "{err}");
    assert!(err.contains("layers.3.input_layernorm.weight") || err.contains(name), "the tensor is named: {err}");
}
