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

    /// How many object files an image has (their overlap files aside).
    pub fn object_files(&self, name: &str) -> usize {
        std::fs::read_dir(self.image_dir("rbd", name).join("objects"))
            .expect("objects")
            .filter(|e| !e.as_ref().expect("entry").file_name().to_string_lossy().ends_with(".overlap"))
            .count()
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

/// The byte ranges `discard(off, len)` zeroes in an image of `size` bytes with objects of
/// `obj_size` bytes, as librbd does it: the range is cut at the end of the image; whole
/// objects are dropped; of a partial object (the last object of an image whose size is not
/// a multiple of the object size is never whole) only the part aligned inward to the discard
/// granularity, `min(64 KiB, obj_size)` counted from the object's start, is zeroed. Adjacent
/// ranges are merged.
pub(super) fn discarded(off: u64, len: u64, size: u64, obj_size: u64) -> Vec<(u64, u64)> {
    let g = obj_size.min(64 * KIB);
    let end = off.saturating_add(len).min(size);
    if off >= end {
        return Vec::new();
    }
    // What is zeroed of `[a, b)`, inside the object that starts at `start`.
    let part = |start: u64, a: u64, b: u64| {
        if a == start && b - start == obj_size {
            (a, b)
        } else {
            (start + (a - start).div_ceil(g) * g, start + (b - start) / g * g)
        }
    };
    let first = off / obj_size * obj_size;
    let last = (end - 1) / obj_size * obj_size;
    let pieces = if first == last {
        vec![part(first, off, end)]
    } else {
        vec![part(first, off, first + obj_size), (first + obj_size, last), part(last, last, end)]
    };
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, b) in pieces.into_iter().filter(|(a, b)| a < b) {
        match out.last_mut() {
            Some(prev) if prev.1 == a => prev.1 = b,
            _ => out.push((a, b)),
        }
    }
    out
}

/// Apply `discard(off, len)` to a model of an image's bytes (see [`discarded`]).
pub(super) fn discard_model(model: &mut [u8], off: u64, len: u64, obj_size: u64) {
    for (a, b) in discarded(off, len, model.len() as u64, obj_size) {
        model[a as usize..b as usize].fill(0);
    }
}
