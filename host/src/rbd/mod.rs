//! The guest-facing `ceph:rbd` API: the host side of every WIT function.
//!
//! A guest reaches storage only through the handles minted here. A handle owns what it
//! needs: its capability, and the job's [`JobScope`] (backend, meter, audit trail). Each of
//! its methods checks the capability, charges the meter and writes the audit record in one
//! place ([`ImageHandle::call`], [`PoolHandle`]'s methods); the WIT host implementations
//! below only look the handle up and call it. Nothing else in the host holds the raw backend.
//!
//! One file per resource of the WIT: [`pool`], [`image`] (with its I/O in [`io`], its diff
//! iterator in [`diff`] and its advisory locks in [`locks`]). Errors are mapped to the WIT
//! `error` once, in [`HostError`] and `convert_error`.

mod diff;
mod image;
mod io;
mod locks;
mod pool;
mod scope;
mod data_plane;

use std::sync::Arc;

use rbd_backend::{Backend, Error};
use wasmtime::component::{HasData, Resource, ResourceTable, ResourceTableError};

use crate::audit::{Audit, Target};
use crate::bindings::ceph::rbd::{rbd, types};
use crate::capability::Grants;
use crate::meter::Meter;

pub use diff::DiffIterator;
pub use image::ImageHandle;
pub use io::PendingReads;
pub use pool::PoolHandle;
pub(crate) use scope::JobScope;

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

pub type HostResult<T> = Result<T, HostError>;

/// The backend calls of one job under way, and since when: a call that does not come back
/// (a frozen OSD, a lost monitor) stays listed until it does, so the host can tell a job
/// stopped while the cluster did not answer from one that was merely slow.
#[derive(Default)]
pub(crate) struct BackendWatch {
    next: std::sync::atomic::AtomicU64,
    calls: std::sync::Mutex<std::collections::HashMap<u64, std::time::Instant>>,
}

/// One backend call under way; it leaves the watch when the call returns.
pub(crate) struct InFlight {
    watch: Arc<BackendWatch>,
    id: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.watch.calls.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

impl BackendWatch {
    fn enter(self: &Arc<Self>) -> InFlight {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).insert(id, std::time::Instant::now());
        InFlight { watch: self.clone(), id }
    }

    /// How long the oldest backend call under way has been waiting.
    pub fn longest_wait(&self) -> Option<std::time::Duration> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).values().min().map(|t| t.elapsed())
    }
}

/// Run a blocking backend call off the async executor, watched. A panic in the backend
/// becomes a trap of this job, never a crash of the host.
pub(crate) async fn blocking<T, F>(watch: &Arc<BackendWatch>, f: F) -> HostResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    let in_flight = watch.enter();
    let call = move || {
        let _in_flight = in_flight;
        f()
    };
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(HostError::Rbd),
        Err(join) => Err(HostError::Trap(wasmtime::Error::msg(format!("backend call failed: {join}")))),
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

/// Per-job state of the RBD API.
pub struct RbdCtx {
    scope: Arc<JobScope>,
    /// The job-host interface's state (progress).
    pub(crate) job_host: crate::job_host::JobHostCtx,
    /// The secrets interface's: what the operator handed the job.
    pub(crate) secrets: crate::secrets::Secrets,
}

impl RbdCtx {
    pub fn new(backend: Arc<dyn Backend>, grants: Grants, reads_in_flight: usize, audit: Audit, meter: Arc<Meter>) -> Self {
        RbdCtx {
            scope: Arc::new(JobScope::new(backend, grants, reads_in_flight, audit, meter)),
            job_host: crate::job_host::JobHostCtx::default(),
            secrets: crate::secrets::Secrets::default(),
        }
    }

    /// The job has ended: long host work it started (flatten, copy) stops at its next step.
    pub fn end_host_work(&self) {
        self.scope.end();
    }

    /// Release every advisory lock the job still holds, within a bounded time; see
    /// [`JobScope::release_locks`].
    pub async fn release_locks(&self) {
        self.scope.release_locks().await;
    }

    /// How long the job's oldest backend call under way has been waiting, if one is.
    pub fn backend_wait(&self) -> Option<std::time::Duration> {
        self.scope.watch().longest_wait()
    }

    /// The job's meter (also charged by the job-host interface).
    pub(crate) fn meter(&self) -> &Arc<Meter> {
        self.scope.meter()
    }

    /// The job's audit trail (also written by the secrets interface).
    pub(crate) fn audit(&self) -> &Audit {
        self.scope.audit()
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

impl types::Host for RbdView<'_> {
    fn convert_error(&mut self, err: HostError) -> wasmtime::Result<types::Error> {
        if let HostError::Rbd(e) = &err {
            self.ctx.meter().count_denial(e);
        }
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

/// A quota that ran out in a function whose WIT result has no error case ends the job.
pub(crate) fn trap_on_quota(result: Result<(), Error>) -> wasmtime::Result<()> {
    result.map_err(|e| wasmtime::Error::msg(format!("{e}")))
}

impl rbd::Host for RbdView<'_> {
    async fn version(&mut self) -> wasmtime::Result<types::VersionInfo> {
        trap_on_quota(self.ctx.scope.meter().operation())?;
        let v = self.ctx.scope.version();
        Ok(types::VersionInfo { major: v.major, minor: v.minor, extra: v.extra })
    }

    async fn granted_pools(&mut self) -> wasmtime::Result<Vec<String>> {
        trap_on_quota(self.ctx.scope.meter().operation())?;
        Ok(self.ctx.scope.grants().pools())
    }

    async fn open_pool(&mut self, name: String) -> HostResult<Resource<PoolHandle>> {
        let pool = PoolHandle::open(&self.ctx.scope, &name).await?;
        Ok(self.table.push(pool)?)
    }
}

/// Record a denial of a call that names `pool` (and maybe an image) but holds no handle.
async fn audit_denial(audit: &Audit, target: &Target<'_>, denied: &Error) {
    audit.record(target, &Err::<(), _>(denied.clone())).await;
}
