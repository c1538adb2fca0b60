//! A named, trainable tensor and the visitor that walks a model's parameters.
//!
//! Every parameter is stored flat, as a 1-D tensor, beside its logical shape. The forward
//! pass reshapes it (free for a contiguous tensor: dfdx keeps the id, so the gradient lands
//! on the stored tensor). One flat representation lets the optimizer, the checkpoint writer
//! and the parameter counter treat all parameters alike.

use dfdx::prelude::*;

use super::config::Float;

/// A trainable tensor with a stable name (e.g. `h.0.attn.wq.weight`).
#[derive(Clone, Debug)]
pub struct Param<D: Device<Float>> {
    /// Dotted name, unique in its model; used as the safetensors key.
    pub name: String,
    /// Logical shape: `[rows, cols]` for matrices, `[n]` for vectors.
    pub shape: Vec<usize>,
    /// Whether AdamW's decoupled weight decay applies (matmul weights only, as in minGPT).
    pub decay: bool,
    /// The values, flat and contiguous.
    pub value: Tensor<(usize,), Float, D>,
}

/// The elements of a flat tensor on the host, with one bulk copy (dfdx's `as_vec` walks them
/// one by one). Flat tensors built from vectors are always contiguous.
pub fn host_vec<D: Device<Float>, T>(t: &Tensor<(usize,), Float, D, T>) -> Vec<Float> {
    let mut v = vec![0.0; t.shape().0];
    t.copy_into(&mut v);
    v
}

impl<D: Device<Float>> Param<D> {
    /// Builds a parameter from host values; `values.len()` must equal the product of `shape`.
    pub fn from_vec(dev: &D, name: String, shape: Vec<usize>, decay: bool, values: Vec<Float>) -> Self {
        debug_assert_eq!(values.len(), shape.iter().product::<usize>());
        let n = values.len();
        Self {
            name,
            shape,
            decay,
            value: dev.tensor_from_vec(values, (n,)),
        }
    }

    /// Number of scalars in this parameter.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The parameter as a `(rows, cols)` matrix on tape `T`.
    pub fn matrix<T: Tape<Float, D>>(&self) -> Tensor<(usize, usize), Float, D, T> {
        debug_assert_eq!(self.shape.len(), 2, "{} is not a matrix", self.name);
        self.value.retaped::<T>().reshape_like(&(self.shape[0], self.shape[1]))
    }

    /// The parameter as a vector on tape `T`.
    pub fn vector<T: Tape<Float, D>>(&self) -> Tensor<(usize,), Float, D, T> {
        debug_assert_eq!(self.shape.len(), 1, "{} is not a vector", self.name);
        self.value.retaped::<T>()
    }
}

/// Something that owns parameters, in a fixed order.
pub trait HasParams<D: Device<Float>> {
    /// Calls `f` on every parameter, in a stable order.
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Param<D>));
    /// Calls `f` on every parameter mutably, in the same order as [`HasParams::visit`].
    fn visit_mut(&mut self, f: &mut dyn FnMut(&mut Param<D>));

    /// Total number of scalars.
    fn num_params(&self) -> usize {
        let mut n = 0;
        self.visit(&mut |p| n += p.numel());
        n
    }
}
