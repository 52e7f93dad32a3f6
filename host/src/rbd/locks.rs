//! Advisory locks: the job's own, and the registry the host releases them from.
//!
//! Every job of one host shares one client identity with the cluster, so Ceph cannot tell
//! one job's lock from another's. The host can: a job may unlock only a lock it took
//! (`not-found` otherwise, as librbd answers for a lock the client does not hold); taking
//! someone else's lock away is `break-lock`, which needs its own grant. The registry follows
//! the job's renames, so the locks of a renamed image are still released when the job ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbd_backend::{Backend, Error};

use super::{blocking, BackendWatch, HostError, HostResult, ImageHandle};
use crate::bindings::ceph::rbd::types;
use crate::capability::Operation;

/// How long the host spends releasing a finished job's locks before it gives up on the rest
/// (they are reported; `rbd lock rm` or a `break-lock` clears them).
pub const RELEASE_TIME: Duration = Duration::from_secs(10);
/// Of which the backend calls still under way when the job ended get this long to land.
const SETTLE_TIME: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
struct HeldLock {
    pool: String,
    image: String,
    cookie: String,
}

/// The advisory locks a job took (or is taking) and has not released.
#[derive(Default)]
pub(super) struct HeldLocks {
    held: Mutex<Vec<HeldLock>>,
    /// The job's renames, `(pool, from, to)`: a handle opened before a rename still names
    /// the image by its old name.
    renames: Mutex<Vec<(String, String, String)>>,
}

impl HeldLocks {
    fn with<T>(&self, f: impl FnOnce(&mut Vec<HeldLock>) -> T) -> T {
        f(&mut self.held.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The image's name now, through the job's renames since `lock` named it.
    fn current(&self, mut lock: HeldLock) -> HeldLock {
        let renames = self.renames.lock().unwrap_or_else(|p| p.into_inner());
        for (pool, from, to) in renames.iter() {
            if *pool == lock.pool && *from == lock.image {
                lock.image = to.clone();
            }
        }
        lock
    }

    fn add(&self, lock: HeldLock) {
        let lock = self.current(lock);
        self.with(|held| {
            if !held.contains(&lock) {
                held.push(lock)
            }
        });
    }

    fn holds(&self, lock: &HeldLock) -> bool {
        let lock = self.current(lock.clone());
        self.with(|held| held.contains(&lock))
    }

    fn remove(&self, lock: &HeldLock) {
        let lock = self.current(lock.clone());
        self.with(|held| held.retain(|l| *l != lock));
    }

    /// The job renamed `src` to `dest` in `pool`: its locks moved with the image.
    pub fn renamed(&self, pool: &str, src: &str, dest: &str) {
        self.with(|held| {
            for l in held.iter_mut().filter(|l| l.pool == pool && l.image == src) {
                l.image = dest.to_owned();
            }
        });
        self.renames.lock().unwrap_or_else(|p| p.into_inner()).push((pool.into(), src.into(), dest.into()));
    }

    /// Release every lock, within [`RELEASE_TIME`] in all. Each image is reopened for this:
    /// the job may have closed its handle, and a lock belongs to the client, not the handle.
    pub async fn release_all(&self, backend: &Arc<dyn Backend>, watch: &Arc<BackendWatch>) {
        if self.with(|held| held.is_empty()) {
            return;
        }
        let backend = backend.clone();
        let release = async {
            // A lock call still under way (the job ended while it waited) may yet take its
            // lock: give the job's backend calls a moment to land first. (Calls on a cluster
            // that does not answer do not land: the unlocks then go out anyway, and complete,
            // abandoned, once it answers again.)
            let settled = async {
                while watch.longest_wait().is_some() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let _ = tokio::time::timeout(SETTLE_TIME, settled).await;
            let locks = self.with(std::mem::take);
            let mut left = Vec::new();
            for lock in locks.iter() {
                let (backend, l) = (backend.clone(), lock.clone());
                match blocking(watch, move || backend.open(&l.pool, &l.image, None, false)?.unlock(&l.cookie)).await {
                    Ok(()) | Err(HostError::Rbd(Error::NotFound(_))) => {}
                    Err(e) => {
                        tracing::warn!(pool = %lock.pool, image = %lock.image, "releasing a lock the job left behind failed: {e:?}");
                        left.push(lock.clone());
                    }
                }
            }
            left
        };
        match tokio::time::timeout(RELEASE_TIME, release).await {
            Ok(left) if left.is_empty() => {}
            Ok(left) => tracing::warn!("{} lock(s) the job left behind could not be released", left.len()),
            Err(_) => tracing::warn!(
                "releasing the locks the job left behind took more than {RELEASE_TIME:?}; some may remain ({} not started)",
                self.with(|held| held.len())
            ),
        }
    }
}

impl ImageHandle {
    fn held(&self, cookie: String) -> HeldLock {
        HeldLock { pool: self.cap.pool().to_owned(), image: self.cap.image().to_owned(), cookie }
    }

    pub(super) fn lock_client(&self) -> String {
        self.scope.backend().client_name()
    }

    pub(super) async fn list_watchers(&self) -> HostResult<Vec<types::Watcher>> {
        let watchers = self.call("list-watchers", Some(Operation::Read), |i| i.list_watchers()).await?;
        Ok(watchers.into_iter().map(|w| types::Watcher { client: w.client, address: w.address, cookie: w.cookie }).collect())
    }

    pub(super) async fn list_lockers(&self) -> HostResult<types::LockInfo> {
        let info = self.call("list-lockers", Some(Operation::Read), |i| i.list_lockers()).await?;
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

    /// Take an exclusive lock, or a shared one with `tag`. It is recorded before the call,
    /// so a job that ends while the call is under way still has it released.
    pub(super) async fn lock(&self, cookie: String, tag: Option<String>) -> HostResult<()> {
        let held = self.held(cookie.clone());
        let already = self.scope.locks().holds(&held);
        self.scope.locks().add(held.clone());
        let result = match tag {
            None => self.call("lock-exclusive", Some(Operation::Lock), move |i| i.lock_exclusive(&cookie)).await,
            Some(tag) => self.call("lock-shared", Some(Operation::Lock), move |i| i.lock_shared(&cookie, &tag)).await,
        };
        if result.is_err() && !already {
            self.scope.locks().remove(&held);
        }
        result
    }

    /// Release a lock this job took.
    pub(super) async fn unlock(&self, cookie: String) -> HostResult<()> {
        let held = self.held(cookie.clone());
        if !self.scope.locks().holds(&held) {
            self.require("unlock", Operation::Lock).await?;
            let refused = Error::NotFound(format!(
                "this job holds no lock with cookie `{cookie}` on image `{}` (break-lock takes other clients' locks)",
                self.cap.image()
            ));
            self.audit("unlock", Operation::Lock, &Err(refused.clone())).await;
            return Err(refused.into());
        }
        self.call("unlock", Some(Operation::Lock), move |i| i.unlock(&cookie)).await?;
        self.scope.locks().remove(&held);
        Ok(())
    }

    /// Break another client's lock (librbd blocklists that client). A lock of the host's
    /// own client is not broken: that would blocklist the host's client, which every job of
    /// the host shares. The job gets librbd's answer to breaking one's own lock instead
    /// (`connection-shutdown`, the lock stays) and its connection alone ends
    /// ([`JobScope::shut_down`]).
    pub(super) async fn break_lock(&self, client: String, cookie: String) -> HostResult<()> {
        if client != self.lock_client() {
            return self.call("break-lock", Some(Operation::BreakLock), move |i| i.break_lock(&client, &cookie)).await;
        }
        let result = self
            .call("break-lock", Some(Operation::BreakLock), move |i| {
                // As librbd: a client that holds no lock of the image is `not-found`; one
                // that holds any (with this cookie or another) is blocklisted.
                if !i.list_lockers()?.lockers.iter().any(|l| l.client == client) {
                    return Err(Error::NotFound(format!("{client} holds no lock of the image (cookie {cookie:?})")));
                }
                Err(Error::ConnectionShutdown(format!("{client} broke its own lock, which blocklists it on a cluster")))
            })
            .await;
        if matches!(&result, Err(HostError::Rbd(Error::ConnectionShutdown(_)))) {
            self.scope.shut_down();
        }
        result
    }
}
