//! The input stream of an output-directory file (`read-via-stream`): wasmtime-wasi's reads
//! at most 64 KiB a call, each a trip to the blocking pool, which made the restore's data
//! plane (`image.write-from`, which reads a 4 MiB write's bytes at once) spend a fifth of
//! its CPU on copies and scheduling (bench/profiles). This one reads up to 4 MiB a call,
//! held in the job's host-memory budget while it is held; a read the budget cannot hold
//! reads 64 KiB, as wasmtime-wasi's does. Otherwise the same protocol: `read` starts a read
//! on the blocking pool and answers with nothing until it is done; `blocking-read` waits.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;
use wasmtime_wasi::p2::{InputStream, Pollable, StreamError, StreamResult};

use crate::meter::{HandleSlot, Meter, Reservation};

/// Most bytes one read takes, in the budget.
const MAX_PIECE: usize = 4 << 20;
/// Most bytes one read takes when the budget cannot hold more (wasmtime-wasi's own bound).
const SMALL_PIECE: usize = 64 << 10;

enum State {
    Idle,
    Waiting(JoinHandle<(io::Result<Bytes>, Option<Reservation>)>),
    /// Bytes read and not yet taken, and the budget they hold.
    Ready(Bytes, Option<Reservation>),
    Failed(io::Error),
    Closed,
}

/// A file read from `position` on.
pub struct FileReader {
    file: Arc<std::fs::File>,
    position: u64,
    state: State,
    meter: Arc<Meter>,
    /// The stream keeps the file open: it counts as a handle of the job.
    _slot: HandleSlot,
}

impl FileReader {
    pub fn new(file: Arc<std::fs::File>, position: u64, meter: Arc<Meter>, slot: HandleSlot) -> Self {
        FileReader { file, position, state: State::Idle, meter, _slot: slot }
    }

    /// Start a read of up to `size` bytes at the position.
    fn start(&mut self, size: usize) {
        let (want, memory) = match self.meter.reserve(size.min(MAX_PIECE) as u64) {
            Ok(memory) => (size.min(MAX_PIECE), Some(memory)),
            Err(_) => (size.min(SMALL_PIECE), None),
        };
        let (file, at) = (self.file.clone(), self.position);
        self.state = State::Waiting(tokio::task::spawn_blocking(move || (read_at(&file, at, want), memory)));
    }

    /// Wait for the read under way, if any.
    async fn settle(&mut self) {
        if let State::Waiting(task) = &mut self.state {
            self.state = match task.await {
                Ok((Ok(bytes), _)) if bytes.is_empty() => State::Closed,
                Ok((Ok(bytes), memory)) => State::Ready(bytes, memory),
                Ok((Err(e), _)) => State::Failed(e),
                Err(e) => State::Failed(io::Error::other(format!("reading failed: {e}"))),
            };
        }
    }
}

/// Up to `want` bytes at `at`; empty at the end of the file.
fn read_at(file: &std::fs::File, at: u64, want: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(want);
    let mut got = 0;
    while got < want {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf.freeze())
}

#[wasmtime_wasi::async_trait]
impl Pollable for FileReader {
    async fn ready(&mut self) {
        self.settle().await
    }
}

#[wasmtime_wasi::async_trait]
impl InputStream for FileReader {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => {
                if size > 0 {
                    self.start(size);
                }
                Ok(Bytes::new())
            }
            State::Ready(mut bytes, memory) => {
                let taken = bytes.split_to(size.min(bytes.len()));
                self.position += taken.len() as u64;
                if !bytes.is_empty() {
                    self.state = State::Ready(bytes, memory);
                }
                Ok(taken)
            }
            waiting @ State::Waiting(_) => {
                self.state = waiting;
                Ok(Bytes::new())
            }
            State::Failed(e) => {
                self.state = State::Closed;
                Err(StreamError::LastOperationFailed(e.into()))
            }
            State::Closed => {
                self.state = State::Closed;
                Err(StreamError::Closed)
            }
        }
    }

    async fn blocking_read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.settle().await;
        if size > 0 && matches!(self.state, State::Idle) {
            self.start(size);
            self.settle().await;
        }
        self.read(size)
    }

    async fn cancel(&mut self) {
        // A read under way ends on the blocking pool; its result is dropped.
        if let State::Waiting(task) = std::mem::replace(&mut self.state, State::Closed) {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_a_file_in_large_pieces_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(9 << 20) + 5).map(|i| (i * 7) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let meter = Arc::new(Meter::new(Default::default()));
        let file = Arc::new(std::fs::File::open(&path).unwrap());
        let mut reader = FileReader::new(file, 10, meter.clone(), meter.handle_slot().unwrap());
        let mut got = Vec::new();
        loop {
            match reader.blocking_read(8 << 20).await {
                Ok(bytes) => {
                    assert!(!bytes.is_empty() && bytes.len() <= MAX_PIECE);
                    got.extend_from_slice(&bytes);
                }
                Err(StreamError::Closed) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(got == data[10..], "the bytes from the position on");
        assert_eq!(meter.usage().host_memory_peak_bytes, MAX_PIECE as u64, "one piece held at a time");
    }
}
