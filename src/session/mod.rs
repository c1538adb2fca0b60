//! A training session: the workflow of `gptlab run` and `gptlab sweep`, from a planned
//! experiment to outcomes and a report.
//!
//! [`Experiment::load`] reads, expands and plans a spec (the corpus is read once there and
//! shared by the runs). [`train_all`] then picks the device, refuses runs that cannot fit in
//! memory, skips finished runs, trains the rest (`--jobs` at a time, each under its run's
//! lock, so other processes and hosts can train other runs of the same experiment) and writes
//! the report. The command line only parses arguments into
//! [`SessionOptions`] and maps the [`SessionOutcome`] to an exit code.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::anyhow;

mod live;
mod worker;

pub use live::LiveReport;

use worker::Trainer;

use crate::device::{Chosen, DeviceRequest};
use crate::error::Error;
use crate::experiment::{Experiment, Readiness, check_identities, check_submitted, readiness, work_left};
use crate::plan::RunPlan;
use crate::report::ReportJob;
use crate::run_dir::{RunDir, RunStatus};
use crate::train::{EvalHook, JobLayout, RunOptions, train_in_parallel};

/// How to train a session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Start every selected run over.
    pub fresh: bool,
    /// No progress output.
    pub quiet: bool,
    /// Threads in all (`None`: every core).
    pub threads: Option<usize>,
    /// Runs trained at once.
    pub jobs: usize,
    /// `--device`; `None` defers to the runs' `[experiment] device`.
    pub device: Option<DeviceRequest>,
    /// Where `reports/<experiment>/` goes; `None` writes no report.
    pub reports_dir: Option<PathBuf>,
    /// Where the live page is drawn while runs train (see [`LiveReport`]); `None` for none.
    pub live_reports_dir: Option<PathBuf>,
    /// Set (by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Wait for runs another process is training (else they are skipped and listed as busy).
    pub wait: bool,
    /// How stale a run lock's heartbeat may grow before others take it over; this process's
    /// locks promise it ([`crate::lock`]).
    pub lock_timeout: std::time::Duration,
    /// The settings' SHA-256 the runs had when `gptlab submit` queued them (a Slurm task):
    /// runs the spec now gives other settings are refused ([`check_submitted`]).
    pub submitted_settings: Option<String>,
}

/// How a session ended.
#[derive(Debug, Default)]
pub struct SessionOutcome {
    /// Runs selected.
    pub runs: usize,
    /// Runs that failed or diverged (now or before).
    pub failed: Vec<String>,
    /// The report could not be written (the error was said as it happened).
    pub report_failed: bool,
    /// Runs skipped because another process is training them.
    pub busy: Vec<String>,
    /// Stopped on request; the same command resumes.
    pub interrupted: bool,
    /// The report page written.
    pub report: Option<PathBuf>,
}

impl SessionOutcome {
    /// Whether every run trained and the report (if asked for) was written.
    pub fn succeeded(&self) -> bool {
        self.failed.is_empty() && self.busy.is_empty() && !self.report_failed
    }

    /// The closing line: where the metrics are, or which runs failed; and whether the report
    /// could not be written.
    pub fn summary(&self, experiment: &str, runs_dir: &Path) -> String {
        let runs = self.runs_summary(experiment, runs_dir);
        match self.report_failed {
            true => format!("{runs}; the report could not be written"),
            false => runs,
        }
    }

    fn runs_summary(&self, experiment: &str, runs_dir: &Path) -> String {
        if self.failed.is_empty() && self.busy.is_empty() {
            let dir = runs_dir.join(experiment);
            let s = if self.runs == 1 { "" } else { "s" };
            format!(
                "{experiment}: {} run{s} done; metrics under {}",
                self.runs,
                dir.display()
            )
        } else if self.failed.is_empty() {
            let (n, busy) = (self.busy.len(), self.busy.join(", "));
            format!(
                "{experiment}: {n} of {} runs not done here: another gptlab is training {busy}",
                self.runs
            )
        } else {
            let (n, failed) = (self.failed.len(), self.failed.join(", "));
            format!("{experiment}: {n} of {} runs failed: {failed}", self.runs)
        }
    }
}

/// The device for `plans`: `request`, else the runs' `[experiment] device`, which must agree.
fn choose_device(request: Option<DeviceRequest>, plans: &[&RunPlan], quiet: bool) -> Result<Chosen, Error> {
    let request = match request {
        Some(d) => d,
        None => {
            let mut asked: Vec<DeviceRequest> = plans.iter().map(|p| p.config.experiment.device).collect();
            asked.dedup();
            match asked.as_slice() {
                [] => DeviceRequest::Auto,
                [one] => *one,
                _ => {
                    return Err(Error::Usage(format!(
                        "the runs ask for different devices ({}); train them separately with --only, or pass --device",
                        asked.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
    };
    let (chosen, why) = crate::device::choose(request).map_err(Error::Usage)?;
    if !quiet {
        match chosen {
            Chosen::Cpu => crate::events::note(format!("{why}; {}", crate::isa::init().map_err(Error::Usage)?.line())),
            Chosen::Cuda => crate::events::note(why),
        }
    }
    Ok(chosen)
}

/// Refuses runs that could not fit in memory (they would be killed mid-way); runs trained
/// side by side need their memory at the same time (see [`crate::plan::cannot_fit`]).
fn check_memory(plans: &[&RunPlan], jobs: usize) -> Result<(), Error> {
    let Some(available) = crate::probe::available_memory_bytes() else {
        return Ok(());
    };
    let mut needs: Vec<(f64, String)> = plans.iter().map(|p| (p.train_memory_bytes(), p.id())).collect();
    needs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let need: f64 = needs.iter().take(jobs).map(|n| n.0).sum();
    if crate::plan::cannot_fit(need, available) {
        let what = if jobs > 1 {
            format!("{jobs} runs at once (--jobs {jobs})")
        } else {
            format!("run `{}`", needs[0].1)
        };
        return Err(Error::Runtime(anyhow!(
            "{what} needs about {:.1} GB to train but {:.1} GB is available; set train.micro_batch_size (the same \
             step in smaller passes), or lower --jobs, train.batch_size, the longest seq_len or the model size",
            need / 1e9,
            available / 1e9
        )));
    }
    Ok(())
}

/// The work left in the specs a wrapper will train after this command (`GPTLAB_ETA_ALSO`, a
/// `:`-separated list of spec files; `just study` names its second half), so the time left
/// covers the whole study. A spec that cannot be planned counts nothing.
fn queued_after(runs_dir: &Path) -> f64 {
    let Ok(list) = std::env::var("GPTLAB_ETA_ALSO") else {
        return 0.0;
    };
    list.split(':')
        .filter(|f| !f.is_empty())
        .filter_map(|f| Experiment::load(Path::new(f), &[], &[], runs_dir).ok())
        .flat_map(|e| e.plans)
        .map(|p| work_left(&p))
        .sum()
}

/// For each run, the work of the runs queued after it (and `also`, queued after this
/// command), shared by `jobs` workers: what the progress display adds to the run's own time
/// left for the whole session's.
fn later_work(runs: &[&RunPlan], jobs: usize, also: f64) -> std::collections::HashMap<String, f64> {
    let left: Vec<f64> = runs.iter().map(|p| work_left(p)).collect();
    runs.iter()
        .enumerate()
        .map(|(i, p)| (p.id(), (left[i + 1..].iter().sum::<f64>() + also) / jobs.max(1) as f64))
        .collect()
}

/// Creates `dir` and proves a file can be written in it.
fn check_writable(dir: &Path) -> Result<(), Error> {
    let probe = dir.join(".gptlab-write-check");
    std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&probe, b"ok"))
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| Error::Runtime(anyhow!("the report folder {} cannot be written: {e}", dir.display())))
}

/// The most threads a session takes: a mistyped count (`--threads 100000`) made a pool that
/// never finished a step, and no `timeout` could stop it at a step's end.
pub const MAX_THREADS: usize = 1024;

/// Why `n` threads cannot train, if they cannot: more than [`MAX_THREADS`].
pub fn threads_problem(n: usize) -> Option<String> {
    (n > MAX_THREADS).then(|| format!("{n} is more than the {MAX_THREADS} threads a session may take"))
}

/// The CPUs this process may run on (its affinity and cgroup quota, as Slurm sets them).
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The threads to train with: those asked for, or one per CPU; more than the CPUs is said,
/// since such threads only wait for each other (512 on 2 CPUs trained 30 times slower).
fn thread_count(asked: Option<usize>, quiet: bool) -> usize {
    let cpus = cpus();
    match asked {
        Some(n) if n > cpus && !quiet => {
            crate::events::note(format!(
                "note: --threads {n} is more than the {cpus} CPUs this process may use: the threads will wait for each other (slower, the same results)"
            ));
            n
        }
        Some(n) => n,
        None => cpus,
    }
}

/// Trains the selected runs of `exp` and writes its report (unless interrupted).
pub fn train_all(exp: &Experiment, opts: &SessionOptions) -> Result<SessionOutcome, Error> {
    let selected = exp.selected();
    let threads = thread_count(opts.threads, opts.quiet);
    let layout = layout(opts, &selected, threads);
    let chosen = choose_device(opts.device, &selected, opts.quiet)?;
    // The estimate is of the CPU's memory; on a GPU the activations are the device's.
    if matches!(chosen, Chosen::Cpu) {
        check_memory(&selected, layout.jobs)?;
    }
    if !opts.fresh {
        check_identities(&selected, exp.name())?;
    }
    if let Some(submitted) = &opts.submitted_settings {
        check_submitted(&selected, submitted)?;
    }
    // Hours of training must not end in an unwritable report folder.
    if let Some(reports) = &opts.reports_dir {
        check_writable(&reports.join(exp.name()))?;
    }
    let mut outcome = SessionOutcome {
        runs: selected.len(),
        ..Default::default()
    };
    let to_train = left_to_train(&selected, opts.fresh, &mut outcome);
    // Only the runs left to train share the threads (finished ones were skipped above).
    let layout = JobLayout::new(layout.jobs, threads, to_train.len());
    if layout.jobs > 1 && !opts.quiet {
        let each = match layout.threads_per_run {
            1 => "1 thread".to_string(),
            n => format!("{n} threads"),
        };
        let n = to_train.len();
        crate::events::note(format!("training {n} runs, {} at a time with {each} each", layout.jobs));
    }
    let ended = train_on(chosen, exp, opts, &to_train, layout)?;
    outcome.failed.extend(ended.failed);
    outcome.busy = ended.busy;
    // A stop that came after the last step (during its phase-end evaluation or checkpoint)
    // left every run finished: nothing to resume, so no "interrupted".
    let left_unfinished = || {
        to_train.iter().any(|p| {
            let finished = matches!(
                RunDir::new(&p.dir).read_status(),
                Some(RunStatus::Complete { .. } | RunStatus::Diverged { .. } | RunStatus::Failed { .. })
            );
            !finished && !outcome.busy.contains(&p.id())
        })
    };
    outcome.interrupted = ended.interrupted || (opts.stop.load(Ordering::SeqCst) && left_unfinished());
    if let Some(reports_dir) = &opts.reports_dir {
        // The report covers the whole experiment, not only the runs trained now (--only).
        // Interrupted, it shows what exists, without generating samples (the user is leaving).
        match crate::report::report_experiment(exp, reports_dir, true, !outcome.interrupted) {
            Ok(written) => outcome.report = Some(written.page()),
            Err(e) => {
                crate::events::error(format!("error: writing the report failed: {e:#}"));
                outcome.report_failed = true;
            }
        }
    }
    Ok(outcome)
}

/// How many runs train at once and with how many threads each: `--threads` is the total, and
/// attention probes (process-wide counters) need one run at a time.
fn layout(opts: &SessionOptions, selected: &[&RunPlan], threads: usize) -> JobLayout {
    if opts.jobs > threads {
        crate::events::note(format!(
            "note: --jobs {} is more than the {threads} threads in all (--threads is the total): at most {threads} runs train at once",
            opts.jobs
        ));
    }
    let layout = JobLayout::new(opts.jobs, threads, selected.len());
    if layout.jobs > 1 && selected.iter().any(|p| p.config.measure.attention) {
        // The probes count time and bytes process-wide; runs side by side would mix them.
        crate::events::note("note: [measure] attention is on, so the runs train one at a time (--jobs 1)");
        return JobLayout::new(1, threads, selected.len());
    }
    layout
}

/// The selected runs that need training; the others are said (complete) or recorded as
/// failed (diverged) in `outcome`.
fn left_to_train<'a>(selected: &[&'a RunPlan], fresh: bool, outcome: &mut SessionOutcome) -> Vec<&'a RunPlan> {
    let mut to_train = vec![];
    for &p in selected {
        match readiness(p, fresh) {
            Readiness::Train(note) => {
                if let Some(note) = note {
                    crate::events::note(note);
                }
                to_train.push(p);
            }
            Readiness::Done(note) => crate::events::note(note),
            Readiness::Failed(why) => {
                crate::events::error(why);
                outcome.failed.push(p.id());
            }
        }
    }
    to_train
}

/// Trains `to_train` on the chosen device, `layout.jobs` at a time on the CPU (one after
/// another on the GPU); returns how they ended.
fn train_on(
    chosen: Chosen,
    exp: &Experiment,
    opts: &SessionOptions,
    to_train: &[&RunPlan],
    layout: JobLayout,
) -> Result<worker::Ended, Error> {
    let device = match chosen {
        Chosen::Cpu => "cpu",
        Chosen::Cuda => "cuda",
    };
    let run_opts = RunOptions {
        fresh: opts.fresh,
        quiet: opts.quiet,
        lines_only: layout.jobs > 1,
        beside_others: layout.jobs > 1,
        stop: Some(opts.stop.clone()),
        lost: None,
        session: crate::provenance::SessionInfo::new(exp.spec.path(), &exp.spec.bases(), device),
        later_work: later_work(to_train, layout.jobs, queued_after(&exp.runs_dir)),
        after_evaluation: None,
    };
    // The page of the whole experiment, drawn again after every evaluation while it trains.
    let live = opts
        .live_reports_dir
        .as_ref()
        .map(|dir| Arc::new(LiveReport::new(ReportJob::new(&[exp], true), dir.clone())));
    let run_opts = RunOptions {
        after_evaluation: live.clone().map(|l| EvalHook(Arc::new(move || l.redraw()))),
        ..run_opts
    };
    let started = std::time::Instant::now();
    let trainer = Trainer {
        opts,
        run_opts: &run_opts,
        ended: Mutex::default(),
    };
    match chosen {
        Chosen::Cpu => train_in_parallel(to_train, layout, &opts.stop, |dev, p| trainer.train_one(dev, p))?,
        #[cfg(feature = "cuda")]
        Chosen::Cuda => {
            if layout.jobs > 1 {
                crate::events::note("note: --jobs applies to the CPU; on the GPU the runs train one after another");
            }
            let dev = crate::device::open_cuda()?;
            crate::train::train_in_turn(to_train, &dev, &opts.stop, |dev, p| trainer.train_one(dev, p))
        }
        #[cfg(not(feature = "cuda"))]
        Chosen::Cuda => unreachable!("choose() never picks CUDA in a build without it"),
    }
    if let Some(cost) = live.and_then(|l| l.cost(started.elapsed()))
        && !opts.quiet
    {
        crate::events::note(cost);
    }
    Ok(trainer.ended.into_inner().expect("not poisoned"))
}
