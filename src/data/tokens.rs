//! A token sequence stored as little-endian `u16` or `u32`, in memory or memory-mapped from a
//! file (nanoGPT's `train.bin` layout): training reads windows of it, never the whole.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The width of a stored token id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// Two bytes: vocabularies up to 65,536 tokens.
    #[default]
    U16,
    /// Four bytes.
    U32,
}

impl Dtype {
    /// Bytes per token.
    pub fn width(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }

    /// The narrowest width that holds every id of a vocabulary of `vocab_size` tokens.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 { Dtype::U16 } else { Dtype::U32 }
    }

    /// The most tokens a vocabulary stored at this width may have.
    pub fn max_vocab(self) -> usize {
        match self {
            Dtype::U16 => 1 << 16,
            Dtype::U32 => 1 << 32,
        }
    }

    /// Appends `id` in little-endian order.
    pub fn push(self, out: &mut Vec<u8>, id: u32) {
        match self {
            Dtype::U16 => out.extend_from_slice(&(id as u16).to_le_bytes()),
            Dtype::U32 => out.extend_from_slice(&id.to_le_bytes()),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::U16 => "u16",
            Dtype::U32 => "u32",
        })
    }
}

/// Where the bytes live.
enum Storage {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Owned(v) => v,
            Storage::Mapped(m) => m,
        }
    }
}

/// A read-only token sequence. Clones share the storage (one mapping for every run of an
/// experiment).
#[derive(Clone)]
pub struct Tokens {
    storage: Arc<Storage>,
    dtype: Dtype,
    /// The view: tokens `start..start + len` of the storage.
    start: usize,
    len: usize,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} × {})", self.len(), self.dtype)
    }
}

impl Tokens {
    /// Token ids held in memory.
    pub fn from_ids(ids: impl IntoIterator<Item = u32>, dtype: Dtype) -> Self {
        let mut bytes = vec![];
        for id in ids {
            dtype.push(&mut bytes, id);
        }
        Self::from_le_bytes(bytes, dtype)
    }

    /// Little-endian ids already laid out (`bytes.len()` a multiple of the width).
    pub fn from_le_bytes(bytes: Vec<u8>, dtype: Dtype) -> Self {
        debug_assert_eq!(bytes.len() % dtype.width(), 0);
        Self::whole(Storage::Owned(bytes), dtype)
    }

    fn whole(storage: Storage, dtype: Dtype) -> Self {
        let len = storage.bytes().len() / dtype.width();
        Self {
            storage: Arc::new(storage),
            dtype,
            start: 0,
            len,
        }
    }

    /// Maps a token file. Its length must be a multiple of the width (the caller checks and
    /// names the file: see `source::check_token_file`).
    pub fn map(path: &Path, dtype: Dtype) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        if len == 0 {
            // An empty mapping is an error on Linux; an empty sequence needs none.
            return Ok(Self::from_le_bytes(vec![], dtype));
        }
        // SAFETY: the file is one gptlab wrote atomically into its cache (renamed into place,
        // never written again) or the user's token file; a file truncated under a live
        // mapping would fault, the risk every memory-mapped reader (numpy's memmap, nanoGPT)
        // takes. Nothing writes through the mapping.
        let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        // Windows are drawn at random places: read-ahead would only fill the page cache.
        let _ = map.advise(memmap2::Advice::Random);
        Ok(Self::whole(Storage::Mapped(map), dtype))
    }

    /// Tokens `range` of this sequence, sharing its storage.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "token range out of bounds"
        );
        Self {
            storage: self.storage.clone(),
            dtype: self.dtype,
            start: self.start + range.start,
            len: range.len(),
        }
    }

    /// The stored width.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id at `i`.
    pub fn get(&self, i: usize) -> u32 {
        debug_assert!(i < self.len);
        let i = self.start + i;
        let bytes = self.storage.bytes();
        match self.dtype {
            Dtype::U16 => u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]) as u32,
            Dtype::U32 => {
                let b = &bytes[4 * i..4 * i + 4];
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }
        }
    }

    /// Appends the ids of `range` to `out`.
    pub fn extend_into(&self, range: std::ops::Range<usize>, out: &mut Vec<usize>) {
        out.extend(range.map(|i| self.get(i) as usize));
    }

    /// Every id (for tests and small corpora).
    pub fn to_vec(&self) -> Vec<u32> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }

    /// The stored bytes (little-endian ids).
    pub fn as_le_bytes(&self) -> &[u8] {
        let w = self.dtype.width();
        &self.storage.bytes()[self.start * w..(self.start + self.len) * w]
    }

    /// The largest id, if any (checked against the vocabulary of pre-tokenised data).
    pub fn max_id(&self) -> Option<u32> {
        use rayon::prelude::*;
        let w = self.dtype.width();
        self.as_le_bytes()
            .par_chunks(w * (1 << 20))
            .map(|chunk| {
                chunk
                    .chunks_exact(w)
                    .map(|b| match self.dtype {
                        Dtype::U16 => u16::from_le_bytes([b[0], b[1]]) as u32,
                        Dtype::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    })
                    .max()
            })
            .reduce(|| None, |a, b| a.max(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_at_both_widths_in_little_endian() {
        let t = Tokens::from_ids([1, 258, 65535], Dtype::U16);
        assert_eq!(t.as_le_bytes(), &[1, 0, 2, 1, 255, 255]);
        assert_eq!(t.to_vec(), vec![1, 258, 65535]);
        let t = Tokens::from_ids([70000, 3], Dtype::U32);
        assert_eq!(t.as_le_bytes(), &[0x70, 0x11, 1, 0, 3, 0, 0, 0]);
        assert_eq!(t.max_id(), Some(70000));
        assert_eq!(t.slice(1..2).to_vec(), vec![3]);
        assert_eq!(t.slice(1..2).as_le_bytes(), &[3, 0, 0, 0]);
        assert_eq!(Dtype::for_vocab(65536), Dtype::U16);
        assert_eq!(Dtype::for_vocab(65537), Dtype::U32);
    }
}
