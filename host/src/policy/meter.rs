//! Per-job metering: open handles, bytes read and written, host calls, the host memory
//! held on the job's behalf, and an I/O bandwidth cap (a token bucket), so that one job
//! cannot exhaust the host or starve the cluster. Every host call of a job passes through
//! its meter; a quota that runs out answers `quota-exceeded` to the guest, which may stop or
//! carry on within what is left.
//!
//! What is held is held through guards: a [`HandleSlot`] for an open handle and a
//! [`Reservation`] for host memory give their share back when dropped, however the holder
//! ends (waited for, dropped by the guest, or dropped with the job's store).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use rbd_backend::Error;

/// The limits a meter enforces; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quotas {
    /// Pools, images and diff iterators the job may hold open at once.
    pub max_handles: Option<usize>,
    pub read_bytes: Option<u64>,
    pub write_bytes: Option<u64>,
    /// RBD calls in all.
    pub operations: Option<u64>,
    /// Bytes read plus written per second, on average (bursts up to one second's worth).
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Host memory the job may have the host hold for it at once (reads in flight and not
    /// yet handed over, write batches, data being hashed).
    pub host_memory_bytes: Option<u64>,
    /// Bytes sent and received over outbound HTTP (bodies), in all.
    pub network_bytes: Option<u64>,
}

/// The default of [`Quotas::host_memory_bytes`]: room for a backup's read-ahead (one 32 MiB
/// group in flight while the last is hashed) and a restore's write batch, with headroom.
pub const DEFAULT_HOST_MEMORY_BYTES: u64 = 128 << 20;

/// One job's counters.
pub struct Meter {
    quotas: Quotas,
    handles: AtomicUsize,
    read: AtomicU64,
    written: AtomicU64,
    operations: AtomicU64,
    host_memory: AtomicU64,
    host_memory_peak: AtomicU64,
    /// Outbound HTTP body bytes, sent and received (the quota's counter), and sent alone.
    network: AtomicU64,
    network_sent: AtomicU64,
    /// Calls answered `permission-denied` and `quota-exceeded` (for the service's metrics).
    permission_denials: AtomicU64,
    quota_denials: AtomicU64,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    /// Tokens (bytes) available; negative while the job is in debt.
    tokens: f64,
    last: Instant,
}

impl Meter {
    pub fn new(quotas: Quotas) -> Self {
        // The bucket starts empty: a job gets no head start, so even a short job's average
        // rate stays at the cap. (After an idle second it may burst a second's worth.)
        let tokens = 0.0;
        Meter {
            quotas,
            handles: AtomicUsize::new(0),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
            operations: AtomicU64::new(0),
            host_memory: AtomicU64::new(0),
            host_memory_peak: AtomicU64::new(0),
            network: AtomicU64::new(0),
            network_sent: AtomicU64::new(0),
            permission_denials: AtomicU64::new(0),
            quota_denials: AtomicU64::new(0),
            bucket: Mutex::new(Bucket { tokens, last: Instant::now() }),
        }
    }

    /// Count one host call (every function of the `ceph:rbd` world is one).
    pub fn operation(&self) -> Result<(), Error> {
        let done = self.operations.fetch_add(1, Ordering::Relaxed) + 1;
        match self.quotas.operations {
            Some(max) if done > max => Err(Error::QuotaExceeded(format!("the job's quota of {max} operations is used up"))),
            _ => Ok(()),
        }
    }

    /// Take a handle slot, given back when the slot is dropped.
    pub fn handle_slot(self: &Arc<Self>) -> Result<HandleSlot, Error> {
        let held = self.handles.fetch_add(1, Ordering::Relaxed) + 1;
        match self.quotas.max_handles {
            Some(max) if held > max => {
                self.handles.fetch_sub(1, Ordering::Relaxed);
                Err(Error::QuotaExceeded(format!("the job may hold at most {max} handles open")))
            }
            _ => Ok(HandleSlot { meter: self.clone() }),
        }
    }

    /// Handles held now.
    pub fn handles_held(&self) -> usize {
        self.handles.load(Ordering::Relaxed)
    }

    /// Reserve `bytes` of host memory for work done on the job's behalf, before the work
    /// starts; they are released when the reservation is dropped.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Result<Reservation, Error> {
        let max = self.quotas.host_memory_bytes.unwrap_or(u64::MAX);
        let reserved = self.host_memory.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            held.checked_add(bytes).filter(|total| *total <= max)
        });
        match reserved {
            Ok(held) => {
                self.host_memory_peak.fetch_max(held + bytes, Ordering::Relaxed);
                Ok(Reservation { meter: self.clone(), bytes })
            }
            Err(held) => Err(Error::QuotaExceeded(format!(
                "the host would hold {} bytes for the job, over its host-memory limit of {max} \
                 (wait for or drop reads in flight first)",
                held.saturating_add(bytes)
            ))),
        }
    }

    /// Host memory reserved now.
    pub fn host_memory_held(&self) -> u64 {
        self.host_memory.load(Ordering::Relaxed)
    }

    /// Charge `bytes` to the read quota before the read starts, or refuse. Give back what
    /// was not read with [`Meter::refund_read`].
    pub fn start_read(&self, bytes: u64) -> Result<(), Error> {
        charge(&self.read, self.quotas.read_bytes, bytes, "read")
    }

    /// Charge `bytes` to the write quota before the write starts, or refuse.
    pub fn start_write(&self, bytes: u64) -> Result<(), Error> {
        charge(&self.written, self.quotas.write_bytes, bytes, "written")
    }

    /// Give back bytes charged by [`Meter::start_read`] that were not read (clipped, or the
    /// read failed).
    pub fn refund_read(&self, bytes: u64) {
        let _ = self.read.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| Some(r.saturating_sub(bytes)));
    }

    /// Give back bytes charged by [`Meter::start_write`] that were not written.
    pub fn refund_write(&self, bytes: u64) {
        let _ = self.written.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| Some(w.saturating_sub(bytes)));
    }

    /// Charge `bytes` of outbound HTTP body (`sent` or received) to the network quota as
    /// they pass, or refuse.
    pub fn charge_network(&self, bytes: u64, sent: bool) -> Result<(), Error> {
        charge(&self.network, self.quotas.network_bytes, bytes, "sent and received over HTTP")?;
        if sent {
            self.network_sent.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Wait until `bytes` more may move under the bandwidth cap. The bucket goes into debt
    /// rather than refusing, so a request larger than a second's worth still proceeds, after
    /// the wait that keeps the average at the cap.
    pub async fn throttle(&self, bytes: u64) {
        let wait = self.bandwidth_wait(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Take `bytes` from the bandwidth bucket and say how long to wait before moving them
    /// (for callers that wait in their own way, as a body polled for its next frame does).
    pub fn bandwidth_wait(&self, bytes: u64) -> Duration {
        let Some(rate) = self.quotas.bandwidth_bytes_per_sec.filter(|r| *r > 0) else { return Duration::ZERO };
        let rate = rate as f64;
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(rate);
        b.last = now;
        b.tokens -= bytes as f64;
        if b.tokens < 0.0 {
            Duration::from_secs_f64(-b.tokens / rate)
        } else {
            Duration::ZERO
        }
    }

    /// Count an RBD call answered `permission-denied` or `quota-exceeded`: refused by the
    /// job's grants or quotas, or by the cluster itself (EACCES, EDQUOT), which the job
    /// sees the same way.
    pub fn count_denial(&self, e: &Error) {
        let counter = match e {
            Error::PermissionDenied(_) => &self.permission_denials,
            Error::QuotaExceeded(_) => &self.quota_denials,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes read and written so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.read.load(Ordering::Relaxed), self.written.load(Ordering::Relaxed))
    }

    /// What the job has used so far.
    pub fn usage(&self) -> Usage {
        let (read_bytes, written_bytes) = self.totals();
        Usage {
            read_bytes,
            written_bytes,
            operations: self.operations.load(Ordering::Relaxed),
            host_memory_peak_bytes: self.host_memory_peak.load(Ordering::Relaxed),
            network_sent_bytes: self.network_sent.load(Ordering::Relaxed),
            network_received_bytes: self.network.load(Ordering::Relaxed).saturating_sub(self.network_sent.load(Ordering::Relaxed)),
            permission_denials: self.permission_denials.load(Ordering::Relaxed),
            quota_denials: self.quota_denials.load(Ordering::Relaxed),
            ..Usage::default()
        }
    }
}

/// What a job used: the RBD traffic its meter counted and its CPU time in epoch ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub operations: u64,
    /// Time the guest ran its own code, to the epoch tick (10 ms).
    pub cpu_ms: u64,
    /// Bytes written to the output directory.
    pub output_dir_bytes: u64,
    /// Files and directories created in the output directory.
    pub output_dir_files: u64,
    /// The most host memory held for the job at once.
    pub host_memory_peak_bytes: u64,
    /// Outbound HTTP body bytes sent and received.
    pub network_sent_bytes: u64,
    pub network_received_bytes: u64,
    /// RBD calls refused for want of a grant (`permission-denied`) or over a quota
    /// (`quota-exceeded`).
    pub permission_denials: u64,
    pub quota_denials: u64,
}

/// Add `bytes` to `counter` unless that passes `quota`: check and charge in one step, so two
/// calls in flight cannot both pass the check on the same remainder.
fn charge(counter: &AtomicU64, quota: Option<u64>, bytes: u64, what: &str) -> Result<(), Error> {
    let max = quota.unwrap_or(u64::MAX);
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |done| done.checked_add(bytes).filter(|t| *t <= max))
        .map(drop)
        .map_err(|_| Error::QuotaExceeded(format!("the job's quota of {max} bytes {what} would be exceeded")))
}

/// An open handle's share of the job's handle quota, given back on drop.
pub struct HandleSlot {
    meter: Arc<Meter>,
}

impl Drop for HandleSlot {
    fn drop(&mut self) {
        // Saturating: a counter that never wraps, whatever the order of drops.
        let _ = self.meter.handles.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| h.checked_sub(1));
    }
}

/// Host memory held for the job, given back on drop.
pub struct Reservation {
    meter: Arc<Meter>,
    bytes: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let bytes = self.bytes;
        let _ = self.meter.host_memory.fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| Some(h.saturating_sub(bytes)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_refuse_past_the_limit_and_handles_come_back() {
        let m = Arc::new(Meter::new(Quotas {
            max_handles: Some(2),
            read_bytes: Some(100),
            operations: Some(3),
            host_memory_bytes: Some(1000),
            ..Quotas::default()
        }));
        let (a, _b) = (m.handle_slot().unwrap(), m.handle_slot().unwrap());
        assert_eq!(m.handle_slot().err().map(|e| e.kind()), Some("quota-exceeded"));
        drop(a);
        assert!(m.handle_slot().is_ok(), "a dropped slot comes back");
        assert!(m.start_read(60).is_ok());
        assert_eq!(m.start_read(41).unwrap_err().kind(), "quota-exceeded");
        m.refund_read(20);
        assert!(m.start_read(60).is_ok(), "refunded bytes can be read again");
        assert_eq!(m.usage().read_bytes, 100);
        assert!(m.start_write(u64::MAX).is_ok(), "no write quota");
        let held = m.reserve(600).unwrap();
        assert_eq!(m.reserve(401).err().map(|e| e.kind()), Some("quota-exceeded"));
        drop(held);
        assert!(m.reserve(1000).is_ok(), "a dropped reservation comes back");
        assert_eq!(m.host_memory_held(), 0);
        for _ in 0..3 {
            assert!(m.operation().is_ok());
        }
        assert_eq!(m.operation().unwrap_err().kind(), "quota-exceeded");
    }

    #[test]
    fn network_bytes_are_charged_both_ways_against_one_quota() {
        let m = Meter::new(Quotas { network_bytes: Some(100), ..Quotas::default() });
        assert!(m.charge_network(60, true).is_ok());
        assert!(m.charge_network(40, false).is_ok());
        assert_eq!(m.charge_network(1, false).unwrap_err().kind(), "quota-exceeded");
        assert_eq!((m.usage().network_sent_bytes, m.usage().network_received_bytes), (60, 40));
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_keeps_the_average_at_the_cap() {
        let m = Meter::new(Quotas { bandwidth_bytes_per_sec: Some(1000), ..Quotas::default() });
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            m.throttle(1000).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!((4.9..5.2).contains(&elapsed), "5000 bytes at 1000 B/s took {elapsed}s");
        // After an idle second, a second's worth goes at once.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let burst = tokio::time::Instant::now();
        m.throttle(1000).await;
        assert!(burst.elapsed() < Duration::from_millis(10), "no burst after idling");
    }
}
