//! Random but numerically sane tensor contents, generated chunk by chunk.
//!
//! Every chunk is produced by its own generator, seeded from
//! `(seed, tensor index, chunk index)`, so the file does not depend on how
//! many threads wrote it or in which order.
//!
//! The target for a projection `y = W·x` with `fan_in = ne0` inputs is a
//! dequantized element distribution with mean 0 and standard deviation
//! `1/sqrt(fan_in)`: then `RMS(y) ≈ RMS(x)` and, since every projection in
//! DeepSeek V4 reads an RMS-normalized vector, activations stay O(1). Each
//! block format gets its scale `d` from that target (derivations below).

use ds4_gguf::{GgmlType, TensorSpec};
use half::f16;

use crate::config::Config;

/// A small, fast generator (wyrand). Not cryptographic; it only has to be
/// fast, deterministic and well mixed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

/// splitmix64's finalizer: spreads nearby keys over the whole state space.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// The generator of one chunk.
    pub fn for_chunk(seed: u64, tensor: u64, chunk: u64) -> Self {
        Rng(mix(mix(mix(seed) ^ tensor) ^ chunk.rotate_left(32)))
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0).wrapping_mul(u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db));
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below 2⁻³²·n).
    #[inline]
    fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }

    /// Fills `out` with random bytes.
    pub fn fill_bytes(&mut self, out: &mut [u8]) {
        let mut words = out.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = words.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    /// Approximately standard normal from one draw: the popcount of 48
    /// random bits is Binomial(48, ½) (mean 24, variance 12); 16 more bits
    /// add a uniform jitter so values are not on a lattice. Variance
    /// 12 + 1/12, hence the divisor; tails end at about ±7σ.
    #[inline]
    pub fn normal(&mut self) -> f32 {
        let r = self.next_u64();
        let bits = (r & ((1 << 48) - 1)).count_ones() as f32;
        let jitter = (r >> 48) as f32 * (1.0 / 65536.0);
        (bits - 24.0 + jitter - 0.5) * (1.0 / 3.476_109)
    }
}

/// What a tensor is filled with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fill {
    /// A projection matrix: mean 0, this standard deviation after
    /// dequantization, in whatever type the tensor has (F32, F16, Q8_0,
    /// Q2_K, Q4_K or IQ2_XXS).
    Weight { std: f32 },
    /// Plain values `mean + std·N(0,1)` (F32 or F16): norms, biases, sinks.
    Normal { mean: f32, std: f32 },
    /// Hyper-connection base logits (F32): the first `n_hc` (pre) centred on
    /// 0 so σ(·) ≈ ½; the next `n_hc` (post) on −1 so 2σ(·) ≈ 0.54, which
    /// keeps the residual streams from growing much over 86 sublayers; the
    /// comb logits on 0, so Sinkhorn gives a near-uniform doubly
    /// stochastic mix. All with a little noise (σ = 0.1).
    HcBase { n_hc: usize },
    /// I32 rows of `per_token` distinct expert ids below `n_expert` (hash routing).
    ExpertIds { n_expert: u32, per_token: usize },
}

/// σ(Q8_0 element) = d·RMS(q). q is a random int8 forced odd: the 128
/// values ±1, ±3, …, ±127, symmetric (mean 0) with E[q²] = 5461. Per block d
/// is the tensor's d times a factor uniform in [0.5, 1.5) (E[f²] = 13/12),
/// so that blocks differ as in a real file.
const Q8_0_RMS: f32 = 76.921; // sqrt(5461 · 13/12)

/// Q2_K: x = d·sc·q − dmin·m with 2-bit q uniform (mean 1.5, variance 1.25).
/// With dmin = d and m = 1.5·sc (sc = 2k, m = 3k, k uniform in 1..=5) every
/// sub-block is centred exactly: x = d·sc·(q − 1.5). E[sc²] = 4·E[k²] = 44,
/// so σ = d·sqrt(44 · 1.25) = d·sqrt(55).
const Q2_K_RMS: f32 = 7.416_198; // sqrt(55)

/// Q4_K: x = d·sc·q − dmin·m with 4-bit q uniform (mean 7.5, variance
/// 21.25). With dmin = d and m = 7.5·sc (sc = 2k, m = 15k, k in 1..=4, both
/// within 6 bits) x = d·sc·(q − 7.5). E[sc²] = 4·E[k²] = 30, so
/// σ = d·sqrt(30 · 21.25) = d·sqrt(637.5).
const Q4_K_RMS: f32 = 25.248_762; // sqrt(637.5)

/// IQ2_XXS: x = d·(0.5 + s)·0.25·G·sign with every field random: grid index
/// uniform over the 256 grid rows (E[G²] = 534.4302 over iq2xxs_grid, whose
/// entries are 8, 25 or 43), sign pattern uniform (each lane ±1 with
/// probability ½, so mean 0), scale nibble s uniform in 0..16
/// (E[((0.5+s)/4)²] = 5.328125). σ = d·sqrt(5.328125 · 534.4302).
const IQ2_XXS_RMS: f32 = 53.362_4; // sqrt(2847.5)

fn put_f16(dst: &mut [u8], v: f32) {
    dst.copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

impl Fill {
    /// Whether this fill can produce tensors of type `t`.
    pub fn supports(&self, t: GgmlType) -> bool {
        use GgmlType::*;
        match self {
            Fill::Weight { .. } => matches!(t, F32 | F16 | Q8_0 | Q2_K | Q4_K | IQ2_XXS),
            Fill::Normal { .. } => matches!(t, F32 | F16),
            Fill::HcBase { .. } => t == F32,
            Fill::ExpertIds { .. } => t == I32,
        }
    }

    /// Writes the bytes of whole rows of a tensor of type `t` into `out`;
    /// `first_elem` is the index of the first element in the tensor.
    ///
    /// # Panics
    /// If the type is not [`Fill::supports`]ed or `out` is not a whole number
    /// of blocks (the planner guarantees both).
    pub fn generate(&self, t: GgmlType, rng: &mut Rng, first_elem: u64, out: &mut [u8]) {
        assert!(self.supports(t), "{self:?} cannot fill a {t} tensor");
        assert_eq!(out.len() as u64 % t.block_bytes(), 0, "partial block");
        match *self {
            Fill::Weight { std } => match t {
                GgmlType::Q8_0 => q8_0(rng, std, out),
                GgmlType::Q2_K => q2_k(rng, std, out),
                GgmlType::Q4_K => q4_k(rng, std, out),
                GgmlType::IQ2_XXS => iq2_xxs(rng, std, out),
                _ => floats(t, out, |_| std * rng.normal()),
            },
            Fill::Normal { mean, std } => floats(t, out, |_| mean + std * rng.normal()),
            Fill::HcBase { n_hc } => floats(t, out, |i| {
                let centre = if (n_hc..2 * n_hc).contains(&((first_elem + i) as usize)) {
                    -1.0
                } else {
                    0.0
                };
                centre + 0.1 * rng.normal()
            }),
            Fill::ExpertIds {
                n_expert,
                per_token,
            } => expert_ids(rng, n_expert, per_token, out),
        }
    }
}

fn floats(t: GgmlType, out: &mut [u8], mut value: impl FnMut(u64) -> f32) {
    match t {
        GgmlType::F32 => {
            for (i, c) in out.chunks_exact_mut(4).enumerate() {
                c.copy_from_slice(&value(i as u64).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (i, c) in out.chunks_exact_mut(2).enumerate() {
                put_f16(c, value(i as u64));
            }
        }
        _ => unreachable!("checked by Fill::supports"),
    }
}

/// `d: f16, q: i8[32]`.
fn q8_0(rng: &mut Rng, std: f32, out: &mut [u8]) {
    rng.fill_bytes(out);
    let d = std / Q8_0_RMS;
    for block in out.chunks_exact_mut(34) {
        // The random byte that the scale overwrites picks the block's factor.
        let factor = 0.5 + f32::from(block[0]) * (1.0 / 256.0);
        put_f16(&mut block[..2], d * factor);
        for q in &mut block[2..] {
            *q |= 1;
        }
    }
}

/// `scales: u8[16], qs: u8[64], d: f16, dmin: f16`.
fn q2_k(rng: &mut Rng, std: f32, out: &mut [u8]) {
    rng.fill_bytes(out);
    let d = f16::from_f32(std / Q2_K_RMS).to_le_bytes();
    for block in out.chunks_exact_mut(84) {
        for s in &mut block[..16] {
            let k = ((u32::from(*s) * 5) >> 8) as u8 + 1; // 1..=5
            *s = (2 * k) | ((3 * k) << 4);
        }
        block[80..82].copy_from_slice(&d);
        block[82..84].copy_from_slice(&d);
    }
}

/// `d: f16, dmin: f16, scales: u8[12], qs: u8[128]`; the 6-bit scale and
/// min of sub-block `j` are packed as ggml's `get_scale_min_k4` reads them.
fn q4_k(rng: &mut Rng, std: f32, out: &mut [u8]) {
    rng.fill_bytes(out);
    let d = f16::from_f32(std / Q4_K_RMS).to_le_bytes();
    for block in out.chunks_exact_mut(144) {
        let mut sc = [0u8; 8];
        let mut m = [0u8; 8];
        for j in 0..8 {
            let k = ((u32::from(block[4 + j]) * 4) >> 8) as u8 + 1; // 1..=4
            sc[j] = 2 * k;
            m[j] = 15 * k;
        }
        let scales = &mut block[4..16];
        for j in 0..4 {
            scales[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            scales[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            scales[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
        }
        block[0..2].copy_from_slice(&d);
        block[2..4].copy_from_slice(&d);
    }
}

/// `d: f16, qs: u16[32]`: every bit pattern of `qs` is a valid block.
fn iq2_xxs(rng: &mut Rng, std: f32, out: &mut [u8]) {
    rng.fill_bytes(out);
    let d = f16::from_f32(std / IQ2_XXS_RMS).to_le_bytes();
    for block in out.chunks_exact_mut(66) {
        block[..2].copy_from_slice(&d);
    }
}

/// A partial Fisher–Yates shuffle per token: `per_token` distinct ids.
fn expert_ids(rng: &mut Rng, n_expert: u32, per_token: usize, out: &mut [u8]) {
    let mut perm: Vec<u32> = (0..n_expert).collect();
    for row in out.chunks_exact_mut(per_token * 4) {
        for (k, id) in row.chunks_exact_mut(4).enumerate() {
            let j = k + rng.below(n_expert - k as u32) as usize;
            perm.swap(k, j);
            id.copy_from_slice(&(perm[k] as i32).to_le_bytes());
        }
    }
}

/// The fill of each tensor of the main layout, by name.
pub fn fill_for(t: &TensorSpec, cfg: &Config) -> Fill {
    let name = t.name.as_str();
    if name == "token_embd.weight" {
        // Embedding rows are the first HC state: O(1) entries.
        Fill::Normal {
            mean: 0.0,
            std: 1.0,
        }
    } else if name.ends_with("norm.weight") {
        Fill::Normal {
            mean: 1.0,
            std: 0.02,
        }
    } else if name.ends_with("_scale.weight") {
        // HC scales multiply mixes of O(1) (fn rows have unit norm against a
        // normalized input): small, so the bases dominate and mixes stay balanced.
        Fill::Normal {
            mean: 0.1,
            std: 0.01,
        }
    } else if name.ends_with("_base.weight") {
        Fill::HcBase { n_hc: cfg.n_hc }
    } else if name.ends_with("attn_sinks.weight") || name.ends_with("exp_probs_b.bias") {
        Fill::Normal {
            mean: 0.0,
            std: 0.01,
        }
    } else if name.ends_with("_ape.weight") {
        Fill::Normal {
            mean: 0.0,
            std: 0.02,
        }
    } else if name.ends_with("tid2eid.weight") {
        Fill::ExpertIds {
            n_expert: cfg.n_expert as u32,
            per_token: cfg.n_expert_used,
        }
    } else {
        Fill::Weight {
            std: 1.0 / (t.dims[0] as f32).sqrt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(xs: impl Iterator<Item = f64>) -> (f64, f64) {
        let (mut n, mut s, mut s2) = (0.0, 0.0, 0.0);
        for x in xs {
            n += 1.0;
            s += x;
            s2 += x * x;
        }
        let mean = s / n;
        (mean, (s2 / n - mean * mean).sqrt())
    }

    #[test]
    fn normal_is_standard() {
        let mut rng = Rng::for_chunk(1, 2, 3);
        let (mean, std) = moments((0..200_000).map(|_| f64::from(rng.normal())));
        assert!(
            mean.abs() < 0.01 && (std - 1.0).abs() < 0.01,
            "{mean} {std}"
        );
    }

    /// Independent decoders for the two k-quants (MODEL.md §6) confirm the
    /// derivations above: mean 0 and the requested σ.
    #[test]
    fn k_quants_dequantize_to_the_target() {
        let std = 0.02f32;
        let mut rng = Rng::for_chunk(7, 0, 0);
        let mut q2 = vec![0u8; 84 * 400];
        q2_k(&mut rng, std, &mut q2);
        let q2_vals = q2.chunks_exact(84).flat_map(|b| {
            let d = f16::from_le_bytes([b[80], b[81]]).to_f32();
            let dmin = f16::from_le_bytes([b[82], b[83]]).to_f32();
            (0..256).map(move |e| {
                let (h, r) = (e / 128, e % 128);
                let (j, i) = (r / 32, r % 32);
                let q = (b[16 + 32 * h + i] >> (2 * j)) & 3;
                let sc = b[8 * h + 2 * j + usize::from(i >= 16)];
                f64::from(d * f32::from(sc & 15) * f32::from(q) - dmin * f32::from(sc >> 4))
            })
        });
        let (mean, s) = moments(q2_vals);
        assert!(
            mean.abs() < 2e-4 && (s / 0.02 - 1.0).abs() < 0.02,
            "{mean} {s}"
        );

        let mut q4 = vec![0u8; 144 * 400];
        q4_k(&mut rng, std, &mut q4);
        let q4_vals = q4.chunks_exact(144).flat_map(|b| {
            let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            let dmin = f16::from_le_bytes([b[2], b[3]]).to_f32();
            let sc = &b[4..16];
            (0..256).map(move |e| {
                let (sb, i) = (e / 32, e % 32);
                let (s, m) = if sb < 4 {
                    (sc[sb] & 63, sc[sb + 4] & 63)
                } else {
                    (
                        (sc[sb + 4] & 15) | ((sc[sb - 4] >> 6) << 4),
                        (sc[sb + 4] >> 4) | ((sc[sb] >> 6) << 4),
                    )
                };
                let byte = b[16 + 32 * (sb / 2) + i];
                let q = if sb % 2 == 0 { byte & 15 } else { byte >> 4 };
                f64::from(d * f32::from(s) * f32::from(q) - dmin * f32::from(m))
            })
        });
        let (mean, s) = moments(q4_vals);
        assert!(
            mean.abs() < 2e-4 && (s / 0.02 - 1.0).abs() < 0.02,
            "{mean} {s}"
        );
    }

    #[test]
    fn expert_ids_are_distinct_and_in_range() {
        let mut rng = Rng::for_chunk(0, 0, 0);
        let mut out = vec![0u8; 6 * 4 * 1000];
        expert_ids(&mut rng, 256, 6, &mut out);
        for row in out.chunks_exact(24) {
            let ids: Vec<i32> = row
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert!(ids.iter().all(|&i| (0..256).contains(&i)));
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 6, "{ids:?}");
        }
    }
}
