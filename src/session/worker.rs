//! One run of a session, as a worker trains it: under the run's lock, after cleaning what a
//! dead process left and judging again whether the run still needs training (another process
//! may have finished it meanwhile), recording how it ended.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use super::SessionOptions;
use crate::lock::{Claim, LockHolder, RunLock};
use crate::plan::RunPlan;
use crate::run_dir::{RunDir, RunStatus};
use crate::train::{RunOptions, train_run};

/// Whether a run needs training, judged from its folder.
pub(crate) enum Readiness {
    /// It does (with a note to print, if any).
    Train(Option<String>),
    /// It is complete; why it is skipped.
    Done(String),
    /// It cannot be trained as it stands (it diverged); why.
    Failed(String),
}

/// What `plan`'s folder says is left to do (with `fresh`, everything).
pub(crate) fn readiness(p: &RunPlan, fresh: bool) -> Readiness {
    if fresh {
        return Readiness::Train(None);
    }
    let run_dir = RunDir::new(&p.dir);
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
            if crate::train::lengths::missing_phase_ends(p, &have, step).is_empty() {
                let periodic = crate::train::lengths::missing_periodic(p, &have, step);
                let lacking = match periodic.is_empty() {
                    true => String::new(),
                    false => format!(
                        "; it lacks the evaluations [eval] every = {} asks for at steps {} (set after they trained; their weights are gone)",
                        p.config.eval.every,
                        crate::train::lengths::steps_in_words(&periodic)
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

/// How the runs of a session ended, gathered from the workers.
#[derive(Default)]
pub(super) struct Ended {
    pub(super) failed: Vec<String>,
    pub(super) busy: Vec<String>,
    pub(super) interrupted: bool,
}

/// Trains one run at a time for a worker: takes the run's lock, cleans what a dead process
/// left, checks again that the run needs training (another process may have finished it),
/// trains it and records how it ended.
pub(super) struct Trainer<'a> {
    pub(super) opts: &'a SessionOptions,
    pub(super) run_opts: &'a RunOptions,
    pub(super) ended: Mutex<Ended>,
}

impl Trainer<'_> {
    /// Notes how a run ended (workers call this from their own threads).
    fn record(&self, note: impl FnOnce(&mut Ended)) {
        note(&mut self.ended.lock().expect("not poisoned"));
    }

    /// Trains `p` on `dev` if it is this worker's to train.
    pub(super) fn train<D: crate::model::Backend>(&self, dev: &D, p: &RunPlan) {
        let id = p.id();
        let fail = |why: String| {
            eprintln!("error: run `{id}` failed: {why}");
            self.record(|e| e.failed.push(id.clone()));
        };
        let run_dir = RunDir::new(&p.dir);
        if let Err(e) = run_dir.create() {
            return fail(format!("{e:#}"));
        }
        let Some(lock) = self.lock(p, &run_dir).unwrap_or_else(|e| {
            fail(format!("{e:#}"));
            None
        }) else {
            return;
        };
        match run_dir.recover_leftovers() {
            Ok(cleaned) if !cleaned.is_empty() => eprintln!(
                "[{id}] note: the last gptlab on it stopped abruptly: {}",
                cleaned.join("; ")
            ),
            Ok(_) => {}
            Err(e) => return fail(format!("{e:#}")),
        }
        // Judged again under the lock: another process may have trained it meanwhile.
        match readiness(p, self.opts.fresh) {
            Readiness::Train(_) => {}
            Readiness::Done(note) => return eprintln!("{note}"),
            Readiness::Failed(why) => {
                eprintln!("{why}");
                return self.record(|e| e.failed.push(id));
            }
        }
        let run_opts = RunOptions {
            lost: Some(lock.lost()),
            ..self.run_opts.clone()
        };
        match train_run(dev, p, &run_opts) {
            Ok(run) => match run.status {
                RunStatus::Diverged { step, cause } => {
                    let cause = cause.as_deref().unwrap_or("non-finite loss");
                    eprintln!("error: run `{id}` diverged at step {step} ({cause}); the other runs carry on");
                    self.record(|e| e.failed.push(id));
                }
                RunStatus::Interrupted { .. } => self.record(|e| e.interrupted = true),
                _ => {}
            },
            Err(e) => {
                // A run taken over by another process is no longer this one's to mark.
                if !lock.lost().load(Ordering::SeqCst) {
                    let status = RunStatus::Failed {
                        step: run_dir.newest_step(),
                        error: format!("{e:#}"),
                    };
                    if let Err(w) = run_dir.write_status(&status) {
                        eprintln!(
                            "warning: could not record the failure in {}: {w:#}",
                            run_dir.path().display()
                        );
                    }
                }
                fail(format!("{e:#}"));
            }
        }
    }

    /// Takes `p`'s lock: waiting for another holder with `--wait`, else skipping the run.
    /// `None` when the run is skipped (recorded as busy) or the wait was interrupted.
    fn lock(&self, p: &RunPlan, run_dir: &RunDir) -> anyhow::Result<Option<RunLock>> {
        let (id, path, timeout) = (p.id(), run_dir.lock_path(), self.opts.lock_timeout);
        let what = format!("run `{id}`");
        if self.opts.wait {
            let lock = RunLock::acquire_waiting(&path, timeout, &what, &self.opts.stop, |holder| {
                eprintln!(
                    "[{id}] waiting: another gptlab trains it ({})",
                    LockHolder::describe_or_unknown(holder)
                )
            })?;
            if lock.is_none() {
                self.record(|e| e.interrupted = true);
            }
            return Ok(lock);
        }
        match RunLock::try_acquire(&path, timeout, &what)? {
            Claim::Held(lock) => Ok(Some(lock)),
            Claim::Busy(holder) => {
                eprintln!(
                    "[{id}] skipped: another gptlab trains it ({}); `gptlab status` shows its progress, --wait waits for it",
                    LockHolder::describe_or_unknown(holder.as_ref())
                );
                self.record(|e| e.busy.push(id));
                Ok(None)
            }
        }
    }
}
