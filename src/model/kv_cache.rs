//! The key/value cache of incremental decoding, as plain data.
//!
//! Each layer keeps the keys (after RoPE) and values of the positions seen so far, `n_kv_head`
//! heads each, so grouped-query attention shrinks the cache by `n_head / n_kv_head`. The
//! attention layer fills and reads it in its one forward pass (see `attention.rs`).

use super::config::Float;

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
    /// Positions cached: the position of the next token fed to the model.
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
