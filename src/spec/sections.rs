//! The typed sections of a spec file, with gpt-mini defaults (minGPT's "gpt-mini" and its
//! training settings). Every struct rejects unknown keys.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::ModelOptions;

/// `[experiment]`: the name (its output folder), the seed every run starts from, the device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentSection {
    /// Defaults to the spec file's stem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Seeds initialisation, batch sampling and dropout.
    pub seed: u64,
    /// Repeat every run once per seed (instead of `seed`): folders `<run>/seed=<s>/`, and the
    /// report compares runs seed by seed with intervals. The same for every run, so that
    /// runs pair by seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seeds: Option<Vec<u64>>,
    /// `auto` (the GPU when the binary has CUDA and one is present), `cpu` or `cuda`;
    /// `--device` overrides it. Not part of a run's identity: a checkpoint resumes on any device.
    pub device: crate::device::DeviceRequest,
}

impl Default for ExperimentSection {
    fn default() -> Self {
        Self {
            name: None,
            seed: 3407,
            seeds: None,
            device: Default::default(),
        }
    }
}

/// `[data]`: the corpus, its tokenizer and its validation split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// A UTF-8 text file, a folder of them, or a token file (`format = "tokens"`); relative
    /// paths resolve against the working directory, then the spec's folder.
    pub path: PathBuf,
    /// Without `val_path`, the last `val_fraction` of the text (a folder's last whole
    /// documents) is held out for validation, split before tokenising.
    pub val_fraction: f64,
    /// Validation data of its own (then `val_fraction` is not used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_path: Option<PathBuf>,
    /// `char`, `gpt2`, `cl100k`, `o200k` or `{ file = "tokenizer.json" }`.
    pub tokenizer: crate::data::TokenizerSpec,
    /// A folder's files to read, as glob patterns relative to it.
    pub include: Vec<String>,
    /// `text`, `jsonl` (a document per line) or `tokens` for ids already laid out (nanoGPT's
    /// `train.bin`).
    pub format: crate::data::Format,
    /// With `format = "jsonl"`: the field of each line that holds its text (default `text`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_field: Option<String>,
    /// The width of a token file's ids: `u16` (the default) or `u32`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<crate::data::Dtype>,
    /// Where tokenised text is cached; defaults to `$GPTLAB_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/gptlab/tokens`, else `~/.cache/gptlab/tokens`. Not part of a run's
    /// identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
}

impl DataSection {
    /// The field of a JSON Lines line that holds its text: `text_field`, else `text`.
    pub fn text_field(&self) -> &str {
        self.text_field.as_deref().unwrap_or("text")
    }
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            path: PathBuf::from("data/tinyshakespeare.txt"),
            val_fraction: 0.1,
            val_path: None,
            tokenizer: Default::default(),
            include: vec!["**/*".into()],
            format: Default::default(),
            text_field: None,
            dtype: None,
            cache_dir: None,
        }
    }
}

/// `[model]`: the architecture, exactly the model's own options (defaults are gpt-mini).
pub type ModelSection = ModelOptions;

/// `[train]`: optimisation and bookkeeping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Sequences per step.
    pub batch_size: usize,
    /// The peak AdamW learning rate (a phase may set its own).
    pub lr: f64,
    /// The learning-rate schedule over the run's steps (every phase that has no schedule of
    /// its own, as one sequence): `constant`, `cosine`, `linear` or `wsd`.
    pub schedule: crate::schedule::ScheduleKind,
    /// Steps of linear warmup at the start of the schedule.
    pub warmup_steps: usize,
    /// The rate a decaying schedule ends at (default 0; or `min_lr_ratio`, not both).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_lr: Option<f64>,
    /// `min_lr` as a share of the peak rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_lr_ratio: Option<f64>,
    /// `wsd`: steps of the final decay (or `decay_fraction`, not both).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decay_steps: Option<usize>,
    /// `wsd`: the final decay as a share of the schedule's steps (default 0.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decay_fraction: Option<f64>,
    /// `wsd`: `linear` (default), `sqrt` or `cosine`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decay_shape: Option<crate::schedule::DecayShape>,
    /// Sequences per forward/backward pass: a step accumulates the gradients of
    /// `batch_size / micro_batch_size` micro-batches (must divide `batch_size`). Changes the
    /// memory a step needs, not what it computes (up to float rounding); not part of a run's
    /// identity. Evaluation runs in passes of this many windows too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub micro_batch_size: Option<usize>,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// Decoupled weight decay, applied to matmul weights only.
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 disables it.
    pub grad_clip: f64,
    /// Validation every this many steps (and at each phase end); 0 = only at phase ends.
    pub eval_every: usize,
    /// Batches averaged per validation.
    pub eval_batches: usize,
    /// Checkpoint every this many steps; 0 = only at phase ends.
    pub checkpoint_every: usize,
    /// How many periodic checkpoints to keep.
    pub keep_checkpoints: usize,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            batch_size: 64,
            lr: 5e-4,
            schedule: Default::default(),
            warmup_steps: 0,
            min_lr: None,
            min_lr_ratio: None,
            decay_steps: None,
            decay_fraction: None,
            decay_shape: None,
            micro_batch_size: None,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
            eval_every: 100,
            eval_batches: 8,
            checkpoint_every: 200,
            keep_checkpoints: 2,
        }
    }
}

impl TrainSection {
    /// The windows one forward pass holds, training or evaluating: the micro-batch, else the
    /// whole batch.
    pub fn windows_per_pass(&self) -> usize {
        self.micro_batch_size.unwrap_or(self.batch_size)
    }

    /// The schedule of `kind` with `warmup` steps peaking at `peak` over `steps` steps, with
    /// this section's floor and `wsd` decay.
    pub fn schedule_over(
        &self,
        kind: crate::schedule::ScheduleKind,
        warmup: usize,
        peak: f64,
        steps: usize,
    ) -> crate::schedule::LrSchedule {
        let decay = self
            .decay_steps
            .unwrap_or_else(|| (self.decay_fraction.unwrap_or(0.2) * steps as f64).round() as usize);
        crate::schedule::LrSchedule {
            kind,
            peak,
            min: self.min_lr.unwrap_or(self.min_lr_ratio.unwrap_or(0.0) * peak),
            warmup,
            steps,
            decay,
            shape: self.decay_shape.unwrap_or_default(),
        }
    }
}

/// One `[[phase]]`: train at `seq_len` for `steps` steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSection {
    /// Sequence length of every batch in this phase.
    pub seq_len: usize,
    /// Optimizer steps in this phase.
    pub steps: usize,
    /// The peak learning rate of this phase. Setting `lr`, `warmup_steps` or `schedule` gives
    /// the phase a schedule of its own over its steps (constant unless `schedule` says
    /// otherwise; `min_lr`/`min_lr_ratio` and the `wsd` decay settings come from `[train]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Steps of warmup at the start of this phase's own schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<usize>,
    /// This phase's own schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<crate::schedule::ScheduleKind>,
}

impl PhaseSection {
    /// Whether the phase has a learning-rate schedule of its own (see [`PhaseSection::lr`]).
    pub fn has_own_schedule(&self) -> bool {
        self.lr.is_some() || self.warmup_steps.is_some() || self.schedule.is_some()
    }
}

/// `[sample]`: what to generate from each phase's final model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleSection {
    /// Each prompt is continued once per checkpoint.
    pub prompts: Vec<String>,
    /// Tokens to generate (characters with the `char` tokenizer).
    pub max_new_tokens: usize,
    /// Softmax temperature.
    pub temperature: f64,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
}

impl Default for SampleSection {
    fn default() -> Self {
        Self {
            prompts: vec![],
            max_new_tokens: 500,
            temperature: 1.0,
            top_k: 10,
        }
    }
}

/// `[measure]`: optional probes recorded in metrics.csv.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeasureSection {
    /// Record `attn_ms` (time inside attention, forward and backward, all layers) and
    /// `attn_mem_mb` (bytes attention keeps for backward, measured and from the shapes).
    pub attention: bool,
}

/// `[eval]`: validation loss at several sequence lengths, to see how a model reads sequences
/// longer (or shorter) than it was trained on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Lengths to evaluate at; empty: the `seq_len` of every phase.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lengths: Vec<usize>,
    /// `windows`: non-overlapping windows, every position scored; `sliding`: windows `stride`
    /// apart, each scoring only its last `stride` positions (so every scored token but those
    /// of the first window has `length − stride` tokens or more of context).
    pub mode: EvalMode,
    /// Step between sliding windows; `sliding` only; default half the length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stride: Option<usize>,
    /// Validation tokens scored at each length (the same text at every length, from the start
    /// of the validation split; fewer when the split is shorter).
    pub tokens: usize,
    /// Also evaluate every this many steps; 0: at phase ends only.
    pub every: usize,
    /// RoPE scalings to evaluate RoPE runs with past their training length, as extra curves,
    /// e.g. `[{ kind = "ntk", factor = 2.0 }]` (a single table is accepted too).
    #[serde(deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub rope_scaling: Vec<crate::model::RopeScaling>,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            lengths: vec![],
            mode: EvalMode::Windows,
            stride: None,
            tokens: 32_768,
            every: 0,
            rope_scaling: vec![],
        }
    }
}

/// How the validation text is cut into windows at one length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalMode {
    /// Non-overlapping windows; every position of each is scored.
    #[default]
    Windows,
    /// Overlapping windows `stride` apart; each scores only the tokens the previous did not.
    Sliding,
}

impl std::fmt::Display for EvalMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EvalMode::Windows => "windows",
            EvalMode::Sliding => "sliding",
        })
    }
}

/// An error message on one line (toml puts the key on a line of its own).
fn one_line(e: &impl std::fmt::Display) -> String {
    e.to_string().trim().replace('\n', " ")
}

/// A table or an array of tables. Each is read on its own, so an error says what is wrong
/// with it (an unknown kind, a missing field) and which entry, where an untagged enum would
/// only say that nothing matched.
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    match toml::Value::deserialize(d)? {
        toml::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, x)| T::deserialize(x).map_err(|e| D::Error::custom(format!("entry {}: {}", i + 1, one_line(&e)))))
            .collect(),
        one => T::deserialize(one)
            .map(|x| vec![x])
            .map_err(|e| D::Error::custom(one_line(&e))),
    }
}

/// `[report]`: how the comparison is drawn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSection {
    /// EMA factor of the smoothed loss curves, in [0, 1); 0 draws the raw losses only.
    pub smoothing: f64,
    /// Runs to compare on their own in `loss_focus.svg` (e.g. `["n_kv_head=2", "n_kv_head=6"]`).
    pub focus: Vec<String>,
    /// The run the others are compared with (default: the first run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Whether runs write TensorBoard event files (`tb/` in each run folder) as they train.
    pub tensorboard: bool,
}

impl Default for ReportSection {
    fn default() -> Self {
        Self {
            smoothing: 0.9,
            focus: vec![],
            baseline: None,
            tensorboard: true,
        }
    }
}

/// `[slurm]`: what `gptlab submit` asks Slurm for, for each task (one run each). Not part of
/// a run's identity: where a run trains does not change its results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmSection {
    /// `--partition`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// `--time`, the time limit of each task, in Slurm's forms: `MM`, `MM:SS`, `HH:MM:SS`,
    /// `D-HH`, `D-HH:MM`, `D-HH:MM:SS`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// `--cpus-per-task`; gptlab trains with that many threads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus_per_task: Option<usize>,
    /// `--mem`, e.g. `16G`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// `--gpus` per task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<usize>,
    /// `--account`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// `--qos`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// At most this many tasks at once (the array's `%N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<usize>,
    /// Seconds before the time limit at which Slurm warns a task (`--signal=B:USR1@N`): it
    /// checkpoints and requeues itself. 0: no warning (a task at its limit is killed and its
    /// run resumes from its last periodic checkpoint when submitted again).
    pub requeue_before_s: u64,
    /// More `#SBATCH` options, each as written after `#SBATCH`, e.g. `"--constraint=a100"`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<String>,
}

impl Default for SlurmSection {
    fn default() -> Self {
        Self {
            partition: None,
            time: None,
            cpus_per_task: None,
            mem: None,
            gpus: None,
            account: None,
            qos: None,
            max_parallel: None,
            requeue_before_s: 300,
            extra: vec![],
        }
    }
}

/// Every section that shapes one run, after defaults and overrides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// `[experiment]`.
    #[serde(default)]
    pub experiment: ExperimentSection,
    /// `[data]`.
    #[serde(default)]
    pub data: DataSection,
    /// `[model]`.
    #[serde(default)]
    pub model: ModelSection,
    /// `[train]`.
    #[serde(default)]
    pub train: TrainSection,
    /// `[[phase]]`, in order.
    #[serde(default)]
    pub phase: Vec<PhaseSection>,
    /// `[sample]`.
    #[serde(default)]
    pub sample: SampleSection,
    /// `[report]`.
    #[serde(default)]
    pub report: ReportSection,
    /// `[measure]`.
    #[serde(default)]
    pub measure: MeasureSection,
    /// `[eval]`.
    #[serde(default)]
    pub eval: EvalSection,
    /// `[slurm]`.
    #[serde(default)]
    pub slurm: SlurmSection,
}

impl RunConfig {
    /// The run-wide learning-rate schedule (`[train]`'s, over the steps of every phase without
    /// a schedule of its own, as one sequence) and each phase's own schedule, where it has one.
    pub fn lr_schedules(&self) -> (crate::schedule::LrSchedule, Vec<Option<crate::schedule::LrSchedule>>) {
        let t = &self.train;
        let span = self
            .phase
            .iter()
            .filter(|p| !p.has_own_schedule())
            .map(|p| p.steps)
            .sum();
        let run_wide = t.schedule_over(t.schedule, t.warmup_steps, t.lr, span);
        let own = self
            .phase
            .iter()
            .map(|p| {
                let kind = p.schedule.unwrap_or_default();
                p.has_own_schedule()
                    .then(|| t.schedule_over(kind, p.warmup_steps.unwrap_or(0), p.lr.unwrap_or(t.lr), p.steps))
            })
            .collect();
        (run_wide, own)
    }
}
