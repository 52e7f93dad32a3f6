//! The image digest of a backup, kept so that a backup costs what its data costs: neither
//! the digest nor its files grow with the image's size, only with what is written in it.
//!
//! The image is cut into [`CHUNK`]-byte chunks (the last may be shorter). A chunk of
//! zeroes (a hole, or written zeroes) counts as nothing; for every other chunk, in order,
//! its index (8 bytes, little-endian) and the sha256 of its bytes are hashed, and last the
//! image's size (8 bytes, little-endian): the image digest is that sha256. So a 64 TiB
//! image holding 1 GiB costs the digests of 1 GiB.
//!
//! The digest of an exported image, with standard tools:
//!
//! ```text
//! rbd export IMG@SNAP - | python3 -c 'import sys,hashlib
//! h=hashlib.sha256(); n=i=0
//! for c in iter(lambda: sys.stdin.buffer.read(65536), b""):
//!     if c.count(0) != len(c): h.update(i.to_bytes(8,"little")+hashlib.sha256(c).digest())
//!     i+=1; n+=len(c)
//! h.update(n.to_bytes(8,"little")); print(h.hexdigest())'
//! ```
//!
//! # Sums files
//!
//! A backup keeps what changed in `N.sums`: a header (magic, chunk size, image size, and
//! the number of the backup whose sums it changes, 0 for none), then records in increasing
//! chunk order, each 48 bytes: first chunk (u64 LE), chunk count (u64 LE), sha256. A data
//! record is one chunk and its digest; a zero run (a digest of 32 zero bytes) is `count`
//! chunks that read as zeroes. A full backup's file has only data records. The chunks of
//! a backup are its own records over its base's (and so on down to a file with no base),
//! cut to each newer file's size: [`Layers`] merges them as a stream, so nothing is held in
//! memory but one record per file. Every [`MAX_LAYERS`] backups a file is written whole
//! again (with no base), so the chain read for a digest stays short.

use std::io::{Read, Write};

use rbd_wasm_guest::{Extent, Image, PendingReads, Range};
use sha2::{Digest, Sha256};

use crate::{Result, READ_PIECE};

/// Bytes per chunk: librbd's discard granularity, and small enough that the edges of the
/// extents an incremental backup reads add little.
pub const CHUNK: u64 = 64 << 10;

/// A chunk's sha256.
pub type Sum = [u8; 32];

const MAGIC: &[u8] = b"rbd-wasm chunk sums v2\n";
/// The magic, the chunk size, the image size and the base's number.
const HEADER: usize = MAGIC.len() + 24;
const RECORD: usize = 48;
/// The digest field of a zero run.
const ZERO_RUN: Sum = [0; 32];

/// Most sums files a digest is read from: a backup whose base's chain is this long writes
/// its sums whole.
pub const MAX_LAYERS: usize = 32;

/// How many chunks an image of `size` bytes has.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK)
}

/// The bytes `[lo, hi)` of chunk `index` of an image of `size` bytes; empty past the end.
pub fn chunk_bounds(index: u64, size: u64) -> (u64, u64) {
    let lo = index.saturating_mul(CHUNK).min(size);
    (lo, lo.saturating_add(CHUNK).min(size))
}

/// The digest of `len` zeroes, `len` at most [`CHUNK`].
pub fn zero_sum(len: u64) -> Sum {
    static FULL: std::sync::OnceLock<Sum> = std::sync::OnceLock::new();
    static ZEROES: [u8; CHUNK as usize] = [0; CHUNK as usize];
    if len >= CHUNK {
        *FULL.get_or_init(|| Sha256::digest(ZEROES).into())
    } else {
        // `len < CHUNK`, so it is a small usize on every target.
        Sha256::digest(&ZEROES[..len as usize]).into()
    }
}

/// What a backup knows of some chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Chunk `index` holds bytes of this digest, not all zeroes.
    Data { index: u64, sum: Sum },
    /// `count` chunks from `first` read as zeroes.
    Zero { first: u64, count: u64 },
}

impl Change {
    pub fn first(&self) -> u64 {
        match *self {
            Change::Data { index, .. } => index,
            Change::Zero { first, .. } => first,
        }
    }

    /// One past its last chunk.
    pub fn end(&self) -> u64 {
        match *self {
            Change::Data { index, .. } => index.saturating_add(1),
            Change::Zero { first, count } => first.saturating_add(count),
        }
    }
}

/// The image digest, fed the data chunks in order.
pub struct ImageDigest(Sha256);

impl Default for ImageDigest {
    fn default() -> Self {
        ImageDigest(Sha256::new())
    }
}

impl ImageDigest {
    pub fn add(&mut self, index: u64, sum: &Sum) {
        self.0.update(index.to_le_bytes());
        self.0.update(sum);
    }

    pub fn finish(mut self, size: u64) -> String {
        self.0.update(size.to_le_bytes());
        hex::encode(self.0.finalize())
    }
}

/// Writes a sums file as its records come, in chunk order; adjacent zero runs are joined.
pub struct SumsWriter<W: Write> {
    out: W,
    hash: Sha256,
    bytes: u64,
    size: u64,
    /// The first chunk the next record may name.
    next: u64,
    zero: Option<(u64, u64)>,
}

impl<W: Write> SumsWriter<W> {
    /// The sums of an image of `size` bytes, changing those of backup `base` (none: whole).
    pub fn new(out: W, size: u64, base: Option<u64>) -> Result<Self> {
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&CHUNK.to_le_bytes());
        header.extend_from_slice(&size.to_le_bytes());
        header.extend_from_slice(&base.unwrap_or(0).to_le_bytes());
        let mut writer = SumsWriter { out, hash: Sha256::new(), bytes: 0, size, next: 0, zero: None };
        writer.put(&header)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.hash.update(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    fn record(&mut self, first: u64, count: u64, sum: &Sum) -> Result<()> {
        let mut r = [0u8; RECORD];
        r[..8].copy_from_slice(&first.to_le_bytes());
        r[8..16].copy_from_slice(&count.to_le_bytes());
        r[16..].copy_from_slice(sum);
        self.put(&r)
    }

    fn flush_zero(&mut self) -> Result<()> {
        if let Some((first, count)) = self.zero.take() {
            self.record(first, count, &ZERO_RUN)?;
        }
        Ok(())
    }

    pub fn change(&mut self, change: Change) -> Result<()> {
        let (first, end) = (change.first(), change.end());
        if first < self.next || end > chunk_count(self.size) || end <= first {
            return Err(format!("chunk sums out of order: chunks {first}..{end} after {}", self.next).into());
        }
        self.next = end;
        match change {
            Change::Data { index, sum } => {
                self.flush_zero()?;
                self.record(index, 1, &sum)
            }
            Change::Zero { first, count } => {
                match &mut self.zero {
                    Some((at, n)) if *at + *n == first => *n += count,
                    _ => {
                        self.flush_zero()?;
                        self.zero = Some((first, count));
                    }
                }
                Ok(())
            }
        }
    }

    /// The writer, the file's sha256 and its length.
    pub fn finish(mut self) -> Result<(W, String, u64)> {
        self.flush_zero()?;
        self.out.flush()?;
        Ok((self.out, hex::encode(self.hash.finalize()), self.bytes))
    }
}

/// Reads a sums file's records, checking their order and bounds.
pub struct SumsReader<R: Read> {
    input: R,
    size: u64,
    base: Option<u64>,
    next: u64,
}

impl<R: Read> SumsReader<R> {
    pub fn new(mut input: R) -> Result<Self> {
        let mut header = [0u8; HEADER];
        input.read_exact(&mut header).map_err(|_| "not a chunk sums file (cut short)")?;
        let rest = header.strip_prefix(MAGIC).ok_or("not a chunk sums file of this version")?;
        let word = |i: usize| u64::from_le_bytes(rest[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        if word(0) != CHUNK {
            return Err(format!("chunk sums of {}-byte chunks; this job uses {CHUNK}", word(0)).into());
        }
        Ok(SumsReader { input, size: word(1), base: Some(word(2)).filter(|&n| n != 0), next: 0 })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The backup whose sums these change; none for whole sums.
    pub fn base(&self) -> Option<u64> {
        self.base
    }

    pub fn next_change(&mut self) -> Result<Option<Change>> {
        let mut r = [0u8; RECORD];
        let mut got = 0;
        while got < RECORD {
            match self.input.read(&mut r[got..])? {
                0 if got == 0 => return Ok(None),
                0 => return Err("a chunk sums file cut inside a record".into()),
                n => got += n,
            }
        }
        let first = u64::from_le_bytes(r[..8].try_into()?);
        let count = u64::from_le_bytes(r[8..16].try_into()?);
        let sum: Sum = r[16..].try_into()?;
        let change = if sum == ZERO_RUN { Change::Zero { first, count } } else { Change::Data { index: first, sum } };
        let end = first.checked_add(count).ok_or("a chunk sums record past 2^64")?;
        if count == 0 || (sum != ZERO_RUN && count != 1) || first < self.next || end > chunk_count(self.size) {
            return Err(format!("a damaged chunk sums record: chunks {first}+{count} after {}", self.next).into());
        }
        self.next = end;
        Ok(Some(change))
    }
}

/// The data chunks of a backup, from its sums file and its bases' (newest first), merged
/// in chunk order: a chunk is what the newest file that names it says, and nothing of an
/// older file counts past a newer one's size.
pub struct Layers<R: Read> {
    layers: Vec<Layer<R>>,
    /// The next chunk to decide.
    pos: u64,
}

struct Layer<R: Read> {
    reader: SumsReader<R>,
    current: Option<Change>,
    /// The fewest chunks of this file and every newer one.
    limit: u64,
}

impl<R: Read> Layers<R> {
    /// `readers` newest first.
    pub fn new(readers: Vec<SumsReader<R>>) -> Result<Self> {
        let mut limit = u64::MAX;
        let mut layers = Vec::with_capacity(readers.len());
        for mut reader in readers {
            limit = limit.min(chunk_count(reader.size()));
            let current = reader.next_change()?;
            layers.push(Layer { reader, current, limit });
        }
        Ok(Layers { layers, pos: 0 })
    }

    /// The next data chunk and its digest, in order.
    pub fn next_data(&mut self) -> Result<Option<(u64, Sum)>> {
        loop {
            // Every layer's record at or past `pos`, within its limit.
            let mut start = u64::MAX;
            for layer in &mut self.layers {
                while let Some(c) = layer.current {
                    // Records are in order: nothing at or past the limit counts, now or later.
                    if c.first() >= layer.limit || self.pos >= layer.limit {
                        layer.current = None;
                    } else if c.end() <= self.pos {
                        layer.current = layer.reader.next_change()?;
                    } else {
                        start = start.min(c.first().max(self.pos));
                        break;
                    }
                }
            }
            if start == u64::MAX {
                return Ok(None);
            }
            self.pos = start;
            // The newest layer naming `pos` decides it; newer layers' records all start later.
            let mut newer_start = u64::MAX;
            for layer in &self.layers {
                let Some(c) = layer.current else { continue };
                if c.first() > self.pos {
                    newer_start = newer_start.min(c.first());
                    continue;
                }
                match c {
                    Change::Data { index, sum } => {
                        self.pos = index + 1;
                        return Ok(Some((index, sum)));
                    }
                    Change::Zero { .. } => {
                        self.pos = c.end().min(newer_start).min(layer.limit);
                        break;
                    }
                }
            }
        }
    }

    /// The image digest of an image of `size` bytes (the newest file's size).
    pub fn digest(mut self, size: u64) -> Result<String> {
        let mut digest = ImageDigest::default();
        while let Some((index, sum)) = self.next_data()? {
            digest.add(index, &sum);
        }
        Ok(digest.finish(size))
    }
}

/// What becomes of each group of extents and the chunks read for it: written out by the
/// host (a backup's stream, [`crate::stream::PlannedStream`]), or only hashed
/// ([`SumsOnly`]). The bytes read never need to enter the job.
pub trait GroupSink {
    /// An extent of the group, in order, before the group's reads are taken. `ranges` are
    /// the group's reads, in order (a data extent's bytes are in them).
    fn extent(&mut self, extent: &Extent, ranges: &[Range]) -> Result<()>;
    /// Take the group's reads, after its extents: each range's chunk digests, in order.
    fn take(&mut self, reads: PendingReads) -> Result<Vec<Vec<u8>>>;
}

/// A sink that keeps only the chunk digests (the bytes stay in the host).
pub struct SumsOnly;

impl GroupSink for SumsOnly {
    fn extent(&mut self, _: &Extent, _: &[Range]) -> Result<()> {
        Ok(())
    }
    fn take(&mut self, reads: PendingReads) -> Result<Vec<Vec<u8>>> {
        Ok(reads.wait_sums()?)
    }
}

/// `[offset, offset + length)` cut where the group's reads (in order) are cut: the pieces
/// of it that each range holds, in order; an error if the reads do not hold all of it, so
/// that a data record is never written short.
pub fn covering(ranges: &[Range], offset: u64, length: u64) -> Result<Vec<Range>> {
    let end = offset.saturating_add(length);
    let mut at = offset;
    let mut pieces = Vec::new();
    let first = ranges.partition_point(|r| r.offset.saturating_add(r.length) <= offset);
    for r in &ranges[first..] {
        if at >= end || r.offset > at {
            break;
        }
        let hi = end.min(r.offset.saturating_add(r.length));
        pieces.push(Range { offset: at, length: hi - at });
        at = hi;
    }
    if at != end {
        return Err(format!("the chunks read for the extent {offset}+{length} hold only up to {at}").into());
    }
    Ok(pieces)
}

/// Most chunk bytes read for one group of extents. Two groups are in memory at most: the
/// one being written out and the next one, being read meanwhile.
const GROUP_BYTES: u64 = 32 << 20;

/// Most extents in one group: a diff of many small discards reads nothing, but its extents
/// are held until the group is emitted; and the host writes a group's stream with one
/// call of at most 65536 pieces (a header and a few ranges for each data extent).
const GROUP_EXTENTS: usize = 1 << 14;

/// Extents gathered, the chunks they touch that must be read, and the chunks they zero
/// whole (runs), each in order.
#[derive(Default)]
struct Group {
    extents: Vec<Extent>,
    dirty: Vec<u64>,
    zero: Vec<(u64, u64)>,
}

/// A group whose reads are under way.
struct Started {
    extents: Vec<Extent>,
    dirty: Vec<u64>,
    zero: Vec<(u64, u64)>,
    ranges: Vec<Range>,
    reads: PendingReads,
}

/// Walks the diff of `image` (of `size` bytes) from snapshot `from`, reading every chunk it
/// touches, plus chunk `also` if given (one whose length changed on resize). `changes`
/// sees what became of each chunk the diff names, in chunk order; `sink` sees each extent
/// in order, then takes the reads of its group. The next group's reads are started before
/// a group is taken, so the cluster reads while the host writes; the host hashes the
/// chunks as it reads them. Memory: two groups, in the host.
pub fn walk_diff(
    image: &Image,
    from: Option<&str>,
    size: u64,
    mut also: Option<u64>,
    mut changes: impl FnMut(Change) -> Result<()>,
    sink: &mut impl GroupSink,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    let mut group = Group::default();
    let mut in_flight: Option<Started> = None;
    // A chunk shared by two extents is read once per group: when the extents fall in two
    // groups, both read it (each group's extents are emitted from its own reads), and its
    // change is passed on once (`Changes`).
    let mark = |group: &mut Group, index: u64| {
        if group.dirty.last().is_none_or(|&last| index > last) {
            group.dirty.push(index);
        }
    };
    let mut changes = Changes { each: &mut changes, next: 0 };
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
            if let Some(index) = also.filter(|&i| i < first) {
                mark(&mut group, index);
                also = None;
            }
            if extent.exists {
                for index in first..=last {
                    mark(&mut group, index);
                }
            } else {
                // Chunks wholly zeroed (no other extent touches them) are a run; the
                // partly zeroed ones at either edge are read.
                let whole_first = if extent.offset % CHUNK == 0 { first } else { first + 1 };
                let whole_end = if end == size || end % CHUNK == 0 { last + 1 } else { last };
                if whole_first > first || whole_first >= whole_end {
                    mark(&mut group, first);
                }
                if whole_first < whole_end {
                    if also.is_some_and(|i| i >= whole_first && i < whole_end) {
                        also = None;
                    }
                    group.zero.push((whole_first, whole_end - whole_first));
                }
                if whole_end <= last && last > first {
                    mark(&mut group, last);
                }
            }
            group.extents.push(extent);
            if group.dirty.len() as u64 * CHUNK >= GROUP_BYTES || group.extents.len() >= GROUP_EXTENTS {
                let next = start(image, std::mem::take(&mut group), size)?;
                if let Some(previous) = in_flight.replace(next) {
                    finish(previous, &mut changes, sink)?;
                }
            }
        }
        progress(done);
    }
    if let Some(index) = also {
        mark(&mut group, index);
    }
    let last = start(image, group, size)?;
    if let Some(previous) = in_flight.replace(last) {
        finish(previous, &mut changes, sink)?;
    }
    if let Some(last) = in_flight {
        finish(last, &mut changes, sink)?;
    }
    progress(size);
    Ok(())
}

/// Passes each chunk's change on once, in order: a chunk read by two groups is passed on
/// by the first.
struct Changes<'a, F: FnMut(Change) -> Result<()>> {
    each: &'a mut F,
    /// The first chunk not yet passed on.
    next: u64,
}

impl<F: FnMut(Change) -> Result<()>> Changes<'_, F> {
    fn pass(&mut self, change: Change) -> Result<()> {
        if change.first() < self.next {
            return Ok(());
        }
        self.next = change.end();
        (self.each)(change)
    }
}

/// Start reading a group's dirty chunks, in contiguous runs cut into pieces.
fn start(image: &Image, group: Group, size: u64) -> Result<Started> {
    let mut ranges: Vec<Range> = Vec::new();
    for &index in &group.dirty {
        let (lo, hi) = chunk_bounds(index, size);
        match ranges.last_mut() {
            Some(r) if r.offset + r.length == lo && r.length + (hi - lo) <= READ_PIECE => r.length += hi - lo,
            _ => ranges.push(Range { offset: lo, length: hi - lo }),
        }
    }
    let reads = image.start_reads(&ranges, Some(CHUNK as u32))?;
    Ok(Started { extents: group.extents, dirty: group.dirty, zero: group.zero, ranges, reads })
}

/// Take a group's reads: hand its extents and reads to the sink, then pass on what became
/// of its chunks (the digests the host computed, a chunk of zeroes as a zero run) merged in
/// chunk order with its zero runs.
fn finish<F: FnMut(Change) -> Result<()>>(
    started: Started,
    changes: &mut Changes<'_, F>,
    sink: &mut impl GroupSink,
) -> Result<()> {
    for extent in &started.extents {
        sink.extent(extent, &started.ranges)?;
    }
    let digests = sink.take(started.reads)?;
    if digests.len() != started.ranges.len() {
        return Err(format!("the host answered {} reads of {}", digests.len(), started.ranges.len()).into());
    }
    let mut sums = Vec::with_capacity(started.dirty.len());
    for (range, digests) in started.ranges.iter().zip(digests) {
        let end = range.offset + range.length;
        if digests.len() as u64 != range.length.div_ceil(CHUNK) * 32 {
            return Err(format!("a short read at {}: {} chunk digests for {} bytes", range.offset, digests.len() / 32, range.length).into());
        }
        for (i, digest) in digests.chunks_exact(32).enumerate() {
            let index = range.offset / CHUNK + i as u64;
            let sum: Sum = digest.try_into()?;
            let (lo, hi) = chunk_bounds(index, end);
            sums.push(if sum == zero_sum(hi - lo) { Change::Zero { first: index, count: 1 } } else { Change::Data { index, sum } });
        }
    }
    if sums.len() != started.dirty.len() {
        return Err(format!("the host hashed {} chunks of {} read", sums.len(), started.dirty.len()).into());
    }
    let mut zero = started.zero.iter().map(|&(first, count)| Change::Zero { first, count }).peekable();
    for change in sums {
        while let Some(z) = zero.next_if(|z| z.first() < change.first()) {
            changes.pass(z)?;
        }
        changes.pass(change)?;
    }
    for z in zero {
        changes.pass(z)?;
    }
    Ok(())
}

/// The data chunks of an image as it is now, in order: reads only what its diff from
/// nothing says is allocated.
pub fn image_data_chunks(image: &Image, mut each: impl FnMut(u64, &Sum) -> Result<()>) -> Result<()> {
    let size = image.size()?;
    walk_diff(
        image,
        None,
        size,
        None,
        |change| match change {
            Change::Data { index, sum } => each(index, &sum),
            Change::Zero { .. } => Ok(()),
        },
        &mut SumsOnly,
        |_| {},
    )
}

/// The image digest of version 1, which older backup jobs recorded (`digest_version` 0):
/// the sha256 over the sha256 of every chunk, chunks of zeroes included. Kept so that their
/// backups still restore verified; it costs a hash of 32 bytes per chunk of the image.
pub fn image_digest_v1(image: &Image) -> Result<String> {
    let size = image.size()?;
    let count = chunk_count(size);
    let mut hash = Sha256::new();
    let mut next = 0u64;
    let zeroes_until = |hash: &mut Sha256, next: &mut u64, end: u64| {
        while *next < end {
            let (lo, hi) = chunk_bounds(*next, size);
            hash.update(zero_sum(hi - lo));
            *next += 1;
        }
    };
    image_data_chunks(image, |index, sum| {
        zeroes_until(&mut hash, &mut next, index);
        hash.update(sum);
        next = index + 1;
        Ok(())
    })?;
    zeroes_until(&mut hash, &mut next, count);
    Ok(hex::encode(hash.finalize()))
}

/// The image digest of an image as it is now.
pub fn image_digest(image: &Image) -> Result<String> {
    let mut digest = ImageDigest::default();
    image_data_chunks(image, |index, sum| {
        digest.add(index, sum);
        Ok(())
    })?;
    Ok(digest.finish(image.size()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest as the README's Python one-liner computes it from the image's bytes.
    fn plain_digest(image: &[u8]) -> String {
        let mut h = Sha256::new();
        for (i, chunk) in image.chunks(CHUNK as usize).enumerate() {
            if chunk.iter().any(|&b| b != 0) {
                h.update((i as u64).to_le_bytes());
                h.update(Sha256::digest(chunk));
            }
        }
        h.update((image.len() as u64).to_le_bytes());
        hex::encode(h.finalize())
    }

    /// The changes that make `before` into `after` (same length), chunk by chunk.
    fn changes(before: &[u8], after: &[u8]) -> Vec<Change> {
        let mut out = Vec::new();
        for (i, (a, b)) in before.chunks(CHUNK as usize).zip(after.chunks(CHUNK as usize)).enumerate() {
            if a != b {
                let index = i as u64;
                out.push(if b.iter().all(|&x| x == 0) {
                    Change::Zero { first: index, count: 1 }
                } else {
                    Change::Data { index, sum: Sha256::digest(b).into() }
                });
            }
        }
        out
    }

    fn file(size: u64, base: Option<u64>, changes: &[Change]) -> Vec<u8> {
        let mut w = SumsWriter::new(Vec::new(), size, base).unwrap();
        for &c in changes {
            w.change(c).unwrap();
        }
        w.finish().unwrap().0
    }

    fn digest_of(files: &[&Vec<u8>], size: u64) -> String {
        let readers = files.iter().map(|f| SumsReader::new(f.as_slice()).unwrap()).collect();
        Layers::new(readers).unwrap().digest(size).unwrap()
    }

    #[test]
    fn layered_sums_give_the_digest_of_the_bytes() {
        let size = 20 * CHUNK + 100;
        let zeroes = vec![0u8; size as usize];
        let mut v1 = zeroes.clone();
        v1[70_000..70_010].copy_from_slice(b"0123456789");
        v1[(19 * CHUNK) as usize..].fill(9);
        let full = file(size, None, &changes(&zeroes, &v1));
        assert_eq!(digest_of(&[&full], size), plain_digest(&v1));
        // Zeroes written over data, and data elsewhere.
        let mut v2 = v1.clone();
        v2[70_000..70_010].fill(0);
        v2[(5 * CHUNK) as usize..(8 * CHUNK) as usize].fill(3);
        let delta = file(size, Some(1), &changes(&v1, &v2));
        assert_eq!(digest_of(&[&delta, &full], size), plain_digest(&v2));
        // Adjacent zero runs become one record.
        let mut v3 = v2.clone();
        v3[(5 * CHUNK) as usize..(8 * CHUNK) as usize].fill(0);
        let zeroed = file(size, Some(2), &changes(&v2, &v3));
        assert_eq!(zeroed.len(), HEADER + RECORD);
        assert_eq!(digest_of(&[&zeroed, &delta, &full], size), plain_digest(&v3));
        // An all-zero image has the digest of its size alone.
        assert_eq!(digest_of(&[&file(size, None, &[])], size), plain_digest(&zeroes));
    }

    #[test]
    fn a_zero_run_in_a_newer_file_hides_only_its_own_chunks() {
        let s = |b| [b; 32];
        let base = file(10 * CHUNK, None, &(0..10).map(|i| Change::Data { index: i, sum: s(1) }).collect::<Vec<_>>());
        let mid = file(10 * CHUNK, Some(1), &[Change::Zero { first: 2, count: 6 }]);
        let top = file(10 * CHUNK, Some(2), &[Change::Data { index: 4, sum: s(2) }]);
        let readers = [&top, &mid, &base].iter().map(|f| SumsReader::new(f.as_slice()).unwrap()).collect();
        let mut layers = Layers::new(readers).unwrap();
        let mut got = Vec::new();
        while let Some((i, sum)) = layers.next_data().unwrap() {
            got.push((i, sum[0]));
        }
        assert_eq!(got, [(0, 1), (1, 1), (4, 2), (8, 1), (9, 1)]);
    }

    #[test]
    fn a_zero_run_past_a_newer_files_end_does_not_go_back() {
        // The base has a zero run across the end that a newer, shrunk file sets; a chunk
        // of the newest file is past that end.
        let s = |b| [b; 32];
        let base = file(20 * CHUNK, None, &[Change::Data { index: 1, sum: s(1) }]);
        let mid = file(20 * CHUNK, Some(1), &[Change::Zero { first: 5, count: 15 }]);
        let shrunk = file(10 * CHUNK, Some(2), &[]);
        let grown = file(20 * CHUNK, Some(3), &[Change::Data { index: 12, sum: s(2) }]);
        let readers = [&grown, &shrunk, &mid, &base].iter().map(|f| SumsReader::new(f.as_slice()).unwrap()).collect();
        let mut layers = Layers::new(readers).unwrap();
        let mut got = Vec::new();
        while let Some((i, sum)) = layers.next_data().unwrap() {
            got.push((i, sum[0]));
        }
        assert_eq!(got, [(1, 1), (12, 2)]);
    }

    #[test]
    fn out_of_order_and_damaged_records_are_refused() {
        let mut w = SumsWriter::new(Vec::new(), 10 * CHUNK, None).unwrap();
        w.change(Change::Data { index: 3, sum: [1; 32] }).unwrap();
        assert!(w.change(Change::Data { index: 3, sum: [1; 32] }).is_err());
        assert!(w.change(Change::Zero { first: 9, count: 2 }).is_err(), "past the end");
        let good = file(10 * CHUNK, None, &[Change::Data { index: 3, sum: [1; 32] }, Change::Data { index: 4, sum: [1; 32] }]);
        // Swap the two records: out of order.
        let mut swapped = good.clone();
        swapped[HEADER..HEADER + 8].copy_from_slice(&5u64.to_le_bytes());
        let mut r = SumsReader::new(swapped.as_slice()).unwrap();
        r.next_change().unwrap();
        assert!(r.next_change().is_err());
        // Cut inside a record.
        let mut r = SumsReader::new(&good[..good.len() - 1]).unwrap();
        r.next_change().unwrap();
        assert!(r.next_change().is_err());
        // Another version's file.
        assert!(SumsReader::new(&b"rbd-wasm chunk sums v1\n................"[..]).is_err());
    }

    #[test]
    fn a_64_tib_image_costs_its_data() {
        // 1 GiB of data in a 64 TiB image: 16384 records, nothing per empty chunk.
        let size = 64 << 40;
        let changes: Vec<_> = (0..16384u64).map(|i| Change::Data { index: i * 65536, sum: [7; 32] }).collect();
        let f = file(size, None, &changes);
        assert_eq!(f.len(), HEADER + 16384 * RECORD);
        assert_eq!(digest_of(&[&f], size).len(), 64);
    }

    #[test]
    fn chunk_arithmetic_at_300_tib() {
        const TIB: u64 = 1 << 40;
        let size = 300 * TIB + 5;
        let last = size / CHUNK;
        assert_eq!(chunk_bounds(last - 1, size), (300 * TIB - CHUNK, 300 * TIB));
        assert_eq!(chunk_bounds(last, size), (300 * TIB, size));
        assert_eq!(chunk_bounds(last + 1, size), (size, size));
        assert_eq!(chunk_bounds(u64::MAX, size), (size, size));
        assert_eq!(chunk_count(u64::MAX), u64::MAX / CHUNK + 1);
        let ranges = [Range { offset: 300 * TIB, length: 256 }];
        assert_eq!(covering(&ranges, 300 * TIB + 10, 20).unwrap(), [Range { offset: 300 * TIB + 10, length: 20 }]);
        assert!(covering(&ranges, u64::MAX - 1, 10).is_err());
    }

    #[test]
    fn an_extent_is_cut_where_the_reads_are_and_never_written_short() {
        let r = |offset, length| Range { offset, length };
        let ranges = [r(0, 100), r(100, 50), r(200, 10)];
        assert_eq!(covering(&ranges, 90, 40).unwrap(), [r(90, 10), r(100, 30)]);
        assert_eq!(covering(&ranges, 200, 10).unwrap(), [r(200, 10)]);
        assert!(covering(&ranges, 140, 70).is_err(), "a gap between the reads");
        assert!(covering(&ranges, 205, 10).is_err(), "past the last read");
        assert!(covering(&[], 0, 1).is_err());
    }
}
