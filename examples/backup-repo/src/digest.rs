//! The image checksum of a backup, kept so that an incremental backup costs what changed.
//!
//! A plain sha256 of the whole image would make every incremental backup read the whole
//! image. Instead the image is cut into [`CHUNK`]-byte chunks (the last may be shorter);
//! [`ChunkSums`] keeps each chunk's sha256, and the image digest is the sha256 of those
//! digests, concatenated in order. An incremental backup starts from its base's sums,
//! re-reads only the chunks its diff touches, and so knows the new digest. Holes and
//! zeroed chunks are never read: their digest is the digest of zeroes.
//!
//! The digest of an exported image, with standard tools:
//! `rbd export IMG@SNAP - | python3 -c 'import sys,hashlib; h=hashlib.sha256()
//! [h.update(hashlib.sha256(c).digest()) for c in iter(lambda: sys.stdin.buffer.read(65536), b"")]
//! print(h.hexdigest())'`

use rbd_wasm_guest::{Extent, Image, PendingReads, Range};
use sha2::{Digest, Sha256};

use crate::{Result, READ_PIECE};

/// Bytes per chunk: librbd's discard granularity, and small enough that the edges of the
/// extents an incremental backup reads add little.
pub const CHUNK: u64 = 64 << 10;

type Sum = [u8; 32];

const MAGIC: &[u8] = b"rbd-wasm chunk sums v1\n";

/// The sha256 of every chunk of an image of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSums {
    size: u64,
    sums: Vec<Sum>,
}

fn sha(bytes: &[u8]) -> Sum {
    Sha256::digest(bytes).into()
}

fn zero_sum(len: u64) -> Sum {
    static FULL: std::sync::OnceLock<Sum> = std::sync::OnceLock::new();
    if len == CHUNK {
        *FULL.get_or_init(|| sha(&[0u8; CHUNK as usize]))
    } else {
        sha(&vec![0u8; len as usize])
    }
}

impl ChunkSums {
    /// An image of `size` bytes of zeroes.
    pub fn zeroed(size: u64) -> Self {
        let mut sums = ChunkSums { size: 0, sums: Vec::new() };
        sums.resize(size);
        sums
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn chunk_len(&self, index: u64) -> u64 {
        CHUNK.min(self.size - index * CHUNK)
    }

    /// The image was resized: chunks past the end go and new ones are zeroes. Returns the
    /// chunk holding the smaller of the two ends if that end falls inside it: its length
    /// changed, so the caller must re-read it.
    pub fn resize(&mut self, size: u64) -> Option<u64> {
        let old = self.size;
        self.size = size;
        let count = size.div_ceil(CHUNK) as usize;
        self.sums.truncate(count);
        while self.sums.len() < count {
            let index = self.sums.len() as u64;
            self.sums.push(zero_sum(self.chunk_len(index)));
        }
        // The chunk holding the smaller end changed length (or content, when shrunk).
        let end = old.min(size);
        (old != size && end % CHUNK != 0).then_some(end / CHUNK)
    }

    /// Chunk `index` now holds `data` (its whole length).
    pub fn set(&mut self, index: u64, data: &[u8]) {
        self.set_digest(index, sha(data));
    }

    /// Chunk `index` now holds bytes of this digest.
    pub fn set_digest(&mut self, index: u64, digest: Sum) {
        if let Some(sum) = self.sums.get_mut(index as usize) {
            *sum = digest;
        }
    }

    /// Chunk `index` now reads as zeroes.
    pub fn set_zero(&mut self, index: u64) {
        let len = self.chunk_len(index);
        if let Some(sum) = self.sums.get_mut(index as usize) {
            *sum = zero_sum(len);
        }
    }

    /// The image digest: sha256 of the chunk digests.
    pub fn image_digest(&self) -> String {
        let mut h = Sha256::new();
        for sum in &self.sums {
            h.update(sum);
        }
        hex::encode(h.finalize())
    }

    /// Offsets of the chunks that differ from `other`'s (sizes must match).
    pub fn differing_chunks(&self, other: &ChunkSums) -> Vec<u64> {
        self.sums.iter().zip(&other.sums).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i as u64 * CHUNK).collect()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAGIC.len() + 16 + self.sums.len() * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&CHUNK.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        for sum in &self.sums {
            out.extend_from_slice(sum);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let rest = bytes.strip_prefix(MAGIC).ok_or("not a chunk sums file")?;
        let (head, body) = rest.split_at_checked(16).ok_or("a chunk sums file cut short")?;
        let chunk = u64::from_le_bytes(head[..8].try_into()?);
        let size = u64::from_le_bytes(head[8..].try_into()?);
        if chunk != CHUNK {
            return Err(format!("chunk sums of {chunk}-byte chunks; this job uses {CHUNK}").into());
        }
        if body.len() as u64 != size.div_ceil(CHUNK) * 32 {
            return Err("a chunk sums file of the wrong length".into());
        }
        let sums = body.chunks_exact(32).map(|c| c.try_into().unwrap_or([0; 32])).collect();
        Ok(ChunkSums { size, sums })
    }
}

/// The bytes of a group of chunk-aligned reads.
pub struct ReadChunks {
    buffers: Vec<(u64, Vec<u8>)>,
}

impl ReadChunks {
    /// `[offset, offset + length)` as slices of the buffers, in order.
    pub fn slices(&self, offset: u64, length: u64) -> impl Iterator<Item = (u64, &[u8])> {
        let end = offset + length;
        self.buffers.iter().filter_map(move |(at, data)| {
            let (lo, hi) = (offset.max(*at), end.min(at + data.len() as u64));
            (lo < hi).then(|| (lo, &data[(lo - at) as usize..(hi - at) as usize]))
        })
    }
}

/// Most chunk bytes read for one group of extents. Two groups are in memory at most: the
/// one being written out and the next one, being read meanwhile.
const GROUP_BYTES: u64 = 32 << 20;

/// Extents gathered, and the chunks they touch that must be read.
#[derive(Default)]
struct Group {
    extents: Vec<Extent>,
    dirty: Vec<u64>,
}

/// A group whose reads are under way.
struct Started {
    extents: Vec<Extent>,
    ranges: Vec<Range>,
    reads: PendingReads,
}

/// Walks a diff of an image, reading every chunk it touches, and keeps `sums` up to date.
/// `emit` sees each extent in order with the chunks read for its group (a data extent's
/// bytes are in them). The next group's reads are started before a group is emitted, so
/// the cluster reads while the job writes; the host hashes the chunks as it reads them.
pub fn walk_diff(
    image: &Image,
    from: Option<&str>,
    sums: &mut ChunkSums,
    mut emit: impl FnMut(&Extent, &ReadChunks) -> Result<()>,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    let size = sums.size();
    let mut group = Group::default();
    let mut in_flight: Option<Started> = None;
    let mut iter = image.diff_iterate(0, size, from)?;
    while let Some(batch) = iter.next_batch()? {
        let mut done = 0;
        for extent in batch {
            done = extent.offset + extent.length;
            if extent.length == 0 {
                continue;
            }
            let first = extent.offset / CHUNK;
            let last = (extent.offset + extent.length - 1) / CHUNK;
            for index in first..=last {
                let (lo, hi) = (index * CHUNK, (index * CHUNK + CHUNK).min(size));
                let whole = extent.offset <= lo && extent.offset + extent.length >= hi;
                if extent.exists || !whole {
                    if group.dirty.last() != Some(&index) {
                        group.dirty.push(index);
                    }
                } else {
                    // Wholly zeroed: no other extent touches this chunk.
                    sums.set_zero(index);
                }
            }
            group.extents.push(extent);
            if group.dirty.len() as u64 * CHUNK >= GROUP_BYTES {
                let next = start(image, std::mem::take(&mut group), size)?;
                if let Some(previous) = in_flight.replace(next) {
                    finish(previous, sums, &mut emit)?;
                }
            }
        }
        progress(done);
    }
    let last = start(image, group, size)?;
    if let Some(previous) = in_flight.replace(last) {
        finish(previous, sums, &mut emit)?;
    }
    if let Some(last) = in_flight {
        finish(last, sums, &mut emit)?;
    }
    progress(size);
    Ok(())
}

/// Re-read chunk `index` of `image` into `sums` (a chunk whose length changed on resize).
pub fn reread_chunk(image: &Image, sums: &mut ChunkSums, index: u64) -> Result<()> {
    let group = Group { extents: Vec::new(), dirty: vec![index] };
    finish(start(image, group, sums.size())?, sums, &mut |_: &Extent, _: &ReadChunks| Ok(()))
}

/// Start reading a group's dirty chunks, in contiguous runs cut into pieces.
fn start(image: &Image, mut group: Group, size: u64) -> Result<Started> {
    group.dirty.sort_unstable();
    group.dirty.dedup();
    let mut ranges: Vec<Range> = Vec::new();
    for &index in &group.dirty {
        let (lo, hi) = (index * CHUNK, (index * CHUNK + CHUNK).min(size));
        match ranges.last_mut() {
            Some(r) if r.offset + r.length == lo && r.length + (hi - lo) <= READ_PIECE => r.length += hi - lo,
            _ => ranges.push(Range { offset: lo, length: hi - lo }),
        }
    }
    let reads = image.start_reads(&ranges, Some(CHUNK as u32))?;
    Ok(Started { extents: group.extents, ranges, reads })
}

/// Take a group's reads: record the chunk digests the host computed, then emit its extents.
fn finish(started: Started, sums: &mut ChunkSums, emit: &mut impl FnMut(&Extent, &ReadChunks) -> Result<()>) -> Result<()> {
    let results = started.reads.wait()?;
    let mut buffers = Vec::with_capacity(results.len());
    for (range, result) in started.ranges.iter().zip(results) {
        if result.data.len() as u64 != range.length {
            return Err(format!("a short read at {}: {} of {} bytes", range.offset, result.data.len(), range.length).into());
        }
        for (i, digest) in result.chunk_sha256.chunks_exact(32).enumerate() {
            let mut d = [0u8; 32];
            d.copy_from_slice(digest);
            sums.set_digest(range.offset / CHUNK + i as u64, d);
        }
        buffers.push((range.offset, result.data));
    }
    let chunks = ReadChunks { buffers };
    for extent in &started.extents {
        emit(extent, &chunks)?;
    }
    Ok(())
}

/// The digest of an image as it is now: reads only what its diff from nothing says is
/// allocated.
pub fn image_chunk_sums(image: &Image) -> Result<ChunkSums> {
    let mut sums = ChunkSums::zeroed(image.size()?);
    walk_diff(image, None, &mut sums, |_, _| Ok(()), |_| {})?;
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain_digest(image: &[u8]) -> String {
        let mut h = Sha256::new();
        for chunk in image.chunks(CHUNK as usize) {
            h.update(Sha256::digest(chunk));
        }
        hex::encode(h.finalize())
    }

    #[test]
    fn sums_follow_writes_and_resizes_like_the_bytes() {
        let mut bytes = vec![0u8; 300_000];
        let mut sums = ChunkSums::zeroed(300_000);
        assert_eq!(sums.image_digest(), plain_digest(&bytes));
        bytes[70_000..70_010].copy_from_slice(b"0123456789");
        sums.set(1, &bytes[65536..131072]);
        assert_eq!(sums.image_digest(), plain_digest(&bytes));
        // Shrink into a chunk: it must be re-read.
        bytes.truncate(70_005);
        assert_eq!(sums.resize(70_005), Some(1));
        sums.set(1, &bytes[65536..]);
        assert_eq!(sums.image_digest(), plain_digest(&bytes));
        // Grow: zeroes after the old end.
        bytes.resize(200_000, 0);
        assert_eq!(sums.resize(200_000), Some(1));
        sums.set(1, &bytes[65536..131072]);
        assert_eq!(sums.image_digest(), plain_digest(&bytes));
        assert_eq!(ChunkSums::decode(&sums.encode()).unwrap(), sums);
        assert!(ChunkSums::decode(&sums.encode()[..40]).is_err());
    }
}
