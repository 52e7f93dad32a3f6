//! Several runners backing up the same images into one repository at once: they agree
//! through Ceph (a pool-wide mutex, the advisory lock of an image, under which a runner
//! creates the `backup-N` snapshot it claims), so each image is backed up exactly once per
//! snapshot, on both backends.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use rbd_wasm::backend::{Backend, CreateOptions};
use rbd_wasm_tests::{guest, host_binary, run_with_output, test_cache_dir, unique_prefix};

/// Where a runner finds the images: a Ceph conf file or an embedded store's directory.
enum Cluster<'a> {
    Ceph(&'a Path),
    Store(&'a Path),
}

fn spawn_runner(cluster: &Cluster, out: &Path, args: &[String]) -> Child {
    let mut cmd = Command::new(host_binary());
    cmd.arg("run");
    match cluster {
        Cluster::Ceph(conf) => cmd.arg("-c").arg(conf),
        Cluster::Store(dir) => cmd.arg("--store").arg(dir),
    };
    cmd.arg("--output-dir")
        .arg(out)
        .arg(guest("backup"))
        .arg("--")
        .args(args)
        .env("RBD_WASM_CACHE", test_cache_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rbd-wasm")
}

fn finish(child: Child) -> String {
    let out = child.wait_with_output().expect("wait for a runner");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // 75: this runner backed up nothing because the other held every image it wanted.
    assert!(out.status.success() || out.status.code() == Some(75), "a runner failed:\n{text}");
    text
}

/// Three rounds of two runners started together over six images, changing the images
/// between rounds: after each round every image has exactly one more backup, of one more
/// snapshot, and the two runners' reports split the images between them.
fn two_runners_back_up_each_image_once_per_snapshot(backend: Arc<dyn Backend>, cluster: Cluster) {
    let prefix = unique_prefix("runners");
    let images: Vec<String> = (0..6).map(|i| format!("{prefix}-{i}")).collect();
    for name in &images {
        backend.create("rbd", name, 8 << 20, &CreateOptions::default()).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    // A runner whose image's newest backup is under 5 s old calls it up to date.
    let mut args = vec!["rbd".to_string()];
    args.extend(images.iter().cloned());
    args.extend(["--every".to_string(), "5".to_string()]);
    for round in 1..=3u64 {
        for (i, name) in images.iter().enumerate() {
            let img = backend.open("rbd", name, None, false).unwrap();
            img.write(round * 1_000_003 + i as u64 * 4096, format!("round {round} image {i}").as_bytes()).unwrap();
        }
        let a = spawn_runner(&cluster, out.path(), &args);
        let b = spawn_runner(&cluster, out.path(), &args);
        let (a, b) = (finish(a), finish(b));
        for name in &images {
            let dir = out.path().join("rbd").join(name);
            let manifests = std::fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json")).count();
            assert_eq!(manifests as u64, round, "{name} after round {round}:\n--- a\n{a}--- b\n{b}");
            let snaps: Vec<String> = backend.open("rbd", name, None, true).unwrap().list_snaps().unwrap().into_iter().map(|s| s.name).collect();
            assert_eq!(snaps, (1..=round).map(|n| format!("backup-{n}")).collect::<Vec<_>>(), "{name} after round {round}");
            let did = |report: &str| report.lines().any(|l| l.contains(&format!("rbd/{name}: ")) && (l.contains(": full backup of ") || l.contains(": incremental backup ")));
            assert!(did(&a) != did(&b), "{name}, round {round}: exactly one runner backs it up:\n--- a\n{a}--- b\n{b}");
        }
        if round < 3 {
            std::thread::sleep(std::time::Duration::from_secs(6));
        }
    }
}

/// A `backup-N` snapshot without a complete backup is another runner's while that runner
/// holds its claim (a shared lock of `rbd-wasm-backup-running`), still watches the claims
/// image (it has it open) and the claim is younger than `--claim-timeout`; without its
/// claim, or once its client no longer watches, its runner is gone and the next run takes
/// over at once. `killed` is another client, standing for another runner: open, it is a
/// live one; closed without letting go of its locks, one killed outright.
fn an_unfinished_claim_is_left_alone_until_it_times_out(backend: Arc<dyn Backend>, killed: &dyn Fn() -> Arc<dyn Backend>) {
    let src = format!("{}-claim", unique_prefix("runners"));
    backend.create("rbd", &src, 4 << 20, &CreateOptions::default()).unwrap();
    let img = backend.open("rbd", &src, None, false).unwrap();
    img.write(0, b"claimed").unwrap();
    // A snapshot whose runner is gone (it left no claim): taken over at once.
    img.create_snap("backup-1").unwrap();
    let out = tempfile::tempdir().unwrap();
    let job = run_with_output("backup", &["rbd", &src], backend.clone(), out.path());
    job.assert_ok();
    assert!(job.stdout.contains("the runner of backup-1 is gone"), "{}", job.stdout);
    assert!(job.stdout.contains("full backup of backup-2"), "{}", job.stdout);
    // What a runner that is still working leaves: its snapshot and its claim.
    img.create_snap("backup-3").unwrap();
    drop(img);
    // (A client whose lock is broken is blocklisted by librbd: each killed runner is a new one.)
    let running = killed().open("rbd", "rbd-wasm-backup-running", None, false).expect("the claims image exists");
    running.lock_shared(&format!("claim rbd/{src} backup-3"), "rbd-wasm-backup").unwrap();
    let job = run_with_output("backup", &["rbd", &src], backend.clone(), out.path());
    // Backing up nothing because of a claim is not a success: exit status 75.
    assert!(matches!(job.result, Err(rbd_wasm::JobError::Exit(75))), "{:?}\n{}", job.result, job.stderr);
    assert!(job.stdout.contains("skipped: backup-3") && job.stdout.contains("another runner"), "{}", job.stdout);
    assert!(!out.path().join("rbd").join(&src).join("1.json").exists());

    assert!(!out.path().join("rbd").join(&src).join("3.json").exists());
    // Older than --claim-timeout: a runner that hangs; its claim is broken.
    let job = run_with_output("backup", &["rbd", &src, "--claim-timeout", "0"], backend.clone(), out.path());
    job.assert_ok();
    assert!(job.stdout.contains("breaking the claim of backup-3") && job.stdout.contains("(hung?)"), "{}", job.stdout);
    assert!(job.stdout.contains("removed backup-3"), "{}", job.stdout);
    assert!(job.stdout.contains("incremental backup backup-2 -> backup-4"), "{}", job.stdout);
    let snaps: Vec<String> = backend.open("rbd", &src, None, true).unwrap().list_snaps().unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(snaps, ["backup-2", "backup-4"]);
    drop(running);

    // A runner gone without letting go of its claim (closed here; killed, its watch would
    // time out): its claim is broken at once, with the default --claim-timeout of an hour.
    let img = backend.open("rbd", &src, None, false).unwrap();
    img.create_snap("backup-5").unwrap();
    drop(img);
    let running = killed().open("rbd", "rbd-wasm-backup-running", None, false).unwrap();
    running.lock_shared(&format!("claim rbd/{src} backup-5"), "rbd-wasm-backup").unwrap();
    drop(running);
    let job = run_with_output("backup", &["rbd", &src], backend.clone(), out.path());
    job.assert_ok();
    assert!(job.stdout.contains("breaking the claim of backup-5") && job.stdout.contains("which is gone"), "{}", job.stdout);
    assert!(job.stdout.contains("incremental backup backup-4 -> backup-6"), "{}", job.stdout);
    let claims = backend.open("rbd", "rbd-wasm-backup-running", None, true).unwrap().list_lockers().unwrap();
    assert!(claims.lockers.iter().all(|l| !l.cookie.contains(&src)), "a claim of {src} is left: {claims:?}");

    // A runner killed inside the mutex left it locked long ago: the next one breaks it.
    let claims = killed().open("rbd", "rbd-wasm-backup-claims", None, false).expect("the mutex image exists");
    claims.lock_exclusive("backup-claims 1000").unwrap();
    drop(claims);
    let job = run_with_output("backup", &["rbd", &src], backend.clone(), out.path());
    job.assert_ok();
    assert!(job.stdout.contains("breaking the runners' mutex held since 1000"), "{}", job.stdout);
    assert!(job.stdout.contains("incremental backup backup-6 -> backup-7"), "{}", job.stdout);
    let lockers = backend.open("rbd", "rbd-wasm-backup-claims", None, true).unwrap().list_lockers().unwrap();
    assert!(lockers.lockers.is_empty(), "the mutex is free after a run: {lockers:?}");

    for bad in [&["rbd", &src, "--every"][..], &["rbd", &src, "--every", "soon"], &["rbd", &src, "--frobnicate"], &["rbd"]] {
        let job = run_with_output("backup", bad, backend.clone(), out.path());
        assert!(job.result.is_err(), "{bad:?} was accepted");
    }
}

mod embedded {
    use super::*;
    use rbd_wasm_tests::embedded_store;

    #[test]
    fn two_runners_started_together_back_up_each_image_once_per_snapshot() {
        let store = embedded_store();
        two_runners_back_up_each_image_once_per_snapshot(store.backend.clone(), Cluster::Store(store.dir.path()));
    }

    #[test]
    fn an_unfinished_claim_is_left_alone_until_it_times_out() {
        let store = embedded_store();
        super::an_unfinished_claim_is_left_alone_until_it_times_out(store.backend.clone(), &|| store.second_client());
    }
}

mod librbd {
    use super::*;
    use rbd_wasm_tests::{ceph_conf, librbd_backend};

    #[test]
    fn two_runners_started_together_back_up_each_image_once_per_snapshot() {
        let conf = ceph_conf();
        two_runners_back_up_each_image_once_per_snapshot(librbd_backend(), Cluster::Ceph(&conf));
    }

    #[test]
    fn an_unfinished_claim_is_left_alone_until_it_times_out() {
        super::an_unfinished_claim_is_left_alone_until_it_times_out(librbd_backend(), &|| librbd_backend());
    }
}
