//! The CUDA C sources of every kernel, their NVRTC compilation and the
//! on-disk cache of the compiled PTX.
//!
//! The `.cu` files are embedded as strings and concatenated into one
//! program (common helpers first, then the IQ2_XXS tables generated from
//! `ds4-quant`, so GPU and CPU decode from the very same data). NVRTC runs on
//! first use; the PTX is cached under `$XDG_CACHE_HOME/ds4/kernels` (or
//! `~/.cache/ds4/kernels`) keyed by a hash of source + options + NVRTC
//! version, so a changed kernel or compiler never reuses stale code.

use std::fmt::Write as _;
use std::path::PathBuf;

use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

use crate::error::{CudaError, Result};

const COMMON: &str = include_str!("../kernels/common.cuh");
const FILES: [(&str, &str); 7] = [
    ("matvec.cu", include_str!("../kernels/matvec.cu")),
    ("matvec_i8.cu", include_str!("../kernels/matvec_i8.cu")),
    ("gemm.cu", include_str!("../kernels/gemm.cu")),
    ("hc.cu", include_str!("../kernels/hc.cu")),
    ("attention.cu", include_str!("../kernels/attention.cu")),
    ("indexer.cu", include_str!("../kernels/indexer.cu")),
    ("ffn.cu", include_str!("../kernels/ffn.cu")),
];

/// Every `extern "C"` kernel of the program; all are loaded at start-up and
/// the NVRTC check verifies that each one is in the PTX.
pub const KERNELS: &[&str] = &[
    "repack_rows",
    "gemv_any_f32",
    "gemv_any_f16",
    "gemv_any_q8_0",
    "gemv_any_q2_k",
    "gemv_any_q4_k",
    "gemv_any_iq2_xxs",
    "gemv_q8_0",
    "gemv_q8_0_xr",
    "gemv_f16",
    "gemv_q2_k",
    "gemv_iq2_xxs",
    "gemv_q8_0_xs",
    "gemv_q2_k_xs",
    "gemv_iq2_xxs_xs",
    "gemv_iq2_xxs_i8",
    "gemv_q2_k_i8",
    "dequant_f32",
    "dequant_f16",
    "dequant_q8_0",
    "dequant_q2_k",
    "dequant_q4_k",
    "dequant_iq2_xxs",
    "gemm_q8_0",
    "gemm_iq2_xxs",
    "gemm_q2_k",
    "gemm_q4_k",
    "gemm_f16",
    "gemm_split_x",
    "expert_count",
    "expert_tiles",
    "expert_place",
    "embed_f16",
    "rms_norm",
    "hc_dots",
    "hc_dots_batch",
    "hc_pre_finish",
    "hc_pre_one",
    "head_finish",
    "hc_post",
    "fill_f32",
    "spin_ns",
    "fp8_rows",
    "hadamard128_rows",
    "f16_round_rows",
    "append_raw",
    "compress_step",
    "compress_emit",
    "compress_state",
    "qkv_post",
    "head_norm_rope",
    "index_q_prep",
    "rope_copy",
    "index_scores",
    "index_scores_t8",
    "index_scores_t4",
    "topk_select",
    "attend",
    "attend_part",
    "attend_mma",
    "attend_mma_f16",
    "to_f16",
    "attend_combine",
    "route",
    "swiglu",
    "sum_experts",
];

/// The lookup tables of the IQ2_XXS decoder as CUDA globals. They live in
/// global memory rather than `__constant__`: lanes of a warp index them
/// divergently, which constant memory would serialise.
fn tables() -> String {
    let mut s = String::from("__device__ const u64 ds4_iq2xxs_grid[256] = {\n");
    for (i, g) in ds4_quant::tables::IQ2XXS_GRID.iter().enumerate() {
        let _ = write!(s, "0x{g:016x}ull,");
        if i % 4 == 3 {
            s.push('\n');
        }
    }
    s.push_str("};\n__device__ const u8 ds4_ksigns_iq2xs[128] = {\n");
    for (i, k) in ds4_quant::tables::KSIGNS_IQ2XS.iter().enumerate() {
        let _ = write!(s, "{k},");
        if i % 16 == 15 {
            s.push('\n');
        }
    }
    s.push_str("};\n");
    s
}

/// The whole program NVRTC compiles.
pub fn program_source() -> String {
    let mut src = String::from(COMMON);
    src.push_str(&tables());
    for (name, text) in FILES {
        let _ = writeln!(src, "// ---- {name} ----");
        src.push_str(text);
    }
    src
}

/// The virtual architecture to compile for: `compute_90a` on Hopper (so
/// Hopper-only instructions are available to later kernels), else the
/// device's own.
pub fn arch_for(major: i32, minor: i32) -> String {
    if (major, minor) == (9, 0) {
        "compute_90a".to_string()
    } else {
        format!("compute_{major}{minor}")
    }
}

/// NVRTC options. IEEE division and square root stay on (the default) and
/// fast math off: the FP8/FP4 simulations must round exactly like the CPU.
pub fn compile_options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
    ]
}

/// Whether the NVRTC library can be loaded (cudarc would panic otherwise).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the candidate library names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// `(major, minor)` of the loaded NVRTC.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; both pointers are valid for writes.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::Invalid(format!("nvrtcVersion failed: {r:?}")));
    }
    Ok((major, minor))
}

/// Compiles the program for `arch` to PTX text, without any cache.
pub fn compile(arch: &str) -> Result<String> {
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let options = compile_options(arch);
    let opts = CompileOptions {
        options: options.clone(),
        name: Some("ds4_kernels.cu".into()),
        ..Default::default()
    };
    match cudarc::nvrtc::compile_ptx_with_opts(program_source(), opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(CompileError::CompileError { log, .. }) => Err(CudaError::Compile {
            options: options.join(" "),
            log: log.to_string_lossy().into_owned(),
        }),
        Err(e) => Err(CudaError::Compile {
            options: options.join(" "),
            log: format!("{e:?}"),
        }),
    }
}

/// 64-bit FNV-1a: stable across Rust versions (unlike `DefaultHasher`),
/// which is what an on-disk cache key needs.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator, so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The cache directory for compiled kernels, if a home can be found.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DS4_KERNEL_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
    };
    Some(base.join("ds4").join("kernels"))
}

/// Where a compile of the current sources would be cached, and under which key.
pub fn cache_key(arch: &str) -> Result<u64> {
    let (major, minor) = nvrtc_version()?;
    let version = format!("nvrtc {major}.{minor}");
    let options = compile_options(arch).join(" ");
    Ok(fnv1a(&[
        program_source().as_bytes(),
        options.as_bytes(),
        version.as_bytes(),
    ]))
}

/// How the PTX was obtained, for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtxSource {
    Cache,
    Compiled,
}

/// The PTX for `arch`, from the disk cache or freshly compiled (and then
/// stored). Cache problems are not errors: the kernels are just compiled.
pub fn load_or_compile(arch: &str) -> Result<(Ptx, PtxSource)> {
    let key = cache_key(arch)?;
    let path = cache_dir().map(|d| d.join(format!("{key:016x}-{arch}.ptx")));
    if let Some(p) = &path {
        if let Ok(text) = std::fs::read_to_string(p) {
            if text.contains(".entry") {
                return Ok((Ptx::from_src(text), PtxSource::Cache));
            }
        }
    }
    let ptx = compile(arch)?;
    if let Some(p) = &path {
        // Write then rename, so a concurrent reader never sees half a file.
        if let Some(dir) = p.parent() {
            if std::fs::create_dir_all(dir).is_ok() {
                let tmp = p.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, &ptx).is_ok() && std::fs::rename(&tmp, p).is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
    }
    Ok((Ptx::from_src(ptx), PtxSource::Compiled))
}

/// Kernels of [`KERNELS`] that a PTX text does not define.
pub fn missing_entries(ptx: &str) -> Vec<&'static str> {
    KERNELS
        .iter()
        .copied()
        .filter(|k| !ptx.contains(&format!(".entry {k}(")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_kernel_is_defined_in_the_source() {
        let src = program_source();
        for k in KERNELS {
            assert!(
                src.contains(&format!("void {k}("))
                    || src.contains(&format!(") {k}("))
                    || src.contains(&format!("({k}, ")),
                "{k} is not in the kernel sources"
            );
        }
    }

    #[test]
    fn cache_key_parts_are_separated() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }

    #[test]
    fn hopper_gets_the_arch_specific_target() {
        assert_eq!(arch_for(9, 0), "compute_90a");
        assert_eq!(arch_for(8, 9), "compute_89");
    }
}
