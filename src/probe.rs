//! Measuring what attention costs: wall time inside the attention kernels, and the bytes
//! they leave allocated for the backward pass, counted by a global allocator.
//!
//! The binary installs [`CountingAlloc`] as its global allocator; without it, byte counts
//! are unavailable (`None`) and only times are reported.

use std::alloc::{GlobalAlloc, Layout, System};
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

/// Memory the system can still give this process (MemAvailable), in bytes, on Linux.
pub fn available_memory_bytes() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: f64 = info
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024.0)
}
