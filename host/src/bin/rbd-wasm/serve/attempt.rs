//! One attempt of a job's tick: the job run on the service's runtime with its manifest's
//! grants and limits, its output tagged on the service's standard error, and its report
//! kept in the history and counted in the metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rbd_wasm::audit::cut;
use rbd_wasm::output::terminal_safe;
use rbd_wasm::runtime::{JobConfig, JobError, MAX_FAILURE_BYTES};
use rbd_wasm::{OutputSink, Usage};
use tokio::sync::Notify;

use super::config::JobSpec;
use super::history::RunRecord;
use super::schedule::{rfc3339, Tick};
use super::{unix_now, Service};
use crate::progress::{ProgressMode, ProgressView};
use crate::report::RunReport;

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The job's failure, by [`JobError::kind`] (`failed`, `trap`, `deadline`...).
    Failed(&'static str),
    /// Stopped by the service stopping.
    Cancelled,
    /// Stopped because the job's lease was lost (another process has the tick).
    LeaseLost,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed(kind) => kind,
            Outcome::Cancelled => "cancelled",
            Outcome::LeaseLost => "lease-lost",
        }
    }

    /// Whether another attempt may follow (a failure; not a stop).
    pub fn retryable(self) -> bool {
        matches!(self, Outcome::Failed(_))
    }
}

/// What a stopped attempt is told apart by: the lease was lost, or the service stops.
pub struct Stops<'a> {
    pub cancel: &'a Arc<Notify>,
    pub lease_lost: &'a AtomicBool,
}

/// Run attempt `attempt` of `tick` of `spec` and record it.
pub async fn run(service: &Service, spec: &JobSpec, tick: Tick, attempt: u32, took_over: bool, stops: Stops<'_>) -> Outcome {
    let started_at = unix_now();
    let started = Instant::now();
    let usage = Arc::new(Mutex::new(Usage::default()));
    let view = ProgressView::new(&spec.name, ProgressMode::Quiet);
    let manifest = &spec.manifest;
    let component_path = manifest.component.clone().unwrap_or_default();
    let args: Vec<String> = spec
        .args
        .as_ref()
        .unwrap_or(&manifest.args)
        .iter()
        .map(|a| a.replace("{job}", &spec.name).replace("{tick}", &rfc3339(tick)).replace("{tick_unix}", &tick.to_string()))
        .collect();
    let result = async {
        let component = tokio::task::block_in_place(|| service.runtime.load(&component_path))?;
        let job = JobConfig {
            job_id: spec.name.clone(),
            args,
            backend: service.backend.clone(),
            grants: manifest.grants.clone(),
            outbound: manifest.outbound.clone(),
            secrets: manifest.secrets.clone(),
            limits: manifest.limits.clone(),
            output_dir: manifest.output_dir.clone(),
            output_read_only: manifest.output_read_only,
            stdout: OutputSink::Stderr,
            stderr: OutputSink::Stderr,
            progress: Some(view.sink()),
            audit: service.audit.clone(),
            cancel: Some(stops.cancel.clone()),
            usage: Some(usage.clone()),
        };
        service.runtime.run(&component, job).await
    }
    .await;
    let ended_at = unix_now();
    let outcome = match &result {
        Ok(()) => Outcome::Success,
        Err(JobError::Cancelled) if stops.lease_lost.load(Ordering::SeqCst) => Outcome::LeaseLost,
        Err(JobError::Cancelled) => Outcome::Cancelled,
        Err(e) => Outcome::Failed(e.kind()),
    };
    if let Err(e) = &result {
        // A trap's backtrace quotes the component's names, and a failure the job's words:
        // cut and made safe for a terminal or a journal.
        let message = terminal_safe(&cut(&e.to_string(), MAX_FAILURE_BYTES)).into_owned();
        eprintln!("rbd-wasm serve: job `{}` tick {} attempt {attempt}: {message}", spec.name, rfc3339(tick));
    }
    let exit_code = result.as_ref().err().map_or(0, |e| e.exit_code().clamp(1, 255));
    let usage = *usage.lock().unwrap_or_else(|p| p.into_inner());
    let report = RunReport::new(spec.name.clone(), component_path, &result, exit_code, started.elapsed(), usage, view.finish());
    service.metrics.attempt(&spec.name, outcome.as_str(), started.elapsed().as_secs_f64(), &usage, ended_at);
    let record = RunRecord {
        job: spec.name.clone(),
        tick,
        tick_time: rfc3339(tick),
        attempt,
        host: service.holder.clone(),
        started: started_at,
        ended: ended_at,
        outcome: outcome.as_str().to_owned(),
        took_over,
        report: serde_json::to_value(&report).unwrap_or_default(),
    };
    if let Err(e) = tokio::task::block_in_place(|| service.history.append(record)) {
        eprintln!("rbd-wasm serve: cannot write the run history: {e}");
    }
    outcome
}
