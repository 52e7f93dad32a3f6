//! The on-disk layout of the embedded store, and the three primitives every change is built
//! from.
//!
//! * A metadata file is replaced atomically ([`write_atomic`]: write a temporary file, fsync
//!   it, rename it over the old one, fsync the directory), so a reader or a restarted
//!   process sees the old or the new version, never a torn one.
//! * Cross-process exclusion is `flock(2)` on small lock files ([`FileLock`]). The kernel
//!   drops a dead process's locks, the way Ceph expires a dead client's watch.
//! * Leftovers of an interrupted change are recognisable by name ([`is_temp_name`]) or by
//!   not being referenced, and are collected by whoever next holds the matching lock.
//!
//! The layout (see `docs/embedded-store.md`):
//!
//! ```text
//! ROOT/store.json, store.lock, tmp/
//! ROOT/pools/<pool>/directory.json, pool.lock
//! ROOT/pools/<pool>/images/<id>/header.json, lock, watch, objects/<objno>.<gen>
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The version of the layout this code writes and reads.
pub(crate) const STORE_FORMAT: u32 = 1;

/// The name of the pool every new store starts with.
pub(crate) const DEFAULT_POOL: &str = "rbd";

/// `ROOT/store.json`: the layout version and the next client number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoreMeta {
    pub format: u32,
    pub next_client: u64,
}

/// The store root and the paths below it. Holding one is the only way to name a path.
#[derive(Debug, Clone)]
pub(crate) struct Root(PathBuf);

impl Root {
    pub fn new(path: &Path) -> Self {
        Root(path.to_path_buf())
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn meta(&self) -> PathBuf {
        self.0.join("store.json")
    }
    pub fn lock(&self) -> PathBuf {
        self.0.join("store.lock")
    }
    /// Where a new pool is assembled before it is renamed into `pools/`.
    pub fn tmp(&self) -> PathBuf {
        self.0.join("tmp")
    }
    pub fn pools(&self) -> PathBuf {
        self.0.join("pools")
    }
    /// Blocklisted clients (`blocklist`).
    pub fn blocklist(&self) -> PathBuf {
        self.0.join("blocklist")
    }
    /// The directory of a pool; the name must have passed the pool-name rule.
    pub fn pool(&self, name: &str) -> PoolDir {
        PoolDir(self.pools().join(name))
    }
}

/// `ROOT/pools/<pool>`.
#[derive(Debug, Clone)]
pub(crate) struct PoolDir(pub PathBuf);

impl PoolDir {
    pub fn directory(&self) -> PathBuf {
        self.0.join("directory.json")
    }
    pub fn lock(&self) -> PathBuf {
        self.0.join("pool.lock")
    }
    pub fn images(&self) -> PathBuf {
        self.0.join("images")
    }
    /// The pool's snapshot sequence: the last snapshot id handed out (`pool::next_snap_id`).
    pub fn snap_seq(&self) -> PathBuf {
        self.0.join("snap_seq")
    }
    pub fn image(&self, id: &str) -> ImageDir {
        ImageDir(self.images().join(id))
    }
}

/// `ROOT/pools/<pool>/images/<id>`.
#[derive(Debug, Clone)]
pub(crate) struct ImageDir(pub PathBuf);

impl ImageDir {
    pub fn header(&self) -> PathBuf {
        self.0.join("header.json")
    }
    /// Metadata changes lock it exclusively; data writes share it.
    pub fn lock(&self) -> PathBuf {
        self.0.join("lock")
    }
    /// Every open image shares it; remove needs it exclusively.
    pub fn watch(&self) -> PathBuf {
        self.0.join("watch")
    }
    pub fn objects(&self) -> PathBuf {
        self.0.join("objects")
    }
    /// One file per writable open, locked while it lives (`watchers`).
    pub fn watchers(&self) -> PathBuf {
        self.0.join("watchers")
    }
}

/// Whether a directory entry is a temporary file left by [`write_atomic`].
pub(crate) fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp.")
}

/// Replace `path` with `bytes` atomically. With `sync_dir`, the rename is durable when this
/// returns; without it, it is atomic but becomes durable at the next directory fsync (a
/// kill still sees old or new; only a power loss can roll it back). Returns the new file,
/// whose identity (device, inode) stamps this version.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], sync_dir: bool) -> Result<File> {
    let dir = parent_dir(path)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{:016x}", rand::random::<u64>()));
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all()).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    if sync_dir {
        sync_dir_of(path)?;
    }
    Ok(file)
}

/// fsync the directory holding `path`, making a rename or create in it durable.
pub(crate) fn sync_dir_of(path: &Path) -> Result<()> {
    sync_dir(parent_dir(path)?)
}

/// fsync a directory.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn parent_dir(path: &Path) -> Result<&Path> {
    path.parent().ok_or_else(|| Error::Io(format!("{} has no parent directory", path.display())))
}

/// Read and parse a JSON file; `Ok(None)` if it does not exist. Also returns the open file,
/// whose identity stamps the version read.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<(T, File)>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Io(format!("corrupt {}: {e}", path.display())))?;
    Ok(Some((value, file)))
}

/// Serialise a value for [`write_atomic`].
pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Io(format!("cannot encode metadata: {e}")))
}

/// Create an empty file (for lock and watch files) and nothing else.
pub(crate) fn create_empty(path: &Path) -> Result<()> {
    OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
    Ok(())
}

/// An `flock(2)` held on a lock file; dropping it (closing the file) releases it.
#[derive(Debug)]
pub(crate) struct FileLock {
    file: File,
}

impl FileLock {
    /// Open an existing lock file; a missing one (its image or pool is gone) is `NotFound`.
    pub fn open(path: &Path) -> Result<File> {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(Error::NotFound(format!("{} is gone", path.display())))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Block until the lock is held exclusively.
    pub fn exclusive(path: &Path) -> Result<FileLock> {
        let file = Self::open(path)?;
        file.lock()?;
        Ok(FileLock { file })
    }

    /// Take the lock exclusively if nobody holds it; `Ok(None)` if someone does.
    pub fn try_exclusive(path: &Path) -> Result<Option<FileLock>> {
        let file = Self::open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    /// `try_exclusive`, tried again for up to `patience` while someone holds the lock.
    ///
    /// Why wait at all: an `flock` belongs to an open file description, and a child process
    /// forked by any thread of this process shares every descriptor open at the fork until its
    /// `exec` closes them. A handle closed just before (a job that closed its image, then the
    /// caller removes it) can thus look open for the few milliseconds another thread's
    /// `Command::spawn` takes.
    pub fn try_exclusive_within(path: &Path, patience: std::time::Duration) -> Result<Option<FileLock>> {
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(2);
        loop {
            if let Some(held) = Self::try_exclusive(path)? {
                return Ok(Some(held));
            }
            if started.elapsed() >= patience {
                return Ok(None);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(100));
        }
    }

    /// Lock an already open file (a pooled lock file descriptor).
    pub fn from_file(file: File, exclusive: bool) -> Result<FileLock> {
        if exclusive {
            file.lock()?;
        } else {
            file.lock_shared()?;
        }
        Ok(FileLock { file })
    }

    /// Release the lock and hand back the file for reuse.
    pub fn release(self) -> Result<File> {
        self.file.unlock()?;
        Ok(self.file)
    }
}

/// The store-wide lock (store.json, pool creation, `tmp/`), creating the lock file if this
/// is a new store.
pub(crate) fn lock_store(root: &Root) -> Result<FileLock> {
    create_empty(&root.lock())?;
    FileLock::exclusive(&root.lock())
}

/// Remove every entry of a directory that `doomed` picks, ignoring entries that vanish
/// meanwhile; failures are logged, not fatal (the next collection retries).
pub(crate) fn collect(dir: &Path, mut doomed: impl FnMut(&str) -> bool) {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list for garbage collection");
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !doomed(&name) {
            continue;
        }
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        match removed {
            Ok(()) => tracing::debug!(path = %path.display(), "collected leftover"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot collect leftover"),
        }
    }
}

/// Open the store at `root`, creating it (with the default pool) if it is new, and take
/// the next client number. Leftovers in `tmp/` are collected on the way, under the store
/// lock that every user of `tmp/` holds.
pub(crate) fn open_store(root: &Root) -> Result<u64> {
    fs::create_dir_all(&root.0)?;
    let _lock = lock_store(root)?;
    let meta = match read_json::<StoreMeta>(&root.meta())? {
        Some((meta, _)) => {
            if meta.format != STORE_FORMAT {
                return Err(Error::NotSupported(format!(
                    "store format {} (this build reads {STORE_FORMAT})",
                    meta.format
                )));
            }
            meta
        }
        None => {
            fs::create_dir_all(root.pools())?;
            if !root.pool(DEFAULT_POOL).directory().exists() {
                make_pool(root, DEFAULT_POOL)?;
            }
            StoreMeta { format: STORE_FORMAT, next_client: 1 }
        }
    };
    fs::create_dir_all(root.tmp())?;
    collect(&root.tmp(), |_| true);
    let client = meta.next_client;
    let next = StoreMeta { next_client: client.saturating_add(1), ..meta };
    write_atomic(&root.meta(), &to_json(&next)?, true)?;
    Ok(client)
}

/// Create a pool: assemble it in `tmp/`, then rename it into `pools/` (the commit point).
/// The caller holds the store lock and has checked the name.
pub(crate) fn make_pool(root: &Root, name: &str) -> Result<()> {
    fs::create_dir_all(root.tmp())?;
    let staging = PoolDir(root.tmp().join(format!("pool.{:016x}", rand::random::<u64>())));
    let built = (|| {
        fs::create_dir(&staging.0)?;
        fs::create_dir(staging.images())?;
        create_empty(&staging.lock())?;
        write_atomic(&staging.directory(), b"{\"images\":{}}", false)?;
        sync_dir(&staging.0)
    })();
    let target = root.pool(name);
    let committed = built.and_then(|()| match fs::rename(&staging.0, &target.0) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind(), io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists) => {
            Err(Error::Exists(format!("pool {name:?}")))
        }
        Err(e) => Err(e.into()),
    });
    if let Err(e) = committed {
        let _ = fs::remove_dir_all(&staging.0);
        return Err(e);
    }
    sync_dir(&root.pools())
}
