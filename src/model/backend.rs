//! Devices gptlab trains on, and the fused causal attention each one runs.
//!
//! [`Backend::causal_attention`] defaults to the plain dfdx composition (scores, mask,
//! softmax, dropout, weighted sum); the CPU overrides it with a fused kernel that never
//! builds the masked half of the score matrix, reads key/value heads in their grouped
//! layout, and recomputes probabilities in the backward pass instead of storing them.

use dfdx::prelude::*;
use rand::Rng;
use rayon::prelude::*;

use super::attention::causal_mask;
use super::layers::Dropout;
use super::param::Float;

/// `(B, T, heads, hd)`.
pub type Heads<D, T> = Tensor<(usize, usize, usize, usize), Float, D, T>;

/// A dfdx device gptlab can train on.
pub trait Backend: Device<Float> {
    /// Causal attention: `q (B, T, H, hd)`, `k, v (B, T, Hkv, hd)` → `(B, T, H, hd)`, with query
    /// head `h` reading key/value head `h / (H / Hkv)` and dropout on the attention weights.
    fn causal_attention<T: Tape<Float, Self> + Merge<T>>(
        q: Heads<Self, T>,
        k: Heads<Self, T>,
        v: Heads<Self, T>,
        drop: &mut Dropout,
    ) -> Heads<Self, T> {
        reference_attention(q, k, v, drop)
    }

    /// `x (N, C) + b (C,)` on every row.
    fn add_bias<T: Tape<Float, Self> + Merge<T>>(
        x: Tensor<(usize, usize), Float, Self, T>,
        b: Tensor<(usize,), Float, Self, T>,
    ) -> Tensor<(usize, usize), Float, Self, T> {
        let shape = *x.shape();
        x + b.broadcast_like::<_, Axis<0>>(&shape)
    }

    /// LayerNorm over the last axis of `x (N, C)` with gain `g (C,)` and bias `b (C,)`.
    fn layer_norm<T: Tape<Float, Self> + Merge<T>>(
        x: Tensor<(usize, usize), Float, Self, T>,
        g: Tensor<(usize,), Float, Self, T>,
        b: Tensor<(usize,), Float, Self, T>,
        eps: f64,
    ) -> Tensor<(usize, usize), Float, Self, T> {
        let shape = *x.shape();
        x.normalize::<Axis<1>>(eps) * g.broadcast_like::<_, Axis<0>>(&shape) + b.broadcast_like::<_, Axis<0>>(&shape)
    }

    /// RMSNorm over the last axis of `x (N, C)` with gain `g (C,)`: `x / √(mean(x²) + ε) · g`.
    fn rms_norm<T: Tape<Float, Self> + Merge<T>>(
        x: Tensor<(usize, usize), Float, Self, T>,
        g: Tensor<(usize,), Float, Self, T>,
        eps: f64,
    ) -> Tensor<(usize, usize), Float, Self, T> {
        let shape = *x.shape();
        let inv_rms = (x.retaped::<T>().square().mean::<(usize,), Axis<1>>() + eps as Float)
            .sqrt()
            .recip();
        x * inv_rms.broadcast_like::<_, Axis<1>>(&shape) * g.broadcast_like::<_, Axis<0>>(&shape)
    }

    /// Rotary embedding of `x (B, T, nh, hd)` with the `(T, hd)` cos/sin tables of its positions.
    fn rotary<T: Tape<Float, Self> + Merge<T>>(x: Heads<Self, T>, cos: &[Float], sin: &[Float]) -> Heads<Self, T> {
        super::rope::Rope::reference(x, cos, sin)
    }

    /// GELU, tanh form (GPT-2): `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    fn gelu<S: Shape, T: Tape<Float, Self>>(x: Tensor<S, Float, Self, T>) -> Tensor<S, Float, Self, T> {
        x.fast_gelu()
    }
}

/// The composition of dfdx operations: the reference every fused kernel is tested against.
pub fn reference_attention<D: Device<Float>, T: Tape<Float, D> + Merge<T>>(
    q: Heads<D, T>,
    k: Heads<D, T>,
    v: Heads<D, T>,
    drop: &mut Dropout,
) -> Heads<D, T> {
    let (b, t, h, hd) = *q.shape();
    let hkv = k.shape().2;
    let g = h / hkv;
    // Query heads h = j·g + i of group j: (B, H, T, hd) contiguous is (B, Hkv, g·T, hd).
    let q = q.permute::<_, Axes4<0, 2, 1, 3>>().reshape_like(&(b, hkv, g * t, hd));
    let k_t = k.permute::<_, Axes4<0, 2, 3, 1>>(); // (B, Hkv, hd, T)
    let v = v.permute::<_, Axes4<0, 2, 1, 3>>(); // (B, Hkv, T, hd)
    let scores = (q.matmul(k_t) * (1.0 / (hd as Float).sqrt())).reshape_like(&(b, h, t, t)); // (B, H, T, T)
    let mask = causal_mask(scores.device(), t).broadcast_like::<_, Axes2<0, 1>>(&(b, h, t, t));
    let att = drop.apply((scores + mask).softmax::<Axis<3>>()); // (B, H, T, T)
    let y = att.reshape_like(&(b, hkv, g * t, t)).matmul(v); // (B, Hkv, g·T, hd)
    y.reshape_like(&(b, h, t, hd))
        .permute::<_, Axes4<0, 2, 1, 3>>()
        .reshape_like(&(b, t, h, hd))
}

#[cfg(feature = "cuda")]
impl Backend for dfdx::tensor::Cuda {}

const SQRT_2_OVER_PI: Float = 0.797_884_6;
const GELU_C: Float = 0.044_715;

/// `tanh(u)` through one `exp`, cheaper than libm's `tanhf`; saturates correctly at ±∞.
fn fast_tanh(u: Float) -> Float {
    1.0 - 2.0 / ((2.0 * u).exp() + 1.0)
}

/// Elements per parallel chunk of the element-wise kernels.
const CHUNK: usize = 1 << 14;

/// GELU (tanh form) of each element, in parallel.
pub fn cpu_gelu(x: &[Float]) -> Vec<Float> {
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = 0.5 * x * (1.0 + fast_tanh(SQRT_2_OVER_PI * (x + GELU_C * x * x * x)));
        }
    });
    y
}

/// `dx += gy · gelu'(x)`, in parallel.
pub fn cpu_gelu_backward(x: &[Float], gy: &[Float], dx: &mut [Float]) {
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(gy.par_chunks(CHUNK)))
        .for_each(|(dx, (x, gy))| {
            for ((dx, &x), &gy) in dx.iter_mut().zip(x).zip(gy) {
                let th = fast_tanh(SQRT_2_OVER_PI * (x + GELU_C * x * x * x));
                let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x);
                *dx += gy * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du);
            }
        });
}

/// Rotary embedding in the rotate-half layout: `out = x·cos + [-x2, x1]·sin` per head vector.
pub fn cpu_rotary(x: &[Float], cos: &[Float], sin: &[Float], t: usize, nh: usize, hd: usize) -> Vec<Float> {
    let half = hd / 2;
    let mut out = vec![0.0; x.len()];
    out.par_chunks_mut(t * nh * hd)
        .zip(x.par_chunks(t * nh * hd))
        .for_each(|(out, x)| {
            for (pos, (o, xr)) in out.chunks_mut(nh * hd).zip(x.chunks(nh * hd)).enumerate() {
                let (c, s) = (&cos[pos * hd..][..hd], &sin[pos * hd..][..hd]);
                for (o, x) in o.chunks_mut(hd).zip(xr.chunks(hd)) {
                    for i in 0..half {
                        o[i] = x[i] * c[i] - x[i + half] * s[i];
                        o[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
                    }
                }
            }
        });
    out
}

/// `dx += ∂/∂x` of [`cpu_rotary`] applied to `gy`: the inverse rotation.
pub fn cpu_rotary_backward(
    gy: &[Float],
    cos: &[Float],
    sin: &[Float],
    t: usize,
    nh: usize,
    hd: usize,
    dx: &mut [Float],
) {
    let half = hd / 2;
    dx.par_chunks_mut(t * nh * hd)
        .zip(gy.par_chunks(t * nh * hd))
        .for_each(|(dx, gy)| {
            for (pos, (d, g)) in dx.chunks_mut(nh * hd).zip(gy.chunks(nh * hd)).enumerate() {
                let (c, s) = (&cos[pos * hd..][..hd], &sin[pos * hd..][..hd]);
                for (d, g) in d.chunks_mut(hd).zip(g.chunks(hd)) {
                    for i in 0..half {
                        d[i] += g[i] * c[i] + g[i + half] * s[i + half];
                        d[i + half] += g[i + half] * c[i + half] - g[i] * s[i];
                    }
                }
            }
        });
}

impl Backend for Cpu {
    fn rotary<T: Tape<Float, Self> + Merge<T>>(x: Heads<Self, T>, cos: &[Float], sin: &[Float]) -> Heads<Self, T> {
        let shape = *x.shape();
        let (_, t, nh, hd) = shape;
        let (x, mut tape) = x.split_tape();
        let out = x
            .device()
            .tensor_from_vec(cpu_rotary(&x.as_vec(), cos, sin, t, nh, hd), shape);
        if T::OWNS_TAPE {
            let (out_ref, cos, sin) = (out.clone(), cos.to_vec(), sin.to_vec());
            tape.add_backward_op(move |grads| {
                let gy = grads.get_or_alloc_mut(&out_ref)?.to_vec();
                cpu_rotary_backward(&gy, &cos, &sin, t, nh, hd, grads.get_or_alloc_mut(&x)?);
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    fn add_bias<T: Tape<Float, Self> + Merge<T>>(
        x: Tensor<(usize, usize), Float, Self, T>,
        b: Tensor<(usize,), Float, Self, T>,
    ) -> Tensor<(usize, usize), Float, Self, T> {
        let shape = *x.shape();
        let c = shape.1;
        let (x, tape_x) = x.split_tape();
        let (b, tape_b) = b.split_tape();
        let bv = b.as_vec();
        let mut y = x.as_vec();
        y.par_chunks_mut(c * 64).for_each(|rows| {
            rows.chunks_mut(c)
                .for_each(|r| r.iter_mut().zip(&bv).for_each(|(v, b)| *v += b))
        });
        let out = x.device().tensor_from_vec(y, shape);
        let mut tape = tape_x.merge(tape_b);
        if T::OWNS_TAPE {
            let out_ref = out.clone();
            tape.add_backward_op(move |grads| {
                let gy = grads.get_or_alloc_mut(&out_ref)?.to_vec();
                let gx = grads.get_or_alloc_mut(&x)?;
                gx.par_chunks_mut(CHUNK)
                    .zip(gy.par_chunks(CHUNK))
                    .for_each(|(a, g)| a.iter_mut().zip(g).for_each(|(a, g)| *a += g));
                let gb = grads.get_or_alloc_mut(&b)?;
                for row in gy.chunks(c) {
                    gb.iter_mut().zip(row).for_each(|(a, g)| *a += g);
                }
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    fn layer_norm<T: Tape<Float, Self> + Merge<T>>(
        x: Tensor<(usize, usize), Float, Self, T>,
        g: Tensor<(usize,), Float, Self, T>,
        b: Tensor<(usize,), Float, Self, T>,
        eps: f64,
    ) -> Tensor<(usize, usize), Float, Self, T> {
        let shape = *x.shape();
        let (n, c) = shape;
        let (x, tape_x) = x.split_tape();
        let (g, tape_g) = g.split_tape();
        let (b, tape_b) = b.split_tape();
        let (xv, gv, bv) = (x.as_vec(), g.as_vec(), b.as_vec());
        // x̂ = (x - μ) / σ per row, kept with 1/σ for the backward pass.
        let mut xhat = vec![0.0; n * c];
        let mut inv_std = vec![0.0; n];
        xhat.par_chunks_mut(c)
            .zip(inv_std.par_iter_mut())
            .zip(xv.par_chunks(c))
            .for_each(|((xh, is), x)| {
                let mean = x.iter().sum::<Float>() / c as Float;
                let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<Float>() / c as Float;
                *is = 1.0 / (var + eps as Float).sqrt();
                xh.iter_mut().zip(x).for_each(|(h, v)| *h = (v - mean) * *is);
            });
        let mut y = vec![0.0; n * c];
        y.par_chunks_mut(c).zip(xhat.par_chunks(c)).for_each(|(y, xh)| {
            for i in 0..c {
                y[i] = xh[i] * gv[i] + bv[i];
            }
        });
        let out = x.device().tensor_from_vec(y, shape);
        let mut tape = tape_x.merge(tape_g).merge(tape_b);
        if T::OWNS_TAPE {
            let out_ref = out.clone();
            tape.add_backward_op(move |grads| {
                let gy = grads.get_or_alloc_mut(&out_ref)?.to_vec();
                // dx = (1/σ)·(ĝ - mean(ĝ) - x̂·mean(ĝ·x̂)) with ĝ = gy·γ.
                let gx = grads.get_or_alloc_mut(&x)?;
                gx.par_chunks_mut(c)
                    .zip(gy.par_chunks(c))
                    .zip(xhat.par_chunks(c).zip(inv_std.par_iter()))
                    .for_each(|((dx, gy), (xh, is))| {
                        let mut m1 = 0.0;
                        let mut m2 = 0.0;
                        for i in 0..c {
                            let gh = gy[i] * gv[i];
                            m1 += gh;
                            m2 += gh * xh[i];
                        }
                        let (m1, m2) = (m1 / c as Float, m2 / c as Float);
                        for i in 0..c {
                            dx[i] += is * (gy[i] * gv[i] - m1 - xh[i] * m2);
                        }
                    });
                let mut dg = vec![0.0; c];
                let mut db = vec![0.0; c];
                for (gy, xh) in gy.chunks(c).zip(xhat.chunks(c)) {
                    for i in 0..c {
                        dg[i] += gy[i] * xh[i];
                        db[i] += gy[i];
                    }
                }
                grads
                    .get_or_alloc_mut(&g)?
                    .iter_mut()
                    .zip(dg)
                    .for_each(|(a, d)| *a += d);
                grads
                    .get_or_alloc_mut(&b)?
                    .iter_mut()
                    .zip(db)
                    .for_each(|(a, d)| *a += d);
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    fn gelu<S: Shape, T: Tape<Float, Self>>(x: Tensor<S, Float, Self, T>) -> Tensor<S, Float, Self, T> {
        let shape = *x.shape();
        let (x, mut tape) = x.split_tape();
        let xv = x.as_vec();
        let out = x.device().tensor_from_vec(cpu_gelu(&xv), shape);
        if T::OWNS_TAPE {
            let out_ref = out.clone();
            tape.add_backward_op(move |grads| {
                let gy = grads.get_or_alloc_mut(&out_ref)?.to_vec();
                cpu_gelu_backward(&xv, &gy, grads.get_or_alloc_mut(&x)?);
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    fn causal_attention<T: Tape<Float, Self> + Merge<T>>(
        q: Heads<Self, T>,
        k: Heads<Self, T>,
        v: Heads<Self, T>,
        drop: &mut Dropout,
    ) -> Heads<Self, T> {
        let shape = *q.shape();
        let (b, t, h, hd) = shape;
        let hkv = k.shape().2;
        let dims = Dims {
            b,
            t,
            h,
            hkv,
            hd,
            p: drop.p(),
            seed: drop.next_seed(),
        };
        let timer = crate::probe::Timer::start();
        let live_before = crate::probe::live_bytes();
        let (q, tape_q) = q.split_tape();
        let (k, tape_k) = k.split_tape();
        let (v, tape_v) = v.split_tape();
        let (qv, kv, vv) = (q.as_vec(), k.as_vec(), v.as_vec());
        let (y, lse) = cpu_forward(&dims, &qv, &kv, &vv);
        let out = q.device().tensor_from_vec(y, shape);
        let mut tape = tape_q.merge(tape_k).merge(tape_v);
        if T::OWNS_TAPE {
            let out_ref = out.clone();
            tape.add_backward_op(move |grads| {
                let timer = crate::probe::Timer::start();
                let gy = grads.get_or_alloc_mut(&out_ref)?.to_vec();
                let (dq, dk, dv) = cpu_backward(&dims, &qv, &kv, &vv, &lse, &gy);
                for (t, d) in [(&q, dq), (&k, dk), (&v, dv)] {
                    let g = grads.get_or_alloc_mut(t)?;
                    g.iter_mut().zip(d).for_each(|(a, b)| *a += b);
                }
                timer.stop();
                Ok(())
            });
            // What stays allocated until backward: the copies of q, k and v, the row
            // log-sum-exps, the output and the closure that holds them.
            if let (Some(before), Some(after)) = (live_before, crate::probe::live_bytes()) {
                crate::probe::add_saved_bytes(after.saturating_sub(before));
            }
        }
        timer.stop();
        out.put_tape(tape)
    }
}

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
    /// Dropout probability on attention weights (0 in evaluation).
    pub p: f32,
    /// Seed of the dropout masks; the backward pass regenerates the same masks from it.
    pub seed: u64,
}

impl Dims {
    fn q_at(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.t + t) * self.h + h) * self.hd
    }
    fn kv_at(&self, b: usize, t: usize, j: usize) -> usize {
        ((b * self.t + t) * self.hkv + j) * self.hd
    }
    /// The mask generator of query head `h` in batch row `b`: rows drawn in order t, then j ≤ t.
    fn mask_rng(&self, b: usize, h: usize) -> rand_chacha::ChaCha8Rng {
        crate::seed::stream(self.seed, crate::seed::Stream::Dropout, (b * self.h + h) as u64)
    }
    fn keep_threshold(&self) -> u32 {
        (self.p as f64 * u32::MAX as f64) as u32
    }
}

/// Dot product with eight independent partial sums: a plain `sum()` must add in order,
/// which keeps LLVM from vectorising it.
pub(crate) fn dot(a: &[Float], b: &[Float]) -> Float {
    let mut acc = [0.0; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: Float = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<Float>() + tail
}

/// A strided matrix view: element (r, c) of `data` is at `r·rs + c·cs`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [Float],
    rs: usize,
    cs: usize,
}

/// `dst (m×n, row-major, contiguous) = acc·dst + beta · lhs (m×k) · rhs (k×n)`, single-threaded
/// (callers already run one task per core).
#[allow(clippy::too_many_arguments)]
fn gemm_into(m: usize, n: usize, k: usize, dst: &mut [Float], acc: bool, lhs: View<'_>, rhs: View<'_>, beta: Float) {
    let last = |v: &View<'_>, rows: usize, cols: usize| (rows - 1) * v.rs + (cols - 1) * v.cs;
    assert!(dst.len() >= m * n && m > 0 && n > 0 && k > 0);
    assert!(last(&lhs, m, k) < lhs.data.len() && last(&rhs, k, n) < rhs.data.len());
    // SAFETY: the asserts above keep every index the strides reach inside the slices, and
    // `dst` is exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            acc,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
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
    /// The transpose of a `(T, hd)` view: `(hd, T)`.
    fn t<'a>(v: View<'a>) -> View<'a> {
        View {
            data: v.data,
            rs: v.cs,
            cs: v.rs,
        }
    }
}

/// Fills `s (T×T)` with `scale · q_h k_jᵀ` and turns each row `t` into the causal softmax over
/// `s ≤ t` (zeros above the diagonal), given the row's log-sum-exp in `lse` or computing it.
fn causal_probs(d: &Dims, s: &mut [Float], q: View<'_>, k: View<'_>, lse: &mut [Float], known_lse: bool) {
    let (t, scale) = (d.t, 1.0 / (d.hd as Float).sqrt());
    gemm_into(t, t, d.hd, s, false, q, Dims::t(k), scale);
    for (r, row) in s.chunks_mut(t).enumerate() {
        let (live, masked) = row.split_at_mut(r + 1);
        if !known_lse {
            let max = live.iter().cloned().fold(Float::NEG_INFINITY, Float::max);
            let sum: Float = live.iter().map(|x| (x - max).exp()).sum();
            lse[r] = max + sum.ln();
        }
        live.iter_mut().for_each(|x| *x = (*x - lse[r]).exp());
        masked.iter_mut().for_each(|x| *x = 0.0);
    }
}

/// The dropout factor of each kept weight (`1 / (1 - p)` or 0), drawn row by row in the order
/// `t`, then `s ≤ t`, as the forward and backward passes both read it.
fn dropout_factors(d: &Dims, rng: &mut rand_chacha::ChaCha8Rng, out: &mut [Float]) {
    let (keep, threshold) = (1.0 / (1.0 - d.p), d.keep_threshold());
    for (r, row) in out.chunks_mut(d.t).enumerate() {
        for x in &mut row[..=r] {
            *x = if rng.r#gen::<u32>() < threshold { 0.0 } else { keep };
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
                    &mut lse[i * d.t..][..d.t],
                    false,
                );
                if d.p > 0.0 {
                    dropout_factors(d, &mut d.mask_rng(b, h), &mut factors);
                    s.iter_mut().zip(&factors).for_each(|(p, f)| *p *= f);
                }
                let yv = &mut y[i * d.t * d.hd..][..d.t * d.hd];
                gemm_into(
                    d.t,
                    d.hd,
                    d.t,
                    yv,
                    false,
                    View {
                        data: &s,
                        rs: d.t,
                        cs: 1,
                    },
                    d.kv_view(v, b, j),
                    1.0,
                );
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
                causal_probs(d, &mut p, d.q_view(q, b, h), kj, &mut row_lse, true);
                if d.p > 0.0 {
                    dropout_factors(d, &mut d.mask_rng(b, h), &mut factors);
                }
                let gyh = d.q_view(gy, b, h);
                // dV += (P ⊙ D)ᵀ dY
                let dropped: Vec<Float> = p.iter().zip(&factors).map(|(p, f)| p * f).collect();
                gemm_into(
                    d.t,
                    hd,
                    d.t,
                    &mut dv,
                    true,
                    View {
                        data: &dropped,
                        rs: 1,
                        cs: d.t,
                    },
                    gyh,
                    1.0,
                );
                // dP = D ⊙ (dY Vᵀ), then the softmax backward in place.
                gemm_into(d.t, d.t, hd, &mut dp, false, gyh, Dims::t(vj), 1.0);
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
                // dQ = dS K, dK += dSᵀ Q
                gemm_into(
                    d.t,
                    hd,
                    d.t,
                    &mut dq[i * d.t * hd..][..d.t * hd],
                    false,
                    View {
                        data: &dp,
                        rs: d.t,
                        cs: 1,
                    },
                    kj,
                    1.0,
                );
                gemm_into(
                    d.t,
                    hd,
                    d.t,
                    &mut dk,
                    true,
                    View {
                        data: &dp,
                        rs: 1,
                        cs: d.t,
                    },
                    d.q_view(q, b, h),
                    1.0,
                );
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
