//! One writer per run, across processes and hosts that share the runs folder.
//!
//! A run's lock is `<run>/.lock`, a small JSON file naming its holder ([`LockHolder`]): host,
//! pid, the process's start time (so a recycled pid is not mistaken for it), the Slurm job, the
//! timeout it promises to keep, and a heartbeat time that a thread of the holder refreshes every
//! quarter of that timeout while it holds the lock. A lock is *stale*, and is taken over with a
//! warning, when its holder is gone from this host (no such process, or another process under
//! that pid), or when its heartbeat is older than the holder's timeout (a holder on another
//! host that died, or a node that went down).
//!
//! Creating and taking over use only what a shared filesystem (NFS included) makes atomic:
//! `link(2)` of a complete file to the lock's name fails if the name exists, so a lock is never
//! seen half-written and two processes cannot both create it; a takeover happens under a second
//! such file (`.lock.takeover`), so two processes that both found a lock stale cannot both
//! replace it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::provenance::{host, job_id};

/// How long a holder's heartbeat may go unrefreshed before others may take its lock over,
/// unless `--lock-timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// How long an unreadable lock file is respected before it is taken over.
pub const UNREADABLE_GRACE: Duration = Duration::from_secs(10);

/// A takeover guard older than this was left by a process that died taking over.
const TAKEOVER_GUARD_TIMEOUT: Duration = Duration::from_secs(60);

/// Who holds a lock, as written in the lock file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// Host name of the holder.
    pub host: String,
    /// Its process id on that host.
    pub pid: u32,
    /// When that process started (clock ticks since boot; Linux), naming it among the
    /// processes that have had this pid.
    pub start_time: Option<u64>,
    /// The Slurm job (`123_4` for a task of an array), when the holder runs under Slurm.
    pub job: Option<String>,
    /// When it took the lock, seconds since 1970.
    pub acquired: u64,
    /// When it last said it is alive, seconds since 1970.
    pub heartbeat: u64,
    /// The heartbeat age after which the holder counts as gone, seconds.
    pub timeout_s: u64,
}

impl LockHolder {
    /// This process, now.
    fn me(timeout: Duration) -> Self {
        let pid = std::process::id();
        let now = unix_now();
        Self {
            host: host(),
            pid,
            start_time: start_time(pid),
            job: job_id(),
            acquired: now,
            heartbeat: now,
            timeout_s: timeout.as_secs().max(1),
        }
    }

    /// Whether `other` is the same holder (the same process's same taking of the lock).
    fn same_holder(&self, other: &Self) -> bool {
        (&self.host, self.pid, self.start_time, self.acquired)
            == (&other.host, other.pid, other.start_time, other.acquired)
    }

    /// Seconds since the heartbeat (0 if the holder's clock is ahead of ours).
    pub fn heartbeat_age(&self) -> u64 {
        unix_now().saturating_sub(self.heartbeat)
    }

    /// [`LockHolder::describe`] of a lock's holder, or what an unreadable lock means.
    pub fn describe_or_unknown(holder: Option<&Self>) -> String {
        holder.map_or_else(|| "its lock is being written".into(), Self::describe)
    }

    /// "host node7, pid 4242 (Slurm job 123_4), heartbeat 12 s ago".
    pub fn describe(&self) -> String {
        let job = self
            .job
            .as_ref()
            .map(|j| format!(" (Slurm job {j})"))
            .unwrap_or_default();
        format!(
            "host {}, pid {}{job}, heartbeat {} s ago",
            self.host,
            self.pid,
            self.heartbeat_age()
        )
    }

    /// Why this holder no longer holds its lock, if it does not.
    fn gone(&self) -> Option<String> {
        if self.host == host() {
            let alive = alive(self.pid)
                && match (self.start_time, start_time(self.pid)) {
                    (Some(recorded), Some(now)) => recorded == now,
                    _ => true,
                };
            if !alive {
                return Some(format!("its holder (pid {} on this host) is gone", self.pid));
            }
        }
        // A heartbeat from the future (a clock far off, or a forged file) would otherwise hold
        // the run for ever.
        let ahead = self.heartbeat.saturating_sub(unix_now());
        if ahead > self.timeout_s {
            return Some(format!(
                "its heartbeat is {ahead} s in the future, past its {} s timeout (a clock far off, or not a gptlab lock)",
                self.timeout_s
            ));
        }
        let age = self.heartbeat_age();
        (age > self.timeout_s).then(|| {
            format!(
                "its holder ({}) has not refreshed its heartbeat for {age} s, past its {} s timeout",
                self.describe(),
                self.timeout_s
            )
        })
    }
}

/// What a lock file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockState {
    /// No lock: nobody is training the run.
    Free,
    /// Held by a live holder (`None`: a lock file being written, or unreadable but recent).
    Live(Option<LockHolder>),
    /// Left by a holder that is gone; why.
    Stale(String),
}

/// Reads the lock at `path`.
pub fn inspect(path: &Path) -> LockState {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return LockState::Free,
        Err(_) => String::new(),
    };
    match serde_json::from_str::<LockHolder>(&text) {
        Ok(holder) => match holder.gone() {
            Some(why) => LockState::Stale(why),
            None => LockState::Live(Some(holder)),
        },
        // gptlab writes a lock whole (link(2) or rename of a complete file), so an unreadable
        // one is junk or an older gptlab's: held for a short grace (a file system's attribute
        // cache catching up), then taken over, instead of blocking the run for minutes.
        Err(_) => {
            let age = age(path).unwrap_or_default();
            if age > UNREADABLE_GRACE {
                LockState::Stale(format!("it is unreadable and {} s old", age.as_secs()))
            } else {
                LockState::Live(None)
            }
        }
    }
}

/// The result of trying to take a lock.
#[derive(Debug)]
pub enum Claim {
    /// Taken; held until dropped.
    Held(RunLock),
    /// Held by someone else.
    Busy(Option<LockHolder>),
}

/// A held run lock: its heartbeat is refreshed by a thread until it is dropped, which removes
/// the lock.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    holder: LockHolder,
    lost: Arc<AtomicBool>,
    heartbeat: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl RunLock {
    /// Tries once to take the lock at `path` (its folder must exist), promising to refresh
    /// its heartbeat within `timeout`; a stale lock is taken over with a warning naming `what`.
    pub fn try_acquire(path: &Path, timeout: Duration, what: &str) -> Result<Claim> {
        // Each pass either takes it, finds it busy, or saw it change hands: a few hundred
        // passes only when many processes race for one stale lock.
        for _ in 0..200 {
            let me = LockHolder::me(timeout);
            if link_new(path, &me)? {
                return Ok(Claim::Held(Self::hold(path, me)));
            }
            match inspect(path) {
                LockState::Free => continue,
                LockState::Live(holder) => return Ok(Claim::Busy(holder)),
                LockState::Stale(_) => take_over(path, what)?,
            }
        }
        bail!("could not take the lock {} (it kept changing hands)", path.display())
    }

    /// Takes the lock at `path`, waiting while another holder has it; `waiting` is called once
    /// with that holder when the wait begins. Returns `None` if `stop` is set while waiting.
    pub fn acquire_waiting(
        path: &Path,
        timeout: Duration,
        what: &str,
        stop: &AtomicBool,
        waiting: impl FnOnce(Option<&LockHolder>),
    ) -> Result<Option<Self>> {
        let mut waiting = Some(waiting);
        let poll = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match Self::try_acquire(path, timeout, what)? {
                Claim::Held(lock) => return Ok(Some(lock)),
                Claim::Busy(holder) => {
                    if let Some(say) = waiting.take() {
                        say(holder.as_ref());
                    }
                }
            }
            if stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            std::thread::sleep(poll);
        }
    }

    /// Starts the heartbeat of a lock just created.
    fn hold(path: &Path, holder: LockHolder) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<()>();
        let interval = (Duration::from_secs(holder.timeout_s) / 4).max(Duration::from_millis(100));
        let thread = {
            let (path, mut holder, lost) = (path.to_path_buf(), holder.clone(), lost.clone());
            std::thread::spawn(move || {
                // Wakes every interval until the lock is dropped (the sender goes away).
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                    match read_holder(&path) {
                        Some(now) if now.same_holder(&holder) => {
                            holder.heartbeat = unix_now();
                            if let Err(e) = replace(&path, &holder) {
                                crate::events::warning(format!(
                                    "warning: could not refresh the lock {}: {e:#}",
                                    path.display()
                                ));
                            }
                        }
                        other => {
                            let by = other.map_or_else(|| "nobody".to_string(), |h| h.describe());
                            crate::events::error(format!(
                                "error: the lock {} was taken over (now held by {by}); this process stops training the run without writing to it",
                                path.display()
                            ));
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            })
        };
        Self {
            path: path.to_path_buf(),
            holder,
            lost,
            heartbeat: Some((tx, thread)),
        }
    }

    /// Set once another process has taken the lock over (this one's heartbeat went unrefreshed
    /// past its timeout): the run is no longer this process's to write.
    pub fn lost(&self) -> Arc<AtomicBool> {
        self.lost.clone()
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if let Some((tx, thread)) = self.heartbeat.take() {
            drop(tx);
            let _ = thread.join();
        }
        if read_holder(&self.path).is_some_and(|h| h.same_holder(&self.holder)) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Replaces a stale lock at `path`, under the takeover guard; returns without doing anything
/// when another process is taking it over (the caller tries again).
fn take_over(path: &Path, what: &str) -> Result<()> {
    let guard = with_suffix(path, ".takeover");
    if !link_new(&guard, &LockHolder::me(TAKEOVER_GUARD_TIMEOUT))? {
        if age(&guard).is_some_and(|a| a > TAKEOVER_GUARD_TIMEOUT) {
            let _ = fs::remove_file(&guard);
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
        return Ok(());
    }
    // Under the guard, judge again: another process may have taken it over meanwhile.
    let result = match inspect(path) {
        LockState::Stale(why) => {
            crate::events::warning(format!("warning: taking over the lock of {what}: {why}"));
            fs::remove_file(path).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
        }
        _ => Ok(()),
    };
    let _ = fs::remove_file(&guard);
    result.with_context(|| format!("removing the stale lock {}", path.display()))
}

/// Creates `path` holding `holder`, complete, unless it exists; `false` if it does.
fn link_new(path: &Path, holder: &LockHolder) -> Result<bool> {
    let tmp = unique_tmp(path);
    crate::fsio::write_synced(&tmp, &serde_json::to_vec(holder)?)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        // A filesystem without hard links: exclusive creation (then written; a reader that
        // sees it empty waits, see `inspect`).
        Err(_) => match fs::OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(&serde_json::to_vec(holder)?)
                    .with_context(|| format!("writing the lock {}", path.display()))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e).with_context(|| format!("creating the lock {}", path.display())),
        },
    }
}

/// Replaces the lock at `path` with `holder` (a refreshed heartbeat), atomically.
fn replace(path: &Path, holder: &LockHolder) -> Result<()> {
    let tmp = unique_tmp(path);
    crate::fsio::write_synced(&tmp, &serde_json::to_vec(holder)?)?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// How long ago `path` was last written (`None` if it cannot be read or is in the future).
fn age(path: &Path) -> Option<Duration> {
    let modified = fs::metadata(path).and_then(|m| m.modified()).ok()?;
    SystemTime::now().duration_since(modified).ok()
}

fn read_holder(path: &Path) -> Option<LockHolder> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

/// `path` with `suffix` added to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// A temporary name beside `path` that no other process or thread uses.
fn unique_tmp(path: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    with_suffix(path, &format!(".{}.{}.{n}.tmp", host(), std::process::id()))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(host: &str, pid: u32, heartbeat_age: u64, timeout_s: u64) -> LockHolder {
        let now = unix_now();
        LockHolder {
            host: host.into(),
            pid,
            start_time: start_time(pid),
            job: None,
            acquired: now - heartbeat_age,
            heartbeat: now - heartbeat_age,
            timeout_s,
        }
    }

    fn write(path: &Path, h: &LockHolder) {
        fs::write(path, serde_json::to_vec(h).unwrap()).unwrap();
    }

    fn held(claim: Claim) -> RunLock {
        match claim {
            Claim::Held(lock) => lock,
            Claim::Busy(h) => panic!("busy: {h:?}"),
        }
    }

    #[test]
    fn a_lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let lock = held(RunLock::try_acquire(&path, DEFAULT_TIMEOUT, "run a").unwrap());
        let on_disk = read_holder(&path).unwrap();
        assert_eq!((on_disk.pid, on_disk.host.clone()), (std::process::id(), host()));
        // This process holds it: a second try (another worker) finds it busy.
        assert!(matches!(
            RunLock::try_acquire(&path, DEFAULT_TIMEOUT, "run a").unwrap(),
            Claim::Busy(Some(_))
        ));
        drop(lock);
        assert!(!path.exists(), "released");
        assert_eq!(inspect(&path), LockState::Free);
    }

    #[test]
    fn holders_gone_are_taken_over_and_live_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        // Pid 1 on this host is alive: busy.
        write(&path, &holder(&host(), 1, 0, 300));
        assert!(matches!(inspect(&path), LockState::Live(Some(_))));
        // Pid 1 with another start time: a process that has gone (its pid recycled).
        let mut recycled = holder(&host(), 1, 0, 300);
        recycled.start_time = Some(999_999_999_999);
        write(&path, &recycled);
        assert!(matches!(inspect(&path), LockState::Stale(ref why) if why.contains("is gone")));
        // A pid that cannot exist on this host.
        write(&path, &holder(&host(), 2_147_483_000, 0, 300));
        assert!(matches!(inspect(&path), LockState::Stale(_)));
        // Another host, recent heartbeat: live, whatever its pid.
        write(&path, &holder("elsewhere", 2_147_483_000, 10, 300));
        assert!(matches!(inspect(&path), LockState::Live(Some(_))));
        assert!(matches!(
            RunLock::try_acquire(&path, DEFAULT_TIMEOUT, "run a").unwrap(),
            Claim::Busy(Some(h)) if h.host == "elsewhere"
        ));
        // Another host whose heartbeat is older than its own timeout: taken over.
        write(&path, &holder("elsewhere", 7, 31, 30));
        assert!(matches!(inspect(&path), LockState::Stale(ref why) if why.contains("31 s")));
        let lock = held(RunLock::try_acquire(&path, DEFAULT_TIMEOUT, "run a").unwrap());
        assert_eq!(read_holder(&path).unwrap().pid, std::process::id());
        drop(lock);
        // An unreadable lock: recent means someone is writing it; old means left behind.
        fs::write(&path, "4242").unwrap();
        assert_eq!(inspect(&path), LockState::Live(None));
        let old = SystemTime::now() - UNREADABLE_GRACE - Duration::from_secs(2);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(matches!(inspect(&path), LockState::Stale(_)));
    }

    /// Whether `done` holds within 20 s (checked every 50 ms).
    fn eventually(done: impl Fn() -> bool) -> bool {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        done()
    }

    #[test]
    fn the_heartbeat_is_refreshed_and_a_takeover_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let lock = held(RunLock::try_acquire(&path, Duration::from_secs(1), "run a").unwrap());
        let mut first = read_holder(&path).unwrap();
        // Backdate the heartbeat; the thread (every 250 ms) writes a fresh one.
        first.heartbeat -= 100;
        replace(&path, &first).unwrap();
        // Polled, not slept for a fixed time: on a loaded machine (tests side by side on two
        // cores) the thread may wake late, and a late refresh is not a missed one.
        assert!(
            eventually(|| read_holder(&path).is_some_and(|h| h.heartbeat_age() <= 1)),
            "the heartbeat was never refreshed"
        );
        assert!(!lock.lost().load(Ordering::SeqCst));
        // Someone else's lock now: the holder notices and does not remove it on drop.
        write(&path, &holder("elsewhere", 7, 0, 300));
        assert!(
            eventually(|| lock.lost().load(Ordering::SeqCst)),
            "the takeover was never noticed"
        );
        drop(lock);
        assert_eq!(read_holder(&path).unwrap().host, "elsewhere");
    }

    #[test]
    fn racing_takers_of_a_stale_lock_end_with_one_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        for _ in 0..20 {
            write(&path, &holder("elsewhere", 7, 100, 30));
            let held = std::sync::Mutex::new(vec![]);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        if let Claim::Held(l) = RunLock::try_acquire(&path, DEFAULT_TIMEOUT, "run a").unwrap() {
                            held.lock().unwrap().push(l);
                        }
                    });
                }
            });
            assert_eq!(held.lock().unwrap().len(), 1, "exactly one taker holds it");
        }
    }

    #[test]
    fn waiting_ends_when_the_holder_leaves_or_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let first = held(RunLock::try_acquire(&path, Duration::from_secs(1), "run a").unwrap());
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(600));
                drop(first);
            });
            let mut waited = false;
            let second = RunLock::acquire_waiting(&path, Duration::from_secs(1), "run a", &stop, |h| {
                waited = h.is_some();
            })
            .unwrap();
            assert!(second.is_some() && waited);
        });
        // A stop while waiting ends the wait without the lock.
        let third = held(RunLock::try_acquire(&path, Duration::from_secs(1), "run a").unwrap());
        stop.store(true, Ordering::SeqCst);
        let none = RunLock::acquire_waiting(&path, Duration::from_secs(1), "run a", &stop, |_| {}).unwrap();
        assert!(none.is_none());
        drop(third);
    }
}
