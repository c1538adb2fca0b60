//! Parameter and memory arithmetic for decoder-only transformers: from gptlab's own model
//! configs or from a Hugging Face style `config.json`, without building the model.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use crate::model::{MlpKind, ModelConfig, NormKind, Position};

/// The `model_type`s whose implicit choices gptlab knows.
pub const FAMILIES: &[&str] = &["gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"];

/// Mixture-of-Experts families, refused by name (a dense count would be wrong).
const MOE_FAMILIES: &[&str] = &[
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "deepseek_v2",
    "deepseek_v3",
    "dbrx",
    "olmoe",
    "jamba",
];

/// The normalisation layers of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// Gain and bias per channel.
    LayerNorm,
    /// Gain only.
    RmsNorm,
}

/// The feed-forward network of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mlp {
    /// `up (C → hidden) → act → down (hidden → C)`.
    Plain,
    /// Gated: `gate` and `up (C → hidden)`, then `down` (SwiGLU, GeGLU).
    Gated,
}

/// What determines the parameter count of a decoder-only transformer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Arch {
    /// Model family, for display.
    pub name: String,
    /// Vocabulary size.
    pub vocab: usize,
    /// Residual width.
    pub hidden: usize,
    /// Feed-forward width.
    pub intermediate: usize,
    /// Blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Learned position table size (0 for RoPE or none).
    pub learned_positions: usize,
    /// Norm type.
    pub norm: Norm,
    /// Norms in each block: 2 (before attention and before the MLP), or 4 in Gemma 2, which
    /// also normalises each sub-layer's output ("sandwich" norms). A final norm follows the
    /// blocks.
    pub norms_per_block: usize,
    /// MLP type.
    pub mlp: Mlp,
    /// Biases on q, k, v.
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub o_bias: bool,
    /// Biases in the MLP.
    pub mlp_bias: bool,
    /// RMSNorm of each head's queries and keys (Qwen3).
    pub qk_norm: bool,
    /// Output head shares the token embedding.
    pub tie_embeddings: bool,
}

/// Parameters by component.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Breakdown {
    /// Token embedding.
    pub embeddings: u64,
    /// Learned position table.
    pub positions: u64,
    /// Query projections, all layers (with biases).
    pub attn_q: u64,
    /// Key projections.
    pub attn_k: u64,
    /// Value projections.
    pub attn_v: u64,
    /// Output projections.
    pub attn_o: u64,
    /// Feed-forward networks.
    pub mlp: u64,
    /// Every norm (per block, q/k norms, final).
    pub norms: u64,
    /// Output head (0 when tied).
    pub head: u64,
    /// Sum.
    pub total: u64,
}

impl Arch {
    /// gptlab's GPT with its block style (GPT-2 by default: LayerNorm, 4× GELU, biases; untied head).
    pub fn from_model(c: &ModelConfig) -> Self {
        let a = &c.arch;
        let hd = if a.n_head == 0 { 0 } else { c.attn_shape().head_dim() };
        Self {
            name: "gptlab".into(),
            vocab: c.vocab_size,
            hidden: a.n_embd,
            intermediate: c.arch.mlp_width(),
            layers: a.n_layer,
            heads: a.n_head,
            kv_heads: a.kv_heads(),
            head_dim: hd,
            learned_positions: if a.position == Position::Absolute {
                c.block_size
            } else {
                0
            },
            norm: match a.norm {
                NormKind::LayerNorm => Norm::LayerNorm,
                NormKind::RmsNorm => Norm::RmsNorm,
            },
            mlp: match a.mlp {
                MlpKind::Gelu => Mlp::Plain,
                MlpKind::Swiglu => Mlp::Gated,
            },
            qkv_bias: a.bias,
            o_bias: a.bias,
            mlp_bias: a.bias,
            qk_norm: a.qk_norm,
            norms_per_block: 2,
            tie_embeddings: a.tie_embeddings,
        }
    }

    /// Reads a Hugging Face `config.json` of a decoder-only model. The family (`model_type`)
    /// decides what the file leaves implicit: norms, biases, gating, tying. A family gptlab
    /// does not know, a Mixture-of-Experts model, a missing or mistyped field and a shape
    /// that cannot exist are errors naming the field, never a number.
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = crate::fsio::read_text_capped(path, crate::fsio::MAX_META_BYTES, "the model config")?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
        let file = path.display();
        // The first key present must be a whole number; absent is None, and so is null:
        // transformers writes `"n_inner": null` or `"head_dim": null` for "the default".
        let get = |keys: &[&str]| -> Result<Option<usize>> {
            match keys
                .iter()
                .find_map(|k| v.get(*k).filter(|x| !x.is_null()).map(|x| (*k, x)))
            {
                None => Ok(None),
                Some((k, x)) => match x.as_u64().and_then(|n| usize::try_from(n).ok()) {
                    Some(n) => Ok(Some(n)),
                    None => bail!("{file}: `{k}` must be a whole number, not {x}"),
                },
            }
        };
        let need = |keys: &[&str]| get(keys)?.with_context(|| format!("{file}: `{}` is missing (or null)", keys[0]));
        let flag = |k: &str| v.get(k).and_then(Value::as_bool);
        let family = dense_family(&v, &file)?;
        let hidden = need(&["hidden_size", "n_embd"])?;
        let heads = need(&["num_attention_heads", "n_head"])?;
        let kv_heads = get(&["num_key_value_heads"])?.unwrap_or(heads);
        let head_dim = get(&["head_dim"])?;
        let at_least_one = [
            ("hidden_size", hidden),
            ("num_attention_heads", heads),
            ("num_key_value_heads", kv_heads),
        ];
        if let Some((k, _)) = at_least_one.iter().find(|(_, n)| *n == 0) {
            bail!("{file}: `{k}` must be at least 1");
        }
        if !heads.is_multiple_of(kv_heads) {
            bail!("{file}: `num_attention_heads` ({heads}) must be a multiple of `num_key_value_heads` ({kv_heads})");
        }
        if head_dim.is_none() && !hidden.is_multiple_of(heads) {
            bail!(
                "{file}: `hidden_size` ({hidden}) must be divisible by `num_attention_heads` ({heads}) when `head_dim` is not given"
            );
        }
        let gpt2 = family == "gpt2";
        let arch = Self {
            name: family.to_string(),
            vocab: need(&["vocab_size"])?,
            hidden,
            intermediate: get(&["intermediate_size", "n_inner"])?.unwrap_or(hidden.saturating_mul(4)),
            layers: need(&["num_hidden_layers", "n_layer"])?,
            heads,
            kv_heads,
            head_dim: head_dim.unwrap_or(hidden / heads),
            learned_positions: if gpt2 {
                get(&["n_positions", "max_position_embeddings"])?.unwrap_or(1024)
            } else {
                0
            },
            norm: if gpt2 { Norm::LayerNorm } else { Norm::RmsNorm },
            mlp: if gpt2 { Mlp::Plain } else { Mlp::Gated },
            qkv_bias: gpt2 || family == "qwen2" || flag("attention_bias").unwrap_or(false),
            o_bias: gpt2 || flag("attention_bias").unwrap_or(false),
            mlp_bias: gpt2 || flag("mlp_bias").unwrap_or(false),
            qk_norm: family == "qwen3",
            norms_per_block: if family == "gemma2" { 4 } else { 2 },
            tie_embeddings: flag("tie_word_embeddings").unwrap_or(gpt2 || family.starts_with("gemma")),
        };
        arch.try_breakdown().with_context(|| format!("{file}"))?;
        Ok(arch)
    }

    /// Parameters by component. Panics if a count overflows 64 bits, which no validated
    /// gptlab config and no config [`Arch::from_hf_config`] accepts can do.
    pub fn breakdown(&self) -> Breakdown {
        self.try_breakdown().expect("the parameter count fits in 64 bits")
    }

    /// Parameters by component, or an error if a count would overflow 64 bits.
    pub fn try_breakdown(&self) -> Result<Breakdown> {
        let too_big = || anyhow::anyhow!("the sizes are too large to count (a parameter count overflows 64 bits)");
        let u = |x: usize| x as u64;
        let mul = |a: u64, b: u64| a.checked_mul(b).ok_or_else(too_big);
        let add = |a: u64, b: u64| a.checked_add(b).ok_or_else(too_big);
        let (c, l) = (u(self.hidden), u(self.layers));
        let q_out = mul(u(self.heads), u(self.head_dim))?;
        let kv_out = mul(u(self.kv_heads), u(self.head_dim))?;
        let proj = |d_in: u64, d_out: u64, bias: bool| add(mul(d_in, d_out)?, if bias { d_out } else { 0 });
        let norm = |width: u64| match self.norm {
            Norm::LayerNorm => mul(2, width),
            Norm::RmsNorm => Ok(width),
        };
        let f = u(self.intermediate);
        let up = proj(c, f, self.mlp_bias)?;
        let mlp_one = match self.mlp {
            Mlp::Plain => add(up, proj(f, c, self.mlp_bias)?)?,
            Mlp::Gated => add(mul(2, up)?, proj(f, c, self.mlp_bias)?)?,
        };
        let qk_norms = if self.qk_norm { mul(2, u(self.head_dim))? } else { 0 };
        let embeddings = mul(u(self.vocab), c)?;
        let b = Breakdown {
            embeddings,
            positions: mul(u(self.learned_positions), c)?,
            attn_q: mul(l, proj(c, q_out, self.qkv_bias)?)?,
            attn_k: mul(l, proj(c, kv_out, self.qkv_bias)?)?,
            attn_v: mul(l, proj(c, kv_out, self.qkv_bias)?)?,
            attn_o: mul(l, proj(q_out, c, self.o_bias)?)?,
            mlp: mul(l, mlp_one)?,
            norms: add(
                mul(l, add(mul(u(self.norms_per_block), norm(c)?)?, qk_norms)?)?,
                norm(c)?,
            )?,
            head: if self.tie_embeddings { 0 } else { embeddings },
            total: 0,
        };
        let parts = [
            b.embeddings,
            b.positions,
            b.attn_q,
            b.attn_k,
            b.attn_v,
            b.attn_o,
            b.mlp,
            b.norms,
            b.head,
        ];
        let total = parts.iter().try_fold(0u64, |acc, &x| add(acc, x))?;
        Ok(Breakdown { total, ..b })
    }

    /// Key/value cache per token, in bytes, at `bytes_per_value` (2 for fp16/bf16).
    pub fn kv_bytes_per_token(&self, bytes_per_value: u64) -> u64 {
        2 * (self.layers * self.kv_heads * self.head_dim) as u64 * bytes_per_value
    }
}

/// The `model_type` of a Hugging Face config, if it is a dense decoder family gptlab counts:
/// the family says what the file leaves implicit, and a Mixture-of-Experts model's totals
/// would be wrong.
fn dense_family<'a>(v: &'a Value, file: &impl std::fmt::Display) -> Result<&'a str> {
    let Some(family) = v.get("model_type").and_then(Value::as_str) else {
        bail!(
            "{file}: `model_type` is missing: the family says what the file leaves implicit (norms, biases, \
             gating); supported: {}",
            FAMILIES.join(", ")
        );
    };
    let experts = ["num_local_experts", "num_experts", "n_routed_experts"]
        .iter()
        .find(|k| v.get(**k).and_then(Value::as_u64).is_some_and(|n| n > 1));
    if MOE_FAMILIES.contains(&family) || experts.is_some() {
        bail!(
            "{file}: `{family}` is a Mixture-of-Experts model{}; gptlab counts dense models only, so its \
             total and active parameters would be wrong",
            experts.map(|k| format!(" (`{k}`)")).unwrap_or_default()
        );
    }
    if !FAMILIES.contains(&family) {
        bail!(
            "{file}: model_type `{family}` is not a family gptlab knows (encoders such as BERT are not \
             decoder-only GPTs); supported: {}",
            FAMILIES.join(", ")
        );
    }
    Ok(family)
}

/// Memory figures, in bytes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Memory {
    /// Inference weights in fp32.
    pub weights_fp32: u64,
    /// Inference weights in bf16.
    pub weights_bf16: u64,
    /// Inference weights in int8.
    pub weights_int8: u64,
    /// Training in fp32 with AdamW: weights, gradients, two moments (16 bytes a parameter).
    pub train_adamw_fp32: u64,
    /// Mixed-precision training with AdamW: bf16 weights and gradients plus fp32 master weights
    /// and moments (the common 2 + 2 + 12 bytes a parameter).
    pub train_adamw_mixed: u64,
    /// KV cache per token in bf16.
    pub kv_cache_per_token_bf16: u64,
    /// KV cache for `context` tokens × `batch` sequences in bf16.
    pub kv_cache_bf16: u64,
    /// The context length used.
    pub context: u64,
    /// The batch used.
    pub batch: u64,
}

/// Memory for `params` parameters of `arch`, with a KV cache of `context` × `batch`.
pub fn memory(arch: &Arch, params: u64, context: u64, batch: u64) -> Result<Memory> {
    let too_big = || anyhow::anyhow!("the memory figures overflow 64 bits (is --context or --batch that large?)");
    let mul = |a: u64, b: u64| a.checked_mul(b).ok_or_else(too_big);
    let per_token = mul(
        mul(mul(arch.layers as u64, arch.kv_heads as u64)?, arch.head_dim as u64)?,
        4, // keys and values, 2 bytes each (bf16)
    )?;
    Ok(Memory {
        weights_fp32: mul(4, params)?,
        weights_bf16: mul(2, params)?,
        weights_int8: params,
        train_adamw_fp32: mul(16, params)?,
        train_adamw_mixed: mul(16, params)?,
        kv_cache_per_token_bf16: per_token,
        kv_cache_bf16: mul(mul(per_token, context)?, batch)?,
        context,
        batch,
    })
}

/// What `gptlab params` prints: for each named architecture its parameters per component
/// and memory, as a table or (with `json`) as a JSON array.
pub fn render(archs: &[(String, Arch)], context: u64, batch: u64, json: bool) -> Result<String> {
    if json {
        let rows: Vec<serde_json::Value> = archs
            .iter()
            .map(|(name, arch)| {
                let b = arch.try_breakdown()?;
                let m = memory(arch, b.total, context, batch)?;
                Ok(serde_json::json!({ "name": name, "arch": arch, "params": b, "memory_bytes": m }))
            })
            .collect::<Result<_>>()?;
        return serde_json::to_string_pretty(&rows).context("serialising");
    }
    let gb = |x: u64| format!("{:.3} GB", x as f64 / 1e9);
    let row = |what: &str, value: String| format!("  {what:<28} {value:>16}\n");
    let mut out = String::new();
    for (name, arch) in archs {
        let b = arch.try_breakdown()?;
        let m = memory(arch, b.total, context, batch)?;
        out += &format!("{name}\n");
        for (what, n) in [
            ("embeddings", b.embeddings),
            ("positions", b.positions),
            ("attention q", b.attn_q),
            ("attention k", b.attn_k),
            ("attention v", b.attn_v),
            ("attention o", b.attn_o),
            ("mlp", b.mlp),
            ("norms", b.norms),
            ("head", b.head),
            ("total", b.total),
        ] {
            out += &row(what, n.to_string());
        }
        let weights = format!(
            "{} / {} / {}",
            gb(m.weights_fp32),
            gb(m.weights_bf16),
            gb(m.weights_int8)
        );
        out += &row("weights fp32 / bf16 / int8", weights);
        out += &row("train AdamW fp32 (16 B/p)", gb(m.train_adamw_fp32));
        out += &row("train mixed (2+2+12 B/p)", gb(m.train_adamw_mixed));
        out += &row("KV cache per token (bf16)", format!("{} B", m.kv_cache_per_token_bf16));
        out += &row(&format!("KV cache {context} tok × {batch}"), gb(m.kv_cache_bf16));
    }
    Ok(out.trim_end().to_string())
}
