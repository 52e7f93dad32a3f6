//! The `image` resource: an open image and the capability it was opened under.
//!
//! [`ImageHandle::call`] is where a method's operation is charged, checked against the
//! capability and audited; every method of the handle goes through it (or, for I/O, through
//! [`ImageHandle::require`] and the meter's byte quotas in `io.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rbd_backend::{Error, Image};
use wasmtime::component::Resource;

use super::{blocking, outcome, trap_on_quota, DiffIterator, HostResult, JobScope, PendingReads, PoolHandle, RbdView};
use crate::audit::Target;
use crate::bindings::ceph::rbd::{rbd, types};
use crate::capability::{ImageCapability, Operation};
use crate::meter::HandleSlot;

/// An open image, as the guest holds it. Holding it is the permission: its methods check
/// the capability, charge the job and write the audit record.
pub struct ImageHandle {
    pub(super) scope: Arc<JobScope>,
    pub(super) cap: ImageCapability,
    pub(super) open: Arc<OpenImage>,
    _slot: HandleSlot,
}

/// The backend image behind a handle, shared with the handle's diff iterators and reads in
/// flight. Closing it (dropping the handle) closes the backend image; an iterator then
/// answers `not-found`.
pub(super) struct OpenImage {
    image: RwLock<Option<Box<dyn Image>>>,
    /// Bumped by every set-snap, so an iterator can tell that its end state changed.
    pub selection: AtomicU64,
}

impl OpenImage {
    pub fn with<T>(&self, f: impl FnOnce(&dyn Image) -> Result<T, Error>) -> Result<T, Error> {
        let guard = self.image.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        match guard.as_deref() {
            Some(image) => f(image),
            None => Err(Error::NotFound("the image was closed".into())),
        }
    }

    /// [`OpenImage::with`], unless that would wait (the image is being closed, and closing
    /// waits for what is in flight): `None` then. For the async executor, which must not.
    pub fn try_with<T>(&self, f: impl FnOnce(&dyn Image) -> Result<T, Error>) -> Option<Result<T, Error>> {
        let guard = match self.image.try_read() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(match guard.as_deref() {
            Some(image) => f(image),
            None => Err(Error::NotFound("the image was closed".into())),
        })
    }

    pub fn is_open(&self) -> bool {
        self.image.read().unwrap_or_else(|poisoned| poisoned.into_inner()).is_some()
    }

    fn close(&self) {
        let mut guard = self.image.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.take();
    }
}

impl ImageHandle {
    /// Open `cap`'s image (the pool handle checked the grant); takes a handle slot first.
    pub(super) async fn open(
        scope: &Arc<JobScope>,
        cap: ImageCapability,
        snapshot: Option<String>,
        read_only: bool,
    ) -> HostResult<ImageHandle> {
        let slot = scope.meter().handle_slot()?;
        let backend = scope.backend().clone();
        let (pool, name) = (cap.pool().to_owned(), cap.image().to_owned());
        let read_only = read_only || cap.operations().is_read_only();
        let image = blocking(scope.watch(), move || backend.open(&pool, &name, snapshot.as_deref(), read_only)).await?;
        let open = Arc::new(OpenImage { image: RwLock::new(Some(image)), selection: AtomicU64::new(0) });
        Ok(ImageHandle { scope: scope.clone(), cap, open, _slot: slot })
    }

    /// Charge one operation and check `op` against the capability; a denial is audited.
    pub(super) async fn require(&self, method: &str, op: Operation) -> HostResult<()> {
        self.scope.meter().operation()?;
        self.scope.connected()?;
        if let Err(denied) = self.cap.require(op) {
            self.audit(method, op, &Err(denied.clone())).await;
            return Err(denied.into());
        }
        Ok(())
    }

    /// Run `f` on the backend image after charging the call and checking `op` (if any)
    /// against the capability. A denial, and every call of a mutating operation, goes to
    /// the audit log.
    pub(super) async fn call<T, F>(&self, method: &str, op: Option<Operation>, f: F) -> HostResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Image) -> Result<T, Error> + Send + 'static,
    {
        match op {
            Some(op) => self.require(method, op).await?,
            None => {
                self.scope.meter().operation()?;
                self.scope.connected()?;
            }
        }
        let open = self.open.clone();
        let result = blocking(self.scope.watch(), move || open.with(f)).await;
        if let Some(op) = op.filter(|op| op.mutates()) {
            self.audit(method, op, &outcome(&result)).await;
        }
        result
    }

    /// The image's size, asked of the backend without charging a call (the caller charged
    /// the one it is part of).
    pub(super) async fn backend_size(&self) -> HostResult<u64> {
        let open = self.open.clone();
        blocking(self.scope.watch(), move || open.with(|i| i.size())).await
    }

    /// The answer long host work (flatten, copy) asks for as it goes: yes until the job ends.
    fn until_the_job_ends(&self) -> impl FnMut(u64, u64) -> bool + Send + 'static {
        let ended = self.scope.ended().clone();
        move |_, _| !ended.load(Ordering::SeqCst)
    }

    /// Audit a call on this image and how it ended.
    pub(super) async fn audit(&self, method: &str, op: Operation, result: &Result<(), Error>) {
        let cap = &self.cap;
        let target = Target { pool: cap.pool(), image: Some(cap.image()), method, operation: op.name(), grant: cap.grant() };
        self.scope.audit().record(&target, result).await;
    }

    async fn list_children(&self) -> HostResult<Vec<types::Child>> {
        let children = self.call("list-children", Some(Operation::Read), |i| i.list_children()).await?;
        Ok(children
            .into_iter()
            .filter(|c| self.scope.can_see(&c.pool, &c.image))
            .map(|c| types::Child { pool: c.pool, image: c.image })
            .collect())
    }

    async fn parent_info(&self) -> HostResult<Option<(String, String, String)>> {
        let parent = self.call("parent-info", Some(Operation::Read), |i| i.parent_info()).await?;
        // A parent outside the grant is hidden, as any image outside it is.
        Ok(parent.filter(|p| self.scope.can_see(&p.pool, &p.image)).map(|p| (p.pool, p.image, p.snap)))
    }

    /// Copy the image's data to a new image in `dest` (whose grant allows `create`), charged
    /// as a read and a write of the whole image; it stops when the job ends.
    async fn copy(&self, dest: &PoolHandle, dest_name: String) -> HostResult<()> {
        let dest_cap = dest.require("copy", &dest_name, Operation::Create).await?;
        let size = self.call("copy", Some(Operation::Read), |i| i.size()).await?;
        let meter = self.scope.meter();
        meter.start_read(size)?;
        if let Err(e) = meter.start_write(size) {
            meter.refund_read(size);
            return Err(e.into());
        }
        // Under the bandwidth cap like any read and write (charged up front, as the quotas).
        meter.throttle(size.saturating_mul(2)).await;
        let dest_pool = dest_cap.pool().to_owned();
        let open = self.open.clone();
        let mut keep_going = self.until_the_job_ends();
        let result = blocking(self.scope.watch(), move || open.with(|i| i.copy_with(&dest_pool, &dest_name, &mut keep_going))).await;
        if result.is_err() {
            meter.refund_read(size);
            meter.refund_write(size);
        }
        dest.audit_end(&dest_cap, "copy", Operation::Create, &outcome(&result)).await;
        result
    }

    /// Copy the parent's data into the image, charged as a write of the whole image; it
    /// stops when the job ends.
    async fn flatten(&self) -> HostResult<()> {
        self.require("flatten", Operation::Write).await?;
        let size = self.backend_size().await?;
        self.scope.meter().start_write(size)?;
        self.scope.meter().throttle(size).await;
        let (open, mut keep_going) = (self.open.clone(), self.until_the_job_ends());
        // Checked and charged by `require` above: one operation.
        let result = blocking(self.scope.watch(), move || open.with(|i| i.flatten_with(&mut keep_going))).await;
        if result.is_err() {
            self.scope.meter().refund_write(size);
        }
        self.audit("flatten", Operation::Write, &outcome(&result)).await;
        result
    }
}

impl RbdView<'_> {
    pub(super) fn image(&self, handle: &Resource<ImageHandle>) -> HostResult<&ImageHandle> {
        Ok(self.table.get(handle)?)
    }
}

impl rbd::HostImage for RbdView<'_> {
    async fn name(&mut self, image: Resource<ImageHandle>) -> wasmtime::Result<String> {
        let handle = self.table.get(&image)?;
        trap_on_quota(handle.scope.meter().operation())?;
        Ok(handle.cap.image().to_owned())
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
            // Deprecated in librbd (always -1 and ""): they never name another image.
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
        let reads = self.image(&image)?.start_reads("read", vec![types::Range { offset, length }], None).await?;
        Ok(reads.wait().await?.into_iter().next().map(|r| r.data).unwrap_or_default())
    }

    async fn read_ranges(&mut self, image: Resource<ImageHandle>, ranges: Vec<types::Range>) -> HostResult<Vec<Vec<u8>>> {
        let reads = self.image(&image)?.start_reads("read-ranges", ranges, None).await?;
        Ok(reads.wait().await?.into_iter().map(|r| r.data).collect())
    }

    async fn start_reads(
        &mut self,
        image: Resource<ImageHandle>,
        ranges: Vec<types::Range>,
        chunk_size: Option<u32>,
    ) -> HostResult<Resource<PendingReads>> {
        let handle = self.image(&image)?;
        let slot = handle.scope.meter().handle_slot()?;
        let reads = handle.start_reads("start-reads", ranges, chunk_size).await?.holding(slot);
        Ok(self.table.push(reads)?)
    }

    async fn write(&mut self, image: Resource<ImageHandle>, offset: u64, data: Vec<u8>) -> HostResult<u64> {
        self.image(&image)?.write(offset, data).await
    }

    async fn write_ranges(&mut self, image: Resource<ImageHandle>, writes: Vec<types::WriteOp>) -> HostResult<u64> {
        self.image(&image)?.write_ranges(writes).await
    }

    async fn write_from(
        &mut self,
        image: Resource<ImageHandle>,
        input: Resource<wasmtime_wasi::p2::DynInputStream>,
        writes: Vec<rbd::StreamWrite>,
        hash: Option<Resource<crate::job_host::hashing::Sha256Job>>,
    ) -> HostResult<u64> {
        super::data_plane::write_from(self, image, input, writes, hash).await
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
        handle.call("set-snap", Some(Operation::Read), move |i| i.set_snap(name.as_deref())).await?;
        handle.open.selection.fetch_add(1, Ordering::SeqCst);
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
        let iter = self.image(&image)?.diff_iterate(offset, length, from_snapshot, include_parent, whole_object).await?;
        Ok(self.table.push(iter)?)
    }

    async fn list_children(&mut self, image: Resource<ImageHandle>) -> HostResult<Vec<types::Child>> {
        self.image(&image)?.list_children().await
    }

    async fn parent_info(&mut self, image: Resource<ImageHandle>) -> HostResult<Option<(String, String, String)>> {
        self.image(&image)?.parent_info().await
    }

    async fn flatten(&mut self, image: Resource<ImageHandle>) -> HostResult<()> {
        self.image(&image)?.flatten().await
    }

    async fn copy(&mut self, image: Resource<ImageHandle>, dest: Resource<PoolHandle>, dest_name: String) -> HostResult<()> {
        let dest = self.table.get(&dest)?;
        self.image(&image)?.copy(dest, dest_name).await
    }

    async fn list_lockers(&mut self, image: Resource<ImageHandle>) -> HostResult<types::LockInfo> {
        self.image(&image)?.list_lockers().await
    }

    async fn list_watchers(&mut self, image: Resource<ImageHandle>) -> HostResult<Vec<types::Watcher>> {
        self.image(&image)?.list_watchers().await
    }

    async fn lock_exclusive(&mut self, image: Resource<ImageHandle>, cookie: String) -> HostResult<()> {
        self.image(&image)?.lock(cookie, None).await
    }

    async fn lock_shared(&mut self, image: Resource<ImageHandle>, cookie: String, tag: String) -> HostResult<()> {
        self.image(&image)?.lock(cookie, Some(tag)).await
    }

    async fn unlock(&mut self, image: Resource<ImageHandle>, cookie: String) -> HostResult<()> {
        self.image(&image)?.unlock(cookie).await
    }

    async fn break_lock(&mut self, image: Resource<ImageHandle>, client: String, cookie: String) -> HostResult<()> {
        self.image(&image)?.break_lock(client, cookie).await
    }

    async fn lock_client(&mut self, image: Resource<ImageHandle>) -> wasmtime::Result<String> {
        let handle = self.table.get(&image)?;
        trap_on_quota(handle.scope.meter().operation())?;
        Ok(handle.lock_client())
    }

    async fn drop(&mut self, image: Resource<ImageHandle>) -> wasmtime::Result<()> {
        let handle = self.table.delete(image)?;
        // Closing waits for reads in flight on the blocking pool: do it there too. The
        // handle's slot is given back when it is dropped, after the close.
        tokio::task::spawn_blocking(move || {
            handle.open.close();
            drop(handle);
        })
        .await
        .map_err(|e| wasmtime::Error::msg(format!("closing an image failed: {e}")))?;
        Ok(())
    }
}
