//! The experiment layer: a spec loaded, expanded and planned ([`Experiment`]), and what its
//! run folders say about each plan — whether the results there were trained with the plan's
//! settings ([`differs_from_checkpoint`], [`differs_from_results`], [`check_identities`]), how
//! much work is left ([`work_left`]), and whether a run needs training ([`readiness`]). The
//! training session, `status`, `submit` and the report all ask here; plans themselves never
//! read the disk.

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::plan::{RunPlan, plan};
use crate::run_dir::{RunDir, RunStatus};
use crate::spec::{SetArg, SpecErrors, SpecFile};

/// A spec, expanded and planned.
pub struct Experiment {
    /// The parsed file.
    pub spec: SpecFile,
    /// Every run of the experiment (the report covers them all).
    pub plans: Vec<RunPlan>,
    /// The runs named by `--only` (empty: all).
    pub only: Vec<String>,
    /// The experiment's name: the spec's, or the one `--set experiment.name` gives.
    name: String,
    /// The folder that holds `<experiment>/<run>/`.
    pub runs_dir: PathBuf,
    /// The runs as the spec resolved them (for where each setting came from).
    specs: Vec<crate::spec::RunSpec>,
}

/// A spec's errors and, after them, the problems of the data paths (a missing data file, a
/// missing tokenizer file) of the runs whose every key could be read: a missing data file is
/// reported beside a bad learning rate, not once the rate is fixed. The checks that read the
/// data itself wait until the spec has no errors.
fn with_data_problems((readable, errors): (Vec<crate::spec::RunSpec>, SpecErrors), runs_dir: &Path) -> SpecErrors {
    let paths = SpecErrors(crate::plan::path_problems(&readable, runs_dir)).merge_shared(readable.len());
    SpecErrors(errors.0.into_iter().chain(paths.0).collect())
}

/// The warm start from `from` that the run folder `dir` records, with when its session began
/// (the newest such session's).
fn recorded_warm_start(dir: &Path, from: &str) -> Option<(String, crate::checkpoint::WarmStart)> {
    let sessions = RunDir::new(dir).read_provenance().sessions;
    sessions
        .into_iter()
        .rev()
        .find_map(|s| s.init_from.filter(|w| w.path == from).map(|w| (s.started_utc, w)))
}

impl Experiment {
    /// Every setting of run `name` with its value and where it came from (see
    /// [`crate::spec::RunSpec::explain`]).
    pub fn explain(&self, name: &str) -> Vec<(String, String, String)> {
        self.specs
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.explain())
            .unwrap_or_default()
    }

    /// Loads `file`, applies `sets` to every run and plans the runs under `runs_dir`; `only`
    /// must name runs of the experiment.
    /// `only` entries are run names (every seed of the run) or `run/seed=S` (one seed).
    pub fn load(file: &Path, sets: &[SetArg], only: &[String], runs_dir: &Path) -> Result<Self, Error> {
        let spec = SpecFile::load(file)?;
        // `--only rope/seed=3` selects the run `rope` for expansion, and then one of its seeds.
        let only_runs: Vec<String> = only.iter().map(|o| run_of(o).to_string()).collect();
        let runs = match spec.expand_partly(sets, &[]) {
            Ok(runs) => runs,
            // The runs `--only` leaves out need not take the `--set`s (one may set a key itself).
            Err(_) if !only.is_empty() => spec
                .expand_partly(sets, &only_runs)
                .map_err(|found| with_data_problems(found, runs_dir))?,
            Err(found) => return Err(with_data_problems(found, runs_dir).into()),
        };
        let unknown: Vec<&String> = only_runs
            .iter()
            .filter(|o| !runs.iter().any(|r| &r.name == *o))
            .collect();
        if !unknown.is_empty() {
            let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
            return Err(Error::Usage(format!(
                "{}: --only names no run {:?}; its runs are {:?}",
                file.display(),
                unknown,
                names
            )));
        }
        let name = runs.first().map_or_else(|| spec.name.clone(), |r| r.experiment.clone());
        let plans = plan(&runs, runs_dir, &recorded_warm_start)?;
        let unknown: Vec<&String> = only
            .iter()
            .filter(|o| !plans.iter().any(|p| p.name == **o || p.id() == **o))
            .collect();
        if !unknown.is_empty() {
            let ids: Vec<String> = plans.iter().map(RunPlan::id).collect();
            return Err(Error::Usage(format!(
                "{}: --only names no run {:?}; its runs (with their seeds) are {:?}",
                file.display(),
                unknown,
                ids
            )));
        }
        Ok(Self {
            spec,
            name,
            specs: runs,
            plans,
            only: only.to_vec(),
            runs_dir: runs_dir.to_path_buf(),
        })
    }

    /// What `gptlab plan` prints: the experiment, then each selected run described, with every
    /// setting and where its value came from when `explain`.
    pub fn plan_text(&self, file: &Path, explain: bool) -> String {
        let mut out = format!("experiment `{}` ({}): {}\n", self.name(), file.display(), self.count());
        for p in self.selected() {
            out += &format!("\n{}\n", p.describe());
            if explain {
                for (key, value, origin) in self.explain(&p.name) {
                    out += &format!("    {key} = {value}  ({origin})\n");
                }
            }
        }
        out
    }

    /// The experiment's name (its output folders).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// "3 runs" or "2 runs × 5 seeds": what the selection trains.
    pub fn count(&self) -> String {
        let (trainings, runs) = (self.selected().len(), self.selected_runs().len());
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        match self.selected().iter().any(|p| p.seeded) {
            true => format!(
                "{} × {} ({trainings} trainings)",
                plural(runs, "run"),
                plural(trainings / runs.max(1), "seed")
            ),
            false => plural(runs, "run"),
        }
    }

    /// The selected runs, one plan each (the first seed's): what the seeds of a run share,
    /// its architecture and schedule.
    pub fn selected_runs(&self) -> Vec<&RunPlan> {
        let mut runs: Vec<&RunPlan> = vec![];
        for p in self.selected() {
            if !runs.iter().any(|r| r.name == p.name) {
                runs.push(p);
            }
        }
        runs
    }

    /// The runs selected with `--only` (all of them when none was named).
    pub fn selected(&self) -> Vec<&RunPlan> {
        self.plans
            .iter()
            .filter(|p| self.only.is_empty() || self.only.iter().any(|o| *o == p.name || *o == p.id()))
            .collect()
    }

    /// `[slurm] mem` too small for the runs of `tasks` (CPU tasks: without `slurm.gpus`), by
    /// the rule `gptlab run` applies on the node ([`crate::plan::cannot_fit`]): an error at its
    /// line, naming each such run with its estimate, so that no task is queued only to be
    /// killed at its limit.
    pub fn slurm_memory_error(&self, tasks: &[&RunPlan]) -> Option<crate::spec::SpecError> {
        let slurm = &tasks.first()?.config.slurm;
        let mem = slurm.mem.as_deref()?;
        let limit = crate::spec::slurm_mem_bytes(mem)?;
        // 0 is all of a node's memory; on GPUs the activations are the device's.
        if limit == 0.0 || slurm.gpus.is_some_and(|g| g > 0) {
            return None;
        }
        let over: Vec<String> = tasks
            .iter()
            .map(|p| (p.id(), p.train_memory_bytes()))
            .filter(|&(_, need)| crate::plan::cannot_fit(need, limit))
            .map(|(id, need)| format!("`{id}` (about {:.2} GB)", need / 1e9))
            .collect();
        let runs = match over.as_slice() {
            [] => return None,
            [one] => format!("run {one} needs more at its peak"),
            many => format!("runs {} need more at their peak", many.join(", ")),
        };
        // Slurm's default unit is MB, unless the cluster is configured for GB.
        let unit = match mem.bytes().all(|b| b.is_ascii_digit()) {
            true => " (megabytes, Slurm's default unit: write G where the cluster counts in gigabytes)",
            false => "",
        };
        let message = format!(
            "mem = {mem:?} gives a task {:.2} GB{unit}, but {runs} (`gptlab plan` prints each run's \
             estimate): raise it, or set train.micro_batch_size to train the same steps in smaller passes",
            limit / 1e9
        );
        Some(self.specs.first()?.experiment_error("slurm.mem", message))
    }
}

/// The run an `--only` entry names: `rope` of `rope/seed=3`.
fn run_of(only: &str) -> &str {
    match only.rsplit_once('/') {
        Some((run, seed)) if seed.starts_with("seed=") => run,
        _ => only,
    }
}

/// What differs between the settings of the run's newest checkpoint and this plan (see
/// [`RunPlan::identity_diff`]); empty when there is no checkpoint or nothing differs.
pub fn differs_from_checkpoint(plan: &RunPlan) -> Vec<String> {
    match crate::run_dir::RunDir::new(&plan.dir).newest_meta() {
        Some((step, meta)) => plan.identity_diff(&meta.identity, step.min(plan.schedule.total_steps())),
        None => vec![],
    }
}

/// The work left after the run's newest checkpoint (see [`PhaseSchedule::cost_after`]).
pub fn work_left(plan: &RunPlan) -> f64 {
    plan.schedule
        .cost_after(crate::run_dir::RunDir::new(&plan.dir).newest_step())
}

/// What differs between the settings that trained a run's results and the plan: its newest
/// checkpoint's ([`differs_from_checkpoint`]) and, for metrics rows written after that
/// checkpoint by a process that stopped before the next one, the settings of the session that
/// wrote them — rows `gptlab run` would drop, but which `status` and the report read until
/// then. `last_row`: the step of the run's last metrics row (the caller has read them). Empty
/// when every result is the plan's.
pub fn differs_from_results(plan: &RunPlan, last_row: usize) -> Vec<String> {
    let diff = differs_from_checkpoint(plan);
    let dir = RunDir::new(&plan.dir);
    let last_row = last_row.min(plan.schedule.total_steps());
    if !diff.is_empty() || last_row <= dir.newest_step() {
        return diff;
    }
    match dir.read_provenance().sessions.pop() {
        Some(s) if !s.settings.is_empty() => plan.identity_diff_of(
            &crate::plan::identity_at(&s.settings, last_row),
            last_row,
            "the last metrics row",
        ),
        _ => diff,
    }
}

/// Refuses runs whose newest checkpoint was trained with other settings than the spec now
/// gives them (a completed one too: its results would be reported as this configuration's),
/// listing every differing setting of every such run and the ways out.
pub fn check_identities(plans: &[&RunPlan], experiment: &str) -> Result<(), Error> {
    let mut refused = vec![];
    for p in plans {
        let diff = differs_from_checkpoint(p);
        if !diff.is_empty() {
            refused.push(format!(
                "run `{}` ({}) was trained with other settings:\n  {}",
                p.id(),
                p.dir.display(),
                diff.join("\n  ")
            ));
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "{}\n{}",
        refused.join("\n"),
        ways_out(experiment)
    )))
}

/// Refuses runs the spec now gives other settings than when `gptlab submit` queued them
/// (`submitted`: the [`RunPlan::settings_sha256`] written into the task): a spec edited while
/// the job waited in the queue must not train settings nobody submitted.
pub fn check_submitted(plans: &[&RunPlan], submitted: &str) -> Result<(), Error> {
    let changed: Vec<String> = plans
        .iter()
        .map(|p| (p, p.settings_sha256()))
        .filter(|(_, now)| now != submitted)
        .map(|(p, now)| {
            format!(
                "run `{}` would now train with other settings or data than when it was submitted (the spec or a file it reads changed; settings SHA-256 {}… then, {}… now)",
                p.id(),
                crate::format::short_hash(submitted),
                crate::format::short_hash(&now)
            )
        })
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "{}\nthis task stops without training: `gptlab submit` again trains the spec as it is now, or restore the \
         spec and `scontrol requeue` the task",
        changed.join("\n")
    )))
}

/// The ways out for results of other settings than the spec gives.
fn ways_out(experiment: &str) -> String {
    format!(
        "--fresh retrains these runs from scratch (their results are replaced), or \
         --set experiment.name=<new name> trains this configuration beside `{experiment}`"
    )
}

/// What `report` and `status` say (exiting 2) when `n` runs hold results of other settings
/// than the spec gives; `what` says what became of them.
pub fn other_settings_error(n: usize, what: &str, experiment: &str) -> String {
    format!(
        "error: {n} run(s) hold results trained with other settings than the spec gives {what}\n{}",
        ways_out(experiment)
    )
}

/// Whether a run needs training, judged from its folder.
pub enum Readiness {
    /// It does (with a note to print, if any).
    Train(Option<String>),
    /// It is complete; why it is skipped.
    Done(String),
    /// It cannot be trained as it stands (it diverged); why.
    Failed(String),
}

/// What `plan`'s folder says is left to do (with `fresh`, everything).
pub fn readiness(p: &RunPlan, fresh: bool) -> Readiness {
    let run_dir = RunDir::new(&p.dir);
    if let Some(warm) = &p.init_from
        && (fresh || run_dir.checkpoints().is_empty())
        && !crate::checkpoint::is_checkpoint(Path::new(&warm.path))
    {
        return Readiness::Failed(format!(
            "error: run `{}` starts from step 0 and its init_from checkpoint {} is gone; its folder is left as it was",
            p.id(),
            warm.path
        ));
    }
    if fresh {
        return Readiness::Train(None);
    }
    match run_dir.read_status() {
        Some(RunStatus::Complete { step })
            if step == p.schedule.total_steps()
                && let Some((at, cause)) = run_dir.non_finite_loss() =>
        {
            Readiness::Failed(format!(
                "error: run `{}` diverged at step {at} ({cause}) though its status says complete; --fresh retrains it",
                p.id()
            ))
        }
        Some(RunStatus::Complete { step }) if step == p.schedule.total_steps() => {
            let have = run_dir.read_eval().unwrap_or_default();
            if crate::train::length_eval::missing_phase_ends(p, &have, step).is_empty() {
                let periodic = crate::train::length_eval::missing_periodic(p, &have, step);
                let lacking = match periodic.is_empty() {
                    true => String::new(),
                    false => format!(
                        "; it lacks the evaluations [eval] every = {} asks for at steps {} (set after they trained; their weights are gone)",
                        p.config.eval.every,
                        crate::train::length_eval::steps_in_words(&periodic)
                    ),
                };
                return Readiness::Done(format!(
                    "[{}] already complete ({step} steps){lacking}; --fresh retrains it",
                    p.id()
                ));
            }
            Readiness::Train(Some(format!(
                "[{}] already complete ({step} steps); evaluating the [eval] lengths it lacks from its phase-end checkpoints",
                p.id()
            )))
        }
        Some(RunStatus::Diverged { step, cause }) => Readiness::Failed(format!(
            "error: run `{}` diverged at step {step}{} before; --fresh retrains it",
            p.id(),
            cause.map(|c| format!(" ({c})")).unwrap_or_default()
        )),
        _ => Readiness::Train(None),
    }
}

/// When runs asked for with seeds were trained without, or the other way round: what to say.
pub fn other_seed_layout(plans: &[RunPlan]) -> Option<String> {
    let has_metrics = |d: &Path| d.join("metrics.csv").is_file();
    let seeded = plans.iter().any(|p| p.seeded);
    let found = plans.iter().any(|p| match seeded {
        // <run>/seed=<s>/ asked for; <run>/ itself trained.
        true => p.dir.parent().is_some_and(has_metrics),
        // <run>/ asked for; <run>/seed=<s>/ trained.
        false => std::fs::read_dir(&p.dir).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with("seed=") && has_metrics(&e.path()))
        }),
    });
    found.then(|| match seeded {
        true => "; its runs were trained once, without seeds: report without --seeds (or experiment.seeds)".into(),
        false => {
            "; its runs were trained over seeds (folders seed=<s>): report with the same --seeds N or experiment.seeds"
                .into()
        }
    })
}
