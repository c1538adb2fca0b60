//! The harness that holds a fused CPU op to its reference composition: random inputs, and a
//! comparison of every output and gradient that names the part and the case that differ.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// `n` values uniform in [-1, 1).
pub fn random(r: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(-1.0..1.0)).collect()
}

/// Asserts that each part of `got` (outputs, then gradients, named by `parts`) has the length
/// of the same part of `want` and every value within `abs + rel·|want|` of it; a failure
/// names `case`, the part and the two values.
pub fn assert_close(case: &str, parts: &[&str], got: &[Vec<f32>], want: &[Vec<f32>], abs: f32, rel: f32) {
    assert_eq!(got.len(), want.len(), "{case}: number of parts");
    for ((part, g), w) in parts.iter().zip(got).zip(want) {
        assert_eq!(g.len(), w.len(), "{case} {part}: lengths differ");
        for (p, q) in g.iter().zip(w) {
            assert!((p - q).abs() <= abs + rel * q.abs(), "{case} {part}: {p} vs {q}");
        }
    }
}

/// Asserts that each part of `got` is `want` to the bit (−0 and +0 told apart); a failure
/// names `case`, the part, the index and the two values.
pub fn assert_bits(case: &str, parts: &[&str], got: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(got.len(), want.len(), "{case}: number of parts");
    for ((part, g), w) in parts.iter().zip(got).zip(want) {
        assert_eq!(g.len(), w.len(), "{case} {part}: lengths differ");
        for (i, (p, q)) in g.iter().zip(w).enumerate() {
            assert!(p.to_bits() == q.to_bits(), "{case} {part}[{i}]: {p:e} vs {q:e}");
        }
    }
}
