//! Streaming GGUF v3 writer: the header and tensor table go out first, then
//! tensor bytes are written one piece at a time at their final offsets, so a
//! file of any size is produced without holding it in memory, and several
//! threads may fill different tensors (or different parts of one) at once.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{GgufError, Result};
use crate::reader::{DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, MAX_DIMS};
use crate::types::GgmlType;
use crate::value::{Value, ValueType};

/// A tensor to be written: its name, dims (`ne0` first) and type.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dims: &[u64], ggml_type: GgmlType) -> Self {
        Self {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type,
        }
    }

    /// Size in bytes, or an error naming the tensor when the shape is not a
    /// whole number of blocks.
    pub fn size(&self) -> Result<u64> {
        let bad = |message: String| GgufError::Tensor {
            name: self.name.clone(),
            message,
        };
        if self.dims.is_empty() || self.dims.len() > MAX_DIMS as usize || self.dims.contains(&0) {
            return Err(bad(format!("invalid dims {:?}", self.dims)));
        }
        let row = self.ggml_type.row_bytes(self.dims[0]).ok_or_else(|| {
            bad(format!(
                "ne0 = {} is not a multiple of the {} block size {}",
                self.dims[0],
                self.ggml_type,
                self.ggml_type.block_elems()
            ))
        })?;
        self.dims[1..]
            .iter()
            .try_fold(row, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad("size overflows".into()))
    }
}

/// Where each tensor will land: computed before anything is written.
#[derive(Clone, Debug)]
pub struct Layout {
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Per tensor: (offset relative to the data section, size).
    pub placements: Vec<(u64, u64)>,
    pub file_size: u64,
}

fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => encode_str(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(t, items) => {
            out.extend_from_slice(&t.id().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                encode_value(out, item);
            }
        }
    }
}

fn encode_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn check_array_types(key: &str, v: &Value) -> Result<()> {
    if let Value::Array(t, items) = v {
        if *t == ValueType::Array && items.iter().any(|i| !matches!(i, Value::Array(..))) {
            return Err(GgufError::Write(format!(
                "metadata '{key}': array element type mismatch"
            )));
        }
        for item in items {
            if item.value_type() != *t {
                return Err(GgufError::Write(format!(
                    "metadata '{key}': array declared {} holds a {}",
                    t.name(),
                    item.type_name()
                )));
            }
            check_array_types(key, item)?;
        }
    }
    Ok(())
}

/// Serialises the header, metadata and tensor table, and plans the data
/// section. Returns the header bytes (padded to the data section) and the
/// layout.
pub fn encode_header(
    metadata: &[(String, Value)],
    tensors: &[TensorSpec],
) -> Result<(Vec<u8>, Layout)> {
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if *a > 0 && a.is_power_of_two() => u64::from(*a),
        Some(_) => {
            return Err(GgufError::Write(
                "general.alignment must be a power-of-two u32".into(),
            ))
        }
    };
    let mut out = Vec::new();
    out.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
    out.extend_from_slice(&GGUF_VERSION.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        check_array_types(key, value)?;
        encode_str(&mut out, key);
        out.extend_from_slice(&value.value_type().id().to_le_bytes());
        encode_value(&mut out, value);
    }
    let mut placements = Vec::with_capacity(tensors.len());
    let mut cursor = 0u64;
    for t in tensors {
        let size = t.size()?;
        encode_str(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
        out.extend_from_slice(&cursor.to_le_bytes());
        placements.push((cursor, size));
        cursor = (cursor + size).div_ceil(alignment) * alignment;
    }
    let data_offset = (out.len() as u64).div_ceil(alignment) * alignment;
    out.resize(data_offset as usize, 0);
    let data_len = placements.last().map_or(0, |&(o, s)| o + s);
    Ok((
        out,
        Layout {
            alignment,
            data_offset,
            file_size: data_offset + data_len,
            placements,
        },
    ))
}

/// A GGUF file being written. Create it with the full metadata and tensor
/// list, then write every tensor's bytes (in any order, from any thread),
/// then call [`GgufWriter::finish`].
pub struct GgufWriter {
    path: PathBuf,
    file: File,
    specs: Vec<TensorSpec>,
    layout: Layout,
}

impl GgufWriter {
    pub fn create(
        path: impl AsRef<Path>,
        metadata: &[(String, Value)],
        tensors: Vec<TensorSpec>,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let (header, layout) = encode_header(metadata, &tensors)?;
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::create(&path).map_err(io)?;
        {
            let mut w = BufWriter::new(&file);
            w.write_all(&header).map_err(io)?;
            w.flush().map_err(io)?;
        }
        // Padding between tensors must read as zeros; a sized (sparse) file gives that.
        file.set_len(layout.file_size).map_err(io)?;
        Ok(Self {
            path,
            file,
            specs: tensors,
            layout,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn specs(&self) -> &[TensorSpec] {
        &self.specs
    }

    /// Writes `bytes` into tensor `index` starting `offset` bytes into it.
    pub fn write_tensor_at(&self, index: usize, offset: u64, bytes: &[u8]) -> Result<()> {
        let Some(&(start, size)) = self.layout.placements.get(index) else {
            return Err(GgufError::Write(format!("no tensor number {index}")));
        };
        let end = offset.checked_add(bytes.len() as u64);
        if end.is_none_or(|e| e > size) {
            return Err(GgufError::Tensor {
                name: self.specs[index].name.clone(),
                message: format!(
                    "write of {} bytes at {offset} exceeds its {size} bytes",
                    bytes.len()
                ),
            });
        }
        self.file
            .write_all_at(bytes, self.layout.data_offset + start + offset)
            .map_err(|source| GgufError::Io {
                path: self.path.display().to_string(),
                source,
            })
    }

    /// Writes the whole of tensor `index`.
    pub fn write_tensor(&self, index: usize, bytes: &[u8]) -> Result<()> {
        let size = self.layout.placements.get(index).map_or(0, |p| p.1);
        if bytes.len() as u64 != size {
            let name = self.specs.get(index).map_or("?", |s| s.name.as_str());
            return Err(GgufError::Write(format!(
                "tensor '{name}' needs {size} bytes, got {}",
                bytes.len()
            )));
        }
        self.write_tensor_at(index, 0, bytes)
    }

    /// Flushes the file to disk.
    pub fn finish(self) -> Result<()> {
        self.file.sync_all().map_err(|source| GgufError::Io {
            path: self.path.display().to_string(),
            source,
        })
    }
}
