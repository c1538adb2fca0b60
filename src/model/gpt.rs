//! The decoder-only transformer: embeddings, pre-LayerNorm blocks, final norm, LM head.

use dfdx::prelude::*;

use super::attention::CausalSelfAttention;
use super::config::{Float, ModelConfig, Position, RopeScaling};
use super::kv_cache::{KvCache, LayerCache};
use super::layers::{Act, Linear, Mlp, Norm, normal_values};
use super::ops::{Backend, Dropout};
use super::param::{HasParams, Param};
use super::positions::Positions;
use super::rope::Rope;

/// One pre-norm block: `x + dropout(attn(ln1(x)))`, then `x + dropout(mlp(ln2(x)))`.
#[derive(Clone, Debug)]
pub struct Block<D: Device<Float>> {
    /// Norm before attention.
    pub ln1: Norm<D>,
    /// Causal self-attention.
    pub attn: CausalSelfAttention<D>,
    /// Norm before the MLP.
    pub ln2: Norm<D>,
    /// Feed-forward network.
    pub mlp: Mlp<D>,
}

impl<D: Backend> Block<D> {
    /// Block `layer` of a model of `config`, initialised from `seed`'s named streams
    /// (`h.<layer>.attn`, `h.<layer>.mlp`): attention and MLP output projections with the
    /// residual scaling N(0, (0.02/√(2·n_layer))²).
    pub fn new(dev: &D, config: &ModelConfig, layer: usize, seed: u64) -> Self {
        let rng = |name: &str| crate::seed::named_stream(seed, crate::seed::Stream::Init, name);
        let (c, i) = (config.arch.n_embd, layer);
        let proj_std = 0.02 / (2.0 * config.arch.n_layer as f64).sqrt();
        Block {
            ln1: Norm::new(dev, &format!("h.{i}.ln1"), c, config.arch.norm),
            attn: CausalSelfAttention::new_with_bias(
                dev,
                &mut rng(&format!("h.{i}.attn")),
                &format!("h.{i}.attn"),
                config.attn_shape(),
                proj_std,
                config.arch.bias,
            )
            .with_kind(config.arch.attention)
            .with_qk_norm(dev, &format!("h.{i}.attn"), config.arch.qk_norm),
            ln2: Norm::new(dev, &format!("h.{i}.ln2"), c, config.arch.norm),
            mlp: Mlp::new(
                dev,
                &mut rng(&format!("h.{i}.mlp")),
                &format!("h.{i}.mlp"),
                c,
                config.arch.mlp_width(),
                proj_std,
                config.arch.mlp,
                config.arch.bias,
            ),
        }
    }

    /// `(B·T, C) -> (B·T, C)`; `cache` as in [`CausalSelfAttention::forward`].
    pub fn forward<T: Tape<Float, D> + Merge<T>>(
        &self,
        x: Act<D, T>,
        b: usize,
        t: usize,
        positions: &Positions<D>,
        drop: &mut Dropout,
        cache: Option<&mut LayerCache>,
    ) -> Act<D, T> {
        let skip = x.retaped::<T>();
        let branch = self.attn.forward(self.ln1.forward(x), b, t, positions, drop, cache);
        let x = D::residual(skip, branch, drop);
        let skip = x.retaped::<T>();
        let branch = self.mlp.forward(self.ln2.forward(x));
        D::residual(skip, branch, drop)
    }
}

impl<D: Device<Float>> HasParams<D> for Block<D> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Param<D>)) {
        self.ln1.visit(f);
        self.attn.visit(f);
        self.ln2.visit(f);
        self.mlp.visit(f);
    }
    fn visit_mut(&mut self, f: &mut dyn FnMut(&mut Param<D>)) {
        self.ln1.visit_mut(f);
        self.attn.visit_mut(f);
        self.ln2.visit_mut(f);
        self.mlp.visit_mut(f);
    }
}

/// What a forward pass is for: training (with its dropout masks), evaluation, or decoding
/// one sequence with its key/value cache.
pub enum Pass<'a> {
    /// Training: dropout drawn from the step's stream.
    Train(&'a mut Dropout),
    /// Evaluation: no dropout, no cache.
    Eval,
    /// Decoding: no dropout; the cache holds the positions before the tokens.
    Decode(&'a mut KvCache),
}

/// A GPT over a character vocabulary.
#[derive(Clone, Debug)]
pub struct Gpt<D: Device<Float>> {
    /// The configuration it was built from.
    pub config: ModelConfig,
    /// `(V, C)` token embedding.
    pub wte: Param<D>,
    /// Where tokens are: learned positions (`wpe`), RoPE, ALiBi or none.
    pub positions: Positions<D>,
    /// The transformer blocks.
    pub blocks: Vec<Block<D>>,
    /// Final norm.
    pub ln_f: Norm<D>,
    /// `(C, V)` language-model head, no bias; absent when tied to the token embedding.
    pub head: Option<Linear<D>>,
    dev: D,
}

impl<D: Backend> Gpt<D> {
    /// Builds the model with GPT-2/minGPT initialisation: weights N(0, 0.02²), residual output
    /// projections N(0, (0.02/√(2·n_layer))²), zero biases, unit norm gains.
    ///
    /// Each module draws from its own stream keyed by `(seed, its name)`, so a parameter's
    /// initial values do not depend on the sizes of the others: the first rows of the position
    /// table are the same at any block size, which lets a schedule grow after the fact.
    pub fn new(dev: &D, config: &ModelConfig, seed: u64) -> Self {
        let rng = |name: &str| crate::seed::named_stream(seed, crate::seed::Stream::Init, name);
        let (v, c) = (config.vocab_size, config.arch.n_embd);
        let wte = Param::from_vec(
            dev,
            "wte.weight".into(),
            vec![v, c],
            false,
            normal_values(&mut rng("wte"), v * c, 0.02),
        );
        let positions = match config.arch.position {
            Position::Absolute => Positions::Learned(Param::from_vec(
                dev,
                "wpe.weight".into(),
                vec![config.block_size, c],
                false,
                normal_values(&mut rng("wpe"), config.block_size * c, 0.02),
            )),
            Position::Rope => Positions::Rope(Rope::new(
                config.attn_shape().head_dim(),
                config.block_size,
                config.arch.rope_base,
            )),
            Position::Alibi => Positions::Alibi,
            Position::None => Positions::None,
        };
        let blocks = (0..config.arch.n_layer)
            .map(|layer| Block::new(dev, config, layer, seed))
            .collect();
        Self {
            config: config.clone(),
            wte,
            positions,
            blocks,
            ln_f: Norm::new(dev, "ln_f", c, config.arch.norm),
            head: (!config.arch.tie_embeddings).then(|| Linear::new(dev, &mut rng("head"), "head", c, v, false, 0.02)),
            dev: dev.clone(),
        }
    }

    /// The RoPE tables, when positions are rotary.
    pub fn rope(&self) -> Option<&Rope> {
        self.positions.rope()
    }

    /// The longest sequence the model can read: the rows of its position table (learned
    /// absolute positions) or of its RoPE tables; `None` when nothing bounds it (ALiBi, none).
    pub fn max_len(&self) -> Option<usize> {
        self.positions.max_len()
    }

    /// The same weights, able to read sequences of `len`: RoPE tables rebuilt for `len`
    /// positions with `scaling` applied to their angles. Learned absolute positions cannot be
    /// extended: past the table it is an error that says so, and so is `scaling` without RoPE.
    pub fn for_length(&self, len: usize, scaling: Option<&RopeScaling>) -> Result<Self, String> {
        if let Some(wpe) = self.positions.table()
            && len > wpe.shape[0]
        {
            return Err(format!(
                "learned absolute positions: the table has {} rows, a length of {len} needs {len}",
                wpe.shape[0]
            ));
        }
        if scaling.is_some() && self.rope().is_none() {
            return Err("RoPE scaling needs rotary positions".into());
        }
        let mut model = self.clone();
        if self.rope().is_some() {
            let arch = &self.config.arch;
            let len = len.max(self.config.block_size);
            model.positions = Positions::Rope(Rope::scaled(
                self.config.attn_shape().head_dim(),
                len,
                arch.rope_base,
                scaling,
            ));
        }
        Ok(model)
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Logits `(B·T, V)` of `tokens` (row-major `(B, T)`) for evaluation: no tape, no
    /// dropout, no cache. What every caller that only reads the model needs.
    pub fn eval_logits(&self, tokens: &[usize], b: usize, t: usize) -> Act<D, NoneTape> {
        self.forward(tokens, b, t, NoneTape, Pass::Eval)
    }

    /// Logits `(B·T, V)` for `tokens` (row-major `(B, T)`), recording on `tape`, for `pass`.
    ///
    /// Pass `NoneTape` for evaluation, or an `OwnedTape` holding pre-allocated gradients to
    /// train ([`Pass::Train`], with its dropout). With [`Pass::Decode`] (one sequence, `b = 1`)
    /// the tokens are the positions after those the cache holds, and it is extended by them:
    /// an empty cache is filled in one pass (prefill), then one token at a time decodes.
    /// Positions must stay within [`Gpt::max_len`].
    pub fn forward<T: Tape<Float, D> + Merge<T>>(
        &self,
        tokens: &[usize],
        b: usize,
        t: usize,
        tape: T,
        pass: Pass<'_>,
    ) -> Act<D, T> {
        let mut no_dropout = Dropout::eval();
        let (drop, mut cache) = match pass {
            Pass::Train(drop) => (drop, None),
            Pass::Eval => (&mut no_dropout, None),
            Pass::Decode(cache) => (&mut no_dropout, Some(cache)),
        };
        assert_eq!(tokens.len(), b * t, "tokens must be B·T long");
        let pos = cache.as_ref().map_or(0, |c| c.len);
        if let Some(max) = self.max_len() {
            assert!(
                pos + t <= max,
                "positions up to {} exceed the {max} the model has",
                pos + t
            );
        }
        let wte = self.wte.matrix::<NoneTape>().put_tape(tape);
        let wpe = self.positions.table().map(|wpe| wpe.matrix::<T>());
        let positions: Vec<usize> = (0..b * t).map(|i| pos + i % t).collect();
        let mut x = D::embed(wte, wpe, tokens, &positions, drop); // (B·T, C)
        for (i, block) in self.blocks.iter().enumerate() {
            let layer = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = block.forward(x, b, t, &self.positions, drop, layer);
        }
        if let Some(cache) = cache {
            cache.len += t;
        }
        self.logits(self.ln_f.forward(x)) // (B·T, V)
    }

    /// Bytes of key/value cache per position (see [`ModelConfig::kv_bytes_per_token`]).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.config.kv_bytes_per_token()
    }

    /// `x (N, C) -> (N, V)`: the head, or the transposed token embedding when tied.
    pub fn logits<T: Tape<Float, D> + Merge<T>>(&self, x: Act<D, T>) -> Act<D, T> {
        match &self.head {
            Some(head) => head.forward(x),
            None => D::linear_transposed(x, self.wte.matrix::<T>()),
        }
    }

    /// Mean cross-entropy of `logits (N, V)` against `targets (N,)`.
    pub fn loss<T: Tape<Float, D>>(&self, logits: Act<D, T>, targets: &[usize]) -> Tensor<(), Float, D, T> {
        D::cross_entropy(logits, targets)
    }
}

impl<D: Device<Float>> HasParams<D> for Gpt<D> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Param<D>)) {
        f(&self.wte);
        if let Positions::Learned(wpe) = &self.positions {
            f(wpe);
        }
        for b in &self.blocks {
            b.visit(f);
        }
        self.ln_f.visit(f);
        if let Some(h) = &self.head {
            h.visit(f);
        }
    }
    fn visit_mut(&mut self, f: &mut dyn FnMut(&mut Param<D>)) {
        f(&mut self.wte);
        if let Positions::Learned(wpe) = &mut self.positions {
            f(wpe);
        }
        for b in &mut self.blocks {
            b.visit_mut(f);
        }
        self.ln_f.visit_mut(f);
        if let Some(h) = &mut self.head {
            h.visit_mut(f);
        }
    }
}
