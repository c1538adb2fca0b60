//! What a Hugging Face `tokenizer.json` does to text that its `tokenizers` crate does not say
//! directly: the text an encoding dropped, and the bytes each token stands for.

use std::collections::BTreeSet;

/// The bytes of text each id of a Hugging Face tokenizer stands for. A token decoded alone is
/// not that: a byte-level or byte-fallback token may be part of a character (alone it decodes
/// to U+FFFD, three bytes), and a `Metaspace` or `Strip` decoder drops the space that starts
/// the text (`▁the` alone is `the`). So: a byte-level token's characters are a byte each, a
/// `<0xNN>` byte-fallback token is one byte, a special token none, and any other token is
/// measured after a one-letter token, as the difference it makes to the decoded text (alone,
/// without a decoder).
pub(super) fn file_token_bytes(inner: &tokenizers::Tokenizer, n: u32) -> Vec<u32> {
    let decoders = decoder_types(inner);
    let byte_level = decoders.iter().any(|d| d == "ByteLevel");
    let byte_fallback = decoders.iter().any(|d| d == "ByteFallback");
    let special: BTreeSet<u32> = inner
        .get_added_tokens_decoder()
        .into_iter()
        .filter_map(|(id, t)| t.special.then_some(id))
        .collect();
    let decoded_len = |ids: &[u32]| inner.decode(ids, true).map_or(0, |s| s.len() as u32);
    let one_letter = |id: &u32| {
        !special.contains(id)
            && inner
                .decode(&[*id], true)
                .is_ok_and(|s| s.len() == 1 && s.as_bytes()[0].is_ascii_alphabetic())
    };
    // Without a decoder, `tokenizers` joins tokens with spaces: then a token alone is its text.
    let letter = match decoders.is_empty() {
        true => None,
        false => (0..n).find(one_letter),
    };
    (0..n)
        .map(|id| {
            let Some(token) = inner.id_to_token(id) else {
                return 0;
            };
            let fallback_byte = token.len() == 6 && token.starts_with("<0x") && token.ends_with('>');
            match () {
                _ if special.contains(&id) => 0,
                _ if byte_fallback && fallback_byte => 1,
                _ if byte_level && token.chars().all(is_byte_level_char) => token.chars().count() as u32,
                _ => match letter {
                    Some(a) => decoded_len(&[a, id]).saturating_sub(decoded_len(&[a])),
                    None => decoded_len(&[id]),
                },
            }
        })
        .collect()
}

/// The `type` of the tokenizer's decoder and of every decoder inside it (a `Sequence`), as
/// its tokenizer.json writes them.
fn decoder_types(inner: &tokenizers::Tokenizer) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                if let Some(serde_json::Value::String(t)) = o.get("type") {
                    out.push(t.clone());
                }
                o.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = vec![];
    if let Ok(v) = serde_json::to_value(inner.get_decoder()) {
        walk(&v, &mut out);
    }
    out
}

/// Whether `c` is in GPT-2's byte-level alphabet, where each character stands for one byte:
/// the printable bytes as themselves, the other 68 as U+0100 to U+0143.
fn is_byte_level_char(c: char) -> bool {
    matches!(c as u32, 33..=126 | 161..=172 | 174..=255 | 256..=323)
}

/// Why `text` is not what its tokens say, if some of its bytes lie in no token's `offsets`
/// (byte spans): a tokenizer without an unknown token or byte fallback drops characters
/// outside its vocabulary, a whitespace pre-tokenizer drops the spaces. A model would never
/// see that text, and bits per byte would count bytes it never predicts. The offsets say how
/// much is lost, not always where (`tokenizers`' BPE counts its offsets over the characters it
/// kept), so the characters named are those that `dropped_alone` says vanish on their own.
pub(super) fn dropped_text(
    text: &str,
    offsets: &[(usize, usize)],
    dropped_alone: impl Fn(char) -> bool,
) -> Option<String> {
    let mut spans = offsets.to_vec();
    if !spans.is_sorted() {
        spans.sort_unstable();
    }
    let (mut covered, mut kept) = (0, 0);
    for (start, end) in spans {
        let (start, end) = (start.max(covered), end.min(text.len()));
        kept += end.saturating_sub(start);
        covered = covered.max(end);
    }
    let lost = text.len() - kept;
    if lost == 0 {
        return None;
    }
    let mut tried = BTreeSet::new();
    let named: Vec<char> = text
        .chars()
        .filter(|&c| tried.insert(c) && dropped_alone(c))
        .take(8)
        .collect();
    let among = match named.is_empty() {
        true => String::new(),
        false => format!(", characters {named:?}"),
    };
    Some(format!(
        "it drops text it has no token for ({lost} of {} bytes{among}): a model trained on \
         these ids would never see that text, and bits per byte would count bytes it never predicts; use \
         a tokenizer that keeps every byte (byte fallback, a byte-level pre-tokenizer, or an unknown token)",
        text.len()
    ))
}
