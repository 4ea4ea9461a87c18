//! Small numeric kernels shared by the stages.

use std::borrow::Cow;

use ds4_gguf::GgmlType;
use ds4_model::Tensor;
use ds4_quant::BlockFormat;

/// The `ds4-quant` format of a weight type the model uses.
pub fn block_format(t: GgmlType) -> BlockFormat {
    match t {
        GgmlType::F32 => BlockFormat::F32,
        GgmlType::F16 => BlockFormat::F16,
        GgmlType::BF16 => BlockFormat::BF16,
        GgmlType::Q8_0 => BlockFormat::Q8_0,
        GgmlType::Q2_K => BlockFormat::Q2_K,
        GgmlType::Q4_K => BlockFormat::Q4_K,
        GgmlType::IQ2_XXS => BlockFormat::IQ2_XXS,
        other => unreachable!("binding admits no {other} weights"),
    }
}

/// `x · w / sqrt(mean(x²) + eps)` with the sum of squares in f64 (as ds4
/// does), or without a weight when `w` is `None`.
pub fn rms_norm(x: &[f32], w: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    let ss: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let inv = (1.0 / (ss / x.len() as f64 + f64::from(eps)).sqrt()) as f32;
    match w {
        Some(w) => {
            for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
                *o = v * inv * g;
            }
        }
        None => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = v * inv;
            }
        }
    }
}

pub fn rms_norm_in_place(x: &mut [f32], w: Option<&[f32]>, eps: f32) {
    let ss: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let inv = (1.0 / (ss / x.len() as f64 + f64::from(eps)).sqrt()) as f32;
    match w {
        Some(w) => x.iter_mut().zip(w).for_each(|(v, &g)| *v = *v * inv * g),
        None => x.iter_mut().for_each(|v| *v *= inv),
    }
}

pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

pub fn silu(z: f32) -> f32 {
    z * sigmoid(z)
}

/// `ln(1 + e^z)`, with ds4's cut-offs for large |z|.
pub fn softplus(z: f32) -> f32 {
    if z > 20.0 {
        z
    } else if z < -20.0 {
        z.exp()
    } else {
        z.exp().ln_1p()
    }
}

/// The elements of an F32 tensor (borrowed when the bytes are aligned).
pub fn f32_values(bytes: &[u8]) -> Cow<'_, [f32]> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(v) => Cow::Borrowed(v),
        Err(_) => Cow::Owned(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        ),
    }
}

/// Dequantizes a whole (small) tensor to f32.
pub fn dequantize_all(t: &Tensor, bytes: &[u8]) -> Vec<f32> {
    let n: u64 = t.dims.iter().product();
    let mut out = vec![0.0; n as usize];
    ds4_quant::dequantize(block_format(t.ggml_type), bytes, &mut out)
        .expect("binding validated sizes");
    out
}

/// Indices of the `k` largest values, ties to the lower index, in rank order.
pub fn top_k(values: &[f32], k: usize) -> Vec<u32> {
    let mut picked: Vec<u32> = Vec::with_capacity(k + 1);
    for (i, &v) in values.iter().enumerate() {
        // Insert after every kept value that is >= v: strict `>` wins, so an
        // earlier (lower) index stays ahead of an equal later one.
        let at = picked.partition_point(|&j| values[j as usize] >= v);
        if at < k {
            picked.insert(at, i as u32);
            picked.truncate(k);
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_prefers_lower_index_on_ties() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, 2.0, 3.0], 2), vec![1, 2]);
        assert_eq!(top_k(&[0.5, 0.1], 5), vec![0, 1]);
        assert_eq!(top_k(&[-1.0, -0.5, -2.0], 1), vec![1]);
    }
}
