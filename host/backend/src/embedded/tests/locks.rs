//! Advisory locks across two clients, answering as the cluster did (scripts/probe-librbd.py).

use super::*;
use crate::{LockInfo, Locker};

#[test]
fn exclusive_locks_between_two_clients() {
    let fx = Fx::new();
    let a = fx.image("img", MIB, 22);
    let other = fx.client();
    let b = other.open("rbd", "img", None, false).unwrap();
    let a2 = fx.be.open("rbd", "img", None, false).unwrap();
    assert_eq!(a.list_lockers().unwrap(), LockInfo::default());
    a.lock_exclusive("c1").unwrap();
    let me = fx.be.client_name();
    let info = b.list_lockers().unwrap();
    assert!(info.exclusive && info.tag.is_empty());
    assert_eq!(info.lockers.len(), 1);
    assert_eq!((info.lockers[0].client.as_str(), info.lockers[0].cookie.as_str()), (me.as_str(), "c1"));
    assert!(info.lockers[0].address.starts_with("embedded:"), "{}", info.lockers[0].address);
    assert_eq!(kind(a.lock_exclusive("c1")), "exists");
    assert_eq!(kind(a2.lock_exclusive("c1")), "exists", "same client through another handle");
    assert_eq!(kind(a.lock_exclusive("c2")), "busy");
    assert_eq!(kind(b.lock_exclusive("c1")), "busy");
    assert_eq!(kind(b.lock_shared("s", "t")), "busy");
    assert_eq!(kind(a.lock_shared("c1", "t")), "busy", "a tag conflict comes first");
    assert_eq!(kind(b.write(0, b"x")), "busy", "exclusive-lock feature: librbd's write would wait for the lock");
    assert_eq!(kind(b.unlock("c1")), "not-found");
    a2.unlock("c1").unwrap();
    a.lock_exclusive("c1").unwrap();
    assert_eq!(kind(a.unlock("nope")), "not-found");
    a.unlock("c1").unwrap();
    assert_eq!(kind(a.unlock("c1")), "not-found");
    assert_eq!(a.list_lockers().unwrap(), LockInfo::default());
}

#[test]
fn shared_locks_need_the_same_tag() {
    let fx = Fx::new();
    let a = fx.image("img", MIB, 22);
    let other = fx.client();
    let b = other.open("rbd", "img", None, false).unwrap();
    a.lock_shared("s1", "tagA").unwrap();
    b.lock_shared("s2", "tagA").unwrap();
    assert_eq!(kind(b.lock_shared("s3", "tagB")), "busy");
    assert_eq!(kind(a.lock_shared("s1", "tagA")), "exists");
    assert_eq!(kind(a.lock_shared("s1", "other")), "busy");
    a.lock_shared("s4", "tagA").unwrap();
    assert_eq!(kind(a.lock_exclusive("x")), "busy");
    assert_eq!(kind(a.lock_shared("s5", "")), "busy");
    let info = a.list_lockers().unwrap();
    assert!(!info.exclusive);
    assert_eq!(info.tag, "tagA");
    let mut want = vec![
        Locker { client: fx.be.client_name(), cookie: "s1".into(), address: info.lockers[0].address.clone() },
        Locker { client: fx.be.client_name(), cookie: "s4".into(), address: info.lockers[0].address.clone() },
        Locker { client: other.client_name(), cookie: "s2".into(), address: String::new() },
    ];
    want[2].address = info.lockers.iter().find(|l| l.cookie == "s2").unwrap().address.clone();
    want.sort();
    assert_eq!(info.lockers, want, "sorted");
}

#[test]
fn break_lock_removes_another_clients_lock() {
    let fx = Fx::new();
    let a = fx.image("img", MIB, 22);
    let other = fx.client();
    let b = other.open("rbd", "img", None, false).unwrap();
    b.lock_exclusive("theirs").unwrap();
    assert_eq!(kind(a.break_lock(&other.client_name(), "nope")), "not-found");
    assert_eq!(kind(a.break_lock("client.999999", "theirs")), "not-found");
    assert_eq!(kind(a.break_lock("bogus", "theirs")), "invalid-argument");
    a.break_lock(&other.client_name(), "theirs").unwrap();
    assert_eq!(a.list_lockers().unwrap(), LockInfo::default());
    a.lock_exclusive("mine").unwrap();
}

/// `break_lock` blocklists the holder, as `rbd_blocklist_on_break_lock` makes librbd do:
/// its every later call answers `ConnectionShutdown`, its watch is gone; a client that
/// breaks its own lock blocklists itself and the lock stays.
#[test]
fn break_lock_blocklists_the_holder_and_breaking_ones_own_blocklists_oneself() {
    let fx = Fx::new();
    let a = fx.image("img", MIB, 22);
    let other = fx.client();
    let b = other.open("rbd", "img", None, false).unwrap();
    b.lock_exclusive("theirs").unwrap();
    a.break_lock(&other.client_name(), "theirs").unwrap();
    for (what, k) in [
        ("read", kind(b.read(0, 1))),
        ("write", kind(b.write(0, b"x"))),
        ("list_lockers", kind(b.list_lockers())),
        ("unlock", kind(b.unlock("theirs"))),
        ("list", kind(other.list("rbd"))),
        ("open", kind(other.open("rbd", "img", None, true))),
    ] {
        assert_eq!(k, "connection-shutdown", "{what}");
    }
    let watchers: Vec<String> = a.list_watchers().unwrap().into_iter().map(|w| w.client).collect();
    assert_eq!(watchers, [fx.be.client_name()], "the blocklisted client's watch is gone");
    let third = fx.client();
    let c = third.open("rbd", "img", None, false).unwrap();
    c.lock_exclusive("mine").unwrap();
    assert_eq!(kind(c.break_lock(&third.client_name(), "mine")), "connection-shutdown");
    assert_eq!(a.list_lockers().unwrap().lockers.len(), 1, "the lock stays");
    assert_eq!(kind(c.read(0, 1)), "connection-shutdown", "the breaker blocklisted itself");
    a.break_lock(&third.client_name(), "mine").unwrap();
    a.write(0, b"a").unwrap();
}

/// With the exclusive-lock feature a write takes the feature's lock: advisory locks are busy
/// then (the writer's own too); another handle's write takes it over; the holder's close
/// releases it. Without the feature nothing is taken.
#[test]
fn a_write_takes_the_exclusive_lock_features_lock_until_close() {
    let fx = Fx::new();
    let a = fx.image("img", MIB, 22);
    a.write(0, b"a").unwrap();
    let info = a.list_lockers().unwrap();
    assert_eq!((info.tag.as_str(), info.exclusive, info.lockers.len()), ("internal", true, 1));
    assert!(info.lockers[0].cookie.starts_with("auto "), "{:?}", info.lockers[0]);
    assert_eq!(kind(a.lock_exclusive("c")), "busy", "the writer's own");
    let other = fx.client();
    let b = other.open("rbd", "img", None, false).unwrap();
    b.discard(0, 4096).unwrap();
    let after = a.list_lockers().unwrap();
    assert_eq!(after.lockers[0].client, other.client_name(), "handed over");
    a.write(1, b"a").unwrap();
    assert_eq!(a.list_lockers().unwrap().lockers[0].cookie, info.lockers[0].cookie, "and back");
    drop(b);
    assert_eq!(a.list_lockers().unwrap().lockers.len(), 1, "a close that does not hold it keeps it");
    drop(a);
    let c = fx.be.open("rbd", "img", None, false).unwrap();
    assert_eq!(c.list_lockers().unwrap(), LockInfo::default(), "released at close");
    c.lock_exclusive("c").unwrap();
    assert_eq!(kind(c.write(0, b"x")), "busy", "an advisory lock still shuts writes out");

    let plain = CreateOptions { features: crate::features::LAYERING, ..order_opts(22) };
    fx.be.create("rbd", "plain", MIB, &plain).unwrap();
    let p = fx.be.open("rbd", "plain", None, false).unwrap();
    p.write(0, b"x").unwrap();
    assert_eq!(p.list_lockers().unwrap(), LockInfo::default(), "no feature, no lock");
}

#[test]
fn locks_outlive_their_clients() {
    let fx = Fx::new();
    let other = fx.client();
    fx.image("img", MIB, 22);
    let b = other.open("rbd", "img", None, false).unwrap();
    b.lock_exclusive("c").unwrap();
    let name = other.client_name();
    drop(b);
    drop(other);
    let a = fx.be.open("rbd", "img", None, false).unwrap();
    assert_eq!(kind(a.lock_exclusive("c")), "busy", "like a crashed client's lock");
    a.break_lock(&name, "c").unwrap();
    a.lock_exclusive("c").unwrap();
}

#[test]
fn writable_opens_are_watchers_until_they_close() {
    let fx = Fx::new();
    let a = fx.image("img", MIB, 22);
    let other = fx.client();
    let b = other.open("rbd", "img", None, false).unwrap();
    let read_only = other.open("rbd", "img", None, true).unwrap();
    let watchers = a.list_watchers().unwrap();
    let clients: Vec<&str> = watchers.iter().map(|w| w.client.as_str()).collect();
    let mut expected = vec![fx.be.client_name(), other.client_name()];
    expected.sort();
    assert_eq!(clients, expected, "two writable opens; the read-only one does not watch");
    assert_ne!(watchers[0].cookie, watchers[1].cookie);
    assert!(watchers.iter().all(|w| w.address.starts_with("embedded:")));
    drop(b);
    let watchers = read_only.list_watchers().unwrap();
    assert_eq!(watchers.len(), 1);
    assert_eq!(watchers[0].client, fx.be.client_name());
    // A watcher file nobody holds is a dead process's: not listed, and removed.
    let dead = fx.image_dir("rbd", "img").join("watchers").join("client.999.1");
    std::fs::write(&dead, br#"{"client":"client.999","address":"embedded:1/999","cookie":1}"#).unwrap();
    assert_eq!(a.list_watchers().unwrap().len(), 1);
    assert!(!dead.exists(), "the dead watcher's file is collected");
}
