//! ChaCha8's keystream sixteen blocks at a time, one block per SIMD lane: the very words
//! `rand_chacha`'s `ChaCha8Rng` produces (its `fill`), for the dropout masks, which were
//! 3–4% of a gpt-mini step (`perf`). `rand_chacha` computes four blocks at a time (AVX2 at
//! best); AVX-512's sixteen lanes and its rotate instruction make the same words cheaper.

use rand_chacha::ChaCha8Rng;

use super::simd::simd_kernel;

/// Blocks computed side by side.
const LANES: usize = 16;
/// Words per ChaCha block.
const BLOCK_WORDS: usize = 16;
/// "expand 32-byte k".
const CONSTANTS: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// Fills `out` with the next `out.len()` words of `rng` and moves `rng` past them: what
/// `rng.fill(out)` does, faster on the AVX2 and AVX-512 paths (measured on 8,256 words, the
/// mask of one attention head at T = 128: 0.64 and 0.94 ns a word against `rand_chacha`'s
/// 1.09; on the baseline path SSE2's four lanes and shifted rotates make ours the slower,
/// 1.39, so that path keeps `rand_chacha`'s). The words are the same on every path.
pub(crate) fn fill(rng: &mut ChaCha8Rng, out: &mut [u32]) {
    if crate::isa::current() == crate::isa::Isa::Baseline {
        return rand::Rng::fill(rng, out);
    }
    let pos = rng.get_word_pos();
    keystream(&rng.get_seed(), rng.get_stream(), pos, out);
    rng.set_word_pos(pos + out.len() as u128);
}

/// Words `pos..pos + out.len()` of the ChaCha8 stream of `seed` and `stream` (64-bit block
/// counter in state words 12–13, the stream in 14–15, as `rand_chacha` lays them out).
fn keystream(seed: &[u8; 32], stream: u64, pos: u128, out: &mut [u32]) {
    let key: [u32; 8] =
        std::array::from_fn(|i| u32::from_le_bytes(seed[4 * i..4 * i + 4].try_into().expect("4 bytes")));
    // The counter wraps at 2⁶⁴ blocks, as `rand_chacha`'s does.
    let mut block = (pos / BLOCK_WORDS as u128) as u64;
    let mut skip = (pos % BLOCK_WORDS as u128) as usize;
    let mut words = [0u32; LANES * BLOCK_WORDS];
    let mut done = 0;
    while done < out.len() {
        blocks(&key, stream, block, &mut words);
        let n = (words.len() - skip).min(out.len() - done);
        out[done..done + n].copy_from_slice(&words[skip..skip + n]);
        (done, skip, block) = (done + n, 0, block.wrapping_add(LANES as u64));
    }
}

/// A column round then a diagonal round, every lane.
#[inline(always)]
fn double_round(x: &mut [[u32; LANES]; BLOCK_WORDS]) {
    quarter_round(x, [0, 4, 8, 12]);
    quarter_round(x, [1, 5, 9, 13]);
    quarter_round(x, [2, 6, 10, 14]);
    quarter_round(x, [3, 7, 11, 15]);
    quarter_round(x, [0, 5, 10, 15]);
    quarter_round(x, [1, 6, 11, 12]);
    quarter_round(x, [2, 7, 8, 13]);
    quarter_round(x, [3, 4, 9, 14]);
}

/// One ChaCha quarter round on state words `a, b, c, d`, every lane.
#[inline(always)]
fn quarter_round(x: &mut [[u32; LANES]; BLOCK_WORDS], [a, b, c, d]: [usize; 4]) {
    let (mut xa, mut xb, mut xc, mut xd) = (x[a], x[b], x[c], x[d]);
    for l in 0..LANES {
        xa[l] = xa[l].wrapping_add(xb[l]);
        xd[l] = (xd[l] ^ xa[l]).rotate_left(16);
        xc[l] = xc[l].wrapping_add(xd[l]);
        xb[l] = (xb[l] ^ xc[l]).rotate_left(12);
        xa[l] = xa[l].wrapping_add(xb[l]);
        xd[l] = (xd[l] ^ xa[l]).rotate_left(8);
        xc[l] = xc[l].wrapping_add(xd[l]);
        xb[l] = (xb[l] ^ xc[l]).rotate_left(7);
    }
    (x[a], x[b], x[c], x[d]) = (xa, xb, xc, xd);
}

/// The state of blocks `first..first + 16` after ChaCha8's rounds, and before them: the block's
/// words are `after + before`, lane by lane, with word `w` of block `first + l` in `[w][l]`.
#[inline(always)]
fn rounds(key: &[u32; 8], stream: u64, first: u64) -> [[[u32; LANES]; BLOCK_WORDS]; 2] {
    let mut init = [[0u32; LANES]; BLOCK_WORDS];
    for (w, &c) in CONSTANTS.iter().enumerate() {
        init[w] = [c; LANES];
    }
    for (w, &k) in key.iter().enumerate() {
        init[4 + w] = [k; LANES];
    }
    let counter = |l: usize| first.wrapping_add(l as u64);
    init[12] = std::array::from_fn(|l| counter(l) as u32);
    init[13] = std::array::from_fn(|l| (counter(l) >> 32) as u32);
    (init[14], init[15]) = ([stream as u32; LANES], [(stream >> 32) as u32; LANES]);
    let mut x = init;
    // ChaCha8: four double rounds, columns then diagonals. Written out, so every index is a
    // constant and the state stays in registers: as loops, LLVM kept it on the stack and
    // loaded and stored it around every quarter round (two fifths of the kernel's samples).
    double_round(&mut x);
    double_round(&mut x);
    double_round(&mut x);
    double_round(&mut x);
    [x, init]
}

simd_kernel! {
    /// Blocks `first..first + 16` of the stream, one after another in `out`.
    fn blocks_by_word(key: &[u32; 8], stream: u64, first: u64, out: &mut [u32; LANES * BLOCK_WORDS]) {
        let [x, init] = rounds(key, stream, first);
        for (l, block) in out.chunks_exact_mut(BLOCK_WORDS).enumerate() {
            for (w, word) in block.iter_mut().enumerate() {
                *word = x[w][l].wrapping_add(init[w][l]);
            }
        }
    }
}

/// Blocks `first..first + 16` of the stream, one after another in `out`: on the AVX-512 path
/// the sixteen lanes are turned into blocks by a transpose in registers, where LLVM stores
/// them with sixteen scatters (two fifths of the kernel's samples, `perf annotate`).
fn blocks(key: &[u32; 8], stream: u64, first: u64, out: &mut [u32; LANES * BLOCK_WORDS]) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::current() == crate::isa::Isa::Avx512 {
        // SAFETY: the process's path is one the CPU supports (`isa::init` checks).
        return unsafe { blocks_avx512(key, stream, first, out) };
    }
    blocks_by_word(key, stream, first, out)
}

/// [`blocks`] on the AVX-512 path: the rounds as [`blocks_by_word`] compiles them, then a 16×16
/// transpose of 32-bit words (unpack 32-bit and 64-bit pairs within 128-bit lanes, then two
/// rounds of 128-bit lane shuffles).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512cd,avx512dq,avx512vl")]
fn blocks_avx512(key: &[u32; 8], stream: u64, first: u64, out: &mut [u32; LANES * BLOCK_WORDS]) {
    use std::arch::x86_64::*;
    let [x, init] = rounds(key, stream, first);
    // SAFETY: each row is 16 u32 = 64 bytes, read unaligned.
    let load = |row: &[u32; LANES]| unsafe { _mm512_loadu_si512(row.as_ptr().cast()) };
    let r: [__m512i; 16] = std::array::from_fn(|w| _mm512_add_epi32(load(&x[w]), load(&init[w])));
    // Rows 2i and 2i+1 interleaved: per 128-bit lane j, [r0, r1] at columns 4j, 4j+1 (lo) and
    // 4j+2, 4j+3 (hi).
    let t: [__m512i; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(a, b)
        } else {
            _mm512_unpackhi_epi32(a, b)
        }
    });
    // u[4g + c]: rows 4g..4g+4 at column c + 4j, in 128-bit lane j.
    let u: [__m512i; 16] = std::array::from_fn(|i| {
        let (g, c) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + c / 2], t[4 * g + 2 + c / 2]);
        if c % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    for c in 0..4 {
        let v0 = _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_i32x4::<0xdd>(u[c], u[4 + c]);
        let v2 = _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]);
        let v3 = _mm512_shuffle_i32x4::<0xdd>(u[8 + c], u[12 + c]);
        let columns = [
            (c, _mm512_shuffle_i32x4::<0x88>(v0, v2)),
            (c + 4, _mm512_shuffle_i32x4::<0x88>(v1, v3)),
            (c + 8, _mm512_shuffle_i32x4::<0xdd>(v0, v2)),
            (c + 12, _mm512_shuffle_i32x4::<0xdd>(v1, v3)),
        ];
        for (l, words) in columns {
            // SAFETY: block `l` is `out[16l..16l + 16]`, inside the 256 words.
            unsafe { _mm512_storeu_si512(out[l * BLOCK_WORDS..].as_mut_ptr().cast(), words) };
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, RngCore, SeedableRng};

    use super::*;

    /// The words and the stream's position after them equal `rand_chacha`'s, from positions
    /// inside and across blocks and groups of sixteen, in several streams, and where the
    /// 64-bit block counter carries into its high word.
    #[test]
    fn the_keystream_is_rand_chachas() {
        let mut r = ChaCha8Rng::seed_from_u64(1);
        let starts = [0u128, 5, 16, 255, 256, 1000, (1u128 << 36) - 7];
        for (i, &start) in starts.iter().enumerate() {
            let mut theirs = ChaCha8Rng::seed_from_u64(r.next_u64());
            theirs.set_stream(if i % 2 == 0 { r.next_u64() } else { i as u64 });
            theirs.set_word_pos(start);
            let mut ours = theirs.clone();
            for len in [1usize, 15, 16, 17, 250, 257, 1000, 8256] {
                let mut want = vec![0u32; len];
                theirs.fill(&mut want[..]);
                // The kernel itself, whichever path `fill` would take.
                let mut got = vec![0u32; len];
                keystream(&ours.get_seed(), ours.get_stream(), ours.get_word_pos(), &mut got);
                assert_eq!(got, want, "start {start}, length {len}");
                fill(&mut ours, &mut got);
                assert_eq!(got, want, "fill, start {start}, length {len}");
                assert_eq!(ours.get_word_pos(), theirs.get_word_pos());
                assert_eq!(ours.next_u32(), theirs.next_u32(), "the stream goes on alike");
            }
        }
    }
}
