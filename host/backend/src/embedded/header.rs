//! The image header: everything about an image except its data, in one JSON file.
//!
//! One file per image means one atomic rename commits any metadata change, however many
//! parts it touches (a snapshot freezes the object map and bumps the id counter at once;
//! a copy-on-write allocates an object and repoints the map at once). The object maps say
//! which object files hold each version's data; see [`ObjectMap`].

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::locks::Locks;
use super::validate::Shape;
use crate::{Error, Result};

/// Object number -> generation of the object file that holds its data.
///
/// An object that is absent reads as zeroes, or falls through to the parent inside a
/// clone's overlap. Generation [`ZERO_GEN`] is an object that exists but is all zeroes and
/// has no file: a whole-object discard in a clone, which must hide the parent's data.
/// Generations are unique within an image (one counter), so `(objno, gen)` names one file
/// for its whole life, and a pair referenced by any snapshot is frozen: writing to it first
/// copies it to a new generation.
pub(crate) type ObjectMap = BTreeMap<u64, u64>;

/// See [`ObjectMap`].
pub(crate) const ZERO_GEN: u64 = 0;

/// A clone's link to the snapshot it was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ParentLink {
    pub pool: String,
    pub image_id: String,
    pub snap_id: u64,
    /// Bytes `[0, overlap)` fall through to the parent where the child has no object.
    pub overlap: u64,
}

impl ParentLink {
    /// Whether two links name the same parent snapshot (overlaps aside).
    pub fn same_snapshot(&self, other: &ParentLink) -> bool {
        self.pool == other.pool && self.image_id == other.image_id && self.snap_id == other.snap_id
    }
}

/// One snapshot: the image as it was, frozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Snap {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub protected: bool,
    /// When it was taken, in seconds since the Unix epoch (0 in stores made before this
    /// field was).
    #[serde(default)]
    pub created: u64,
    pub objects: ObjectMap,
    pub parent: Option<ParentLink>,
}

/// `header.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Header {
    pub id: String,
    pub size: u64,
    pub order: u8,
    pub features: u64,
    pub stripe_unit: u64,
    pub stripe_count: u64,
    /// The head's objects.
    pub objects: ObjectMap,
    /// The head's parent, for a clone not yet flattened.
    pub parent: Option<ParentLink>,
    /// Oldest (lowest id) first.
    pub snaps: Vec<Snap>,
    pub next_snap_id: u64,
    pub next_gen: u64,
    #[serde(default)]
    pub locks: Locks,
}

/// One version of an image: the head or a snapshot. Reads, diffs and copies take a view.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    pub size: u64,
    pub objects: &'a ObjectMap,
    pub parent: Option<&'a ParentLink>,
}

impl Header {
    /// A new, empty image.
    pub fn new(id: String, size: u64, shape: Shape) -> Header {
        Header {
            id,
            size,
            order: shape.order,
            features: shape.features,
            stripe_unit: shape.stripe_unit,
            stripe_count: shape.stripe_count,
            objects: ObjectMap::new(),
            parent: None,
            snaps: Vec::new(),
            next_snap_id: 1,
            next_gen: 1,
            locks: Locks::default(),
        }
    }

    pub fn shape(&self) -> Shape {
        Shape {
            order: self.order,
            features: self.features,
            stripe_unit: self.stripe_unit,
            stripe_count: self.stripe_count,
        }
    }

    pub fn obj_size(&self) -> u64 {
        1u64 << self.order
    }

    /// The head (`None`) or a snapshot by id; a snapshot that is gone is `NotFound`.
    pub fn view(&self, snap_id: Option<u64>) -> Result<View<'_>> {
        match snap_id {
            None => Ok(View {
                size: self.size,
                objects: &self.objects,
                parent: self.parent.as_ref(),
            }),
            Some(id) => {
                let snap = self.snap(id).ok_or_else(|| Error::NotFound(format!("snapshot id {id}")))?;
                Ok(View {
                    size: snap.size,
                    objects: &snap.objects,
                    parent: snap.parent.as_ref(),
                })
            }
        }
    }

    pub fn snap(&self, id: u64) -> Option<&Snap> {
        self.snaps.iter().find(|s| s.id == id)
    }

    pub fn snap_named(&self, name: &str) -> Option<&Snap> {
        self.snaps.iter().find(|s| s.name == name)
    }

    /// The snapshot called `name`, mutable; `NotFound` if there is none.
    pub fn snap_named_mut(&mut self, name: &str) -> Result<&mut Snap> {
        self.snaps
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::NotFound(format!("snapshot {name:?}")))
    }

    /// Whether a snapshot references this object file, so it must not change in place.
    pub fn is_frozen(&self, objno: u64, gen: u64) -> bool {
        self.snaps.iter().any(|s| s.objects.get(&objno) == Some(&gen))
    }

    /// Every object file the header references.
    pub fn referenced(&self) -> HashSet<(u64, u64)> {
        let mut set = HashSet::new();
        for map in std::iter::once(&self.objects).chain(self.snaps.iter().map(|s| &s.objects)) {
            set.extend(map.iter().filter(|(_, g)| **g != ZERO_GEN).map(|(o, g)| (*o, *g)));
        }
        set
    }

    /// A fresh generation number.
    pub fn alloc_gen(&mut self) -> Result<u64> {
        let gen = self.next_gen;
        self.next_gen = gen.checked_add(1).ok_or_else(|| Error::Io("generation counter exhausted".into()))?;
        Ok(gen)
    }
}
