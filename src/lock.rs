//! One writer per experiment: a lock file holding the owner's pid.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Held while a process trains an experiment; removed on drop.
#[derive(Debug)]
pub struct ExperimentLock {
    path: PathBuf,
}

fn alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    #[cfg(unix)]
    {
        // Signal 0 checks existence; EPERM means it exists under another user.
        // SAFETY: kill(2) with signal 0 sends nothing and touches no memory of ours.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// When process `pid` started, in clock ticks since boot (Linux: field 22 of
/// `/proc/<pid>/stat`); `None` where that cannot be read. With the pid it names one process:
/// a pid the system has recycled for another process has another start time.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the lock line `holder` (`pid` or `pid start_time`) names a live process.
fn holder_alive(holder: &str) -> Option<u32> {
    let mut parts = holder.split_whitespace();
    let pid: u32 = parts.next()?.parse().ok()?;
    let started: Option<u64> = parts.next().and_then(|s| s.parse().ok());
    let same_process = match (started, start_time(pid)) {
        (Some(recorded), Some(now)) => recorded == now,
        _ => true,
    };
    (pid != std::process::id() && alive(pid) && same_process).then_some(pid)
}

impl ExperimentLock {
    /// Takes `<dir>/.lock`, creating `dir`. A lock whose process is gone is taken over; a live
    /// one is an error naming its pid.
    pub fn acquire(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(".lock");
        for _ in 0..3 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let me = std::process::id();
                    let line = match start_time(me) {
                        Some(t) => format!("{me} {t}"),
                        None => me.to_string(),
                    };
                    write!(f, "{line}").with_context(|| format!("writing {}", path.display()))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&path).unwrap_or_default();
                    match holder_alive(&holder) {
                        Some(pid) => bail!(
                            "another gptlab (pid {pid}) is training this experiment ({}); wait for it or stop it",
                            path.display()
                        ),
                        // A dead owner (or a recycled pid), or a lock half-written by one: take it over.
                        None => {
                            let _ = fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("creating lock {}", path.display()));
                }
            }
        }
        bail!("could not take the lock {}", path.display())
    }
}

impl Drop for ExperimentLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_holder_blocks_and_a_dead_one_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let lock = ExperimentLock::acquire(dir.path()).unwrap();
        // Our own pid counts as a live holder for another process; simulate one with pid 1.
        fs::write(dir.path().join(".lock"), "1").unwrap();
        let err = ExperimentLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("pid 1"), "{err}");
        drop(lock);
        // A pid that cannot exist: taken over.
        // Pid 1 is alive, but a lock recording another start time was taken by a process that
        // has gone (the pid was recycled): taken over.
        fs::write(dir.path().join(".lock"), "1 999999999999").unwrap();
        drop(ExperimentLock::acquire(dir.path()).unwrap());
        fs::write(dir.path().join(".lock"), format!("1 {}", start_time(1).unwrap())).unwrap();
        assert!(
            ExperimentLock::acquire(dir.path()).is_err(),
            "the same process still holds it"
        );
        fs::write(dir.path().join(".lock"), "2147483000").unwrap();
        let _again = ExperimentLock::acquire(dir.path()).unwrap();
        let line = fs::read_to_string(dir.path().join(".lock")).unwrap();
        assert_eq!(
            line.split(' ').next(),
            Some(std::process::id().to_string().as_str()),
            "{line}"
        );
    }
}
