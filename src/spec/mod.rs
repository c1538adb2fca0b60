//! The spec file: parsing with line-accurate errors, defaults, run and sweep expansion,
//! and the checks that need no data.
//!
//! A run's configuration is built in layers, each overriding the one before:
//! the file's sections → its `[[run]]` entry → its `[sweep]` point → `--set` arguments.
//! The merged table is then deserialised into [`RunConfig`] and checked; every error is
//! traced back to the layer, and line, that set the offending key.

mod error;
mod extends;
mod overrides;
mod sections;
mod source;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use error::{Origin, SpecError, SpecErrors};
pub use overrides::{SetArg, flatten};
pub use sections::{
    DataSection, EvalMode, EvalSection, ExperimentSection, MeasureSection, ModelSection, PhaseSection, ReportSection,
    RunConfig, SampleSection, SlurmSection, TrainSection,
};

pub use validate::{TimeLimit, slurm_mem_bytes, slurm_time_limit};

use overrides::{axis_labels, normalized, set_dotted, value_label};
use source::{SourceMap, segments};

/// The shape of the file itself, checked before any expansion.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    #[allow(dead_code)]
    experiment: ExperimentSection,
    #[serde(default)]
    #[allow(dead_code)]
    data: DataSection,
    #[serde(default)]
    #[allow(dead_code)]
    model: ModelSection,
    #[serde(default)]
    #[allow(dead_code)]
    train: TrainSection,
    #[serde(default)]
    #[allow(dead_code)]
    phase: Vec<PhaseSection>,
    #[serde(default)]
    #[allow(dead_code)]
    sample: SampleSection,
    #[serde(default)]
    #[allow(dead_code)]
    report: ReportSection,
    #[serde(default)]
    #[allow(dead_code)]
    measure: MeasureSection,
    #[serde(default)]
    #[allow(dead_code)]
    eval: EvalSection,
    #[serde(default)]
    #[allow(dead_code)]
    slurm: SlurmSection,
    #[serde(default)]
    run: Vec<RawRun>,
    #[serde(default)]
    sweep: toml::Table,
}

/// A `[[run]]` entry: a name plus overrides of any section.
#[derive(Deserialize, Serialize)]
struct RawRun {
    name: String,
    #[serde(default)]
    init_from: Option<String>,
    #[serde(flatten)]
    overrides: toml::Table,
}

/// A `[[run]]` entry (or the implicit single run) before sweep expansion.
struct RunEntry {
    name: String,
    index: Option<usize>,
    overrides: Vec<(String, toml::Value)>,
    init_from: Option<String>,
}

/// The spec's text and spans, shared by every run expanded from it.
struct Source {
    path: PathBuf,
    map: SourceMap,
    /// What the file wrote itself (without its bases).
    own: toml::Table,
    /// The specs it extends, nearest first.
    bases: Vec<extends::Base>,
}

/// Why a run could not be resolved, and its settings where every key could be read anyway
/// (for the checks of its data paths).
type Unresolved<T> = (Option<Box<T>>, Vec<SpecError>);

/// A parsed spec file, not yet expanded into runs.
pub struct SpecFile {
    source: Arc<Source>,
    /// The experiment's name (its output folder).
    pub name: String,
    base: toml::Table,
    runs: Vec<RawRun>,
    sweep: Vec<(String, Vec<toml::Value>)>,
    /// The errors on keys of the file that could not be read (unknown, or of a wrong type;
    /// no key: the file itself), taken out of `base` and `runs`; every expansion reports them
    /// with the problems of the rest, so such a file never expands.
    read_errors: Vec<SpecError>,
}

/// Which layers a run's values came from, to trace an error to its line.
#[derive(Clone)]
struct Layers {
    run_index: Option<usize>,
    run_keys: Vec<String>,
    sweep_keys: Vec<String>,
    sets: Vec<SetArg>,
}

/// One fully resolved run.
#[derive(Clone)]
pub struct RunSpec {
    /// Unique within the experiment; its folder name.
    pub name: String,
    /// The experiment it belongs to.
    pub experiment: String,
    /// `(short key, value)` for each setting that differs between this experiment's runs.
    pub varies: Vec<(String, String)>,
    /// Checkpoint to start from (weights only).
    pub init_from: Option<String>,
    /// The resolved configuration.
    pub config: RunConfig,
    source: Arc<Source>,
    layers: Layers,
    /// Whether errors should name the run (not when the file defines a single, unnamed run).
    named: bool,
}

fn related(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}.")) || b.starts_with(&format!("{a}."))
}

impl Source {
    fn error(&self, origin: Origin, key: Option<&str>, run: Option<&str>, message: impl Into<String>) -> SpecError {
        SpecError {
            file: self.path.clone(),
            origin,
            key: key.map(str::to_string),
            run: run.map(str::to_string),
            message: message.into(),
            io: false,
        }
    }

    /// Where `key` (under `dotted_prefix`) was written: in this file, or else in the first
    /// base of the chain that wrote it.
    fn line(&self, dotted_prefix: &[source::Seg], key: &str) -> Origin {
        let mut path = dotted_prefix.to_vec();
        path.extend(segments(key));
        if !extends::contains(&self.own, &path)
            && let Some(base) = self.bases.iter().find(|b| extends::contains(&b.table, &path))
        {
            return base
                .map
                .line_of(&path)
                .map_or(Origin::File, |l| Origin::Base(base.path.clone(), l));
        }
        self.map.line_of(&path).map(Origin::Line).unwrap_or(Origin::File)
    }

    /// Of `keys`, the one set by the most specific layer (the first on a tie).
    fn most_specific(&self, layers: &Layers, keys: &[String]) -> String {
        let rank = |key: &str| {
            if layers.sets.iter().any(|s| related(&s.key, key)) {
                3
            } else if layers.sweep_keys.iter().any(|s| related(s, key)) {
                2
            } else if layers.run_keys.iter().any(|r| related(r, key)) {
                1
            } else {
                0
            }
        };
        let best = keys.iter().map(|k| rank(k)).max().unwrap_or(0);
        keys.iter().find(|k| rank(k) == best).cloned().unwrap_or_default()
    }

    /// Where `key` was set for a run with these layers.
    /// An error of the file's own text on `key` (empty: the whole file).
    fn file_error(&self, key: &str, message: String) -> SpecError {
        match key {
            "" => self.error(Origin::File, None, None, message),
            _ => self.error(self.line(&[], key), Some(key), None, message),
        }
    }

    fn origin(&self, layers: &Layers, key: &str) -> Origin {
        if let Some(set) = layers.sets.iter().rev().find(|s| related(&s.key, key)) {
            return Origin::Cli(format!("--set {}", set.raw));
        }
        if let Some(sk) = layers.sweep_keys.iter().find(|s| related(s, key)) {
            let whole = self
                .map
                .line_of(&[source::Seg::Key("sweep".into()), source::Seg::Key(sk.clone())]);
            return whole
                .map(Origin::Line)
                .unwrap_or_else(|| self.line(&[source::Seg::Key("sweep".into())], sk));
        }
        if let Some(i) = layers.run_index
            && layers.run_keys.iter().any(|r| related(r, key))
        {
            return self.line(&[source::Seg::Key("run".into()), source::Seg::Index(i)], key);
        }
        self.line(&[], key)
    }
}

/// What [`deserialize_all`] found in a table.
struct Deserialized<T> {
    /// The value read once every offending key was taken out; `None` when even that failed
    /// (a required field missing).
    value: Option<T>,
    /// The table without the offending keys.
    table: toml::Table,
    /// Each problem as `(dotted key, message in the spec's words)`.
    problems: Vec<(String, String)>,
}

/// Deserialises `table` as `T`, collecting every error: on each, the offending key is taken out
/// and the rest tried again, so every misspelling and wrong type is found in one pass.
fn deserialize_all<T: serde::de::DeserializeOwned + Serialize>(table: &toml::Table) -> Deserialized<T> {
    let mut table = table.clone();
    let mut found = vec![];
    for _ in 0..200 {
        match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(table.clone())) {
            Ok(value) => {
                let arrays = arrays_read_as_tables(&table, &value);
                let wrong = "wrong type: got an array, expected a table (a [section] or { key = value })";
                found.extend(arrays.iter().map(|key| (key.clone(), wrong.to_string())));
                if !arrays.is_empty() && arrays.iter().all(|key| overrides::remove_dotted(&mut table, key)) {
                    continue;
                }
                return Deserialized {
                    value: arrays.is_empty().then_some(value),
                    table,
                    problems: found,
                };
            }
            Err(e) => {
                let key = serde_key(e.path()).unwrap_or_default();
                // A wrong value taken out leaves its field missing: one problem, said once.
                let taken_out = |field: &str| found.iter().any(|(k, _)| *k == overrides::join_key(&key, field));
                let missing = e.inner().message().strip_prefix("missing field `");
                if !missing.and_then(|m| m.strip_suffix('`')).is_some_and(taken_out) {
                    found.push((key.clone(), error::humanize(e.inner().message())));
                }
                if key.is_empty() || !overrides::remove_dotted(&mut table, &key) {
                    break;
                }
            }
        }
    }
    Deserialized {
        value: None,
        table,
        problems: found,
    }
}

/// The keys where `table` has an array and `value` (what serde made of it, written out again)
/// a table: serde reads a struct from an array by position (`train = [1]` read as
/// `batch_size = 1`), which no spec means.
fn arrays_read_as_tables<T: Serialize>(table: &toml::Table, value: &T) -> Vec<String> {
    fn walk(written: &toml::Value, read: &toml::Value, key: String, out: &mut Vec<String>) {
        use toml::Value::{Array, Table};
        match (written, read) {
            (Array(_), Table(_)) => out.push(key),
            (Table(w), Table(r)) => {
                for (k, v) in w {
                    if let Some(rv) = r.get(k) {
                        walk(v, rv, overrides::join_key(&key, k), out);
                    }
                }
            }
            (Array(w), Array(r)) => {
                for (i, (v, rv)) in w.iter().zip(r).enumerate() {
                    walk(v, rv, overrides::join_key(&key, &i.to_string()), out);
                }
            }
            _ => {}
        }
    }
    let mut out = vec![];
    if let Ok(read) = toml::Value::try_from(value) {
        walk(&toml::Value::Table(table.clone()), &read, String::new(), &mut out);
    }
    out
}

/// The section a dotted key is in (`model` for `model.n_head` and for a run's
/// `run.2.model.n_head`; `phase` for `phase.1.steps`); empty for the file itself.
fn section_of(key: &str) -> &str {
    let mut parts = key.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("run"), Some(i), Some(section)) if i.parse::<usize>().is_ok() => section,
        (Some(section), _, _) => section,
        _ => "",
    }
}

/// Whether a check's problem on `keys` can be trusted while the keys in `unread` could not be
/// read (a wrong type, a misspelling): a value taken out falls back to its default, and a
/// check of its section would judge the default, not what the user wrote. So only problems
/// wholly in other sections are reported beside the read errors.
fn clear_of(unread: &[&str], keys: &[String]) -> bool {
    !unread
        .iter()
        .any(|u| u.is_empty() || keys.iter().any(|k| section_of(k) == section_of(u)))
}

/// Turns a serde error on `path` into a key for the message.
fn serde_key(path: &serde_path_to_error::Path) -> Option<String> {
    let s = path.to_string();
    (s != "." && !s.is_empty()).then(|| overrides::dotted_index(&s))
}

impl SpecFile {
    /// Reads and parses `path`, checking syntax, key names and value types of the whole file.
    pub fn load(path: &Path) -> Result<Self, SpecErrors> {
        let text =
            crate::fsio::read_text_capped_or_why(path, crate::fsio::MAX_SPEC_BYTES).map_err(|why| SpecError {
                file: path.to_path_buf(),
                origin: Origin::File,
                key: None,
                run: None,
                message: format!("the spec {why}"),
                io: false,
            })?;
        Self::parse(path, &text)
    }

    /// Parses spec text; `path` names it in errors and gives the default experiment name.
    pub fn parse(path: &Path, text: &str) -> Result<Self, SpecErrors> {
        let (map, own) = extends::parse_toml(path, text).map_err(|e| *e)?;
        let mut seen = vec![std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())];
        let (mut base, bases) = extends::resolve(path, &map, own.clone(), &mut seen).map_err(|e| *e)?;
        // A file's experiment is its own: a base's name would send every spec extending it
        // into one folder.
        if own.get("experiment").and_then(|e| e.get("name")).is_none()
            && let Some(toml::Value::Table(e)) = base.get_mut("experiment")
        {
            e.remove("name");
        }
        let source = Arc::new(Source {
            path: path.to_path_buf(),
            map,
            own,
            bases,
        });
        // Every unknown key and wrong type of the file at once, each on its line. The rest of
        // the file is still expanded and checked, so its other problems come in the same report.
        let read = deserialize_all::<RawFile>(&base);
        let read_errors: Vec<SpecError> = read
            .problems
            .into_iter()
            .map(|(key, msg)| source.file_error(&key, msg))
            .collect();
        let Some(raw) = read.value else {
            return Err(SpecErrors(read_errors));
        };
        let mut base = read.table;
        base.remove("run");
        base.remove("sweep");

        let name = match base
            .get("experiment")
            .and_then(|e| e.get("name"))
            .and_then(|n| n.as_str())
        {
            Some(n) => n.to_string(),
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "experiment".into()),
        };
        let mut errors = vec![];
        if let Err(msg) = check_experiment_name(&name) {
            errors.push(source.error(source.line(&[], "experiment.name"), Some("experiment.name"), None, msg));
        }

        let sweep = sweep_axes(&source, &raw.sweep, &mut errors);
        if !errors.is_empty() {
            return Err(SpecErrors(read_errors.into_iter().chain(errors).collect()));
        }
        Ok(Self {
            source,
            name,
            base,
            runs: raw.run,
            sweep,
            read_errors,
        })
    }

    /// The spec file's path.
    pub fn path(&self) -> &Path {
        &self.source.path
    }

    /// The specs this one extends, nearest first, with their SHA-256 (for provenance).
    pub fn bases(&self) -> Vec<(PathBuf, String)> {
        self.source
            .bases
            .iter()
            .map(|b| (b.path.clone(), b.sha256.clone()))
            .collect()
    }

    /// Whether the file has a `[sweep]` section.
    pub fn has_sweep(&self) -> bool {
        !self.sweep.is_empty()
    }

    /// Expands into runs: `[[run]]` entries × `[sweep]` grid points, each with `sets` applied
    /// last, then validated. All problems are reported together.
    pub fn expand(&self, sets: &[SetArg]) -> Result<Vec<RunSpec>, SpecErrors> {
        self.expand_selected(sets, &[])
    }

    /// [`SpecFile::expand`], keeping only the runs named in `only` (all when it is empty); the
    /// other runs are neither resolved nor checked.
    ///
    /// A `--set` may not change a key that a `[[run]]` or the `[sweep]` sets: the run would
    /// train one thing under a name that says another. `--set experiment.name=...` renames the
    /// experiment's output folders (a way to try a variant beside the old results).
    pub fn expand_selected(&self, sets: &[SetArg], only: &[String]) -> Result<Vec<RunSpec>, SpecErrors> {
        self.expand_partly(sets, only).map_err(|(_, errors)| errors)
    }

    /// [`SpecFile::expand_selected`], giving with its errors the runs whose every key could
    /// be read (with or without errors of their own), so that their data paths can be checked
    /// beside the spec's errors. None when the file has keys it could not read: every run's
    /// settings are partly defaults then, and no check may judge them.
    pub fn expand_partly(&self, sets: &[SetArg], only: &[String]) -> Result<Vec<RunSpec>, (Vec<RunSpec>, SpecErrors)> {
        let with_read_errors = |e: SpecErrors| {
            (
                vec![],
                SpecErrors(self.read_errors.iter().cloned().chain(e.0).collect()),
            )
        };
        let experiment = self.experiment_name(sets).map_err(with_read_errors)?;
        let entries = self.entries();
        self.check_run_count(entries.len()).map_err(with_read_errors)?;
        let points = grid(&self.sweep);
        let short = short_names(self.sweep.iter().map(|(k, _)| k.as_str()));
        let labels: Vec<Vec<String>> = self.sweep.iter().map(|(_, values)| axis_labels(values)).collect();
        let label = |axis: usize, v: &toml::Value| {
            let values = &self.sweep[axis].1;
            values
                .iter()
                .position(|w| w == v)
                .map_or_else(|| value_label(v), |i| labels[axis][i].clone())
        };
        let (mut specs, mut readable) = (vec![], vec![]);
        let mut errors = self.read_errors.clone();
        for entry in &entries {
            for point in &points {
                let point_name = point
                    .iter()
                    .zip(&short)
                    .enumerate()
                    .map(|(axis, ((_, v), s))| format!("{s}={}", label(axis, v)))
                    .collect::<Vec<_>>()
                    .join(",");
                let name = match (entry.name.is_empty(), point_name.is_empty()) {
                    (true, true) => "default".to_string(),
                    (true, false) => point_name,
                    (false, true) => entry.name.clone(),
                    (false, false) => format!("{},{point_name}", entry.name),
                };
                if !only.is_empty() && !only.contains(&name) {
                    continue;
                }
                match self.run_spec(&experiment, name, entry, point, sets) {
                    Ok(spec) => specs.push(spec),
                    Err((spec, mut e)) => {
                        readable.extend(spec.map(|s| *s));
                        errors.append(&mut e);
                    }
                }
            }
        }
        errors.extend(check_names(&specs, only));
        if !errors.is_empty() {
            readable.append(&mut specs);
            let resolved = if self.read_errors.is_empty() { readable } else { vec![] };
            return Err((resolved, SpecErrors(errors).merge_shared(entries.len() * points.len())));
        }
        set_varies(&mut specs);
        Ok(specs)
    }

    /// The experiment's name: the spec's, or a `--set experiment.name`'s (checked).
    fn experiment_name(&self, sets: &[SetArg]) -> Result<String, SpecErrors> {
        let Some(s) = sets.iter().rev().find(|s| s.key == "experiment.name") else {
            return Ok(self.name.clone());
        };
        let checked = match s.value.as_str() {
            Some(n) => check_experiment_name(n).map(|()| n.to_string()),
            None => Err(format!(
                "expected a name (a string), not `{}`; to use it as a name, quote it: --set 'experiment.name=\"{}\"'",
                s.value,
                s.value.to_string().trim_matches('"')
            )),
        };
        let origin = Origin::Cli(format!("--set {}", s.raw));
        checked.map_err(|msg| SpecErrors::from(self.source.error(origin, Some("experiment.name"), None, msg)))
    }

    /// The `[[run]]` entries, or one unnamed entry when there are none.
    fn entries(&self) -> Vec<RunEntry> {
        if self.runs.is_empty() {
            return vec![RunEntry {
                name: String::new(),
                index: None,
                overrides: vec![],
                init_from: None,
            }];
        }
        self.runs
            .iter()
            .enumerate()
            .map(|(i, run)| RunEntry {
                name: run.name.clone(),
                index: Some(i),
                overrides: flatten(&run.overrides, ""),
                init_from: run.init_from.clone(),
            })
            .collect()
    }

    /// Refuses more than [`MAX_RUNS`] runs, blaming what there is too much of: the grid or the
    /// `[[run]]` entries.
    fn check_run_count(&self, entries: usize) -> Result<(), SpecErrors> {
        let n_points = self.sweep.iter().fold(1usize, |n, (_, v)| n.saturating_mul(v.len()));
        let n_runs = n_points.saturating_mul(entries);
        if n_runs <= MAX_RUNS {
            return Ok(());
        }
        let key = if self.sweep.is_empty() { "run" } else { "sweep" };
        let what = match self.sweep.is_empty() {
            true => format!("{entries} [[run]] entries"),
            false => format!("{entries} [[run]] entries × {n_points} sweep points"),
        };
        let src = &self.source;
        let msg = format!("{what} make {n_runs} runs; at most {MAX_RUNS} are allowed in one experiment");
        Err(src.error(src.line(&[], key), Some(key), None, msg).into())
    }

    /// The run `name` of `entry` at sweep `point`, resolved with `sets`.
    fn run_spec(
        &self,
        experiment: &str,
        name: String,
        entry: &RunEntry,
        point: &[(String, toml::Value)],
        sets: &[SetArg],
    ) -> Result<RunSpec, Unresolved<RunSpec>> {
        let layers = Layers {
            run_index: entry.index,
            run_keys: entry
                .overrides
                .iter()
                .map(|(k, _)| k.clone())
                .chain(entry.init_from.as_ref().map(|_| "init_from".to_string()))
                .collect(),
            sweep_keys: point.iter().map(|(k, _)| k.clone()).collect(),
            sets: sets.to_vec(),
        };
        let resolved = self.resolve(&name, &layers, &entry.overrides, point, sets);
        let spec = |mut config: RunConfig| {
            config.experiment.name = Some(experiment.to_string());
            RunSpec {
                experiment: experiment.to_string(),
                name: name.clone(),
                varies: vec![],
                init_from: entry.init_from.clone(),
                config,
                source: self.source.clone(),
                layers: layers.clone(),
                named: !(self.runs.is_empty() && self.sweep.is_empty()),
            }
        };
        match resolved {
            Ok(config) => Ok(spec(config)),
            Err((config, errors)) => Err((config.map(|c| Box::new(spec(*c))), errors)),
        }
    }

    /// A setting given where it cannot apply: the experiment's own sections (`[eval]`,
    /// `[slurm]`) or `seeds` set for one run (every run repeats over the same seeds, so runs
    /// pair seed by seed), and `seed` beside `seeds` (ambiguous, except a file's `seed` that
    /// `--set experiment.seeds` or `--seeds` replaces). The key and why.
    fn misplaced_setting(
        &self,
        overrides: &[(String, toml::Value)],
        point: &[(String, toml::Value)],
        sets: &[SetArg],
    ) -> Option<(String, String)> {
        let file = |key: &str| {
            let leaf = key.trim_start_matches("experiment.");
            self.base.get("experiment").and_then(|e| e.get(leaf)).is_some()
        };
        let per_run = |key: &str| overrides.iter().chain(point).any(|(k, _)| related(k, key));
        let set = |key: &str| sets.iter().any(|s| related(&s.key, key));
        const SEEDS: &str = "experiment.seeds";
        const SEED: &str = "experiment.seed";
        const EXPERIMENT_ONLY: [(&str, &str); 2] = [
            (
                "eval",
                "`[eval]` is the experiment's, not a run's: every run is evaluated on the same windows so that their losses compare",
            ),
            (
                "slurm",
                "`[slurm]` is the experiment's, not a run's: `gptlab submit` sends all its runs as one job array",
            ),
        ];
        for (section, why) in EXPERIMENT_ONLY {
            if let Some((key, _)) = overrides.iter().chain(point).find(|(k, _)| related(k, section)) {
                return Some((key.clone(), why.into()));
            }
        }
        if per_run(SEEDS) {
            return Some((
                SEEDS.into(),
                "`seeds` is the experiment's, not a run's: every run repeats over the same seeds so that runs compare seed by seed".into(),
            ));
        }
        let seeds_from_set = set(SEEDS);
        let seeds = seeds_from_set || file(SEEDS);
        let seed_clash = if seeds_from_set {
            set(SEED) || per_run(SEED)
        } else {
            file(SEED) || per_run(SEED) || set(SEED)
        };
        (seeds && seed_clash).then(|| {
            (
                SEED.into(),
                "give `seeds` (a list: every run once per seed) or `seed` (one), not both".into(),
            )
        })
    }

    fn resolve(
        &self,
        name: &str,
        layers: &Layers,
        overrides: &[(String, toml::Value)],
        point: &[(String, toml::Value)],
        sets: &[SetArg],
    ) -> Result<RunConfig, Unresolved<RunConfig>> {
        let src = &self.source;
        let single = self.runs.is_empty() && self.sweep.is_empty();
        let err =
            |key: &str, msg: String| src.error(src.origin(layers, key), Some(key), Some(name).filter(|_| !single), msg);
        let mut table = self.base.clone();
        let all = overrides
            .iter()
            .cloned()
            .chain(point.iter().cloned())
            .chain(sets.iter().map(|s| (s.key.clone(), s.value.clone())));
        for s in sets {
            let set_by =
                |keys: &[(String, toml::Value)]| keys.iter().find(|(k, _)| related(&s.key, k)).map(|(k, _)| k.clone());
            let conflict = match (set_by(overrides), set_by(point)) {
                (Some(k), _) => Some(format!(
                    "run `{name}` sets `{k}` itself; drop the --set or use --only to leave that run out"
                )),
                (None, Some(k)) => Some(format!(
                    "the [sweep] varies `{k}` (run `{name}`); drop the --set or change the sweep"
                )),
                (None, None) => None,
            };
            if let Some(msg) = conflict {
                return Err((None, vec![err(&s.key, msg)]));
            }
        }
        for (key, value) in all {
            let from_set = sets.iter().any(|s| s.key == key);
            if (key == "experiment.name" && !from_set) || related(&key, "run") || related(&key, "sweep") {
                return Err((None, vec![err(&key, "cannot be overridden per run".into())]));
            }
            if let Err(msg) = set_dotted(&mut table, &key, value) {
                return Err((None, vec![err(&key, msg)]));
            }
        }
        let read = deserialize_all::<RunConfig>(&table);
        let mut errors: Vec<SpecError> = read.problems.iter().map(|(key, msg)| err(key, msg.clone())).collect();
        let Some(config) = read.value else {
            return Err((None, errors));
        };
        if let Some(msg) = self.misplaced_setting(overrides, point, sets) {
            errors.push(err(&msg.0, msg.1));
        }
        // Checks of the sections that could be read, beside the errors of those that could not.
        let unread: Vec<&str> = self
            .read_errors
            .iter()
            .map(|e| e.key.as_deref().unwrap_or(""))
            .chain(read.problems.iter().map(|(key, _)| key.as_str()))
            .collect();
        for p in validate::check(&config) {
            if clear_of(&unread, &p.keys) {
                errors.push(err(&src.most_specific(layers, &p.keys), p.message));
            }
        }
        match errors.is_empty() {
            true => Ok(config),
            // Every key read: the settings are the user's, for the checks of its data paths.
            false if unread.is_empty() => Err((Some(Box::new(config)), errors)),
            false => Err((None, errors)),
        }
    }
}

impl RunSpec {
    /// Every setting of the run with its value and where it was written: `file:line`, a
    /// base's `file:line`, the `[[run]]` or `[sweep]` line, a `--set`, or `default`.
    pub fn explain(&self) -> Vec<(String, String, String)> {
        let table = match toml::Value::try_from(&self.config) {
            Ok(toml::Value::Table(t)) => t,
            _ => return vec![],
        };
        let shown = |origin: Origin| match origin {
            Origin::Line(l) => format!("{}:{l}", self.source.path.display()),
            Origin::Base(base, l) => format!("{}:{l}", base.display()),
            Origin::Cli(arg) => arg,
            Origin::File => "default".into(),
        };
        flatten(&table, "")
            .into_iter()
            .map(|(key, value)| {
                let layered = self.layers.sets.iter().any(|s| related(&s.key, &key))
                    || self.layers.sweep_keys.iter().any(|s| related(s, &key))
                    || self.layers.run_keys.iter().any(|r| related(r, &key));
                let path = segments(&key);
                let written = layered
                    || extends::contains(&self.source.own, &path)
                    || self.source.bases.iter().any(|b| extends::contains(&b.table, &path));
                let origin = if written {
                    shown(self.source.origin(&self.layers, &key))
                } else {
                    "default".into()
                };
                let value = match value {
                    toml::Value::String(s) => format!("\"{s}\""),
                    v => v.to_string(),
                };
                (key, value, origin)
            })
            .collect()
    }

    /// An error about `key` of this run, placed on the line that set it.
    pub fn error(&self, key: &str, message: impl Into<String>) -> SpecError {
        self.source.error(
            self.source.origin(&self.layers, key),
            Some(key),
            Some(self.name.as_str()).filter(|_| self.named),
            message,
        )
    }

    /// An error about an experiment-wide `key` (`report.baseline`, `experiment.seeds`): placed
    /// like [`RunSpec::error`], but not said to be of this run.
    pub fn experiment_error(&self, key: &str, message: impl Into<String>) -> SpecError {
        self.source
            .error(self.source.origin(&self.layers, key), Some(key), None, message)
    }

    /// An error about the run itself, placed at its `name` (the `[[run]]` entry), or at the
    /// `[sweep]` key that named it.
    pub fn error_at_name(&self, message: String) -> SpecError {
        let origin = match (self.layers.run_index, self.layers.sweep_keys.first()) {
            (Some(i), _) => self
                .source
                .line(&[source::Seg::Key("run".into()), source::Seg::Index(i)], "name"),
            // A name made of sweep values only: the sweep's first key made it.
            (None, Some(key)) => {
                let origin = self.source.origin(&self.layers, key);
                return self.source.error(origin, Some(&format!("sweep.{key}")), None, message);
            }
            (None, None) => Origin::File,
        };
        self.source.error(origin, Some("name"), None, message)
    }

    /// The spec file this run came from.
    pub fn spec_path(&self) -> &Path {
        &self.source.path
    }

    /// The seeds this run trains with: `[experiment] seeds`, or the one `seed`.
    pub fn seeds(&self) -> Vec<u64> {
        let e = &self.config.experiment;
        match &e.seeds {
            Some(seeds) if !seeds.is_empty() => seeds.clone(),
            _ => vec![e.seed],
        }
    }

    /// Whether the run repeats over `[experiment] seeds` (one folder per seed).
    pub fn seeded(&self) -> bool {
        self.config.experiment.seeds.as_ref().is_some_and(|s| !s.is_empty())
    }

    /// Total optimizer steps over all phases.
    pub fn total_steps(&self) -> usize {
        self.config.phase.iter().map(|p| p.steps).sum()
    }
}

/// The command line's `--set`s with what `--seeds N` stands for after them; `--seeds` beside a
/// `--set experiment.seeds` is refused (one of them would be dropped without a word).
pub fn with_seeds(sets: &[SetArg], seeds: Option<usize>) -> Result<Vec<SetArg>, String> {
    let Some(n) = seeds else {
        return Ok(sets.to_vec());
    };
    if let Some(set) = sets.iter().find(|s| s.key == "experiment.seeds") {
        return Err(format!(
            "--seeds {n} and --set {} both choose the seeds; give one of them",
            set.raw
        ));
    }
    let mut all = sets.to_vec();
    all.push(seeds_override(n)?);
    Ok(all)
}

/// What `--seeds N` stands for: `--set experiment.seeds=[...]` with the first `n` seeds of the
/// fixed list minGPT's 3407, then 1, 2, 3, …
pub fn seeds_override(n: usize) -> Result<SetArg, String> {
    if n == 0 || n > validate::MAX_SEEDS {
        return Err(format!(
            "--seeds must be between 1 and {}, not {n}",
            validate::MAX_SEEDS
        ));
    }
    let seeds: Vec<u64> = std::iter::once(3407).chain(1..n as u64).collect();
    let list: Vec<String> = seeds.iter().map(u64::to_string).collect();
    Ok(SetArg {
        key: "experiment.seeds".into(),
        value: toml::Value::Array(seeds.iter().map(|&s| toml::Value::Integer(s as i64)).collect()),
        raw: format!("experiment.seeds=[{}]", list.join(",")),
    })
}

/// Runs one experiment may expand to: a grid of a few keys is far below it, a runaway one is not.
pub const MAX_RUNS: usize = 10_000;

/// Every combination of sweep values, in key order (the last key varies fastest).
fn grid(sweep: &[(String, Vec<toml::Value>)]) -> Vec<Vec<(String, toml::Value)>> {
    let mut points = vec![vec![]];
    for (key, values) in sweep {
        points = points
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut p = p.clone();
                    p.push((key.clone(), v.clone()));
                    p
                })
            })
            .collect();
    }
    points
}

/// The last segment of each key (`n_kv_head`), or the whole key where that is ambiguous.
fn short_names<'a>(keys: impl Iterator<Item = &'a str> + Clone) -> Vec<String> {
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    keys.clone()
        .map(|k| {
            if keys.clone().filter(|o| last(o) == last(k)).count() > 1 {
                k.to_string()
            } else {
                last(k)
            }
        })
        .collect()
}

/// Records, for each run, the settings that differ between the experiment's runs.
fn set_varies(specs: &mut [RunSpec]) {
    let mut flat: Vec<Vec<(String, toml::Value)>> = specs
        .iter()
        .map(|s| {
            // Compare resolved values: an unset n_kv_head is n_head.
            let mut config = s.config.clone();
            config.model.n_kv_head = Some(config.model.kv_heads());
            match toml::Value::try_from(&config) {
                Ok(toml::Value::Table(t)) => flatten(&t, ""),
                _ => vec![],
            }
        })
        .collect();
    // A key that is a value in one run and a table in another (`tokenizer = "char"` beside
    // `tokenizer = { train = "bpe", … }`) is one setting: compared whole, not key by key.
    let all: std::collections::BTreeSet<String> = flat.iter().flatten().map(|(k, _)| k.clone()).collect();
    let both: Vec<&String> = all
        .iter()
        .filter(|k| {
            all.range(format!("{k}.")..)
                .next()
                .is_some_and(|n| n.starts_with(&format!("{k}.")))
        })
        .collect();
    for prefix in both {
        for f in flat.iter_mut() {
            collapse_under(f, prefix);
        }
    }
    // Every key any run sets, in order of first appearance: a key only some runs set differs too.
    let mut keys: Vec<&String> = vec![];
    for (k, _) in flat.iter().flatten() {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let value = |f: &Vec<(String, toml::Value)>, k: &String| f.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
    let differing: Vec<&String> = keys
        .into_iter()
        .filter(|k| flat.iter().any(|f| value(f, k) != value(&flat[0], k)))
        .collect();
    let short = short_names(differing.iter().map(|k| k.as_str()));
    let labels: Vec<Vec<(String, String)>> = flat
        .iter()
        .map(|f| {
            differing
                .iter()
                .zip(&short)
                .map(|(k, s)| {
                    (
                        s.clone(),
                        value(f, k).map(|v| value_label(&v)).unwrap_or_else(|| "default".into()),
                    )
                })
                .collect()
        })
        .collect();
    for (spec, varies) in specs.iter_mut().zip(labels) {
        spec.varies = varies;
    }
}

/// Replaces the keys under `prefix.` in `flat` by one `(prefix, table)` at the first one's place.
fn collapse_under(flat: &mut Vec<(String, toml::Value)>, prefix: &str) {
    let dotted = format!("{prefix}.");
    let Some(at) = flat.iter().position(|(k, _)| k.starts_with(&dotted)) else {
        return;
    };
    let mut table = toml::Table::new();
    for (k, v) in flat.iter().filter(|(k, _)| k.starts_with(&dotted)) {
        // Infallible here: the keys came from flattening a table.
        let _ = set_dotted(&mut table, &k[dotted.len()..], v.clone());
    }
    flat.retain(|(k, _)| !k.starts_with(&dotted));
    flat.insert(at, (prefix.to_string(), toml::Value::Table(table)));
}

/// The `[sweep]` table's axes `(dotted key, values)`; a key whose value is not a non-empty
/// array is an error on its line.
fn sweep_axes(source: &Source, sweep: &toml::Table, errors: &mut Vec<SpecError>) -> Vec<(String, Vec<toml::Value>)> {
    let mut axes = vec![];
    for (key, value) in flatten(sweep, "") {
        let layers = Layers {
            run_index: None,
            run_keys: vec![],
            sweep_keys: vec![key.clone()],
            sets: vec![],
        };
        let origin = source.origin(&layers, &key);
        let full = format!("sweep.{key}");
        match value {
            toml::Value::Array(values) if !values.is_empty() => {
                let same = |i: usize| values[..i].iter().find(|w| normalized(w) == normalized(&values[i]));
                match (0..values.len()).find_map(|i| same(i).map(|first| (first, &values[i]))) {
                    Some((first, twice)) => {
                        let again = match first == twice {
                            true => format!("the value {twice} is listed twice"),
                            false => format!("the value {twice} is the path {first} again, written another way"),
                        };
                        let message = format!("{again}: each value is one point of the grid");
                        errors.push(source.error(origin, Some(&full), None, message));
                    }
                    None => axes.push((key, values)),
                }
            }
            toml::Value::Array(_) => {
                errors.push(source.error(origin, Some(&full), None, "a sweep needs at least one value"));
            }
            other => errors.push(source.error(
                origin,
                Some(&full),
                None,
                format!("a sweep takes an array of values, e.g. [1, 2], not `{other}`"),
            )),
        }
    }
    axes
}

/// The run names' problems (folder names, duplicates) and those of the keys that name runs
/// (`report.focus`, `report.baseline`), and too many trainings over the seeds.
fn check_names(specs: &[RunSpec], only: &[String]) -> Vec<SpecError> {
    let mut errors = vec![];
    // Keyed by the name in lower case: names that differ only in case are one folder on a
    // case-insensitive file system (macOS's and Windows' defaults).
    let mut seen = std::collections::HashMap::new();
    for spec in specs {
        if let Err(msg) = check_folder_name(&spec.name) {
            errors.push(spec.error_at_name(msg));
            continue;
        }
        match seen.insert(spec.name.to_lowercase(), &spec.name) {
            Some(other) if *other == spec.name => errors.push(
                spec.error_at_name(format!("duplicate run name `{}`: run names must be unique", spec.name)),
            ),
            Some(other) => errors.push(spec.error_at_name(format!(
                "run names `{other}` and `{}` differ only in case: on a case-insensitive file system (macOS, Windows) they would be one folder",
                spec.name
            ))),
            None => {}
        }
    }
    let Some(first) = specs.first() else {
        return errors;
    };
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    for name in &first.config.report.focus {
        if !names.contains(&name.as_str()) {
            let msg = format!("no run named `{name}`; the runs are {names:?}");
            errors.push(first.experiment_error("report.focus", msg));
        }
    }
    let n_seeds = first.seeds().len();
    if specs.len().saturating_mul(n_seeds) > MAX_RUNS {
        let msg = format!(
            "{} runs × {n_seeds} seeds make {} trainings; at most {MAX_RUNS} are allowed in one experiment",
            specs.len(),
            specs.len() * n_seeds
        );
        errors.push(first.experiment_error("experiment.seeds", msg));
    }
    if let Some(base) = &first.config.report.baseline
        && !names.contains(&base.as_str())
        && only.is_empty()
    {
        let msg = format!("no run named `{base}`; the runs are {names:?}");
        errors.push(first.experiment_error("report.baseline", msg));
    }
    errors
}

/// An experiment name is a folder name under `runs/` and `reports/`, without `+`, which
/// joins the names of a combined report (`reports/a+b/`): an experiment called `a+b` would
/// overwrite it.
fn check_experiment_name(name: &str) -> Result<(), String> {
    check_folder_name(name)?;
    if name.contains('+') {
        return Err(format!(
            "`{name}` contains `+`, which joins experiment names in a combined report's folder (reports/a+b/); choose a name without it"
        ));
    }
    Ok(())
}

/// Run and experiment names become folder names.
fn check_folder_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("a name may not be empty or blank".into());
    }
    if name.trim() != name {
        return Err(format!(
            "`{name}` starts or ends with white space, which a folder name should not"
        ));
    }
    if name == "." || name == ".." || name.contains(['/', '\\']) || name.chars().any(char::is_control) {
        return Err(format!(
            "`{name}` cannot be a folder name (no `/`, `\\`, control characters, `.` or `..`)"
        ));
    }
    if name.len() > 200 {
        return Err("a name may be at most 200 bytes".into());
    }
    Ok(())
}
