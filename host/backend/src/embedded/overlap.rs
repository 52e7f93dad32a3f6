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
//! only makes a diff report more. The first change of an object file after a settlement
//! marks its overlap file `settled: false` and fsyncs it before the data changes; further
//! changes are kept in memory; a flush, a snapshot and the last close write the overlap
//! settled. An overlap found unsettled on disk (a writer in another process that has not
//! settled, or one that crashed) is read as empty. So the cost is one small fsync per
//! object between settlements, none per write. Several writing processes: see [`Overlaps`].

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::Result;

/// Sorted, disjoint, non-empty half-open byte ranges.
pub(crate) type Ranges = Vec<(u64, u64)>;

/// `[a, b)` as ranges (none if empty).
pub(crate) fn nonempty(a: u64, b: u64) -> Ranges {
    if a < b {
        vec![(a, b)]
    } else {
        Ranges::new()
    }
}

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
    /// Whether the file says the whole truth: false while a writer's changes since its
    /// last settlement may be missing from it.
    settled: bool,
    /// The writer (an [`Overlaps`]' token) that marked it unsettled.
    #[serde(default)]
    writer: u64,
}

/// What this process wrote since its last settlement: its records are the truth, the
/// files say "unsettled" (with this process's token).
#[derive(Debug)]
struct Unflushed {
    overlap: Overlap,
}

/// The overlap files of one image's object directory, and what this process changed.
///
/// Several processes may write one image. A writer's first change to a file after a
/// settlement takes the record over under the file's `flock`: it reads the settled record,
/// cuts the change out and writes it back unsettled, with its own token. A writer that
/// finds a record unsettled by another token (a writer still at work, or one that crashed)
/// cannot know what that writer changed, so it empties the record (takes it over with
/// nothing shared); and a writer that settles finds the file still carrying its own token
/// or leaves it as it is. Either way a record never claims bytes some write changed.
#[derive(Debug)]
pub(crate) struct Overlaps {
    dir: PathBuf,
    unflushed: Mutex<HashMap<(u64, u64), Unflushed>>,
    /// Object files known to have no record: permanent (records are only made with a new
    /// copy), so a write to one costs no file look-up.
    none: Mutex<std::collections::HashSet<(u64, u64)>>,
    token: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How many object files without a record a process remembers.
const MAX_KNOWN_NONE: usize = 1 << 16;

/// The file name of an object file's overlap.
pub(crate) fn file_name(objno: u64, gen: u64) -> String {
    format!("{}.overlap", super::objects::file_name(objno, gen))
}

/// A record file, open and `flock`ed while this lives.
struct Locked {
    file: File,
}

impl Locked {
    fn open(path: &Path) -> Result<Option<Locked>> {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => {
                file.lock()?;
                Ok(Some(Locked { file }))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The record; `None` if it does not parse (a torn write: it shares nothing).
    fn read(&mut self) -> Result<Option<Overlap>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut bytes = Vec::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(&mut bytes)?;
        Ok(serde_json::from_slice::<Overlap>(&bytes).ok())
    }

    fn write(&mut self, overlap: &Overlap, durable: bool) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let bytes = serde_json::to_vec(overlap).map_err(|e| crate::Error::Io(e.to_string()))?;
        self.file.set_len(0)?;
        self.file.write_all_at(&bytes, 0)?;
        if durable {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

impl Overlaps {
    pub fn new(dir: PathBuf) -> Overlaps {
        Overlaps {
            dir,
            unflushed: Mutex::new(HashMap::new()),
            none: Mutex::new(std::collections::HashSet::new()),
            token: rand::random::<u64>() | 1,
        }
    }

    fn path(&self, objno: u64, gen: u64) -> PathBuf {
        self.dir.join(file_name(objno, gen))
    }

    fn remove_file(&self, objno: u64, gen: u64) {
        match fs::remove_file(self.path(objno, gen)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(objno, gen, error = %e, "cannot delete an overlap file"),
        }
    }

    fn note_none(&self, objno: u64, gen: u64) {
        let mut none = lock(&self.none);
        if none.len() >= MAX_KNOWN_NONE {
            none.clear();
        }
        none.insert((objno, gen));
    }

    /// Record that the new object file `(objno, gen)` shares `ranges` with generation
    /// `origin` of the object. Durable (unsettled) before the file is changed.
    pub fn copied(&self, objno: u64, gen: u64, origin: u64, ranges: Ranges) -> Result<()> {
        if ranges.is_empty() {
            self.note_none(objno, gen);
            return Ok(());
        }
        let overlap = Overlap { origin, ranges, settled: false, writer: self.token };
        let bytes = serde_json::to_vec(&overlap).map_err(|e| crate::Error::Io(e.to_string()))?;
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(self.path(objno, gen))?;
        file.write_all(&bytes)?;
        file.sync_data()?;
        lock(&self.unflushed).insert((objno, gen), Unflushed { overlap });
        Ok(())
    }

    /// `[start, end)` of `(objno, gen)` is about to change.
    pub fn changing(&self, objno: u64, gen: u64, start: u64, end: u64) -> Result<()> {
        let mut unflushed = lock(&self.unflushed);
        if let Some(u) = unflushed.get_mut(&(objno, gen)) {
            u.overlap.ranges = cut(&u.overlap.ranges, start, end);
            return Ok(());
        }
        if lock(&self.none).contains(&(objno, gen)) {
            return Ok(());
        }
        let Some(mut file) = Locked::open(&self.path(objno, gen))? else {
            self.note_none(objno, gen);
            return Ok(());
        };
        let taken = match file.read()? {
            Some(o) if o.settled => {
                let ranges = cut(&o.ranges, start, end);
                if ranges == o.ranges {
                    return Ok(());
                }
                Overlap { origin: o.origin, ranges, settled: false, writer: self.token }
            }
            // Unsettled by someone else, or torn: what it shares is unknown, so nothing.
            Some(o) => Overlap { origin: o.origin, ranges: Ranges::new(), settled: false, writer: self.token },
            None => Overlap { origin: 0, ranges: Ranges::new(), settled: false, writer: self.token },
        };
        file.write(&taken, true)?;
        unflushed.insert((objno, gen), Unflushed { overlap: taken });
        Ok(())
    }

    /// The overlap of `(objno, gen)`, as far as a diff may trust it.
    pub fn get(&self, objno: u64, gen: u64) -> Option<Overlap> {
        if let Some(u) = lock(&self.unflushed).get(&(objno, gen)) {
            return Some(u.overlap.clone()).filter(|o| !o.ranges.is_empty());
        }
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

    /// Write the records changed since the last settlement as settled (fsynced if
    /// `durable`), where the file still carries this process's token. Safe whether or not
    /// the data is durable yet: a settled record written after the changes it cut only
    /// ever claims less than the data shares, and until it reaches the disk the unsettled
    /// marker there claims nothing.
    pub fn settle(&self, durable: bool) -> Result<()> {
        let mut unflushed = lock(&self.unflushed);
        if !self.dir.exists() {
            // The image was removed.
            unflushed.clear();
            return Ok(());
        }
        for ((objno, gen), u) in unflushed.drain() {
            let Some(mut file) = Locked::open(&self.path(objno, gen))? else { continue };
            match file.read()? {
                Some(o) if !o.settled && o.writer == self.token => {}
                _ => continue, // taken over by another writer: its record stands
            }
            if u.overlap.ranges.is_empty() {
                self.remove_file(objno, gen);
                self.note_none(objno, gen);
            } else {
                file.write(&Overlap { settled: true, ..u.overlap }, durable)?;
            }
        }
        Ok(())
    }

    /// `(objno, gen)` is being deleted. Its overlap is folded into `children` (referenced
    /// generations of the same object that may have been copied from it), as RADOS merges
    /// a trimmed clone's overlap into the one before: a child then shares with the deleted
    /// file's origin what both shared.
    pub fn fold_into(&self, objno: u64, gen: u64, children: &[u64]) -> Result<()> {
        let gone = self.get(objno, gen);
        let fold = |o: &mut Overlap| match &gone {
            Some(g) => {
                o.origin = g.origin;
                o.ranges = intersect(&o.ranges, &g.ranges);
            }
            None => o.ranges.clear(),
        };
        for &child in children {
            if let Some(u) = lock(&self.unflushed).get_mut(&(objno, child)) {
                if u.overlap.origin == gen {
                    fold(&mut u.overlap);
                }
                continue;
            }
            let Some(mut file) = Locked::open(&self.path(objno, child))? else { continue };
            let Some(mut o) = file.read()?.filter(|o| o.settled && o.origin == gen) else { continue };
            // Rewritten before the origin's file goes: a crash in between leaves a child
            // that names a deleted origin, which diffs whole (more, never less).
            fold(&mut o);
            if o.ranges.is_empty() {
                self.remove_file(objno, child);
                self.note_none(objno, child);
            } else {
                file.write(&o, false)?;
            }
        }
        Ok(())
    }

    /// Forget and delete the overlap of a deleted object file.
    pub fn remove(&self, objno: u64, gen: u64) {
        lock(&self.unflushed).remove(&(objno, gen));
        lock(&self.none).remove(&(objno, gen));
        self.remove_file(objno, gen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two processes (two `Overlaps` on one directory) writing one object file: neither
    /// ever reads a record that claims bytes the other changed.
    #[test]
    fn writers_in_two_processes_never_trust_each_others_unsettled_records() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Overlaps::new(dir.path().to_owned()), Overlaps::new(dir.path().to_owned()));
        a.copied(0, 2, 1, vec![(0, 100)]).unwrap();
        assert_eq!(b.get(0, 2), None, "unsettled: another process reads nothing shared");
        a.changing(0, 2, 10, 20).unwrap();
        assert_eq!(a.get(0, 2).unwrap().ranges, vec![(0, 10), (20, 100)], "the writer itself knows");
        a.settle(false).unwrap();
        assert_eq!(b.get(0, 2).unwrap().ranges, vec![(0, 10), (20, 100)], "settled: everyone knows");
        b.changing(0, 2, 50, 60).unwrap();
        assert_eq!(a.get(0, 2), None, "taken over by b, unsettled");
        assert_eq!(b.get(0, 2).unwrap().ranges, vec![(0, 10), (20, 50), (60, 100)]);
        a.changing(0, 2, 0, 5).unwrap();
        assert_eq!(a.get(0, 2), None, "a cannot know what b changed: nothing shared");
        b.settle(false).unwrap();
        assert_eq!(b.get(0, 2), None, "b's settlement leaves a's record alone");
        a.settle(false).unwrap();
        assert_eq!((a.get(0, 2), b.get(0, 2)), (None, None));
        assert!(!dir.path().join(file_name(0, 2)).exists(), "an empty record is deleted");
    }

    #[test]
    fn a_torn_record_shares_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = Overlaps::new(dir.path().to_owned());
        std::fs::write(dir.path().join(file_name(3, 4)), b"{\"origin\":1,\"ranges\":[[0,").unwrap();
        assert_eq!(a.get(3, 4), None);
        a.changing(3, 4, 0, 1).unwrap();
        assert_eq!(a.get(3, 4), None);
    }

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
