//! Backups at the sizes operators have: a 1 TiB sparse image is backed up (full, then
//! incremental), restored and verified through the `rbd-wasm` binary with its default
//! limits, on both backends. The host's peak memory stays under 256 MiB, the chunk digests
//! stay under 1% of the stream's bytes, and a run stopped in the middle of a backup is
//! followed by one that completes: at once after SIGTERM (as systemd or `timeout` stop it),
//! and after SIGKILL as soon as the cluster knows the killed client is gone (its watch
//! times out: 30 s on Ceph, at once on the embedded store).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rbd_wasm::backend::{Backend, CreateOptions};
use rbd_wasm_tests::{ceph_conf, embedded_store, guest, host_binary, librbd_backend, run_host_measured, test_cache_dir, unique_prefix};

const TIB: u64 = 1 << 40;
/// The bound on the host's peak RSS with default limits.
const PEAK_RSS: u64 = 256 << 20;

/// How a run reaches its backend: `-c CONF` or `--store DIR`.
fn backend_args(store: Option<&Path>) -> Vec<String> {
    match store {
        None => vec!["-c".into(), ceph_conf().to_string_lossy().into_owned()],
        Some(dir) => vec!["--store".into(), dir.to_string_lossy().into_owned()],
    }
}

/// Run a job with default limits and `--json`; its report. Fails on a non-zero exit.
fn run_job(store: Option<&Path>, out: &Path, job: &str, args: &[&str]) -> serde_json::Value {
    let (code, report) = run_job_code(store, out, job, args);
    assert_eq!(code, 0, "{job} {args:?}: {report}");
    report
}

/// Run a job with default limits and `--json`: its exit status and report.
fn run_job_code(store: Option<&Path>, out: &Path, job: &str, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all: Vec<String> = vec!["run".into(), "--json".into(), "--progress".into(), "none".into()];
    all.extend(backend_args(store));
    all.extend(["--output-dir".into(), out.to_string_lossy().into_owned()]);
    all.push(guest(job).to_string_lossy().into_owned());
    all.push("--".into());
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let run = run_host_measured(&all, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let report: serde_json::Value =
        serde_json::from_slice(&run.stdout).unwrap_or_else(|e| panic!("{job}: no --json report ({e}); exit {}: {stderr}", run.code));
    let peak = report["host_peak_rss_bytes"].as_u64().expect("host_peak_rss_bytes");
    println!("{job} {args:?}: {:.1} s, host peak RSS {} MiB", run.wall.as_secs_f64(), peak >> 20);
    assert!(peak <= PEAK_RSS, "{job}: the host's peak RSS was {} MiB, over {} MiB", peak >> 20, PEAK_RSS >> 20);
    (run.code, report)
}

/// Start a backup of `name` and stop it with `signal` once it took its snapshot
/// `backup-{n}` and is under way; whether it was stopped before it completed.
fn stop_mid_backup(backend: &Arc<dyn Backend>, store: Option<&Path>, out: &Path, name: &str, n: u32, signal: &str) -> bool {
    let mut args = vec!["run".to_string(), "--progress".into(), "none".into()];
    args.extend(backend_args(store));
    args.extend(["--output-dir".into(), out.to_string_lossy().into_owned()]);
    args.extend([guest("backup").to_string_lossy().into_owned(), "--".into(), "rbd".into(), name.into()]);
    let mut child = Command::new(host_binary())
        .args(&args)
        .env_remove("CEPH_CONF")
        .env("RBD_WASM_CACHE", test_cache_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let snapshot = format!("backup-{n}");
    let started = Instant::now();
    while !backend.open("rbd", name, None, true).unwrap().list_snaps().unwrap().iter().any(|s| s.name == snapshot) {
        assert!(started.elapsed() < Duration::from_secs(60), "the backup never took its snapshot");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill").args([format!("-{signal}"), child.id().to_string()]).status();
    let status = child.wait().unwrap();
    let stopped = !status.success();
    println!("the backup stopped by SIG{signal}: {status:?}");
    assert!(!out.join("rbd").join(name).join(format!("{n}.json")).exists() || !stopped, "a stopped backup looks complete");
    stopped
}

/// 48 MiB in 1 MiB pieces spread over the image, some unaligned, and a piece at its very end.
fn scatter(backend: &Arc<dyn Backend>, name: &str, size: u64, seed: u8, pieces: u64, piece: usize) {
    let img = backend.open("rbd", name, None, false).unwrap();
    let stride = size / pieces;
    for i in 0..pieces {
        let at = i * stride + (i * 7919 * u64::from(seed)) % (stride - piece as u64);
        let data: Vec<u8> = (0..piece).map(|j| (j as u8).wrapping_mul(31) ^ seed ^ i as u8 | 1).collect();
        img.write(at, &data).unwrap();
    }
    img.write(size - 4096, &[seed | 1; 4096]).unwrap();
}

fn stream_and_sums(out: &Path, name: &str, n: u32) -> (u64, u64) {
    let dir = out.join("rbd").join(name);
    let len = |f: String| std::fs::metadata(dir.join(f)).unwrap().len();
    (len(format!("{n}.rbddiff")), len(format!("{n}.sums")))
}

fn a_1_tib_sparse_image_backs_up_restores_and_verifies(backend: Arc<dyn Backend>, store: Option<&Path>) {
    let name = format!("{}-big", unique_prefix("tib"));
    backend.create("rbd", &name, TIB, &CreateOptions::default()).unwrap();
    scatter(&backend, &name, TIB, 1, 48, 1 << 20);
    let out = tempfile::tempdir().unwrap();

    // Full backup: the digests cost what the data costs.
    run_job(store, out.path(), "backup", &["rbd", &name]);
    let (stream, sums) = stream_and_sums(out.path(), &name, 1);
    assert!(stream >= 48 << 20, "a full backup of 48 MiB is {stream} bytes");
    assert!(sums * 100 <= stream, "the chunk digests are {sums} bytes for a {stream}-byte stream");

    // An incremental backup, stopped in the middle by SIGTERM: the host cancels the job and
    // releases its claim, so the next run completes at once (without --claim-timeout).
    scatter(&backend, &name, TIB, 2, 40, 64 << 10);
    let stopped = stop_mid_backup(&backend, store, out.path(), &name, 2, "TERM");
    let started = Instant::now();
    let report = run_job(store, out.path(), "backup", &["rbd", &name]);
    assert!(started.elapsed() < Duration::from_secs(120), "the next run took {:?}", started.elapsed());
    assert_eq!(report["status"], "ok", "{report}");
    let mut n = if stopped { 3 } else { 2 };
    let (stream, sums) = stream_and_sums(out.path(), &name, n);
    assert!(sums * 100 <= stream, "incremental: the chunk digests are {sums} bytes for a {stream}-byte stream");

    // Killed outright (SIGKILL): the claim stays, but the killed client's watch of the
    // claims image goes (at once on the embedded store, after Ceph's 30 s watch timeout),
    // and then the next run breaks the claim and completes; until then it says the image
    // is claimed (exit 75). Without --claim-timeout, whose default is an hour.
    scatter(&backend, &name, TIB, 3, 40, 64 << 10);
    stop_mid_backup(&backend, store, out.path(), &name, n + 1, "KILL");
    let started = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let (code, report) = run_job_code(store, out.path(), "backup", &["rbd", &name]);
        if code == 0 {
            break;
        }
        assert_eq!(code, 75, "after SIGKILL: {report}");
        assert!(store.is_some() || started.elapsed() < Duration::from_secs(60), "still claimed {:?} after the kill", started.elapsed());
        assert!(store.is_none(), "the embedded store knows at once that the killed runner is gone: {report}");
        std::thread::sleep(Duration::from_secs(5));
    }
    println!("after SIGKILL, the next run completed after {:?} ({tries} tries)", started.elapsed());
    // Killed or not, the run after it took the next number.
    n += 2;
    assert!(out.path().join("rbd").join(&name).join(format!("{n}.json")).exists(), "backup {n} completed");

    // Restore (the job checks the digest of what it wrote) and a deep scrub.
    let restored = format!("{name}-restored");
    let report = run_job(store, out.path(), "restore", &["rbd", &name, &restored]);
    assert_eq!(report["status"], "ok", "{report}");
    run_job(store, out.path(), "verify", &["rbd", &name]);

    for image in [&restored, &name] {
        let img = backend.open("rbd", image, None, false).unwrap();
        for snap in img.list_snaps().unwrap() {
            img.remove_snap(&snap.name).unwrap();
        }
        drop(img);
        backend.remove("rbd", image).unwrap();
    }
}

#[test]
fn a_1_tib_sparse_image_on_the_embedded_store() {
    let store = embedded_store();
    a_1_tib_sparse_image_backs_up_restores_and_verifies(store.backend.clone(), Some(store.dir.path()));
}

#[test]
fn a_1_tib_sparse_image_on_librbd() {
    a_1_tib_sparse_image_backs_up_restores_and_verifies(librbd_backend(), None);
}
