//! The report's tables as cells, for the page and for `summary.md`: the compact comparison
//! (what a reader looks at first), the per-run aggregate over seeds, each run against the
//! baseline on each loss, and the per-seed table.

use super::compare::{ComparisonRow, LOSSES, RunAggregate};
use super::summary::{self, RunSummary, drop_empty_columns, markdown_table};
use crate::format::{duration, int, interval, num, signed};
use crate::stats::Estimate;

/// A table: title, header and formatted rows (empty columns already dropped).
pub struct Table {
    /// Heading over it.
    pub title: String,
    /// Element id on the page.
    pub id: &'static str,
    /// Column titles.
    pub header: Vec<String>,
    /// Cells.
    pub rows: Vec<Vec<String>>,
}

/// Everything tabulated.
pub struct Tables<'a> {
    /// One per run.
    pub aggregates: &'a [RunAggregate],
    /// Each other run against the baseline, per loss.
    pub comparison: &'a [ComparisonRow],
    /// One per (run, seed).
    pub summaries: &'a [RunSummary],
    /// The baseline run.
    pub baseline: Option<&'a str>,
}

impl Table {
    fn drop_column(&mut self, title: &str) {
        if let Some(i) = self.header.iter().position(|h| h == title) {
            self.header.remove(i);
            for r in &mut self.rows {
                r.remove(i);
            }
        }
    }
}

fn table(title: &str, id: &'static str, header: &[&str], rows: Vec<Vec<String>>) -> Table {
    let (header, rows) = drop_empty_columns(header, &rows);
    Table {
        title: title.to_string(),
        id,
        header,
        rows,
    }
}

/// `mean ± half-width` of a 95% interval, or the mean alone without one.
fn mean_pm(e: Option<Estimate>) -> String {
    match e {
        Some(Estimate {
            mean,
            interval: Some((lo, hi)),
            ..
        }) => format!("{} ± {}", num(Some(mean), 3), num(Some((hi - lo) / 2.0), 3)),
        Some(e) => num(Some(e.mean), 3),
        None => "–".into(),
    }
}

impl Tables<'_> {
    fn seeded(&self) -> bool {
        self.summaries.iter().any(|s| s.seed.is_some())
    }

    /// How many runs the differences' intervals hold together over (1: a single comparison).
    pub fn family(&self) -> usize {
        self.comparison.iter().map(|c| c.comparisons).max().unwrap_or(1)
    }

    /// What the intervals are, in a sentence's words: 95% t intervals over seeds and, with more
    /// than one comparison, simultaneous ones.
    pub fn intervals_note(&self) -> String {
        let mut note = "intervals are 95% t intervals over seeds, differences are paired by seed".to_string();
        if self.family() > 1 {
            note += &format!(
                "; the differences' intervals hold together over the {} runs compared with the baseline \
                 (Bonferroni: each at {:.2}%)",
                self.family(),
                100.0 * crate::stats::bonferroni(self.family())
            );
        }
        note
    }

    /// `95% CI`, or `simultaneous 95% CI` for a family of comparisons.
    fn ci_words(&self) -> &'static str {
        if self.family() > 1 {
            "simultaneous 95% CI"
        } else {
            "95% CI"
        }
    }

    fn headline(&self, run: &str) -> Option<&ComparisonRow> {
        self.comparison.iter().find(|c| c.run == run && c.loss == LOSSES[0].key)
    }

    /// Run, params, final validation loss ± interval, difference from the baseline with its
    /// interval and share of seeds won, speed and time.
    pub fn compact(&self) -> Table {
        let rows = self
            .aggregates
            .iter()
            .map(|a| {
                let (diff, won) = match (self.baseline, self.headline(&a.run)) {
                    (Some(b), _) if b == a.run => ("baseline".to_string(), "–".to_string()),
                    (_, Some(c)) => {
                        let ci = c.t_lo.zip(c.t_hi);
                        let diff = match ci {
                            Some(ci) => format!("{} ({})", signed(c.diff, 3), interval(Some(ci), 3)),
                            None => signed(c.diff, 3),
                        };
                        (diff, format!("{}/{}", c.wins, c.n))
                    }
                    _ => ("–".into(), "–".into()),
                };
                vec![
                    a.run.clone(),
                    a.differs.clone(),
                    format!("{}/{}", a.complete, a.seeds),
                    int(a.params as u64),
                    mean_pm(a.estimate("final_val_loss")),
                    diff,
                    won,
                    num(a.tokens_per_s, 0),
                    a.train_s.map_or_else(|| "–".into(), duration),
                ]
            })
            .collect();
        let delta = format!("Δ vs baseline ({})", self.ci_words());
        let header = [
            "run",
            "differs",
            "seeds complete",
            "params",
            "final val loss (95% CI)",
            &delta,
            "better in",
            "tokens/s",
            "train time",
        ];
        let mut t = table("Comparison", "compact", &header, rows);
        if self.aggregates.iter().all(|a| a.differs == a.run) {
            // Sweep points are named by what differs: the column would repeat the name.
            t.drop_column("differs");
        }
        if !self.seeded() {
            // One seed: "1/1 seeds" says nothing.
            t.drop_column("seeds complete");
        }
        t
    }

    /// Each run against the baseline on each loss: mean difference, t and bootstrap intervals,
    /// seeds won.
    pub fn comparison(&self) -> Table {
        let rows = self
            .comparison
            .iter()
            .map(|c| {
                let words = LOSSES
                    .iter()
                    .find(|l| l.key == c.loss)
                    .map_or(c.loss.as_str(), |l| l.words);
                vec![
                    c.run.clone(),
                    words.to_string(),
                    c.n.to_string(),
                    signed(c.diff, 4),
                    interval(c.t_lo.zip(c.t_hi), 4),
                    interval(c.bootstrap_lo.zip(c.bootstrap_hi), 4),
                    format!("{}/{}", c.wins, c.n),
                ]
            })
            .collect();
        let mut title = format!(
            "Against the baseline ({}), paired by seed",
            self.baseline.unwrap_or("–")
        );
        if self.family() > 1 {
            title += &format!("; intervals simultaneous over {} runs (Bonferroni)", self.family());
        }
        let header = [
            "run",
            "loss",
            "seeds",
            "Δ mean",
            "95% t interval",
            "95% bootstrap interval",
            "better in",
        ];
        table(&title, "comparison", &header, rows)
    }

    /// A run over its complete seeds: n, mean, sd and interval of each loss.
    pub fn aggregates(&self) -> Table {
        let mut header = vec!["run".to_string(), "seeds complete".into(), "params".into()];
        for l in &LOSSES {
            header.push(format!("{} mean", l.words));
            header.push("sd".into());
            header.push("95% t interval".into());
        }
        let rows = self
            .aggregates
            .iter()
            .map(|a| {
                let mut row = vec![
                    a.run.clone(),
                    format!("{}/{}", a.complete, a.seeds),
                    int(a.params as u64),
                ];
                for l in &LOSSES {
                    let e = a.estimate(l.key);
                    row.push(num(e.as_ref().map(|e| e.mean), 4));
                    row.push(num(e.as_ref().and_then(|e| e.sd), 4));
                    row.push(interval(e.and_then(|e| e.interval), 4));
                }
                row
            })
            .collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        table("Each run over its seeds", "aggregates", &header, rows)
    }

    /// One row per (run, seed), every measured column.
    pub fn per_seed(&self) -> Table {
        let title = if self.seeded() {
            "Every run and seed"
        } else {
            "Every run"
        };
        table(
            title,
            "summary",
            &summary::COLUMNS,
            self.summaries.iter().map(summary::cells).collect(),
        )
    }

    /// The tables to show, in order: with one seed the aggregate and comparison tables would
    /// repeat the compact one without intervals, so only it and the full table are shown.
    pub fn all(&self) -> Vec<Table> {
        if self.seeded() {
            vec![self.compact(), self.comparison(), self.aggregates(), self.per_seed()]
        } else {
            vec![self.compact(), self.per_seed()]
        }
    }

    /// `summary.md`'s tables.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        for t in self.all() {
            md.push_str(&format!("\n## {}\n\n{}", t.title, markdown_table(&t.header, &t.rows)));
        }
        md
    }
}
