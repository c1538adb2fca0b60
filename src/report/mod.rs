//! Reports: the comparison a researcher opens after a run. Reads every run's metrics and
//! checkpoints and writes `reports/<experiment>/`: `metrics.csv` (all runs and seeds),
//! `summary.csv` (a run over its seeds), `seeds.csv` (one row per run and seed),
//! `comparison.csv` (each run against the baseline, paired by seed), `summary.md` (the verdict
//! and the tables), `loss.svg`, sweep charts, the loss by evaluation length (`eval.csv`,
//! `position_loss.csv`, `length.svg`, `position_loss.svg`), `samples.md` and `index.html`.

pub mod by_length;
mod compare;
mod experiments;
mod gather;
mod html;
mod length_plot;
mod plot;
mod samples;
mod summary;
mod tables;
mod unit;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use compare::{ComparisonRow, LOSSES, RunAggregate, aggregate, compare, verdict};
pub use experiments::{ReportJob, report_experiment, report_experiments};
pub use plot::{
    Boundary, Curve, Frame, PALETTE, SMALL, Series, SweepChart, WIDE, ema, loss_chart, scaled_smoothing, sweep_chart,
};
pub use summary::{LAST_N, RunSummary, median, summarise};

use crate::fsio::write_atomic;
use crate::model::Backend;
use crate::plan::RunPlan;
use crate::run_dir::RunDir;

/// What the report of one experiment produced.
#[derive(Debug)]
pub struct Report {
    /// The report folder.
    pub dir: PathBuf,
    /// Runs that have not finished (incomplete, interrupted, diverged or not started).
    pub unfinished: Vec<String>,
    /// Runs whose results were trained with other settings than the spec gives, and how they
    /// differ: shown with their status, left out of every aggregate and of the verdict.
    pub other_settings: Vec<String>,
}

impl Report {
    /// The page, `index.html`.
    pub fn page(&self) -> PathBuf {
        self.dir.join("index.html")
    }
}

/// Phase boundaries of the runs, labelled with the sequence-length change.
fn boundaries(plans: &[RunPlan]) -> Vec<Boundary> {
    let mut out: Vec<Boundary> = vec![];
    for p in plans {
        for pair in p.schedule.phases.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let label = if a.seq_len != b.seq_len {
                format!("seq {} → {}", a.seq_len, b.seq_len)
            } else {
                format!("phase {}", b.index)
            };
            let step = b.first_step as f64 - 0.5;
            if !out.iter().any(|o| o.step == step && o.label == label) {
                out.push(Boundary { step, label });
            }
        }
    }
    out
}

/// A summary figure drawn against the swept value: file stem, axis label, accessor.
type Quantity = (&'static str, &'static str, fn(&RunSummary) -> Option<f64>);

/// What the sweep charts draw against the swept value.
const SWEEP_QUANTITIES: [Quantity; 9] = [
    ("final_train_loss", "train loss, mean of last 50 steps (UNIT)", |s| {
        s.train_loss_last50
    }),
    ("final_val_loss", "final validation loss (UNIT)", |s| s.final_val_loss),
    ("best_val_loss", "best validation loss (UNIT)", |s| s.best_val_loss),
    ("tokens_per_s", "training tokens per second (median)", |s| {
        s.tokens_per_s
    }),
    ("attn_ms", "attention time per step, fwd+bwd, all layers (ms)", |s| {
        s.attn_ms
    }),
    ("attn_mem_mb", "attention memory kept for backward per step (MB)", |s| {
        s.attn_mem_mb
    }),
    ("peak_rss_mb", "peak resident memory of the run (MB)", |s| s.peak_rss_mb),
    ("kv_bytes_per_token", "KV cache per generated token (bytes)", |s| {
        s.kv_bytes_per_token
    }),
    (
        "decode_tokens_per_s",
        "decode speed with the KV cache (tokens/s)",
        |s| s.decode_tokens_per_s,
    ),
];

/// The value `p` has for the swept setting `key` (empty if it has none).
fn swept_value(p: &RunPlan, key: &str) -> String {
    p.varies
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// The values `key` takes across `points`, in order of appearance, or numerically when all are
/// numbers.
fn swept_values(points: &[(&RunPlan, &RunSummary)], key: &str) -> Vec<String> {
    let mut xs: Vec<String> = vec![];
    for (p, _) in points {
        let v = swept_value(p, key);
        if !xs.contains(&v) {
            xs.push(v);
        }
    }
    if xs.iter().all(|x| x.parse::<f64>().is_ok()) {
        xs.sort_by(|a, b| {
            a.parse::<f64>()
                .unwrap_or(0.0)
                .total_cmp(&b.parse::<f64>().unwrap_or(0.0))
        });
    }
    xs
}

/// One line per combination of the other swept settings (the seed aside): `get` of each run
/// against the index of its `key` value in `xs`.
fn sweep_series(
    points: &[(&RunPlan, &RunSummary)],
    key: &str,
    xs: &[String],
    get: fn(&RunSummary) -> Option<f64>,
) -> Vec<(String, Vec<(usize, f64)>)> {
    let mut series: Vec<(String, Vec<(usize, f64)>)> = vec![];
    for &(p, s) in points {
        let Some(y) = get(s) else { continue };
        let others: Vec<String> = p
            .varies
            .iter()
            .filter(|(k, _)| k != key && k != "seed")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let label = others.join(", ");
        let x = xs.iter().position(|x| *x == swept_value(p, key)).unwrap_or(0);
        match series.iter_mut().find(|(l, _)| *l == label) {
            Some((_, pts)) => pts.push((x, y)),
            None => series.push((label, vec![(x, y)])),
        }
    }
    series
}

/// Sweep charts: for each setting that varies (but the seed), each quantity against it.
fn sweep_charts(points: &[(&RunPlan, &RunSummary)], unit: &str) -> Vec<(String, SweepChart)> {
    let keys: Vec<String> = points
        .first()
        .map(|(p, _)| {
            p.varies
                .iter()
                .map(|(k, _)| k.clone())
                .filter(|k| k != "seed")
                .collect()
        })
        .unwrap_or_default();
    let mut out = vec![];
    for key in &keys {
        let xs = swept_values(points, key);
        for (name, y_label, get) in &SWEEP_QUANTITIES {
            let series = sweep_series(points, key, &xs, *get);
            if series.is_empty() {
                continue;
            }
            let file = format!("sweep_{}_{name}.svg", key.replace(['.', '/'], "_"));
            out.push((
                file,
                SweepChart {
                    title: format!("{} vs {key}", y_label.split(" (").next().unwrap_or(y_label)),
                    x_label: key.clone(),
                    y_label: y_label.replace("UNIT", unit),
                    xs: xs.clone(),
                    series,
                },
            ));
        }
    }
    out
}

/// What a report is drawn from.
pub struct ReportInput<'a> {
    /// The page's title: the experiment's name (or several, joined).
    pub title: &'a str,
    /// The runs, one plan per (run, seed); run names unique across the report.
    pub plans: &'a [RunPlan],
    /// The spec files, shown on the page.
    pub specs: &'a [PathBuf],
    /// Whether to draw the sweep charts.
    pub has_sweep: bool,
    /// The report folder.
    pub dir: &'a Path,
    /// Generate (or read cached) samples.
    pub with_samples: bool,
}

/// Writes the report of `input.plans` into `input.dir`, as a set: it is drawn in a staging
/// folder and swapped in whole, so two reports written at once (a Slurm report job and a
/// manual one, two runs of one experiment ending together) leave one report, never a mix.
pub fn write_report<D: Backend>(dev: &D, input: &ReportInput<'_>) -> Result<Report> {
    let staged = crate::fsio::StagedDir::new(input.dir)?;
    let mut report = draw_report(
        dev,
        &ReportInput {
            dir: staged.path(),
            ..*input
        },
    )?;
    staged.publish()?;
    report.dir = input.dir.to_path_buf();
    Ok(report)
}

/// Draws the report of `input.plans` into the (empty) folder `input.dir`.
fn draw_report<D: Backend>(dev: &D, input: &ReportInput<'_>) -> Result<Report> {
    let (plans, dir) = (input.plans, input.dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating report folder {}", dir.display()))?;
    let unit = unit::LossUnit::of(plans);
    let mut runs = gather::gather(plans, &unit)?;
    let run_samples = attach_samples(dev, input, &mut runs.summaries)?;
    let aggregates = compare::aggregate(&runs.summaries);
    let report_cfg = plans.first().map(|p| p.config.report.clone()).unwrap_or_default();
    let base = compare::baseline(&aggregates, report_cfg.baseline.as_deref()).map(|b| b.run.clone());
    let comparison = base
        .as_deref()
        .map(|b| compare::compare(&runs.summaries, b))
        .unwrap_or_default();
    let mut verdict: Vec<String> = unit.sentence().into_iter().collect();
    verdict.extend(compare::verdict(
        &aggregates,
        &runs.summaries,
        &comparison,
        base.as_deref(),
    ));
    let by_length = by_length::write(dir, input.title, plans, &unit)?;
    verdict.extend(by_length.sentences.iter().cloned());
    let tables = tables::Tables {
        aggregates: &aggregates,
        comparison: &comparison,
        summaries: &runs.summaries,
        baseline: base.as_deref(),
    };
    write_tables(input, &runs, &tables, &verdict)?;
    let mut figures = write_figures(input, &runs, &report_cfg, &unit)?;
    figures.extend(by_length.figures.iter().cloned());
    let texts = other_texts_warning(&runs.summaries);
    for (_, caption) in figures
        .iter_mut()
        .filter(|(file, _)| file.contains("loss") || file.contains("length"))
    {
        caption.push_str(&texts);
    }
    let seq_len_of = |label: &str, phase: usize| {
        plans
            .iter()
            .find(|p| label.starts_with(&p.label()))
            .and_then(|p| p.schedule.phases.get(phase))
            .map(|ph| ph.seq_len)
    };
    let samples_md = samples::markdown(
        &run_samples,
        &seq_len_of,
        &plans.first().map(|p| p.dir.clone()).unwrap_or_default(),
    );
    write_atomic(&dir.join("samples.md"), samples_md.as_bytes())?;
    let provenance: Vec<(String, crate::provenance::Provenance)> = plans
        .iter()
        .map(|p| (p.id(), RunDir::new(&p.dir).read_provenance()))
        .collect();
    let mut notes = runs.notes();
    notes.extend(by_length.notes.iter().cloned());
    notes.extend(builds_note(&provenance));
    let specs: Vec<(String, String)> = input
        .specs
        .iter()
        .map(|s| {
            let text = crate::fsio::read_text_capped(s, crate::fsio::MAX_SPEC_BYTES, "the spec");
            (s.display().to_string(), text.unwrap_or_default())
        })
        .collect();
    let page = html::page(&html::Page {
        experiment: input.title,
        verdict: &verdict,
        figures: &figures,
        tables: &tables,
        samples: &run_samples,
        seq_len_of: &seq_len_of,
        specs: &specs,
        notes: &notes,
        provenance: &provenance,
        unit: &unit.long(),
        training: &runs.training,
    });
    write_atomic(&dir.join("index.html"), page.as_bytes())?;
    Ok(Report {
        dir: dir.to_path_buf(),
        unfinished: runs.unfinished,
        other_settings: runs.other_settings,
    })
}

/// Each run's samples (generated, or read from the checkpoints' cache) when the report asks
/// for them, and the decode speed and KV-cache size of each summary.
fn attach_samples<D: Backend>(
    dev: &D,
    input: &ReportInput<'_>,
    summaries: &mut [RunSummary],
) -> Result<Vec<(String, Vec<samples::CheckpointSamples>)>> {
    let mut run_samples = vec![];
    if input.with_samples {
        for p in input.plans {
            let label = if p.seeded {
                format!("{} (seed {})", p.label(), p.seed)
            } else {
                p.label()
            };
            let made = samples::run_samples(dev, p).with_context(|| format!("sampling run `{}`", p.id()))?;
            run_samples.push((label, made));
        }
    }
    for (i, (summary, plan)) in summaries.iter_mut().zip(input.plans).enumerate() {
        summary.kv_bytes_per_token = Some(plan.model().kv_bytes_per_token() as f64);
        let last = run_samples.get(i).and_then(|(_, ckpts)| ckpts.last());
        summary.decode_tokens_per_s = last.and_then(|c| {
            let speeds = c.samples.iter().map(|s| s.decode_tokens_per_s).filter(|v| *v > 0.0);
            median(speeds.collect())
        });
    }
    Ok(run_samples)
}

/// `metrics.csv`, `summary.csv`, `seeds.csv`, `comparison.csv` and `summary.md`.
fn write_tables(
    input: &ReportInput<'_>,
    runs: &gather::Runs,
    tables: &tables::Tables<'_>,
    verdict: &[String],
) -> Result<()> {
    let dir = input.dir;
    write_csv(&dir.join("metrics.csv"), &runs.rows)?;
    write_csv(&dir.join("summary.csv"), tables.aggregates)?;
    write_csv(&dir.join("seeds.csv"), tables.summaries)?;
    write_csv(&dir.join("comparison.csv"), tables.comparison)?;
    let mut md = format!("# {}: summary\n\n## Verdict\n\n", input.title);
    for v in verdict {
        md.push_str(&format!("- {v}\n"));
    }
    let note = tables.intervals_note();
    md.push_str(&format!("\n{}{}.\n", note[..1].to_uppercase(), &note[1..]));
    md.push_str(&tables.markdown());
    if !runs.unfinished.is_empty() {
        md.push_str(&format!("\nNot finished: {}.\n", runs.unfinished.join(", ")));
    }
    if !runs.other_settings.is_empty() {
        md.push_str(&format!(
            "\nLeft out (trained with other settings than this spec gives): {}.\n",
            runs.other_settings.join(", ")
        ));
    }
    write_atomic(&dir.join("summary.md"), md.as_bytes())
}

/// `loss.svg`, `loss_focus.svg` and the sweep charts; their `(file, caption)`.
fn write_figures(
    input: &ReportInput<'_>,
    runs: &gather::Runs,
    report_cfg: &crate::spec::ReportSection,
    unit: &unit::LossUnit,
) -> Result<Vec<(String, String)>> {
    let (experiment, plans, dir) = (input.title, input.plans, input.dir);
    let seeded = plans.iter().any(|p| p.seeded);
    let smoothing = report_cfg.smoothing;
    let loss_caption = if seeded {
        "Training loss: per run, the mean over its seeds of the smoothed loss (line) and the min–max \
         across seeds (band); dots: mean validation loss"
    } else {
        "Training loss (light: raw, bold: smoothed; dots: validation loss)"
    };
    let mut figures = vec![("loss.svg".to_string(), loss_caption.to_string())];
    let title = format!("{experiment}: training loss");
    let chart = loss_chart(&title, &runs.curves, &boundaries(plans), smoothing, &unit.long(), WIDE)?;
    write_atomic(&dir.join("loss.svg"), chart.as_bytes())?;
    if !report_cfg.focus.is_empty() {
        // The study's side-by-side figures (e.g. GQA-2 vs MHA): only the named runs, in the
        // colours of their position in the list.
        let chosen: Vec<Curve> = report_cfg
            .focus
            .iter()
            .filter_map(|name| Some(runs.curves[runs.curve_runs.iter().position(|r| r == name)?].clone()))
            .collect();
        let labels: Vec<&str> = chosen.iter().map(|c| c.label.as_str()).collect();
        let title = format!("{experiment}: {}", labels.join(" vs "));
        let chart = loss_chart(&title, &chosen, &boundaries(plans), smoothing, &unit.long(), SMALL)?;
        write_atomic(&dir.join("loss_focus.svg"), chart.as_bytes())?;
        let caption = format!("Training loss: {}", report_cfg.focus.join(" vs "));
        figures.push(("loss_focus.svg".to_string(), caption));
    }
    if input.has_sweep {
        // Seeds that did not finish would mix earlier losses into the points.
        let done: Vec<(&RunPlan, &RunSummary)> = plans
            .iter()
            .zip(&runs.summaries)
            .filter(|(p, s)| !p.seeded || s.status == "complete")
            .collect();
        for (file, chart) in sweep_charts(&done, unit.short()) {
            write_atomic(&dir.join(&file), sweep_chart(&chart)?.as_bytes())?;
            let caption = match seeded {
                true => format!(
                    "{}: dots are seeds, the line joins their means, bars are 95% t intervals of the mean",
                    chart.title
                ),
                false => chart.title.clone(),
            };
            figures.push((file, caption));
        }
    }
    Ok(figures)
}

/// A caption's warning when the runs drawn were not all trained and validated on one text:
/// their losses differ by the text as much as by the run (the verdict does not compare them).
fn other_texts_warning(summaries: &[RunSummary]) -> String {
    let distinct = |text: fn(&RunSummary) -> &crate::plan::TextUsed| {
        let mut seen: Vec<&str> = summaries.iter().map(|s| text(s).identity.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len() > 1
    };
    if distinct(|s| &s.validated_on) || distinct(|s| &s.trained_on) {
        ". The runs were trained or validated on different text, so their losses differ by the text as \
         well as by the run; the verdict compares only runs on the same text"
            .to_string()
    } else {
        String::new()
    }
}

/// A note when the runs were trained by different gptlab builds.
fn builds_note(provenance: &[(String, crate::provenance::Provenance)]) -> Option<String> {
    let mut builds: Vec<(String, Vec<&str>)> = vec![];
    for (run, p) in provenance {
        for b in p.builds() {
            match builds.iter_mut().find(|(known, _)| *known == b) {
                Some((_, runs)) => runs.push(run),
                None => builds.push((b, vec![run])),
            }
        }
    }
    (builds.len() > 1).then(|| {
        let each: Vec<String> = builds
            .iter()
            .map(|(b, runs)| format!("{b}: {}", runs.join(", ")))
            .collect();
        format!(
            "These runs were trained by different gptlab builds, so their numbers may not compare: {}.",
            each.join("; ")
        )
    })
}

/// Writes `rows` as CSV (header from the first row's fields), atomically.
pub(crate) fn write_csv<T: serde::Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    crate::run_dir::write_rows(path, rows)
}
