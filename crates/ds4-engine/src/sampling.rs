//! Token sampling as ds4 does it (SERVING.md §5.7), and log-probabilities.

use std::sync::atomic::{AtomicU64, Ordering};

/// Most candidates the top-k path considers.
pub const MAX_TOP_K: usize = 1024;

/// Sampling knobs of one request. `Default` is ds4's: temperature 1,
/// top_p 1, min_p 0.05, top_k off, seed 0 (= random).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// ≤ 0 means greedy (argmax).
    pub temperature: f32,
    /// 0 = off; otherwise at most [`MAX_TOP_K`] candidates.
    pub top_k: usize,
    /// Nucleus mass in (0, 1]; anything else reads as 1.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` × the top token's.
    pub min_p: f32,
    /// 0 = seed from the clock (not reproducible).
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.05,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

/// xorshift64* as ds4 uses it.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1) with 24 bits.
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) & 0xFF_FFFF) as f32 / (1u32 << 24) as f32
    }
}

/// A seed for `seed == 0`: clock, a process-wide counter and an address, as
/// ds4 mixes time, a sequence number and a job address.
fn random_seed() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let local = 0u8;
    let addr = &local as *const u8 as u64;
    (time << 32) ^ time ^ (seq << 1) ^ addr
}

/// A sampler: the parameters of a request and its random stream.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = if params.seed == 0 {
            random_seed()
        } else {
            params.seed
        };
        Self {
            params,
            rng: Rng::new(seed),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Draws the next token from `logits` (one per vocabulary entry).
    /// Returns `None` only when no logit is finite.
    pub fn sample(&mut self, logits: &[f32]) -> Option<u32> {
        let p = &self.params;
        // NaN temperatures are greedy too.
        if p.temperature.is_nan() || p.temperature <= 0.0 {
            return argmax(logits);
        }
        let t = p.temperature;
        let top_p = if p.top_p > 0.0 && p.top_p <= 1.0 {
            p.top_p
        } else {
            1.0
        };
        let min_p = if p.min_p >= 0.0 { p.min_p } else { 0.0 };
        if p.top_k > 0 || top_p < 1.0 {
            // Steps 3 and 5: sorted candidates, softmax, min_p then top_p.
            let limit = if p.top_k > 0 {
                p.top_k.min(MAX_TOP_K)
            } else {
                usize::MAX
            };
            let cand = sorted_finite(logits, limit);
            let (&(_, top), _) = cand.split_first()?;
            let w: Vec<f32> = cand.iter().map(|&(_, l)| ((l - top) / t).exp()).collect();
            let total: f32 = w.iter().sum();
            let mut kept = 0;
            let mut mass = 0.0f32;
            for &wi in &w {
                // w[0] = 1, so `wi ≥ min_p` is `p_i ≥ p_0 · min_p`.
                if kept > 0 && wi < min_p {
                    break;
                }
                kept += 1;
                mass += wi / total;
                if mass >= top_p {
                    break;
                }
            }
            let i = self.pick(&w[..kept]);
            Some(cand[i].0)
        } else {
            // Step 4: no sort; relative weights against the top token.
            let max = logits
                .iter()
                .copied()
                .filter(|l| l.is_finite())
                .fold(f32::NEG_INFINITY, f32::max);
            if !max.is_finite() {
                return None;
            }
            let w: Vec<f32> = logits
                .iter()
                .map(|&l| {
                    let w = if l.is_finite() {
                        ((l - max) / t).exp()
                    } else {
                        0.0
                    };
                    if w < min_p {
                        0.0
                    } else {
                        w
                    }
                })
                .collect();
            Some(self.pick(&w) as u32)
        }
    }

    /// Index drawn proportionally to the weights.
    fn pick(&mut self, w: &[f32]) -> usize {
        let total: f32 = w.iter().sum();
        let target = self.rng.uniform() * total;
        let mut acc = 0.0f32;
        let mut last = 0;
        for (i, &wi) in w.iter().enumerate() {
            if wi <= 0.0 {
                continue;
            }
            acc += wi;
            last = i;
            if target < acc {
                return i;
            }
        }
        last
    }
}

/// The highest finite logit (lowest index on ties).
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_finite() && best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map(|(i, _)| i as u32)
}

/// The `limit` highest finite logits, descending (lower index first on ties).
fn sorted_finite(logits: &[f32], limit: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let by = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if limit < v.len() {
        v.select_nth_unstable_by(limit, by);
        v.truncate(limit);
    }
    v.sort_by(by);
    v
}

/// One entry of a top-logprobs list.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct TokenLogprob {
    pub token: u32,
    /// Natural log of the probability at temperature 1.
    pub logprob: f32,
}

/// `log Σ exp(logits)` over the finite logits.
fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return f32::NAN;
    }
    let sum: f64 = logits
        .iter()
        .filter(|l| l.is_finite())
        .map(|&l| ((l - max) as f64).exp())
        .sum();
    max + sum.ln() as f32
}

/// Log-probability of `token` under the raw distribution.
pub fn logprob(logits: &[f32], token: u32) -> Option<f32> {
    let l = *logits.get(token as usize)?;
    Some(l - log_sum_exp(logits))
}

/// The `n` most likely tokens with their log-probabilities, best first.
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<TokenLogprob> {
    let lse = log_sum_exp(logits);
    sorted_finite(logits, n)
        .into_iter()
        .map(|(token, l)| TokenLogprob {
            token,
            logprob: l - lse,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_stream_is_fixed() {
        let mut r = Rng::new(1);
        // x = 1 → 1 ^ (1 << 25) = 0x2000001 → ^ (x >> 27) (= 0).
        assert_eq!(
            r.next_u64(),
            0x200_0001u64.wrapping_mul(0x2545_F491_4F6C_DD1D)
        );
        let mut z = Rng::new(0);
        let mut d = Rng::new(0x9E37_79B9_7F4A_7C15);
        assert_eq!(z.next_u64(), d.next_u64());
        let u = Rng::new(7).uniform();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn greedy_and_degenerate_inputs() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.0, 3.0, 3.0, 1.0]), Some(1));
        assert_eq!(s.sample(&[f32::NAN, f32::NEG_INFINITY]), None);
        let mut s = Sampler::new(SamplingParams {
            seed: 3,
            ..Default::default()
        });
        assert_eq!(s.sample(&[]), None);
        assert_eq!(s.sample(&[f32::NAN, 2.0, f32::INFINITY]), Some(1));
    }

    #[test]
    fn logprobs_normalise() {
        let l = [1.0f32, 2.0, 3.0];
        let top = top_logprobs(&l, 2);
        assert_eq!(top[0].token, 2);
        assert_eq!(top[1].token, 1);
        let total: f32 = (0..3).map(|t| logprob(&l, t).unwrap().exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
