//! The small building blocks of the GPT: linear maps, norms, the MLP and dropout.
//!
//! Activations are kept as `(N, C)` matrices with `N = B·T` rows, so every linear map is a
//! single matrix product; the attention module reshapes to heads where it needs them.

use dfdx::prelude::*;
use rand::Rng;
use rand_distr::{Distribution, Normal};

use super::config::{Float, MlpKind, NormKind};
use super::ops::{Affine, Backend};
use super::param::{HasParams, Param};

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

impl<D: Backend> Linear<D> {
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
        let (w, b) = self.parts();
        D::linear(x, w, b)
    }

    /// The weight and bias as tensors on tape `T`, for [`Backend::linears`].
    pub fn parts<T: Tape<Float, D>>(&self) -> Affine<D, T> {
        (self.weight.matrix::<T>(), self.bias.as_ref().map(|b| b.vector::<T>()))
    }
}

/// Visits a weight and its optional bias, the parameters of [`Linear`] and [`Norm`].
macro_rules! weight_and_bias_params {
    ($t:ident) => {
        impl<D: Device<Float>> HasParams<D> for $t<D> {
            fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Param<D>)) {
                f(&self.weight);
                self.bias.iter().for_each(f);
            }
            fn visit_mut(&mut self, f: &mut dyn FnMut(&mut Param<D>)) {
                f(&mut self.weight);
                self.bias.iter_mut().for_each(f);
            }
        }
    };
}

weight_and_bias_params!(Linear);

/// LayerNorm (gain 1, bias 0) or RMSNorm (gain 1) over the channel axis.
#[derive(Clone, Debug)]
pub struct Norm<D: Device<Float>> {
    /// `(C,)` gain.
    pub weight: Param<D>,
    /// `(C,)` bias, LayerNorm only.
    pub bias: Option<Param<D>>,
}

impl<D: Backend> Norm<D> {
    /// PyTorch's default epsilon.
    pub const EPS: f64 = 1e-5;

    /// A LayerNorm or RMSNorm of width `c`.
    pub fn new(dev: &D, name: &str, c: usize, kind: NormKind) -> Self {
        Self {
            weight: Param::from_vec(dev, format!("{name}.weight"), vec![c], false, vec![1.0; c]),
            bias: (kind == NormKind::LayerNorm)
                .then(|| Param::from_vec(dev, format!("{name}.bias"), vec![c], false, vec![0.0; c])),
        }
    }

    /// `(N, C) -> (N, C)`.
    pub fn forward<T: Tape<Float, D> + Merge<T>>(&self, x: Act<D, T>) -> Act<D, T> {
        match &self.bias {
            Some(b) => D::layer_norm(x, self.weight.vector::<T>(), b.vector::<T>(), Self::EPS),
            None => D::rms_norm(x, self.weight.vector::<T>(), Self::EPS),
        }
    }
}

weight_and_bias_params!(Norm);

/// The position-wise feed-forward network: `proj(GELU(fc(x)))`, or with a gate
/// `proj(SiLU(gate(x)) ⊙ fc(x))` (SwiGLU). The block applies dropout to its output.
#[derive(Clone, Debug)]
pub struct Mlp<D: Device<Float>> {
    /// `(C, hidden)` expansion (SwiGLU's "up").
    pub fc: Linear<D>,
    /// `(C, hidden)` gate, SwiGLU only.
    pub gate: Option<Linear<D>>,
    /// `(hidden, C)` projection back to the residual stream.
    pub proj: Linear<D>,
}

impl<D: Backend> Mlp<D> {
    /// `proj_std` is the residual-scaled std of the output projection.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dev: &D,
        rng: &mut impl Rng,
        name: &str,
        c: usize,
        hidden: usize,
        proj_std: f64,
        kind: MlpKind,
        bias: bool,
    ) -> Self {
        Self {
            fc: Linear::new(dev, rng, &format!("{name}.fc"), c, hidden, bias, 0.02),
            gate: (kind == MlpKind::Swiglu)
                .then(|| Linear::new(dev, rng, &format!("{name}.gate"), c, hidden, bias, 0.02)),
            proj: Linear::new(dev, rng, &format!("{name}.proj"), hidden, c, bias, proj_std),
        }
    }

    /// `(N, C) -> (N, C)`.
    pub fn forward<T: Tape<Float, D> + Merge<T>>(&self, x: Act<D, T>) -> Act<D, T> {
        let hidden = match &self.gate {
            None => {
                return D::mlp_gelu(
                    x,
                    self.fc.weight.matrix::<T>(),
                    self.fc.bias.as_ref().map(|b| b.vector::<T>()),
                    self.proj.weight.matrix::<T>(),
                    self.proj.bias.as_ref().map(|b| b.vector::<T>()),
                );
            }
            Some(gate) => {
                let g = gate.forward(x.retaped::<T>());
                let silu = g.retaped::<T>().sigmoid() * g;
                silu * self.fc.forward(x)
            }
        };
        self.proj.forward(hidden)
    }
}

impl<D: Device<Float>> HasParams<D> for Mlp<D> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Param<D>)) {
        self.fc.visit(f);
        if let Some(g) = &self.gate {
            g.visit(f);
        }
        self.proj.visit(f);
    }
    fn visit_mut(&mut self, f: &mut dyn FnMut(&mut Param<D>)) {
        self.fc.visit_mut(f);
        if let Some(g) = &mut self.gate {
            g.visit_mut(f);
        }
        self.proj.visit_mut(f);
    }
}
