//! Which parts of an image hold data, and which changed between two versions.
//!
//! Both answers come from the object maps alone, through `BTreeMap` range queries, so they
//! cost time in proportion to the objects that exist, never to the length asked about: a
//! sparse 1 PiB image answers at once. Diffs are object-granular: an object whose file
//! changed is reported whole (clipped to the range asked), which is what librbd's
//! `whole_object` mode does and is always a correct diff.

use std::collections::BTreeSet;

use super::header::{Header, ParentLink, View, ZERO_GEN};
use super::shared::{obj_end, ImageShared};
use crate::{Extent, Result};

/// Sorted, disjoint byte ranges.
pub(crate) type Ranges = Vec<(u64, u64)>;

impl ImageShared {
    /// The byte ranges of `view` inside `[start, end)` that may hold data: its own objects
    /// (object-aligned, clipped) and, where it has no object, what its parent chain serves
    /// inside the overlap.
    pub fn allocated(&self, header: &Header, view: &View<'_>, start: u64, end: u64) -> Result<Ranges> {
        let mut out = Ranges::new();
        if start >= end {
            return Ok(out);
        }
        let os = header.obj_size();
        for (&objno, &gen) in view.objects.range(start / os..=(end - 1) / os) {
            if gen != ZERO_GEN {
                out.push(((objno * os).max(start), obj_end(objno, os).min(end)));
            }
        }
        if let Some(link) = view.parent {
            for (a, b) in self.parent_allocated(link, start, end.min(link.overlap))? {
                // What the view's own objects (even empty ones) hide of the parent.
                let mut cur = a;
                for (&objno, _) in view.objects.range(a / os..=(b - 1) / os) {
                    let (os_start, os_end) = (objno * os, obj_end(objno, os));
                    if cur < os_start {
                        out.push((cur, os_start.min(b)));
                    }
                    cur = cur.max(os_end);
                    if cur >= b {
                        break;
                    }
                }
                if cur < b {
                    out.push((cur, b));
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// [`ImageShared::allocated`] of a clone's parent snapshot inside `[start, end)`.
    pub fn parent_allocated(&self, link: &ParentLink, start: u64, end: u64) -> Result<Ranges> {
        if start >= end {
            return Ok(Ranges::new());
        }
        let parent = self.parent_image(link)?;
        let header = parent.current()?;
        let view = header.view(Some(link.snap_id))?;
        let end = end.min(view.size);
        parent.allocated(&header, &view, start, end)
    }
}

/// What one object of a version reads as, as far as a diff cares.
#[derive(Debug, PartialEq, Eq)]
enum State<'a> {
    /// Zeroes: no object, an empty object, or nothing from the parent.
    Zero,
    /// Its own object file.
    Own(u64),
    /// The parent's data up to `end` (object end, overlap and range end, whichever first).
    Parent(&'a ParentLink, u64),
}

impl State<'_> {
    fn same(&self, other: &State<'_>) -> bool {
        match (self, other) {
            (State::Parent(a, x), State::Parent(b, y)) => a.same_snapshot(b) && x == y,
            _ => self == other,
        }
    }
}

/// One side of a diff: a version and the parent ranges it can see.
struct Side<'a> {
    view: View<'a>,
    parent: Ranges,
}

impl<'a> Side<'a> {
    fn new(shared: &ImageShared, view: View<'a>, off: u64, stop: u64, include_parent: bool) -> Result<Self> {
        let parent = match view.parent {
            Some(link) if include_parent => shared.parent_allocated(link, off, stop.min(link.overlap))?,
            _ => Ranges::new(),
        };
        Ok(Side { view, parent })
    }

    fn state(&self, objno: u64, os: u64, off: u64, stop: u64) -> State<'a> {
        match self.view.objects.get(&objno) {
            Some(&ZERO_GEN) => State::Zero,
            Some(&gen) => State::Own(gen),
            None => {
                let Some(link) = self.view.parent else { return State::Zero };
                let start = (objno * os).max(off);
                let end = obj_end(objno, os).min(link.overlap).min(stop);
                // The first range that ends after `start`; ranges are sorted and disjoint.
                let i = self.parent.partition_point(|r| r.1 <= start);
                match self.parent.get(i) {
                    Some(r) if start < end && r.0 < end => State::Parent(link, end),
                    _ => State::Zero,
                }
            }
        }
    }
}

/// Report, in increasing offset order, the extents of `[off, stop)` (already cut to the end
/// version's size) where `end` differs from `from` (`None`: all zeroes).
#[allow(clippy::too_many_arguments)]
pub(crate) fn diff(
    shared: &ImageShared,
    header: &Header,
    end: View<'_>,
    from: Option<View<'_>>,
    off: u64,
    stop: u64,
    include_parent: bool,
    each: &mut dyn FnMut(Extent),
) -> Result<()> {
    if off >= stop {
        return Ok(());
    }
    let os = header.obj_size();
    let (first, last) = (off / os, (stop - 1) / os);
    let end = Side::new(shared, end, off, stop, include_parent)?;
    let from = from.map(|v| Side::new(shared, v, off, stop, include_parent)).transpose()?;

    let mut candidates: BTreeSet<u64> = BTreeSet::new();
    for side in std::iter::once(&end).chain(from.as_ref()) {
        candidates.extend(side.view.objects.range(first..=last).map(|(k, _)| *k));
        for &(a, b) in &side.parent {
            candidates.extend((a / os)..=((b - 1) / os));
        }
    }
    for objno in candidates {
        let now = end.state(objno, os, off, stop);
        let then = from.as_ref().map_or(State::Zero, |f| f.state(objno, os, off, stop));
        if now.same(&then) {
            continue;
        }
        let start = (objno * os).max(off);
        let finish = obj_end(objno, os).min(stop);
        if start < finish {
            each(Extent { offset: start, length: finish - start, exists: now != State::Zero });
        }
    }
    Ok(())
}
