//! From resolved run specs to runnable plans: the data is located and measured, the model
//! config is fixed (vocabulary size, block size), and the phase schedule is laid out.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::data::Corpus;
use crate::model::ModelConfig;
use crate::spec::{RunConfig, RunSpec, SampleSection, SpecErrors, TrainSection};

/// One phase laid out on the global step axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    /// 0-based phase index.
    pub index: usize,
    /// Sequence length of every batch.
    pub seq_len: usize,
    /// First global step of the phase (1-based).
    pub first_step: usize,
    /// Steps in the phase.
    pub steps: usize,
    /// Learning rate.
    pub lr: f64,
}

impl Phase {
    /// Last global step of the phase.
    pub fn last_step(&self) -> usize {
        self.first_step + self.steps - 1
    }
}

/// The phases of a run, back to back.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseSchedule {
    /// In order.
    pub phases: Vec<Phase>,
}

impl PhaseSchedule {
    /// Lays out `config.phase` from step 1.
    pub fn new(config: &RunConfig) -> Self {
        let mut first_step = 1;
        let phases = config
            .phase
            .iter()
            .enumerate()
            .map(|(index, p)| {
                let phase = Phase {
                    index,
                    seq_len: p.seq_len,
                    first_step,
                    steps: p.steps,
                    lr: p.lr.unwrap_or(config.train.lr),
                };
                first_step += p.steps;
                phase
            })
            .collect();
        Self { phases }
    }

    /// Steps over all phases.
    pub fn total_steps(&self) -> usize {
        self.phases.iter().map(|p| p.steps).sum()
    }

    /// The longest sequence of any phase.
    pub fn max_seq_len(&self) -> usize {
        self.phases.iter().map(|p| p.seq_len).max().unwrap_or(0)
    }

    /// The phase a global step belongs to.
    pub fn phase_of(&self, step: usize) -> Option<&Phase> {
        self.phases
            .iter()
            .find(|p| (p.first_step..=p.last_step()).contains(&step))
    }
}

/// Everything needed to train one run.
#[derive(Clone, Debug)]
pub struct RunPlan {
    /// Experiment name.
    pub experiment: String,
    /// Run name (unique in the experiment).
    pub name: String,
    /// `(short key, value)` settings that set this run apart.
    pub varies: Vec<(String, String)>,
    /// Output folder: `<runs_dir>/<experiment>/<run>`.
    pub dir: PathBuf,
    /// The corpus file, resolved.
    pub data_path: PathBuf,
    /// The architecture.
    pub model: ModelConfig,
    /// The phases.
    pub schedule: PhaseSchedule,
    /// Optimiser settings.
    pub train: TrainSection,
    /// Sampling settings.
    pub sample: SampleSection,
    /// Master seed.
    pub seed: u64,
    /// Weights to start from.
    pub init_from: Option<String>,
    /// The resolved spec, as saved beside the metrics.
    pub config: RunConfig,
    /// Tokens in the training split.
    pub train_tokens: usize,
    /// SHA-256 of the corpus file: a run's data is its content, not its path.
    pub data_sha256: String,
}

impl RunPlan {
    /// Parameters of the model.
    pub fn num_params(&self) -> usize {
        self.model.num_params()
    }

    /// Tokens the run trains on: Σ steps · batch · seq_len.
    pub fn tokens_seen(&self) -> u64 {
        self.schedule
            .phases
            .iter()
            .map(|p| (p.steps * p.seq_len * self.train.batch_size) as u64)
            .sum()
    }

    /// The settings that determine the run's trajectory through `step`, flattened to
    /// `key → value`: a checkpoint at `step` can resume this plan only if they are equal.
    ///
    /// Left out on purpose: bookkeeping (eval, checkpoint and sample settings), the block
    /// size (a longer later phase only grows the position table), and phases not yet reached
    /// (so a schedule can be extended after the fact).
    pub fn identity(&self, step: usize) -> BTreeMap<String, String> {
        let m = &self.model;
        let t = &self.train;
        let mut id = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            id.insert(k.to_string(), v);
        };
        put("model.vocab_size", m.vocab_size.to_string());
        put("model.n_layer", m.n_layer.to_string());
        put("model.n_embd", m.n_embd.to_string());
        put("model.n_head", m.n_head.to_string());
        put("model.n_kv_head", m.n_kv_head.to_string());
        put("model.position", m.position.to_string());
        put("model.dropout", m.dropout.to_string());
        put("model.rope_base", m.rope_base.to_string());
        put("model.attention", m.attention.to_string());
        put("model.norm", format!("{:?}", m.block.norm));
        put("model.mlp", format!("{:?}", m.block.mlp));
        put("model.mlp_hidden", m.mlp_hidden().to_string());
        put("model.bias", m.block.bias.to_string());
        put("model.tie_embeddings", m.block.tie_embeddings.to_string());
        put("model.qk_norm", m.block.qk_norm.to_string());
        put("model.head_dim", m.attn_shape().head_dim().to_string());
        put("data.sha256", self.data_sha256.clone());
        put("data.val_fraction", self.config.data.val_fraction.to_string());
        put("experiment.seed", self.seed.to_string());
        put("train.batch_size", t.batch_size.to_string());
        put("train.beta1", t.beta1.to_string());
        put("train.beta2", t.beta2.to_string());
        put("train.eps", t.eps.to_string());
        put("train.weight_decay", t.weight_decay.to_string());
        put("train.grad_clip", t.grad_clip.to_string());
        put("init_from", self.init_from.clone().unwrap_or_default());
        for p in self.schedule.phases.iter().filter(|p| p.first_step <= step) {
            let done = p.steps.min(step + 1 - p.first_step);
            put(&format!("phase.{}.seq_len", p.index), p.seq_len.to_string());
            put(&format!("phase.{}.lr", p.index), p.lr.to_string());
            put(&format!("phase.{}.steps_done", p.index), done.to_string());
        }
        id
    }

    /// A rough upper estimate of the memory training needs, in bytes: weights, gradients and
    /// two AdamW moments (16 bytes a parameter) plus activations kept for backward, about 48
    /// floats per token, channel and layer (calibrated on gpt-mini: 1.75 GB measured at B=64,
    /// T=128) and the logits.
    pub fn train_memory_bytes(&self) -> f64 {
        let m = &self.model;
        let tokens = (self.train.batch_size * self.schedule.max_seq_len()) as f64;
        16.0 * self.num_params() as f64
            + tokens * (m.n_layer * m.n_embd) as f64 * 48.0 * 4.0
            + tokens * m.vocab_size as f64 * 16.0
    }

    /// The run's name followed by what sets it apart, for humans.
    pub fn label(&self) -> String {
        if self.varies.is_empty() {
            self.name.clone()
        } else {
            self.varies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// Finds a relative data path in the working directory, else beside the spec file.
fn resolve_data_path(path: &Path, spec_path: &Path) -> Result<PathBuf, String> {
    let beside = spec_path.parent().unwrap_or(Path::new(".")).join(path);
    if path.is_absolute() || path.exists() || beside == path {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(format!("data file `{}` not found", path.display()))
        };
    }
    if beside.is_file() {
        return Ok(beside);
    }
    Err(format!(
        "data file `{}` not found (tried `{}` from the working directory and `{}` beside the spec)",
        path.display(),
        path.display(),
        beside.display()
    ))
}

/// Checks the data-dependent parts of each run and lays out its plan.
pub fn plan(specs: &[RunSpec], runs_dir: &Path) -> Result<Vec<RunPlan>, SpecErrors> {
    let mut corpora: HashMap<(PathBuf, u64), Result<(Corpus, String), String>> = HashMap::new();
    let mut errors = vec![];
    let mut plans = vec![];
    for spec in specs {
        let c = &spec.config;
        let data_path = match resolve_data_path(&c.data.path, spec.spec_path()) {
            Ok(p) => p,
            Err(msg) => {
                errors.push(spec.error("data.path", msg));
                continue;
            }
        };
        let loaded = corpora
            .entry((data_path.clone(), c.data.val_fraction.to_bits()))
            .or_insert_with(|| {
                let bytes =
                    std::fs::read(&data_path).map_err(|e| format!("cannot read {}: {e}", data_path.display()))?;
                let text =
                    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", data_path.display()))?;
                let sha = sha2::Sha256::digest(text.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                Ok((Corpus::from_text(&text, c.data.val_fraction), sha))
            });
        let (corpus, data_sha256) = match loaded {
            Ok((corpus, sha)) => (&*corpus, sha.clone()),
            Err(msg) => {
                errors.push(spec.error("data.path", msg.clone()));
                continue;
            }
        };
        let mut ok = true;
        if corpus.vocab.len() < 2 {
            errors.push(spec.error(
                "data.path",
                format!(
                    "the corpus has {} distinct characters; at least 2 are needed",
                    corpus.vocab.len()
                ),
            ));
            ok = false;
        }
        for (i, p) in c.phase.iter().enumerate() {
            // Windows of seq_len + 1 characters are drawn from both splits (validation too, when it exists).
            let mut splits = vec![("training", corpus.train.len())];
            if c.data.val_fraction > 0.0 {
                splits.push(("validation", corpus.val.len()));
            }
            if let Some((split, len)) = splits.into_iter().find(|&(_, len)| p.seq_len + 1 > len) {
                errors.push(spec.error(
                    &format!("phase.{i}.seq_len"),
                    format!(
                        "seq_len {} needs windows of {} characters, but the {split} split of {} has only {len}",
                        p.seq_len,
                        p.seq_len + 1,
                        data_path.display()
                    ),
                ));
                ok = false;
            }
        }
        if !ok {
            continue;
        }
        let schedule = PhaseSchedule::new(c);
        let model = ModelConfig {
            vocab_size: corpus.vocab.len(),
            block_size: schedule.max_seq_len(),
            n_layer: c.model.n_layer,
            n_embd: c.model.n_embd,
            n_head: c.model.n_head,
            n_kv_head: c.model.kv_heads(),
            position: c.model.position,
            dropout: c.model.dropout,
            rope_base: c.model.rope_base,
            attention: c.model.attention,
            block: c.model.block_style(),
        };
        plans.push(RunPlan {
            experiment: spec.experiment.clone(),
            name: spec.name.clone(),
            varies: spec.varies.clone(),
            dir: runs_dir.join(&spec.experiment).join(&spec.name),
            data_path,
            model,
            schedule,
            train: c.train.clone(),
            sample: c.sample.clone(),
            seed: c.experiment.seed,
            init_from: spec.init_from.clone(),
            config: c.clone(),
            train_tokens: corpus.train.len(),
            data_sha256,
        });
    }
    if errors.is_empty() {
        Ok(plans)
    } else {
        Err(SpecErrors(errors).merge_shared(specs.len()))
    }
}
