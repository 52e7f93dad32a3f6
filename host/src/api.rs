//! The guest-facing `ceph:rbd` API: the host side of every WIT function.
//!
//! A guest reaches a backend only through the handles minted here, each carrying the
//! capability it was minted under (see [`crate::capability`]). Backend calls are blocking,
//! so each runs on tokio's blocking pool; the guest awaits it without blocking the executor.
//! Errors are mapped to the WIT `error` once, in [`HostError`] and `convert_error`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rbd_backend::{Backend, Error, Image};
use tokio::sync::Semaphore;
use wasmtime::component::{HasData, Resource, ResourceTable, ResourceTableError};

use crate::bindings::ceph::rbd::{job_host, rbd, types};
use crate::audit::{Audit, Target};
use crate::capability::{Grants, ImageCapability, Operation, PoolCapability};
use crate::hashing::Sha256Job;
use crate::meter::Meter;

/// The error of a host function: an RBD error the guest sees, or a trap that ends the job.
#[derive(Debug)]
pub enum HostError {
    Rbd(Error),
    Trap(wasmtime::Error),
}

impl From<Error> for HostError {
    fn from(e: Error) -> Self {
        HostError::Rbd(e)
    }
}

impl From<ResourceTableError> for HostError {
    /// A handle the table does not know: the guest forged or reused one. That is a bug in the
    /// guest (its bindings never do this), so it traps.
    fn from(e: ResourceTableError) -> Self {
        HostError::Trap(wasmtime::Error::msg(format!("invalid handle: {e}")))
    }
}

type HostResult<T> = Result<T, HostError>;

/// Most reads a guest may ask for in one call, after clipping to the image: a guest that
/// wants more reads in pieces (and cannot make the host allocate an image's worth at once).
pub const MAX_READ_BYTES: u64 = 64 << 20;
/// Most ranges in one `read-ranges` call.
pub const MAX_RANGES_PER_CALL: usize = 1024;
/// Objects covered by one backend diff call behind `next-batch`: bounds a batch's memory.
const DIFF_WINDOW_OBJECTS: u64 = 1024;
/// A window that found nothing doubles, up to this many times the base, so a huge sparse
/// image takes a few dozen backend calls rather than thousands (each librbd diff call costs
/// milliseconds even over empty objects).
const DIFF_WINDOW_MAX_GROWTH: u64 = 64;

/// Run a blocking backend call off the async executor. A panic in the backend becomes a
/// trap of this job, never a crash of the host.
async fn blocking<T, F>(f: F) -> HostResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(HostError::Rbd),
        Err(join) => Err(HostError::Trap(wasmtime::Error::msg(format!("backend call failed: {join}")))),
    }
}

/// Per-job state of the RBD API.
pub struct RbdCtx {
    backend: Arc<dyn Backend>,
    grants: Grants,
    /// Bounds the backend reads one job keeps in flight.
    io_slots: Arc<Semaphore>,
    progress: Option<Arc<dyn Fn(types::Progress) + Send + Sync>>,
    /// Advisory locks this job took and has not released: (pool, image, cookie).
    held_locks: Vec<(String, String, String)>,
    audit: Audit,
    meter: Arc<Meter>,
}

impl RbdCtx {
    pub fn new(backend: Arc<dyn Backend>, grants: Grants, reads_in_flight: usize, audit: Audit, meter: Arc<Meter>) -> Self {
        RbdCtx {
            backend,
            grants,
            io_slots: Arc::new(Semaphore::new(reads_in_flight.max(1))),
            progress: None,
            held_locks: Vec::new(),
            audit,
            meter,
        }
    }

    /// Release every advisory lock the job still holds. Ceph keeps a lock until its holder
    /// unlocks it (or someone breaks it), whatever became of the holder's handle, so the host
    /// does it for a job however the job ended. Each image is reopened for this: the job may
    /// have closed its handle, and a lock belongs to the client, not to the handle.
    pub async fn release_locks(&mut self) {
        for (pool, image, cookie) in std::mem::take(&mut self.held_locks) {
            let backend = self.backend.clone();
            let result = blocking(move || backend.open(&pool, &image, None, false)?.unlock(&cookie)).await;
            match result {
                Ok(()) | Err(HostError::Rbd(Error::NotFound(_))) => {}
                Err(e) => tracing::warn!("releasing a lock the job left behind failed: {e:?}"),
            }
        }
    }

    /// Where `report-progress` goes.
    pub fn on_progress(&mut self, sink: Arc<dyn Fn(types::Progress) + Send + Sync>) {
        self.progress = Some(sink);
    }
}

/// What the generated host traits are implemented on: the API state and the resource table.
pub struct RbdView<'a> {
    pub ctx: &'a mut RbdCtx,
    pub table: &'a mut ResourceTable,
}

/// Marker for `add_to_linker`: the data of the RBD interfaces is an [`RbdView`].
pub struct HasRbd;

impl HasData for HasRbd {
    type Data<'a> = RbdView<'a>;
}

/// A granted pool, as the guest holds it.
pub struct PoolHandle {
    cap: PoolCapability,
}

/// An open image, as the guest holds it.
pub struct ImageHandle {
    open: Arc<OpenImage>,
    cap: ImageCapability,
    audit: Audit,
    meter: Arc<Meter>,
}

/// The backend image behind a handle, shared with the handle's diff iterators. Closing it
/// (dropping the handle) closes the backend image at once; an iterator then answers
/// `not-found`.
struct OpenImage {
    image: RwLock<Option<Box<dyn Image>>>,
    /// Bumped by every set-snap, so an iterator can tell that its end state changed.
    selection: AtomicU64,
}

impl OpenImage {
    fn with<T>(&self, f: impl FnOnce(&dyn Image) -> Result<T, Error>) -> Result<T, Error> {
        let guard = self.image.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        match guard.as_deref() {
            Some(image) => f(image),
            None => Err(Error::NotFound("the image was closed".into())),
        }
    }

    fn is_open(&self) -> bool {
        self.image.read().unwrap_or_else(|poisoned| poisoned.into_inner()).is_some()
    }

    fn close(&self) {
        let mut guard = self.image.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.take();
    }
}

/// Reads started by `start-reads` (and by `read-ranges`, which waits at once).
pub struct PendingReads {
    /// None once waited for.
    tasks: Option<Vec<tokio::task::JoinHandle<HostResult<types::ReadResult>>>>,
    meter: Arc<Meter>,
}

impl PendingReads {
    /// The results in the order asked; the first error if any read failed.
    async fn wait(mut self) -> HostResult<Vec<types::ReadResult>> {
        self.take().await
    }

    async fn take(&mut self) -> HostResult<Vec<types::ReadResult>> {
        let tasks = self.tasks.take().ok_or_else(|| Error::Logic("these reads were already waited for".into()))?;
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            match task.await {
                Ok(result) => out.push(result?),
                Err(join) => return Err(HostError::Trap(wasmtime::Error::msg(format!("read task failed: {join}")))),
            }
        }
        self.meter.charge_read(out.iter().map(|r| r.data.len() as u64).sum());
        Ok(out)
    }
}

/// A diff-iterate in progress.
pub struct DiffIterator {
    open: Arc<OpenImage>,
    from: Option<String>,
    include_parent: bool,
    whole_object: bool,
    next: u64,
    end: u64,
    /// The current window; grows over empty stretches, back to `base_window` after data.
    window: u64,
    base_window: u64,
    selection: u64,
    /// The batch computed when the iterator was made, not yet handed out.
    pending: Option<Vec<types::Extent>>,
}

impl ImageHandle {
    /// Run `f` on the backend image after checking `op` against the handle's capability.
    /// A denial, and every call of a mutating operation, goes to the audit log.
    async fn call<T, F>(&self, method: &str, op: Option<Operation>, f: F) -> HostResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Image) -> Result<T, Error> + Send + 'static,
    {
        self.meter.operation()?;
        if let Some(op) = op {
            if let Err(denied) = self.cap.require(op) {
                audit_call(&self.audit, &self.cap, method, op, &Err::<(), _>(denied.clone()));
                return Err(denied.into());
            }
        }
        let open = self.open.clone();
        let result = blocking(move || open.with(f)).await;
        if let Some(op) = op.filter(|op| op.mutates()) {
            audit_call(&self.audit, &self.cap, method, op, &outcome(&result));
        }
        result
    }
}

/// A host result as the audit log sees it.
fn outcome<T>(result: &HostResult<T>) -> Result<(), Error> {
    match result {
        Ok(_) => Ok(()),
        Err(HostError::Rbd(e)) => Err(e.clone()),
        Err(HostError::Trap(t)) => Err(Error::Logic(format!("trap: {t}"))),
    }
}

fn audit_call(audit: &Audit, cap: &ImageCapability, method: &str, op: Operation, result: &Result<(), Error>) {
    let target = Target { pool: cap.pool(), image: Some(cap.image()), method, operation: op.name(), grant: cap.grant() };
    audit.record(&target, result);
}

impl RbdView<'_> {
    fn image(&self, handle: &Resource<ImageHandle>) -> HostResult<&ImageHandle> {
        Ok(self.table.get(handle)?)
    }

    /// Check, charge and start the reads of `read-ranges` and `start-reads`: several in
    /// flight (a semaphore per job), each hashed in `chunk` pieces as it is read if asked.
    async fn start_ranges(
        &mut self,
        image: &Resource<ImageHandle>,
        ranges: Vec<types::Range>,
        chunk: Option<u32>,
    ) -> HostResult<PendingReads> {
        let handle = self.image(image)?;
        handle.meter.operation()?;
        handle.cap.require(Operation::Read)?;
        if ranges.len() > MAX_RANGES_PER_CALL {
            return Err(Error::InvalidArgument(format!(
                "{} ranges in one call; at most {MAX_RANGES_PER_CALL}",
                ranges.len()
            ))
            .into());
        }
        let total: u64 = ranges.iter().fold(0u64, |acc, r| acc.saturating_add(r.length));
        let open = handle.open.clone();
        if total > MAX_READ_BYTES {
            // Clipping could still bring it under the limit; check against the real size.
            let size = blocking({
                let open = open.clone();
                move || open.with(|i| i.size())
            })
            .await?;
            let clipped: u64 = ranges
                .iter()
                .map(|r| if r.offset >= size { 0 } else { r.length.min(size - r.offset) })
                .fold(0u64, |acc, l| acc.saturating_add(l));
            if clipped > MAX_READ_BYTES {
                return Err(read_limit_error(clipped).into());
            }
        }
        let meter = handle.meter.clone();
        meter.check_read(total.min(MAX_READ_BYTES))?;
        meter.throttle(total.min(MAX_READ_BYTES)).await;
        let slots = self.ctx.io_slots.clone();
        let mut tasks = Vec::with_capacity(ranges.len());
        for r in ranges {
            let open = open.clone();
            let slots = slots.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = slots.acquire_owned().await;
                blocking(move || {
                    let data = open.with(|i| read_clipped(i, r.offset, r.length))?;
                    let chunk_sha256 = chunk.map(|c| crate::hashing::chunk_digests(&data, c)).unwrap_or_default();
                    Ok(types::ReadResult { data, chunk_sha256 })
                })
                .await
            }));
        }
        Ok(PendingReads { tasks: Some(tasks), meter })
    }

    /// The capability for a pool-level call naming `image`; a denial (an image outside the
    /// grant, or an operation it does not allow) is audited.
    fn require(&self, pool: &Resource<PoolHandle>, image: &str, method: &str, op: Operation) -> HostResult<ImageCapability> {
        self.ctx.meter.operation()?;
        let cap = &self.pool(pool)?.cap;
        cap.require(image, op).map_err(|denied| {
            // Denied for want of the operation (a grant matched), or invisible (none did).
            let grant = cap.image(image).map(|c| c.grant().to_owned()).unwrap_or_else(|_| "none".into());
            let target = Target { pool: cap.pool(), image: Some(image), method, operation: op.name(), grant: &grant };
            self.ctx.audit.record(&target, &Err::<(), _>(denied.clone()));
            HostError::from(denied)
        })
    }

    /// Audit the end of a pool-level mutating call.
    fn audited<T>(&self, cap: &ImageCapability, method: &str, op: Operation, result: HostResult<T>) -> HostResult<T> {
        audit_call(&self.ctx.audit, cap, method, op, &outcome(&result));
        result
    }

    fn pool(&self, handle: &Resource<PoolHandle>) -> HostResult<&PoolHandle> {
        Ok(self.table.get(handle)?)
    }
}

impl types::Host for RbdView<'_> {
    fn convert_error(&mut self, err: HostError) -> wasmtime::Result<types::Error> {
        match err {
            HostError::Rbd(e) => Ok(to_wit_error(e)),
            HostError::Trap(t) => Err(t),
        }
    }
}

/// The one mapping from the backend error to the WIT error.
fn to_wit_error(e: Error) -> types::Error {
    use types::Error as W;
    let message = e.to_string();
    match e {
        Error::NotFound(_) => W::NotFound(message),
        Error::Exists(_) => W::Exists(message),
        Error::Busy(_) => W::Busy(message),
        Error::HasSnapshots(_) => W::HasSnapshots(message),
        Error::ReadOnly(_) => W::ReadOnly(message),
        Error::InvalidArgument(_) => W::InvalidArgument(message),
        Error::OutOfRange(_) => W::OutOfRange(message),
        Error::NotSupported(_) => W::NotSupported(message),
        Error::PermissionDenied(_) => W::PermissionDenied(message),
        Error::Io(_) => W::Io(message),
        Error::IncompleteWrite { requested, written } => {
            W::IncompleteWrite(types::IncompleteWrite { requested, written })
        }
        Error::Logic(_) => W::Logic(message),
        Error::TypeError(_) => W::TypeError(message),
        Error::NoSpace(_) => W::NoSpace(message),
        Error::QuotaExceeded(_) => W::QuotaExceeded(message),
        Error::Timeout(_) => W::Timeout(message),
        Error::ConnectionShutdown(_) => W::ConnectionShutdown(message),
        Error::Other { errno, message } => W::Other(types::ErrnoError { errno, message }),
    }
}

impl job_host::Host for RbdView<'_> {
    async fn report_progress(&mut self, progress: types::Progress) -> wasmtime::Result<()> {
        if let Some(sink) = &self.ctx.progress {
            sink(progress);
        }
        Ok(())
    }

    async fn sha256_chunks(&mut self, data: Vec<u8>, chunk_size: u32) -> wasmtime::Result<Vec<u8>> {
        crate::hashing::sha256_chunks(data, chunk_size).await
    }
}

/// Hashers are pure computation, but each holds host memory: they count as handles.
impl job_host::HostSha256 for RbdView<'_> {
    async fn new(&mut self) -> wasmtime::Result<Resource<Sha256Job>> {
        if let Err(e) = self.ctx.meter.acquire_handle() {
            return Err(wasmtime::Error::msg(format!("cannot make a hasher: {e}")));
        }
        Ok(self.table.push(Sha256Job::new())?)
    }

    async fn update(&mut self, hasher: Resource<Sha256Job>, data: Vec<u8>) -> wasmtime::Result<()> {
        self.table.get_mut(&hasher)?.update(data).await
    }

    async fn finish(&mut self, hasher: Resource<Sha256Job>) -> wasmtime::Result<Vec<u8>> {
        self.table.get_mut(&hasher)?.finish().await
    }

    async fn drop(&mut self, hasher: Resource<Sha256Job>) -> wasmtime::Result<()> {
        self.table.delete(hasher)?;
        self.ctx.meter.release_handle();
        Ok(())
    }
}

impl rbd::Host for RbdView<'_> {
    async fn version(&mut self) -> wasmtime::Result<types::VersionInfo> {
        let v = self.ctx.backend.version();
        Ok(types::VersionInfo { major: v.major, minor: v.minor, extra: v.extra })
    }

    async fn granted_pools(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.ctx.grants.pools())
    }

    async fn open_pool(&mut self, name: String) -> HostResult<Resource<PoolHandle>> {
        self.ctx.meter.operation()?;
        let cap = self.ctx.grants.pool(&name).inspect_err(|denied| {
            let target = Target { pool: &name, image: None, method: "open-pool", operation: "read", grant: "none" };
            self.ctx.audit.record(&target, &Err::<(), _>(denied.clone()));
        })?;
        let backend = self.ctx.backend.clone();
        blocking(move || backend.open_pool(&name)).await?;
        self.ctx.meter.acquire_handle()?;
        Ok(self.table.push(PoolHandle { cap })?)
    }
}

impl rbd::HostPool for RbdView<'_> {
    async fn name(&mut self, pool: Resource<PoolHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&pool)?.cap.pool().to_owned())
    }

    async fn create(
        &mut self,
        pool: Resource<PoolHandle>,
        name: String,
        size: u64,
        options: types::CreateOptions,
    ) -> HostResult<()> {
        let cap = self.require(&pool, &name, "create", Operation::Create)?;
        let backend = self.ctx.backend.clone();
        let options = rbd_backend::CreateOptions {
            order: options.order,
            old_format: options.old_format,
            features: options.features,
            stripe_unit: options.stripe_unit,
            stripe_count: options.stripe_count,
        };
        let pool_name = cap.pool().to_owned();
        let result = blocking(move || backend.create(&pool_name, &name, size, &options)).await;
        self.audited(&cap, "create", Operation::Create, result)
    }

    async fn clone(
        &mut self,
        pool: Resource<PoolHandle>,
        parent: String,
        parent_snap: String,
        dest: Resource<PoolHandle>,
        child_name: String,
        options: types::CloneOptions,
    ) -> HostResult<()> {
        let parent_cap = self.require(&pool, &parent, "clone", Operation::Clone)?;
        let child_cap = self.require(&dest, &child_name, "clone", Operation::Create)?;
        let backend = self.ctx.backend.clone();
        let options = rbd_backend::CloneOptions { features: options.features, order: options.order };
        let (parent_pool, child_pool) = (parent_cap.pool().to_owned(), child_cap.pool().to_owned());
        let result = blocking(move || {
            backend.clone_image(&parent_pool, &parent, &parent_snap, &child_pool, &child_name, &options)
        })
        .await;
        self.audited(&child_cap, "clone", Operation::Create, result)
    }

    async fn list(&mut self, pool: Resource<PoolHandle>) -> HostResult<Vec<String>> {
        let cap = self.pool(&pool)?.cap.clone();
        let backend = self.ctx.backend.clone();
        blocking(move || {
            let mut names = backend.list(cap.pool())?;
            names.retain(|n| cap.can_see(n));
            Ok(names)
        })
        .await
    }

    async fn remove(&mut self, pool: Resource<PoolHandle>, name: String) -> HostResult<()> {
        let cap = self.require(&pool, &name, "remove", Operation::Remove)?;
        let backend = self.ctx.backend.clone();
        let pool_name = cap.pool().to_owned();
        let result = blocking(move || backend.remove(&pool_name, &name)).await;
        self.audited(&cap, "remove", Operation::Remove, result)
    }

    async fn rename(&mut self, pool: Resource<PoolHandle>, src: String, dest: String) -> HostResult<()> {
        let cap = self.require(&pool, &src, "rename", Operation::Rename)?;
        self.require(&pool, &dest, "rename", Operation::Create)?;
        let backend = self.ctx.backend.clone();
        let pool_name = cap.pool().to_owned();
        let result = blocking(move || backend.rename(&pool_name, &src, &dest)).await;
        self.audited(&cap, "rename", Operation::Rename, result)
    }

    async fn open(
        &mut self,
        pool: Resource<PoolHandle>,
        name: String,
        options: types::OpenOptions,
    ) -> HostResult<Resource<ImageHandle>> {
        let cap = self.require(&pool, &name, "open", Operation::Read)?;
        let read_only = options.read_only || cap.operations().is_read_only();
        let backend = self.ctx.backend.clone();
        let pool_name = cap.pool().to_owned();
        let image = blocking(move || {
            backend.open(&pool_name, &name, options.snapshot.as_deref(), read_only)
        })
        .await?;
        let open = Arc::new(OpenImage { image: RwLock::new(Some(image)), selection: AtomicU64::new(0) });
        self.ctx.meter.acquire_handle()?;
        let (audit, meter) = (self.ctx.audit.clone(), self.ctx.meter.clone());
        Ok(self.table.push(ImageHandle { open, cap, audit, meter })?)
    }

    async fn drop(&mut self, pool: Resource<PoolHandle>) -> wasmtime::Result<()> {
        self.table.delete(pool)?;
        self.ctx.meter.release_handle();
        Ok(())
    }
}

impl rbd::HostPendingReads for RbdView<'_> {
    async fn wait(&mut self, reads: Resource<PendingReads>) -> HostResult<Vec<types::ReadResult>> {
        self.table.get_mut(&reads)?.take().await
    }

    async fn drop(&mut self, reads: Resource<PendingReads>) -> wasmtime::Result<()> {
        // Reads not waited for finish on the blocking pool and are dropped.
        self.table.delete(reads)?;
        self.ctx.meter.release_handle();
        Ok(())
    }
}

impl rbd::HostImage for RbdView<'_> {
    async fn name(&mut self, image: Resource<ImageHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&image)?.cap.image().to_owned())
    }

    async fn size(&mut self, image: Resource<ImageHandle>) -> HostResult<u64> {
        self.image(&image)?.call("size", None, |i| i.size()).await
    }

    async fn stat(&mut self, image: Resource<ImageHandle>) -> HostResult<types::ImageStat> {
        let s = self.image(&image)?.call("stat", None, |i| i.stat()).await?;
        Ok(types::ImageStat {
            size: s.size,
            obj_size: s.obj_size,
            num_objs: s.num_objs,
            order: s.order,
            block_name_prefix: s.block_name_prefix,
            parent_pool: s.parent_pool,
            parent_name: s.parent_name,
        })
    }

    async fn features(&mut self, image: Resource<ImageHandle>) -> HostResult<u64> {
        self.image(&image)?.call("features", None, |i| i.features()).await
    }

    async fn old_format(&mut self, image: Resource<ImageHandle>) -> HostResult<bool> {
        self.image(&image)?.call("old-format", None, |i| i.old_format()).await
    }

    async fn stripe_unit(&mut self, image: Resource<ImageHandle>) -> HostResult<u64> {
        self.image(&image)?.call("stripe-unit", None, |i| i.stripe_unit()).await
    }

    async fn stripe_count(&mut self, image: Resource<ImageHandle>) -> HostResult<u64> {
        self.image(&image)?.call("stripe-count", None, |i| i.stripe_count()).await
    }

    async fn read(&mut self, image: Resource<ImageHandle>, offset: u64, length: u64) -> HostResult<Vec<u8>> {
        let handle = self.image(&image)?;
        let meter = handle.meter.clone();
        meter.check_read(length.min(MAX_READ_BYTES))?;
        meter.throttle(length.min(MAX_READ_BYTES)).await;
        let data = handle.call("read", Some(Operation::Read), move |i| read_clipped(i, offset, length)).await?;
        meter.charge_read(data.len() as u64);
        Ok(data)
    }

    async fn read_ranges(
        &mut self,
        image: Resource<ImageHandle>,
        ranges: Vec<types::Range>,
    ) -> HostResult<Vec<Vec<u8>>> {
        let reads = self.start_ranges(&image, ranges, None).await?;
        Ok(reads.wait().await?.into_iter().map(|r| r.data).collect())
    }

    async fn start_reads(
        &mut self,
        image: Resource<ImageHandle>,
        ranges: Vec<types::Range>,
        chunk_size: Option<u32>,
    ) -> HostResult<Resource<PendingReads>> {
        if chunk_size == Some(0) {
            return Err(Error::InvalidArgument("a chunk size of 0".into()).into());
        }
        let reads = self.start_ranges(&image, ranges, chunk_size).await?;
        self.ctx.meter.acquire_handle()?;
        Ok(self.table.push(reads)?)
    }

    async fn write(&mut self, image: Resource<ImageHandle>, offset: u64, data: Vec<u8>) -> HostResult<u64> {
        let handle = self.image(&image)?;
        let (meter, len) = (handle.meter.clone(), data.len() as u64);
        meter.check_write(len)?;
        meter.throttle(len).await;
        let result = handle.call("write", Some(Operation::Write), move |i| i.write(offset, &data)).await;
        match &result {
            Ok(n) => meter.charge_write(*n),
            Err(HostError::Rbd(Error::IncompleteWrite { written, .. })) => meter.charge_write(*written),
            Err(_) => {}
        }
        result
    }

    async fn write_ranges(&mut self, image: Resource<ImageHandle>, writes: Vec<types::WriteOp>) -> HostResult<u64> {
        let handle = self.image(&image)?;
        handle.meter.operation()?;
        if let Err(denied) = handle.cap.require(Operation::Write) {
            audit_call(&handle.audit, &handle.cap, "write-ranges", Operation::Write, &Err(denied.clone()));
            return Err(denied.into());
        }
        if writes.len() > MAX_RANGES_PER_CALL {
            return Err(Error::InvalidArgument(format!("{} writes in one call; at most {MAX_RANGES_PER_CALL}", writes.len())).into());
        }
        // They land in any order, so they must not overlap.
        let mut spans: Vec<(u64, u64)> = writes.iter().map(|w| (w.offset, w.data.len() as u64)).collect();
        spans.sort_unstable();
        for pair in spans.windows(2) {
            if pair[0].0.saturating_add(pair[0].1) > pair[1].0 {
                return Err(Error::InvalidArgument(format!("writes at {} and {} overlap", pair[0].0, pair[1].0)).into());
            }
        }
        let total: u64 = spans.iter().map(|(_, len)| len).sum();
        let meter = handle.meter.clone();
        meter.check_write(total)?;
        meter.throttle(total).await;
        let slots = self.ctx.io_slots.clone();
        let mut tasks = Vec::with_capacity(writes.len());
        for w in writes {
            let open = handle.open.clone();
            let slots = slots.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = slots.acquire_owned().await;
                blocking(move || open.with(|i| i.write(w.offset, &w.data))).await
            }));
        }
        let (mut written, mut first_error) = (0u64, None);
        for task in tasks {
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
        meter.charge_write(written);
        let result = match first_error {
            Some(e) => Err(e),
            None => Ok(written),
        };
        audit_call(&handle.audit, &handle.cap, "write-ranges", Operation::Write, &outcome(&result));
        result
    }

    async fn discard(&mut self, image: Resource<ImageHandle>, offset: u64, length: u64) -> HostResult<()> {
        self.image(&image)?.call("discard", Some(Operation::Write), move |i| i.discard(offset, length)).await
    }

    async fn flush(&mut self, image: Resource<ImageHandle>) -> HostResult<()> {
        self.image(&image)?.call("flush", None, |i| i.flush()).await
    }

    async fn invalidate_cache(&mut self, image: Resource<ImageHandle>) -> HostResult<()> {
        self.image(&image)?.call("invalidate-cache", None, |i| i.invalidate_cache()).await
    }

    async fn resize(&mut self, image: Resource<ImageHandle>, size: u64) -> HostResult<()> {
        self.image(&image)?.call("resize", Some(Operation::Resize), move |i| i.resize(size)).await
    }

    async fn create_snap(&mut self, image: Resource<ImageHandle>, name: String) -> HostResult<()> {
        self.image(&image)?.call("create-snap", Some(Operation::SnapshotCreate), move |i| i.create_snap(&name)).await
    }

    async fn remove_snap(&mut self, image: Resource<ImageHandle>, name: String) -> HostResult<()> {
        self.image(&image)?.call("remove-snap", Some(Operation::SnapshotRemove), move |i| i.remove_snap(&name)).await
    }

    async fn rollback_to_snap(&mut self, image: Resource<ImageHandle>, name: String) -> HostResult<()> {
        self.image(&image)?
            .call("rollback-to-snap", Some(Operation::SnapshotRollback), move |i| i.rollback_to_snap(&name))
            .await
    }

    async fn protect_snap(&mut self, image: Resource<ImageHandle>, name: String) -> HostResult<()> {
        self.image(&image)?.call("protect-snap", Some(Operation::SnapshotProtect), move |i| i.protect_snap(&name)).await
    }

    async fn unprotect_snap(&mut self, image: Resource<ImageHandle>, name: String) -> HostResult<()> {
        self.image(&image)?.call("unprotect-snap", Some(Operation::SnapshotProtect), move |i| i.unprotect_snap(&name)).await
    }

    async fn is_protected_snap(&mut self, image: Resource<ImageHandle>, name: String) -> HostResult<bool> {
        self.image(&image)?.call("is-protected-snap", Some(Operation::Read), move |i| i.is_protected_snap(&name)).await
    }

    async fn list_snaps(&mut self, image: Resource<ImageHandle>) -> HostResult<Vec<types::SnapInfo>> {
        let snaps = self.image(&image)?.call("list-snaps", Some(Operation::Read), |i| i.list_snaps()).await?;
        Ok(snaps.into_iter().map(|s| types::SnapInfo { id: s.id, size: s.size, name: s.name, timestamp: s.timestamp }).collect())
    }

    async fn set_snap(&mut self, image: Resource<ImageHandle>, name: Option<String>) -> HostResult<()> {
        let handle = self.image(&image)?;
        let open = handle.open.clone();
        handle.call("set-snap", Some(Operation::Read), move |i| i.set_snap(name.as_deref())).await?;
        open.selection.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn diff_iterate(
        &mut self,
        image: Resource<ImageHandle>,
        offset: u64,
        length: u64,
        from_snapshot: Option<String>,
        include_parent: bool,
        whole_object: bool,
    ) -> HostResult<Resource<DiffIterator>> {
        let handle = self.image(&image)?;
        let open = handle.open.clone();
        let selection = open.selection.load(Ordering::SeqCst);
        let end = offset.checked_add(length).ok_or_else(|| {
            Error::InvalidArgument(format!("offset {offset} + length {length} overflows"))
        })?;
        // The first window runs now, so a bad from-snapshot fails here and not at the
        // first batch.
        let from = from_snapshot.clone();
        let (stat, first) = handle
            .call("diff-iterate", Some(Operation::Read), move |i| {
                let stat = i.stat()?;
                let end = end.min(stat.size);
                let window = diff_window(stat.obj_size);
                let length = window.min(end.saturating_sub(offset));
                let batch = diff_batch(i, offset, length, from.as_deref(), include_parent, whole_object)?;
                Ok((stat, batch))
            })
            .await?;
        let window = diff_window(stat.obj_size);
        let end = end.min(stat.size);
        let iter = DiffIterator {
            open,
            from: from_snapshot,
            include_parent,
            whole_object,
            next: offset.saturating_add(window).min(end.max(offset)),
            end,
            window,
            base_window: window,
            selection,
            pending: Some(first).filter(|b| !b.is_empty()),
        };
        self.ctx.meter.acquire_handle()?;
        Ok(self.table.push(iter)?)
    }

    async fn list_children(&mut self, image: Resource<ImageHandle>) -> HostResult<Vec<types::Child>> {
        let children = self.image(&image)?.call("list-children", Some(Operation::Read), |i| i.list_children()).await?;
        Ok(children.into_iter().map(|c| types::Child { pool: c.pool, image: c.image }).collect())
    }

    async fn parent_info(
        &mut self,
        image: Resource<ImageHandle>,
    ) -> HostResult<Option<(String, String, String)>> {
        let parent = self.image(&image)?.call("parent-info", Some(Operation::Read), |i| i.parent_info()).await?;
        Ok(parent.map(|p| (p.pool, p.image, p.snap)))
    }

    async fn flatten(&mut self, image: Resource<ImageHandle>) -> HostResult<()> {
        self.image(&image)?.call("flatten", Some(Operation::Write), |i| i.flatten()).await
    }

    async fn copy(
        &mut self,
        image: Resource<ImageHandle>,
        dest: Resource<PoolHandle>,
        dest_name: String,
    ) -> HostResult<()> {
        let dest_cap = self.require(&dest, &dest_name, "copy", Operation::Create)?;
        let dest_pool = dest_cap.pool().to_owned();
        let result = self.image(&image)?.call("copy", Some(Operation::Read), move |i| i.copy(&dest_pool, &dest_name)).await;
        self.audited(&dest_cap, "copy", Operation::Create, result)
    }

    async fn list_lockers(&mut self, image: Resource<ImageHandle>) -> HostResult<types::LockInfo> {
        let info = self.image(&image)?.call("list-lockers", Some(Operation::Read), |i| i.list_lockers()).await?;
        Ok(types::LockInfo {
            tag: info.tag,
            exclusive: info.exclusive,
            lockers: info
                .lockers
                .into_iter()
                .map(|l| types::Locker { client: l.client, cookie: l.cookie, address: l.address })
                .collect(),
        })
    }

    async fn lock_exclusive(&mut self, image: Resource<ImageHandle>, cookie: String) -> HostResult<()> {
        let handle = self.image(&image)?;
        let held = (handle.cap.pool().to_owned(), handle.cap.image().to_owned(), cookie.clone());
        handle.call("lock-exclusive", Some(Operation::Lock), move |i| i.lock_exclusive(&cookie)).await?;
        self.ctx.held_locks.push(held);
        Ok(())
    }

    async fn lock_shared(&mut self, image: Resource<ImageHandle>, cookie: String, tag: String) -> HostResult<()> {
        let handle = self.image(&image)?;
        let held = (handle.cap.pool().to_owned(), handle.cap.image().to_owned(), cookie.clone());
        handle.call("lock-shared", Some(Operation::Lock), move |i| i.lock_shared(&cookie, &tag)).await?;
        self.ctx.held_locks.push(held);
        Ok(())
    }

    async fn unlock(&mut self, image: Resource<ImageHandle>, cookie: String) -> HostResult<()> {
        let handle = self.image(&image)?;
        let (pool, name) = (handle.cap.pool().to_owned(), handle.cap.image().to_owned());
        let released = cookie.clone();
        handle.call("unlock", Some(Operation::Lock), move |i| i.unlock(&cookie)).await?;
        self.ctx.held_locks.retain(|(p, i, c)| !(p == &pool && i == &name && c == &released));
        Ok(())
    }

    async fn break_lock(&mut self, image: Resource<ImageHandle>, client: String, cookie: String) -> HostResult<()> {
        self.image(&image)?.call("break-lock", Some(Operation::BreakLock), move |i| i.break_lock(&client, &cookie)).await
    }

    async fn lock_client(&mut self, image: Resource<ImageHandle>) -> wasmtime::Result<String> {
        self.table.get(&image)?;
        Ok(self.ctx.backend.client_name())
    }

    async fn drop(&mut self, image: Resource<ImageHandle>) -> wasmtime::Result<()> {
        let handle = self.table.delete(image)?;
        self.ctx.meter.release_handle();
        // Closing waits for reads in flight on the blocking pool: do it there too.
        let open = handle.open;
        tokio::task::spawn_blocking(move || open.close())
            .await
            .map_err(|e| wasmtime::Error::msg(format!("closing an image failed: {e}")))?;
        Ok(())
    }
}

impl rbd::HostDiffIterator for RbdView<'_> {
    async fn next_batch(&mut self, iter: Resource<DiffIterator>) -> HostResult<Option<Vec<types::Extent>>> {
        let it = self.table.get_mut(&iter)?;
        if !it.open.is_open() {
            return Err(Error::NotFound("the image of this diff-iterate was closed".into()).into());
        }
        if it.open.selection.load(Ordering::SeqCst) != it.selection {
            return Err(Error::InvalidArgument(
                "set-snap was called while this diff-iterate was in progress".into(),
            )
            .into());
        }
        if let Some(batch) = it.pending.take() {
            return Ok(Some(batch));
        }
        loop {
            let it = self.table.get(&iter)?;
            if it.next >= it.end {
                return Ok(None);
            }
            let start = it.next;
            let length = it.window.min(it.end - start);
            let (open, from) = (it.open.clone(), it.from.clone());
            let (include_parent, whole_object) = (it.include_parent, it.whole_object);
            let batch = blocking(move || {
                open.with(|i| diff_batch(i, start, length, from.as_deref(), include_parent, whole_object))
            })
            .await?;
            let it = self.table.get_mut(&iter)?;
            it.next = start + length;
            if batch.is_empty() {
                let max = it.base_window.saturating_mul(DIFF_WINDOW_MAX_GROWTH);
                it.window = it.window.saturating_mul(2).min(max);
            } else {
                it.window = it.base_window;
                return Ok(Some(batch));
            }
        }
    }

    async fn drop(&mut self, iter: Resource<DiffIterator>) -> wasmtime::Result<()> {
        self.table.delete(iter)?;
        self.ctx.meter.release_handle();
        Ok(())
    }
}

fn diff_window(obj_size: u64) -> u64 {
    obj_size.saturating_mul(DIFF_WINDOW_OBJECTS).max(1)
}

/// One backend diff call over `[offset, offset + length)`, collected.
fn diff_batch(
    image: &dyn Image,
    offset: u64,
    length: u64,
    from: Option<&str>,
    include_parent: bool,
    whole_object: bool,
) -> Result<Vec<types::Extent>, Error> {
    let mut batch = Vec::new();
    image.diff_iterate(offset, length, from, include_parent, whole_object, &mut |e| {
        batch.push(types::Extent { offset: e.offset, length: e.length, exists: e.exists })
    })?;
    Ok(batch)
}

/// Read with librbd's clipping, and the per-call size limit.
fn read_clipped(image: &dyn Image, offset: u64, length: u64) -> Result<Vec<u8>, Error> {
    if length > MAX_READ_BYTES {
        let size = image.size()?;
        let clipped = if offset >= size { 0 } else { length.min(size - offset) };
        if clipped > MAX_READ_BYTES {
            return Err(read_limit_error(clipped));
        }
    }
    image.read(offset, length)
}

fn read_limit_error(bytes: u64) -> Error {
    Error::InvalidArgument(format!(
        "a read of {bytes} bytes is over the per-call limit of {MAX_READ_BYTES} bytes; read in pieces"
    ))
}
