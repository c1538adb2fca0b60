//! Ctrl-C: the first press asks training to stop after the current step with a checkpoint;
//! the second exits at once (the last checkpoint is intact).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Installs the handler and returns the flag it sets. Installing fails only if another
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
