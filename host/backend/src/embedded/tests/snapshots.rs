//! Snapshots: the lifecycle, every error case, and immutability.

use super::*;

#[test]
fn snapshots_are_listed_oldest_first_with_their_sizes_and_fresh_ids() {
    let fx = Fx::new();
    let img = fx.image("img", MIB, 22);
    assert!(img.list_snaps().unwrap().is_empty());
    for (name, size) in [("zeta", MIB), ("alpha", 2 * MIB), ("mid", MIB / 2)] {
        img.resize(size).unwrap();
        img.create_snap(name).unwrap();
    }
    let snaps = img.list_snaps().unwrap();
    let got: Vec<(u64, &str, u64)> = snaps.iter().map(|s| (s.id, s.name.as_str(), s.size)).collect();
    assert_eq!(got, vec![(1, "zeta", MIB), (2, "alpha", 2 * MIB), (3, "mid", MIB / 2)]);
    img.remove_snap("mid").unwrap();
    img.create_snap("again").unwrap();
    assert_eq!(img.list_snaps().unwrap().last().unwrap().id, 5, "ids are never reused, and a removal consumes one");
}

#[test]
fn snapshot_ids_come_from_the_pool() {
    let fx = Fx::new();
    let a = fx.image("a", MIB, 22);
    let b = fx.image("b", MIB, 22);
    a.create_snap("s").unwrap();
    b.create_snap("s").unwrap();
    a.create_snap("t").unwrap();
    let ids = |img: &dyn Image| img.list_snaps().unwrap().iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!((ids(&*a), ids(&*b)), (vec![1, 3], vec![2]), "one sequence for the pool's images");
}

#[test]
fn create_snap_checks_names_duplicates_and_read_only() {
    let fx = Fx::new();
    let img = fx.image("img", MIB, 22);
    img.create_snap("s1").unwrap();
    assert_eq!(kind(img.create_snap("s1")), "exists");
    assert_eq!(kind(img.create_snap("")), "invalid-argument");
    assert_eq!(kind(img.create_snap(&"x".repeat(2042))), "other");
    img.create_snap("a@b/c").unwrap();
    img.remove_snap("a@b/c").unwrap();
    assert_eq!(kind(img.create_snap("a\0b")), "type-error");
    img.set_snap(Some("s1")).unwrap();
    img.create_snap("at-snap").unwrap();
    assert_eq!(img.list_snaps().unwrap().len(), 2, "librbd snapshots the head even at a snapshot");
    let ro = fx.be.open("rbd", "img", None, true).unwrap();
    assert_eq!(kind(ro.create_snap("t")), "read-only");
}

#[test]
fn protection_rules() {
    let fx = Fx::new();
    let img = fx.image("img", MIB, 22);
    img.create_snap("p").unwrap();
    img.create_snap("s1").unwrap();
    assert!(!img.is_protected_snap("p").unwrap());
    img.protect_snap("p").unwrap();
    assert!(img.is_protected_snap("p").unwrap());
    assert_eq!(kind(img.protect_snap("p")), "busy");
    assert_eq!(kind(img.remove_snap("p")), "busy");
    assert_eq!(kind(img.protect_snap("nope")), "not-found");
    assert_eq!(kind(img.unprotect_snap("s1")), "invalid-argument");
    assert_eq!(kind(img.unprotect_snap("nope")), "not-found");
    assert_eq!(kind(img.is_protected_snap("nope")), "not-found");
    assert_eq!(kind(img.remove_snap("nope")), "not-found");
    fx.be.clone_image("rbd", "img", "p", "rbd", "child", &Default::default()).unwrap();
    assert_eq!(kind(img.unprotect_snap("p")), "busy");
    assert_eq!(kind(img.remove_snap("p")), "busy");
    fx.be.remove("rbd", "child").unwrap();
    img.unprotect_snap("p").unwrap();
    img.remove_snap("p").unwrap();
    assert_eq!(img.list_snaps().unwrap().len(), 1);
}

#[test]
fn set_snap_selects_a_version() {
    let fx = Fx::new();
    let img = fx.image("img", MIB, 22);
    img.write(0, b"one").unwrap();
    img.create_snap("s").unwrap();
    img.write(0, b"two").unwrap();
    assert_eq!(kind(img.set_snap(Some("nope"))), "not-found");
    img.set_snap(Some("s")).unwrap();
    assert_eq!(img.read(0, 3).unwrap(), b"one");
    img.set_snap(None).unwrap();
    assert_eq!(img.read(0, 3).unwrap(), b"two");
    img.set_snap(Some("s")).unwrap();
    img.set_snap(Some("")).unwrap();
    assert_eq!(img.read(0, 3).unwrap(), b"two", "an empty name is the head, as in librbd");
}

#[test]
fn removing_the_selected_snapshot_makes_reads_not_found() {
    let fx = Fx::new();
    let img = fx.image("img", MIB, 22);
    img.create_snap("s").unwrap();
    img.set_snap(Some("s")).unwrap();
    img.remove_snap("s").unwrap();
    assert_eq!(kind(img.read(0, 4)), "not-found");
    assert_eq!(img.size().unwrap(), 0, "librbd reports size 0");
    img.set_snap(None).unwrap();
    assert_eq!(img.read(0, 4).unwrap(), vec![0; 4]);
}

#[test]
fn snapshots_never_change_whatever_the_head_does() {
    let fx = Fx::new();
    let obj = 128 * KIB;
    let img = fx.image("img", 8 * obj, 17);
    let before = pattern((8 * obj) as usize, 11);
    img.write(0, &before).unwrap();
    img.create_snap("s").unwrap();
    img.write(10, b"changed").unwrap();
    img.write(3 * obj - 5, &[9; 20]).unwrap();
    img.discard(obj, obj).unwrap();
    img.discard(5 * obj + 7, obj).unwrap();
    let granule = 64 * KIB;
    let kept = &before[(5 * obj) as usize..(5 * obj + granule) as usize];
    assert_eq!(img.read(5 * obj, obj).unwrap(), [kept, &vec![0; granule as usize]].concat(), "a partial discard");
    img.resize(2 * obj + 50).unwrap();
    img.resize(10 * obj).unwrap();
    img.write(9 * obj, &[3; 10]).unwrap();
    img.create_snap("t").unwrap();
    img.rollback_to_snap("s").unwrap();
    img.write(7 * obj, &[4; 100]).unwrap();
    img.discard(0, 8 * obj).unwrap();
    let snap = fx.be.open("rbd", "img", Some("s"), true).unwrap();
    assert_eq!(snap.size().unwrap(), 8 * obj);
    assert_eq!(read_all(&*snap), before);
}

#[test]
fn rollback_restores_size_and_data_and_checks_its_arguments() {
    let fx = Fx::new();
    let img = fx.image("img", 4 * MIB, 20);
    img.write(0, &[1; 8]).unwrap();
    img.create_snap("small").unwrap();
    img.resize(12 * MIB).unwrap();
    img.write(0, &[2; 8]).unwrap();
    img.write(11 * MIB, &[2; 8]).unwrap();
    assert_eq!(kind(img.rollback_to_snap("nope")), "not-found");
    img.set_snap(Some("small")).unwrap();
    assert_eq!(kind(img.rollback_to_snap("small")), "read-only");
    img.set_snap(None).unwrap();
    img.rollback_to_snap("small").unwrap();
    assert_eq!(img.size().unwrap(), 4 * MIB);
    assert_eq!(img.read(0, 8).unwrap(), vec![1; 8]);
    img.write(0, &[3; 8]).unwrap();
    img.set_snap(Some("small")).unwrap();
    assert_eq!(img.read(0, 8).unwrap(), vec![1; 8], "the snapshot survives writes after rollback");
}

#[test]
fn removing_a_snapshot_deletes_only_its_own_objects() {
    let fx = Fx::new();
    let img = fx.image("img", 16 * KIB, 12);
    img.write(0, &[1; 16 * 1024]).unwrap();
    img.create_snap("s").unwrap();
    img.write(0, &[2; 4096]).unwrap();
    assert_eq!(fx.object_files("img"), 5, "4 shared + 1 copied");
    img.remove_snap("s").unwrap();
    assert_eq!(fx.object_files("img"), 4);
    assert_eq!(img.read(0, 8192).unwrap(), [vec![2; 4096], vec![1; 4096]].concat());
}
