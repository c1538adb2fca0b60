//! Measuring what attention costs: wall time inside the attention kernels, and the bytes
//! they leave allocated for the backward pass, counted by a global allocator.
//!
//! The binary installs [`CountingAlloc`] as its global allocator; without it, byte counts
//! are unavailable (`None`) and only times are reported.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting the bytes currently allocated.
pub struct CountingAlloc;

// SAFETY: every method forwards to the system allocator with the caller's own arguments, so
// GlobalAlloc's contract (the caller's layout, pointers from this allocator) carries over
// unchanged; the counting touches only atomics and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received (see the impl).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
            INSTALLED.store(true, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received (see the impl).
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
            INSTALLED.store(true, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from System (see the impl).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator, i.e. from System (see the impl).
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

/// Bytes currently allocated, if [`CountingAlloc`] is the global allocator.
pub fn live_bytes() -> Option<usize> {
    INSTALLED.load(Ordering::Relaxed).then(|| LIVE.load(Ordering::Relaxed))
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static ATTN_NANOS: AtomicU64 = AtomicU64::new(0);
static ATTN_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Turns the attention probe on or off (off by default: it costs two clock reads per call).
pub fn enable_attention_probe(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the attention probe is on.
pub fn attention_probe_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// What the attention kernels cost since the last call: `(milliseconds, saved bytes)`; the
/// bytes are `None` without the counting allocator.
pub fn take_attention() -> (f64, Option<usize>) {
    let ns = ATTN_NANOS.swap(0, Ordering::Relaxed);
    let bytes = ATTN_BYTES.swap(0, Ordering::Relaxed);
    (ns as f64 / 1e6, live_bytes().map(|_| bytes))
}

/// Times a region of attention work while the probe is on.
pub struct Timer(Option<Instant>);

impl Timer {
    /// Starts timing (a no-op while the probe is off).
    pub fn start() -> Self {
        Timer(attention_probe_enabled().then(Instant::now))
    }
    /// Adds the elapsed time to the attention total.
    pub fn stop(self) {
        if let Some(t0) = self.0 {
            ATTN_NANOS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

/// Records bytes that a forward pass left allocated for its backward pass.
pub fn add_saved_bytes(bytes: usize) {
    if attention_probe_enabled() {
        ATTN_BYTES.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// This process's peak resident memory (VmHWM) in MiB, on Linux.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Resets the peak resident memory to the current one, so each run reports its own peak
/// (Linux `clear_refs`; best effort elsewhere).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Memory this process can still be given, in bytes, on Linux: the system's `MemAvailable`,
/// or less where a cgroup caps the process (a Slurm job's `--mem`, a container's limit), whose
/// limit the kernel enforces by killing it whatever the system has free.
pub fn available_memory_bytes() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: f64 = info
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let system = kb * 1024.0;
    let capped = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|groups| cgroup_headroom(Path::new("/sys/fs/cgroup"), &groups));
    Some(capped.map_or(system, |c| c.min(system)))
}

/// The least room left in the memory cgroups that `groups` (the text of `/proc/self/cgroup`)
/// names under `root`, and in their ancestors, since a limit on any of them holds: the limit
/// less the usage, of which the inactive page cache does not count (the kernel reclaims it
/// before it kills: a corpus read once is charged to the group as cache). cgroup v2 (`0::/path`:
/// `memory.max`, `memory.current`, `inactive_file` of `memory.stat`) and v1
/// (`N:…memory…:/path`: `memory.limit_in_bytes`, `memory.usage_in_bytes`,
/// `total_inactive_file`). `None` where no group has a limit.
pub fn cgroup_headroom(root: &Path, groups: &str) -> Option<f64> {
    let mut least: Option<f64> = None;
    for line in groups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let (mount, files) = if controllers.is_empty() {
            (root.to_path_buf(), ("memory.max", "memory.current", "inactive_file"))
        } else if controllers.split(',').any(|c| c == "memory") {
            let v1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file");
            (root.join("memory"), v1)
        } else {
            continue;
        };
        let mut dir = mount.join(path.trim_start_matches('/'));
        loop {
            // "max" (v2's no limit) does not parse: no limit here.
            let number = |file: &str| std::fs::read_to_string(dir.join(file)).ok()?.trim().parse::<f64>().ok();
            if let (Some(limit), Some(used)) = (number(files.0), number(files.1)) {
                let reclaimable = stat(&dir, files.2).unwrap_or(0.0);
                let room = (limit - (used - reclaimable).max(0.0)).max(0.0);
                least = Some(least.map_or(room, |l| l.min(room)));
            }
            if dir == mount || !dir.pop() {
                break;
            }
        }
    }
    least
}

/// The value of `key` in the group `dir`'s `memory.stat` (`key value` lines).
fn stat(dir: &Path, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(root: &Path, dir: &str, files: &[(&str, &str)]) {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    #[test]
    fn a_slurm_jobs_v2_limit_above_the_tasks_group_is_the_room_left() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // Slurm's layout: the job's group holds --mem; the task's own has no limit.
        group(
            r,
            "system.slice/slurmstepd.scope/job_7",
            &[("memory.max", "4294967296\n"), ("memory.current", "294967296\n")],
        );
        group(
            r,
            "system.slice/slurmstepd.scope/job_7/step_0/task_0",
            &[("memory.max", "max\n"), ("memory.current", "1000\n")],
        );
        let groups = "0::/system.slice/slurmstepd.scope/job_7/step_0/task_0\n";
        assert_eq!(cgroup_headroom(r, groups), Some(4e9));
        // A corpus read once is charged as page cache; its inactive part is reclaimed first.
        let stat = "anon 100000000\nfile 194967296\ninactive_file 94967296\n";
        group(r, "system.slice/slurmstepd.scope/job_7", &[("memory.stat", stat)]);
        assert_eq!(cgroup_headroom(r, groups), Some(4e9 + 94967296.0));
        // No limit anywhere, or no such group: none.
        assert_eq!(cgroup_headroom(r, "0::/system.slice\n"), None);
        assert_eq!(cgroup_headroom(r, "0::/elsewhere\n"), None);
    }

    #[test]
    fn a_v1_memory_controller_is_read_among_the_others_and_the_tightest_wins() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let v1 = |dir: &str, limit: &str, used: &str| {
            group(
                r,
                &format!("memory/{dir}"),
                &[("memory.limit_in_bytes", limit), ("memory.usage_in_bytes", used)],
            );
        };
        v1("", "9223372036854771712", "5000");
        v1("box", "3000000000", "1000000000");
        v1("box/inner", "9223372036854771712", "500000000");
        // `inactive_file` is v2's name: v1's is `total_inactive_file`.
        group(
            r,
            "memory/box",
            &[("memory.stat", "inactive_file 7\ntotal_inactive_file 0\n")],
        );
        let groups = "4:memory:/box/inner\n3:cpuset:/\n1:name=systemd:/\n0::/\n";
        assert_eq!(cgroup_headroom(r, groups), Some(2e9));
        // Over its limit (usage can pass a soft limit): no room, not a negative one.
        v1("box", "1000", "2000");
        assert_eq!(cgroup_headroom(r, groups), Some(0.0));
    }
}
