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
        if x.rows == 1 {
            ds4_quant::matvec(w.format, w.slice(a, b - a).bytes, b - a, x.row(0), &mut out)
                .expect("shapes validated at binding");
        } else {
            // Dequantize each weight row once and reuse it for every token.
            let mut deq = vec![0f32; w.row_len];
            let deq_bytes_len = w.row_len * 4;
            for r in a..b {
                ds4_quant::dequantize(w.format, w.row(r), &mut deq)
                    .expect("shapes validated at binding");
                let deq_bytes: &[u8] = bytemuck::cast_slice(&deq);
                debug_assert_eq!(deq_bytes.len(), deq_bytes_len);
                for t in 0..x.rows {
                    out[t * (b - a) + (r - a)] =
                        ds4_quant::dot(ds4_quant::BlockFormat::F32, deq_bytes, x.row(t))
                            .expect("lengths match");
                }
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
