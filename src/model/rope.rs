//! Rotary position embedding (Su et al. 2021, "RoFormer").
//!
//! Each head vector is split into pairs `(x_i, x_{i+d/2})` (the "rotate half" layout of
//! GPT-NeoX and LLaMA), and pair `i` at position `m` is rotated by the angle `m · θ_i` with
//! `θ_i = base^(-2i/d)`. Rotating queries and keys this way makes `q_m · k_n` depend on the
//! positions only through `m - n`.
//!
//! At evaluation the angles can be stretched to reach past the training length
//! ([`RopeScaling`]): linear interpolation uses `(m / s) · θ_i`, NTK-aware scaling the base
//! `base · s^(d/(d−2))`.

use dfdx::prelude::*;

use super::config::{Float, RopeScaling};
use super::ops::Backend;

/// Precomputed cos/sin tables for every position up to `max_len`.
#[derive(Clone, Debug)]
pub struct Rope {
    head_dim: usize,
    /// `(max_len, head_dim)` row-major: `cos(m θ_i)` repeated for both halves.
    cos: Vec<Float>,
    /// Same layout as `cos`.
    sin: Vec<Float>,
    max_len: usize,
}

impl Rope {
    /// Tables for positions `0..max_len`; `head_dim` must be even (checked by the spec).
    pub fn new(head_dim: usize, max_len: usize, base: f64) -> Self {
        Self::scaled(head_dim, max_len, base, None)
    }

    /// [`Rope::new`] with the angles stretched by `scaling`.
    pub fn scaled(head_dim: usize, max_len: usize, base: f64, scaling: Option<&RopeScaling>) -> Self {
        assert!(head_dim.is_multiple_of(2), "RoPE needs an even head dimension");
        let (base, divisor) = RopeScaling::angle_rule(scaling, base, head_dim);
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_len * head_dim);
        let mut sin = Vec::with_capacity(max_len * head_dim);
        for m in 0..max_len {
            for j in 0..head_dim {
                let i = j % half;
                let theta = base.powf(-2.0 * i as f64 / head_dim as f64);
                let angle = m as f64 / divisor * theta;
                cos.push(angle.cos() as Float);
                sin.push(angle.sin() as Float);
            }
        }
        Self {
            head_dim,
            cos,
            sin,
            max_len,
        }
    }

    /// The longest sequence the tables cover.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Rotates `x: (B, T, nh, hd)` whose first row is position `offset`.
    pub fn apply<D: Backend, T: Tape<Float, D> + Merge<T>>(
        &self,
        x: Tensor<(usize, usize, usize, usize), Float, D, T>,
        offset: usize,
    ) -> Tensor<(usize, usize, usize, usize), Float, D, T> {
        let (_, t, _, hd) = *x.shape();
        assert_eq!(hd, self.head_dim, "RoPE built for head_dim {}", self.head_dim);
        assert!(
            offset + t <= self.max_len,
            "position {} beyond RoPE table of {}",
            offset + t,
            self.max_len
        );
        let rows = offset * hd..(offset + t) * hd;
        D::rotary(x, &self.cos[rows.clone()], &self.sin[rows])
    }
}
