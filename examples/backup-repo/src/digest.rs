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
//!
//! The sums are held in memory, 32 bytes for each 64 KiB: an image may have at most
//! [`MAX_CHUNKS`] chunks (4 TiB), so that they fit in one allocation of a wasm32 job. A
//! larger image is an error, not a truncated count.

use rbd_wasm_guest::{Extent, Image, PendingReads, Range};
use sha2::{Digest, Sha256};

use crate::{to_usize, Result, READ_PIECE};

/// Bytes per chunk: librbd's discard granularity, and small enough that the edges of the
/// extents an incremental backup reads add little.
pub const CHUNK: u64 = 64 << 10;

type Sum = [u8; 32];

const MAGIC: &[u8] = b"rbd-wasm chunk sums v1\n";
/// The magic, the chunk size and the image size.
const HEADER: u64 = MAGIC.len() as u64 + 16;

/// Most chunks an image may have: their digests, and a sums file of them, must fit in one
/// allocation of a wasm32 job (at most `i32::MAX` bytes there). Applied on every target, so
/// that native tests see what a job sees.
pub const MAX_CHUNKS: u64 = (i32::MAX as u64 - HEADER) / 32;

/// How many chunks an image of `size` bytes has, if it may have that many.
pub fn chunk_count(size: u64) -> Result<usize> {
    let count = size.div_ceil(CHUNK);
    if count > MAX_CHUNKS {
        return Err(format!(
            "an image of {size} bytes has {count} chunks of {CHUNK} bytes: their digests do not fit in \
             a job's memory (at most {MAX_CHUNKS} chunks, an image of {} bytes)",
            MAX_CHUNKS * CHUNK
        )
        .into());
    }
    to_usize(count, "a chunk count")
}

/// The bytes `[lo, hi)` of chunk `index` of an image of `size` bytes; empty past the end.
pub fn chunk_bounds(index: u64, size: u64) -> (u64, u64) {
    let lo = index.saturating_mul(CHUNK).min(size);
    (lo, lo.saturating_add(CHUNK).min(size))
}

/// The sha256 of every chunk of an image of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSums {
    size: u64,
    sums: Vec<Sum>,
}

fn sha(bytes: &[u8]) -> Sum {
    Sha256::digest(bytes).into()
}

/// The digest of `len` zeroes, `len` at most [`CHUNK`].
fn zero_sum(len: u64) -> Sum {
    static FULL: std::sync::OnceLock<Sum> = std::sync::OnceLock::new();
    static ZEROES: [u8; CHUNK as usize] = [0; CHUNK as usize];
    if len >= CHUNK {
        *FULL.get_or_init(|| sha(&ZEROES))
    } else {
        // `len < CHUNK`, so it is a small usize on every target.
        sha(&ZEROES[..len as usize])
    }
}

impl ChunkSums {
    /// An image of `size` bytes of zeroes; an error if it has more than [`MAX_CHUNKS`]
    /// chunks or their digests cannot be allocated.
    pub fn zeroed(size: u64) -> Result<Self> {
        let mut sums = ChunkSums { size: 0, sums: Vec::new() };
        sums.resize(size)?;
        Ok(sums)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The length of chunk `index` (zero past the end).
    fn chunk_len(&self, index: u64) -> u64 {
        let (lo, hi) = chunk_bounds(index, self.size);
        hi - lo
    }

    /// The slot of chunk `index`, if the image has that chunk.
    fn slot(&mut self, index: u64) -> Option<&mut Sum> {
        self.sums.get_mut(usize::try_from(index).ok()?)
    }

    /// The image was resized: chunks past the end go and new ones are zeroes. Returns the
    /// chunk holding the smaller of the two ends if that end falls inside it: its length
    /// changed, so the caller must re-read it. An error (and nothing changed) if the new
    /// size has more than [`MAX_CHUNKS`] chunks or their digests cannot be allocated.
    pub fn resize(&mut self, size: u64) -> Result<Option<u64>> {
        let count = chunk_count(size)?;
        if let Some(more) = count.checked_sub(self.sums.len()) {
            self.sums
                .try_reserve_exact(more)
                .map_err(|e| format!("the digests of the {count} chunks of a {size}-byte image: {e}"))?;
        }
        let old = self.size;
        self.size = size;
        self.sums.truncate(count);
        while self.sums.len() < count {
            let index = self.sums.len() as u64;
            self.sums.push(zero_sum(self.chunk_len(index)));
        }
        // The chunk holding the smaller end changed length (or content, when shrunk).
        let end = old.min(size);
        Ok((old != size && end % CHUNK != 0).then_some(end / CHUNK))
    }

    /// Chunk `index` now holds `data` (its whole length).
    pub fn set(&mut self, index: u64, data: &[u8]) {
        self.set_digest(index, sha(data));
    }

    /// Chunk `index` now holds bytes of this digest.
    pub fn set_digest(&mut self, index: u64, digest: Sum) {
        if let Some(sum) = self.slot(index) {
            *sum = digest;
        }
    }

    /// Chunk `index` now reads as zeroes.
    pub fn set_zero(&mut self, index: u64) {
        let len = self.chunk_len(index);
        if let Some(sum) = self.slot(index) {
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
        // A usize always fits in a u64, and index * CHUNK is below the image size.
        self.sums.iter().zip(&other.sums).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i as u64 * CHUNK).collect()
    }

    /// The length of the sums file of an image of `size` bytes.
    pub fn encoded_len(size: u64) -> Result<u64> {
        Ok(HEADER + chunk_count(size)? as u64 * 32)
    }

    pub fn encode(&self) -> Vec<u8> {
        // At most HEADER + MAX_CHUNKS * 32 bytes, which fits a wasm32 usize.
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
        let count = chunk_count(size)?;
        if body.len() as u64 != count as u64 * 32 {
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
        let end = offset.saturating_add(length);
        self.buffers.iter().filter_map(move |(at, data)| {
            let (lo, hi) = (offset.max(*at), end.min(at.saturating_add(data.len() as u64)));
            // Both within `data`, whose length is a usize.
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
            let end = extent.offset.checked_add(extent.length).filter(|&end| end <= size).ok_or_else(|| {
                format!("the diff has an extent {}+{} past the image's end ({size})", extent.offset, extent.length)
            })?;
            done = end;
            if extent.length == 0 {
                continue;
            }
            let first = extent.offset / CHUNK;
            let last = (end - 1) / CHUNK;
            for index in first..=last {
                let (lo, hi) = chunk_bounds(index, size);
                let whole = extent.offset <= lo && end >= hi;
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
        let (lo, hi) = chunk_bounds(index, size);
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
    let mut sums = ChunkSums::zeroed(image.size()?)?;
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
        let mut sums = ChunkSums::zeroed(300_000).unwrap();
        assert_eq!(sums.image_digest(), plain_digest(&bytes));
        bytes[70_000..70_010].copy_from_slice(b"0123456789");
        sums.set(1, &bytes[65536..131072]);
        assert_eq!(sums.image_digest(), plain_digest(&bytes));
        // Shrink into a chunk: it must be re-read.
        bytes.truncate(70_005);
        assert_eq!(sums.resize(70_005).unwrap(), Some(1));
        sums.set(1, &bytes[65536..]);
        assert_eq!(sums.image_digest(), plain_digest(&bytes));
        // Grow: zeroes after the old end.
        bytes.resize(200_000, 0);
        assert_eq!(sums.resize(200_000).unwrap(), Some(1));
        sums.set(1, &bytes[65536..131072]);
        assert_eq!(sums.image_digest(), plain_digest(&bytes));
        assert_eq!(ChunkSums::decode(&sums.encode()).unwrap(), sums);
        assert!(ChunkSums::decode(&sums.encode()[..40]).is_err());
    }

    const TIB: u64 = 1 << 40;

    fn error<T: std::fmt::Debug>(result: Result<T>) -> String {
        result.expect_err("no error").to_string()
    }

    #[test]
    fn a_300_tib_image_is_refused_before_its_digests_are_allocated() {
        // 5 033 164 800 chunks: more than a wasm32 usize holds, and 150 GiB of digests.
        let e = error(ChunkSums::zeroed(300 * TIB));
        assert!(e.contains("an image of 329853488332800 bytes has 5033164800 chunks") && e.contains("do not fit"), "{e}");
        assert!(error(ChunkSums::encoded_len(300 * TIB)).contains("do not fit"));
        assert!(error(ChunkSums::zeroed(u64::MAX)).contains("do not fit"));
        // Growing to it leaves the sums as they were.
        let mut sums = ChunkSums::zeroed(1 << 20).unwrap();
        let before = sums.clone();
        assert!(sums.resize(300 * TIB).is_err());
        assert_eq!(sums, before);
        // The limit itself, counted without allocating.
        assert_eq!(chunk_count(MAX_CHUNKS * CHUNK).unwrap() as u64, MAX_CHUNKS);
        assert!(chunk_count(MAX_CHUNKS * CHUNK + 1).is_err());
        assert!(ChunkSums::encoded_len(MAX_CHUNKS * CHUNK).unwrap() <= i32::MAX as u64);
    }

    #[test]
    fn a_sums_file_claiming_300_tib_is_refused() {
        for size in [300 * TIB, 256 * TIB, u64::MAX] {
            let mut forged = MAGIC.to_vec();
            forged.extend_from_slice(&CHUNK.to_le_bytes());
            forged.extend_from_slice(&size.to_le_bytes());
            forged.extend_from_slice(&[0; 64]);
            assert!(error(ChunkSums::decode(&forged)).contains("do not fit"), "{size}");
        }
    }

    #[test]
    fn chunk_arithmetic_at_300_tib() {
        let size = 300 * TIB + 5;
        let last = size / CHUNK;
        assert_eq!(last, 5_033_164_800);
        assert_eq!(chunk_bounds(last - 1, size), (300 * TIB - CHUNK, 300 * TIB));
        assert_eq!(chunk_bounds(last, size), (300 * TIB, size));
        // Past the end: empty, not an underflow.
        assert_eq!(chunk_bounds(last + 1, size), (size, size));
        assert_eq!(chunk_bounds(u64::MAX, size), (size, size));
        assert_eq!(chunk_bounds(u64::MAX / CHUNK, u64::MAX), (u64::MAX / CHUNK * CHUNK, u64::MAX));
        // Reads at 300 TiB are sliced by their offsets.
        let data: Vec<u8> = (0..=255).collect();
        let chunks = ReadChunks { buffers: vec![(300 * TIB, data.clone())] };
        let got: Vec<_> = chunks.slices(300 * TIB + 10, 20).collect();
        assert_eq!(got, [(300 * TIB + 10, &data[10..30])]);
        assert_eq!(chunks.slices(u64::MAX - 1, 10).count(), 0);
    }

    #[test]
    fn chunk_indices_past_the_end_change_nothing() {
        let mut sums = ChunkSums::zeroed(1 << 20).unwrap();
        let before = sums.clone();
        // 2^32 + 1 would be chunk 1 if truncated to a wasm32 usize.
        for index in [(1u64 << 32) + 1, 16, 300 * TIB / CHUNK, u64::MAX] {
            sums.set_digest(index, [7; 32]);
            sums.set_zero(index);
            assert_eq!(sums, before, "{index}");
        }
    }
}
