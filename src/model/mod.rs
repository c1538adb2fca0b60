//! The GPT and its variants, on dfdx tensors with runtime sizes.
//!
//! Only plain data comes in ([`ModelConfig`]); the spec module decides what the config is.

mod attention;
mod backend;
mod cpu_attention;
mod cpu_kernels;
mod gpt;
mod kv_cache;
mod layers;
mod param;
mod rope;
mod simd;

pub use attention::{AttnShape, CausalSelfAttention, causal_mask};
pub use backend::{Backend, Heads, reference_attention, timed_reference_attention};
pub use cpu_attention::{Dims, cpu_backward, cpu_forward};
pub use cpu_kernels::{cpu_gelu, cpu_gelu_backward};
pub use gpt::{Block, Gpt};
pub use kv_cache::{KvCache, LayerCache};
pub use layers::{Act, Dropout, Linear, Mlp, Norm};
pub use param::{Float, HasParams, Param, host_vec};
pub use rope::Rope;

use serde::{Deserialize, Serialize};

/// How token positions enter the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    /// A learned `(block_size, C)` table added to the token embeddings (GPT-2).
    Absolute,
    /// Rotary embedding of queries and keys in every layer (RoFormer).
    Rope,
    /// No position information beyond the causal mask.
    None,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Position::Absolute => "absolute",
            Position::Rope => "rope",
            Position::None => "none",
        })
    }
}

/// How query heads share key/value heads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// Each query head attends with its own scores (multi-head, grouped-query, multi-query).
    #[default]
    Standard,
    /// CMU 10-423 HW1's grouped attention: the scores of a group's query heads are summed
    /// before the softmax, `S_i = Σ_j Q_ij K_iᵀ / √d_k`, which equals attention with one summed
    /// query per group; every query head of the group then receives the group's output, so
    /// the output projection is unchanged. With one query head per group it is multi-head
    /// attention.
    GroupedSum,
}

impl std::fmt::Display for AttentionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttentionKind::Standard => "standard",
            AttentionKind::GroupedSum => "grouped_sum",
        })
    }
}

/// The normalisation of each block and of the final layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// Mean and variance, gain and bias (GPT-2).
    #[default]
    LayerNorm,
    /// Root mean square, gain only (LLaMA).
    RmsNorm,
}

/// The feed-forward network of each block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlpKind {
    /// `proj(GELU(fc(x)))` (GPT-2).
    #[default]
    Gelu,
    /// `down(SiLU(gate(x)) ⊙ up(x))` (LLaMA).
    Swiglu,
}

/// How a block is built beyond its sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockStyle {
    /// Norm layers.
    pub norm: NormKind,
    /// MLP kind.
    pub mlp: MlpKind,
    /// MLP width; by default 4·n_embd for GELU and ⌈(2/3)·4·n_embd⌉ to a multiple of
    /// `mlp_multiple_of` for SwiGLU (the LLaMA rule).
    pub mlp_hidden: Option<usize>,
    /// Rounding of the default SwiGLU width.
    pub mlp_multiple_of: usize,
    /// Biases in attention and MLP projections (the head never has one).
    pub bias: bool,
    /// The output head is the transposed token embedding.
    pub tie_embeddings: bool,
    /// RMSNorm of each head's queries and keys before RoPE (Qwen3), gain shared across heads.
    pub qk_norm: bool,
    /// Width of one attention head; `None` is `n_embd / n_head`.
    pub head_dim: Option<usize>,
}

impl Default for BlockStyle {
    fn default() -> Self {
        Self {
            norm: NormKind::LayerNorm,
            mlp: MlpKind::Gelu,
            mlp_hidden: None,
            mlp_multiple_of: 256,
            bias: true,
            tie_embeddings: false,
            qk_norm: false,
            head_dim: None,
        }
    }
}

/// Everything needed to build a [`Gpt`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Number of distinct tokens (characters).
    pub vocab_size: usize,
    /// Longest sequence the model will see: sizes the absolute position table and RoPE tables.
    pub block_size: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Residual stream width C.
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (divides `n_head`).
    pub n_kv_head: usize,
    /// Position encoding.
    pub position: Position,
    /// How query heads share key/value heads.
    #[serde(default)]
    pub attention: AttentionKind,
    /// Norm, MLP and bias choices.
    #[serde(default)]
    pub block: BlockStyle,
    /// Dropout probability on embeddings, attention weights and residual branches.
    pub dropout: f64,
    /// RoPE base frequency.
    pub rope_base: f64,
}

impl ModelConfig {
    /// The sizes of every attention layer.
    pub fn attn_shape(&self) -> AttnShape {
        AttnShape {
            n_embd: self.n_embd,
            n_head: self.n_head,
            n_kv_head: self.n_kv_head,
            head_dim: self.block.head_dim,
        }
    }

    /// Bytes of key/value cache per generated position: 2 · n_layer · n_kv_head · head_dim · 4.
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.n_layer * self.attn_shape().kv_dim() * std::mem::size_of::<Float>()
    }

    /// Parameter count from the shapes alone, without building the model.
    pub fn num_params(&self) -> usize {
        let (v, c, l) = (self.vocab_size, self.n_embd, self.n_layer);
        let kv = self.attn_shape().kv_dim();
        let bias = |n: usize| if self.block.bias { n } else { 0 };
        let wpe = if self.position == Position::Absolute {
            self.block_size * c
        } else {
            0
        };
        let q = self.attn_shape().q_dim();
        let attn = (c * q + bias(q)) + (q * c + bias(c)) + (c * kv + bias(kv)) * 2;
        let f = self.mlp_hidden();
        let up = c * f + bias(f);
        let mlp = match self.block.mlp {
            MlpKind::Gelu => up + f * c + bias(c),
            MlpKind::Swiglu => 2 * up + f * c + bias(c),
        };
        let norm = match self.block.norm {
            NormKind::LayerNorm => 2 * c,
            NormKind::RmsNorm => c,
        };
        let qk_norm = if self.block.qk_norm {
            2 * self.attn_shape().head_dim()
        } else {
            0
        };
        let head = if self.block.tie_embeddings { 0 } else { c * v };
        v * c + wpe + l * (attn + mlp + 2 * norm + qk_norm) + norm + head
    }

    /// The MLP width (see [`BlockStyle::mlp_hidden`]).
    pub fn mlp_hidden(&self) -> usize {
        self.block.mlp_hidden.unwrap_or_else(|| match self.block.mlp {
            MlpKind::Gelu => 4 * self.n_embd,
            MlpKind::Swiglu => {
                let m = self.block.mlp_multiple_of.max(1);
                (2 * 4 * self.n_embd).div_ceil(3).div_ceil(m) * m
            }
        })
    }
}
