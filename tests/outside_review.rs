//! The faults an outside test of seeds, evaluation, reports and Slurm found (issue 24), one test
//! each: a result of other settings, `--threads`, `list` and seeds, captions, length verdicts,
//! seed settings, names, `[eval] every`, `rope_scaling`, and the smaller ones. The divergence
//! class is in `divergence.rs`, concurrent reports in `concurrency.rs`, inputs that are not
//! files in `special_files.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{OutDirs, gptlab, tiny_spec};
use predicates::prelude::*;

const TWO_RUNS: &str = "[[run]]\nname = \"absolute\"\n[[run]]\nname = \"rope\"\nmodel.position = \"rope\"\n";

/// The tiny spec as experiment `name`, runs absolute and rope, over `seeds` (none: one seed).
fn spec(dir: &Path, name: &str, seeds: Option<&str>, extra: &str) -> PathBuf {
    let path = tiny_spec(dir, name, &format!("{extra}{TWO_RUNS}"));
    if let Some(seeds) = seeds {
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("seed = 5", &format!("seeds = {seeds}"));
        std::fs::write(&path, text).unwrap();
    }
    path
}

fn cmd(what: &str, spec: &Path, out: &OutDirs, extra: &[&str]) -> assert_cmd::assert::Assert {
    gptlab().arg(what).arg(spec).args(out.args()).args(extra).assert()
}

/// `gptlab validate SPEC EXTRA…` (it takes no output folders).
fn validate(spec: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    gptlab().arg("validate").arg(spec).args(extra).assert()
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).into_owned()
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

/// Item 2: a seed retrained with other settings never enters an aggregate or the verdict; every
/// place the verdict appears says which and why; `report` and `status` exit 2.
#[test]
fn a_seed_trained_with_other_settings_is_left_out_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let spec = spec(tmp.path(), "other", Some("[1, 2, 3]"), "");
    cmd("run", &spec, &out, &["-q", "--no-report"]).success();
    cmd(
        "run",
        &spec,
        &out,
        &[
            "-q",
            "--no-report",
            "--fresh",
            "--only",
            "rope/seed=3",
            "--set",
            "train.lr=0.05",
        ],
    )
    .success();
    let reported = cmd("report", &spec, &out, &["--no-samples"]).code(2);
    let err = stderr(&reported);
    assert!(
        err.contains("rope/seed=3") && err.contains("phase.0.lr: was `0.05`"),
        "{err}"
    );
    let dir = out.reports.join("other");
    let md = read(dir.join("summary.md"));
    assert!(md.contains("rope: 2 of 3 seeds complete"), "{md}");
    assert!(md.contains("seed 3: trained with other settings (phase.0.lr"), "{md}");
    assert!(!md.contains("better in 3/3") && !md.contains("worse in 3/3"), "{md}");
    let page = read(dir.join("index.html"));
    assert!(page.contains("seed 3: trained with other settings"), "the page");
    let summary = read(dir.join("summary.csv"));
    let rope = summary.lines().find(|l| l.starts_with("rope,")).unwrap();
    assert!(rope.contains(",3,2,"), "seeds 3, complete 2: {rope}");
    let seeds = read(dir.join("seeds.csv"));
    assert!(
        seeds
            .lines()
            .any(|l| l.starts_with("rope,3,") && l.contains("trained with other settings"))
    );
    for line in read(dir.join("comparison.csv")).lines().skip(1) {
        assert!(line.contains(",2,"), "paired over two seeds: {line}");
    }
    let status = common::status(&spec, &out.runs).code(2);
    let table = stdout(&status);
    let line = table.lines().find(|l| l.starts_with("rope/seed=3")).unwrap();
    assert!(line.contains("other-settings") && line.contains("phase.0.lr"), "{line}");
    assert!(stderr(&status).contains("other settings"));
}

/// Item 5: `--threads` is the total.
#[test]
fn threads_is_the_total_and_jobs_above_it_are_capped_and_said() {
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let spec = spec(tmp.path(), "thr", None, "");
    let done = cmd("run", &spec, &out, &["--no-report", "--threads", "1", "--jobs", "3"]).success();
    let err = stderr(&done);
    assert!(err.contains("--jobs 3 is more than the 1 threads in all"), "{err}");
    assert!(!err.contains("2 runs at once"), "{err}");
    // More threads than this process's CPUs train, and are said to wait for each other.
    let cpus = std::thread::available_parallelism().unwrap().get();
    let many = (cpus + 1).to_string();
    let done = cmd("run", &spec, &out, &["--no-report", "--fresh", "--threads", &many]).success();
    let err = stderr(&done);
    let said = format!("--threads {many} is more than the {cpus} CPUs this process may use");
    assert!(err.contains(&said), "{err}");
}

/// Item 6: `list` counts every training, seeds included.
#[test]
fn list_counts_the_trainings_of_every_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("experiments");
    std::fs::create_dir(&dir).unwrap();
    spec(&dir, "five", Some("[1, 2, 3, 4, 5]"), "");
    spec(&dir, "one", None, "");
    let listed = gptlab().args(["list", dir.to_str().unwrap()]).assert().success();
    let text = stdout(&listed);
    // 2 runs × 5 seeds of 16 steps.
    let five = text.lines().find(|l| l.contains("five.toml")).unwrap();
    assert!(
        five.contains("2 runs × 5 seeds = 10 trainings") && five.contains(" 160 steps"),
        "{five}"
    );
    let one = text.lines().find(|l| l.contains("one.toml")).unwrap();
    assert!(
        one.contains("2 runs") && one.contains(" 32 steps") && !one.contains("seeds"),
        "{one}"
    );
}

/// Item 7: the caption states the tokens scored, not the budget asked for.
#[test]
fn the_length_caption_states_the_tokens_scored() {
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let eval = "[eval]\nlengths = [8, 16]\ntokens = 100000000\n";
    let spec = spec(tmp.path(), "cap", None, eval);
    cmd("run", &spec, &out, &["-q"]).success();
    let scored: Vec<String> = read(out.reports.join("cap/eval.csv"))
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(11).unwrap().to_string())
        .collect();
    let page = read(out.reports.join("cap/index.html"));
    assert!(
        !page.contains("100,000,000 validation tokens"),
        "the budget stated as scored"
    );
    assert!(page.contains("fewer than the 100,000,000 asked for"), "not said");
    let n: usize = scored[0].parse().unwrap();
    assert!(n < 200_000, "{scored:?}");
    let shown = gptlab::format::int(n as u64);
    assert!(
        page.contains(&format!("{shown} tokens scored")),
        "{shown} not on the page"
    );
}

/// Item 9: each length's verdict gives that length's own reason.
#[test]
fn the_length_verdict_gives_each_length_its_own_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let spec = spec(
        tmp.path(),
        "why",
        None,
        "[eval]\nlengths = [64, 16, 32, 48]\ntokens = 512\n",
    );
    cmd("run", &spec, &out, &["-q"]).success();
    let md = read(out.reports.join("why/summary.md"));
    let at64 = md.lines().find(|l| l.contains("loss at 64 minus loss at 16")).unwrap();
    assert!(
        at64.contains("absolute n/a") && at64.contains("a length of 64 needs 64"),
        "{at64}"
    );
    let at32 = md.lines().find(|l| l.contains("loss at 32 minus loss at 16")).unwrap();
    assert!(
        at32.contains("a length of 32 needs 32") && !at32.contains("48"),
        "{at32}"
    );
}

/// Item 10: seed settings are never dropped without a word.
#[test]
fn empty_seeds_and_two_ways_of_choosing_seeds_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let empty = spec(tmp.path(), "empty", Some("[]"), "");
    validate(&empty, &[]).code(2).stderr(
        predicate::str::contains("key `experiment.seeds`")
            .and(predicate::str::contains("an empty list trains nothing")),
    );
    let one = spec(tmp.path(), "both", None, "");
    cmd("run", &one, &out, &["--set", "experiment.seeds=[5,6]", "--seeds", "2"])
        .code(2)
        .stderr(predicate::str::contains(
            "--seeds 2 and --set experiment.seeds=[5,6] both choose the seeds",
        ));
    assert!(!out.runs.exists(), "nothing trained");
}

/// Item 11 and the name hint of item 14: no experiment name can be a combined report's folder.
#[test]
fn an_experiment_name_with_a_plus_is_refused_and_a_number_gets_a_quoting_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let t = spec(tmp.path(), "t", None, "");
    cmd("run", &t, &out, &["--set", "experiment.name=t+one"])
        .code(2)
        .stderr(predicate::str::contains("contains `+`"));
    let plus = spec(tmp.path(), "a+b", None, "");
    validate(&plus, &[])
        .code(2)
        .stderr(predicate::str::contains("key `experiment.name`").and(predicate::str::contains("contains `+`")));
    validate(&t, &["--set", "experiment.name=123"])
        .code(2)
        .stderr(predicate::str::contains(r#"--set 'experiment.name="123"'"#));
    validate(&t, &["--set", r#"experiment.name="123""#]).success();
}

/// Item 12: `[eval] every` set after training is not done silently.
#[test]
fn eval_every_added_after_training_is_noted_where_it_cannot_be_done() {
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let before = spec(tmp.path(), "every", None, "[eval]\nlengths = [8]\ntokens = 256\n");
    cmd("run", &before, &out, &["-q"]).success();
    let after = spec(
        tmp.path(),
        "every",
        None,
        "[eval]\nlengths = [8]\ntokens = 256\nevery = 4\n",
    );
    let again = cmd("run", &after, &out, &[]).success();
    let err = stderr(&again);
    assert!(
        err.contains("it lacks the evaluations [eval] every = 4 asks for at steps 4, 8, 12"),
        "{err}"
    );
    let page = read(out.reports.join("every/index.html"));
    assert!(
        page.contains("Not evaluated at the steps [eval] every now asks for"),
        "the page"
    );
    assert!(page.contains("absolute at steps 4, 8, 12"), "the page names the steps");
}

/// Item 13: `rope_scaling` errors say what is wrong, duplicates and absurd factors are refused.
#[test]
fn rope_scaling_errors_say_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    for (value, says) in [
        (
            r#"{ kind = "cubic", factor = 2.0 }"#,
            "unknown variant `cubic`, expected `linear` or `ntk`",
        ),
        (r#"{ kind = "ntk" }"#, "missing field `factor`"),
        (r#"{ kind = "ntk", factor = 2.0, base = 3 }"#, "unknown key `base`"),
        (
            r#"[{ kind = "ntk", factor = 2.0 }, { kind = "lin", factor = 2.0 }]"#,
            "entry 2: unknown variant `lin`",
        ),
        (
            r#"[{ kind = "ntk", factor = 2.0 }, { kind = "ntk", factor = 2.0 }]"#,
            "ntk ×2 is listed twice",
        ),
        (r#"{ kind = "ntk", factor = 1e308 }"#, "not 1e308"),
    ] {
        let eval = format!("[eval]\nrope_scaling = {value}\n");
        let s = spec(tmp.path(), "rs", None, &eval);
        let a = validate(&s, &[]).code(2);
        let err = stderr(&a);
        assert!(
            err.contains("key `eval.rope_scaling`") && err.contains(says),
            "{value}: {err}"
        );
        assert!(!err.contains("untagged enum"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

/// Item 14: the smaller faults.
#[test]
fn slurm_scripts_escape_percent_refuse_repeated_options_and_take_unlimited_time() {
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let runs = tmp.path().join("runs%u");
    let s = spec(tmp.path(), "sl", None, "[slurm]\ntime = \"UNLIMITED\"\n");
    let a = gptlab()
        .args([
            "submit",
            s.to_str().unwrap(),
            "--dry-run",
            "--runs-dir",
            runs.to_str().unwrap(),
        ])
        .args(["--reports-dir", out.reports.to_str().unwrap()])
        .assert()
        .success();
    let text = stdout(&a);
    assert!(text.contains("#SBATCH --time=UNLIMITED"), "{text}");
    let outputs: Vec<&str> = text.lines().filter(|l| l.starts_with("#SBATCH --output=")).collect();
    assert_eq!(outputs.len(), 2, "{text}");
    for l in outputs {
        assert!(l.contains("runs%%u/sl/slurm/"), "a % of the path is escaped: {l}");
    }
    for (slurm, says) in [
        ("extra = [\"--array=0-99\"]", "--array is set by gptlab"),
        ("extra = [\"--signal=B:USR2@60\"]", "--signal is set by gptlab"),
        ("extra = [\"--chdir=/tmp\"]", "--chdir is set by gptlab"),
        ("time = \"soon\"", "is not a Slurm time limit"),
    ] {
        let bad = spec(tmp.path(), "sl", None, &format!("[slurm]\n{slurm}\n"));
        validate(&bad, &[]).code(2).stderr(predicate::str::contains(says));
    }
    // "0" is Slurm's "no limit", so a warning 300 s before it is no contradiction.
    let zero = spec(tmp.path(), "sl", None, "[slurm]\ntime = \"0\"\n");
    validate(&zero, &[]).success();
}

#[test]
fn an_unreadable_metrics_row_is_set_aside_by_the_report_with_a_note() {
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let s = spec(tmp.path(), "torn", None, "");
    cmd("run", &s, &out, &["-q", "--no-report"]).success();
    let metrics = out.runs.join("torn/rope/metrics.csv");
    let mut lines: Vec<String> = read(&metrics).lines().map(String::from).collect();
    lines[3] = "garbage,,,".into();
    let header: Vec<&str> = lines[0].split(',').collect();
    let train = header.iter().position(|h| *h == "train_loss").unwrap();
    let mut cells: Vec<String> = lines[5].split(',').map(String::from).collect();
    cells[train] = "-1.5".into();
    lines[5] = cells.join(",");
    std::fs::write(&metrics, lines.join("\n") + "\n").unwrap();
    let eval = out.runs.join("torn/absolute/eval.csv");
    std::fs::write(&eval, format!("{}not,a,row\n", read(&eval))).unwrap();
    cmd("report", &s, &out, &["--no-samples"]).success();
    let page = read(out.reports.join("torn/index.html"));
    assert!(
        page.contains("1 metrics row(s) could not be read and are left out"),
        "the page"
    );
    assert!(page.contains("row 4"), "the row is named");
    assert!(page.contains("1 metrics row(s) have a negative loss"), "the page");
    assert!(
        page.contains("row(s) of the runs&#39; eval.csv could not be read")
            || page.contains("row(s) of the runs' eval.csv could not be read")
    );
}

#[test]
fn a_junk_lock_does_not_block_a_run_for_long() {
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let s = spec(tmp.path(), "junk", None, "");
    let run_dir = out.runs.join("junk/absolute");
    std::fs::create_dir_all(&run_dir).unwrap();
    let lock = run_dir.join(".lock");
    std::fs::write(&lock, "not a lock at all").unwrap();
    let old = std::time::SystemTime::now() - gptlab::lock::UNREADABLE_GRACE - Duration::from_secs(2);
    std::fs::File::options()
        .write(true)
        .open(&lock)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let status = common::status(&s, &out.runs).success();
    assert!(!stdout(&status).contains("running"), "{}", stdout(&status));
    let done = cmd("run", &s, &out, &["-q", "--no-report", "--lock-timeout", "2"]).success();
    assert!(
        stderr(&done).contains("unreadable"),
        "the takeover is said: {}",
        stderr(&done)
    );
    assert!(!lock.exists());
    // A forged heartbeat far in the future holds nothing either.
    let future = serde_json::json!({
        "host": "elsewhere", "pid": 1, "start_time": null, "job": null,
        "acquired": 4_000_000_000u64, "heartbeat": 4_000_000_000u64, "timeout_s": 60
    });
    std::fs::write(&lock, future.to_string()).unwrap();
    assert!(
        matches!(gptlab::lock::inspect(&lock), gptlab::lock::LockState::Stale(ref why) if why.contains("in the future"))
    );
}

#[test]
fn seed_layouts_are_named_when_they_do_not_match() {
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let single = spec(tmp.path(), "lay", None, "");
    cmd("run", &single, &out, &["-q", "--no-report"]).success();
    cmd("report", &single, &out, &["--seeds", "2", "--no-samples"])
        .code(1)
        .stderr(predicate::str::contains(
            "trained once, without seeds: report without --seeds",
        ));
    let seeded = spec(tmp.path(), "lay2", Some("[1, 2]"), "");
    cmd(
        "run",
        &seeded,
        &out,
        &["-q", "--no-report", "--only", "absolute/seed=1"],
    )
    .success();
    // A run folder of seeds: `sample` names them.
    gptlab()
        .args([
            "sample",
            out.runs.join("lay2/absolute").to_str().unwrap(),
            "--prompt",
            "A",
        ])
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("trained over several seeds: name one of its seed folders")
                .and(predicate::str::contains("seed=1")),
        );
    // Seeds not started show no "-0 s".
    cmd("report", &seeded, &out, &["--no-samples"]).success();
    let page = read(out.reports.join("lay2/index.html"));
    assert!(!page.contains("-0 s"), "a negative zero duration on the page");
}

#[test]
fn an_experiment_wide_error_is_not_said_to_be_a_run_s() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spec(tmp.path(), "base", None, "[report]\nbaseline = \"nobody\"\n");
    let a = validate(&s, &[]).code(2);
    let err = stderr(&a);
    assert!(err.contains("key `report.baseline`: no run named `nobody`"), "{err}");
    assert!(!err.contains("(in run"), "{err}");
}

#[test]
fn a_stop_during_the_last_evaluation_leaves_a_complete_run_and_exit_0() {
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let s = tiny_spec(tmp.path(), "last", "");
    let a = gptlab()
        .arg("run")
        .arg(&s)
        .args(out.args())
        .args(["-q", "--no-report"])
        .env("GPTLAB_FAULT", "sigterm:evaluated@16")
        .assert()
        .success();
    assert!(!stderr(&a).contains("to resume"), "{}", stderr(&a));
    let status = read(out.runs.join("last/default/status.json"));
    assert!(status.contains("complete"), "{status}");
    // The same signal one phase earlier is an interruption: exit 130, resumable.
    let s2 = tiny_spec(tmp.path(), "mid", "");
    gptlab()
        .arg("run")
        .arg(&s2)
        .args(out.args())
        .args(["-q", "--no-report"])
        .env("GPTLAB_FAULT", "sigterm:evaluated@10")
        .assert()
        .code(130)
        .stderr(predicate::str::contains("to resume"));
}
