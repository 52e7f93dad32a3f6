//! Leases: how backups and garbage collection share a repository without a lock service.
//!
//! Every backup run and every sweep of `gc` holds a lease while it works: a marker file
//! `locks/<kind>-<id>.json` with its start and the time of its last heartbeat, rewritten
//! every [`HEARTBEAT_SECS`]. A lease whose heartbeat is older than the stale time
//! (`--stale-after`, default [`STALE_SECS`]) belongs to a run that was killed (or hangs) and
//! counts for nothing; the next `gc` removes it.
//!
//! The one thing that must never happen together is a sweep (which deletes chunks that no
//! complete backup refers to) and a backup (which refers to chunks it found already stored,
//! and to its base backup's chunks, before its manifest makes that visible). Both sides
//! write their own marker first and look for the other's after (Dekker's order: with a store
//! that shows a written object to the next listing, as a local directory and S3 do, at least
//! one of the two sees the other): a backup that sees a live sweep withdraws and waits for
//! it; a sweep that sees live backups waits for them, holding its marker so that no new
//! backup starts meanwhile. A holder checks its own lease before its commit point (a backup's
//! manifest, each of a sweep's deletions): one that went longer than half the stale time
//! without a heartbeat, and so may have been taken for dead, gives up instead.
//!
//! Two backups of one image at once: the second to look sees the first's live lease and
//! withdraws ("another runner is backing it up"), so one backup is made.
//!
//! Markers are not authenticated: whoever can write the repository can forge one, which
//! only makes runs wait (a sweep, at most its `--wait` bound).

use std::time::{Duration, Instant};

use backup_repo::Result;
use serde::{Deserialize, Serialize};

use crate::store::{now, random_hex, Store};

/// How often a holder rewrites its marker.
pub const HEARTBEAT_SECS: u64 = 15;
/// A marker whose heartbeat is older than this is a dead run's (by default).
pub const STALE_SECS: u64 = 120;
const DIR: &str = "locks";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    /// `backup` or `sweep`.
    pub kind: String,
    pub id: String,
    /// For a backup: the image.
    pub pool: String,
    pub image: String,
    pub started: u64,
    pub alive: u64,
}

impl Marker {
    fn path(&self) -> String {
        format!("{DIR}/{}-{}.json", self.kind, self.id)
    }
}

/// A lease held: its marker, rewritten by [`Lease::heartbeat`], removed on drop.
pub struct Lease<'a> {
    store: &'a Store,
    marker: Marker,
    stale: u64,
    beat: Instant,
}

/// Every marker in the repository (`None`: one that does not parse, never a run's: markers
/// are written whole; `gc` removes it).
pub fn markers(store: &Store) -> Result<Vec<(String, Option<Marker>)>> {
    let mut found = Vec::new();
    for name in store.list(DIR)? {
        if !name.ends_with(".json") {
            continue;
        }
        let path = format!("{DIR}/{name}");
        let marker = store.get(&path)?.and_then(|b| serde_json::from_slice::<Marker>(&b).ok());
        found.push((path, marker));
    }
    Ok(found)
}

fn live(m: &Marker, stale: u64) -> bool {
    now().saturating_sub(m.alive) < stale
}

/// Whether the run holding `marker` is alive: its heartbeat advances, or it ends (its marker
/// goes), before the marker is stale. Watches for at most the stale time.
fn heartbeats(store: &Store, marker: &Marker, stale: u64) -> Result<bool> {
    let path = marker.path();
    loop {
        let current = store.get(&path)?.and_then(|b| serde_json::from_slice::<Marker>(&b).ok());
        match current {
            None => return Ok(true),
            Some(m) if m.alive != marker.alive => return Ok(true),
            Some(m) if !live(&m, stale) => return Ok(false),
            Some(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// What a backup that wants a lease found.
pub enum Taken<'a> {
    Held(Lease<'a>),
    /// Another live backup of the same image: its marker.
    Busy(Marker),
}

impl<'a> Lease<'a> {
    fn write(store: &'a Store, kind: &str, pool: &str, image: &str, stale: u64) -> Result<Lease<'a>> {
        let t = now();
        let marker = Marker { kind: kind.into(), id: random_hex(8), pool: pool.into(), image: image.into(), started: t, alive: t };
        store.put(&marker.path(), &serde_json::to_vec(&marker)?)?;
        Ok(Lease { store, marker, stale, beat: Instant::now() })
    }

    /// A run's lease on `pool/image` (`kind` `backup`, or `read` for a restore or a verify,
    /// which a sweep must not pull chunks from under either): waits (up to `wait`) while a
    /// sweep is live. Only backups exclude each other, one per image.
    pub fn for_run(store: &'a Store, kind: &str, pool: &str, image: &str, stale: u64, wait: Duration) -> Result<Taken<'a>> {
        let started = Instant::now();
        loop {
            let lease = Lease::write(store, kind, pool, image, stale)?;
            let others: Vec<Marker> = markers(store)?.into_iter().filter_map(|(_, m)| m).filter(|m| m.id != lease.marker.id && live(m, stale)).collect();
            if let Some(sweep) = others.iter().find(|m| m.kind == "sweep") {
                drop(lease);
                if started.elapsed() > wait {
                    return Err(format!("a garbage collection has been sweeping the repository since {} (its lease is live): waited {} s", sweep.started, wait.as_secs()).into());
                }
                println!("a garbage collection is sweeping the repository: waiting for it");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            if kind == "backup" {
                if let Some(other) = others.into_iter().find(|m| m.kind == "backup" && m.pool == pool && m.image == image) {
                    drop(lease);
                    // A live runner heartbeats; a killed one's lease goes stale (so the
                    // next run waits at most the stale time, then proceeds).
                    if heartbeats(store, &other, stale)? {
                        return Ok(Taken::Busy(other));
                    }
                    println!("the lease of a run of {pool}/{image} since {} went stale (killed?): taking over", other.started);
                    continue;
                }
            }
            return Ok(Taken::Held(lease));
        }
    }

    /// A sweep's lease: taken, then held while live backups end (up to `wait`). `None`: they
    /// did not end in time (the lease is given up).
    pub fn for_sweep(store: &'a Store, stale: u64, wait: Duration) -> Result<Option<Lease<'a>>> {
        let mut lease = Lease::write(store, "sweep", "", "", stale)?;
        let started = Instant::now();
        loop {
            // Other sweeps do not count: two sweeps at once delete only what no complete
            // backup refers to, each, and a deletion of what is gone is no error.
            let running: Vec<Marker> = markers(store)?
                .into_iter()
                .filter_map(|(_, m)| m)
                .filter(|m| m.id != lease.marker.id && m.kind != "sweep" && live(m, stale))
                .collect();
            if running.is_empty() {
                return Ok(Some(lease));
            }
            if started.elapsed() > wait {
                println!("{} other lease(s) still live after {} s: {:?}", running.len(), wait.as_secs(), running.iter().map(|m| format!("{} {}/{}", m.kind, m.pool, m.image)).collect::<Vec<_>>());
                return Ok(None);
            }
            println!("waiting for {} run(s) to end before sweeping: {:?}", running.len(), running.iter().map(|m| format!("{} {}/{}", m.kind, m.pool, m.image)).collect::<Vec<_>>());
            std::thread::sleep(lease.interval().min(Duration::from_secs(2)));
            lease.heartbeat()?;
        }
    }

    /// Rewrite the marker if a heartbeat is due; fail if the lease went so long without one
    /// that another run may have taken it for dead.
    pub fn heartbeat(&mut self) -> Result<()> {
        self.check()?;
        if self.beat.elapsed() >= self.interval() {
            self.marker.alive = now();
            self.store.put(&self.marker.path(), &serde_json::to_vec(&self.marker)?)?;
            self.beat = Instant::now();
        }
        Ok(())
    }

    /// Time between heartbeats: well inside half the stale time.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(HEARTBEAT_SECS.min(self.stale / 4).max(1))
    }

    /// Fail if the lease may have been taken for dead: no heartbeat for the stale time less
    /// a margin (for the commit that follows and for clocks that differ between hosts).
    pub fn check(&self) -> Result<()> {
        let margin = (self.stale / 8).max(2);
        if self.beat.elapsed() + Duration::from_secs(margin) >= Duration::from_secs(self.stale) {
            return Err(format!(
                "this run's lease went {} s without a heartbeat (stale after {} s): another run may have taken it for dead, so this one stops",
                self.beat.elapsed().as_secs(),
                self.stale
            )
            .into());
        }
        Ok(())
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.store.delete(&self.marker.path()) {
            eprintln!("removing the lease {}: {e}", self.marker.path());
        }
    }
}

/// Remove the markers of dead runs (their heartbeat stale); how many.
pub fn remove_stale(store: &Store, stale: u64) -> Result<usize> {
    let mut removed = 0;
    for (path, marker) in markers(store)? {
        if marker.is_none_or(|m| !live(&m, stale)) {
            store.delete(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}
