//! The `gptlab` command line: parses arguments, calls the library, maps errors to exit codes.
//!
//! Exit codes: 0 success; 1 a run failed or diverged, another gptlab was training a selected
//! run (skipped without `--wait`), or an I/O error; 2 a bad spec or usage;
//! 130 interrupted (a checkpoint was written; the same command resumes).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod cli;

use clap::Parser;
use cli::{Cli, Command, ParamsArgs, ReportArgs, RunArgs, SampleArgs, Select, SubmitArgs};
use gptlab::Error;
use gptlab::experiment::{Experiment, other_settings_error};
use gptlab::sample::SampleOptions;

/// Counts live bytes so attention memory can be measured (`[measure] attention = true`).
#[global_allocator]
static ALLOCATOR: gptlab::probe::CountingAlloc = gptlab::probe::CountingAlloc;

type Outcome = Result<ExitCode, Error>;

fn main() -> ExitCode {
    // The library reports through a sink; the command line's prints each event on stderr.
    gptlab::events::set_sink(std::sync::Arc::new(gptlab::events::Stderr));
    gptlab::alloc::keep_freed_memory();
    gptlab::interrupt::default_sigpipe();
    let cli = Cli::parse();
    // A bad GPTLAB_ISA is a usage error before any work, not a panic in the first kernel.
    if let Err(e) = gptlab::isa::init().map_err(Error::Usage) {
        eprintln!("{e}");
        return ExitCode::from(e.exit_code());
    }
    let result = match cli.command {
        Command::List { dir } => list(&dir),
        Command::Validate { files, select } => validate(&files, &select),
        Command::Plan { file, select, explain } => show_plan(&file, &select, explain),
        Command::Run(args) | Command::Sweep(args) => run(&args),
        Command::Report(args) => report(&args),
        Command::Status { file, select, runs_dir } => status(&file, &select, &runs_dir),
        Command::Submit(args) => submit(&args),
        Command::Params(args) => params(&args),
        Command::Sample(args) => sample(&args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("{e}");
        ExitCode::from(e.exit_code())
    })
}

/// Loads and plans a spec with the command line's `--set`s and `--only`s.
fn load(file: &Path, select: &Select, runs_dir: &Path) -> Result<Experiment, Error> {
    let sets = gptlab::spec::with_seeds(&select.sets, select.seeds).map_err(Error::Usage)?;
    Experiment::load(file, &sets, &select.only, runs_dir)
}

fn list(dir: &Path) -> Outcome {
    if !dir.is_dir() {
        return Err(Error::Usage(format!("{} is not a folder", dir.display())));
    }
    let (text, bad) = gptlab::discover::listing(dir, &gptlab::discover::discover(dir));
    println!("{text}");
    Ok(if bad > 0 { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

fn validate(files: &[PathBuf], select: &Select) -> Outcome {
    let mut failed = false;
    for file in files {
        match load(file, select, Path::new("runs")) {
            Ok(exp) => println!("{}: ok, experiment `{}`, {}", file.display(), exp.name(), exp.count()),
            Err(Error::Spec(e)) => {
                eprintln!("{e}");
                failed = true;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(if failed { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

fn show_plan(file: &Path, select: &Select, explain: bool) -> Outcome {
    let exp = load(file, select, Path::new("runs"))?;
    print!("{}", exp.plan_text(file, explain));
    Ok(ExitCode::SUCCESS)
}

fn run(args: &RunArgs) -> Outcome {
    let exp = load(&args.file, &args.select, &args.out.runs_dir)?;
    let outcome = gptlab::session::train_all(&exp, &args.session_options()?)?;
    if outcome.interrupted {
        let resume = gptlab::interrupt::resume_command();
        eprintln!("interrupted: a checkpoint was written; to resume, run again: {resume}");
        return Ok(ExitCode::from(130));
    }
    if let Some(page) = &outcome.report {
        println!("report: {}", page.display());
    }
    let line = outcome.summary(exp.name(), &args.out.runs_dir);
    if outcome.succeeded() {
        println!("{line}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{line}");
        Ok(ExitCode::from(1))
    }
}

fn status(file: &Path, select: &Select, runs_dir: &Path) -> Outcome {
    let exp = load(file, select, runs_dir)?;
    let table = gptlab::status::table(&exp);
    println!("{}", table.text);
    if table.other_settings > 0 {
        let n = table.other_settings;
        eprintln!("{}", other_settings_error(n, "(state other-settings)", exp.name()));
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn submit(args: &SubmitArgs) -> Outcome {
    let exp = load(&args.file, &args.select, &args.out.runs_dir)?;
    let sets: Vec<String> = args.select.sets.iter().map(|s| s.raw.clone()).collect();
    let invocation = gptlab::slurm::Invocation::here(
        &args.file,
        sets,
        args.select.seeds,
        (&args.out.runs_dir, &args.out.reports_dir),
        args.lock.timeout()?,
    )?;
    let sub = gptlab::slurm::prepare(&exp, &invocation)?;
    for note in &sub.skipped {
        eprintln!("not submitted: {note}");
    }
    if sub.tasks.is_empty() {
        println!("{}", sub.nothing_to_submit(&args.file));
    } else if args.dry_run {
        print!("{}", sub.dry_run());
    } else {
        let done = gptlab::slurm::submit(&sub)?;
        println!("{}", done.announce(&sub, &invocation));
    }
    Ok(ExitCode::SUCCESS)
}

fn report(args: &ReportArgs) -> Outcome {
    let exps: Vec<Experiment> = args
        .files
        .iter()
        .map(|f| load(f, &args.select, &args.out.runs_dir))
        .collect::<Result<_, _>>()?;
    let exps: Vec<&Experiment> = exps.iter().collect();
    let written = gptlab::report::report_experiments(&exps, &args.out.reports_dir, false, !args.no_samples)?;
    println!("report: {}", written.page().display());
    if !written.other_settings.is_empty() {
        // The page is written, without them; the exit code says not all was reported, as `run`
        // refuses such runs with exit 2.
        let n = written.other_settings.len();
        eprintln!(
            "{}",
            other_settings_error(n, "(left out of the report)", exps[0].name())
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn sample(args: &SampleArgs) -> Outcome {
    let opts = SampleOptions {
        max_new_tokens: args.tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        seed: args.seed,
    };
    println!(
        "{}",
        gptlab::sample::from_checkpoint(&args.checkpoint, &args.prompt, &opts)?
    );
    Ok(ExitCode::SUCCESS)
}

fn params(args: &ParamsArgs) -> Outcome {
    use gptlab::params::Arch;
    let file = &args.file;
    let archs: Vec<(String, Arch)> = if file.extension().is_some_and(|e| e == "json") {
        let arch = Arch::from_hf_config(file).map_err(|e| Error::Usage(format!("{e:#}")))?;
        vec![(file.display().to_string(), arch)]
    } else {
        let exp = load(file, &args.select, Path::new("runs"))?;
        // The seeds of a run share its architecture: one row per run.
        let runs = exp.selected_runs();
        runs.iter()
            .map(|p| (p.name.clone(), Arch::from_model(&p.model())))
            .collect()
    };
    let table = gptlab::params::render(&archs, args.context, args.batch, args.json);
    println!("{}", table.map_err(|e| Error::Usage(format!("{e:#}")))?);
    Ok(ExitCode::SUCCESS)
}
