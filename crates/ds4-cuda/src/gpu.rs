//! One CUDA device: its context, the stream all work runs on, the loaded
//! kernels, and small helpers for buffers and launches.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{self as cu, CUdevice_attribute, CUevent_flags, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    ValidAsZeroBits,
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

/// Buffers up to this many elements are recycled through [`Pool`].
pub const POOL_MAX_ELEMS: usize = 4 << 20;

/// Freed small buffers by element count, for reuse. Decode allocates the
/// same few dozen sizes every layer; reusing them saves an async alloc and
/// free per buffer. Safe because all work runs on one stream: a buffer
/// returned here is only handed to work queued after its last use.
#[derive(Default)]
pub struct Pool {
    f32s: Mutex<HashMap<usize, Vec<CudaSlice<f32>>>>,
    i32s: Mutex<HashMap<usize, Vec<CudaSlice<i32>>>>,
    f64s: Mutex<HashMap<usize, Vec<CudaSlice<f64>>>>,
}

/// Element types the pool keeps.
pub trait Pooled: DeviceRepr + Sized {
    fn bucket(pool: &Pool) -> &Mutex<HashMap<usize, Vec<CudaSlice<Self>>>>;
}

impl Pooled for f32 {
    fn bucket(pool: &Pool) -> &Mutex<HashMap<usize, Vec<CudaSlice<Self>>>> {
        &pool.f32s
    }
}

impl Pooled for i32 {
    fn bucket(pool: &Pool) -> &Mutex<HashMap<usize, Vec<CudaSlice<Self>>>> {
        &pool.i32s
    }
}

impl Pooled for f64 {
    fn bucket(pool: &Pool) -> &Mutex<HashMap<usize, Vec<CudaSlice<Self>>>> {
        &pool.f64s
    }
}

/// A device buffer that goes back to its pool (if any) when dropped.
pub struct DevBuf<T: Pooled> {
    slice: Option<CudaSlice<T>>,
    pool: Option<Arc<Pool>>,
}

impl<T: Pooled> DevBuf<T> {
    /// A buffer that is simply freed when dropped.
    pub fn owned(slice: CudaSlice<T>) -> Self {
        Self {
            slice: Some(slice),
            pool: None,
        }
    }
}

impl<T: Pooled> Deref for DevBuf<T> {
    type Target = CudaSlice<T>;
    fn deref(&self) -> &CudaSlice<T> {
        self.slice.as_ref().expect("buffer present until drop")
    }
}

impl<T: Pooled> DerefMut for DevBuf<T> {
    fn deref_mut(&mut self) -> &mut CudaSlice<T> {
        self.slice.as_mut().expect("buffer present until drop")
    }
}

impl<T: Pooled> Drop for DevBuf<T> {
    fn drop(&mut self) {
        if let (Some(s), Some(p)) = (self.slice.take(), self.pool.as_ref()) {
            if let Ok(mut m) = T::bucket(p).lock() {
                m.entry(s.len()).or_default().push(s);
            }
        }
    }
}

/// A pair of timing events around some stream work.
pub struct Span {
    start: CudaEvent,
    end: CudaEvent,
}

impl Span {
    /// Milliseconds between the two events (waits for the end event).
    pub fn ms(&self) -> Result<f32> {
        Ok(self.start.elapsed_ms(&self.end)?)
    }
}

pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    pool: Arc<Pool>,
    /// While `Some`, every launch is bracketed by timing events (per-kernel
    /// profile for the bench; off otherwise).
    profile: Mutex<Option<Vec<(&'static str, Span)>>>,
    /// Benchmarks only (`ds4-cuda-bench marginal`): kernels whose launches
    /// are left out, their outputs keeping whatever their buffers held, to
    /// measure what each kernel costs a decode step. Empty otherwise.
    skipped: Mutex<Vec<String>>,
    /// Whether `skipped` is non-empty (read on every launch without a lock).
    skipping: AtomicBool,
    pub info: DeviceInfo,
    max_smem_optin: usize,
    dependent_launch: bool,
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

/// Under the driver's lazy module loading (the default since CUDA 12.2) a
/// kernel is put on the device at its first launch, which made the first
/// decode step after a prefill (whose GEMV kernels prefill never used)
/// several milliseconds slower. Load every kernel now instead, where the
/// driver can (`cuFuncLoad`, CUDA 12.4).
fn load_eagerly(funcs: &HashMap<&'static str, CudaFunction>) -> Result<()> {
    let mut version = 0;
    // SAFETY: writes one int.
    let rc = unsafe { cu::cuDriverGetVersion(&mut version) };
    if rc != cu::CUresult::CUDA_SUCCESS || version < 12_040 {
        return Ok(());
    }
    for (name, f) in funcs {
        // SAFETY: `f` is a live function of the loaded module.
        let rc = unsafe { cu::cuFuncLoad(f.cu_function()) };
        if rc != cu::CUresult::CUDA_SUCCESS {
            return Err(CudaError::Invalid(format!("loading kernel {name}: {rc:?}")));
        }
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
        load_eagerly(&funcs)?;
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
            pool: Arc::new(Pool::default()),
            profile: Mutex::new(None),
            skipped: Mutex::new(Vec::new()),
            skipping: AtomicBool::new(false),
            info,
            max_smem_optin,
            dependent_launch: false,
            trace: std::env::var_os("DS4_CUDA_TRACE").is_some_and(|v| v == "1"),
        })
    }

    /// The most dynamic shared memory one block may use (after opting in).
    pub fn max_shared_bytes(&self) -> usize {
        self.max_smem_optin
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

    /// Leaves out every later launch of the kernels named in `names` (none:
    /// launch everything again). For timing only: the results are garbage.
    pub fn skip_launches(&self, names: &[String]) -> Result<()> {
        let mut s = self
            .skipped
            .lock()
            .map_err(|_| CudaError::Invalid("skip list lock poisoned".into()))?;
        *s = names.to_vec();
        self.skipping.store(!s.is_empty(), Ordering::Relaxed);
        Ok(())
    }

    fn is_skipped(&self, name: &str) -> bool {
        self.skipping.load(Ordering::Relaxed)
            && self
                .skipped
                .lock()
                .is_ok_and(|s| s.iter().any(|k| k == name))
    }

    /// Starts recording a timing-event pair around every launch.
    pub fn profile_start(&self) {
        if let Ok(mut p) = self.profile.lock() {
            *p = Some(Vec::new());
        }
    }

    /// Stops recording; returns (kernel, launches, total ms) per kernel,
    /// slowest first (waits for the GPU).
    pub fn profile_take(&self) -> Result<Vec<(&'static str, usize, f64)>> {
        let spans = self
            .profile
            .lock()
            .map_err(|_| CudaError::Invalid("profile lock poisoned".into()))?
            .take()
            .unwrap_or_default();
        let mut by: HashMap<&'static str, (usize, f64)> = HashMap::new();
        for (name, span) in spans {
            let e = by.entry(name).or_default();
            e.0 += 1;
            e.1 += f64::from(span.ms()?);
        }
        let mut v: Vec<_> = by.into_iter().map(|(k, (n, ms))| (k, n, ms)).collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok(v)
    }

    /// Runs a launch, timed when profiling.
    fn timed_launch(&self, name: &str, go: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut guard = match self.profile.lock() {
            Ok(g) => g,
            Err(_) => return go(),
        };
        let Some(list) = guard.as_mut() else {
            drop(guard);
            return go();
        };
        let key = self.funcs.get_key_value(name).map_or("?", |(k, _)| *k);
        let start = self.event()?;
        go()?;
        let end = self.event()?;
        list.push((key, Span { start, end }));
        Ok(())
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
        self.allow_smem(name, f, smem)?;
        if self.trace {
            eprintln!("launch {name} grid {grid:?} block {block} smem {smem} args {args:?}");
        }
        // One slot per argument; the kernel reads each through its pointer.
        let mut values: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) | Arg::U64(p) => p,
                Arg::I32(v) => u64::from(v as u32),
                Arg::I64(v) => v as u64,
                Arg::F32(v) => u64::from(v.to_bits()),
            })
            .collect();
        // Little-endian: a 4-byte argument is the low half of its slot.
        let mut params: Vec<*mut std::ffi::c_void> =
            values.iter_mut().map(|v| (v as *mut u64).cast()).collect();
        // SAFETY: each call site passes the argument list of the kernel's C
        // signature, with device pointers to live buffers large enough for
        // the launch (checked by the stage code that computes the shapes).
        unsafe { self.raw_launch(name, f, grid, block, smem, &mut params) }
    }

    /// Above 48 KB of dynamic + static shared memory a kernel must opt in;
    /// kernels have up to a few KB static, so opt in well before.
    fn allow_smem(&self, name: &str, f: &CudaFunction, smem: u32) -> Result<()> {
        if smem <= 40 * 1024 {
            return Ok(());
        }
        if smem as usize > self.max_smem_optin {
            return Err(CudaError::Unsupported(format!(
                "{name} needs {smem} bytes of shared memory, the device allows {}",
                self.max_smem_optin
            )));
        }
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .map_err(|e| CudaError::Invalid(format!("{name}: {smem} bytes of shared memory: {e:?}")))
    }

    /// Launches `name` with one by-value struct argument (`MatJobs`,
    /// `GemmJobs`: kernels whose C signature is exactly that struct) and
    /// `smem` bytes of dynamic shared memory.
    pub fn launch_struct<S: DeviceRepr>(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        arg: &S,
    ) -> Result<()> {
        let f = self.func(name)?;
        self.allow_smem(name, f, smem)?;
        if self.trace {
            eprintln!("launch {name} grid {grid:?} block {block} smem {smem}");
        }
        let mut params = [(arg as *const S).cast_mut().cast::<std::ffi::c_void>()];
        // SAFETY: `S` is the #[repr(C)] mirror of the kernel's only
        // parameter, whose device pointers the caller built from live
        // buffers sized for the launch.
        unsafe { self.raw_launch(name, f, grid, block, smem, &mut params) }
    }

    /// Whether kernels are launched as programmatic dependents of the
    /// previous one (see `CudaOptions::dependent_launch`); needs compute
    /// capability 9.0, ignored below.
    pub fn set_dependent_launch(&mut self, on: bool) {
        self.dependent_launch = on && self.info.compute_capability.0 >= 9;
    }

    /// `cuLaunchKernelEx` on the backend's stream, timed when profiling.
    ///
    /// # Safety
    /// `params` must point at values laid out as the kernel's parameters,
    /// alive for the call, and every device address among them must be valid
    /// for what the kernel reads and writes.
    unsafe fn raw_launch(
        &self,
        name: &str,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        params: &mut [*mut std::ffi::c_void],
    ) -> Result<()> {
        if self.is_skipped(name) {
            return Ok(());
        }
        if grid.1 > 65_535 || grid.2 > 65_535 {
            return Err(CudaError::Invalid(format!(
                "{name}: grid {grid:?} exceeds the y/z limit of 65535"
            )));
        }
        // SAFETY: a plain C union of integers; zero is a valid value.
        let mut attr: cu::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = cu::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let cfg = cu::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: smem,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: u32::from(self.dependent_launch),
        };
        self.timed_launch(name, || {
            // SAFETY: the caller's contract; `cfg` and `attr` outlive the call.
            let rc = unsafe {
                cu::cuLaunchKernelEx(
                    &cfg,
                    f.cu_function(),
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            };
            if rc != cu::CUresult::CUDA_SUCCESS {
                return Err(CudaError::Invalid(format!(
                    "launch {name} grid {grid:?} block {block} smem {smem}: {rc:?}"
                )));
            }
            Ok(())
        })
    }

    /// A buffer from the pool (or a fresh one), contents unspecified: the
    /// caller launches work that writes all of it before any read.
    pub fn buf<T: Pooled>(&self, n: usize) -> Result<DevBuf<T>> {
        let n = n.max(1);
        if n > POOL_MAX_ELEMS {
            return Ok(DevBuf::owned(self.alloc(n)?));
        }
        let reused = T::bucket(&self.pool)
            .lock()
            .ok()
            .and_then(|mut m| m.get_mut(&n).and_then(Vec::pop));
        let slice = match reused {
            Some(s) => s,
            None => self.alloc(n)?,
        };
        Ok(DevBuf {
            slice: Some(slice),
            pool: Some(self.pool.clone()),
        })
    }

    /// A timing event recorded now on the stream.
    pub fn event(&self) -> Result<CudaEvent> {
        Ok(self
            .stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?)
    }

    /// Times `f`'s stream work with a pair of events.
    pub fn span<R>(&self, f: impl FnOnce() -> R) -> Result<(R, Span)> {
        let start = self.event()?;
        let r = f();
        let end = self.event()?;
        Ok((r, Span { start, end }))
    }

    /// An uninitialised buffer; callers launch a kernel that writes all of it.
    pub fn alloc<T: DeviceRepr>(&self, n: usize) -> Result<CudaSlice<T>> {
        // SAFETY: the contents are unspecified until written; every caller
        // fully overwrites the buffer before reading it.
        unsafe { self.stream.alloc::<T>(n.max(1)) }.map_err(|e| {
            CudaError::Invalid(format!(
                "allocating {n} elements of {} bytes: {e:?}",
                std::mem::size_of::<T>()
            ))
        })
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
