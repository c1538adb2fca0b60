//! `out = xᵀ` for the attention's key and value heads: 8×8 blocks in AVX registers on the AVX2
//! and AVX-512 paths, element by element elsewhere and at the edges.
//!
//! LLVM leaves the plain loop scalar (a strided read per element, 8.6% of the attention's time
//! in `perf`); no rounding is involved, so every path gives the same bits.

use crate::isa::Isa;
use crate::model::config::Float;

/// `out (cols×rows) = xᵀ` for `x (rows×cols)` whose rows are `ld` apart (`out` rows are
/// `rows` apart).
pub(crate) fn transpose(rows: usize, cols: usize, x: &[Float], ld: usize, out: &mut [Float]) {
    // SAFETY: the process's path is one the CPU supports (`isa::init` checks).
    unsafe { transpose_on(crate::isa::current(), rows, cols, x, ld, out) }
}

/// [`transpose`] on the kernels of `isa`.
///
/// # Safety
/// The CPU must support `isa`.
unsafe fn transpose_on(isa: Isa, rows: usize, cols: usize, x: &[Float], ld: usize, out: &mut [Float]) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(cols <= ld && (rows - 1) * ld + cols <= x.len() && out.len() >= rows * cols);
    let done = match isa {
        // SAFETY: AVX2 is part of both paths, which the caller promises the CPU supports; the
        // assert above bounds every block.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => unsafe { blocks_avx(rows, cols, x, ld, out) },
        _ => (0, 0),
    };
    edges(rows, cols, x, ld, out, done);
}

/// The elements outside the `(block rows, block columns)` corner that blocks wrote.
fn edges(rows: usize, cols: usize, x: &[Float], ld: usize, out: &mut [Float], (br, bc): (usize, usize)) {
    for c in 0..cols {
        let from = if c < bc { br } else { 0 };
        for r in from..rows {
            out[c * rows + r] = x[r * ld + c];
        }
    }
}

/// Transposes the 8×8 blocks of the first `rows / 8 · 8` rows and `cols / 8 · 8` columns,
/// returning those two counts. The caller has checked the bounds of `x` and `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn blocks_avx(rows: usize, cols: usize, x: &[Float], ld: usize, out: &mut [Float]) -> (usize, usize) {
    use std::arch::x86_64::*;
    let (br, bc) = (rows / 8 * 8, cols / 8 * 8);
    let dst = out.as_mut_ptr();
    for r0 in (0..br).step_by(8) {
        for c0 in (0..bc).step_by(8) {
            // SAFETY: rows r0..r0 + 8 ≤ rows and columns c0..c0 + 8 ≤ cols, inside `x` and
            // (transposed) `out` by the caller's bounds check.
            unsafe {
                let row = |i: usize| _mm256_loadu_ps(x.as_ptr().add((r0 + i) * ld + c0));
                let (a0, a1, a2, a3) = (row(0), row(1), row(2), row(3));
                let (a4, a5, a6, a7) = (row(4), row(5), row(6), row(7));
                // Pairs of rows interleaved, then quadruples, then the two 128-bit halves.
                let (t0, t1) = (_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
                let (t2, t3) = (_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
                let (t4, t5) = (_mm256_unpacklo_ps(a4, a5), _mm256_unpackhi_ps(a4, a5));
                let (t6, t7) = (_mm256_unpacklo_ps(a6, a7), _mm256_unpackhi_ps(a6, a7));
                let (u0, u1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
                let (u2, u3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
                let (u4, u5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6));
                let (u6, u7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7));
                let col = |i: usize| dst.add((c0 + i) * rows + r0);
                _mm256_storeu_ps(col(0), _mm256_permute2f128_ps::<0x20>(u0, u4));
                _mm256_storeu_ps(col(1), _mm256_permute2f128_ps::<0x20>(u1, u5));
                _mm256_storeu_ps(col(2), _mm256_permute2f128_ps::<0x20>(u2, u6));
                _mm256_storeu_ps(col(3), _mm256_permute2f128_ps::<0x20>(u3, u7));
                _mm256_storeu_ps(col(4), _mm256_permute2f128_ps::<0x31>(u0, u4));
                _mm256_storeu_ps(col(5), _mm256_permute2f128_ps::<0x31>(u1, u5));
                _mm256_storeu_ps(col(6), _mm256_permute2f128_ps::<0x31>(u2, u6));
                _mm256_storeu_ps(col(7), _mm256_permute2f128_ps::<0x31>(u3, u7));
            }
        }
    }
    (br, bc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_transposes_every_element_at_sizes_crossing_the_blocks() {
        for isa in Isa::supported_paths() {
            for (rows, cols, ld) in [
                (1, 1, 1),
                (8, 8, 8),
                (7, 9, 12),
                (16, 32, 40),
                (129, 43, 43),
                (150, 32, 192),
            ] {
                let x: Vec<Float> = (0..(rows - 1) * ld + cols).map(|i| i as Float).collect();
                let mut out = vec![-1.0; rows * cols];
                // SAFETY: `isa` is one of the CPU's supported paths.
                unsafe { transpose_on(isa, rows, cols, &x, ld, &mut out) };
                for r in 0..rows {
                    for c in 0..cols {
                        assert_eq!(
                            out[c * rows + r],
                            x[r * ld + c],
                            "{isa}: {rows}×{cols} (ld {ld}) at ({r}, {c})"
                        );
                    }
                }
            }
        }
    }
}
