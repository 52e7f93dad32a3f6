//! Crash safety: what a kill at each step leaves behind is the old or the new state, and the
//! leftovers are collected. The first tests plant a step's leftovers by hand; the last one
//! kills a real writer process at random moments.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const OBJ: u64 = 4 * KIB;

/// The object files an image's header references, and those in its directory.
fn object_files(image_dir: &Path) -> (HashSet<String>, HashSet<String>) {
    let header: serde_json::Value = serde_json::from_slice(&fs::read(image_dir.join("header.json")).unwrap()).unwrap();
    let mut referenced = HashSet::new();
    let maps = std::iter::once(&header["objects"])
        .chain(header["snaps"].as_array().unwrap().iter().map(|s| &s["objects"]));
    for map in maps {
        for (objno, gen) in map.as_object().unwrap() {
            let gen = gen.as_u64().unwrap();
            if gen != 0 {
                referenced.insert(format!("{:016x}.{gen}", objno.parse::<u64>().unwrap()));
            }
        }
    }
    let mut present: HashSet<String> = fs::read_dir(image_dir.join("objects"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // An overlap file (what a copied object shares with its origin) goes with its object file.
    let overlaps: Vec<String> = present.iter().filter(|n| n.ends_with(".overlap")).cloned().collect();
    for name in overlaps {
        present.remove(&name);
        let object = name.trim_end_matches(".overlap");
        assert!(present.contains(object) || !referenced.contains(object), "overlap {name} without its object file");
        if !referenced.contains(object) {
            present.insert(name);
        }
    }
    (referenced, present)
}

fn names(dir: &Path) -> HashSet<String> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn a_kill_before_a_header_commit_leaves_the_old_state_and_its_leftovers_are_collected() {
    let fx = Fx::new();
    let img = fx.image("img", 4 * OBJ, 12);
    img.write(0, &[1; 8192]).unwrap();
    img.create_snap("s").unwrap();
    drop(img);
    let dir = fx.image_dir("rbd", "img");
    // A copy-on-write that got as far as its new object file, and a header half written.
    let (referenced, _) = object_files(&dir);
    let frozen = referenced.iter().next().unwrap().clone();
    let objno = frozen.split('.').next().unwrap().to_string();
    fs::write(dir.join("objects").join(format!("{objno}.999")), [9u8; 4096]).unwrap();
    fs::write(dir.join(".header.json.tmp.00000000deadbeef"), b"{\"id\": \"trunc").unwrap();

    let other = fx.client();
    let img = other.open("rbd", "img", None, false).unwrap();
    assert_eq!(img.read(0, 8192).unwrap(), vec![1; 8192], "the old state");
    img.write(3 * OBJ, b"allocates").unwrap();
    let (referenced, present) = object_files(&dir);
    assert_eq!(present, referenced, "the orphan object file is collected");
    assert!(!names(&dir).iter().any(|n| n.contains(".tmp.")), "the temporary header is collected");
    img.set_snap(Some("s")).unwrap();
    assert_eq!(img.read(0, 8192).unwrap(), vec![1; 8192]);
}

#[test]
fn a_kill_before_a_directory_commit_leaves_no_image() {
    let fx = Fx::new();
    fx.be.create("rbd", "keep", MIB, &Default::default()).unwrap();
    let pool = fx.pool_dir("rbd");
    // A create killed after building the image directory, and a directory.json half written.
    let orphan = pool.join("images").join("0123456789ab");
    fs::create_dir_all(orphan.join("objects")).unwrap();
    fs::write(orphan.join("header.json"), b"{}").unwrap();
    fs::write(pool.join(".directory.json.tmp.0000000000000001"), b"{\"images\":{\"gho").unwrap();

    let other = fx.client();
    assert_eq!(other.list("rbd").unwrap(), vec!["keep"]);
    other.create("rbd", "next", MIB, &Default::default()).unwrap();
    assert!(!orphan.exists(), "the unfinished image directory is collected");
    assert!(!names(&pool).iter().any(|n| n.contains(".tmp.")));
    assert_eq!(names(&pool.join("images")).len(), 2);
}

#[test]
fn a_kill_after_a_remove_commit_leaves_a_directory_that_is_collected() {
    let fx = Fx::new();
    let img = fx.image("gone", 2 * OBJ, 12);
    img.write(0, &[1; 100]).unwrap();
    drop(img);
    let dir = fx.image_dir("rbd", "gone");
    // The remove committed (the name is gone) but was killed before deleting the directory.
    let path = fx.pool_dir("rbd").join("directory.json");
    fs::write(&path, b"{\"images\":{}}").unwrap();
    let other = fx.client();
    assert_eq!(other.list("rbd").unwrap(), Vec::<String>::new());
    assert_eq!(kind(other.open("rbd", "gone", None, false)), "not-found");
    other.create("rbd", "gone", MIB, &Default::default()).unwrap();
    assert!(!dir.exists());
}

#[test]
fn a_kill_during_pool_creation_leaves_no_pool() {
    let fx = Fx::new();
    let staging = fx.dir.path().join("tmp").join("pool.00000000000000aa");
    fs::create_dir_all(staging.join("images")).unwrap();
    fs::write(staging.join("directory.json"), b"{\"images\":{}}").unwrap();
    let other = fx.client();
    assert_eq!(other.list_pools().unwrap(), vec!["rbd"]);
    assert!(!staging.exists(), "staging leftovers are collected when a client opens the store");
    other.create_pool("p").unwrap();
    assert_eq!(other.list_pools().unwrap(), vec!["p", "rbd"]);
}

const WORKER_ENV: &str = "RBD_EMBEDDED_CRASH_WORKER";
const WORKER_SIZE: u64 = 16 * OBJ;

/// The writer that gets killed: round `i` writes `pattern(i)` over the whole image in random
/// pieces, snapshots it as `s<i>`, then discards and resizes at random.
fn worker(root: &str) {
    let be = EmbeddedBackend::open(Path::new(root)).unwrap();
    let img = be.open("rbd", "img", None, false).unwrap();
    let mut rng = StdRng::seed_from_u64(u64::from(std::process::id()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = img.list_snaps().unwrap().len();
    while Instant::now() < deadline {
        let data = pattern(WORKER_SIZE as usize, i as u8);
        img.resize(WORKER_SIZE).unwrap();
        let mut off = 0usize;
        while off < data.len() {
            let n = rng.random_range(1..3 * OBJ as usize).min(data.len() - off);
            img.write(off as u64, &data[off..off + n]).unwrap();
            off += n;
        }
        img.create_snap(&format!("s{i}")).unwrap();
        let at = rng.random_range(0..WORKER_SIZE);
        img.discard(at, rng.random_range(1..4 * OBJ)).unwrap();
        img.resize(rng.random_range(0..WORKER_SIZE)).unwrap();
        i += 1;
    }
}

#[test]
fn killed_writers_leave_a_consistent_store() {
    if let Ok(root) = std::env::var(WORKER_ENV) {
        worker(&root);
        return;
    }
    let fx = Fx::new();
    fx.image("img", WORKER_SIZE, 12);
    let exe = std::env::current_exe().unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let test = "embedded::tests::crash::killed_writers_leave_a_consistent_store";
    for round in 0..5 {
        let mut child = Command::new(&exe)
            .args(["--exact", test, "--test-threads=1", "--quiet"])
            .env(WORKER_ENV, fx.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
        child.kill().unwrap();
        child.wait().unwrap();

        let be = fx.client();
        let img = be.open("rbd", "img", None, false).unwrap();
        // The killed writer's watch went with it, as Ceph drops a dead client's watch.
        let watchers: Vec<String> = img.list_watchers().unwrap().into_iter().map(|w| w.client).collect();
        assert_eq!(watchers, [be.client_name()], "round {round}: only the live client watches");
        let snaps = img.list_snaps().unwrap();
        for s in &snaps {
            let i: usize = s.name[1..].parse().unwrap();
            img.set_snap(Some(&s.name)).unwrap();
            assert_eq!(s.size, WORKER_SIZE);
            assert!(read_all(&*img) == pattern(WORKER_SIZE as usize, i as u8), "round {round}: snapshot {} changed", s.name);
        }
        img.set_snap(None).unwrap();
        read_all(&*img);
        // A killed writer's exclusive-lock feature's lock outlives it, as on a cluster
        // (until a writer takes it over, or someone breaks it); then an advisory lock can
        // be taken.
        if img.list_lockers().unwrap().tag == "internal" {
            let holder = img.list_lockers().unwrap().lockers[0].clone();
            img.break_lock(&holder.client, &holder.cookie).unwrap();
        }
        img.lock_exclusive("gc").unwrap();
        img.unlock("gc").unwrap();
        let dir = fx.image_dir("rbd", "img");
        let (referenced, present) = object_files(&dir);
        assert_eq!(present, referenced, "round {round}: leftovers collected");
        assert!(!names(&dir).iter().any(|n| n.contains(".tmp.")));
    }
}
