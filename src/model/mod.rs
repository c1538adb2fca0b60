//! The GPT and its variants, on dfdx tensors with runtime sizes.
//!
//! Only plain data comes in ([`ModelConfig`]); the spec module decides what the config is.
//!
//! Imports point one way, down this list, never up: `config` (options, sizes; with `param`,
//! `alibi` and `kv_cache`, plain data) → `ops` (the operation trait, its dfdx compositions, the CPU
//! kernels under it, CUDA beside it) → `layers` and `rope` → `positions` → `attention` → `gpt`.

mod alibi;
mod attention;
mod config;
mod gpt;
mod kv_cache;
mod layers;
pub mod ops;
mod param;
mod positions;
mod rope;

pub use alibi::{alibi_bias, alibi_slopes};
pub use attention::CausalSelfAttention;
pub use config::{
    AttentionKind, AttnShape, Float, MlpKind, ModelConfig, ModelOptions, NormKind, OptionProblem, Position,
    RopeScaling, RopeScalingKind, as_trained, shown_as_trained,
};
pub use gpt::{Block, Gpt, Pass};
pub use kv_cache::{KvCache, LayerCache};
pub use layers::{Act, Linear, Mlp, Norm};
pub use ops::{
    ATTENTION_TILE, Affine, Backend, Dims, Dropout, Heads, alibi_mask, causal_mask, cpu_backward, cpu_forward,
    cpu_gelu, cpu_gelu_backward, matmul, reference_attention, reference_rotary, timed_reference_attention,
};
pub use param::{HasParams, Param, host_vec};
pub use positions::Positions;
pub use rope::Rope;
