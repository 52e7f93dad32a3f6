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

    /// Record an outbound HTTP request (`crate::outbound`): its method, the endpoint and
    /// path asked for, and its response's status or why it was denied or failed.
    pub async fn record_http(&self, method: &str, target: &str, outcome: Result<u16, &str>) {
        if matches!(self.sink, AuditSink::Off) {
            return;
        }
        let ts = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let (result, status, message) = match outcome {
            Ok(status) => ("ok", Some(status), String::new()),
            Err(why) => ("denied-or-failed", None, cut(why, 4 * MAX_FIELD_BYTES).into_owned()),
        };
        let line = serde_json::json!({
            "ts": ts,
            "job": cut(&self.job, MAX_FIELD_BYTES),
            "method": "http",
            "operation": cut(method, MAX_FIELD_BYTES),
            "endpoint": cut(target, 4 * MAX_FIELD_BYTES),
            "status": status,
            "result": result,
            "message": message,
        })
        .to_string();
        self.write(line).await;
    }

    async fn write(&self, line: String) {
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
