//! An image's reads and writes: checked against the capability, charged to the byte quotas
//! and the bandwidth cap when they start (and refunded for what did not happen), and held
//! in the job's host-memory budget while the host holds their bytes.
//!
//! Reads may stay in flight while the guest works (`start-reads`); a [`PendingReads`] that
//! is dropped without `wait`, or dropped with the job, aborts what has not started and gives
//! its memory back once what had started is done.

use std::sync::Arc;

use rbd_backend::Error;
use tokio::task::JoinHandle;
use wasmtime::component::Resource;

use super::image::OpenImage;
use super::{blocking, outcome, BackendWatch, HostError, HostResult, ImageHandle, RbdView};
use crate::bindings::ceph::rbd::{rbd, types};
use crate::capability::Operation;
use crate::meter::{HandleSlot, Meter, Reservation};

/// Most bytes a guest may read in one call, after clipping to the image: a guest that wants
/// more reads in pieces (and cannot make the host allocate an image's worth at once).
pub const MAX_READ_BYTES: u64 = 64 << 20;
/// Most ranges (or writes) in one call.
pub const MAX_RANGES_PER_CALL: usize = 1024;
/// Smallest piece the host hashes separately: 32 bytes of digest per piece, so smaller
/// pieces would make the digests a large multiple of the data (and the hashing slow).
pub const MIN_HASH_CHUNK: u32 = 4096;

/// Reads started by `start-reads` (and by `read` and `read-ranges`, which wait at once).
pub struct PendingReads {
    /// Where each range starts (what `write-to` places the bytes by), in the order asked.
    pub(super) offsets: Vec<u64>,
    /// The size of the chunks each range was hashed in, if it was.
    pub(super) chunk: Option<u32>,
    /// None once waited for.
    tasks: Option<Vec<JoinHandle<HostResult<types::ReadResult>>>>,
    meter: Arc<Meter>,
    /// Bytes charged to the read quota when the reads started.
    charged: u64,
    /// The host memory the results take, held until they are handed over.
    _memory: Arc<Reservation>,
    /// The guest's handle slot, for reads it holds as a resource.
    _slot: Option<HandleSlot>,
}

impl PendingReads {
    pub(super) fn holding(mut self, slot: HandleSlot) -> Self {
        self._slot = Some(slot);
        self
    }

    /// The results in the order asked; the first error if any read failed. What was
    /// charged and not delivered is refunded.
    pub(super) async fn wait(mut self) -> HostResult<Vec<types::ReadResult>> {
        self.take().await
    }

    pub(super) async fn take(&mut self) -> HostResult<Vec<types::ReadResult>> {
        let tasks = self.tasks.take().ok_or_else(|| Error::Logic("these reads were already waited for".into()))?;
        let mut out = Vec::with_capacity(tasks.len());
        let mut failed = None;
        for task in tasks {
            match task.await {
                Ok(Ok(result)) => out.push(result),
                Ok(Err(e)) => {
                    failed.get_or_insert(e);
                }
                Err(join) => {
                    failed.get_or_insert(HostError::Trap(wasmtime::Error::msg(format!("read task failed: {join}"))));
                }
            }
        }
        // Refund what was charged and not read: the ranges that failed, and what a range
        // came back short of (never more than was charged; a read never returns more than
        // its clipped share, see `start_reads`).
        let delivered: u64 = out.iter().map(|r| r.data.len() as u64).sum();
        self.meter.refund_read(self.charged.saturating_sub(delivered));
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

impl Drop for PendingReads {
    /// Reads the guest no longer wants: those not started are aborted; those under way end
    /// on the blocking pool, and their memory is given back then. They stay charged: the
    /// cluster did (or does) the work.
    fn drop(&mut self) {
        for task in self.tasks.iter().flatten() {
            task.abort();
        }
    }
}

/// Tasks aborted when dropped (a dropped `JoinHandle` would let them run on).
struct AbortOnDrop<T>(Vec<JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// `length` bytes at `offset` of an image of `size` bytes, cut at its end (as librbd does).
fn clipped(offset: u64, length: u64, size: u64) -> u64 {
    if offset >= size {
        0
    } else {
        length.min(size - offset)
    }
}

/// Whether the backend has asynchronous I/O (librbd). Without waiting: `false` while the
/// image is being closed (the blocking path then answers).
fn has_aio(open: &OpenImage) -> bool {
    open.try_with(|i| Ok(i.aio().is_some())).and_then(Result::ok).unwrap_or(false)
}

/// One read or write through the backend: with its asynchronous I/O (librbd), `start` runs
/// on the blocking pool (starting may wait for an image refresh) and the reply holds no
/// thread; without it, or where `start` declines, `call` runs on the blocking pool. The
/// memory `hold` and the watch entry stay until the backend is done with the request's
/// buffer, even if the caller is gone by then.
async fn backend_io<T: Send + 'static>(
    open: &Arc<OpenImage>,
    watch: &Arc<BackendWatch>,
    hold: Arc<Reservation>,
    start: impl FnOnce(&dyn rbd_backend::AsyncIo, Box<dyn FnOnce(Result<T, Error>) + Send>) -> Result<bool, Error>
        + Send
        + 'static,
    call: impl FnOnce(&dyn rbd_backend::Image) -> Result<T, Error> + Send + 'static,
) -> HostResult<T> {
    if has_aio(open) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (in_flight, held, image) = (watch.enter(), hold.clone(), open.clone());
        let done: Box<dyn FnOnce(Result<T, Error>) + Send> = Box::new(move |result| {
            let _ = tx.send(result);
            drop((held, in_flight));
        });
        if blocking(watch, move || image.with(|i| i.aio().map_or(Ok(false), |a| start(a, done)))).await? {
            return match rx.await {
                Ok(result) => result.map_err(HostError::Rbd),
                Err(_) => Err(HostError::Trap(wasmtime::Error::msg("the backend dropped a request"))),
            };
        }
    }
    let open = open.clone();
    blocking(watch, move || {
        let _held = hold;
        open.with(call)
    })
    .await
}

async fn backend_read(
    open: &Arc<OpenImage>,
    watch: &Arc<BackendWatch>,
    hold: Arc<Reservation>,
    offset: u64,
    length: u64,
) -> HostResult<Vec<u8>> {
    backend_io(open, watch, hold, move |a, done| a.start_read(offset, length, done), move |i| i.read(offset, length)).await
}

/// A handle's first writes on librbd, before it owns the exclusive lock, are blocking
/// writes: they look at the lockers first (`AsyncIo::start_write` declines).
async fn backend_write(
    open: &Arc<OpenImage>,
    watch: &Arc<BackendWatch>,
    hold: Arc<Reservation>,
    offset: u64,
    data: bytes::Bytes,
) -> HostResult<u64> {
    let bytes = data.clone();
    let start = move |a: &dyn rbd_backend::AsyncIo, done| a.start_write(offset, Box::new(bytes), done);
    backend_io(open, watch, hold, start, move |i| i.write(offset, &data)).await
}

impl ImageHandle {
    /// Check, charge and start reads: several in flight (the job's I/O slots), each hashed
    /// in `chunk` pieces as it is read if asked.
    pub(super) async fn start_reads(
        &self,
        method: &str,
        ranges: Vec<types::Range>,
        chunk: Option<u32>,
    ) -> HostResult<PendingReads> {
        self.require(method, Operation::Read).await?;
        if ranges.len() > MAX_RANGES_PER_CALL {
            return Err(Error::InvalidArgument(format!("{} ranges in one call; at most {MAX_RANGES_PER_CALL}", ranges.len())).into());
        }
        if let Some(c) = chunk.filter(|c| *c < MIN_HASH_CHUNK) {
            return Err(Error::InvalidArgument(format!("a hash chunk of {c} bytes; at least {MIN_HASH_CHUNK}")).into());
        }
        if let Some(r) = ranges.iter().find(|r| r.offset.checked_add(r.length).is_none()) {
            return Err(Error::InvalidArgument(format!("offset {} + length {} overflows", r.offset, r.length)).into());
        }
        let size = self.backend_size().await?;
        let total = ranges.iter().fold(0u64, |acc, r| acc.saturating_add(clipped(r.offset, r.length, size)));
        if total > MAX_READ_BYTES {
            return Err(Error::InvalidArgument(format!(
                "a read of {total} bytes is over the per-call limit of {MAX_READ_BYTES} bytes; read in pieces"
            ))
            .into());
        }
        let digests = match chunk {
            Some(c) => (total / u64::from(c) + ranges.len() as u64) * 32,
            None => 0,
        };
        let meter = self.scope.meter().clone();
        let memory = Arc::new(meter.reserve(total + digests)?);
        meter.start_read(total)?;
        meter.throttle(total).await;
        let slots = self.scope.io_slots().clone();
        let mut tasks = Vec::with_capacity(ranges.len());
        let offsets = ranges.iter().map(|r| r.offset).collect();
        for r in ranges {
            let (open, slots, memory, watch) = (self.open.clone(), slots.clone(), memory.clone(), self.scope.watch().clone());
            // The backend is asked for the share that was reserved and charged, never more:
            // the image may have grown (set-snap, resize) since it was measured.
            let (offset, requested) = (r.offset, r.length);
            let length = clipped(offset, requested, size);
            tasks.push(tokio::spawn(async move {
                let _permit = slots.acquire_owned().await;
                // Past the end as measured, the backend answers as librbd does there (an
                // error, or nothing), asked for at most one byte.
                let ask = if offset >= size { requested.min(1) } else { length };
                let mut data = backend_read(&open, &watch, memory, offset, ask).await?;
                data.truncate(length as usize);
                // Chunk digests of a short read would stand for chunks that were not read
                // whole: a job would record them as the image's.
                if chunk.is_some() && (data.len() as u64) < length {
                    return Err(Error::Io(format!("a short read at {offset}: {} of {length} bytes", data.len())).into());
                }
                let Some(c) = chunk else { return Ok(types::ReadResult { data, chunk_sha256: Vec::new() }) };
                // Hashing is CPU work: off the executor.
                let hashed = tokio::task::spawn_blocking(move || {
                    let chunk_sha256 = crate::job_host::hashing::chunk_digests(&data, c);
                    types::ReadResult { data, chunk_sha256 }
                });
                hashed.await.map_err(|join| HostError::Trap(wasmtime::Error::msg(format!("hashing failed: {join}"))))
            }));
        }
        Ok(PendingReads { offsets, chunk, tasks: Some(tasks), meter, charged: total, _memory: memory, _slot: None })
    }

    /// Charge a write of `bytes` (quota, memory, bandwidth) before it starts.
    async fn start_write(&self, method: &str, bytes: u64) -> HostResult<Reservation> {
        self.require(method, Operation::Write).await?;
        let meter = self.scope.meter();
        let memory = meter.reserve(bytes)?;
        meter.start_write(bytes)?;
        meter.throttle(bytes).await;
        Ok(memory)
    }

    pub(super) async fn write(&self, offset: u64, data: Vec<u8>) -> HostResult<u64> {
        let len = data.len() as u64;
        let memory = Arc::new(self.start_write("write", len).await?);
        let result = backend_write(&self.open, self.scope.watch(), memory, offset, bytes::Bytes::from(data)).await;
        let written = match &result {
            Ok(n) => *n,
            Err(HostError::Rbd(Error::IncompleteWrite { written, .. })) => *written,
            Err(_) => 0,
        };
        self.scope.meter().refund_write(len.saturating_sub(written));
        self.audit("write", Operation::Write, &outcome(&result)).await;
        result
    }

    /// Several writes in flight at once (the job's I/O slots). They land in any order, so
    /// they must not overlap.
    pub(super) async fn write_ranges(&self, writes: Vec<types::WriteOp>) -> HostResult<u64> {
        let spans: Vec<(u64, u64)> = writes.iter().map(|w| (w.offset, w.data.len() as u64)).collect();
        let mut batch = self.start_writes("write-ranges", spans).await?;
        for w in writes {
            batch.spawn(w.offset, bytes::Bytes::from(w.data));
        }
        let result = batch.gather().await;
        self.audit("write-ranges", Operation::Write, &outcome(&result)).await;
        result
    }

    /// Check and charge a batch of writes (`spans`: offset and length of each) before any
    /// starts: at most [`MAX_RANGES_PER_CALL`], none overlapping (they land in any order).
    pub(super) async fn start_writes(&self, method: &str, mut spans: Vec<(u64, u64)>) -> HostResult<WriteBatch> {
        if spans.len() > MAX_RANGES_PER_CALL {
            self.require(method, Operation::Write).await?;
            return Err(Error::InvalidArgument(format!("{} writes in one call; at most {MAX_RANGES_PER_CALL}", spans.len())).into());
        }
        spans.sort_unstable();
        let total = spans.iter().fold(0u64, |n, (_, len)| n.saturating_add(*len));
        let memory = Arc::new(self.start_write(method, total).await?);
        for pair in spans.windows(2) {
            if pair[0].0.saturating_add(pair[0].1) > pair[1].0 {
                self.scope.meter().refund_write(total);
                return Err(Error::InvalidArgument(format!("writes at {} and {} overlap", pair[0].0, pair[1].0)).into());
            }
        }
        Ok(WriteBatch {
            open: self.open.clone(),
            slots: self.scope.io_slots().clone(),
            watch: self.scope.watch().clone(),
            meter: self.scope.meter().clone(),
            memory,
            total,
            tasks: AbortOnDrop(Vec::with_capacity(spans.len())),
        })
    }
}

/// Writes checked and charged together (`start_writes`), each started as soon as its
/// bytes are at hand, several in flight (the job's I/O slots). It holds no borrow of the
/// handle, so the bytes may come from another resource of the job (`write-from`).
pub(super) struct WriteBatch {
    open: Arc<super::image::OpenImage>,
    slots: Arc<tokio::sync::Semaphore>,
    watch: Arc<super::BackendWatch>,
    meter: Arc<Meter>,
    memory: Arc<Reservation>,
    /// Bytes charged for the whole batch.
    total: u64,
    /// Writes not yet begun when the job ends (this batch dropped) are abandoned.
    tasks: AbortOnDrop<HostResult<u64>>,
}

impl WriteBatch {
    pub(super) fn spawn(&mut self, offset: u64, data: bytes::Bytes) {
        let (open, slots, memory, watch) = (self.open.clone(), self.slots.clone(), self.memory.clone(), self.watch.clone());
        self.tasks.0.push(tokio::spawn(async move {
            let _permit = slots.acquire_owned().await;
            backend_write(&open, &watch, memory, offset, data).await
        }));
    }

    /// Wait for every write: the bytes written in all, or the first error (other writes
    /// may have landed). What was charged and not written is refunded.
    pub(super) async fn gather(mut self) -> HostResult<u64> {
        let (mut written, mut first_error) = (0u64, None);
        for task in self.tasks.0.iter_mut() {
            match task.await {
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => {
                    if let HostError::Rbd(Error::IncompleteWrite { written: n, .. }) = &e {
                        written += n;
                    }
                    first_error.get_or_insert(e);
                }
                Err(join) => {
                    first_error.get_or_insert(HostError::Trap(wasmtime::Error::msg(format!("write task failed: {join}"))));
                }
            }
        }
        self.meter.refund_write(self.total.saturating_sub(written));
        match first_error {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }
}

impl rbd::HostPendingReads for RbdView<'_> {
    async fn wait(&mut self, reads: Resource<PendingReads>) -> HostResult<Vec<types::ReadResult>> {
        self.ctx.meter().operation()?;
        self.table.get_mut(&reads)?.take().await
    }

    async fn wait_sums(&mut self, reads: Resource<PendingReads>) -> HostResult<Vec<Vec<u8>>> {
        self.ctx.meter().operation()?;
        let results = self.table.get_mut(&reads)?.take().await?;
        Ok(results.into_iter().map(|r| r.chunk_sha256).collect())
    }

    async fn write_to(
        &mut self,
        reads: Resource<PendingReads>,
        out: Resource<wasmtime_wasi::p2::DynOutputStream>,
        pieces: Vec<rbd::Piece>,
        hash: Option<Resource<crate::job_host::hashing::Sha256Job>>,
    ) -> HostResult<Vec<Vec<u8>>> {
        self.ctx.meter().operation()?;
        super::data_plane::write_to(self, reads, out, pieces, hash).await
    }

    async fn drop(&mut self, reads: Resource<PendingReads>) -> wasmtime::Result<()> {
        self.table.delete(reads)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::clipped;

    #[test]
    fn reads_are_clipped_at_the_end_of_the_image() {
        assert_eq!(clipped(0, 10, 100), 10);
        assert_eq!(clipped(95, 10, 100), 5);
        assert_eq!(clipped(100, 10, 100), 0);
        assert_eq!(clipped(u64::MAX - 1, 10, 100), 0);
    }
}
