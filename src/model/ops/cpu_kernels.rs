//! Plain-slice CPU kernels behind the fused CPU operations (`ops/cpu.rs`): matrix products
//! on strided views, GELU, rotary embedding. Each one is a pure function of its slices, so it
//! can be tested and profiled without dfdx around it.

use rayon::prelude::*;

use super::dropout::DropRule;
use super::matmul::{View, gemm_par, gemm_par_new};
use super::simd::simd_kernel;
use crate::model::config::Float;

const SQRT_2_OVER_PI: Float = 0.797_884_6;
const GELU_C: Float = 0.044_715;

/// `tanh(u)` through one `exp`, cheaper than libm's `tanhf`; saturates correctly at ±∞.
#[inline(always)]
fn fast_tanh(u: Float) -> Float {
    1.0 - 2.0 / (exp(2.0 * u) + 1.0)
}

/// `eˣ` to within 2.5·10⁻⁷ relative error over the normal range, in plain arithmetic that LLVM vectorises (libm's
/// `expf` is a call per element): `eˣ = 2ⁿ·eʳ` with `n = round(x·log₂e)` and a degree-7
/// polynomial for `eʳ`, `|r| ≤ ln2/2`. Inputs are clamped to `[-87, 88]`, so `-∞` gives about
/// 1.6e-38 rather than 0 (callers only add such terms to larger ones); NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: Float) -> Float {
    const LN2_HI: Float = 0.693_145_75;
    const LN2_LO: Float = 1.428_606_8e-6;
    // Adding 1.5·2²³ rounds to an integer in the low mantissa bits, without a rounding instruction.
    const SHIFTER: Float = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + SHIFTER;
    let n = t - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let n = t.to_bits() as i32 - SHIFTER.to_bits() as i32;
    Float::from_bits(((n + 127) << 23) as u32) * p
}

/// Elements per parallel chunk of the element-wise kernels.
pub(crate) const CHUNK: usize = 1 << 14;

/// `vec![0.0; n]` written on every core: a large one is otherwise one thread's `memset` while
/// the others wait (a fifth of a gpt-mini step's serial time on 2 cores).
pub(crate) fn zeros(n: usize) -> Vec<Float> {
    if n < CHUNK {
        return vec![0.0; n];
    }
    filled_on_every_core(n, |chunk, _| chunk.fill(std::mem::MaybeUninit::new(0.0)))
}

/// `x.to_vec()` copied on every core, without zeroing the copy first.
pub(crate) fn par_to_vec(x: &[Float]) -> Vec<Float> {
    if x.len() < CHUNK {
        return x.to_vec();
    }
    filled_on_every_core(x.len(), |chunk, at| {
        chunk.copy_from_slice(as_uninit(&x[at..at + chunk.len()]))
    })
}

/// `x` as the source of a copy into memory not yet written.
fn as_uninit(x: &[Float]) -> &[std::mem::MaybeUninit<Float>] {
    // SAFETY: `MaybeUninit<Float>` has `Float`'s layout, and every initialised value is a
    // valid `MaybeUninit`; the length is the same.
    unsafe { &*(x as *const [Float] as *const [std::mem::MaybeUninit<Float>]) }
}

/// `n` copies of the row `row`, one after another, written on every core.
fn rows_of(row: &[Float], n: usize) -> Vec<Float> {
    let w = row.len();
    filled_on_every_core(n * w, |chunk, at| {
        let row = as_uninit(row);
        let (mut done, lead) = (0, at % w);
        while done < chunk.len() {
            let from = if done == 0 { lead } else { 0 };
            let len = (w - from).min(chunk.len() - done);
            chunk[done..done + len].copy_from_slice(&row[from..from + len]);
            done += len;
        }
    })
}

/// A vector of `n` elements whose chunks of [`CHUNK`] `fill(chunk, first index)` writes in
/// parallel, straight into the new allocation, which is never zeroed first (a pass over
/// memory saved: the step is bound by memory traffic as much as by arithmetic). `fill` must
/// write every element of its chunk. A `memset` or `memcpy` per chunk is the C library's
/// widest, where a collected parallel iterator stored 16 bytes at a time.
fn filled_on_every_core(n: usize, fill: impl Fn(&mut [std::mem::MaybeUninit<Float>], usize) + Sync) -> Vec<Float> {
    filled_in_chunks(n, CHUNK, fill)
}

/// [`filled_on_every_core`] in chunks of `chunk` elements (a whole number of rows, for a
/// kernel that needs its chunk to start at a row).
fn filled_in_chunks(
    n: usize,
    chunk: usize,
    fill: impl Fn(&mut [std::mem::MaybeUninit<Float>], usize) + Sync,
) -> Vec<Float> {
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, part)| fill(part, i * chunk));
    // SAFETY: the loop above wrote every one of the first `n` elements.
    unsafe { v.set_len(n) };
    v
}

/// About [`CHUNK`] elements in whole rows of `cols`.
fn row_chunk(cols: usize) -> usize {
    (CHUNK / cols).max(1) * cols
}

/// `GELU(x)` (tanh form). [`gelu_and_grad`] holds the formula; inlined, the unused
/// derivative is never computed.
#[inline(always)]
fn gelu(x: Float) -> Float {
    gelu_and_grad(x).0
}

simd_kernel! {
    /// `y = GELU(x)` on one chunk.
    fn gelu_chunk(y: &mut [std::mem::MaybeUninit<Float>], x: &[Float]) {
        for (y, &x) in y.iter_mut().zip(x) {
            y.write(gelu(x));
        }
    }
}

/// `gelu'(x)`, from [`gelu_and_grad`].
#[inline(always)]
fn gelu_grad(x: Float) -> Float {
    gelu_and_grad(x).1
}

simd_kernel! {
    /// `dx += gy · gelu'(x)` on one chunk.
    fn gelu_grad_add_chunk(dx: &mut [Float], x: &[Float], gy: &[Float]) {
        for ((dx, &x), &gy) in dx.iter_mut().zip(x).zip(gy) {
            *dx += gy * gelu_grad(x);
        }
    }
}

/// `(GELU(x), gelu'(x))` from one `tanh`: the one place the formula is written, so GELU, its
/// derivative and the two computed together ([`cpu_gelu_with_grad`]) give the same bits.
#[inline(always)]
fn gelu_and_grad(x: Float) -> (Float, Float) {
    let th = fast_tanh(SQRT_2_OVER_PI * (x + GELU_C * x * x * x));
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x);
    (0.5 * x * (1.0 + th), 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du)
}

simd_kernel! {
    /// `y = GELU(x)` and `x ← gelu'(x)` on one chunk.
    fn gelu_and_grad_chunk(y: &mut [std::mem::MaybeUninit<Float>], x: &mut [Float]) {
        for (y, x) in y.iter_mut().zip(x) {
            let (g, d) = gelu_and_grad(*x);
            y.write(g);
            *x = d;
        }
    }
}

simd_kernel! {
    /// `y = GELU(x + b)` and `x ← gelu'(x + b)` on whole rows of `b.len()` columns.
    fn gelu_and_grad_biased_rows(y: &mut [std::mem::MaybeUninit<Float>], x: &mut [Float], b: &[Float]) {
        for (y, x) in y.chunks_mut(b.len()).zip(x.chunks_mut(b.len())) {
            for ((y, x), &b) in y.iter_mut().zip(x).zip(b) {
                let (g, d) = gelu_and_grad(*x + b);
                y.write(g);
                *x = d;
            }
        }
    }
}

simd_kernel! {
    /// `g *= d` on one chunk.
    fn scale_chunk(g: &mut [Float], d: &[Float]) {
        for (g, &d) in g.iter_mut().zip(d) {
            *g *= d;
        }
    }
}

/// GELU (tanh form) of each element, in parallel.
pub fn cpu_gelu(x: &[Float]) -> Vec<Float> {
    filled_on_every_core(x.len(), |y, at| gelu_chunk(y, &x[at..at + y.len()]))
}

/// `dx += gy · gelu'(x)`, in parallel.
pub fn cpu_gelu_backward(x: &[Float], gy: &[Float], dx: &mut [Float]) {
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(gy.par_chunks(CHUNK)))
        .for_each(|(dx, (x, gy))| gelu_grad_add_chunk(dx, x, gy));
}

/// `GELU(x + b)` of each row of `x` (`b` a row of its columns, or none), in parallel, with
/// `gelu'(x + b)` written over `x`: the derivative the backward pass needs, computed from the
/// forward's `tanh`. The backward then multiplies by it ([`mul_in_place`]) instead of
/// evaluating `tanh` again on activations read back from memory (its `exp` and division were
/// 4.4% of a gpt-mini step's samples, against 2.8% for GELU itself), and `x` itself, which
/// nothing else reads, needs no buffer of its own. The bias is added on the way in, so the
/// product before it writes its output once instead of reading a buffer of bias rows back.
/// Bit for bit [`cpu_gelu`] of `x + b` and the derivative [`cpu_gelu_backward`] applies.
pub fn cpu_gelu_with_grad(x: &mut [Float], b: Option<&[Float]>) -> Vec<Float> {
    let chunk = b.map_or(CHUNK, |b| row_chunk(b.len()));
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(chunk)
        .zip(x.par_chunks_mut(chunk))
        .for_each(|(y, x)| match b {
            Some(b) => gelu_and_grad_biased_rows(y, x, b),
            None => gelu_and_grad_chunk(y, x),
        });
    // SAFETY: the loop above wrote every one of the first `x.len()` elements.
    unsafe { y.set_len(x.len()) };
    y
}

/// `g ← g ⊙ d` element by element, in parallel.
pub fn mul_in_place(g: &mut [Float], d: &[Float]) {
    assert_eq!(g.len(), d.len(), "mul_in_place: lengths differ");
    g.par_chunks_mut(CHUNK)
        .zip(d.par_chunks(CHUNK))
        .for_each(|(g, d)| scale_chunk(g, d));
}

/// Rotary embedding in the rotate-half layout: `out = x·cos + [-x2, x1]·sin` per head vector.
pub fn cpu_rotary(x: &[Float], cos: &[Float], sin: &[Float], t: usize, nh: usize, hd: usize) -> Vec<Float> {
    // Every element is written (the halves cover the head), so the output need not be zeroed.
    assert!(hd.is_multiple_of(2), "rotary embedding: odd head dimension {hd}");
    // One task per batch row, written once into memory nobody zeroed.
    filled_in_chunks(x.len(), t * nh * hd, |out, at| {
        rotary_rows(out, &x[at..at + out.len()], cos, sin, nh, hd)
    })
}

simd_kernel! {
    /// [`cpu_rotary`] on one batch row (`T` positions of `nh` heads of `hd`), each head as its
    /// two halves, so the loop runs over whole vectors of each.
    fn rotary_rows(
        out: &mut [std::mem::MaybeUninit<Float>],
        x: &[Float],
        cos: &[Float],
        sin: &[Float],
        nh: usize,
        hd: usize,
    ) {
        let half = hd / 2;
        for (pos, (o, xr)) in out.chunks_mut(nh * hd).zip(x.chunks(nh * hd)).enumerate() {
            let (c, s) = (&cos[pos * hd..][..hd], &sin[pos * hd..][..hd]);
            // Every half resliced to `half` (the second of an odd `hd` is longer): with equal
            // lengths LLVM drops the bounds checks and vectorises the loop.
            let ((c1, c2), (s1, s2)) = (c.split_at(half), s.split_at(half));
            let (c2, s2) = (&c2[..half], &s2[..half]);
            for (o, x) in o.chunks_mut(hd).zip(xr.chunks(hd)) {
                let ((o1, o2), (x1, x2)) = (o.split_at_mut(half), x.split_at(half));
                let (o2, x2) = (&mut o2[..half], &x2[..half]);
                for i in 0..half {
                    o1[i].write(x1[i] * c1[i] - x2[i] * s1[i]);
                    o2[i].write(x2[i] * c2[i] + x1[i] * s2[i]);
                }
            }
        }
    }
}

/// `dx += ∂/∂x` of [`cpu_rotary`] applied to `gy`: the inverse rotation.
pub fn cpu_rotary_backward(
    gy: &[Float],
    cos: &[Float],
    sin: &[Float],
    t: usize,
    nh: usize,
    hd: usize,
    dx: &mut [Float],
) {
    dx.par_chunks_mut(t * nh * hd)
        .zip(gy.par_chunks(t * nh * hd))
        .for_each(|(dx, gy)| rotary_backward_rows(dx, gy, cos, sin, nh, hd));
}

simd_kernel! {
    /// [`cpu_rotary_backward`] on one batch row, by halves as [`rotary_rows`].
    fn rotary_backward_rows(dx: &mut [Float], gy: &[Float], cos: &[Float], sin: &[Float], nh: usize, hd: usize) {
        let half = hd / 2;
        for (pos, (d, g)) in dx.chunks_mut(nh * hd).zip(gy.chunks(nh * hd)).enumerate() {
            let (c, s) = (&cos[pos * hd..][..hd], &sin[pos * hd..][..hd]);
            let ((c1, c2), (s1, s2)) = (c.split_at(half), s.split_at(half));
            let (c2, s2) = (&c2[..half], &s2[..half]);
            for (d, g) in d.chunks_mut(hd).zip(g.chunks(hd)) {
                let ((d1, d2), (g1, g2)) = (d.split_at_mut(half), g.split_at(half));
                let (d2, g2) = (&mut d2[..half], &g2[..half]);
                for i in 0..half {
                    d1[i] += g1[i] * c1[i] + g2[i] * s2[i];
                    d2[i] += g2[i] * c2[i] - g1[i] * s1[i];
                }
            }
        }
    }
}

/// Sum with eight independent partial sums (vectorisable; see [`dot`]).
#[inline(always)]
pub(crate) fn sum(x: &[Float]) -> Float {
    let mut acc = [0.0; 8];
    let chunks = x.chunks_exact(8);
    let tail: Float = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<Float>() + tail
}

/// Largest element (NaN if any element is NaN, so a diverged row stays visible).
#[inline(always)]
pub(crate) fn max(x: &[Float]) -> Float {
    let mut acc = [Float::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let mut m = chunks
        .remainder()
        .iter()
        .fold(Float::NEG_INFINITY, |a, &b| if b > a || b.is_nan() { b } else { a });
    for c in chunks {
        for i in 0..8 {
            acc[i] = if c[i] > acc[i] || c[i].is_nan() { c[i] } else { acc[i] };
        }
    }
    for a in acc {
        m = if a > m || a.is_nan() { a } else { m };
    }
    m
}

/// `(Σ g·γ, Σ (g·γ)·x̂)` in eight lanes each: element `i` adds into lane `i mod 8`, in order.
/// Two loops over whole chunks of eight (then the rest into the first lanes), each shaped as
/// [`dot`]: LLVM left a loop indexing `lane[i % 8]` scalar (four fifths of LayerNorm's
/// backward, `perf annotate`), and one loop feeding both sums scalar too.
#[inline(always)]
fn lane_sums(g: &[Float], gamma: &[Float], xhat: &[Float]) -> ([Float; 8], [Float; 8]) {
    let mut m1 = [0.0; 8];
    let (g8, gm8) = (g.chunks_exact(8), gamma.chunks_exact(8));
    let rest = g8.remainder().iter().zip(gm8.remainder());
    for (x, y) in g8.zip(gm8) {
        for i in 0..8 {
            m1[i] += x[i] * y[i];
        }
    }
    rest.enumerate().for_each(|(i, (x, y))| m1[i] += x * y);
    let mut m2 = [0.0; 8];
    let (g8, gm8, h8) = (g.chunks_exact(8), gamma.chunks_exact(8), xhat.chunks_exact(8));
    let rest = g8.remainder().iter().zip(gm8.remainder()).zip(h8.remainder());
    for ((x, y), h) in g8.zip(gm8).zip(h8) {
        for i in 0..8 {
            m2[i] += x[i] * y[i] * h[i];
        }
    }
    rest.enumerate().for_each(|(i, ((x, y), h))| m2[i] += x * y * h);
    (m1, m2)
}

/// Dot product with eight independent partial sums: a plain `sum()` must add in order,
/// which keeps LLVM from vectorising it.
#[inline(always)]
pub(crate) fn dot(a: &[Float], b: &[Float]) -> Float {
    let mut acc = [0.0; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: Float = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<Float>() + tail
}

/// `y (n×d_out) = x (n×d_in) · w (d_in×d_out) + b`, on every core.
pub fn cpu_linear(x: &[Float], w: &[Float], b: Option<&[Float]>, n: usize, d_in: usize, d_out: usize) -> Vec<Float> {
    let (x, w) = (View::rows(x, d_in), View::rows(w, d_out));
    match b {
        // Starting from the bias rows gives `b + Σ x·w`, rounded once, as dfdx's add does.
        Some(b) => {
            let mut y = rows_of(b, n);
            gemm_par(n, d_out, d_in, &mut y, true, x, w, 1.0);
            y
        }
        None => gemm_par_new(n, d_out, d_in, x, w),
    }
}

/// `acc[c] += Σ_r m[r, c]` for a row-major `m` with `cols` columns, in parallel over blocks of
/// rows whose partial sums are added in block order, so the result does not depend on how
/// rayon split the work (bit-identical runs need that).
pub(crate) fn add_column_sums(m: &[Float], cols: usize, acc: &mut [Float]) {
    let partials = m
        .par_chunks(cols * SUM_ROWS)
        .map(|block| row_sum(block, cols))
        .collect();
    add_partials(partials, acc);
}

/// Rows per block of [`add_column_sums`]: the blocks fix the order of the sums.
const SUM_ROWS: usize = 256;

/// The sum of `block`'s rows of `cols` columns.
fn row_sum(block: &[Float], cols: usize) -> Vec<Float> {
    let mut s = vec![0.0; cols];
    add_rows(&mut s, block);
    s
}

/// `acc += ` each partial, in order.
fn add_partials(partials: Vec<Vec<Float>>, acc: &mut [Float]) {
    for partial in partials {
        acc.iter_mut().zip(&partial).for_each(|(a, p)| *a += p);
    }
}

/// [`mul_in_place`] then [`add_column_sums`] of the result, in one pass per block of rows
/// while the block is in cache: MLP's gradient through GELU and its first bias's gradient.
/// The same bits as the two calls.
pub fn mul_in_place_adding_column_sums(g: &mut [Float], d: &[Float], cols: usize, acc: &mut [Float]) {
    assert_eq!(g.len(), d.len(), "mul_in_place_adding_column_sums: lengths differ");
    let partials = g
        .par_chunks_mut(cols * SUM_ROWS)
        .zip(d.par_chunks(cols * SUM_ROWS))
        .map(|(g, d)| {
            scale_chunk(g, d);
            row_sum(g, cols)
        })
        .collect();
    add_partials(partials, acc);
}

simd_kernel! {
    /// `s += ` each row of `block` (rows of `s.len()` columns), in row order: vectors across
    /// the columns, so every path adds each column's terms in the same order.
    fn add_rows(s: &mut [Float], block: &[Float]) {
        for row in block.chunks(s.len()) {
            s.iter_mut().zip(row).for_each(|(a, v)| *a += v);
        }
    }
}

/// Dropout keep-mask of elements `first..first + n` of a tensor (1 = keep, with probability
/// `1 - p`), drawn in parallel: chunk `i` of [`CHUNK`] elements of the whole tensor draws from
/// its own stream `(seed, i)`, one word per element, so the mask does not depend on the number
/// of threads, and a micro-batch's part (`first > 0`) is the whole tensor's.
pub fn dropout_keep_mask(seed: u64, first: usize, n: usize, p: f32) -> Vec<u8> {
    let rule = DropRule::new(p);
    let mut mask = vec![0u8; n];
    let head = ((CHUNK - first % CHUNK) % CHUNK).min(n);
    let draw = |chunk: usize, skip: usize, out: &mut [u8]| {
        let mut rng = crate::seed::stream(seed, crate::seed::Stream::Dropout, chunk as u64);
        rng.set_word_pos(skip as u128);
        DropRule::draw_each(&mut rng, out, |u| u8::from(rule.keeps(u)));
    };
    let (head_part, rest) = mask.split_at_mut(head);
    if head > 0 {
        draw(first / CHUNK, first % CHUNK, head_part);
    }
    let base = (first + head) / CHUNK;
    rest.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| draw(base + i, 0, chunk));
    mask
}

/// `x` through a byte dropout mask: `x · keep` where `m` is set, 0 where it is not.
#[inline(always)]
fn kept(x: Float, m: u8, keep: Float) -> Float {
    if m != 0 { x * keep } else { 0.0 }
}

simd_kernel! {
    /// `acc += x · keep` where the mask is set, on one chunk.
    fn add_masked_chunk(acc: &mut [Float], x: &[Float], mask: &[u8], keep: Float) {
        for ((a, &x), &m) in acc.iter_mut().zip(x).zip(mask) {
            *a += kept(x, m, keep);
        }
    }
}

/// An embedding's forward pass, `(N, C)`: row `tokens[i]` of `wte`, plus row `positions[i]`
/// of `wpe` when given, times `factors` (dropout) when given: the composition's operations
/// (a gather, an add, a multiply) on each element in the same order, so the same bits.
pub fn cpu_embed(
    wte: &[Float],
    tokens: &[usize],
    wpe: Option<(&[Float], &[usize])>,
    factors: Option<&[Float]>,
    c: usize,
) -> Vec<Float> {
    let mut y = zeros(tokens.len() * c);
    y.par_chunks_mut(c).enumerate().for_each(|(i, row)| {
        let e = &wte[tokens[i] * c..][..c];
        match wpe {
            Some((wpe, positions)) => {
                let p = &wpe[positions[i] * c..][..c];
                row.iter_mut().zip(e).zip(p).for_each(|((y, &e), &p)| *y = e + p);
            }
            None => row.copy_from_slice(e),
        }
        if let Some(f) = factors {
            row.iter_mut().zip(&f[i * c..][..c]).for_each(|(y, &f)| *y *= f);
        }
    });
    y
}

/// An embedding's backward pass into one table: adds row `i` of `gy (N, C)` (times its
/// dropout factor) into row `rows[i]` of `dst`. Each row of `dst` takes its rows of `gy` in
/// ascending `i`, as the composition's serial loop adds them, and rows of `dst` are summed in
/// parallel. Each term is `0 + gy·factor`, as the composition passes it back through buffers
/// that start at zero (which turns −0 into +0).
pub fn scatter_add_rows(gy: &[Float], factors: Option<&[Float]>, rows: &[usize], c: usize, dst: &mut [Float]) {
    let v = dst.len() / c;
    assert!(
        rows.iter().all(|&r| r < v),
        "a row index is out of the table's {v} rows"
    );
    // The source rows of each destination row, in ascending order (a counting sort).
    let mut start = vec![0usize; v + 1];
    rows.iter().for_each(|&r| start[r + 1] += 1);
    (0..v).for_each(|r| start[r + 1] += start[r]);
    let (mut next, mut order) = (start.clone(), vec![0usize; rows.len()]);
    for (i, &r) in rows.iter().enumerate() {
        order[next[r]] = i;
        next[r] += 1;
    }
    dst.par_chunks_mut(c).enumerate().for_each(|(r, d)| {
        for &i in &order[start[r]..start[r + 1]] {
            let g = &gy[i * c..][..c];
            match factors {
                Some(f) => d
                    .iter_mut()
                    .zip(g)
                    .zip(&f[i * c..][..c])
                    .for_each(|((d, &g), &f)| *d += 0.0 + g * f),
                None => d.iter_mut().zip(g).for_each(|(d, &g)| *d += 0.0 + g),
            }
        }
    });
}

simd_kernel! {
    /// `y = skip + x · keep` where the mask is set (`skip + 0` elsewhere; no mask: `skip + x`),
    /// on one chunk.
    fn residual_chunk(y: &mut [std::mem::MaybeUninit<Float>], skip: &[Float], x: &[Float], mask: Option<&[u8]>, keep: Float) {
        let terms = y.iter_mut().zip(skip).zip(x);
        match mask {
            None => terms.for_each(|((y, &s), &x)| {
                y.write(s + x);
            }),
            Some(mask) => terms.zip(mask).for_each(|(((y, &s), &x), &m)| {
                y.write(s + kept(x, m, keep));
            }),
        }
    }
}

/// `skip + x ⊙ mask / (1 - p)` (no mask: `skip + x`), in parallel, into new memory: one pass
/// that reads both inputs, where adding into a copy of `skip` passes over it three times.
pub fn cpu_residual(skip: &[Float], x: &[Float], mask: Option<&[u8]>, p: f32) -> Vec<Float> {
    let keep = 1.0 / (1.0 - p);
    filled_on_every_core(x.len(), |y, at| {
        let part = at..at + y.len();
        let mask = mask.map(|m| &m[part.clone()]);
        residual_chunk(y, &skip[part.clone()], &x[part], mask, keep)
    })
}

simd_kernel! {
    /// `y = g · keep` where the mask is set, 0 elsewhere, on one chunk.
    fn masked_chunk(y: &mut [std::mem::MaybeUninit<Float>], g: &[Float], mask: &[u8], keep: Float) {
        for ((y, &g), &m) in y.iter_mut().zip(g).zip(mask) {
            y.write(kept(g, m, keep));
        }
    }
}

/// `g ⊙ mask / (1 - p)` (no mask: `g`) into new memory, in parallel: what [`add_masked`] adds
/// into zeros.
pub fn masked(g: &[Float], mask: Option<&[u8]>, p: f32) -> Vec<Float> {
    let Some(mask) = mask else {
        return par_to_vec(g);
    };
    let keep = 1.0 / (1.0 - p);
    filled_on_every_core(g.len(), |y, at| {
        let part = at..at + y.len();
        masked_chunk(y, &g[part.clone()], &mask[part], keep)
    })
}

/// `acc += g ⊙ mask / (1 - p)` (no mask: `acc += g`), in parallel.
pub fn add_masked(acc: &mut [Float], g: &[Float], mask: Option<&[u8]>, p: f32) {
    let keep = 1.0 / (1.0 - p);
    match mask {
        None => acc
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(a, g)| a.iter_mut().zip(g).for_each(|(a, g)| *a += g)),
        Some(mask) => acc
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(mask.par_chunks(CHUNK)))
            .for_each(|(a, (g, m))| add_masked_chunk(a, g, m, keep)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_filled_on_every_core_hold_every_element() {
        // Short (one call), exactly chunked and ragged lengths; the allocator may hand back
        // memory that held other values, so zeros must be written, not assumed.
        drop(vec![7.0 as Float; 5 * CHUNK]);
        for n in [10, 2 * CHUNK, 3 * CHUNK + 17] {
            let z = zeros(n);
            assert!(z.len() == n && z.iter().all(|&v| v == 0.0), "zeros({n})");
            let x: Vec<Float> = (0..n).map(|i| i as Float * 0.5 - 3.0).collect();
            assert_eq!(par_to_vec(&x), x, "par_to_vec of {n}");
        }
        // Rows whose width does not divide a chunk start mid-row in most chunks.
        for (w, rows) in [
            (1, 10),
            (7, 3 * CHUNK / 7 + 5),
            (192, 2 * CHUNK / 192 + 1),
            (CHUNK + 3, 2),
        ] {
            let row: Vec<Float> = (0..w).map(|i| i as Float * 0.5 - 3.0).collect();
            let expected: Vec<Float> = (0..rows).flat_map(|_| row.iter().copied()).collect();
            assert_eq!(rows_of(&row, rows), expected, "{rows} rows of {w}");
        }
    }

    #[test]
    fn gelu_with_its_gradient_and_a_bias_inside_gives_the_bits_of_each_computed_alone() {
        // Widths that do and do not divide a chunk, over several chunks, and a row wider
        // than one: each row must get the bias from its first column on.
        let bits = |v: &[Float]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (cols, rows) in [
            (1, 5),
            (7, 3 * CHUNK / 7 + 5),
            (768, 2 * CHUNK / 768 + 3),
            (CHUNK + 3, 2),
        ] {
            let wave = |n: usize, f: Float| (0..n).map(|i| ((i as Float) * f).sin() * 3.0).collect::<Vec<_>>();
            let (x, b, g) = (wave(rows * cols, 0.37), wave(cols, 1.3), wave(rows * cols, 0.11));
            let after: Vec<Float> = x
                .chunks(cols)
                .flat_map(|row| row.iter().zip(&b).map(|(x, b)| x + b))
                .collect();
            let case = format!("{rows} rows of {cols}");
            // The derivative alone: gy = 1 added to zeros.
            let grad = |x: &[Float]| {
                let mut d = vec![0.0; x.len()];
                cpu_gelu_backward(x, &vec![1.0; x.len()], &mut d);
                d
            };
            let (mut inside, mut outside) = (x.clone(), after.clone());
            assert_eq!(
                bits(&cpu_gelu_with_grad(&mut inside, Some(&b))),
                bits(&cpu_gelu(&after)),
                "GELU with its gradient, {case}"
            );
            assert_eq!(bits(&inside), bits(&grad(&after)), "GELU's gradient beside it, {case}");
            assert_eq!(
                bits(&cpu_gelu_with_grad(&mut outside, None)),
                bits(&cpu_gelu(&after)),
                "no bias, {case}"
            );
            assert_eq!(bits(&outside), bits(&inside), "no bias, its gradient, {case}");
            // The backward's product: g·d, which is what the old in-place kernel computed.
            let mut scaled = g.clone();
            mul_in_place(&mut scaled, &inside);
            let expected: Vec<Float> = g.iter().zip(&grad(&after)).map(|(g, d)| g * d).collect();
            assert_eq!(bits(&scaled), bits(&expected), "g ⊙ gelu', {case}");
            let (mut fused, mut sums, mut apart) = (g.clone(), b.clone(), b.clone());
            mul_in_place_adding_column_sums(&mut fused, &inside, cols, &mut sums);
            add_column_sums(&scaled, cols, &mut apart);
            assert_eq!(
                (bits(&fused), bits(&sums)),
                (bits(&scaled), bits(&apart)),
                "with column sums, {case}"
            );
        }
    }

    #[test]
    fn lane_sums_add_element_i_into_lane_i_mod_8_in_order() {
        // The order LayerNorm's backward summed in before it was vectorised, as a scalar loop.
        let bits = |v: [Float; 8]| v.map(Float::to_bits);
        for n in [0, 1, 7, 8, 9, 15, 16, 31, 192, 197] {
            let wave = |f: Float| (0..n).map(|i| ((i as Float) * f).sin() * 3.0).collect::<Vec<_>>();
            let (g, gamma, xhat) = (wave(0.37), wave(1.3), wave(0.11));
            let (mut m1, mut m2) = ([0.0 as Float; 8], [0.0 as Float; 8]);
            for i in 0..n {
                let gh = g[i] * gamma[i];
                m1[i % 8] += gh;
                m2[i % 8] += gh * xhat[i];
            }
            let (l1, l2) = lane_sums(&g, &gamma, &xhat);
            assert_eq!((bits(l1), bits(l2)), (bits(m1), bits(m2)), "{n} elements");
        }
    }

    #[test]
    fn exp_is_within_2_5e_7_of_the_exact_value() {
        let mut worst: f64 = 0.0;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let exact = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - exact) / exact).abs());
            x += 0.000_37;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert!(exp(Float::NAN).is_nan());
        assert!(exp(Float::NEG_INFINITY) < 1e-37 && exp(Float::NEG_INFINITY) >= 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn fast_tanh_saturates_and_matches_tanh() {
        for u in [-1e30f32, -50.0, -3.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 3.0, 50.0, 1e30] {
            assert!(
                (fast_tanh(u) - u.tanh()).abs() < 3e-7,
                "tanh({u}): {} vs {}",
                fast_tanh(u),
                u.tanh()
            );
        }
    }
}

/// Rows per parallel task of the row-wise kernels.
const ROWS: usize = 64;

simd_kernel! {
    /// LayerNorm of a block of rows: `x̂ = (x - μ)/σ`, `y = x̂·γ + β`, keeping `x̂` and `1/σ`.
    /// `centred` (one row) holds `x - μ` while `σ` is summed, so `y` and `x̂` are written once,
    /// into memory nobody zeroed.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_rows(
        y: &mut [std::mem::MaybeUninit<Float>],
        xhat: &mut [std::mem::MaybeUninit<Float>],
        inv_std: &mut [Float],
        x: &[Float],
        gamma: &[Float],
        beta: &[Float],
        eps: Float,
        centred: &mut [Float],
    ) {
        let c = centred.len();
        for (((y, xh), is), x) in y.chunks_mut(c).zip(xhat.chunks_mut(c)).zip(inv_std.iter_mut()).zip(x.chunks(c)) {
            let mean = sum(x) / c as Float;
            for (h, &v) in centred.iter_mut().zip(x) {
                *h = v - mean;
            }
            let var = dot(centred, centred) / c as Float;
            *is = 1.0 / (var + eps).sqrt();
            for ((((y, xh), &h), &g), &b) in y.iter_mut().zip(xh.iter_mut()).zip(centred.iter()).zip(gamma).zip(beta) {
                let h = h * *is;
                xh.write(h);
                y.write(h * g + b);
            }
        }
    }
}

simd_kernel! {
    /// `dx += (1/σ)·(ĝ - mean(ĝ) - x̂·mean(ĝ·x̂))` with `ĝ = gy·γ`, for a block of rows.
    fn layer_norm_input_grad_rows(dx: &mut [Float], gy: &[Float], xhat: &[Float], inv_std: &[Float], gamma: &[Float], c: usize) {
        for (((dx, gy), xh), &is) in dx.chunks_mut(c).zip(gy.chunks(c)).zip(xhat.chunks(c)).zip(inv_std) {
            let (m1, m2) = lane_sums(gy, &gamma[..c], xh);
            let m1 = m1.iter().sum::<Float>() / c as Float;
            let m2 = m2.iter().sum::<Float>() / c as Float;
            for (((d, &g), &gm), &h) in dx.iter_mut().zip(gy).zip(gamma).zip(xh) {
                *d += is * (g * gm - m1 - h * m2);
            }
        }
    }
}

simd_kernel! {
    /// `dγ += Σ gy·x̂`, `dβ += Σ gy` over a block of rows.
    fn layer_norm_param_grad_rows(dgamma: &mut [Float], dbeta: &mut [Float], gy: &[Float], xhat: &[Float], c: usize) {
        for (gy, xh) in gy.chunks(c).zip(xhat.chunks(c)) {
            for (((dg, db), &g), &h) in dgamma.iter_mut().zip(dbeta.iter_mut()).zip(gy).zip(xh) {
                *dg += g * h;
                *db += g;
            }
        }
    }
}

/// LayerNorm over rows of `c`: `(y, x̂, 1/σ)`, in parallel over blocks of rows.
pub fn cpu_layer_norm(x: &[Float], gamma: &[Float], beta: &[Float], c: usize, eps: Float) -> [Vec<Float>; 3] {
    let n = x.len() / c;
    let (mut y, mut xhat, mut inv_std) = (Vec::with_capacity(n * c), Vec::with_capacity(n * c), vec![0.0; n]);
    y.spare_capacity_mut()[..n * c]
        .par_chunks_mut(ROWS * c)
        .zip(xhat.spare_capacity_mut()[..n * c].par_chunks_mut(ROWS * c))
        .zip(inv_std.par_chunks_mut(ROWS).zip(x.par_chunks(ROWS * c)))
        .for_each_init(
            || vec![0.0; c],
            |centred, ((y, xh), (is, x))| layer_norm_rows(y, xh, is, x, gamma, beta, eps, centred),
        );
    // SAFETY: every block above wrote all of its rows of both, which cover the first `n·c`.
    unsafe {
        y.set_len(n * c);
        xhat.set_len(n * c);
    }
    [y, xhat, inv_std]
}

/// Gradients of [`cpu_layer_norm`], accumulated into `dx`, `dgamma`, `dbeta`, in one pass over
/// `gy` and `x̂` per block of rows. The parameter sums are reduced block by block in order,
/// so they do not depend on the thread count.
#[allow(clippy::too_many_arguments)]
pub fn cpu_layer_norm_backward(
    gy: &[Float],
    xhat: &[Float],
    inv_std: &[Float],
    gamma: &[Float],
    c: usize,
    dx: &mut [Float],
    dgamma: &mut [Float],
    dbeta: &mut [Float],
) {
    // Blocks of four times the forward's rows: the parameter sums' partials (and their bits).
    let rows = 4 * ROWS;
    let partials: Vec<(Vec<Float>, Vec<Float>)> = dx
        .par_chunks_mut(rows * c)
        .zip(gy.par_chunks(rows * c))
        .zip(xhat.par_chunks(rows * c).zip(inv_std.par_chunks(rows)))
        .map(|((dx, gy), (xh, is))| {
            layer_norm_input_grad_rows(dx, gy, xh, is, gamma, c);
            let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
            layer_norm_param_grad_rows(&mut dg, &mut db, gy, xh, c);
            (dg, db)
        })
        .collect();
    for (dg, db) in partials {
        dgamma.iter_mut().zip(&dg).for_each(|(a, d)| *a += d);
        dbeta.iter_mut().zip(&db).for_each(|(a, d)| *a += d);
    }
}
