//! Attention with linear biases (Press et al., ICLR 2022, "Train Short, Test Long").
//!
//! No position embedding: head `h` adds `−m_h · (i − j)` to the score of query `i` for key
//! `j ≤ i`, so attention decays linearly with distance at a head-specific rate. The slopes are
//! the paper's: for `n` a power of two, the geometric sequence starting at `2^(−8/n)` with that
//! ratio; otherwise the slopes of the largest power of two below `n`, followed by every other
//! slope of twice that power until there are `n`.
//!
//! Plain data like `config`: the attention operations (`ops`) and the layers read it.

use super::config::Float;

/// The ALiBi slope of every head, in head order, for `n_heads` heads (the paper's
/// `get_slopes`).
pub fn alibi_slopes(n_heads: usize) -> Vec<f64> {
    fn power_of_two(n: usize) -> Vec<f64> {
        // start = 2^(−2^(−(log2 n − 3))) = 2^(−8/n), and each slope is the previous one times start.
        let start = 2f64.powf(-8.0 / n as f64);
        (1..=n).map(|i| start.powi(i as i32)).collect()
    }
    if n_heads == 0 {
        return vec![];
    }
    if n_heads.is_power_of_two() {
        return power_of_two(n_heads);
    }
    let closest = 1usize << n_heads.ilog2();
    let mut slopes = power_of_two(closest);
    slopes.extend(alibi_slopes(2 * closest).into_iter().step_by(2).take(n_heads - closest));
    slopes
}

/// The slope of head `h` of `n_heads`, as the attention kernels use it.
pub fn alibi_slope(h: usize, n_heads: usize) -> Float {
    alibi_slopes(n_heads)[h] as Float
}

/// The bias ALiBi adds to the score of query position `i` for key position `j ≤ i`.
#[inline(always)]
pub fn alibi_bias(slope: Float, i: usize, j: usize) -> Float {
    -slope * (i - j) as Float
}
