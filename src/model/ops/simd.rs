//! Element-wise kernels compiled three times: for the baseline x86-64 target (SSE2), for
//! AVX2+FMA and for AVX-512, run on this process's instruction-set path ([`crate::isa`]). The
//! release binary stays portable, and the loops run as wide as the path allows. Every build
//! performs the same IEEE operations in the same order (no FMA contraction, explicit 8-lane
//! reductions), so these kernels give the same bits on every path; only the matrix products
//! (`matmul.rs`) round differently from one path to another.

/// Defines `fn NAME(args)` whose body is compiled for each path, calling the one of this
/// process's path. The body must only call `#[inline(always)]` helpers, so they are compiled
/// with the same features.
macro_rules! simd_kernel {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512cd,avx512dq,avx512vl")]
                fn avx512($($arg: $ty),*) {
                    generic($($arg),*)
                }
                match $crate::isa::current() {
                    // SAFETY: the process's path is one the CPU supports (`isa::init` checks).
                    $crate::isa::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::isa::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::isa::Isa::Baseline => {}
                }
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use simd_kernel;
