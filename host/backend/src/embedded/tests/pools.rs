//! The store, pools, image creation rules, list/remove/rename/open, watchers, persistence.

use super::*;
use crate::{features, Error, Version};

#[test]
fn a_new_store_has_the_rbd_pool() {
    let fx = Fx::new();
    assert_eq!(fx.be.list_pools().unwrap(), vec!["rbd"]);
    fx.be.open_pool("rbd").unwrap();
    assert_eq!(fx.be.list("rbd").unwrap(), Vec::<String>::new());
}

#[test]
fn version_is_librbd_pacific() {
    assert_eq!(Fx::new().be.version(), Version { major: 1, minor: 16, extra: 0 });
}

#[test]
fn every_open_is_a_new_client_and_the_counter_persists() {
    let fx = Fx::new();
    let a = fx.be.client_name();
    let b = fx.client().client_name();
    let c = fx.client().client_name();
    assert!(a.starts_with("client."), "{a}");
    let n = |s: &str| s.trim_start_matches("client.").parse::<u64>().unwrap();
    assert!(n(&a) < n(&b) && n(&b) < n(&c), "{a} {b} {c}");
}

#[test]
fn create_pool_lists_sorted_and_refuses_duplicates_and_bad_names() {
    let fx = Fx::new();
    fx.be.create_pool("zeta").unwrap();
    fx.be.create_pool("alpha").unwrap();
    assert_eq!(fx.be.list_pools().unwrap(), vec!["alpha", "rbd", "zeta"]);
    assert_eq!(kind(fx.be.create_pool("alpha")), "exists");
    for bad in ["", "a/b", ".", ".."] {
        assert_eq!(kind(fx.be.create_pool(bad)), "invalid-argument", "{bad:?}");
    }
    assert_eq!(kind(fx.be.create_pool(&"p".repeat(256))), "invalid-argument");
    assert_eq!(kind(fx.be.create_pool("a\0b")), "type-error");
}

#[test]
fn missing_pools_are_not_found_everywhere() {
    let fx = Fx::new();
    for pool in ["nope", "..", "../rbd", ""] {
        assert_eq!(kind(fx.be.open_pool(pool)), "not-found", "{pool:?}");
        assert_eq!(kind(fx.be.list(pool)), "not-found");
        assert_eq!(kind(fx.be.create(pool, "x", MIB, &Default::default())), "not-found");
        assert_eq!(kind(fx.be.open(pool, "x", None, false)), "not-found");
        assert_eq!(kind(fx.be.remove(pool, "x")), "not-found");
        assert_eq!(kind(fx.be.rename(pool, "x", "y")), "not-found");
    }
}

#[test]
fn a_default_image_looks_like_pacifics() {
    let fx = Fx::new();
    fx.be.create("rbd", "img", 8 * MIB, &Default::default()).unwrap();
    let img = fx.be.open("rbd", "img", None, false).unwrap();
    assert_eq!(img.features().unwrap(), features::DEFAULT);
    assert!(!img.old_format().unwrap());
    assert_eq!(img.stripe_unit().unwrap(), 4 * MIB);
    assert_eq!(img.stripe_count().unwrap(), 1);
    assert_eq!(img.size().unwrap(), 8 * MIB);
    let st = img.stat().unwrap();
    assert_eq!((st.size, st.obj_size, st.num_objs, st.order), (8 * MIB, 4 * MIB, 2, 22));
    assert_eq!((st.parent_pool, st.parent_name.as_str()), (-1, ""));
    let id = st.block_name_prefix.strip_prefix("rbd_data.").unwrap();
    assert!(id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{id}");
    drop(img);
    let again = fx.be.open("rbd", "img", None, true).unwrap();
    assert_eq!(again.stat().unwrap().block_name_prefix, st.block_name_prefix, "the id is stable");
}

#[test]
fn create_refuses_an_existing_name_before_checking_options() {
    let fx = Fx::new();
    fx.be.create("rbd", "img", MIB, &Default::default()).unwrap();
    assert_eq!(kind(fx.be.create("rbd", "img", MIB, &Default::default())), "exists");
    assert_eq!(kind(fx.be.create("rbd", "img", MIB, &order_opts(30))), "exists");
}

#[test]
fn create_order_must_be_12_to_25() {
    let fx = Fx::new();
    for (order, want) in [(11, "out-of-range"), (26, "out-of-range"), (30, "out-of-range"), (12, "ok"), (25, "ok")] {
        assert_eq!(kind(fx.be.create("rbd", &format!("o{order}"), MIB, &order_opts(order))), want, "{order}");
    }
    fx.be.create("rbd", "o0", MIB, &order_opts(0)).unwrap();
    let img = fx.be.open("rbd", "o0", None, false).unwrap();
    assert_eq!(img.stat().unwrap().order, 22, "order 0 is the default");
    fx.be.create("rbd", "o25b", 8 * MIB, &order_opts(25)).unwrap();
    let img = fx.be.open("rbd", "o25b", None, false).unwrap();
    assert_eq!(img.stat().unwrap().num_objs, 1);
}

#[test]
fn old_format_takes_no_features_or_striping_and_makes_a_default_image() {
    let fx = Fx::new();
    let old = |features, stripe_unit, stripe_count| CreateOptions {
        old_format: true,
        features,
        stripe_unit,
        stripe_count,
        ..Default::default()
    };
    assert_eq!(kind(fx.be.create("rbd", "a", MIB, &old(1, 0, 0))), "invalid-argument");
    assert_eq!(kind(fx.be.create("rbd", "b", MIB, &old(0, 65536, 2))), "invalid-argument");
    assert_eq!(kind(fx.be.create("rbd", "c", MIB, &old(0, 0, 2))), "invalid-argument");
    fx.be.create("rbd", "d", MIB, &old(0, 0, 0)).unwrap();
    let img = fx.be.open("rbd", "d", None, false).unwrap();
    assert_eq!(img.features().unwrap(), features::DEFAULT);
    assert!(!img.old_format().unwrap());
}

#[test]
fn feature_bits_are_checked_like_librbd() {
    let fx = Fx::new();
    let with = |f| CreateOptions { features: f, ..Default::default() };
    let cases: [(u64, &str); 6] = [
        (1 << 40, "not-supported"),
        (1 | 1 << 20, "not-supported"),
        (256, "invalid-argument"),
        (features::LAYERING | features::OBJECT_MAP, "invalid-argument"),
        (features::JOURNALING, "invalid-argument"),
        (features::DEEP_FLATTEN, "ok"),
    ];
    for (i, (bits, want)) in cases.into_iter().enumerate() {
        assert_eq!(kind(fx.be.create("rbd", &format!("f{i}"), MIB, &with(bits))), want, "{bits:#x}");
    }
    fx.be.create("rbd", "fd", MIB, &with(1 | 4 | 16)).unwrap();
    assert_eq!(fx.be.open("rbd", "fd", None, false).unwrap().features().unwrap(), 5, "fast-diff dropped");
    fx.be.create("rbd", "l", MIB, &with(features::LAYERING)).unwrap();
    assert_eq!(fx.be.open("rbd", "l", None, false).unwrap().features().unwrap(), features::LAYERING);
}

#[test]
fn striping_is_validated_stored_and_sets_stripingv2() {
    let fx = Fx::new();
    let s = |features, stripe_unit, stripe_count| CreateOptions { features, stripe_unit, stripe_count, ..Default::default() };
    assert_eq!(kind(fx.be.create("rbd", "a", MIB, &s(3, 3000, 2))), "invalid-argument");
    assert_eq!(kind(fx.be.create("rbd", "b", MIB, &s(3, 8 * MIB, 1))), "invalid-argument");
    assert_eq!(kind(fx.be.create("rbd", "c", MIB, &s(0, 65536, 0))), "invalid-argument");
    assert_eq!(kind(fx.be.create("rbd", "d", MIB, &s(0, 0, 2))), "invalid-argument");
    for (name, opts, want) in [
        ("e", s(1, 65536, 2), (3, 65536, 2)),
        ("f", s(3, 65536, 2), (3, 65536, 2)),
        ("g", s(0, 65536, 2), (63, 65536, 2)),
        ("h", s(3, 4 * MIB, 1), (1, 4 * MIB, 1)),
    ] {
        fx.be.create("rbd", name, 8 * MIB, &opts).unwrap();
        let img = fx.be.open("rbd", name, None, false).unwrap();
        let got = (img.features().unwrap(), img.stripe_unit().unwrap(), img.stripe_count().unwrap());
        assert_eq!(got, want, "{name}");
    }
    let img = fx.be.open("rbd", "g", None, false).unwrap();
    let data = pattern(300_000, 3);
    img.write(12345, &data).unwrap();
    assert_eq!(img.read(12345, data.len() as u64).unwrap(), data, "striped images read back");
}

#[test]
fn a_zero_size_image_can_be_created_and_refuses_io() {
    let fx = Fx::new();
    let img = fx.image("z", 0, 22);
    assert_eq!(img.size().unwrap(), 0);
    assert_eq!(img.stat().unwrap().num_objs, 0);
    assert_eq!(img.read(0, 0).unwrap(), Vec::<u8>::new());
    assert_eq!(kind(img.read(0, 1)), "invalid-argument");
    assert_eq!(img.write(0, b"").unwrap(), 0);
    assert_eq!(kind(img.write(0, b"x")), "invalid-argument");
}

#[test]
fn image_names_follow_the_rule_when_created_and_are_not_found_when_looked_up() {
    let fx = Fx::new();
    // librbd: "" is invalid, a name RADOS cannot store is ENAMETOOLONG (`other`), and a
    // name that cannot exist is not found when looked up.
    let too_long = "x".repeat(2042);
    assert_eq!(kind(fx.be.create("rbd", "", MIB, &Default::default())), "invalid-argument");
    assert_eq!(kind(fx.be.create("rbd", &too_long, MIB, &Default::default())), "other");
    for bad in ["", too_long.as_str()] {
        assert_eq!(kind(fx.be.open("rbd", bad, None, false)), "not-found", "{bad:?}");
        assert_eq!(kind(fx.be.remove("rbd", bad)), "not-found", "{bad:?}");
    }
    // `/`, `@` and 2041 bytes are names, as on librbd.
    for good in ["a/b", "a@b", &"z".repeat(2041)] {
        fx.be.create("rbd", good, MIB, &Default::default()).unwrap();
        fx.be.open("rbd", good, None, false).unwrap();
        fx.be.remove("rbd", good).unwrap();
    }
    assert_eq!(kind(fx.be.create("rbd", "a\0b", MIB, &Default::default())), "type-error");
    assert_eq!(kind(fx.be.open("rbd", "a\0b", None, false)), "type-error");
    fx.be.create("rbd", &"y".repeat(255), MIB, &Default::default()).unwrap();
    fx.be.create("rbd", ".", MIB, &Default::default()).unwrap();
    fx.be.create("rbd", "é ok\n", MIB, &Default::default()).unwrap();
    assert_eq!(fx.be.list("rbd").unwrap().len(), 3);
}

#[test]
fn list_is_sorted() {
    let fx = Fx::new();
    for n in ["b", "C", "a", "10", "9"] {
        fx.be.create("rbd", n, MIB, &Default::default()).unwrap();
    }
    assert_eq!(fx.be.list("rbd").unwrap(), vec!["10", "9", "C", "a", "b"]);
}

#[test]
fn remove_answers_not_found_has_snapshots_and_busy() {
    let fx = Fx::new();
    assert_eq!(kind(fx.be.remove("rbd", "missing")), "not-found");
    let img = fx.image("snapped", MIB, 22);
    img.create_snap("s").unwrap();
    drop(img);
    assert_eq!(kind(fx.be.remove("rbd", "snapped")), "has-snapshots");

    let open = fx.image("open", MIB, 22);
    assert_eq!(kind(fx.be.remove("rbd", "open")), "busy");
    let other_client = fx.client();
    assert_eq!(kind(other_client.remove("rbd", "open")), "busy", "a watch from another client");
    drop(open);
    let dir = fx.image_dir("rbd", "open");
    fx.be.remove("rbd", "open").unwrap();
    assert!(!dir.exists(), "the image directory is deleted");
    assert_eq!(fx.be.list("rbd").unwrap(), vec!["snapped"]);
    assert_eq!(kind(fx.be.open("rbd", "open", None, false)), "not-found");
}

/// A process another thread forks holds copies of every descriptor until its `exec`: an
/// image closed meanwhile must not stay busy for `remove` (CI saw it: a test removed the image
/// its job had just closed while another test spawned a build).
#[test]
fn remove_waits_out_a_forked_child_holding_a_closed_images_watch() {
    use std::os::unix::process::CommandExt;
    let fx = Fx::new();
    let open = fx.image("img", MIB, 22);
    let mut child = std::process::Command::new("true");
    // SAFETY: the closure only sleeps (nanosleep is async-signal-safe) before the exec.
    unsafe {
        child.pre_exec(|| {
            std::thread::sleep(std::time::Duration::from_millis(150));
            Ok(())
        });
    }
    // `spawn` returns after the exec: fork on another thread, as the other test did.
    let spawner = std::thread::spawn(move || child.spawn().unwrap().wait().unwrap());
    std::thread::sleep(std::time::Duration::from_millis(50));
    drop(open);
    let started = std::time::Instant::now();
    fx.be.remove("rbd", "img").unwrap();
    assert!(started.elapsed() < super::super::OPEN_CHECK_PATIENCE, "{:?}", started.elapsed());
    spawner.join().unwrap();
}

#[test]
fn remove_with_snapshots_wins_over_busy() {
    let fx = Fx::new();
    let img = fx.image("img", MIB, 22);
    img.create_snap("s").unwrap();
    assert_eq!(kind(fx.be.remove("rbd", "img")), "has-snapshots");
}

#[test]
fn a_read_only_open_does_not_block_remove_like_librbd() {
    let fx = Fx::new();
    fx.image("img", MIB, 22);
    let ro = fx.be.open("rbd", "img", None, true).unwrap();
    fx.be.remove("rbd", "img").unwrap();
    assert_eq!(kind(ro.read(0, 1)), "not-found", "its image is gone");
}

#[test]
fn an_open_at_a_snapshot_is_a_watcher() {
    let fx = Fx::new();
    let img = fx.image("img", MIB, 22);
    img.create_snap("s").unwrap();
    drop(img);
    let at = fx.be.open("rbd", "img", Some("s"), false).unwrap();
    at.set_snap(None).unwrap();
    at.remove_snap("s").unwrap();
    assert_eq!(kind(fx.be.remove("rbd", "img")), "busy");
}

#[test]
fn rename_moves_the_name_and_keeps_open_handles_working() {
    let fx = Fx::new();
    let img = fx.image("src", MIB, 22);
    img.write(0, b"kept").unwrap();
    fx.be.create("rbd", "other", MIB, &Default::default()).unwrap();
    assert_eq!(kind(fx.be.rename("rbd", "missing", "x")), "not-found");
    assert_eq!(kind(fx.be.rename("rbd", "src", "other")), "exists");
    assert_eq!(kind(fx.be.rename("rbd", "src", "src")), "exists");
    assert_eq!(kind(fx.be.rename("rbd", "src", &"x".repeat(2042))), "other");
    assert_eq!(kind(fx.be.rename("rbd", "src", "")), "invalid-argument");
    assert_eq!(kind(fx.be.rename("rbd", "src", "a\0")), "type-error");
    fx.be.rename("rbd", "src", "dst").unwrap();
    assert_eq!(fx.be.list("rbd").unwrap(), vec!["dst", "other"]);
    assert_eq!(img.write(4, b"!").unwrap(), 1, "the open handle still works");
    let again = fx.be.open("rbd", "dst", None, false).unwrap();
    assert_eq!(again.read(0, 5).unwrap(), b"kept!");
    assert_eq!(kind(fx.be.open("rbd", "src", None, false)), "not-found");
}

#[test]
fn open_answers_not_found_for_missing_images_and_snapshots() {
    let fx = Fx::new();
    assert_eq!(kind(fx.be.open("rbd", "missing", None, false)), "not-found");
    fx.image("img", MIB, 22);
    assert_eq!(kind(fx.be.open("rbd", "img", Some("nope"), false)), "not-found");
    assert_eq!(kind(fx.be.open("rbd", "img", Some("a@b"), false)), "not-found");
}

#[test]
fn open_at_a_snapshot_reads_it_and_is_read_only_until_set_snap_none() {
    let fx = Fx::new();
    let img = fx.image("img", MIB, 22);
    img.write(0, b"old").unwrap();
    img.create_snap("s").unwrap();
    img.write(0, b"new").unwrap();
    let at = fx.be.open("rbd", "img", Some("s"), false).unwrap();
    assert_eq!(at.read(0, 3).unwrap(), b"old");
    assert_eq!(kind(at.write(0, b"x")), "read-only");
    at.set_snap(None).unwrap();
    assert_eq!(at.read(0, 3).unwrap(), b"new");
    assert_eq!(at.write(0, b"x").unwrap(), 1);
}

#[test]
fn a_read_only_open_refuses_every_change_but_locks_and_copy() {
    let fx = Fx::new();
    let img = fx.image("img", MIB, 22);
    img.create_snap("s").unwrap();
    drop(img);
    let ro = fx.be.open("rbd", "img", None, true).unwrap();
    assert_eq!(kind(ro.write(0, b"x")), "read-only");
    assert_eq!(kind(ro.discard(0, 10)), "read-only");
    assert_eq!(kind(ro.resize(2 * MIB)), "read-only");
    assert_eq!(kind(ro.create_snap("t")), "read-only");
    assert_eq!(kind(ro.remove_snap("s")), "read-only");
    assert_eq!(kind(ro.protect_snap("s")), "read-only");
    assert_eq!(kind(ro.unprotect_snap("s")), "read-only");
    assert_eq!(kind(ro.rollback_to_snap("s")), "read-only");
    assert_eq!(kind(ro.flatten()), "read-only");
    ro.flush().unwrap();
    ro.invalidate_cache().unwrap();
    assert_eq!(ro.read(0, 4).unwrap(), vec![0; 4]);
    ro.set_snap(Some("s")).unwrap();
    ro.set_snap(None).unwrap();
    assert_eq!(kind(ro.write(0, b"x")), "read-only");
    ro.lock_exclusive("c").unwrap();
    ro.unlock("c").unwrap();
    ro.copy("rbd", "copied").unwrap();
}

#[test]
fn everything_persists_across_reopening_the_store() {
    let fx = Fx::new();
    fx.be.create_pool("two").unwrap();
    let img = fx.image("img", 3 * MIB, 20);
    let data = pattern((2 * MIB) as usize, 7);
    img.write(100, &data).unwrap();
    img.create_snap("s").unwrap();
    img.protect_snap("s").unwrap();
    img.write(0, b"head").unwrap();
    img.flush().unwrap();
    // A writer holds the exclusive-lock feature's lock until it closes; then an advisory
    // lock can be taken (by another handle of the same client).
    drop(img);
    let img = fx.be.open("rbd", "img", None, false).unwrap();
    img.lock_shared("cookie", "tag").unwrap();
    fx.be.clone_image("rbd", "img", "s", "two", "child", &Default::default()).unwrap();
    let client = fx.be.client_name();
    drop(img);
    drop(fx.be);

    let be = EmbeddedBackend::open(fx.dir.path()).unwrap();
    assert_eq!(be.list_pools().unwrap(), vec!["rbd", "two"]);
    let img = be.open("rbd", "img", None, false).unwrap();
    assert_eq!(img.read(0, 4).unwrap(), b"head");
    assert_eq!(img.read(100 + 4, 1000).unwrap(), data[4..1004]);
    img.set_snap(Some("s")).unwrap();
    assert_eq!(img.read(100, data.len() as u64).unwrap(), data);
    assert!(img.is_protected_snap("s").unwrap());
    let lockers = img.list_lockers().unwrap();
    assert_eq!((lockers.tag.as_str(), lockers.lockers[0].client.as_str()), ("tag", client.as_str()));
    let child = be.open("two", "child", None, false).unwrap();
    assert_eq!(child.read(100, data.len() as u64).unwrap(), data);
    assert_eq!(img.list_children().unwrap().len(), 1);
}

#[test]
fn errors_carry_the_error_type() {
    let fx = Fx::new();
    assert!(matches!(fx.be.open("rbd", "x", None, false), Err(Error::NotFound(_))));
}
