//! Weight × activation products straight from the mapped GGUF bytes.

use ds4_model::Tensor;

use crate::act::Act;
use crate::kernels::block_format;
use crate::pool::map_ranges;

/// Rows of a weight matrix in its file encoding.
#[derive(Clone, Copy)]
pub struct WeightRows<'a> {
    pub format: ds4_quant::BlockFormat,
    pub bytes: &'a [u8],
    pub row_len: usize,
    pub row_bytes: usize,
    pub n_rows: usize,
}

impl<'a> WeightRows<'a> {
    /// The 2-D matrix of `t` (or matrix `expert` of a stacked 3-D tensor).
    pub fn of(t: &Tensor, bytes: &'a [u8], expert: usize) -> Self {
        let m = t.matrix_bytes();
        Self {
            format: block_format(t.ggml_type),
            bytes: &bytes[expert * m..(expert + 1) * m],
            row_len: t.row_len(),
            row_bytes: t.row_bytes(),
            n_rows: t.n_rows(),
        }
    }

    /// Rows `start..start + n` only.
    pub fn slice(self, start: usize, n: usize) -> Self {
        Self {
            bytes: &self.bytes[start * self.row_bytes..(start + n) * self.row_bytes],
            n_rows: n,
            ..self
        }
    }

    fn row(&self, r: usize) -> &'a [u8] {
        &self.bytes[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
}

/// Work below this many weight bytes per thread is not worth a thread.
const MIN_BYTES_PER_THREAD: usize = 256 * 1024;

/// `y[t] = W · x[t]` for every row `t` of `x`.
pub fn matmul(w: WeightRows<'_>, x: &Act, threads: usize) -> Act {
    assert_eq!(
        x.width, w.row_len,
        "matmul: activation width does not match the weight rows"
    );
    let mut y = Act::zeros(x.rows, w.n_rows);
    let min_rows = (MIN_BYTES_PER_THREAD / w.row_bytes.max(1)).max(1);
    let parts = map_ranges(threads, w.n_rows, min_rows, |a, b| {
        let mut out = vec![0f32; x.rows * (b - a)];
        // Every (row, token) product goes through the same fused kernel, so a
        // token's result never depends on which other tokens share its batch:
        // batched prefill is bit-identical to token-by-token decode.
        let rows = w.slice(a, b - a);
        for r in 0..b - a {
            let row = rows.row(r);
            for t in 0..x.rows {
                out[t * (b - a) + r] =
                    ds4_quant::dot(w.format, row, x.row(t)).expect("shapes validated at binding");
            }
        }
        out
    });
    for (a, b, out) in parts {
        let n = b - a;
        for t in 0..x.rows {
            y.row_mut(t)[a..b].copy_from_slice(&out[t * n..(t + 1) * n]);
        }
    }
    y
}

/// `W · x` for one activation vector, single-threaded (small matrices).
pub fn matvec(w: WeightRows<'_>, x: &[f32], y: &mut [f32]) {
    ds4_quant::matvec(w.format, w.bytes, w.n_rows, x, y).expect("shapes validated at binding");
}
