//! Prints the PTX of the kernel program (`LD_LIBRARY_PATH` must reach NVRTC).
fn main() {
    let arch = std::env::args().nth(1).unwrap_or("compute_90a".into());
    match ds4_cuda::kernels::compile(&arch) {
        Ok(ptx) => print!("{ptx}"),
        Err(e) => eprintln!("{e}"),
    }
}
