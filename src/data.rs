//! The character corpus: vocabulary, train/validation split and seeded batch windows.

use std::path::Path;

use anyhow::{Result, bail};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The sorted set of characters of a corpus; a token is an index into it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocab {
    chars: Vec<char>,
}

impl Vocab {
    /// Every distinct character of `text`, sorted.
    pub fn from_text(text: &str) -> Self {
        let mut chars: Vec<char> = text
            .chars()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        chars.shrink_to_fit();
        Self { chars }
    }

    /// Builds a vocabulary from a stored character list (e.g. a checkpoint's).
    pub fn from_chars(chars: Vec<char>) -> Self {
        Self { chars }
    }

    /// The characters, by token id.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// Token ids of `text`; an error lists every character outside the vocabulary.
    pub fn encode(&self, text: &str) -> Result<Vec<usize>> {
        let mut unknown = vec![];
        let ids: Vec<usize> = text
            .chars()
            .filter_map(|c| match self.chars.binary_search(&c) {
                Ok(i) => Some(i),
                Err(_) => {
                    if !unknown.contains(&c) {
                        unknown.push(c);
                    }
                    None
                }
            })
            .collect();
        if !unknown.is_empty() {
            bail!("characters not in the vocabulary: {:?}", unknown);
        }
        Ok(ids)
    }

    /// The text of token ids.
    pub fn decode(&self, ids: &[usize]) -> String {
        ids.iter().map(|&i| self.chars[i]).collect()
    }
}

/// A tokenised corpus split into a training head and a validation tail.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// The vocabulary of the whole corpus.
    pub vocab: Vocab,
    /// The first `1 - val_fraction` of the tokens.
    pub train: Vec<usize>,
    /// The rest.
    pub val: Vec<usize>,
}

impl Corpus {
    /// Reads a UTF-8 text file and splits it.
    pub fn load(path: &Path, val_fraction: f64) -> Result<Self> {
        let text = crate::fsio::read_text_capped(path, u64::MAX, "the corpus")?;
        Ok(Self::from_text(&text, val_fraction))
    }

    /// Splits `text`: the last `val_fraction` of its characters are for validation.
    pub fn from_text(text: &str, val_fraction: f64) -> Self {
        let vocab = Vocab::from_text(text);
        let tokens = vocab.encode(text).expect("the vocabulary covers its own text");
        let n_train = ((tokens.len() as f64) * (1.0 - val_fraction)).floor() as usize;
        let val = tokens[n_train..].to_vec();
        let mut train = tokens;
        train.truncate(n_train);
        Self { vocab, train, val }
    }
}

/// `b` windows of `t + 1` tokens: inputs are the first `t`, targets the last `t`, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Sequences.
    pub b: usize,
    /// Sequence length.
    pub t: usize,
    /// `(B, T)` input tokens.
    pub inputs: Vec<usize>,
    /// `(B, T)` next tokens.
    pub targets: Vec<usize>,
}

/// Draws `b` uniformly placed windows of `t + 1` tokens from `tokens`.
///
/// `tokens.len() > t` is the caller's contract (the planner checks it against the split).
pub fn sample_batch(tokens: &[usize], b: usize, t: usize, rng: &mut impl Rng) -> Batch {
    assert!(
        tokens.len() > t,
        "corpus of {} tokens is too short for windows of {}",
        tokens.len(),
        t + 1
    );
    let mut inputs = Vec::with_capacity(b * t);
    let mut targets = Vec::with_capacity(b * t);
    for _ in 0..b {
        let start = rng.gen_range(0..tokens.len() - t);
        inputs.extend_from_slice(&tokens[start..start + t]);
        targets.extend_from_slice(&tokens[start + 1..start + t + 1]);
    }
    Batch { b, t, inputs, targets }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn vocab_round_trips_and_names_unknown_characters() {
        let v = Vocab::from_text("hello world");
        assert_eq!(v.len(), 8);
        assert_eq!(v.decode(&v.encode("world").unwrap()), "world");
        let err = v.encode("hi!").unwrap_err().to_string();
        assert!(err.contains("'i'") && err.contains("'!'"), "{err}");
    }

    #[test]
    fn split_keeps_every_token_once() {
        let c = Corpus::from_text("abcdefghij", 0.2);
        assert_eq!(c.train.len(), 8);
        assert_eq!(c.val.len(), 2);
        assert_eq!(c.vocab.decode(&c.val), "ij");
    }

    #[test]
    fn windows_are_shifted_by_one_and_seeded() {
        let tokens: Vec<usize> = (0..100).collect();
        let mut r1 = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut r2 = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let a = sample_batch(&tokens, 4, 10, &mut r1);
        assert_eq!(a, sample_batch(&tokens, 4, 10, &mut r2));
        for (x, y) in a.inputs.iter().zip(&a.targets) {
            assert_eq!(x + 1, *y);
        }
        // The last window may end exactly at the last token.
        let small: Vec<usize> = (0..11).collect();
        let s = sample_batch(&small, 3, 10, &mut r1);
        assert_eq!(s.inputs[..10], small[..10]);
    }
}
