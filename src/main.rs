//! The `gptlab` command line: parses arguments, calls the library, maps errors to exit codes.
//!
//! Exit codes: 0 success; 1 a run failed or diverged, or an I/O error; 2 a bad spec or usage;
//! 130 interrupted (a checkpoint was written; the same command resumes).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

/// Counts live bytes so attention memory can be measured (`[measure] attention = true`).
#[global_allocator]
static ALLOCATOR: gptlab::probe::CountingAlloc = gptlab::probe::CountingAlloc;
use gptlab::data::Corpus;
use gptlab::device::{Chosen, DeviceRequest};
use gptlab::lock::ExperimentLock;
use gptlab::plan::{RunPlan, plan};
use gptlab::report::write_report;
use gptlab::sample::{SampleOptions, Sampler};
use gptlab::spec::{SetArg, SpecErrors, SpecFile};
#[cfg(feature = "cuda")]
use gptlab::train::train_in_turn;
use gptlab::train::{JobLayout, RunOptions, RunStatus, read_status, train_runs};

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
    #[arg(long, value_enum)]
    device: Option<DeviceRequest>,
    /// Runs to train at the same time, dividing the threads between them (default 1).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

/// A failure and the exit code it maps to.
enum Failure {
    Spec(SpecErrors),
    Runtime(anyhow::Error),
}

impl From<SpecErrors> for Failure {
    fn from(e: SpecErrors) -> Self {
        Failure::Spec(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

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
    match result {
        Ok(code) => code,
        Err(Failure::Spec(e)) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Loads, expands and plans a spec, keeping the runs named by `--only`.
fn load_plans(file: &Path, select: &Select, runs_dir: &Path) -> Result<(SpecFile, Vec<RunPlan>), Failure> {
    let spec = SpecFile::load(file)?;
    let mut runs = spec.expand(&select.sets)?;
    if !select.only.is_empty() {
        let unknown: Vec<&String> = select
            .only
            .iter()
            .filter(|o| !runs.iter().any(|r| &r.name == *o))
            .collect();
        if !unknown.is_empty() {
            let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
            return Err(Failure::Runtime(anyhow::anyhow!(
                "{}: no run named {:?}; its runs are {:?}",
                file.display(),
                unknown,
                names
            )));
        }
        runs.retain(|r| select.only.contains(&r.name));
    }
    let plans = plan(&runs, runs_dir)?;
    Ok((spec, plans))
}

fn list(dir: &Path) -> Result<ExitCode, Failure> {
    if !dir.is_dir() {
        return Err(Failure::Runtime(anyhow::anyhow!("{} is not a folder", dir.display())));
    }
    let found = gptlab::discover::discover(dir);
    let mut bad = 0;
    for (path, summary) in &found {
        match summary {
            Ok(s) => println!(
                "{:<40} {:<20} {:>3} runs {:>8} steps",
                path.display(),
                s.name,
                s.runs,
                s.total_steps
            ),
            Err(e) => {
                bad += 1;
                println!("{:<40} INVALID", path.display());
                for line in e.to_string().lines() {
                    println!("    {line}");
                }
            }
        }
    }
    if found.is_empty() {
        println!("no spec files (*.toml) under {}", dir.display());
    }
    Ok(if bad > 0 { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

fn validate(files: &[PathBuf], select: &Select) -> Result<ExitCode, Failure> {
    let mut failed = false;
    for file in files {
        match load_plans(file, select, Path::new("runs")) {
            Ok((spec, plans)) => println!(
                "{}: ok, experiment `{}`, {} runs",
                file.display(),
                spec.name,
                plans.len()
            ),
            Err(Failure::Spec(e)) => {
                eprintln!("{e}");
                failed = true;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(if failed { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

fn show_plan(file: &Path, select: &Select) -> Result<ExitCode, Failure> {
    let (spec, plans) = load_plans(file, select, Path::new("runs"))?;
    println!("experiment `{}` ({}): {} runs", spec.name, file.display(), plans.len());
    for p in &plans {
        let m = &p.model;
        println!("\nrun `{}`", p.name);
        if !p.varies.is_empty() {
            println!("  differs:   {}", p.label());
        }
        println!(
            "  model:     n_layer={} n_embd={} n_head={} n_kv_head={} position={} dropout={} vocab={} block={}",
            m.n_layer, m.n_embd, m.n_head, m.n_kv_head, m.position, m.dropout, m.vocab_size, m.block_size
        );
        println!("  params:    {}", p.num_params());
        for ph in &p.schedule.phases {
            println!(
                "  phase {}:   steps {}..={} seq_len {} lr {}",
                ph.index,
                ph.first_step,
                ph.last_step(),
                ph.seq_len,
                ph.lr
            );
        }
        println!("  batch:     {}", p.train.batch_size);
        println!(
            "  tokens:    {} ({} in the training split)",
            p.tokens_seen(),
            p.train_tokens
        );
        println!("  output:    {}", p.dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Installs the Ctrl-C handler: the first interrupt asks training to stop after the current
/// step with a checkpoint; the second exits at once.
fn install_interrupt() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let presses = AtomicUsize::new(0);
    let installed = ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) == 0 {
            flag.store(true, Ordering::SeqCst);
            eprintln!(
                "\ninterrupt: finishing the current step and writing a checkpoint (Ctrl-C again to stop at once)"
            );
        } else {
            eprintln!("\ninterrupt: stopping now; the last checkpoint is intact");
            std::process::exit(130);
        }
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will stop gptlab without a checkpoint ({e})");
    }
    stop
}

/// The device for `plans`: `--device`, else the runs' `[experiment] device`, which must agree.
fn choose_device(flag: Option<DeviceRequest>, plans: &[RunPlan]) -> Result<Chosen, Failure> {
    let request = match flag {
        Some(d) => d,
        None => {
            let mut asked: Vec<DeviceRequest> = plans.iter().map(|p| p.config.experiment.device).collect();
            asked.dedup();
            match asked.as_slice() {
                [] => DeviceRequest::Auto,
                [one] => *one,
                _ => {
                    return Err(Failure::Runtime(anyhow::anyhow!(
                        "the runs ask for different devices ({}); train them separately with --only, or pass --device",
                        asked.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
    };
    let (chosen, why) = gptlab::device::choose(request).map_err(|e| Failure::Runtime(anyhow::anyhow!(e)))?;
    eprintln!("{why}");
    Ok(chosen)
}

fn run(args: &RunArgs, sweep: bool) -> Result<ExitCode, Failure> {
    let (spec, plans) = load_plans(&args.file, &args.select, &args.out.runs_dir)?;
    if sweep && !spec.has_sweep() {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{} has no [sweep] section; use `gptlab run`",
            args.file.display()
        )));
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut layout = JobLayout::new(args.jobs, threads, plans.len());
    if layout.jobs > 1 && plans.iter().any(|p| p.config.measure.attention) {
        // The probes count time and bytes process-wide; runs side by side would mix them.
        eprintln!("note: [measure] attention is on, so the runs train one at a time (--jobs 1)");
        layout = JobLayout::new(1, threads, plans.len());
    }
    let chosen = choose_device(args.device, &plans)?;
    // A run that cannot fit would be killed mid-way; refuse it before any work. Runs trained
    // side by side need their memory at the same time.
    if let Some(available) = gptlab::probe::available_memory_bytes() {
        let mut needs: Vec<(f64, &str)> = plans
            .iter()
            .map(|p| (p.train_memory_bytes(), p.name.as_str()))
            .collect();
        needs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let need: f64 = needs.iter().take(layout.jobs).map(|n| n.0).sum();
        if need > 1.5 * available {
            let what = if layout.jobs > 1 {
                format!("{} runs at once (--jobs {})", layout.jobs, layout.jobs)
            } else {
                format!("run `{}`", needs[0].1)
            };
            return Err(Failure::Runtime(anyhow::anyhow!(
                "{what} needs about {:.1} GB to train but {:.1} GB is available; lower --jobs, train.batch_size, the \
                 longest seq_len or the model size",
                need / 1e9,
                available / 1e9
            )));
        }
    }
    let _lock = ExperimentLock::acquire(&args.out.runs_dir.join(&spec.name))?;
    let stop = install_interrupt();
    let opts = RunOptions {
        fresh: args.fresh,
        quiet: args.quiet,
        lines_only: layout.jobs > 1,
        stop: Some(stop.clone()),
    };
    let dev = dfdx::tensor::Cpu::default();
    let mut failed = vec![];
    let mut to_train = vec![];
    for p in &plans {
        if !args.fresh {
            match read_status(&p.dir) {
                Some(RunStatus::Complete { step }) if step == p.schedule.total_steps() => {
                    eprintln!("[{}] already complete ({step} steps); --fresh retrains it", p.name);
                    continue;
                }
                Some(RunStatus::Diverged { step }) => {
                    eprintln!(
                        "error: run `{}` diverged at step {step} before; --fresh retrains it",
                        p.name
                    );
                    failed.push(p.name.clone());
                    continue;
                }
                _ => {}
            }
        }
        to_train.push(p);
    }
    // Each (corpus, validation split) is loaded once and shared by the runs that read it.
    let mut corpora: Vec<(PathBuf, f64, Corpus)> = vec![];
    for p in &to_train {
        let vf = p.config.data.val_fraction;
        if !corpora.iter().any(|(path, f, _)| *path == p.data_path && *f == vf) {
            corpora.push((p.data_path.clone(), vf, Corpus::load(&p.data_path, vf)?));
        }
    }
    let runs: Vec<(&RunPlan, &Corpus)> = to_train
        .iter()
        .map(|p| {
            let vf = p.config.data.val_fraction;
            let corpus = corpora
                .iter()
                .find(|(path, f, _)| *path == p.data_path && *f == vf)
                .map(|c| &c.2)
                .expect("loaded above");
            (*p, corpus)
        })
        .collect();
    if layout.jobs > 1 && !args.quiet {
        eprintln!(
            "training {} runs, {} at a time with {} threads each",
            runs.len(),
            layout.jobs,
            layout.threads_per_run
        );
    }
    let ended = std::sync::Mutex::new((vec![], false));
    let done = |p: &RunPlan, result: anyhow::Result<gptlab::train::RunOutcome>| {
        let mut ended = ended.lock().expect("not poisoned");
        match result {
            Ok(outcome) => match outcome.status {
                RunStatus::Diverged { step } => {
                    eprintln!(
                        "error: run `{}` diverged at step {step} (non-finite loss); the other runs carry on",
                        p.name
                    );
                    ended.0.push(p.name.clone());
                }
                RunStatus::Interrupted { step } => {
                    eprintln!(
                        "interrupted: run `{}` stopped after step {step} with a checkpoint",
                        p.name
                    );
                    ended.1 = true;
                }
                _ => {}
            },
            Err(e) => {
                eprintln!("error: run `{}` failed: {e:#}", p.name);
                ended.0.push(p.name.clone());
            }
        }
    };
    match chosen {
        Chosen::Cpu => train_runs(&runs, layout, &opts, done)?,
        #[cfg(feature = "cuda")]
        Chosen::Cuda => {
            if layout.jobs > 1 {
                eprintln!("note: --jobs applies to the CPU; on the GPU the runs train one after another");
            }
            train_in_turn(&runs, &gptlab::device::open_cuda()?, &opts, done)
        }
        #[cfg(not(feature = "cuda"))]
        Chosen::Cuda => unreachable!("choose() never picks CUDA in a build without it"),
    }
    let (run_failures, interrupted) = ended.into_inner().expect("not poisoned");
    failed.extend(run_failures);
    if interrupted || stop.load(Ordering::SeqCst) {
        eprintln!(
            "interrupted: run `gptlab {} {}` again to resume",
            if sweep { "sweep" } else { "run" },
            args.file.display()
        );
        return Ok(ExitCode::from(130));
    }
    if !args.no_report {
        // The report covers the whole experiment, not only the runs trained now (--only).
        let all = Select {
            only: vec![],
            ..args.select.clone()
        };
        let dir = args.out.reports_dir.join(&spec.name);
        // Only a run narrowed by --only needs the rest of the experiment planned again.
        let all_plans = if args.select.only.is_empty() {
            Ok(plans.clone())
        } else {
            load_plans(&args.file, &all, &args.out.runs_dir).map(|(_, p)| p)
        };
        let written = all_plans
            .map_err(|e| match e {
                Failure::Spec(e) => anyhow::anyhow!("{e}"),
                Failure::Runtime(e) => e,
            })
            .and_then(|all_plans| {
                write_report(&dev, &spec.name, &all_plans, spec.path(), spec.has_sweep(), &dir, true)
            });
        match written {
            Ok(r) => println!("report: {}", r.dir.join("index.html").display()),
            Err(e) => {
                eprintln!("error: writing the report failed: {e:#}");
                failed.push("(report)".into());
            }
        }
    }
    if failed.is_empty() {
        println!(
            "{}: {} runs done; metrics under {}",
            spec.name,
            plans.len(),
            args.out.runs_dir.join(&spec.name).display()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{}: {} of {} runs failed: {}",
            spec.name,
            failed.len(),
            plans.len(),
            failed.join(", ")
        );
        Ok(ExitCode::from(1))
    }
}

fn report(file: &Path, select: &Select, out: &OutDirs, with_samples: bool) -> Result<ExitCode, Failure> {
    let (spec, plans) = load_plans(file, select, &out.runs_dir)?;
    let dev = dfdx::tensor::Cpu::default();
    let r = write_report(
        &dev,
        &spec.name,
        &plans,
        spec.path(),
        spec.has_sweep(),
        &out.reports_dir.join(&spec.name),
        with_samples,
    )?;
    if !r.unfinished.is_empty() {
        eprintln!("note: not finished: {}", r.unfinished.join(", "));
    }
    println!("report: {}", r.dir.join("index.html").display());
    Ok(ExitCode::SUCCESS)
}

fn sample(
    checkpoint: &Path,
    prompt: &str,
    tokens: usize,
    temperature: f64,
    top_k: usize,
    seed: u64,
) -> Result<ExitCode, Failure> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "--temperature must be a positive number, not {temperature}"
        )));
    }
    let dev = dfdx::tensor::Cpu::default();
    let sampler =
        Sampler::load(&dev, checkpoint).with_context(|| format!("loading checkpoint {}", checkpoint.display()))?;
    let text = sampler.generate(
        prompt,
        &SampleOptions {
            max_new_tokens: tokens,
            temperature,
            top_k,
            seed,
        },
    )?;
    println!("{prompt}{text}");
    Ok(ExitCode::SUCCESS)
}

fn params(file: &Path, select: &Select, context: u64, batch: u64, json: bool) -> Result<ExitCode, Failure> {
    use gptlab::params::{Arch, memory};
    let archs: Vec<(String, Arch)> = if file.extension().is_some_and(|e| e == "json") {
        let arch = Arch::from_hf_config(file)?;
        vec![(file.display().to_string(), arch)]
    } else {
        let (_, plans) = load_plans(file, select, Path::new("runs"))?;
        plans
            .iter()
            .map(|p| (p.name.clone(), Arch::from_model(&p.model)))
            .collect()
    };
    let rows: Vec<serde_json::Value> = archs
        .iter()
        .map(|(name, arch)| {
            let b = arch.breakdown();
            let m = memory(arch, b.total, context, batch);
            serde_json::json!({ "name": name, "arch": arch, "params": b, "memory_bytes": m })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).context("serialising")?);
        return Ok(ExitCode::SUCCESS);
    }
    let gb = |x: u64| format!("{:.3} GB", x as f64 / 1e9);
    for (name, arch) in &archs {
        let b = arch.breakdown();
        let m = memory(arch, b.total, context, batch);
        println!("{name}");
        for (what, n) in [
            ("embeddings", b.embeddings),
            ("positions", b.positions),
            ("attention q", b.attn_q),
            ("attention k", b.attn_k),
            ("attention v", b.attn_v),
            ("attention o", b.attn_o),
            ("mlp", b.mlp),
            ("norms", b.norms),
            ("head", b.head),
            ("total", b.total),
        ] {
            println!("  {what:<28} {n:>16}");
        }
        println!(
            "  {:<28} {:>16}",
            "weights fp32 / bf16 / int8",
            format!(
                "{} / {} / {}",
                gb(m.weights_fp32),
                gb(m.weights_bf16),
                gb(m.weights_int8)
            )
        );
        println!("  {:<28} {:>16}", "train AdamW fp32 (16 B/p)", gb(m.train_adamw_fp32));
        println!("  {:<28} {:>16}", "train mixed (2+2+12 B/p)", gb(m.train_adamw_mixed));
        println!(
            "  {:<28} {:>16}",
            "KV cache per token (bf16)",
            format!("{} B", m.kv_cache_per_token_bf16)
        );
        println!(
            "  {:<28} {:>16}",
            format!("KV cache {context} tok × {batch}"),
            gb(m.kv_cache_bf16)
        );
    }
    Ok(ExitCode::SUCCESS)
}
