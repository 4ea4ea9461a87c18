//! Errors of the CUDA backend.

use ds4_model::backend::BackendError;

pub type Result<T> = std::result::Result<T, CudaError>;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error(
        "the CUDA driver library (libcuda.so) was not found: this machine has no NVIDIA \
         driver, or its library directory is not on the loader path"
    )]
    NoDriver,
    #[error(
        "the NVRTC library (libnvrtc.so.13) was not found: install CUDA 13.0 or add its lib \
         directory (e.g. /usr/local/cuda/lib64) to LD_LIBRARY_PATH"
    )]
    NoNvrtc,
    #[error("no usable CUDA device: {0}")]
    NoDevice(String),
    #[error("CUDA driver call failed: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("NVRTC could not compile the ds4 kernels (options {options}):\n{log}")]
    Compile { options: String, log: String },
    #[error("{0}")]
    OutOfMemory(String),
    #[error("unsupported by the CUDA backend: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<CudaError> for BackendError {
    fn from(e: CudaError) -> Self {
        BackendError::Other(e.to_string())
    }
}
