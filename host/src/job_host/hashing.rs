//! SHA-256 for jobs, done by the host (`job-host.sha256`, `job-host.sha256-chunks`).
//!
//! A backup checksums everything it streams. Inside the sandbox SHA-256 runs at about
//! 150 MB/s; natively, with the CPU's SHA extensions, several times that. The hasher also
//! pipelines: `update` hands its bytes to tokio's blocking pool and returns, so the job
//! reads the next extent while the last one is hashed. One update is in flight per hasher
//! at most (the next one waits for it), which bounds the memory a job can park here.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rbddiff_check::{KnownSums, StreamCheck};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use wasmtime_wasi::p2::{DynInputStream, StreamError};

use crate::meter::{HandleSlot, Meter, Reservation};

/// Smallest piece `sha256-chunks` hashes separately (besides 0, the whole): 32 bytes of
/// digest per piece, so smaller pieces make the answer a large multiple of the data.
pub const MIN_CHUNK: u32 = 4096;

/// Most whole-chunk digests a hasher keeps for `take-chunk-sums` (1 GiB of data in 64 KiB
/// chunks, 640 KiB of memory): a job that never takes them cannot make the host hold more.
pub const MAX_KEPT_SUMS: usize = 16384;

/// Below this, hashing inline costs less than a trip to the blocking pool.
const INLINE_BYTES: usize = 64 << 10;

/// One `sha256` resource.
pub struct Sha256Job {
    hash: Pipelined,
    meter: Arc<Meter>,
    /// Set when a `write-to` that fed this hasher failed: its state may hold bytes that were
    /// not written, so its digest would be of nothing real.
    spoiled: bool,

    _slot: HandleSlot,
}

impl Sha256Job {
    /// A hasher of `state`'s kind: a plain SHA-256, or an rbd diff stream's check
    /// (`sha256.chunked`).
    pub fn new(state: StreamCheck, meter: Arc<Meter>, slot: HandleSlot) -> Self {
        Sha256Job { hash: Pipelined::new(state), meter, spoiled: false, _slot: slot }
    }

    fn usable(&self) -> wasmtime::Result<()> {
        if self.spoiled {
            return Err(wasmtime::Error::msg(
                "this hasher fed a write-to that failed: what it hashed is not what was written",
            ));
        }
        Ok(())
    }

    /// The hash state, once the update in flight (if any) is done; the hasher is left empty.
    async fn settle(&mut self) -> wasmtime::Result<StreamCheck> {
        self.usable()?;
        let hash = std::mem::replace(&mut self.hash, Pipelined::new(StreamCheck::plain()));
        hash.finish().await.ok_or_else(|| wasmtime::Error::msg("hashing failed"))
    }

    /// Lend the state to the host's data plane (`write-to`), which hashes what it writes
    /// and gives it back with [`Sha256Job::give_back`].
    pub async fn lend(&mut self) -> wasmtime::Result<StreamCheck> {
        self.settle().await
    }

    /// The state lent, after the bytes it hashed were all written (`written`), or not.
    pub fn give_back(&mut self, state: StreamCheck, written: bool) {
        self.hash = Pipelined::new(state);
        self.spoiled |= !written;
    }

    /// `take-chunk-sums`: the whole-chunk digests kept since the last take.
    pub async fn take_chunk_sums(&mut self) -> wasmtime::Result<Result<Vec<(u64, [u8; 32])>, String>> {
        let mut state = self.settle().await?;
        let sums = state.take_chunk_sums();
        self.hash = Pipelined::new(state);
        Ok(sums.map_err(|d| format!("more than {} chunk digests were not taken: they were dropped", d.limit)))
    }

    /// Add `data`: as it is, or (`Some(offset)`) as the image's bytes at `offset`.
    pub async fn update(&mut self, data: Vec<u8>, offset: Option<u64>) -> wasmtime::Result<()> {
        self.usable()?;
        // The bytes stay in the job's host-memory budget until they are hashed (small ones
        // are hashed at once).
        let memory = if data.len() < INLINE_BYTES {
            None
        } else {
            Some(self.meter.reserve(data.len() as u64).map_err(|e| wasmtime::Error::msg(e.to_string()))?)
        };
        let data = Bytes::from(data);
        let feed = match offset {
            None => Feed::Raw(data),
            Some(offset) => Feed::Data { offset, data, known: None },
        };
        self.hash.add_held(feed, memory).await;
        Ok(())
    }

    pub async fn finish(&mut self) -> wasmtime::Result<Vec<u8>> {
        let mut state = self.settle().await?;
        let digest = state.finalize_reset().to_vec();
        // It starts over, of the same kind.
        self.hash = Pipelined::new(state);
        Ok(digest)
    }
}

/// Bytes for a hasher.
pub enum Feed {
    /// Added as they are (a stream's record headers).
    Raw(Bytes),
    /// The image's bytes at `offset` (a `w` record's data), with the digests of its chunks
    /// if a read computed them already (a check then does not hash those chunks again).
    Data { offset: u64, data: Bytes, known: Option<Known> },
}

/// A read's chunk digests: see [`KnownSums`].
#[derive(Clone)]
pub struct Known {
    pub start: u64,
    pub length: u64,
    pub chunk: u64,
    pub sums: Bytes,
}

impl Feed {
    fn len(&self) -> usize {
        match self {
            Feed::Raw(data) | Feed::Data { data, .. } => data.len(),
        }
    }

    fn add_to(&self, state: &mut StreamCheck) {
        match self {
            Feed::Raw(data) => state.update(data),
            Feed::Data { offset, data, known } => {
                let known = known.as_ref().map(|k| KnownSums { start: k.start, length: k.length, chunk: k.chunk, sums: &k.sums });
                state.update_data(*offset, data, known.as_ref());
            }
        }
    }
}

/// A hash fed as bytes arrive, each batch hashed on the blocking pool while the caller goes
/// on (reads the next batch, writes this one); one batch in flight at most. What the data
/// plane uses (`write-to`, `write-from`, `update-from`).
pub struct Pipelined {
    state: Option<StreamCheck>,
    pending: Option<JoinHandle<StreamCheck>>,
}

impl Pipelined {
    pub fn new(state: StreamCheck) -> Self {
        Pipelined { state: Some(state), pending: None }
    }

    /// Add `feed` (its bytes are cheap to clone: shared with whoever writes them).
    pub async fn add(&mut self, feed: Feed) {
        self.add_held(feed, None).await
    }

    /// Add `feed`, holding `held` (its share of the job's host-memory budget) until it is
    /// hashed.
    pub async fn add_held(&mut self, feed: Feed, held: Option<Reservation>) {
        if let Some(task) = self.pending.take() {
            // A failed task leaves no state: the hash is lost, and `finish` says so.
            self.state = task.await.ok();
        }
        let Some(mut state) = self.state.take() else { return };
        if feed.len() < INLINE_BYTES {
            feed.add_to(&mut state);
            self.state = Some(state);
        } else {
            self.pending = Some(tokio::task::spawn_blocking(move || {
                let _held = held;
                feed.add_to(&mut state);
                state
            }));
        }
    }

    /// The state once every batch is hashed; none if a hashing task failed.
    pub async fn finish(mut self) -> Option<StreamCheck> {
        if let Some(task) = self.pending.take() {
            self.state = task.await.ok();
        }
        self.state
    }
}

/// Bytes read from a stream before they are hashed together.
pub const STREAM_BATCH: usize = 1 << 20;
/// Most bytes `update-from` adds in one call: the host work one call costs is bounded, as
/// `update`'s is by the bytes the guest hands over.
pub const MAX_STREAM_BYTES: u64 = 64 << 20;

/// Add the next bytes of `stream` to `state` (`sha256.update-from`), at most
/// [`MAX_STREAM_BYTES`], each batch hashed while the next is read. Gives back the state
/// (none if a hashing task failed) and the bytes added (0 once the stream has ended), or
/// the stream's error (what was read before it is added). Holds two batches.
pub async fn hash_stream(stream: &mut DynInputStream, state: StreamCheck) -> (Option<StreamCheck>, Result<u64, StreamError>) {
    let mut hash = Pipelined::new(state);
    let mut added = 0u64;
    let mut batch = BytesMut::new();
    let result = loop {
        let room = (STREAM_BATCH - batch.len()).min((MAX_STREAM_BYTES - added) as usize - batch.len());
        let end = match stream.blocking_read(room).await {
            Ok(bytes) => {
                batch.extend_from_slice(&bytes);
                None
            }
            Err(StreamError::Closed) => Some(Ok(())),
            Err(e) => Some(Err(e)),
        };
        let full = added + batch.len() as u64 >= MAX_STREAM_BYTES;
        if batch.len() >= STREAM_BATCH || ((end.is_some() || full) && !batch.is_empty()) {
            let data = batch.split().freeze();
            added += data.len() as u64;
            hash.add(Feed::Raw(data)).await;
        }
        if let Some(end) = end {
            break end;
        }
        if full {
            break Ok(());
        }
    };
    (hash.finish().await, result.map(|()| added))
}

/// The SHA-256 of each `chunk`-byte piece of `data`, concatenated (0: one piece).
pub async fn sha256_chunks(data: Vec<u8>, chunk: u32, memory: Reservation) -> wasmtime::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let _held = memory;
        chunk_digests(&data, chunk)
    })
        .await
        .map_err(|e| wasmtime::Error::msg(format!("hashing failed: {e}")))
}

/// [`sha256_chunks`], on the calling thread.
pub fn chunk_digests(data: &[u8], chunk: u32) -> Vec<u8> {
    let chunk = if chunk == 0 { data.len().max(1) } else { chunk as usize };
    let mut out = Vec::with_capacity(data.len().div_ceil(chunk) * 32);
    for piece in data.chunks(chunk) {
        out.extend_from_slice(&Sha256::digest(piece));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipelined_updates_hash_like_one_pass() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let meter = Arc::new(Meter::new(Default::default()));
        let mut job = Sha256Job::new(StreamCheck::plain(), meter.clone(), meter.handle_slot().unwrap());
        for piece in [&data[..10], &data[10..200_000], &data[200_000..]] {
            job.update(piece.to_vec(), None).await.unwrap();
        }
        assert_eq!(job.finish().await.unwrap(), Sha256::digest(&data).to_vec());
        assert_eq!(job.finish().await.unwrap(), Sha256::digest(b"").to_vec(), "finish starts over");
        let chunks = sha256_chunks(data.clone(), 65536, meter.reserve(0).unwrap()).await.unwrap();
        assert_eq!(chunks.len(), 5 * 32);
        assert_eq!(&chunks[4 * 32..], Sha256::digest(&data[4 * 65536..]).as_slice());
    }

    /// A check fed in pieces, some hashed on the blocking pool, with a read's digests for
    /// part of it, is the check computed at once.
    #[tokio::test]
    async fn a_pipelined_check_is_the_check() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13) as u8).collect();
        let mut want = StreamCheck::chunked(65536);
        want.update(b"header");
        want.update_data(1000, &data, None);
        let sums = Bytes::from(chunk_digests(&data[64536..], 65536));
        let meter = Arc::new(Meter::new(Default::default()));
        let mut job = Sha256Job::new(StreamCheck::chunked(65536), meter.clone(), meter.handle_slot().unwrap());
        job.update(b"header".to_vec(), None).await.unwrap();
        job.update(data[..64536].to_vec(), Some(1000)).await.unwrap();
        let mut state = job.lend().await.unwrap();
        let known = Known { start: 65536, length: (data.len() - 64536) as u64, chunk: 65536, sums };
        Feed::Data { offset: 65536, data: Bytes::copy_from_slice(&data[64536..]), known: Some(known) }.add_to(&mut state);
        job.give_back(state, true);
        assert_eq!(job.finish().await.unwrap(), want.finalize_reset().to_vec());
    }
}
