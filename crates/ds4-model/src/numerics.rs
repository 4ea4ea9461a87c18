//! Numerics that belong to the model itself rather than to a backend: the
//! inference-time quantisation simulations of the official graph (FP8 KV,
//! Hadamard + FP4 indexer, 16-bit cached rows) and the RoPE/YaRN frequencies.

use crate::config::{AttentionKind, Config};

/// Which numerics the forward pass computes (TESTING.md "Numerics modes").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Numerics {
    /// What DeepSeek's inference graph computes: FP8-E4M3 round trip of the
    /// non-RoPE KV dims, Hadamard + FP4-E2M1 on the indexer, cached rows
    /// rounded to f16.
    #[default]
    Official,
    /// No simulations: f32 throughout (for comparison with plain transformers).
    Exact,
}

impl Numerics {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "official" => Some(Self::Official),
            "exact" => Some(Self::Exact),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Official => "official",
            Self::Exact => "exact",
        }
    }
}

/// `x` rounded to the nearest IEEE binary16 (ties to even) and back.
pub fn f16_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// `2^ceil(log2(r))` for a positive finite `r`, computed exactly from the bits.
fn pow2_ceil(r: f32) -> f32 {
    debug_assert!(r > 0.0 && r.is_finite());
    let bits = r.to_bits();
    let exp_field = ((bits >> 23) & 0xff) as i32;
    let mantissa = bits & 0x7f_ffff;
    let e = if exp_field == 0 {
        // Subnormal: r = mantissa · 2^-149.
        let lz = mantissa.leading_zeros() as i32 - 9; // leading zeros within 23 bits
        let top = -127 - lz; // floor(log2 r)
        if mantissa.is_power_of_two() {
            top
        } else {
            top + 1
        }
    } else {
        let floor = exp_field - 127;
        if mantissa == 0 {
            floor
        } else {
            floor + 1
        }
    };
    (e as f32).exp2()
}

/// Nearest E4M3FN magnitude to `v` (|v| ≤ 448), ties to the even code.
fn e4m3_nearest(v: f32) -> f32 {
    let a = v.abs();
    const MIN_NORMAL: f32 = 1.0 / 64.0; // 2^-6
    let step = if a < MIN_NORMAL {
        1.0 / 512.0 // subnormal spacing 2^-9
    } else {
        // Three mantissa bits: spacing 2^(floor(log2 a) - 3).
        let floor = ((a.to_bits() >> 23) & 0xff) as i32 - 127;
        ((floor - 3) as f32).exp2()
    };
    let q = ((a / step).round_ties_even() * step).min(448.0);
    q.copysign(v)
}

/// FP8-E4M3 round trip of one KV row's non-RoPE dims, in blocks of 64 with a
/// power-of-two scale per block (MODEL.md §3.7). `row[..n_nope]` is changed.
pub fn fp8_kv_round_trip(row: &mut [f32], n_nope: usize) {
    for block in row[..n_nope].chunks_mut(64) {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-4);
        let scale = pow2_ceil(amax / 448.0);
        for x in block.iter_mut() {
            let v = (*x / scale).clamp(-448.0, 448.0);
            *x = e4m3_nearest(v) * scale;
        }
    }
}

/// Nearest E2M1 magnitude to `a` (0 ≤ a ≤ 6), ties to the even code index.
fn e2m1_nearest(a: f32) -> f32 {
    // Code values 0, .5, 1, 1.5, 2, 3, 4, 6; at each midpoint the even code wins.
    match a {
        a if a <= 0.25 => 0.0,
        a if a < 0.75 => 0.5,
        a if a <= 1.25 => 1.0,
        a if a < 1.75 => 1.5,
        a if a <= 2.5 => 2.0,
        a if a < 3.5 => 3.0,
        a if a <= 5.0 => 4.0,
        _ => 6.0,
    }
}

/// FP4-E2M1 round trip in blocks of 32 with a power-of-two scale per block.
pub fn fp4_round_trip(row: &mut [f32]) {
    for block in row.chunks_mut(32) {
        let amax = block
            .iter()
            .fold(0f32, |m, x| m.max(x.abs()))
            .max(7.052_966e-38);
        let scale = pow2_ceil(amax / 6.0);
        for x in block.iter_mut() {
            let v = (*x / scale).clamp(-6.0, 6.0);
            *x = e2m1_nearest(v.abs()).copysign(v) * scale;
        }
    }
}

/// In-place orthonormal Walsh–Hadamard transform of a power-of-two row.
pub fn hadamard(row: &mut [f32]) {
    let n = row.len();
    debug_assert!(n.is_power_of_two());
    let mut h = 1;
    while h < n {
        for start in (0..n).step_by(2 * h) {
            for i in start..start + h {
                let (a, b) = (row[i], row[i + h]);
                row[i] = a + b;
                row[i + h] = a - b;
            }
        }
        h *= 2;
    }
    let s = (1.0 / (n as f64).sqrt()) as f32;
    for x in row.iter_mut() {
        *x *= s;
    }
}

/// Per-layer rotary frequencies (MODEL.md §3.3): plain RoPE on window layers,
/// YaRN-blended frequencies on compressed layers.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// One angular frequency per rotated pair.
    pub inv_freq: Vec<f32>,
}

impl Rope {
    pub fn for_layer(cfg: &Config, layer: usize) -> Self {
        match cfg.attention_kind(layer) {
            AttentionKind::Window => Self::plain(cfg.rope_base, cfg.n_rot),
            _ => Self::yarn(cfg),
        }
    }

    pub fn plain(base: f32, n_rot: usize) -> Self {
        let inv_freq = (0..n_rot / 2)
            .map(|k| (base as f64).powf(-(2.0 * k as f64) / n_rot as f64) as f32)
            .collect();
        Self { inv_freq }
    }

    pub fn yarn(cfg: &Config) -> Self {
        let dim = cfg.n_rot as f64;
        let base = cfg.compress_rope_base as f64;
        let orig = cfg.yarn_orig_ctx as f64;
        let corr =
            |beta: f64| dim * (orig / (beta * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
        let low = corr(cfg.yarn_beta_fast as f64).floor().max(0.0);
        let high = corr(cfg.yarn_beta_slow as f64).ceil().min(dim - 1.0);
        let span = (high - low).max(0.001);
        let factor = cfg.yarn_factor as f64;
        let inv_freq = (0..cfg.n_rot / 2)
            .map(|k| {
                let extrapolated = base.powf(-(2.0 * k as f64) / dim);
                let ramp = ((k as f64 - low) / span).clamp(0.0, 1.0);
                let keep = 1.0 - ramp; // 1: original frequency, 0: divided by the factor
                (extrapolated * (keep + (1.0 - keep) / factor)) as f32
            })
            .collect();
        Self { inv_freq }
    }

    /// Rotates the trailing `2·inv_freq.len()` dims of `row` (interleaved
    /// pairs) by position `pos`; `inverse` rotates back.
    pub fn apply(&self, row: &mut [f32], pos: usize, inverse: bool) {
        let n_rot = 2 * self.inv_freq.len();
        let tail = row.len() - n_rot;
        let p = pos as f32;
        for (k, &f) in self.inv_freq.iter().enumerate() {
            let theta = p * f;
            let (sin, cos) = theta.sin_cos();
            let sin = if inverse { -sin } else { sin };
            let i = tail + 2 * k;
            let (x0, x1) = (row[i], row[i + 1]);
            row[i] = x0 * cos - x1 * sin;
            row[i + 1] = x0 * sin + x1 * cos;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pow2_ceil_is_exact() {
        assert_eq!(pow2_ceil(1.0), 1.0);
        assert_eq!(pow2_ceil(1.000_000_1), 2.0);
        assert_eq!(pow2_ceil(0.75), 1.0);
        assert_eq!(pow2_ceil(0.5), 0.5);
        assert_eq!(pow2_ceil(3.0e-40), (-131f32).exp2());
        assert_eq!(pow2_ceil(f32::from_bits(1)), (-149f32).exp2());
    }

    #[test]
    fn e4m3_values_and_ties() {
        assert_eq!(e4m3_nearest(448.0), 448.0);
        assert_eq!(e4m3_nearest(-1.0625), -1.0); // tie between 1.0 (m=0) and 1.125 (m=1)
        assert_eq!(e4m3_nearest(1.1875), 1.25); // tie between 1.125 (m=1) and 1.25 (m=2)
        assert_eq!(e4m3_nearest(3.0 / 1024.0), 1.0 / 256.0); // subnormal tie 1.5·2^-9 → 2·2^-9 (m=2)
        assert_eq!(e4m3_nearest(0.0), 0.0);
        assert_eq!(e4m3_nearest(240.0), 240.0);
        assert_eq!(e4m3_nearest(232.0), 224.0); // spacing 16 above 128: tie 224/240 → 224 (m=6)
    }

    #[test]
    fn fp4_ties_go_to_even_codes() {
        let cases = [
            (0.25, 0.0),
            (0.75, 1.0),
            (1.25, 1.0),
            (1.75, 2.0),
            (2.5, 2.0),
            (3.5, 4.0),
            (5.0, 4.0),
            (5.1, 6.0),
        ];
        for (a, want) in cases {
            assert_eq!(e2m1_nearest(a), want, "{a}");
        }
    }

    #[test]
    fn hadamard_is_orthonormal() {
        let mut row: Vec<f32> = (0..128).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let norm0: f32 = row.iter().map(|x| x * x).sum();
        let orig = row.clone();
        hadamard(&mut row);
        let norm1: f32 = row.iter().map(|x| x * x).sum();
        assert!((norm0 - norm1).abs() < 1e-3 * norm0);
        hadamard(&mut row);
        for (a, b) in row.iter().zip(&orig) {
            assert!((a - b).abs() < 1e-4);
        }
    }

    #[test]
    fn yarn_matches_the_spec_ramp() {
        let cfg = Config::flash();
        let r = Rope::yarn(&cfg);
        let base = 160000f64;
        let plain = |k: usize| base.powf(-(2.0 * k as f64) / 64.0);
        assert!((r.inv_freq[15] as f64 / plain(15) - 1.0).abs() < 1e-6);
        assert!((r.inv_freq[25] as f64 / (plain(25) / 16.0) - 1.0).abs() < 1e-6);
        // k = 20: γ = 0.5.
        assert!((r.inv_freq[20] as f64 / (plain(20) * (0.5 + 0.5 / 16.0)) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rope_inverse_undoes_forward() {
        let r = Rope::plain(10000.0, 64);
        let mut row: Vec<f32> = (0..128).map(|i| (i as f32 * 0.37).sin()).collect();
        let orig = row.clone();
        r.apply(&mut row, 1234, false);
        assert_eq!(row[..64], orig[..64]);
        r.apply(&mut row, 1234, true);
        for (a, b) in row.iter().zip(&orig) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
