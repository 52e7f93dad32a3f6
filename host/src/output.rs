//! A job's stdout and stderr: every line tagged with the job id, or captured for an embedder.
//!
//! The guest writes through WASI; the host never lets those bytes reach the terminal
//! untagged, so the output of several jobs (and of the host) stays readable.

use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Where a job's output stream goes.
#[derive(Clone)]
pub enum OutputSink {
    /// The host's own stdout, each line prefixed with `[job-id] `.
    Stdout,
    /// The host's own stderr, each line prefixed with `[job-id] `.
    Stderr,
    /// Kept in memory, untagged (for tests and embedders).
    Capture(Arc<Mutex<Vec<u8>>>),
    /// Whole lines, tagged, handed to a function (which may, say, print them above
    /// progress bars); the last line is handed over without a newline when the stream ends.
    Lines(Arc<dyn Fn(&str) + Send + Sync>),
}

/// One of a job's output streams, as handed to WASI.
#[derive(Clone)]
pub struct JobOutput {
    job_id: Arc<str>,
    sink: OutputSink,
    /// Bytes the job may still write to this stream; the rest is dropped (a job that prints
    /// gigabytes cannot fill the operator's disk).
    budget: Arc<Mutex<u64>>,
}

impl JobOutput {
    pub fn new(job_id: &str, sink: OutputSink, limit: u64) -> Self {
        JobOutput { job_id: job_id.into(), sink, budget: Arc::new(Mutex::new(limit)) }
    }
}

impl IsTerminal for JobOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for JobOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(TaggedWriter { out: self.clone(), at_line_start: true, truncated: false, line: Vec::new() })
    }
}

struct TaggedWriter {
    out: JobOutput,
    at_line_start: bool,
    truncated: bool,
    /// The line being gathered for an [`OutputSink::Lines`].
    line: Vec<u8>,
}

impl TaggedWriter {
    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let allowed = {
            let mut budget = self.out.budget.lock().unwrap_or_else(|p| p.into_inner());
            let n = (*budget).min(bytes.len() as u64);
            *budget -= n;
            n as usize
        };
        let bytes = &bytes[..allowed];
        match &self.out.sink {
            OutputSink::Capture(buf) => buf.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes),
            OutputSink::Stdout => self.tag_into(&mut std::io::stdout().lock(), bytes)?,
            OutputSink::Stderr => self.tag_into(&mut std::io::stderr().lock(), bytes)?,
            OutputSink::Lines(to) => {
                let to = to.clone();
                let mut line = std::mem::take(&mut self.line);
                self.tag_into(&mut line, bytes)?;
                while let Some(i) = line.iter().position(|&b| b == b'\n') {
                    to(&String::from_utf8_lossy(&line[..i]));
                    line.drain(..=i);
                }
                self.line = line;
            }
        }
        Ok(())
    }

    fn tag_into(&mut self, w: &mut dyn Write, bytes: &[u8]) -> std::io::Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.at_line_start {
                write!(w, "[{}] ", self.out.job_id)?;
                self.at_line_start = false;
            }
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    w.write_all(&rest[..=i])?;
                    self.at_line_start = true;
                    rest = &rest[i + 1..];
                }
                None => {
                    w.write_all(rest)?;
                    rest = &[];
                }
            }
        }
        w.flush()
    }
}

impl Drop for TaggedWriter {
    fn drop(&mut self) {
        if let OutputSink::Lines(to) = &self.out.sink {
            if !self.line.is_empty() {
                to(&String::from_utf8_lossy(&self.line));
            }
        }
    }
}

impl AsyncWrite for TaggedWriter {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        // Writes to the host's stdio are small and line-buffered: doing them inline is what
        // wasmtime-wasi's own stdout does.
        let before = *self.out.budget.lock().unwrap_or_else(|p| p.into_inner());
        self.emit(buf)?;
        if before < buf.len() as u64 && !self.truncated {
            self.truncated = true;
            let note = format!("[{}] (output limit reached; further output of this stream is dropped)", self.out.job_id);
            match &self.out.sink {
                OutputSink::Stdout | OutputSink::Stderr => eprintln!("{note}"),
                OutputSink::Lines(to) => to(&note),
                OutputSink::Capture(_) => {}
            }
        }
        // Report everything as written: the guest must not spin on a full stream.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
