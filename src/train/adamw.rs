//! AdamW (Loshchilov & Hutter) with its state in plain vectors, so a checkpoint can hold it,
//! plus global gradient-norm clipping.

use dfdx::prelude::*;

use rayon::prelude::*;

use crate::checkpoint::OptimizerState;
use crate::model::{Backend, Float, HasParams};

/// AdamW hyper-parameters and state: one first and second moment per parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε added to √v̂.
    pub eps: f64,
    /// Decoupled decay, applied only to parameters marked `decay`.
    pub weight_decay: f64,
    /// The moments and update count, as a checkpoint stores them.
    pub state: OptimizerState,
}

impl AdamW {
    /// Zero state for a model's parameters.
    pub fn new<D: Device<Float>>(
        model: &impl HasParams<D>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> Self {
        let mut sizes = vec![];
        model.visit(&mut |p| sizes.push(p.numel()));
        Self {
            beta1,
            beta2,
            eps,
            weight_decay,
            state: OptimizerState {
                m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
                v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
                t: 0,
            },
        }
    }

    /// One update with learning rate `lr`, as `torch.optim.AdamW`:
    /// `θ ← θ - lr·λ·θ`, then `θ ← θ - lr · m̂ / (√v̂ + ε)`.
    pub fn update<D: Backend>(&mut self, model: &mut impl HasParams<D>, grads: &[Vec<Float>], lr: f64) {
        self.state.t += 1;
        let (b1, b2) = (self.beta1 as Float, self.beta2 as Float);
        let bc1 = 1.0 - self.beta1.powi(self.state.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.state.t as i32);
        let step = (lr / bc1) as Float;
        let bc2_sqrt = bc2.sqrt() as Float;
        let eps = self.eps as Float;
        let mut i = 0;
        let (ms, vs, wd) = (&mut self.state.m, &mut self.state.v, self.weight_decay);
        model.visit_mut(&mut |p| {
            let (m, v, g) = (&mut ms[i], &mut vs[i], &grads[i]);
            let decay = if p.decay { (1.0 - lr * wd) as Float } else { 1.0 };
            D::update_on_host(&mut p.value, &mut |w| {
                // Element-wise, so splitting it across threads changes no result.
                w.par_chunks_mut(1 << 14)
                    .zip(m.par_chunks_mut(1 << 14))
                    .zip(v.par_chunks_mut(1 << 14).zip(g.par_chunks(1 << 14)))
                    .for_each(|((w, m), (v, g))| {
                        for j in 0..w.len() {
                            m[j] = b1 * m[j] + (1.0 - b1) * g[j];
                            v[j] = b2 * v[j] + (1.0 - b2) * g[j] * g[j];
                            w[j] = w[j] * decay - step * m[j] / (v[j].sqrt() / bc2_sqrt + eps);
                        }
                    })
            });
            i += 1;
        });
    }
}

/// Gradient elements per partial sum of [`grad_norm`]: a fixed cut, so the sum rounds the
/// same on any number of threads.
const NORM_CHUNK: usize = 1 << 14;

/// The global L2 norm of all gradients, in f64: each tensor's squares summed in pieces of
/// [`NORM_CHUNK`] (eight running sums each, added in order), the pieces summed in order, in
/// parallel. A one-thread loop over every element took 0.6% of a gpt-mini step (`perf`),
/// proportionally more for larger models, while the other core waited.
pub fn grad_norm(grads: &[Vec<Float>]) -> f64 {
    let pieces: Vec<f64> = grads
        .par_iter()
        .flat_map_iter(|g| g.chunks(NORM_CHUNK))
        .map(sum_of_squares)
        .collect();
    pieces.iter().sum::<f64>().sqrt()
}

/// `Σ g²` in f64, in eight running sums (added in order at the end) so the loop vectorises.
fn sum_of_squares(g: &[Float]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let blocks = g.chunks_exact(8);
    let tail: f64 = blocks.remainder().iter().map(|&v| (v as f64) * (v as f64)).sum();
    for block in blocks {
        for (lane, &v) in lanes.iter_mut().zip(block) {
            *lane += (v as f64) * (v as f64);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// Scales all gradients so their global norm is at most `max_norm` (0 disables clipping),
/// as `torch.nn.utils.clip_grad_norm_`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<Float>], max_norm: f64) -> f64 {
    let norm = grad_norm(grads);
    if max_norm > 0.0 && norm > max_norm {
        let scale = (max_norm / (norm + 1e-6)) as Float;
        grads
            .par_iter_mut()
            .flat_map_iter(|g| g.chunks_mut(NORM_CHUNK))
            .for_each(|g| g.iter_mut().for_each(|g| *g *= scale));
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_norm_is_the_exact_one_to_f64_rounding_on_any_number_of_threads() {
        // Tensors shorter than a piece, several pieces long with a ragged end, and empty;
        // values over six decades, as gradients are.
        let grads: Vec<Vec<Float>> = [5, 3 * NORM_CHUNK + 7, 0, NORM_CHUNK - 1]
            .iter()
            .enumerate()
            .map(|(t, &n)| {
                (0..n)
                    .map(|i| ((i * 7919 + t) % 2003) as Float * 1e-3 * (10.0 as Float).powi((i % 7) as i32 - 3) - 0.4)
                    .collect()
            })
            .collect();
        // The reference: every square exact in f64, summed in f64 pairwise-free order with a
        // compensated (Neumaier) sum, i.e. to within a few f64 roundings of the exact value.
        let (mut sum, mut carry) = (0.0f64, 0.0f64);
        for &v in grads.iter().flatten() {
            let x = (v as f64) * (v as f64);
            let t = sum + x;
            carry += if sum.abs() >= x.abs() {
                (sum - t) + x
            } else {
                (x - t) + sum
            };
            sum = t;
        }
        let exact = (sum + carry).sqrt();
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| grad_norm(&grads))
        };
        let one = on(1);
        assert!((one - exact).abs() <= 1e-13 * exact, "{one} vs {exact}");
        for threads in [2, 3, 5] {
            assert_eq!(on(threads).to_bits(), one.to_bits(), "{threads} threads");
        }
        // Clipping scales every element, whatever its piece, by the same factor.
        let mut clipped = grads.clone();
        let before = clip_grad_norm(&mut clipped, 0.5 * one);
        assert_eq!(before.to_bits(), one.to_bits());
        let scale = (0.5 * one / (one + 1e-6)) as Float;
        for (c, g) in clipped.iter().flatten().zip(grads.iter().flatten()) {
            assert_eq!(c.to_bits(), (g * scale).to_bits());
        }
    }

    #[test]
    fn clipping_bounds_the_norm_and_keeps_direction() {
        let mut g = vec![vec![3.0, 0.0], vec![4.0]];
        let before = clip_grad_norm(&mut g, 1.0);
        assert!((before - 5.0).abs() < 1e-9);
        assert!((grad_norm(&g) - 1.0).abs() < 1e-5);
        assert!((g[0][0] / g[1][0] - 0.75).abs() < 1e-6);
        let mut small = vec![vec![0.1]];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small, vec![vec![0.1]]);
    }
}

#[cfg(test)]
mod adamw_tests {
    use super::*;
    use crate::model::Param;

    struct One(Param<Cpu>);
    impl HasParams<Cpu> for One {
        fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Param<Cpu>)) {
            f(&self.0)
        }
        fn visit_mut(&mut self, f: &mut dyn FnMut(&mut Param<Cpu>)) {
            f(&mut self.0)
        }
    }

    /// Two steps of torch.optim.AdamW written out by hand.
    #[test]
    fn matches_the_pytorch_update_rule() {
        let dev = Cpu::default();
        for decay in [true, false] {
            let mut model = One(Param::from_vec(&dev, "w".into(), vec![2], decay, vec![1.0, -2.0]));
            let mut opt = AdamW::new(&model, 0.9, 0.95, 1e-8, 0.1);
            let grads = [[0.5f64, -1.0], [0.25, 2.0]];
            let (lr, wd) = (0.01f64, if decay { 0.1 } else { 0.0 });
            let mut w = [1.0f64, -2.0];
            let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
            for (t, g) in grads.iter().enumerate() {
                opt.update(&mut model, &[g.iter().map(|&x| x as f32).collect()], lr);
                let t = (t + 1) as i32;
                for j in 0..2 {
                    w[j] *= 1.0 - lr * wd;
                    m[j] = 0.9 * m[j] + 0.1 * g[j];
                    v[j] = 0.95 * v[j] + 0.05 * g[j] * g[j];
                    let mhat = m[j] / (1.0 - 0.9f64.powi(t));
                    let vhat = v[j] / (1.0 - 0.95f64.powi(t));
                    w[j] -= lr * mhat / (vhat.sqrt() + 1e-8);
                }
                let got = model.0.value.as_vec();
                for j in 0..2 {
                    assert!((got[j] as f64 - w[j]).abs() < 1e-6, "step {t}: {} vs {}", got[j], w[j]);
                }
            }
        }
    }

    /// The update runs in place on a parameter nothing else holds, through a copy on one that
    /// is held elsewhere: the same bits either way, and the other holder's values untouched.
    #[test]
    fn an_update_in_place_equals_one_through_a_copy_and_spares_other_holders() {
        let dev = Cpu::default();
        let start: Vec<Float> = (0..40_000usize)
            .map(|i| ((i * 7919) % 1000) as Float * 1e-3 - 0.5)
            .collect();
        let grads = [(0..40_000usize)
            .map(|i| ((i * 104_729) % 997) as Float * 1e-3 - 0.5)
            .collect::<Vec<_>>()];
        let mut alone = One(Param::from_vec(&dev, "w".into(), vec![40_000], true, start.clone()));
        let mut shared = One(Param::from_vec(&dev, "w".into(), vec![40_000], true, start.clone()));
        let other_holder = shared.0.value.clone();
        let at = alone.0.value.storage().as_ptr();
        let (mut opt_alone, mut opt_shared) = (
            AdamW::new(&alone, 0.9, 0.95, 1e-8, 0.1),
            AdamW::new(&shared, 0.9, 0.95, 1e-8, 0.1),
        );
        for _ in 0..3 {
            opt_alone.update(&mut alone, &grads, 0.01);
            opt_shared.update(&mut shared, &grads, 0.01);
        }
        assert_eq!(alone.0.value.storage().as_ptr(), at, "updated where it lay");
        let bits = |v: &[Float]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(alone.0.value.storage()), bits(shared.0.value.storage()));
        assert_ne!(
            bits(alone.0.value.storage()),
            bits(&start),
            "the update changed the values"
        );
        assert_eq!(bits(other_holder.storage()), bits(&start), "the other holder's values");
    }
}
