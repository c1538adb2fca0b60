//! Allocator settings for training: keep freed memory in the process.
//!
//! A training step allocates and frees the same few hundred megabytes of activations every
//! step. glibc's defaults hand blocks above its mmap threshold (and any free space at the top
//! of the heap) back to the kernel at once, so every step paid for page faults and zeroing of
//! pages it had just released: about 10% of a gpt-mini step on 2 cores. Raising the threshold
//! to its maximum and disabling trimming keeps those pages mapped for the next step; the peak
//! resident size is unchanged, since it is set by the largest step anyway.

/// Tunes the C allocator (glibc only; a no-op elsewhere). Call once, before training.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads
    // allocate, and rejected values leave the defaults in place.
    unsafe {
        // 32 MiB is the largest threshold glibc accepts on 64-bit targets.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
