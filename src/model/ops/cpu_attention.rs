//! The fused causal attention on CPU: forward and backward passes over one task per
//! (batch row, key/value head), on gemm tiles, recomputing probabilities in the backward pass
//! instead of storing them.

use rayon::prelude::*;

use super::cpu_kernels::{exp, max, sum};
use super::dropout::DropRule;
use super::matmul::{View, gemm_block};
use super::simd::simd_kernel;
use crate::model::alibi::{alibi_bias, alibi_slope};
use crate::model::config::Float;

/// Sizes and dropout settings of one fused attention call.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    /// Batch.
    pub b: usize,
    /// Sequence length.
    pub t: usize,
    /// Query heads.
    pub h: usize,
    /// Key/value heads.
    pub hkv: usize,
    /// Head width.
    pub hd: usize,
    /// ALiBi biases on the scores (slopes for `h` heads).
    pub alibi: bool,
    /// Dropout probability on attention weights (0 in evaluation).
    pub p: f32,
    /// Seed of the dropout masks; the backward pass regenerates the same masks from it.
    pub seed: u64,
    /// The step's batch index of batch row 0 (a micro-batch's masks are its windows' own).
    pub first_window: usize,
}

impl Dims {
    fn q_at(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.t + t) * self.h + h) * self.hd
    }
    fn kv_at(&self, b: usize, t: usize, j: usize) -> usize {
        ((b * self.t + t) * self.hkv + j) * self.hd
    }
    /// The ALiBi slope of query head `h`, when used.
    fn slope(&self, h: usize) -> Option<Float> {
        self.alibi.then(|| alibi_slope(h, self.h))
    }
    /// The mask generator of query head `h` in batch row `b`: rows drawn in order t, then j ≤ t.
    fn mask_rng(&self, b: usize, h: usize) -> rand_chacha::ChaCha8Rng {
        let window = self.first_window + b;
        crate::seed::stream(self.seed, crate::seed::Stream::Dropout, (window * self.h + h) as u64)
    }
}

impl Dims {
    /// Query head `h` of batch row `b` as a `(T, hd)` view.
    fn q_view<'a>(&self, q: &'a [Float], b: usize, h: usize) -> View<'a> {
        View {
            data: &q[self.q_at(b, 0, h)..],
            rs: self.h * self.hd,
            cs: 1,
        }
    }
    /// Key/value head `j` of batch row `b` as a `(T, hd)` view.
    fn kv_view<'a>(&self, x: &'a [Float], b: usize, j: usize) -> View<'a> {
        View {
            data: &x[self.kv_at(b, 0, j)..],
            rs: self.hkv * self.hd,
            cs: 1,
        }
    }
}

/// Query rows per block: rows `r0..r1` attend to keys `..r1` only, so the score blocks right
/// of the diagonal block are never computed (a quarter of the work at T = 128).
const BLOCK: usize = 64;

/// The row blocks `(r0, r1)` covering `0..t`.
fn row_blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t).step_by(BLOCK).map(move |r0| (r0, (r0 + BLOCK).min(t)))
}

/// Fills `s (T×T)` with `scale · q_h k_jᵀ` (plus ALiBi's `−m·(t−s)` with a `slope`) and turns
/// each row `t` into the causal softmax over `s ≤ t` (zeros above the diagonal), given the
/// row's log-sum-exp in `lse` or computing it.
#[allow(clippy::too_many_arguments)]
fn causal_probs(
    d: &Dims,
    s: &mut [Float],
    q: View<'_>,
    k: View<'_>,
    slope: Option<Float>,
    lse: &mut [Float],
    known_lse: bool,
) {
    let (t, scale) = (d.t, 1.0 / (d.hd as Float).sqrt());
    for (r0, r1) in row_blocks(t) {
        // S[r0..r1, ..r1] = scale · Q[r0..r1] K[..r1]ᵀ; the blocks right of it are all masked.
        gemm_block(
            r1 - r0,
            r1,
            d.hd,
            &mut s[r0 * t..],
            t,
            false,
            q.skip_rows(r0),
            k.t(),
            scale,
        );
    }
    if let Some(slope) = slope {
        for (i, row) in s.chunks_mut(t).enumerate() {
            row[..=i]
                .iter_mut()
                .enumerate()
                .for_each(|(j, x)| *x += alibi_bias(slope, i, j));
        }
    }
    causal_softmax_rows(s, t, lse, known_lse);
}

simd_kernel! {
    /// Turns each row `r` of the `(T×T)` scores `s` into the softmax over `s ≤ r` (zeros
    /// above the diagonal), with the row's log-sum-exp given in `lse` or computed into it.
    fn causal_softmax_rows(s: &mut [Float], t: usize, lse: &mut [Float], known_lse: bool) {
        for (r, row) in s.chunks_mut(t).enumerate() {
            let (live, masked) = row.split_at_mut(r + 1);
            if !known_lse {
                let max = max(live);
                // One exponential per weight: e^(s - max), then divide by the row sum.
                live.iter_mut().for_each(|x| *x = exp(*x - max));
                let sum = sum(live);
                lse[r] = max + sum.ln();
                let inv = 1.0 / sum;
                live.iter_mut().for_each(|x| *x *= inv);
            } else {
                let l = lse[r];
                live.iter_mut().for_each(|x| *x = exp(*x - l));
            }
            masked.iter_mut().for_each(|x| *x = 0.0);
        }
    }
}

/// The dropout factor of each kept weight (`1 / (1 - p)` or 0), drawn row by row in the order
/// `t`, then `s ≤ t`, as the forward and backward passes both read it.
fn dropout_factors(d: &Dims, rng: &mut rand_chacha::ChaCha8Rng, out: &mut [Float]) {
    let rule = DropRule::new(d.p);
    for (r, row) in out.chunks_mut(d.t).enumerate() {
        for x in &mut row[..=r] {
            *x = rule.factor(rng);
        }
    }
}

/// Forward pass: `y (B, T, H, hd)` and the log-sum-exp of each score row `(B, H, T)`.
///
/// One task per (batch row, key/value head) runs the `g` query heads that share it as small
/// matrix products: `S = scale·Q Kᵀ` (the masked half is computed and zeroed, cheaper at gemm
/// speed than skipping it element by element), the causal softmax, dropout, then `Y = P V`.
pub fn cpu_forward(d: &Dims, q: &[Float], k: &[Float], v: &[Float]) -> (Vec<Float>, Vec<Float>) {
    let g = d.h / d.hkv;
    let parts: Vec<(usize, usize, Vec<Float>, Vec<Float>)> = (0..d.b * d.hkv)
        .into_par_iter()
        .map(|task| {
            let (b, j) = (task / d.hkv, task % d.hkv);
            let mut y = vec![0.0; g * d.t * d.hd];
            let mut lse = vec![0.0; g * d.t];
            let mut s = vec![0.0; d.t * d.t];
            let mut factors = vec![0.0; d.t * d.t];
            for i in 0..g {
                let h = j * g + i;
                causal_probs(
                    d,
                    &mut s,
                    d.q_view(q, b, h),
                    d.kv_view(k, b, j),
                    d.slope(h),
                    &mut lse[i * d.t..][..d.t],
                    false,
                );
                if d.p > 0.0 {
                    dropout_factors(d, &mut d.mask_rng(b, h), &mut factors);
                    s.iter_mut().zip(&factors).for_each(|(p, f)| *p *= f);
                }
                let yv = &mut y[i * d.t * d.hd..][..d.t * d.hd];
                for (r0, r1) in row_blocks(d.t) {
                    // Y[r0..r1] = P[r0..r1, ..r1] V[..r1]
                    let p_rows = View::rows(&s, d.t).skip_rows(r0);
                    gemm_block(
                        r1 - r0,
                        d.hd,
                        r1,
                        &mut yv[r0 * d.hd..],
                        d.hd,
                        false,
                        p_rows,
                        d.kv_view(v, b, j),
                        1.0,
                    );
                }
            }
            (b, j, y, lse)
        })
        .collect();
    let mut y = vec![0.0; d.b * d.t * d.h * d.hd];
    let mut lse = vec![0.0; d.b * d.h * d.t];
    for (b, j, part_y, part_lse) in parts {
        for i in 0..g {
            let h = j * g + i;
            for t in 0..d.t {
                y[d.q_at(b, t, h)..][..d.hd].copy_from_slice(&part_y[(i * d.t + t) * d.hd..][..d.hd]);
            }
            lse[(b * d.h + h) * d.t..][..d.t].copy_from_slice(&part_lse[i * d.t..][..d.t]);
        }
    }
    (y, lse)
}

/// Backward pass: gradients of `q`, `k`, `v` from `gy`, recomputing the probabilities from
/// the saved log-sum-exp and the dropout masks from their seed:
/// `dV += P'ᵀ dY`, `dP = D ⊙ (dY Vᵀ)`, `dS = P ⊙ (dP - rowsum(P ⊙ dP)) · scale`,
/// `dQ = dS K`, `dK += dSᵀ Q` (P' = P ⊙ D are the dropped-out weights).
pub fn cpu_backward(
    d: &Dims,
    q: &[Float],
    k: &[Float],
    v: &[Float],
    lse: &[Float],
    gy: &[Float],
) -> (Vec<Float>, Vec<Float>, Vec<Float>) {
    let g = d.h / d.hkv;
    let scale = 1.0 / (d.hd as Float).sqrt();
    type Part = (usize, usize, Vec<Float>, Vec<Float>, Vec<Float>);
    let parts: Vec<Part> = (0..d.b * d.hkv)
        .into_par_iter()
        .map(|task| {
            let (b, j) = (task / d.hkv, task % d.hkv);
            let (tt, hd) = (d.t * d.t, d.hd);
            let mut dq = vec![0.0; g * d.t * hd];
            let mut dk = vec![0.0; d.t * hd];
            let mut dv = vec![0.0; d.t * hd];
            let mut p = vec![0.0; tt];
            let mut dp = vec![0.0; tt];
            let mut factors = vec![1.0; tt];
            let mut row_lse = vec![0.0; d.t];
            let (kj, vj) = (d.kv_view(k, b, j), d.kv_view(v, b, j));
            for i in 0..g {
                let h = j * g + i;
                row_lse.copy_from_slice(&lse[(b * d.h + h) * d.t..][..d.t]);
                causal_probs(d, &mut p, d.q_view(q, b, h), kj, d.slope(h), &mut row_lse, true);
                if d.p > 0.0 {
                    dropout_factors(d, &mut d.mask_rng(b, h), &mut factors);
                }
                let gyh = d.q_view(gy, b, h);
                // dV += (P ⊙ D)ᵀ dY
                let dropped: Vec<Float> = p.iter().zip(&factors).map(|(p, f)| p * f).collect();
                for (r0, r1) in row_blocks(d.t) {
                    let block_t = View::rows(&dropped, d.t).skip_rows(r0).t(); // (r1, r1 - r0)
                    gemm_block(r1, hd, r1 - r0, &mut dv, hd, true, block_t, gyh.skip_rows(r0), 1.0);
                    // dP[r0..r1, ..r1] = dY[r0..r1] V[..r1]ᵀ
                    gemm_block(
                        r1 - r0,
                        r1,
                        hd,
                        &mut dp[r0 * d.t..],
                        d.t,
                        false,
                        gyh.skip_rows(r0),
                        vj.t(),
                        1.0,
                    );
                }
                // dP = D ⊙ dP, then the softmax backward in place.
                for (r, (dp_row, p_row)) in dp.chunks_mut(d.t).zip(p.chunks(d.t)).enumerate() {
                    let f_row = &factors[r * d.t..][..d.t];
                    let mut rowdot = 0.0;
                    for s in 0..=r {
                        dp_row[s] *= f_row[s];
                        rowdot += p_row[s] * dp_row[s];
                    }
                    for s in 0..d.t {
                        dp_row[s] = if s <= r {
                            p_row[s] * (dp_row[s] - rowdot) * scale
                        } else {
                            0.0
                        };
                    }
                }
                // dQ = dS K, dK += dSᵀ Q, block by block of query rows.
                let dqh = &mut dq[i * d.t * hd..][..d.t * hd];
                for (r0, r1) in row_blocks(d.t) {
                    let ds_rows = View::rows(&dp, d.t).skip_rows(r0); // (r1 - r0, r1)
                    gemm_block(r1 - r0, hd, r1, &mut dqh[r0 * hd..], hd, false, ds_rows, kj, 1.0);
                    let qh = d.q_view(q, b, h).skip_rows(r0);
                    gemm_block(r1, hd, r1 - r0, &mut dk, hd, true, ds_rows.t(), qh, 1.0);
                }
            }
            (b, j, dq, dk, dv)
        })
        .collect();
    let mut dq = vec![0.0; q.len()];
    let mut dk = vec![0.0; k.len()];
    let mut dv = vec![0.0; v.len()];
    for (b, j, pq, pk, pv) in parts {
        for t in 0..d.t {
            for i in 0..g {
                dq[d.q_at(b, t, j * g + i)..][..d.hd].copy_from_slice(&pq[(i * d.t + t) * d.hd..][..d.hd]);
            }
            dk[d.kv_at(b, t, j)..][..d.hd].copy_from_slice(&pk[t * d.hd..][..d.hd]);
            dv[d.kv_at(b, t, j)..][..d.hd].copy_from_slice(&pv[t * d.hd..][..d.hd]);
        }
    }
    (dq, dk, dv)
}
