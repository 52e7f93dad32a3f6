//! Faults of the real cluster while jobs run: the OSD frozen (SIGSTOP) in the middle of a
//! backup and of a job that holds a lock. Each case checks that the job ends within its
//! deadline plus a stated margin, that a bystander job on the same host still runs, that no
//! complete-looking partial backup is left, that no lock is left once the cluster is back,
//! and that the next run completes.
//!
//! The cases freeze the test cluster's only OSD, so they run one at a time, and a guard
//! thaws it however a case ends.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbd_wasm::backend::{Backend, CreateOptions};
use rbd_wasm::{Grant, Grants, ImagePattern, JobError, JobLimits, Operations};
use rbd_wasm_tests::{ceph_conf, embedded_store, librbd_backend, run, run_with, run_with_output, unique_prefix, JobRun};

/// How late a job may end after its deadline when the cluster does not answer: lock
/// release (10 s) and closing (10 s) are each bounded, plus scheduling.
const MARGIN: Duration = Duration::from_secs(25);
/// How long the cluster may take to answer again after it is thawed.
const RECOVERY: Duration = Duration::from_secs(60);

/// Run a case on a thread of its own and fail it if it has not ended within `limit`: a
/// backend call that never returns must fail this suite, not hang it.
fn within(limit: Duration, case: impl FnOnce() + Send + 'static) {
    let (done, ended) = std::sync::mpsc::channel();
    let runner = std::thread::spawn(move || {
        case();
        let _ = done.send(());
    });
    match ended.recv_timeout(limit) {
        Ok(()) => runner.join().expect("the case"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // The case panicked: show its panic.
            if let Err(panic) = runner.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("the case did not end within {limit:?}"),
    }
}

/// Longest a fault case may take in all.
const CASE_LIMIT: Duration = Duration::from_secs(300);

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static CLUSTER: Mutex<()> = Mutex::new(());
    CLUSTER.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pid of a daemon of the test cluster, from the pid list `scripts/ceph-cluster.sh`
/// keeps beside the conf file.
fn daemon_pid(name: &str) -> String {
    let dir: PathBuf = ceph_conf().parent().expect("the conf file's directory").to_owned();
    let pids = std::fs::read_to_string(dir.join("daemons.pids")).expect("daemons.pids");
    pids.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")).map(|p| p.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {name} in daemons.pids:\n{pids}"))
}

/// The OSD stopped with SIGSTOP until the guard is dropped.
///
/// An OSD paused past its PGs' read lease finds them `laggy` when it resumes, and with no
/// peer to renew the lease (one OSD, size-1 pools) client ops wait "for readable" until the
/// next interval change, which may never come. So the thaw also marks the OSD down: it
/// asserts itself up again at once, its PGs re-peer, and the cluster serves again within
/// seconds (what a real cluster's peers would do).
struct FrozenOsd(String);

impl FrozenOsd {
    fn freeze() -> FrozenOsd {
        let pid = daemon_pid("osd.0");
        let status = Command::new("kill").args(["-STOP", &pid]).status().expect("kill");
        assert!(status.success(), "cannot freeze osd.0 ({pid})");
        FrozenOsd(pid)
    }
}

fn ceph(args: &[&str]) -> Option<String> {
    let out = Command::new("timeout").arg("30").arg("ceph").arg("-c").arg(ceph_conf()).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Drop for FrozenOsd {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
        let _ = ceph(&["osd", "down", "0"]);
        let until = Instant::now() + RECOVERY;
        while Instant::now() < until {
            let serving = ceph(&["pg", "ls"]).is_some_and(|pgs| !pgs.contains("laggy") && !pgs.contains("peering"))
                && ceph(&["osd", "stat"]).is_some_and(|s| s.contains("1 up"));
            if serving {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("faults: the OSD did not serve again within {RECOVERY:?} of its thaw");
    }
}

/// Wait until `check` holds, or panic after `within`.
fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < until, "{what} did not happen within {within:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A job on another backend of the same host runs while the cluster is frozen.
fn bystander_runs() {
    let store = embedded_store();
    let started = Instant::now();
    run("hello", &["rbd", "bystander"], store.backend.clone()).assert_ok();
    assert!(started.elapsed() < Duration::from_secs(10), "the bystander took {:?}", started.elapsed());
}

fn limits(deadline: Duration) -> JobLimits {
    JobLimits { deadline, ..JobLimits::default() }
}

fn ended_at_the_deadline(job: &JobRun, took: Duration, deadline: Duration) {
    assert!(
        matches!(job.result, Err(JobError::BackendUnresponsive { .. })),
        "expected backend-unresponsive, got {:?}\n{}{}",
        job.result,
        job.stdout,
        job.stderr
    );
    assert!(took <= deadline + MARGIN, "the job took {took:?}, past its deadline of {deadline:?} plus {MARGIN:?}");
}

/// A 1 GiB image holding 96 MiB of data in scattered pieces; its name.
fn image_with_data(backend: &Arc<dyn Backend>, short: &str) -> String {
    let name = format!("{}-{short}", unique_prefix("fault"));
    backend.create("rbd", &name, 1 << 30, &CreateOptions::default()).unwrap();
    let img = backend.open("rbd", &name, None, false).unwrap();
    for i in 0..96u64 {
        img.write(i * (9 << 20), &vec![(i % 251) as u8 + 1; 1 << 20]).unwrap();
    }
    name
}

/// Run `guest` with a 10 s deadline, freeze the OSD 1.5 s into it, and check that it ends
/// at its deadline (backend-unresponsive) while a bystander job runs; the OSD is thawed after.
fn interrupted_by_a_frozen_osd(backend: &Arc<dyn Backend>, guest: &'static str, args: &[&str], out: &std::path::Path) {
    let deadline = Duration::from_secs(10);
    let job = {
        let (backend, out) = (backend.clone(), out.to_owned());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        std::thread::spawn(move || {
            let started = Instant::now();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let grants = Grants::new(vec![Grant::full("rbd")]);
            let job = rbd_wasm_tests::run_with_output_and_limits(guest, &args, backend, grants, limits(deadline), &out);
            (job, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let (job, took) = {
        let _frozen = FrozenOsd::freeze();
        bystander_runs();
        job.join().expect("the job's thread")
    };
    ended_at_the_deadline(&job, took, deadline);
}

#[test]
fn a_backup_interrupted_by_a_frozen_osd_ends_at_its_deadline_and_the_next_run_completes() {
    within(CASE_LIMIT, a_backup_interrupted_by_a_frozen_osd_ends_at_its_deadline_and_the_next_run_completes_case);
}

fn a_backup_interrupted_by_a_frozen_osd_ends_at_its_deadline_and_the_next_run_completes_case() {
    let _serial = one_at_a_time();
    let backend: Arc<dyn Backend> = librbd_backend();
    let name = image_with_data(&backend, "img");
    let out = tempfile::tempdir().unwrap();
    interrupted_by_a_frozen_osd(&backend, "backup", &["rbd", &name], out.path());

    // Nothing looks complete that is not: no manifest, or one whose stream is whole (checked
    // by the verify job once the cluster is back).
    let repo = out.path().join("rbd").join(&name);
    let manifests: Vec<_> = std::fs::read_dir(&repo).map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "json")).collect()).unwrap_or_default();
    assert!(manifests.is_empty(), "a backup interrupted at 1.5 s looks complete: {manifests:?}");

    // The cluster is back: no lock is left, and the next run completes.
    let claims = backend.clone();
    eventually(RECOVERY, "the runners' mutex to be free", || {
        claims.open("rbd", "rbd-wasm-backup-claims", None, true).map(|i| i.list_lockers().map(|l| l.lockers.is_empty()).unwrap_or(false)).unwrap_or(true)
    });
    // The job's claim went with it (the host's abandoned unlock completes once the OSD is
    // back), so the next run takes over at once, without waiting for --claim-timeout.
    eventually(RECOVERY, "the interrupted backup's claim to be released", || {
        claims.open("rbd", "rbd-wasm-backup-running", None, true).is_ok_and(|i| {
            i.list_lockers().is_ok_and(|l| l.lockers.iter().all(|l| !l.cookie.contains(name.as_str())))
        })
    });
    let started = Instant::now();
    let next = run_with_output("backup", &["rbd", &name], backend.clone(), out.path());
    next.assert_ok();
    assert!(next.stdout.contains("the runner of backup-1 is gone"), "{}", next.stdout);
    assert!(next.stdout.contains("full backup of backup-2"), "{}", next.stdout);
    assert!(started.elapsed() < RECOVERY, "the next run took {:?}", started.elapsed());
    run_with_output("verify", &["rbd", &name], backend.clone(), out.path()).assert_ok();
}

#[test]
fn a_restore_interrupted_by_a_frozen_osd_ends_at_its_deadline_leaves_no_restored_image_and_the_next_completes() {
    within(CASE_LIMIT, a_restore_interrupted_by_a_frozen_osd_ends_at_its_deadline_leaves_no_restored_image_and_the_next_completes_case);
}

fn a_restore_interrupted_by_a_frozen_osd_ends_at_its_deadline_leaves_no_restored_image_and_the_next_completes_case() {
    let _serial = one_at_a_time();
    let backend: Arc<dyn Backend> = librbd_backend();
    let name = image_with_data(&backend, "src");
    let out = tempfile::tempdir().unwrap();
    run_with_output("backup", &["rbd", &name], backend.clone(), out.path()).assert_ok();
    let target = format!("{name}-restored");
    interrupted_by_a_frozen_osd(&backend, "restore", &["rbd", &name, &target], out.path());
    eventually(RECOVERY, "the cluster to answer", || backend.list("rbd").is_ok());
    assert!(!backend.list("rbd").unwrap().contains(&target), "an unfinished restore looks restored");
    let started = Instant::now();
    let next = run_with_output("restore", &["rbd", &name, &target], backend.clone(), out.path());
    next.assert_ok();
    assert!(started.elapsed() < RECOVERY, "the next restore took {:?}", started.elapsed());
}

#[test]
fn a_lock_holder_interrupted_by_a_frozen_osd_ends_at_its_deadline_and_its_lock_is_released() {
    within(CASE_LIMIT, a_lock_holder_interrupted_by_a_frozen_osd_ends_at_its_deadline_and_its_lock_is_released_case);
}

fn a_lock_holder_interrupted_by_a_frozen_osd_ends_at_its_deadline_and_its_lock_is_released_case() {
    let _serial = one_at_a_time();
    let backend = librbd_backend();
    let prefix = unique_prefix("fault");
    let grants = Grants::new(vec![Grant {
        pool: "rbd".into(),
        images: ImagePattern::new(format!("{prefix}-job-*")),
        operations: Operations::all(),
    }]);
    let deadline = Duration::from_secs(8);
    let job = {
        let (backend, prefix, grants) = (backend.clone() as Arc<dyn Backend>, prefix.clone(), grants.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let job = run_with("hostile", &["hold_a_lock_and_write_forever", &prefix], backend, grants, limits(deadline));
            (job, started.elapsed())
        })
    };
    let image = format!("{prefix}-job-lk");
    eventually(Duration::from_secs(20), "the job to take its lock", || {
        backend.open("rbd", &image, None, true).is_ok_and(|i| i.list_lockers().is_ok_and(|l| !l.lockers.is_empty()))
    });
    let (job, took) = {
        let _frozen = FrozenOsd::freeze();
        bystander_runs();
        job.join().expect("the job's thread")
    };
    ended_at_the_deadline(&job, took, deadline);
    // The host's unlock, abandoned while the OSD was frozen, completes once it is back.
    eventually(RECOVERY, "the job's lock to be released", || {
        backend.open("rbd", &image, None, true).is_ok_and(|i| i.list_lockers().is_ok_and(|l| l.lockers.is_empty()))
    });
    // And the next holder can take it.
    let img = backend.open("rbd", &image, None, false).unwrap();
    img.lock_exclusive("next").unwrap();
    img.unlock("next").unwrap();
}

/// SIGTERM (what systemd and `timeout` send) and SIGINT (Ctrl-C) cancel the job through the
/// host: its lock is released before `rbd-wasm` exits, with 128 + the signal's number.
fn a_signal_cancels_the_job_and_releases_its_lock(librbd: bool, signal: &str, code: i32) {
    let backend: Arc<dyn Backend>;
    let store;
    let mut cmd = Command::new(rbd_wasm_tests::host_binary());
    cmd.arg("run").env("RBD_WASM_CACHE", rbd_wasm_tests::test_cache_dir()).env_remove("CEPH_CONF");
    if librbd {
        backend = librbd_backend();
        cmd.arg("-c").arg(ceph_conf());
    } else {
        store = embedded_store();
        backend = store.backend.clone();
        cmd.arg("--store").arg(store.dir.path());
    }
    let prefix = unique_prefix("sig");
    let hostile = rbd_wasm_tests::guest("hostile");
    let mut child = cmd
        .arg(&hostile)
        .args(["--", "hold_a_lock_and_write_forever", &prefix])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn rbd-wasm");
    let image = format!("{prefix}-job-lk");
    eventually(Duration::from_secs(30), "the job to take its lock", || {
        backend.open("rbd", &image, None, true).is_ok_and(|i| i.list_lockers().is_ok_and(|l| !l.lockers.is_empty()))
    });
    let sent = Instant::now();
    let status = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(exit.code(), Some(code), "{signal}: {stderr}");
    assert!(sent.elapsed() < Duration::from_secs(15), "{signal} took {:?} to end the job", sent.elapsed());
    assert!(stderr.contains(&format!("SIG{signal}: cancelling job")), "{stderr}");
    let lockers = backend.open("rbd", &image, None, true).unwrap().list_lockers().unwrap();
    assert!(lockers.lockers.is_empty(), "{signal}: the job's lock is left: {lockers:?}");
}

#[test]
fn sigterm_cancels_a_job_on_the_embedded_store_and_releases_its_lock() {
    within(CASE_LIMIT, sigterm_cancels_a_job_on_the_embedded_store_and_releases_its_lock_case);
}

fn sigterm_cancels_a_job_on_the_embedded_store_and_releases_its_lock_case() {
    a_signal_cancels_the_job_and_releases_its_lock(false, "TERM", 143);
}

#[test]
fn sigint_cancels_a_job_on_librbd_and_releases_its_lock() {
    within(CASE_LIMIT, sigint_cancels_a_job_on_librbd_and_releases_its_lock_case);
}

fn sigint_cancels_a_job_on_librbd_and_releases_its_lock_case() {
    let _serial = one_at_a_time();
    a_signal_cancels_the_job_and_releases_its_lock(true, "INT", 130);
}

/// Long host work (flatten, copy) stops when asked, as it is when its job ends: the clone
/// keeps its parent and the copy does not appear. librbd's copy asks and then ignores the
/// answer (Pacific): it runs to its end (`copy_stops` false pins that).
fn flatten_and_copy_stop_when_asked(backend: Arc<dyn Backend>, prefix: &str, copy_stops: bool) {
    let parent = format!("{prefix}-parent");
    backend.create("rbd", &parent, 64 << 20, &CreateOptions { features: 1, ..Default::default() }).unwrap();
    let img = backend.open("rbd", &parent, None, false).unwrap();
    for i in 0..16u64 {
        img.write(i << 22, &[7u8; 4096]).unwrap();
    }
    img.create_snap("s").unwrap();
    img.protect_snap("s").unwrap();
    let child = format!("{prefix}-child");
    backend.clone_image("rbd", &parent, "s", "rbd", &child, &Default::default()).unwrap();
    let clone = backend.open("rbd", &child, None, false).unwrap();
    let mut asked = 0;
    let stopped = clone.flatten_with(&mut |_, _| {
        asked += 1;
        false
    });
    assert_eq!(stopped.as_ref().map_err(|e| e.kind()), Err("other"), "{stopped:?}");
    assert!(stopped.unwrap_err().to_string().contains("cancelled"));
    assert!(asked >= 1);
    assert!(clone.parent_info().unwrap().is_some(), "a stopped flatten keeps the parent");
    let copy = format!("{prefix}-copy");
    let mut asked = 0;
    let stopped = img.copy_with("rbd", &copy, &mut |_, _| {
        asked += 1;
        false
    });
    assert!(asked >= 1, "copy never asked");
    if !copy_stops {
        assert!(stopped.is_ok(), "librbd's copy stopped after all: {stopped:?}");
        backend.remove("rbd", &copy).unwrap();
    } else {
        assert!(stopped.as_ref().is_err_and(|e| e.to_string().contains("cancelled")), "{stopped:?} after {asked} calls");
        assert!(!backend.list("rbd").unwrap().contains(&copy), "a stopped copy left its image");
    }
    // Not stopped, both complete.
    clone.flatten_with(&mut |_, _| true).unwrap();
    assert!(clone.parent_info().unwrap().is_none());
    img.copy_with("rbd", &copy, &mut |_, _| true).unwrap();
    assert!(backend.list("rbd").unwrap().contains(&copy));
}

#[test]
fn flatten_and_copy_stop_when_asked_on_the_embedded_store() {
    let store = embedded_store();
    flatten_and_copy_stop_when_asked(store.backend.clone(), "t", true);
}

#[test]
fn flatten_and_copy_stop_when_asked_on_librbd() {
    flatten_and_copy_stop_when_asked(librbd_backend(), &unique_prefix("stop"), false);
}
