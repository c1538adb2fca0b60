//! Causal self-attention with `n_head` query heads and `n_kv_head` key/value heads.
//!
//! `n_kv_head == n_head` is multi-head attention, `1` is multi-query, anything between is
//! grouped-query: query head `h` reads key/value head `h / g` with `g = n_head / n_kv_head`.
//! The `g` query heads of a group are stacked along the time axis, so one batched product
//! per key/value head serves the whole group and K/V are never copied per query head.

use dfdx::prelude::*;
use rand::Rng;

use super::backend::Backend;
use super::kv_cache::LayerCache;
use super::layers::{Act, Dropout, Linear, Norm};
use super::param::{Float, HasParams, Param};
use super::rope::Rope;
use super::{AttentionKind, NormKind};

/// `(B, T, heads, hd)` activations on tape `T`.
pub type Act4<D, T> = Tensor<(usize, usize, usize, usize), Float, D, T>;

/// The sizes attention needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Model width C.
    pub n_embd: usize,
    /// Query heads H.
    pub n_head: usize,
    /// Key/value heads; divides `n_head`.
    pub n_kv_head: usize,
    /// Width of one head; `None` is `n_embd / n_head`.
    pub head_dim: Option<usize>,
}

impl AttnShape {
    /// Per-head width `C / H`.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.n_embd / self.n_head)
    }
    /// Width of all query heads together, `n_head · head_dim` (the input of the output projection).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim()
    }
    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.n_head / self.n_kv_head
    }
    /// Bytes the fused CPU attention keeps for backward in one layer, from the shapes: copies
    /// of q, k and v, one log-sum-exp per score row, and the output (f32).
    pub fn saved_bytes(&self, b: usize, t: usize) -> usize {
        let hd = self.head_dim();
        4 * (2 * b * t * self.n_head * hd + 2 * b * t * self.n_kv_head * hd + b * self.n_head * t)
    }

    /// Width of the key (and value) projection.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim()
    }
}

/// Projections of one attention layer.
#[derive(Clone, Debug)]
pub struct CausalSelfAttention<D: Device<Float>> {
    /// Sizes.
    pub shape: AttnShape,
    /// `(C, C)` query projection.
    pub wq: Linear<D>,
    /// `(C, n_kv_head·hd)` key projection.
    pub wk: Linear<D>,
    /// `(C, n_kv_head·hd)` value projection.
    pub wv: Linear<D>,
    /// `(C, C)` output projection, initialised with the residual-scaled std.
    pub wo: Linear<D>,
    /// How query heads share key/value heads.
    pub kind: AttentionKind,
    /// RMSNorms of each head's queries and keys (gain over the head width), if used.
    pub qk_norm: Option<(Norm<D>, Norm<D>)>,
}

impl<D: Backend> CausalSelfAttention<D> {
    /// GPT-2 initialisation; `proj_std` is used for the output projection.
    pub fn new(dev: &D, rng: &mut impl Rng, name: &str, shape: AttnShape, proj_std: f64) -> Self {
        Self::new_with_bias(dev, rng, name, shape, proj_std, true)
    }

    /// [`CausalSelfAttention::new`] with or without biases on the projections.
    pub fn new_with_bias(dev: &D, rng: &mut impl Rng, name: &str, shape: AttnShape, proj_std: f64, bias: bool) -> Self {
        let c = shape.n_embd;
        Self {
            shape,
            wq: Linear::new(dev, rng, &format!("{name}.wq"), c, shape.q_dim(), bias, 0.02),
            wk: Linear::new(dev, rng, &format!("{name}.wk"), c, shape.kv_dim(), bias, 0.02),
            wv: Linear::new(dev, rng, &format!("{name}.wv"), c, shape.kv_dim(), bias, 0.02),
            wo: Linear::new(dev, rng, &format!("{name}.wo"), shape.q_dim(), c, bias, proj_std),
            kind: AttentionKind::Standard,
            qk_norm: None,
        }
    }

    /// Adds RMSNorms of each head's queries and keys (Qwen3) when `on`.
    pub fn with_qk_norm(mut self, dev: &D, name: &str, on: bool) -> Self {
        let hd = self.shape.head_dim();
        self.qk_norm = on.then(|| {
            (
                Norm::new(dev, &format!("{name}.q_norm"), hd, NormKind::RmsNorm),
                Norm::new(dev, &format!("{name}.k_norm"), hd, NormKind::RmsNorm),
            )
        });
        self
    }

    /// Normalises every head vector of `x (B, T, nh, hd)` with `norm`.
    pub fn norm_heads<T: Tape<Float, D> + Merge<T>>(norm: &Norm<D>, x: Act4<D, T>) -> Act4<D, T> {
        let shape = *x.shape();
        let (b, t, nh, hd) = shape;
        norm.forward(x.reshape_like(&(b * t * nh, hd))).reshape_like(&shape)
    }

    /// The same layer with another way of sharing key/value heads.
    pub fn with_kind(mut self, kind: AttentionKind) -> Self {
        self.kind = kind;
        self
    }

    /// `x: (B·T, C) -> (B·T, C)` for a batch of `b` sequences of length `t`.
    pub fn forward<T: Tape<Float, D> + Merge<T>>(
        &self,
        x: Act<D, T>,
        b: usize,
        t: usize,
        rope: Option<&Rope>,
        drop: &mut Dropout,
    ) -> Act<D, T> {
        self.forward_capturing(x, b, t, rope, drop, None)
    }

    /// [`CausalSelfAttention::forward`], also storing the keys (after RoPE) and values of a
    /// single sequence (`b = 1`) in `capture`, to start a key/value cache in one pass.
    pub fn forward_capturing<T: Tape<Float, D> + Merge<T>>(
        &self,
        x: Act<D, T>,
        b: usize,
        t: usize,
        rope: Option<&Rope>,
        drop: &mut Dropout,
        capture: Option<&mut LayerCache>,
    ) -> Act<D, T> {
        let AttnShape {
            n_head: h,
            n_kv_head: hkv,
            ..
        } = self.shape;
        let q_dim = self.shape.q_dim();
        let hd = self.shape.head_dim();

        let xk = x.retaped::<T>();
        let xv = x.retaped::<T>();
        let mut q = self.wq.forward(x).reshape_like(&(b, t, h, hd)); // (B, T, H, hd)
        let mut k = self.wk.forward(xk).reshape_like(&(b, t, hkv, hd)); // (B, T, Hkv, hd)
        let v = self.wv.forward(xv).reshape_like(&(b, t, hkv, hd)); // (B, T, Hkv, hd)
        if let Some((qn, kn)) = &self.qk_norm {
            q = Self::norm_heads(qn, q);
            k = Self::norm_heads(kn, k);
        }
        if let Some(rope) = rope {
            q = rope.apply(q, 0);
            k = rope.apply(k, 0);
        }

        if let Some(cache) = capture {
            debug_assert_eq!(b, 1, "a cache holds one sequence");
            // (1, T, Hkv, hd) row-major is the cache's position-major layout.
            cache.k = k.retaped::<NoneTape>().as_vec();
            cache.v = v.retaped::<NoneTape>().as_vec();
        }
        let y = match self.kind {
            AttentionKind::Standard => D::causal_attention(q, k, v, drop), // (B, T, H, hd)
            AttentionKind::GroupedSum => {
                // Σ_j Q_ij K_iᵀ = (Σ_j Q_ij) K_iᵀ: attention with one summed query per group,
                // whose output every query head of the group receives.
                let g = h / hkv;
                let q_sum = q
                    .reshape_like(&(b, t, hkv, g, hd))
                    .sum::<(usize, usize, usize, usize), Axis<3>>(); // (B, T, Hkv, hd)
                let y = D::causal_attention(q_sum, k, v, drop); // (B, T, Hkv, hd)
                y.broadcast_like::<_, Axis<3>>(&(b, t, hkv, g, hd))
                    .reshape_like(&(b, t, h, hd))
            }
        };
        let y = y.reshape_like(&(b * t, q_dim)); // (B·T, H·hd)
        self.wo.forward(y)
    }
}

/// `(T, T)` additive mask: 0 on and below the diagonal, -∞ above it.
pub fn causal_mask<D: Device<Float>>(dev: &D, t: usize) -> Tensor<(usize, usize), Float, D> {
    dev.upper_tri_like(&(t, t), Float::NEG_INFINITY, 1)
}

impl<D: Device<Float>> HasParams<D> for CausalSelfAttention<D> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Param<D>)) {
        self.wq.visit(f);
        self.wk.visit(f);
        self.wv.visit(f);
        self.wo.visit(f);
        if let Some((qn, kn)) = &self.qk_norm {
            qn.visit(f);
            kn.visit(f);
        }
    }
    fn visit_mut(&mut self, f: &mut dyn FnMut(&mut Param<D>)) {
        self.wq.visit_mut(f);
        self.wk.visit_mut(f);
        self.wv.visit_mut(f);
        self.wo.visit_mut(f);
        if let Some((qn, kn)) = &mut self.qk_norm {
            qn.visit_mut(f);
            kn.visit_mut(f);
        }
    }
}
