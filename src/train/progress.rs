//! Progress on the terminal: a bar when stderr is a terminal, a plain line every few
//! seconds otherwise (CI logs, `nohup`, pipes).
//!
//! Rates count only the steps trained in this session (a resumed run does not start at
//! thousands of steps per second), and the time left weights each remaining phase by its
//! sequence length ([`crate::plan::step_cost`]); with more runs queued after this one, the
//! time left for all of them is shown too.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::plan::{PhaseSchedule, step_cost};

/// Reports one run's progress.
pub struct Progress {
    bar: Option<ProgressBar>,
    run: String,
    schedule: PhaseSchedule,
    /// Steps done when this session started.
    resumed_at: usize,
    /// Work done in this session, in step-cost units.
    work_done: f64,
    /// Work of the runs queued after this one, in step-cost units.
    later: f64,
    started: Instant,
    last_line: Instant,
    quiet: bool,
}

/// `1h03m`, `12m05s`, `42s`.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

impl Progress {
    /// Starts reporting a run with this schedule, of which `done` steps are already done;
    /// `later` is the work of the runs queued after it; `lines_only` prints plain lines even
    /// on a terminal.
    pub fn start(run: &str, schedule: &PhaseSchedule, done: usize, later: f64, quiet: bool, lines_only: bool) -> Self {
        let total = schedule.total_steps();
        let bar = (!quiet && !lines_only && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(run.to_string());
            bar.set_position(done as u64);
            bar
        });
        Self {
            bar,
            run: run.to_string(),
            schedule: schedule.clone(),
            resumed_at: done,
            work_done: 0.0,
            later,
            started: Instant::now(),
            last_line: Instant::now(),
            quiet,
        }
    }

    /// Steps per second in this session, seconds left for the run and for all queued runs.
    fn pace_numbers(&self, step: usize) -> (f64, f64, f64) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = (step - self.resumed_at) as f64 / secs;
        let per_unit = secs / self.work_done.max(1e-9);
        let left = self.schedule.cost_after(step) * per_unit;
        (rate, left, left + self.later * per_unit)
    }

    /// `steps/s (this session), time left for the run [and for all queued runs]`.
    fn pace(&self, step: usize) -> String {
        let (rate, left, all) = self.pace_numbers(step);
        let all = match self.later > 0.0 {
            true => format!(", all runs {}", duration(all)),
            false => String::new(),
        };
        format!("{rate:.2} steps/s, eta {}{all}", duration(left))
    }

    /// Records that `step` finished with this loss.
    pub fn step(&mut self, phase: usize, step: usize, seq_len: usize, loss: f32, val: Option<f32>) {
        self.work_done += step_cost(seq_len);
        let total = self.schedule.total_steps();
        let val = val.map(|v| format!(" val {v:.4}")).unwrap_or_default();
        let msg = format!("phase {phase} (seq {seq_len}) loss {loss:.4}{val}");
        if let Some(bar) = &self.bar {
            bar.set_position(step as u64);
            bar.set_message(format!("{msg} | {}", self.pace(step)));
        } else if !self.quiet
            && (self.last_line.elapsed() >= Duration::from_secs(5) || step == total || !val.is_empty())
        {
            crate::events::progress(format!(
                "[{}] step {step}/{total} {msg} ({})",
                self.run,
                self.pace(step)
            ));
            self.last_line = Instant::now();
        }
    }

    /// Prints a line about the run (above the bar on a terminal), unless quiet.
    pub fn note(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("[{}] {msg}", self.run)),
            None if !self.quiet => crate::events::progress(format!("[{}] {msg}", self.run)),
            None => {}
        }
    }

    /// Ends the display with a closing message.
    pub fn finish(&mut self, msg: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if !self.quiet {
            crate::events::progress(format!("[{}] {msg}", self.run));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_run_counts_only_this_session_and_weights_what_is_left_by_length() {
        let schedule = PhaseSchedule::constant(&[(128, 150), (256, 100)], 1e-3);
        // Resumed after step 100, with a second run of the same work queued after it.
        let mut p = Progress::start("r", &schedule, 100, schedule.cost_after(0), true, true);
        std::thread::sleep(Duration::from_millis(100));
        p.step(0, 101, 128, 1.0, None);
        let (rate, left, all) = p.pace_numbers(101);
        let secs = p.started.elapsed().as_secs_f64();
        // One step in this session, not 101.
        assert!(
            (rate - 1.0 / secs).abs() < 0.5 / secs,
            "{rate} steps/s after one step in {secs} s"
        );
        // 49 steps at 128 and 100 at 256 (each ≈ 2.46 of them), at this step's pace.
        let want = (49.0 + 100.0 * step_cost(256) / step_cost(128)) * secs;
        assert!(
            (left / want - 1.0).abs() < 0.05,
            "eta {left} s, expected about {want} s"
        );
        let queued = (150.0 + 100.0 * step_cost(256) / step_cost(128)) * secs;
        assert!(((all - left) / queued - 1.0).abs() < 0.05, "the queued run's time");
    }

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(duration(42.4), "42s");
        assert_eq!(duration(725.0), "12m05s");
        assert_eq!(duration(3780.0), "1h03m");
    }
}
