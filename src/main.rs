//! The `gptlab` command line: parses arguments, calls the library, maps errors to exit codes.
//!
//! Exit codes: 0 success; 1 a run failed or diverged, or an I/O error; 2 a bad spec or usage;
//! 130 interrupted (a checkpoint was written; the same command resumes).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Args, Parser, Subcommand};
use gptlab::Error;
use gptlab::device::DeviceRequest;
use gptlab::sample::{SampleOptions, Sampler};
use gptlab::session::{Experiment, SessionOptions};
use gptlab::spec::SetArg;

/// Counts live bytes so attention memory can be measured (`[measure] attention = true`).
#[global_allocator]
static ALLOCATOR: gptlab::probe::CountingAlloc = gptlab::probe::CountingAlloc;

#[derive(Parser)]
#[command(
    name = "gptlab",
    version,
    about = "Compare transformer variants by writing a TOML file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        #[command(flatten)]
        select: Select,
    },
    /// Train every run of a spec (or those named with --only), then write its report.
    Run(RunArgs),
    /// Train every point of a spec's [sweep] grid, then write its report.
    Sweep(RunArgs),
    /// Write reports/<experiment>/ from the runs' metrics and checkpoints.
    Report {
        /// Spec file.
        file: PathBuf,
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        out: OutDirs,
        /// Skip generating text samples.
        #[arg(long)]
        no_samples: bool,
    },
    /// Parameters per component and memory to train or serve, for a spec's runs or a
    /// Hugging Face `config.json`.
    Params {
        /// A spec (`.toml`) or a model's `config.json`.
        file: PathBuf,
        #[command(flatten)]
        select: Select,
        /// Context length for the KV-cache figure.
        #[arg(long, default_value_t = 4096)]
        context: u64,
        /// Batch size for the KV-cache figure.
        #[arg(long, default_value_t = 1)]
        batch: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Generate text from a checkpoint folder (runs/<experiment>/<run>/checkpoints/step_N).
    Sample {
        /// Checkpoint folder.
        checkpoint: PathBuf,
        /// Text to continue.
        #[arg(long)]
        prompt: String,
        /// Characters to generate.
        #[arg(long, default_value_t = 500)]
        tokens: usize,
        /// Softmax temperature.
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        /// Keep only the K most likely characters (0: all).
        #[arg(long, default_value_t = 10)]
        top_k: usize,
        /// Seed of the sampling stream.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Args, Clone)]
struct OutDirs {
    /// Folder that holds `<experiment>/<run>/`.
    #[arg(long, default_value = "runs")]
    runs_dir: PathBuf,
    /// Folder that holds `<experiment>/` reports.
    #[arg(long, default_value = "reports")]
    reports_dir: PathBuf,
}

#[derive(Args, Clone)]
struct Select {
    /// Override a key for every run, e.g. --set train.batch_size=16 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<SetArg>,
    /// Only these runs (repeatable).
    #[arg(long = "only", value_name = "RUN")]
    only: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    /// Spec file.
    file: PathBuf,
    #[command(flatten)]
    select: Select,
    #[command(flatten)]
    out: OutDirs,
    /// Do not write the report at the end.
    #[arg(long)]
    no_report: bool,
    /// Start every selected run over: discard its checkpoints and metrics.
    #[arg(long)]
    fresh: bool,
    /// Worker threads in all (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Device: auto (GPU when this build has CUDA and one is present), cpu or cuda; overrides
    /// `[experiment] device`.
    #[arg(long, value_name = "auto|cpu|cuda")]
    device: Option<DeviceRequest>,
    /// Runs to train at the same time, dividing the threads between them (default 1).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

type Outcome = Result<ExitCode, Error>;

fn main() -> ExitCode {
    gptlab::alloc::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List { dir } => list(&dir),
        Command::Validate { files, select } => validate(&files, &select),
        Command::Plan { file, select } => show_plan(&file, &select),
        Command::Run(args) => run(&args, false),
        Command::Sweep(args) => run(&args, true),
        Command::Report {
            file,
            select,
            out,
            no_samples,
        } => report(&file, &select, &out, !no_samples),
        Command::Params {
            file,
            select,
            context,
            batch,
            json,
        } => params(&file, &select, context, batch, json),
        Command::Sample {
            checkpoint,
            prompt,
            tokens,
            temperature,
            top_k,
            seed,
        } => sample(&checkpoint, &prompt, tokens, temperature, top_k, seed),
    };
    result.unwrap_or_else(|e| {
        eprintln!("{e}");
        ExitCode::from(e.exit_code())
    })
}

/// Loads and plans a spec with the command line's `--set`s and `--only`s.
fn load(file: &Path, select: &Select, runs_dir: &Path) -> Result<Experiment, Error> {
    Experiment::load(file, &select.sets, &select.only, runs_dir)
}

fn list(dir: &Path) -> Outcome {
    if !dir.is_dir() {
        return Err(Error::Runtime(anyhow!("{} is not a folder", dir.display())));
    }
    let (text, bad) = gptlab::discover::listing(dir, &gptlab::discover::discover(dir));
    println!("{text}");
    Ok(if bad > 0 { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

fn validate(files: &[PathBuf], select: &Select) -> Outcome {
    let mut failed = false;
    for file in files {
        match load(file, select, Path::new("runs")) {
            Ok(exp) => println!(
                "{}: ok, experiment `{}`, {} runs",
                file.display(),
                exp.name(),
                exp.selected().len()
            ),
            Err(Error::Spec(e)) => {
                eprintln!("{e}");
                failed = true;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(if failed { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

fn show_plan(file: &Path, select: &Select) -> Outcome {
    let exp = load(file, select, Path::new("runs"))?;
    let runs = exp.selected();
    println!("experiment `{}` ({}): {} runs", exp.name(), file.display(), runs.len());
    for p in runs {
        println!("\n{}", p.describe());
    }
    Ok(ExitCode::SUCCESS)
}

fn run(args: &RunArgs, sweep: bool) -> Outcome {
    let exp = load(&args.file, &args.select, &args.out.runs_dir)?;
    if sweep && !exp.spec.has_sweep() {
        return Err(Error::Runtime(anyhow!(
            "{} has no [sweep] section; use `gptlab run`",
            args.file.display()
        )));
    }
    let opts = SessionOptions {
        fresh: args.fresh,
        quiet: args.quiet,
        threads: args.threads,
        jobs: args.jobs,
        device: args.device,
        reports_dir: (!args.no_report).then(|| args.out.reports_dir.clone()),
        stop: gptlab::interrupt::install(),
    };
    let outcome = gptlab::session::train(&exp, &opts)?;
    if outcome.interrupted {
        eprintln!(
            "interrupted: run `gptlab {} {}` again to resume",
            if sweep { "sweep" } else { "run" },
            args.file.display()
        );
        return Ok(ExitCode::from(130));
    }
    if let Some(page) = &outcome.report {
        println!("report: {}", page.display());
    }
    let line = outcome.summary(exp.name(), &args.out.runs_dir);
    if outcome.failed.is_empty() {
        println!("{line}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{line}");
        Ok(ExitCode::from(1))
    }
}

fn report(file: &Path, select: &Select, out: &OutDirs, with_samples: bool) -> Outcome {
    let exp = load(file, select, &out.runs_dir)?;
    let page = gptlab::session::report(&exp, &out.reports_dir, false, with_samples)?;
    println!("report: {}", page.display());
    Ok(ExitCode::SUCCESS)
}

fn sample(checkpoint: &Path, prompt: &str, tokens: usize, temperature: f64, top_k: usize, seed: u64) -> Outcome {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Runtime(anyhow!(
            "--temperature must be a positive number, not {temperature}"
        )));
    }
    let dev = dfdx::tensor::Cpu::default();
    let sampler =
        Sampler::load(&dev, checkpoint).with_context(|| format!("loading checkpoint {}", checkpoint.display()))?;
    let opts = SampleOptions {
        max_new_tokens: tokens,
        temperature,
        top_k,
        seed,
    };
    println!("{prompt}{}", sampler.generate(prompt, &opts)?);
    Ok(ExitCode::SUCCESS)
}

fn params(file: &Path, select: &Select, context: u64, batch: u64, json: bool) -> Outcome {
    use gptlab::params::Arch;
    let archs: Vec<(String, Arch)> = if file.extension().is_some_and(|e| e == "json") {
        vec![(file.display().to_string(), Arch::from_hf_config(file)?)]
    } else {
        let exp = load(file, select, Path::new("runs"))?;
        exp.selected()
            .iter()
            .map(|p| (p.name.clone(), Arch::from_model(&p.model)))
            .collect()
    };
    println!("{}", gptlab::params::render(&archs, context, batch, json)?);
    Ok(ExitCode::SUCCESS)
}
