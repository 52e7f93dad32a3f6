//! The service's metrics, in the Prometheus (OpenMetrics) text format, through the
//! official Rust client: runs by job and outcome, their durations, RBD bytes, denials,
//! the last success of each job, runs under way and the process's resident memory.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rbd_wasm::Usage;
use std::sync::atomic::AtomicU64;

/// `job_name`, not `job`: Prometheus gives every scraped series a `job` label of its own
/// (the scrape job), and would rename ours to `exported_job`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    job_name: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    job_name: String,
    kind: String,
}

pub struct Metrics {
    registry: Registry,
    runs: Family<OutcomeLabels, Counter>,
    duration: Family<JobLabel, Histogram, fn() -> Histogram>,
    read_bytes: Family<JobLabel, Counter>,
    written_bytes: Family<JobLabel, Counter>,
    denials: Family<DenialLabels, Counter>,
    last_success: Family<JobLabel, Gauge<f64, AtomicU64>>,
    takeovers: Family<JobLabel, Counter>,
    running: Gauge,
    resident: Gauge,
    reloads: Family<ReloadLabel, Counter>,
}

/// Run durations from 0.1 s to about 3.6 hours, doubling.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 18))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rbd_wasm");
        let runs = Family::<OutcomeLabels, Counter>::default();
        registry.register("runs", "Attempts of scheduled jobs, by job and outcome", runs.clone());
        let duration = Family::<JobLabel, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register("run_duration_seconds", "Time each attempt took", duration.clone());
        let read_bytes = Family::<JobLabel, Counter>::default();
        registry.register("read_bytes", "Bytes the job's runs read from images", read_bytes.clone());
        let written_bytes = Family::<JobLabel, Counter>::default();
        registry.register("written_bytes", "Bytes the job's runs wrote to images", written_bytes.clone());
        let denials = Family::<DenialLabels, Counter>::default();
        registry.register("denials", "RBD calls answered permission-denied (kind=permission) or quota-exceeded (kind=quota), by the grants and quotas or the cluster", denials.clone());
        let last_success = Family::<JobLabel, Gauge<f64, AtomicU64>>::default();
        registry.register("last_success_timestamp_seconds", "When the job's last successful run ended (Unix time)", last_success.clone());
        let takeovers = Family::<JobLabel, Counter>::default();
        registry.register("takeovers", "Ticks taken over from a process whose lease ran out mid-run", takeovers.clone());
        let running = Gauge::default();
        registry.register("jobs_running", "Runs under way in this process", running.clone());
        let resident = Gauge::default();
        registry.register("host_resident_memory_bytes", "Resident memory of this process", resident.clone());
        let reloads = Family::<ReloadLabel, Counter>::default();
        registry.register("config_reloads", "Configuration reloads, by outcome", reloads.clone());
        Metrics { registry, runs, duration, read_bytes, written_bytes, denials, last_success, takeovers, running, resident, reloads }
    }

    /// An attempt ended.
    pub fn attempt(&self, job: &str, outcome: &str, seconds: f64, usage: &Usage, ended_unix: f64) {
        let label = JobLabel { job_name: job.to_owned() };
        self.runs.get_or_create(&OutcomeLabels { job_name: job.to_owned(), outcome: outcome.to_owned() }).inc();
        self.duration.get_or_create(&label).observe(seconds);
        self.read_bytes.get_or_create(&label).inc_by(usage.read_bytes);
        self.written_bytes.get_or_create(&label).inc_by(usage.written_bytes);
        for (kind, n) in [("permission", usage.permission_denials), ("quota", usage.quota_denials)] {
            let counter = self.denials.get_or_create(&DenialLabels { job_name: job.to_owned(), kind: kind.to_owned() });
            counter.inc_by(n);
        }
        if outcome == "success" {
            self.last_success.get_or_create(&label).set(ended_unix);
        }
    }

    pub fn took_over(&self, job: &str) {
        self.takeovers.get_or_create(&JobLabel { job_name: job.to_owned() }).inc();
    }

    /// A run started (`+1`) or ended (`-1`).
    pub fn running(&self, delta: i64) {
        self.running.inc_by(delta);
    }

    pub fn reload(&self, ok: bool) {
        let outcome = if ok { "success" } else { "refused" };
        self.reloads.get_or_create(&ReloadLabel { outcome: outcome.into() }).inc();
    }

    /// Make every job's series exist from the start (at zero), so a query sees the job
    /// before its first run.
    pub fn register_job(&self, job: &str) {
        let label = JobLabel { job_name: job.to_owned() };
        let _ = self.read_bytes.get_or_create(&label);
        let _ = self.written_bytes.get_or_create(&label);
        let _ = self.takeovers.get_or_create(&label);
    }

    /// The exposition text, with the resident memory read now.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        if let Some(rss) = resident_bytes() {
            self.resident.set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// This process's resident set, from `/proc/self/statm` (pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
