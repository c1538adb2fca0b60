//! A run's identity: the settings that decide what it learns, flattened to `key → value`,
//! compared with what a checkpoint or a session recorded ([`RunPlan::identity_diff`],
//! [`identity_at`]), and runs of an experiment that would train the same thing
//! ([`same_training`]).

use std::collections::BTreeMap;

use super::RunPlan;
use crate::format::short_hash;
use crate::schedule::ScheduleKind;
use crate::spec::{RunSpec, SpecError, flatten};

/// `[train]` keys that do not change what a run learns (evaluation and checkpoint
/// bookkeeping), and `lr`, which enters the identity per phase as `phase.N.lr`. Every other
/// key, including any added later, is part of a run's identity.
const NOT_IDENTITY: &[&str] = &[
    "train.micro_batch_size",
    "train.eval_every",
    "train.eval_batches",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.lr",
];

/// `key → value` of every leaf of `value` (a serialised section), under `prefix`.
fn flat_strings(prefix: &str, value: impl serde::Serialize) -> Vec<(String, String)> {
    let table = match toml::Value::try_from(value) {
        Ok(toml::Value::Table(t)) => t,
        other => panic!("a config section serialises to a table, not {other:?}"),
    };
    flatten(&table, prefix)
        .into_iter()
        .map(|(k, v)| {
            let shown = match v {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, shown)
        })
        .collect()
}

impl RunPlan {
    /// The settings that determine the run's trajectory through `step`, flattened to
    /// `key → value`: a checkpoint at `step` can resume this plan only if they are equal.
    ///
    /// Derived from the config itself: every model option (resolved, so an unset default
    /// equals its written-out value) and every `[train]` key but bookkeeping
    /// ([`NOT_IDENTITY`]). Left out on purpose: the block size (a longer later phase only
    /// grows the position table) and phases not yet reached (so a schedule can be extended
    /// after the fact).
    pub fn identity(&self, step: usize) -> BTreeMap<String, String> {
        let inert = self.inert_keys();
        let mut id: BTreeMap<String, String> = flat_strings("model", self.config.model.resolved())
            .into_iter()
            .chain(flat_strings("train", &self.config.train))
            .filter(|(k, _)| !NOT_IDENTITY.contains(&k.as_str()) && !inert.contains(k))
            .collect();
        let mut put = |k: &str, v: String| {
            id.insert(k.to_string(), v);
        };
        put("model.vocab_size", self.corpus.tokenizer.vocab_size().to_string());
        for (k, v) in self.data_identity() {
            put(k, v);
        }
        // A decaying run-wide schedule's rates depend on how many steps it spans: a run
        // trained for one length cannot go on as another.
        if self.schedule.run_wide.depends_on_length() {
            put("schedule.steps", self.schedule.run_wide.steps.to_string());
        }
        put("experiment.seed", self.seed.to_string());
        put(
            "init_from",
            self.init_from.as_ref().map(|w| w.path.clone()).unwrap_or_default(),
        );
        // Its content too: a source run trained again gives other weights at the same path.
        if let Some(warm) = &self.init_from {
            put(INIT_WEIGHTS, warm.weights_sha256.clone());
        }
        for p in self.schedule.phases.iter().filter(|p| p.first_step <= step) {
            let done = p.steps.min(step + 1 - p.first_step);
            put(&format!("phase.{}.seq_len", p.index), p.seq_len.to_string());
            // The peak, as before schedules existed; a phase's own decaying schedule or warmup
            // adds its settings.
            put(&format!("phase.{}.lr", p.index), p.lr.peak.to_string());
            if p.own_schedule && p.lr.kind != ScheduleKind::Constant {
                put(&format!("phase.{}.schedule", p.index), p.lr.kind.to_string());
            }
            if p.own_schedule && p.lr.warmup > 0 {
                put(&format!("phase.{}.warmup_steps", p.index), p.lr.warmup.to_string());
            }
            put(&format!("phase.{}.steps_done", p.index), done.to_string());
        }
        id
    }

    /// The model options that do nothing to this run ([`ModelOptions::inert`]), as identity
    /// keys: `rope_base` without RoPE changes no weight it learns, so changing it leaves a
    /// trained run current.
    ///
    /// [`ModelOptions::inert`]: crate::model::ModelOptions::inert
    fn inert_keys(&self) -> Vec<String> {
        let inert = self.config.model.inert().into_iter();
        inert.map(|(key, _)| format!("model.{key}")).collect()
    }

    /// The data's part of the identity: a run's data is its content, not its path (the
    /// SHA-256 of its file, or of a folder's files), the split, the format and the tokenizer.
    fn data_identity(&self) -> Vec<(&'static str, String)> {
        let (c, d) = (&self.corpus, &self.config.data);
        let t = c.tokenizer.record();
        let mut id = vec![
            ("data.sha256", c.sha256.clone()),
            ("data.format", format!("{:?}", d.format).to_lowercase()),
            ("data.tokenizer", t.name.clone()),
        ];
        // A token file's bytes are ids only under a width: the same file read as u16 and as
        // u32 is two corpora.
        if d.format == crate::data::Format::Tokens {
            id.push(("data.dtype", d.dtype.unwrap_or_default().to_string()));
        }
        // Of JSON Lines, the text is the field's: another field is another corpus.
        if d.format == crate::data::Format::Jsonl {
            id.push(("data.text_field", d.text_field().to_string()));
        }
        match &c.val_sha256 {
            Some(val) => id.push(("data.val_sha256", val.clone())),
            None => id.push(("data.val_fraction", d.val_fraction.to_string())),
        }
        if let Some(sha) = &t.sha256 {
            id.push(("data.tokenizer_sha256", sha.clone()));
        }
        id
    }

    /// SHA-256 of the settings the whole run trains with (its identity at its last step):
    /// written into each Slurm task by `gptlab submit`, so a task finds a spec changed since.
    pub fn settings_sha256(&self) -> String {
        crate::checkpoint::identity_hash(&self.identity(self.schedule.total_steps()))
    }

    /// What differs between a checkpoint's identity `saved` (written at `step`) and this plan,
    /// one line per setting, in the spec's words: empty when the checkpoint can resume it.
    pub fn identity_diff(&self, saved: &BTreeMap<String, String>, step: usize) -> Vec<String> {
        self.identity_diff_of(saved, step, "the checkpoint")
    }

    /// What differs between `saved`, the identity results up to `step` were trained with
    /// (`what`: the checkpoint, the last metrics row), and this plan.
    pub fn identity_diff_of(&self, saved: &BTreeMap<String, String>, step: usize, what: &str) -> Vec<String> {
        let now = self.identity(step);
        let mut saved = with_later_defaults(saved, &now);
        // Recorded by earlier gptlab builds, which held runs to them.
        for key in self.inert_keys() {
            saved.remove(&key);
        }
        let saved = &saved;
        let keys: std::collections::BTreeSet<&String> = saved.keys().chain(now.keys()).collect();
        let show = |v: Option<&String>| v.map_or_else(|| "(not set)".to_string(), |s| format!("`{s}`"));
        let mut phase_length_said = false;
        keys.into_iter()
            .filter(|k| saved.get(*k) != now.get(*k))
            .filter_map(|k| {
                let (was, is) = (saved.get(k), now.get(k));
                let phase = k.strip_prefix("phase.").and_then(|rest| rest.split_once('.'));
                let line = match (phase, is) {
                    // Once one phase changed length the later ones shift too: say it once.
                    (Some(_), Some(_)) if k.ends_with(".steps_done") && phase_length_said => return None,
                    (Some((i, "steps_done")), Some(_)) => {
                        phase_length_said = true;
                        let steps = i.parse::<usize>().ok().and_then(|i| self.schedule.phases.get(i)).map(|p| p.steps);
                        format!(
                            "phase {i} had run {} steps at {what} (step {step}), but the spec now makes it \
                             {} steps long: a phase that has run cannot change length; add a [[phase]] at the end instead",
                            was.map_or("no", |s| s.as_str()),
                            steps.map_or_else(|| "?".to_string(), |s| s.to_string())
                        )
                    }
                    (Some((i, _)), None) => {
                        format!("phase {i} ran with {k} = {}, the spec no longer has a phase {i}", show(was))
                    }
                    _ if k == INIT_WEIGHTS => self.init_weights_changed(was),
                    _ if k == "schedule.steps" => format!(
                        "the run-wide `{}` learning-rate schedule spanned {} steps when trained, the spec now makes it {}: \
                         the steps already trained had rates computed from the old length. Give an added [[phase]] a \
                         schedule of its own (`lr`, `schedule` or `warmup_steps` in it), retrain with --fresh, or use a new experiment name",
                        self.schedule.run_wide.kind,
                        was.map_or("no", |s| s.as_str()),
                        is.map_or("no", |s| s.as_str()),
                    ),
                    _ => format!("{k}: was {} when trained, the spec now says {}", show(was), show(is)),
                };
                Some(line)
            })
            .collect()
    }

    /// Why a checkpoint that started from the weights `was` (SHA-256) cannot go on from
    /// `init_from`'s weights now.
    fn init_weights_changed(&self, was: Option<&String>) -> String {
        let Some(now) = &self.init_from else {
            return "the run started from init_from's weights, the spec no longer has an init_from".to_string();
        };
        let then = match was {
            Some(sha) => format!("SHA-256 {}… then", short_hash(sha)),
            None => "not recorded by the gptlab that started it".to_string(),
        };
        format!(
            "init_from `{}` holds other weights than this run started from ({then}, {}… now): its run was trained \
             again. --fresh trains this run from the new weights; a new run name keeps both",
            now.path,
            short_hash(&now.weights_sha256)
        )
    }
}

/// `whole`, a run's identity through its last step ([`RunPlan::identity`] at the total), as
/// that identity was at `step`: the phases not begun by then left out and the one under way
/// cut to the steps it had run. The phases' lengths are read from `whole` itself, so this is
/// the identity of the plan that trained, not of the one the spec gives now.
pub fn identity_at(whole: &BTreeMap<String, String>, step: usize) -> BTreeMap<String, String> {
    let mut at = whole.clone();
    let mut first = 1;
    for i in 0.. {
        let done_key = format!("phase.{i}.steps_done");
        let Some(steps) = whole.get(&done_key).and_then(|s| s.parse::<usize>().ok()) else {
            break;
        };
        if first > step {
            let prefix = format!("phase.{i}.");
            at.retain(|k, _| !k.starts_with(&prefix));
        } else {
            at.insert(done_key, steps.min(step + 1 - first).to_string());
        }
        first += steps;
    }
    at
}

/// The identity key of the SHA-256 of the weights `init_from` starts from.
const INIT_WEIGHTS: &str = "init_from.weights_sha256";

/// Identity keys added after checkpoints were first written, with the value every earlier
/// checkpoint had: such a checkpoint still resumes the run it was written for.
const LATER_KEYS: [(&str, &str); 4] = [
    ("data.tokenizer", "char"),
    ("data.format", "text"),
    ("train.schedule", "constant"),
    ("train.warmup_steps", "0"),
];

/// Identity keys added later whose value an earlier checkpoint cannot tell: one without the
/// key is not held to it. `data.dtype`: a token file's width, read as the spec said then.
const UNRECORDED_KEYS: [&str; 1] = ["data.dtype"];

/// `saved` with [`LATER_KEYS`] it lacks filled in, and [`UNRECORDED_KEYS`] it lacks taken
/// from `now`, the identity it is compared with.
fn with_later_defaults(saved: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut filled = saved.clone();
    for (k, v) in LATER_KEYS {
        filled.entry(k.to_string()).or_insert_with(|| v.to_string());
    }
    for k in UNRECORDED_KEYS {
        if let Some(v) = now.get(k) {
            filled.entry(k.to_string()).or_insert_with(|| v.clone());
        }
    }
    filled
}

/// Every setting of a run, flattened, with the model's derived sizes written out and the
/// options that have no effect on it left out: two runs with equal settings here train the
/// same model on the same data with the same seed, and measure it the same way.
fn effective_settings(spec: &RunSpec) -> BTreeMap<String, String> {
    let arch = &spec.config.model;
    let mut out: BTreeMap<String, String> = flat_strings("", &spec.config).into_iter().collect();
    out.retain(|k, _| !k.starts_with("model."));
    out.extend(flat_strings("model", arch.resolved()));
    for (key, _) in arch.inert() {
        out.remove(&format!("model.{key}"));
    }
    out.insert("init_from".into(), spec.init_from.clone().unwrap_or_default());
    out
}

/// Runs that would train exactly what an earlier run of the experiment trains: a comparison
/// of the two can only find noise, under a label (`rope_base=500000.0`) that did nothing. An
/// error at the later run, naming the settings that set them apart on paper and why those do
/// nothing.
pub(super) fn same_training(specs: &[RunSpec]) -> Vec<SpecError> {
    let settings: Vec<BTreeMap<String, String>> = specs.iter().map(effective_settings).collect();
    let mut errors = vec![];
    for (j, later) in specs.iter().enumerate() {
        let Some(earlier) = (0..j).find(|&i| settings[i] == settings[j]).map(|i| &specs[i]) else {
            continue;
        };
        let written = |spec: &RunSpec, key: &str| {
            let options = flat_strings("", &spec.config.model);
            options.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
        };
        let differs = later
            .config
            .model
            .inert()
            .into_iter()
            .find(|(key, _)| written(earlier, key) != written(later, key));
        let same = format!(
            "runs `{}` and `{}` would train the same model the same way",
            earlier.name, later.name
        );
        errors.push(match differs {
            Some((key, why)) => later.error(
                &format!("model.{key}"),
                format!("{same}: they differ only in model.{key}, which {why}; leave it out of the sweep or runs"),
            ),
            None => later.error_at_name(format!(
                "{same}: their settings are equal, once defaults are written out (`n_kv_head` unset is \
                 n_head, …); repeat a run over seeds with [experiment] seeds"
            )),
        });
    }
    errors
}
