//! The two sbatch scripts of a submission: the job array that trains one run per task, and
//! the report job that runs after it.

use std::path::{Path, PathBuf};

use crate::format::shell_quote;
use crate::spec::SlurmSection;

/// How the tasks call gptlab: the same binary, folder, spec and overrides as `gptlab submit`.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// The gptlab binary (absolute: tasks start elsewhere).
    pub gptlab: PathBuf,
    /// The folder the tasks run in (where relative paths of the spec resolve).
    pub workdir: PathBuf,
    /// The spec file (absolute).
    pub spec: PathBuf,
    /// `--set KEY=VALUE` arguments as given, carried into every task and the report.
    pub sets: Vec<String>,
    /// `--seeds N`, likewise.
    pub seeds: Option<usize>,
    /// `--runs-dir` (absolute).
    pub runs_dir: PathBuf,
    /// `--reports-dir` (absolute).
    pub reports_dir: PathBuf,
    /// `--lock-timeout` of the tasks, seconds.
    pub lock_timeout: u64,
    /// The instruction-set path `GPTLAB_ISA` pinned at submission, exported to every task
    /// (a site's `--export=NONE` would otherwise drop it): on a cluster of mixed nodes the
    /// runs stay bit for bit reproducible, and a node without the path refuses to start.
    pub isa: Option<crate::isa::Isa>,
}

impl Invocation {
    /// Tasks that run this very binary, in the current folder, on `spec` with `sets` and
    /// `seeds`, writing to `dirs` (runs, reports); every path made absolute, since tasks start
    /// elsewhere.
    pub fn here(
        spec: &Path,
        sets: Vec<String>,
        seeds: Option<usize>,
        dirs: (&Path, &Path),
        lock_timeout: std::time::Duration,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let absolute = |p: &Path| std::path::absolute(p).with_context(|| format!("resolving {}", p.display()));
        Ok(Self {
            gptlab: std::env::current_exe().context("finding the gptlab binary")?,
            workdir: std::env::current_dir().context("reading the current folder")?,
            spec: absolute(spec)?,
            sets,
            seeds,
            runs_dir: absolute(dirs.0)?,
            reports_dir: absolute(dirs.1)?,
            lock_timeout: lock_timeout.as_secs(),
            isa: crate::isa::init()
                .map(|c| c.pinned.then_some(c.isa))
                .map_err(anyhow::Error::msg)?,
        })
    }

    /// `gptlab <command> SPEC --set … --seeds N --runs-dir …`, quoted for a shell.
    pub fn command(&self, command: &str) -> String {
        let mut args = vec![
            shell_quote(&self.gptlab.display().to_string()),
            command.to_string(),
            shell_quote(&self.spec.display().to_string()),
        ];
        for set in &self.sets {
            args.push(format!("--set {}", shell_quote(set)));
        }
        if let Some(n) = self.seeds {
            args.push(format!("--seeds {n}"));
        }
        args.push(format!(
            "--runs-dir {}",
            shell_quote(&self.runs_dir.display().to_string())
        ));
        args.join(" ")
    }
}

/// `#SBATCH` lines for the resources of `[slurm]` (`training`: the array's, with time, GPUs and
/// the extra lines; else the report's, which needs a CPU and the same partition and account).
fn resources(s: &SlurmSection, training: bool) -> Vec<String> {
    let mut lines = vec![];
    let mut put = |opt: &str, v: Option<String>| {
        if let Some(v) = v {
            lines.push(directive(opt, &v));
        }
    };
    put("partition", s.partition.clone());
    put("account", s.account.clone());
    put("qos", s.qos.clone());
    put("mem", s.mem.clone());
    if training {
        put("time", s.time.clone());
        put("cpus-per-task", s.cpus_per_task.map(|n| n.to_string()));
        put("gpus", s.gpus.map(|n| n.to_string()));
        lines.extend(s.extra.iter().map(|e| format!("#SBATCH {e}")));
    }
    lines
}

/// A value as an `#SBATCH` line takes it: sbatch splits those lines on white space itself (no
/// shell reads them), groups what stands in double quotes and takes a backslash's next
/// character as it is. A value with a space, a quote or a backslash (an experiment called
/// `rope vs abs`, a home folder with a space) is written in double quotes with `"` and `\`
/// escaped; any other as it is.
fn sbatch_value(v: &str) -> String {
    if !v.contains(|c: char| c.is_whitespace() || "\"'\\".contains(c)) {
        return v.to_string();
    }
    let escaped: String = v
        .chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

/// `#SBATCH --opt=value`, the value written as sbatch reads it ([`sbatch_value`]).
fn directive(opt: &str, value: &str) -> String {
    format!("#SBATCH --{opt}={}", sbatch_value(value))
}

/// An `--output` file in folder `dir`: a `%` of the path itself is written `%%`, since sbatch
/// replaces `%u`, `%j` and the like there; `file` is the pattern's own part (`%A_%a.out`).
fn output_directive(dir: &Path, file: &str) -> String {
    let pattern = format!("{}/{file}", dir.display().to_string().replace('%', "%%"));
    directive("output", &pattern)
}

/// The job array: task `i` trains `runs[i]` (a run id, as `--only` takes it), refusing to if
/// the spec no longer gives it the settings `settings[i]` (their SHA-256) it was submitted with.
pub fn array_script(
    experiment: &str,
    (runs, settings): (&[String], &[String]),
    s: &SlurmSection,
    inv: &Invocation,
    logs: &Path,
) -> String {
    let throttle = s.max_parallel.map(|n| format!("%{n}")).unwrap_or_default();
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        format!("# gptlab: experiment `{experiment}`, one task per run (written by `gptlab submit`)."),
        directive("job-name", &format!("gptlab-{experiment}")),
        format!("#SBATCH --array=0-{}{throttle}", runs.len().saturating_sub(1)),
        directive("chdir", &inv.workdir.display().to_string()),
        // Requeued tasks append to the same log instead of replacing it.
        output_directive(logs, "%A_%a.out"),
        "#SBATCH --open-mode=append".into(),
        "#SBATCH --requeue".into(),
    ];
    if s.requeue_before_s > 0 {
        lines.push(format!("#SBATCH --signal=B:USR1@{}", s.requeue_before_s));
    }
    lines.extend(resources(s, true));
    let quoted: Vec<String> = runs.iter().map(|r| shell_quote(r)).collect();
    let train = format!(
        "{} --only \"$run\" --submitted-settings \"$settings\" --no-report --live-report --reports-dir {} --wait \
         --lock-timeout {} --threads \"${{SLURM_CPUS_PER_TASK:-1}}\"",
        inv.command("run"),
        shell_quote(&inv.reports_dir.display().to_string()),
        inv.lock_timeout
    );
    if let Some(isa) = inv.isa {
        lines.push(format!("export {}={isa}", crate::isa::ENV));
    }
    lines.push(format!(
        r#"set -u
runs=({runs})
run=${{runs[$SLURM_ARRAY_TASK_ID]}}
# Each run's settings (SHA-256) when it was submitted: the task refuses a spec edited since.
all_settings=({settings})
settings=${{all_settings[$SLURM_ARRAY_TASK_ID]}}
echo "gptlab: task $SLURM_ARRAY_TASK_ID of job $SLURM_ARRAY_JOB_ID trains run $run on $(hostname) (restart ${{SLURM_RESTART_COUNT:-0}})"

# Near the time limit Slurm sends USR1 to this shell (--signal above): it passes TERM on to the
# job step (srun itself would kill it outright), gptlab finishes its step, checkpoints and exits,
# and the task requeues itself. On preemption or scancel the step gets TERM directly: gptlab
# checkpoints and exits; this shell waits for it rather than dying first.
requeue=0
trap 'requeue=1; scancel --signal=TERM "$SLURM_JOB_ID"' USR1
trap 'true' TERM
srun --ntasks=1 --cpus-per-task="${{SLURM_CPUS_PER_TASK:-1}}" \
    {train} &
child=$!
while kill -0 "$child" 2>/dev/null; do wait "$child"; done
wait "$child"
rc=$?
if [ "$requeue" = 1 ]; then
    echo "gptlab: time limit near; run $run checkpointed; requeueing this task"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc""#,
        runs = quoted.join(" "),
        settings = settings.join(" ")
    ));
    lines.join("\n") + "\n"
}

/// The report job (submitted with `--dependency=afterany:<array>`): the same report as a local
/// run, runs still missing marked on the page.
pub fn report_script(experiment: &str, s: &SlurmSection, inv: &Invocation, logs: &Path) -> String {
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        format!("# gptlab: the report of experiment `{experiment}`, after its job array (written by `gptlab submit`)."),
        directive("job-name", &format!("gptlab-{experiment}-report")),
        directive("chdir", &inv.workdir.display().to_string()),
        output_directive(logs, "report_%j.out"),
    ];
    lines.extend(resources(s, false));
    lines.push(format!(
        "exec {} --reports-dir {}",
        inv.command("report"),
        shell_quote(&inv.reports_dir.display().to_string())
    ));
    lines.join("\n") + "\n"
}
