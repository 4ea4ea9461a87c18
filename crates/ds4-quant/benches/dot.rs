//! Dot of one 4096-wide weight row with f32 activations, per format and
//! instruction-set level. `cargo bench -p ds4-quant --bench dot`.

use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use ds4_quant::float::f32_to_bf16;
use ds4_quant::{available_isas, f32_to_f16, BlockFormat, DotKernels, Isa};

const N: usize = 4096;

fn main() {
    divan::main();
}

/// Deterministic pseudo-random bytes (xorshift) with sane f16 scales.
fn row(format: BlockFormat) -> Vec<u8> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    match format {
        BlockFormat::F32 => (0..N)
            .flat_map(|i| ((i % 7) as f32 * 0.1).to_le_bytes())
            .collect(),
        BlockFormat::F16 => (0..N)
            .flat_map(|i| f32_to_f16((i % 7) as f32 * 0.1).to_le_bytes())
            .collect(),
        BlockFormat::BF16 => (0..N)
            .flat_map(|i| f32_to_bf16((i % 7) as f32 * 0.1).to_le_bytes())
            .collect(),
        _ => {
            let mut r: Vec<u8> = (0..format.row_bytes(N).unwrap())
                .map(|_| next() as u8)
                .collect();
            let d = f32_to_f16(0.01).to_le_bytes();
            for b in r.chunks_exact_mut(format.block_bytes()) {
                let at = if format == BlockFormat::Q2_K { 80 } else { 0 };
                b[at..at + 2].copy_from_slice(&d);
                if matches!(format, BlockFormat::Q2_K | BlockFormat::Q4_K) {
                    b[at + 2..at + 4].copy_from_slice(&d);
                }
            }
            r
        }
    }
}

fn isa_names() -> Vec<&'static str> {
    available_isas()
        .into_iter()
        .map(|i| match i {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        })
        .collect()
}

fn isa_from(name: &str) -> Isa {
    match name {
        "avx2" => Isa::Avx2,
        "avx512" => Isa::Avx512,
        "neon" => Isa::Neon,
        _ => Isa::Scalar,
    }
}

fn bench_format(bencher: Bencher, format: BlockFormat, isa: &str) {
    let k = DotKernels::new(isa_from(isa)).unwrap();
    let w = row(format);
    let x: Vec<f32> = (0..N)
        .map(|i| ((i * 37) % 101) as f32 * 0.01 - 0.5)
        .collect();
    bencher
        .counter(BytesCount::new(w.len()))
        .bench(|| k.dot(format, black_box(&w), black_box(&x)).unwrap());
}

#[divan::bench(args = isa_names())]
fn f32(b: Bencher, isa: &str) {
    bench_format(b, BlockFormat::F32, isa);
}

#[divan::bench(args = isa_names())]
fn f16(b: Bencher, isa: &str) {
    bench_format(b, BlockFormat::F16, isa);
}

#[divan::bench(args = isa_names())]
fn bf16(b: Bencher, isa: &str) {
    bench_format(b, BlockFormat::BF16, isa);
}

#[divan::bench(args = isa_names())]
fn q8_0(b: Bencher, isa: &str) {
    bench_format(b, BlockFormat::Q8_0, isa);
}

#[divan::bench(args = isa_names())]
fn q2_k(b: Bencher, isa: &str) {
    bench_format(b, BlockFormat::Q2_K, isa);
}

#[divan::bench(args = isa_names())]
fn q4_k(b: Bencher, isa: &str) {
    bench_format(b, BlockFormat::Q4_K, isa);
}

#[divan::bench(args = isa_names())]
fn iq2_xxs(b: Bencher, isa: &str) {
    bench_format(b, BlockFormat::IQ2_XXS, isa);
}
