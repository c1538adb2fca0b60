//! The command line's arguments (clap definitions only; `main.rs` acts on them).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use gptlab::device::DeviceRequest;
use gptlab::session::SessionOptions;
use gptlab::spec::SetArg;

#[derive(Parser)]
#[command(
    name = "gptlab",
    version,
    about = "Compare transformer variants by writing a TOML file"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// List every spec under a folder: name, runs, total steps (or its errors).
    List {
        /// Folder to search.
        #[arg(default_value = "experiments")]
        dir: PathBuf,
    },
    /// Parse and check spec files; exit 0 if all are valid.
    Validate {
        /// Spec files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        select: Select,
    },
    /// Show the expanded runs: overrides, phases, parameters, tokens.
    Plan {
        /// Spec file.
        file: PathBuf,
        /// Also list every setting of each run with where its value came from (the file and
        /// line, a spec it extends, a `[[run]]`, the `[sweep]`, a `--set`, or the default).
        #[arg(long)]
        explain: bool,
        #[command(flatten)]
        select: Select,
    },
    /// Train every run of a spec (or those named with --only), then write its report.
    Run(RunArgs),
    /// Train every point of a spec's [sweep] grid, then write its report.
    Sweep(RunArgs),
    /// Write reports/<experiment>/ from the runs' metrics and checkpoints.
    Report(ReportArgs),
    /// One line per run: state, step of total, host, last update, Slurm job (from the run
    /// folders; works while runs train, here or on a cluster).
    Status {
        /// Spec file.
        file: PathBuf,
        #[command(flatten)]
        select: Select,
        /// Folder that holds `<experiment>/<run>/`.
        #[arg(long, default_value = "runs")]
        runs_dir: PathBuf,
    },
    /// Send the runs to Slurm: a job array, one task per run not yet complete, and a report job
    /// that runs after it. Resources come from the spec's [slurm] section (or --set slurm.KEY=…).
    Submit(SubmitArgs),
    /// Parameters per component and memory to train or serve, for a spec's runs or a
    /// Hugging Face `config.json`.
    Params(ParamsArgs),
    /// Generate text from a checkpoint folder (runs/<experiment>/<run>/checkpoints/step_N).
    Sample(SampleArgs),
}

#[derive(Args, Clone)]
pub(crate) struct OutDirs {
    /// Folder that holds `<experiment>/<run>/`.
    #[arg(long, default_value = "runs")]
    pub(crate) runs_dir: PathBuf,
    /// Folder that holds `<experiment>/` reports.
    #[arg(long, default_value = "reports")]
    pub(crate) reports_dir: PathBuf,
}

#[derive(Args, Clone)]
pub(crate) struct Select {
    /// Override a key for every run, e.g. --set train.batch_size=16 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) sets: Vec<SetArg>,
    /// Only these runs (repeatable): a run's name (all its seeds) or `RUN/seed=S`.
    #[arg(long = "only", value_name = "RUN")]
    pub(crate) only: Vec<String>,
    /// Repeat every run over the first N seeds of 3407, 1, 2, 3, …
    /// (`--set experiment.seeds=[...]` names them).
    #[arg(long, value_name = "N")]
    pub(crate) seeds: Option<usize>,
}

#[derive(Args)]
pub(crate) struct RunArgs {
    /// Spec file.
    pub(crate) file: PathBuf,
    #[command(flatten)]
    pub(crate) select: Select,
    #[command(flatten)]
    pub(crate) out: OutDirs,
    /// Do not write the report at the end.
    #[arg(long)]
    pub(crate) no_report: bool,
    /// With --no-report, still redraw the live page at each evaluation (Slurm tasks do; the
    /// report job writes the final page).
    #[arg(long)]
    pub(crate) live_report: bool,
    /// Start every selected run over: discard its checkpoints and metrics.
    #[arg(long)]
    pub(crate) fresh: bool,
    /// Worker threads in all (default: all cores).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Device: auto (GPU when this build has CUDA and one is present), cpu or cuda; overrides
    /// `[experiment] device`.
    #[arg(long, value_name = "auto|cpu|cuda")]
    pub(crate) device: Option<DeviceRequest>,
    /// Runs to train at the same time, dividing the threads between them (default 1).
    #[arg(long, default_value_t = 1)]
    pub(crate) jobs: usize,
    /// No progress output.
    #[arg(long, short)]
    pub(crate) quiet: bool,
    /// Wait for runs another gptlab is training (default: skip them and exit 1 at the end).
    #[arg(long)]
    pub(crate) wait: bool,
    #[command(flatten)]
    pub(crate) lock: LockArgs,
    /// Written by `gptlab submit` into each task: the run's settings' SHA-256 when it was
    /// queued; the task refuses to train if the spec now gives it other settings.
    #[arg(long, value_name = "SHA256", hide = true)]
    pub(crate) submitted_settings: Option<String>,
}

impl RunArgs {
    /// How the session trains: threads, jobs, device, reports, locks; a Ctrl-C handler is
    /// installed for its stop flag. Zero threads or jobs is a usage error.
    pub(crate) fn session_options(&self) -> Result<SessionOptions, gptlab::Error> {
        if self.threads == Some(0) || self.jobs == 0 {
            return Err(gptlab::Error::Usage("--threads and --jobs must be at least 1".into()));
        }
        if let Some(why) = self.threads.and_then(gptlab::session::threads_problem) {
            return Err(gptlab::Error::Usage(format!("--threads {why}")));
        }
        Ok(SessionOptions {
            fresh: self.fresh,
            quiet: self.quiet,
            threads: self.threads,
            jobs: self.jobs,
            device: self.device,
            reports_dir: (!self.no_report).then(|| self.out.reports_dir.clone()),
            live_reports_dir: (!self.no_report || self.live_report).then(|| self.out.reports_dir.clone()),
            stop: gptlab::interrupt::install(),
            wait: self.wait,
            lock_timeout: self.lock.timeout()?,
            submitted_settings: self.submitted_settings.clone(),
        })
    }
}

#[derive(Args, Clone, Copy)]
pub(crate) struct LockArgs {
    /// Seconds a run's lock may go without a heartbeat before another gptlab takes it over (a
    /// process or node that died); its holder refreshes it every quarter of that.
    #[arg(long, value_name = "SECONDS", default_value_t = gptlab::lock::DEFAULT_TIMEOUT.as_secs())]
    pub(crate) lock_timeout: u64,
}

impl LockArgs {
    /// The timeout; zero is a usage error (every lock would be stale at once).
    pub(crate) fn timeout(self) -> Result<std::time::Duration, gptlab::Error> {
        match self.lock_timeout {
            0 => Err(gptlab::Error::Usage("--lock-timeout must be at least 1".into())),
            s => Ok(std::time::Duration::from_secs(s)),
        }
    }
}

#[derive(Args)]
pub(crate) struct SubmitArgs {
    /// Spec file.
    pub(crate) file: PathBuf,
    #[command(flatten)]
    pub(crate) select: Select,
    #[command(flatten)]
    pub(crate) out: OutDirs,
    /// Print the scripts and the runs they would train; submit nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// The tasks' lock timeout.
    #[command(flatten)]
    pub(crate) lock: LockArgs,
}

#[derive(Args)]
pub(crate) struct ReportArgs {
    /// Spec file; several draw their runs on one page (reports/<a>+<b>/).
    #[arg(required = true)]
    pub(crate) files: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) select: Select,
    #[command(flatten)]
    pub(crate) out: OutDirs,
    /// Skip generating text samples.
    #[arg(long)]
    pub(crate) no_samples: bool,
}

#[derive(Args)]
pub(crate) struct ParamsArgs {
    /// A spec (`.toml`) or a model's `config.json`.
    pub(crate) file: PathBuf,
    #[command(flatten)]
    pub(crate) select: Select,
    /// Context length for the KV-cache figure.
    #[arg(long, default_value_t = 4096)]
    pub(crate) context: u64,
    /// Batch size for the KV-cache figure.
    #[arg(long, default_value_t = 1)]
    pub(crate) batch: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct SampleArgs {
    /// Checkpoint folder.
    pub(crate) checkpoint: PathBuf,
    /// Text to continue.
    #[arg(long)]
    pub(crate) prompt: String,
    /// Tokens to generate (characters with the `char` tokenizer), at most 100000.
    #[arg(long, default_value_t = 500)]
    pub(crate) tokens: usize,
    /// Softmax temperature.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) temperature: f64,
    /// Keep only the K most likely tokens (0: all).
    #[arg(long, default_value_t = 10)]
    pub(crate) top_k: usize,
    /// Seed of the sampling stream.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
}
