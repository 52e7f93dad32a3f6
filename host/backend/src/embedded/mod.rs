//! The embedded backend: a persistent RBD emulation in a local directory.
//!
//! It answers like librbd (Pacific, as python-rbd shows it) for everything the [`Backend`]
//! and [`Image`] traits expose: the same call with the same mistake gets the same error.
//! Images are format-2-like: thin-provisioned objects of `2^order` bytes, copy-on-write
//! snapshots, clones of protected snapshots, advisory locks, and watchers (an open image
//! blocks its removal, in this process or any other).
//!
//! The store survives a kill at any point (each change has one atomic commit point) and
//! may be used by several processes at once (`flock`). `docs/embedded-store.md` describes
//! the layout and what a kill at each step leaves behind.
//!
//! Modules, one concept each:
//! - `validate`: name and option rules;
//! - `store`: the layout, atomic files, file locks, the store's own metadata;
//! - `pool`: pool directories (name -> id), the commit point of image lifetimes;
//! - `header`: an image's metadata and object maps;
//! - `objects`: an image's object files;
//! - `shared`: the per-process state of an image and the transaction that changes it;
//! - `image`: the `Image` trait and its argument rules;
//! - `diff`: allocated ranges and diffs from the object maps;
//! - `locks`: advisory locks (`cls_lock`'s rules) and the exclusive-lock feature's lock;
//! - `blocklist`: clients whose lock was broken, whose calls fail from then on;
//! - `watchers`: who has an image open for writing, and lives.

mod blocklist;
mod diff;
mod header;
mod image;
mod leases;
mod locks;
mod objects;
mod overlap;
mod pool;
mod shared;
mod store;
mod validate;
mod watchers;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

pub use image::EmbeddedImage;
pub use leases::FileLeases;

use locks::Identity;
use pool::PoolTxn;
use shared::Store;
use store::{FileLock, Root};

use crate::{Backend, CloneOptions, CreateOptions, Error, Image, Result, Version};

/// How long `remove` waits for an image that looks open to close (see
/// `FileLock::try_exclusive_within`); an image really open answers busy after this.
const OPEN_CHECK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

/// A client of an embedded store. Cheap to share; every [`EmbeddedBackend::open`] is a new
/// client with its own identity (`client.<n>`) for advisory locks.
#[derive(Debug, Clone)]
pub struct EmbeddedBackend {
    store: Arc<Store>,
}

impl EmbeddedBackend {
    /// Open the store at `root`, creating it (with a pool named `rbd`) if it does not exist.
    pub fn open(root: &Path) -> Result<EmbeddedBackend> {
        let root = Root::new(root);
        let n = store::open_store(&root)?;
        let me = Identity { client: format!("client.{n}"), address: format!("embedded:{}/{n}", std::process::id()) };
        Ok(EmbeddedBackend { store: Arc::new(Store::new(root, me)) })
    }

    /// Create a pool; `Exists` if there is one of that name.
    pub fn create_pool(&self, name: &str) -> Result<()> {
        validate::new_pool_name(name)?;
        let root = &self.store.root;
        let _lock = store::lock_store(root)?;
        if root.pool(name).directory().exists() {
            return Err(Error::Exists(format!("pool {name:?}")));
        }
        store::make_pool(root, name)
    }

    /// Leases of this store (its `leases/` directory), held as `holder`: for processes of
    /// this machine that share the store, as `rbd-wasm serve`'s are.
    pub fn leases(&self, holder: &str) -> Result<FileLeases> {
        FileLeases::open(&self.store.root.path().join("leases"), holder)
    }

    /// The store's root, for a call of this client: `ConnectionShutdown` once it is
    /// blocklisted (`blocklist`), as every call of a blocklisted librados client answers.
    fn root(&self) -> Result<&Root> {
        blocklist::check(&self.store.root, &self.store.me.client)?;
        Ok(&self.store.root)
    }
}

impl Backend for EmbeddedBackend {
    fn local_dir(&self) -> Option<std::path::PathBuf> {
        Some(self.store.root.path().canonicalize().unwrap_or_else(|_| self.store.root.path().to_owned()))
    }

    fn version(&self) -> Version {
        // librbd of Ceph Pacific, whose behaviour this backend follows.
        Version { major: 1, minor: 16, extra: 0 }
    }

    fn client_name(&self) -> String {
        self.store.me.client.clone()
    }

    fn list_pools(&self) -> Result<Vec<String>> {
        pool::list_pools(self.root()?)
    }

    fn open_pool(&self, pool: &str) -> Result<()> {
        pool::existing(self.root()?, pool).map(drop)
    }

    fn create(&self, pool: &str, name: &str, size: u64, options: &CreateOptions) -> Result<()> {
        let dir = pool::existing(self.root()?, pool)?;
        validate::new_name("image", name)?;
        validate::old_format(options)?;
        let mut txn = PoolTxn::begin(dir)?;
        txn.check_free(name)?;
        let shape = validate::create_shape(options)?;
        let new = txn.new_image()?;
        let header = header::Header::new(new.id.clone(), size, shape);
        new.commit(&mut txn, name, &header)
    }

    fn clone_image(
        &self,
        parent_pool: &str,
        parent: &str,
        snap: &str,
        child_pool: &str,
        child: &str,
        options: &CloneOptions,
    ) -> Result<()> {
        validate::clone_features(options)?;
        let parent_dir = pool::existing(self.root()?, parent_pool)?;
        let parent_id = pool::lookup(&parent_dir, parent)?;
        let parent_shared = self.store.image(parent_pool, &parent_id)?;
        let child_dir = pool::existing(self.root()?, child_pool)?;
        validate::new_name("image", child)?;
        if snap.is_empty() {
            return Err(Error::InvalidArgument("the image to clone must be a snapshot".into()));
        }
        validate::lookup_name("snapshot", snap)?;
        // Pool lock first, then the parent's image lock (shared): an unprotect, which needs
        // it exclusively, cannot miss this clone.
        let mut txn = PoolTxn::begin(child_dir)?;
        let _parent_lock = parent_shared.lock_image(false)?;
        let parent_header = parent_shared.current()?;
        let snapshot = parent_header
            .snap_named(snap)
            .ok_or_else(|| Error::NotFound(format!("snapshot {parent}@{snap}")))?;
        if parent_header.features & crate::features::LAYERING == 0 {
            return Err(Error::NotSupported(format!("{parent} does not have the layering feature")));
        }
        if !snapshot.protected {
            return Err(Error::InvalidArgument(format!("snapshot {parent}@{snap} is not protected")));
        }
        let shape = validate::clone_shape(options, parent_header.shape())?;
        txn.check_free(child)?;
        let new = txn.new_image()?;
        let header = image::clone_header(new.id.clone(), parent_pool, &parent_id, snapshot, shape);
        new.commit(&mut txn, child, &header)
    }

    fn list(&self, pool: &str) -> Result<Vec<String>> {
        let dir = pool::existing(self.root()?, pool)?;
        Ok(pool::read_directory(&dir)?.images.into_keys().collect())
    }

    fn remove(&self, pool: &str, name: &str) -> Result<()> {
        let dir = pool::existing(self.root()?, pool)?;
        validate::lookup_name("image", name)?;
        let mut txn = PoolTxn::begin(dir)?;
        let id = txn
            .directory
            .images
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("image {name:?}")))?;
        let image_dir = txn.dir.image(&id);
        let _image_lock = FileLock::exclusive(&image_dir.lock())?;
        let has_snaps = store::read_json::<header::Header>(&image_dir.header())?
            .is_some_and(|(h, _)| !h.snaps.is_empty());
        if has_snaps {
            return Err(Error::HasSnapshots(format!("image {name:?}")));
        }
        let Some(_watch) = FileLock::try_exclusive_within(&image_dir.watch(), OPEN_CHECK_PATIENCE)? else {
            return Err(Error::Busy(format!("image {name:?} is open")));
        };
        txn.directory.images.remove(name);
        txn.commit()?;
        self.store.forget(pool, &id);
        if let Err(e) = std::fs::remove_dir_all(&image_dir.0) {
            // Collected by the next change to this pool.
            tracing::warn!(dir = %image_dir.0.display(), error = %e, "cannot delete removed image");
        }
        txn.sync()
    }

    fn rename(&self, pool: &str, src: &str, dest: &str) -> Result<()> {
        let dir = pool::existing(self.root()?, pool)?;
        validate::lookup_name("image", src)?;
        validate::new_name("image", dest)?;
        let mut txn = PoolTxn::begin(dir)?;
        let id = txn
            .directory
            .images
            .get(src)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("image {src:?}")))?;
        txn.check_free(dest)?;
        txn.directory.images.remove(src);
        txn.directory.images.insert(dest.to_string(), id);
        txn.commit()?;
        txn.sync()
    }

    fn open(&self, pool: &str, name: &str, snapshot: Option<&str>, read_only: bool) -> Result<Box<dyn Image>> {
        let dir = pool::existing(self.root()?, pool)?;
        let id = pool::lookup(&dir, name)?;
        let shared = self.store.image(pool, &id)?;
        // Like librbd, only a writable open registers a watch (and so blocks remove).
        let watch = if read_only {
            None
        } else {
            let watch = FileLock::open(&shared.dir.watch())?;
            watch.lock_shared()?;
            // A remove may have committed between the lookup and the watch: look again.
            if pool::lookup(&dir, name)? != id {
                return Err(Error::NotFound(format!("image {name:?}")));
            }
            Some((watch, watchers::register(&shared.dir, &self.store.me)?))
        };
        let header = shared.current()?;
        let snap = match snapshot {
            None | Some("") => None,
            Some(s) => {
                validate::lookup_name("snapshot", s)?;
                Some(header.snap_named(s).ok_or_else(|| Error::NotFound(format!("snapshot {name}@{s}")))?.id)
            }
        };
        Ok(Box::new(EmbeddedImage::new(shared, snap, read_only, watch)))
    }
}
