//! A backup's index: the image, chunk by chunk, as one flat file (not rows in a database),
//! MAC'd whole.
//!
//! `RWI1`, the chunk size (u32 LE), the image size (u64 LE), the number of entries (u64
//! LE), then the entries in image order: `Z` and a count (u64 LE) for a run of chunks that
//! are all zeroes, `C` and a chunk id (32 bytes) for one chunk; then HMAC-SHA256 under the
//! MAC key of everything before it. The entries cover exactly `ceil(image size / chunk
//! size)` chunks (the last may be short). A sparse multi-TiB image is a few zero runs; a
//! full one is 33 bytes a chunk (33 KiB a GiB at 1 MiB chunks).

use crate::chunk::ChunkId;
use crate::{Error, Result};

pub const MAGIC: &[u8; 4] = b"RWI1";
const HEADER: usize = 4 + 4 + 8 + 8;

/// One entry: a run of zero chunks, or one stored chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Zeroes(u64),
    Chunk(ChunkId),
}

/// An index, in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub chunk_size: u32,
    pub image_size: u64,
    pub entries: Vec<Entry>,
}

impl Index {
    /// Chunks the image has.
    pub fn chunks(&self) -> u64 {
        self.image_size.div_ceil(u64::from(self.chunk_size))
    }

    /// Append chunk `id`, or a zero chunk (merged into the run before it).
    pub fn push(&mut self, chunk: Option<ChunkId>) {
        match (chunk, self.entries.last_mut()) {
            (None, Some(Entry::Zeroes(n))) => *n += 1,
            (None, _) => self.entries.push(Entry::Zeroes(1)),
            (Some(id), _) => self.entries.push(Entry::Chunk(id)),
        }
    }

    /// The stored chunks it refers to (with repeats).
    pub fn chunk_ids(&self) -> impl Iterator<Item = &ChunkId> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Chunk(id) => Some(id),
            Entry::Zeroes(_) => None,
        })
    }

    pub fn encode(&self, mac_key: &[u8; 32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.entries.len() * 33 + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.image_size.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for entry in &self.entries {
            match entry {
                Entry::Zeroes(n) => {
                    out.push(b'Z');
                    out.extend_from_slice(&n.to_le_bytes());
                }
                Entry::Chunk(id) => {
                    out.push(b'C');
                    out.extend_from_slice(&id.0);
                }
            }
        }
        let tag = crate::mac(mac_key, &[&out]);
        out.extend_from_slice(&tag);
        out
    }

    /// Decode and authenticate an index: a truncated, forged (or other repository's) and a
    /// malformed one are told apart.
    pub fn decode(bytes: &[u8], mac_key: &[u8; 32]) -> Result<Index> {
        if bytes.len() < HEADER + 32 {
            return Err(Error::Truncated(format!("index of {} bytes", bytes.len())));
        }
        if &bytes[..4] != MAGIC {
            return Err(Error::Corrupt("not an index".into()));
        }
        let le32 = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let le64 = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let (chunk_size, image_size, count) = (le32(4), le64(8), le64(16));
        // Where the entries would end, if the count is true: a shorter file is truncated.
        let mut at = HEADER;
        let mut entries = Vec::new();
        for _ in 0..count {
            match bytes.get(at) {
                Some(b'Z') if at + 9 <= bytes.len() => {
                    entries.push(Entry::Zeroes(le64(at + 1)));
                    at += 9;
                }
                Some(b'C') if at + 33 <= bytes.len() => {
                    entries.push(Entry::Chunk(ChunkId(bytes[at + 1..at + 33].try_into().expect("32 bytes"))));
                    at += 33;
                }
                Some(b'Z' | b'C') | None => return Err(Error::Truncated(format!("index ends inside its {count} entries"))),
                Some(tag) => return Err(Error::Corrupt(format!("index entry tag {tag:#04x} at {at}"))),
            }
        }
        if bytes.len() < at + 32 {
            return Err(Error::Truncated("index without its MAC".into()));
        }
        if bytes.len() > at + 32 {
            return Err(Error::Corrupt(format!("{} bytes after the index's MAC", bytes.len() - at - 32)));
        }
        if !crate::mac_holds(mac_key, &[&bytes[..at]], &bytes[at..]) {
            return Err(Error::Forged("index".into()));
        }
        let index = Index { chunk_size, image_size, entries };
        let covered: u64 = index.entries.iter().map(|e| if let Entry::Zeroes(n) = e { *n } else { 1 }).sum();
        if chunk_size == 0 || covered != index.chunks() {
            return Err(Error::Corrupt(format!("index covers {covered} chunks of an image that has {}", index.chunks())));
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Index {
        let mut index = Index { chunk_size: 1 << 20, image_size: (5 << 20) + 7, entries: Vec::new() };
        index.push(Some(ChunkId([1; 32])));
        index.push(None);
        index.push(None);
        index.push(Some(ChunkId([2; 32])));
        index.push(Some(ChunkId([1; 32])));
        index.push(None);
        index
    }

    #[test]
    fn an_index_round_trips_with_zero_runs_merged() {
        let index = sample();
        assert_eq!(index.entries.len(), 5);
        assert_eq!(index.chunk_ids().count(), 3);
        let bytes = index.encode(&[4; 32]);
        assert_eq!(Index::decode(&bytes, &[4; 32]).unwrap(), index);
    }

    #[test]
    fn truncated_forged_and_malformed_indexes_are_told_apart() {
        let bytes = sample().encode(&[4; 32]);
        assert!(matches!(Index::decode(&bytes, &[5; 32]), Err(Error::Forged(_))), "another key");
        for cut in [10, HEADER + 3, bytes.len() - 40, bytes.len() - 1] {
            assert!(matches!(Index::decode(&bytes[..cut], &[4; 32]), Err(Error::Truncated(_))), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[HEADER + 5] ^= 1;
        assert!(matches!(Index::decode(&flipped, &[4; 32]), Err(Error::Forged(_))));
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(Index::decode(&extra, &[4; 32]), Err(Error::Corrupt(_))));
        let mut short = sample();
        short.image_size = 1 << 20;
        assert!(matches!(Index::decode(&short.encode(&[4; 32]), &[4; 32]), Err(Error::Corrupt(_))), "covers more than the image");
    }
}
