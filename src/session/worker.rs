//! One run of a session, as a worker trains it: under the run's lock, after cleaning what a
//! dead process left and judging again whether the run still needs training (another process
//! may have finished it meanwhile), recording how it ended.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use super::SessionOptions;
use crate::experiment::{Readiness, readiness};
use crate::lock::{Claim, LockHolder, RunLock};
use crate::plan::RunPlan;
use crate::run_dir::{RunDir, RunStatus};
use crate::train::{RunOptions, train_run};

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
    pub(super) fn train_one<D: crate::model::Backend>(&self, dev: &D, p: &RunPlan) {
        let id = p.id();
        let fail = |why: String| {
            crate::events::error(format!("error: run `{id}` failed: {why}"));
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
            Ok(cleaned) if !cleaned.is_empty() => crate::events::note(format!(
                "[{id}] note: the last gptlab on it stopped abruptly: {}",
                cleaned.join("; ")
            )),
            Ok(_) => {}
            Err(e) => return fail(format!("{e:#}")),
        }
        // Judged again under the lock: another process may have trained it meanwhile.
        match readiness(p, self.opts.fresh) {
            Readiness::Train(_) => {}
            Readiness::Done(note) => return crate::events::note(note),
            Readiness::Failed(why) => {
                crate::events::error(why);
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
                    crate::events::error(format!(
                        "error: run `{id}` diverged at step {step} ({cause}); the other runs carry on"
                    ));
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
                        crate::events::warning(format!(
                            "warning: could not record the failure in {}: {w:#}",
                            run_dir.path().display()
                        ));
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
                crate::events::note(format!(
                    "[{id}] waiting: another gptlab trains it ({})",
                    LockHolder::describe_or_unknown(holder)
                ))
            })?;
            if lock.is_none() {
                self.record(|e| e.interrupted = true);
            }
            return Ok(lock);
        }
        match RunLock::try_acquire(&path, timeout, &what)? {
            Claim::Held(lock) => Ok(Some(lock)),
            Claim::Busy(holder) => {
                crate::events::note(format!(
                    "[{id}] skipped: another gptlab trains it ({}); `gptlab status` shows its progress, --wait waits for it",
                    LockHolder::describe_or_unknown(holder.as_ref())
                ));
                self.record(|e| e.busy.push(id));
                Ok(None)
            }
        }
    }
}
