//! The report of whole experiments: which runs a report covers (all, or those `--only`
//! selected), several experiments on one page, and what is said on the console about it.

use std::path::{Path, PathBuf};

use super::{Report, ReportInput, write_report};
use crate::experiment::Experiment;
use crate::plan::RunPlan;
use crate::run_dir::RunDir;

/// Writes `reports/<experiment>/` for every run of `exp` (`all_runs`) or those `--only`
/// selected, with samples when `with_samples`; returns the path of its `index.html`.
pub fn report_experiment(
    exp: &Experiment,
    reports_dir: &Path,
    all_runs: bool,
    with_samples: bool,
) -> anyhow::Result<Report> {
    report_experiments(&[exp], reports_dir, all_runs, with_samples)
}

/// [`report_experiment`] of several experiments on one page, `reports/<a>+<b>/`: each run is named
/// `<experiment>/<run>`, and the first experiment's `[report]` settings (baseline, focus,
/// smoothing) apply, their run names taken as runs of that experiment.
pub fn report_experiments(
    exps: &[&Experiment],
    reports_dir: &Path,
    all_runs: bool,
    with_samples: bool,
) -> anyhow::Result<Report> {
    let job = ReportJob::new(exps, all_runs);
    for exp in exps {
        let chosen = job.plans.iter().filter(|p| p.experiment == exp.name());
        let trained = chosen.clone().any(|p| RunDir::new(&p.dir).metrics_path().is_file());
        if !trained {
            anyhow::bail!(
                "nothing to report for `{}`: no run has trained yet (no metrics under {}){}",
                exp.name(),
                exp.runs_dir.join(exp.name()).display(),
                crate::experiment::other_seed_layout(&chosen.cloned().collect::<Vec<_>>())
                    .unwrap_or_else(|| "; train it with `gptlab run`".into())
            );
        }
    }
    let written = job.write(reports_dir, with_samples)?;
    if !written.unfinished.is_empty() {
        crate::events::note(format!("note: not finished: {}", written.unfinished.join(", ")));
    }
    if !written.other_settings.is_empty() {
        crate::events::warning(format!(
            "warning: left out of the verdict and every aggregate, trained with other settings than the spec gives: {}",
            written.other_settings.join("; ")
        ));
    }
    Ok(written)
}

/// What a report of experiments is drawn from, owned, so a training session can keep it and
/// redraw the page at every evaluation (the live page).
#[derive(Clone, Debug)]
pub struct ReportJob {
    title: String,
    plans: Vec<RunPlan>,
    specs: Vec<PathBuf>,
    has_sweep: bool,
}

impl ReportJob {
    /// The report of `exps`: every run (`all_runs`) or those `--only` selected; with several
    /// experiments, runs named `<experiment>/<run>` under the first one's `[report]`.
    pub fn new(exps: &[&Experiment], all_runs: bool) -> Self {
        let several = exps.len() > 1;
        let mut plans: Vec<RunPlan> = vec![];
        for exp in exps {
            let chosen: Vec<RunPlan> = match all_runs {
                true => exp.plans.clone(),
                false => exp.selected().into_iter().cloned().collect(),
            };
            for mut p in chosen {
                if several {
                    // Names unique across experiments; what sets runs apart is then the name.
                    let prefix = |run: &str| format!("{}/{run}", exp.name());
                    p.name = prefix(&p.name);
                    p.varies.clear();
                    let r = &mut p.config.report;
                    r.baseline = r.baseline.as_deref().map(prefix);
                    r.focus = r.focus.iter().map(|f| prefix(f)).collect();
                }
                plans.push(p);
            }
        }
        if let Some(first) = plans.first().map(|p| p.config.report.clone()) {
            // The first experiment's [report] settings hold for the page.
            plans.iter_mut().for_each(|p| p.config.report = first.clone());
        }
        Self {
            title: exps.iter().map(|e| e.name()).collect::<Vec<_>>().join("+"),
            plans,
            specs: exps.iter().map(|e| e.spec.path().to_path_buf()).collect(),
            has_sweep: !several && exps.iter().all(|e| e.spec.has_sweep()),
        }
    }

    /// Draws `reports_dir/<title>/` as the runs' folders are now.
    pub fn write(&self, reports_dir: &Path, with_samples: bool) -> anyhow::Result<Report> {
        write_report(
            &dfdx::tensor::Cpu::default(),
            &ReportInput {
                title: &self.title,
                plans: &self.plans,
                specs: &self.specs,
                has_sweep: self.has_sweep,
                dir: &reports_dir.join(&self.title),
                with_samples,
            },
        )
    }
}
