//! Incremental decoding: each layer keeps the keys and values of the positions seen so far
//! (`n_kv_head` heads each, so grouped-query attention shrinks the cache by `n_head / n_kv_head`),
//! and a new position attends over them instead of recomputing the prefix.

use dfdx::prelude::*;

use super::AttentionKind;
use super::attention::CausalSelfAttention;
use super::backend::Backend;
use super::cpu_kernels::dot;
use super::gpt::{Block, Gpt};
use super::layers::Act;
use super::param::Float;
use super::rope::Rope;

/// Keys and values of one layer, position-major: `(positions, n_kv_head, head_dim)`.
#[derive(Clone, Debug, Default)]
pub struct LayerCache {
    /// Keys (after RoPE, when used).
    pub k: Vec<Float>,
    /// Values.
    pub v: Vec<Float>,
}

/// The cache of every layer.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// One per block.
    pub layers: Vec<LayerCache>,
    /// Positions cached.
    pub len: usize,
}

impl KvCache {
    /// An empty cache for `n_layer` blocks.
    pub fn new(n_layer: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); n_layer],
            len: 0,
        }
    }

    /// Bytes the cache holds.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| (l.k.len() + l.v.len()) * std::mem::size_of::<Float>())
            .sum()
    }
}

impl<D: Backend> CausalSelfAttention<D> {
    /// One new position `pos`: `x (1, C) -> (1, C)`, appending its key and value to `cache`.
    pub fn forward_cached(
        &self,
        x: Act<D, NoneTape>,
        pos: usize,
        rope: Option<&Rope>,
        cache: &mut LayerCache,
    ) -> Act<D, NoneTape> {
        let (q_dim, h, hkv, hd) = (
            self.shape.q_dim(),
            self.shape.n_head,
            self.shape.n_kv_head,
            self.shape.head_dim(),
        );
        let g = h / hkv;
        let mut q = self.wq.forward(x.clone()).reshape_like(&(1, 1, h, hd));
        let mut k = self.wk.forward(x.clone()).reshape_like(&(1, 1, hkv, hd));
        let v = self.wv.forward(x.clone()).as_vec();
        if let Some((qn, kn)) = &self.qk_norm {
            q = Self::norm_heads(qn, q);
            k = Self::norm_heads(kn, k);
        }
        if let Some(rope) = rope {
            q = rope.apply(q, pos);
            k = rope.apply(k, pos);
        }
        let mut q = q.as_vec();
        if self.kind == AttentionKind::GroupedSum {
            // Every query head of a group uses the group's summed query (see AttentionKind).
            for j in 0..hkv {
                let mut sum = vec![0.0; hd];
                for i in 0..g {
                    sum.iter_mut()
                        .zip(&q[(j * g + i) * hd..][..hd])
                        .for_each(|(a, b)| *a += b);
                }
                for i in 0..g {
                    q[(j * g + i) * hd..][..hd].copy_from_slice(&sum);
                }
            }
        }
        cache.k.extend(k.as_vec());
        cache.v.extend(v);
        let n = cache.k.len() / (hkv * hd);
        let scale = 1.0 / (hd as Float).sqrt();
        let mut y = vec![0.0; q_dim];
        let mut scores = vec![0.0; n];
        for head in 0..h {
            let j = head / g;
            let qh = &q[head * hd..][..hd];
            for (s, score) in scores.iter_mut().enumerate() {
                let ks = &cache.k[(s * hkv + j) * hd..][..hd];
                *score = dot(qh, ks) * scale;
            }
            let max = scores.iter().cloned().fold(Float::NEG_INFINITY, Float::max);
            let total: Float = scores
                .iter_mut()
                .map(|s| {
                    *s = (*s - max).exp();
                    *s
                })
                .sum();
            let out = &mut y[head * hd..][..hd];
            for (s, p) in scores.iter().enumerate() {
                let vs = &cache.v[(s * hkv + j) * hd..][..hd];
                out.iter_mut().zip(vs).for_each(|(o, v)| *o += p / total * v);
            }
        }
        self.wo.forward(x.device().tensor_from_vec(y, (1, q_dim)))
    }
}

impl<D: Backend> Block<D> {
    /// One new position through the block, with its attention cache.
    pub fn forward_cached(
        &self,
        x: Act<D, NoneTape>,
        pos: usize,
        rope: Option<&Rope>,
        cache: &mut LayerCache,
    ) -> Act<D, NoneTape> {
        let x = x.clone() + self.attn.forward_cached(self.ln1.forward(x), pos, rope, cache);
        x.clone() + self.mlp.forward(self.ln2.forward(x))
    }
}

impl<D: Backend> Gpt<D> {
    /// Logits `(V,)` for `token` at the next position of `cache`, which it extends.
    ///
    /// Panics if the cache already holds `block_size` positions: the caller re-fills it from
    /// the cropped window, as the uncached model would see it.
    pub fn forward_cached(&self, token: usize, cache: &mut KvCache) -> Vec<Float> {
        let pos = cache.len;
        assert!(
            pos < self.config.block_size,
            "the cache is full at the block size {}",
            self.config.block_size
        );
        let dev = self.device();
        let mut x = self
            .wte
            .matrix::<NoneTape>()
            .gather(dev.tensor_from_vec(vec![token], (1,))); // (1, C)
        if let Some(wpe) = &self.wpe {
            x = x + wpe.matrix::<NoneTape>().gather(dev.tensor_from_vec(vec![pos], (1,)));
        }
        for (block, layer) in self.blocks.iter().zip(&mut cache.layers) {
            x = block.forward_cached(x, pos, self.rope(), layer);
        }
        cache.len += 1;
        self.logits(self.ln_f.forward(x)).as_vec()
    }

    /// Bytes of key/value cache per position (see [`super::ModelConfig::kv_bytes_per_token`]).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.config.kv_bytes_per_token()
    }
}
