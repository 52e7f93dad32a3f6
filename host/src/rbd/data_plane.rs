//! The data plane: bytes that go between an image and a stream the guest holds (a file of
//! its output directory) without crossing into the guest and back. The profile of the
//! guest-side path (bench/profiles) spent a third of the host's time lifting, lowering and
//! hashing the same bytes again.
//!
//! - A backup (`pending-reads.write-to`): the bytes of started reads go from the host's
//!   buffers to the stream, between the bytes the guest gives (record headers), hashed on
//!   the way. Nothing here checks or charges a read: the reads were checked against the
//!   grant and charged to the read quota and the bandwidth cap when they started
//!   (`start-reads`). The stream charges its writes itself, as it does the guest's own (an
//!   output directory's stream charges its byte quota, `output_dir`).
//! - A restore (`image.write-from`): the bytes of writes come from the stream, each write
//!   started as soon as its bytes are read; checked and charged as `write-ranges`
//!   (`ImageHandle::start_writes`).

use bytes::{Bytes, BytesMut};
use rbd_backend::Error;
use wasmtime::component::Resource;
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, StreamError};

use super::io::WriteBatch;
use super::{outcome, HostError, HostResult, ImageHandle, PendingReads, RbdView};
use crate::capability::Operation;
use crate::bindings::ceph::rbd::{rbd, types};
use crate::job_host::hashing::{Feed, Known, Pipelined, Sha256Job};
use crate::output_dir::OutputQuotaExceeded;

/// Most pieces in one call.
pub const MAX_PIECES: usize = 1 << 16;
/// Most bytes the guest may give in one call, all `bytes` pieces together.
pub const MAX_GIVEN_BYTES: u64 = 16 << 20;
/// Pieces under this are copied, with their neighbours, into one buffer and written with
/// one call (record headers and small extents); larger ones are written from the bytes
/// read, uncopied.
const COALESCE_BELOW: usize = 64 << 10;
/// Most bytes copied together before they are written.
const BATCH_BYTES: usize = 4 << 20;
/// Most skipped bytes read at once to be hashed (they are record headers, mostly).
const SKIP_PIECE: usize = 1 << 20;
/// Most bytes `write-from` writes, and most it skips, in one call: what one call makes the
/// host read is bounded, as a read is (`io::MAX_READ_BYTES`).
pub const MAX_STREAM_BYTES: u64 = super::io::MAX_READ_BYTES;

/// `pending-reads.write-to`: place every piece first (a bad piece writes nothing), then write
/// them in order, hashing each write on another thread while it is written.
pub(super) async fn write_to(
    view: &mut RbdView<'_>,
    reads: Resource<PendingReads>,
    out: Resource<DynOutputStream>,
    pieces: Vec<rbd::Piece>,
    hash: Option<Resource<Sha256Job>>,
) -> HostResult<Vec<Vec<u8>>> {
    if pieces.len() > MAX_PIECES {
        return Err(Error::InvalidArgument(format!("{} pieces in one call; at most {MAX_PIECES}", pieces.len())).into());
    }
    let given = pieces.iter().fold(0u64, |n, p| match p {
        rbd::Piece::Bytes(b) => n.saturating_add(b.len() as u64),
        rbd::Piece::Read(_) => n,
    });
    if given > MAX_GIVEN_BYTES {
        return Err(Error::InvalidArgument(format!("{given} bytes given in one call; at most {MAX_GIVEN_BYTES}")).into());
    }
    // The bytes given, and the buffer that gathers small pieces into one write.
    let _memory = view.ctx.meter().reserve(given + BATCH_BYTES as u64)?;
    let pending = view.table.get_mut(&reads)?;
    let offsets = std::mem::take(&mut pending.offsets);
    let chunk = pending.chunk.map(u64::from);
    let results = pending.take().await?;
    let mut sums = Vec::with_capacity(results.len());
    let mut read = Vec::with_capacity(results.len());
    for (start, result) in offsets.into_iter().zip(results) {
        let data = Bytes::from(result.data);
        // A check reuses these digests for the whole chunks it is fed (`Feed::Data`).
        let known = chunk.map(|chunk| Known { start, length: data.len() as u64, chunk, sums: Bytes::copy_from_slice(&result.chunk_sha256) });
        read.push(Read { start, data, known });
        sums.push(result.chunk_sha256);
    }
    // Each byte read is written once at most: the reads were charged once.
    let read_bytes = read.iter().fold(0u64, |n, r| n + r.data.len() as u64);
    let used = pieces.iter().fold(0u64, |n, p| match p {
        rbd::Piece::Read(r) => n.saturating_add(r.length),
        rbd::Piece::Bytes(_) => n,
    });
    if used > read_bytes {
        return Err(Error::InvalidArgument(format!("pieces of {used} bytes of the image, of {read_bytes} read")).into());
    }
    let plan = place(&mut read, pieces)?;

    let mut hashing = lend(view, &hash).await?;
    let result = match view.table.get_mut(&out) {
        Ok(stream) => write_all(stream, plan, &mut hashing).await,
        Err(e) => Err(e.into()),
    };
    give_back(view, hash, hashing, result.is_ok()).await?;
    result.map(|()| sums)
}

/// The hash state of `hash`, lent for one data-plane call.
async fn lend(view: &mut RbdView<'_>, hash: &Option<Resource<Sha256Job>>) -> HostResult<Option<Pipelined>> {
    Ok(match hash {
        Some(h) => Some(Pipelined::new(view.table.get_mut(h)?.lend().await.map_err(HostError::Trap)?)),
        None => None,
    })
}

/// Give the hash state back: spoiled unless every byte it saw was written (`complete`).
async fn give_back(view: &mut RbdView<'_>, hash: Option<Resource<Sha256Job>>, hashing: Option<Pipelined>, complete: bool) -> HostResult<()> {
    if let (Some(h), Some(hashing)) = (hash, hashing) {
        let state = hashing.finish().await;
        let whole = complete && state.is_some();
        view.table.get_mut(&h)?.give_back(state.unwrap_or_default(), whole);
    }
    Ok(())
}

/// A range read, with its chunk digests if it was hashed.
struct Read {
    start: u64,
    data: Bytes,
    known: Option<Known>,
}

/// A piece to write: bytes the guest gave, or the image's bytes at an offset.
struct Planned {
    bytes: Bytes,
    image: Option<(u64, Option<Known>)>,
}

impl Planned {
    /// What a hasher is fed: the image's bytes as a stream check's data (with the read's
    /// digests), the rest as they are.
    fn feed(&self) -> Feed {
        match &self.image {
            None => Feed::Raw(self.bytes.clone()),
            Some((offset, known)) => Feed::Data { offset: *offset, data: self.bytes.clone(), known: known.clone() },
        }
    }
}

/// The bytes of every piece, in order: given bytes as they are, a read piece as a slice of
/// the one range read that holds it.
fn place(read: &mut [Read], pieces: Vec<rbd::Piece>) -> HostResult<Vec<Planned>> {
    read.sort_by_key(|r| r.start);
    pieces
        .into_iter()
        .map(|piece| match piece {
            rbd::Piece::Bytes(b) => Ok(Planned { bytes: Bytes::from(b), image: None }),
            rbd::Piece::Read(r) => slice_of(read, r),
        })
        .collect()
}

/// `r` as a slice of a range read (sorted by offset); ranges may overlap, so every range
/// that starts at or before `r` is tried, latest first.
fn slice_of(read: &[Read], r: types::Range) -> HostResult<Planned> {
    let refuse = || Error::InvalidArgument(format!("the piece {}+{} is not inside one range read", r.offset, r.length));
    let end = r.offset.checked_add(r.length).ok_or_else(refuse)?;
    let upto = read.partition_point(|read| read.start <= r.offset);
    for range in read[..upto].iter().rev() {
        if end <= range.start.saturating_add(range.data.len() as u64) {
            // Both inside `data`, whose length is a usize.
            let from = (r.offset - range.start) as usize;
            let bytes = range.data.slice(from..from + r.length as usize);
            return Ok(Planned { bytes, image: Some((r.offset, range.known.clone())) });
        }
    }
    Err(refuse().into())
}

/// Write the pieces in order, small ones gathered into one write; each is handed to the
/// hasher (on another thread when large) before it is written, so the two overlap.
async fn write_all(stream: &mut DynOutputStream, plan: Vec<Planned>, hash: &mut Option<Pipelined>) -> HostResult<()> {
    let mut batch = BytesMut::new();
    for piece in plan {
        if let Some(hash) = hash {
            hash.add(piece.feed()).await;
        }
        if piece.bytes.len() < COALESCE_BELOW {
            batch.extend_from_slice(&piece.bytes);
            if batch.len() >= BATCH_BYTES {
                write_one(stream, batch.split().freeze()).await?;
            }
        } else {
            if !batch.is_empty() {
                write_one(stream, batch.split().freeze()).await?;
            }
            write_one(stream, piece.bytes).await?;
        }
    }
    if !batch.is_empty() {
        write_one(stream, batch.freeze()).await?;
    }
    Ok(())
}

async fn write_one(stream: &mut DynOutputStream, bytes: Bytes) -> HostResult<()> {
    stream.blocking_write_and_flush(bytes).await.map_err(stream_error)
}

/// `image.write-from`: check and charge the whole batch, then read each write's bytes from
/// the stream and start it at once.
pub(super) async fn write_from(
    view: &mut RbdView<'_>,
    image: Resource<ImageHandle>,
    input: Resource<DynInputStream>,
    writes: Vec<rbd::StreamWrite>,
    hash: Option<Resource<Sha256Job>>,
) -> HostResult<u64> {
    let (written, skipped) = writes.iter().fold((0u64, 0u64), |(w, s), x| (w.saturating_add(x.length), s.saturating_add(x.skip)));
    if written > MAX_STREAM_BYTES || skipped > MAX_STREAM_BYTES {
        return Err(Error::InvalidArgument(format!(
            "{written} bytes to write and {skipped} to skip in one call; at most {MAX_STREAM_BYTES} of each"
        ))
        .into());
    }
    let spans = writes.iter().map(|w| (w.offset, w.length)).collect();
    let mut batch = view.table.get(&image)?.start_writes("write-from", spans).await?;
    // The skipped bytes are read in pieces of this size to be hashed.
    let _skip_memory = view.ctx.meter().reserve(if hash.is_some() { SKIP_PIECE as u64 } else { 0 })?;
    let mut hashing = lend(view, &hash).await?;
    let fed = match view.table.get_mut(&input) {
        Ok(stream) => feed(stream, &writes, &mut batch, &mut hashing).await,
        Err(e) => Err(e.into()),
    };
    // A stream that failed part way leaves the hash short of the bytes read: spoiled.
    give_back(view, hash, hashing, fed.is_ok()).await?;
    // The writes whose bytes were read are made (and gathered) even if the stream failed.
    let written = batch.gather().await;
    let result = fed.and(written);
    view.table.get(&image)?.audit("write-from", Operation::Write, &outcome(&result)).await;
    result
}

/// Read each write's bytes and start it; with a hash, the skipped bytes are read and
/// hashed too, so the hash sees the stream whole and in order.
async fn feed(
    stream: &mut DynInputStream,
    writes: &[rbd::StreamWrite],
    batch: &mut WriteBatch,
    hash: &mut Option<Pipelined>,
) -> HostResult<()> {
    for w in writes {
        let mut skip = w.skip;
        while skip > 0 {
            let want = usize::try_from(skip).unwrap_or(usize::MAX);
            let n = match hash {
                Some(hash) => {
                    let bytes = stream.blocking_read(want.min(SKIP_PIECE)).await.map_err(|e| read_error(e, w))?;
                    let n = bytes.len();
                    hash.add(Feed::Raw(bytes)).await;
                    n
                }
                None => stream.blocking_skip(want).await.map_err(|e| read_error(e, w))?,
            };
            skip = skip.saturating_sub(n as u64);
        }
        // The batch's memory was reserved for every write's length, so this is within it.
        let length = usize::try_from(w.length).map_err(|_| Error::InvalidArgument(format!("a write of {} bytes", w.length)))?;
        // An output-directory file's stream reads up to 4 MiB at once (`file_reader`): a
        // write's bytes usually come whole, and are written uncopied.
        let first = if length == 0 { Bytes::new() } else { stream.blocking_read(length).await.map_err(|e| read_error(e, w))? };
        let data = if first.len() == length {
            first
        } else {
            let mut data = BytesMut::with_capacity(length);
            data.extend_from_slice(&first);
            while data.len() < length {
                let piece = stream.blocking_read(length - data.len()).await.map_err(|e| read_error(e, w))?;
                data.extend_from_slice(&piece);
            }
            data.freeze()
        };
        if let Some(hash) = hash {
            hash.add(Feed::Data { offset: w.offset, data: data.clone(), known: None }).await;
        }
        batch.spawn(w.offset, data);
    }
    Ok(())
}

fn read_error(e: StreamError, w: &rbd::StreamWrite) -> HostError {
    match e {
        StreamError::Closed => Error::Io(format!("the stream ended before the bytes of the write at {}", w.offset)).into(),
        StreamError::LastOperationFailed(e) => Error::Io(format!("reading the stream: {e}")).into(),
        StreamError::Trap(e) => HostError::Trap(e),
    }
}

fn stream_error(e: StreamError) -> HostError {
    match e {
        StreamError::Closed => Error::Io("the output stream is closed".into()).into(),
        StreamError::LastOperationFailed(e) if e.downcast_ref::<OutputQuotaExceeded>().is_some() => {
            Error::QuotaExceeded(e.to_string()).into()
        }
        StreamError::LastOperationFailed(e) => Error::Io(format!("writing the output stream: {e}")).into(),
        StreamError::Trap(e) => HostError::Trap(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read() -> Vec<Read> {
        let mut read = vec![
            Read { start: 100, data: Bytes::from(vec![1u8; 50]), known: None },
            Read { start: 0, data: Bytes::from(vec![0u8; 120]), known: None },
        ];
        read.sort_by_key(|r| r.start);
        read
    }

    #[test]
    fn pieces_are_found_in_the_range_that_holds_them() {
        let read = read();
        let s = slice_of(&read, types::Range { offset: 110, length: 40 }).unwrap();
        assert_eq!(&s.bytes[..], &[1u8; 40][..], "in the later range");
        assert_eq!(s.image.map(|(at, _)| at), Some(110));
        let s = slice_of(&read, types::Range { offset: 90, length: 30 }).unwrap();
        assert_eq!(&s.bytes[..], &[0u8; 30][..], "in the earlier range, which overlaps the later");
        assert!(slice_of(&read, types::Range { offset: 110, length: 41 }).is_err(), "past the end of both");
        assert!(slice_of(&read, types::Range { offset: u64::MAX, length: 2 }).is_err(), "overflows");
        assert_eq!(slice_of(&read, types::Range { offset: 150, length: 0 }).unwrap().bytes.len(), 0);
    }
}
