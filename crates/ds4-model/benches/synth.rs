//! Synthetic-model generation throughput: one chunk (`synth::CHUNK_BYTES`)
//! of a production-width tensor per block type, generated in memory (no
//! I/O). `cargo bench -p ds4-model --bench synth`; divan prints bytes/s.
//! The `ds4 gguf synth` command prints the end-to-end GB/s, I/O included.

use std::sync::OnceLock;

use divan::counter::BytesCount;
use divan::Bencher;
use ds4_model::synth::{plan, Plan, Preset, SynthSpec};

fn main() {
    divan::main();
}

/// One-layer production-width plans (planning parses the tokenizer once).
fn flash(preset: Preset) -> &'static Plan {
    static Q2: OnceLock<Plan> = OnceLock::new();
    static Q4: OnceLock<Plan> = OnceLock::new();
    let cell = if preset == Preset::FlashQ4 { &Q4 } else { &Q2 };
    cell.get_or_init(|| plan(&SynthSpec::new(preset).layers(1)).expect("plan"))
}

const TENSORS: [&str; 6] = [
    "IQ2_XXS blk.0.ffn_gate_exps (q2)",
    "Q2_K blk.0.ffn_down_exps (q2)",
    "Q4_K blk.0.ffn_gate_exps (q4)",
    "Q8_0 blk.0.attn_q_b",
    "F16 token_embd",
    "I32 blk.0.ffn_gate_tid2eid",
];

#[divan::bench(args = TENSORS)]
fn chunk(bencher: Bencher, what: &str) {
    let mut words = what.split_whitespace();
    let _type = words.next();
    let name = format!("{}.weight", words.next().expect("a tensor name"));
    let preset = if what.ends_with("(q4)") {
        Preset::FlashQ4
    } else {
        Preset::FlashQ2
    };
    let p = flash(preset);
    let t = p.tensor_index(&name).expect("tensor in the layout");
    let (_, len) = p.chunk_span(t, 0);
    let mut buf = vec![0u8; len as usize];
    bencher
        .counter(BytesCount::new(len))
        .bench_local(|| p.generate_chunk(t, 0, divan::black_box(&mut buf)));
}
