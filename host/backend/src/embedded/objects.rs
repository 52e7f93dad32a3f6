//! An image's object files: `objects/<objno>.<gen>`, sparse, read and written with
//! `pread`/`pwrite` through a small cache of open handles.
//!
//! An object file may be shorter than the object: the rest reads as zeroes. That is how
//! a truncated tail, a hole, or a fresh object costs nothing on disk. This module knows
//! nothing of headers; which file is current, and whether it may change in place, is the
//! header's business ([`super::header`]).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use super::overlap::Overlaps;
use super::store::{collect, is_temp_name, sync_dir};
use crate::Result;

/// How many object files an image keeps open.
const MAX_OPEN: usize = 256;
/// The unit in which copies look for zeroes to skip.
const CHUNK: usize = 64 * 1024;
static ZEROES: [u8; CHUNK] = [0; CHUNK];

/// The object files of one image.
#[derive(Debug)]
pub(crate) struct Objects {
    dir: PathBuf,
    open: Mutex<HashMap<(u64, u64), Arc<File>>>,
    /// Written since the last [`Objects::sync`].
    dirty: Mutex<HashSet<(u64, u64)>>,
    /// What each copied object file still shares with the version it was copied from;
    /// every change below reports its range there first.
    pub overlaps: Overlaps,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The file name of an object file.
pub(crate) fn file_name(objno: u64, gen: u64) -> String {
    format!("{objno:016x}.{gen}")
}

/// The `(objno, gen)` a file name stands for, if it is an object file's name or the name
/// of its overlap.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let name = name.strip_suffix(".overlap").unwrap_or(name);
    let (objno, gen) = name.split_once('.')?;
    if objno.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(objno, 16).ok()?, gen.parse().ok()?))
}

/// A zeroed buffer of `n` bytes, or `None` if it cannot be allocated (a read of a huge
/// range must fail, not abort the process).
pub(crate) fn zeroed(n: usize) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(n).ok()?;
    while buf.len() < n {
        buf.extend_from_slice(&ZEROES[..CHUNK.min(n - buf.len())]);
    }
    Some(buf)
}

/// Whether a buffer is all zeroes.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(CHUNK).all(|c| c == &ZEROES[..c.len()])
}

impl Objects {
    pub fn new(dir: PathBuf) -> Objects {
        Objects {
            overlaps: Overlaps::new(dir.clone()),
            dir,
            open: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
        }
    }

    fn path(&self, objno: u64, gen: u64) -> PathBuf {
        self.dir.join(file_name(objno, gen))
    }

    fn file(&self, objno: u64, gen: u64) -> Result<Arc<File>> {
        if let Some(f) = lock(&self.open).get(&(objno, gen)) {
            return Ok(f.clone());
        }
        let path = self.path(objno, gen);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Err(e) if matches!(e.kind(), ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem) => {
                File::open(&path)?
            }
            other => other?,
        };
        Ok(self.remember(objno, gen, file))
    }

    fn remember(&self, objno: u64, gen: u64, file: File) -> Arc<File> {
        let file = Arc::new(file);
        let mut open = lock(&self.open);
        if open.len() >= MAX_OPEN {
            open.clear();
        }
        open.insert((objno, gen), file.clone());
        file
    }

    fn mark_dirty(&self, objno: u64, gen: u64) {
        lock(&self.dirty).insert((objno, gen));
    }

    /// Read `buf.len()` bytes at `at` of an object; past the end of the file reads zeroes
    /// (the caller passes a zeroed buffer).
    pub fn read(&self, objno: u64, gen: u64, at: u64, buf: &mut [u8]) -> Result<()> {
        let file = self.file(objno, gen)?;
        let mut done = 0;
        while done < buf.len() {
            let pos = at.saturating_add(done as u64);
            match file.read_at(&mut buf[done..], pos) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The length of an object file: RADOS's object size (writes extend it, a zero that
    /// reaches the end and a truncate set it).
    pub fn len(&self, objno: u64, gen: u64) -> Result<u64> {
        Ok(self.file(objno, gen)?.metadata()?.len())
    }

    /// Write `data` at `at` of an object.
    pub fn write(&self, objno: u64, gen: u64, at: u64, data: &[u8]) -> Result<()> {
        let file = self.file(objno, gen)?;
        self.overlaps.changing(objno, gen, at, at.saturating_add(data.len() as u64))?;
        file.write_all_at(data, at)?;
        self.mark_dirty(objno, gen);
        Ok(())
    }

    /// Write `data` at `at`, skipping all-zero chunks (the file is new, so they are holes).
    fn write_sparse(&self, file: &File, at: u64, data: &[u8]) -> io::Result<()> {
        let mut pos = at;
        for chunk in data.chunks(CHUNK) {
            if !is_zero(chunk) {
                file.write_all_at(chunk, pos)?;
            }
            pos = pos.saturating_add(chunk.len() as u64);
        }
        Ok(())
    }

    /// Create a new object file holding `data` at offset 0, sparse, and fsync it when
    /// `durable` (its content existed before and must survive a power loss once the header
    /// points at it).
    pub fn create(&self, objno: u64, gen: u64, data: &[u8], durable: bool) -> Result<()> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(self.path(objno, gen))?;
        self.write_sparse(&file, 0, data)?;
        if durable {
            file.sync_all()?;
        } else if !data.is_empty() {
            self.mark_dirty(objno, gen);
        }
        self.remember(objno, gen, file);
        Ok(())
    }

    /// Copy an object file to a new generation (copy-on-write), sparse and durable; its
    /// length. The caller records what the copy shares ([`Overlaps::copied`]).
    pub fn copy(&self, objno: u64, from: u64, to: u64) -> Result<u64> {
        let src = self.file(objno, from)?;
        let len = src.metadata()?.len();
        let dst = OpenOptions::new().read(true).write(true).create_new(true).open(self.path(objno, to))?;
        let mut buf = vec![0u8; CHUNK];
        let mut pos = 0u64;
        while pos < len {
            let n = usize::try_from(len - pos).map_or(CHUNK, |left| left.min(CHUNK));
            let chunk = &mut buf[..n];
            chunk.fill(0);
            self.read(objno, from, pos, chunk)?;
            self.write_sparse(&dst, pos, chunk)?;
            pos += n as u64;
        }
        dst.set_len(len)?;
        dst.sync_all()?;
        self.remember(objno, to, dst);
        Ok(len)
    }

    /// Set an object file's length (RADOS `truncate`: it may grow the object too).
    pub fn truncate(&self, objno: u64, gen: u64, at: u64) -> Result<()> {
        let file = self.file(objno, gen)?;
        let len = file.metadata()?.len();
        if len == at {
            return Ok(());
        }
        if at < len {
            self.overlaps.changing(objno, gen, at, u64::MAX)?;
        }
        file.set_len(at)?;
        self.mark_dirty(objno, gen);
        Ok(())
    }

    /// Zero `[start, end)` of an object: cut the file if the range reaches its end, else
    /// write zeroes (what the OSD does with a `zero` op).
    pub fn zero(&self, objno: u64, gen: u64, start: u64, end: u64) -> Result<()> {
        let file = self.file(objno, gen)?;
        let len = file.metadata()?.len();
        if start >= len || start >= end {
            return Ok(());
        }
        if end >= len {
            return self.truncate(objno, gen, start);
        }
        self.overlaps.changing(objno, gen, start, end)?;
        let mut pos = start;
        while pos < end {
            let n = usize::try_from(end - pos).map_or(CHUNK, |left| left.min(CHUNK));
            file.write_all_at(&ZEROES[..n], pos)?;
            pos += n as u64;
        }
        self.mark_dirty(objno, gen);
        Ok(())
    }

    /// Delete an object file that nothing references any more.
    pub fn remove(&self, objno: u64, gen: u64) {
        lock(&self.open).remove(&(objno, gen));
        lock(&self.dirty).remove(&(objno, gen));
        self.overlaps.remove(objno, gen);
        match fs::remove_file(self.path(objno, gen)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(objno, gen, error = %e, "cannot delete object file"),
        }
    }

    /// fsync what was written since the last call, and the directory (new files); then
    /// the overlaps of what was written are settled.
    pub fn sync(&self) -> Result<()> {
        let dirty: Vec<(u64, u64)> = lock(&self.dirty).drain().collect();
        for (objno, gen) in dirty {
            match self.file(objno, gen) {
                Ok(f) => f.sync_data()?,
                Err(crate::Error::Io(_)) if !self.path(objno, gen).exists() => {}
                Err(e) => return Err(e),
            }
        }
        sync_dir(&self.dir)?;
        self.overlaps.settle(true)
    }

    /// Forget open handles of files the header no longer references.
    pub fn retain(&self, referenced: &HashSet<(u64, u64)>) {
        lock(&self.open).retain(|k, _| referenced.contains(k));
    }

    /// Delete object files nothing references, and temporary files: leftovers of a change
    /// that was killed before its header was committed. The caller holds the image lock
    /// exclusively, so no change is in flight.
    pub fn collect_garbage(&self, referenced: &HashSet<(u64, u64)>) {
        collect(&self.dir, |name| {
            is_temp_name(name) || parse_name(name).is_some_and(|k| !referenced.contains(&k))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_file_names_round_trip() {
        assert_eq!(parse_name(&file_name(0x1234, 7)), Some((0x1234, 7)));
        assert_eq!(parse_name(&file_name(u64::MAX, u64::MAX)), Some((u64::MAX, u64::MAX)));
        assert_eq!(parse_name("header.json"), None);
        assert_eq!(parse_name(".x.tmp.1"), None);
        assert_eq!(parse_name(&super::super::overlap::file_name(3, 9)), Some((3, 9)));
    }
}
