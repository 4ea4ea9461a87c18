//! Building blocks the stages share: activations, RMS norms, RoPE and
//! weight × activation products (GEMV for a few rows, tensor-core GEMM for
//! batches; see `kernels/matvec.cu` and `kernels/gemm.cu`).

use cudarc::driver::DeviceRepr;
use ds4_gguf::{GgmlType, GgufFile};
use ds4_model::Tensor;

use crate::error::{CudaError, Result};
use crate::gpu::{offset, Arg, DevBuf, Gpu, NULL};
use crate::{CudaAct, CudaBackend};

/// Threads per block of the row-parallel kernels.
pub const BLOCK: u32 = 256;
/// Warps per block of the warp-per-row kernels (BLOCK / 32).
pub const WARPS: u32 = BLOCK / 32;

/// Batches of at least this many items go through the tensor-core GEMM
/// (when the format and shape allow), smaller ones through the GEMV.
pub const GEMM_MIN_ITEMS: usize = 8;
/// Weight rows and items of one GEMM tile (`MT_M`, `MT_N` in gemm.cu).
pub const GEMM_TILE_ROWS: usize = 128;
pub const GEMM_TILE_ITEMS: usize = 64;
/// Threads of a GEMM block (gemm.cu `MT_THREADS`).
const GEMM_THREADS: u32 = 128;
/// Warps the GEMV launches aim to keep in flight (132 SMs × ~32).
const GEMV_TARGET_WARPS: usize = 4096;
/// Warps of an x-in-registers Q8_0 launch (~16 per SM): fewer, longer-lived
/// warps load their x slice fewer times.
const XR_TARGET_WARPS: usize = 2048;
/// Rows per batch of `gemv_q8_0_xr` (the kernel's R).
const XR_ROWS: usize = 4;
/// SMs the launch sizes assume (H100 / H200).
const SMS: usize = 132;
/// Dynamic shared memory of `gemv_iq2_xxs_i8` (matvec_i8.cu
/// `DS4_IQ2_TABLE_BYTES`: 384 table entries in 32 copies).
const IQ2_TABLE_BYTES: u32 = 384 * 32 * 4;

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
    /// Output rows `g·rows..(g+1)·rows` read x shifted by `g·stride` floats
    /// (the grouped output projection); `None`: one x for all rows.
    pub x_grp: Option<(usize, usize)>,
    /// GEMV only: `y = Σ_j add[(item·n + j)·stride + row] + W·x`, in j order.
    pub add: Option<(u64, usize, usize)>,
}

impl Items {
    /// `n` items reading rows of `x` (width `x_stride`) one to one, writing
    /// rows of `y` (width `y_stride`).
    pub fn plain(n: usize, x: u64, x_stride: usize, y: u64, y_stride: usize) -> Self {
        Self {
            n,
            mat_ids: 0,
            x,
            x_stride,
            x_div: 1,
            y,
            y_stride,
            x_grp: None,
            add: None,
        }
    }
}

/// `MatJob` of matvec.cu (field order and types must match).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct MatJob {
    w: u64,
    mat_bytes: u64,
    mat_ids: u64,
    row_bytes: u64,
    x: u64,
    x_stride: i64,
    y: u64,
    y_stride: i64,
    x_grp_stride: i64,
    add: u64,
    add_stride: i64,
    n_rows: i32,
    row_len: i32,
    x_div: i32,
    x_grp_rows: i32,
    n_items: i32,
    ksplit: i32,
    block0: i32,
    n_blocks: i32,
    add_n: i32,
    pad: i32,
}

const MAX_JOBS: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct MatJobs {
    j: [MatJob; MAX_JOBS],
    n: i32,
    pad: i32,
}

// SAFETY: #[repr(C)] plain old data mirroring `MatJobs` of matvec.cu.
unsafe impl DeviceRepr for MatJobs {}

/// `GemmJob` of gemm.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct GemmJob {
    w: u64,
    mat_bytes: u64,
    row_bytes: u64,
    x_hi: u64,
    x_lo: u64,
    x_inv: u64,
    x_sum: u64,
    x_stride: i64,
    y: u64,
    y_stride: i64,
    x_grp_stride: i64,
    tiles: u64,
    items: u64,
    n_rows: i32,
    row_len: i32,
    x_div: i32,
    x_grp_rows: i32,
    n_items: i32,
    pad: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct GemmJobs {
    j: [GemmJob; 2],
}

// SAFETY: #[repr(C)] plain old data mirroring `GemmJobs` of gemm.cu.
unsafe impl DeviceRepr for GemmJobs {}

/// Values per activation row a GEMM job reads: the row length, plus the
/// shifts of the grouped output projection's later groups.
fn split_width(m: &Mat, it: &Items) -> usize {
    match it.x_grp {
        Some((grp_rows, stride)) => (m.n_rows / grp_rows - 1) * stride + m.row_len,
        None => m.row_len,
    }
}

/// Activations split for the GEMM (`gemm_split_x`): which values, and the
/// device addresses of the parts, scales and sums (in `_bufs`).
struct SplitX {
    x: u64,
    stride: usize,
    rows: usize,
    width: usize,
    hi: u64,
    lo: u64,
    inv: u64,
    sum: u64,
    _bufs: (DevBuf<f32>, DevBuf<f32>),
}

impl SplitX {
    /// Whether this split holds everything the job's items read.
    fn covers(&self, m: &Mat, it: &Items) -> bool {
        self.x == it.x
            && self.stride == it.x_stride
            && self.rows >= it.n.div_ceil(it.x_div)
            && self.width >= split_width(m, it)
    }
}

/// Routed-expert items grouped by expert on the device (see gemm.cu).
pub struct ExpertTiles {
    pub tiles: DevBuf<i32>,
    pub items: DevBuf<i32>,
    /// Upper bound of the tile count (the launch's grid.y).
    pub max_tiles: usize,
}

/// How a GEMV launch splits a row's k range over warps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KSplit {
    /// Into 1 to 8 shares of this many chunks (more when there are few rows).
    Chunks(usize),
    /// Into 1024-value slices, one warp each (`gemv_q8_0_xr`).
    Slices,
    /// Into `ks` shares (the fixed chunks per lane of the int8-plane
    /// kernels, matvec_i8.cu), in about `blocks_per_sm` blocks per SM (the
    /// kernel's occupancy) that each quantise their x row once and walk
    /// several row batches; `smem` bytes of dynamic shared memory.
    Planes {
        ks: usize,
        blocks_per_sm: usize,
        smem: u32,
    },
}

/// The GEMV kernel for a format: fast (16-byte loads) when the shape allows,
/// else the element-wise one. Returns (kernel, rows per warp, k split).
fn gemv_kernel(
    m: &Mat,
    its: &[Items],
    opts: &crate::CudaOptions,
) -> Result<(&'static str, usize, KSplit)> {
    let st = opts.gemv_staging.stages(m.ggml_type);
    let aligned = m.addr.is_multiple_of(16)
        && its.iter().all(|it| {
            it.x % 16 == 0 && it.x_stride % 4 == 0 && it.x_grp.is_none_or(|(_, s)| s % 4 == 0)
        });
    let l = m.row_len;
    let (name, rows, chunks) = match m.ggml_type {
        GgmlType::Q8_0
            if opts.q8_0_x_registers
                && aligned
                && l.is_multiple_of(1024)
                && matches!(l / 1024, 1 | 2 | 4 | 8)
                && its
                    .iter()
                    .all(|it| it.x_grp.is_none_or(|(rows, _)| rows % XR_ROWS == 0)) =>
        {
            return Ok(("gemv_q8_0_xr", XR_ROWS, KSplit::Slices));
        }
        // The planes kernels: one x row per item, and (their CH) 4 IQ2_XXS
        // or 1 Q2_K chunk per lane per row.
        GgmlType::IQ2_XXS
            if opts.int8_expert_gemvs
                && m.addr.is_multiple_of(16)
                && l == 4096
                && its.iter().all(|it| it.x_grp.is_none()) =>
        {
            let split = KSplit::Planes {
                ks: 1,
                blocks_per_sm: 2,
                smem: IQ2_TABLE_BYTES,
            };
            return Ok(("gemv_iq2_xxs_i8", 2, split));
        }
        GgmlType::Q2_K
            if opts.int8_expert_gemvs
                && m.addr.is_multiple_of(16)
                && (l == 2048 || l == 4096)
                && its.iter().all(|it| it.x_grp.is_none()) =>
        {
            let split = KSplit::Planes {
                ks: l / 2048,
                blocks_per_sm: 2,
                smem: 0,
            };
            return Ok(("gemv_q2_k_i8", 4, split));
        }
        GgmlType::Q8_0 if aligned && l.is_multiple_of(256) => {
            (if st { "gemv_q8_0_xs" } else { "gemv_q8_0" }, 2, l / 16)
        }
        GgmlType::IQ2_XXS if aligned && l.is_multiple_of(1024) => (
            if st {
                "gemv_iq2_xxs_xs"
            } else {
                "gemv_iq2_xxs"
            },
            2,
            l / 32,
        ),
        GgmlType::Q2_K if aligned && l.is_multiple_of(1024) => {
            (if st { "gemv_q2_k_xs" } else { "gemv_q2_k" }, 4, l / 64)
        }
        GgmlType::F16 if aligned && l.is_multiple_of(8) => ("gemv_f16", 1, l / 8),
        GgmlType::F32 => ("gemv_any_f32", 1, l),
        GgmlType::F16 => ("gemv_any_f16", 1, l),
        GgmlType::Q8_0 => ("gemv_any_q8_0", 1, l),
        GgmlType::Q2_K => ("gemv_any_q2_k", 1, l),
        GgmlType::Q4_K => ("gemv_any_q4_k", 1, l),
        GgmlType::IQ2_XXS => ("gemv_any_iq2_xxs", 1, l),
        other => return Err(CudaError::Unsupported(format!("{other} weight matrices"))),
    };
    Ok((name, rows, KSplit::Chunks(chunks)))
}

/// The tensor-core GEMM kernel for a format, if the shape allows one.
fn gemm_kernel(m: &Mat, its: &[Items]) -> Option<&'static str> {
    let ok = m.row_len.is_multiple_of(32)
        && m.addr.is_multiple_of(16)
        && its.iter().all(|it| {
            // gemm_split_x works on groups of 32 values, and the kernel
            // copies a slab's pair of half-slab sums with one 8-byte copy.
            it.add.is_none()
                && it.x % 16 == 0
                && it.x_stride % 32 == 0
                && it
                    .x_grp
                    .is_none_or(|(r, s)| r % GEMM_TILE_ROWS == 0 && s % 32 == 0)
        });
    if !ok {
        return None;
    }
    match m.ggml_type {
        GgmlType::Q8_0 => Some("gemm_q8_0"),
        GgmlType::IQ2_XXS => Some("gemm_iq2_xxs"),
        GgmlType::Q2_K => Some("gemm_q2_k"),
        GgmlType::Q4_K => Some("gemm_q4_k"),
        GgmlType::F16 => Some("gemm_f16"),
        _ => None,
    }
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

/// Repacks rows of a matrix in place into the device layout (matvec.cu).
/// Types other than Q8_0, IQ2_XXS and Q2_K are left as they are.
pub fn repack(
    gpu: &Gpu,
    addr: u64,
    t: GgmlType,
    row_len: usize,
    row_bytes: usize,
    n_rows: usize,
) -> Result<()> {
    let kind = match t {
        GgmlType::Q8_0 => 0,
        GgmlType::IQ2_XXS => 1,
        GgmlType::Q2_K => 2,
        _ => return Ok(()),
    };
    if n_rows == 0 {
        return Ok(());
    }
    gpu.launch(
        "repack_rows",
        (n_rows.min(16_384) as u32, 1, 1),
        BLOCK,
        row_bytes.next_multiple_of(16) as u32,
        &[
            Arg::Ptr(addr),
            Arg::U64(row_bytes as u64),
            Arg::I64(n_rows as i64),
            Arg::I32(row_len as i32),
            Arg::I32(kind),
        ],
    )
}

/// Repacks every matrix of the file once uploaded at `ptr` (file offset `base`).
pub fn repack_file(gpu: &Gpu, file: &GgufFile, ptr: u64, base: usize) -> Result<()> {
    for t in file.tensors() {
        let Some(row_bytes) = t.ggml_type.row_bytes(t.dims[0]) else {
            continue;
        };
        let row_bytes = row_bytes as usize;
        if row_bytes == 0 || t.size == 0 {
            continue;
        }
        let at = ptr + (file.data_offset as usize + t.offset as usize - base) as u64;
        repack(
            gpu,
            at,
            t.ggml_type,
            t.dims[0] as usize,
            row_bytes,
            t.size as usize / row_bytes,
        )?;
    }
    Ok(())
}

impl CudaBackend {
    pub(crate) fn new_act(&self, rows: usize, width: usize) -> Result<CudaAct> {
        Ok(CudaAct {
            rows,
            width,
            buf: self.gpu.buf(rows * width)?,
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
        self.products(&[(m, it)])
    }

    /// Several products of one weight format, in as few launches as the
    /// shapes allow: the GEMM for batches, else the GEMV (one launch for up
    /// to four products).
    pub(crate) fn products(&self, jobs: &[(Mat, Items)]) -> Result<()> {
        let Some((m0, _)) = jobs.first() else {
            return Ok(());
        };
        if jobs.iter().any(|(m, _)| m.ggml_type != m0.ggml_type) {
            return Err(CudaError::Invalid(
                "one launch takes one weight format".into(),
            ));
        }
        let max_items = jobs.iter().map(|(_, it)| it.n).max().unwrap_or(0);
        if max_items >= GEMM_MIN_ITEMS && jobs.iter().all(|(_, it)| it.mat_ids == 0) {
            let its: Vec<Items> = jobs.iter().map(|j| j.1).collect();
            if let Some(kernel) = gemm_kernel(m0, &its) {
                for pair in jobs.chunks(2) {
                    self.gemm(kernel, pair, None)?;
                }
                return Ok(());
            }
        }
        for group in jobs.chunks(MAX_JOBS) {
            self.gemv(group)?;
        }
        Ok(())
    }

    fn gemv(&self, jobs: &[(Mat, Items)]) -> Result<()> {
        let its: Vec<Items> = jobs.iter().map(|j| j.1).collect();
        let (kernel, r, split) = gemv_kernel(&jobs[0].0, &its, &self.opts)?;
        let smem = match split {
            KSplit::Planes { smem, .. } => smem,
            _ => 0,
        };
        // Splits keep whole x_div groups together, so x moves by whole rows.
        let cap = jobs
            .iter()
            .map(|(_, it)| MAX_GRID_Y / it.x_div * it.x_div)
            .min()
            .unwrap_or(MAX_GRID_Y);
        let max_items = jobs.iter().map(|(_, it)| it.n).max().unwrap_or(0);
        let mut done = 0;
        while done < max_items {
            let mut js = MatJobs {
                n: jobs.len() as i32,
                ..Default::default()
            };
            let mut blocks = 0usize;
            let mut grid_y = 0usize;
            for (k, (m, it)) in jobs.iter().enumerate() {
                let n = it.n.saturating_sub(done).min(cap);
                let groups = m.n_rows.div_ceil(r);
                let (ks, n_blocks) = match split {
                    KSplit::Slices => {
                        // A row group of row_len / 1024 warps walks a
                        // contiguous run of R-row batches.
                        let ks = m.row_len / 1024;
                        let target = (XR_TARGET_WARPS / ks / n.max(1)).max(1);
                        let per = groups.div_ceil(target);
                        (ks, groups.div_ceil(per).div_ceil(8 / ks))
                    }
                    KSplit::Planes {
                        ks, blocks_per_sm, ..
                    } => {
                        let n_blocks = groups.div_ceil(8 / ks);
                        let per_job = SMS * blocks_per_sm / (jobs.len() * n.max(1));
                        (ks, n_blocks.min(per_job.max(1)))
                    }
                    KSplit::Chunks(chunks) => {
                        let mut ks = 1usize;
                        while ks < 8
                            && groups * n.max(1) * ks < GEMV_TARGET_WARPS
                            && chunks >= 64 * ks
                        {
                            ks *= 2;
                        }
                        (ks, groups.div_ceil(8 / ks))
                    }
                };
                let (grp_rows, grp_stride) = it.x_grp.unwrap_or((i32::MAX as usize, 0));
                let (add, add_n, add_stride) = it.add.unwrap_or((0, 0, 0));
                js.j[k] = MatJob {
                    w: m.addr,
                    mat_bytes: m.mat_bytes as u64,
                    mat_ids: if it.mat_ids == 0 {
                        0
                    } else {
                        offset::<i32>(it.mat_ids, done)
                    },
                    row_bytes: m.row_bytes as u64,
                    x: offset::<f32>(it.x, done / it.x_div * it.x_stride),
                    x_stride: it.x_stride as i64,
                    y: offset::<f32>(it.y, done * it.y_stride),
                    y_stride: it.y_stride as i64,
                    x_grp_stride: grp_stride as i64,
                    add: if add == 0 {
                        0
                    } else {
                        offset::<f32>(add, done * add_n * add_stride)
                    },
                    add_stride: add_stride as i64,
                    n_rows: m.n_rows as i32,
                    row_len: m.row_len as i32,
                    x_div: it.x_div as i32,
                    x_grp_rows: grp_rows as i32,
                    n_items: n as i32,
                    ksplit: ks as i32,
                    block0: blocks as i32,
                    n_blocks: n_blocks as i32,
                    add_n: add_n as i32,
                    pad: 0,
                };
                blocks += n_blocks;
                grid_y = grid_y.max(n);
            }
            if grid_y > 0 {
                self.gpu.launch_struct(
                    kernel,
                    (blocks as u32, grid_y as u32, 1),
                    BLOCK,
                    smem,
                    &js,
                )?;
            }
            done += cap;
        }
        Ok(())
    }

    /// The activations of a GEMM job as `gemm_split_x` leaves them: f16
    /// parts (hi, lo) and a sum per 16 values, indexed like `it.x`, and a
    /// scale per row.
    /// Covers the values the job's items read: `⌈n / x_div⌉` rows of the
    /// row length plus the group shifts.
    fn split_x(&self, m: &Mat, it: &Items) -> Result<SplitX> {
        let rows = it.n.div_ceil(it.x_div);
        let width = split_width(m, it);
        let elems = rows * it.x_stride;
        // hi and lo as u16 in one f32-sized buffer; scales (one per row,
        // padded to 16 bytes) then sums (one per 16).
        let parts = self.gpu.buf::<f32>(elems)?;
        let inv_len = rows.next_multiple_of(4);
        let scales = self.gpu.buf::<f32>(inv_len + elems / 16)?;
        let (pp, sp) = (self.gpu.ptr(&parts), self.gpu.ptr(&scales));
        self.gpu.launch(
            "gemm_split_x",
            (rows as u32, 1, 1),
            BLOCK,
            0,
            &[
                Arg::Ptr(it.x),
                Arg::I64(it.x_stride as i64),
                Arg::I32(width as i32),
                Arg::I32(rows as i32),
                Arg::Ptr(pp),
                Arg::Ptr(offset::<u16>(pp, elems)),
                Arg::Ptr(sp),
                Arg::Ptr(offset::<f32>(sp, inv_len)),
            ],
        )?;
        Ok(SplitX {
            x: it.x,
            stride: it.x_stride,
            rows,
            width,
            hi: pp,
            lo: offset::<u16>(pp, elems),
            inv: sp,
            sum: offset::<f32>(sp, inv_len),
            _bufs: (parts, scales),
        })
    }

    /// Up to two products of one format through the tensor-core kernel;
    /// with `tiles`, the items come from a routed-expert tile table.
    fn gemm(&self, kernel: &str, jobs: &[(Mat, Items)], tiles: Option<&ExpertTiles>) -> Result<()> {
        let mut js = GemmJobs::default();
        // Jobs reading the same activations share one split.
        let mut splits: Vec<SplitX> = Vec::new();
        for (m, it) in jobs {
            if !splits.iter().any(|sx| sx.covers(m, it)) {
                splits.push(self.split_x(m, it)?);
            }
        }
        let mut grid_x = 0usize;
        let mut grid_y = 0usize;
        for (k, (m, it)) in jobs.iter().enumerate() {
            let (grp_rows, grp_stride) = it.x_grp.unwrap_or((i32::MAX as usize, 0));
            let sx = splits
                .iter()
                .find(|sx| sx.covers(m, it))
                .ok_or_else(|| CudaError::Invalid("gemm: activations not split".into()))?;
            js.j[k] = GemmJob {
                w: m.addr,
                mat_bytes: m.mat_bytes as u64,
                row_bytes: m.row_bytes as u64,
                x_hi: sx.hi,
                x_lo: sx.lo,
                x_inv: sx.inv,
                x_sum: sx.sum,
                x_stride: it.x_stride as i64,
                y: it.y,
                y_stride: it.y_stride as i64,
                x_grp_stride: grp_stride as i64,
                tiles: tiles.map_or(0, |t| self.gpu.ptr(&t.tiles)),
                items: tiles.map_or(0, |t| self.gpu.ptr(&t.items)),
                n_rows: m.n_rows as i32,
                row_len: m.row_len as i32,
                x_div: it.x_div as i32,
                x_grp_rows: grp_rows as i32,
                n_items: it.n as i32,
                pad: 0,
            };
            grid_x = grid_x.max(m.n_rows.div_ceil(GEMM_TILE_ROWS));
            grid_y = grid_y.max(match tiles {
                Some(t) => t.max_tiles,
                None => it.n.div_ceil(GEMM_TILE_ITEMS),
            });
        }
        if grid_x == 0 || grid_y == 0 {
            return Ok(());
        }
        if grid_y > MAX_GRID_Y {
            return Err(CudaError::Invalid(format!(
                "{kernel}: {grid_y} item tiles exceed one launch"
            )));
        }
        self.gpu.launch_struct(
            kernel,
            (grid_x as u32, grid_y as u32, jobs.len() as u32),
            GEMM_THREADS,
            0,
            &js,
        )
    }

    /// Routed-expert products over a tile table (the batched experts).
    /// Returns false when the format has no tensor-core kernel.
    pub(crate) fn grouped(&self, jobs: &[(Mat, Items)], tiles: &ExpertTiles) -> Result<bool> {
        let its: Vec<Items> = jobs.iter().map(|j| j.1).collect();
        let Some(kernel) = gemm_kernel(&jobs[0].0, &its) else {
            return Ok(false);
        };
        for pair in jobs.chunks(2) {
            self.gemm(kernel, pair, Some(tiles))?;
        }
        Ok(true)
    }

    /// Groups `n` items routed by `ids` (i32 expert per item) by expert.
    pub(crate) fn expert_tiles(&self, ids: u64, n: usize) -> Result<ExpertTiles> {
        let e = self.cfg.n_expert;
        let max_tiles = n.div_ceil(GEMM_TILE_ITEMS) + e;
        let counts = self.gpu.buf::<i32>(e)?;
        let offsets = self.gpu.buf::<i32>(e)?;
        let tiles = self.gpu.buf::<i32>(1 + 3 * max_tiles)?;
        let items = self.gpu.buf::<i32>(n)?;
        let warps_grid = ((e as u32).div_ceil(WARPS), 1, 1);
        self.gpu.launch(
            "expert_count",
            warps_grid,
            BLOCK,
            0,
            &[
                Arg::Ptr(ids),
                Arg::I32(n as i32),
                Arg::Ptr(self.gpu.ptr(&counts)),
                Arg::I32(e as i32),
            ],
        )?;
        self.gpu.launch(
            "expert_tiles",
            (1, 1, 1),
            32,
            0,
            &[
                Arg::Ptr(self.gpu.ptr(&counts)),
                Arg::I32(e as i32),
                Arg::I32(GEMM_TILE_ITEMS as i32),
                Arg::Ptr(self.gpu.ptr(&offsets)),
                Arg::Ptr(self.gpu.ptr(&tiles)),
            ],
        )?;
        self.gpu.launch(
            "expert_place",
            warps_grid,
            BLOCK,
            0,
            &[
                Arg::Ptr(ids),
                Arg::I32(n as i32),
                Arg::Ptr(self.gpu.ptr(&offsets)),
                Arg::Ptr(self.gpu.ptr(&items)),
                Arg::I32(e as i32),
            ],
        )?;
        Ok(ExpertTiles {
            tiles,
            items,
            max_tiles,
        })
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
            Items::plain(x.rows, self.ptr(x), x.width, self.ptr(&y), m.n_rows),
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
        // One 16-byte load per thread for production rows.
        let threads = (width / 4).next_multiple_of(32).clamp(32, 1024) as u32;
        self.gpu.launch(
            "rms_norm",
            (rows as u32, 1, 1),
            threads,
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

    /// Dequantises a whole 2-D matrix to f32 on the device and copies it back
    /// (self-test of the block decoders).
    pub fn dequantize_tensor(&self, t: &Tensor) -> Result<Vec<f32>> {
        let m = self.mat(t)?;
        self.dequantize_mat(m)
    }

    /// Uploads a matrix given as host bytes in its file block format and
    /// repacks it into the device layout.
    fn upload_matrix(
        &self,
        ggml_type: GgmlType,
        row_len: usize,
        n_rows: usize,
        bytes: &[u8],
    ) -> Result<(cudarc::driver::CudaSlice<u8>, Mat)> {
        let row_bytes = ggml_type.row_bytes(row_len as u64).ok_or_else(|| {
            CudaError::Invalid(format!("{row_len} is not whole {ggml_type} blocks"))
        })? as usize;
        if bytes.len() != row_bytes * n_rows {
            return Err(CudaError::Invalid(
                "upload_matrix: sizes do not match".into(),
            ));
        }
        let w = self.gpu.upload(bytes)?;
        let addr = self.gpu.ptr(&w);
        repack(&self.gpu, addr, ggml_type, row_len, row_bytes, n_rows)?;
        // GEMVs load their first weights before the dependent-launch wait
        // (weights are immutable once uploaded), so the repack must be done.
        self.gpu.synchronize()?;
        let m = Mat {
            addr,
            ggml_type,
            row_len,
            row_bytes,
            n_rows,
            mat_bytes: row_bytes * n_rows,
        };
        Ok((w, m))
    }

    /// `W · x[t]` for a matrix given as host bytes in its block format (the
    /// self-test's check of formats the model file lacks). Batches of at
    /// least [`GEMM_MIN_ITEMS`] rows go through the tensor-core kernel.
    pub fn matmul_host(
        &self,
        ggml_type: GgmlType,
        row_len: usize,
        n_rows: usize,
        bytes: &[u8],
        x: &[f32],
    ) -> Result<Vec<f32>> {
        if !x.len().is_multiple_of(row_len) {
            return Err(CudaError::Invalid("matmul_host: sizes do not match".into()));
        }
        let (_w, m) = self.upload_matrix(ggml_type, row_len, n_rows, bytes)?;
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
        let (_w, m) = self.upload_matrix(ggml_type, row_len, n_rows, bytes)?;
        self.dequantize_mat(m)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mat(ggml_type: GgmlType, row_len: usize, addr: u64) -> Mat {
        Mat {
            addr,
            ggml_type,
            row_len,
            row_bytes: 0,
            n_rows: 2048,
            mat_bytes: 0,
        }
    }

    /// Six routed items reading one 16-byte aligned activation row.
    fn experts(row_len: usize) -> Items {
        Items {
            mat_ids: 0x1000,
            x_div: 6,
            ..Items::plain(6, 0x2000, row_len, 0x8000, 2048)
        }
    }

    fn pick(t: GgmlType, row_len: usize, opts: &crate::CudaOptions) -> (&'static str, KSplit) {
        let (name, _, split) = gemv_kernel(&mat(t, row_len, 0x10000), &[experts(row_len)], opts)
            .expect("a kernel for every format");
        (name, split)
    }

    #[test]
    fn expert_gemvs_run_on_int8_planes_at_production_widths() {
        let on = crate::CudaOptions::default();
        assert!(on.int8_expert_gemvs);
        let (name, split) = pick(GgmlType::IQ2_XXS, 4096, &on);
        assert_eq!(name, "gemv_iq2_xxs_i8");
        assert_eq!(
            split,
            KSplit::Planes {
                ks: 1,
                blocks_per_sm: 2,
                smem: IQ2_TABLE_BYTES
            }
        );
        // Q2_K: one 64-value chunk per lane, so rows of 4096 take 2 warps.
        assert_eq!(pick(GgmlType::Q2_K, 2048, &on).0, "gemv_q2_k_i8");
        assert!(matches!(
            pick(GgmlType::Q2_K, 4096, &on).1,
            KSplit::Planes { ks: 2, .. }
        ));
    }

    #[test]
    fn other_shapes_and_the_option_off_keep_the_f32_kernels() {
        let on = crate::CudaOptions::default();
        // The planes kernels are built for 4 IQ2_XXS / 1 Q2_K chunks per lane.
        assert_eq!(pick(GgmlType::IQ2_XXS, 2048, &on).0, "gemv_iq2_xxs_xs");
        assert_eq!(pick(GgmlType::Q2_K, 8192, &on).0, "gemv_q2_k");
        // Grouped x (the output projection's layout) is not staged as planes.
        let grouped = Items {
            x_grp: Some((1024, 4096)),
            ..experts(4096)
        };
        let (name, _, _) =
            gemv_kernel(&mat(GgmlType::IQ2_XXS, 4096, 0x10000), &[grouped], &on).unwrap();
        assert_eq!(name, "gemv_iq2_xxs_xs");
        // Unaligned weights take the element-wise kernel.
        let (name, _, _) =
            gemv_kernel(&mat(GgmlType::Q2_K, 2048, 0x10008), &[experts(2048)], &on).unwrap();
        assert_eq!(name, "gemv_any_q2_k");
        let off = crate::CudaOptions {
            int8_expert_gemvs: false,
            ..Default::default()
        };
        assert_eq!(pick(GgmlType::IQ2_XXS, 4096, &off).0, "gemv_iq2_xxs_xs");
        assert_eq!(pick(GgmlType::Q2_K, 2048, &off).0, "gemv_q2_k");
    }

    /// The dynamic shared memory the host gives `gemv_iq2_xxs_i8` is what
    /// the kernel source says its tables take.
    #[test]
    fn iq2_table_bytes_match_the_kernel() {
        let src = crate::kernels::program_source();
        let define = |name: &str| -> String {
            let line = src
                .lines()
                .find(|l| l.starts_with(&format!("#define {name} ")))
                .unwrap_or_else(|| panic!("{name} is defined"));
            line[format!("#define {name} ").len()..].trim().to_string()
        };
        let copies: u32 = define("DS4_IQ2_COPIES").parse().expect("a number");
        assert_eq!(
            define("DS4_IQ2_TABLE_BYTES"),
            "((256 + 128) * DS4_IQ2_COPIES * 4)"
        );
        assert_eq!(IQ2_TABLE_BYTES, (256 + 128) * copies * 4);
    }
}
