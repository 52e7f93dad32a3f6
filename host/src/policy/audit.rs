//! The audit log: one JSON line for every mutating operation a job attempts (with its
//! result) and for every denial, so an operator can answer "what did this job do, and what
//! did it try?" after the fact.
//!
//! A record: `{"ts":…,"job":…,"pool":…,"image":…,"method":…,"operation":…,"grant":…,
//! "result":"ok"|error-kind,"message":…}`. `operation` is the grant operation the method
//! needs; `grant` is the image patterns that matched (`none` when nothing did).
//!
//! Every field a guest chooses (image names, messages that quote them) is cut to
//! [`MAX_FIELD_BYTES`], so a job cannot make the log grow by more than a bounded amount per
//! call (and calls are metered). A file is written by a thread of its own: a slow disk slows
//! the jobs that log (the channel is bounded, and a full one makes the job wait), never the
//! async executor the other jobs run on.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rbd_backend::Error;
use tokio::sync::{mpsc, oneshot};

/// The longest a guest-chosen field is kept; longer ones are cut, marked with `…`.
pub const MAX_FIELD_BYTES: usize = 256;
/// Records waiting for the writer thread before a job that logs has to wait.
const QUEUE: usize = 1024;

/// Where audit records go.
#[derive(Clone, Default)]
pub enum AuditSink {
    /// Nowhere.
    #[default]
    Off,
    /// Appended to a file (shared by every job of this host).
    File(Arc<AuditFile>),
    /// Kept in memory (for tests and embedders).
    Capture(Arc<Mutex<Vec<String>>>),
}

/// An audit log file and the thread that appends to it.
pub struct AuditFile {
    path: PathBuf,
    queue: mpsc::Sender<Message>,
}

enum Message {
    Line(String),
    Flush(oneshot::Sender<()>),
}

impl AuditSink {
    /// Append to `path`, creating it if needed.
    pub fn append_to(path: &Path) -> std::io::Result<AuditSink> {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let (queue, mut lines) = mpsc::channel::<Message>(QUEUE);
        let shown = path.display().to_string();
        std::thread::Builder::new().name("rbd-wasm-audit".into()).spawn(move || {
            while let Some(message) = lines.blocking_recv() {
                match message {
                    Message::Line(line) => {
                        if let Err(e) = writeln!(file, "{line}") {
                            tracing::error!("cannot write the audit log {shown}: {e}");
                        }
                    }
                    Message::Flush(done) => {
                        let _ = file.flush();
                        let _ = done.send(());
                    }
                }
            }
        })?;
        let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        Ok(AuditSink::File(Arc::new(AuditFile { path, queue })))
    }

    /// The file records are appended to, if any (an output directory must not reach it).
    pub fn path(&self) -> Option<&Path> {
        match self {
            AuditSink::File(file) => Some(&file.path),
            _ => None,
        }
    }
}

/// One job's audit trail.
#[derive(Clone)]
pub struct Audit {
    job: Arc<str>,
    sink: AuditSink,
    /// Keeps the job's secrets out of its records.
    redactor: crate::secrets::Redactor,
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
        Audit { job: job.into(), sink, redactor: Default::default() }
    }

    /// The same trail, with the job's secret values replaced in every record.
    pub fn with_redactor(mut self, redactor: crate::secrets::Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// Record a call and how it ended. Waits (without blocking the executor) while the
    /// log's writer is behind.
    pub async fn record<T>(&self, target: &Target<'_>, result: &Result<T, Error>) {
        if matches!(self.sink, AuditSink::Off) {
            return;
        }
        let ts = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let (outcome, message) = match result {
            Ok(_) => ("ok", String::new()),
            Err(e) => (e.kind(), cut(&e.to_string(), 4 * MAX_FIELD_BYTES).into_owned()),
        };
        let line = serde_json::json!({
            "ts": ts,
            "job": cut(&self.job, MAX_FIELD_BYTES),
            "pool": cut(target.pool, MAX_FIELD_BYTES),
            "image": target.image.map(|i| cut(i, MAX_FIELD_BYTES)),
            "method": target.method,
            "operation": target.operation,
            "grant": cut(target.grant, 4 * MAX_FIELD_BYTES),
            "result": outcome,
            "message": message,
        })
        .to_string();
        self.write(line).await;
    }

    /// Record an outbound HTTP request that never got a response (`crate::outbound`): its
    /// method, the endpoint and path asked for, and why it was denied or failed. Waits while
    /// the log's writer is behind, as [`Audit::record`] does, so a job that is denied in a
    /// loop is slowed, not the log dropped.
    pub async fn record_http_failure(&self, method: &str, target: &str, why: &str) {
        if matches!(self.sink, AuditSink::Off) {
            return;
        }
        self.write(self.http_line(method, target, Err(why), 0, 0)).await;
    }

    /// Record an outbound HTTP exchange that got a response, when it ends (its response
    /// body read to the end, dropped, or dropped with the job): the status and the body
    /// bytes sent and received. Synchronous, for a `Drop`: a file sink whose queue is full
    /// loses the line (and says so in the host's log); a job has at most its
    /// `http_connections` exchanges open, so few can end at once.
    pub fn record_http_exchange(&self, method: &str, target: &str, status: u16, sent: u64, received: u64) {
        let line = match self.sink {
            AuditSink::Off => return,
            _ => self.http_line(method, target, Ok(status), sent, received),
        };
        match &self.sink {
            AuditSink::Off => {}
            AuditSink::File(file) => {
                let line = self.redactor.redact(&line).into_owned();
                if file.queue.try_send(Message::Line(line)).is_err() {
                    tracing::error!("the audit log writer of {} is behind or gone: an HTTP exchange went unrecorded", file.path.display());
                }
            }
            AuditSink::Capture(lines) => lines.lock().unwrap_or_else(|p| p.into_inner()).push(self.redactor.redact(&line).into_owned()),
        }
    }

    fn http_line(&self, method: &str, target: &str, outcome: Result<u16, &str>, sent: u64, received: u64) -> String {
        let ts = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let (result, status, message) = match outcome {
            Ok(status) => ("ok", Some(status), String::new()),
            Err(why) => ("denied-or-failed", None, cut(why, 4 * MAX_FIELD_BYTES).into_owned()),
        };
        serde_json::json!({
            "ts": ts,
            "job": cut(&self.job, MAX_FIELD_BYTES),
            "method": "http",
            "operation": cut(method, MAX_FIELD_BYTES),
            "endpoint": cut(target, 4 * MAX_FIELD_BYTES),
            "status": status,
            "sent_bytes": sent,
            "received_bytes": received,
            "result": result,
            "message": message,
        })
        .to_string()
    }

    async fn write(&self, line: String) {
        let line = self.redactor.redact(&line).into_owned();
        match &self.sink {
            AuditSink::Off => {}
            AuditSink::File(file) => {
                if file.queue.send(Message::Line(line)).await.is_err() {
                    tracing::error!("the audit log writer of {} is gone", file.path.display());
                }
            }
            AuditSink::Capture(lines) => lines.lock().unwrap_or_else(|p| p.into_inner()).push(line),
        }
    }

    /// Wait until every record so far is in the file.
    pub async fn flush(&self) {
        if let AuditSink::File(file) = &self.sink {
            let (done, written) = oneshot::channel();
            if file.queue.send(Message::Flush(done)).await.is_ok() {
                let _ = written.await;
            }
        }
    }
}

/// `text` cut to at most `max` bytes at a character boundary, marked with `…` when cut.
pub fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_are_cut_at_a_character_boundary() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("ééé", 3), "é…");
        assert!(cut(&"x".repeat(1 << 20), MAX_FIELD_BYTES).len() <= MAX_FIELD_BYTES + 3);
    }

    #[tokio::test]
    async fn a_file_sink_writes_off_the_executor_and_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let audit = Audit::new("j", AuditSink::append_to(&path).unwrap());
        let huge = "n".repeat(1 << 20);
        let target = Target { pool: "rbd", image: Some(&huge), method: "remove", operation: "remove", grant: "rbd/*" };
        for _ in 0..3000 {
            audit.record(&target, &Ok::<(), Error>(())).await;
        }
        audit.flush().await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3000);
        assert!(text.lines().all(|l| l.len() < 1024), "a guest-chosen name is cut");
    }
}
