//! A job's stdout and stderr: every line tagged with the job id and made safe for a
//! terminal, or captured for an embedder.
//!
//! The guest writes through WASI; the host never lets those bytes reach the operator's
//! terminal untagged or raw. Control characters (escape sequences that move the cursor,
//! erase a line, set the window title or write the clipboard; carriage returns that let a
//! line overwrite another job's) are shown escaped (`\x1b`, `\r`, `\u{202e}`), and invalid
//! UTF-8 as U+FFFD. What a job prints counts against its output budget as printed (tag and
//! escapes included); past it, output is dropped and one note says so.

use std::borrow::Cow;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// A line longer than this is printed in pieces (each tagged), so a job cannot make the host
/// buffer without bound while waiting for a newline.
pub const MAX_LINE_BYTES: usize = 16 << 10;

/// Where a job's output stream goes.
#[derive(Clone)]
pub enum OutputSink {
    /// The host's own stdout, each line prefixed with `[job-id] `.
    Stdout,
    /// The host's own stderr, each line prefixed with `[job-id] `.
    Stderr,
    /// Kept in memory as written, untagged and unescaped (for tests and embedders, who
    /// must make it safe themselves before showing it).
    Capture(Arc<Mutex<Vec<u8>>>),
    /// Whole lines, tagged and made safe, handed to a function (which may, say, print them
    /// above progress bars); the last line is handed over without a newline when the stream
    /// ends.
    Lines(Arc<dyn Fn(&str) + Send + Sync>),
    /// Data, not text: the bytes go to the host's stdout as written, untagged and unescaped
    /// (an `rbd export-diff` stream piped to `rbd import-diff -`). The operator chooses this
    /// (`--stdout-data`) and the CLI refuses it when stdout is a terminal. The guest waits
    /// while the reader is slow (no buffering beyond one write), and a write past the budget
    /// fails instead of being dropped: a cut stream must not look whole.
    Data,
}

/// `text` with every character that a terminal would act on, rather than show, escaped:
/// C0 and C1 controls (but tab), DEL, and the bidirectional overrides that reorder what
/// follows them.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        (c.is_control() && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !text.chars().any(unsafe_char) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    out.into()
}

/// One of a job's output streams, as handed to WASI.
#[derive(Clone)]
pub struct JobOutput {
    job_id: Arc<str>,
    sink: OutputSink,
    /// Keeps the job's secrets out of its lines (not out of a `Capture`, which is raw).
    redactor: crate::secrets::Redactor,
    /// Bytes the job may still have printed on this stream; the rest is dropped (a job that
    /// prints gigabytes cannot fill the operator's disk).
    budget: Arc<Mutex<u64>>,
    /// Whether the note that output was dropped has been printed (once per stream).
    noted: Arc<AtomicBool>,
}

impl JobOutput {
    pub fn new(job_id: &str, sink: OutputSink, limit: u64, redactor: crate::secrets::Redactor) -> Self {
        let job_id: Arc<str> = terminal_safe(job_id).into();
        JobOutput { job_id, sink, redactor, budget: Arc::new(Mutex::new(limit)), noted: Arc::new(AtomicBool::new(false)) }
    }

    /// Take up to `n` bytes of the budget; how many were granted.
    fn spend(&self, n: usize) -> usize {
        let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        let granted = (*budget).min(n as u64);
        *budget -= granted;
        granted as usize
    }

    /// Say once that output was dropped.
    fn note_dropped(&self) {
        if self.noted.swap(true, Ordering::Relaxed) {
            return;
        }
        let note = format!("[{}] (output limit reached; further output of this stream is dropped)", self.job_id);
        match &self.sink {
            OutputSink::Stdout | OutputSink::Stderr | OutputSink::Data => eprintln!("{note}"),
            OutputSink::Lines(to) => to(&note),
            OutputSink::Capture(_) => {}
        }
    }

    /// Print one line (without its newline) tagged and made safe, within the budget.
    fn emit_line(&self, line: &[u8], newline: bool) -> std::io::Result<()> {
        let text = String::from_utf8_lossy(line);
        let shown = format!("[{}] {}", self.job_id, self.redactor.redact(&terminal_safe(&self.redactor.redact(&text))));
        let cost = shown.len() + usize::from(newline);
        if self.spend(cost) < cost {
            self.note_dropped();
            return Ok(());
        }
        match &self.sink {
            OutputSink::Stdout => write_line(&mut std::io::stdout().lock(), &shown, newline),
            OutputSink::Stderr => write_line(&mut std::io::stderr().lock(), &shown, newline),
            OutputSink::Lines(to) => {
                to(&shown);
                Ok(())
            }
            OutputSink::Capture(_) | OutputSink::Data => Ok(()),
        }
    }
}

fn write_line(w: &mut dyn Write, line: &str, newline: bool) -> std::io::Result<()> {
    w.write_all(line.as_bytes())?;
    if newline {
        w.write_all(b"\n")?;
    }
    w.flush()
}

impl IsTerminal for JobOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for JobOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        match self.sink {
            OutputSink::Data => Box::new(DataWriter { out: self.clone(), to: tokio::io::stdout() }),
            _ => Box::new(LineWriter { out: self.clone(), line: Vec::new() }),
        }
    }

    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        // Data moves in writes of up to 1 MiB (wasmtime-wasi's default is 8 KiB): one fixed
        // buffer per stream, the same for every job.
        let permit = if matches!(self.sink, OutputSink::Data) { DATA_WRITE_BYTES } else { 8192 };
        Box::new(wasmtime_wasi::p2::pipe::AsyncWriteStream::new(permit, Box::into_pin(self.async_stream())))
    }
}

/// Largest write a data stdout takes at once.
const DATA_WRITE_BYTES: usize = 1 << 20;

/// A data stream's writer: the host's stdout, within the budget, with backpressure.
struct DataWriter {
    out: JobOutput,
    to: tokio::io::Stdout,
}

impl AsyncWrite for DataWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let allowed = (*self.out.budget.lock().unwrap_or_else(|p| p.into_inner())).min(buf.len() as u64) as usize;
        if allowed == 0 && !buf.is_empty() {
            if !self.out.noted.swap(true, Ordering::Relaxed) {
                eprintln!("[{}] (standard output reached its limit, stdout_data_bytes: the job's data stream is cut)", self.out.job_id);
            }
            return Poll::Ready(Err(std::io::Error::other("the job's standard output reached its limit (limits.stdout_data_bytes)")));
        }
        let written = std::task::ready!(Pin::new(&mut self.to).poll_write(cx, &buf[..allowed]))?;
        // Charged as written: the budget only shrinks by what reached the reader.
        self.out.spend(written);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.to).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.to).poll_flush(cx)
    }
}

/// Gathers a stream's bytes into lines and prints each whole.
struct LineWriter {
    out: JobOutput,
    line: Vec<u8>,
}

impl LineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let OutputSink::Capture(buf) = &self.out.sink {
            let granted = self.out.spend(bytes.len());
            buf.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(&bytes[..granted]);
            return Ok(());
        }
        if *self.out.budget.lock().unwrap_or_else(|p| p.into_inner()) == 0 {
            // Past the budget nothing more is shown: do not even look at the bytes.
            self.out.note_dropped();
            return Ok(());
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = MAX_LINE_BYTES - self.line.len();
            match rest.iter().take(room).position(|&b| b == b'\n') {
                Some(i) => {
                    self.line.extend_from_slice(&rest[..i]);
                    rest = &rest[i + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.out.emit_line(&line, true)?;
                }
                None if rest.len() >= room => {
                    // A line too long to gather: print what there is, carry on in a new one.
                    self.line.extend_from_slice(&rest[..room]);
                    rest = &rest[room..];
                    let line = std::mem::take(&mut self.line);
                    self.out.emit_line(&line, true)?;
                }
                None => {
                    self.line.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            let _ = self.out.emit_line(&line, !matches!(self.out.sink, OutputSink::Lines(_)));
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        // Writes to the host's stdio are small and line-buffered: doing them inline is what
        // wasmtime-wasi's own stdout does.
        self.write(buf)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(job: &str, limit: u64, writes: &[&[u8]]) -> Vec<String> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let seen = seen.clone();
            OutputSink::Lines(Arc::new(move |l: &str| seen.lock().unwrap().push(l.to_owned())))
        };
        let out = JobOutput::new(job, sink, limit, Default::default());
        {
            let mut w = LineWriter { out, line: Vec::new() };
            for bytes in writes {
                w.write(bytes).unwrap();
            }
        }
        let lines = seen.lock().unwrap().clone();
        lines
    }

    #[test]
    fn escape_sequences_and_carriage_returns_are_shown_not_obeyed() {
        let lines = lines_of("j", 1 << 20, &[b"\r\x1b[2K[bystander] backup ok\n", b"\x1b]52;c;aGk=\x07 \xc2\x9b6n \xff tab\there\n"]);
        assert_eq!(lines[0], "[j] \\x0d\\x1b[2K[bystander] backup ok");
        assert_eq!(lines[1], "[j] \\x1b]52;c;aGk=\\x07 \\u{9b}6n \u{fffd} tab\there");
        assert_eq!(terminal_safe("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(terminal_safe("plain"), "plain");
    }

    #[test]
    fn lines_split_across_writes_are_joined_and_long_ones_cut() {
        let lines = lines_of("j", 1 << 20, &[b"hel", b"lo\nwor", b"ld"]);
        assert_eq!(lines, ["[j] hello", "[j] world"]);
        let long = vec![b'x'; MAX_LINE_BYTES * 2 + 5];
        let lines = lines_of("j", 1 << 20, &[&long]);
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn the_budget_counts_what_is_printed_and_the_note_comes_once() {
        let lines = lines_of("job", 30, &[b"0123456789\n", b"0123456789\n", b"0123456789\n", b"more\n"]);
        assert_eq!(lines[0], "[job] 0123456789");
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].contains("output limit reached"));
    }
}
