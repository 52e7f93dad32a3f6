//! [`Leases`] of the embedded store: files in its `leases/` directory, for the processes of
//! one machine that share the store.
//!
//! A lease is an `flock` on `NAME.lock`, held while this process keeps the file open: the
//! kernel drops it when the process dies, however it dies, so there is no expiry to wait
//! out (and the time to live is not needed; a process that is stopped, not dead, keeps its
//! lease). The holder writes its description into the file for `holders`. The state is
//! `NAME.state`, replaced (write, fsync, rename) under an `flock` on `NAME.swap`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::lease::Leases;
use crate::{Error, Result};

/// Leases in one directory.
pub struct FileLeases {
    dir: PathBuf,
    holder: String,
    /// The lock files of the leases this object holds, open (and so locked).
    held: Mutex<HashMap<String, File>>,
}

impl FileLeases {
    /// Leases in `dir` (created if missing), held as `holder`.
    pub fn open(dir: &Path, holder: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(FileLeases { dir: dir.to_owned(), holder: holder.to_owned(), held: Mutex::new(HashMap::new()) })
    }

    fn path(&self, name: &str, suffix: &str) -> Result<PathBuf> {
        let ok = !name.is_empty()
            && name.len() <= 200
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(Error::InvalidArgument(format!("lease name `{name}`: use letters, digits, `.`, `_` and `-`")));
        }
        Ok(self.dir.join(format!("{name}.{suffix}")))
    }

    fn open_file(&self, name: &str, suffix: &str) -> Result<File> {
        Ok(OpenOptions::new().read(true).write(true).create(true).truncate(false).open(self.path(name, suffix)?)?)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, File>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Leases for FileLeases {
    fn acquire(&self, name: &str, _ttl: Duration) -> Result<bool> {
        let mut held = self.held();
        if held.contains_key(name) {
            // Held already: not taken twice (renewing is `renew`).
            return Ok(false);
        }
        let mut file = self.open_file(name, "lock")?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        file.set_len(0)?;
        file.write_all(self.holder.as_bytes())?;
        held.insert(name.to_owned(), file);
        Ok(true)
    }

    fn renew(&self, name: &str, _ttl: Duration) -> Result<bool> {
        Ok(self.held().contains_key(name))
    }

    fn release(&self, name: &str) -> Result<()> {
        if let Some(file) = self.held().remove(name) {
            // Cleared first, so a lister never names a holder that is gone.
            file.set_len(0)?;
            file.unlock()?;
        }
        Ok(())
    }

    fn state(&self, name: &str) -> Result<Vec<u8>> {
        match std::fs::read(self.path(name, "state")?) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    fn swap_state(&self, name: &str, expected: &[u8], new: &[u8]) -> Result<bool> {
        let swap = self.open_file(name, "swap")?;
        swap.lock()?;
        if self.state(name)? != expected {
            return Ok(false);
        }
        let path = self.path(name, "state")?;
        let tmp = self.path(name, &format!("state.tmp{}", std::process::id()))?;
        let mut file = File::create(&tmp)?;
        file.write_all(new)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(true)
    }

    fn holders(&self, name: &str) -> Result<Vec<String>> {
        let file = self.open_file(name, "lock")?;
        match file.try_lock() {
            Ok(()) => {
                file.unlock()?;
                Ok(Vec::new())
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(self.path(name, "lock")?)?;
                Ok(vec![holder])
            }
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_state_only_by_swap() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (FileLeases::open(dir.path(), "a").unwrap(), FileLeases::open(dir.path(), "b").unwrap());
        let ttl = Duration::from_secs(5);
        assert!(a.acquire("job", ttl).unwrap());
        assert!(!a.acquire("job", ttl).unwrap(), "not taken twice");
        assert!(a.renew("job", ttl).unwrap());
        assert!(!b.acquire("job", ttl).unwrap());
        assert!(!b.renew("job", ttl).unwrap());
        assert_eq!(b.holders("job").unwrap(), vec!["a".to_string()]);
        a.release("job").unwrap();
        assert!(b.holders("job").unwrap().is_empty());
        assert!(b.acquire("job", ttl).unwrap());

        assert_eq!(a.state("job").unwrap(), b"");
        assert!(a.swap_state("job", b"", b"one").unwrap());
        assert!(!b.swap_state("job", b"", b"two").unwrap(), "a stale expectation loses");
        assert!(b.swap_state("job", b"one", b"two").unwrap());
        assert_eq!(a.state("job").unwrap(), b"two");
        assert!(a.acquire("../x", ttl).is_err());
    }
}
