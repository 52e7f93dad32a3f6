//! One open image ([`EmbeddedImage`]): the [`Image`] trait over the shared image state.
//!
//! This is where librbd's argument rules live (what is read-only, which offsets are out of
//! range, which error each mistake gets); the work itself is done by the shared state
//! ([`super::shared`]), so that handles of one image agree on everything but the snapshot
//! they have selected.

use std::collections::BTreeSet;
use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};

use super::diff::{diff, Mode};
use super::header::{Header, ParentLink, Snap};
use super::locks;
use super::objects::{is_zero, zeroed, Objects};
use super::pool::{self, PoolTxn};
use super::shared::{obj_end, ImageShared};
use super::validate;
use crate::{
    features, Child, Error, Extent, Image, ImageStat, LockInfo, ParentInfo, Result, SnapInfo, Watcher,
};

/// `ENOMEM`, for a read too large to allocate.
const ENOMEM: i32 = 12;

/// An open image. Unless it was opened read-only, it holds the image's watch file shared for
/// as long as it lives, which is what makes `remove` answer `Busy` (librbd registers no
/// watch for a read-only open, and removes such an image).
pub struct EmbeddedImage {
    shared: Arc<ImageShared>,
    /// The selected snapshot; `None` for the head.
    snap: Mutex<Option<u64>>,
    read_only: bool,
    _watch: Option<(File, super::watchers::Watch)>,
    /// The cookie this handle takes the exclusive-lock feature's lock with (`auto <watch
    /// cookie>`, as librbd names it); none for a read-only open.
    cookie: Option<String>,
}

/// Closing releases the exclusive-lock feature's lock if this handle holds it, as librbd's
/// close does.
impl Drop for EmbeddedImage {
    fn drop(&mut self) {
        let Some(cookie) = self.cookie.as_deref() else { return };
        let client = &self.shared.store.me.client;
        let owns = |header: &Header| header.locks.owns_managed(client, cookie);
        if !self.shared.current().is_ok_and(|h| owns(&h)) {
            return;
        }
        let released = self.shared.modify(false, |txn| match owns(&txn.header) {
            true => txn.header.locks.unlock(client, cookie),
            false => Ok(()),
        });
        if let Err(e) = released {
            tracing::warn!(image = %self.shared.id, error = %e, "cannot release the exclusive lock at close");
        }
    }
}

impl std::fmt::Debug for EmbeddedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedImage")
            .field("pool", &self.shared.pool)
            .field("id", &self.shared.id)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

fn invalid(what: impl Into<String>) -> Error {
    Error::InvalidArgument(what.into())
}

fn has_exclusive_lock(header: &Header) -> bool {
    header.features & crate::features::EXCLUSIVE_LOCK != 0
}

impl EmbeddedImage {
    pub(crate) fn new(
        shared: Arc<ImageShared>,
        snap: Option<u64>,
        read_only: bool,
        watch: Option<(File, super::watchers::Watch)>,
    ) -> Self {
        let cookie = watch.as_ref().map(|(_, w)| format!("auto {}", w.cookie));
        EmbeddedImage { shared, snap: Mutex::new(snap), read_only, _watch: watch, cookie }
    }

    /// Whether a write may go ahead without changing the header's lock: no exclusive-lock
    /// feature, or this handle holds its lock.
    fn owns_write_lock(&self, header: &Header) -> bool {
        !has_exclusive_lock(header)
            || self.cookie.as_deref().is_some_and(|c| header.locks.owns_managed(&self.shared.store.me.client, c))
    }

    /// Before a write, with the exclusive-lock feature: take its lock, from whichever handle
    /// holds it (librbd hands it over on request). An advisory lock held by anyone makes
    /// librbd's write wait for ever; here it answers `Busy` (docs/librbd-semantics.md).
    fn take_write_lock(&self, header: &mut Header) -> Result<()> {
        if self.owns_write_lock(header) {
            return Ok(());
        }
        let cookie = self.cookie.as_deref().ok_or_else(|| Error::ReadOnly("image was opened read-only".into()))?;
        header.locks.take_managed(&self.shared.store.me, cookie)
    }

    fn selected(&self) -> MutexGuard<'_, Option<u64>> {
        self.snap.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current header and the selected snapshot (`NotFound` if it was removed).
    fn current(&self) -> Result<(Arc<Header>, Option<u64>)> {
        let header = self.shared.current()?;
        let snap = *self.selected();
        header.view(snap)?;
        Ok((header, snap))
    }

    /// Writes to the head: not when opened read-only, not with a snapshot selected.
    fn check_writable(&self) -> Result<()> {
        self.check_not_read_only()?;
        if self.selected().is_some() {
            return Err(Error::ReadOnly("a snapshot is selected".into()));
        }
        Ok(())
    }

    /// The pool's next snapshot id (see [`pool::next_snap_id`]).
    fn next_snap_id(&self) -> Result<u64> {
        let dir = self.shared.store.root.pool(&self.shared.pool);
        let at_least = self.shared.current()?.next_snap_id;
        pool::next_snap_id(&dir, at_least)
    }

    fn check_not_read_only(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly("image was opened read-only".into()));
        }
        Ok(())
    }

    /// The id of a snapshot by name, for the methods that take one.
    fn snap_id(header: &Header, name: &str) -> Result<u64> {
        validate::lookup_name("snapshot", name)?;
        header.snap_named(name).map(|s| s.id).ok_or_else(|| Error::NotFound(format!("snapshot {name:?}")))
    }

    /// `[off, off + len)` cut to `size`: `InvalidArgument` if it starts at or past the end or
    /// overflows. Returns the end.
    fn clip(off: u64, len: u64, size: u64) -> Result<u64> {
        if off >= size {
            return Err(invalid(format!("offset {off} is at or past the end ({size})")));
        }
        let end = off.checked_add(len).ok_or_else(|| invalid("offset + length overflows"))?;
        Ok(end.min(size))
    }
}

impl Image for EmbeddedImage {
    fn size(&self) -> Result<u64> {
        let header = self.shared.current()?;
        // librbd answers 0 for a selected snapshot that was removed meanwhile.
        Ok(header.view(*self.selected()).map_or(0, |v| v.size))
    }

    fn stat(&self) -> Result<ImageStat> {
        let (header, snap) = self.current()?;
        let size = header.view(snap)?.size;
        let obj_size = header.obj_size();
        Ok(ImageStat {
            size,
            obj_size,
            num_objs: size.div_ceil(obj_size),
            order: header.order,
            block_name_prefix: format!("rbd_data.{}", header.id),
            parent_pool: -1,
            parent_name: String::new(),
        })
    }

    fn features(&self) -> Result<u64> {
        Ok(self.current()?.0.features)
    }

    fn old_format(&self) -> Result<bool> {
        self.current()?;
        Ok(false)
    }

    fn stripe_unit(&self) -> Result<u64> {
        Ok(self.current()?.0.stripe_unit)
    }

    fn stripe_count(&self) -> Result<u64> {
        Ok(self.current()?.0.stripe_count)
    }

    fn read(&self, offset: u64, length: u64) -> Result<Vec<u8>> {
        if length == 0 {
            return Ok(Vec::new());
        }
        let _lock = self.shared.lock_image(false)?;
        let (header, snap) = self.current()?;
        let view = header.view(snap)?;
        let end = Self::clip(offset, length, view.size)?;
        let n = usize::try_from(end - offset).map_err(|_| invalid("read too large"))?;
        let mut buf = zeroed(n)
            .ok_or_else(|| Error::Other { errno: ENOMEM, message: format!("cannot allocate {n} bytes") })?;
        self.shared.read_view(&header, &view, offset, &mut buf)?;
        Ok(buf)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<u64> {
        self.check_writable()?;
        if data.is_empty() {
            return Ok(0);
        }
        let requested = data.len() as u64;
        let fits = |header: &Header| Self::clip(offset, requested, header.size).map(|end| end - offset);
        let in_place = {
            let _lock = self.shared.lock_image(false)?;
            let header = self.shared.current()?;
            if self.owns_write_lock(&header) {
                let n = fits(&header)?;
                self.shared.write_in_place(&header, offset, &data[..n as usize])?.then_some(n)
            } else {
                None
            }
        };
        let written = match in_place {
            Some(n) => n,
            None => self.shared.modify(false, |txn| {
                self.take_write_lock(&mut txn.header)?;
                let n = fits(&txn.header)?;
                txn.write(offset, &data[..n as usize])?;
                Ok(n)
            })?,
        };
        if written < requested {
            return Err(Error::IncompleteWrite { requested, written });
        }
        Ok(requested)
    }

    fn discard(&self, offset: u64, length: u64) -> Result<()> {
        self.check_writable()?;
        if length == 0 {
            return Ok(());
        }
        self.shared.modify(false, |txn| {
            self.take_write_lock(&mut txn.header)?;
            let end = Self::clip(offset, length, txn.header.size)?;
            txn.discard(offset, end)
        })
    }

    fn flush(&self) -> Result<()> {
        self.shared.flush()
    }

    fn invalidate_cache(&self) -> Result<()> {
        self.shared.invalidate();
        self.shared.current().map(drop)
    }

    fn resize(&self, size: u64) -> Result<()> {
        self.check_writable()?;
        self.shared.modify(true, |txn| txn.resize(size))
    }

    fn create_snap(&self, name: &str) -> Result<()> {
        validate::new_name("snapshot", name)?;
        // librbd snapshots the head even while a snapshot is selected.
        self.check_not_read_only()?;
        // What the head's files share with their origins is final for the snapshot: settle
        // it, so other processes' diffs can trust it.
        self.shared.objects.overlaps.settle(false)?;
        let id = self.next_snap_id()?;
        self.shared.modify(true, |txn| {
            let h = &mut txn.header;
            if h.snap_named(name).is_some() {
                return Err(Error::Exists(format!("snapshot {name:?}")));
            }
            // Ids only grow within an image, whatever another process took meanwhile.
            let id = id.max(h.next_snap_id);
            h.next_snap_id = id.checked_add(1).ok_or_else(|| Error::Io("snapshot ids exhausted".into()))?;
            let snap = Snap {
                id,
                name: name.to_string(),
                size: h.size,
                protected: false,
                created: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                objects: h.objects.clone(),
                parent: h.parent.clone(),
            };
            h.snaps.push(snap);
            Ok(())
        })
    }

    fn remove_snap(&self, name: &str) -> Result<()> {
        validate::lookup_name("snapshot", name)?;
        self.check_not_read_only()?;
        self.shared.modify(true, |txn| {
            let snap = txn.header.snap_named_mut(name)?;
            if snap.protected {
                return Err(Error::Busy(format!("snapshot {name:?} is protected")));
            }
            let id = snap.id;
            txn.header.snaps.retain(|s| s.id != id);
            Ok(())
        })?;
        // Like a Ceph pool, a removal consumes a snapshot id too.
        self.next_snap_id().map(drop)
    }

    fn rollback_to_snap(&self, name: &str) -> Result<()> {
        validate::lookup_name("snapshot", name)?;
        self.check_writable()?;
        self.shared.modify(true, |txn| txn.rollback(name))
    }

    fn protect_snap(&self, name: &str) -> Result<()> {
        validate::lookup_name("snapshot", name)?;
        self.check_not_read_only()?;
        self.shared.modify(true, |txn| {
            let snap = txn.header.snap_named_mut(name)?;
            if snap.protected {
                return Err(Error::Busy(format!("snapshot {name:?} is already protected")));
            }
            snap.protected = true;
            Ok(())
        })
    }

    fn unprotect_snap(&self, name: &str) -> Result<()> {
        validate::lookup_name("snapshot", name)?;
        self.check_not_read_only()?;
        let shared = &self.shared;
        shared.modify(true, |txn| {
            let snap = txn.header.snap_named_mut(name)?;
            if !snap.protected {
                return Err(invalid(format!("snapshot {name:?} is not protected")));
            }
            let id = snap.id;
            // Under the exclusive image lock: a clone in progress holds it shared.
            let clones = pool::children(&shared.store.root, &shared.pool, &shared.id, &[id])?;
            if !clones.is_empty() {
                return Err(Error::Busy(format!("snapshot {name:?} has {} clone(s)", clones.len())));
            }
            txn.header.snap_named_mut(name)?.protected = false;
            Ok(())
        })
    }

    fn is_protected_snap(&self, name: &str) -> Result<bool> {
        let header = self.shared.current()?;
        let id = Self::snap_id(&header, name)?;
        Ok(header.snap(id).is_some_and(|s| s.protected))
    }

    fn list_snaps(&self) -> Result<Vec<SnapInfo>> {
        let header = self.shared.current()?;
        Ok(header.snaps.iter().map(|s| SnapInfo { id: s.id, size: s.size, name: s.name.clone(), timestamp: s.created }).collect())
    }

    fn set_snap(&self, name: Option<&str>) -> Result<()> {
        // librbd treats an empty name like no name: the head.
        let id = match name {
            None | Some("") => None,
            Some(name) => Some(Self::snap_id(&*self.shared.current()?, name)?),
        };
        *self.selected() = id;
        Ok(())
    }

    fn diff_iterate(
        &self,
        offset: u64,
        length: u64,
        from_snap: Option<&str>,
        include_parent: bool,
        whole_object: bool,
        each: &mut dyn FnMut(Extent),
    ) -> Result<()> {
        let (header, snap) = self.current()?;
        let from = from_snap.map(|name| Self::snap_id(&header, name)).transpose()?;
        if let (Some(from), Some(to)) = (from, snap) {
            if from > to {
                return Err(invalid("from_snap is newer than the selected snapshot"));
            }
        }
        let end = header.view(snap)?;
        if length == 0 {
            return Ok(());
        }
        let stop = Self::clip(offset, length, end.size)?;
        let mode = if whole_object { Mode::WholeObject } else { Mode::Exact };
        diff(&self.shared, &header, snap, from, offset, stop, include_parent, mode, each)
    }

    fn list_children(&self) -> Result<Vec<Child>> {
        let (header, snap) = self.current()?;
        if header.features & features::LAYERING == 0 {
            return Ok(Vec::new());
        }
        // Like librbd: the selected snapshot's clones, or every snapshot's at the head.
        let ids: Vec<u64> = match snap {
            Some(id) => vec![id],
            None => header.snaps.iter().map(|s| s.id).collect(),
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        pool::children(&self.shared.store.root, &self.shared.pool, &self.shared.id, &ids)
    }

    fn parent_info(&self) -> Result<Option<ParentInfo>> {
        let (header, snap) = self.current()?;
        let Some(link) = header.view(snap)?.parent.cloned() else { return Ok(None) };
        let parent = self.shared.parent_image(&link)?;
        let snap = parent
            .current()?
            .snap(link.snap_id)
            .map(|s| s.name.clone())
            .ok_or_else(|| Error::NotFound(format!("parent snapshot id {}", link.snap_id)))?;
        let image = pool::name_of(&self.shared.store.root, &link.pool, &link.image_id)?;
        Ok(Some(ParentInfo { pool: link.pool, image, snap }))
    }

    fn flatten_with(&self, keep_going: &mut dyn FnMut(u64, u64) -> bool) -> Result<()> {
        self.check_not_read_only()?;
        self.shared.modify(true, |txn| txn.flatten(keep_going))
    }

    fn copy_with(&self, dest_pool: &str, dest_name: &str, keep_going: &mut dyn FnMut(u64, u64) -> bool) -> Result<()> {
        validate::new_name("image", dest_name)?;
        let dir = pool::existing(&self.shared.store.root, dest_pool)?;
        let mut txn = PoolTxn::begin(dir)?;
        txn.check_free(dest_name)?;
        let _lock = self.shared.lock_image(false)?;
        let (header, snap) = self.current()?;
        let view = header.view(snap)?;
        let new = txn.new_image()?;
        let mut copy = Header::new(new.id.clone(), view.size, header.shape());
        let objects = Objects::new(new.dir.objects());
        let os = header.obj_size();
        let mut wanted = BTreeSet::new();
        for (a, b) in self.shared.allocated(&header, &view, 0, view.size)? {
            wanted.extend((a / os)..=((b - 1) / os));
        }
        let mut buf = Vec::new();
        let total = wanted.len() as u64;
        for (done, objno) in wanted.into_iter().enumerate() {
            // Stopped: the new image was never committed, so it does not exist.
            if !keep_going(done as u64, total) {
                return Err(Error::cancelled(&format!("copy to {dest_pool}/{dest_name}")));
            }
            let start = objno * os;
            let len = obj_end(objno, os).min(view.size) - start;
            buf.clear();
            buf.resize(len as usize, 0);
            self.shared.read_view(&header, &view, start, &mut buf)?;
            if is_zero(&buf) {
                continue;
            }
            let gen = copy.alloc_gen()?;
            objects.create(objno, gen, &buf, false)?;
            copy.objects.insert(objno, gen);
        }
        objects.sync()?;
        new.commit(&mut txn, dest_name, &copy)
    }

    fn list_lockers(&self) -> Result<LockInfo> {
        Ok(self.shared.current()?.locks.info())
    }

    fn list_watchers(&self) -> Result<Vec<Watcher>> {
        // The image must still exist, as for librbd.
        self.shared.current()?;
        let root = &self.shared.store.root;
        super::watchers::list(&self.shared.dir, |client| super::blocklist::contains(root, client))
    }

    fn lock_exclusive(&self, cookie: &str) -> Result<()> {
        let me = &self.shared.store.me;
        self.shared.modify(true, |txn| txn.header.locks.lock(me, cookie, true, ""))
    }

    fn lock_shared(&self, cookie: &str, tag: &str) -> Result<()> {
        let me = &self.shared.store.me;
        self.shared.modify(true, |txn| txn.header.locks.lock(me, cookie, false, tag))
    }

    fn unlock(&self, cookie: &str) -> Result<()> {
        let me = &self.shared.store.me;
        self.shared.modify(true, |txn| txn.header.locks.unlock(&me.client, cookie))
    }

    /// As librbd (Pacific's `librbd::break_lock`): a client that holds no lock of the image
    /// is `NotFound`; one that holds any (the cookie asked for or another, the writer's lock
    /// included) is blocklisted first, and then the lock with that cookie is removed, or
    /// `NotFound`. A client that breaks its own lock blocklists itself, so the removal fails
    /// and the lock stays.
    fn break_lock(&self, client: &str, cookie: &str) -> Result<()> {
        locks::check_entity(client)?;
        if !self.shared.current()?.locks.holders.iter().any(|h| h.client == client) {
            return Err(Error::NotFound(format!("{client} holds no lock of the image")));
        }
        super::blocklist::add(&self.shared.store.root, client)?;
        self.shared.modify(true, |txn| txn.header.locks.unlock(client, cookie))
    }
}

/// A clone's header: the child of `snap` of the image `parent_id` in `parent_pool`.
pub(crate) fn clone_header(
    id: String,
    parent_pool: &str,
    parent_id: &str,
    snap: &Snap,
    shape: validate::Shape,
) -> Header {
    let mut header = Header::new(id, snap.size, shape);
    header.parent = Some(ParentLink {
        pool: parent_pool.to_string(),
        image_id: parent_id.to_string(),
        snap_id: snap.id,
        overlap: snap.size,
    });
    header
}
