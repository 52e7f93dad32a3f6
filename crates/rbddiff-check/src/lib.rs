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
    /// With [`StreamCheck::keeping_chunk_sums`]: the digests of the whole chunks added as
    /// data since [`StreamCheck::take_chunk_sums`].
    kept: Option<Kept>,
}

#[derive(Clone)]
struct Kept {
    /// (image offset, SHA-256), in the order added.
    sums: Vec<(u64, [u8; 32])>,
    limit: usize,
    /// More than `limit` were added since the last take: they were dropped.
    dropped: bool,
}

/// [`StreamCheck::take_chunk_sums`]: more digests were added than kept, and were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub limit: usize,
}

#[derive(Clone)]
struct Open {
    /// Where the piece starts.
    start: u64,
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
        StreamCheck { outer: Sha256::new(), chunk, open: None, kept: None }
    }

    /// A plain SHA-256 of every byte.
    pub fn plain() -> StreamCheck {
        StreamCheck { outer: Sha256::new(), chunk: 0, open: None, kept: None }
    }

    /// Keep the digest of every whole chunk added as data (a piece from a multiple of the
    /// chunk size, a chunk long), for [`StreamCheck::take_chunk_sums`]: a restore compares
    /// them with the backup's chunk digests instead of reading the image back. At most
    /// `limit` are kept between two takes; past that they are all dropped, and the next
    /// take says so.
    pub fn keeping_chunk_sums(mut self, limit: usize) -> StreamCheck {
        self.kept = Some(Kept { sums: Vec::new(), limit, dropped: false });
        self
    }

    /// The whole chunks' digests kept since the last call, in the order added; `Dropped`
    /// if more than the limit were added (they are gone; keeping starts over).
    pub fn take_chunk_sums(&mut self) -> Result<Vec<(u64, [u8; 32])>, Dropped> {
        let Some(kept) = &mut self.kept else { return Ok(Vec::new()) };
        let sums = std::mem::take(&mut kept.sums);
        if std::mem::take(&mut kept.dropped) {
            return Err(Dropped { limit: kept.limit });
        }
        Ok(sums)
    }

    /// Add a piece's digest in its place, and keep it if it is of a whole chunk.
    fn piece(&mut self, start: u64, len: u64, digest: &[u8]) {
        self.outer.update(digest);
        if let Some(kept) = &mut self.kept {
            if start % self.chunk == 0 && len == self.chunk && !kept.dropped {
                if kept.sums.len() >= kept.limit {
                    kept.sums = Vec::new();
                    kept.dropped = true;
                } else if let Ok(d) = <[u8; 32]>::try_from(digest) {
                    kept.sums.push((start, d));
                }
            }
        }
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
                let digest = open.hash.finalize();
                self.piece(open.start, open.end - open.start, &digest);
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
                self.open = Some(Open { start: at, next: at + rest.len() as u64, end, hash });
                return;
            }
            // `whole <= rest.len()`, so it is a usize.
            let (piece, tail) = rest.split_at(whole as usize);
            match known.and_then(|k| k.of(at, whole)) {
                Some(sum) => self.piece(at, whole, sum),
                None => self.piece(at, whole, &Sha256::digest(piece)),
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

    /// Feed [`records`] to `check`, each record's data in parts of `split` bytes.
    fn feed_split(check: &mut StreamCheck, split: usize) {
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
    }

    #[test]
    fn however_the_data_is_split_the_check_is_the_definitions() {
        let want = by_definition(&records());
        for split in [1usize, 7, 100, 4095, 4096, 5000, 1 << 20] {
            let mut check = StreamCheck::chunked(C);
            feed_split(&mut check, split);
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
    fn whole_chunks_are_kept_when_asked_however_the_data_is_split() {
        for split in [1000usize, 4096, 1 << 20] {
            let mut check = StreamCheck::chunked(C).keeping_chunk_sums(100);
            feed_split(&mut check, split);
            // Whole chunks: of the first record (100 + 3C + 7 bytes from 100) chunks 1 and 2;
            // of the second (2C from 5C) chunks 5 and 6; the third is 10 bytes.
            let kept = check.take_chunk_sums().unwrap();
            let offsets: Vec<u64> = kept.iter().map(|(o, _)| *o).collect();
            assert_eq!(offsets, [C, 2 * C, 5 * C, 6 * C], "split {split}");
            let second = data(2 * C as usize, 2);
            assert_eq!(kept[2].1, <[u8; 32]>::from(Sha256::digest(&second[..C as usize])));
            assert_eq!(check.take_chunk_sums(), Ok(Vec::new()), "taken");
        }
        let mut check = StreamCheck::chunked(C).keeping_chunk_sums(3);
        check.update_data(0, &data(5 * C as usize, 1), None);
        assert_eq!(check.take_chunk_sums(), Err(Dropped { limit: 3 }), "five kept of three");
        check.update_data(0, &data(2 * C as usize, 1), None);
        assert_eq!(check.take_chunk_sums().map(|s| s.len()), Ok(2), "keeping starts over");
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
