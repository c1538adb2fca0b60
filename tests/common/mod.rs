//! Helpers the integration tests share: model presets, the tiny spec, the binary, a browser.
#![allow(dead_code)] // each test file uses its own subset

pub mod fused;

use std::path::{Path, PathBuf};

use gptlab::model::{MlpKind, ModelConfig, ModelOptions, NormKind, Position};

/// The committed corpus (tiny-shakespeare).
pub fn corpus_path() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/data/tinyshakespeare.txt").to_string()
}

/// The `gptlab` binary of this build, its token cache in target/tmp (not the user's
/// `~/.cache`, where a development build's entries would outlive it); a test may set its own.
pub fn gptlab() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("gptlab").unwrap();
    cmd.env(
        "GPTLAB_CACHE_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("token-cache"),
    );
    cmd
}

/// Writes `text` to `dir/name`, with `CORPUS` replaced by the corpus path.
pub fn write_spec(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text.replace("CORPUS", &corpus_path())).unwrap();
    path
}

/// A spec that trains in a second: one layer of width 16, two heads, batch 4, two phases
/// (10 steps at length 8, then 6 at 16), an evaluation every 5 steps on one batch.
/// `CORPUS` stands for the data path (see [`write_spec`]); append `[[run]]`s or overrides.
pub const TINY_SPEC: &str = r#"
[experiment]
seed = 5
[data]
path = "CORPUS"
[model]
n_layer = 1
n_embd = 16
n_head = 2
dropout = 0.1
[train]
batch_size = 4
eval_every = 5
eval_batches = 1
checkpoint_every = 4
keep_checkpoints = 2
[[phase]]
seq_len = 8
steps = 10
[[phase]]
seq_len = 16
steps = 6
"#;

/// [`TINY_SPEC`] as experiment `name` with `extra` appended, written to `dir/<name>.toml`.
pub fn tiny_spec(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let text = TINY_SPEC.replace("[experiment]\n", &format!("[experiment]\nname = \"{name}\"\n"));
    write_spec(dir, &format!("{name}.toml"), &format!("{text}{extra}"))
}

/// The arguments of a quiet training without a report: `run SPEC --runs-dir RUNS -q --no-report`.
pub fn quiet_run_args(spec: &Path, runs: &Path) -> Vec<String> {
    let (spec, runs) = (spec.display().to_string(), runs.display().to_string());
    ["run", &spec, "--runs-dir", &runs, "-q", "--no-report"]
        .map(String::from)
        .to_vec()
}

/// `gptlab run SPEC --runs-dir RUNS -q --no-report`.
pub fn quiet_run(spec: &Path, runs: &Path) -> assert_cmd::Command {
    let mut cmd = gptlab();
    cmd.args(quiet_run_args(spec, runs));
    cmd
}

/// Python that imports `module`: `GPTLAB_TEST_PYTHON`, else target/tb-venv's, where
/// scripts/test-deps.sh installs `tensorboard` and `tokenizers` (independent references).
pub fn test_python(module: &str) -> PathBuf {
    let path = std::env::var_os("GPTLAB_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tb-venv/bin/python"));
    let ok = std::process::Command::new(&path)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import {module}: run scripts/test-deps.sh (`just test` does), or set GPTLAB_TEST_PYTHON",
        path.display()
    );
    path
}

/// A config of `vocab` tokens at block size `block` with the options `arch`.
pub fn config(vocab: usize, block: usize, arch: ModelOptions) -> ModelConfig {
    ModelConfig {
        vocab_size: vocab,
        block_size: block,
        arch,
    }
}

/// gpt-mini (6 layers, width 192, 6 heads) on the 65 characters at block size `block`.
pub fn gpt_mini(position: Position, block: usize) -> ModelConfig {
    config(
        65,
        block,
        ModelOptions {
            position,
            ..ModelOptions::default()
        },
    )
}

/// Two layers of width `n_embd` with `n_head` query and `n_kv_head` key/value heads.
pub fn small(n_embd: usize, n_head: usize, n_kv_head: usize, position: Position) -> ModelOptions {
    ModelOptions {
        n_layer: 2,
        n_embd,
        n_head,
        n_kv_head: Some(n_kv_head),
        position,
        ..ModelOptions::default()
    }
}

/// `arch` with a LLaMA/Qwen3-style block: RMSNorm, SwiGLU, no biases, tied embeddings, q/k
/// norms and an explicit head width.
pub fn llama_style(arch: ModelOptions, head_dim: usize) -> ModelOptions {
    ModelOptions {
        norm: NormKind::RmsNorm,
        mlp: MlpKind::Swiglu,
        mlp_multiple_of: 8,
        bias: false,
        tie_embeddings: true,
        qk_norm: true,
        head_dim: Some(head_dim),
        ..arch
    }
}

/// The headless browser, or a failure saying how to install it (`.ci/run` does).
pub fn chromium() -> String {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c.to_string();
        }
    }
    panic!(
        "no headless browser found (tried chromium, chromium-browser, google-chrome): this test renders \
         the report page in a real browser. Install Debian's chromium (`apt-get install chromium`); \
         `.ci/run` and `just test` do it."
    );
}

/// The page's DOM after it loaded in headless Chromium (flags as the machine's notes advise:
/// no sandbox as root, no background networking on a closed network).
pub fn dump_dom(page: &Path, profile: &Path) -> String {
    dump_dom_at(page, profile, (800, 600))
}

/// [`dump_dom`] in a window `size` (width, height) pixels large.
pub fn dump_dom_at(page: &Path, profile: &Path, size: (u32, u32)) -> String {
    let out = std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={},{}", size.0, size.1))
        .args(["--virtual-time-budget=5000", "--dump-dom"])
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `gptlab status SPEC --runs-dir RUNS`, run.
pub fn status(spec: &Path, runs: &Path) -> assert_cmd::assert::Assert {
    gptlab()
        .args(["status", spec.to_str().unwrap(), "--runs-dir", runs.to_str().unwrap()])
        .assert()
}

/// What a command printed on standard output.
pub fn stdout_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).into_owned()
}

/// The rows of a CSV file as maps from column to value.
pub fn csv_rows(file: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut r = csv::Reader::from_path(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let header = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            header
                .iter()
                .map(String::from)
                .zip(rec.iter().map(String::from))
                .collect()
        })
        .collect()
}

/// `runs/` and `reports/` folders under a temporary folder, as command-line arguments.
pub struct OutDirs {
    /// The temporary folder (removed on drop).
    pub tmp: tempfile::TempDir,
    /// `<tmp>/runs`.
    pub runs: PathBuf,
    /// `<tmp>/reports`.
    pub reports: PathBuf,
}

impl OutDirs {
    /// Fresh, empty folders.
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (runs, reports) = (tmp.path().join("runs"), tmp.path().join("reports"));
        Self { tmp, runs, reports }
    }

    /// `--runs-dir RUNS --reports-dir REPORTS`.
    pub fn args(&self) -> [&str; 4] {
        [
            "--runs-dir",
            self.runs.to_str().unwrap(),
            "--reports-dir",
            self.reports.to_str().unwrap(),
        ]
    }
}

/// What a run's results are, to compare two trainings bit for bit: every step's losses, learning
/// rate and gradient norm (as bits; the timing columns are left out), `eval.csv`,
/// `position_loss.csv`, and the newest checkpoint's weights and optimizer state.
pub fn results_fingerprint(run_dir: &Path) -> Vec<String> {
    let rows = gptlab::run_dir::read_metrics(&run_dir.join("metrics.csv")).unwrap();
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {} {:?} {} {}",
                r.step,
                r.train_loss.to_bits(),
                r.val_loss.map(f32::to_bits),
                r.lr.to_bits(),
                r.grad_norm.to_bits()
            )
        })
        .collect();
    for file in ["eval.csv", "position_loss.csv"] {
        out.push(std::fs::read_to_string(run_dir.join(file)).unwrap_or_else(|_| format!("no {file}")));
    }
    let newest = gptlab::checkpoint::list(&run_dir.join("checkpoints"))
        .into_iter()
        .next();
    let (step, dir) = newest.expect("a checkpoint");
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        out.push(format!("step {step} {file} {}", gptlab::fsio::sha256_hex(&bytes)));
    }
    out
}

/// Runs `cmd` and returns its stdout; fails naming `what`, with both outputs, when it cannot
/// start or exits non-zero.
pub fn output_ok(cmd: &mut std::process::Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs this test binary's other tests again on every other instruction-set path the CPU
/// runs (`GPTLAB_ISA` is read once per process, so each path needs a process of its own),
/// failing with their output when any fails. `this_test` is skipped in the children.
pub fn rerun_on_other_paths(this_test: &str) {
    let exe = std::env::current_exe().unwrap();
    let current = gptlab::isa::current();
    for isa in gptlab::isa::Isa::supported_paths()
        .into_iter()
        .filter(|&i| i != current)
    {
        let text = output_ok(
            std::process::Command::new(&exe)
                .args(["--skip", this_test, "--test-threads", "2"])
                .env(gptlab::isa::ENV, isa.name()),
            &format!("the tests on the {isa} path"),
        );
        assert!(
            text.contains("test result: ok."),
            "on the {isa} path no tests ran:\n{text}"
        );
    }
}
