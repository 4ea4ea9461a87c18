//! Placeholder until the SIMD kernels land: the scalar reference.
use crate::dispatch::{DotKernels, Isa};
pub(crate) fn kernels() -> DotKernels {
    DotKernels::new(Isa::Scalar).expect("scalar is always available")
}
