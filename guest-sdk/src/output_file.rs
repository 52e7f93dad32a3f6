//! Files of the job's output directory, opened through WASI itself rather than through
//! Rust's `std::fs`, so that their streams can be handed to the host: the host then writes
//! an image's bytes into one ([`PendingReads::write_to`](crate::PendingReads::write_to)),
//! or writes an image from one ([`Image::write_from`](crate::Image::write_from)) and hashes
//! one ([`Sha256::update_from`](crate::Sha256::update_from)), without the bytes passing
//! through the job. The job's own bytes can be written too (`io::Write`).

use std::io;
use std::path::{Component, Path};

use wasip2::filesystem::preopens;
use wasip2::filesystem::types::{Descriptor, DescriptorFlags, OpenFlags, PathFlags};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

/// The most the host takes in one `blocking-write-and-flush` (WASI's own limit).
const WRITE_PIECE: usize = 4096;

/// A file created (or truncated) for writing, and a stream writing it from its start.
pub struct OutputFile {
    // Dropped in this order: the stream before the file it writes.
    stream: OutputStream,
    file: Descriptor,
}

impl OutputFile {
    /// Create `path` (an absolute path inside a directory the host mapped, such as `/out`),
    /// or truncate it if it exists.
    pub fn create(path: impl AsRef<Path>) -> io::Result<OutputFile> {
        let path = path.as_ref();
        let file = open(path, OpenFlags::CREATE | OpenFlags::TRUNCATE, DescriptorFlags::WRITE)?;
        let stream = file.write_via_stream(0).map_err(|e| io::Error::other(format!("writing {}: {e}", path.display())))?;
        Ok(OutputFile { stream, file })
    }

    /// The stream, for the host to write into.
    pub(crate) fn stream(&self) -> &OutputStream {
        &self.stream
    }

    /// Make the file's data and size durable (`fsync`).
    pub fn sync_all(&self) -> io::Result<()> {
        self.file.sync().map_err(|e| io::Error::other(format!("syncing: {e}")))
    }
}

impl io::Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(WRITE_PIECE);
        self.stream.blocking_write_and_flush(&buf[..n]).map_err(stream_error)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.blocking_flush().map_err(stream_error)
    }
}

/// A file opened for reading, and a stream reading it from its start.
pub struct InputFile {
    // Dropped in this order: the stream before the file it reads.
    stream: InputStream,
    _file: Descriptor,
}

impl InputFile {
    /// Open `path` (an absolute path inside a directory the host mapped) for reading.
    pub fn open(path: impl AsRef<Path>) -> io::Result<InputFile> {
        InputFile::open_at(path, 0)
    }

    /// Open `path` for reading from byte `offset` on.
    pub fn open_at(path: impl AsRef<Path>, offset: u64) -> io::Result<InputFile> {
        let path = path.as_ref();
        let file = open(path, OpenFlags::empty(), DescriptorFlags::READ)?;
        let stream = file.read_via_stream(offset).map_err(|e| io::Error::other(format!("reading {}: {e}", path.display())))?;
        Ok(InputFile { stream, _file: file })
    }

    /// The file's size in bytes.
    pub fn size(&self) -> io::Result<u64> {
        self._file.stat().map(|s| s.size).map_err(|e| io::Error::other(format!("stat: {e}")))
    }

    /// The stream, for the host to read from.
    pub(crate) fn stream(&self) -> &InputStream {
        &self.stream
    }
}

fn stream_error(e: StreamError) -> io::Error {
    match e {
        StreamError::Closed => io::Error::new(io::ErrorKind::BrokenPipe, "the stream is closed"),
        StreamError::LastOperationFailed(e) => io::Error::other(e.to_debug_string()),
    }
}

/// Open `path` inside the mapped directory that holds it.
fn open(path: &Path, open: OpenFlags, flags: DescriptorFlags) -> io::Result<Descriptor> {
    let (dir, rest) = preopened(path)?;
    dir.open_at(PathFlags::empty(), &rest, open, flags).map_err(|e| io::Error::other(format!("opening {}: {e}", path.display())))
}

/// The mapped directory that holds `path` (the longest match), and the rest of the path.
fn preopened(path: &Path) -> io::Result<(Descriptor, String)> {
    let mut best: Option<(Descriptor, usize, String)> = None;
    for (dir, name) in preopens::get_directories() {
        let Ok(rest) = path.strip_prefix(&name) else { continue };
        let depth = Path::new(&name).components().count();
        if best.as_ref().is_none_or(|(_, d, _)| depth > *d) {
            best = Some((dir, depth, rest.to_string_lossy().into_owned()));
        }
    }
    let (dir, _, rest) = best.ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("{} is in no directory the host mapped", path.display()))
    })?;
    if rest.is_empty() || Path::new(&rest).components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{}: not a plain file path", path.display())));
    }
    Ok((dir, rest))
}
