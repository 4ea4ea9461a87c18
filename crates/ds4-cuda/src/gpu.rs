//! One CUDA device: its context, the stream all work runs on, the loaded
//! kernels, and small helpers for buffers and launches.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};

use crate::error::{CudaError, Result};
use crate::kernels::{self, PtxSource};

/// A kernel argument. Pointers are raw device addresses, so one launch
/// helper serves every kernel (the sub-buffer offsets are plain arithmetic).
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
}

/// A null device pointer for optional kernel inputs.
pub const NULL: Arg = Arg::Ptr(0);

/// Device facts worth printing next to any measurement.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_bytes: usize,
    pub arch: String,
    pub ptx_from_cache: bool,
}

pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    pub info: DeviceInfo,
    max_smem_optin: usize,
    /// `DS4_CUDA_TRACE=1`: print every launch (for compute-sanitizer reports).
    trace: bool,
}

/// Both CUDA libraries can be loaded (cudarc panics on first use otherwise).
pub fn check_libraries() -> Result<()> {
    // SAFETY: only tries to dlopen the candidate library names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::NoDriver);
    }
    if !kernels::nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    Ok(())
}

impl Gpu {
    /// Opens device `ordinal`, compiles (or loads cached) kernels, loads them all.
    pub fn open(ordinal: usize) -> Result<Self> {
        check_libraries()?;
        let count = CudaContext::device_count()
            .map_err(|e| CudaError::NoDevice(format!("cuDeviceGetCount: {e}")))?;
        if count <= 0 {
            return Err(CudaError::NoDevice(
                "the driver reports no CUDA devices".into(),
            ));
        }
        if ordinal >= count as usize {
            return Err(CudaError::NoDevice(format!(
                "device {ordinal} requested, the driver reports {count}"
            )));
        }
        let ctx = CudaContext::new(ordinal)?;
        // SAFETY: every buffer of this backend is used on the one stream
        // created below, in launch order, so cudarc's cross-stream event
        // tracking is not needed (and would add events to every buffer).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let (major, minor) = ctx.compute_capability()?;
        let arch = kernels::arch_for(major, minor);
        let (ptx, source) = kernels::load_or_compile(&arch)?;
        let module = ctx.load_module(ptx)?;
        let mut funcs = HashMap::new();
        for &name in kernels::KERNELS {
            funcs.insert(name, module.load_function(name)?);
        }
        let max_smem_optin = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?
            as usize;
        let info = DeviceInfo {
            name: ctx.name()?,
            compute_capability: (major, minor),
            total_bytes: ctx.total_mem()?,
            arch,
            ptx_from_cache: source == PtxSource::Cache,
        };
        Ok(Self {
            ctx,
            stream,
            funcs,
            info,
            max_smem_optin,
            trace: std::env::var_os("DS4_CUDA_TRACE").is_some_and(|v| v == "1"),
        })
    }

    /// `(free, total)` device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        Ok(self.ctx.mem_get_info()?)
    }

    fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| CudaError::Invalid(format!("kernel {name} is not loaded")))
    }

    /// Launches `name` on the backend's stream.
    pub fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[Arg],
    ) -> Result<()> {
        let f = self.func(name)?;
        if smem > 48 * 1024 {
            if smem as usize > self.max_smem_optin {
                return Err(CudaError::Unsupported(format!(
                    "{name} needs {smem} bytes of shared memory, the device allows {}",
                    self.max_smem_optin
                )));
            }
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )?;
        }
        if grid.1 > 65_535 || grid.2 > 65_535 {
            return Err(CudaError::Invalid(format!(
                "{name}: grid {grid:?} exceeds the y/z limit of 65535"
            )));
        }
        if self.trace {
            eprintln!("launch {name} grid {grid:?} block {block} smem {smem} args {args:?}");
        }
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::Ptr(p) | Arg::U64(p) => b.arg(p),
                Arg::I32(v) => b.arg(v),
                Arg::I64(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: each call site passes the argument list of the kernel's C
        // signature, with device pointers to live buffers large enough for
        // the launch (checked by the stage code that computes the shapes).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// An uninitialised buffer; callers launch a kernel that writes all of it.
    pub fn alloc<T: DeviceRepr>(&self, n: usize) -> Result<CudaSlice<T>> {
        // SAFETY: the contents are unspecified until written; every caller
        // fully overwrites the buffer before reading it.
        Ok(unsafe { self.stream.alloc::<T>(n.max(1)) }?)
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        Ok(self.stream.alloc_zeros::<T>(n.max(1))?)
    }

    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        if data.is_empty() {
            return self.alloc(1);
        }
        Ok(self.stream.clone_htod(data)?)
    }

    /// Copies `n` elements from the start of `buf` to the host (waits for the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        buf: &CudaSlice<T>,
        n: usize,
    ) -> Result<Vec<T>> {
        let mut out = vec![T::default(); n];
        if n > 0 {
            self.stream.memcpy_dtoh(&buf.slice(0..n), &mut out)?;
        }
        self.stream.synchronize()?;
        Ok(out)
    }

    pub fn copy<T: DeviceRepr>(&self, src: &CudaSlice<T>) -> Result<CudaSlice<T>> {
        Ok(self.stream.clone_dtod(src)?)
    }

    pub fn fill(&self, buf: &CudaSlice<f32>, n: usize, v: f32) -> Result<()> {
        let blocks = n.div_ceil(256).clamp(1, 4096) as u32;
        self.launch(
            "fill_f32",
            (blocks, 1, 1),
            256,
            0,
            &[Arg::Ptr(self.ptr(buf)), Arg::I64(n as i64), Arg::F32(v)],
        )
    }

    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    /// The raw device address of a buffer.
    pub fn ptr<T>(&self, buf: &CudaSlice<T>) -> u64 {
        let (p, _sync) = buf.device_ptr(&self.stream);
        p
    }
}

/// A device address `elems` elements of `T` past `base`.
pub fn offset<T>(base: u64, elems: usize) -> u64 {
    base + (elems * std::mem::size_of::<T>()) as u64
}
