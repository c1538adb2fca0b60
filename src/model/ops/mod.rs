//! The operations a device runs for the model, and their reference compositions.
//!
//! [`Backend`] names every operation the layers call. Its default methods are compositions of
//! dfdx operations: the plain maths, which any dfdx device runs and every fused kernel is
//! tested against. The CPU overrides them with fused kernels that have their own backward
//! passes ([`cpu`], on the plain-slice kernels of `cpu_kernels` and `cpu_attention`); CUDA runs
//! the compositions, timed for the attention probe ([`timed`]).
//!
//! Imports point down only: this module uses [`super::config`] and nothing above it.

mod attention_tiles;
mod chacha;
mod cpu;
mod cpu_attention;
mod cpu_kernels;
mod cpu_loss;
mod dropout;
mod matmul;
pub(crate) mod simd;
mod timed;
mod transpose;

use dfdx::prelude::*;

pub use attention_tiles::WIDEST as ATTENTION_TILE;
pub use cpu_attention::{Dims, cpu_backward, cpu_forward};
pub(crate) use cpu_kernels::dot;
pub use cpu_kernels::{cpu_gelu, cpu_gelu_backward};
pub use dropout::Dropout;
pub use matmul::matmul;
pub use timed::timed_reference_attention;

use super::alibi::{alibi_bias, alibi_slopes};
use super::config::Float;
use super::param::host_vec;

/// `(B, T, heads, hd)`.
pub type Heads<D, T> = Tensor<(usize, usize, usize, usize), Float, D, T>;

/// A projection's weight `(in, out)` and optional bias `(out,)`, as [`Backend::linear`] takes
/// them.
pub type Affine<D, T> = (
    Tensor<(usize, usize), Float, D, T>,
    Option<Tensor<(usize,), Float, D, T>>,
);

/// A dfdx device gptlab can train on.
pub trait Backend: Device<Float> {
    /// The instruction-set path the device's arithmetic depends on: the CPU's (see
    /// [`crate::isa`]); `None` for a GPU, whose results do not depend on the host CPU.
    fn isa() -> Option<crate::isa::Isa> {
        None
    }

    /// The gradient of parameter `t` in `grads` (which must hold one), as a host vector.
    fn gradient_on_host(grads: &mut Gradients<Float, Self>, t: &Tensor<(usize,), Float, Self>) -> Vec<Float> {
        host_vec(&grads.get(t))
    }

    /// Runs `f` on the values of parameter `t`, on the host, and keeps what it leaves there.
    fn update_on_host(t: &mut Tensor<(usize,), Float, Self>, f: &mut dyn FnMut(&mut [Float])) {
        let mut host = host_vec(t);
        f(&mut host);
        t.copy_from(&host);
    }

    /// Causal attention: `q (B, T, H, hd)`, `k, v (B, T, Hkv, hd)` → `(B, T, H, hd)`, with query
    /// head `h` reading key/value head `h / (H / Hkv)` and dropout on the attention weights.
    /// With `alibi`, head `h` adds `−m_h·(i−j)` to its scores (slopes for `H` heads, see
    /// [`alibi_slopes`](crate::model::alibi_slopes)).
    fn causal_attention<T: Tape<Float, Self> + Merge<T>>(
        q: Heads<Self, T>,
        k: Heads<Self, T>,
        v: Heads<Self, T>,
        alibi: bool,
        drop: &mut Dropout,
    ) -> Heads<Self, T> {
        reference_attention(q, k, v, alibi, drop)
    }

    /// The input of the first block, `(N, C)`: rows `tokens` of the token embedding `wte
    /// (V, C)`, plus rows `positions` of a learned position table `wpe (L, C)` when there is
    /// one, then dropout. The tape comes in on `wte`.
    fn embed<T: Tape<Float, Self> + Merge<T>>(
        wte: Tensor<(usize, usize), Float, Self, T>,
        wpe: Option<Tensor<(usize, usize), Float, Self, T>>,
        tokens: &[usize],
        positions: &[usize],
        drop: &mut Dropout,
    ) -> Tensor<(usize, usize), Float, Self, T> {
        let (dev, n) = (wte.device().clone(), tokens.len());
        let mut x = wte.gather(dev.tensor_from_vec(tokens.to_vec(), (n,)));
        if let Some(wpe) = wpe {
            x = x + wpe.gather(dev.tensor_from_vec(positions.to_vec(), (n,)));
        }
        drop.apply(x)
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

    /// `x · wᵢ + bᵢ` for each `(wᵢ, bᵢ)` of `parts`: several projections of one input (the
    /// queries, keys and values), which a backend may read once for all of them.
    fn linears<T: Tape<Float, Self> + Merge<T>, const K: usize>(
        x: Tensor<(usize, usize), Float, Self, T>,
        parts: [Affine<Self, T>; K],
    ) -> [Tensor<(usize, usize), Float, Self, T>; K] {
        let mut x = Some(x);
        let mut parts = parts.into_iter().enumerate();
        std::array::from_fn(|_| {
            let (i, (w, b)) = parts.next().expect("one part per output");
            // The input's tape goes with the last projection; the others start empty tapes
            // that merge with it where the outputs meet.
            let xi = match i + 1 == K {
                true => x.take().expect("the input, for the last projection"),
                false => x.as_ref().expect("the input").retaped::<T>(),
            };
            Self::linear(xi, w, b)
        })
    }

    /// `x (N, in) · wᵀ` for `w (out, in)`: the tied head, whose weight is the token embedding
    /// `(V, C)` read transposed.
    fn linear_transposed<T: Tape<Float, Self> + Merge<T>>(
        x: Tensor<(usize, usize), Float, Self, T>,
        w: Tensor<(usize, usize), Float, Self, T>,
    ) -> Tensor<(usize, usize), Float, Self, T> {
        x.matmul(w.permute())
    }

    /// Mean cross-entropy of `logits (N, V)` against `N` targets (ids below `V`).
    fn cross_entropy<T: Tape<Float, Self>>(
        logits: Tensor<(usize, usize), Float, Self, T>,
        targets: &[usize],
    ) -> Tensor<(), Float, Self, T> {
        let n = targets.len();
        let targets = logits.device().tensor_from_vec(targets.to_vec(), (n,));
        logits.log_softmax::<Axis<1>>().select(targets).mean().negate()
    }

    /// Each row's cross-entropy `logsumexp(row) − row[target]` of `logits (N, V)`, in nats
    /// (`f64`, on the host): the per-token losses an evaluation reads. Here through one host
    /// copy of the logits; the CPU reads them where they are.
    fn row_losses(logits: Tensor<(usize, usize), Float, Self>, targets: &[usize]) -> Vec<f64> {
        cpu_loss::row_losses(&logits.as_vec(), logits.shape().1, targets)
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
        reference_rotary(x, cos, sin)
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
    alibi: bool,
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
    let mask = if alibi {
        alibi_mask(scores.device(), h, t).broadcast_like::<_, Axis<0>>(&(b, h, t, t))
    } else {
        causal_mask(scores.device(), t).broadcast_like::<_, Axes2<0, 1>>(&(b, h, t, t))
    };
    let att = drop.apply((scores + mask).softmax::<Axis<3>>()); // (B, H, T, T)
    let y = att.reshape_like(&(b, hkv, g * t, t)).matmul(v); // (B, Hkv, g·T, hd)
    y.reshape_like(&(b, h, t, hd))
        .permute::<_, Axes4<0, 2, 1, 3>>()
        .reshape_like(&(b, t, h, hd))
}

/// `(T, T)` additive mask: 0 on and below the diagonal, -∞ above it.
pub fn causal_mask<D: Device<Float>>(dev: &D, t: usize) -> Tensor<(usize, usize), Float, D> {
    dev.upper_tri_like(&(t, t), Float::NEG_INFINITY, 1)
}

/// `(H, T, T)` additive mask of ALiBi: `−m_h·(i−j)` on and below the diagonal, -∞ above it.
pub fn alibi_mask<D: Device<Float>>(dev: &D, h: usize, t: usize) -> Tensor<(usize, usize, usize), Float, D> {
    let slopes = alibi_slopes(h);
    let mut m = Vec::with_capacity(h * t * t);
    for slope in slopes {
        for i in 0..t {
            m.extend((0..t).map(|j| {
                if j <= i {
                    alibi_bias(slope as Float, i, j)
                } else {
                    Float::NEG_INFINITY
                }
            }));
        }
    }
    dev.tensor_from_vec(m, (h, t, t))
}

/// The composition of dfdx operations for the rotary embedding of `x (B, T, nh, hd)`, given
/// the `(T, hd)` cos/sin tables of its positions: the reference the fused CPU kernel is tested
/// against.
pub fn reference_rotary<D: Device<Float>, T: Tape<Float, D> + Merge<T>>(
    x: Heads<D, T>,
    cos: &[Float],
    sin: &[Float],
) -> Heads<D, T> {
    let shape = *x.shape();
    let (b, t, nh, hd) = shape;
    let dev = x.device().clone();
    let cos = dev
        .tensor_from_vec(cos.to_vec(), (t, hd))
        .broadcast_like::<_, Axes2<0, 2>>(&shape);
    let sin = dev
        .tensor_from_vec(sin.to_vec(), (t, hd))
        .broadcast_like::<_, Axes2<0, 2>>(&shape);
    // rotate_half(x) = [-x2, x1] as one product with a fixed signed permutation matrix,
    // which keeps the whole rotation inside dfdx's autodiff without slicing. The second
    // use of `x` is re-taped (same id), so both branches' gradients add into `x`.
    let rotated = x
        .retaped::<T>()
        .reshape_like(&(b * t * nh, hd))
        .matmul(dev.tensor_from_vec(rotate_half_matrix(hd), (hd, hd)))
        .reshape_like(&shape);
    x * cos + rotated * sin
}

/// `R` with `x R = [-x2, x1]`: column `j < d/2` takes `-x[j + d/2]`, column `j ≥ d/2` takes `x[j - d/2]`.
fn rotate_half_matrix(d: usize) -> Vec<Float> {
    let half = d / 2;
    let mut r = vec![0.0; d * d];
    for j in 0..half {
        r[(j + half) * d + j] = -1.0;
        r[j * d + j + half] = 1.0;
    }
    r
}
