//! What a model is, as plain data: the architecture a user chooses ([`ModelOptions`], the
//! `[model]` section of a spec) and what the data fixes ([`ModelConfig`]).
//!
//! Every model option is one field of [`ModelOptions`]. Its default, its validation rule
//! ([`ModelOptions::problems`]) and its place in a run's identity (derived from the serialised
//! struct) all live here, so adding an option touches this file and the layer that uses it.
//!
//! This file imports nothing else from `src/model/`: it is the bottom of the model's layering
//! (config → ops → layers → attention → gpt).

use serde::{Deserialize, Serialize};

/// The element type of every parameter and activation.
pub type Float = f32;

/// A setting read as `f64` as training applies it, in [`Float`]: there 0.99999999 is 1 and
/// 1e-50 is 0, so a range is checked on this value, not on the one written.
pub fn as_trained(v: f64) -> f64 {
    v as Float as f64
}

/// `v` for a message: as written, and what [`as_trained`] makes of it where that differs.
pub fn shown_as_trained(v: f64) -> String {
    use crate::format::as_written;
    let (written, trained) = (as_written(v), as_written(v as Float));
    match written == trained {
        true => written,
        false => format!("{written}, which is {trained} in the 32-bit floats training computes with"),
    }
}

/// How token positions enter the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    /// A learned `(block_size, C)` table added to the token embeddings (GPT-2).
    Absolute,
    /// Rotary embedding of queries and keys in every layer (RoFormer).
    Rope,
    /// No position information beyond the causal mask (NoPE, Kazemnejad et al. 2023).
    None,
    /// Linear biases `−m_h·(i−j)` on the attention scores, no embedding (ALiBi, Press et al. 2022).
    Alibi,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Position::Absolute => "absolute",
            Position::Rope => "rope",
            Position::None => "none",
            Position::Alibi => "alibi",
        })
    }
}

/// How RoPE's angles are stretched to read sequences longer than the training length, at
/// evaluation only (the weights are unchanged).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeScalingKind {
    /// Position interpolation (Chen et al. 2023): positions divided by the factor.
    Linear,
    /// NTK-aware scaling: the base multiplied by `factor^(d/(d−2))`, which stretches the
    /// slow frequencies most and leaves the fastest nearly as trained.
    Ntk,
}

/// A RoPE scaling rule and its factor, e.g. `{ kind = "ntk", factor = 2.0 }`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeScaling {
    /// Linear interpolation or NTK-aware base scaling.
    pub kind: RopeScalingKind,
    /// How much longer than the training length the positions should reach (≥ 1).
    pub factor: f64,
}

impl RopeScaling {
    /// The base and the position divisor of RoPE's angles `(m / divisor) · base^(−2i/d)` for
    /// heads of width `head_dim` under `scaling` (none: `base` and 1).
    pub fn angle_rule(scaling: Option<&Self>, base: f64, head_dim: usize) -> (f64, f64) {
        match scaling {
            None => (base, 1.0),
            Some(s) => match s.kind {
                RopeScalingKind::Linear => (base, s.factor),
                RopeScalingKind::Ntk => {
                    let d = head_dim as f64;
                    (base * s.factor.powf(d / (d - 2.0)), 1.0)
                }
            },
        }
    }
}

impl std::fmt::Display for RopeScaling {
    /// `ntk ×2`, `linear ×1.5`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            RopeScalingKind::Linear => "linear",
            RopeScalingKind::Ntk => "ntk",
        };
        write!(f, "{kind} ×{}", self.factor)
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
    /// Per-head width `C / H`, unless set.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.n_embd / self.n_head)
    }
    /// Width of all query heads together, `n_head · head_dim` (the input of the output projection).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim()
    }
    /// Width of the key (and value) projection.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim()
    }
    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.n_head / self.n_kv_head
    }
    /// Bytes the fused CPU attention keeps for backward in one layer, from the shapes: q, k
    /// and v, one log-sum-exp per score row, and the output (f32).
    pub fn saved_bytes(&self, b: usize, t: usize) -> usize {
        let hd = self.head_dim();
        4 * (2 * b * t * self.n_head * hd + 2 * b * t * self.n_kv_head * hd + b * self.n_head * t)
    }
}

/// The architecture a user chooses: the `[model]` section of a spec. Defaults are gpt-mini.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelOptions {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Residual stream width C.
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (divides `n_head`); `None` is `n_head` (multi-head attention).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_kv_head: Option<usize>,
    /// Position encoding.
    pub position: Position,
    /// Dropout probability on embeddings, attention weights and residual branches.
    pub dropout: f64,
    /// RoPE base frequency.
    pub rope_base: f64,
    /// How query heads share key/value heads.
    pub attention: AttentionKind,
    /// Norm layers.
    pub norm: NormKind,
    /// MLP kind.
    pub mlp: MlpKind,
    /// MLP width; `None` is 4·n_embd for GELU and ⌈(2/3)·4·n_embd⌉ rounded up to a multiple
    /// of `mlp_multiple_of` for SwiGLU (the LLaMA rule).
    #[serde(skip_serializing_if = "Option::is_none")]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
}

impl Default for ModelOptions {
    /// minGPT's gpt-mini: 6 layers, 6 heads, width 192, learned absolute positions.
    fn default() -> Self {
        Self {
            n_layer: 6,
            n_embd: 192,
            n_head: 6,
            n_kv_head: None,
            position: Position::Absolute,
            dropout: 0.1,
            rope_base: 10_000.0,
            attention: AttentionKind::Standard,
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

/// A model option that cannot build, and the `[model]` keys involved (most specific first).
#[derive(Clone, Debug, PartialEq)]
pub struct OptionProblem {
    /// Keys involved, e.g. `["n_head", "n_embd"]` (without the `model.` prefix).
    pub keys: Vec<&'static str>,
    /// What is wrong, in the user's words.
    pub message: String,
}

impl ModelOptions {
    /// `n_kv_head`, defaulting to `n_head`.
    pub fn kv_heads(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }

    /// The sizes of every attention layer.
    pub fn attn_shape(&self) -> AttnShape {
        AttnShape {
            n_embd: self.n_embd,
            n_head: self.n_head,
            n_kv_head: self.kv_heads(),
            head_dim: self.head_dim,
        }
    }

    /// The MLP width (see [`ModelOptions::mlp_hidden`]).
    pub fn mlp_width(&self) -> usize {
        self.mlp_hidden.unwrap_or_else(|| match self.mlp {
            MlpKind::Gelu => 4 * self.n_embd,
            MlpKind::Swiglu => {
                let m = self.mlp_multiple_of.max(1);
                (2 * 4 * self.n_embd).div_ceil(3).div_ceil(m) * m
            }
        })
    }

    /// The options that have no effect on the model these options build, and why: `rope_base`
    /// without RoPE, and `mlp_multiple_of`, whose only effect is the MLP width that
    /// [`resolved`](Self::resolved) writes out.
    pub fn inert(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![(
            "mlp_multiple_of",
            format!("only rounds the MLP width, {} here either way", self.mlp_width()),
        )];
        if self.position != Position::Rope {
            out.push((
                "rope_base",
                format!("has no effect with position = \"{}\" (it is RoPE's)", self.position),
            ));
        }
        out
    }

    /// The same architecture with every default that depends on other options written out
    /// (`n_kv_head`, `mlp_hidden`, `head_dim`): two resolved options build the same model
    /// exactly when they are equal but for their [`inert`](Self::inert) options. Call only on
    /// options without [`problems`](Self::problems).
    pub fn resolved(&self) -> Self {
        Self {
            n_kv_head: Some(self.kv_heads()),
            mlp_hidden: Some(self.mlp_width()),
            head_dim: Some(self.attn_shape().head_dim()),
            ..self.clone()
        }
    }

    /// Every reason these options cannot build a model (empty when they can).
    pub fn problems(&self) -> Vec<OptionProblem> {
        let mut out = vec![];
        let mut bad = |keys: &[&'static str], message: String| {
            out.push(OptionProblem {
                keys: keys.to_vec(),
                message,
            })
        };
        for (key, v) in [
            ("n_layer", self.n_layer),
            ("n_embd", self.n_embd),
            ("n_head", self.n_head),
        ] {
            if v == 0 {
                bad(&[key], "must be at least 1".into());
            }
        }
        self.head_problems(&mut bad);
        if self.mlp_hidden == Some(0) {
            bad(&["mlp_hidden"], "must be at least 1".into());
        }
        if self.mlp_multiple_of == 0 {
            bad(&["mlp_multiple_of"], "must be at least 1".into());
        }
        if !(0.0..1.0).contains(&as_trained(self.dropout)) {
            bad(
                &["dropout"],
                format!("must be in [0, 1), not {}", shown_as_trained(self.dropout)),
            );
        }
        if !(self.rope_base.is_finite() && self.rope_base > 1.0) {
            bad(
                &["rope_base"],
                format!(
                    "must be a finite number above 1, not {}",
                    crate::format::as_written(self.rope_base)
                ),
            );
        }
        // Guard against configurations that cannot fit in memory, which would abort rather than error.
        let width = (self.n_embd.max(1) as f64).max((self.n_head as f64) * self.head_dim.unwrap_or(0) as f64);
        let weights = self.n_layer as f64 * 12.0 * width * width;
        if weights > 4e9 {
            bad(
                &["n_embd"],
                format!("n_layer × 12 × n_embd² = {weights:.3e} weights is beyond what gptlab trains (4e9)"),
            );
        }
        out
    }

    /// The heads' problems: counts of zero, heads that do not tile n_embd or the query heads'
    /// groups, an odd head dimension under RoPE.
    fn head_problems(&self, bad: &mut impl FnMut(&[&'static str], String)) {
        let kv = self.kv_heads();
        if kv == 0 {
            bad(&["n_kv_head"], "must be at least 1".into());
        }
        // With an explicit head_dim the heads need not tile n_embd.
        if self.head_dim.is_none() && self.n_head > 0 && !self.n_embd.is_multiple_of(self.n_head) {
            bad(
                &["n_head", "n_embd"],
                format!("n_embd ({}) must be divisible by n_head ({})", self.n_embd, self.n_head),
            );
        }
        if self.head_dim == Some(0) {
            bad(&["head_dim"], "must be at least 1".into());
        }
        if self.head_dim.is_some_and(|hd| hd > 65_536) {
            bad(&["head_dim"], "is beyond the 65536 gptlab supports".into());
        }
        if kv > 0 && self.n_head > 0 && !self.n_head.is_multiple_of(kv) {
            bad(
                &["n_kv_head", "n_head"],
                format!("n_head ({}) must be divisible by n_kv_head ({kv})", self.n_head),
            );
        }
        let head_dim = self
            .head_dim
            .or((self.n_head > 0 && self.n_embd.is_multiple_of(self.n_head)).then(|| self.n_embd / self.n_head));
        if let Some(hd) = head_dim.filter(|hd| self.position == Position::Rope && !hd.is_multiple_of(2)) {
            let why = match self.head_dim {
                Some(_) => format!("head_dim is {hd}"),
                None => format!("n_embd / n_head = {} / {} = {hd}", self.n_embd, self.n_head),
            };
            bad(
                &["position", "head_dim", "n_head", "n_embd"],
                format!("RoPE needs an even head dimension, but {why}"),
            );
        }
    }
}

/// Everything needed to build a [`Gpt`](super::Gpt): the chosen architecture and the two
/// sizes the data and the schedule fix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Number of distinct tokens (characters).
    pub vocab_size: usize,
    /// Longest sequence the model will see: sizes the absolute position table and RoPE tables.
    pub block_size: usize,
    /// The architecture.
    pub arch: ModelOptions,
}

impl ModelConfig {
    /// minGPT's gpt-mini on a 65-character vocabulary at block size 128 (the HW1 setting).
    pub fn gpt_mini() -> Self {
        Self {
            vocab_size: 65,
            block_size: 128,
            arch: ModelOptions::default(),
        }
    }

    /// A model small enough for a unit test: 2 layers, width 16, 4 heads, no dropout.
    pub fn tiny() -> Self {
        Self {
            vocab_size: 11,
            block_size: 16,
            arch: ModelOptions {
                n_layer: 2,
                n_embd: 16,
                n_head: 4,
                dropout: 0.0,
                ..ModelOptions::default()
            },
        }
    }

    /// The same config with other options (`f` edits a copy).
    pub fn with(&self, f: impl FnOnce(&mut ModelOptions)) -> Self {
        let mut c = self.clone();
        f(&mut c.arch);
        c
    }

    /// The sizes of every attention layer.
    pub fn attn_shape(&self) -> AttnShape {
        self.arch.attn_shape()
    }

    /// Bytes of key/value cache per generated position: 2 · n_layer · n_kv_head · head_dim · 4.
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.arch.n_layer * self.attn_shape().kv_dim() * std::mem::size_of::<Float>()
    }
}
