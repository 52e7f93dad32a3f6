//! Watchers: who has an image open for writing, for as long as its process lives.
//!
//! librbd registers a watch on an image's header for every writable open; Ceph drops the
//! watch of a client that died once it times out. Jobs use this to tell a live lock holder
//! from a dead one (a lock's holder that no longer watches the image is gone). Here every
//! writable open makes `watchers/<client>.<cookie>` (the client, its address and the
//! cookie, as JSON) and holds an exclusive `flock` on it until it closes; the kernel drops
//! the `flock` when the process dies, however it dies. A lister that can take the lock of
//! a watcher file has found a dead watcher: it removes the file and does not list it.
//! The file is locked under a temporary name first and then renamed into place; listers
//! pass over temporary names (and remove those a dead process left, once a minute old), so
//! a lister never takes a live watcher for a dead one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::locks::Identity;
use super::store::ImageDir;
use crate::{Error, Result, Watcher};

/// What a watcher file holds.
#[derive(Serialize, Deserialize)]
struct Record {
    client: String,
    address: String,
    cookie: u64,
}

/// A writable open's watch: its file is removed when the image is closed.
pub(crate) struct Watch {
    path: PathBuf,
    _file: File,
    /// Its cookie: the handle's, as librbd's watch handle names an open image.
    pub cookie: u64,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a watcher file");
        }
    }
}

/// Register a watch of `dir`'s image by `me`.
pub(crate) fn register(dir: &ImageDir, me: &Identity) -> Result<Watch> {
    static NEXT_COOKIE: AtomicU64 = AtomicU64::new(1);
    let cookie = NEXT_COOKIE.fetch_add(1, Ordering::Relaxed);
    let watchers = dir.watchers();
    fs::create_dir_all(&watchers)?;
    let name = format!("{}.{cookie}", me.client);
    let (tmp, path) = (watchers.join(format!(".{name}.tmp.{}", std::process::id())), watchers.join(&name));
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
    file.lock()?;
    let record = Record { client: me.client.clone(), address: me.address.clone(), cookie };
    file.write_all(&serde_json::to_vec(&record).map_err(|e| Error::Io(format!("cannot encode a watcher: {e}")))?)?;
    fs::rename(&tmp, &path)?;
    Ok(Watch { path, _file: file, cookie })
}

/// A temporary file older than this is a registration its process died in.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(60);

/// The live watchers of `dir`'s image, sorted; the files of dead ones are removed. A
/// blocklisted client's watch is gone, as Ceph drops it.
pub(crate) fn list(dir: &ImageDir, blocklisted: impl Fn(&str) -> Result<bool>) -> Result<Vec<Watcher>> {
    let entries = match fs::read_dir(dir.watchers()) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut live = Vec::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            // A registration under way (not locked yet, maybe), or one whose process died.
            let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_TEMP));
            if old {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            // Closed (and removed) while listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        match file.try_lock() {
            Ok(()) => {
                // Nobody holds it: its process died. Gone, as Ceph drops a dead client's
                // watch. (A name is never used twice, so this removes no one else's.)
                let _ = fs::remove_file(&path);
            }
            Err(fs::TryLockError::WouldBlock) => {
                // Read through this descriptor: the file may be closed and removed meanwhile.
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)?;
                let record: Record = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Io(format!("a damaged watcher file {}: {e}", path.display())))?;
                if !blocklisted(&record.client)? {
                    live.push(Watcher { client: record.client, address: record.address, cookie: record.cookie });
                }
            }
            Err(fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
    live.sort();
    Ok(live)
}
