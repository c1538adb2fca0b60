//! Causal self-attention with `n_head` query heads and `n_kv_head` key/value heads.
//!
//! `n_kv_head == n_head` is multi-head attention, `1` is multi-query, anything between is
//! grouped-query: query head `h` reads key/value head `h / g` with `g = n_head / n_kv_head`.
//! The `g` query heads of a group are stacked along the time axis, so one batched product
//! per key/value head serves the whole group and K/V are never copied per query head.

use dfdx::prelude::*;
use rand::Rng;

use super::alibi::{alibi_bias, alibi_slopes};
use super::config::{AttentionKind, AttnShape, Float, NormKind};
use super::kv_cache::LayerCache;
use super::layers::{Act, Linear, Norm};
use super::ops::{Backend, Dropout, Heads, dot};
use super::param::{HasParams, Param};
use super::positions::Positions;

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
    pub fn norm_heads<T: Tape<Float, D> + Merge<T>>(norm: &Norm<D>, x: Heads<D, T>) -> Heads<D, T> {
        let shape = *x.shape();
        let (b, t, nh, hd) = shape;
        norm.forward(x.reshape_like(&(b * t * nh, hd))).reshape_like(&shape)
    }

    /// The same layer with another way of sharing key/value heads.
    pub fn with_kind(mut self, kind: AttentionKind) -> Self {
        self.kind = kind;
        self
    }

    /// `x: (B·T, C) -> (B·T, C)` for a batch of `b` sequences of `t` new positions.
    ///
    /// Without a cache the positions are `0..t` (training, evaluation). With one (a single
    /// sequence, `b = 1`), they continue after the positions it holds: their keys (after RoPE)
    /// and values are appended to it, and the queries attend over all of it. An empty cache
    /// is filled in the same pass as uncached attention (prefill); a cache that holds positions
    /// already is read on the host (decoding, never on a gradient tape).
    pub fn forward<T: Tape<Float, D> + Merge<T>>(
        &self,
        x: Act<D, T>,
        b: usize,
        t: usize,
        positions: &Positions<D>,
        drop: &mut Dropout,
        cache: Option<&mut LayerCache>,
    ) -> Act<D, T> {
        let alibi = positions.alibi();
        let AttnShape {
            n_head: h,
            n_kv_head: hkv,
            ..
        } = self.shape;
        let (q_dim, hd, g) = (self.shape.q_dim(), self.shape.head_dim(), self.shape.group());
        let pos = cache.as_ref().map_or(0, |c| c.k.len() / self.shape.kv_dim());

        let [q, k, v] = D::linears(x, [self.wq.parts(), self.wk.parts(), self.wv.parts()]);
        let mut q = q.reshape_like(&(b, t, h, hd)); // (B, T, H, hd)
        let mut k = k.reshape_like(&(b, t, hkv, hd)); // (B, T, Hkv, hd)
        let v = v.reshape_like(&(b, t, hkv, hd)); // (B, T, Hkv, hd)
        if let Some((qn, kn)) = &self.qk_norm {
            q = Self::norm_heads(qn, q);
            k = Self::norm_heads(kn, k);
        }
        if let Some(rope) = positions.rope() {
            q = rope.apply(q, pos);
            k = rope.apply(k, pos);
        }
        // Σ_j Q_ij K_iᵀ = (Σ_j Q_ij) K_iᵀ: grouped_sum is attention with one summed query per
        // group, whose output every query head of the group receives.
        let q = match self.kind {
            AttentionKind::Standard => q,
            AttentionKind::GroupedSum => q
                .reshape_like(&(b, t, hkv, g, hd))
                .sum::<(usize, usize, usize, usize), Axis<3>>(), // (B, T, Hkv, hd)
        };
        let y = match cache {
            None => D::causal_attention(q, k, v, alibi, drop),
            Some(cache) => {
                assert_eq!(b, 1, "a key/value cache holds one sequence");
                // (1, T, Hkv, hd) row-major is the cache's position-major layout.
                cache.k.extend(k.retaped::<NoneTape>().as_vec());
                cache.v.extend(v.retaped::<NoneTape>().as_vec());
                if pos == 0 {
                    D::causal_attention(q, k, v, alibi, drop)
                } else {
                    assert!(!T::OWNS_TAPE, "attention over a filled cache has no backward pass");
                    attend_cached(q, cache, hkv, pos, alibi)
                }
            }
        }; // (B, T, H or Hkv, hd)
        let y = match self.kind {
            AttentionKind::Standard => y,
            AttentionKind::GroupedSum => y
                .broadcast_like::<_, Axis<3>>(&(b, t, hkv, g, hd))
                .reshape_like(&(b, t, h, hd)),
        };
        self.wo.forward(y.reshape_like(&(b * t, q_dim))) // (B·T, C)
    }
}

/// Causal attention of the `t` new positions `pos..pos + t` of `q (1, t, Hq, hd)` over every
/// position in `cache` (which already holds their keys and values), on the host: query `i`
/// sees positions `..=pos + i`, query head `h` reads key/value head `h / (Hq / hkv)`, and with
/// `alibi` adds `−m_h·(pos + i − s)` to its score for position `s`.
fn attend_cached<D: Backend, T: Tape<Float, D>>(
    q: Heads<D, T>,
    cache: &LayerCache,
    hkv: usize,
    pos: usize,
    alibi: bool,
) -> Heads<D, T> {
    let shape = *q.shape();
    let (_, t, hq, hd) = shape;
    let g = hq / hkv;
    let slopes: Vec<Float> = match alibi {
        true => alibi_slopes(hq).into_iter().map(|m| m as Float).collect(),
        false => vec![0.0; hq],
    };
    let (q, tape) = q.split_tape();
    let qv = q.as_vec();
    let scale = 1.0 / (hd as Float).sqrt();
    let mut y = vec![0.0; t * hq * hd];
    let mut scores = vec![0.0; pos + t];
    for i in 0..t {
        let scores = &mut scores[..pos + i + 1];
        for head in 0..hq {
            let j = head / g;
            let qh = &qv[(i * hq + head) * hd..][..hd];
            for (s, score) in scores.iter_mut().enumerate() {
                *score = dot(qh, &cache.k[(s * hkv + j) * hd..][..hd]) * scale;
                if alibi {
                    *score += alibi_bias(slopes[head], pos + i, s);
                }
            }
            let max = scores.iter().cloned().fold(Float::NEG_INFINITY, Float::max);
            let total: Float = scores
                .iter_mut()
                .map(|s| {
                    *s = (*s - max).exp();
                    *s
                })
                .sum();
            let out = &mut y[(i * hq + head) * hd..][..hd];
            for (s, p) in scores.iter().enumerate() {
                let vs = &cache.v[(s * hkv + j) * hd..][..hd];
                out.iter_mut().zip(vs).for_each(|(o, v)| *o += p / total * v);
            }
        }
    }
    q.device().tensor_from_vec(y, shape).put_tape(tape)
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
