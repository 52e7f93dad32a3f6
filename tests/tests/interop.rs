//! Interop with Ceph's own tools: what a guest writes through the host is what `rbd export`
//! reads back, byte for byte.

use std::process::Command;

use rbd_wasm_tests::{ceph_conf, librbd_backend, run, unique_prefix};

/// The differential guest's data: byte i of a write is ((i + seed) * 31) mod 251.
fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (((i + seed) * 31) % 251) as u8).collect()
}

#[test]
fn an_image_written_by_a_guest_reads_back_identical_with_rbd_export() {
    let prefix = unique_prefix("export");
    let writes = [(1000usize, 300_000usize, 5usize), (2_000_000, 70_000, 9), (4_999_000, 1000, 3)];
    let mut ops = vec!["create a 5000000 20".to_string()];
    ops.extend(writes.iter().map(|(off, len, seed)| format!("write a {off} {len} {seed}")));
    ops.push("snap a s1".into());
    ops.push("write a 0 10 77".into());
    let mut args = vec![prefix.as_str()];
    args.extend(ops.iter().map(String::as_str));
    let job = run("differential", &args, librbd_backend());
    job.assert_ok();
    assert!(job.stdout.lines().all(|l| l.starts_with("ok")), "{}", job.stdout);

    let mut at_s1 = vec![0u8; 5_000_000];
    for (off, len, seed) in writes {
        at_s1[off..off + len].copy_from_slice(&pattern(len, seed));
    }
    let mut head = at_s1.clone();
    head[..10].copy_from_slice(&pattern(10, 77));

    let dir = tempfile::tempdir().unwrap();
    for (spec, want) in [(format!("rbd/{prefix}-a@s1"), &at_s1), (format!("rbd/{prefix}-a"), &head)] {
        let file = dir.path().join("export.img");
        let _ = std::fs::remove_file(&file);
        let out = Command::new("rbd")
            .arg("-c")
            .arg(ceph_conf())
            .args(["export", "--no-progress", &spec])
            .arg(&file)
            .output()
            .expect("run rbd export");
        assert!(out.status.success(), "rbd export {spec}: {}", String::from_utf8_lossy(&out.stderr));
        let exported = std::fs::read(&file).unwrap();
        assert_eq!(exported.len(), want.len(), "{spec}: size");
        assert!(exported == *want, "{spec}: rbd export does not read back what the guest wrote");
    }
}
