//! Progress on the terminal: a bar when stderr is a terminal, a plain line every few
//! seconds otherwise (CI logs, `nohup`, pipes).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Reports one run's progress.
pub struct Progress {
    bar: Option<ProgressBar>,
    run: String,
    total: usize,
    started: Instant,
    last_line: Instant,
    quiet: bool,
}

impl Progress {
    /// Starts reporting a run of `total` steps, of which `done` are already done; `lines_only`
    /// prints plain lines even on a terminal.
    pub fn start(run: &str, total: usize, done: usize, quiet: bool, lines_only: bool) -> Self {
        let bar = (!quiet && !lines_only && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len} {msg} {per_sec} eta {eta}")
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
            total,
            started: Instant::now(),
            last_line: Instant::now(),
            quiet,
        }
    }

    /// Records that `step` finished with this loss.
    pub fn step(&mut self, phase: usize, step: usize, seq_len: usize, loss: f32, val: Option<f32>) {
        let val = val.map(|v| format!(" val {v:.4}")).unwrap_or_default();
        let msg = format!("phase {phase} (seq {seq_len}) loss {loss:.4}{val}");
        if let Some(bar) = &self.bar {
            bar.set_position(step as u64);
            bar.set_message(msg);
        } else if !self.quiet
            && (self.last_line.elapsed() >= Duration::from_secs(5) || step == self.total || !val.is_empty())
        {
            let rate = step as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            eprintln!("[{}] step {step}/{} {msg} ({rate:.2} steps/s)", self.run, self.total);
            self.last_line = Instant::now();
        }
    }

    /// Ends the display with a closing message.
    pub fn finish(&mut self, msg: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if !self.quiet {
            eprintln!("[{}] {msg}", self.run);
        }
    }
}
