//! The storage side of rbd-wasm: one trait over RBD pools and images.
//!
//! This crate knows nothing of WebAssembly. A [`Backend`] is one client connection to a
//! store of pools (a Ceph cluster through librbd, or the [`embedded`] store in a local
//! directory); an [`Image`] is one open image. The semantics are librbd's, as its Python
//! binding exposes them: the same call with the same mistake answers the same [`Error`]
//! case on every backend, which the conformance suite checks.
//!
//! Every method is blocking. The wasm host runs them on tokio's blocking pool; a plain Rust
//! user can call them directly.

pub mod embedded;
mod error;
pub mod lease;
pub mod librbd;

pub use error::{Error, Result};
pub use lease::Leases;

/// Feature bits of RBD images (librbd's `RBD_FEATURE_*`).
pub mod features {
    pub const LAYERING: u64 = 1;
    pub const STRIPINGV2: u64 = 2;
    pub const EXCLUSIVE_LOCK: u64 = 4;
    pub const OBJECT_MAP: u64 = 8;
    pub const FAST_DIFF: u64 = 16;
    pub const DEEP_FLATTEN: u64 = 32;
    pub const JOURNALING: u64 = 64;
    pub const DATA_POOL: u64 = 128;
    /// What a new image gets when none are asked for, on Ceph Pacific (61).
    pub const DEFAULT: u64 = LAYERING | EXCLUSIVE_LOCK | OBJECT_MAP | FAST_DIFF | DEEP_FLATTEN;
}

/// The default object order (4 MiB objects).
pub const DEFAULT_ORDER: u8 = 22;

/// librbd's version triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub extra: u32,
}

/// Options of `RBD.create`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// log2 of the object size; `None` for [`DEFAULT_ORDER`].
    pub order: Option<u8>,
    /// Python's `old_format`: with it, features and striping must be 0 and the image gets
    /// the cluster's default format and features.
    pub old_format: bool,
    /// Feature bits; 0 for [`features::DEFAULT`].
    pub features: u64,
    /// 0 for the object size.
    pub stripe_unit: u64,
    /// 0 for 1.
    pub stripe_count: u64,
}

/// Options of `RBD.clone`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloneOptions {
    /// Feature bits of the child; 0 for the default. If set, must include layering.
    pub features: u64,
    /// log2 of the child's object size; `None` for the parent's.
    pub order: Option<u8>,
}

/// `Image.stat()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageStat {
    pub size: u64,
    pub obj_size: u64,
    pub num_objs: u64,
    pub order: u8,
    pub block_name_prefix: String,
    /// Deprecated: always -1.
    pub parent_pool: i64,
    /// Deprecated: always "".
    pub parent_name: String,
}

/// One snapshot of `Image.list_snaps()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapInfo {
    pub id: u64,
    pub size: u64,
    pub name: String,
    /// When it was taken, in seconds since the Unix epoch.
    pub timestamp: u64,
}

/// A changed extent of a diff: `[offset, offset + length)` holds data (`exists`) or zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub exists: bool,
}

/// A clone of a snapshot (`Image.list_children()`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Child {
    pub pool: String,
    pub image: String,
}

/// The snapshot a clone was made from (`Image.parent_info()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentInfo {
    pub pool: String,
    pub image: String,
    pub snap: String,
}

/// A holder of an advisory lock.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Locker {
    pub client: String,
    pub cookie: String,
    pub address: String,
}

/// A client watching an image (`Image.watchers_list()`): every writable open of an image
/// watches it, for as long as its client lives. Ceph drops the watch of a client that died
/// once its watch times out (`osd_client_watch_timeout`, 30 s); the embedded store at once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watcher {
    /// The client's entity name, as in a [`Locker`]: `client.<id>`.
    pub client: String,
    pub address: String,
    pub cookie: u64,
}

/// `Image.list_lockers()`; no lockers and an empty tag when the image is not locked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockInfo {
    pub tag: String,
    pub exclusive: bool,
    pub lockers: Vec<Locker>,
}

/// One client connection to a store of pools. Cheap to share: every method takes `&self`.
///
/// Pools are named by string; a name that is no pool answers [`Error::NotFound`].
pub trait Backend: Send + Sync + 'static {
    /// `RBD.version()`.
    fn version(&self) -> Version;

    /// The client identity under which this connection takes locks (`client.4151`).
    fn client_name(&self) -> String;

    /// The local directory the store keeps its data in, if it has one (the embedded store):
    /// a host must not let a job's output directory reach it.
    fn local_dir(&self) -> Option<std::path::PathBuf> {
        None
    }

    /// The pools of the store, sorted.
    fn list_pools(&self) -> Result<Vec<String>>;

    /// Check that a pool exists (`Rados.open_ioctx`).
    fn open_pool(&self, pool: &str) -> Result<()>;

    /// `RBD.create`.
    fn create(&self, pool: &str, name: &str, size: u64, options: &CreateOptions) -> Result<()>;

    /// `RBD.clone`: a copy-on-write child of the protected snapshot `parent@snap`.
    fn clone_image(
        &self,
        parent_pool: &str,
        parent: &str,
        snap: &str,
        child_pool: &str,
        child: &str,
        options: &CloneOptions,
    ) -> Result<()>;

    /// `RBD.list`: the image names of a pool, sorted.
    fn list(&self, pool: &str) -> Result<Vec<String>>;

    /// `RBD.remove`.
    fn remove(&self, pool: &str, name: &str) -> Result<()>;

    /// `RBD.rename`.
    fn rename(&self, pool: &str, src: &str, dest: &str) -> Result<()>;

    /// `rbd.Image(ioctx, name, snapshot, read_only)`.
    fn open(
        &self,
        pool: &str,
        name: &str,
        snapshot: Option<&str>,
        read_only: bool,
    ) -> Result<Box<dyn Image>>;
}

/// What an asynchronous read hands back: the bytes, or what `read` would have failed with.
pub type ReadDone = Box<dyn FnOnce(Result<Vec<u8>>) + Send>;
/// What an asynchronous write hands back: what `write` would have answered.
pub type WriteDone = Box<dyn FnOnce(Result<u64>) + Send>;

/// Reads and writes that complete later, on the backend's own threads (librbd's AIO), so
/// that many can be in flight without a thread waiting for each reply. Starting one may
/// still wait (librbd refreshes the image first when its header changed, and a call that
/// has the image to itself goes first), so call these where a thread may block, never on
/// an async executor. `Ok(true)`: started, and `done` will be called exactly once, on a
/// backend thread (so it must be quick and must not call the backend). `Ok(false)`: not
/// started (a write whose handle does not own librbd's exclusive lock yet must look at the
/// lockers first: `Image::write` does); `done` was dropped uncalled. `Err`: not started
/// either. Closing the image waits for what is in flight.
pub trait AsyncIo: Send + Sync {
    /// `Image::read`, started.
    fn start_read(&self, offset: u64, length: u64, done: ReadDone) -> Result<bool>;
    /// `Image::write`, started; `data` is kept until the write is done.
    fn start_write(&self, offset: u64, data: Box<dyn AsRef<[u8]> + Send>, done: WriteDone) -> Result<bool>;
}

/// One open image. Dropping it closes it.
///
/// Methods take `&self` so that reads and writes from several threads can be in flight at
/// once; an implementation serialises what must not race (set_snap, resize, rollback).
pub trait Image: Send + Sync {
    fn size(&self) -> Result<u64>;
    fn stat(&self) -> Result<ImageStat>;
    fn features(&self) -> Result<u64>;
    fn old_format(&self) -> Result<bool>;
    fn stripe_unit(&self) -> Result<u64>;
    fn stripe_count(&self) -> Result<u64>;

    /// Read `[offset, offset + length)`, cut at the end of the image. A read that starts at
    /// or past the end answers `InvalidArgument`; a zero length answers an empty buffer.
    fn read(&self, offset: u64, length: u64) -> Result<Vec<u8>>;

    /// Write `data` at `offset`. Past the end, what fits is written and the answer is
    /// `IncompleteWrite`; starting at or past the end is `InvalidArgument`; read-only or at a
    /// snapshot is `ReadOnly`. Returns `data.len()`.
    fn write(&self, offset: u64, data: &[u8]) -> Result<u64>;

    /// Release the range (cut at the end of the image): whole objects read as zeroes after;
    /// of a partial object only the part aligned inward to 64 KiB (librbd's discard
    /// granularity) is zeroed.
    fn discard(&self, offset: u64, length: u64) -> Result<()>;
    fn flush(&self) -> Result<()>;
    fn invalidate_cache(&self) -> Result<()>;
    fn resize(&self, size: u64) -> Result<()>;

    fn create_snap(&self, name: &str) -> Result<()>;
    fn remove_snap(&self, name: &str) -> Result<()>;
    fn rollback_to_snap(&self, name: &str) -> Result<()>;
    fn protect_snap(&self, name: &str) -> Result<()>;
    fn unprotect_snap(&self, name: &str) -> Result<()>;
    fn is_protected_snap(&self, name: &str) -> Result<bool>;
    /// Oldest first.
    fn list_snaps(&self) -> Result<Vec<SnapInfo>>;
    /// Read from a snapshot, or from the head with `None`.
    fn set_snap(&self, name: Option<&str>) -> Result<()>;

    /// Call `each` with the extents in `[offset, offset + length)` that differ between
    /// `from_snap` (`None`: the beginning of time) and the selected snapshot or head, in
    /// increasing offset order. Applying them to the older state gives the newer one.
    fn diff_iterate(
        &self,
        offset: u64,
        length: u64,
        from_snap: Option<&str>,
        include_parent: bool,
        whole_object: bool,
        each: &mut dyn FnMut(Extent),
    ) -> Result<()>;

    /// The clones of the selected snapshot.
    fn list_children(&self) -> Result<Vec<Child>>;
    fn parent_info(&self) -> Result<Option<ParentInfo>>;
    fn flatten(&self) -> Result<()> {
        self.flatten_with(&mut |_, _| true)
    }
    /// `flatten`, asking `keep_going(done, total)` as it goes: `false` stops it with
    /// [`Error::cancelled`] and the image keeps its parent (what it copied up stays).
    fn flatten_with(&self, keep_going: &mut dyn FnMut(u64, u64) -> bool) -> Result<()>;
    /// Copy the selected snapshot's (or the head's) data into a new image.
    fn copy(&self, dest_pool: &str, dest_name: &str) -> Result<()> {
        self.copy_with(dest_pool, dest_name, &mut |_, _| true)
    }
    /// `copy`, asking `keep_going(done, total)` as it goes: `false` stops it with
    /// [`Error::cancelled`].
    fn copy_with(&self, dest_pool: &str, dest_name: &str, keep_going: &mut dyn FnMut(u64, u64) -> bool) -> Result<()>;

    fn list_lockers(&self) -> Result<LockInfo>;
    /// `Image.watchers_list()`, sorted.
    fn list_watchers(&self) -> Result<Vec<Watcher>>;
    /// Asynchronous reads and writes, where the backend has them (librbd); `None` means
    /// every call blocks its thread (the embedded store: a page-cache copy).
    fn aio(&self) -> Option<&dyn AsyncIo> {
        None
    }
    fn lock_exclusive(&self, cookie: &str) -> Result<()>;
    fn lock_shared(&self, cookie: &str, tag: &str) -> Result<()>;
    fn unlock(&self, cookie: &str) -> Result<()>;
    fn break_lock(&self, client: &str, cookie: &str) -> Result<()>;
}
