//! Building blocks the stages share: activations, RMS norms, RoPE and
//! weight × activation products.

use ds4_gguf::GgmlType;
use ds4_model::Tensor;

use crate::error::{CudaError, Result};
use crate::gpu::{offset, Arg, NULL};
use crate::{CudaAct, CudaBackend};

/// Threads per block of the row-parallel kernels.
pub const BLOCK: u32 = 256;
/// Warps per block of the warp-per-row kernels (BLOCK / 32).
pub const WARPS: u32 = BLOCK / 32;

/// A weight matrix (or stack of matrices) on the device.
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    pub addr: u64,
    pub ggml_type: GgmlType,
    pub row_len: usize,
    pub row_bytes: usize,
    pub n_rows: usize,
    /// Bytes of one matrix of a stacked 3-D tensor.
    pub mat_bytes: usize,
}

impl Mat {
    /// Rows `start..start + n` only.
    pub fn rows(self, start: usize, n: usize) -> Self {
        Self {
            addr: self.addr + (start * self.row_bytes) as u64,
            n_rows: n,
            ..self
        }
    }
}

/// Where the activations of a product come from and go to.
#[derive(Clone, Copy, Debug)]
pub struct Items {
    pub n: usize,
    /// `i32` matrix index per item (stacked experts), or 0.
    pub mat_ids: u64,
    pub x: u64,
    pub x_stride: usize,
    /// Item `i` reads activation row `i / x_div`.
    pub x_div: usize,
    pub y: u64,
    pub y_stride: usize,
}

/// Rows a RoPE launch rotates: `n_rows` rows of `width` at `x`, of which
/// each run of `rows_per_token` (the heads of one token) shares a position.
#[derive(Clone, Copy, Debug)]
pub struct RopeRows {
    pub x: u64,
    pub n_rows: usize,
    pub width: usize,
    pub rows_per_token: usize,
}

impl RopeRows {
    pub fn new(x: u64, n_rows: usize, width: usize, rows_per_token: usize) -> Self {
        Self {
            x,
            n_rows,
            width,
            rows_per_token,
        }
    }
}

fn matvec_kernel(t: GgmlType) -> Result<&'static str> {
    Ok(match t {
        GgmlType::F32 => "matvec_f32",
        GgmlType::F16 => "matvec_f16",
        GgmlType::Q8_0 => "matvec_q8_0",
        GgmlType::Q2_K => "matvec_q2_k",
        GgmlType::Q4_K => "matvec_q4_k",
        GgmlType::IQ2_XXS => "matvec_iq2_xxs",
        other => return Err(CudaError::Unsupported(format!("{other} weight matrices"))),
    })
}

pub fn dequant_kernel(t: GgmlType) -> Result<&'static str> {
    Ok(match t {
        GgmlType::F32 => "dequant_f32",
        GgmlType::F16 => "dequant_f16",
        GgmlType::Q8_0 => "dequant_q8_0",
        GgmlType::Q2_K => "dequant_q2_k",
        GgmlType::Q4_K => "dequant_q4_k",
        GgmlType::IQ2_XXS => "dequant_iq2_xxs",
        other => return Err(CudaError::Unsupported(format!("{other} weight matrices"))),
    })
}

/// The largest grid.y a launch may have; longer item lists are split.
const MAX_GRID_Y: usize = 65_535;

impl CudaBackend {
    pub(crate) fn new_act(&self, rows: usize, width: usize) -> Result<CudaAct> {
        Ok(CudaAct {
            rows,
            width,
            buf: self.gpu.alloc(rows * width)?,
        })
    }

    pub(crate) fn addr(&self, t: &Tensor) -> Result<u64> {
        self.weights.addr(t)
    }

    pub(crate) fn ptr(&self, a: &CudaAct) -> u64 {
        self.gpu.ptr(&a.buf)
    }

    pub(crate) fn mat(&self, t: &Tensor) -> Result<Mat> {
        Ok(Mat {
            addr: self.addr(t)?,
            ggml_type: t.ggml_type,
            row_len: t.row_len(),
            row_bytes: t.row_bytes(),
            n_rows: t.n_rows(),
            mat_bytes: t.matrix_bytes(),
        })
    }

    /// `y[item] = W[mat(item)] · x[item / x_div]` for every item.
    pub(crate) fn matvec(&self, m: Mat, it: Items) -> Result<()> {
        let kernel = matvec_kernel(m.ggml_type)?;
        let grid_x = (m.n_rows as u32).div_ceil(WARPS);
        // Splits keep whole x_div groups together, so x moves by whole rows.
        let cap = MAX_GRID_Y / it.x_div * it.x_div;
        let mut done = 0;
        while done < it.n {
            let n = (it.n - done).min(cap);
            let ids = if it.mat_ids == 0 {
                NULL
            } else {
                Arg::Ptr(offset::<i32>(it.mat_ids, done))
            };
            self.gpu.launch(
                kernel,
                (grid_x, n as u32, 1),
                BLOCK,
                0,
                &[
                    Arg::Ptr(m.addr),
                    Arg::U64(m.mat_bytes as u64),
                    ids,
                    Arg::U64(m.row_bytes as u64),
                    Arg::I32(m.n_rows as i32),
                    Arg::I32(m.row_len as i32),
                    Arg::Ptr(offset::<f32>(it.x, done / it.x_div * it.x_stride)),
                    Arg::I64(it.x_stride as i64),
                    Arg::I32(it.x_div as i32),
                    Arg::Ptr(offset::<f32>(it.y, done * it.y_stride)),
                    Arg::I64(it.y_stride as i64),
                ],
            )?;
            done += n;
        }
        Ok(())
    }

    /// `y[t] = W · x[t]` for every row of `x` (a plain 2-D weight).
    pub(crate) fn matmul(&self, t: &Tensor, x: &CudaAct) -> Result<CudaAct> {
        let m = self.mat(t)?;
        self.matmul_mat(m, x)
    }

    pub(crate) fn matmul_mat(&self, m: Mat, x: &CudaAct) -> Result<CudaAct> {
        if x.width != m.row_len {
            return Err(CudaError::Invalid(format!(
                "matmul: activation width {} does not match weight rows of {}",
                x.width, m.row_len
            )));
        }
        let y = self.new_act(x.rows, m.n_rows)?;
        self.matvec(
            m,
            Items {
                n: x.rows,
                mat_ids: 0,
                x: self.ptr(x),
                x_stride: x.width,
                x_div: 1,
                y: self.ptr(&y),
                y_stride: m.n_rows,
            },
        )?;
        Ok(y)
    }

    /// RMS norm of every row of `x` into `out` (same shape; may alias).
    pub(crate) fn rms_rows(&self, out: &CudaAct, x: &CudaAct, w: Option<&Tensor>) -> Result<()> {
        let w = match w {
            Some(t) => Arg::Ptr(self.addr(t)?),
            None => NULL,
        };
        self.rms_raw(self.ptr(out), self.ptr(x), w, x.rows, x.width)
    }

    /// RMS norm of `rows` rows of `width` at raw addresses.
    pub(crate) fn rms_raw(
        &self,
        out: u64,
        x: u64,
        w: Arg,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        self.gpu.launch(
            "rms_norm",
            (rows as u32, 1, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(out),
                Arg::Ptr(x),
                w,
                Arg::I32(width as i32),
                Arg::I64(width as i64),
                Arg::I64(width as i64),
                Arg::F32(self.cfg.rms_eps),
            ],
        )
    }

    /// RoPE (layer `layer`'s frequencies) on the tails of `rows`, token `i`
    /// of the batch at position `pos0 + i`.
    pub(crate) fn rope(
        &self,
        layer: usize,
        rows: RopeRows,
        pos0: usize,
        inverse: bool,
    ) -> Result<()> {
        let RopeRows {
            x,
            n_rows,
            width,
            rows_per_token,
        } = rows;
        let n_pairs = self.cfg.n_rot / 2;
        let total = (n_rows * n_pairs) as u32;
        self.gpu.launch(
            "rope_rows",
            (total.div_ceil(BLOCK).max(1), 1, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(x),
                Arg::I32(n_rows as i32),
                Arg::I32(width as i32),
                Arg::I32(rows_per_token as i32),
                Arg::Ptr(self.gpu.ptr(&self.ropes[layer])),
                Arg::I32(n_pairs as i32),
                Arg::I32(pos0 as i32),
                Arg::I32(inverse as i32),
            ],
        )
    }

    /// Dequantises a whole 2-D matrix to f32 on the device and copies it back
    /// (self-test of the block decoders).
    pub fn dequantize_tensor(&self, t: &Tensor) -> Result<Vec<f32>> {
        let m = self.mat(t)?;
        self.dequantize_mat(m)
    }

    /// `W · x[t]` for a matrix given as host bytes in its block format (the
    /// self-test's check of formats the model file lacks).
    pub fn matmul_host(
        &self,
        ggml_type: GgmlType,
        row_len: usize,
        n_rows: usize,
        bytes: &[u8],
        x: &[f32],
    ) -> Result<Vec<f32>> {
        let row_bytes = ggml_type.row_bytes(row_len as u64).ok_or_else(|| {
            CudaError::Invalid(format!("{row_len} is not whole {ggml_type} blocks"))
        })? as usize;
        if bytes.len() != row_bytes * n_rows || !x.len().is_multiple_of(row_len) {
            return Err(CudaError::Invalid("matmul_host: sizes do not match".into()));
        }
        let w = self.gpu.upload(bytes)?;
        let m = Mat {
            addr: self.gpu.ptr(&w),
            ggml_type,
            row_len,
            row_bytes,
            n_rows,
            mat_bytes: row_bytes * n_rows,
        };
        let xa = self.upload_act(x.len() / row_len, row_len, x)?;
        let y = self.matmul_mat(m, &xa)?;
        self.download_act(&y)
    }

    /// Dequantises a matrix given as host bytes on the device.
    pub fn dequantize_host(
        &self,
        ggml_type: GgmlType,
        row_len: usize,
        n_rows: usize,
        bytes: &[u8],
    ) -> Result<Vec<f32>> {
        let row_bytes = ggml_type.row_bytes(row_len as u64).ok_or_else(|| {
            CudaError::Invalid(format!("{row_len} is not whole {ggml_type} blocks"))
        })? as usize;
        if bytes.len() != row_bytes * n_rows {
            return Err(CudaError::Invalid(
                "dequantize_host: sizes do not match".into(),
            ));
        }
        let w = self.gpu.upload(bytes)?;
        self.dequantize_mat(Mat {
            addr: self.gpu.ptr(&w),
            ggml_type,
            row_len,
            row_bytes,
            n_rows,
            mat_bytes: row_bytes * n_rows,
        })
    }

    pub(crate) fn dequantize_mat(&self, m: Mat) -> Result<Vec<f32>> {
        let n = m.n_rows * m.row_len;
        let out = self.gpu.alloc::<f32>(n)?;
        self.gpu.launch(
            dequant_kernel(m.ggml_type)?,
            ((n as u32).div_ceil(BLOCK).clamp(1, 65_535), 1, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(m.addr),
                Arg::U64(m.row_bytes as u64),
                Arg::I32(m.n_rows as i32),
                Arg::I32(m.row_len as i32),
                Arg::Ptr(self.gpu.ptr(&out)),
            ],
        )?;
        self.gpu.download(&out, n)
    }
}
