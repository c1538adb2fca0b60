//! Element-wise kernels compiled twice: for the baseline x86-64 target (SSE2) and for AVX2+FMA,
//! chosen at run time. The release binary stays portable, and on any CPU of the last decade
//! the loops run 8 lanes wide. Both builds perform the same IEEE operations in the same order
//! (no FMA contraction, explicit 8-lane reductions), so results do not depend on the CPU.

/// Whether this CPU runs AVX2 and FMA (checked once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Defines `fn NAME(args)` whose body is compiled for the baseline and for AVX2+FMA, calling
/// the latter when the CPU has it. The body must only call `#[inline(always)]` helpers, so
/// they are compiled with the same features.
macro_rules! simd_kernel {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn wide($($arg: $ty),*) {
                    generic($($arg),*)
                }
                if $crate::model::ops::simd::has_avx2_fma() {
                    // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                    return unsafe { wide($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use simd_kernel;
