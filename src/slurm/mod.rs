//! `gptlab submit`: a spec's runs as a Slurm job array, one task per run that is not complete,
//! and a report job that runs after the array (`--dependency=afterany`).
//!
//! Each task is `gptlab run SPEC --only RUN --wait` under `srun`, so everything that makes a
//! local run safe holds on the cluster: the run's lock (two tasks never train one run; a task
//! whose node died is taken over once its heartbeat is stale), checkpoints it resumes from bit
//! for bit, and a clean stop on TERM (preemption, `scancel`) or on the warning Slurm sends
//! before the time limit, after which the task requeues itself.

mod script;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::anyhow;

pub use script::Invocation;

use crate::error::Error;
use crate::experiment::{Experiment, Readiness, check_identities, readiness};
use crate::run_dir::{RunDir, StateKind};

/// What `gptlab submit` sends, before it is sent.
#[derive(Clone, Debug)]
pub struct Submission {
    /// The experiment.
    pub experiment: String,
    /// The runs the array trains, one task each, as `--only` names them.
    pub tasks: Vec<String>,
    /// Each task's run's settings' SHA-256 ([`crate::plan::RunPlan::settings_sha256`]), in
    /// `tasks`' order: the task refuses a spec that has changed them since.
    pub settings: Vec<String>,
    /// Runs left out, and why (complete, diverged, being trained now).
    pub skipped: Vec<String>,
    /// The job array's script.
    pub array_script: String,
    /// The report job's script.
    pub report_script: String,
    /// Where the scripts and the tasks' logs go: `<runs>/<experiment>/slurm/`.
    pub dir: PathBuf,
}

/// Plans the submission of `exp`'s selected runs: refuses runs whose checkpoints were trained
/// with other settings (as `gptlab run` would, but before anything is queued), and leaves out
/// runs that are complete, diverged or being trained now.
pub fn prepare(exp: &Experiment, inv: &Invocation) -> Result<Submission, Error> {
    let selected = exp.selected();
    check_identities(&selected, exp.name())?;
    let (mut tasks, mut settings, mut skipped) = (vec![], vec![], vec![]);
    for p in selected {
        let state = RunDir::new(&p.dir).state(p.schedule.total_steps());
        if state.kind == StateKind::Running {
            skipped.push(format!("{}: {}", p.id(), state.phrase()));
            continue;
        }
        match readiness(p, false) {
            Readiness::Train(_) => {
                tasks.push(p.id());
                settings.push(p.settings_sha256());
            }
            Readiness::Done(_) => skipped.push(format!("{}: already complete", p.id())),
            Readiness::Failed(_) => skipped.push(format!(
                "{}: diverged at step {}; `gptlab run --fresh --only {}` retrains it",
                p.id(),
                state.step,
                p.id()
            )),
        }
    }
    let queued: Vec<&crate::plan::RunPlan> = exp.plans.iter().filter(|p| tasks.contains(&p.id())).collect();
    if let Some(e) = exp.slurm_memory_error(&queued) {
        return Err(Error::Spec(crate::spec::SpecErrors(vec![e])));
    }
    let slurm = &exp.plans.first().map(|p| p.config.slurm.clone()).unwrap_or_default();
    let dir = inv.runs_dir.join(exp.name()).join("slurm");
    Ok(Submission {
        experiment: exp.name().to_string(),
        array_script: script::array_script(exp.name(), (&tasks, &settings), slurm, inv, &dir),
        report_script: script::report_script(exp.name(), slurm, inv, &dir),
        tasks,
        settings,
        skipped,
        dir,
    })
}

impl Submission {
    /// "2 tasks: abs, rope".
    fn tasks_phrase(&self) -> String {
        let n = self.tasks.len();
        format!("{n} task{}: {}", if n == 1 { "" } else { "s" }, self.tasks.join(", "))
    }

    /// What `--dry-run` prints: the tasks and both scripts, with where they would be written.
    pub fn dry_run(&self) -> String {
        let dir = self.dir.display();
        format!(
            "# {}\n# --- job array (sbatch {dir}/array-<time>.sbatch)\n{}\
             # --- report job (sbatch --dependency=afterany:<array job id> {dir}/report-<time>.sbatch)\n{}",
            self.tasks_phrase(),
            self.array_script,
            self.report_script
        )
    }

    /// The line for a submission with no task left (`spec` as the user named it).
    pub fn nothing_to_submit(&self, spec: &Path) -> String {
        format!(
            "{}: nothing to submit ({} runs selected, none left to train); `gptlab report {}` writes the report",
            self.experiment,
            self.tasks.len() + self.skipped.len(), // every selected run is one or the other
            spec.display()
        )
    }
}

/// The jobs a submission became.
#[derive(Clone, Debug)]
pub struct Submitted {
    /// The job array's id.
    pub array: String,
    /// The report job's id.
    pub report: String,
    /// The scripts as submitted.
    pub scripts: [PathBuf; 2],
}

impl Submitted {
    /// What `gptlab submit` says once submitted: the job ids, how to watch them, the logs.
    pub fn announce(&self, sub: &Submission, inv: &Invocation) -> String {
        format!(
            "submitted job array {array} ({}) and report job {report} (after the array ends)\n\
             watch: {} (or squeue -j {array},{report}); logs: {}/{array}_*.out",
            sub.tasks_phrase(),
            inv.command("status"),
            sub.dir.display(),
            array = self.array,
            report = self.report,
        )
    }
}

/// Writes the scripts under `sub.dir` and submits them with `sbatch`: the array, then the
/// report job depending on it.
pub fn submit(sub: &Submission) -> Result<Submitted, Error> {
    std::fs::create_dir_all(&sub.dir).map_err(|e| Error::Runtime(anyhow!("creating {}: {e}", sub.dir.display())))?;
    let stamp = crate::provenance::utc_now().replace(':', "");
    let array_path = sub.dir.join(format!("array-{stamp}.sbatch"));
    let report_path = sub.dir.join(format!("report-{stamp}.sbatch"));
    crate::fsio::write_atomic(&array_path, sub.array_script.as_bytes())?;
    crate::fsio::write_atomic(&report_path, sub.report_script.as_bytes())?;
    let array = sbatch(&[], &array_path)?;
    let report = sbatch(&[format!("--dependency=afterany:{array}")], &report_path)?;
    Ok(Submitted {
        array,
        report,
        scripts: [array_path, report_path],
    })
}

/// `sbatch --parsable ARGS SCRIPT`; the job id.
fn sbatch(args: &[String], script: &Path) -> Result<String, Error> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .arg(script)
        .output()
        .map_err(|e| {
            Error::Runtime(anyhow!(
                "cannot run sbatch ({e}): is this a Slurm login node? `gptlab submit --dry-run` prints the scripts"
            ))
        })?;
    if !out.status.success() {
        return Err(Error::Runtime(anyhow!(
            "sbatch refused {}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // `--parsable` prints `id` or `id;cluster`.
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Runtime(anyhow!(
            "sbatch printed no job id for {}: {text:?}",
            script.display()
        )));
    }
    Ok(id)
}
