//! Tests of the embedded backend, one file per area. They drive it through the public
//! traits, like the conformance suite, and look at the store's files only where the
//! behaviour is about them (sparseness, garbage collection, crash leftovers).

mod clones;
mod crash;
mod diff;
mod io;
mod locks;
mod pools;
mod snapshots;

use std::path::PathBuf;

use super::EmbeddedBackend;
use crate::{Backend, CreateOptions, Image, Result};

pub(super) const KIB: u64 = 1024;
pub(super) const MIB: u64 = 1024 * KIB;

/// A store in a temporary directory and a client of it.
pub(super) struct Fx {
    pub dir: tempfile::TempDir,
    pub be: EmbeddedBackend,
}

impl Fx {
    pub fn new() -> Fx {
        let dir = tempfile::tempdir().expect("tempdir");
        let be = EmbeddedBackend::open(dir.path()).expect("open store");
        Fx { dir, be }
    }

    /// Another client of the same store (as another process would be).
    pub fn client(&self) -> EmbeddedBackend {
        EmbeddedBackend::open(self.dir.path()).expect("reopen store")
    }

    /// Create an image with objects of `2^order` bytes and open it.
    pub fn image(&self, name: &str, size: u64, order: u8) -> Box<dyn Image> {
        self.be.create("rbd", name, size, &order_opts(order)).expect("create");
        self.be.open("rbd", name, None, false).expect("open")
    }

    /// `ROOT/pools/<pool>`.
    pub fn pool_dir(&self, pool: &str) -> PathBuf {
        self.dir.path().join("pools").join(pool)
    }

    /// The directory of an image, found through the pool directory.
    pub fn image_dir(&self, pool: &str, name: &str) -> PathBuf {
        let dir = std::fs::read(self.pool_dir(pool).join("directory.json")).expect("directory");
        let dir: serde_json::Value = serde_json::from_slice(&dir).expect("json");
        let id = dir["images"][name].as_str().expect("image id");
        self.pool_dir(pool).join("images").join(id)
    }

    /// How many object files an image has.
    pub fn object_files(&self, name: &str) -> usize {
        std::fs::read_dir(self.image_dir("rbd", name).join("objects")).expect("objects").count()
    }
}

pub(super) fn order_opts(order: u8) -> CreateOptions {
    CreateOptions { order: Some(order), ..Default::default() }
}

/// Deterministic bytes that differ with `seed` and with the position.
pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

/// The error kind of a result, or "ok".
pub(super) fn kind<T>(r: Result<T>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    }
}

/// The whole content of the selected version.
pub(super) fn read_all(img: &dyn Image) -> Vec<u8> {
    let size = img.size().expect("size");
    if size == 0 {
        return Vec::new();
    }
    img.read(0, size).expect("read all")
}
