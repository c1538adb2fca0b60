//! The fused causal attention on CPU: forward and backward passes over one task per batch
//! row, on register tiles that compute only the causal part of each head's products
//! ([`super::attention_tiles`]), recomputing probabilities in the backward pass instead of storing them
//! (and the dropout masks from their seed). Each task writes straight into its rows of the
//! output, or adds into its rows of the gradients (or writes its rows of new ones), so no
//! task's result is copied again, and no buffer is zeroed: a new output or gradient is
//! written first by the sum that produces it, then added into.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::attention_tiles::{causal_scores, from_tile, up_to_tile, weighted_rows};
use super::cpu_kernels::{dot, exp, max, sum};
use super::dropout::DropRule;
use super::matmul::{View, as_uninit_mut};
use super::simd::simd_kernel;
use super::transpose::transpose;
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
    /// Key/value head `j` of batch row `b` of `x`, transposed into `out (hd×T)`.
    fn transpose_kv(&self, x: &[Float], b: usize, j: usize, out: &mut [Float]) {
        transpose(self.t, self.hd, &x[self.kv_at(b, 0, j)..], self.hkv * self.hd, out);
    }
}

/// Fills `s (T×T)` with `scale · q_h k_jᵀ` (plus ALiBi's `−m·(t−s)` with a `slope`) and turns
/// each row `t` into the causal softmax over `s ≤ t` (zeros above the diagonal), given the
/// row's log-sum-exp in `lse` or computing it. `kt` is the key head transposed `(hd×T)`.
fn causal_probs(
    d: &Dims,
    s: &mut [Float],
    q: &[Float],
    kt: &[Float],
    slope: Option<Float>,
    lse: &mut [Float],
    known_lse: bool,
) {
    let (t, scale) = (d.t, 1.0 / (d.hd as Float).sqrt());
    causal_scores(t, t, d.hd, q, d.h * d.hd, kt, s, scale);
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
            // The exponentials run over whole vectors of 16 (past the diagonal into the
            // masked part, which is zeroed after): a row's last `(r + 1) mod 16` weights
            // would otherwise go through the loop's scalar remainder, one `exp` each, which
            // cost more than the vectors at T = 128 (rows of 65 weights on average). Each
            // live weight gets the same operations either way, so the same bits.
            let whole = (r + 1).next_multiple_of(16).min(t);
            let (head, masked) = row.split_at_mut(whole);
            let live = r + 1;
            if !known_lse {
                let max = max(&head[..live]);
                // One exponential per weight: e^(s - max), then divide by the row sum.
                head.iter_mut().for_each(|x| *x = exp(*x - max));
                let sum = sum(&head[..live]);
                lse[r] = max + sum.ln();
                let inv = 1.0 / sum;
                head.iter_mut().for_each(|x| *x *= inv);
            } else {
                let l = lse[r];
                head.iter_mut().for_each(|x| *x = exp(*x - l));
            }
            head[live..].fill(0.0);
            masked.fill(0.0);
        }
    }
}

/// One task's working buffers, reused for every head it runs: the key (and, backward, value)
/// head transposed, the `(T×T)` probabilities,
/// the scores' gradient and the dropped-out probabilities (backward only), one head's row
/// log-sum-exps (backward only) and one head's raw dropout draws (with dropout).
struct Scratch {
    kt: Vec<Float>,
    vt: Vec<Float>,
    p: Vec<Float>,
    dp: Vec<Float>,
    dropped: Vec<Float>,
    lse: Vec<Float>,
    draws: Vec<u32>,
}

impl Scratch {
    fn new(d: &Dims, backward: bool) -> Self {
        let (tt, drop) = (d.t * d.t, d.p > 0.0);
        // Zeroed once: the parts above the diagonal that no head writes must read as zero.
        Self {
            kt: vec![0.0; d.hd * d.t],
            vt: vec![0.0; if backward { d.hd * d.t } else { 0 }],
            p: vec![0.0; tt],
            dp: vec![0.0; if backward { tt } else { 0 }],
            dropped: vec![0.0; if backward && drop { tt } else { 0 }],
            lse: vec![0.0; if backward { d.t } else { 0 }],
            draws: vec![0; if drop { d.t * (d.t + 1) / 2 } else { 0 }],
        }
    }
}

impl Dims {
    /// The raw dropout draws of query head `h` in batch row `b`: `T(T+1)/2` words, row `r`'s
    /// `r + 1` (for `s ≤ r`) from word `r(r+1)/2` on, as the forward and backward passes both
    /// read them.
    fn draw_mask(&self, b: usize, h: usize, draws: &mut [u32]) {
        DropRule::draw(&mut self.mask_rng(b, h), draws);
    }
}

simd_kernel! {
    /// Drops out the causal weights of `p (T×T)` in place: `p[r, s] ·= factor` for `s ≤ r`.
    fn drop_rows(p: &mut [Float], t: usize, draws: &[u32], rule: DropRule) {
        let mut start = 0;
        for (r, row) in p.chunks_mut(t).enumerate() {
            let row_draws = &draws[start..][..=r];
            row[..=r].iter_mut().zip(row_draws).for_each(|(x, &u)| *x *= rule.factor(u));
            start += r + 1;
        }
    }
}

simd_kernel! {
    /// `out[r, s] = p[r, s] · factor` for `s ≤ r`; the rest of `out` is left as it is (zero).
    fn dropped_rows(out: &mut [Float], p: &[Float], t: usize, draws: &[u32], rule: DropRule) {
        let mut start = 0;
        for (r, (o, p)) in out.chunks_mut(t).zip(p.chunks(t)).enumerate() {
            let row_draws = &draws[start..][..=r];
            for ((o, &p), &u) in o[..=r].iter_mut().zip(&p[..=r]).zip(row_draws) {
                *o = p * rule.factor(u);
            }
            start += r + 1;
        }
    }
}

simd_kernel! {
    /// The softmax backward in place: row `r` of `dp` (`dY Vᵀ`) becomes
    /// `dS = P ⊙ (D ⊙ dP − Σ_s P ⊙ D ⊙ dP) · scale` for `s ≤ r` and 0 above the diagonal
    /// (`D`, the dropout factors, from `draws` when given).
    fn softmax_backward_rows(dp: &mut [Float], p: &[Float], t: usize, draws: Option<&[u32]>, rule: DropRule, scale: Float) {
        let mut start = 0;
        for (r, (dp_row, p_row)) in dp.chunks_mut(t).zip(p.chunks(t)).enumerate() {
            let (live, masked) = dp_row.split_at_mut(r + 1);
            let p_live = &p_row[..=r];
            if let Some(draws) = draws {
                let row_draws = &draws[start..][..=r];
                live.iter_mut().zip(row_draws).for_each(|(x, &u)| *x *= rule.factor(u));
            }
            start += r + 1;
            let rowdot = dot(p_live, live);
            live.iter_mut().zip(p_live).for_each(|(x, &p)| *x = p * (*x - rowdot) * scale);
            masked.fill(0.0);
        }
    }
}

/// Forward pass: `y (B, T, H, hd)` and the log-sum-exp of each score row `(B, H, T)`.
///
/// One task per batch row runs its query heads as small matrix products, writing straight
/// into its rows of `y`: `S = scale·Q Kᵀ` (the tiles on the diagonal also compute a few scores
/// right of it, which the softmax zeroes), the causal softmax, dropout, then `Y = P V`.
pub fn cpu_forward(d: &Dims, q: &[Float], k: &[Float], v: &[Float]) -> (Vec<Float>, Vec<Float>) {
    let (row_y, row_lse) = (d.t * d.h * d.hd, d.h * d.t);
    let (mut y, mut lse) = (Vec::with_capacity(d.b * row_y), Vec::with_capacity(d.b * row_lse));
    y.spare_capacity_mut()[..d.b * row_y]
        .par_chunks_mut(row_y)
        .zip(lse.spare_capacity_mut()[..d.b * row_lse].par_chunks_mut(row_lse))
        .enumerate()
        .for_each_init(
            || Scratch::new(d, false),
            |scratch, (b, (y_b, lse_b))| forward_row(d, b, [q, k, v], y_b, zeroed(lse_b), scratch),
        );
    // SAFETY: each task wrote its rows of `y` (every head's columns) and zeroed its rows of
    // `lse` (then wrote them).
    unsafe {
        y.set_len(d.b * row_y);
        lse.set_len(d.b * row_lse);
    }
    (y, lse)
}

/// `part` with every element set to zero, as values: zeroed by the task about to write it,
/// while in its cache, instead of by a pass over the whole buffer beforehand (a few
/// log-sum-exps per head, which the softmax writes through a `&mut [Float]`).
fn zeroed(part: &mut [std::mem::MaybeUninit<Float>]) -> &mut [Float] {
    part.fill(std::mem::MaybeUninit::new(0.0));
    // SAFETY: every element was just written; `MaybeUninit<Float>` has `Float`'s layout.
    unsafe { &mut *(part as *mut [std::mem::MaybeUninit<Float>] as *mut [Float]) }
}

/// [`cpu_forward`] for batch row `b`: its rows of `y` and `lse`.
fn forward_row(
    d: &Dims,
    b: usize,
    [q, k, v]: [&[Float]; 3],
    y_b: &mut [MaybeUninit<Float>],
    lse_b: &mut [Float],
    s: &mut Scratch,
) {
    let g = d.h / d.hkv;
    for h in 0..d.h {
        let j = h / g;
        if h % g == 0 {
            d.transpose_kv(k, b, j, &mut s.kt);
        }
        let qh = &q[d.q_at(b, 0, h)..];
        causal_probs(d, &mut s.p, qh, &s.kt, d.slope(h), &mut lse_b[h * d.t..][..d.t], false);
        if d.p > 0.0 {
            d.draw_mask(b, h, &mut s.draws);
            drop_rows(&mut s.p, d.t, &s.draws, DropRule::new(d.p));
        }
        // Y = P V, into head h's columns of y's rows.
        let (p, vj) = (View::rows(&s.p, d.t), &v[d.kv_at(b, 0, j)..]);
        let y_h = &mut y_b[h * d.hd..];
        // SAFETY: not accumulating, the sums read nothing of `y`.
        unsafe { weighted_rows(d.t, d.hd, p, vj, d.hkv * d.hd, y_h, d.h * d.hd, false, up_to_tile, d.t) };
    }
}

/// Backward pass: adds the gradients of `q`, `k`, `v` from `gy` into `dq`, `dk`, `dv`,
/// recomputing the probabilities from the saved log-sum-exp and the dropout masks from their
/// seed: `dV += P'ᵀ dY`, `dP = D ⊙ (dY Vᵀ)`, `dS = P ⊙ (dP - rowsum(P ⊙ dP)) · scale`,
/// `dQ += dS K`, `dK += dSᵀ Q` (P' = P ⊙ D are the dropped-out weights). One task per batch
/// row, writing straight into its rows of the gradients.
pub fn cpu_backward(d: &Dims, qkv: [&[Float]; 3], lse: &[Float], gy: &[Float], grads: [&mut [Float]; 3]) {
    // SAFETY: the caller's gradients are initialised.
    unsafe { backward_rows(d, qkv, lse, gy, grads.map(as_uninit_mut), false) };
}

/// [`cpu_backward`] into new gradients (the inputs have none yet): the first sum into each
/// element writes it, so no buffer of zeros is made first.
pub fn cpu_backward_new(d: &Dims, qkv: [&[Float]; 3], lse: &[Float], gy: &[Float]) -> [Vec<Float>; 3] {
    let lens = qkv.map(<[Float]>::len);
    let mut grads = lens.map(Vec::with_capacity);
    let [dq, dk, dv] = &mut grads;
    let parts = [dq, dk, dv].map(|g| {
        let n = g.capacity();
        &mut g.spare_capacity_mut()[..n]
    });
    // SAFETY: with `fresh`, nothing is read before it is written.
    unsafe { backward_rows(d, qkv, lse, gy, parts, true) };
    for (g, n) in grads.iter_mut().zip(lens) {
        // SAFETY: with `fresh`, each task wrote every element of its rows, which cover all `n`.
        unsafe { g.set_len(n) };
    }
    grads
}

/// The backward tasks over the gradients' rows: adding into them, or with `fresh` writing
/// them (memory not yet written).
///
/// # Safety
/// Without `fresh`, the gradients must be initialised.
unsafe fn backward_rows(
    d: &Dims,
    [q, k, v]: [&[Float]; 3],
    lse: &[Float],
    gy: &[Float],
    [dq, dk, dv]: [&mut [MaybeUninit<Float>]; 3],
    fresh: bool,
) {
    let (row_q, row_kv) = (d.t * d.h * d.hd, d.t * d.hkv * d.hd);
    assert!(q.len() == d.b * row_q && gy.len() == q.len() && dq.len() == q.len());
    assert!(k.len() == d.b * row_kv && v.len() == k.len() && dk.len() == k.len() && dv.len() == k.len());
    assert_eq!(lse.len(), d.b * d.h * d.t);
    dq.par_chunks_mut(row_q)
        .zip(dk.par_chunks_mut(row_kv))
        .zip(dv.par_chunks_mut(row_kv))
        .enumerate()
        .for_each_init(
            || Scratch::new(d, true),
            |scratch, (b, ((dq_b, dk_b), dv_b))| {
                // SAFETY: without `fresh`, the caller vouches that the gradients are initialised.
                unsafe { backward_row(d, b, [q, k, v, lse, gy], [dq_b, dk_b, dv_b], fresh, scratch) }
            },
        );
}

/// [`cpu_backward`] for batch row `b`: adds into its rows of `dq`, `dk` and `dv`, or with
/// `fresh` writes them: the one query head of `dq`'s columns, and the first query head of each
/// key/value head's group, write; the group's other heads add.
///
/// # Safety
/// Without `fresh`, the rows must be initialised.
unsafe fn backward_row(
    d: &Dims,
    b: usize,
    [q, k, v, lse, gy]: [&[Float]; 5],
    [dq_b, dk_b, dv_b]: [&mut [MaybeUninit<Float>]; 3],
    fresh: bool,
    s: &mut Scratch,
) {
    let (g, t, hd) = (d.h / d.hkv, d.t, d.hd);
    let (rule, scale) = (DropRule::new(d.p), 1.0 / (hd as Float).sqrt());
    let (ldq, ldkv) = (d.h * hd, d.hkv * hd);
    for h in 0..d.h {
        let j = h / g;
        if h % g == 0 {
            d.transpose_kv(k, b, j, &mut s.kt);
            d.transpose_kv(v, b, j, &mut s.vt);
        }
        let (qh, kj, gyh) = (&q[d.q_at(b, 0, h)..], &k[d.kv_at(b, 0, j)..], &gy[d.q_at(b, 0, h)..]);
        s.lse.copy_from_slice(&lse[(b * d.h + h) * t..][..t]);
        causal_probs(d, &mut s.p, qh, &s.kt, d.slope(h), &mut s.lse, true);
        let dropped = if d.p > 0.0 {
            d.draw_mask(b, h, &mut s.draws);
            dropped_rows(&mut s.dropped, &s.p, t, &s.draws, rule);
            &s.dropped
        } else {
            &s.p
        };
        let (dq_h, dk_j, dv_j) = (&mut dq_b[h * hd..], &mut dk_b[j * hd..], &mut dv_b[j * hd..]);
        // Fresh, head h is the only one in dq's columns, and the group's first in dk's and
        // dv's: those sums write, every later one adds to what was written.
        let (add_q, add_kv) = (!fresh, !(fresh && h % g == 0));
        // dV += (P ⊙ D)ᵀ dY
        let dropped_t = View::rows(dropped, t).t();
        // SAFETY (the three sums): what `add_q`/`add_kv` read is the caller's initialised rows,
        // or what this row's earlier heads wrote (above).
        unsafe { weighted_rows(t, hd, dropped_t, gyh, ldq, dv_j, ldkv, add_kv, from_tile, t) };
        // dP = dY Vᵀ, then dS in place.
        causal_scores(t, t, hd, gyh, ldq, &s.vt, &mut s.dp, 1.0);
        let draws = (d.p > 0.0).then_some(&s.draws[..]);
        softmax_backward_rows(&mut s.dp, &s.p, t, draws, rule, scale);
        // dQ += dS K, dK += dSᵀ Q
        let ds = View::rows(&s.dp, t);
        // SAFETY: as for dV's sum above.
        unsafe {
            weighted_rows(t, hd, ds, kj, ldkv, dq_h, ldq, add_q, up_to_tile, t);
            weighted_rows(t, hd, ds.t(), qh, ldq, dk_j, ldkv, add_kv, from_tile, t);
        }
    }
}
