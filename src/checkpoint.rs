//! Atomic save and verified load of a run's state: weights and AdamW moments in safetensors,
//! metadata in JSON beside them.
//!
//! A checkpoint is the folder `checkpoints/step_NNNNNNNN/`. It is written under a `.tmp`
//! name, every file synced, then renamed into place, so a crash leaves either the complete
//! folder or a `.tmp` that is never read. `meta.json`, written last, holds the SHA-256 of both
//! tensor files, so truncation or a flipped bit is caught on load.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use dfdx::prelude::*;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::fsio::{sha256_hex, sync_dir, write_synced};
use crate::model::{Float, HasParams};

/// Why a checkpoint was written; phase-end checkpoints are never pruned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Every `checkpoint_every` steps, or on interrupt.
    Periodic,
    /// The last step of a phase (and so of the run).
    PhaseEnd,
}

/// `meta.json`: everything but the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Layout version of the checkpoint folder.
    pub format: u32,
    /// Steps completed.
    pub step: usize,
    /// Phase of the last completed step.
    pub phase: usize,
    /// Why it was written.
    pub kind: Kind,
    /// A character tokenizer's vocabulary, token id → character (empty for other tokenizers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vocab: Vec<char>,
    /// The tokenizer the run trained with; absent in checkpoints written before tokenizers
    /// existed, which are characters ([`Meta::tokenizer_record`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<crate::data::TokenizerRecord>,
    /// The CPU instruction-set path that trained it (absent on a GPU and in checkpoints
    /// written before paths were recorded): resuming on another path changes the rounding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isa: Option<crate::isa::Isa>,
    /// The architecture, so a checkpoint can be loaded on its own (e.g. to sample).
    pub model: crate::model::ModelConfig,
    /// The settings that determine the run's trajectory, flattened; see `RunPlan::identity`.
    pub identity: BTreeMap<String, String>,
    /// SHA-256 of the identity, for a quick comparison.
    pub identity_sha256: String,
    /// AdamW's update count.
    pub adam_t: u64,
    /// SHA-256 of `model.safetensors`.
    pub model_sha256: String,
    /// SHA-256 of `optimizer.safetensors`.
    pub optimizer_sha256: String,
}

/// What a checkpoint keeps of the optimizer: AdamW's moments, one vector per parameter in the
/// model's visit order, and its update count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OptimizerState {
    /// First moments.
    pub m: Vec<Vec<Float>>,
    /// Second moments.
    pub v: Vec<Vec<Float>>,
    /// Updates applied so far (bias correction uses it).
    pub t: u64,
}

impl Meta {
    /// The metadata of a checkpoint at `step`; the checksums and AdamW's count are filled in
    /// by [`save`].
    pub fn new(
        step: usize,
        phase: usize,
        kind: Kind,
        tokenizer: &crate::data::Tokenizer,
        model: crate::model::ModelConfig,
        identity: BTreeMap<String, String>,
    ) -> Self {
        Self {
            format: FORMAT,
            step,
            phase,
            kind,
            vocab: tokenizer.char_vocab().map(<[char]>::to_vec).unwrap_or_default(),
            tokenizer: Some(tokenizer.record().clone()),
            isa: None,
            model,
            identity_sha256: identity_hash(&identity),
            identity,
            adam_t: 0,
            model_sha256: String::new(),
            optimizer_sha256: String::new(),
        }
    }
}

impl Meta {
    /// The tokenizer the checkpoint was trained with.
    pub fn tokenizer_record(&self) -> crate::data::TokenizerRecord {
        self.tokenizer
            .clone()
            .unwrap_or_else(|| crate::data::TokenizerRecord::chars(self.vocab.len()))
    }

    /// Whether `tokenizer` is the one the checkpoint was trained with (a character vocabulary
    /// must match character for character).
    pub fn same_tokenizer(&self, tokenizer: &crate::data::Tokenizer) -> bool {
        let (a, b) = (self.tokenizer_record(), tokenizer.record());
        (a.name == b.name && a.sha256 == b.sha256 && a.vocab_size == b.vocab_size)
            && tokenizer.char_vocab().unwrap_or_default() == self.vocab.as_slice()
    }
}

/// The checkpoint a run starts from (`init_from`): where it is and which weights it holds, so
/// a source trained again is told from the one a run started with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmStart {
    /// The checkpoint folder, as the spec names it.
    pub path: String,
    /// SHA-256 of its `model.safetensors`.
    pub weights_sha256: String,
    /// The step its run had trained when it was saved.
    pub step: usize,
}

/// Current layout version.
/// 2: `model` holds the architecture as `ModelOptions` under `arch`, and the identity is
/// derived from the config (gptlab 0.1 after the one-way architecture change).
pub const FORMAT: u32 = 2;

/// SHA-256 of an identity map, in key order.
pub fn identity_hash(identity: &BTreeMap<String, String>) -> String {
    sha256_hex(
        serde_json::to_string(identity)
            .expect("a string map serialises")
            .as_bytes(),
    )
}

/// The folder name of the checkpoint at `step`.
pub fn folder_name(step: usize) -> String {
    format!("step_{step:08}")
}

fn to_bytes(values: &[Float]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn serialize(tensors: Vec<(String, Vec<usize>, Vec<u8>)>) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, None)?)
}

/// Test hook, compiled only with the `fault-injection` feature (the test suite's): with
/// `GPTLAB_FAULT=<point>@<step>` in the environment, the process kills itself with SIGKILL at
/// that point, to prove that an interruption there loses nothing; with
/// `GPTLAB_FAULT=sigterm:<point>@<step>` it sends itself SIGTERM there (a stop request). With
/// `GPTLAB_SLOW_STEPS_MS=<ms>`, every `step-end` point sleeps that long, so tests can catch a
/// run mid-way (a second process, a signal from Slurm) without depending on the machine's speed.
#[cfg(feature = "fault-injection")]
pub fn fault_point(point: &str, step: usize) {
    if point == "step-end"
        && let Some(ms) = std::env::var("GPTLAB_SLOW_STEPS_MS").ok().and_then(|v| v.parse().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    if let Ok(spec) = std::env::var("GPTLAB_FAULT")
        && spec == format!("sigterm:{point}@{step}")
    {
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions; the handler
        // gptlab installed turns SIGTERM into a stop request, as from Slurm or a user.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGTERM);
        }
        // The handler runs on its own thread: give it time to set the flag.
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    if let Ok(spec) = std::env::var("GPTLAB_FAULT")
        && spec == format!("{point}@{step}")
    {
        #[cfg(unix)]
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions; SIGKILL is the
        // point of the hook (no destructor or handler may run).
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}

/// Test-only: whether `GPTLAB_POISON` names `<what>@<step>` (`train`, `val` or `eval`), in
/// which case training takes that loss of that step to be NaN — a divergence of each kind on
/// demand, at a chosen step, whatever the machine's rounding.
#[cfg(feature = "fault-injection")]
pub fn poisoned(what: &str, step: usize) -> bool {
    std::env::var("GPTLAB_POISON").is_ok_and(|v| v.split(',').any(|p| p == format!("{what}@{step}")))
}

/// Without the `fault-injection` feature nothing is poisoned.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn poisoned(_what: &str, _step: usize) -> bool {
    false
}

/// Without the `fault-injection` feature the hook is nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fault_point(_point: &str, _step: usize) {}

/// Writes a checkpoint of `model` and the optimizer's state `opt` under `root` (the run's
/// `checkpoints/`); returns its folder.
pub fn save<D: Device<Float>>(
    root: &Path,
    model: &impl HasParams<D>,
    opt: &OptimizerState,
    mut meta: Meta,
) -> Result<PathBuf> {
    fs::create_dir_all(root).with_context(|| format!("creating checkpoint folder {}", root.display()))?;
    let final_dir = root.join(folder_name(meta.step));
    let tmp = root.join(format!("{}.tmp", folder_name(meta.step)));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing stale {}", tmp.display()))?;
    }
    let result = (|| -> Result<()> {
        fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut weights = vec![];
        let mut moments = vec![];
        let mut i = 0;
        model.visit(&mut |p| {
            weights.push((p.name.clone(), p.shape.clone(), to_bytes(&p.value.as_vec())));
            moments.push((format!("m.{}", p.name), p.shape.clone(), to_bytes(&opt.m[i])));
            moments.push((format!("v.{}", p.name), p.shape.clone(), to_bytes(&opt.v[i])));
            i += 1;
        });
        let model_bytes = serialize(weights)?;
        let opt_bytes = serialize(moments)?;
        meta.model_sha256 = sha256_hex(&model_bytes);
        meta.optimizer_sha256 = sha256_hex(&opt_bytes);
        meta.adam_t = opt.t;
        meta.format = FORMAT;
        write_synced(&tmp.join("model.safetensors"), &model_bytes)?;
        fault_point("checkpoint-write", meta.step);
        write_synced(&tmp.join("optimizer.safetensors"), &opt_bytes)?;
        write_synced(&tmp.join("meta.json"), serde_json::to_string_pretty(&meta)?.as_bytes())?;
        sync_dir(&tmp);
        if final_dir.exists() {
            // Re-saving the same step (e.g. after a resume at a phase end): replace it.
            fs::remove_dir_all(&final_dir).with_context(|| format!("replacing {}", final_dir.display()))?;
        }
        fs::rename(&tmp, &final_dir)
            .with_context(|| format!("renaming {} to {}", tmp.display(), final_dir.display()))?;
        sync_dir(root);
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(final_dir)
}

/// Reads and verifies a checkpoint folder's metadata and tensor files.
pub struct Loaded {
    /// The metadata.
    pub meta: Meta,
    model_bytes: Vec<u8>,
    /// The optimiser's moments: `None` when only the weights were read ([`read_weights`]).
    opt_bytes: Option<Vec<u8>>,
}

/// Reads `dir` and checks both checksums; any mismatch or missing file is an error.
pub fn read(dir: &Path) -> Result<Loaded> {
    let mut loaded = read_weights(dir)?;
    loaded.opt_bytes = Some(read_verified(
        dir,
        "optimizer.safetensors",
        &loaded.meta.optimizer_sha256,
    )?);
    Ok(loaded)
}

/// Reads `dir`'s metadata and weights and checks the weights' checksum; the optimiser's
/// moments are not read (a warm start, sampling and evaluation need only the weights).
pub fn read_weights(dir: &Path) -> Result<Loaded> {
    let meta = read_meta_checked(dir)?;
    let model_bytes = read_verified(dir, "model.safetensors", &meta.model_sha256)?;
    Ok(Loaded {
        meta,
        model_bytes,
        opt_bytes: None,
    })
}

/// Whether `dir` is a checkpoint folder: it holds `meta.json`, written last (what it holds is
/// verified when it is read).
pub fn is_checkpoint(dir: &Path) -> bool {
    dir.join("meta.json").is_file()
}

/// `dir/meta.json`, refused when another gptlab version wrote it.
fn read_meta_checked(dir: &Path) -> Result<Meta> {
    let meta_path = dir.join("meta.json");
    let text = crate::fsio::read_text_capped(&meta_path, crate::fsio::MAX_META_BYTES, "checkpoint metadata")?;
    // The layout version first, so a checkpoint of another gptlab says so instead of failing
    // to parse as if it were corrupt.
    let format = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("format")?.as_u64());
    if let Some(format) = format.filter(|&f| f != u64::from(FORMAT)) {
        bail!(
            "{}: checkpoint format {format} (written by another gptlab version) is not the supported {FORMAT}; \
             --fresh starts the run over",
            dir.display()
        );
    }
    serde_json::from_str(&text).with_context(|| format!("{} is not valid checkpoint metadata", meta_path.display()))
}

/// The bytes of `dir/file`, whose SHA-256 must be `sha256`.
fn read_verified(dir: &Path, file: &str, sha256: &str) -> Result<Vec<u8>> {
    let bytes = fs::read(dir.join(file)).with_context(|| format!("reading {}/{file}", dir.display()))?;
    ensure!(
        sha256_hex(&bytes) == sha256,
        "{}/{file} is corrupt (checksum mismatch)",
        dir.display()
    );
    Ok(bytes)
}

/// A tensor's name and shape.
pub type Shaped = (String, Vec<usize>);

/// The learned position table may differ in length from the checkpoint's (a schedule extended
/// with a longer phase, a warm start at another length): its saved rows fill the table's first
/// rows, rows beyond the table are dropped (as nanoGPT's `crop_block_size`), and rows beyond
/// the saved ones keep what the model holds.
fn may_change_rows(name: &str) -> bool {
    name.ends_with("wpe.weight")
}

/// Why a saved tensor of shape `saved` cannot fill the parameter `name` of shape `wanted`.
fn shape_problem(name: &str, saved: &[usize], wanted: &[usize]) -> Option<String> {
    let rows_differ = may_change_rows(name) && saved.len() == 2 && wanted.len() == 2 && saved[1] == wanted[1];
    (saved != wanted && !rows_differ)
        .then(|| format!("tensor `{name}` has shape {saved:?}, the model needs {wanted:?}"))
}

/// Why the tensors `saved` cannot be loaded into a model whose parameters are `wanted`: the
/// tensors the model lacks, the parameters the checkpoint lacks, and the first shape that does
/// not fit with how many others do not. `None` when they load.
pub fn weight_mismatch(saved: &[Shaped], wanted: &[Shaped]) -> Option<String> {
    let names = |of: &[Shaped], absent_from: &[Shaped]| -> Vec<String> {
        of.iter()
            .filter(|(n, _)| !absent_from.iter().any(|(m, _)| m == n))
            .map(|(n, _)| n.clone())
            .collect()
    };
    let mut problems = vec![];
    let extra = names(saved, wanted);
    if !extra.is_empty() {
        problems.push(format!("the checkpoint has tensors this model lacks: {extra:?}"));
    }
    let missing = names(wanted, saved);
    if !missing.is_empty() {
        problems.push(format!("the model has parameters the checkpoint lacks: {missing:?}"));
    }
    let misfits: Vec<String> = wanted
        .iter()
        .filter_map(|(name, want)| {
            let (_, have) = saved.iter().find(|(n, _)| n == name)?;
            shape_problem(name, have, want)
        })
        .collect();
    if let Some(first) = misfits.first() {
        problems.push(match misfits.len() - 1 {
            0 => first.clone(),
            more => format!("{first} (and {more} more tensors of other shapes)"),
        });
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Overwrites `out` (which holds the model's current values) with the saved tensor `name`.
fn copy_into(st: &SafeTensors<'_>, name: &str, shape: &[usize], out: &mut [Float]) -> Result<()> {
    let view = st.tensor(name).with_context(|| format!("tensor `{name}` is missing"))?;
    ensure!(
        view.dtype() == Dtype::F32,
        "tensor `{name}` is {:?}, not F32",
        view.dtype()
    );
    if let Some(problem) = shape_problem(name, view.shape(), shape) {
        bail!(problem);
    }
    // Row-major with equal rows: the shorter of the two holds the rows both have.
    let n = out.len().min(view.data().len() / 4);
    for (o, c) in out[..n].iter_mut().zip(view.data().chunks_exact(4)) {
        *o = Float::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    Ok(())
}

impl Loaded {
    /// Every saved weight's name and shape.
    pub fn shapes(&self) -> Result<Vec<Shaped>> {
        let st = SafeTensors::deserialize(&self.model_bytes).context("parsing model.safetensors")?;
        Ok(tensor_shapes(&st))
    }

    /// Copies the weights into `model`; every parameter must be present with a shape that fits.
    pub fn load_weights<D: Device<Float>>(&self, model: &mut impl HasParams<D>) -> Result<()> {
        let st = SafeTensors::deserialize(&self.model_bytes).context("parsing model.safetensors")?;
        if let Some(mismatch) = weight_mismatch(&tensor_shapes(&st), &param_shapes(model)) {
            bail!(mismatch);
        }
        let mut error = None;
        model.visit_mut(&mut |p| {
            if error.is_some() {
                return;
            }
            let mut buf = p.value.as_vec();
            match copy_into(&st, &p.name, &p.shape, &mut buf) {
                Ok(()) => p.value.copy_from(&buf),
                Err(e) => error = Some(e),
            }
        });
        error.map_or(Ok(()), Err)
    }

    /// Copies the weights into `model` and the moments and step count into `opt`.
    pub fn load_all<D: Device<Float>>(&self, model: &mut impl HasParams<D>, opt: &mut OptimizerState) -> Result<()> {
        self.load_weights(model)?;
        let opt_bytes = self
            .opt_bytes
            .as_deref()
            .context("the checkpoint was read without its optimizer state")?;
        let st = SafeTensors::deserialize(opt_bytes).context("parsing optimizer.safetensors")?;
        for (i, (name, shape)) in param_shapes(model).iter().enumerate() {
            copy_into(&st, &format!("m.{name}"), shape, &mut opt.m[i])?;
            copy_into(&st, &format!("v.{name}"), shape, &mut opt.v[i])?;
        }
        opt.t = self.meta.adam_t;
        Ok(())
    }
}

/// Every tensor's name and shape in a safetensors file.
fn tensor_shapes(st: &SafeTensors<'_>) -> Vec<Shaped> {
    st.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect()
}

/// Every parameter's name and shape, in `model`'s order.
pub fn param_shapes<D: Device<Float>>(model: &impl HasParams<D>) -> Vec<Shaped> {
    let mut shapes = vec![];
    model.visit(&mut |p| shapes.push((p.name.clone(), p.shape.clone())));
    shapes
}

/// Checkpoint folders under `root`, newest first (`.tmp` folders are ignored).
pub fn list(root: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = fs::read_dir(root) else {
        return vec![];
    };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step_")?.parse::<usize>().ok()?;
            e.path().is_dir().then(|| (step, e.path()))
        })
        .collect();
    found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    found
}

/// Removes periodic checkpoints beyond the newest `keep`; phase-end checkpoints stay.
pub fn prune(root: &Path, keep: usize) -> Result<()> {
    let periodic: Vec<PathBuf> = list(root)
        .into_iter()
        .filter(|(_, dir)| read_meta(dir).is_some_and(|m| m.kind == Kind::Periodic))
        .map(|(_, dir)| dir)
        .collect();
    for dir in periodic.into_iter().skip(keep) {
        fs::remove_dir_all(&dir).with_context(|| format!("pruning {}", dir.display()))?;
    }
    Ok(())
}

/// The metadata of a checkpoint folder, unverified (for listing and pruning).
pub fn read_meta(dir: &Path) -> Option<Meta> {
    let path = dir.join("meta.json");
    serde_json::from_str(
        &crate::fsio::read_text_capped(&path, crate::fsio::MAX_META_BYTES, "checkpoint metadata").ok()?,
    )
    .ok()
}
