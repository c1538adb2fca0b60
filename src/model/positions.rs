//! How the model knows where a token is — one scheme per model, owned by the [`super::Gpt`]
//! and read by each attention layer: a learned table added to the embeddings, rotary
//! embeddings of queries and keys, linear biases on the scores, or nothing but the causal mask.

use dfdx::prelude::*;

use super::config::Float;
use super::param::Param;
use super::rope::Rope;

/// The position scheme of a model.
#[derive(Clone, Debug)]
pub enum Positions<D: Device<Float>> {
    /// `(block_size, C)` learned absolute positions (`wpe.weight`), added to the embeddings.
    Learned(Param<D>),
    /// Rotary embedding of queries and keys in every layer.
    Rope(Rope),
    /// ALiBi: a per-head linear bias on the attention scores, no parameters.
    Alibi,
    /// No position information (causal masking only).
    None,
}

impl<D: Device<Float>> Positions<D> {
    /// The learned table, if positions are learned.
    pub fn table(&self) -> Option<&Param<D>> {
        match self {
            Positions::Learned(p) => Some(p),
            _ => None,
        }
    }

    /// The rotary tables, if positions are rotary.
    pub fn rope(&self) -> Option<&Rope> {
        match self {
            Positions::Rope(r) => Some(r),
            _ => None,
        }
    }

    /// Whether the attention scores take ALiBi biases.
    pub fn alibi(&self) -> bool {
        matches!(self, Positions::Alibi)
    }

    /// The longest sequence the scheme can place: the learned table's rows or the rotary
    /// tables' length; `None` when nothing bounds it (ALiBi, none).
    pub fn max_len(&self) -> Option<usize> {
        match self {
            Positions::Learned(p) => Some(p.shape[0]),
            Positions::Rope(r) => Some(r.max_len()),
            Positions::Alibi | Positions::None => None,
        }
    }
}
