//! The loss as one CPU kernel: softmax cross-entropy over rows of logits, and its gradient.
//!
//! dfdx's composition (`log_softmax`, `select`, `mean`) makes several `(N, V)` tensors and
//! their gradients; with a subword vocabulary (GPT-2: V = 50,257) each is hundreds of
//! megabytes, and the loss cost more than the head's matrix product. Here the logits' copy
//! becomes the softmax in place, which is all the backward pass needs.

use rayon::prelude::*;

use super::cpu_kernels::{exp, max, sum};
use super::simd::simd_kernel;
use crate::model::config::Float;

/// Rows per parallel task of the forward pass.
const ROWS: usize = 8;

simd_kernel! {
    /// Each row of `rows` (`v` columns) becomes its softmax; `lse` gets its log-sum-exp.
    fn softmax_rows(rows: &mut [Float], v: usize, lse: &mut [Float]) {
        for (row, lse) in rows.chunks_mut(v).zip(lse.iter_mut()) {
            let m = max(row);
            row.iter_mut().for_each(|x| *x = exp(*x - m));
            let s = sum(row);
            *lse = m + s.ln();
            let inv = 1.0 / s;
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

simd_kernel! {
    /// `acc += g·x` on one row, then `acc[target] −= g`: `g·(softmax − onehot)`.
    fn add_row_grad(acc: &mut [Float], probs: &[Float], target: usize, g: Float) {
        for (a, &p) in acc.iter_mut().zip(probs) {
            *a += g * p;
        }
        acc[target] -= g;
    }
}

simd_kernel! {
    /// `row ← g·row`, then `row[target] −= g`: [`add_row_grad`] into zeros, in place.
    fn row_grad_in_place(row: &mut [Float], target: usize, g: Float) {
        row.iter_mut().for_each(|p| *p *= g);
        row[target] -= g;
    }
}

/// Each row's `−ln softmax(row)[target]` = `logsumexp(row) − row[target]` for `logits (N, V)`
/// and `N` targets, in `f64` (an evaluation's per-token losses), read in place. A row's value
/// depends on that row alone, so neither the rows' grouping into passes nor the thread count
/// changes it.
pub fn row_losses(logits: &[Float], v: usize, targets: &[usize]) -> Vec<f64> {
    assert_eq!(
        logits.len(),
        targets.len() * v,
        "row losses: {} logits for {} rows of {v}",
        logits.len(),
        targets.len()
    );
    logits
        .par_chunks(v)
        .zip(targets.par_iter())
        .map(|(row, &target)| {
            let max = row.iter().copied().fold(Float::NEG_INFINITY, Float::max) as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            lse - row[target] as f64
        })
        .collect()
}

/// Mean over rows of `−ln softmax(row)[target]` for `logits (N, V)` and `N` targets, with
/// `logits` turned into the rows' softmax for [`cpu_cross_entropy_backward`]. The rows'
/// losses are summed in order in `f64`, so the mean does not depend on the thread count.
pub fn cpu_cross_entropy(mut logits: Vec<Float>, v: usize, targets: &[usize]) -> (Float, Vec<Float>) {
    let n = targets.len();
    assert_eq!(
        logits.len(),
        n * v,
        "cross-entropy: {} logits for {n} rows of {v}",
        logits.len()
    );
    let picked: Vec<Float> = targets.iter().enumerate().map(|(r, &t)| logits[r * v + t]).collect();
    let mut lse = vec![0.0; n];
    logits
        .par_chunks_mut(v * ROWS)
        .zip(lse.par_chunks_mut(ROWS))
        .for_each(|(rows, lse)| softmax_rows(rows, v, lse));
    let total: f64 = lse.iter().zip(&picked).map(|(l, p)| f64::from(l - p)).sum();
    ((total / n.max(1) as f64) as Float, logits)
}

/// `dx += (gy / N)·(softmax − onehot(targets))`: the gradient of the mean loss times `gy`.
pub fn cpu_cross_entropy_backward(probs: &[Float], v: usize, targets: &[usize], gy: Float, dx: &mut [Float]) {
    let g = gy / targets.len().max(1) as Float;
    dx.par_chunks_mut(v)
        .zip(probs.par_chunks(v))
        .zip(targets.par_iter())
        .for_each(|((dx, p), &t)| add_row_grad(dx, p, t, g));
}

/// `(gy / N)·(softmax − onehot(targets))` written over `probs` itself: the gradient when the
/// logits have none yet, without a new `(N, V)` buffer (411 MB at GPT-2's vocabulary, 2,048
/// rows) to zero and add into.
pub fn cpu_cross_entropy_grad(mut probs: Vec<Float>, v: usize, targets: &[usize], gy: Float) -> Vec<Float> {
    let g = gy / targets.len().max(1) as Float;
    probs
        .par_chunks_mut(v)
        .zip(targets.par_iter())
        .for_each(|(row, &t)| row_grad_in_place(row, t, g));
    probs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss and gradient by the formulas, in f64, one element at a time.
    fn reference(logits: &[Float], v: usize, targets: &[usize]) -> (f64, Vec<f64>) {
        let n = targets.len();
        let (mut loss, mut grad) = (0.0, vec![0.0; n * v]);
        for (r, &t) in targets.iter().enumerate() {
            let row: Vec<f64> = logits[r * v..(r + 1) * v].iter().map(|&x| f64::from(x)).collect();
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|x| (x - m).exp()).sum();
            loss += m + s.ln() - row[t];
            for (j, x) in row.iter().enumerate() {
                grad[r * v + j] = ((x - m).exp() / s - f64::from(u8::from(j == t))) / n as f64;
            }
        }
        (loss / n as f64, grad)
    }

    #[test]
    fn loss_and_gradient_match_the_formulas_in_f64() {
        for (n, v) in [(1, 1), (3, 5), (17, 65), (9, 1000)] {
            let logits: Vec<Float> = (0..n * v)
                .map(|i| ((i * 7919 % 1013) as Float - 500.0) * 0.02)
                .collect();
            let targets: Vec<usize> = (0..n).map(|r| (r * 31) % v).collect();
            let (want_loss, want_grad) = reference(&logits, v, &targets);
            let (loss, probs) = cpu_cross_entropy(logits, v, &targets);
            assert!(
                (f64::from(loss) - want_loss).abs() < 1e-5 * want_loss.abs().max(1.0),
                "n={n} v={v}: {loss} vs {want_loss}"
            );
            let mut grad = vec![0.0; n * v];
            cpu_cross_entropy_backward(&probs, v, &targets, 1.0, &mut grad);
            for (g, w) in grad.iter().zip(&want_grad) {
                assert!((f64::from(*g) - w).abs() < 1e-6, "n={n} v={v}: gradient {g} vs {w}");
            }
            // Written over the softmax: the same bits as added into zeros.
            let bits = |v: &[Float]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let in_place = cpu_cross_entropy_grad(probs, v, &targets, 1.0);
            assert_eq!(bits(&in_place), bits(&grad), "n={n} v={v}: in place");
        }
    }

    #[test]
    fn uniform_logits_give_ln_v() {
        let (loss, _) = cpu_cross_entropy(vec![0.25; 4 * 50_257], 50_257, &[0, 1, 50_256, 7]);
        assert!((f64::from(loss) - (50_257f64).ln()).abs() < 1e-5, "{loss}");
    }
}
