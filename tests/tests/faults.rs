//! Faults of the real cluster while jobs run: the OSD frozen (SIGSTOP) and resumed, the OSD
//! killed (SIGKILL) and started again, the monitor killed and started again, each in the
//! middle of a backup, a restore and a job that holds a lock. Each case checks that the job
//! ends within its deadline plus a stated margin, that a bystander job on the same host
//! still runs, that no complete-looking partial backup or restored image is left, that no
//! lock is left once the cluster is back, and that the next run completes within a stated
//! time. Signals and long host work stopping when asked close the suite.
//!
//! The frozen-OSD cases pause the shared test cluster's only OSD, so every case runs one at a
//! time, and a guard resumes it however a case ends. The kill cases each start a cluster of
//! their own whose OSD keeps its data in a file (`RBD_WASM_CEPH_OSD_STORE=bluestore`): the
//! shared cluster's OSD keeps it in RAM, which a killed OSD loses.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbd_wasm::backend::librbd::{ConnectOptions, LibrbdBackend};
use rbd_wasm::backend::{Backend, CreateOptions};
use rbd_wasm::{Grant, Grants, ImagePattern, JobError, JobLimits, Operations, Quotas};
use rbd_wasm_tests::{ceph_conf, embedded_store, librbd_backend, run, unique_prefix, JobRun};

/// How late a job may end after its deadline when the cluster does not answer: lock
/// release (10 s) and closing (10 s) are each bounded, plus scheduling.
const MARGIN: Duration = Duration::from_secs(25);
/// How long the cluster may take to serve again once the fault is over, and the next run
/// to complete.
const RECOVERY: Duration = Duration::from_secs(60);
/// How long into a job the fault begins.
const FAULT_AFTER: Duration = Duration::from_millis(1500);

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

/// A cluster a case injects faults into: the shared test cluster, or one of the case's own
/// (started by `scripts/ceph-cluster.sh`, stopped when dropped).
struct Cluster {
    conf: PathBuf,
    own: Option<tempfile::TempDir>,
}

impl Cluster {
    fn shared() -> Cluster {
        Cluster { conf: ceph_conf(), own: None }
    }

    /// A cluster of the case's own whose OSD keeps its data across a kill.
    fn restartable() -> Cluster {
        let dir = tempfile::tempdir().expect("a directory for the cluster");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let out = Command::new(script())
            .args(["start", &dir.path().to_string_lossy()])
            .env("RBD_WASM_CEPH_OSD_STORE", "bluestore")
            .env("RBD_WASM_CEPH_PORT", port.to_string())
            .output()
            .expect("scripts/ceph-cluster.sh");
        let cluster = Cluster { conf: dir.path().join("ceph.conf"), own: Some(dir) };
        assert!(out.status.success(), "a restartable cluster did not start:\n{}", String::from_utf8_lossy(&out.stderr));
        cluster
    }

    fn dir(&self) -> &Path {
        self.conf.parent().expect("the conf file's directory")
    }

    fn backend(&self) -> Arc<dyn Backend> {
        let options = ConnectOptions { conf: Some(self.conf.clone()), ..ConnectOptions::default() };
        Arc::new(LibrbdBackend::connect(&options).unwrap_or_else(|e| panic!("connecting to {:?}: {e}", self.conf)))
    }

    fn ceph(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("timeout").arg("30").arg("ceph").arg("-c").arg(&self.conf).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The pid of a daemon, from the pid list `scripts/ceph-cluster.sh` keeps beside the conf.
    fn daemon_pid(&self, name: &str) -> String {
        let pids = std::fs::read_to_string(self.dir().join("daemons.pids")).expect("daemons.pids");
        pids.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")).map(|p| p.trim().to_owned()))
            .unwrap_or_else(|| panic!("no {name} in daemons.pids:\n{pids}"))
    }

    fn signal(&self, daemon: &str, signal: &str) {
        let pid = self.daemon_pid(daemon);
        let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("kill");
        assert!(status.success(), "cannot send SIG{signal} to {daemon} ({pid})");
    }

    fn revive(&self, daemon: &str) {
        let out = Command::new(script()).args(["revive", daemon, &self.dir().to_string_lossy()]).output().expect("scripts/ceph-cluster.sh");
        assert!(out.status.success(), "{daemon} did not start again:\n{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Wait until the cluster serves again after a fault.
    ///
    /// An OSD paused past its PGs' read lease finds them `laggy` when it resumes, and with no
    /// peer to renew the lease (one OSD, size-1 pools) client ops wait "for readable" until the
    /// next interval change, which may never come; a monitor started again can leave them so
    /// too. So the OSD is marked down: it asserts itself up again at once, its PGs re-peer,
    /// and the cluster serves again within seconds (what a real cluster's peers would do).
    fn serve_again(&self) {
        let _ = self.ceph(&["osd", "down", "0"]);
        let until = Instant::now() + RECOVERY;
        while Instant::now() < until {
            let serving = self.ceph(&["pg", "ls"]).is_some_and(|pgs| !pgs.contains("laggy") && !pgs.contains("peering"))
                && self.ceph(&["osd", "stat"]).is_some_and(|s| s.contains("1 up"));
            if serving {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("faults: the cluster did not serve again within {RECOVERY:?}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(dir) = &self.own {
            let _ = Command::new(script()).args(["stop", &dir.path().to_string_lossy()]).output();
        }
    }
}

fn script() -> PathBuf {
    rbd_wasm_tests::workspace_root().join("scripts/ceph-cluster.sh")
}

/// What goes wrong with the cluster in the middle of a job.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// The OSD paused (SIGSTOP) until the job has ended, then resumed.
    FrozenOsd,
    /// The OSD killed (SIGKILL), started again once the job has ended.
    KilledOsd,
    /// The monitor killed, started again once the job has ended.
    KilledMonitor,
}

impl Fault {
    fn cluster(self) -> Cluster {
        match self {
            Fault::FrozenOsd => Cluster::shared(),
            Fault::KilledOsd | Fault::KilledMonitor => Cluster::restartable(),
        }
    }

    /// Whether a job that needs the data path cannot go on during the fault (a killed monitor
    /// leaves reads and writes working: only what needs the monitor, such as a snapshot,
    /// waits).
    fn stops_the_data_path(self) -> bool {
        !matches!(self, Fault::KilledMonitor)
    }

    fn begin(self, cluster: &Cluster) -> FaultGuard<'_> {
        match self {
            Fault::FrozenOsd => cluster.signal("osd.0", "STOP"),
            Fault::KilledOsd => cluster.signal("osd.0", "KILL"),
            Fault::KilledMonitor => cluster.signal("mon.a", "KILL"),
        }
        FaultGuard { fault: self, cluster }
    }
}

/// Ends the fault however a case ends: the OSD resumed or the daemon started again, and
/// the cluster serving.
struct FaultGuard<'a> {
    fault: Fault,
    cluster: &'a Cluster,
}

impl Drop for FaultGuard<'_> {
    fn drop(&mut self) {
        match self.fault {
            Fault::FrozenOsd => self.cluster.signal("osd.0", "CONT"),
            Fault::KilledOsd => self.cluster.revive("osd.0"),
            Fault::KilledMonitor => {
                // The monitor's pid file goes with a clean exit only; wait for the killed one
                // to be gone before starting it again on the same port.
                std::thread::sleep(Duration::from_millis(500));
                self.cluster.revive("mon.a")
            }
        }
        self.cluster.serve_again();
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

/// A job on another backend of the same host runs while the cluster is at fault.
fn bystander_runs() {
    let store = embedded_store();
    let started = Instant::now();
    run("hello", &["rbd", "bystander"], store.backend.clone()).assert_ok();
    assert!(started.elapsed() < Duration::from_secs(10), "the bystander took {:?}", started.elapsed());
}

/// The job's limits: `deadline`, and a bandwidth cap of 32 MiB/s, so that the fault lands
/// while the job works (unthrottled, the host's data plane backs up and restores the test
/// image in under 1.5 s, before the fault begins).
fn limits(deadline: Duration) -> JobLimits {
    let defaults = JobLimits::default();
    JobLimits { deadline, quotas: Quotas { bandwidth_bytes_per_sec: Some(32 << 20), ..defaults.quotas.clone() }, ..defaults }
}

/// The job ended within its deadline plus the margin: stopped at its deadline while the
/// backend did not answer, or (where the fault leaves the data path working) finished or
/// stopped at its deadline like any job.
fn ended_in_time(job: &JobRun, took: Duration, deadline: Duration, fault: Fault) {
    let unresponsive = matches!(job.result, Err(JobError::BackendUnresponsive { .. }));
    let acceptable = unresponsive || (!fault.stops_the_data_path() && matches!(job.result, Ok(()) | Err(JobError::Deadline(_))));
    assert!(acceptable, "{fault:?}: expected backend-unresponsive, got {:?}\n{}{}", job.result, job.stdout, job.stderr);
    assert!(took <= deadline + MARGIN, "{fault:?}: the job took {took:?}, past its deadline of {deadline:?} plus {MARGIN:?}");
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

/// Run `guest` with `deadline`, begin `fault` `FAULT_AFTER` into it, and check that it ends
/// in time while a bystander job runs; the fault ends once the job has. The job's result.
fn interrupted(
    fault: Fault,
    cluster: &Cluster,
    guest: &'static str,
    args: &[&str],
    grants: Grants,
    deadline: Duration,
    out: &Path,
    started_when: impl FnOnce(),
) -> JobRun {
    let job = {
        let (backend, out) = (cluster.backend(), out.to_owned());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        std::thread::spawn(move || {
            let started = Instant::now();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let job = rbd_wasm_tests::run_with_output_and_limits(guest, &args, backend, grants, limits(deadline), &out);
            (job, started.elapsed())
        })
    };
    started_when();
    let (job, took) = {
        let _fault = fault.begin(cluster);
        bystander_runs();
        job.join().expect("the job's thread")
    };
    eprintln!("faults: {guest} under {fault:?} ended after {took:?}: {:?}", job.result.as_ref().map_err(JobError::kind));
    ended_in_time(&job, took, deadline, fault);
    job
}

fn whole_pool() -> Grants {
    Grants::new(vec![Grant::full("rbd")])
}

fn a_backup_meets(fault: Fault) {
    let _serial = one_at_a_time();
    let cluster = fault.cluster();
    let backend = cluster.backend();
    let name = image_with_data(&backend, "img");
    let out = tempfile::tempdir().unwrap();
    let deadline = Duration::from_secs(10);
    let job = interrupted(fault, &cluster, "backup", &["rbd", &name], whole_pool(), deadline, out.path(), || std::thread::sleep(FAULT_AFTER));

    // Nothing looks complete that is not: no manifest, unless the job completed (a killed
    // monitor does not stop a backup whose snapshot is taken), and then verify passes.
    let repo = out.path().join("rbd").join(&name);
    let manifests: Vec<_> = std::fs::read_dir(&repo).map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "json")).collect()).unwrap_or_default();
    if job.result.is_err() {
        assert!(manifests.is_empty(), "{fault:?}: an interrupted backup looks complete: {manifests:?}");
    } else {
        run_with_output("verify", &["rbd", &name], &backend, out.path()).assert_ok();
    }

    // The cluster is back: no lock is left, and the next run completes.
    eventually(RECOVERY, "the runners' mutex to be free", || {
        backend.open("rbd", "rbd-wasm-backup-claims", None, true).map(|i| i.list_lockers().map(|l| l.lockers.is_empty()).unwrap_or(false)).unwrap_or(true)
    });
    // The job's claim went with it (the host's abandoned unlock completes once the cluster is
    // back), so the next run takes over at once, without waiting for --claim-timeout.
    eventually(RECOVERY, "the interrupted backup's claim to be released", || {
        backend.open("rbd", "rbd-wasm-backup-running", None, true).is_ok_and(|i| {
            i.list_lockers().is_ok_and(|l| l.lockers.iter().all(|l| !l.cookie.contains(name.as_str())))
        })
    });
    let started = Instant::now();
    let next = run_with_output("backup", &["rbd", &name], &backend, out.path());
    next.assert_ok();
    if job.result.is_err() {
        assert!(next.stdout.contains("the runner of backup-1 is gone"), "{}", next.stdout);
        assert!(next.stdout.contains("full backup of backup-2"), "{}", next.stdout);
    }
    assert!(started.elapsed() < RECOVERY, "{fault:?}: the next run took {:?}", started.elapsed());
    run_with_output("verify", &["rbd", &name], &backend, out.path()).assert_ok();
}

fn a_restore_meets(fault: Fault) {
    let _serial = one_at_a_time();
    let cluster = fault.cluster();
    let backend = cluster.backend();
    let name = image_with_data(&backend, "src");
    let out = tempfile::tempdir().unwrap();
    run_with_output("backup", &["rbd", &name], &backend, out.path()).assert_ok();
    let target = format!("{name}-restored");
    let deadline = Duration::from_secs(10);
    let job = interrupted(fault, &cluster, "restore", &["rbd", &name, &target], whole_pool(), deadline, out.path(), || std::thread::sleep(FAULT_AFTER));
    eventually(RECOVERY, "the cluster to answer", || backend.list("rbd").is_ok());
    if job.result.is_err() {
        assert!(!backend.list("rbd").unwrap().contains(&target), "{fault:?}: an unfinished restore looks restored");
    } else {
        let restored = backend.open("rbd", &target, None, false).unwrap();
        for snap in restored.list_snaps().unwrap() {
            restored.remove_snap(&snap.name).unwrap();
        }
        drop(restored);
        backend.remove("rbd", &target).unwrap();
    }
    let started = Instant::now();
    run_with_output("restore", &["rbd", &name, &target], &backend, out.path()).assert_ok();
    assert!(started.elapsed() < RECOVERY, "{fault:?}: the next restore took {:?}", started.elapsed());
}

fn a_lock_holder_meets(fault: Fault) {
    let _serial = one_at_a_time();
    let cluster = fault.cluster();
    let backend = cluster.backend();
    let prefix = unique_prefix("fault");
    let grants = Grants::new(vec![Grant {
        pool: "rbd".into(),
        images: ImagePattern::new(format!("{prefix}-job-*")),
        operations: Operations::all(),
    }]);
    let image = format!("{prefix}-job-lk");
    let out = tempfile::tempdir().unwrap();
    let deadline = Duration::from_secs(8);
    interrupted(fault, &cluster, "hostile", &["hold_a_lock_and_write_forever", &prefix], grants, deadline, out.path(), || {
        eventually(Duration::from_secs(20), "the job to take its lock", || {
            backend.open("rbd", &image, None, true).is_ok_and(|i| i.list_lockers().is_ok_and(|l| !l.lockers.is_empty()))
        })
    });
    // The host's unlock, abandoned while the cluster did not answer, completes once it is back.
    eventually(RECOVERY, "the job's lock to be released", || {
        backend.open("rbd", &image, None, true).is_ok_and(|i| i.list_lockers().is_ok_and(|l| l.lockers.is_empty()))
    });
    // And the next holder can take it.
    let img = backend.open("rbd", &image, None, false).unwrap();
    img.lock_exclusive("next").unwrap();
    img.unlock("next").unwrap();
}

fn run_with_output(guest: &str, args: &[&str], backend: &Arc<dyn Backend>, out: &Path) -> JobRun {
    rbd_wasm_tests::run_with_output(guest, args, backend.clone(), out)
}

/// One test per fault and job, each under the case watchdog.
macro_rules! fault_cases {
    ($($name:ident: $case:ident($fault:expr);)*) => {$(
        #[test]
        fn $name() {
            within(CASE_LIMIT, || $case($fault));
        }
    )*};
}

fault_cases! {
    a_backup_meets_a_frozen_osd: a_backup_meets(Fault::FrozenOsd);
    a_backup_meets_a_killed_osd: a_backup_meets(Fault::KilledOsd);
    a_backup_meets_a_killed_monitor: a_backup_meets(Fault::KilledMonitor);
    a_restore_meets_a_frozen_osd: a_restore_meets(Fault::FrozenOsd);
    a_restore_meets_a_killed_osd: a_restore_meets(Fault::KilledOsd);
    a_restore_meets_a_killed_monitor: a_restore_meets(Fault::KilledMonitor);
    a_lock_holder_meets_a_frozen_osd: a_lock_holder_meets(Fault::FrozenOsd);
    a_lock_holder_meets_a_killed_osd: a_lock_holder_meets(Fault::KilledOsd);
    a_lock_holder_meets_a_killed_monitor: a_lock_holder_meets(Fault::KilledMonitor);
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
