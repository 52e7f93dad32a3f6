//! Pools and their directories: the name -> image id map, and the operations that change it.
//!
//! A pool is a directory. Its `directory.json` is the only place an image's name lives, so
//! replacing it is the commit point of create, clone, copy, rename and remove: an image
//! directory is built completely before its name appears, and its name disappears before
//! its directory is deleted. Image directories the map does not name are leftovers of an
//! interrupted operation; they are collected under the pool lock, which every directory
//! change holds from start to finish ([`PoolTxn`]).
//!
//! Clones are found by reading every image header of every pool ([`children`]) rather than
//! from a stored list, so there is no second record to keep consistent after a crash.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io;

use serde::{Deserialize, Serialize};

use super::header::{Header, ParentLink};
use super::store::{collect, create_empty, is_temp_name, read_json, sync_dir, to_json, write_atomic, FileLock, ImageDir, PoolDir, Root};
use super::validate;
use crate::{Child, Error, Result};

/// `directory.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Directory {
    pub images: BTreeMap<String, String>,
}

/// The directory of an existing pool; `NotFound` if there is none.
pub(crate) fn existing(root: &Root, pool: &str) -> Result<PoolDir> {
    validate::lookup_pool_name(pool)?;
    let dir = root.pool(pool);
    if !dir.directory().exists() {
        return Err(Error::NotFound(format!("pool {pool:?}")));
    }
    Ok(dir)
}

/// The names of the pools, sorted.
pub(crate) fn list_pools(root: &Root) -> Result<Vec<String>> {
    let entries = match fs::read_dir(root.pools()) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut pools = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if validate::lookup_pool_name(&name).is_ok() && root.pool(&name).directory().exists() {
            pools.push(name);
        }
    }
    pools.sort();
    Ok(pools)
}

/// Read a pool's directory.
pub(crate) fn read_directory(dir: &PoolDir) -> Result<Directory> {
    read_json::<Directory>(&dir.directory())?
        .map(|(d, _)| d)
        .ok_or_else(|| Error::NotFound(format!("pool at {} is gone", dir.0.display())))
}

/// The id of the image called `name`.
pub(crate) fn lookup(dir: &PoolDir, name: &str) -> Result<String> {
    validate::lookup_name("image", name)?;
    read_directory(dir)?
        .images
        .remove(name)
        .ok_or_else(|| Error::NotFound(format!("image {name:?}")))
}

/// The name of image `id` in `pool`.
pub(crate) fn name_of(root: &Root, pool: &str, id: &str) -> Result<String> {
    let dir = existing(root, pool)?;
    read_directory(&dir)?
        .images
        .into_iter()
        .find(|(_, i)| i == id)
        .map(|(name, _)| name)
        .ok_or_else(|| Error::NotFound(format!("image id {id} in pool {pool:?}")))
}

/// Just the parent links of a header, to scan many headers cheaply.
#[derive(Deserialize)]
struct Links {
    parent: Option<ParentLink>,
    snaps: Vec<SnapLinks>,
}

#[derive(Deserialize)]
struct SnapLinks {
    parent: Option<ParentLink>,
}

/// The clones, in any pool, whose head or snapshots link to one of `snap_ids` of image
/// `image_id` in `pool`; sorted by pool and name.
pub(crate) fn children(root: &Root, pool: &str, image_id: &str, snap_ids: &[u64]) -> Result<Vec<Child>> {
    let mut found = BTreeSet::new();
    for p in list_pools(root)? {
        let dir = root.pool(&p);
        let directory = match read_directory(&dir) {
            Ok(d) => d,
            Err(Error::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        for (name, id) in directory.images {
            let Some((links, _)) = read_json::<Links>(&dir.image(&id).header())? else { continue };
            let mut all = links.parent.iter().chain(links.snaps.iter().filter_map(|s| s.parent.as_ref()));
            if all.any(|l| l.pool == pool && l.image_id == image_id && snap_ids.contains(&l.snap_id)) {
                found.insert(Child { pool: p.clone(), image: name });
            }
        }
    }
    Ok(found.into_iter().collect())
}

/// A change to a pool's directory, under the pool lock from start to finish.
pub(crate) struct PoolTxn {
    pub dir: PoolDir,
    pub directory: Directory,
    _lock: FileLock,
}

impl PoolTxn {
    /// Lock the pool, read its directory, and collect leftovers of interrupted changes.
    pub fn begin(dir: PoolDir) -> Result<PoolTxn> {
        let lock = FileLock::exclusive(&dir.lock())?;
        let directory = read_directory(&dir)?;
        let named: HashSet<&str> = directory.images.values().map(String::as_str).collect();
        collect(&dir.images(), |id| !named.contains(id));
        collect(&dir.0, is_temp_name);
        Ok(PoolTxn { dir, directory, _lock: lock })
    }

    /// `Exists` if `name` is taken.
    pub fn check_free(&self, name: &str) -> Result<()> {
        if self.directory.images.contains_key(name) {
            return Err(Error::Exists(format!("image {name:?}")));
        }
        Ok(())
    }

    /// Make the directory of a new image with a fresh random id. It is not part of the pool
    /// until [`NewImage::commit`]; dropped before that, it is deleted.
    pub fn new_image(&self) -> Result<NewImage> {
        fs::create_dir_all(self.dir.images())?;
        let (id, dir) = loop {
            let id = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
            let dir = self.dir.image(&id);
            match fs::create_dir(&dir.0) {
                Ok(()) => break (id, dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let image = NewImage { id, dir, kept: false };
        fs::create_dir(image.dir.objects())?;
        create_empty(&image.dir.lock())?;
        create_empty(&image.dir.watch())?;
        Ok(image)
    }

    /// Write the directory: the commit point. An error means nothing changed.
    pub fn commit(&self) -> Result<()> {
        write_atomic(&self.dir.directory(), &to_json(&self.directory)?, false)?;
        Ok(())
    }

    /// Make the committed directory durable.
    pub fn sync(&self) -> Result<()> {
        sync_dir(&self.dir.0)
    }
}

/// An image directory being built; deleted on drop unless committed.
pub(crate) struct NewImage {
    pub id: String,
    pub dir: ImageDir,
    kept: bool,
}

impl NewImage {
    /// Write the header, then name the image in the pool directory (the commit point).
    pub fn commit(mut self, txn: &mut PoolTxn, name: &str, header: &Header) -> Result<()> {
        write_atomic(&self.dir.header(), &to_json(header)?, false)?;
        sync_dir(&self.dir.objects())?;
        sync_dir(&self.dir.0)?;
        txn.directory.images.insert(name.to_string(), self.id.clone());
        if let Err(e) = txn.commit() {
            txn.directory.images.remove(name);
            return Err(e);
        }
        self.kept = true;
        txn.sync()
    }
}

impl Drop for NewImage {
    fn drop(&mut self) {
        if !self.kept {
            if let Err(e) = fs::remove_dir_all(&self.dir.0) {
                tracing::warn!(dir = %self.dir.0.display(), error = %e, "cannot delete unfinished image");
            }
        }
    }
}

/// The next snapshot id of the pool: like a Ceph pool's self-managed snapshot sequence,
/// shared by all its images and consumed by snapshot removals too, so the ids of one
/// pool's snapshots are unique and increasing. At least `at_least` (the image's own
/// counter, from stores made before the sequence was). Taken under the sequence file's own
/// lock, never while an image lock is held by the caller (see the locking order in
/// `shared.rs`); durable before it is used.
pub(crate) fn next_snap_id(dir: &PoolDir, at_least: u64) -> Result<u64> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let path = dir.snap_seq();
    let mut file = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
    file.lock()?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let last: u64 = text.trim().parse().unwrap_or(0);
    let id = last
        .checked_add(1)
        .ok_or_else(|| Error::Io("snapshot ids exhausted".into()))?
        .max(at_least);
    file.seek(SeekFrom::Start(0))?;
    file.set_len(0)?;
    file.write_all(id.to_string().as_bytes())?;
    file.sync_data()?;
    file.unlock()?;
    Ok(id)
}
