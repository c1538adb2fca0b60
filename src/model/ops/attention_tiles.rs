//! The fused attention's small products on register tiles: one head's scores (`Q Kᵀ`,
//! `dY Vᵀ`) and its sums over causal weights (`P V`, `Pᵀ dY`, `dS K`, `dSᵀ Q`), computing only
//! the tiles that reach the diagonal and reading each operand where it lies, where `gemm`
//! packs both operands of every product and computes the whole square (narrow heads make
//! such products short: a reduction of 32 terms per score).
//!
//! Each output element is one sum in a fixed order (the reduction index ascending), whatever
//! the tiling, so results depend on the instruction-set path only (fused multiply-adds on
//! AVX2 and AVX-512, a multiply then an add on the baseline), never on the thread count.

use std::mem::MaybeUninit;

use super::matmul::View;
use crate::isa::Isa;
use crate::model::config::Float;

/// The widest chunk of columns a tile computes (two AVX-512 vectors): sizes around its
/// multiples cross from full tiles to narrower ones.
pub const WIDEST: usize = 32;

/// Rows per register tile on AVX-512: with two vectors of columns, 16 accumulators of its
/// 32 registers (4% faster than 6 rows on the attention of `step attention`).
const ROWS_AVX512: usize = 8;

/// Rows per register tile on the other paths: 12 accumulators, enough to keep both
/// multiply-add ports busy (their latency is 4 cycles), few enough for 16 registers.
const ROWS: usize = 6;

/// `a·b + c`: one fused multiply-add, or a multiply then an add on the baseline (whose
/// `mul_add` would be a library call per element).
#[inline(always)]
fn madd<const FMA: bool>(a: Float, b: Float, c: Float) -> Float {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// The columns a tile of rows covers, in chunks as wide as the path's two vectors, then 8,
/// then 1 for whatever is left: `tile(first column, width)` for each chunk of `0..n`.
#[inline(always)]
fn column_chunks<const COLS: usize>(n: usize, mut tile: impl FnMut(usize, usize)) {
    let mut c = 0;
    for width in [COLS, 8, 1] {
        while c + width <= n {
            tile(c, width);
            c += width;
        }
    }
}

/// Calls `$tile` with the constant `W` set to `$width`, one of the widths [`column_chunks`]
/// gives (32 or 16, then 8, then 1).
macro_rules! by_width {
    ($width:expr, |$w:ident| $tile:expr) => {{
        match $width {
            32 => {
                const $w: usize = 32;
                $tile
            }
            16 => {
                const $w: usize = 16;
                $tile
            }
            8 => {
                const $w: usize = 8;
                $tile
            }
            _ => {
                const $w: usize = 1;
                $tile
            }
        }
    }};
}

/// Defines `unsafe fn $name(isa, args, c)`: `$kernel` instantiated for `isa`'s tiles (and
/// compiled with its features), for both kernels of this file.
///
/// The generated function's safety contract: the CPU must support `isa`.
macro_rules! on_path {
    ($(#[$meta:meta])* $name:ident($args:ident, $c:ty) => $kernel:ident) => {
        $(#[$meta])*
        ///
        /// # Safety
        /// The CPU must support `isa`.
        unsafe fn $name(isa: Isa, args: &$args<'_>, c: $c) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512cd,avx512dq,avx512vl")]
            fn avx512(args: &$args<'_>, c: $c) {
                $kernel::<ROWS_AVX512, WIDEST, true>(args, c)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2(args: &$args<'_>, c: $c) {
                $kernel::<ROWS, 16, true>(args, c)
            }
            match isa {
                // SAFETY: the caller's promise.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512(args, c) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { avx2(args, c) },
                _ => $kernel::<ROWS, 8, false>(args, c),
            }
        }
    };
}

/// Scores: `c[i, j] = alpha · Σ_d a[i, d] · bt[d, j]` for rows `i < m` and, in each tile of
/// rows `i0..i1`, the columns `j < min(i1 rounded up to a chunk, n)` (the causal ones, and a
/// few right of the diagonal that the softmax then zeroes). `a` is `m×kd` (rows `lda` apart),
/// `bt` is `kd×n` (rows `n` apart), `c` rows are `n` apart.
#[allow(clippy::too_many_arguments)]
pub(crate) fn causal_scores(
    m: usize,
    n: usize,
    kd: usize,
    a: &[Float],
    lda: usize,
    bt: &[Float],
    c: &mut [Float],
    alpha: Float,
) {
    let args = ScoreArgs {
        m,
        n,
        kd,
        a,
        lda,
        bt,
        alpha,
    };
    // SAFETY: the process's path is one the CPU supports (`isa::init` checks).
    unsafe { scores_on(crate::isa::current(), &args, c) }
}

on_path! {
    /// [`causal_scores`] on the kernels of `isa`.
    scores_on(ScoreArgs, &mut [Float]) => scores
}

struct ScoreArgs<'a> {
    m: usize,
    n: usize,
    kd: usize,
    a: &'a [Float],
    lda: usize,
    bt: &'a [Float],
    alpha: Float,
}

#[inline(always)]
fn scores<const R: usize, const COLS: usize, const FMA: bool>(args: &ScoreArgs<'_>, c: &mut [Float]) {
    let (m, n) = (args.m, args.n);
    assert!(args.a.len() >= (m.max(1) - 1) * args.lda + args.kd && args.bt.len() >= args.kd * n);
    assert!(c.len() >= m * n);
    let mut i0 = 0;
    while i0 < m {
        let rows = R.min(m - i0);
        let end = (i0 + rows).next_multiple_of(COLS).min(n);
        column_chunks::<COLS>(
            end,
            #[inline(always)]
            |j0, width| {
                if rows == R {
                    by_width!(width, |W| score_tile::<R, W, FMA>(args, c, i0, j0));
                } else {
                    for i in i0..i0 + rows {
                        by_width!(width, |W| score_tile::<1, W, FMA>(args, c, i, j0));
                    }
                }
            },
        );
        i0 += rows;
    }
}

/// Rows `i0..i0 + R`, columns `j0..j0 + W` of [`causal_scores`].
#[inline(always)]
fn score_tile<const R: usize, const W: usize, const FMA: bool>(
    args: &ScoreArgs<'_>,
    c: &mut [Float],
    i0: usize,
    j0: usize,
) {
    let (n, kd, lda) = (args.n, args.kd, args.lda);
    // Every index below is at most these, checked once rather than per element.
    assert!((i0 + R - 1) * lda + kd <= args.a.len() && kd * n <= args.bt.len() && j0 + W <= n);
    let mut acc = [[0.0; W]; R];
    for d in 0..kd {
        // SAFETY: d < kd and j0 + W columns: inside `bt` by the assert above.
        let b: [Float; W] = unsafe { *args.bt.as_ptr().add(d * n + j0).cast::<[Float; W]>() };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row i0 + r < i0 + R, column d < kd: inside `a` by the assert above.
            let x = unsafe { *args.a.get_unchecked((i0 + r) * lda + d) };
            for (acc, &b) in acc.iter_mut().zip(&b) {
                *acc = madd::<FMA>(x, b, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let out = &mut c[(i0 + r) * n + j0..][..W];
        out.iter_mut().zip(acc).for_each(|(o, &v)| *o = v * args.alpha);
    }
}

/// Weighted sums of rows: `c[i, :] (+)= Σ_{j ∈ range(tile)} p(i, j) · x[j, :]` for rows
/// `i < m`, `w` columns, where `range(i0, i1)` gives the `j` a tile of rows `i0..i1` sums over
/// (weights outside each row's own causal range must be zero). `x` rows are `ldx` apart, `c`
/// rows `ldc` apart; `accumulate` adds to `c` instead of overwriting it. Without it every
/// element of the `m×w` block is written and none read, so `c` may be memory not yet written
/// (a new gradient needs no pass of zeros first).
///
/// # Safety
/// With `accumulate`, the `m×w` block of `c` must be initialised.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn weighted_rows(
    m: usize,
    w: usize,
    p: View<'_>,
    x: &[Float],
    ldx: usize,
    c: &mut [MaybeUninit<Float>],
    ldc: usize,
    accumulate: bool,
    range: TermRange,
    t: usize,
) {
    let args = SumArgs {
        m,
        w,
        p,
        x,
        ldx,
        ldc,
        accumulate,
        range,
        t,
    };
    // SAFETY: the process's path is one the CPU supports (`isa::init` checks); the caller
    // vouches for what `accumulate` reads.
    unsafe { sums_on(crate::isa::current(), &args, c) }
}

on_path! {
    /// [`weighted_rows`] on the kernels of `isa`.
    sums_on(SumArgs, &mut [MaybeUninit<Float>]) => sums
}

/// The terms `lo..hi` a tile of output rows `i0..i1` sums over, given `(i0, i1, T)`.
pub(crate) type TermRange = fn(usize, usize, usize) -> (usize, usize);

/// The sums of query rows `i0..i1` over keys `0..i1`: `P V`, `dS K`.
pub(crate) fn up_to_tile(_i0: usize, i1: usize, _t: usize) -> (usize, usize) {
    (0, i1)
}

/// The sums of key rows `j0..j1` over queries `j0..t`: `Pᵀ dY`, `dSᵀ Q`.
pub(crate) fn from_tile(j0: usize, _j1: usize, t: usize) -> (usize, usize) {
    (j0, t)
}

struct SumArgs<'a> {
    m: usize,
    w: usize,
    p: View<'a>,
    x: &'a [Float],
    ldx: usize,
    ldc: usize,
    accumulate: bool,
    range: TermRange,
    t: usize,
}

#[inline(always)]
fn sums<const R: usize, const COLS: usize, const FMA: bool>(args: &SumArgs<'_>, c: &mut [MaybeUninit<Float>]) {
    let m = args.m;
    assert!(c.len() >= (m.max(1) - 1) * args.ldc + args.w);
    let mut i0 = 0;
    while i0 < m {
        let rows = R.min(m - i0);
        let (lo, hi) = (args.range)(i0, i0 + rows, args.t);
        column_chunks::<COLS>(
            args.w,
            #[inline(always)]
            |c0, width| {
                if rows == R {
                    by_width!(width, |W| sum_tile::<R, W, FMA>(args, c, i0, c0, lo, hi));
                } else {
                    for i in i0..i0 + rows {
                        by_width!(width, |W| sum_tile::<1, W, FMA>(args, c, i, c0, lo, hi));
                    }
                }
            },
        );
        i0 += rows;
    }
}

/// Rows `i0..i0 + R`, columns `c0..c0 + W` of [`weighted_rows`], summing over `lo..hi`.
#[inline(always)]
fn sum_tile<const R: usize, const W: usize, const FMA: bool>(
    args: &SumArgs<'_>,
    c: &mut [MaybeUninit<Float>],
    i0: usize,
    c0: usize,
    lo: usize,
    hi: usize,
) {
    let (p, ldx, ldc) = (args.p, args.ldx, args.ldc);
    // Every index below is at most these, checked once rather than per element.
    assert!(hi <= lo || (i0 + R - 1) * p.rs + (hi - 1) * p.cs < p.data.len());
    assert!(hi <= lo || (hi - 1) * ldx + c0 + W <= args.x.len());
    assert!((i0 + R - 1) * ldc + c0 + W <= c.len());
    let mut acc = [[0.0; W]; R];
    if args.accumulate {
        for (r, acc) in acc.iter_mut().enumerate() {
            let from = &c[(i0 + r) * ldc + c0..][..W];
            // SAFETY: with `accumulate`, `weighted_rows`'s caller vouches that its block of
            // `c` (which holds this tile) is initialised.
            acc.iter_mut()
                .zip(from)
                .for_each(|(a, c)| *a = unsafe { c.assume_init() });
        }
    }
    let x = &args.x[c0..];
    // The weights' addresses in the forms the two layouts allow, so that the loop keeps them
    // in registers: with the tile's rows adjacent (a transposed view), one pointer per term
    // and the rows at fixed offsets from it; else one pointer per row. (A row offset plus a
    // multiplied term index per weight spilled registers: the loop ran at half its rate.)
    let first = p.data.as_ptr().wrapping_add(i0 * p.rs);
    if p.rs == 1 {
        // SAFETY (the weights): term j < hi, row < i0 + R: inside `p` by the assert above.
        sum_terms::<R, W, FMA>(
            &mut acc,
            x,
            ldx,
            lo..hi,
            #[inline(always)]
            |j, r| unsafe { *first.add(j * p.cs + r) },
        );
    } else {
        let rows: [*const Float; R] = std::array::from_fn(|r| first.wrapping_add(r * p.rs));
        let cs = p.cs;
        // SAFETY: as above.
        match cs {
            1 => sum_terms::<R, W, FMA>(
                &mut acc,
                x,
                ldx,
                lo..hi,
                #[inline(always)]
                |j, r| unsafe { *rows[r].add(j) },
            ),
            _ => sum_terms::<R, W, FMA>(
                &mut acc,
                x,
                ldx,
                lo..hi,
                #[inline(always)]
                |j, r| unsafe { *rows[r].add(j * cs) },
            ),
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let to = &mut c[(i0 + r) * ldc + c0..][..W];
        to.iter_mut().zip(acc).for_each(|(c, &a)| {
            c.write(a);
        });
    }
}

/// `acc[r] += Σ_{j ∈ terms} weight(j, r) · x[j·ldx..][..W]`, the reduction index ascending.
#[inline(always)]
fn sum_terms<const R: usize, const W: usize, const FMA: bool>(
    acc: &mut [[Float; W]; R],
    x: &[Float],
    ldx: usize,
    terms: std::ops::Range<usize>,
    weight: impl Fn(usize, usize) -> Float,
) {
    for j in terms {
        // SAFETY: the caller's assert keeps W columns of row j < hi inside `x`.
        let xj: [Float; W] = unsafe { *x.as_ptr().add(j * ldx).cast::<[Float; W]>() };
        for (r, acc) in acc.iter_mut().enumerate() {
            let w = weight(j, r);
            for (acc, &x) in acc.iter_mut().zip(&xj) {
                *acc = madd::<FMA>(w, x, *acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::matmul::as_uninit_mut;

    /// Values with many distinct roundings, reproducible.
    fn values(n: usize, salt: usize) -> Vec<Float> {
        (0..n)
            .map(|i| ((i * 7919 + salt * 104_729) % 1999) as Float / 997.0 - 1.0)
            .collect()
    }

    /// One path's kernels, with what a scalar loop in the same order must give to the bit.
    fn each_path(mut check: impl FnMut(Isa, fn(Float, Float, Float) -> Float)) {
        for isa in Isa::supported_paths() {
            let fma = isa != Isa::Baseline && cfg!(target_arch = "x86_64");
            check(
                isa,
                if fma {
                    |a: Float, b: Float, c: Float| a.mul_add(b, c)
                } else {
                    |a, b, c| a * b + c
                },
            );
        }
    }

    #[test]
    fn causal_scores_are_the_scalar_loop_to_the_bit_on_every_path() {
        each_path(|isa, madd| {
            for (t, kd) in [(1, 1), (5, 3), (8, 32), (37, 7), (70, 32), (129, 5)] {
                let lda = kd + 3; // rows of a wider matrix, as a head of q is
                let (a, bt) = (values(t * lda, 1), values(kd * t, 2));
                let alpha = 0.37;
                let mut c = vec![Float::NAN; t * t];
                let args = ScoreArgs {
                    m: t,
                    n: t,
                    kd,
                    a: &a,
                    lda,
                    bt: &bt,
                    alpha,
                };
                // SAFETY: `supported_paths` lists only paths this CPU runs.
                unsafe { scores_on(isa, &args, &mut c) };
                for i in 0..t {
                    for j in 0..=i {
                        let sum = (0..kd).fold(0.0, |acc, d| madd(a[i * lda + d], bt[d * t + j], acc));
                        let want = sum * alpha;
                        assert_eq!(c[i * t + j].to_bits(), want.to_bits(), "{isa} T={t} kd={kd} ({i}, {j})");
                    }
                }
            }
        });
    }

    #[test]
    fn weighted_rows_are_the_scalar_loop_to_the_bit_on_every_path() {
        each_path(|isa, madd| {
            for (t, w) in [(1, 1), (6, 8), (9, 13), (37, 32), (70, 43), (129, 16)] {
                let ldx = w + 2;
                let x = values(t * ldx, 3);
                // Causal weights: zero above the diagonal, as the softmax leaves them.
                let mut p = values(t * t, 4);
                (0..t).for_each(|i| p[i * t + i + 1..(i + 1) * t].fill(0.0));
                for (accumulate, transposed) in [(false, false), (true, false), (true, true)] {
                    let start = values(t * w, 5);
                    let mut c = if accumulate {
                        start.clone()
                    } else {
                        vec![Float::NAN; t * w]
                    };
                    let (view, range): (_, TermRange) = if transposed {
                        (View::rows(&p, t).t(), from_tile)
                    } else {
                        (View::rows(&p, t), up_to_tile)
                    };
                    let args = SumArgs {
                        m: t,
                        w,
                        p: view,
                        x: &x,
                        ldx,
                        ldc: w,
                        accumulate,
                        range,
                        t,
                    };
                    // SAFETY: `supported_paths` lists only paths this CPU runs, and `c` is
                    // initialised (NaN where the sums must write every element).
                    unsafe { sums_on(isa, &args, as_uninit_mut(&mut c)) };
                    for i in 0..t {
                        // Row i's own causal range: the weights outside it are zero.
                        let terms = if transposed { i..t } else { 0..i + 1 };
                        for col in 0..w {
                            let first = if accumulate { start[i * w + col] } else { 0.0 };
                            let want = terms.clone().fold(first, |acc, j| {
                                let weight = if transposed { p[j * t + i] } else { p[i * t + j] };
                                madd(weight, x[j * ldx + col], acc)
                            });
                            let got = c[i * w + col];
                            let case = format!("{isa} T={t} w={w} acc={accumulate} t={transposed} ({i}, {col})");
                            assert_eq!(got.to_bits(), want.to_bits(), "{case}: {got} vs {want}");
                        }
                    }
                }
            }
        });
    }
}
