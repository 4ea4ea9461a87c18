//! Bounds-checked GGUF v3 parser over a byte slice (usually an mmap).

use std::collections::HashMap;
use std::fs::File;
use std::ops::Deref;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{GgufError, Result};
use crate::types::GgmlType;
use crate::value::{Value, ValueType};

/// `"GGUF"` read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
pub const GGUF_VERSION: u32 = 3;
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML tensors have at most four dimensions.
pub const MAX_DIMS: u32 = 4;
/// Nested arrays deeper than this are rejected rather than recursed into.
const MAX_ARRAY_DEPTH: u32 = 8;

/// One entry of the tensor table, validated against the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// `ne0` first (the contiguous dimension).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Size in bytes (`Π dims / block_elems · block_bytes`).
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes of one row (`dims[0]` elements).
    pub fn row_bytes(&self) -> u64 {
        self.ggml_type
            .row_bytes(self.dims[0])
            .expect("validated at parse time")
    }

    /// `[4096, 1024]`-style shape string.
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.dims.iter().map(u64::to_string).collect();
        format!("[{}]", dims.join(", "))
    }
}

enum Storage {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file. The tensor bytes stay in the mapping and are handed
/// out as slices.
pub struct GgufFile {
    storage: Storage,
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    metadata: Vec<(String, Value)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("file_size", &self.storage.len())
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps `path` read-only and parses it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io_err = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        // SAFETY: the mapping is read-only. Another process truncating or
        // rewriting the model file while we run is outside what we defend
        // against (as for every mmap-based model loader).
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        Self::parse(Storage::Mmap(mmap))
    }

    /// Parses an in-memory file (tests, fuzzing, small tools).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<Self> {
        let header = parse_header(&storage)?;
        Ok(Self {
            storage,
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            metadata_index: header
                .metadata
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect(),
            metadata: header.metadata,
            tensor_index: header
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: header.tensors,
        })
    }

    /// Total file size in bytes.
    pub fn file_size(&self) -> u64 {
        self.storage.len() as u64
    }

    /// Metadata entries in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor of this file (bounds were checked at parse time).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.storage[start..start + info.size as usize]
    }

    /// The whole file as bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.storage
    }
}

struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
}

/// A cursor that never reads past the end and reports where it failed.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    context: Option<String>,
}

impl<'a> Cursor<'a> {
    fn fail<T>(&self, offset: usize, message: impl Into<String>) -> Result<T> {
        Err(GgufError::Format {
            offset: offset as u64,
            context: self.context.clone(),
            message: message.into(),
        })
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return self.fail(
                self.pos,
                format!(
                    "needs {n} bytes but the file has {} left (truncated?)",
                    self.remaining()
                ),
            );
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items that each occupy at least `min_item_bytes`: rejected
    /// early when the rest of the file could not possibly hold them, so a
    /// forged count never drives a huge allocation.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.u64()?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_item_bytes.max(1)))
            .is_some_and(|bytes| bytes <= self.remaining());
        if !fits {
            return self.fail(
                at,
                format!(
                    "{what} count {n} cannot fit in the {} bytes left",
                    self.remaining()
                ),
            );
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.count(&format!("{what} length"), 1)?;
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => self.fail(at, format!("{what} is not valid UTF-8: {e}")),
        }
    }

    fn value_type(&mut self) -> Result<ValueType> {
        let at = self.pos;
        let id = self.u32()?;
        match ValueType::from_id(id) {
            Some(t) => Ok(t),
            None => self.fail(at, format!("unknown metadata value type {id}")),
        }
    }

    fn value(&mut self, ty: ValueType, depth: u32) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.u8()?),
            ValueType::I8 => Value::I8(self.u8()? as i8),
            ValueType::U16 => Value::U16(self.u16()?),
            ValueType::I16 => Value::I16(self.u16()? as i16),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(self.u32()? as i32),
            ValueType::F32 => Value::F32(f32::from_bits(self.u32()?)),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(self.u64()? as i64),
            ValueType::F64 => Value::F64(f64::from_bits(self.u64()?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.u8()? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return self.fail(at, format!("bool value {b} is neither 0 nor 1")),
                }
            }
            ValueType::String => Value::String(self.string("string value")?),
            ValueType::Array => {
                let at = self.pos;
                if depth >= MAX_ARRAY_DEPTH {
                    return self.fail(at, format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"));
                }
                let elem = self.value_type()?;
                // A string or array element takes at least its 8-byte length.
                let min = elem.fixed_size().unwrap_or(8);
                let n = self.count("array element", min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

fn parse_header(buf: &[u8]) -> Result<Header> {
    let mut c = Cursor {
        buf,
        pos: 0,
        context: None,
    };
    let magic = c.u32()?;
    if magic != GGUF_MAGIC {
        return c.fail(0, format!("bad magic 0x{magic:08x}, not a GGUF file"));
    }
    let version = c.u32()?;
    if version != GGUF_VERSION {
        return c.fail(
            4,
            format!("GGUF version {version} is not supported (only version {GGUF_VERSION})"),
        );
    }
    // A tensor info takes at least 8 (name len) + 4 (n_dims) + 8 (ne0) + 4 + 8 bytes.
    let n_tensors = c.count("tensor", 32)?;
    // A metadata entry takes at least 8 (key len) + 4 (type) + 1 byte.
    let n_kv = c.count("metadata entry", 13)?;

    let mut metadata = Vec::with_capacity(n_kv);
    let mut seen = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let at = c.pos;
        c.context = Some(format!("metadata entry {i}"));
        let key = c.string("key")?;
        c.context = Some(format!("metadata key '{key}'"));
        if seen.insert(key.clone(), i).is_some() {
            return c.fail(at, "duplicate metadata key");
        }
        let ty = c.value_type()?;
        let value = c.value(ty, 0)?;
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if *a > 0 && a.is_power_of_two() => u64::from(*a),
        Some((_, v)) => {
            return c.fail(
                c.pos,
                format!(
                    "general.alignment must be a power-of-two u32, found {v} ({})",
                    v.type_name()
                ),
            )
        }
    };

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut names = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let at = c.pos;
        c.context = Some(format!("tensor info {i}"));
        let name = c.string("tensor name")?;
        c.context = Some(format!("tensor '{name}'"));
        if names.insert(name.clone(), i).is_some() {
            return c.fail(at, "duplicate tensor name");
        }
        let dims_at = c.pos;
        let n_dims = c.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return c.fail(
                dims_at,
                format!("n_dims {n_dims} is outside 1..={MAX_DIMS}"),
            );
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let at = c.pos;
            let ne = c.u64()?;
            if ne == 0 {
                return c.fail(at, "a dimension is 0");
            }
            dims.push(ne);
        }
        let type_at = c.pos;
        let type_id = c.u32()?;
        let Some(ggml_type) = GgmlType::from_id(type_id) else {
            return c.fail(type_at, format!("unknown tensor type id {type_id}"));
        };
        let offset_at = c.pos;
        let offset = c.u64()?;
        if !offset.is_multiple_of(alignment) {
            return c.fail(
                offset_at,
                format!("data offset {offset} is not a multiple of the alignment {alignment}"),
            );
        }
        let Some(row_bytes) = ggml_type.row_bytes(dims[0]) else {
            return c.fail(
                dims_at,
                format!(
                    "ne0 = {} is not a multiple of the {ggml_type} block size {}",
                    dims[0],
                    ggml_type.block_elems()
                ),
            );
        };
        let size = dims[1..]
            .iter()
            .try_fold(row_bytes, |acc, &d| acc.checked_mul(d));
        let Some(size) = size else {
            return c.fail(dims_at, "tensor size overflows 64 bits");
        };
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            size,
        });
    }
    c.context = None;

    let end_of_infos = c.pos as u64;
    let data_offset = end_of_infos.div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    if data_offset > file_len && !tensors.is_empty() {
        return c.fail(
            c.pos,
            format!(
                "data section would start at {data_offset}, past the end of the file ({file_len})"
            ),
        );
    }
    let data_len = file_len.saturating_sub(data_offset);

    for t in &tensors {
        let end = t.offset.checked_add(t.size);
        if end.is_none_or(|e| e > data_len) {
            return Err(GgufError::Tensor {
                name: t.name.clone(),
                message: format!(
                    "data [{}, +{}) relative to the data section at byte {data_offset} runs past the end of the file ({file_len} bytes)",
                    t.offset, t.size
                ),
            });
        }
    }
    // Overlapping tensors would alias one another's bytes: never legitimate.
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        if pair[0].offset + pair[0].size > pair[1].offset {
            return Err(GgufError::Tensor {
                name: pair[1].name.clone(),
                message: format!(
                    "data at offset {} overlaps tensor '{}' ({} + {} bytes)",
                    pair[1].offset, pair[0].name, pair[0].offset, pair[0].size
                ),
            });
        }
    }

    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}
