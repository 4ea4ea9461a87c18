//! Prints the PTX of the kernel program (`LD_LIBRARY_PATH` must reach NVRTC),
//! or with `--source` the CUDA source NVRTC compiles (for ptxas -v runs).
fn main() {
    let arg = std::env::args().nth(1).unwrap_or("compute_90a".into());
    if arg == "--source" {
        print!("{}", ds4_cuda::kernels::program_source());
        return;
    }
    match ds4_cuda::kernels::compile(&arg) {
        Ok(ptx) => print!("{ptx}"),
        Err(e) => eprintln!("{e}"),
    }
}
