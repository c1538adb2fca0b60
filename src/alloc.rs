//! Allocator settings for training: keep freed memory in the process.
//!
//! A training step allocates and frees the same few hundred megabytes of activations every
//! step. glibc's defaults hand blocks above its mmap threshold (and any free space at the top
//! of the heap) back to the kernel at once, so every step paid for page faults and zeroing of
//! pages it had just released: about 10% of a gpt-mini step on 2 cores. Raising the threshold
//! to its maximum, disabling trimming and serving even larger blocks from the heap keeps those
//! pages mapped for the next step. The peak resident size is then the largest step's, plus
//! whatever the heap's free blocks cannot be reused for (on GPT-2's vocabulary, 1,295 MiB
//! with large blocks mapped, 1,752 without: the price of twice the speed there; gpt-mini's
//! characters are unchanged at about 834 MiB).

/// Tunes the C allocator (glibc only; a no-op elsewhere). Call once, before training.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads
    // allocate, and rejected values leave the defaults in place.
    unsafe {
        // 32 MiB is the largest threshold glibc accepts on 64-bit targets.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // Blocks above even that threshold (a subword vocabulary's logits and their gradient:
        // 16·128·50,257 floats = 411 MB) would still be mapped and unmapped every step; with
        // no mmap at all they come from the heap and stay there. Measured on GPT-2's
        // vocabulary (`just bench gpt2`): 4.1 M page faults and 2.2–2.3 s a step with
        // mmap, 0.46 M and 1.07 s without.
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        // The settings above hold for the main arena only. A run trains on a thread of its
        // pool (`train::jobs`), and a thread's own arena holds at most 64 MiB a heap: it maps
        // a larger block whatever M_MMAP_MAX says and unmaps it when freed, so the 411 MB
        // logits were fresh pages every step again (2.4 s a step at GPT-2's vocabulary, 2.6 M
        // page faults per 6 steps, against 0.9 s with one arena, 2026-12-03). One arena for
        // every thread keeps them; the price is a shared lock on larger allocations (about 4%
        // of a gpt-mini character step, `just bench mha`).
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands the memory freed so far back to the kernel (glibc only; a no-op elsewhere). Call where
/// the shapes change, as at a phase of another sequence length: the blocks a shorter phase
/// kept are too small for the longer one's, and kept they would stay resident beside it (a
/// GPT-2-vocabulary run at 128 then 256 tokens peaked at 6.0 GB, against 5.1 GB trained at
/// 256 alone).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's heaps to the kernel;
    // memory in use is untouched, and it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
