//! Matrix products on strided views, with `gemm`'s kernels for this process's instruction-set
//! path ([`crate::isa`]) rather than the widest its own detection would pick, so a pinned path
//! (`GPTLAB_ISA`) multiplies the same way on every CPU that runs it.

use gemm_common::gemm::gemm_basic_generic;
use gemm_common::simd::MixedSimd;

use super::transpose::transpose;
use crate::isa::Isa;
use crate::model::config::Float;

/// A strided matrix view: element (r, c) of `data` is at `r·rs + c·cs`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub(crate) data: &'a [Float],
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> View<'a> {
    /// A row-major matrix with `cols` columns.
    pub(crate) fn rows(data: &'a [Float], cols: usize) -> Self {
        Self { data, rs: cols, cs: 1 }
    }

    /// The rows from `r` on.
    pub(crate) fn skip_rows(self, r: usize) -> Self {
        Self {
            data: &self.data[r * self.rs..],
            ..self
        }
    }

    /// The columns from `c` on.
    fn skip_cols(self, c: usize) -> Self {
        Self {
            data: &self.data[c * self.cs..],
            ..self
        }
    }

    /// The transpose, without moving data.
    pub(crate) fn t(self) -> Self {
        Self {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// `dst (m×n) = acc·dst + beta · lhs (m×k) · rhs (k×n)`, spread over every thread of the
/// current rayon pool.
/// A long reduction into a small result (a weight gradient: `k` = tokens, `m×n` = the weight)
/// is cut along `k` instead ([`k_parts`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_par(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [Float],
    acc: bool,
    lhs: View<'_>,
    rhs: View<'_>,
    beta: Float,
) {
    let product = Product::new(m, n, k, lhs, rhs, beta);
    match k_parts(m, n, k) {
        // SAFETY: `dst` is initialised, and the product writes only values into it.
        1 => unsafe { gemm_spread(product, as_uninit_mut(&mut dst[..m * n]), acc) },
        parts if m > n && k_is_both_row_index(lhs, rhs) => gemm_split_k_transposed(product, dst, acc, parts),
        parts => gemm_split_k(product, dst, acc, parts),
    }
}

/// Whether both operands are stored with the reduction index as their rows (`lhs = xᵀ` of a
/// row-major `x`, `rhs` row-major), as in a weight gradient `xᵀ·gy`: `gemm` then packs both
/// whichever of them it takes as its left operand.
fn k_is_both_row_index(lhs: View<'_>, rhs: View<'_>) -> bool {
    lhs.rs == 1 && rhs.cs == 1
}

/// [`gemm_split_k`] for a weight gradient taller than wide, computed as its transpose in a
/// buffer of its own and transposed back: `gemm` runs such a product faster with the result's
/// longer side as its own rows, which for a row-major result is its width (in the mha step, the
/// MLP's `W₂` gradient, 768×192 over 8,192 tokens, ran at 271 GFLOP/s, and `W₁`'s, 192×768,
/// at 330). Each element is the same sum in the same order, so the same bits. Only for
/// operands that `gemm` packs either way ([`k_is_both_row_index`]): the LM head's input
/// gradient `gy·W` (2,048×192 over a vocabulary of 50,257) reads `gy` unpacked as its right
/// operand, and transposed it was packed, 5% slower with 300 MiB more at peak (`gpt2` case).
fn gemm_split_k_transposed(p: Product<'_>, dst: &mut [Float], acc: bool, parts: usize) {
    let Product { m, n, lhs, rhs, .. } = p;
    let mut t = vec![0.0; m * n];
    if acc {
        transpose(m, n, dst, n, &mut t);
    }
    let pt = Product {
        m: n,
        n: m,
        lhs: rhs.t(),
        rhs: lhs.t(),
        ..p
    };
    gemm_split_k(pt, &mut t, acc, parts);
    transpose(n, m, &t, m, dst);
}

/// `lhs (m×k) · rhs (k×n)`, scaled by `beta`: a product's operands, as the functions below
/// pass them on.
#[derive(Clone, Copy)]
struct Product<'a> {
    m: usize,
    n: usize,
    k: usize,
    lhs: View<'a>,
    rhs: View<'a>,
    beta: Float,
}

impl<'a> Product<'a> {
    fn new(m: usize, n: usize, k: usize, lhs: View<'a>, rhs: View<'a>, beta: Float) -> Self {
        Self {
            m,
            n,
            k,
            lhs,
            rhs,
            beta,
        }
    }

    /// The rows `lo..hi` of the product.
    fn rows(self, lo: usize, hi: usize) -> Self {
        Self {
            m: hi - lo,
            lhs: self.lhs.skip_rows(lo),
            ..self
        }
    }

    /// The same product over the reduction's terms `lo..hi` only.
    fn terms(self, lo: usize, hi: usize) -> Self {
        Self {
            k: hi - lo,
            lhs: self.lhs.skip_cols(lo),
            rhs: self.rhs.skip_rows(lo),
            ..self
        }
    }
}

/// gemm's parallelism for `threads` threads.
fn threads_of(threads: usize) -> gemm::Parallelism {
    if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// Reductions at least this long, and at least twice the result's longer side, are cut into
/// pieces of about this many terms.
const SPLIT_K: usize = 2048;

/// Into how many pieces [`gemm_par`] cuts a reduction of length `k` into an `m×n` result: 1
/// (no cut), or 2 to 8 pieces of about [`SPLIT_K`]. `gemm` spreads a product over its
/// threads by blocks of the result, and a weight gradient's result (at most 768×576 here) has
/// too few blocks for that: measured at `xᵀ·gy` 192×8192·8192×768 on 2 threads, 212 GFLOP/s
/// through `gemm`'s own threads and 338 as four pieces of 2,048 (one thread each, summed). The
/// count depends on the shape only, never on the thread count, so the sum rounds the same on
/// any number of threads.
fn k_parts(m: usize, n: usize, k: usize) -> usize {
    if k < SPLIT_K || k < 2 * m.max(n) {
        1
    } else {
        (k / SPLIT_K).clamp(2, 8)
    }
}

/// `gemm_par` as `parts` products over consecutive pieces of the reduction, one task each:
/// the first accumulates into `dst` itself, the others into buffers of their own, which are
/// then added to `dst` in their order.
fn gemm_split_k(p: Product<'_>, dst: &mut [Float], acc: bool, parts: usize) {
    use rayon::prelude::*;
    let Product { m, n, k, .. } = p;
    let bound = |i: usize| i * k / parts;
    // With more threads than pieces, each piece spreads over its share by blocks of the
    // result, which does not change its bits.
    let par = threads_of(rayon::current_num_threads() / parts);
    // SAFETY (each call): `out` is initialised where `acc` reads it: `dst` itself, or a
    // partial, which is written, not read (`acc` false; every piece has k ≥ 1 term).
    let piece = |i: usize, out: &mut [std::mem::MaybeUninit<Float>], acc: bool| unsafe {
        gemm_into(p.terms(bound(i), bound(i + 1)), out, n, acc, par);
    };
    // The partials are not zeroed first: each piece writes all of its own.
    let mut partials = Vec::with_capacity((parts - 1) * m * n);
    rayon::join(
        || piece(0, as_uninit_mut(&mut dst[..m * n]), acc),
        || {
            partials.spare_capacity_mut()[..(parts - 1) * m * n]
                .par_chunks_mut(m * n)
                .enumerate()
                .for_each(|(i, out)| piece(i + 1, out, false))
        },
    );
    // SAFETY: the pieces wrote every element of each partial.
    unsafe { partials.set_len((parts - 1) * m * n) };
    dst[..m * n].par_chunks_mut(n).enumerate().for_each(|(row, d)| {
        for p in partials.chunks(m * n) {
            let p = &p[row * n..(row + 1) * n];
            d.iter_mut().zip(p).for_each(|(d, p)| *d += p);
        }
    });
}

/// Rows of the result per task when a product is spread over the pool by rows, at most, where
/// the threads are few enough to share such blocks evenly.
const ROW_BLOCK: usize = 240;

/// What every block's first row is a multiple of. `gemm` sees a row-major result transposed,
/// so these rows are its columns, which its kernels take 6 at a time on the x86 paths (4 on
/// the baseline): a block of whole multiples of 12 leaves no narrower remainder tile.
const ROW_TILE: usize = 12;

/// The fewest rows a block has.
const MIN_ROW_BLOCK: usize = 48;

/// The widest result spread by rows. Each task packs the whole right operand for itself, and
/// wider results measured no faster by rows (an LM head 50,257 wide, a 3,072-wide MLP), so
/// they keep `gemm`'s own threads.
const ROW_SPLIT_MAX_N: usize = 1024;

/// `gemm` multiplies a product of at most this many elements with other kernels (horizontal
/// dot products; gemm-common 0.19 `gemm_basic_generic`), as it does one of at most 2 terms or
/// one row or column wide, and those round differently from its tiled kernels. No block of
/// rows may be such a product, or a result's bits would depend on how it was cut, and so on
/// the thread count.
const GEMM_SMALL_PRODUCT: usize = 16 * 16;

/// The first row of each block when an `m×n` result of `k` terms is spread by rows over
/// `threads` threads, or `None` for one `gemm` call on its own threads.
///
/// The blocks are as many as give every thread the same number of them (each at most
/// [`ROW_BLOCK`] rows where there are rows enough), and as even as whole tiles allow: the
/// product ends when the last thread's last block does, so 34 blocks of 240 rows on 16
/// threads (3 rounds for two of the threads, where 2.1 would do) would leave 29% of the
/// threads' time idle, and 48 blocks of about 171 rows leave next to none. Every block has at
/// least [`MIN_ROW_BLOCK`] rows, so more than [`GEMM_SMALL_PRODUCT`] elements where `n` is cut
/// at all: each block, like the whole, is on `gemm`'s tiled kernels.
fn row_cuts(m: usize, n: usize, k: usize, threads: usize) -> Option<Vec<usize>> {
    if threads < 2 || n > ROW_SPLIT_MAX_N || MIN_ROW_BLOCK * n <= GEMM_SMALL_PRODUCT || k <= 2 {
        return None;
    }
    let rounds = m.div_ceil(threads * ROW_BLOCK);
    // Rounded down to a tile, a block of at least MIN_ROW_BLOCK + ROW_TILE rows keeps
    // MIN_ROW_BLOCK.
    let blocks = (threads * rounds).min(m / (MIN_ROW_BLOCK + ROW_TILE));
    (blocks >= 2).then(|| (0..blocks).map(|i| i * m / blocks / ROW_TILE * ROW_TILE).collect())
}

/// `dst`, an `m×n` result, cut into blocks of rows starting at `cuts` (the first is 0, the
/// last block runs to the end): each block's first row and its memory.
fn row_blocks<'d, T>(mut dst: &'d mut [T], n: usize, cuts: &[usize]) -> Vec<(usize, &'d mut [T])> {
    let mut out = Vec::with_capacity(cuts.len());
    for (i, &lo) in cuts.iter().enumerate() {
        let len = match cuts.get(i + 1) {
            Some(hi) => (hi - lo) * n,
            None => dst.len(),
        };
        let (block, rest) = std::mem::take(&mut dst).split_at_mut(len);
        out.push((lo, block));
        dst = rest;
    }
    out
}

/// `p` into the `m×n` row-major `dst` on every thread of the pool. A tall, narrow result (the
/// step's activations times a weight) as blocks of rows ([`row_cuts`]), each one `gemm` call
/// on one thread. `gemm`'s own threads first pack a panel of the activations sized to the L3
/// cache (at gpt-mini's shapes all 8,192 rows, 6 MiB), then multiply it; a task packs its own
/// 240 rows or fewer (180 KiB) and multiplies them while they are in L2 — the likely reason it is
/// faster: at gpt-mini's shapes on an AMD EPYC Zen 3 (AVX2), 0–26% per product (medians)
/// and 3–8% per training step. Each element is the same sum whichever block computes it (no
/// block is small enough for `gemm`'s other kernels: [`GEMM_SMALL_PRODUCT`]), so the bits are
/// the same on any number of threads.
///
/// # Safety
/// With `acc`, the elements of `dst` must be initialised.
unsafe fn gemm_spread(p: Product<'_>, dst: &mut [std::mem::MaybeUninit<Float>], acc: bool) {
    use rayon::prelude::*;
    assert_eq!(dst.len(), p.m * p.n, "a spread product's destination is its m×n result");
    let threads = rayon::current_num_threads();
    match row_cuts(p.m, p.n, p.k, threads) {
        // SAFETY: the caller's.
        None => unsafe { gemm_into(p, dst, p.n, acc, threads_of(threads)) },
        Some(cuts) => {
            let row_major;
            let p = match p.rhs {
                View { rs: 1, cs, data } if cs != 1 => {
                    row_major = transposed(p.n, p.k, data, cs);
                    Product {
                        rhs: View::rows(&row_major, p.n),
                        ..p
                    }
                }
                _ => p,
            };
            row_blocks(dst, p.n, &cuts).into_par_iter().for_each(|(lo, d)| {
                // SAFETY: `d` is the block of `dst` that rows `lo..` of the product write, as
                // initialised as the caller's `dst`.
                unsafe { gemm_into(p.rows(lo, lo + d.len() / p.n), d, p.n, acc, gemm::Parallelism::None) }
            })
        }
    }
}

/// `xᵀ` for `x (rows×cols)` whose rows are `ld` apart, as a new row-major `cols×rows` matrix.
///
/// [`gemm_spread`] gives a transposed right operand (a weight `Wᵀ` of an input gradient
/// `gy·Wᵀ`) to its blocks this way. Every block packs the whole operand for itself, and read
/// transposed that packing is a gather, one element per row of `W`. Transposed once here
/// (at most 768×768 elements, under 1% of a product's time), each block packs rows read in
/// order: at gpt-mini's input gradients on an AMD EPYC Zen 3 (avx2 path), medians of calls
/// interleaved with the gathering way 1–8% faster per product (`gy·W₁ᵀ` 135 → 146 GFLOP/s
/// in one run, 158 → 159 in another) and 1–2% per training step. The product's sums and
/// their order are the same, so the same bits.
fn transposed(rows: usize, cols: usize, x: &[Float], ld: usize) -> Vec<Float> {
    let mut out = vec![0.0; rows * cols];
    transpose(rows, cols, x, ld, &mut out);
    out
}

/// `dst` as memory a product writes values into.
pub(crate) fn as_uninit_mut(dst: &mut [Float]) -> &mut [std::mem::MaybeUninit<Float>] {
    // SAFETY: `MaybeUninit<Float>` has `Float`'s layout; the callers write only values into
    // the result, so `dst` stays initialised.
    unsafe { &mut *(dst as *mut [Float] as *mut [std::mem::MaybeUninit<Float>]) }
}

/// `lhs (m×k) · rhs (k×n)` into a new `m×n` buffer, on every core. Without `acc` a product
/// reads nothing of its destination and writes every element, so the buffer is not zeroed
/// first (a pass over the product's memory saved).
pub(crate) fn gemm_par_new(m: usize, n: usize, k: usize, lhs: View<'_>, rhs: View<'_>) -> Vec<Float> {
    if k == 0 || k_parts(m, n, k) > 1 {
        let mut dst = vec![0.0; m * n];
        gemm_par(m, n, k, &mut dst, false, lhs, rhs, 1.0);
        return dst;
    }
    let mut dst = Vec::with_capacity(m * n);
    let product = Product::new(m, n, k, lhs, rhs, 1.0);
    // SAFETY: without `acc` the product reads no element of `dst`, and with `k > 0` it writes
    // all `m×n` of them, so they are initialised before `set_len`.
    unsafe {
        gemm_spread(product, &mut dst.spare_capacity_mut()[..m * n], false);
        dst.set_len(m * n);
    }
    dst
}

/// The product into `dst` (rows `dst_rs` apart), read first when `acc`.
///
/// # Safety
/// With `acc`, the `m×n` elements of `dst` the product reads must be initialised.
unsafe fn gemm_into(
    p: Product<'_>,
    dst: &mut [std::mem::MaybeUninit<Float>],
    dst_rs: usize,
    acc: bool,
    par: gemm::Parallelism,
) {
    let Product { m, n, k, lhs, rhs, .. } = p;
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_rs >= n && dst.len() >= (m - 1) * dst_rs + n);
    if k == 0 {
        if !acc {
            dst.chunks_mut(dst_rs)
                .take(m)
                .for_each(|row| row[..n].fill(std::mem::MaybeUninit::new(0.0)));
        }
        return;
    }
    let last = |v: &View<'_>, rows: usize, cols: usize| (rows - 1) * v.rs + (cols - 1) * v.cs;
    assert!(last(&lhs, m, k) < lhs.data.len() && last(&rhs, k, n) < rhs.data.len());
    // SAFETY: the asserts above keep every index the strides reach inside the slices, `dst`
    // is exclusively borrowed, and the caller vouches for what `acc` reads.
    unsafe { gemm_in_blocks(crate::isa::current(), p, dst.as_mut_ptr().cast(), dst_rs, acc, par) }
}

/// The longest reduction one `gemm` call is given. `gemm` cuts a longer one into blocks whose
/// length it derives from the CPU's L1 cache (`kernel_params`: at least 512 terms; 1,024 on
/// the AVX2 path of a 48 KiB, 12-way L1), adding them into the result one after another, so
/// the same product could round differently on two machines of one instruction-set path. Cut here,
/// in `gemm`'s own balanced way at its smallest block, each call is a single block and a
/// product's bits depend on the path alone.
const K_BLOCK: usize = 512;

/// [`gemm_on`] for `p` as one call per block of at most [`K_BLOCK`] consecutive terms of the
/// reduction (`⌈k / ⌈k / K_BLOCK⌉⌉` each, the last shorter), each adding into `dst` after the
/// first: the order `gemm` itself would follow with blocks of that length.
///
/// # Safety
/// As [`gemm_on`], for the whole product; with `acc`, the `m×n` elements of `dst` must be
/// initialised.
unsafe fn gemm_in_blocks(isa: Isa, p: Product<'_>, dst: *mut Float, dst_rs: usize, acc: bool, par: gemm::Parallelism) {
    let operand = |v: View<'_>| (v.data.as_ptr(), v.rs as isize, v.cs as isize);
    let len = p.k.div_ceil(p.k.div_ceil(K_BLOCK).max(1)).max(1);
    for (i, lo) in (0..p.k).step_by(len).enumerate() {
        let block = p.terms(lo, (lo + len).min(p.k));
        // SAFETY: a block of the caller's product, whose bounds it vouches for; blocks after
        // the first read what the first wrote.
        unsafe {
            gemm_on(
                isa,
                block.m,
                block.n,
                block.k,
                dst,
                dst_rs as isize,
                acc || i > 0,
                operand(block.lhs),
                operand(block.rhs),
                block.beta,
                par,
            );
        }
    }
}

/// A read-only operand: its first element, row stride and column stride.
type Operand = (*const Float, isize, isize);

/// `gemm::gemm` for `f32` with unit column stride in `dst` and non-negative strides, on the
/// kernels of `isa`: gemm's own entry point does the same transposition, then calls the
/// kernel its CPU detection chose; this one calls the kernel of the path given.
///
/// # Safety
/// Every element the strides reach, `m×k` of `lhs`, `k×n` of `rhs` and `m×n` of `dst` (rows
/// `dst_rs` apart), must be in bounds, and `isa` must be supported by this CPU.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_on(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut Float,
    dst_rs: isize,
    read_dst: bool,
    lhs: Operand,
    rhs: Operand,
    beta: Float,
    par: gemm::Parallelism,
) {
    // gemm's microkernels prefer a column-major destination: transpose the product when `dst`
    // is row-major (dst = lhs·rhs ⇔ dstᵀ = rhsᵀ·lhsᵀ), exactly as `gemm::gemm` does.
    let dst_cs: isize = 1;
    let (m, n, dst_cs, dst_rs, lhs, rhs) = if dst_cs.abs() < dst_rs.abs() {
        (n, m, dst_rs, dst_cs, (rhs.0, rhs.2, rhs.1), (lhs.0, lhs.2, lhs.1))
    } else {
        (m, n, dst_cs, dst_rs, lhs, rhs)
    };
    macro_rules! kernel {
        ($simd:expr, $module:ident, $lanes:expr) => {{
            use gemm_f32::microkernel::$module::f32::{H_M, H_N, H_UKR, MR_DIV_N, NR, UKR};
            const N: usize = $lanes;
            // SAFETY: the caller's bounds; `$simd` exists only on a CPU that has its features.
            unsafe {
                gemm_basic_generic::<_, Float, N, { MR_DIV_N * N }, NR, MR_DIV_N, H_M, H_N>(
                    $simd,
                    m,
                    n,
                    k,
                    dst,
                    dst_cs,
                    dst_rs,
                    read_dst,
                    lhs.0,
                    lhs.2,
                    lhs.1,
                    rhs.0,
                    rhs.2,
                    rhs.1,
                    1.0,
                    beta,
                    false,
                    false,
                    false,
                    |a, b, c| a * b + c,
                    &UKR,
                    &H_UKR,
                    false,
                    par,
                )
            }
        }};
    }
    fn unsupported<S>(isa: Isa) -> S {
        panic!("the {isa} path was chosen on a CPU without it")
    }
    match isa {
        Isa::Baseline => kernel!(gemm_common::simd::Scalar, scalar, 1),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => kernel!(
            <gemm_common::simd::V3 as MixedSimd<Float, Float, Float, Float>>::try_new()
                .unwrap_or_else(|| unsupported(isa)),
            fma,
            8
        ),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => kernel!(
            <gemm_common::simd::V4 as MixedSimd<Float, Float, Float, Float>>::try_new()
                .unwrap_or_else(|| unsupported(isa)),
            avx512f,
            16
        ),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unsupported(isa),
    }
}

/// `dst (m×n) = lhs (m×k) · rhs (k×n)` on every core, with `lhs` stored `k×m` when `lhs_t` and
/// `rhs` stored `n×k` when `rhs_t` (the layouts of a backward pass), all row-major: the
/// product the fused CPU operations use, for benchmarks and tests.
#[allow(clippy::too_many_arguments)]
pub fn matmul(m: usize, n: usize, k: usize, dst: &mut [Float], lhs: &[Float], lhs_t: bool, rhs: &[Float], rhs_t: bool) {
    let lhs = if lhs_t {
        View::rows(lhs, m).t()
    } else {
        View::rows(lhs, k)
    };
    let rhs = if rhs_t {
        View::rows(rhs, k).t()
    } else {
        View::rows(rhs, n)
    };
    gemm_par(m, n, k, dst, false, lhs, rhs, 1.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::ALL;

    fn values(n: usize, seed: usize) -> Vec<Float> {
        (0..n)
            .map(|i| (((i + seed) * 7919) % 2001) as Float * 1e-3 - 1.0)
            .collect()
    }

    /// `dst_rs`-strided `acc·dst + beta·lhs·rhs` by a scalar loop in f64.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        m: usize,
        n: usize,
        k: usize,
        dst: &[Float],
        dst_rs: usize,
        acc: bool,
        l: View,
        r: View,
        beta: Float,
    ) -> Vec<f64> {
        let mut out: Vec<f64> = dst.iter().map(|&v| v as f64).collect();
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|p| l.data[i * l.rs + p * l.cs] as f64 * r.data[p * r.rs + j * r.cs] as f64)
                    .sum();
                let old = if acc { out[i * dst_rs + j] } else { 0.0 };
                out[i * dst_rs + j] = old + beta as f64 * dot;
            }
        }
        out
    }

    /// Demands `got` equal to `want` to the bit, naming the first element that is not.
    fn assert_same_bits(got: &[Float], want: &[Float], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
            panic!("{what}: element {i} is {} where {} was wanted", got[i], want[i]);
        }
    }

    /// Runs `gemm_in_blocks` for `isa` on one thread, with `gemm_into`'s checks.
    #[allow(clippy::too_many_arguments)]
    fn product_on(
        isa: Isa,
        m: usize,
        n: usize,
        k: usize,
        dst: &mut [Float],
        dst_rs: usize,
        acc: bool,
        l: View,
        r: View,
        beta: Float,
    ) {
        let product = Product::new(m, n, k, l, r, beta);
        // SAFETY: the shapes below keep every index in bounds (gemm_into asserts the same).
        unsafe { gemm_in_blocks(isa, product, dst.as_mut_ptr(), dst_rs, acc, gemm::Parallelism::None) }
    }

    #[test]
    fn every_path_the_cpu_runs_multiplies_like_a_scalar_loop() {
        // Row-major and transposed operands, a destination block with rows wider than n,
        // accumulation, and k from a few to several of gemm's blocks.
        for isa in ALL.into_iter().filter(|i| i.supported()) {
            for (m, n, k, lhs_t, rhs_t, acc) in [
                (7, 5, 3, false, false, false),
                (33, 17, 64, true, false, true),
                (64, 96, 300, false, true, true),
                (129, 40, 513, true, true, false),
            ] {
                let (ld, rd) = (values(m * k, 1), values(k * n, 2));
                let l = if lhs_t {
                    View::rows(&ld, m).t()
                } else {
                    View::rows(&ld, k)
                };
                let r = if rhs_t {
                    View::rows(&rd, k).t()
                } else {
                    View::rows(&rd, n)
                };
                let dst_rs = n + 3;
                let mut dst = values(m * dst_rs, 3);
                let want = reference(m, n, k, &dst, dst_rs, acc, l, r, 0.5);
                product_on(isa, m, n, k, &mut dst, dst_rs, acc, l, r, 0.5);
                for (i, (&got, &want)) in dst.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * (k as f64).sqrt() * (1.0 + want.abs());
                    assert!(
                        (got as f64 - want).abs() <= tol,
                        "{isa} {m}x{n}x{k} element {i}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_long_reduction_is_added_in_blocks_of_at_most_512_terms_whatever_the_cache() {
        // Left to itself, gemm sizes its reduction blocks from the L1 cache, so two machines
        // of one path would round a long product differently. Each element must be, to the
        // bit, one multiply-add chain per block of ⌈k / ⌈k / 512⌉⌉ terms from zero (fused on
        // the AVX2 and AVX-512 paths, a multiply then an add on the baseline), the blocks'
        // sums added in order: the arithmetic of any machine, computed here by hand.
        for isa in ALL.into_iter().filter(|i| i.supported()) {
            for (m, n, k, lhs_t, rhs_t) in [
                (20, 13, 1300, false, false),
                (9, 70, 1025, true, false),
                (33, 8, 2048, false, true),
                (17, 19, 512, true, true),
            ] {
                let (ld, rd) = (values(m * k, 21), values(k * n, 22));
                let (l, r) = (
                    if lhs_t {
                        View::rows(&ld, m).t()
                    } else {
                        View::rows(&ld, k)
                    },
                    if rhs_t {
                        View::rows(&rd, k).t()
                    } else {
                        View::rows(&rd, n)
                    },
                );
                let mut got = vec![Float::NAN; m * n];
                product_on(isa, m, n, k, &mut got, n, false, l, r, 1.0);
                let len = k.div_ceil(k.div_ceil(512));
                let madd = |a: Float, b: Float, c: Float| match isa {
                    Isa::Baseline => a * b + c,
                    _ => a.mul_add(b, c),
                };
                for (e, &got) in got.iter().enumerate() {
                    let (i, j) = (e / n, e % n);
                    let block = |lo: usize| {
                        (lo..(lo + len).min(k)).fold(0.0, |s, p| {
                            madd(l.data[i * l.rs + p * l.cs], r.data[p * r.rs + j * r.cs], s)
                        })
                    };
                    let want = (len..k).step_by(len).fold(block(0), |total, lo| total + block(lo));
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{isa} {m}x{n}x{k} element {e}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_reduction_cut_into_pieces_is_the_product_on_any_number_of_threads() {
        // Weight-gradient shapes (k long, the result small), cut into 2, 3 and 8 pieces by
        // `k_parts`, one with an uneven cut; accumulation into `dst` and a beta.
        for (m, n, k, parts) in [(24, 40, 2048, 2), (40, 24, 3 * 2048 + 5, 3), (16, 8, 20_000, 8)] {
            assert_eq!(k_parts(m, n, k), parts, "{m}x{n}x{k}");
            let (ld, rd) = (values(m * k, 7), values(k * n, 8));
            // lhs = xᵀ of a row-major k×m `x`, as a weight gradient reads it.
            let (l, r) = (View::rows(&ld, m).t(), View::rows(&rd, n));
            let start = values(m * n, 9);
            let want = reference(m, n, k, &start, n, true, l, r, 0.5);
            let on_threads = |threads: usize| {
                let mut dst = start.clone();
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| gemm_par(m, n, k, &mut dst, true, l, r, 0.5));
                dst
            };
            let one = on_threads(1);
            for (i, (&got, &want)) in one.iter().zip(&want).enumerate() {
                let tol = 1e-5 * (k as f64).sqrt() * (1.0 + want.abs());
                assert!(
                    (got as f64 - want).abs() <= tol,
                    "{m}x{n}x{k} element {i}: {got} vs {want}"
                );
            }
            // 5 threads give each of 2 pieces gemm's own threads too.
            for threads in [2, 3, 5] {
                assert_same_bits(&on_threads(threads), &one, &format!("{m}x{n}x{k} on {threads} threads"));
            }
        }
        assert_eq!(k_parts(192, 768, 1024), 1, "short reductions are not cut");
        assert_eq!(k_parts(192, 50_257, 2048), 1, "nor products with a wide result");
    }

    #[test]
    fn a_tall_product_spread_by_rows_gives_the_bits_of_one_gemm_call_on_any_number_of_threads() {
        let cuts = |m, n, k, threads| row_cuts(m, n, k, threads).map(|c| (c.len(), c[1], c[c.len() - 1]));
        assert_eq!(
            cuts(8192, 576, 192, 2),
            Some((36, 216, 7956)),
            "the step's products on 2 threads: 36 blocks of 216 to 240 rows"
        );
        let on_16 = row_cuts(8192, 576, 192, 16).unwrap();
        assert_eq!(on_16.len(), 48, "on 16 threads: 3 blocks each");
        let rows: Vec<usize> = on_16
            .windows(2)
            .map(|w| w[1] - w[0])
            .chain([8192 - on_16[47]])
            .collect();
        assert!(
            rows.iter().all(|&r| (168..=180).contains(&r)) && on_16.iter().all(|c| c % ROW_TILE == 0),
            "even blocks of whole tiles: {rows:?}"
        );
        assert_eq!(
            cuts(200, 96, 192, 2),
            Some((2, 96, 96)),
            "a short result: one block per thread"
        );
        assert_eq!(cuts(300, 96, 192, 8), Some((5, 60, 240)), "each block at least 48 rows");
        assert_eq!(cuts(119, 96, 192, 2), None, "too few rows for two blocks");
        assert_eq!(cuts(8192, 50_257, 192, 2), None, "an LM head's wide result");
        assert_eq!(cuts(8192, 5, 192, 2), None, "48 rows of 5 would be a small product");
        assert_eq!(cuts(8192, 96, 2, 2), None, "so would 2 terms");
        assert_eq!(cuts(8192, 576, 192, 1), None, "one thread");
        let blocks: Vec<(usize, usize)> = row_blocks(&mut [0u8; 100 * 3], 3, &[0, 48])
            .into_iter()
            .map(|(lo, d)| (lo, d.len() / 3))
            .collect();
        assert_eq!(blocks, [(0, 48), (48, 52)], "the last block takes the remainder");
        // Last blocks longer than the rest; accumulation and a beta; a transposed right
        // operand (an input gradient's layout, transposed once for the blocks), also over
        // more than one block of the reduction; the widest result spread by rows; the
        // narrowest, whose blocks are just above `gemm`'s small products (60·6 elements: a
        // last block of 4 rows would have been one, and rounded differently).
        for (m, n, k, acc, rhs_t) in [
            (1000, 96, 200, false, false),
            (777, 40, 64, true, true),
            (500, 64, 700, false, true),
            (300, 1024, 33, false, false),
            (120, 6, 16, false, false),
            (241, 16, 16, true, false),
        ] {
            assert!(row_cuts(m, n, k, 2).is_some(), "{m}x{n}x{k} is cut by rows");
            let (ld, rd) = (values(m * k, 1), values(k * n, 2));
            let l = View::rows(&ld, k);
            let r = if rhs_t {
                View::rows(&rd, k).t()
            } else {
                View::rows(&rd, n)
            };
            let start = values(m * n, 3);
            let mut want = start.clone();
            product_on(crate::isa::current(), m, n, k, &mut want, n, acc, l, r, 0.5);
            for threads in [1, 2, 3, 5, 16] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut got = start.clone();
                pool.install(|| gemm_par(m, n, k, &mut got, acc, l, r, 0.5));
                assert_same_bits(&got, &want, &format!("{m}x{n}x{k} on {threads} threads"));
                if !acc {
                    let mut plain = vec![0.0; m * n];
                    product_on(crate::isa::current(), m, n, k, &mut plain, n, false, l, r, 1.0);
                    let new = pool.install(|| gemm_par_new(m, n, k, l, r));
                    assert_same_bits(
                        &new,
                        &plain,
                        &format!("{m}x{n}x{k} into new memory on {threads} threads"),
                    );
                }
            }
        }
    }

    #[test]
    fn a_tall_cut_reduction_computed_as_its_transpose_gives_the_bits_of_the_direct_one() {
        // Tall weight gradients (m > n, lhs = xᵀ) take the transposed route; each must equal
        // the product cut the same way straight into the result, to the bit, accumulating or not.
        for (m, n, k, acc) in [
            (40, 24, 2048, true),
            (96, 17, 3 * 2048 + 5, false),
            (768, 192, 4096, true),
        ] {
            let (ld, rd) = (values(m * k, 11), values(k * n, 12));
            let (l, r) = (View::rows(&ld, m).t(), View::rows(&rd, n));
            let start = values(m * n, 13);
            let (mut routed, mut direct) = (start.clone(), start.clone());
            gemm_par(m, n, k, &mut routed, acc, l, r, 0.5);
            let parts = k_parts(m, n, k);
            assert!(
                parts > 1 && m > n && k_is_both_row_index(l, r),
                "{m}x{n}x{k} must take the transposed route"
            );
            gemm_split_k(Product::new(m, n, k, l, r, 0.5), &mut direct, acc, parts);
            assert_same_bits(&routed, &direct, &format!("{m}x{n}x{k} acc={acc}"));
        }
    }

    #[test]
    fn a_product_into_new_memory_is_the_product_into_zeros() {
        // A forward shape on several threads, a cut reduction, an empty one, an empty result.
        for (m, n, k) in [(300, 70, 33), (24, 40, 2048), (5, 6, 0), (0, 4, 3)] {
            // Memory that held NaNs, which the new buffer may be given: each element must be
            // written, none read.
            drop(vec![Float::NAN; 4 * m * n + 64]);
            let (ld, rd) = (values(m * k, 3), values(k * n, 4));
            let (l, r) = (View::rows(&ld, k), View::rows(&rd, n));
            let mut want = vec![0.0; m * n];
            gemm_par(m, n, k, &mut want, false, l, r, 1.0);
            assert_same_bits(&gemm_par_new(m, n, k, l, r), &want, &format!("{m}x{n}x{k}"));
        }
    }

    #[test]
    fn the_path_gemm_would_pick_gives_gemms_own_bits() {
        // gemm's entry point picks AVX-512 when the CPU has avx512f, else FMA, else scalar:
        // the same kernel through `gemm_on` must give the same bits (the transposition and
        // arguments are mirrored exactly).
        #[cfg(target_arch = "x86_64")]
        let gemms = if is_x86_feature_detected!("avx512f") {
            Isa::Avx512
        } else if is_x86_feature_detected!("fma") {
            Isa::Avx2
        } else {
            Isa::Baseline
        };
        #[cfg(not(target_arch = "x86_64"))]
        let gemms = Isa::Baseline;
        let (m, n, k) = (70, 45, 260);
        let (ld, rd) = (values(m * k, 4), values(k * n, 5));
        let (l, r) = (View::rows(&ld, k), View::rows(&rd, n).t().t());
        let mut ours = values(m * n, 6);
        let mut theirs = ours.clone();
        product_on(gemms, m, n, k, &mut ours, n, true, l, r, 0.25);
        // SAFETY: row-major m×k, k×n and m×n buffers of exactly those sizes.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                theirs.as_mut_ptr(),
                1,
                n as isize,
                true,
                ld.as_ptr(),
                1,
                k as isize,
                rd.as_ptr(),
                1,
                n as isize,
                1.0,
                0.25,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        assert_same_bits(&ours, &theirs, &format!("path {gemms}"));
    }
}
