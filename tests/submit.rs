//! `gptlab submit` without a cluster: the `[slurm]` section is checked like every section
//! (file, line, key, all errors at once, exit 2), `--dry-run` prints the scripts that would be
//! submitted — one task per run not yet complete, the `--set`s carried into every task — and
//! a machine without `sbatch` gets an error that says so.

mod common;

use std::path::{Path, PathBuf};

use predicates::prelude::*;

/// The tiny spec as experiment `sub` with runs `a` and `b`, and `slurm` as its `[slurm]` body.
fn spec(dir: &Path, slurm: &str) -> PathBuf {
    let runs = "[[run]]\nname = \"a\"\n[[run]]\nname = \"b\"\nmodel.position = \"rope\"\n";
    common::tiny_spec(dir, "sub", &format!("[slurm]\n{slurm}{runs}"))
}

fn dry_run(spec: &Path, out: &common::OutDirs, extra: &[&str]) -> String {
    let assert = common::gptlab()
        .args(["submit", spec.to_str().unwrap(), "--dry-run"])
        .args(out.args())
        .args(extra)
        .assert()
        .success();
    String::from_utf8_lossy(&assert.get_output().stdout).into_owned()
}

#[test]
fn bad_slurm_settings_name_file_line_and_key_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let body = "time = \"soon\"\nmem = \"lots\"\ncpus_per_task = 0\nextra = [\"constraint=a100\"]\npartition = \"gpu debug\"\n";
    let path = spec(dir.path(), body);
    let out = common::gptlab()
        .args(["validate", path.to_str().unwrap()])
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    // The tiny spec is 23 lines, the name one more, then `[slurm]`.
    for (line, key, words) in [
        (25, "slurm.time", "not a Slurm time limit"),
        (26, "slurm.mem", "not a memory size"),
        (27, "slurm.cpus_per_task", "at least 1"),
        (28, "slurm.extra", "not one sbatch option"),
        (29, "slurm.partition", "not one word"),
    ] {
        let place = format!("{}:{line}:", path.display());
        let found = stderr
            .lines()
            .any(|l| l.contains(&place) && l.contains(&format!("key `{key}`")));
        assert!(
            found && stderr.contains(words),
            "{key} at line {line}, `{words}`:\n{stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A warning that would come before the task even starts.
    let path = spec(dir.path(), "time = \"5\"\nrequeue_before_s = 300\n");
    common::gptlab()
        .args(["validate", path.to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("slurm.requeue_before_s").and(predicate::str::contains("(300 s)")));
    // [slurm] belongs to the experiment: a run may not change it.
    let path = spec(dir.path(), "").with_file_name("sub.toml");
    let text = std::fs::read_to_string(&path).unwrap() + "slurm.partition = \"gpu\"\n";
    std::fs::write(&path, text).unwrap();
    common::gptlab()
        .args(["validate", path.to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`[slurm]` is the experiment's, not a run's"));
}

#[test]
fn slurm_time_limits_read_like_sbatch_reads_them() {
    use gptlab::spec::{TimeLimit::*, slurm_time_limit as t};
    assert_eq!(t("90"), Some(Seconds(90 * 60)));
    assert_eq!(t("10:30"), Some(Seconds(10 * 60 + 30)));
    assert_eq!(t("2:00:00"), Some(Seconds(7200)));
    assert_eq!(t("1-12"), Some(Seconds(86_400 + 12 * 3600)));
    assert_eq!(t("1-0:30"), Some(Seconds(86_400 + 1800)));
    assert_eq!(t("2-1:2:3"), Some(Seconds(2 * 86_400 + 3600 + 120 + 3)));
    // sbatch(1): "A time limit of zero requests that no time limit be imposed"; UNLIMITED,
    // INFINITE and -1 are the named forms.
    for unlimited in ["0", "00:00", "UNLIMITED", "unlimited", "INFINITE", "infinite", "-1"] {
        assert_eq!(t(unlimited), Some(Unlimited), "{unlimited:?}");
    }
    for bad in ["", "soon", "1:2:3:4", "-5", "1-", "1-2:3:4:5", "1.5", "1h"] {
        assert_eq!(t(bad), None, "{bad:?}");
    }
}

#[test]
fn a_dry_run_prints_one_task_per_run_left_with_the_resources_and_sets() {
    let dir = tempfile::tempdir().unwrap();
    let slurm = "partition = \"cpu\"\ntime = \"2:00:00\"\ncpus_per_task = 4\nmem = \"8G\"\ngpus = 1\naccount = \"lab\"\n\
                 qos = \"normal\"\nmax_parallel = 3\nextra = [\"--constraint=avx2\"]\n";
    let path = spec(dir.path(), slurm);
    let out = common::OutDirs::new();
    let text = dry_run(
        &path,
        &out,
        &["--set", "train.lr=0.002", "--set", "slurm.partition=big"],
    );
    for line in [
        "# 2 tasks: a, b",
        "#SBATCH --array=0-1%3",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "#SBATCH --signal=B:USR1@300",
        "#SBATCH --partition=big", // --set beats the file
        "#SBATCH --time=2:00:00",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=8G",
        "#SBATCH --gpus=1",
        "#SBATCH --account=lab",
        "#SBATCH --qos=normal",
        "#SBATCH --constraint=avx2",
        "#SBATCH --dependency", // absent: the report's dependency is given to sbatch
    ] {
        let present = text.lines().any(|l| l == line);
        assert_eq!(present, line != "#SBATCH --dependency", "{line}:\n{text}");
    }
    assert!(text.contains("runs=(a b)"), "{text}");
    assert!(!text.contains("#SBATCH --partition=cpu"), "{text}");
    // Every task and the report carry the --sets, the spec and the folders, by absolute path.
    let runs = out.runs.display().to_string();
    let carried = format!("--set train.lr=0.002 --set slurm.partition=big --runs-dir {runs}");
    let srun = text
        .lines()
        .find(|l| l.contains(" run ") && l.contains("--only"))
        .unwrap();
    assert!(
        srun.contains(&carried) && srun.contains("--wait") && srun.contains(path.to_str().unwrap()),
        "{srun}"
    );
    // Each task draws the live page of the experiment while it trains; the report job the final one.
    let reports = out.reports.display().to_string();
    assert!(
        srun.contains(&format!("--no-report --live-report --reports-dir {reports}")),
        "{srun}"
    );
    let report = text.lines().find(|l| l.starts_with("exec ")).unwrap();
    assert!(report.contains(&carried) && report.contains(" report "), "{report}");
    assert!(!out.runs.join("sub/slurm").exists(), "a dry run writes nothing");

    // Run `a` trained here: only `b` is left to submit.
    common::gptlab()
        .args(["run", path.to_str().unwrap(), "--only", "a", "-q", "--no-report"])
        .args(out.args())
        .assert()
        .success();
    let assert = common::gptlab()
        .args(["submit", path.to_str().unwrap(), "--dry-run"])
        .args(out.args())
        .assert()
        .success()
        .stderr(predicate::str::contains("not submitted: a: already complete"));
    let text = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    assert!(text.contains("# 1 task: b"), "{text}");
    assert!(
        text.contains("runs=(b)") && text.contains("#SBATCH --array=0-0%3"),
        "{text}"
    );
    // Seeds: one task per run and seed.
    let text = dry_run(&path, &out, &["--seeds", "2", "--set", "experiment.name=sub2"]);
    assert!(
        text.contains("runs=(a/seed=3407 a/seed=1 b/seed=3407 b/seed=1)"),
        "{text}"
    );
    assert!(text.contains("--seeds 2"), "{text}");
}

#[test]
fn a_task_memory_limit_below_a_runs_peak_is_refused_at_its_line_before_anything_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::OutDirs::new();
    // The tiny runs need about 0.11 GB (mostly the program's 100 MB, plus 10%): 64M is too
    // little by gptlab run's own rule (the estimate above 1.2× the memory), 1G plenty.
    let path = spec(dir.path(), "mem = \"64M\"\n");
    let refused = common::gptlab()
        .args(["submit", path.to_str().unwrap(), "--dry-run"])
        .args(out.args())
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    let line = stderr.lines().find(|l| l.contains("key `slurm.mem`")).expect(&stderr);
    assert!(line.contains(&format!("{}:25:", path.display())), "{line}");
    for words in [
        "mem = \"64M\" gives a task 0.07 GB",
        "runs `a` (about 0.1",
        "`b` (about 0.1",
        "micro_batch_size",
    ] {
        assert!(line.contains(words), "{words}: {line}");
    }
    assert!(!out.runs.join("sub/slurm").exists(), "{stderr}");
    // Without a unit, megabytes (Slurm's default), said so.
    let path = spec(dir.path(), "mem = \"64\"\n");
    let args = ["submit", path.to_str().unwrap(), "--dry-run"];
    let refused = common::gptlab().args(args).args(out.args()).assert().code(2);
    let stderr = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(stderr.contains("0.07 GB (megabytes, Slurm's default unit"), "{stderr}");
    // On GPUs the activations are the device's; with 1G (or 1g, 1GB: sbatch reads them alike)
    // the runs fit; 0 is all of a node's memory.
    for slurm in [
        "mem = \"64M\"\ngpus = 1\n",
        "mem = \"1G\"\n",
        "mem = \"1g\"\n",
        "mem = \"1GB\"\n",
        "mem = \"0\"\n",
    ] {
        let text = dry_run(&spec(dir.path(), slurm), &out, &[]);
        assert!(text.contains("# 2 tasks: a, b"), "{slurm}: {text}");
    }
}

#[test]
fn without_sbatch_submit_says_so_and_a_complete_experiment_submits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = spec(dir.path(), "");
    let out = common::OutDirs::new();
    common::gptlab()
        .args(["submit", path.to_str().unwrap()])
        .args(out.args())
        .env("PATH", dir.path()) // no sbatch there
        .assert()
        .code(1)
        .stderr(predicate::str::contains("cannot run sbatch").and(predicate::str::contains("--dry-run")));
    common::gptlab()
        .args(["run", path.to_str().unwrap(), "-q", "--no-report"])
        .args(out.args())
        .assert()
        .success();
    common::gptlab()
        .args(["submit", path.to_str().unwrap()])
        .args(out.args())
        .env("PATH", dir.path())
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing to submit"));
}
