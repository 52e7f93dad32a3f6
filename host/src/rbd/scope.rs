//! What every handle of one job shares: the backend (reached nowhere else in the host), the
//! grants, the meter, the audit trail, the job's I/O slots and the locks it holds.

use std::sync::Arc;

use rbd_backend::{Backend, Version};
use tokio::sync::Semaphore;

use super::locks::HeldLocks;
use super::BackendWatch;
use crate::audit::Audit;
use crate::capability::Grants;
use crate::meter::Meter;

pub(crate) struct JobScope {
    backend: Arc<dyn Backend>,
    grants: Grants,
    meter: Arc<Meter>,
    audit: Audit,
    /// Bounds the backend reads and writes one job keeps in flight.
    io_slots: Arc<Semaphore>,
    locks: HeldLocks,
    watch: Arc<BackendWatch>,
    /// Set when the job has ended (returned, trapped, timed out, cancelled): long host work
    /// it started (flatten, copy) stops at its next step.
    ended: Arc<std::sync::atomic::AtomicBool>,
    /// Set when the job broke a lock of its own client (see [`JobScope::shut_down`]).
    shut_down: std::sync::atomic::AtomicBool,
}

impl JobScope {
    /// End the job's connection: every later call answers `connection-shutdown`. On a
    /// cluster, breaking a lock of one's own client blocklists that client, and every job of
    /// a host shares the host's client: the host ends the breaking job's calls alone, so the
    /// job sees what python-rbd would and no other job is touched.
    pub fn shut_down(&self) {
        self.shut_down.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// `connection-shutdown` once the job is shut down ([`JobScope::shut_down`]).
    pub fn connected(&self) -> Result<(), rbd_backend::Error> {
        if self.shut_down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(rbd_backend::Error::ConnectionShutdown(
                "this job broke a lock of its own client, which blocklists it on a cluster".into(),
            ));
        }
        Ok(())
    }

    pub fn new(backend: Arc<dyn Backend>, grants: Grants, reads_in_flight: usize, audit: Audit, meter: Arc<Meter>) -> Self {
        JobScope {
            backend,
            grants,
            meter,
            audit,
            io_slots: Arc::new(Semaphore::new(reads_in_flight.max(1))),
            locks: HeldLocks::default(),
            watch: Arc::default(),
            ended: Arc::default(),
            shut_down: Default::default(),
        }
    }

    pub fn version(&self) -> Version {
        self.backend.version()
    }

    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    pub fn meter(&self) -> &Arc<Meter> {
        &self.meter
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    pub(super) fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub(super) fn io_slots(&self) -> &Arc<Semaphore> {
        &self.io_slots
    }

    pub(super) fn watch(&self) -> &Arc<BackendWatch> {
        &self.watch
    }

    /// The flag long host work checks to stop when the job has ended.
    pub(super) fn ended(&self) -> &Arc<std::sync::atomic::AtomicBool> {
        &self.ended
    }

    /// The job has ended: stop the host work it left running.
    pub fn end(&self) {
        self.ended.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub(super) fn locks(&self) -> &HeldLocks {
        &self.locks
    }

    /// Whether the job may see image `image` of pool `pool` (children and parents outside
    /// the grant are hidden, as images outside it are).
    pub fn can_see(&self, pool: &str, image: &str) -> bool {
        self.grants.pool(pool).is_ok_and(|p| p.can_see(image))
    }

    /// Release every advisory lock the job still holds. Ceph keeps a lock until its holder
    /// unlocks it (or someone breaks it), whatever became of the holder's handle, so the host
    /// does it for a job however the job ended, within [`super::locks::RELEASE_TIME`].
    pub async fn release_locks(&self) {
        self.locks.release_all(&self.backend, &self.watch).await;
    }
}
