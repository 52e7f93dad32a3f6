//! diff_iterate: argument rules, what it reports, and a seeded property test that applying
//! the diff of any two versions to the older one gives the newer one.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::Extent;

const OBJ: u64 = 4 * KIB;

fn diff(img: &dyn Image, off: u64, len: u64, from: Option<&str>, include_parent: bool) -> Vec<Extent> {
    let mut out = Vec::new();
    img.diff_iterate(off, len, from, include_parent, false, &mut |e| out.push(e)).unwrap();
    out
}

fn ext(offset: u64, length: u64, exists: bool) -> Extent {
    Extent { offset, length, exists }
}

#[test]
fn diff_arguments_are_checked_like_librbd() {
    let fx = Fx::new();
    let img = fx.image("img", 8 * OBJ, 12);
    img.create_snap("old").unwrap();
    img.create_snap("new").unwrap();
    let mut none = |_| {};
    assert_eq!(kind(img.diff_iterate(0, 8 * OBJ, Some("nope"), true, false, &mut none)), "not-found");
    img.set_snap(Some("old")).unwrap();
    assert_eq!(kind(img.diff_iterate(0, 8 * OBJ, Some("new"), true, false, &mut none)), "invalid-argument");
    assert_eq!(diff(&*img, 0, 8 * OBJ, Some("old"), true), vec![], "from the selected snapshot itself");
    img.set_snap(None).unwrap();
    assert_eq!(diff(&*img, 100 * OBJ, 0, None, true), vec![], "a zero length is always fine");
    assert_eq!(kind(img.diff_iterate(8 * OBJ, 10, None, true, false, &mut none)), "invalid-argument");
}

#[test]
fn diff_reports_what_librbd_reports_in_exact_mode() {
    // The answers of librbd on the test cluster (docs/librbd-semantics.md, diff_iterate).
    let fx = Fx::new();
    let img = fx.image("img", 8 * OBJ, 12);
    assert_eq!(diff(&*img, 0, 8 * OBJ, None, true), vec![]);
    img.write(1000, &[1; 512]).unwrap();
    assert_eq!(diff(&*img, 0, 8 * OBJ, None, true), vec![ext(0, 1512, true)], "an object from its start to its end");
    assert_eq!(diff(&*img, 0, 1200, None, true), vec![ext(0, 1200, true)]);
    assert_eq!(diff(&*img, 1200, 10, None, true), vec![ext(1200, 10, true)]);
    assert_eq!(diff(&*img, 0, 1 << 40, None, true), vec![ext(0, 1512, true)], "cut at the end");
    img.write(2 * OBJ, &[1; 10]).unwrap();
    img.write(3 * OBJ, &[1; 10]).unwrap();
    img.create_snap("s1").unwrap();
    assert_eq!(diff(&*img, 0, 8 * OBJ, Some("s1"), true), vec![]);
    img.write(3000, &[3; 512]).unwrap();
    assert_eq!(diff(&*img, 0, 8 * OBJ, Some("s1"), true), vec![ext(1512, 2000, true)], "the write and what it added");
    img.write(OBJ + 5, &[2; 10]).unwrap();
    img.discard(2 * OBJ, OBJ).unwrap();
    img.discard(3 * OBJ + 1, 1).unwrap();
    let got = diff(&*img, 0, 8 * OBJ, Some("s1"), true);
    let want = vec![ext(1512, 2000, true), ext(OBJ, 15, true), ext(2 * OBJ, 10, false)];
    assert_eq!(got, want, "a removed object reads as zeroes up to its old end; a discard below the granularity changes nothing");
    assert_eq!(diff(&*img, 0, 8 * OBJ, None, true), vec![ext(0, 3512, true), ext(OBJ, 15, true), ext(3 * OBJ, 10, true)]);
    img.resize(OBJ + 2048).unwrap();
    img.create_snap("s2").unwrap();
    img.resize(8 * OBJ).unwrap();
    let got = diff(&*img, 0, 8 * OBJ, Some("s1"), true);
    let want = vec![ext(1512, 2000, true), ext(OBJ, 2048, true), ext(2 * OBJ, 10, false), ext(3 * OBJ, 10, false)];
    assert_eq!(got, want, "the shrink truncated object 1 at the new end, which lengthened it");
    img.set_snap(Some("s2")).unwrap();
    assert_eq!(diff(&*img, 0, 8 * OBJ, Some("s1"), true), vec![ext(1512, 2000, true), ext(OBJ, 2048, true)], "cut at the end version's size");
}

#[test]
fn whole_object_diffs_report_changed_objects_whole() {
    let fx = Fx::new();
    let img = fx.image("img", 8 * OBJ, 12);
    let whole = |img: &dyn Image, off, len, from| {
        let mut out = Vec::new();
        img.diff_iterate(off, len, from, true, true, &mut |e| out.push(e)).unwrap();
        out
    };
    img.write(1000, &[1; 512]).unwrap();
    assert_eq!(whole(&*img, 0, 8 * OBJ, None), vec![ext(0, OBJ, true)]);
    assert_eq!(whole(&*img, 1200, 10, None), vec![ext(1200, 10, true)]);
    img.write(2 * OBJ, &[1; 10]).unwrap();
    img.create_snap("s1").unwrap();
    img.write(OBJ + 5, &[2; 10]).unwrap();
    img.discard(2 * OBJ, OBJ).unwrap();
    assert_eq!(whole(&*img, 0, 8 * OBJ, Some("s1")), vec![ext(OBJ, OBJ, true), ext(2 * OBJ, OBJ, false)]);
}

#[test]
fn a_partial_discard_is_reported_existing_where_it_zeroes_a_granule() {
    let fx = Fx::new();
    let obj = 128 * KIB;
    let img = fx.image("img", 4 * obj, 17);
    img.write(0, &pattern((4 * obj) as usize, 7)).unwrap();
    img.create_snap("s").unwrap();
    img.discard(1000, 200_000).unwrap();
    img.discard(2 * obj + 5, 100).unwrap();
    img.discard(3 * obj, obj).unwrap();
    // Object 0 loses its aligned tail (a truncate: zeroes), object 1 its aligned head (a
    // zero: data), object 3 goes.
    let got = diff(&*img, 0, 4 * obj, Some("s"), true);
    assert_eq!(got, vec![ext(65536, 65536, false), ext(obj, 65536, true), ext(3 * obj, obj, false)]);
    let mut model = pattern((4 * obj) as usize, 7);
    model[65536..obj as usize + 65536].fill(0);
    model[(3 * obj) as usize..].fill(0);
    assert_eq!(read_all(&*img), model);
}

#[test]
fn diff_of_a_clone_includes_the_parent_only_when_asked() {
    let fx = Fx::new();
    let parent = fx.image("parent", 4 * OBJ, 12);
    parent.write(0, &[1; 100]).unwrap();
    parent.write(2 * OBJ, &[1; 100]).unwrap();
    parent.create_snap("s").unwrap();
    parent.protect_snap("s").unwrap();
    fx.be.clone_image("rbd", "parent", "s", "rbd", "child", &Default::default()).unwrap();
    let child = fx.be.open("rbd", "child", None, false).unwrap();
    assert_eq!(diff(&*child, 0, 4 * OBJ, None, true), vec![ext(0, 100, true), ext(2 * OBJ, 100, true)]);
    assert_eq!(diff(&*child, 0, 4 * OBJ, None, false), vec![]);
    child.write(OBJ, b"x").unwrap();
    child.discard(2 * OBJ, OBJ).unwrap();
    assert_eq!(diff(&*child, 0, 4 * OBJ, None, false), vec![ext(OBJ, 1, true)]);
    // Like librbd: an object of the clone that reports nothing (here an emptied one)
    // reports the parent's extents.
    assert_eq!(diff(&*child, 0, 4 * OBJ, None, true), vec![ext(0, 100, true), ext(OBJ, 1, true), ext(2 * OBJ, 100, true)]);
    child.create_snap("cs").unwrap();
    child.write(3 * OBJ, b"y").unwrap();
    child.write(50, b"z").unwrap();
    // The copy-up put the parent's bytes in the snapshot too: only the write is new.
    assert_eq!(diff(&*child, 0, 4 * OBJ, Some("cs"), true), vec![ext(50, 1, true), ext(3 * OBJ, 1, true)]);
}

// ---- the property test -------------------------------------------------------------------

/// Applying `extents` (read from `end`) to `from`, cut or grown to `end`'s size.
fn apply(from: &[u8], end: &[u8], extents: &[Extent]) -> Vec<u8> {
    let mut out = from.to_vec();
    out.resize(end.len(), 0);
    for e in extents {
        let r = e.offset as usize..(e.offset + e.length) as usize;
        if e.exists {
            out[r.clone()].copy_from_slice(&end[r]);
        } else {
            out[r].fill(0);
        }
    }
    out
}

/// Extents must be in increasing order, disjoint, non-empty and inside `[lo, hi)`.
fn check_shape(extents: &[Extent], lo: u64, hi: u64, seed: u64) {
    let mut at = lo;
    for e in extents {
        assert!(e.length > 0 && e.offset >= at && e.offset + e.length <= hi, "seed {seed}: bad extent {e:?} in {lo}..{hi}");
        at = e.offset + e.length;
    }
}

/// Random writes, discards, resizes, snapshots and rollbacks, mirrored in a model; then the
/// contents and every pairwise diff are checked against it.
fn run(seed: u64, img: &dyn Image, obj: u64, start: Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut head = start;
    let mut snaps: Vec<(String, Vec<u8>)> = Vec::new();
    for step in 0..40 {
        let size = head.len() as u64;
        match rng.random_range(0..10) {
            0..=3 if size > 0 => {
                let off = rng.random_range(0..size);
                let len = rng.random_range(1..=3 * obj);
                let data = pattern(len as usize, rng.random());
                let fits = len.min(size - off);
                match img.write(off, &data) {
                    Ok(n) => assert_eq!(n, len, "seed {seed}"),
                    Err(crate::Error::IncompleteWrite { written, .. }) => assert_eq!(written, fits, "seed {seed}"),
                    Err(e) => panic!("seed {seed}: write: {e}"),
                }
                head[off as usize..(off + fits) as usize].copy_from_slice(&data[..fits as usize]);
            }
            4 | 5 if size > 0 => {
                let off = rng.random_range(0..size);
                let len = rng.random_range(1..=4 * obj);
                img.discard(off, len).unwrap();
                discard_model(&mut head, off, len, obj);
            }
            6 => {
                let size = rng.random_range(0..=24 * obj);
                img.resize(size).unwrap();
                head.resize(size as usize, 0);
            }
            7 | 8 => {
                let name = format!("s{step}");
                img.create_snap(&name).unwrap();
                snaps.push((name, head.clone()));
            }
            _ if !snaps.is_empty() => {
                let (name, data) = &snaps[rng.random_range(0..snaps.len())];
                img.rollback_to_snap(name).unwrap();
                head = data.clone();
            }
            _ => {}
        }
    }
    assert_eq!(read_all(img), head, "seed {seed}: head content");
    let mut versions: Vec<(Option<String>, Vec<u8>)> = snaps.into_iter().map(|(n, d)| (Some(n), d)).collect();
    versions.push((None, head));
    for (i, (end_name, end)) in versions.iter().enumerate() {
        img.set_snap(end_name.as_deref()).unwrap();
        assert_eq!(&read_all(img), end, "seed {seed}: content of {end_name:?}");
        let size = end.len() as u64;
        let mut froms: Vec<(Option<&str>, &[u8])> = vec![(None, &[])];
        froms.extend(versions[..i].iter().map(|(n, d)| (n.as_deref(), d.as_slice())));
        for (from_name, from) in froms {
            let extents = if size == 0 { Vec::new() } else { diff(img, 0, size, from_name, true) };
            check_shape(&extents, 0, size, seed);
            assert!(apply(from, end, &extents) == *end, "seed {seed}: diff {from_name:?} -> {end_name:?}");
            if size > 0 {
                let lo = rng.random_range(0..size);
                let hi = rng.random_range(lo + 1..=size);
                let part = diff(img, lo, hi - lo, from_name, true);
                check_shape(&part, lo, hi, seed);
                let applied = apply(from, end, &part);
                assert!(applied[lo as usize..hi as usize] == end[lo as usize..hi as usize], "seed {seed}: partial diff");
            }
        }
    }
    img.set_snap(None).unwrap();
}

/// The plain-image property test with objects of `2^order` bytes.
fn plain(seeds: std::ops::Range<u64>, order: u8) {
    let obj = 1u64 << order;
    for seed in seeds {
        let fx = Fx::new();
        let img = fx.image("img", 16 * obj, order);
        run(seed, &*img, obj, vec![0; (16 * obj) as usize]);
    }
}

#[test]
fn applying_any_diff_to_the_older_version_gives_the_newer_one() {
    plain(0..24, 12);
}

#[test]
fn applying_any_diff_gives_the_newer_version_with_objects_above_the_granularity() {
    plain(200..208, 18);
}

/// The clone property test: a parent with objects of `2^order` bytes; even seeds clone it
/// with the parent's order, odd ones with `odd_order`.
fn cloned(seeds: std::ops::Range<u64>, order: u8, odd_order: u8) {
    let pobj = 1u64 << order;
    for seed in seeds {
        let fx = Fx::new();
        let parent = fx.image("parent", 16 * pobj, order);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut data = vec![0u8; (16 * pobj) as usize];
        for _ in 0..6 {
            let off = rng.random_range(0..15 * pobj) as usize;
            let chunk = pattern(rng.random_range(1..2 * pobj as usize), rng.random());
            let end = (off + chunk.len()).min(data.len());
            data[off..end].copy_from_slice(&chunk[..end - off]);
            parent.write(off as u64, &chunk[..end - off]).unwrap();
        }
        parent.create_snap("s").unwrap();
        parent.protect_snap("s").unwrap();
        parent.write(0, &[0xee; 5000]).unwrap();
        let order = if seed % 2 == 0 { None } else { Some(odd_order) };
        let o = crate::CloneOptions { features: 0, order };
        fx.be.clone_image("rbd", "parent", "s", "rbd", "child", &o).unwrap();
        let child = fx.be.open("rbd", "child", None, false).unwrap();
        run(seed, &*child, 1 << child.stat().unwrap().order, data);
        if seed % 4 == 1 {
            let before: Vec<Vec<u8>> = child
                .list_snaps()
                .unwrap()
                .iter()
                .map(|s| {
                    child.set_snap(Some(&s.name)).unwrap();
                    read_all(&*child)
                })
                .collect();
            child.set_snap(None).unwrap();
            let head = read_all(&*child);
            child.flatten().unwrap();
            assert_eq!(read_all(&*child), head, "seed {seed}: flatten kept the head");
            for (s, data) in child.list_snaps().unwrap().iter().zip(before) {
                child.set_snap(Some(&s.name)).unwrap();
                assert_eq!(read_all(&*child), data, "seed {seed}: flatten kept {}", s.name);
            }
        }
    }
}

#[test]
fn applying_any_diff_of_a_clone_including_its_parent_gives_the_newer_version() {
    cloned(100..116, 12, 13);
}

#[test]
fn applying_any_diff_of_a_clone_gives_the_newer_version_with_objects_above_the_granularity() {
    cloned(300..308, 17, 18);
}
