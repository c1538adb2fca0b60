//! gptlab on a real Slurm: a one-node cluster (munged, slurmctld, slurmd) started by
//! `scripts/slurm-cluster.sh` in a temporary folder, stopped by its pids at the end.
//!
//! - `gptlab submit` sends the runs as a job array; every run ends bit-identical to a local
//!   `gptlab run` of the same spec, and the dependent report job writes the report;
//! - a task stopped with `scancel --signal=TERM` and requeued, twice, then warned of its time
//!   limit (USR1, after which it requeues itself), ends bit-identical to an uninterrupted run, with
//!   no `.tmp`, lock or `running` status left;
//! - two tasks started for one run never train it at once: one waits, then finds it complete.
//! - a task whose spec was edited while it waited in the queue trains nothing and says why;
//!   with the spec as submitted, the requeued task trains it.
//!
//! The cluster needs root and Debian's slurm-wlm and munge (`.ci/run` installs them). If it
//! cannot start, the test fails and says why: running on Slurm is part of what gptlab promises.
#![cfg(feature = "fault-injection")] // GPTLAB_SLOW_STEPS_MS holds tasks mid-run

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Time one job may take before the test gives up and shows the logs.
const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// A running one-node cluster; stopped on drop.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Cluster {
    /// Starts a cluster whose daemons listen on `port` and `port + 1` (each test its own, so
    /// tests run side by side).
    fn start(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slurm-cluster.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg("start")
            .arg(dir.path())
            .env("GPTLAB_SLURMCTLD_PORT", port.to_string())
            .env("GPTLAB_SLURMD_PORT", (port + 1).to_string())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        assert!(
            out.status.success(),
            "the Slurm cluster did not start, so gptlab's Slurm support cannot be checked:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = dir.path().join("slurm.conf");
        Self { dir, conf }
    }

    /// A Slurm client command (`sbatch`, `scontrol`, …) pointed at this cluster.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// Runs a client command; its stdout. Panics with its stderr if it fails.
    fn run(&self, program: &str, args: &[&str]) -> String {
        common::output_ok(self.cmd(program).args(args), &format!("{program} {args:?}"))
    }

    /// `gptlab ARGS` with this cluster's clients, slowed to `slow_ms` per step (the tasks
    /// inherit the environment).
    fn gptlab(&self, args: &[&str], slow_ms: u64) -> assert_cmd::Command {
        let mut c = common::gptlab();
        c.args(args)
            .env("SLURM_CONF", &self.conf)
            .env("GPTLAB_SLOW_STEPS_MS", slow_ms.to_string());
        c
    }

    /// A job's state (`RUNNING`, `PENDING`, `COMPLETED`, `FAILED`, …).
    fn state(&self, job: &str) -> String {
        let text = self.run("scontrol", &["show", "job", job]);
        text.split_whitespace()
            .find_map(|w| w.strip_prefix("JobState="))
            .unwrap_or("?")
            .to_string()
    }

    /// Waits until `done(state)` holds for `job`, or fails showing what the cluster logged.
    fn wait_state(&self, job: &str, what: &str, done: impl Fn(&str) -> bool, logs: &Path) {
        let t0 = Instant::now();
        loop {
            let state = self.state(job);
            if done(&state) {
                return;
            }
            if t0.elapsed() > JOB_TIMEOUT {
                panic!(
                    "job {job} did not become {what} in {JOB_TIMEOUT:?} (state {state})\n{}",
                    self.logs(logs)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until none of `jobs` is queued or running.
    fn wait_finished(&self, jobs: &[&str], logs: &Path) {
        for job in jobs {
            self.wait_state(
                job,
                "finished",
                |s| !matches!(s, "PENDING" | "RUNNING" | "REQUEUED" | "CONFIGURING" | "COMPLETING"),
                logs,
            );
        }
    }

    /// The tasks' logs under `dir` and the daemons' logs, for a failure message.
    fn logs(&self, dir: &Path) -> String {
        let mut out = String::new();
        let daemons = self.dir.path().join("log");
        for d in [dir, daemons.as_path()] {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                if let Ok(text) = std::fs::read_to_string(e.path()) {
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    out.push_str(&format!("--- {}\n", e.path().display()));
                    out.extend(tail.into_iter().rev().map(|l| format!("{l}\n")));
                }
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slurm-cluster.sh");
        let _ = Command::new("bash")
            .arg(script)
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// The tiny spec as experiment `cluster`, with `extra` appended; one CPU per task.
fn spec(dir: &Path, extra: &str) -> PathBuf {
    common::tiny_spec(dir, "cluster", &slurm_section(extra))
}

/// `[slurm]` with one CPU per task and a time limit, then `extra`.
fn slurm_section(extra: &str) -> String {
    format!("[slurm]\ncpus_per_task = 1\ntime = \"10\"\n{extra}")
}

/// Trains `spec` here, uninterrupted, under `dir/local`; its runs folder.
fn local_run(spec: &Path, dir: &Path) -> PathBuf {
    let runs = dir.join("local");
    common::quiet_run(spec, &runs).assert().success();
    runs
}

/// A `gptlab submit` done: its folders, its jobs and what it printed.
struct Submitted {
    args: Vec<String>,
    runs: PathBuf,
    reports: PathBuf,
    /// `runs/cluster/slurm/`: the scripts and the tasks' logs.
    logs: PathBuf,
    array: String,
    report: String,
    stdout: String,
}

/// `gptlab submit SPEC` of experiment `cluster` into folders under `dir`, every step slowed
/// to `slow_ms`.
fn submit(cluster: &Cluster, spec: &Path, dir: &Path, slow_ms: u64) -> Submitted {
    submit_named(cluster, spec, "cluster", dir, slow_ms)
}

/// [`submit`] of experiment `experiment`.
fn submit_named(cluster: &Cluster, spec: &Path, experiment: &str, dir: &Path, slow_ms: u64) -> Submitted {
    let (runs, reports) = (dir.join("runs"), dir.join("reports"));
    let args: Vec<String> = [
        "submit",
        spec.to_str().unwrap(),
        "--runs-dir",
        runs.to_str().unwrap(),
        "--reports-dir",
        reports.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cluster.gptlab(&args_ref, slow_ms).assert().success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let (array, report) = job_ids(&stdout);
    let logs = runs.join(experiment).join("slurm");
    Submitted {
        args,
        runs,
        reports,
        logs,
        array,
        report,
        stdout,
    }
}

/// `(array job, report job)` from `gptlab submit`'s first line, "submitted job array 12 (…)
/// and report job 13 (…)".
fn job_ids(stdout: &str) -> (String, String) {
    let words: Vec<&str> = stdout.lines().next().unwrap_or("").split_whitespace().collect();
    let after = |w: &str| words.iter().position(|x| *x == w).map(|i| words[i + 1].to_string());
    match (
        after("array"),
        after("report").and_then(|_| words.iter().rposition(|x| *x == "job")),
    ) {
        (Some(array), Some(i)) => (array, words[i + 1].to_string()),
        _ => panic!("no job ids in {stdout:?}"),
    }
}

fn metrics_rows(run: &Path) -> usize {
    gptlab::run_dir::read_metrics(&run.join("metrics.csv")).map_or(0, |r| r.len())
}

fn wait_rows(run: &Path, rows: usize, cluster: &Cluster, logs: &Path) {
    let t0 = Instant::now();
    while metrics_rows(run) < rows {
        assert!(
            t0.elapsed() < JOB_TIMEOUT,
            "the run never reached {rows} metrics rows\n{}",
            cluster.logs(logs)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_array_trains_every_run_like_a_local_run_and_the_report_job_runs() {
    let cluster = Cluster::start(16_900);
    let tmp = tempfile::tempdir().unwrap();
    // sbatch reads `#SBATCH` lines itself, splitting them on spaces: an experiment named as
    // people name them, in a folder with a space, must still reach the right log files.
    let (dir, experiment) = (tmp.path().join("my runs"), "rope vs \"abs\" 50%");
    std::fs::create_dir(&dir).unwrap();
    // The second run on a BPE trained from the corpus: a task plans it as the submitter did,
    // to the same tokenizer (its SHA-256 is in the settings a task checks).
    let runs_toml = "[[run]]\nname = \"abs\"\n[[run]]\nname = \"rope\"\nmodel.position = \"rope\"\ndata.tokenizer = { train = \"bpe\", vocab_size = 300 }\n";
    let text = common::TINY_SPEC.replace("[experiment]\n", "[experiment]\nname = \"rope vs \\\"abs\\\" 50%\"\n");
    let spec = common::write_spec(&dir, "vs.toml", &format!("{text}{}", slurm_section(runs_toml)));
    let dir = dir.as_path();
    let local = local_run(&spec, dir);
    let Submitted {
        args,
        runs,
        reports,
        logs,
        array,
        report,
        stdout,
    } = submit_named(&cluster, &spec, experiment, dir, 0);
    assert!(stdout.contains("2 tasks: abs, rope"), "{stdout}");
    cluster.wait_finished(&[&format!("{array}_0"), &format!("{array}_1"), &report], &logs);

    for run in ["abs", "rope"] {
        assert_eq!(
            common::results_fingerprint(&runs.join(experiment).join(run)),
            common::results_fingerprint(&local.join(experiment).join(run)),
            "run {run} on Slurm differs from the local run"
        );
    }
    assert_eq!(cluster.state(&report), "COMPLETED", "{}", cluster.logs(&logs));
    let page = std::fs::read_to_string(reports.join(experiment).join("index.html")).unwrap();
    assert!(!page.contains("Not finished"), "every run is on the page as complete");
    assert!(
        !page.contains("http-equiv=\"refresh\""),
        "the report job's final page must not reload"
    );
    // The tasks drew the live page while they trained (--live-report), and said what it cost.
    let task_logs: String = (0..2)
        .map(|i| std::fs::read_to_string(logs.join(format!("{array}_{i}.out"))).unwrap_or_default())
        .collect();
    assert!(task_logs.contains("live report: "), "{task_logs}");
    let report_log = std::fs::read_to_string(logs.join(format!("report_{report}.out"))).unwrap();
    assert!(report_log.contains("report:"), "{report_log}");

    // Status reads the run folders: both complete, each with its task's job id.
    let status = cluster
        .gptlab(
            &["status", spec.to_str().unwrap(), "--runs-dir", runs.to_str().unwrap()],
            0,
        )
        .assert()
        .success();
    let status = String::from_utf8_lossy(&status.get_output().stdout).into_owned();
    for (i, run) in ["abs", "rope"].iter().enumerate() {
        let line = status.lines().find(|l| l.starts_with(run)).unwrap();
        assert!(line.contains("complete") && line.contains("16/16"), "{status}");
        assert!(line.contains(&format!("{array}_{i}")), "{status}");
    }
    // Nothing left to submit.
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let again = cluster.gptlab(&args, 0).assert().success();
    let again = String::from_utf8_lossy(&again.get_output().stdout).into_owned();
    assert!(again.contains("nothing to submit"), "{again}");
}

#[test]
fn a_task_preempted_and_requeued_again_and_again_ends_bit_identical() {
    let cluster = Cluster::start(16_910);
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "");
    let local = local_run(&spec, dir.path());
    let Submitted { runs, logs, array, .. } = submit(&cluster, &spec, dir.path(), 250);
    let run = runs.join("cluster/default");
    let task = format!("{array}_0");

    // Preempted twice at different steps: TERM to the job step, then requeued by hand.
    for at in [3, 8] {
        cluster.wait_state(&task, "running", |s| s == "RUNNING", &logs);
        wait_rows(&run, at, &cluster, &logs);
        cluster.run("scancel", &["--signal=TERM", &task]);
        cluster.wait_state(&task, "stopped", |s| s != "RUNNING", &logs);
        let status = std::fs::read_to_string(run.join("status.json")).unwrap();
        assert!(status.contains("interrupted"), "TERM at {at} rows: {status}");
        cluster.run("scontrol", &["requeue", &task]);
    }
    // Then the warning before the time limit (USR1 to the batch shell): it checkpoints and
    // requeues itself.
    cluster.wait_state(&task, "running", |s| s == "RUNNING", &logs);
    wait_rows(&run, 12, &cluster, &logs);
    cluster.run("scancel", &["--signal=USR1", "--batch", &task]);
    cluster.wait_state(&task, "requeued and finished", |s| s == "COMPLETED", &logs);

    let log = std::fs::read_to_string(logs.join(format!("{array}_0.out"))).unwrap();
    assert_eq!(log.matches("interrupted after step").count(), 3, "{log}");
    assert!(log.contains("requeueing this task"), "{log}");
    assert!(log.contains("(restart 3)"), "{log}");
    assert_eq!(
        common::results_fingerprint(&run),
        common::results_fingerprint(&local.join("cluster/default")),
        "preempted and requeued, the run differs from the uninterrupted one\n{log}"
    );
    let status = std::fs::read_to_string(run.join("status.json")).unwrap();
    assert!(status.contains("complete"), "{status}");
    let leftovers: Vec<String> = walkdir::WalkDir::new(&run)
        .into_iter()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") || n.starts_with(".lock"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    let provenance = std::fs::read_to_string(run.join("provenance.json")).unwrap();
    assert_eq!(provenance.matches("\"interrupted\"").count(), 3, "{provenance}");
    assert_eq!(provenance.matches("\"complete\"").count(), 1, "{provenance}");
}

#[test]
fn two_tasks_for_one_run_never_train_it_at_once() {
    let cluster = Cluster::start(16_920);
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "");
    let Submitted {
        runs,
        logs,
        array: first,
        ..
    } = submit(&cluster, &spec, dir.path(), 200);
    let run = runs.join("cluster/default");
    // The same array script again: a second task for the same run, side by side.
    let script = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("array-"))
        .unwrap();
    let second = cluster.run("sbatch", &["--parsable", script.to_str().unwrap()]);
    let second = second.trim().split(';').next().unwrap().to_string();
    cluster.wait_finished(&[&format!("{first}_0"), &format!("{second}_0")], &logs);

    for job in [&first, &second] {
        assert_eq!(
            cluster.state(&format!("{job}_0")),
            "COMPLETED",
            "{}",
            cluster.logs(&logs)
        );
    }
    let provenance = std::fs::read_to_string(run.join("provenance.json")).unwrap();
    let sessions: serde_json::Value = serde_json::from_str(&provenance).unwrap();
    assert_eq!(
        sessions["sessions"].as_array().unwrap().len(),
        1,
        "one task trained it: {provenance}"
    );
    let read = |job: &str| std::fs::read_to_string(logs.join(format!("{job}_0.out"))).unwrap();
    let (a, b) = (read(&first), read(&second));
    // Exactly one task waited, and that task then found the run complete.
    let waited: Vec<&String> = [&a, &b]
        .into_iter()
        .filter(|l| l.contains("waiting: another gptlab trains it"))
        .collect();
    assert_eq!(waited.len(), 1, "one task waited:\n{a}\n---\n{b}");
    assert!(
        waited[0].contains("already complete"),
        "the waiting task found the run complete:\n{}",
        waited[0]
    );
}

#[test]
fn a_task_whose_spec_was_edited_in_the_queue_trains_nothing() {
    let cluster = Cluster::start(16_930);
    let dir = tempfile::tempdir().unwrap();
    // Held in the queue, as a busy cluster would hold it, while the spec is edited.
    let spec = spec(dir.path(), "extra = [\"--hold\"]\n");
    let Submitted {
        runs,
        logs,
        array,
        report,
        ..
    } = submit(&cluster, &spec, dir.path(), 0);
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, text.replace("batch_size = 4\n", "batch_size = 4\nlr = 1e-2\n")).unwrap();
    cluster.run("scontrol", &["release", &array]);
    cluster.wait_finished(&[&format!("{array}_0"), &report], &logs);

    assert_eq!(
        cluster.state(&format!("{array}_0")),
        "FAILED",
        "{}",
        cluster.logs(&logs)
    );
    let log = std::fs::read_to_string(logs.join(format!("{array}_0.out"))).unwrap();
    assert!(
        log.contains("run `default` would now train with other settings or data than when it was submitted"),
        "{log}"
    );
    assert_eq!(metrics_rows(&runs.join("cluster/default")), 0, "nothing trained");
    // The spec as submitted again: the same task trains it.
    std::fs::write(&spec, text).unwrap();
    cluster.run("scontrol", &["requeue", &format!("{array}_0")]);
    cluster.wait_state(&format!("{array}_0"), "completed", |s| s == "COMPLETED", &logs);
    assert_eq!(metrics_rows(&runs.join("cluster/default")), 16);
}
