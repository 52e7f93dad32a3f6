//! Clones (reads through the parent, copy-up, flatten, children) and copies.

use super::*;
use crate::{features, Child, CloneOptions, CreateOptions, ParentInfo};

const OBJ: u64 = 4 * KIB;

/// A parent `parent` (order 12, 8 objects) full of data, with protected snapshot `s`.
fn protected_parent(fx: &Fx) -> Vec<u8> {
    let img = fx.image("parent", 8 * OBJ, 12);
    let data = pattern((8 * OBJ) as usize, 21);
    img.write(0, &data).unwrap();
    img.discard(5 * OBJ, OBJ).unwrap();
    img.create_snap("s").unwrap();
    img.protect_snap("s").unwrap();
    img.write(0, b"parent head moves on").unwrap();
    let mut model = data;
    model[(5 * OBJ) as usize..(6 * OBJ) as usize].fill(0);
    model
}

fn clone(fx: &Fx, child: &str) -> Box<dyn crate::Image> {
    fx.be.clone_image("rbd", "parent", "s", "rbd", child, &Default::default()).unwrap();
    fx.be.open("rbd", child, None, false).unwrap()
}

#[test]
fn a_clone_reads_its_parent_snapshot() {
    let fx = Fx::new();
    let model = protected_parent(&fx);
    let child = clone(&fx, "child");
    assert_eq!(read_all(&*child), model);
    assert_eq!(child.size().unwrap(), 8 * OBJ);
    assert_eq!(child.features().unwrap(), features::DEFAULT, "the parent's features");
    assert_eq!(child.stat().unwrap().order, 12, "the parent's order");
    let info = child.parent_info().unwrap();
    assert_eq!(info, Some(ParentInfo { pool: "rbd".into(), image: "parent".into(), snap: "s".into() }));
    assert_eq!(fx.object_files("child"), 0, "nothing copied yet");
    fx.be.rename("rbd", "parent", "renamed").unwrap();
    assert_eq!(child.parent_info().unwrap().unwrap().image, "renamed");
}

#[test]
fn clone_errors_follow_librbd() {
    let fx = Fx::new();
    protected_parent(&fx);
    let plain = fx.image("plain", MIB, 12);
    plain.create_snap("u").unwrap();
    let no_layering = CreateOptions { features: features::EXCLUSIVE_LOCK, order: Some(12), ..Default::default() };
    fx.be.create("rbd", "flat", MIB, &no_layering).unwrap();
    let flat = fx.be.open("rbd", "flat", None, false).unwrap();
    flat.create_snap("s").unwrap();
    flat.protect_snap("s").unwrap();
    fx.be.create("rbd", "taken", MIB, &Default::default()).unwrap();
    let d = CloneOptions::default();
    let with = |features, order| CloneOptions { features, order };
    let cl = |parent: &str, snap: &str, pool: &str, child: &str, o: &CloneOptions| {
        kind(fx.be.clone_image("rbd", parent, snap, pool, child, o))
    };
    assert_eq!(cl("plain", "u", "rbd", "c", &d), "invalid-argument", "unprotected snapshot");
    assert_eq!(cl("missing", "s", "rbd", "c", &d), "not-found");
    assert_eq!(cl("parent", "nope", "rbd", "c", &d), "not-found");
    assert_eq!(cl("parent", "", "rbd", "c", &d), "invalid-argument", "no snapshot named");
    assert_eq!(cl("parent", "s", "nopool", "c", &d), "not-found");
    assert_eq!(cl("parent", "s", "rbd", "taken", &d), "exists");
    assert_eq!(cl("parent", "s", "rbd", "parent", &d), "exists");
    assert_eq!(cl("parent", "s", "rbd", "", &d), "invalid-argument");
    assert_eq!(cl("parent", "s", "rbd", "a\0", &d), "type-error");
    assert_eq!(cl("parent", "s", "rbd", "c", &with(features::EXCLUSIVE_LOCK, None)), "not-supported");
    assert_eq!(cl("parent", "s", "rbd", "c", &with(1 | 1 << 20, None)), "not-supported");
    assert_eq!(cl("flat", "s", "rbd", "c", &d), "not-supported", "parent without layering");
    assert_eq!(cl("parent", "s", "rbd", "c", &with(0, Some(11))), "out-of-range");
    assert_eq!(cl("parent", "s", "rbd", "c", &with(0, Some(26))), "out-of-range");
    assert_eq!(fx.be.list("rbd").unwrap(), vec!["flat", "parent", "plain", "taken"], "nothing half-made");
    fx.be.clone_image("rbd", "parent", "s", "rbd", "c1", &with(features::LAYERING, Some(13))).unwrap();
    let c1 = fx.be.open("rbd", "c1", None, false).unwrap();
    assert_eq!((c1.features().unwrap(), c1.stat().unwrap().order), (features::LAYERING | features::STRIPINGV2, 13));
    assert_eq!(c1.stripe_unit().unwrap(), OBJ, "the parent's stripe unit");
}

#[test]
fn a_clone_with_smaller_objects_than_the_parents_stripe_unit_is_invalid() {
    let fx = Fx::new();
    let p = fx.image("p", MIB, 22);
    p.create_snap("s").unwrap();
    p.protect_snap("s").unwrap();
    let o = CloneOptions { features: 0, order: Some(20) };
    assert_eq!(kind(fx.be.clone_image("rbd", "p", "s", "rbd", "c", &o)), "invalid-argument");
}

#[test]
fn writes_to_a_clone_copy_up_and_never_touch_the_parent() {
    let fx = Fx::new();
    let mut model = protected_parent(&fx);
    let child = clone(&fx, "child");
    child.write(OBJ + 10, b"child").unwrap();
    model[(OBJ + 10) as usize..(OBJ + 15) as usize].copy_from_slice(b"child");
    child.write(2 * OBJ, &[7; OBJ as usize]).unwrap();
    model[(2 * OBJ) as usize..(3 * OBJ) as usize].fill(7);
    assert_eq!(read_all(&*child), model);
    assert_eq!(fx.object_files("child"), 2);
    let parent = fx.be.open("rbd", "parent", Some("s"), true).unwrap();
    assert_eq!(parent.read(OBJ + 10, 5).unwrap(), pattern((8 * OBJ) as usize, 21)[(OBJ + 10) as usize..(OBJ + 15) as usize]);
}

#[test]
fn discards_in_a_clone_hide_the_parent() {
    let fx = Fx::new();
    let mut model = protected_parent(&fx);
    let child = clone(&fx, "child");
    child.discard(OBJ, 2 * OBJ).unwrap();
    child.discard(100, 50).unwrap();
    child.discard(6 * OBJ + 10, 10).unwrap();
    model[OBJ as usize..(3 * OBJ) as usize].fill(0);
    assert_eq!(read_all(&*child), model, "whole objects zeroed, discards below the granularity change nothing");
    assert_eq!(fx.object_files("child"), 0, "whole objects are empty ones, nothing was copied up");

    // 256 KiB objects: partial discards zero their 64 KiB granules over the parent's data.
    let obj = 256 * KIB;
    let big = fx.image("big", 4 * obj, 18);
    let data = pattern((4 * obj) as usize, 33);
    big.write(0, &data).unwrap();
    big.create_snap("s").unwrap();
    big.protect_snap("s").unwrap();
    fx.be.clone_image("rbd", "big", "s", "rbd", "bigchild", &Default::default()).unwrap();
    let child = fx.be.open("rbd", "bigchild", None, false).unwrap();
    let mut model = data;
    for (off, len) in [(obj, obj), (100, 50), (2 * obj + 10, 200 * KIB), (3 * obj + 70_000, obj)] {
        child.discard(off, len).unwrap();
        discard_model(&mut model, off, len, obj);
    }
    assert_eq!(model[(2 * obj + 65536) as usize..(2 * obj + 196608) as usize], vec![0; 131072]);
    assert_ne!(model[(2 * obj + 196608) as usize], 0, "the unaligned tail keeps its data");
    assert_eq!(read_all(&*child), model);
    assert_eq!(fx.object_files("bigchild"), 2, "the two partly discarded objects were copied up");
    let parent = fx.be.open("rbd", "big", Some("s"), true).unwrap();
    assert_eq!(read_all(&*parent), pattern((4 * obj) as usize, 33), "the parent is untouched");
}

#[test]
fn shrinking_a_clone_cuts_the_overlap_for_good() {
    let fx = Fx::new();
    let model = protected_parent(&fx);
    let child = clone(&fx, "child");
    child.resize(2048).unwrap();
    child.resize(8 * OBJ).unwrap();
    assert_eq!(child.read(0, 2048).unwrap(), model[..2048]);
    assert_eq!(child.read(2048, 8 * OBJ - 2048).unwrap(), vec![0; (8 * OBJ - 2048) as usize]);
}

#[test]
fn a_clone_snapshot_keeps_its_parent_and_rollback_restores_it() {
    let fx = Fx::new();
    let model = protected_parent(&fx);
    let child = clone(&fx, "child");
    child.create_snap("cs").unwrap();
    child.resize(100).unwrap();
    child.write(0, b"x").unwrap();
    child.set_snap(Some("cs")).unwrap();
    assert_eq!(read_all(&*child), model);
    assert!(child.parent_info().unwrap().is_some());
    child.set_snap(None).unwrap();
    child.rollback_to_snap("cs").unwrap();
    assert_eq!(read_all(&*child), model);
}

#[test]
fn list_children_lists_the_selected_snapshot_or_every_snapshot_at_the_head() {
    let fx = Fx::new();
    protected_parent(&fx);
    fx.be.create_pool("two").unwrap();
    let parent = fx.be.open("rbd", "parent", None, false).unwrap();
    parent.create_snap("other").unwrap();
    parent.protect_snap("other").unwrap();
    clone(&fx, "k");
    fx.be.clone_image("rbd", "parent", "s", "two", "k2", &Default::default()).unwrap();
    fx.be.clone_image("rbd", "parent", "other", "rbd", "k3", &Default::default()).unwrap();
    let child = |pool: &str, image: &str| Child { pool: pool.into(), image: image.into() };
    assert_eq!(parent.list_children().unwrap(), vec![child("rbd", "k"), child("rbd", "k3"), child("two", "k2")]);
    parent.set_snap(Some("s")).unwrap();
    assert_eq!(parent.list_children().unwrap(), vec![child("rbd", "k"), child("two", "k2")]);
    parent.set_snap(Some("other")).unwrap();
    assert_eq!(parent.list_children().unwrap(), vec![child("rbd", "k3")]);
    let k = fx.be.open("rbd", "k", None, false).unwrap();
    assert_eq!(k.list_children().unwrap(), vec![]);
    assert_eq!(parent.parent_info().unwrap(), None);
    assert_eq!(kind(parent.unprotect_snap("other")), "busy");
    fx.be.remove("rbd", "k3").unwrap();
    parent.set_snap(None).unwrap();
    parent.unprotect_snap("other").unwrap();
}

#[test]
fn flatten_copies_the_parent_into_head_and_snapshots_and_unlinks() {
    let fx = Fx::new();
    let model = protected_parent(&fx);
    let child = clone(&fx, "child");
    child.write(0, b"mine").unwrap();
    child.create_snap("cs").unwrap();
    child.write(3 * OBJ, b"later").unwrap();
    let mut head = model.clone();
    head[..4].copy_from_slice(b"mine");
    let at_cs = head.clone();
    head[(3 * OBJ) as usize..(3 * OBJ + 5) as usize].copy_from_slice(b"later");

    let ro = fx.be.open("rbd", "child", None, true).unwrap();
    assert_eq!(kind(ro.flatten()), "read-only");
    child.flatten().unwrap();
    assert_eq!(read_all(&*child), head);
    assert_eq!(child.parent_info().unwrap(), None);
    assert_eq!(kind(child.flatten()), "invalid-argument", "no longer a clone");
    child.set_snap(Some("cs")).unwrap();
    assert_eq!(read_all(&*child), at_cs);
    assert_eq!(child.parent_info().unwrap(), None, "deep flatten");

    let parent = fx.be.open("rbd", "parent", Some("s"), false).unwrap();
    assert_eq!(parent.list_children().unwrap(), vec![]);
    parent.unprotect_snap("s").unwrap();
    parent.remove_snap("s").unwrap();
    child.set_snap(None).unwrap();
    assert_eq!(read_all(&*child), head, "independent of the parent now");
    let plain = fx.image("plain", MIB, 22);
    assert_eq!(kind(plain.flatten()), "invalid-argument");
}

#[test]
fn a_clone_of_a_clone_reads_through_two_parents_and_survives_flattening_the_middle() {
    let fx = Fx::new();
    let mut model = protected_parent(&fx);
    let middle = clone(&fx, "middle");
    middle.write(OBJ, b"middle").unwrap();
    model[OBJ as usize..(OBJ + 6) as usize].copy_from_slice(b"middle");
    middle.create_snap("ms").unwrap();
    middle.protect_snap("ms").unwrap();
    fx.be.clone_image("rbd", "middle", "ms", "rbd", "leaf", &Default::default()).unwrap();
    let leaf = fx.be.open("rbd", "leaf", None, false).unwrap();
    assert_eq!(read_all(&*leaf), model);
    middle.flatten().unwrap();
    let parent = fx.be.open("rbd", "parent", Some("s"), false).unwrap();
    parent.unprotect_snap("s").unwrap();
    parent.remove_snap("s").unwrap();
    assert_eq!(read_all(&*leaf), model, "the leaf still reads the middle's snapshot");
    let mut all = Vec::new();
    leaf.diff_iterate(0, 8 * OBJ, None, true, false, &mut |e| all.push(e)).unwrap();
    assert_eq!(all.len(), 7, "every parent object but the discarded one");
}

#[test]
fn copy_makes_a_flat_sparse_image_of_the_selected_version() {
    let fx = Fx::new();
    let model = protected_parent(&fx);
    fx.be.create_pool("two").unwrap();
    let parent = fx.be.open("rbd", "parent", None, false).unwrap();
    assert_eq!(kind(parent.copy("rbd", "parent")), "exists");
    assert_eq!(kind(parent.copy("nopool", "x")), "not-found");
    assert_eq!(kind(parent.copy("rbd", "")), "invalid-argument");
    parent.set_snap(Some("s")).unwrap();
    parent.copy("two", "snapcopy").unwrap();
    let copy = fx.be.open("two", "snapcopy", None, false).unwrap();
    assert_eq!(read_all(&*copy), model);
    assert!(copy.list_snaps().unwrap().is_empty());
    assert_eq!((copy.features().unwrap(), copy.stat().unwrap().order), (features::DEFAULT, 12));

    let child = clone(&fx, "child");
    child.write(OBJ, &[0; 100]).unwrap();
    child.copy("rbd", "childcopy").unwrap();
    let cc = fx.be.open("rbd", "childcopy", None, false).unwrap();
    assert_eq!(cc.parent_info().unwrap(), None);
    assert_eq!(read_all(&*cc), read_all(&*child));
    assert_eq!(fx.object_files("childcopy"), 7, "the discarded parent object is not copied");

    let striped = CreateOptions { stripe_unit: 65536, stripe_count: 4, ..Default::default() };
    fx.be.create("rbd", "striped", 8 * MIB, &striped).unwrap();
    let s = fx.be.open("rbd", "striped", None, false).unwrap();
    s.copy("rbd", "striped2").unwrap();
    let s2 = fx.be.open("rbd", "striped2", None, false).unwrap();
    assert_eq!((s2.features().unwrap(), s2.stripe_unit().unwrap(), s2.stripe_count().unwrap()), (63, 65536, 4));
    assert_eq!(fx.object_files("striped2"), 0, "an empty image copies to no objects");
}
