//! GGUF files (llama.cpp's single-file checkpoints): header, metadata, tensor infos, and
//! dequantized tensor data. Layout as in ggml's `docs/gguf.md`; versions 2 and 3.
//!
//! The file is memory-mapped; `GgufFile::open` validates the whole header and that every
//! tensor's bytes lie inside the file, so later reads cannot run off the end.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::dequant;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Sanity limits: a header claiming more than this is corrupt, not a model.
const MAX_COUNT: u64 = 1 << 24;
const MAX_DIMS: u32 = 4;

/// A problem with a GGUF file; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot read GGUF file: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a GGUF file (starts with {found:?}, expected \"GGUF\")")]
    BadMagic { path: PathBuf, found: String },
    #[error("{path}: unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path}: truncated GGUF file: {what} at byte {offset} runs past the end ({len} bytes)")]
    Truncated { path: PathBuf, what: String, offset: u64, len: u64 },
    #[error("{path}: corrupt GGUF header: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    #[error("{path}: tensor {name}: unknown ggml type id {id}")]
    UnknownType { path: PathBuf, name: String, id: u32 },
    #[error("{path}: tensor {name}: data at bytes {start}..{end} runs past the end of the file ({len} bytes); truncated file?")]
    TensorOutOfBounds { path: PathBuf, name: String, start: u64, end: u64, len: u64 },
    #[error("{path}: tensor {name}: cannot dequantize ggml type {ty} (supported: {supported})")]
    UnsupportedType { path: PathBuf, name: String, ty: GgmlType, supported: &'static str },
    #[error("{path}: no tensor named {name}")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: metadata {key}: {problem}")]
    Metadata { path: PathBuf, key: String, problem: String },
}

/// The ggml tensor types (ids as in ggml.h). Only some can be dequantized
/// ([`GgmlType::can_dequantize`]); the rest are known so a file holding them still opens.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,
    IQ2_XXS, IQ2_XS, IQ3_XXS, IQ1_S, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS, I8, I16, I32, I64, F64,
    IQ1_M, BF16, TQ1_0, TQ2_0, MXFP4,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32, 1 => F16, 2 => Q4_0, 3 => Q4_1, 6 => Q5_0, 7 => Q5_1, 8 => Q8_0,
            9 => Q8_1, 10 => Q2_K, 11 => Q3_K, 12 => Q4_K, 13 => Q5_K, 14 => Q6_K, 15 => Q8_K,
            16 => IQ2_XXS, 17 => IQ2_XS, 18 => IQ3_XXS, 19 => IQ1_S, 20 => IQ4_NL, 21 => IQ3_S,
            22 => IQ2_S, 23 => IQ4_XS, 24 => I8, 25 => I16, 26 => I32, 27 => I64, 28 => F64,
            29 => IQ1_M, 30 => BF16, 34 => TQ1_0, 35 => TQ2_0, 39 => MXFP4,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block), as ggml's type traits.
    pub fn block_layout(self) -> (u64, u64) {
        use GgmlType::*;
        match self {
            F32 => (1, 4), F16 => (1, 2), BF16 => (1, 2), F64 => (1, 8),
            I8 => (1, 1), I16 => (1, 2), I32 => (1, 4), I64 => (1, 8),
            Q4_0 => (32, 18), Q4_1 => (32, 20), Q5_0 => (32, 22), Q5_1 => (32, 24),
            Q8_0 => (32, 34), Q8_1 => (32, 40), IQ4_NL => (32, 18), MXFP4 => (32, 17),
            Q2_K => (256, 84), Q3_K => (256, 110), Q4_K => (256, 144), Q5_K => (256, 176),
            Q6_K => (256, 210), Q8_K => (256, 292), IQ2_XXS => (256, 66), IQ2_XS => (256, 74),
            IQ3_XXS => (256, 98), IQ1_S => (256, 50), IQ3_S => (256, 110), IQ2_S => (256, 82),
            IQ4_XS => (256, 136), IQ1_M => (256, 56), TQ1_0 => (256, 54), TQ2_0 => (256, 66),
        }
    }

    /// Whether [`GgufFile::dequantize`] handles this type.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(self, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K)
    }
}

/// The types [`GgmlType::can_dequantize`] accepts, for error messages.
pub const DEQUANTIZABLE: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K";

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One metadata value (the GGUF value types).
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetadataValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetadataValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        use MetadataValue::*;
        match *self {
            U8(v) => Some(v.into()),
            U16(v) => Some(v.into()),
            U32(v) => Some(v.into()),
            U64(v) => Some(v),
            I8(v) => u64::try_from(v).ok(),
            I16(v) => u64::try_from(v).ok(),
            I32(v) => u64::try_from(v).ok(),
            I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        use MetadataValue::*;
        match *self {
            I8(v) => Some(v.into()),
            I16(v) => Some(v.into()),
            I32(v) => Some(v.into()),
            I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::F32(v) => Some(v.into()),
            MetadataValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            MetadataValue::Array(a) => Some(a),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        use MetadataValue::*;
        match self {
            U8(_) => "u8", I8(_) => "i8", U16(_) => "u16", I16(_) => "i16", U32(_) => "u32",
            I32(_) => "i32", F32(_) => "f32", Bool(_) => "bool", String(_) => "string",
            Array(_) => "array", U64(_) => "u64", I64(_) => "i64", F64(_) => "f64",
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape in torch order (outermost first): ggml's dims reversed.
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }

    pub fn n_bytes(&self) -> u64 {
        let (block, size) = self.ty.block_layout();
        self.n_elements() / block * size
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: BTreeMap<String, MetadataValue>,
    tensors: Vec<TensorInfo>,
    by_name: BTreeMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and validates `path`: header, metadata, tensor infos, and tensor extents.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io { path: path.clone(), source };
        let file = File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only; a file changed underneath us while open is outside
        // what this reader promises (as for every mmap-based checkpoint loader).
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, mmap)
    }

    fn parse(path: PathBuf, mmap: Mmap) -> Result<Self, GgufError> {
        let mut r = Reader { path: &path, buf: &mmap, pos: 0 };
        let magic = r.bytes(4, "magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                path: path.clone(),
                found: String::from_utf8_lossy(magic).into_owned(),
            });
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion { path: path.clone(), version });
        }
        let n_tensors = r.count("tensor count")?;
        let n_kv = r.count("metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let ty = r.u32(&format!("type of metadata {key}"))?;
            let value = r.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(r.corrupt(format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut by_name = BTreeMap::new();
        for i in 0..n_tensors {
            let name = r.string(&format!("name of tensor #{i}"))?;
            let n_dims = r.u32(&format!("dims of tensor {name}"))?;
            if n_dims > MAX_DIMS {
                return Err(r.corrupt(format!("tensor {name} has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&format!("dims of tensor {name}"))?);
            }
            let id = r.u32(&format!("type of tensor {name}"))?;
            let ty = GgmlType::from_id(id)
                .ok_or_else(|| GgufError::UnknownType { path: path.clone(), name: name.clone(), id })?;
            let offset = r.u64(&format!("offset of tensor {name}"))?;
            let info = TensorInfo { name: name.clone(), dims, ty, offset };
            let n = info
                .dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| r.corrupt(format!("tensor {name}: dims {:?} overflow", info.dims)))?;
            if n % ty.block_layout().0 != 0 {
                return Err(r.corrupt(format!(
                    "tensor {name}: {n} elements is not a whole number of {ty} blocks"
                )));
            }
            if offset % alignment != 0 {
                return Err(r.corrupt(format!("tensor {name}: offset {offset} is not {alignment}-aligned")));
            }
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(r.corrupt(format!("tensor {name} appears twice")));
            }
            tensors.push(info);
        }
        let data_offset = r.pos.div_ceil(alignment) * alignment;
        let len = mmap.len() as u64;
        for t in &tensors {
            let start = data_offset + t.offset;
            let end = start + t.n_bytes();
            if end > len {
                return Err(GgufError::TensorOutOfBounds { path: path.clone(), name: t.name.clone(), start, end, len });
            }
        }
        Ok(Self { path, mmap, version, alignment, data_offset, metadata, tensors, by_name })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    pub fn metadata(&self) -> &BTreeMap<String, MetadataValue> {
        &self.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.get(key)
    }

    fn metadata_error(&self, key: &str, problem: impl Into<String>) -> GgufError {
        GgufError::Metadata { path: self.path.clone(), key: key.into(), problem: problem.into() }
    }

    /// A required unsigned integer.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.get(key).ok_or_else(|| self.metadata_error(key, "missing"))?;
        v.as_u64().ok_or_else(|| self.metadata_error(key, format!("expected an unsigned integer, found {}", v.type_name())))
    }

    /// A required float (integers accepted).
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.get(key).ok_or_else(|| self.metadata_error(key, "missing"))?;
        v.as_f64().ok_or_else(|| self.metadata_error(key, format!("expected a number, found {}", v.type_name())))
    }

    /// A required string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.get(key).ok_or_else(|| self.metadata_error(key, "missing"))?;
        v.as_str().ok_or_else(|| self.metadata_error(key, format!("expected a string, found {}", v.type_name())))
    }

    /// A required array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let v = self.get(key).ok_or_else(|| self.metadata_error(key, "missing"))?;
        let items = v
            .as_array()
            .ok_or_else(|| self.metadata_error(key, format!("expected an array, found {}", v.type_name())))?;
        items
            .iter()
            .map(|item| item.as_str().ok_or_else(|| self.metadata_error(key, "expected an array of strings")))
            .collect()
    }

    /// An optional array of integers.
    pub fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let items = v
            .as_array()
            .ok_or_else(|| self.metadata_error(key, format!("expected an array, found {}", v.type_name())))?;
        items
            .iter()
            .map(|item| item.as_i64().ok_or_else(|| self.metadata_error(key, "expected an array of integers")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Where a tensor's bytes start in the file.
    pub fn tensor_file_offset(&self, info: &TensorInfo) -> u64 {
        self.data_offset + info.offset
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.mmap[start..start + info.n_bytes() as usize]
    }

    /// The tensor `name` dequantized to f32, flat, in ggml (= row-major torch) order,
    /// with its torch-order shape.
    pub fn dequantize(&self, name: &str) -> Result<(Vec<f32>, Vec<i64>), GgufError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor { path: self.path.clone(), name: name.into() })?;
        let values = dequant::dequantize(info.ty, self.tensor_bytes(info), info.n_elements() as usize)
            .ok_or_else(|| GgufError::UnsupportedType {
                path: self.path.clone(),
                name: name.into(),
                ty: info.ty,
                supported: DEQUANTIZABLE,
            })?;
        Ok((values, info.shape()))
    }
}

/// A bounds-checked little-endian cursor over the header.
struct Reader<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: u64,
}

impl<'a> Reader<'a> {
    fn truncated(&self, what: &str) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            what: what.to_string(),
            offset: self.pos,
            len: self.buf.len() as u64,
        }
    }

    fn corrupt(&self, problem: String) -> GgufError {
        GgufError::Corrupt { path: self.path.to_path_buf(), problem }
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len() as u64);
        let Some(end) = end else { return Err(self.truncated(what)) };
        let out = &self.buf[self.pos as usize..end as usize];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        Ok(self.bytes(N as u64, what)?.try_into().expect("length checked"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn count(&mut self, what: &str) -> Result<u64, GgufError> {
        let n = self.u64(what)?;
        if n > MAX_COUNT {
            return Err(self.corrupt(format!("{what} {n} is implausibly large")));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.u64(what)?;
        let start = self.pos;
        let bytes = self.bytes(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.corrupt(format!("{what} at byte {start} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<MetadataValue, GgufError> {
        use MetadataValue as V;
        let what = &format!("value of metadata {key}");
        Ok(match ty {
            0 => V::U8(self.array::<1>(what)?[0]),
            1 => V::I8(i8::from_le_bytes(self.array(what)?)),
            2 => V::U16(u16::from_le_bytes(self.array(what)?)),
            3 => V::I16(i16::from_le_bytes(self.array(what)?)),
            4 => V::U32(self.u32(what)?),
            5 => V::I32(i32::from_le_bytes(self.array(what)?)),
            6 => V::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => V::Bool(false),
                1 => V::Bool(true),
                b => return Err(self.corrupt(format!("metadata {key}: bool byte {b}"))),
            },
            8 => V::String(self.string(what)?),
            9 => {
                if depth > 0 {
                    return Err(self.corrupt(format!("metadata {key}: nested arrays")));
                }
                let elem_ty = self.u32(what)?;
                let n = self.count(what)?;
                let mut items = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                V::Array(items)
            }
            10 => V::U64(self.u64(what)?),
            11 => V::I64(i64::from_le_bytes(self.array(what)?)),
            12 => V::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(self.corrupt(format!("metadata {key}: unknown value type {other}"))),
        })
    }
}
