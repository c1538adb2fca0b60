//! Inverted dropout and the one rule every dropout mask is drawn by.
//!
//! The dfdx composition ([`Dropout::apply`], its mask drawn in pieces on every core by
//! seeking the stream), the fused residual's byte mask and the fused attention's weight
//! factors all draw one `u32` per element and compare it with the same threshold
//! ([`DropRule`]), so a mask is a pure function of its seed stream.

use dfdx::prelude::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::chacha;
use crate::model::config::Float;

/// Drops an element when a raw `u32` draw falls below `p · u32::MAX`: one draw per element,
/// no float maths, and kept elements are scaled by `1 / (1 - p)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DropRule {
    threshold: u32,
    /// The factor of a kept element, `1 / (1 - p)`.
    pub keep: Float,
}

impl DropRule {
    /// The rule for dropout probability `p`.
    pub fn new(p: f32) -> Self {
        Self {
            threshold: (p as f64 * u32::MAX as f64) as u32,
            keep: 1.0 / (1.0 - p),
        }
    }

    /// Fills `draws` with one raw draw per element in one call: the words that one
    /// `rng.gen::<u32>()` per element would read, in the same order (kernels then read each
    /// fate with [`keeps`](Self::keeps)), sixteen ChaCha blocks at a time ([`chacha`]).
    pub fn draw(rng: &mut ChaCha8Rng, draws: &mut [u32]) {
        chacha::fill(rng, draws);
    }

    /// `out[i] = of(word i)` for the next `out.len()` words of `rng`, drawn in bulk through
    /// a small buffer ([`draw`](Self::draw)).
    pub fn draw_each<T>(rng: &mut ChaCha8Rng, out: &mut [T], of: impl Fn(u32) -> T) {
        let mut words = [0u32; 1024];
        for part in out.chunks_mut(words.len()) {
            let words = &mut words[..part.len()];
            Self::draw(rng, words);
            part.iter_mut().zip(&*words).for_each(|(o, &u)| *o = of(u));
        }
    }

    /// The fate of the element whose raw draw is `u`: `true` to keep it.
    #[inline(always)]
    pub fn keeps(&self, u: u32) -> bool {
        u >= self.threshold
    }

    /// The factor of the element whose raw draw is `u`: `keep` or 0.
    #[inline(always)]
    pub fn factor(&self, u: u32) -> Float {
        if self.keeps(u) { self.keep } else { 0.0 }
    }
}

/// Words one task draws of a [`Dropout::apply`] mask.
const DRAW_PIECE: usize = 1 << 16;

/// Inverted dropout driven by the caller's RNG, so a training step's masks are a pure
/// function of the seed the step was given (exact resume needs no hidden device RNG state).
///
/// A micro-batch (windows `offset..offset + windows` of a step's `of`) draws exactly the
/// masks the whole batch draws for its windows: every dropout tensor is window-major, so a
/// window's elements are one contiguous run of draws, and the stream is moved past the other
/// windows' draws instead of drawing them.
pub struct Dropout {
    p: f32,
    rng: Option<rand_chacha::ChaCha8Rng>,
    part: Part,
}

/// Which windows of the step's batch a forward pass holds.
#[derive(Clone, Copy, Debug)]
struct Part {
    offset: usize,
    windows: usize,
    of: usize,
}

impl Dropout {
    /// Dropout with probability `p`, drawing masks from `rng`.
    pub fn train(p: f32, rng: rand_chacha::ChaCha8Rng) -> Self {
        Self::train_part(p, rng, 0, 1, 1)
    }

    /// Dropout for windows `offset..offset + windows` of a batch of `of` windows, drawing the
    /// masks the whole batch would draw for them from the same `rng`.
    pub fn train_part(p: f32, rng: rand_chacha::ChaCha8Rng, offset: usize, windows: usize, of: usize) -> Self {
        assert!(
            windows > 0 && offset + windows <= of,
            "windows {offset}..+{windows} of {of}"
        );
        Self {
            p,
            rng: Some(rng),
            part: Part { offset, windows, of },
        }
    }

    /// The identity: evaluation and sampling.
    pub fn eval() -> Self {
        Self {
            p: 0.0,
            rng: None,
            part: Part {
                offset: 0,
                windows: 1,
                of: 1,
            },
        }
    }

    /// The first window of this pass in the step's batch (for kernels that key masks by
    /// window).
    pub fn first_window(&self) -> usize {
        self.part.offset
    }

    /// The index, in the whole batch's tensor, of the first of this pass's `n` elements.
    pub fn first_element(&self, n: usize) -> usize {
        n / self.part.windows * self.part.offset
    }

    /// The dropout probability (0 when evaluating).
    pub fn p(&self) -> f32 {
        if self.rng.is_some() { self.p } else { 0.0 }
    }

    /// A seed from this dropout's stream, for kernels that draw their own masks.
    pub fn next_seed(&mut self) -> u64 {
        self.rng.as_mut().map(|r| r.r#gen::<u64>()).unwrap_or(0)
    }

    /// Zeroes each element with probability `p` and scales the rest by `1 / (1 - p)`.
    pub fn apply<S: Shape, D: Device<Float>, T: Tape<Float, D>>(
        &mut self,
        x: Tensor<S, Float, D, T>,
    ) -> Tensor<S, Float, D, T> {
        let shape = *x.shape();
        match self.factors(shape.num_elements()) {
            Some(mask) => {
                let mask = x.device().tensor_from_vec(mask, shape);
                x * mask
            }
            None => x,
        }
    }

    /// The factors [`apply`](Self::apply) multiplies `n` elements by (`1 / (1 - p)` or 0),
    /// drawn as it draws them; `None` when nothing is dropped.
    pub fn factors(&mut self, n: usize) -> Option<Vec<Float>> {
        let rng = self.rng.as_mut()?;
        if self.p <= 0.0 {
            return None;
        }
        let rule = DropRule::new(self.p);
        // One u32 (one word) per element: skip the windows before this pass, draw its own,
        // and end where the whole batch's draws end.
        let (start, per_window) = (rng.get_word_pos(), (n / self.part.windows) as u128);
        let first = start + per_window * self.part.offset as u128;
        let mut mask = vec![0.0; n];
        // The stream seeks, so each piece draws its own words on any core: the same mask.
        mask.par_chunks_mut(DRAW_PIECE).enumerate().for_each(|(i, piece)| {
            let mut rng = rng.clone();
            rng.set_word_pos(first + (i * DRAW_PIECE) as u128);
            DropRule::draw_each(&mut rng, piece, |u| rule.factor(u));
        });
        rng.set_word_pos(start + per_window * self.part.of as u128);
        Some(mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bulk draws must read the very words per-element draws read (masks are a function of
    /// the seed alone), from any word position, across ChaCha's 64-word blocks.
    #[test]
    fn bulk_draws_equal_one_draw_per_element() {
        let rule = DropRule::new(0.3);
        for (skip, lens) in [(0usize, vec![1usize, 7, 64, 129]), (5, vec![3, 60, 1, 200])] {
            let mut one = crate::seed::stream(11, crate::seed::Stream::Dropout, 4);
            let mut bulk = one.clone();
            for _ in 0..skip {
                one.r#gen::<u32>();
                bulk.r#gen::<u32>();
            }
            for len in lens {
                let expected: Vec<Float> = (0..len).map(|_| rule.factor(one.r#gen())).collect();
                let mut draws = vec![0u32; len];
                DropRule::draw(&mut bulk, &mut draws);
                let got: Vec<Float> = draws.iter().map(|&u| rule.factor(u)).collect();
                assert_eq!(got, expected, "skip {skip}, length {len}");
            }
            assert_eq!(one.get_word_pos(), bulk.get_word_pos());
        }
    }

    /// A mask longer than one task's piece is the mask one draw per element gives, and the
    /// stream ends where those draws end, whatever the number of threads.
    #[test]
    fn a_mask_drawn_in_pieces_is_the_mask_drawn_in_order() {
        let n = 2 * DRAW_PIECE + 1_000;
        let mut serial = crate::seed::stream(5, crate::seed::Stream::Dropout, 2);
        serial.r#gen::<u32>(); // start off a block boundary
        let start = serial.clone();
        let rule = DropRule::new(0.25);
        let expected: Vec<Float> = (0..n).map(|_| rule.factor(serial.r#gen())).collect();
        let x = Cpu::default().tensor_from_vec(vec![1.0 as Float; n], (n,));
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut drop = Dropout::train(0.25, start.clone());
            let y = pool.install(|| drop.apply(x.clone()));
            assert_eq!(y.as_vec(), expected, "{threads} threads");
            assert_eq!(drop.rng.as_ref().unwrap().get_word_pos(), serial.get_word_pos());
        }
    }
}
