//! Training one planned run through its phases: resume from the newest good checkpoint,
//! checkpoint as it goes, stop cleanly on request, and record every step.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::{AdamW, Progress, RunOutcome, StepDropout, eval_loss, length_eval, train_step_accumulated};
use crate::checkpoint::{self, Kind, Meta, fault_point};
use crate::data::{Batch, Corpus, Split, sample_batch};
use crate::isa::Isa;
use crate::model::{Backend, Gpt};
use crate::plan::{Phase, RunPlan};
use crate::provenance::Provenance;
use crate::provenance::{RunSession, utc_now};
use crate::run_dir::{EvalRow, MetricsRow, MetricsWriter, RunDir, RunStatus, TensorBoard};
use crate::seed::{Stream, stream};

/// How to train.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Discard this run's checkpoints and metrics and start from step 0.
    pub fresh: bool,
    /// No progress output.
    pub quiet: bool,
    /// Plain progress lines even on a terminal (several runs print at once).
    pub lines_only: bool,
    /// Other runs train at the same time in this process (`--jobs`): its resident memory is
    /// theirs too, so the run records no peak of its own.
    pub beside_others: bool,
    /// Set (by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// Set when another process has taken over the run's lock ([`crate::lock::RunLock::lost`]):
    /// training stops at once without writing anything more.
    pub lost: Option<Arc<AtomicBool>>,
    /// The command, spec and device, for the run's `provenance.json`.
    pub session: crate::provenance::SessionInfo,
    /// For each run of the session, the work of the runs queued after it (step-cost units,
    /// see `PhaseSchedule::cost_after`), for the time left of the whole session.
    pub later_work: std::collections::HashMap<String, f64>,
    /// Called when an evaluation is on disk (the session's live report).
    pub after_evaluation: Option<EvalHook>,
}

/// What a session does after each evaluation of a run.
#[derive(Clone)]
pub struct EvalHook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for EvalHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EvalHook")
    }
}

/// The validation batches of a phase: the same windows at every evaluation, so the losses
/// of one run compare over time (and between runs with the same seed).
fn eval_batches(plan: &RunPlan, corpus: &Corpus, phase: &Phase) -> Vec<Batch> {
    let tokens = if corpus.val.len() > phase.seq_len {
        &corpus.val
    } else {
        &corpus.train
    };
    (0..plan.config.train.eval_batches)
        .map(|i| {
            sample_batch(
                tokens,
                plan.config.train.batch_size,
                phase.seq_len,
                &mut stream(plan.seed, Stream::Eval, i as u64),
            )
        })
        .collect()
}

/// Evaluates the weights after `step` at every `[eval]` length and records the rows.
fn evaluate_lengths<D: Backend>(
    model: &Gpt<D>,
    plan: &RunPlan,
    run_dir: &RunDir,
    phase: &Phase,
    step: usize,
    progress: &Progress,
) -> Result<Vec<EvalRow>> {
    let (mut rows, positions) = length_eval::evaluate(model, plan, &plan.corpus, phase, step);
    if checkpoint::poisoned("eval", step)
        && let Some(last) = rows.iter_mut().rev().find(|r| r.loss.is_some())
    {
        last.loss = Some(f64::NAN);
    }
    run_dir.record_eval(&rows, &positions)?;
    let shown: Vec<String> = rows
        .iter()
        .map(|r| {
            let scaling = if r.scaling.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.scaling)
            };
            let loss = r.loss.map_or_else(|| "n/a".to_string(), |l| format!("{l:.4}"));
            format!("{}{scaling} {loss}", r.length)
        })
        .collect();
    progress.note(&format!("step {step}: loss by length {}", shown.join(" · ")));
    Ok(rows)
}

/// Evaluates the phase ends up to `done` that `eval.csv` lacks under the current `[eval]`
/// settings (added after training, or changed), from their phase-end checkpoints.
fn evaluate_missing<D: Backend>(
    dev: &D,
    plan: &RunPlan,
    run_dir: &RunDir,
    done: usize,
    progress: &Progress,
) -> Result<()> {
    let have = run_dir.read_eval()?;
    for step in length_eval::missing_phase_ends(plan, &have, done) {
        let phase = plan.schedule.phase_of(step).expect("a phase end is in the schedule");
        let Some((_, dir)) = run_dir.checkpoints().into_iter().find(|(s, _)| *s == step) else {
            progress.note(&format!(
                "warning: step {step} (end of phase {}) has no checkpoint left, so its [eval] lengths cannot be evaluated",
                phase.index
            ));
            continue;
        };
        let mut model = Gpt::new(dev, &plan.model(), plan.seed);
        checkpoint::read_weights(&dir)
            .and_then(|c| c.load_weights(&mut model))
            .with_context(|| format!("loading {} to evaluate it", dir.display()))?;
        evaluate_lengths(&model, plan, run_dir, phase, step, progress)?;
    }
    Ok(())
}

/// The checkpoint a session resumed from.
struct Resumed {
    /// Its step (0: none, the run starts from scratch).
    step: usize,
    /// The instruction-set path that wrote it, when recorded.
    isa: Option<Isa>,
}

/// Restores the newest checkpoint that verifies; corrupt ones are reported and skipped.
fn resume<D: Backend>(plan: &RunPlan, run_dir: &RunDir, model: &mut Gpt<D>, opt: &mut AdamW) -> Result<Resumed> {
    let found = run_dir.checkpoints();
    let n_found = found.len();
    for (step, dir) in found {
        let loaded = match checkpoint::read(&dir) {
            Ok(l) => l,
            Err(e) => {
                crate::events::warning(format!(
                    "[{}] warning: skipping checkpoint {}: {e:#}",
                    plan.id(),
                    dir.display()
                ));
                continue;
            }
        };
        let diff = plan.identity_diff(&loaded.meta.identity, step);
        if !diff.is_empty() {
            bail!(
                "the spec changed since run `{}` was checkpointed at step {step} ({}):\n  {}\nrun with --fresh to start it over",
                plan.id(),
                dir.display(),
                diff.join("\n  ")
            );
        }
        if step > plan.schedule.total_steps() {
            bail!(
                "run `{}` has a checkpoint at step {step}, beyond the {} steps the spec now asks for; run with --fresh to start it over",
                plan.id(),
                plan.schedule.total_steps()
            );
        }
        loaded
            .load_all(model, &mut opt.state)
            .with_context(|| format!("loading {}", dir.display()))?;
        // Said even with --quiet: which checkpoint a run continued from is part of its record.
        crate::events::note(format!(
            "[{}] resuming after step {step} from {}",
            plan.id(),
            dir.display()
        ));
        return Ok(Resumed {
            step,
            isa: loaded.meta.isa,
        });
    }
    if n_found > 0 {
        bail!(
            "run `{}` has {n_found} checkpoints under {} and none is usable (see the warnings above); run with --fresh to start it over",
            plan.id(),
            run_dir.checkpoints_path().display()
        );
    }
    Ok(Resumed { step: 0, isa: None })
}

/// The checkpoint's instruction-set path when this session continues on another one, said
/// in a warning: the rest of the run rounds differently than an uninterrupted run would.
fn other_isa<D: Backend>(plan: &RunPlan, resumed: &Resumed) -> Option<Isa> {
    let (Some(was), Some(now)) = (resumed.isa, D::isa()) else {
        return None;
    };
    if was == now {
        return None;
    }
    crate::events::warning(format!(
        "[{}] warning: the checkpoint at step {} was written on the {was} instruction-set path and \
         this session continues on {now}: from here on the run rounds differently than an \
         uninterrupted one, so it is not bit-identical to one (set {}={was} to continue on its path)",
        plan.id(),
        resumed.step,
        crate::isa::ENV
    ));
    Some(was)
}

/// One run's training session, read top to bottom: [`RunLoop::open`] (the folder, resume or
/// `init_from`, provenance, evaluations a changed `[eval]` lacks), [`RunLoop::run`] (every step
/// left: [`RunLoop::step`] trains, [`RunLoop::record`] writes the row and evaluations,
/// checkpoints follow), and one ending, [`RunLoop::finish`], for complete, interrupted and
/// diverged alike.
pub struct RunLoop<'a, D: Backend> {
    plan: &'a RunPlan,
    opts: &'a RunOptions,
    run_dir: RunDir,
    model: Gpt<D>,
    opt: AdamW,
    metrics: MetricsWriter,
    /// The step the session resumed after (0: from the start).
    done: usize,
    provenance: Provenance,
    /// The TensorBoard event file, unless `[report] tensorboard = false`.
    tensorboard: Option<TensorBoard>,
    progress: Progress,
    started: Instant,
    last_train: Option<f32>,
    last_val: Option<f32>,
}

impl<'a, D: Backend> RunLoop<'a, D> {
    /// Prepares `plan`'s folder and model on `dev`: resumes from its newest good checkpoint
    /// (unless `opts.fresh`) or starts from `init_from`, opens this session in
    /// `provenance.json`, and evaluates the phase ends `eval.csv` lacks.
    pub fn open(dev: &D, plan: &'a RunPlan, opts: &'a RunOptions) -> Result<Self> {
        let run_dir = RunDir::new(&plan.dir);
        run_dir.create()?;
        let t = &plan.config.train;
        let mut model = Gpt::new(dev, &plan.model(), plan.seed);
        let mut opt = AdamW::new(&model, t.beta1, t.beta2, t.eps, t.weight_decay);
        let resumed = if opts.fresh {
            // The weights to start over from are read before the old results are removed: an
            // `init_from` checkpoint that is gone leaves them as they were.
            init_from(plan, &mut model)?;
            run_dir.clear()?;
            Resumed { step: 0, isa: None }
        } else {
            let resumed = resume(plan, &run_dir, &mut model, &mut opt)?;
            if resumed.step == 0 {
                init_from(plan, &mut model)?;
            }
            resumed
        };
        let done = resumed.step;
        run_dir.write_config(&plan.config)?;
        run_dir.write_tokenizer(&plan.corpus.tokenizer)?;
        let metrics = run_dir.metrics_writer(done)?;
        run_dir.write_status(&RunStatus::Running { step: done })?;
        let mut provenance = run_dir.read_provenance();
        let mut session = RunSession::start(&opts.session, &plan.data_path, &plan.corpus, done + 1);
        session.isa = D::isa();
        session.init_from = plan.init_from.clone();
        session.resumed_from_isa = other_isa::<D>(plan, &resumed);
        session.settings = plan.identity(plan.schedule.total_steps());
        provenance.sessions.push(session);
        run_dir.write_provenance(&provenance)?;
        crate::probe::enable_attention_probe(plan.config.measure.attention);
        // What earlier runs of this process left free is not this run's peak.
        crate::alloc::release_freed_memory();
        crate::probe::reset_peak_rss();
        let later = opts.later_work.get(&plan.id()).copied().unwrap_or(0.0);
        let progress = Progress::start(&plan.id(), &plan.schedule, done, later, opts.quiet, opts.lines_only);
        run_dir.truncate_eval(done)?;
        evaluate_missing(dev, plan, &run_dir, done, &progress)?;
        let tensorboard = match plan.config.report.tensorboard {
            true => Some(run_dir.tensorboard()?),
            false => None,
        };
        Ok(Self {
            plan,
            opts,
            run_dir,
            model,
            opt,
            metrics,
            done,
            provenance,
            tensorboard,
            progress,
            started: Instant::now(),
            last_train: None,
            last_val: None,
        })
    }

    /// Trains every step left, phase by phase, and ends the session.
    pub fn run(mut self) -> Result<RunOutcome> {
        let (plan, done) = (self.plan, self.done);
        for (i, phase) in plan.schedule.phases.iter().filter(|p| p.last_step() > done).enumerate() {
            if i > 0 {
                crate::alloc::release_freed_memory();
            }
            let evals = eval_batches(plan, &plan.corpus, phase);
            for step in phase.first_step.max(done + 1)..=phase.last_step() {
                self.still_ours()?;
                let row = self.step(phase, step);
                if let Some(cause) = row.non_finite() {
                    // On record where it happened, with the step's rate and gradient norm.
                    let peak_rss_mb = self.peak_rss_mb();
                    self.metrics.append(&MetricsRow { peak_rss_mb, ..row })?;
                    return self.diverge(step, cause);
                }
                if let Some(cause) = self.record(phase, row, &evals)? {
                    return self.diverge(step, cause);
                }
                fault_point("step-end", step);
                let stop = self.opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
                self.checkpoint_if_due(phase, step, stop)?;
                if stop && step < plan.schedule.total_steps() {
                    let message = format!("interrupted after step {step}; checkpoint written");
                    return self.finish(RunStatus::Interrupted { step }, &message);
                }
            }
        }
        let total = plan.schedule.total_steps();
        let message = format!(
            "complete: {total} steps ({} this session) in {:.1} s, train loss {}, val loss {}",
            total - self.done,
            self.started.elapsed().as_secs_f64(),
            self.last_train.map_or_else(|| "-".into(), |v| format!("{v:.4}")),
            self.last_val.map_or_else(|| "-".into(), |v| format!("{v:.4}"))
        );
        self.finish(RunStatus::Complete { step: total }, &message)
    }

    /// One optimizer step at `step`; returns its metrics row (without the validation loss).
    pub fn step(&mut self, phase: &Phase, step: usize) -> MetricsRow {
        let mut row = timed_step(&mut self.model, &mut self.opt, self.plan, phase, step);
        if checkpoint::poisoned("train", step) {
            row.train_loss = f32::NAN;
            row.train_bpb = Some(f64::NAN);
        }
        row
    }

    /// Writes `row` with the validation loss when the step evaluates, and the `[eval]` lengths
    /// when due. The row is written even when a loss is not finite, so the divergence is on
    /// record where it happened; returns which loss was not finite, if one was.
    pub fn record(&mut self, phase: &Phase, row: MetricsRow, evals: &[Batch]) -> Result<Option<String>> {
        let (plan, step) = (self.plan, row.step);
        let t = &plan.config.train;
        let phase_end = step == phase.last_step();
        let evaluate = phase_end || (t.eval_every > 0 && step % t.eval_every == 0);
        let val_loss = evaluate
            .then(|| eval_loss(&self.model, evals, t.windows_per_pass()))
            .map(|v| if checkpoint::poisoned("val", step) { f32::NAN } else { v });
        let val_bpb = val_loss.map(|v| plan.corpus.bits_per_byte(v as f64, Split::Val));
        let every = plan.config.eval.every;
        let eval_rows = if phase_end || (every > 0 && step % every == 0) {
            evaluate_lengths(&self.model, plan, &self.run_dir, phase, step, &self.progress)?
        } else {
            vec![]
        };
        // The peak is read after the step's evaluations, so that the last row's is the run's
        // (the final evaluation comes after the last step).
        let row = MetricsRow {
            val_loss,
            val_bpb,
            peak_rss_mb: self.peak_rss_mb(),
            ..row
        };
        self.metrics.append(&row)?;
        if let Some(tb) = &mut self.tensorboard {
            tb.row(&row)?;
            tb.evals(&eval_rows)?;
            // TensorBoard reads what is flushed: at each evaluation, and when the session ends.
            if val_loss.is_some() || !eval_rows.is_empty() {
                tb.flush()?;
            }
        }
        if let Some(hook) = &self.opts.after_evaluation
            && (val_loss.is_some() || !eval_rows.is_empty())
        {
            (hook.0)();
        }
        fault_point("evaluated", step);
        if let Some(cause) = row
            .non_finite()
            .or_else(|| eval_rows.iter().find_map(EvalRow::non_finite))
        {
            return Ok(Some(cause));
        }
        let train_loss = row.train_loss;
        self.last_train = Some(train_loss);
        self.last_val = val_loss.or(self.last_val);
        self.progress
            .step(phase.index, step, phase.seq_len, train_loss, val_loss);
        Ok(None)
    }

    /// This process's peak resident memory since the session began, in MB; none beside other
    /// runs, whose memory it is too.
    fn peak_rss_mb(&self) -> Option<f64> {
        let mib = crate::probe::peak_rss_mib().filter(|_| !self.opts.beside_others);
        mib.map(|m| m * 1.048_576)
    }

    /// Saves a checkpoint after `step` at a phase end, every `checkpoint_every` steps, and when
    /// asked to stop.
    fn checkpoint_if_due(&mut self, phase: &Phase, step: usize, stop: bool) -> Result<()> {
        let t = &self.plan.config.train;
        let phase_end = step == phase.last_step();
        let periodic = t.checkpoint_every > 0 && step.is_multiple_of(t.checkpoint_every);
        if !(phase_end || periodic || stop) {
            return Ok(());
        }
        self.still_ours()?;
        let kind = if phase_end { Kind::PhaseEnd } else { Kind::Periodic };
        let mut meta = Meta::new(
            step,
            phase.index,
            kind,
            &self.plan.corpus.tokenizer,
            self.plan.model(),
            self.plan.identity(step),
        );
        meta.isa = D::isa();
        self.run_dir
            .save_checkpoint(&self.model, &self.opt.state, meta, t.keep_checkpoints)?;
        self.run_dir.write_status(&RunStatus::Running { step })?;
        fault_point("after-checkpoint", step);
        Ok(())
    }

    /// Stops when another process has taken the run over (its lock heartbeat went stale).
    fn still_ours(&self) -> Result<()> {
        if self.opts.lost.as_ref().is_some_and(|l| l.load(Ordering::SeqCst)) {
            bail!(
                "another process took over run `{}` (this one's lock heartbeat went stale); stopped without writing more",
                self.plan.id()
            );
        }
        Ok(())
    }

    /// Ends the session with `status`, saying `message`: the status, the provenance session's
    /// outcome and the progress line, written together.
    pub fn finish(mut self, status: RunStatus, message: &str) -> Result<RunOutcome> {
        let (outcome, last_step) = match &status {
            RunStatus::Complete { step } => ("complete", *step),
            RunStatus::Diverged { step, .. } => ("diverged", *step),
            RunStatus::Interrupted { step } => ("interrupted", *step),
            RunStatus::Running { step } | RunStatus::Failed { step, .. } => ("failed", *step),
        };
        if let Some(tb) = &mut self.tensorboard {
            tb.flush()?;
        }
        self.run_dir.write_status(&status)?;
        if let Some(s) = self.provenance.sessions.last_mut() {
            (s.outcome, s.last_step, s.ended_utc) = (Some(outcome.into()), Some(last_step), Some(utc_now()));
        }
        self.run_dir.write_provenance(&self.provenance)?;
        self.progress.finish(message);
        Ok(RunOutcome {
            status,
            last_train_loss: self.last_train,
            last_val_loss: self.last_val,
            wall_s: self.started.elapsed().as_secs_f64(),
        })
    }

    /// Ends the session as diverged at `step` because of `cause` (`validation loss NaN`).
    fn diverge(self, step: usize, cause: String) -> Result<RunOutcome> {
        // A run can diverge before its first checkpoint: then there is nothing to keep.
        let kept = match self.run_dir.checkpoints().first() {
            Some((s, _)) => format!("its last good checkpoint (step {s}) is kept"),
            None => "it had no checkpoint yet; --fresh retrains it".to_string(),
        };
        let message = format!("diverged: {cause} at step {step}; {kept}");
        let status = RunStatus::Diverged {
            step,
            cause: Some(cause),
        };
        self.finish(status, &message)
    }
}

/// Loads `init_from`'s weights into a run that starts from step 0: the weights planned, or an
/// error when the checkpoint was written again since.
fn init_from<D: Backend>(plan: &RunPlan, model: &mut Gpt<D>) -> Result<()> {
    let Some(warm) = &plan.init_from else {
        return Ok(());
    };
    let from = &warm.path;
    if !checkpoint::is_checkpoint(Path::new(from)) {
        bail!(
            "init_from checkpoint {from} is gone: the run starts from step 0 and needs it (what the run folder holds is left as it was)"
        );
    }
    let loaded =
        checkpoint::read_weights(Path::new(from)).with_context(|| format!("reading init_from checkpoint {from}"))?;
    if loaded.meta.model_sha256 != warm.weights_sha256 || !loaded.meta.same_tokenizer(&plan.corpus.tokenizer) {
        bail!(
            "init_from checkpoint {from} was written again after this run was planned: run it again to start from the new weights"
        );
    }
    loaded
        .load_weights(model)
        .with_context(|| format!("loading weights from {from}"))
}

/// Trains `plan` on `dev`, resuming from its newest good checkpoint unless `opts.fresh`.
///
/// Writes `run.toml`, the tokenizer's `vocab.json` or `tokenizer.json`, `metrics.csv`, `status.json` and `checkpoints/` into
/// the run's folder. Every random draw of step `s` comes from streams keyed by `s`, so a
/// resumed run repeats an uninterrupted one bit for bit. A run whose training, validation or
/// `[eval]` loss turns non-finite ends as diverged at that step: a NaN is never passed over
/// for an earlier number.
pub fn train_run<D: Backend>(dev: &D, plan: &RunPlan, opts: &RunOptions) -> Result<RunOutcome> {
    RunLoop::open(dev, plan, opts)?.run()
}

/// One training step of `plan` at `step`: its batch and dropout masks from the step's
/// streams, the update at the schedule's learning rate, and the metrics row it makes (without
/// the validation loss).
fn timed_step<D: Backend>(
    model: &mut Gpt<D>,
    opt: &mut AdamW,
    plan: &RunPlan,
    phase: &Phase,
    step: usize,
) -> MetricsRow {
    let t = &plan.config.train;
    let batch = sample_batch(
        &plan.corpus.train,
        t.batch_size,
        phase.seq_len,
        &mut stream(plan.seed, Stream::Batch, step as u64),
    );
    let dropout = StepDropout {
        p: plan.config.model.dropout as f32,
        rng: stream(plan.seed, Stream::Dropout, step as u64),
    };
    let micro = t.windows_per_pass();
    crate::probe::take_attention(); // drop what evaluation recorded
    let t0 = Instant::now();
    let lr = plan.schedule.lr_at(step);
    let stats = train_step_accumulated(model, opt, &batch, micro, lr, t.grad_clip, &dropout);
    let step_s = t0.elapsed().as_secs_f64();
    let (attn_ms, attn_bytes) = crate::probe::take_attention();
    let measure = plan.config.measure.attention;
    MetricsRow {
        run: plan.name.clone(),
        phase: phase.index,
        step,
        seq_len: phase.seq_len,
        train_loss: stats.loss,
        val_loss: None,
        lr,
        grad_norm: stats.grad_norm,
        step_ms: step_s * 1e3,
        tokens_per_s: (batch.b * batch.t) as f64 / step_s.max(1e-12),
        attn_ms: measure.then_some(attn_ms),
        attn_mem_mb: measure.then_some(attn_bytes).flatten().map(|b| b as f64 / 1e6),
        attn_mem_mb_analytic: measure.then(|| {
            (plan.config.model.n_layer * plan.model().attn_shape().saved_bytes(batch.b, batch.t)) as f64 / 1e6
        }),
        peak_rss_mb: None,
        seed: Some(plan.seed),
        train_bpb: Some(plan.corpus.bits_per_byte(stats.loss as f64, Split::Train)),
        val_bpb: None,
    }
}
