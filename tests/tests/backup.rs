//! The backup job against real Ceph: a chain of one full and three incremental backups of
//! an image that changes between them (unaligned writes, discards, growing and shrinking)
//! restores byte-identical with the real `rbd import-diff`.

use std::path::Path;
use std::process::Command;

use rbd_wasm::backend::{Backend, CreateOptions};
use rbd_wasm_tests::{ceph_conf, librbd_backend, run_with_output, unique_prefix};
use sha2::{Digest, Sha256};

fn rbd(args: &[&str]) -> Vec<u8> {
    let out = Command::new("rbd").arg("-c").arg(ceph_conf()).args(args).output().expect("run rbd");
    assert!(out.status.success(), "rbd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn export(spec: &str) -> Vec<u8> {
    rbd(&["export", "--no-progress", spec, "-"])
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1).collect()
}

fn manifest(dir: &Path, n: u32) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join(format!("{n}.json"))).expect("manifest")).unwrap()
}

#[test]
fn a_chain_of_backups_restores_byte_identical_with_rbd_import_diff() {
    let backend = librbd_backend();
    let prefix = unique_prefix("bk");
    let src = format!("{prefix}-src");
    backend.create("rbd", &src, 12 << 20, &CreateOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("rbd").join(&src);

    let changes: [&dyn Fn(&dyn rbd_wasm::backend::Image); 4] = [
        &|img| {
            img.write(0, &pattern(5 << 20, 1)).unwrap();
            img.write(9 << 20, &pattern(100_000, 2)).unwrap();
        },
        &|img| {
            img.write(1_000_003, &pattern(77_777, 3)).unwrap();
            img.discard(4 << 20, 4 << 20).unwrap(); // a whole object
            img.discard(65536, 3 * 65536).unwrap(); // part of one
            img.resize(20 << 20).unwrap();
            img.write(18 << 20, &pattern(4096, 4)).unwrap();
        },
        &|img| {
            img.resize(7_000_001).unwrap();
            img.write(6_999_000, &pattern(1001, 5)).unwrap();
        },
        &|img| {
            img.resize(9 << 20).unwrap();
            img.write((4 << 20) - 10, &pattern(20, 6)).unwrap();
        },
    ];
    for (i, change) in changes.iter().enumerate() {
        let img = backend.open("rbd", &src, None, false).unwrap();
        change(img.as_ref());
        drop(img);
        let job = run_with_output("backup", &["rbd", &src], backend.clone(), out.path());
        job.assert_ok();
        let n = i as u32 + 1;
        let m = manifest(&dir, n);
        assert_eq!(m["to_snapshot"], format!("backup-{n}"));
        assert_eq!(m["from_snapshot"], if n == 1 { serde_json::Value::Null } else { format!("backup-{}", n - 1).into() });
        let stream = std::fs::read(dir.join(format!("{n}.rbddiff"))).unwrap();
        assert_eq!(m["stream_sha256"], hex::encode(Sha256::digest(&stream)), "stream checksum");
        assert_eq!(m["image_sha256"], hex::encode(Sha256::digest(export(&format!("rbd/{src}@backup-{n}")))), "image checksum");
        assert!(!dir.join(format!("{n}.rbddiff.tmp")).exists());
    }

    // Restore the chain onto a new image with Ceph's own tool, and compare every snapshot.
    let restored = format!("{prefix}-restored");
    rbd(&["create", "--size", "1", &format!("rbd/{restored}")]);
    for n in 1..=4 {
        rbd(&["import-diff", "--no-progress", dir.join(format!("{n}.rbddiff")).to_str().unwrap(), &format!("rbd/{restored}")]);
        let want = export(&format!("rbd/{src}@backup-{n}"));
        let got = export(&format!("rbd/{restored}@backup-{n}"));
        assert_eq!(got.len(), want.len(), "backup-{n}: size");
        assert!(got == want, "backup-{n}: restored bytes differ");
    }
}

#[test]
fn a_backup_whose_base_snapshot_is_gone_falls_back_to_full() {
    let backend = librbd_backend();
    let prefix = unique_prefix("bk");
    let src = format!("{prefix}-src");
    backend.create("rbd", &src, 4 << 20, &CreateOptions::default()).unwrap();
    backend.open("rbd", &src, None, false).unwrap().write(100, b"data").unwrap();
    let out = tempfile::tempdir().unwrap();
    run_with_output("backup", &["rbd", &src], backend.clone(), out.path()).assert_ok();
    backend.open("rbd", &src, None, false).unwrap().remove_snap("backup-1").unwrap();
    let job = run_with_output("backup", &["rbd", &src], backend.clone(), out.path());
    job.assert_ok();
    assert!(job.stdout.contains("full backup of backup-2"), "{}", job.stdout);
    let m = manifest(&out.path().join("rbd").join(&src), 2);
    assert_eq!(m["from_snapshot"], serde_json::Value::Null);
}

/// Kill `rbd-wasm run backup` at 20 different moments: no killed run leaves a backup that
/// looks complete (a manifest) without being complete (its stream whole, its checksums
/// right), and the next run completes the chain, which then restores byte-identical.
#[test]
fn a_backup_killed_at_any_point_never_looks_complete_and_the_next_run_completes_the_chain() {
    use rbd_wasm_tests::{guest, host_binary, test_cache_dir};
    use std::time::{Duration, Instant};

    let backend = librbd_backend();
    let prefix = unique_prefix("kill");
    let src = format!("{prefix}-src");
    // Without the exclusive-lock feature: a killed client keeps that lock until its watch
    // times out (30 s), and every next run would wait for it.
    let layering_only = CreateOptions { features: rbd_wasm::backend::features::LAYERING, ..CreateOptions::default() };
    backend.create("rbd", &src, 64 << 20, &layering_only).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("rbd").join(&src);
    let job = guest("backup");
    let run = || {
        Command::new(host_binary())
            .arg("run")
            .arg("-c")
            .arg(ceph_conf())
            .arg("--output-dir")
            .arg(out.path())
            .arg(&job)
            .args(["--", "rbd", &src])
            .env("RBD_WASM_CACHE", test_cache_dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn rbd-wasm")
    };
    // How long one uncut run takes, to spread the kill points over it.
    let img = backend.open("rbd", &src, None, false).unwrap();
    img.write(0, &pattern(64 << 20, 9)).unwrap();
    drop(img);
    let started = Instant::now();
    assert!(run().wait().unwrap().success());
    let full = started.elapsed();

    for i in 0..20u32 {
        let img = backend.open("rbd", &src, None, false).unwrap();
        img.write(u64::from(i) * 3_000_017 % (60 << 20), &pattern(1_000_000, i as u8)).unwrap();
        drop(img);
        let mut child = run();
        std::thread::sleep(full.mul_f64(f64::from(i) / 20.0) + Duration::from_millis(5));
        let _ = child.kill();
        let _ = child.wait();
        // Every manifest names a whole stream with the right checksum.
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                let stream = std::fs::read(dir.join(m["stream"].as_str().unwrap())).expect("a manifest's stream exists");
                assert_eq!(m["stream_sha256"], hex::encode(Sha256::digest(&stream)), "kill {i}: {path:?} looks complete but is not");
            }
        }
    }
    // A last, uncut run completes the chain.
    assert!(run().wait().unwrap().success());

    // Follow the chain from the full backup through the manifests, and restore it.
    let mut manifests: Vec<serde_json::Value> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    manifests.sort_by_key(|m| m["to_snapshot"].as_str().unwrap().trim_start_matches("backup-").parse::<u64>().unwrap());
    let last = manifests.last().unwrap()["to_snapshot"].as_str().unwrap().to_string();
    let mut chain = vec![manifests.last().unwrap()];
    while let Some(from) = chain.last().unwrap()["from_snapshot"].as_str() {
        chain.push(manifests.iter().find(|m| m["to_snapshot"] == from).expect("every base of the chain was backed up"));
    }
    chain.reverse();
    let restored = format!("{prefix}-restored");
    rbd(&["create", "--size", "1", &format!("rbd/{restored}")]);
    for m in &chain {
        rbd(&["import-diff", "--no-progress", dir.join(m["stream"].as_str().unwrap()).to_str().unwrap(), &format!("rbd/{restored}")]);
    }
    assert!(export(&format!("rbd/{restored}@{last}")) == export(&format!("rbd/{src}@{last}")), "the restored chain differs");
}
