//! Learning a byte-level BPE from text: GPT-2's recipe (its pre-tokenizer, the 256 bytes as
//! the alphabet, merges by count) through the `tokenizers` crate's trainer, with
//! `<|endoftext|>` as the last id, as GPT-2 has it.
//!
//! The trainer is deterministic for this recipe: the alphabet is the 256 byte characters,
//! sorted, merges are taken by count and ties by the lower pair of ids, and the counts are
//! sums (the same whatever the threads). So the same text gives the same JSON, byte for byte
//! (tested across processes and thread counts).

use std::ops::RangeInclusive;

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, TokenizerBuilder};

/// The vocabulary sizes a trained BPE may have: the 256 bytes and the separator at least.
pub const VOCAB_SIZES: RangeInclusive<usize> = 257..=1_000_000;

/// The separator, the last id of a trained vocabulary.
pub const SEPARATOR: &str = "<|endoftext|>";

/// What a trained tokenizer is, for cache keys: bumped when the recipe changes.
pub const RECIPE: &str = "byte-level bpe v1 (gpt2 pre-tokenizer, 256-byte alphabet, <|endoftext|> last)";

/// Learns a byte-level BPE of `vocab_size` tokens from `texts` (each a piece of the training
/// text: pieces are pre-tokenized apart, so cut them only where the pre-tokenizer splits).
/// Returns the tokenizer's JSON, or why not: the text has too few distinct pairs to make
/// `vocab_size` tokens (the vocabulary it could reach is said).
pub fn byte_level_bpe<I>(texts: I, vocab_size: usize) -> Result<Vec<u8>, String>
where
    I: Iterator<Item = String> + Send,
{
    debug_assert!(VOCAB_SIZES.contains(&vocab_size));
    let byte_level = || ByteLevel::default().add_prefix_space(false);
    let mut tokenizer =
        TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, PostProcessorWrapper, DecoderWrapper>::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(byte_level()))
            .with_post_processor(None)
            .with_decoder(Some(DecoderWrapper::ByteLevel(byte_level())))
            .build()
            .map_err(|e| format!("the BPE trainer failed: {e}"))?;
    // The separator is added after training, so the merges are learned from the text alone
    // (a `<|endoftext|>` written in the text is text, as the OpenAI encodings read it).
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size - 1)
        .min_frequency(0)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| format!("the BPE trainer failed: {e}"))?;
    let learned = tokenizer.get_vocab_size(false);
    if learned < vocab_size - 1 {
        return Err(format!(
            "the training text holds too few distinct pairs of tokens for vocab_size {vocab_size}: \
             its BPE stops at {} tokens (the separator included); ask for at most that",
            learned + 1
        ));
    }
    tokenizer
        .add_special_tokens([AddedToken::from(SEPARATOR, true)])
        .map_err(|e| format!("the BPE trainer failed: {e}"))?;
    let json = tokenizer
        .to_string(false)
        .map_err(|e| format!("the trained BPE cannot be written: {e}"))?;
    Ok(json.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Tokenizer;

    fn text() -> Vec<String> {
        let line = "the cat sat on the mat; the dog sat on the log. Über naïve café 🙂\n";
        vec![line.repeat(40), "then the cat ran\r\n\t  off\n".repeat(10)]
    }

    #[test]
    fn a_trained_bpe_has_the_vocabulary_asked_and_round_trips_any_text() {
        let json = byte_level_bpe(text().into_iter(), 300).unwrap();
        let t = Tokenizer::trained(json).unwrap();
        assert_eq!(t.vocab_size(), 300);
        assert_eq!(t.separator(), Some(299), "the separator is the last id");
        for s in [
            "the cat",
            "text it never saw: ∮ Ω ✓ 漢字\u{0}\n",
            " <|endoftext|> is text",
        ] {
            let ids = t.encode(s).unwrap();
            assert_eq!(t.decode(&ids), s);
            assert!(ids.iter().all(|&i| i < 299), "{s:?}: {ids:?}");
        }
        // Merges were learned: a frequent word is fewer tokens than its bytes.
        assert!(t.encode(" the").unwrap().len() < 4);
        // 256 bytes and the separator, no merge.
        let bytes_only = Tokenizer::trained(byte_level_bpe(text().into_iter(), 257).unwrap()).unwrap();
        assert_eq!(bytes_only.encode("the").unwrap().len(), 3);
    }

    #[test]
    fn a_vocabulary_the_text_cannot_fill_is_refused_with_what_it_can() {
        let why = byte_level_bpe(["abab".to_string()].into_iter(), 1000).unwrap_err();
        assert!(
            why.contains("vocab_size 1000") && why.contains("stops at 259 tokens"),
            "{why}"
        );
    }

    #[test]
    fn the_same_text_trains_the_same_bytes() {
        let a = byte_level_bpe(text().into_iter(), 300).unwrap();
        let b = byte_level_bpe(text().into_iter(), 300).unwrap();
        assert_eq!(a, b);
    }
}
