//! The check of an `rbd export-diff` stream that hashes each byte once: `chunked-sha256`.
//!
//! A backup already hashes every 64 KiB chunk of the image it reads (the chunk digests of
//! its image digest). A plain SHA-256 of the stream would hash every data byte a second
//! time. This check uses the chunk digests instead of the bytes they stand for:
//!
//! > Let `C` be the chunk size. Take the stream, and replace the data of each `w` record
//! > (at image offset `o`, `l` bytes) as follows: cut it at the image offsets that are
//! > multiples of `C`, and put in place of each piece its SHA-256 (32 bytes). Every other
//! > byte (the banner, tags, names, offsets, lengths, `z` records, the end) stays as it is.
//! > The check is the SHA-256 of the result.
//!
//! A piece that is a whole chunk of the image is hashed already when the backup read it,
//! so the check costs 32 bytes of hashing per 64 KiB; only the pieces at the edges of an
//! extent are hashed again. It is deterministic from the stream alone: a restore computes
//! it from the bytes it writes, and `tools/rbddiff-check.py` (Python's standard library)
//! from a file.
//!
//! [`StreamCheck`] is fed in stream order: [`StreamCheck::update`] for the bytes that stay
//! as they are, [`StreamCheck::update_data`] for a `w` record's data with its image offset.
//! Data may come in any number of calls: a piece cut by a call's end is continued by the
//! next call if it starts where the last ended, and closed by any other byte. A plain
//! SHA-256 ([`StreamCheck::plain`]) takes the same calls and hashes every byte.

use sha2::{Digest, Sha256};

/// A check being computed (see the crate documentation).
#[derive(Clone)]
pub struct StreamCheck {
    outer: Sha256,
    /// The chunk size; 0 for a plain SHA-256.
    chunk: u64,
    /// A piece that the last data ended inside of.
    open: Option<Open>,
}

#[derive(Clone)]
struct Open {
    /// Where the piece goes on: the image offset after its last byte.
    next: u64,
    /// Where it ends: the next multiple of the chunk size.
    end: u64,
    hash: Sha256,
}

/// Digests already computed of a range of the image, one per `chunk` bytes from `start`
/// (the last may be shorter): a backup's read with its chunk digests. A piece that is
/// exactly one of these chunks is not hashed again.
#[derive(Clone, Copy)]
pub struct KnownSums<'a> {
    pub start: u64,
    pub length: u64,
    pub chunk: u64,
    /// 32 bytes a chunk, in order.
    pub sums: &'a [u8],
}

impl KnownSums<'_> {
    /// The digest of `[at, at + len)`, if that is one of the chunks.
    fn of(&self, at: u64, len: u64) -> Option<&[u8]> {
        let from = at.checked_sub(self.start)?;
        if self.chunk == 0 || from % self.chunk != 0 || from >= self.length {
            return None;
        }
        let index = from / self.chunk;
        if len != self.chunk.min(self.length - from) {
            return None;
        }
        let at = usize::try_from(index).ok()?.checked_mul(32)?;
        self.sums.get(at..at.checked_add(32)?)
    }
}

/// The name of the method, as a manifest records it.
pub const METHOD: &str = "chunked-sha256";

impl StreamCheck {
    /// The `chunked-sha256` check with chunks of `chunk` bytes (more than 0).
    pub fn chunked(chunk: u64) -> StreamCheck {
        assert!(chunk > 0, "a chunk size of 0");
        StreamCheck { outer: Sha256::new(), chunk, open: None }
    }

    /// A plain SHA-256 of every byte.
    pub fn plain() -> StreamCheck {
        StreamCheck { outer: Sha256::new(), chunk: 0, open: None }
    }

    /// The chunk size; 0 for a plain SHA-256.
    pub fn chunk(&self) -> u64 {
        self.chunk
    }

    /// Add bytes that are not a `w` record's data, as they are.
    pub fn update(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.close();
        self.outer.update(bytes);
    }

    /// Add a `w` record's data (or a part of it) that is the image's bytes at `offset`.
    /// `known` are digests already computed of chunks of it.
    pub fn update_data(&mut self, offset: u64, data: &[u8], known: Option<&KnownSums<'_>>) {
        if self.chunk == 0 {
            self.outer.update(data);
            return;
        }
        let (mut at, mut rest) = (offset, data);
        if let Some(mut open) = self.open.take() {
            if open.next == at {
                let n = usize::try_from(open.end - at).unwrap_or(usize::MAX).min(rest.len());
                open.hash.update(&rest[..n]);
                (at, rest) = (at + n as u64, &rest[n..]);
                if at < open.end {
                    open.next = at;
                    self.open = Some(open);
                    return;
                }
                self.outer.update(open.hash.finalize());
            } else {
                self.outer.update(open.hash.finalize());
            }
        }
        while !rest.is_empty() {
            let end = (at / self.chunk).saturating_add(1).saturating_mul(self.chunk);
            let whole = end - at;
            if (rest.len() as u64) < whole {
                let mut hash = Sha256::new();
                hash.update(rest);
                self.open = Some(Open { next: at + rest.len() as u64, end, hash });
                return;
            }
            // `whole <= rest.len()`, so it is a usize.
            let (piece, tail) = rest.split_at(whole as usize);
            match known.and_then(|k| k.of(at, whole)) {
                Some(sum) => self.outer.update(sum),
                None => self.outer.update(Sha256::digest(piece)),
            }
            (at, rest) = (end, tail);
        }
    }

    fn close(&mut self) {
        if let Some(open) = self.open.take() {
            self.outer.update(open.hash.finalize());
        }
    }

    /// The check of everything added; starts over, of the same kind.
    pub fn finalize_reset(&mut self) -> [u8; 32] {
        self.close();
        self.outer.finalize_reset().into()
    }
}

impl Default for StreamCheck {
    fn default() -> Self {
        StreamCheck::plain()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u64 = 4096;

    /// The check computed from its definition: the data cut in one go.
    fn by_definition(parts: &[(Option<u64>, Vec<u8>)]) -> [u8; 32] {
        let mut t = Vec::new();
        for (offset, bytes) in parts {
            match offset {
                None => t.extend_from_slice(bytes),
                Some(o) => {
                    let mut at = *o as usize;
                    let mut rest = &bytes[..];
                    while !rest.is_empty() {
                        let n = (C as usize - at % C as usize).min(rest.len());
                        t.extend_from_slice(&Sha256::digest(&rest[..n]));
                        at += n;
                        rest = &rest[n..];
                    }
                }
            }
        }
        Sha256::digest(&t).into()
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn records() -> Vec<(Option<u64>, Vec<u8>)> {
        vec![
            (None, b"rbd diff v1\nheader".to_vec()),
            (Some(100), data(3 * C as usize + 7, 1)),
            (None, b"w-record".to_vec()),
            (Some(5 * C), data(2 * C as usize, 2)),
            (None, b"z".to_vec()),
            (Some(9 * C + 5), data(10, 3)),
            (None, b"e".to_vec()),
        ]
    }

    #[test]
    fn however_the_data_is_split_the_check_is_the_definitions() {
        let want = by_definition(&records());
        for split in [1usize, 7, 100, 4095, 4096, 5000, 1 << 20] {
            let mut check = StreamCheck::chunked(C);
            for (offset, bytes) in records() {
                match offset {
                    None => check.update(&bytes),
                    Some(o) => {
                        for (i, part) in bytes.chunks(split).enumerate() {
                            check.update_data(o + (i * split) as u64, part, None);
                        }
                    }
                }
            }
            assert_eq!(check.finalize_reset(), want, "split {split}");
        }
    }

    #[test]
    fn known_sums_stand_for_their_chunks_and_wrong_ones_show() {
        let want = by_definition(&records());
        let record = data(2 * C as usize, 2);
        let sums: Vec<u8> = record.chunks(C as usize).flat_map(|c| Sha256::digest(c).to_vec()).collect();
        let check = |sums: &[u8]| {
            let mut check = StreamCheck::chunked(C);
            for (offset, bytes) in records() {
                match offset {
                    None => check.update(&bytes),
                    Some(o) if o == 5 * C => {
                        let known = KnownSums { start: o, length: bytes.len() as u64, chunk: C, sums };
                        check.update_data(o, &bytes, Some(&known));
                    }
                    Some(o) => check.update_data(o, &bytes, None),
                }
            }
            check.finalize_reset()
        };
        assert_eq!(check(&sums), want);
        let mut wrong = sums.clone();
        wrong[40] ^= 1;
        assert_ne!(check(&wrong), want, "the known digests are used, not recomputed");
    }

    #[test]
    fn plain_is_sha256_of_every_byte() {
        let mut check = StreamCheck::plain();
        let mut all = Vec::new();
        for (offset, bytes) in records() {
            match offset {
                None => check.update(&bytes),
                Some(o) => check.update_data(o, &bytes, None),
            }
            all.extend_from_slice(&bytes);
        }
        assert_eq!(check.finalize_reset(), <[u8; 32]>::from(Sha256::digest(&all)));
    }
}
