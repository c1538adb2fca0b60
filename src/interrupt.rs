//! Signals. Ctrl-C, SIGTERM and SIGHUP (what Slurm, systemd and `timeout` send): the first asks
//! training to stop after the current step with a checkpoint; the second exits at once (the
//! last checkpoint is intact). SIGUSR1 and SIGUSR2, the warnings Slurm sends before a time limit
//! when a job asks for them (`--signal=USR1@120`), ask the same stop (their default action would
//! kill the process with no checkpoint). SIGPIPE: output to a closed pipe ends the process quietly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Signals closer together than this are one event delivered twice.
const DUPLICATE_WINDOW: Duration = Duration::from_millis(500);

/// The environment variable a wrapper (the justfile's recipes) sets to the command that resumes
/// an interrupted run, since gptlab cannot see its own caller.
pub const RESUME_ENV: &str = "GPTLAB_RESUME";

/// The command that resumes an interrupted run: [`RESUME_ENV`] when a wrapper set it, else
/// this process's command line as typed, flags included and quoted for a shell.
pub fn resume_command() -> String {
    let wrapper = std::env::var(RESUME_ENV).ok().filter(|c| !c.trim().is_empty());
    let typed = wrapper.unwrap_or_else(|| {
        std::env::args()
            .map(|a| crate::format::shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    });
    typed.trim().to_string()
}

/// Restores the default action of SIGPIPE, so `gptlab plan … | head -1` ends quietly like any
/// Unix tool instead of panicking on the failed write (Rust ignores SIGPIPE by default).
pub fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: signal(2) with SIG_DFL installs no handler of ours; it runs before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Installs the handler (Ctrl-C, SIGTERM, SIGHUP) and returns the flag it sets. Installing fails only if another
/// handler was installed first; then Ctrl-C stops the process without a checkpoint, and a
/// warning says so.
pub fn install() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let first: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let installed = ctrlc::set_handler(move || {
        let mut first = first.lock().unwrap_or_else(|e| e.into_inner());
        match *first {
            None => {
                *first = Some(std::time::Instant::now());
                flag.store(true, Ordering::SeqCst);
                crate::events::note(
                    "\ninterrupt: finishing the current step and writing a checkpoint (Ctrl-C again to stop at once)",
                );
            }
            // One event often arrives twice: `timeout` or Slurm signal the whole process group
            // and `just` forwards the same signal to its recipe. Only a later one means "now".
            Some(t) if t.elapsed() < DUPLICATE_WINDOW => {}
            Some(_) => {
                crate::events::note("\ninterrupt: stopping now; the last checkpoint is intact");
                std::process::exit(130);
            }
        }
    });
    if let Err(e) = installed {
        crate::events::warning(format!("warning: Ctrl-C will stop gptlab without a checkpoint ({e})"));
    }
    #[cfg(unix)]
    for signal in [signal_hook::consts::SIGUSR1, signal_hook::consts::SIGUSR2] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            crate::events::warning(format!(
                "warning: signal {signal} will stop gptlab without a checkpoint ({e})"
            ));
        }
    }
    stop
}
