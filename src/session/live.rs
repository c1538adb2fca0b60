//! The live report: while a session trains, `reports/<exp>/index.html` is drawn again after
//! every evaluation (without samples, which come with the final report), so a user can watch
//! the curves and the verdict form. The page reloads itself while any run trains.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::report::ReportJob;

/// A session's live page and what drawing it has cost.
pub struct LiveReport {
    job: ReportJob,
    reports_dir: PathBuf,
    /// Held while drawing: runs evaluating at once (`--jobs`) draw one page, not several.
    drawing: Mutex<()>,
    /// Pages drawn and the time they took.
    spent: Mutex<(usize, Duration)>,
}

impl LiveReport {
    /// The live page of `job` under `reports_dir`.
    pub fn new(job: ReportJob, reports_dir: PathBuf) -> Self {
        Self {
            job,
            reports_dir,
            drawing: Mutex::new(()),
            spent: Mutex::default(),
        }
    }

    /// Draws the page as the runs' folders are now, unless another run is drawing it this
    /// moment (its page shows this evaluation too, or the next one will). A failure is a
    /// warning: training goes on, and the final report is written as always.
    pub fn redraw(&self) {
        let Ok(_drawing) = self.drawing.try_lock() else {
            return;
        };
        let t0 = Instant::now();
        if let Err(e) = self.job.write(&self.reports_dir, false) {
            crate::events::warning(format!("warning: the live report was not written: {e:#}"));
        }
        let mut spent = self.spent.lock().expect("not poisoned");
        spent.0 += 1;
        spent.1 += t0.elapsed();
    }

    /// `live report: 12 pages in 1.40 s (0.30% of the 470 s of training)`, once any was drawn.
    pub fn cost(&self, training: Duration) -> Option<String> {
        let (pages, took) = *self.spent.lock().expect("not poisoned");
        (pages > 0).then(|| {
            format!(
                "live report: {pages} pages in {:.2} s ({:.2}% of the {:.0} s of training)",
                took.as_secs_f64(),
                100.0 * took.as_secs_f64() / training.as_secs_f64().max(1e-9),
                training.as_secs_f64()
            )
        })
    }
}
