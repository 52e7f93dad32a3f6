//! SHA-256 for jobs, done by the host (`job-host.sha256`, `job-host.sha256-chunks`).
//!
//! A backup checksums everything it streams. Inside the sandbox SHA-256 runs at about
//! 150 MB/s; natively, with the CPU's SHA extensions, several times that. The hasher also
//! pipelines: `update` hands its bytes to tokio's blocking pool and returns, so the job
//! reads the next extent while the last one is hashed. One update is in flight per hasher
//! at most (the next one waits for it), which bounds the memory a job can park here.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use wasmtime_wasi::p2::{DynInputStream, StreamError};

use crate::meter::{HandleSlot, Meter, Reservation};

/// Smallest piece `sha256-chunks` hashes separately (besides 0, the whole): 32 bytes of
/// digest per piece, so smaller pieces make the answer a large multiple of the data.
pub const MIN_CHUNK: u32 = 4096;

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
    pub fn new(meter: Arc<Meter>, slot: HandleSlot) -> Self {
        Sha256Job { hash: Pipelined::new(Sha256::new()), meter, spoiled: false, _slot: slot }
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
    async fn settle(&mut self) -> wasmtime::Result<Sha256> {
        self.usable()?;
        let hash = std::mem::replace(&mut self.hash, Pipelined::new(Sha256::new()));
        hash.finish().await.ok_or_else(|| wasmtime::Error::msg("hashing failed"))
    }

    /// Lend the state to the host's data plane (`write-to`), which hashes what it writes
    /// and gives it back with [`Sha256Job::give_back`].
    pub async fn lend(&mut self) -> wasmtime::Result<Sha256> {
        self.settle().await
    }

    /// The state lent, after the bytes it hashed were all written (`written`), or not.
    pub fn give_back(&mut self, state: Sha256, written: bool) {
        self.hash = Pipelined::new(state);
        self.spoiled |= !written;
    }

    pub async fn update(&mut self, data: Vec<u8>) -> wasmtime::Result<()> {
        self.usable()?;
        // The bytes stay in the job's host-memory budget until they are hashed (small ones
        // are hashed at once).
        let memory = if data.len() < INLINE_BYTES {
            None
        } else {
            Some(self.meter.reserve(data.len() as u64).map_err(|e| wasmtime::Error::msg(e.to_string()))?)
        };
        self.hash.add_held(Bytes::from(data), memory).await;
        Ok(())
    }

    pub async fn finish(&mut self) -> wasmtime::Result<Vec<u8>> {
        Ok(self.settle().await?.finalize().to_vec())
    }
}

/// A hash fed as bytes arrive, each batch hashed on the blocking pool while the caller goes
/// on (reads the next batch, writes this one); one batch in flight at most. What the data
/// plane uses (`write-to`, `write-from`, `update-from`).
pub struct Pipelined {
    state: Option<Sha256>,
    pending: Option<JoinHandle<Sha256>>,
}

impl Pipelined {
    pub fn new(state: Sha256) -> Self {
        Pipelined { state: Some(state), pending: None }
    }

    /// Add `bytes` (cheap to clone: shared with whoever writes them).
    pub async fn add(&mut self, bytes: Bytes) {
        self.add_held(bytes, None).await
    }

    /// Add `bytes`, holding `held` (their share of the job's host-memory budget) until they
    /// are hashed.
    pub async fn add_held(&mut self, bytes: Bytes, held: Option<Reservation>) {
        if let Some(task) = self.pending.take() {
            // A failed task leaves no state: the hash is lost, and `finish` says so.
            self.state = task.await.ok();
        }
        let Some(mut state) = self.state.take() else { return };
        if bytes.len() < INLINE_BYTES {
            state.update(&bytes);
            self.state = Some(state);
        } else {
            self.pending = Some(tokio::task::spawn_blocking(move || {
                let _held = held;
                state.update(&bytes);
                state
            }));
        }
    }

    /// The state once every batch is hashed; none if a hashing task failed.
    pub async fn finish(mut self) -> Option<Sha256> {
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
pub async fn hash_stream(stream: &mut DynInputStream, state: Sha256) -> (Option<Sha256>, Result<u64, StreamError>) {
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
            hash.add(data).await;
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
        let mut job = Sha256Job::new(meter.clone(), meter.handle_slot().unwrap());
        for piece in [&data[..10], &data[10..200_000], &data[200_000..]] {
            job.update(piece.to_vec()).await.unwrap();
        }
        assert_eq!(job.finish().await.unwrap(), Sha256::digest(&data).to_vec());
        assert_eq!(job.finish().await.unwrap(), Sha256::digest(b"").to_vec(), "finish starts over");
        let chunks = sha256_chunks(data.clone(), 65536, meter.reserve(0).unwrap()).await.unwrap();
        assert_eq!(chunks.len(), 5 * 32);
        assert_eq!(&chunks[4 * 32..], Sha256::digest(&data[4 * 65536..]).as_slice());
    }
}
