//! Devices gptlab trains on, and the fused causal attention each one runs.
//!
//! [`Backend::causal_attention`] defaults to the plain dfdx composition (scores, mask,
//! softmax, dropout, weighted sum); the CPU overrides it with a fused kernel that never
//! builds the masked half of the score matrix, reads key/value heads in their grouped
//! layout, and recomputes probabilities in the backward pass instead of storing them.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::attention::causal_mask;
use super::cpu_attention::{Dims, cpu_backward, cpu_forward};
use super::cpu_kernels::{
    CHUNK, View, add_column_sums, add_masked, cpu_gelu, cpu_gelu_backward, cpu_gelu_backward_in_place, cpu_layer_norm,
    cpu_layer_norm_backward, cpu_linear, cpu_residual, cpu_rotary, cpu_rotary_backward, dropout_keep_mask, gemm_par,
};
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

    /// `x (N, in) · w (in, out) + b (out,)`.
    fn linear<T: Tape<Float, Self> + Merge<T>>(
        x: Tensor<(usize, usize), Float, Self, T>,
        w: Tensor<(usize, usize), Float, Self, T>,
        b: Option<Tensor<(usize,), Float, Self, T>>,
    ) -> Tensor<(usize, usize), Float, Self, T> {
        let y = x.matmul(w);
        match b {
            Some(b) => Self::add_bias(y, b),
            None => y,
        }
    }

    /// The GELU MLP `GELU(x W₁ + b₁) W₂ + b₂` of `x (N, C)`, `W₁ (C, H)`, `W₂ (H, C)`.
    fn mlp_gelu<T: Tape<Float, Self> + Merge<T>>(
        x: Tensor<(usize, usize), Float, Self, T>,
        w1: Tensor<(usize, usize), Float, Self, T>,
        b1: Option<Tensor<(usize,), Float, Self, T>>,
        w2: Tensor<(usize, usize), Float, Self, T>,
        b2: Option<Tensor<(usize,), Float, Self, T>>,
    ) -> Tensor<(usize, usize), Float, Self, T> {
        Self::linear(Self::gelu(Self::linear(x, w1, b1)), w2, b2)
    }

    /// The residual connection `skip + dropout(x)` of two `(N, C)` activations.
    fn residual<T: Tape<Float, Self> + Merge<T>>(
        skip: Tensor<(usize, usize), Float, Self, T>,
        x: Tensor<(usize, usize), Float, Self, T>,
        drop: &mut Dropout,
    ) -> Tensor<(usize, usize), Float, Self, T> {
        skip + drop.apply(x)
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

/// [`reference_attention`] with the attention probe's clock around its forward and backward
/// passes, for devices that run asynchronously: each reading waits for the device first.
/// The backward pass is timed by two marker operations on the tape, one recorded before the
/// attention's own operations (so it runs after their backward) and one after them.
pub fn timed_reference_attention<D: Device<Float> + Synchronize, T: Tape<Float, D> + Merge<T>>(
    q: Heads<D, T>,
    k: Heads<D, T>,
    v: Heads<D, T>,
    drop: &mut Dropout,
) -> Heads<D, T> {
    if !crate::probe::attention_probe_enabled() {
        return reference_attention(q, k, v, drop);
    }
    let dev = q.device().clone();
    let started = std::sync::Arc::new(std::sync::Mutex::new(None::<crate::probe::Timer>));
    let (q, mut tape_q) = q.split_tape();
    if T::OWNS_TAPE {
        let (dev, started) = (dev.clone(), started.clone());
        tape_q.add_backward_op(move |_| {
            dev.synchronize();
            if let Some(timer) = started.lock().expect("not poisoned").take() {
                timer.stop();
            }
            Ok(())
        });
    }
    dev.synchronize();
    let timer = crate::probe::Timer::start();
    let y = reference_attention(q.put_tape(tape_q), k, v, drop);
    dev.synchronize();
    timer.stop();
    let (y, mut tape) = y.split_tape();
    if T::OWNS_TAPE {
        tape.add_backward_op(move |_| {
            dev.synchronize();
            *started.lock().expect("not poisoned") = Some(crate::probe::Timer::start());
            Ok(())
        });
    }
    y.put_tape(tape)
}

/// CUDA runs dfdx's own kernels (the composition), timed for the attention probe.
#[cfg(feature = "cuda")]
impl Backend for dfdx::tensor::Cuda {
    fn causal_attention<T: Tape<Float, Self> + Merge<T>>(
        q: Heads<Self, T>,
        k: Heads<Self, T>,
        v: Heads<Self, T>,
        drop: &mut Dropout,
    ) -> Heads<Self, T> {
        timed_reference_attention(q, k, v, drop)
    }
}

/// The elements of `t` in row-major order, copied with one `memcpy` (dfdx's `as_vec` walks
/// them one at a time). A tensor whose storage is not already in that order (a permuted or
/// broadcast view) is first made contiguous by the same-shape reshape.
fn host_data<S: Shape, T>(t: &Tensor<S, Float, Cpu, T>) -> Vec<Float> {
    let contiguous = t.retaped::<NoneTape>().reshape_like(t.shape());
    let mut v = vec![0.0; t.shape().num_elements()];
    contiguous.copy_into(&mut v);
    v
}

/// Runs `f` with the gradient of `out` lent out of `grads` (moved, not copied), so `f` can
/// write the gradients of the inputs while reading it; puts it back afterwards.
fn with_output_grad<S: Shape>(
    grads: &mut Gradients<Float, Cpu>,
    out: &Tensor<S, Float, Cpu>,
    f: impl FnOnce(&mut Gradients<Float, Cpu>, &[Float]) -> Result<(), <Cpu as HasErr>::Err>,
) -> Result<(), <Cpu as HasErr>::Err> {
    let gy = std::mem::take(&mut **grads.get_or_alloc_mut(out)?);
    let result = f(grads, &gy);
    **grads.get_or_alloc_mut(out)? = gy;
    result
}

impl Backend for Cpu {
    /// One op for the whole MLP: the `(N, H)` hidden activations (4× the residual stream)
    /// stay in this op's own buffers instead of being copied in and out of dfdx tensors.
    fn mlp_gelu<T: Tape<Float, Self> + Merge<T>>(
        x: Tensor<(usize, usize), Float, Self, T>,
        w1: Tensor<(usize, usize), Float, Self, T>,
        b1: Option<Tensor<(usize,), Float, Self, T>>,
        w2: Tensor<(usize, usize), Float, Self, T>,
        b2: Option<Tensor<(usize,), Float, Self, T>>,
    ) -> Tensor<(usize, usize), Float, Self, T> {
        let (n, c) = *x.shape();
        let hidden = w1.shape().1;
        assert_eq!(*w1.shape(), (c, hidden), "mlp: W1 must be (C, H)");
        assert_eq!(*w2.shape(), (hidden, c), "mlp: W2 must be (H, C)");
        let (x, tape_x) = x.split_tape();
        let (w1, tape_w1) = w1.split_tape();
        let (w2, tape_w2) = w2.split_tape();
        let mut tape = tape_x.merge(tape_w1).merge(tape_w2);
        let mut untape = |b: Option<Tensor<(usize,), Float, Self, T>>| {
            b.map(|b| {
                let (b, tape_b) = b.split_tape();
                tape = std::mem::take(&mut tape).merge(tape_b);
                b
            })
        };
        let (b1, b2) = (untape(b1), untape(b2));
        let (xv, w1v, w2v) = (host_data(&x), host_data(&w1), host_data(&w2));
        let (b1v, b2v) = (b1.as_ref().map(host_data), b2.as_ref().map(host_data));
        let h = cpu_linear(&xv, &w1v, b1v.as_deref(), n, c, hidden); // (N, H)
        let a = cpu_gelu(&h); // (N, H)
        let y = cpu_linear(&a, &w2v, b2v.as_deref(), n, hidden, c); // (N, C)
        let out = x.device().tensor_from_vec(y, (n, c));
        if T::OWNS_TAPE {
            let out_ref = out.clone();
            tape.add_backward_op(move |grads| {
                with_output_grad(grads, &out_ref, |grads, gy| {
                    let gy_view = View::rows(gy, c);
                    gemm_par(
                        hidden,
                        c,
                        n,
                        grads.get_or_alloc_mut(&w2)?,
                        true,
                        View::rows(&a, hidden).t(),
                        gy_view,
                        1.0,
                    );
                    if let Some(b2) = &b2 {
                        add_column_sums(gy, c, grads.get_or_alloc_mut(b2)?);
                    }
                    // dh = (gy W₂ᵀ) ⊙ gelu'(h)
                    let mut dh = vec![0.0; n * hidden];
                    gemm_par(n, hidden, c, &mut dh, false, gy_view, View::rows(&w2v, c).t(), 1.0);
                    cpu_gelu_backward_in_place(&h, &mut dh);
                    let dh_view = View::rows(&dh, hidden);
                    gemm_par(
                        c,
                        hidden,
                        n,
                        grads.get_or_alloc_mut(&w1)?,
                        true,
                        View::rows(&xv, c).t(),
                        dh_view,
                        1.0,
                    );
                    if let Some(b1) = &b1 {
                        add_column_sums(&dh, hidden, grads.get_or_alloc_mut(b1)?);
                    }
                    gemm_par(
                        n,
                        c,
                        hidden,
                        grads.get_or_alloc_mut(&x)?,
                        true,
                        dh_view,
                        View::rows(&w1v, hidden).t(),
                        1.0,
                    );
                    Ok(())
                })
            });
        }
        out.put_tape(tape)
    }

    fn residual<T: Tape<Float, Self> + Merge<T>>(
        skip: Tensor<(usize, usize), Float, Self, T>,
        x: Tensor<(usize, usize), Float, Self, T>,
        drop: &mut Dropout,
    ) -> Tensor<(usize, usize), Float, Self, T> {
        let shape = *x.shape();
        assert_eq!(*skip.shape(), shape, "residual: skip and branch shapes differ");
        let p = drop.p();
        let mask = (p > 0.0).then(|| dropout_keep_mask(drop.next_seed(), shape.0 * shape.1, p));
        let (skip, tape_s) = skip.split_tape();
        let (x, tape_x) = x.split_tape();
        let y = cpu_residual(&host_data(&skip), &host_data(&x), mask.as_deref(), p);
        let out = x.device().tensor_from_vec(y, shape);
        let mut tape = tape_s.merge(tape_x);
        if T::OWNS_TAPE {
            let out_ref = out.clone();
            tape.add_backward_op(move |grads| {
                with_output_grad(grads, &out_ref, |grads, gy| {
                    add_masked(grads.get_or_alloc_mut(&skip)?, gy, None, 0.0);
                    add_masked(grads.get_or_alloc_mut(&x)?, gy, mask.as_deref(), p);
                    Ok(())
                })
            });
        }
        out.put_tape(tape)
    }

    fn linear<T: Tape<Float, Self> + Merge<T>>(
        x: Tensor<(usize, usize), Float, Self, T>,
        w: Tensor<(usize, usize), Float, Self, T>,
        b: Option<Tensor<(usize,), Float, Self, T>>,
    ) -> Tensor<(usize, usize), Float, Self, T> {
        let (n, d_in) = *x.shape();
        let d_out = w.shape().1;
        assert_eq!(w.shape().0, d_in, "linear: x is (N, {d_in}) but w is {:?}", w.shape());
        let (x, tape_x) = x.split_tape();
        let (w, tape_w) = w.split_tape();
        let mut tape = tape_x.merge(tape_w);
        let b = b.map(|b| {
            let (b, tape_b) = b.split_tape();
            tape = std::mem::take(&mut tape).merge(tape_b);
            b
        });
        let (xv, wv) = (host_data(&x), host_data(&w));
        let bv = b.as_ref().map(host_data);
        let y = cpu_linear(&xv, &wv, bv.as_deref(), n, d_in, d_out);
        let out = x.device().tensor_from_vec(y, (n, d_out));
        if T::OWNS_TAPE {
            let out_ref = out.clone();
            tape.add_backward_op(move |grads| {
                with_output_grad(grads, &out_ref, |grads, gy| {
                    let gy_view = View::rows(gy, d_out);
                    let dx = grads.get_or_alloc_mut(&x)?;
                    gemm_par(n, d_in, d_out, dx, true, gy_view, View::rows(&wv, d_out).t(), 1.0);
                    let dw = grads.get_or_alloc_mut(&w)?;
                    gemm_par(d_in, d_out, n, dw, true, View::rows(&xv, d_in).t(), gy_view, 1.0);
                    if let Some(b) = &b {
                        add_column_sums(gy, d_out, grads.get_or_alloc_mut(b)?);
                    }
                    Ok(())
                })
            });
        }
        out.put_tape(tape)
    }

    fn rotary<T: Tape<Float, Self> + Merge<T>>(x: Heads<Self, T>, cos: &[Float], sin: &[Float]) -> Heads<Self, T> {
        let shape = *x.shape();
        let (_, t, nh, hd) = shape;
        let (x, mut tape) = x.split_tape();
        let out = x
            .device()
            .tensor_from_vec(cpu_rotary(&host_data(&x), cos, sin, t, nh, hd), shape);
        if T::OWNS_TAPE {
            let (out_ref, cos, sin) = (out.clone(), cos.to_vec(), sin.to_vec());
            tape.add_backward_op(move |grads| {
                with_output_grad(grads, &out_ref, |grads, gy| {
                    cpu_rotary_backward(gy, &cos, &sin, t, nh, hd, grads.get_or_alloc_mut(&x)?);
                    Ok(())
                })
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
        let bv = host_data(&b);
        let mut y = host_data(&x);
        y.par_chunks_mut(c * 64).for_each(|rows| {
            rows.chunks_mut(c)
                .for_each(|r| r.iter_mut().zip(&bv).for_each(|(v, b)| *v += b))
        });
        let out = x.device().tensor_from_vec(y, shape);
        let mut tape = tape_x.merge(tape_b);
        if T::OWNS_TAPE {
            let out_ref = out.clone();
            tape.add_backward_op(move |grads| {
                with_output_grad(grads, &out_ref, |grads, gy| {
                    let gx = grads.get_or_alloc_mut(&x)?;
                    gx.par_chunks_mut(CHUNK)
                        .zip(gy.par_chunks(CHUNK))
                        .for_each(|(a, g)| a.iter_mut().zip(g).for_each(|(a, g)| *a += g));
                    let gb = grads.get_or_alloc_mut(&b)?;
                    for row in gy.chunks(c) {
                        gb.iter_mut().zip(row).for_each(|(a, g)| *a += g);
                    }
                    Ok(())
                })
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
        let c = shape.1;
        let (x, tape_x) = x.split_tape();
        let (g, tape_g) = g.split_tape();
        let (b, tape_b) = b.split_tape();
        let (xv, gv, bv) = (host_data(&x), host_data(&g), host_data(&b));
        let [y, xhat, inv_std] = cpu_layer_norm(&xv, &gv, &bv, c, eps as Float);
        let out = x.device().tensor_from_vec(y, shape);
        let mut tape = tape_x.merge(tape_g).merge(tape_b);
        if T::OWNS_TAPE {
            let out_ref = out.clone();
            tape.add_backward_op(move |grads| {
                with_output_grad(grads, &out_ref, |grads, gy| {
                    let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
                    let dx = grads.get_or_alloc_mut(&x)?;
                    cpu_layer_norm_backward(gy, &xhat, &inv_std, &gv, c, dx, &mut dg, &mut db);
                    add_masked(grads.get_or_alloc_mut(&g)?, &dg, None, 0.0);
                    add_masked(grads.get_or_alloc_mut(&b)?, &db, None, 0.0);
                    Ok(())
                })
            });
        }
        out.put_tape(tape)
    }

    fn gelu<S: Shape, T: Tape<Float, Self>>(x: Tensor<S, Float, Self, T>) -> Tensor<S, Float, Self, T> {
        let shape = *x.shape();
        let (x, mut tape) = x.split_tape();
        let xv = host_data(&x);
        let out = x.device().tensor_from_vec(cpu_gelu(&xv), shape);
        if T::OWNS_TAPE {
            let out_ref = out.clone();
            tape.add_backward_op(move |grads| {
                with_output_grad(grads, &out_ref, |grads, gy| {
                    cpu_gelu_backward(&xv, gy, grads.get_or_alloc_mut(&x)?);
                    Ok(())
                })
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
        let (qv, kv, vv) = (host_data(&q), host_data(&k), host_data(&v));
        let (y, lse) = cpu_forward(&dims, &qv, &kv, &vv);
        let out = q.device().tensor_from_vec(y, shape);
        let mut tape = tape_q.merge(tape_k).merge(tape_v);
        if T::OWNS_TAPE {
            let out_ref = out.clone();
            tape.add_backward_op(move |grads| {
                let timer = crate::probe::Timer::start();
                with_output_grad(grads, &out_ref, |grads, gy| {
                    let (dq, dk, dv) = cpu_backward(&dims, &qv, &kv, &vv, &lse, gy);
                    for (t, d) in [(&q, dq), (&k, dk), (&v, dv)] {
                        let g = grads.get_or_alloc_mut(t)?;
                        g.iter_mut().zip(d).for_each(|(a, b)| *a += b);
                    }
                    timer.stop();
                    Ok(())
                })
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
