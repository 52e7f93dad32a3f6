//! A restore checked from what it wrote: each chunk a stream changes is compared, as the
//! stream is applied, with the backup's chunk digest of it (`N.sums`), so the restored image
//! need not be read back whole.
//!
//! Why this proves the restore: the image starts empty (every chunk what the empty image
//! before the chain's full backup has). Applying stream k changes only the chunks its
//! records touch, and backup k's sums name every one of those (`digest::walk_diff` reads
//! each chunk an extent touches; a resize's boundary chunk too). So if, after stream k,
//! every chunk it touched has backup k's digest, then by induction every chunk of the image
//! has the digest of the newest backup that touched it: which is what backup N's layered
//! sums say, and those give the manifest's image digest (checked at the end).
//!
//! Where the digests come from: a chunk a write covers whole is hashed by the host on the
//! way (`sha256.chunked(.., true)`, `take-chunk-sums`: the bytes written, hashed once, as
//! the stream check needs them anyway); a chunk a zero record covers whole reads as zeroes
//! once its discard returned; a chunk touched only in part (an extent's edges, the image's
//! short last chunk, a resize's boundary) is read back, once no later record can touch it.
//! A stream whose records go backwards is not checked here: the caller reads the image back
//! whole then.

use std::io::Read;

use backup_repo::digest::{chunk_bounds, zero_sum, Change, SumsReader, Sum, CHUNK};
use backup_repo::Result;
use rbd_wasm_guest::{Image, Range};

/// What backup k's sums say a chunk holds.
#[derive(Clone, Copy, PartialEq)]
enum Expected {
    Zero,
    Data(Sum),
}

/// Chunks read back together.
const READ_BACK_BATCH: usize = 256;

pub struct Checker<R: Read> {
    sums: SumsReader<R>,
    /// Sums written whole (no base): a chunk they do not name is zeroes.
    whole_file: bool,
    /// The sums record at or after the last chunk asked about.
    current: Option<Change>,
    /// The image's size now.
    size: u64,
    /// Chunks touched in part, with what they must hold, to read back.
    pending: Vec<(u64, Expected)>,
    /// A resize's boundary chunk, not checked yet.
    boundary: Option<u64>,
    /// The last chunk checked, and whether it is pending (touched in part).
    last: Option<(u64, bool)>,
    /// The stream went backwards: nothing here proves anything any more.
    unordered: bool,
    pub compared: u64,
    pub read_back: u64,
}

impl<R: Read> Checker<R> {
    pub fn new(sums: SumsReader<R>, size: u64) -> Self {
        let whole_file = sums.base().is_none();
        Checker {
            sums,
            whole_file,
            current: None,
            size,
            pending: Vec::new(),
            boundary: None,
            last: None,
            unordered: false,
            compared: 0,
            read_back: 0,
        }
    }

    /// Whether the stream went backwards (the caller must read the image back whole).
    pub fn unordered(&self) -> bool {
        self.unordered
    }

    /// What the sums say chunk `index` holds; chunks are asked about in increasing order.
    fn expected(&mut self, index: u64) -> Result<Expected> {
        loop {
            if self.current.is_none() {
                self.current = self.sums.next_change()?;
            }
            match self.current {
                Some(c) if c.end() <= index => self.current = None,
                Some(Change::Data { index: i, sum }) if i == index => return Ok(Expected::Data(sum)),
                Some(Change::Zero { first, .. }) if first <= index => return Ok(Expected::Zero),
                _ => break,
            }
        }
        if self.whole_file {
            return Ok(Expected::Zero);
        }
        Err(format!("the backup's chunk digests do not name chunk {index}, which its stream changes").into())
    }

    /// Chunk `index` was touched again, or before one already checked: the stream is not in
    /// order if the touch cannot be a second edge of the same chunk.
    fn in_order(&mut self, index: u64, partial: bool) -> bool {
        match self.last {
            Some((last, pending)) if index < last || (index == last && !(partial && pending)) => {
                self.unordered = true;
                false
            }
            _ => !self.unordered,
        }
    }

    fn before(&mut self, index: u64) -> Result<()> {
        match self.boundary {
            Some(b) if b < index => {
                self.boundary = None;
                self.partial(b)
            }
            Some(b) if b == index => {
                self.boundary = None;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Chunk `index` holds `sum` now, hashed from the bytes written.
    fn whole(&mut self, index: u64, sum: &Sum) -> Result<()> {
        if !self.in_order(index, false) {
            return Ok(());
        }
        self.before(index)?;
        let ok = match self.expected(index)? {
            Expected::Data(want) => want == *sum,
            Expected::Zero => *sum == zero_sum(CHUNK),
        };
        if !ok {
            return Err(format!("the stream is damaged: chunk {index} (at {}) as written does not have the backup's digest", index * CHUNK).into());
        }
        self.compared += 1;
        self.last = Some((index, false));
        Ok(())
    }

    /// Chunk `index` was zeroed whole.
    fn zeroed(&mut self, index: u64) -> Result<()> {
        if !self.in_order(index, false) {
            return Ok(());
        }
        self.before(index)?;
        if self.expected(index)? != Expected::Zero {
            return Err(format!("the stream is damaged: it zeroes chunk {index} (at {}), where the backup's digests have data", index * CHUNK).into());
        }
        self.compared += 1;
        self.last = Some((index, false));
        Ok(())
    }

    /// Chunk `index` was touched in part: read back later.
    fn partial(&mut self, index: u64) -> Result<()> {
        if !self.in_order(index, true) || self.last == Some((index, true)) {
            return Ok(());
        }
        self.before(index)?;
        let expected = self.expected(index)?;
        self.pending.push((index, expected));
        self.last = Some((index, true));
        Ok(())
    }

    /// The `s` record: the image goes from `old` to `new` bytes; the chunk holding the
    /// smaller end changed length (unless it ends a chunk).
    pub fn resized(&mut self, old: u64, new: u64) {
        self.size = new;
        let end = old.min(new);
        if old != new && end % CHUNK != 0 {
            self.boundary = Some(end / CHUNK);
        }
    }

    /// The writes of one `write-from` call, landed, and the digests of the whole chunks
    /// the host hashed from them (`take-chunk-sums`), in order.
    pub fn written(&mut self, writes: &[(u64, u64)], sums: Vec<(u64, Sum)>) -> Result<()> {
        let mut sums = sums.into_iter();
        for &(offset, length) in writes {
            self.touched(offset, length, |me, index, lo| match sums.next() {
                Some((at, sum)) if at == lo => me.whole(index, &sum),
                other => Err(format!("the host's digest of the chunk at {lo} is missing (got {:?})", other.map(|(at, _)| at)).into()),
            })?;
        }
        if let Some((at, _)) = sums.next() {
            return Err(format!("the host hashed a chunk at {at} that no write covered").into());
        }
        Ok(())
    }

    /// A zero record applied (discarded, its edges written with zeroes).
    pub fn zero_record(&mut self, offset: u64, length: u64) -> Result<()> {
        self.touched(offset, length, |me, index, _| me.zeroed(index))
    }

    /// Each chunk `[offset, offset + length)` touches: `whole` for the ones it covers
    /// (a full chunk long), `partial` for the rest.
    fn touched(&mut self, offset: u64, length: u64, mut whole: impl FnMut(&mut Self, u64, u64) -> Result<()>) -> Result<()> {
        if length == 0 {
            return Ok(());
        }
        let end = offset.checked_add(length).ok_or("a record past 2^64")?;
        for index in offset / CHUNK..=(end - 1) / CHUNK {
            let (lo, hi) = chunk_bounds(index, self.size);
            if offset <= lo && end >= hi && hi - lo == CHUNK {
                whole(self, index, lo)?;
            } else {
                self.partial(index)?;
            }
        }
        Ok(())
    }

    /// The next record starts at `offset`: the chunks touched in part before it can be read
    /// back (none after can touch them), in batches.
    pub fn passed(&mut self, image: &Image, offset: u64) -> Result<()> {
        let limit = offset / CHUNK;
        let ready = self.pending.iter().take_while(|(i, _)| *i < limit).count();
        if ready >= READ_BACK_BATCH {
            let batch: Vec<(u64, Expected)> = self.pending.drain(..ready).collect();
            self.read_back(image, &batch)?;
        }
        Ok(())
    }

    /// The stream ended: read back every chunk still to check.
    pub fn finish(&mut self, image: &Image) -> Result<()> {
        if let Some(b) = self.boundary.take() {
            self.partial(b)?;
        }
        let batch = std::mem::take(&mut self.pending);
        for part in batch.chunks(READ_BACK_BATCH) {
            self.read_back(image, part)?;
        }
        Ok(())
    }

    fn read_back(&mut self, image: &Image, chunks: &[(u64, Expected)]) -> Result<()> {
        if self.unordered || chunks.is_empty() {
            return Ok(());
        }
        let ranges: Vec<Range> = chunks
            .iter()
            .map(|&(i, _)| {
                let (lo, hi) = chunk_bounds(i, self.size);
                Range { offset: lo, length: hi - lo }
            })
            .collect();
        let sums = image.start_reads(&ranges, Some(CHUNK as u32))?.wait_sums()?;
        for ((index, expected), (range, got)) in chunks.iter().zip(ranges.iter().zip(sums)) {
            let ok = match expected {
                Expected::Data(want) => got.as_slice() == want.as_slice(),
                Expected::Zero => got.as_slice() == zero_sum(range.length).as_slice(),
            };
            if !ok {
                return Err(format!("chunk {index} (at {}) as restored does not have the backup's digest", index * CHUNK).into());
            }
        }
        self.read_back += chunks.len() as u64;
        Ok(())
    }
}
