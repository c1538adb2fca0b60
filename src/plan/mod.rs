//! From resolved run specs to runnable plans: the data is located and measured, the model
//! config is fixed (vocabulary size, block size), and the phase schedule is laid out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::data::{Corpus, CorpusRequest, TokenizerFile, TokenizerSpec};
use crate::format::short_hash;
use crate::model::{MlpKind, ModelConfig};
use crate::schedule::{LrSchedule, ScheduleKind};
use crate::spec::{RunConfig, RunSpec, SpecError, SpecErrors};

mod identity;

pub use identity::identity_at;
use identity::same_training;

/// The relative cost of one training step at sequence length `seq_len` (see
/// [`PhaseSchedule::cost_after`]).
pub fn step_cost(seq_len: usize) -> f64 {
    (seq_len as f64).powf(1.3)
}

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
    /// The learning-rate schedule its steps take their rates from: its own, or the run's.
    pub lr: LrSchedule,
    /// Steps of that schedule before this phase's first step.
    pub lr_offset: usize,
    /// Whether the schedule is the phase's own.
    pub own_schedule: bool,
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
    /// The run-wide learning-rate schedule: `[train]`'s, over the steps of every phase
    /// without a schedule of its own, as one sequence.
    pub run_wide: LrSchedule,
}

impl PhaseSchedule {
    /// Lays out `config.phase` from step 1, each with the schedule its rates come from.
    pub fn new(config: &RunConfig) -> Self {
        let (run_wide, own) = config.lr_schedules();
        let (mut first_step, mut offset) = (1, 0);
        let phases = config
            .phase
            .iter()
            .zip(own)
            .enumerate()
            .map(|(index, (p, own))| {
                let (lr, lr_offset, own_schedule) = match own {
                    Some(schedule) => (schedule, 0, true),
                    None => {
                        offset += p.steps;
                        (run_wide, offset - p.steps, false)
                    }
                };
                let phase = Phase {
                    index,
                    seq_len: p.seq_len,
                    first_step,
                    steps: p.steps,
                    lr,
                    lr_offset,
                    own_schedule,
                };
                first_step += p.steps;
                phase
            })
            .collect();
        Self { phases, run_wide }
    }

    /// Phases `(seq_len, steps)` back to back at a constant rate `lr`.
    pub fn constant(phases: &[(usize, usize)], lr: f64) -> Self {
        let total = phases.iter().map(|p| p.1).sum();
        let run_wide = LrSchedule::constant(lr, total);
        let (mut first_step, mut out) = (1, vec![]);
        for (index, &(seq_len, steps)) in phases.iter().enumerate() {
            out.push(Phase {
                index,
                seq_len,
                first_step,
                steps,
                lr: run_wide,
                lr_offset: first_step - 1,
                own_schedule: false,
            });
            first_step += steps;
        }
        Self { phases: out, run_wide }
    }

    /// Steps over all phases.
    pub fn total_steps(&self) -> usize {
        self.phases.iter().map(|p| p.steps).sum()
    }

    /// The longest sequence of any phase.
    pub fn max_seq_len(&self) -> usize {
        self.phases.iter().map(|p| p.seq_len).max().unwrap_or(0)
    }

    /// The work left after step `done`, in units of one step at sequence length 1: a step at
    /// length `s` counts `s^1.3` (2.5× for twice the length, as measured on gpt-mini at 128
    /// and 256: the attention part grows faster than the rest). Progress uses it to weight
    /// the time left by each phase's length.
    pub fn cost_after(&self, done: usize) -> f64 {
        self.phases
            .iter()
            .map(|p| {
                let left = (p.last_step().saturating_sub(done)).min(p.steps);
                left as f64 * step_cost(p.seq_len)
            })
            .sum()
    }

    /// The learning rate of global step `step` (1-based): the one place a step's rate comes
    /// from (the update, the metrics row). It depends on the spec alone, never on when a run
    /// was interrupted.
    pub fn lr_at(&self, step: usize) -> f64 {
        self.phase_of(step)
            .map_or(0.0, |p| p.lr.at(p.lr_offset + step + 1 - p.first_step))
    }

    /// The phase a global step belongs to.
    pub fn phase_of(&self, step: usize) -> Option<&Phase> {
        self.phases
            .iter()
            .find(|p| (p.first_step..=p.last_step()).contains(&step))
    }
}

/// Whether runs estimated to need `need` bytes ([`RunPlan::train_memory_bytes`]) cannot fit
/// in `available`: an estimate above 1.2 times it. The estimate is 11–34% above the peaks
/// measured, so runs refused need about all that memory or more (they would be killed mid-way).
pub fn cannot_fit(need: f64, available: f64) -> bool {
    need > 1.2 * available
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
    /// Output folder: `<runs_dir>/<experiment>/<run>`, or `.../<run>/seed=<seed>` when seeded.
    pub dir: PathBuf,
    /// The corpus (a file or a folder), resolved.
    pub data_path: PathBuf,
    /// The phases.
    pub schedule: PhaseSchedule,
    /// Master seed.
    pub seed: u64,
    /// One of the experiment's `seeds`: the folder is `<run>/seed=<seed>/` and the report
    /// aggregates the run over its seeds.
    pub seeded: bool,
    /// Weights to start from.
    pub init_from: Option<crate::checkpoint::WarmStart>,
    /// The resolved spec, as saved beside the metrics.
    pub config: RunConfig,
    /// Tokens in the training split.
    pub train_tokens: usize,
    /// The corpus, tokenised once when planning (or reused from the token cache) and shared
    /// by every run that reads the same data with the same split and tokenizer.
    pub corpus: Arc<Corpus>,
}

/// The text a run's losses are measured on, as an identity and in words: losses on different
/// text are not compared ([`RunPlan::validation_text`], [`RunPlan::training_text`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextUsed {
    /// Equal for the same text, whatever the tokenizer: the files' SHA-256 and the share held out.
    pub identity: String,
    /// For a person: `` `val.txt` ``, `10% of `data/a.txt` held out`.
    pub words: String,
}

/// The model a run with these `[model]` options trains on `corpus` through `schedule`: its
/// vocabulary is the tokenizer's, its block size the longest phase's.
fn model_of(arch: &crate::model::ModelOptions, corpus: &Corpus, schedule: &PhaseSchedule) -> ModelConfig {
    ModelConfig {
        vocab_size: corpus.tokenizer.vocab_size(),
        block_size: schedule.max_seq_len(),
        arch: arch.clone(),
    }
}

impl RunPlan {
    /// The model this run trains (derived from its `[model]` options, corpus and phases).
    pub fn model(&self) -> ModelConfig {
        model_of(&self.config.model, &self.corpus, &self.schedule)
    }

    /// The text of the validation losses: the validation files, or the share of the data
    /// held out (cut from the text before tokenising, so the same for every tokenizer).
    pub fn validation_text(&self) -> TextUsed {
        let (c, d) = (&self.corpus, &self.config.data);
        let read_as = self.read_as();
        match (&c.val_sha256, &d.val_path) {
            (Some(sha), Some(val_path)) => TextUsed {
                identity: format!("files {sha}{read_as}"),
                words: format!("`{}`", val_path.display()),
            },
            _ => TextUsed {
                identity: format!("held out {} of {}{read_as}", d.val_fraction, c.sha256),
                words: format!("{}% of `{}` held out", d.val_fraction * 100.0, self.data_path.display()),
            },
        }
    }

    /// How the data's bytes are read, when not as plain text: the same file read as JSON
    /// Lines (or another field of them) is other text.
    fn read_as(&self) -> String {
        let d = &self.config.data;
        match d.format {
            crate::data::Format::Jsonl => format!(" as jsonl field {:?}", d.text_field()),
            _ => String::new(),
        }
    }

    /// The text of the training losses: the data, less the share held out when there is one.
    pub fn training_text(&self) -> TextUsed {
        let (c, d) = (&self.corpus, &self.config.data);
        let read_as = self.read_as();
        match c.val_sha256 {
            Some(_) => TextUsed {
                identity: format!("all of {}{read_as}", c.sha256),
                words: format!("`{}`", self.data_path.display()),
            },
            None => TextUsed {
                identity: format!("less {} of {}{read_as}", d.val_fraction, c.sha256),
                words: format!(
                    "`{}` less {}% held out",
                    self.data_path.display(),
                    d.val_fraction * 100.0
                ),
            },
        }
    }

    /// Parameters of the model (counted from the shapes, see [`crate::params`]).
    pub fn num_params(&self) -> usize {
        crate::params::Arch::from_model(&self.model()).breakdown().total as usize
    }

    /// Tokens the run trains on: Σ steps · batch · seq_len.
    pub fn tokens_seen(&self) -> u64 {
        self.schedule
            .phases
            .iter()
            .map(|p| (p.steps * p.seq_len * self.config.train.batch_size) as u64)
            .sum()
    }

    /// An upper estimate of the peak memory training needs on the CPU, in bytes, for the
    /// tokens of one pass (a micro-batch, or the whole batch) at the longest `seq_len`, or of
    /// the longest `[eval]` window where that is longer:
    /// 20 bytes a parameter (weights, their gradients and host copy, two AdamW moments; 24 with
    /// accumulation), for each token and layer the activations kept for backward (9 floats a
    /// channel, and 2 a hidden unit of a GELU MLP, 7 of a SwiGLU one), 4 bytes a token and
    /// vocabulary entry (the logits, which the loss turns into their gradient in place) and
    /// 100 MB for the program, plus 10%. Fitted to peaks measured 2026-12-05 (`peak_rss_mb`,
    /// 0.39–5.07 GB: gpt-mini, LLaMA-style, wider, T = 1024, GPT-2's vocabulary, accumulation),
    /// which it exceeds by 11–34%. Evaluation needs no more ([`crate::train::eval_loss`]).
    pub fn train_memory_bytes(&self) -> f64 {
        let model = self.model();
        let a = &model.arch;
        let t = &self.config.train;
        // An `[eval]` window longer than a training pass is a pass of its own.
        let longest_eval = self.config.eval.lengths.iter().copied().max().unwrap_or(0);
        let tokens = (t.windows_per_pass() * self.schedule.max_seq_len()).max(longest_eval) as f64;
        let per_param = if t.windows_per_pass() < t.batch_size {
            24.0
        } else {
            20.0
        };
        let hidden_floats = match a.mlp {
            MlpKind::Gelu => 2.0,
            MlpKind::Swiglu => 7.0,
        };
        let per_token_layer = 9.0 * a.n_embd as f64 + hidden_floats * a.mlp_width() as f64;
        let bytes = per_param * self.num_params() as f64
            + tokens * a.n_layer as f64 * per_token_layer * 4.0
            + tokens * model.vocab_size as f64 * 4.0
            + 100e6;
        1.1 * bytes
    }

    /// What `gptlab plan` prints for the run: what sets it apart, sizes, parameters, phases,
    /// tokens and the output folder.
    pub fn describe(&self) -> String {
        let m = &self.model();
        let a = &m.arch;
        let mut out = format!("run `{}`\n", self.id());
        if !self.varies.is_empty() {
            out += &format!("  differs:   {}\n", self.label());
        }
        out += &format!(
            "  model:     n_layer={} n_embd={} n_head={} n_kv_head={} position={} dropout={} vocab={} block={}\n",
            a.n_layer,
            a.n_embd,
            a.n_head,
            m.arch.kv_heads(),
            a.position,
            a.dropout,
            m.vocab_size,
            m.block_size
        );
        out += &format!("  params:    {}\n", self.num_params());
        let c = &self.corpus;
        out += &format!(
            "  data:      {}{} ({}; {:.2} bytes a token in the training split)\n",
            self.data_path.display(),
            self.read_as(),
            c.tokenizer.record(),
            1.0 / c.tokens_per_byte(crate::data::Split::Train)
        );
        out += &format!("  seed:      {}\n", self.seed);
        if let Some(warm) = &self.init_from {
            out += &format!(
                "  init:      the weights of {} (step {}; SHA-256 {}…), a fresh optimiser\n",
                warm.path,
                warm.step,
                short_hash(&warm.weights_sha256)
            );
        }
        for ph in &self.schedule.phases {
            out += &format!(
                "  phase {}:   steps {}..={} seq_len {} lr {}\n",
                ph.index,
                ph.first_step,
                ph.last_step(),
                ph.seq_len,
                lr_words(ph, &self.schedule)
            );
        }
        let t = &self.config.train;
        out += &match t.micro_batch_size.filter(|&m| m < t.batch_size) {
            Some(m) => format!(
                "  batch:     {} ({} micro-batches of {m})\n",
                t.batch_size,
                t.batch_size / m
            ),
            None => format!("  batch:     {}\n", t.batch_size),
        };
        out += &format!(
            "  tokens:    {} ({} in the training split)\n",
            self.tokens_seen(),
            self.train_tokens
        );
        out += &format!(
            "  memory:    about {:.2} GB at its peak, training on the CPU (an upper estimate)\n",
            self.train_memory_bytes() / 1e9
        );
        out += &format!("  output:    {}", self.dir.display());
        out
    }

    /// The run's name as its folder path under the experiment: `rope`, or `rope/seed=1` for
    /// one seed of a repeated run. `--only` takes either.
    pub fn id(&self) -> String {
        if self.seeded {
            format!("{}/{}", self.name, seed_folder(self.seed))
        } else {
            self.name.clone()
        }
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

/// A phase's rates in words: `0.0005`, or `0.0005 → 0.00005 (cosine, warmup 100, run-wide
/// over 800 steps)`.
fn lr_words(ph: &Phase, schedule: &PhaseSchedule) -> String {
    let s = &ph.lr;
    let (first, last) = (schedule.lr_at(ph.first_step), schedule.lr_at(ph.last_step()));
    if s.kind == ScheduleKind::Constant && s.warmup == 0 {
        return s.peak.to_string();
    }
    let whose = match ph.own_schedule {
        true => "its own".to_string(),
        false => format!("run-wide over {} steps", s.steps),
    };
    let warmup = match s.warmup {
        0 => String::new(),
        w => format!(", warmup {w}"),
    };
    let rate = |x: f64| if x == 0.0 { "0".to_string() } else { format!("{x:.3e}") };
    format!(
        "{} → {} (peak {}, {}{warmup}, {whose})",
        rate(first),
        rate(last),
        s.peak,
        s.kind
    )
}

/// The folder of one seed of a run repeated over `[experiment] seeds`.
pub fn seed_folder(seed: u64) -> String {
    format!("seed={seed}")
}

/// Finds a relative path in the working directory, else beside the spec file. What it is (a
/// file, a folder, something else) is the data layer's to judge.
fn resolve_path(path: &Path, spec_path: &Path, what: &str) -> Result<PathBuf, String> {
    let beside = spec_path.parent().unwrap_or(Path::new(".")).join(path);
    if path.is_absolute() || path.exists() || beside == path {
        return match path.exists() || path.is_symlink() {
            true => Ok(path.to_path_buf()),
            false => Err(format!("{what} `{}` not found", path.display())),
        };
    }
    if beside.exists() {
        return Ok(beside);
    }
    Err(format!(
        "{what} `{}` not found (tried `{}` from the working directory and `{}` beside the spec)",
        path.display(),
        path.display(),
        beside.display()
    ))
}

/// The problems of each run's data paths (`data.path`, `data.val_path`, a tokenizer file)
/// that show without reading the data: what is checked of a spec's runs while it has errors.
pub fn path_problems(specs: &[RunSpec], runs_dir: &Path) -> Vec<SpecError> {
    specs
        .iter()
        .filter_map(|s| corpus_request(s, runs_dir).err())
        .flatten()
        .collect()
}

/// The data layer's request for a run's `[data]`, paths resolved; errors name their keys.
fn corpus_request(spec: &RunSpec, runs_dir: &Path) -> Result<CorpusRequest, Vec<SpecError>> {
    let d = &spec.config.data;
    let mut errors = vec![];
    let mut resolve = |path: &Path, key: &str, what: &str| {
        resolve_path(path, spec.spec_path(), what)
            .map_err(|msg| errors.push(spec.error(key, msg)))
            .ok()
    };
    let path = resolve(&d.path, "data.path", "data path");
    let val_path = d
        .val_path
        .as_ref()
        .map(|p| resolve(p, "data.val_path", "validation data path"));
    let tokenizer = match &d.tokenizer {
        TokenizerSpec::File(TokenizerFile { file }) => {
            resolve(file, "data.tokenizer", "tokenizer file").map(|file| TokenizerSpec::File(TokenizerFile { file }))
        }
        named => Some(named.clone()),
    };
    let (Some(path), Some(tokenizer), None | Some(Some(_))) = (path, tokenizer, &val_path) else {
        return Err(errors);
    };
    Ok(CorpusRequest {
        path,
        val_path: val_path.flatten(),
        val_fraction: d.val_fraction,
        include: d.include.clone(),
        tokenizer,
        format: d.format,
        dtype: d.dtype,
        text_field: d.text_field().to_string(),
        cache_dir: d
            .cache_dir
            .clone()
            .unwrap_or_else(|| crate::data::default_cache_dir(runs_dir)),
    })
}

/// One load per distinct `[data]` request: the corpus, or its problems.
type Corpora = HashMap<String, Result<Arc<Corpus>, Vec<crate::data::DataError>>>;

/// The corpus `req` describes, loaded once for every run that shares it.
fn load_corpus(corpora: &mut Corpora, req: &CorpusRequest) -> Result<Arc<Corpus>, Vec<crate::data::DataError>> {
    corpora
        .entry(format!("{req:?}"))
        .or_insert_with(|| Corpus::load(req).map(Arc::new))
        .clone()
}

/// What makes `spec` untrainable on `corpus`: too few symbols, splits shorter than a window,
/// sample prompts its tokenizer cannot encode.
fn data_problems(spec: &RunSpec, corpus: &Corpus, data_path: &Path) -> Vec<SpecError> {
    let c = &spec.config;
    let mut errors = vec![];
    if corpus.tokenizer.vocab_size() < 2 {
        let msg = format!(
            "the corpus has {} distinct characters; at least 2 are needed",
            corpus.tokenizer.vocab_size()
        );
        errors.push(spec.error("data.path", msg));
    }
    for (i, p) in c.phase.iter().enumerate() {
        // Windows of seq_len + 1 tokens are drawn from both splits.
        let splits = [("training", corpus.train.len()), ("validation", corpus.val.len())];
        if let Some((split, len)) = splits.into_iter().find(|&(_, len)| p.seq_len + 1 > len) {
            let msg = format!(
                "seq_len {} needs windows of {} tokens, but the {split} split of {} has only {len}",
                p.seq_len,
                p.seq_len + 1,
                data_path.display()
            );
            errors.push(spec.error(&format!("phase.{i}.seq_len"), msg));
        }
    }
    // Samples are drawn after training: a prompt they cannot encode is found now, not then.
    for (i, prompt) in c.sample.prompts.iter().enumerate() {
        if let Some(why) = crate::sample::prompt_problem(prompt, &corpus.tokenizer) {
            let msg = format!("prompt {} ({prompt:?}) {why}", i + 1);
            errors.push(spec.error("sample.prompts", msg));
        }
    }
    errors
}

/// The checkpoint `spec`'s `init_from` names, or why it cannot start a model of `model` with
/// `tokenizer`: not a readable checkpoint, another tokenizer (its embeddings would mean other
/// tokens), or weights that do not fit the model (another width, depth, position encoding or
/// number of key/value heads).
fn warm_start(
    spec: &RunSpec,
    tokenizer: &crate::data::Tokenizer,
    model: &ModelConfig,
    sources: &mut WarmSources,
) -> Result<Option<crate::checkpoint::WarmStart>, Box<SpecError>> {
    let Some(from) = &spec.init_from else {
        return Ok(None);
    };
    let error = |msg: String| Box::new(spec.error("init_from", msg));
    let source = read_warm_source(sources, from).map_err(error)?;
    let (shapes, meta) = (&source.0, &source.1);
    if !meta.same_tokenizer(tokenizer) {
        return Err(error(format!(
            "`{from}` was trained with the tokenizer {}, this run uses {}: its embeddings mean other tokens",
            meta.tokenizer_record(),
            tokenizer.record()
        )));
    }
    let wanted = crate::checkpoint::param_shapes(&crate::model::Gpt::new(&dfdx::tensor::Cpu::default(), model, 0));
    if let Some(mismatch) = crate::checkpoint::weight_mismatch(shapes, &wanted) {
        return Err(error(format!(
            "`{from}` does not fit this run's model{}: {mismatch}",
            arch_differences(&meta.model.arch, &model.arch)
        )));
    }
    Ok(Some(crate::checkpoint::WarmStart {
        path: from.clone(),
        weights_sha256: meta.model_sha256.clone(),
        step: meta.step,
    }))
}

/// The checkpoints `init_from` names, each read once however many runs start from it: its
/// weights' names and shapes and its metadata, or why it cannot be read.
type WarmSources = HashMap<String, Result<Arc<(Vec<crate::checkpoint::Shaped>, crate::checkpoint::Meta)>, String>>;

/// `from` as read into `sources` (read now if it is not there yet).
fn read_warm_source(
    sources: &mut WarmSources,
    from: &str,
) -> Result<Arc<(Vec<crate::checkpoint::Shaped>, crate::checkpoint::Meta)>, String> {
    let read = || {
        if !crate::checkpoint::is_checkpoint(Path::new(from)) {
            return Err(format!("`{from}` is not a checkpoint folder (it has no meta.json)"));
        }
        crate::checkpoint::read_weights(Path::new(from))
            .and_then(|c| Ok(Arc::new((c.shapes()?, c.meta))))
            .map_err(|e| format!("`{from}` cannot be read: {e:#}"))
    };
    sources.entry(from.to_string()).or_insert_with(read).clone()
}

/// The settings in which the architectures `there` (a checkpoint's) and `here` differ, as
/// " (its n_embd is 32, this run's 64)", or "" when none do.
fn arch_differences(there: &crate::model::ModelOptions, here: &crate::model::ModelOptions) -> String {
    let fields = |arch| match serde_json::to_value(arch) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (there, here) = (fields(there), fields(here));
    let differ: Vec<String> = here
        .iter()
        .filter(|(key, value)| there.get(*key) != Some(*value))
        .map(|(key, value)| {
            let theirs = there
                .get(key)
                .map_or("not set (its default)".to_string(), |v| v.to_string());
            format!("its {key} is {theirs}, this run's {value}")
        })
        .collect();
    if differ.is_empty() {
        String::new()
    } else {
        format!(" ({})", differ.join("; "))
    }
}

/// What a run folder records it started from when its `init_from` named `path`: the start time
/// (UTC, ISO 8601) and warm start of its newest session from there, if any (`Experiment` reads
/// `provenance.json`).
pub type WarmRecords<'a> = &'a dyn Fn(&Path, &str) -> Option<(String, crate::checkpoint::WarmStart)>;

/// The warm start of `spec`'s runs when its `init_from` checkpoint is gone (a source run
/// deleted, moved or pruned since): the newest one its seeds' folders recorded, as the source
/// held it last. A run trained from it stays readable and resumable from its own checkpoints,
/// and a seed that started from older weights is other settings, as it was while the source
/// was there. `None` when no seed recorded one (nothing trained from it: the source is needed).
fn recorded_warm_start(spec: &RunSpec, dirs: &[PathBuf], records: WarmRecords) -> Option<crate::checkpoint::WarmStart> {
    let from = spec.init_from.as_deref()?;
    if crate::checkpoint::is_checkpoint(Path::new(from)) {
        return None;
    }
    let (_, newest) = dirs
        .iter()
        .filter_map(|d| records(d, from))
        .max_by(|a, b| a.0.cmp(&b.0))?;
    crate::events::emit(
        crate::events::Level::Note,
        format!(
            "init_from `{from}` is gone; run `{}` is planned with the weights its folder recorded \
             (step {}, SHA-256 {}): its results stay readable and it resumes from its own checkpoints",
            spec.name,
            newest.step,
            short_hash(&newest.weights_sha256)
        ),
    );
    Some(newest)
}

/// Checks the data-dependent parts of each run and lays out its plan; `records` gives what a
/// run folder recorded of its warm start, for an `init_from` checkpoint that is gone.
pub fn plan(specs: &[RunSpec], runs_dir: &Path, records: WarmRecords) -> Result<Vec<RunPlan>, SpecErrors> {
    let mut corpora: Corpora = HashMap::new();
    let mut warm_sources: WarmSources = HashMap::new();
    let mut errors = same_training(specs);
    let mut plans = vec![];
    for spec in specs {
        let c = &spec.config;
        let req = match corpus_request(spec, runs_dir) {
            Ok(req) => req,
            Err(found) => {
                errors.extend(found);
                continue;
            }
        };
        let data_path = req.path.clone();
        let corpus = match load_corpus(&mut corpora, &req) {
            Ok(loaded) => loaded,
            Err(found) => {
                errors.extend(found.into_iter().map(|e| SpecError {
                    io: e.io,
                    ..spec.error(e.key, e.message)
                }));
                continue;
            }
        };
        let found = data_problems(spec, &corpus, &data_path);
        if !found.is_empty() {
            errors.extend(found);
            continue;
        }
        let schedule = PhaseSchedule::new(c);
        let model = model_of(&c.model, &corpus, &schedule);
        let seeded = spec.seeded();
        let run_dir = runs_dir.join(&spec.experiment).join(&spec.name);
        let dirs: Vec<PathBuf> = spec
            .seeds()
            .into_iter()
            .map(|seed| {
                if seeded {
                    run_dir.join(seed_folder(seed))
                } else {
                    run_dir.clone()
                }
            })
            .collect();
        let init_from = match warm_start(spec, &corpus.tokenizer, &model, &mut warm_sources) {
            Ok(warm) => warm,
            Err(found) => match recorded_warm_start(spec, &dirs, records) {
                Some(recorded) => Some(recorded),
                None => {
                    errors.push(*found);
                    continue;
                }
            },
        };
        for (seed, dir) in spec.seeds().into_iter().zip(dirs) {
            let mut config = c.clone();
            config.experiment.seed = seed;
            plans.push(RunPlan {
                experiment: spec.experiment.clone(),
                name: spec.name.clone(),
                varies: spec.varies.clone(),
                dir,
                data_path: data_path.clone(),
                schedule: schedule.clone(),
                seed,
                seeded,
                init_from: init_from.clone(),
                config,
                train_tokens: corpus.train.len(),
                corpus: corpus.clone(),
            });
        }
    }
    if errors.is_empty() {
        Ok(plans)
    } else {
        Err(SpecErrors(errors).merge_shared(specs.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(phases: &[(usize, usize)]) -> PhaseSchedule {
        PhaseSchedule::constant(phases, 1e-3)
    }

    #[test]
    fn the_work_left_weights_each_phase_by_its_length() {
        let s = schedule(&[(128, 600), (256, 200)]);
        let (short, long) = (step_cost(128), step_cost(256));
        assert!(
            (long / short - 2.46).abs() < 0.01,
            "a step at 256 costs about 2.5 at 128"
        );
        assert_eq!(s.cost_after(0), 600.0 * short + 200.0 * long);
        assert_eq!(s.cost_after(100), 500.0 * short + 200.0 * long);
        assert_eq!(s.cost_after(600), 200.0 * long);
        assert_eq!(s.cost_after(700), 100.0 * long);
        assert_eq!(s.cost_after(800), 0.0);
        assert_eq!(s.cost_after(900), 0.0);
    }
}
