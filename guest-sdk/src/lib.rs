//! The Rust SDK for rbd-wasm jobs.
//!
//! A job is a WebAssembly component that the `rbd-wasm` host runs against the Ceph pools an
//! operator granted it. This crate wraps the `ceph:rbd` WIT bindings in the types a Rust user
//! expects: [`Pool`] and [`Image`] handles that close when dropped, an [`Error`] enum that
//! implements [`std::error::Error`], diffs as an [`Iterator`], and [`Image::cursor`] for
//! `Read + Write + Seek`.
//!
//! ```no_run
//! use rbd_wasm_guest::{open_pool, Result};
//!
//! fn run(_args: Vec<String>) -> Result<()> {
//!     let pool = open_pool("rbd")?;
//!     pool.create("myimage", 4 << 30)?;
//!     let image = pool.open("myimage")?;
//!     image.write(0, "foo".repeat(200).as_bytes())?;
//!     println!("wrote {} bytes", image.read(0, 600)?.len());
//!     Ok(())
//! }
//!
//! rbd_wasm_guest::job!(run);
//! ```
//!
//! Build it as a `cdylib` for `wasm32-wasip2`, and run it with
//! `rbd-wasm run target/wasm32-wasip2/release/myjob.wasm`.

use std::fmt;
use std::io;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "job-world",
        pub_export_macro: true,
        additional_derives: [PartialEq, Eq],
        default_bindings_module: "rbd_wasm_guest::bindings",
        // WASI's streams are the `wasip2` crate's, so that a file opened through it can be
        // handed to the host (`PendingReads::write_to`).
        with: {
            "wasi:io/streams@0.2.12": wasip2::io::streams,
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
        },
    });
}

use bindings::ceph::rbd::{job_host, rbd as wit, types};

mod data_stdout;
mod output_file;
pub mod s3;

pub use data_stdout::{data_stdout, DataStdout};
pub use output_file::{InputFile, OutputFile};
/// One write of [`Image::write_from`]: skip `skip` bytes of the stream, then write its
/// next `length` bytes at `offset`.
pub type StreamWrite = wit::StreamWrite;
/// A piece of what [`PendingReads::write_to`] writes: bytes the job gives, or a range of
/// the image that the reads hold.
pub type Piece = wit::Piece;

pub use types::{Child, ImageStat, Locker, SnapInfo, Watcher};

/// An extent of a diff: `[offset, offset + length)` holds data (`exists`) or zeroes.
pub type Extent = types::Extent;
/// A byte range of an image.
pub type Range = types::Range;
/// One range read by [`PendingReads::wait`]: its bytes, and the SHA-256 of each chunk if
/// [`Image::start_reads`] was given a chunk size (32 bytes each, concatenated).
pub type ReadResult = types::ReadResult;

/// Why an RBD operation failed; one case per exception of the Python `rbd` module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// `ImageNotFound`: no such image, snapshot, pool or lock, or one outside the grant.
    NotFound(String),
    /// `ImageExists`.
    Exists(String),
    /// `ImageBusy`.
    Busy(String),
    /// `ImageHasSnapshots`.
    HasSnapshots(String),
    /// `ReadOnlyImage`.
    ReadOnly(String),
    /// `InvalidArgument`.
    InvalidArgument(String),
    /// `ArgumentOutOfRange`.
    OutOfRange(String),
    /// `FunctionNotSupported` / `OperationNotSupported`.
    NotSupported(String),
    /// `PermissionError`: refused by the cluster or by the job's grant.
    PermissionDenied(String),
    /// `IOError`.
    Io(String),
    /// `IncompleteWriteError`: the write ran past the end of the image.
    IncompleteWrite { requested: u64, written: u64 },
    /// `LogicError`.
    Logic(String),
    /// `TypeError`.
    TypeError(String),
    /// `NoSpace`.
    NoSpace(String),
    /// `DiskQuotaExceeded`, or a quota of this job.
    QuotaExceeded(String),
    /// `Timeout`.
    Timeout(String),
    /// `ConnectionShutdown`.
    ConnectionShutdown(String),
    /// `Error`: another errno.
    Other { errno: i32, message: String },
}

impl Error {
    /// The case's name in the WIT (`not-found`, `exists`, ...), handy in logs and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "not-found",
            Error::Exists(_) => "exists",
            Error::Busy(_) => "busy",
            Error::HasSnapshots(_) => "has-snapshots",
            Error::ReadOnly(_) => "read-only",
            Error::InvalidArgument(_) => "invalid-argument",
            Error::OutOfRange(_) => "out-of-range",
            Error::NotSupported(_) => "not-supported",
            Error::PermissionDenied(_) => "permission-denied",
            Error::Io(_) => "io",
            Error::IncompleteWrite { .. } => "incomplete-write",
            Error::Logic(_) => "logic",
            Error::TypeError(_) => "type-error",
            Error::NoSpace(_) => "no-space",
            Error::QuotaExceeded(_) => "quota-exceeded",
            Error::Timeout(_) => "timeout",
            Error::ConnectionShutdown(_) => "connection-shutdown",
            Error::Other { .. } => "other",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::IncompleteWrite { requested, written } => {
                write!(f, "incomplete-write: wrote {written} of {requested} bytes")
            }
            Error::Other { errno, message } => write!(f, "error {errno}: {message}"),
            Error::NotFound(m)
            | Error::Exists(m)
            | Error::Busy(m)
            | Error::HasSnapshots(m)
            | Error::ReadOnly(m)
            | Error::InvalidArgument(m)
            | Error::OutOfRange(m)
            | Error::NotSupported(m)
            | Error::PermissionDenied(m)
            | Error::Io(m)
            | Error::Logic(m)
            | Error::TypeError(m)
            | Error::NoSpace(m)
            | Error::QuotaExceeded(m)
            | Error::Timeout(m)
            | Error::ConnectionShutdown(m) => write!(f, "{}: {m}", self.kind()),
        }
    }
}

impl std::error::Error for Error {}

impl From<types::Error> for Error {
    fn from(e: types::Error) -> Self {
        use types::Error as W;
        match e {
            W::NotFound(m) => Error::NotFound(m),
            W::Exists(m) => Error::Exists(m),
            W::Busy(m) => Error::Busy(m),
            W::HasSnapshots(m) => Error::HasSnapshots(m),
            W::ReadOnly(m) => Error::ReadOnly(m),
            W::InvalidArgument(m) => Error::InvalidArgument(m),
            W::OutOfRange(m) => Error::OutOfRange(m),
            W::NotSupported(m) => Error::NotSupported(m),
            W::PermissionDenied(m) => Error::PermissionDenied(m),
            W::Io(m) => Error::Io(m),
            W::IncompleteWrite(w) => Error::IncompleteWrite { requested: w.requested, written: w.written },
            W::Logic(m) => Error::Logic(m),
            W::TypeError(m) => Error::TypeError(m),
            W::NoSpace(m) => Error::NoSpace(m),
            W::QuotaExceeded(m) => Error::QuotaExceeded(m),
            W::Timeout(m) => Error::Timeout(m),
            W::ConnectionShutdown(m) => Error::ConnectionShutdown(m),
            W::Other(o) => Error::Other { errno: o.errno, message: o.message },
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::NotFound(_) => io::ErrorKind::NotFound,
            Error::PermissionDenied(_) => io::ErrorKind::PermissionDenied,
            Error::ReadOnly(_) => io::ErrorKind::ReadOnlyFilesystem,
            Error::InvalidArgument(_) | Error::OutOfRange(_) => io::ErrorKind::InvalidInput,
            Error::IncompleteWrite { .. } => io::ErrorKind::WriteZero,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn lift<T>(r: std::result::Result<T, types::Error>) -> Result<T> {
    r.map_err(Error::from)
}

/// librbd's version triple (`RBD.version()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub extra: u32,
}

/// The version of librbd behind the host (the embedded store reports the librbd it emulates).
pub fn version() -> Version {
    let v = wit::version();
    Version { major: v.major, minor: v.minor, extra: v.extra }
}

/// The pools the operator granted this job.
pub fn granted_pools() -> Vec<String> {
    wit::granted_pools()
}

/// End the job now with exit status `code` (0: success). For outcomes that are neither
/// success nor failure (the backup job's 75: nothing backed up because other runners held
/// the images); `std::process::exit` on wasm32-wasip2 can only say success or failure.
pub fn exit(code: u8) -> ! {
    job_host::exit_with_code(code);
    unreachable!("the host ends the job in exit-with-code")
}

/// Tell the operator how far a long job has come (drawn as a progress bar).
pub fn report_progress(label: &str, done: u64, total: Option<u64>) {
    job_host::report_progress(&types::Progress { label: label.to_owned(), done, total });
}

/// The deduplicating repository's chunk pipeline, run by the host natively
/// (`docs/dedup-format.md`): chunk ids, zstd, AES-256-GCM. The keys stay in the host.
pub struct ChunkCodec {
    inner: job_host::ChunkCodec,
}

/// What [`ChunkCodec::seal`] gives.
pub type SealedChunk = job_host::SealedChunk;

impl ChunkCodec {
    /// A codec with the repository's data key and id key (32 bytes each).
    pub fn new(data_key: &[u8; 32], id_key: &[u8; 32]) -> Result<ChunkCodec> {
        Ok(ChunkCodec { inner: lift(job_host::ChunkCodec::create(data_key, id_key))? })
    }

    /// The id of each `chunk_size` piece of `data`, `None` for a piece of zeroes.
    pub fn ids(&self, data: &[u8], chunk_size: u32) -> Vec<Option<[u8; 32]>> {
        self.inner.ids(data, chunk_size).into_iter().map(|id| id.and_then(|id| id.try_into().ok())).collect()
    }

    /// Seal one chunk (at most 16 MiB).
    pub fn seal(&self, data: &[u8]) -> Result<SealedChunk> {
        lift(self.inner.seal(data))
    }

    /// Open a chunk sealed as `id`: its plaintext, checked to be `id`'s.
    pub fn open(&self, id: &[u8; 32], sealed: &[u8]) -> Result<Vec<u8>> {
        lift(self.inner.open(id, sealed))
    }
}

/// Secrets the operator handed this job (a manifest's `[secrets]`: an S3 key pair, a
/// repository key). The host keeps their values out of what it prints for the job, but a
/// job should still never print them.
pub mod secrets {
    use super::{lift, Result};
    use crate::bindings::ceph::rbd::secrets as wit;

    /// The names handed to this job, sorted.
    pub fn names() -> Vec<String> {
        wit::names()
    }

    /// The value of secret `name`; [`Error::NotFound`](super::Error::NotFound) when it was
    /// not handed to this job.
    pub fn get(name: &str) -> Result<Vec<u8>> {
        lift(wit::get(name))
    }

    /// As [`get`], as text; [`Error::TypeError`](super::Error::TypeError) when it is not UTF-8.
    pub fn get_text(name: &str) -> Result<String> {
        String::from_utf8(get(name)?).map_err(|_| super::Error::TypeError(format!("secret {name} is not UTF-8 text")))
    }
}

/// Reads started by [`Image::start_reads`]; dropped unwaited, their results are discarded.
pub struct PendingReads {
    inner: wit::PendingReads,
}

impl PendingReads {
    /// The results, in the order the ranges were asked.
    pub fn wait(self) -> Result<Vec<ReadResult>> {
        lift(self.inner.wait())
    }

    /// Only the chunk digests of each range, in the order asked; the bytes stay in the host.
    pub fn wait_sums(self) -> Result<Vec<Vec<u8>>> {
        lift(self.inner.wait_sums())
    }

    /// Have the host write `pieces` to `out` in order (a [`Piece::Read`] is a range of what
    /// these reads read: its bytes never enter the job), adding every byte to `hash`;
    /// returns each range's chunk digests. Write the job's own bytes to `out` only between
    /// calls. See `pending-reads.write-to` in the WIT for the limits.
    pub fn write_to(self, out: &OutputFile, pieces: &[Piece], hash: Option<&Sha256>) -> Result<Vec<Vec<u8>>> {
        lift(self.inner.write_to(out.stream(), pieces, hash.map(|h| &h.inner)))
    }
}

/// SHA-256, computed by the host (natively, and off the job's thread: [`Sha256::update`]
/// returns while the bytes are hashed). Several times cheaper than hashing in the guest.
/// Also an [`io::Write`], so it can sit under a `BufWriter` and see large writes.
pub struct Sha256 {
    inner: job_host::Sha256,
}

impl Sha256 {
    pub fn new() -> Self {
        Sha256 { inner: job_host::Sha256::new() }
    }

    /// The check of an rbd diff stream, `chunked-sha256` with `chunk_size`-byte chunks (at
    /// least 4096): each `w` record's data counts as the SHA-256 of its pieces, cut at image
    /// offsets that are multiples of the chunk size, so a backup whose reads hashed its
    /// chunks (`Image::start_reads` with a chunk size) hashes no byte twice. Data is added
    /// with [`Sha256::update_data`], by `PendingReads::write_to` (the image's bytes) and by
    /// [`Image::write_from`] (the bytes written); everything else as it is.
    pub fn chunked(chunk_size: u32) -> Self {
        Sha256 { inner: job_host::Sha256::chunked(chunk_size, false) }
    }

    /// [`Sha256::chunked`], keeping the digest of every whole chunk added as data for
    /// [`Sha256::take_chunk_sums`]: a restore learns the digests of the chunks it wrote
    /// (`Image::write_from`) without reading them back.
    pub fn chunked_keeping_sums(chunk_size: u32) -> Self {
        Sha256 { inner: job_host::Sha256::chunked(chunk_size, true) }
    }

    /// The digests of the whole chunks added as data since the last call, as (image
    /// offset, SHA-256), in the order added. The host keeps at most 16384 (`quota-exceeded`
    /// if more were dropped): take them after each `write_from`.
    pub fn take_chunk_sums(&self) -> Result<Vec<(u64, [u8; 32])>> {
        let sums = lift(self.inner.take_chunk_sums())?;
        sums.into_iter()
            .map(|s| match <[u8; 32]>::try_from(s.sha256) {
                Ok(d) => Ok((s.offset, d)),
                Err(d) => Err(Error::Io(format!("a chunk digest of {} bytes", d.len()))),
            })
            .collect()
    }

    pub fn update(&self, data: &[u8]) {
        self.inner.update(data);
    }

    /// Add `data`, the image's bytes at `offset`: for a [`Sha256::chunked`] hasher, a `w`
    /// record's data (or the next part of it); for a plain one, as [`Sha256::update`].
    pub fn update_data(&self, offset: u64, data: &[u8]) {
        self.inner.update_data(offset, data);
    }

    /// Add the rest of `file`, read by the host (the bytes never enter the job); returns how
    /// many bytes were added.
    pub fn update_from(&self, file: &InputFile) -> Result<u64> {
        let mut total = 0u64;
        loop {
            // The host adds at most 64 MiB a call, and 0 at the end.
            match lift(self.inner.update_from(file.stream()))? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    /// The digest of everything added so far; the hasher starts over.
    pub fn finish(&self) -> [u8; 32] {
        let digest = self.inner.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(&digest[..32.min(digest.len())]);
        out
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

impl io::Write for Sha256 {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The SHA-256 of each `chunk_size`-byte piece of `data` (the last may be shorter), computed
/// by the host.
pub fn sha256_chunks(data: &[u8], chunk_size: u32) -> Vec<[u8; 32]> {
    job_host::sha256_chunks(data, chunk_size)
        .chunks_exact(32)
        .map(|c| {
            let mut d = [0u8; 32];
            d.copy_from_slice(c);
            d
        })
        .collect()
}

/// Options of [`Pool::create_with`]; `Default` gives librbd's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// log2 of the object size (12..=25); `None` for 22 (4 MiB).
    pub order: Option<u8>,
    /// Python's `old_format`. Format 1 is gone from current librbd: with this set, features and
    /// striping must be left at 0 and the image gets the cluster's defaults.
    pub old_format: bool,
    /// Feature bits; 0 for the cluster default.
    pub features: u64,
    /// 0 for the object size.
    pub stripe_unit: u64,
    /// 0 for 1.
    pub stripe_count: u64,
}

/// Options of [`Pool::clone_image_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloneOptions {
    /// Feature bits of the child; 0 for the default. If set, must include layering (1).
    pub features: u64,
    /// log2 of the child's object size; `None` for the parent's.
    pub order: Option<u8>,
}

/// A granted pool (a `rados.Ioctx`). Dropping it closes it.
pub struct Pool {
    inner: wit::Pool,
}

/// Open a pool the operator granted (the guest's `cluster.open_ioctx(name)`); any other
/// answers [`Error::NotFound`].
pub fn open_pool(name: &str) -> Result<Pool> {
    Ok(Pool { inner: lift(wit::open_pool(name))? })
}

impl Pool {
    pub fn name(&self) -> String {
        self.inner.name()
    }

    /// `RBD.create(ioctx, name, size)` with default options.
    pub fn create(&self, name: &str, size: u64) -> Result<()> {
        self.create_with(name, size, &CreateOptions::default())
    }

    /// `RBD.create` with explicit options.
    pub fn create_with(&self, name: &str, size: u64, o: &CreateOptions) -> Result<()> {
        lift(self.inner.create(
            name,
            size,
            types::CreateOptions {
                order: o.order,
                old_format: o.old_format,
                features: o.features,
                stripe_unit: o.stripe_unit,
                stripe_count: o.stripe_count,
            },
        ))
    }

    /// `RBD.clone`: a copy-on-write child `child` in `dest` of the protected snapshot
    /// `parent@snap` of this pool.
    pub fn clone_image(&self, parent: &str, snap: &str, dest: &Pool, child: &str) -> Result<()> {
        self.clone_image_with(parent, snap, dest, child, &CloneOptions::default())
    }

    /// `RBD.clone` with explicit options.
    pub fn clone_image_with(
        &self,
        parent: &str,
        snap: &str,
        dest: &Pool,
        child: &str,
        o: &CloneOptions,
    ) -> Result<()> {
        lift(self.inner.clone(
            parent,
            snap,
            &dest.inner,
            child,
            types::CloneOptions { features: o.features, order: o.order },
        ))
    }

    /// `RBD.list`: the images this job may see, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        lift(self.inner.list())
    }

    /// `RBD.remove`.
    pub fn remove(&self, name: &str) -> Result<()> {
        lift(self.inner.remove(name))
    }

    /// `RBD.rename`.
    pub fn rename(&self, src: &str, dest: &str) -> Result<()> {
        lift(self.inner.rename(src, dest))
    }

    /// `rbd.Image(ioctx, name)`: open for reading and writing.
    pub fn open(&self, name: &str) -> Result<Image> {
        self.open_with(name, None, false)
    }

    /// `rbd.Image(ioctx, name, read_only=True)`.
    pub fn open_read_only(&self, name: &str) -> Result<Image> {
        self.open_with(name, None, true)
    }

    /// `rbd.Image(ioctx, name, snapshot)`: open at a snapshot (read-only).
    pub fn open_at_snapshot(&self, name: &str, snapshot: &str) -> Result<Image> {
        self.open_with(name, Some(snapshot), true)
    }

    /// `rbd.Image(ioctx, name, snapshot, read_only)`.
    pub fn open_with(&self, name: &str, snapshot: Option<&str>, read_only: bool) -> Result<Image> {
        let inner = lift(self.inner.open(
            name,
            &types::OpenOptions { snapshot: snapshot.map(str::to_owned), read_only },
        ))?;
        Ok(Image { inner })
    }
}

/// Lock holders of an image (`Image.list_lockers()`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockInfo {
    /// The shared lock's tag; "" for an exclusive lock or none.
    pub tag: String,
    pub exclusive: bool,
    pub lockers: Vec<Locker>,
}

/// The snapshot a clone was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentInfo {
    pub pool: String,
    pub image: String,
    pub snap: String,
}

/// An open image (`rbd.Image`). Dropping it closes it.
pub struct Image {
    inner: wit::Image,
}

impl Image {
    pub fn name(&self) -> String {
        self.inner.name()
    }
    /// Size in bytes (of the selected snapshot, if one is set).
    pub fn size(&self) -> Result<u64> {
        lift(self.inner.size())
    }
    pub fn stat(&self) -> Result<ImageStat> {
        lift(self.inner.stat())
    }
    pub fn features(&self) -> Result<u64> {
        lift(self.inner.features())
    }
    pub fn old_format(&self) -> Result<bool> {
        lift(self.inner.old_format())
    }
    pub fn stripe_unit(&self) -> Result<u64> {
        lift(self.inner.stripe_unit())
    }
    pub fn stripe_count(&self) -> Result<u64> {
        lift(self.inner.stripe_count())
    }

    /// `Image.read(offset, length)`: cut at the end of the image.
    pub fn read(&self, offset: u64, length: u64) -> Result<Vec<u8>> {
        lift(self.inner.read(offset, length))
    }

    /// Read several ranges with one call; the host keeps several reads in flight.
    pub fn read_ranges(&self, ranges: &[Range]) -> Result<Vec<Vec<u8>>> {
        lift(self.inner.read_ranges(ranges))
    }

    /// Start reading `ranges` and return at once; [`PendingReads::wait`] hands the data
    /// over. Start the next batch before writing out the last, and reading overlaps the
    /// job's own work. With `chunk_size`, the host also hashes each range in pieces of that
    /// size as it reads.
    pub fn start_reads(&self, ranges: &[Range], chunk_size: Option<u32>) -> Result<PendingReads> {
        lift(self.inner.start_reads(ranges, chunk_size)).map(|inner| PendingReads { inner })
    }

    /// Several non-overlapping writes at once (the host keeps several in flight); returns
    /// the bytes written in all.
    pub fn write_ranges(&self, writes: Vec<(u64, Vec<u8>)>) -> Result<u64> {
        let ops: Vec<types::WriteOp> = writes.into_iter().map(|(offset, data)| types::WriteOp { offset, data }).collect();
        lift(self.inner.write_ranges(&ops))
    }

    /// [`Image::write_ranges`] with the bytes read from `file` by the host, in order (they
    /// never enter the job): a restore's data plane. With `hash`, every byte read from the
    /// file (the skipped ones too) is added to it. Returns the bytes written.
    pub fn write_from(&self, file: &InputFile, writes: &[StreamWrite], hash: Option<&Sha256>) -> Result<u64> {
        lift(self.inner.write_from(file.stream(), writes, hash.map(|h| &h.inner)))
    }

    /// `Image.write(data, offset)`: returns the bytes written. Past the end of the image the
    /// part that fits is written and the answer is [`Error::IncompleteWrite`].
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<u64> {
        lift(self.inner.write(offset, data))
    }

    /// `Image.discard(offset, length)`: whole objects read as zeroes afterwards; of a partial
    /// object only the part aligned inward to 64 KiB is zeroed (librbd's granularity).
    pub fn discard(&self, offset: u64, length: u64) -> Result<()> {
        lift(self.inner.discard(offset, length))
    }
    pub fn flush(&self) -> Result<()> {
        lift(self.inner.flush())
    }
    pub fn invalidate_cache(&self) -> Result<()> {
        lift(self.inner.invalidate_cache())
    }
    pub fn resize(&self, size: u64) -> Result<()> {
        lift(self.inner.resize(size))
    }

    pub fn create_snap(&self, name: &str) -> Result<()> {
        lift(self.inner.create_snap(name))
    }
    pub fn remove_snap(&self, name: &str) -> Result<()> {
        lift(self.inner.remove_snap(name))
    }
    pub fn rollback_to_snap(&self, name: &str) -> Result<()> {
        lift(self.inner.rollback_to_snap(name))
    }
    pub fn protect_snap(&self, name: &str) -> Result<()> {
        lift(self.inner.protect_snap(name))
    }
    pub fn unprotect_snap(&self, name: &str) -> Result<()> {
        lift(self.inner.unprotect_snap(name))
    }
    pub fn is_protected_snap(&self, name: &str) -> Result<bool> {
        lift(self.inner.is_protected_snap(name))
    }
    /// `Image.list_snaps()`, oldest first.
    pub fn list_snaps(&self) -> Result<Vec<SnapInfo>> {
        lift(self.inner.list_snaps())
    }
    /// Read from a snapshot (writes then fail with [`Error::ReadOnly`]), or the head with `None`.
    pub fn set_snap(&self, name: Option<&str>) -> Result<()> {
        lift(self.inner.set_snap(name))
    }

    /// `Image.diff_iterate(offset, length, from_snapshot, cb)` as an iterator, with the Python
    /// defaults (`include_parent`, exact extents).
    pub fn diff_iterate(&self, offset: u64, length: u64, from_snapshot: Option<&str>) -> Result<DiffIter> {
        self.diff_iterate_with(offset, length, from_snapshot, true, false)
    }

    /// `diff_iterate` with every knob.
    pub fn diff_iterate_with(
        &self,
        offset: u64,
        length: u64,
        from_snapshot: Option<&str>,
        include_parent: bool,
        whole_object: bool,
    ) -> Result<DiffIter> {
        let inner = lift(self.inner.diff_iterate(offset, length, from_snapshot, include_parent, whole_object))?;
        Ok(DiffIter { inner: Some(inner), batch: Vec::new().into_iter() })
    }

    /// The clones of the selected snapshot.
    pub fn list_children(&self) -> Result<Vec<Child>> {
        lift(self.inner.list_children())
    }
    /// The snapshot this clone was made from; `None` for an image that is no clone.
    pub fn parent_info(&self) -> Result<Option<ParentInfo>> {
        Ok(lift(self.inner.parent_info())?.map(|(pool, image, snap)| ParentInfo { pool, image, snap }))
    }
    pub fn flatten(&self) -> Result<()> {
        lift(self.inner.flatten())
    }
    /// Copy the data (of the selected snapshot, if set) into a new image `name` in `dest`.
    pub fn copy(&self, dest: &Pool, name: &str) -> Result<()> {
        lift(self.inner.copy(&dest.inner, name))
    }

    pub fn list_lockers(&self) -> Result<LockInfo> {
        let info = lift(self.inner.list_lockers())?;
        Ok(LockInfo { tag: info.tag, exclusive: info.exclusive, lockers: info.lockers })
    }
    /// `Image.watchers_list()`: the clients that have the image open for writing. A lock
    /// holder missing here is gone (on Ceph, once its watch timed out: 30 s).
    pub fn list_watchers(&self) -> Result<Vec<Watcher>> {
        lift(self.inner.list_watchers())
    }
    pub fn lock_exclusive(&self, cookie: &str) -> Result<()> {
        lift(self.inner.lock_exclusive(cookie))
    }
    pub fn lock_shared(&self, cookie: &str, tag: &str) -> Result<()> {
        lift(self.inner.lock_shared(cookie, tag))
    }
    pub fn unlock(&self, cookie: &str) -> Result<()> {
        lift(self.inner.unlock(cookie))
    }
    pub fn break_lock(&self, client: &str, cookie: &str) -> Result<()> {
        lift(self.inner.break_lock(client, cookie))
    }
    /// The client identity this job's locks are held under.
    pub fn lock_client(&self) -> String {
        self.inner.lock_client()
    }

    /// A `Read + Write + Seek` view of the image, starting at offset 0.
    pub fn cursor(&self) -> ImageCursor<'_> {
        ImageCursor { image: self, pos: 0 }
    }
}

/// The extents of a diff, pulled from the host a batch at a time.
pub struct DiffIter {
    inner: Option<wit::DiffIterator>,
    batch: std::vec::IntoIter<Extent>,
}

impl Iterator for DiffIter {
    type Item = Result<Extent>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(extent) = self.batch.next() {
                return Some(Ok(extent));
            }
            let inner = self.inner.as_ref()?;
            match inner.next_batch() {
                Ok(Some(batch)) => self.batch = batch.into_iter(),
                Ok(None) => {
                    self.inner = None;
                    return None;
                }
                Err(e) => {
                    self.inner = None;
                    return Some(Err(e.into()));
                }
            }
        }
    }
}

impl DiffIter {
    /// The next whole batch of extents, for a job that wants to read them with one
    /// [`Image::read_ranges`] call.
    pub fn next_batch(&mut self) -> Result<Option<Vec<Extent>>> {
        let rest: Vec<Extent> = self.batch.by_ref().collect();
        if !rest.is_empty() {
            return Ok(Some(rest));
        }
        let Some(inner) = &self.inner else { return Ok(None) };
        match lift(inner.next_batch()) {
            Ok(None) => {
                self.inner = None;
                Ok(None)
            }
            other => other,
        }
    }
}

/// A `Read + Write + Seek` cursor over an [`Image`]. Reads stop at the end of the image;
/// writes past it fail.
pub struct ImageCursor<'a> {
    image: &'a Image,
    pos: u64,
}

impl io::Read for ImageCursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.image.size()?;
        if self.pos >= size || buf.is_empty() {
            return Ok(0);
        }
        let data = self.image.read(self.pos, buf.len() as u64)?;
        buf[..data.len()].copy_from_slice(&data);
        self.pos += data.len() as u64;
        Ok(data.len())
    }
}

impl io::Write for ImageCursor<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.image.write(self.pos, buf)?;
        self.pos += n;
        Ok(n as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(self.image.flush()?)
    }
}

impl io::Seek for ImageCursor<'_> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "seek to a negative or overflowing offset");
        let new = match pos {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            io::SeekFrom::End(d) => self.image.size()?.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(invalid)?;
        Ok(self.pos)
    }
}

#[doc(hidden)]
pub fn __run<E: fmt::Display>(args: Vec<String>, f: fn(Vec<String>) -> std::result::Result<(), E>) -> std::result::Result<(), String> {
    f(args).map_err(|e| e.to_string())
}

/// Declare the job's entry point: a `fn(Vec<String>) -> Result<(), E>` where `E: Display`
/// (this crate's [`Error`], `Box<dyn std::error::Error>`, `String`, ...). An `Err` ends the
/// job with a non-zero status and the error's message.
#[macro_export]
macro_rules! job {
    ($run:path) => {
        struct __RbdWasmJob;
        impl $crate::bindings::exports::ceph::rbd::job::Guest for __RbdWasmJob {
            fn run(args: ::std::vec::Vec<::std::string::String>) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__run(args, $run)
            }
        }
        $crate::bindings::export!(__RbdWasmJob with_types_in $crate::bindings);
    };
}
