//! Independent random streams derived from `(seed, purpose, index)`.
//!
//! Every random draw of a training step comes from a stream keyed by the step number, so a
//! run resumed at step `s` draws exactly what an uninterrupted run would have drawn, with
//! no generator state to save.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a stream is for; each purpose gets draws independent of the others.
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub enum Stream {
    /// Parameter initialisation.
    Init = 1,
    /// Training batch windows.
    Batch = 2,
    /// Dropout masks.
    Dropout = 3,
    /// Validation batch windows (the same every evaluation, so losses compare over time).
    Eval = 4,
    /// Sampling.
    Sample = 5,
}

/// SplitMix64's finaliser: spreads nearby inputs over the whole 64-bit range.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator for `(seed, stream, index)`.
pub fn stream(seed: u64, purpose: Stream, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(mix(mix(seed) ^ purpose as u64) ^ index))
}

/// The generator for `(seed, stream, name)`: an index from the name's FNV-1a hash.
pub fn named_stream(seed: u64, purpose: Stream, name: &str) -> ChaCha8Rng {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    stream(seed, purpose, hash)
}
