//! The small building blocks of the GPT: linear maps, LayerNorm, the GELU MLP and dropout.
//!
//! Activations are kept as `(N, C)` matrices with `N = B·T` rows, so every linear map is a
//! single matrix product; the attention module reshapes to heads where it needs them.

use dfdx::prelude::*;
use rand::Rng;
use rand_distr::{Distribution, Normal};

use super::param::{Float, HasParams, Param};

/// `(rows, cols)` activation on tape `T`.
pub type Act<D, T> = Tensor<(usize, usize), Float, D, T>;

/// Draws `n` values from N(0, std²); used for GPT-2 style initialisation.
pub fn normal_values(rng: &mut impl Rng, n: usize, std: f64) -> Vec<Float> {
    let normal = Normal::new(0.0, std).expect("std is finite and non-negative");
    (0..n).map(|_| normal.sample(rng) as Float).collect()
}

/// `y = x W + b`, with `W` stored as `(in, out)`.
#[derive(Clone, Debug)]
pub struct Linear<D: Device<Float>> {
    /// `(in, out)` weight.
    pub weight: Param<D>,
    /// `(out,)` bias, absent for bias-free projections such as the LM head.
    pub bias: Option<Param<D>>,
}

impl<D: super::backend::Backend> Linear<D> {
    /// Weight ~ N(0, std²), zero bias.
    pub fn new(dev: &D, rng: &mut impl Rng, name: &str, d_in: usize, d_out: usize, bias: bool, std: f64) -> Self {
        let weight = Param::from_vec(
            dev,
            format!("{name}.weight"),
            vec![d_in, d_out],
            true,
            normal_values(rng, d_in * d_out, std),
        );
        let bias = bias.then(|| Param::from_vec(dev, format!("{name}.bias"), vec![d_out], false, vec![0.0; d_out]));
        Self { weight, bias }
    }

    /// `(N, in) -> (N, out)`.
    pub fn forward<T: Tape<Float, D> + Merge<T>>(&self, x: Act<D, T>) -> Act<D, T> {
        let n = x.shape().0;
        let d_out = self.weight.shape[1];
        let y = x.matmul(self.weight.matrix::<T>());
        debug_assert_eq!(*y.shape(), (n, d_out));
        match &self.bias {
            Some(b) => D::add_bias(y, b.vector::<T>()),
            None => y,
        }
    }
}

impl<D: Device<Float>> HasParams<D> for Linear<D> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Param<D>)) {
        f(&self.weight);
        if let Some(b) = &self.bias {
            f(b);
        }
    }
    fn visit_mut(&mut self, f: &mut dyn FnMut(&mut Param<D>)) {
        f(&mut self.weight);
        if let Some(b) = &mut self.bias {
            f(b);
        }
    }
}

/// LayerNorm over the channel axis with a learned gain (init 1) and bias (init 0).
#[derive(Clone, Debug)]
pub struct LayerNorm<D: Device<Float>> {
    /// `(C,)` gain.
    pub weight: Param<D>,
    /// `(C,)` bias.
    pub bias: Param<D>,
}

impl<D: super::backend::Backend> LayerNorm<D> {
    /// PyTorch's default epsilon.
    pub const EPS: f64 = 1e-5;

    /// Gain 1, bias 0.
    pub fn new(dev: &D, name: &str, c: usize) -> Self {
        Self {
            weight: Param::from_vec(dev, format!("{name}.weight"), vec![c], false, vec![1.0; c]),
            bias: Param::from_vec(dev, format!("{name}.bias"), vec![c], false, vec![0.0; c]),
        }
    }

    /// `(N, C) -> (N, C)`.
    pub fn forward<T: Tape<Float, D> + Merge<T>>(&self, x: Act<D, T>) -> Act<D, T> {
        let shape = *x.shape();
        let g = self.weight.vector::<T>().broadcast_like::<_, Axis<0>>(&shape);
        let b = self.bias.vector::<T>().broadcast_like::<_, Axis<0>>(&shape);
        x.normalize::<Axis<1>>(Self::EPS) * g + b
    }
}

impl<D: Device<Float>> HasParams<D> for LayerNorm<D> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Param<D>)) {
        f(&self.weight);
        f(&self.bias);
    }
    fn visit_mut(&mut self, f: &mut dyn FnMut(&mut Param<D>)) {
        f(&mut self.weight);
        f(&mut self.bias);
    }
}

/// The position-wise feed-forward network: `fc -> GELU (tanh form, as GPT-2) -> proj -> dropout`.
#[derive(Clone, Debug)]
pub struct Mlp<D: Device<Float>> {
    /// `(C, 4C)` expansion.
    pub fc: Linear<D>,
    /// `(4C, C)` projection back to the residual stream.
    pub proj: Linear<D>,
}

impl<D: super::backend::Backend> Mlp<D> {
    /// `proj_std` is the residual-scaled std of the output projection.
    pub fn new(dev: &D, rng: &mut impl Rng, name: &str, c: usize, hidden: usize, proj_std: f64) -> Self {
        Self {
            fc: Linear::new(dev, rng, &format!("{name}.fc"), c, hidden, true, 0.02),
            proj: Linear::new(dev, rng, &format!("{name}.proj"), hidden, c, true, proj_std),
        }
    }

    /// `(N, C) -> (N, C)`.
    pub fn forward<T: Tape<Float, D> + Merge<T>>(&self, x: Act<D, T>, drop: &mut Dropout) -> Act<D, T> {
        drop.apply(self.proj.forward(D::gelu(self.fc.forward(x))))
    }
}

impl<D: Device<Float>> HasParams<D> for Mlp<D> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Param<D>)) {
        self.fc.visit(f);
        self.proj.visit(f);
    }
    fn visit_mut(&mut self, f: &mut dyn FnMut(&mut Param<D>)) {
        self.fc.visit_mut(f);
        self.proj.visit_mut(f);
    }
}

/// Inverted dropout driven by the caller's RNG, so a training step's masks are a pure
/// function of the seed the step was given (exact resume needs no hidden device RNG state).
pub struct Dropout {
    p: f32,
    rng: Option<rand_chacha::ChaCha8Rng>,
}

impl Dropout {
    /// Dropout with probability `p`, drawing masks from `rng`.
    pub fn train(p: f32, rng: rand_chacha::ChaCha8Rng) -> Self {
        Self { p, rng: Some(rng) }
    }

    /// The dropout probability (0 when evaluating).
    pub fn p(&self) -> f32 {
        if self.rng.is_some() { self.p } else { 0.0 }
    }

    /// A seed from this dropout's stream, for kernels that draw their own masks.
    pub fn next_seed(&mut self) -> u64 {
        self.rng.as_mut().map(|r| r.r#gen::<u64>()).unwrap_or(0)
    }

    /// The identity: evaluation and sampling.
    pub fn eval() -> Self {
        Self { p: 0.0, rng: None }
    }

    /// Zeroes each element with probability `p` and scales the rest by `1 / (1 - p)`.
    pub fn apply<S: Shape, D: Device<Float>, T: Tape<Float, D>>(
        &mut self,
        x: Tensor<S, Float, D, T>,
    ) -> Tensor<S, Float, D, T> {
        let Some(rng) = self.rng.as_mut() else {
            return x;
        };
        if self.p <= 0.0 {
            return x;
        }
        let shape = *x.shape();
        let n = shape.num_elements();
        // Compare raw u32 draws against a threshold: one draw per element, no float maths.
        let threshold = (self.p as f64 * u32::MAX as f64) as u32;
        let keep = 1.0 / (1.0 - self.p);
        let mask: Vec<Float> = (0..n)
            .map(|_| if rng.r#gen::<u32>() < threshold { 0.0 } else { keep })
            .collect();
        let mask = x.device().tensor_from_vec(mask, shape);
        x * mask
    }
}
