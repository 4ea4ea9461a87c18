//! Run-time selection of dot kernels.
//!
//! Each instruction-set level provides one kernel per weight format. The best
//! level the CPU supports is detected once (`OnceLock`); tests and benchmarks
//! can ask for a specific level with [`DotKernels::new`].

use std::sync::OnceLock;

use crate::{check_lengths, float, iq2_xxs, q2_k, q4_k, q8_0, BlockFormat, QuantError};

/// Signature of a dot kernel: `Σ_i w_i·x_i` of one weight row with `x`.
///
/// Callers must guarantee that the CPU supports the kernel's instruction set
/// and that `row.len() == format.row_bytes(x.len())`; kernels may read
/// without bounds checks on that basis.
pub(crate) type DotFn = unsafe fn(&[u8], &[f32]) -> f32;

/// An instruction-set level of the dot kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust (the reference).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512F (plus the AVX2 set).
    Avx512,
    /// AArch64 Advanced SIMD.
    Neon,
}

impl Isa {
    /// Every level, from the most portable to the widest.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

    /// Whether this build and this CPU can run the level.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Isa::Avx2.is_available() && std::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

/// The levels this CPU can run, most portable first (so the last is the best).
pub fn available_isas() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
}

/// One dot kernel per weight format for one instruction-set level.
#[derive(Clone, Copy, Debug)]
pub struct DotKernels {
    isa: Isa,
    f32: DotFn,
    f16: DotFn,
    bf16: DotFn,
    q8_0: DotFn,
    q2_k: DotFn,
    q4_k: DotFn,
    iq2_xxs: DotFn,
}

impl DotKernels {
    /// Kernels of level `isa`, or [`QuantError::IsaUnavailable`].
    pub fn new(isa: Isa) -> Result<DotKernels, QuantError> {
        if !isa.is_available() {
            return Err(QuantError::IsaUnavailable(isa));
        }
        Ok(match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::x86_avx2::kernels(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => crate::x86_avx512::kernels(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => crate::neon::kernels(),
            _ => DotKernels::scalar(),
        })
    }

    fn scalar() -> DotKernels {
        DotKernels {
            isa: Isa::Scalar,
            f32: float::dot_f32_scalar,
            f16: float::dot_f16_scalar,
            bf16: float::dot_bf16_scalar,
            q8_0: q8_0::dot_scalar,
            q2_k: q2_k::dot_scalar,
            q4_k: q4_k::dot_scalar,
            iq2_xxs: iq2_xxs::dot_scalar,
        }
    }

    /// Builds a table from kernels of one level; formats a level does not
    /// accelerate fall back to the scalar reference.
    #[allow(clippy::too_many_arguments, dead_code)]
    pub(crate) fn from_parts(
        isa: Isa,
        f32: DotFn,
        f16: DotFn,
        bf16: DotFn,
        q8_0: DotFn,
        q2_k: DotFn,
        q4_k: DotFn,
        iq2_xxs: DotFn,
    ) -> DotKernels {
        DotKernels {
            isa,
            f32,
            f16,
            bf16,
            q8_0,
            q2_k,
            q4_k,
            iq2_xxs,
        }
    }

    /// The best level of this CPU, detected on first use.
    pub fn best() -> &'static DotKernels {
        static BEST: OnceLock<DotKernels> = OnceLock::new();
        BEST.get_or_init(|| {
            let isa = *available_isas().last().unwrap_or(&Isa::Scalar);
            DotKernels::new(isa).unwrap_or_else(|_| DotKernels::scalar())
        })
    }

    /// The level of these kernels.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    fn kernel(&self, format: BlockFormat) -> Result<DotFn, QuantError> {
        Ok(match format {
            BlockFormat::F32 => self.f32,
            BlockFormat::F16 => self.f16,
            BlockFormat::BF16 => self.bf16,
            BlockFormat::Q8_0 => self.q8_0,
            BlockFormat::Q2_K => self.q2_k,
            BlockFormat::Q4_K => self.q4_k,
            BlockFormat::IQ2_XXS => self.iq2_xxs,
            BlockFormat::Q8_K => return Err(QuantError::Unsupported { format, op: "dot" }),
        })
    }

    /// `Σ_i w_i·x_i` of one row of weights (`row`, whole blocks of
    /// `format` for `x.len()` elements) with f32 activations `x`,
    /// accumulated in f32.
    pub fn dot(&self, format: BlockFormat, row: &[u8], x: &[f32]) -> Result<f32, QuantError> {
        let k = self.kernel(format)?;
        check_lengths(format, row.len(), x.len())?;
        // SAFETY: `self` was built by `new`, which checked that the CPU runs
        // this level, and the lengths were checked just above.
        Ok(unsafe { k(row, x) })
    }

    /// `y[r] = dot(row r, x)` for `n_rows` consecutive rows in `rows`.
    pub fn matvec(
        &self,
        format: BlockFormat,
        rows: &[u8],
        n_rows: usize,
        x: &[f32],
        y: &mut [f32],
    ) -> Result<(), QuantError> {
        let k = self.kernel(format)?;
        let row_bytes = format
            .row_bytes(x.len())
            .ok_or(QuantError::NotBlockMultiple {
                format,
                n_elems: x.len(),
                block_elems: format.block_elems(),
            })?;
        if y.len() != n_rows {
            return Err(QuantError::Length {
                what: "matvec output",
                expected: n_rows,
                got: y.len(),
            });
        }
        let expected = row_bytes.checked_mul(n_rows).ok_or(QuantError::Length {
            what: "matvec rows (bytes)",
            expected: usize::MAX,
            got: rows.len(),
        })?;
        if rows.len() != expected {
            return Err(QuantError::Length {
                what: "matvec rows (bytes)",
                expected,
                got: rows.len(),
            });
        }
        if row_bytes == 0 {
            y.fill(0.0);
            return Ok(());
        }
        for (out, row) in y.iter_mut().zip(rows.chunks_exact(row_bytes)) {
            // SAFETY: level checked by `new`; each chunk is exactly
            // `row_bytes(x.len())` bytes.
            *out = unsafe { k(row, x) };
        }
        Ok(())
    }
}

/// [`DotKernels::dot`] with the best kernels of this CPU.
pub fn dot(format: BlockFormat, row: &[u8], x: &[f32]) -> Result<f32, QuantError> {
    DotKernels::best().dot(format, row, x)
}

/// [`DotKernels::matvec`] with the best kernels of this CPU.
pub fn matvec(
    format: BlockFormat,
    rows: &[u8],
    n_rows: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<(), QuantError> {
    DotKernels::best().matvec(format, rows, n_rows, x, y)
}
