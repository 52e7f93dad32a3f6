//! Leases that processes on several hosts share through the store: who may act on a named
//! thing now, for how long, and a small state value beside it that changes only by
//! compare-and-swap.
//!
//! `rbd-wasm serve` runs each scheduled job once per tick between its processes with one
//! lease per job: the holder runs the tick, renews the lease while it runs, and records in
//! the state which tick it claimed and how it ended. The lease says who is alive; the
//! compare-and-swap fences the state, so a holder whose lease ran out while it was stalled
//! cannot overwrite what the process that took over wrote.
//!
//! On a cluster both live on one RADOS object per name ([`crate::librbd::RadosLeases`]:
//! an exclusive `cls_lock` with a duration, which expires on the OSD's clock, and an xattr
//! changed by a guarded compound write). The embedded store keeps them in a directory
//! ([`crate::embedded::FileLeases`]: an `flock`, which the kernel drops when the holder
//! dies, and a state file replaced under a second `flock`).

use std::time::Duration;

use crate::Result;

/// A set of named leases and their state values.
pub trait Leases: Send + Sync {
    /// Take the lease on `name` for `ttl`. `Ok(false)` when a holder has it (another, or
    /// this one already: a lease is never taken twice) and its time has not run out.
    fn acquire(&self, name: &str, ttl: Duration) -> Result<bool>;

    /// Renew a lease this holder has; `Ok(false)` when it has not (it ran out and another
    /// holder took it, or it was released).
    fn renew(&self, name: &str, ttl: Duration) -> Result<bool>;

    /// Give the lease up (nothing happens when this holder does not have it).
    fn release(&self, name: &str) -> Result<()>;

    /// The state value of `name`: empty when none was ever written.
    fn state(&self, name: &str) -> Result<Vec<u8>>;

    /// Replace the state value of `name` with `new` if it is `expected` now (an empty
    /// `expected` matches a state never written). `Ok(false)` when it was something else.
    fn swap_state(&self, name: &str, expected: &[u8], new: &[u8]) -> Result<bool>;

    /// Who holds the lease on `name` now (descriptions of the holders; empty when nobody
    /// does): for operators and tests.
    fn holders(&self, name: &str) -> Result<Vec<String>>;
}
