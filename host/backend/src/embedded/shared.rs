//! What one process keeps for one image, shared by all of that process's handles of it: the
//! header as last read, the object files, and the transaction ([`Txn`]) that changes both.
//!
//! Keeping it per image rather than per handle means a snapshot taken through one handle
//! is seen at once by the others, and that reads of a clone's parent go through one cache.
//! Other processes are seen through the header file: every operation first compares the
//! header's identity (device, inode) with the one it read last, and rereads it if it
//! changed. The process keeps the header it read open, so its inode number cannot be
//! reused while it is compared against.
//!
//! Locking, always in this order, never the other way round:
//! 1. the pool lock (directory changes, `pool.rs`);
//! 2. the image lock file: exclusive for a metadata change ([`ImageShared::modify`]), shared
//!    for reads and in-place writes, so an in-place write can never land in an object a
//!    snapshot froze after the writer looked;
//! 3. the in-memory mutexes here, held only briefly and never across a lock above.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// The origin an overlap names for an object copied up from a clone's parent.
pub(crate) const FROM_PARENT: u64 = u64::MAX;

/// librbd's default `rbd_discard_granularity_bytes`: partial discards are aligned inward to it.
const DISCARD_GRANULARITY: u64 = 64 << 10;

use super::header::{Header, ObjectMap, ParentLink, View, ZERO_GEN};
use super::overlap::{intersect, nonempty, Ranges};
use super::locks::Identity;
use super::objects::{is_zero, Objects};
use super::store::{collect, is_temp_name, read_json, sync_dir, to_json, write_atomic, FileLock, ImageDir, Root};
use crate::{Error, Result};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One opened store: its root, this client's identity, and the images this process has
/// state for.
#[derive(Debug)]
pub(crate) struct Store {
    pub root: Root,
    pub me: Identity,
    images: Mutex<HashMap<(String, String), Weak<ImageShared>>>,
}

impl Store {
    pub fn new(root: Root, me: Identity) -> Store {
        Store { root, me, images: Mutex::new(HashMap::new()) }
    }

    /// The shared state of image `id` in `pool`, made on first use; `NotFound` if the image
    /// has no header.
    pub fn image(self: &Arc<Self>, pool: &str, id: &str) -> Result<Arc<ImageShared>> {
        let key = (pool.to_string(), id.to_string());
        let mut images = lock(&self.images);
        if let Some(shared) = images.get(&key).and_then(Weak::upgrade) {
            return Ok(shared);
        }
        let dir = self.root.pool(pool).image(id);
        if !dir.header().exists() {
            return Err(Error::NotFound(format!("image id {id} in pool {pool:?}")));
        }
        let shared = Arc::new(ImageShared {
            store: self.clone(),
            pool: pool.to_string(),
            id: id.to_string(),
            objects: Objects::new(dir.objects()),
            dir,
            state: Mutex::new(Cached::default()),
            lock_files: Mutex::new(Vec::new()),
            collected: AtomicBool::new(false),
            parent: Mutex::new(None),
        });
        images.retain(|_, w| w.strong_count() > 0);
        images.insert(key, Arc::downgrade(&shared));
        Ok(shared)
    }

    /// Drop the state of a removed image.
    pub fn forget(&self, pool: &str, id: &str) {
        lock(&self.images).remove(&(pool.to_string(), id.to_string()));
    }
}

/// The header as last read, and what identifies that version on disk.
#[derive(Debug, Default)]
struct Cached {
    header: Option<Arc<Header>>,
    /// (device, inode) of `file`.
    stamp: Option<(u64, u64)>,
    /// The header file read last, kept open so its inode number is not reused.
    _file: Option<File>,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct ImageShared {
    pub store: Arc<Store>,
    pub pool: String,
    pub id: String,
    pub dir: ImageDir,
    pub objects: Objects,
    state: Mutex<Cached>,
    /// Open descriptors of the lock file, reused: an `flock` belongs to an open file, so
    /// each concurrent holder needs its own.
    lock_files: Mutex<Vec<File>>,
    /// Whether this process has collected the image's leftovers yet.
    collected: AtomicBool,
    /// The parent image of a clone, once read through.
    parent: Mutex<Option<Arc<ImageShared>>>,
}

/// The image lock, held; released (and its descriptor pooled) on drop.
pub(crate) struct ImageLock<'a> {
    shared: &'a ImageShared,
    held: Option<FileLock>,
}

/// The last handle of an image in this process is gone: settle what its writes left
/// unsettled, so other processes' diffs can trust it (librbd's close flushes too).
impl Drop for ImageShared {
    fn drop(&mut self) {
        if let Err(e) = self.objects.overlaps.settle(false) {
            tracing::warn!(image = %self.id, error = %e, "cannot settle overlaps; diffs of the written objects will be whole");
        }
    }
}

impl Drop for ImageLock<'_> {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            if let Ok(file) = held.release() {
                lock(&self.shared.lock_files).push(file);
            }
        }
    }
}

/// A piece of a byte range that falls in one object.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece {
    pub objno: u64,
    /// Offset inside the object.
    pub in_obj: u64,
    /// Offset from the start of the range.
    pub at: u64,
    pub len: u64,
}

/// Split `[off, off + len)` at object boundaries. The caller guarantees no overflow.
pub(crate) fn pieces(off: u64, len: u64, obj_size: u64) -> impl Iterator<Item = Piece> {
    let mut at = 0u64;
    std::iter::from_fn(move || {
        if at >= len {
            return None;
        }
        let pos = off + at;
        let in_obj = pos % obj_size;
        let n = (obj_size - in_obj).min(len - at);
        let piece = Piece { objno: pos / obj_size, in_obj, at, len: n };
        at += n;
        Some(piece)
    })
}

/// The end of object `objno`, saturating at `u64::MAX` for the last possible object.
pub(crate) fn obj_end(objno: u64, obj_size: u64) -> u64 {
    objno.saturating_mul(obj_size).saturating_add(obj_size)
}

impl ImageShared {
    /// The current header, reread if another handle or process changed it.
    pub fn current(&self) -> Result<Arc<Header>> {
        // Every call of a blocklisted client fails, as librados answers it.
        super::blocklist::check(&self.store.root, &self.store.me.client)?;
        let path = self.dir.header();
        let stamp = match fs::metadata(&path) {
            Ok(m) => (m.dev(), m.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!("image id {} was removed", self.id)));
            }
            Err(e) => return Err(e.into()),
        };
        let mut state = lock(&self.state);
        if let (Some(header), Some(known)) = (&state.header, state.stamp) {
            if known == stamp {
                return Ok(header.clone());
            }
        }
        let (header, file) = read_json::<Header>(&path)?
            .ok_or_else(|| Error::NotFound(format!("image id {} was removed", self.id)))?;
        let meta = file.metadata()?;
        self.objects.retain(&header.referenced());
        let header = Arc::new(header);
        *state = Cached { header: Some(header.clone()), stamp: Some((meta.dev(), meta.ino())), _file: Some(file) };
        Ok(header)
    }

    /// Forget the cached header; the next operation rereads it.
    pub fn invalidate(&self) {
        lock(&self.state).stamp = None;
    }

    /// Take the image lock (see the module documentation).
    pub fn lock_image(&self, exclusive: bool) -> Result<ImageLock<'_>> {
        let pooled = lock(&self.lock_files).pop();
        let file = match pooled {
            Some(f) => f,
            None => FileLock::open(&self.dir.lock())?,
        };
        Ok(ImageLock { shared: self, held: Some(FileLock::from_file(file, exclusive)?) })
    }

    /// The shared state of a clone's parent image.
    pub fn parent_image(&self, link: &ParentLink) -> Result<Arc<ImageShared>> {
        let mut slot = lock(&self.parent);
        if let Some(parent) = slot.as_ref() {
            if parent.pool == link.pool && parent.id == link.image_id {
                return Ok(parent.clone());
            }
        }
        let parent = self.store.image(&link.pool, &link.image_id)?;
        *slot = Some(parent.clone());
        Ok(parent)
    }

    /// Read `buf.len()` bytes at `off` of a view into a zeroed buffer. The caller has cut the
    /// range to the view's size.
    pub fn read_view(&self, header: &Header, view: &View<'_>, off: u64, buf: &mut [u8]) -> Result<()> {
        let mut from_parent: Vec<Piece> = Vec::new();
        for p in pieces(off, buf.len() as u64, header.obj_size()) {
            let slice = &mut buf[p.at as usize..(p.at + p.len) as usize];
            match view.objects.get(&p.objno) {
                Some(&ZERO_GEN) => {}
                Some(&gen) => self.objects.read(p.objno, gen, p.in_obj, slice)?,
                None if view.parent.is_some() => match from_parent.last_mut() {
                    Some(run) if run.at + run.len == p.at => run.len += p.len,
                    _ => from_parent.push(p),
                },
                None => {}
            }
        }
        if let Some(link) = view.parent {
            for run in from_parent {
                let slice = &mut buf[run.at as usize..(run.at + run.len) as usize];
                self.read_parent(link, off + run.at, slice)?;
            }
        }
        Ok(())
    }

    /// The length of what a clone's parent serves as object `objno` (of size `os`) of the
    /// clone: up to the end of the parent's last object data in that range, inside the
    /// overlap (what librbd's copy-up writes); 0 where it has none.
    pub fn parent_object_len(&self, link: &ParentLink, objno: u64, os: u64) -> Result<u64> {
        let start = objno.saturating_mul(os);
        let end = self.parent_data_end(link, start, obj_end(objno, os))?;
        Ok(end.map_or(0, |e| e - start))
    }

    /// Where the data a clone's parent serves inside `[start, end)` ends, if it has any.
    fn parent_data_end(&self, link: &ParentLink, start: u64, end: u64) -> Result<Option<u64>> {
        let end = end.min(link.overlap);
        if start >= end {
            return Ok(None);
        }
        let parent = self.parent_image(link)?;
        let header = parent.current()?;
        let view = header.view(Some(link.snap_id))?;
        parent.data_end(&header, &view, start, end.min(view.size))
    }

    /// Where the data of `view` inside `[start, end)` ends: its own object files' lengths,
    /// and where it has no object, its parent's.
    fn data_end(&self, header: &Header, view: &View<'_>, start: u64, end: u64) -> Result<Option<u64>> {
        if start >= end {
            return Ok(None);
        }
        let os = header.obj_size();
        let mut best: Option<u64> = None;
        // Gaps between the view's own objects, where its parent shows through.
        let mut gap_from = start;
        for (&objno, &gen) in view.objects.range(start / os..=(end - 1) / os) {
            let (o_start, o_end) = (objno * os, obj_end(objno, os));
            if let Some(link) = view.parent {
                if gap_from < o_start {
                    best = best.max(self.parent_data_end(link, gap_from, o_start.min(end))?);
                }
            }
            gap_from = o_end;
            if gen != ZERO_GEN {
                let data_end = (o_start + self.objects.len(objno, gen)?).min(end);
                if data_end > start.max(o_start) {
                    best = best.max(Some(data_end));
                }
            }
        }
        if let Some(link) = view.parent {
            if gap_from < end {
                best = best.max(self.parent_data_end(link, gap_from, end)?);
            }
        }
        Ok(best)
    }

    /// Read what a clone's parent serves at `[off, off + buf.len())`: the parent snapshot's
    /// data inside the overlap, zeroes beyond it.
    pub fn read_parent(&self, link: &ParentLink, off: u64, buf: &mut [u8]) -> Result<()> {
        let parent = self.parent_image(link)?;
        let header = parent.current()?;
        let view = header.view(Some(link.snap_id))?;
        let end = off.saturating_add(buf.len() as u64).min(link.overlap).min(view.size);
        if off >= end {
            return Ok(());
        }
        parent.read_view(&header, &view, off, &mut buf[..(end - off) as usize])
    }

    /// Write `data` at `off` of the head in place, if every object it touches exists and
    /// no snapshot shares it. `Ok(false)`: the write needs a header change instead. The
    /// caller holds the image lock (shared) and has cut `data` to the image size.
    pub fn write_in_place(&self, header: &Header, off: u64, data: &[u8]) -> Result<bool> {
        let os = header.obj_size();
        let mut plan = Vec::new();
        for p in pieces(off, data.len() as u64, os) {
            match header.objects.get(&p.objno) {
                Some(&gen) if gen != ZERO_GEN && !header.is_frozen(p.objno, gen) => plan.push((p, gen)),
                _ => return Ok(false),
            }
        }
        for (p, gen) in plan {
            self.objects.write(p.objno, gen, p.in_obj, &data[p.at as usize..(p.at + p.len) as usize])?;
        }
        Ok(true)
    }

    /// Change the header (and object files) under the exclusive image lock. `change` works
    /// on a copy of the current header; if it fails, the files it created are deleted and
    /// nothing changed. Otherwise the copy is committed by one atomic rename (durable at
    /// once with `durable`, else at the next flush), and object files no version references
    /// any more are deleted.
    pub fn modify<R>(&self, durable: bool, change: impl FnOnce(&mut Txn<'_>) -> Result<R>) -> Result<R> {
        let _lock = self.lock_image(true)?;
        let old = self.current()?;
        if !self.collected.swap(true, Ordering::SeqCst) {
            self.objects.collect_garbage(&old.referenced());
            collect(&self.dir.0, is_temp_name);
        }
        let mut txn = Txn { shared: self, header: (*old).clone(), created: Vec::new(), copied: false };
        let result = change(&mut txn);
        let Txn { header, created, copied, .. } = txn;
        let undo = |created: &[(u64, u64)]| created.iter().for_each(|&(o, g)| self.objects.remove(o, g));
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                undo(&created);
                return Err(e);
            }
        };
        if header == *old {
            undo(&created);
            return Ok(value);
        }
        // Copies hold data that existed before: their names must be durable before the header
        // that points at them (their contents were fsynced when they were made).
        let synced = if copied { sync_dir(&self.dir.objects()) } else { Ok(()) };
        let written = synced.and_then(|()| to_json(&header)).and_then(|b| write_atomic(&self.dir.header(), &b, false));
        let file = match written {
            Ok(f) => f,
            Err(e) => {
                undo(&created);
                return Err(e);
            }
        };
        // Committed: from here on the new header is what is on disk.
        let stamp = file.metadata().ok().map(|m| (m.dev(), m.ino()));
        let referenced = header.referenced();
        let mut garbage: Vec<(u64, u64)> = old.referenced().difference(&referenced).copied().collect();
        garbage.sort_unstable();
        *lock(&self.state) = Cached { header: Some(Arc::new(header)), stamp, _file: Some(file) };
        self.fold_overlaps(&garbage, &referenced);
        for (objno, gen) in garbage {
            self.objects.remove(objno, gen);
        }
        if durable {
            sync_dir(&self.dir.0)?;
        }
        Ok(value)
    }

    /// Before object files are deleted, hand what they shared with their origins on to the
    /// files copied from them (see [`super::overlap`]). Oldest first, so a chain of deleted
    /// generations folds into the one that stays. A failure only makes later diffs report
    /// more.
    fn fold_overlaps(&self, garbage: &[(u64, u64)], referenced: &HashSet<(u64, u64)>) {
        if garbage.is_empty() {
            return;
        }
        let objnos: HashSet<u64> = garbage.iter().map(|g| g.0).collect();
        let mut gens: HashMap<u64, Vec<u64>> = HashMap::new();
        for &(objno, gen) in referenced.iter().chain(garbage) {
            if objnos.contains(&objno) {
                gens.entry(objno).or_default().push(gen);
            }
        }
        for &(objno, gen) in garbage {
            let later: Vec<u64> = gens.get(&objno).map_or(Vec::new(), |g| g.iter().copied().filter(|&g| g > gen).collect());
            if let Err(e) = self.objects.overlaps.fold_into(objno, gen, &later) {
                tracing::warn!(objno, gen, error = %e, "cannot fold an overlap; the object diffs whole");
            }
        }
    }

    /// fsync everything written since the last flush: object data, new object files, and
    /// header renames.
    pub fn flush(&self) -> Result<()> {
        self.objects.sync()?;
        sync_dir(&self.dir.0)
    }
}

/// A metadata change in progress: a copy of the header to edit, and the object files made
/// for it so far (deleted if the change fails).
pub(crate) struct Txn<'a> {
    pub shared: &'a ImageShared,
    pub header: Header,
    created: Vec<(u64, u64)>,
    /// Whether a new object holds data copied from an existing version.
    copied: bool,
}

impl Txn<'_> {
    /// Make a new object file for `objno` holding `data`, and return its generation. The
    /// caller puts it in an object map.
    pub fn new_object(&mut self, objno: u64, data: &[u8], durable: bool) -> Result<u64> {
        let gen = self.header.alloc_gen()?;
        self.shared.objects.create(objno, gen, data, durable)?;
        self.created.push((objno, gen));
        Ok(gen)
    }

    /// What a copy-up of object `objno` of the head takes from the parent: the parent
    /// object's bytes inside the overlap (empty if it has none).
    fn parent_data(&self, objno: u64) -> Result<Vec<u8>> {
        let Some(link) = self.header.parent.as_ref() else { return Ok(Vec::new()) };
        let len = self.shared.parent_object_len(link, objno, self.header.obj_size())?;
        let mut buf = vec![0u8; len as usize];
        self.shared.read_parent(link, objno * self.header.obj_size(), &mut buf)?;
        Ok(buf)
    }

    /// Make object `objno` of the head writable in place and return its generation:
    /// allocate it, copy it if a snapshot shares it, or copy its parent's data up in a
    /// clone. With `keep` false the caller overwrites all of it, so nothing is copied.
    pub fn writable(&mut self, objno: u64, keep: bool) -> Result<u64> {
        let gen = match self.header.objects.get(&objno).copied() {
            Some(gen) if gen != ZERO_GEN && !self.header.is_frozen(objno, gen) => return Ok(gen),
            Some(frozen) if frozen != ZERO_GEN && keep => {
                let gen = self.header.alloc_gen()?;
                let len = self.shared.objects.copy(objno, frozen, gen)?;
                self.shared.objects.overlaps.copied(objno, gen, frozen, nonempty(0, len))?;
                self.created.push((objno, gen));
                self.copied = true;
                gen
            }
            Some(_) => self.new_object(objno, &[], false)?,
            None => {
                // A copy-up: the object takes the parent object's bytes and length, and
                // shares them with the parent until written (librbd's deep-flatten copy-up
                // puts them in every snapshot too; see the diff module).
                let data = if keep { self.parent_data(objno)? } else { Vec::new() };
                let copied_up = !data.is_empty();
                self.copied |= copied_up;
                let gen = self.new_object(objno, &data, copied_up)?;
                if copied_up {
                    self.shared.objects.truncate(objno, gen, data.len() as u64)?;
                    self.shared.objects.overlaps.copied(objno, gen, FROM_PARENT, nonempty(0, data.len() as u64))?;
                }
                gen
            }
        };
        self.header.objects.insert(objno, gen);
        Ok(gen)
    }

    /// Roll the head back to snapshot `name`, as RADOS rolls back each object: an object
    /// the head changed since is copied back from the snapshot into a new file, which
    /// shares with the newest snapshot's version only what every version since the
    /// snapshot shared (so a later exact diff still reports what the rolled-back writes
    /// touched, as librbd's does).
    pub fn rollback(&mut self, name: &str) -> Result<()> {
        let snap = self.header.snap_named_mut(name)?.clone();
        let at = self.header.snaps.iter().position(|s| s.id == snap.id).unwrap_or(0);
        let mut objects = ObjectMap::new();
        for (&objno, &target) in &snap.objects {
            let head = self.header.objects.get(&objno).copied();
            if head == Some(target) || target == ZERO_GEN {
                objects.insert(objno, target);
                continue;
            }
            // The object's versions from the snapshot on, ending with the head's.
            let mut chain: Vec<Option<u64>> =
                self.header.snaps[at..].iter().map(|s| s.objects.get(&objno).copied()).collect();
            let newest = chain.last().copied().flatten();
            chain.push(head);
            let mut still: Option<Ranges> = None;
            for pair in chain.windows(2) {
                if pair[0] == pair[1] {
                    continue;
                }
                let shared = match (pair[0], pair[1]) {
                    (Some(p), Some(n)) if p != ZERO_GEN => {
                        self.shared.objects.overlaps.get(objno, n).filter(|o| o.origin == p).map_or(Ranges::new(), |o| o.ranges)
                    }
                    _ => Ranges::new(),
                };
                still = Some(match still {
                    None => shared,
                    Some(s) => intersect(&s, &shared),
                });
            }
            let gen = self.header.alloc_gen()?;
            let len = self.shared.objects.copy(objno, target, gen)?;
            self.created.push((objno, gen));
            self.copied = true;
            if let (Some(newest), Some(still)) = (newest, still) {
                if newest != ZERO_GEN {
                    let ranges = intersect(&still, &nonempty(0, len));
                    self.shared.objects.overlaps.copied(objno, gen, newest, ranges)?;
                }
            }
            objects.insert(objno, gen);
        }
        self.header.objects = objects;
        self.header.size = snap.size;
        self.header.parent = snap.parent;
        Ok(())
    }

    /// Write `data` at `off` of the head (cut to the size by the caller).
    pub fn write(&mut self, off: u64, data: &[u8]) -> Result<()> {
        let os = self.header.obj_size();
        let size = self.header.size;
        for p in pieces(off, data.len() as u64, os) {
            let start = p.objno * os;
            let whole = p.in_obj == 0 && (p.len == os || start + p.len >= size);
            let gen = self.writable(p.objno, !whole)?;
            self.shared.objects.write(p.objno, gen, p.in_obj, &data[p.at as usize..(p.at + p.len) as usize])?;
        }
        Ok(())
    }

    /// Discard `[off, end)` of the head (inside the size), as librbd does it: whole objects
    /// are dropped (or, where a clone's parent has data, replaced by an empty object so the
    /// parent does not show through); of a partial object only the part aligned inward to
    /// the discard granularity (`rbd_discard_granularity_bytes`, 64 KiB, at most the object
    /// size) is zeroed, and the unaligned head and tail keep their data. The last object of
    /// an image whose size is not a multiple of the object size is never whole.
    pub fn discard(&mut self, off: u64, end: u64) -> Result<()> {
        let os = self.header.obj_size();
        let granularity = os.min(DISCARD_GRANULARITY);
        let first = off / os;
        let last = (end - 1) / os;
        let (mut drop_from, mut drop_to) = (Some(first), Some(last));
        let edges = if first == last { vec![first] } else { vec![first, last] };
        for x in edges {
            let a = off.max(x * os) - x * os;
            let b = end.min(obj_end(x, os)) - x * os;
            if a == 0 && b == os {
                continue; // whole: dropped below
            }
            if x == first {
                drop_from = first.checked_add(1);
            }
            if x == last {
                drop_to = last.checked_sub(1);
            }
            let (a, b) = (a.div_ceil(granularity) * granularity, b / granularity * granularity);
            if a < b {
                self.zero(x, a, b, b == os)?;
            }
        }
        if let (Some(from), Some(to)) = (drop_from, drop_to) {
            if from <= to {
                self.drop_objects(from, to)?;
            }
        }
        Ok(())
    }

    /// Zero `[a, b)` inside object `objno` of the head. A range that reaches the object's
    /// end is a truncate at `a` (`to_end`), as librbd sends it: that also lengthens an
    /// object shorter than `a`.
    fn zero(&mut self, objno: u64, a: u64, b: u64, to_end: bool) -> Result<()> {
        let os = self.header.obj_size();
        let present = match self.header.objects.get(&objno) {
            Some(&ZERO_GEN) => return Ok(()),
            Some(_) => true,
            None => false,
        };
        let under_parent = self.header.parent.as_ref().is_some_and(|l| objno * os + a < l.overlap);
        if present || under_parent {
            let gen = self.writable(objno, true)?;
            if to_end {
                self.shared.objects.truncate(objno, gen, a)?;
            } else {
                self.shared.objects.zero(objno, gen, a, b)?;
            }
        }
        Ok(())
    }

    /// Remove objects `from..=to` of the head, leaving empty objects where the parent of a
    /// clone has data.
    fn drop_objects(&mut self, from: u64, to: u64) -> Result<()> {
        let doomed: Vec<u64> = self.header.objects.range(from..=to).map(|(k, _)| *k).collect();
        for objno in doomed {
            self.header.objects.remove(&objno);
        }
        if let Some(link) = self.header.parent.clone() {
            let os = self.header.obj_size();
            let start = from * os;
            let stop = obj_end(to, os).min(link.overlap);
            if start < stop {
                for (a, b) in self.shared.parent_allocated(&link, start, stop)? {
                    for objno in (a / os)..=((b - 1) / os) {
                        if (from..=to).contains(&objno) {
                            self.header.objects.insert(objno, ZERO_GEN);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Change the head's size. Shrinking drops the objects past the end, zeroes the tail of
    /// the last one, and cuts a clone's overlap (which never grows back).
    pub fn resize(&mut self, size: u64) -> Result<()> {
        if size < self.header.size {
            let os = self.header.obj_size();
            drop(self.header.objects.split_off(&size.div_ceil(os)));
            let tail = size % os;
            if tail != 0 {
                let last = size / os;
                let own = match self.header.objects.get(&last) {
                    Some(&g) => g != ZERO_GEN,
                    None => match self.header.parent.clone() {
                        Some(l) if last * os < l.overlap => self.shared.parent_object_len(&l, last, os)? > 0,
                        _ => false,
                    },
                };
                if own {
                    // librbd truncates the last object at the new end (copying it up from
                    // the parent first), which can also lengthen it: a diff shows that.
                    let gen = self.writable(last, true)?;
                    self.shared.objects.truncate(last, gen, tail)?;
                }
            }
            if let Some(link) = self.header.parent.as_mut() {
                link.overlap = link.overlap.min(size);
            }
        }
        self.header.size = size;
        Ok(())
    }

    /// Copy everything the parent still serves into the head and every snapshot, then drop
    /// the parent links (deep flatten). Versions that read the same parent bytes share the
    /// copied object.
    pub fn flatten(&mut self, keep_going: &mut dyn FnMut(u64, u64) -> bool) -> Result<()> {
        // None: the head; Some(i): snapshot at index i.
        let mut versions: Vec<(Option<usize>, ParentLink)> = Vec::new();
        if let Some(link) = &self.header.parent {
            versions.push((None, link.clone()));
        }
        for (i, snap) in self.header.snaps.iter().enumerate() {
            if let Some(link) = &snap.parent {
                versions.push((Some(i), link.clone()));
            }
        }
        if versions.is_empty() {
            return Err(Error::InvalidArgument("image is not a clone".into()));
        }
        let os = self.header.obj_size();
        // (parent snapshot, objno, bytes served) -> the copy, if the bytes were not all zero.
        let mut made: HashMap<(u64, u64, u64), Option<u64>> = HashMap::new();
        for (which, link) in versions {
            let mut wanted: Vec<u64> = Vec::new();
            for (a, b) in self.shared.parent_allocated(&link, 0, link.overlap)? {
                for objno in (a / os)..=((b - 1) / os) {
                    if wanted.last() != Some(&objno) {
                        wanted.push(objno);
                    }
                }
            }
            let mut filled = Vec::new();
            {
                let map = match which {
                    None => &self.header.objects,
                    Some(i) => &self.header.snaps[i].objects,
                };
                wanted.retain(|objno| !map.contains_key(objno));
            }
            let total = wanted.len() as u64;
            for (done, objno) in wanted.into_iter().enumerate() {
                // Stopped: the transaction is not committed, so the image keeps its parent.
                if !keep_going(done as u64, total) {
                    return Err(Error::cancelled("flatten"));
                }
                let start = objno * os;
                let len = (link.overlap - start).min(os);
                let key = (link.snap_id, objno, len);
                let gen = match made.get(&key) {
                    Some(gen) => *gen,
                    None => {
                        let mut buf = vec![0u8; len as usize];
                        self.shared.read_parent(&link, start, &mut buf)?;
                        let gen = if is_zero(&buf) { None } else { Some(self.new_object(objno, &buf, false)?) };
                        made.insert(key, gen);
                        gen
                    }
                };
                if let Some(gen) = gen {
                    filled.push((objno, gen));
                }
            }
            let (map, parent) = match which {
                None => (&mut self.header.objects, &mut self.header.parent),
                Some(i) => {
                    let snap = &mut self.header.snaps[i];
                    (&mut snap.objects, &mut snap.parent)
                }
            };
            map.extend(filled);
            *parent = None;
        }
        // The copies hold data that existed before: durable before the header points at them.
        self.shared.objects.sync()
    }
}
