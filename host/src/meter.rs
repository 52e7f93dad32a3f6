//! Per-job metering of the RBD API: open handles, bytes read and written, operations, and
//! an I/O bandwidth cap (a token bucket), so that one job cannot exhaust the host or starve
//! the cluster. Every RBD call of a job passes through its meter; a quota that runs out
//! answers `quota-exceeded` to the guest, which may stop or carry on within what is left.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
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
}

/// One job's counters.
pub struct Meter {
    quotas: Quotas,
    handles: AtomicUsize,
    read: AtomicU64,
    written: AtomicU64,
    operations: AtomicU64,
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
            bucket: Mutex::new(Bucket { tokens, last: Instant::now() }),
        }
    }

    /// Count one RBD call.
    pub fn operation(&self) -> Result<(), Error> {
        let done = self.operations.fetch_add(1, Ordering::Relaxed) + 1;
        match self.quotas.operations {
            Some(max) if done > max => Err(Error::QuotaExceeded(format!("the job's quota of {max} RBD operations is used up"))),
            _ => Ok(()),
        }
    }

    /// Take a handle slot; give it back with [`Meter::release_handle`].
    pub fn acquire_handle(&self) -> Result<(), Error> {
        let held = self.handles.fetch_add(1, Ordering::Relaxed) + 1;
        match self.quotas.max_handles {
            Some(max) if held > max => {
                self.handles.fetch_sub(1, Ordering::Relaxed);
                Err(Error::QuotaExceeded(format!("the job may hold at most {max} handles open")))
            }
            _ => Ok(()),
        }
    }

    pub fn release_handle(&self) {
        // Saturating: a release without an acquire must not wrap the counter.
        let _ = self.handles.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| h.checked_sub(1));
    }

    /// Check that `bytes` more may be read (before the read).
    pub fn check_read(&self, bytes: u64) -> Result<(), Error> {
        check(&self.read, self.quotas.read_bytes, bytes, "read")
    }

    /// Check that `bytes` more may be written (before the write).
    pub fn check_write(&self, bytes: u64) -> Result<(), Error> {
        check(&self.written, self.quotas.write_bytes, bytes, "written")
    }

    pub fn charge_read(&self, bytes: u64) {
        self.read.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn charge_write(&self, bytes: u64) {
        self.written.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Wait until `bytes` more may move under the bandwidth cap. The bucket goes into debt
    /// rather than refusing, so a request larger than a second's worth still proceeds, after
    /// the wait that keeps the average at the cap.
    pub async fn throttle(&self, bytes: u64) {
        let Some(rate) = self.quotas.bandwidth_bytes_per_sec.filter(|r| *r > 0) else { return };
        let rate = rate as f64;
        let wait = {
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
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Bytes read and written so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.read.load(Ordering::Relaxed), self.written.load(Ordering::Relaxed))
    }

    /// What the job has used so far.
    pub fn usage(&self) -> Usage {
        let (read_bytes, written_bytes) = self.totals();
        Usage { read_bytes, written_bytes, operations: self.operations.load(Ordering::Relaxed), cpu_ms: 0 }
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
}

fn check(counter: &AtomicU64, quota: Option<u64>, bytes: u64, what: &str) -> Result<(), Error> {
    match quota {
        Some(max) if counter.load(Ordering::Relaxed).saturating_add(bytes) > max => {
            Err(Error::QuotaExceeded(format!("the job's quota of {max} bytes {what} would be exceeded")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_refuse_past_the_limit_and_handles_come_back() {
        let m = Meter::new(Quotas { max_handles: Some(2), read_bytes: Some(100), operations: Some(3), ..Quotas::default() });
        assert!(m.acquire_handle().is_ok() && m.acquire_handle().is_ok());
        assert_eq!(m.acquire_handle().unwrap_err().kind(), "quota-exceeded");
        m.release_handle();
        assert!(m.acquire_handle().is_ok());
        assert!(m.check_read(100).is_ok());
        m.charge_read(60);
        assert_eq!(m.check_read(41).unwrap_err().kind(), "quota-exceeded");
        assert!(m.check_write(u64::MAX).is_ok(), "no write quota");
        for _ in 0..3 {
            assert!(m.operation().is_ok());
        }
        assert_eq!(m.operation().unwrap_err().kind(), "quota-exceeded");
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
