//! Which parts of an image hold data, and which changed between two versions.
//!
//! Both answers come from the object maps, through `BTreeMap` range queries, so they cost
//! time in proportion to the objects that exist, never to the length asked about: a sparse
//! 1 PiB image answers at once. A diff comes in librbd's two modes:
//! - whole-object (librbd's `whole_object` with fast-diff): an object whose file changed is
//!   reported whole, clipped to the range asked;
//! - exact: what RADOS and librbd report, byte for byte. An object's versions (the
//!   snapshots' and the head's object files, oldest first) are walked as RADOS walks an
//!   object's clones (`calc_snap_set_diff`): between two versions, everything up to the
//!   longer one's end except what the newer still shares with the older (its overlap, see
//!   [`super::overlap`]); a version that did not exist contributes its whole length. Of the
//!   result, what lies past the end version's length, if it shrank, is reported as zeroes
//!   (`exists: false`), as is all of an object that the end version lacks; the rest as data
//!   (`ObjectListSnapsRequest`). From the beginning (no `from` snapshot) an object of a
//!   clone that reports nothing reports what the parent snapshot has there instead.

use std::collections::{BTreeSet, HashMap};

use super::header::{Header, ParentLink, View, ZERO_GEN};
use super::overlap::{complement_in, cut, intersect, nonempty, union, Ranges};
use super::shared::{obj_end, ImageShared, FROM_PARENT};
use crate::{Extent, Result};

/// librbd's two diff modes (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    WholeObject,
    Exact,
}

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
/// version's size) where version `end_id` (`None`: the head) differs from `from_id`
/// (`None`: the image before anything was written).
#[allow(clippy::too_many_arguments)]
pub(crate) fn diff(
    shared: &ImageShared,
    header: &Header,
    end_id: Option<u64>,
    from_id: Option<u64>,
    off: u64,
    stop: u64,
    include_parent: bool,
    mode: Mode,
    each: &mut dyn FnMut(Extent),
) -> Result<()> {
    if off >= stop {
        return Ok(());
    }
    match mode {
        Mode::Exact => Exact::new(shared, header, end_id, from_id)?.run(off, stop, include_parent, each),
        Mode::WholeObject => {
            let end = header.view(end_id)?;
            let from = from_id.map(|id| header.view(Some(id))).transpose()?;
            whole_objects(shared, header, end, from, off, stop, include_parent, each)
        }
    }
}

/// The whole-object mode of [`diff`].
#[allow(clippy::too_many_arguments)]
fn whole_objects(
    shared: &ImageShared,
    header: &Header,
    end: View<'_>,
    from: Option<View<'_>>,
    off: u64,
    stop: u64,
    include_parent: bool,
    each: &mut dyn FnMut(Extent),
) -> Result<()> {
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

/// The exact mode of [`diff`]: the versions from `from` to `end`, oldest first.
struct Exact<'a> {
    shared: &'a ImageShared,
    /// `versions[0]` is the `from` version, `None` for "before anything was written".
    versions: Vec<Option<View<'a>>>,
    /// Every version of the image (the snapshots and the head), for copy-ups.
    all: Vec<View<'a>>,
    os: u64,
}

/// One version of one object, as RADOS would hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Absent,
    /// Its own object file (or [`ZERO_GEN`]: an empty object).
    Own(u64),
    /// Served by the parent snapshot `snap` of a clone: the first `len` bytes.
    Parent { snap: u64, len: u64 },
}

impl<'a> Exact<'a> {
    fn new(shared: &'a ImageShared, header: &'a Header, end_id: Option<u64>, from_id: Option<u64>) -> Result<Self> {
        let mut versions = vec![from_id.map(|id| header.view(Some(id))).transpose()?];
        let after = from_id.unwrap_or(0);
        let mut all = Vec::with_capacity(header.snaps.len() + 1);
        for snap in &header.snaps {
            let view = header.view(Some(snap.id))?;
            if snap.id > after && end_id.is_none_or(|e| snap.id <= e) {
                versions.push(Some(view));
            }
            all.push(view);
        }
        let head = header.view(None)?;
        if end_id.is_none() {
            versions.push(Some(head));
        }
        all.push(head);
        Ok(Exact { shared, versions, all, os: header.obj_size() })
    }

    fn end(&self) -> Option<&View<'a>> {
        self.versions.last().and_then(Option::as_ref)
    }

    fn run(&self, off: u64, stop: u64, include_parent: bool, each: &mut dyn FnMut(Extent)) -> Result<()> {
        let os = self.os;
        let (first, last) = (off / os, (stop - 1) / os);
        let mut candidates: BTreeSet<u64> = BTreeSet::new();
        for view in self.versions.iter().flatten() {
            candidates.extend(view.objects.range(first..=last).map(|(k, _)| *k));
            if let Some(link) = view.parent {
                for (a, b) in self.shared.parent_allocated(link, off, stop.min(link.overlap))? {
                    candidates.extend((a / os)..=((b - 1) / os));
                }
            }
        }
        // From the beginning, a clone's objects that report nothing report the parent
        // snapshot's extents instead.
        let parent = match (self.versions[0].is_none(), self.end().and_then(|v| v.parent)) {
            (true, Some(link)) if include_parent => Some(link),
            _ => None,
        };
        for objno in candidates {
            let start = (objno * os).max(off);
            let finish = obj_end(objno, os).min(stop);
            if start >= finish {
                continue;
            }
            let (a, b) = (start - objno * os, finish - objno * os);
            let (data, zeroed) = self.object(objno, a, b)?;
            let data = match parent {
                Some(link) if data.is_empty() => self.parent_extents(link, start, finish)?,
                _ => data.iter().map(|&(x, y)| (objno * os + x, objno * os + y)).collect(),
            };
            let mut out: Vec<Extent> = data.iter().map(|&(x, y)| Extent { offset: x, length: y - x, exists: true }).collect();
            out.extend(zeroed.iter().map(|&(x, y)| Extent { offset: objno * os + x, length: y - x, exists: false }));
            out.sort_unstable_by_key(|e| e.offset);
            out.into_iter().for_each(&mut *each);
        }
        Ok(())
    }

    /// How `view` holds object `objno`, before copy-ups are taken into account.
    fn held(&self, view: &View<'_>, objno: u64) -> Result<Held> {
        if let Some(&gen) = view.objects.get(&objno) {
            return Ok(Held::Own(gen));
        }
        let Some(link) = view.parent else { return Ok(Held::Absent) };
        match self.shared.parent_object_len(link, objno, self.os)? {
            0 => Ok(Held::Absent),
            len => Ok(Held::Parent { snap: link.snap_id, len }),
        }
    }

    /// Of object `objno` inside `[a, b)` (object offsets): the data and the zeroed ranges.
    fn object(&self, objno: u64, a: u64, b: u64) -> Result<(Ranges, Ranges)> {
        let mut held: Vec<Held> = Vec::with_capacity(self.versions.len());
        for v in &self.versions {
            held.push(match v {
                Some(view) => self.held(view, objno)?,
                None => Held::Absent,
            });
        }
        // librbd copies a clone's object up from the parent, into every snapshot too
        // (deep-flatten), when it is first written or cut off by a shrink. Where the parent
        // serves an object in one version and some version holds it otherwise, RADOS holds
        // the copy in that version; where every version is served alike, it holds nothing.
        if held.iter().any(|h| matches!(h, Held::Parent { .. })) {
            let mut everywhere = Vec::with_capacity(self.all.len());
            for view in &self.all {
                everywhere.push(self.held(view, objno)?);
            }
            for h in held.iter_mut() {
                if matches!(h, Held::Parent { .. }) && everywhere.iter().all(|e| e == h) {
                    *h = Held::Absent;
                }
            }
        }
        let mut sizes: HashMap<u64, u64> = HashMap::new();
        let mut size = |h: Held| -> Result<u64> {
            match h {
                Held::Absent | Held::Own(ZERO_GEN) => Ok(0),
                Held::Parent { len, .. } => Ok(len),
                Held::Own(gen) => {
                    if let Some(&s) = sizes.get(&gen) {
                        return Ok(s);
                    }
                    let s = self.shared.objects.len(objno, gen)?;
                    sizes.insert(gen, s);
                    Ok(s)
                }
            }
        };
        let mut changed = Ranges::new();
        for pair in held.windows(2) {
            let (p, n) = (pair[0], pair[1]);
            if p == n {
                continue;
            }
            let (sp, sn) = (size(p)?, size(n)?);
            let longer = sp.max(sn);
            // What `n` still shares with `p`.
            let shared = match (p, n) {
                (Held::Absent, _) | (_, Held::Absent) => Ranges::new(),
                (Held::Parent { snap: x, .. }, Held::Parent { snap: y, .. }) if x == y => nonempty(0, sp.min(sn)),
                (Held::Own(pg), Held::Own(ng)) if pg != ZERO_GEN => {
                    self.shared.objects.overlaps.get(objno, ng).filter(|o| o.origin == pg).map_or(Ranges::new(), |o| o.ranges)
                }
                (Held::Parent { .. }, Held::Own(ng)) => self
                    .shared
                    .objects
                    .overlaps
                    .get(objno, ng)
                    .filter(|o| o.origin == FROM_PARENT)
                    .map_or(Ranges::new(), |o| intersect(&o.ranges, &nonempty(0, sp))),
                _ => Ranges::new(),
            };
            changed = union(&changed, &complement_in(&shared, 0, longer));
        }
        let start_size = size(held[0])?;
        let window = nonempty(a, b);
        let end = held[held.len() - 1];
        if end == Held::Absent {
            // Gone at the end: what it had at the start reads as zeroes now.
            return Ok((Ranges::new(), intersect(&nonempty(0, start_size), &window)));
        }
        let end_size = size(end)?;
        let mut data = intersect(&changed, &window);
        let mut zeroed = Ranges::new();
        if end_size < start_size {
            zeroed = intersect(&nonempty(end_size, start_size), &window);
            data = cut(&data, end_size, start_size);
        }
        Ok((data, zeroed))
    }

    /// What a clone's parent snapshot reports from the beginning inside `[start, finish)`
    /// (image offsets), inside the overlap: its data extents only.
    fn parent_extents(&self, link: &ParentLink, start: u64, finish: u64) -> Result<Ranges> {
        let finish = finish.min(link.overlap);
        if start >= finish {
            return Ok(Ranges::new());
        }
        let parent = self.shared.parent_image(link)?;
        let header = parent.current()?;
        let size = header.view(Some(link.snap_id))?.size;
        let finish = finish.min(size);
        if start >= finish {
            return Ok(Ranges::new());
        }
        let mut out = Ranges::new();
        Exact::new(&parent, &header, Some(link.snap_id), None)?.run(start, finish, true, &mut |e| {
            if e.exists {
                out.push((e.offset, e.offset + e.length));
            }
        })?;
        Ok(union(&out, &Ranges::new()))
    }
}
