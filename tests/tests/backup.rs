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
