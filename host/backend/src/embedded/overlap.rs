//! Which bytes of a copied object file are still those of the version it was copied from.
//!
//! librbd's exact diff (`diff_iterate` without `whole_object`) reports of an object that a
//! snapshot shares only what changed since: RADOS keeps, for each clone of an object, the
//! byte ranges it still shares with the next version (`clone_overlap`; every write, zero
//! and truncate removes its range), and librbd reports the rest (`calc_snap_set_diff`).
//! The embedded store keeps the same fact beside each copy-on-write object file,
//! `<objno>.<gen>.overlap`: the generation it was copied from and the ranges not changed
//! since. An object file without one shares nothing with the version before it, which is
//! also what an overlap that became empty means, so an empty overlap is deleted.
//!
//! Crash safety: a diff must never miss a change, so a stale overlap (one that still
//! claims bytes a write changed) must never be trusted, while a missing or unreadable one
//! only makes a diff report more. The first change of an object file after a flush marks
//! its overlap file `settled: false` and fsyncs it before the data changes; further changes
//! are kept in memory; a flush, a snapshot and the last close write the overlap settled. An
//! overlap found unsettled on disk (a writer in another process that has not flushed, or
//! one that crashed) is read as empty. So the cost is one small fsync per object between
//! settlements, none per write.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::Result;

/// Sorted, disjoint, non-empty half-open byte ranges.
pub(crate) type Ranges = Vec<(u64, u64)>;

/// `a` without the bytes of `[start, end)`.
pub(crate) fn cut(a: &Ranges, start: u64, end: u64) -> Ranges {
    let mut out = Ranges::with_capacity(a.len() + 1);
    for &(x, y) in a {
        if y <= start || x >= end {
            out.push((x, y));
            continue;
        }
        if x < start {
            out.push((x, start));
        }
        if y > end {
            out.push((end, y));
        }
    }
    out
}

/// The bytes in both `a` and `b`.
pub(crate) fn intersect(a: &Ranges, b: &Ranges) -> Ranges {
    let (mut i, mut j, mut out) = (0, 0, Ranges::new());
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if x < y {
            out.push((x, y));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// The bytes of `[start, end)` not in `a`.
pub(crate) fn complement_in(a: &Ranges, start: u64, end: u64) -> Ranges {
    let mut out = Ranges::new();
    let mut cur = start;
    for &(x, y) in a {
        if y <= cur {
            continue;
        }
        if x >= end {
            break;
        }
        if x > cur {
            out.push((cur, x));
        }
        cur = cur.max(y);
    }
    if cur < end {
        out.push((cur, end));
    }
    out
}

/// The bytes in `a` or in `b`.
pub(crate) fn union(a: &Ranges, b: &Ranges) -> Ranges {
    let mut all: Ranges = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut out: Ranges = Ranges::with_capacity(all.len());
    for (x, y) in all {
        match out.last_mut() {
            Some(last) if x <= last.1 => last.1 = last.1.max(y),
            _ => out.push((x, y)),
        }
    }
    out
}

/// An object file's overlap with the version it was copied from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Overlap {
    /// The generation of the same object it was copied from.
    pub origin: u64,
    /// Bytes still equal to the origin's (inside the origin's length).
    pub ranges: Ranges,
    /// Whether the file says the whole truth: false while changes since the last flush
    /// may be missing from it.
    settled: bool,
}

/// What this process knows of one object file's overlap.
#[derive(Debug)]
struct Known {
    overlap: Option<Overlap>,
    /// The file is marked unsettled, and `overlap` is newer than it.
    unflushed: bool,
}

/// The overlap files of one image's object directory, with what this process changed.
#[derive(Debug)]
pub(crate) struct Overlaps {
    dir: PathBuf,
    known: Mutex<HashMap<(u64, u64), Known>>,
}

/// How many object files' overlaps a process remembers before it forgets those that have none.
const MAX_KNOWN: usize = 1 << 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The file name of an object file's overlap.
pub(crate) fn file_name(objno: u64, gen: u64) -> String {
    format!("{}.overlap", super::objects::file_name(objno, gen))
}

impl Overlaps {
    pub fn new(dir: PathBuf) -> Overlaps {
        Overlaps { dir, known: Mutex::new(HashMap::new()) }
    }

    fn path(&self, objno: u64, gen: u64) -> PathBuf {
        self.dir.join(file_name(objno, gen))
    }

    /// The overlap as the file says; an unsettled or unreadable file counts as none.
    fn read_file(&self, objno: u64, gen: u64) -> Option<Overlap> {
        let bytes = match fs::read(self.path(objno, gen)) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(objno, gen, error = %e, "cannot read an overlap file; the object diffs whole");
                return None;
            }
        };
        serde_json::from_slice::<Overlap>(&bytes).ok().filter(|o| o.settled && !o.ranges.is_empty())
    }

    fn write_file(path: &Path, overlap: &Overlap, durable: bool) -> Result<()> {
        let bytes = serde_json::to_vec(overlap).map_err(|e| crate::Error::Io(e.to_string()))?;
        let mut file: File = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
        file.write_all(&bytes)?;
        if durable {
            file.sync_data()?;
        }
        Ok(())
    }

    fn remove_file(&self, objno: u64, gen: u64) {
        match fs::remove_file(self.path(objno, gen)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(objno, gen, error = %e, "cannot delete an overlap file"),
        }
    }

    /// Record that the new object file `(objno, gen)` shares `ranges` with generation
    /// `origin` of the object. Durable (unsettled) before the file is changed.
    pub fn copied(&self, objno: u64, gen: u64, origin: u64, ranges: Ranges) -> Result<()> {
        let mut known = lock(&self.known);
        if ranges.is_empty() {
            known.insert((objno, gen), Known { overlap: None, unflushed: false });
            return Ok(());
        }
        let overlap = Overlap { origin, ranges, settled: false };
        Self::write_file(&self.path(objno, gen), &overlap, true)?;
        known.insert((objno, gen), Known { overlap: Some(overlap), unflushed: true });
        Ok(())
    }

    /// `[start, end)` of `(objno, gen)` is about to change.
    pub fn changing(&self, objno: u64, gen: u64, start: u64, end: u64) -> Result<()> {
        let mut known = lock(&self.known);
        if known.len() >= MAX_KNOWN {
            // What is kept only to save a failed open per write can go.
            known.retain(|_, k| k.overlap.is_some() || k.unflushed);
        }
        let entry = match known.entry((objno, gen)) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let overlap = self.read_file(objno, gen);
                v.insert(Known { overlap, unflushed: false })
            }
        };
        let Some(overlap) = entry.overlap.as_mut() else { return Ok(()) };
        let left = cut(&overlap.ranges, start, end);
        if left == overlap.ranges {
            return Ok(());
        }
        if !entry.unflushed {
            let marked = Overlap { settled: false, ..overlap.clone() };
            Self::write_file(&self.path(objno, gen), &marked, true)?;
            entry.unflushed = true;
        }
        overlap.ranges = left;
        Ok(())
    }

    /// The overlap of `(objno, gen)`, as far as a diff may trust it.
    pub fn get(&self, objno: u64, gen: u64) -> Option<Overlap> {
        if let Some(k) = lock(&self.known).get(&(objno, gen)) {
            return k.overlap.clone().filter(|o| !o.ranges.is_empty());
        }
        self.read_file(objno, gen)
    }

    /// Write the overlaps changed since the last flush as settled (fsynced if `durable`).
    /// Safe whether or not the data is durable yet: a settled record written after the
    /// changes it cut only ever claims less than the data shares, and until it reaches the
    /// disk the unsettled marker there claims nothing.
    pub fn settle(&self, durable: bool) -> Result<()> {
        let mut known = lock(&self.known);
        if !self.dir.exists() {
            // The image was removed.
            known.clear();
            return Ok(());
        }
        for (&(objno, gen), k) in known.iter_mut() {
            if !k.unflushed {
                continue;
            }
            match k.overlap.as_mut() {
                Some(o) if !o.ranges.is_empty() => {
                    o.settled = true;
                    Self::write_file(&self.path(objno, gen), o, durable)?;
                }
                _ => {
                    k.overlap = None;
                    self.remove_file(objno, gen);
                }
            }
            k.unflushed = false;
        }
        Ok(())
    }

    /// `(objno, gen)` is being deleted. Its overlap is folded into `children` (referenced
    /// generations of the same object that may have been copied from it), as RADOS merges
    /// a trimmed clone's overlap into the one before: a child then shares with the deleted
    /// file's origin what both shared.
    pub fn fold_into(&self, objno: u64, gen: u64, children: &[u64]) -> Result<()> {
        let gone = self.get(objno, gen);
        for &child in children {
            let Some(mut overlap) = self.get(objno, child).filter(|o| o.origin == gen) else { continue };
            let mut known = lock(&self.known);
            let unflushed = known.get(&(objno, child)).is_some_and(|k| k.unflushed);
            match &gone {
                Some(g) => {
                    overlap.origin = g.origin;
                    overlap.ranges = intersect(&overlap.ranges, &g.ranges);
                }
                None => overlap.ranges.clear(),
            }
            if overlap.ranges.is_empty() {
                if !unflushed {
                    self.remove_file(objno, child);
                }
                known.insert((objno, child), Known { overlap: None, unflushed });
                continue;
            }
            if !unflushed {
                // Written before the origin's file goes: a crash in between leaves a child
                // that names a deleted origin, which diffs whole (more, never less).
                let settled = Overlap { settled: true, ..overlap.clone() };
                Self::write_file(&self.path(objno, child), &settled, false)?;
            }
            known.insert((objno, child), Known { overlap: Some(overlap), unflushed });
        }
        Ok(())
    }

    /// Forget and delete the overlap of a deleted object file.
    pub fn remove(&self, objno: u64, gen: u64) {
        lock(&self.known).remove(&(objno, gen));
        self.remove_file(objno, gen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_arithmetic() {
        let a: Ranges = vec![(0, 10), (20, 30)];
        assert_eq!(cut(&a, 5, 25), vec![(0, 5), (25, 30)]);
        assert_eq!(cut(&a, 0, u64::MAX), vec![]);
        assert_eq!(cut(&a, 10, 20), a);
        assert_eq!(intersect(&a, &vec![(5, 22), (29, 40)]), vec![(5, 10), (20, 22), (29, 30)]);
        assert_eq!(complement_in(&a, 0, 40), vec![(10, 20), (30, 40)]);
        assert_eq!(complement_in(&a, 12, 15), vec![(12, 15)]);
        assert_eq!(complement_in(&vec![], 3, 4), vec![(3, 4)]);
        assert_eq!(union(&a, &vec![(10, 12), (25, 35)]), vec![(0, 12), (20, 35)]);
    }
}
