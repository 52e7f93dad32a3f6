//! Standard output as a data stream (the host's `--stdout-data`): large writes with the
//! stream's own backpressure, where `std::io::stdout()` moves at most 4096 bytes a call
//! (`blocking-write-and-flush`).

use std::io;

use wasip2::io::streams::{OutputStream, StreamError};

/// The job's standard output, for bytes (an `rbd export-diff` stream, say). Only useful
/// when the operator ran the job with `--stdout-data`; otherwise the host shows what it
/// writes as text lines.
pub struct DataStdout {
    stream: OutputStream,
}

/// Standard output for data. Do not mix with `print!` (both write the same stream, and
/// `std`'s buffer is flushed at its own time).
pub fn data_stdout() -> DataStdout {
    DataStdout { stream: wasip2::cli::stdout::get_stdout() }
}

fn io_error(e: StreamError) -> io::Error {
    match e {
        StreamError::Closed => io::Error::new(io::ErrorKind::BrokenPipe, "standard output is closed"),
        StreamError::LastOperationFailed(e) => io::Error::other(e.to_debug_string()),
    }
}

impl io::Write for DataStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let permit = self.stream.check_write().map_err(io_error)?;
            if permit == 0 {
                self.stream.subscribe().block();
                continue;
            }
            let n = buf.len().min(permit as usize);
            self.stream.write(&buf[..n]).map_err(io_error)?;
            return Ok(n);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.blocking_flush().map_err(io_error)
    }
}
