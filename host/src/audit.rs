//! The audit log: one JSON line for every mutating operation a job attempts (with its
//! result) and for every denial, so an operator can answer "what did this job do, and what
//! did it try?" after the fact.
//!
//! A record: `{"ts":…,"job":…,"pool":…,"image":…,"method":…,"operation":…,"grant":…,
//! "result":"ok"|error-kind,"message":…}`. `operation` is the grant operation the method
//! needs; `grant` is the image patterns that matched (`none` when nothing did).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rbd_backend::Error;

/// Where audit records go.
#[derive(Clone, Default)]
pub enum AuditSink {
    /// Nowhere.
    #[default]
    Off,
    /// Appended to a file (shared by every job of this host).
    File(Arc<Mutex<std::fs::File>>),
    /// Kept in memory (for tests and embedders).
    Capture(Arc<Mutex<Vec<String>>>),
}

impl AuditSink {
    /// Append to `path`, creating it if needed.
    pub fn append_to(path: &std::path::Path) -> std::io::Result<AuditSink> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AuditSink::File(Arc::new(Mutex::new(file))))
    }
}

/// One job's audit trail.
#[derive(Clone)]
pub struct Audit {
    job: Arc<str>,
    sink: AuditSink,
}

/// What an audited call touched.
pub struct Target<'a> {
    pub pool: &'a str,
    pub image: Option<&'a str>,
    pub method: &'a str,
    pub operation: &'a str,
    pub grant: &'a str,
}

impl Audit {
    pub fn new(job: &str, sink: AuditSink) -> Self {
        Audit { job: job.into(), sink }
    }

    /// Record a call and how it ended.
    pub fn record<T>(&self, target: &Target<'_>, result: &Result<T, Error>) {
        if matches!(self.sink, AuditSink::Off) {
            return;
        }
        let ts = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let (outcome, message) = match result {
            Ok(_) => ("ok", String::new()),
            Err(e) => (e.kind(), e.to_string()),
        };
        let line = serde_json::json!({
            "ts": ts,
            "job": &*self.job,
            "pool": target.pool,
            "image": target.image,
            "method": target.method,
            "operation": target.operation,
            "grant": target.grant,
            "result": outcome,
            "message": message,
        })
        .to_string();
        match &self.sink {
            AuditSink::Off => {}
            AuditSink::File(file) => {
                let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = writeln!(file, "{line}") {
                    tracing::error!("cannot write the audit log: {e}");
                }
            }
            AuditSink::Capture(lines) => lines.lock().unwrap_or_else(|p| p.into_inner()).push(line),
        }
    }
}
