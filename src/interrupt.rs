//! Signals. Ctrl-C, SIGTERM and SIGHUP (what Slurm, systemd and `timeout` send): the first asks
//! training to stop after the current step with a checkpoint; the second exits at once (the
//! last checkpoint is intact). SIGPIPE: output to a closed pipe ends the process quietly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
