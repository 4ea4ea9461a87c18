//! Behaviour that needs no GPU: the backend refuses cleanly where CUDA is
//! missing, and (when an NVRTC library is on the loader path) every kernel
//! compiles for Hopper.

use ds4_cuda::{kernels, CudaBackend, CudaError, CudaOptions};
use ds4_model::Model;

fn tiny_a() -> Model {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    Model::open(root.join("tests/data/tiny_a/tiny_ds4.gguf")).expect("tiny_a binds")
}

#[test]
fn new_reports_missing_cuda_instead_of_panicking() {
    let model = tiny_a();
    match CudaBackend::new(&model, CudaOptions::default()) {
        Ok(b) => eprintln!("a GPU is present: {}", b.device_info().name),
        Err(e @ (CudaError::NoDriver | CudaError::NoNvrtc | CudaError::NoDevice(_))) => {
            let msg = e.to_string();
            eprintln!("as expected without CUDA: {msg}");
            assert!(msg.contains("not found") || msg.contains("no "), "{msg}");
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

#[test]
fn kernels_compile_for_hopper_when_nvrtc_is_available() {
    if !kernels::nvrtc_present() {
        eprintln!("skipping: no NVRTC on the loader path (scripts/nvrtc_check.sh provides one)");
        return;
    }
    let ptx = kernels::compile("compute_90a").unwrap_or_else(|e| panic!("{e}"));
    assert!(kernels::missing_entries(&ptx).is_empty());
}
