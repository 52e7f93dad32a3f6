//! The backup, restore and verify jobs, on both backends: a chain of one full and three
//! incremental backups of an image that changes between them (unaligned writes, discards,
//! growing and shrinking), of a plain image and of a clone's child, restores byte-identical
//! with our restore job, and on Ceph with the real `rbd import-diff` too; a killed backup
//! never looks complete; the restore and verify jobs refuse what is wrong.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rbd_wasm::backend::{Backend, CloneOptions, CreateOptions, Image};
use rbd_wasm_tests::{ceph_conf, run_with_output, stream_check, stream_check_by_tool, unique_prefix, JobRun};
use sha2::{Digest, Sha256};

fn rbd(args: &[&str]) -> Vec<u8> {
    let out = Command::new("rbd").arg("-c").arg(ceph_conf()).args(args).output().expect("run rbd");
    assert!(out.status.success(), "rbd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1).collect()
}

fn manifest(dir: &Path, n: u32) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join(format!("{n}.json"))).expect("manifest")).unwrap()
}

/// The whole image `pool/name` (at `snap`), read through the backend.
fn contents(backend: &dyn Backend, pool: &str, name: &str, snap: Option<&str>) -> Vec<u8> {
    let image = backend.open(pool, name, snap, true).unwrap_or_else(|e| panic!("open {pool}/{name}@{snap:?}: {e}"));
    let size = image.size().unwrap();
    image.read(0, size).unwrap()
}

/// A backup's image digest, computed from the bytes: sha256 over each 64 KiB chunk's sha256.
fn chunk_digest(image: &[u8]) -> String {
    let mut h = Sha256::new();
    for (i, chunk) in image.chunks(64 << 10).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            h.update((i as u64).to_le_bytes());
            h.update(Sha256::digest(chunk));
        }
    }
    h.update((image.len() as u64).to_le_bytes());
    hex::encode(h.finalize())
}

/// What changes between backups: unaligned writes, whole- and part-object discards, grow,
/// shrink, and writes across object boundaries.
fn change(img: &dyn Image, step: usize) {
    match step {
        0 => {
            img.write(0, &pattern(5 << 20, 1)).unwrap();
            img.write(9 << 20, &pattern(100_000, 2)).unwrap();
        }
        1 => {
            img.write(1_000_003, &pattern(77_777, 3)).unwrap();
            img.discard(4 << 20, 4 << 20).unwrap(); // a whole object
            img.discard(65536, 3 * 65536).unwrap(); // part of one
            img.resize(20 << 20).unwrap();
            img.write(18 << 20, &pattern(4096, 4)).unwrap();
        }
        2 => {
            img.resize(7_000_001).unwrap();
            img.write(6_999_000, &pattern(1001, 5)).unwrap();
        }
        _ => {
            img.resize(9 << 20).unwrap();
            img.write((4 << 20) - 10, &pattern(20, 6)).unwrap();
        }
    }
}

/// Back up `rbd/src` four times, changing it before each; check each manifest. Returns the
/// image's repository directory.
fn make_chain(backend: &Arc<dyn Backend>, src: &str, out: &Path) -> PathBuf {
    let dir = out.join("rbd").join(src);
    for step in 0..4 {
        change(backend.open("rbd", src, None, false).unwrap().as_ref(), step);
        run_with_output("backup", &["rbd", src], backend.clone(), out).assert_ok();
        let n = step as u32 + 1;
        let m = manifest(&dir, n);
        assert_eq!(m["to_snapshot"], format!("backup-{n}"));
        let from = if n == 1 { serde_json::Value::Null } else { format!("backup-{}", n - 1).into() };
        assert_eq!(m["from_snapshot"], from);
        let stream_path = dir.join(format!("{n}.rbddiff"));
        let stream = std::fs::read(&stream_path).unwrap();
        assert_eq!(m["stream_check"]["method"], "chunked-sha256");
        assert_eq!(m["stream_check"]["chunk_size"], 65536);
        assert_eq!(m["stream_check"]["digest"], stream_check(&stream), "stream check");
        assert_eq!(stream_check_by_tool(&stream_path), (stream_check(&stream), stream.len() as u64), "tools/rbddiff-check.py");
        assert_eq!(m["stream_bytes"], stream.len() as u64);
        assert!(m.get("stream_sha256").is_none(), "{m}");
        let image = contents(backend.as_ref(), "rbd", src, Some(&format!("backup-{n}")));
        assert_eq!(m["image_digest"], chunk_digest(&image), "image digest");
        let sums = std::fs::read(dir.join(format!("{n}.sums"))).unwrap();
        assert_eq!(m["sums_sha256"], hex::encode(Sha256::digest(&sums)), "chunk sums checksum");
        assert!(!dir.join(format!("{n}.rbddiff.tmp")).exists());
    }
    dir
}

/// Restore every prefix of the chain with the restore job and compare with the source.
fn restore_every_backup_with_the_job(backend: &Arc<dyn Backend>, src: &str, out: &Path) {
    for n in 1..=4 {
        let restored = format!("{src}-job{n}");
        let job = run_with_output("restore", &["rbd", src, &restored, "--backup", &n.to_string()], backend.clone(), out);
        job.assert_ok();
        assert!(job.stdout.contains("verified"), "{}", job.stdout);
        // Checked from the digests of what it wrote, reading back only chunks written in part.
        let compared: u64 = job
            .stdout
            .split("checked from what was written: ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not checked from what was written:\n{}", job.stdout));
        assert!(compared > 0, "{}", job.stdout);
        let snap = format!("backup-{n}");
        let want = contents(backend.as_ref(), "rbd", src, Some(&snap));
        assert!(contents(backend.as_ref(), "rbd", &restored, Some(&snap)) == want, "backup-{n}: restored bytes differ");
        assert!(contents(backend.as_ref(), "rbd", &restored, None) == want, "backup-{n}: restored head differs");
        let snaps: Vec<String> = backend.open("rbd", &restored, None, true).unwrap().list_snaps().unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(snaps, (1..=n).map(|k| format!("backup-{k}")).collect::<Vec<_>>(), "the restored image has the chain's snapshots");
    }
}

fn a_chain_restores_byte_identical(backend: Arc<dyn Backend>) -> (String, tempfile::TempDir, PathBuf) {
    let src = format!("{}-src", unique_prefix("bk"));
    backend.create("rbd", &src, 12 << 20, &CreateOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = make_chain(&backend, &src, out.path());
    restore_every_backup_with_the_job(&backend, &src, out.path());
    (src, out, dir)
}

/// A clone's child: its full backup holds what it reads through from its parent.
fn a_clone_childs_chain_restores_byte_identical(backend: Arc<dyn Backend>) -> (String, tempfile::TempDir, PathBuf) {
    let prefix = unique_prefix("bkc");
    let parent = format!("{prefix}-parent");
    backend.create("rbd", &parent, 12 << 20, &CreateOptions::default()).unwrap();
    let p = backend.open("rbd", &parent, None, false).unwrap();
    p.write(0, &pattern(12 << 20, 7)).unwrap();
    p.create_snap("base").unwrap();
    p.protect_snap("base").unwrap();
    drop(p);
    let src = format!("{prefix}-child");
    backend.clone_image("rbd", &parent, "base", "rbd", &src, &CloneOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = make_chain(&backend, &src, out.path());
    restore_every_backup_with_the_job(&backend, &src, out.path());
    (src, out, dir)
}

/// Restore the chain with Ceph's own tool too, and compare every snapshot.
fn restore_with_rbd_import_diff(backend: &dyn Backend, src: &str, dir: &Path) {
    let restored = format!("{src}-import-diff");
    rbd(&["create", "--size", "1", &format!("rbd/{restored}")]);
    for n in 1..=4 {
        rbd(&["import-diff", "--no-progress", dir.join(format!("{n}.rbddiff")).to_str().unwrap(), &format!("rbd/{restored}")]);
        let snap = format!("backup-{n}");
        assert!(contents(backend, "rbd", &restored, Some(&snap)) == contents(backend, "rbd", src, Some(&snap)), "backup-{n}: rbd import-diff's restore differs");
    }
}

fn a_backup_whose_base_snapshot_is_gone_falls_back_to_full(backend: Arc<dyn Backend>) {
    let src = format!("{}-src", unique_prefix("bk"));
    backend.create("rbd", &src, 4 << 20, &CreateOptions::default()).unwrap();
    backend.open("rbd", &src, None, false).unwrap().write(100, b"data").unwrap();
    let out = tempfile::tempdir().unwrap();
    run_with_output("backup", &["rbd", &src], backend.clone(), out.path()).assert_ok();
    backend.open("rbd", &src, None, false).unwrap().remove_snap("backup-1").unwrap();
    let job = run_with_output("backup", &["rbd", &src], backend.clone(), out.path());
    job.assert_ok();
    assert!(job.stdout.contains("full backup of backup-2"), "{}", job.stdout);
    assert_eq!(manifest(&out.path().join("rbd").join(&src), 2)["from_snapshot"], serde_json::Value::Null);
}

fn failed(job: &JobRun) -> String {
    match &job.result {
        Err(e) => format!("{e}\n{}{}", job.stdout, job.stderr),
        Ok(()) => panic!("the job should have failed:\n{}{}", job.stdout, job.stderr),
    }
}

/// A backed-up image with two backups, for the error paths.
fn two_backups(backend: &Arc<dyn Backend>) -> (String, tempfile::TempDir, PathBuf) {
    let src = format!("{}-src", unique_prefix("bke"));
    backend.create("rbd", &src, 8 << 20, &CreateOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    for step in 0..2u64 {
        let img = backend.open("rbd", &src, None, false).unwrap();
        img.write(step * 3_000_000 + 17, &pattern(2_000_000, step as u8)).unwrap();
        drop(img);
        run_with_output("backup", &["rbd", &src], backend.clone(), out.path()).assert_ok();
    }
    let dir = out.path().join("rbd").join(&src);
    (src, out, dir)
}

/// The restore job refuses what is wrong, and leaves no half-restored image behind.
fn restore_refuses_what_is_wrong(backend: Arc<dyn Backend>) {
    let (src, out, dir) = two_backups(&backend);
    let out = out.path();
    let restore = |args: &[&str]| run_with_output("restore", args, backend.clone(), out);

    // Into another pool: fine.
    let [copy, damaged, broken, unverified] = ["copy", "damaged", "broken", "unverified"].map(|t| format!("{src}-{t}"));
    restore(&["rbd", &src, &copy, "--target-pool", "rbd2"]).assert_ok();
    assert!(contents(backend.as_ref(), "rbd2", &copy, None) == contents(backend.as_ref(), "rbd", &src, Some("backup-2")));
    // Onto an existing image: never.
    assert!(failed(&restore(&["rbd", &src, &copy, "--target-pool", "rbd2"])).contains("exists"));
    // Bad arguments, unknown backups and images.
    assert!(failed(&restore(&["rbd", &src])).contains("usage"));
    assert!(failed(&restore(&["rbd", &src, "x", "--backup", "seven"])).contains("not a backup number"));
    assert!(failed(&restore(&["rbd", &src, "x", "--backup", "9"])).contains("no complete backup 9"));
    assert!(failed(&restore(&["rbd", "no-such-image", "x"])).contains("no complete backup"));
    // A damaged stream: refused (found while it is applied), and neither the target nor
    // its work image is left.
    let stream = dir.join("2.rbddiff");
    let good = std::fs::read(&stream).unwrap();
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x40;
    std::fs::write(&stream, &bad).unwrap();
    assert!(failed(&restore(&["rbd", &src, &damaged])).contains("damaged"));
    assert!(!backend.list("rbd").unwrap().contains(&damaged), "a refused restore created its target");
    assert!(!backend.list("rbd").unwrap().contains(&format!("{damaged}.restoring")), "its work image was left behind");
    std::fs::write(&stream, &good).unwrap();
    // A broken chain: the full backup's manifest is gone.
    let full = dir.join("1.json");
    let kept = std::fs::read(&full).unwrap();
    std::fs::remove_file(&full).unwrap();
    assert!(failed(&restore(&["rbd", &src, &broken])).contains("chain is broken"));
    std::fs::write(&full, kept).unwrap();
    // A stream whose data is not what the manifest's image digest says (a backup that was
    // written wrong, its stream checksum recomputed): the restore is refused and removed.
    let m = dir.join("2.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    let data_at = good.len() - 1 - 1000; // inside the last `w` record's data
    let mut wrong = good.clone();
    wrong[data_at] ^= 0xff;
    std::fs::write(&stream, &wrong).unwrap();
    manifest["stream_check"]["digest"] = stream_check(&wrong).into();
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    assert!(failed(&restore(&["rbd", &src, &unverified])).contains("digest"));
    assert!(!backend.list("rbd").unwrap().contains(&unverified), "an unverified restore was left behind");
    assert!(!backend.list("rbd").unwrap().contains(&format!("{unverified}.restoring")), "its work image was left behind");
    // A restore killed before it verified leaves only `TARGET.restoring`, which the next
    // restore to TARGET removes before it starts.
    std::fs::write(&stream, &good).unwrap();
    manifest["stream_check"]["digest"] = stream_check(&good).into();
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let killed = format!("{src}-killed");
    backend.create("rbd", &format!("{killed}.restoring"), 1 << 20, &Default::default()).unwrap();
    let again = restore(&["rbd", &src, &killed]);
    again.assert_ok();
    assert!(again.stdout.contains(&format!("removing rbd/{killed}.restoring")), "{}", again.stdout);
    assert!(!backend.list("rbd").unwrap().contains(&format!("{killed}.restoring")));
    assert!(contents(backend.as_ref(), "rbd", &killed, None) == contents(backend.as_ref(), "rbd", &src, Some("backup-2")));

    // Chunk digests that disagree with the stream, their file's checksum recomputed: the
    // restore compares what it writes with them, and refuses.
    let sums = dir.join("2.sums");
    let good_sums = std::fs::read(&sums).unwrap();
    let mut wrong_sums = good_sums.clone();
    let last_record = wrong_sums.len() - 1; // a digest byte of the last record
    wrong_sums[last_record] ^= 1;
    std::fs::write(&sums, &wrong_sums).unwrap();
    manifest["sums_sha256"] = hex::encode(Sha256::digest(&wrong_sums)).into();
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let wrong = format!("{src}-wrongsums");
    assert!(failed(&restore(&["rbd", &src, &wrong])).contains("digest"));
    assert!(!backend.list("rbd").unwrap().contains(&wrong));
    // A damaged chunk digests file (its checksum off): the restore reads the image back
    // whole instead, and verifies it against the manifest's image digest.
    manifest["sums_sha256"] = hex::encode(Sha256::digest(&good_sums)).into();
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let read_back = format!("{src}-readback");
    let job = restore(&["rbd", &src, &read_back]);
    job.assert_ok();
    assert!(job.stdout.contains("damaged") && job.stdout.contains("checked by reading the restored image back"), "{}", job.stdout);
    assert!(contents(backend.as_ref(), "rbd", &read_back, None) == contents(backend.as_ref(), "rbd", &src, Some("backup-2")));
    std::fs::write(&sums, &good_sums).unwrap();
}

/// The verify job: a deep scrub, a sample, and what it finds when the backup is wrong.
fn verify_checks_a_backup_against_its_snapshot(backend: Arc<dyn Backend>) {
    let (src, out, dir) = two_backups(&backend);
    let out = out.path();
    let verify = |args: &[&str]| run_with_output("verify", args, backend.clone(), out);

    let deep = verify(&["rbd", &src]);
    deep.assert_ok();
    assert!(deep.stdout.contains("@backup-2") && deep.stdout.contains("ok (deep scrub"), "{}", deep.stdout);
    verify(&["rbd", &src, "--backup", "1"]).assert_ok();
    let sample = verify(&["rbd", &src, "--sample", "0.5", "--seed", "3"]);
    sample.assert_ok();
    assert!(sample.stdout.contains("sample of 0.5 (seed 3)"), "{}", sample.stdout);
    for bad in [&["rbd", &src, "--sample", "0"][..], &["rbd", &src, "--sample", "x"], &["rbd", &src, "--frobnicate"], &["rbd"]] {
        failed(&verify(bad));
    }

    // A stream that disagrees with the image where its checksums agree with it.
    let stream = dir.join("2.rbddiff");
    let original = std::fs::read(&stream).unwrap();
    let mut wrong = original.clone();
    let data_at = wrong.len() - 1 - 1000;
    wrong[data_at] ^= 0xff;
    std::fs::write(&stream, &wrong).unwrap();
    let m = dir.join("2.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    let right_check = manifest["stream_check"]["digest"].clone();
    manifest["stream_check"]["digest"] = stream_check(&wrong).into();
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let found = failed(&verify(&["rbd", &src]));
    assert!(found.contains("differs at") && found.contains("1 difference(s)"), "{found}");
    // So does a sample of every record.
    assert!(failed(&verify(&["rbd", &src, "--sample", "1"])).contains("differs at"));

    // A damaged stream (checksum off) is named before the image is read.
    manifest["stream_check"]["digest"] = right_check;
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    assert!(failed(&verify(&["rbd", &src])).contains("damaged"));
    std::fs::write(&stream, &original).unwrap();
    verify(&["rbd", &src]).assert_ok();

    // Chunk digests that disagree with the snapshot (as if the image had changed under its
    // snapshot): the deep scrub names the chunk.
    // Records of 48 bytes after a 47-byte header: first chunk, count, digest (all zero bytes
    // for a zero run); the first data record's digest is changed.
    let sums_path = dir.join("2.sums");
    let mut sums = std::fs::read(&sums_path).unwrap();
    let record = (47..sums.len()).step_by(48).find(|&r| sums[r + 16..r + 48] != [0; 32]).expect("a data record");
    let chunk = u64::from_le_bytes(sums[record..record + 8].try_into().unwrap());
    sums[record + 16] ^= 1;
    std::fs::write(&sums_path, &sums).unwrap();
    manifest["sums_sha256"] = hex::encode(Sha256::digest(&sums)).into();
    manifest["image_digest"] = "0".repeat(64).into();
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let found = failed(&verify(&["rbd", &src]));
    assert!(found.contains(&format!("chunk {}+65536: its digest is not the backup's", chunk * 65536)), "{found}");

    // Without the snapshot there is nothing to verify against.
    backend.open("rbd", &src, None, false).unwrap().remove_snap("backup-1").unwrap();
    assert!(failed(&verify(&["rbd", &src, "--backup", "1"])).contains("the snapshot is needed"));
}

/// The image digest of version 1, as the backup jobs before digest version 2 recorded it:
/// sha256 over the sha256 of every 64 KiB chunk, zeroes included.
fn chunk_digest_v1(image: &[u8]) -> String {
    let mut h = Sha256::new();
    for chunk in image.chunks(64 << 10) {
        h.update(Sha256::digest(chunk));
    }
    hex::encode(h.finalize())
}

/// A backup an older job made (its manifest has no `digest_version`, its `image_digest` is
/// of version 1, its stream is checked by a plain `stream_sha256`) still restores verified
/// and verifies; a wrong digest of that version, or a stream check of a method no job
/// knows, is still caught.
fn an_older_jobs_backup_restores_verified(backend: Arc<dyn Backend>) {
    let (src, out, dir) = two_backups(&backend);
    for n in 1..=2 {
        let m = dir.join(format!("{n}.json"));
        let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
        manifest.as_object_mut().unwrap().remove("stream_check");
        let stream = std::fs::read(dir.join(format!("{n}.rbddiff"))).unwrap();
        manifest["stream_sha256"] = hex::encode(Sha256::digest(&stream)).into();
        std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    }
    let m = dir.join("2.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    manifest.as_object_mut().unwrap().remove("digest_version");
    let image = contents(backend.as_ref(), "rbd", &src, Some("backup-2"));
    manifest["image_digest"] = chunk_digest_v1(&image).into();
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let restored = format!("{src}-v1");
    let job = run_with_output("restore", &["rbd", &src, &restored], backend.clone(), out.path());
    job.assert_ok();
    assert!(job.stdout.contains("checked by reading the restored image back"), "{}", job.stdout);
    assert_eq!(contents(backend.as_ref(), "rbd", &restored, None), image);
    let verify = run_with_output("verify", &["rbd", &src], backend.clone(), out.path());
    verify.assert_ok();
    assert!(verify.stdout.contains("an older job's image digest"), "{}", verify.stdout);
    manifest["image_digest"] = "0".repeat(64).into();
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let wrong = run_with_output("restore", &["rbd", &src, &format!("{src}-v1b")], backend.clone(), out.path());
    assert!(failed(&wrong).contains("digest"), "{}", failed(&wrong));
    // A plain sha256 that does not match is a damaged stream.
    manifest["image_digest"] = chunk_digest_v1(&image).into();
    manifest["stream_sha256"] = "0".repeat(64).into();
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let damaged = run_with_output("restore", &["rbd", &src, &format!("{src}-v1c")], backend.clone(), out.path());
    assert!(failed(&damaged).contains("damaged"), "{}", failed(&damaged));
    // A check of a method this job does not know is refused, not skipped.
    manifest["stream_check"] = serde_json::json!({"method": "blake3", "chunk_size": 65536, "digest": "00"});
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let unknown = run_with_output("restore", &["rbd", &src, &format!("{src}-v1d")], backend.clone(), out.path());
    assert!(failed(&unknown).contains("does not know"), "{}", failed(&unknown));
}

/// A chain of 34 backups: the sums of backup 33 are written whole (a chain of 32 files is
/// as long as a digest reads), those of 34 change them; every backup restores verified.
fn a_long_chain_writes_its_sums_whole_and_restores_verified(backend: Arc<dyn Backend>) {
    let src = format!("{}-long", unique_prefix("bk"));
    backend.create("rbd", &src, 4 << 20, &CreateOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    for n in 0..34u64 {
        let img = backend.open("rbd", &src, None, false).unwrap();
        img.write(n * 100_003 % (4 << 20), &pattern(70_000, n as u8)).unwrap();
        drop(img);
        run_with_output("backup", &["rbd", &src], backend.clone(), out.path()).assert_ok();
    }
    let dir = out.path().join("rbd").join(&src);
    // The base's number, after the 23-byte magic, the chunk size and the image size.
    let base = |n: u32| {
        let sums = std::fs::read(dir.join(format!("{n}.sums"))).unwrap();
        u64::from_le_bytes(sums[39..47].try_into().unwrap())
    };
    assert_eq!(base(32), 31);
    assert_eq!(base(33), 0, "backup 33's sums are not written whole");
    assert_eq!(base(34), 33);
    for n in [32u32, 33, 34] {
        let restored = format!("{src}-r{n}");
        run_with_output("restore", &["rbd", &src, &restored, "--backup", &n.to_string()], backend.clone(), out.path())
            .assert_ok();
        let want = contents(backend.as_ref(), "rbd", &src, Some(&format!("backup-{n}")));
        assert_eq!(contents(backend.as_ref(), "rbd", &restored, None), want, "backup {n}");
        assert_eq!(manifest(&dir, n)["image_digest"], chunk_digest(&want), "backup {n}'s digest");
    }
}

mod embedded {
    use super::*;
    use rbd_wasm_tests::embedded_store;

    #[test]
    fn a_chain_of_backups_restores_byte_identical_with_the_restore_job() {
        let store = embedded_store();
        a_chain_restores_byte_identical(store.backend.clone());
    }

    #[test]
    fn a_clone_childs_chain_of_backups_restores_byte_identical() {
        let store = embedded_store();
        a_clone_childs_chain_restores_byte_identical(store.backend.clone());
    }

    #[test]
    fn a_backup_whose_base_snapshot_is_gone_falls_back_to_full() {
        super::a_backup_whose_base_snapshot_is_gone_falls_back_to_full(embedded_store().backend.clone());
    }

    #[test]
    fn restore_refuses_what_is_wrong() {
        super::restore_refuses_what_is_wrong(embedded_store().backend.clone());
    }

    #[test]
    fn verify_checks_a_backup_against_its_snapshot() {
        super::verify_checks_a_backup_against_its_snapshot(embedded_store().backend.clone());
    }

    #[test]
    fn an_older_jobs_backup_restores_verified() {
        super::an_older_jobs_backup_restores_verified(embedded_store().backend.clone());
    }

    #[test]
    fn a_long_chain_writes_its_sums_whole_and_restores_verified() {
        super::a_long_chain_writes_its_sums_whole_and_restores_verified(embedded_store().backend.clone());
    }
}

mod librbd {
    use super::*;
    use rbd_wasm_tests::librbd_backend;

    #[test]
    fn a_chain_of_backups_restores_byte_identical_with_rbd_import_diff_and_the_restore_job() {
        let backend = librbd_backend();
        let (src, _out, dir) = a_chain_restores_byte_identical(backend.clone());
        restore_with_rbd_import_diff(backend.as_ref(), &src, &dir);
    }

    #[test]
    fn a_clone_childs_chain_of_backups_restores_byte_identical_with_rbd_import_diff_and_the_restore_job() {
        let backend = librbd_backend();
        let (src, _out, dir) = a_clone_childs_chain_restores_byte_identical(backend.clone());
        restore_with_rbd_import_diff(backend.as_ref(), &src, &dir);
    }

    #[test]
    fn a_backup_whose_base_snapshot_is_gone_falls_back_to_full() {
        super::a_backup_whose_base_snapshot_is_gone_falls_back_to_full(librbd_backend());
    }

    #[test]
    fn restore_refuses_what_is_wrong() {
        super::restore_refuses_what_is_wrong(librbd_backend());
    }

    #[test]
    fn verify_checks_a_backup_against_its_snapshot() {
        super::verify_checks_a_backup_against_its_snapshot(librbd_backend());
    }

    #[test]
    fn an_older_jobs_backup_restores_verified() {
        super::an_older_jobs_backup_restores_verified(librbd_backend());
    }

    /// Extents closer together than a 64 KiB chunk share chunks, and with more than a read
    /// group of them (32 MiB of chunks) one such chunk falls on a group's edge: both groups
    /// must read it, or the next group's extent is written short (a bug once: the restore
    /// job's digest check refused the result).
    #[test]
    fn dense_small_changes_across_read_groups_restore_byte_identical() {
        let backend = librbd_backend();
        let src = format!("{}-dense", unique_prefix("bk"));
        backend.create("rbd", &src, 128 << 20, &CreateOptions::default()).unwrap();
        let img = backend.open("rbd", &src, None, false).unwrap();
        img.write(0, &pattern(128 << 20, 3)).unwrap();
        let out = tempfile::tempdir().unwrap();
        run_with_output("backup", &["rbd", &src], backend.clone(), out.path()).assert_ok();
        // 4 KiB every 40 KiB over 96 MiB: 2457 extents, about 1.6 to a chunk.
        for i in 0..(96u64 << 20) / 40960 {
            img.write(i * 40960, &pattern(4096, i as u8)).unwrap();
        }
        drop(img);
        run_with_output("backup", &["rbd", &src], backend.clone(), out.path()).assert_ok();
        let restored = format!("{src}-restored");
        let job = run_with_output("restore", &["rbd", &src, &restored], backend.clone(), out.path());
        job.assert_ok();
        assert_eq!(
            contents(backend.as_ref(), "rbd", &restored, None),
            contents(backend.as_ref(), "rbd", &src, Some("backup-2")),
            "the restored image"
        );
    }

    /// Kill `rbd-wasm run backup` at 20 different moments: no killed run leaves a backup
    /// that looks complete (a manifest) without being complete (its stream whole, its
    /// checksums right), and the next run completes the chain, which then restores
    /// byte-identical with `rbd import-diff` and with the restore job. The runs say
    /// `--claim-timeout 0`: this runner is the only one, so a snapshot without a complete
    /// backup is a killed run's and is taken over at once.
    #[test]
    fn a_backup_killed_at_any_point_never_looks_complete_and_the_next_run_completes_the_chain() {
        use rbd_wasm_tests::{guest, host_binary, test_cache_dir};
        use std::time::{Duration, Instant};

        let backend = librbd_backend();
        let src = format!("{}-src", unique_prefix("kill"));
        // Without the exclusive-lock feature: a killed client keeps that lock until its
        // watch times out (30 s), and every next run would wait for it.
        let layering_only = CreateOptions { features: rbd_wasm::backend::features::LAYERING, ..CreateOptions::default() };
        backend.create("rbd", &src, 64 << 20, &layering_only).unwrap();
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("rbd").join(&src);
        let job = guest("backup");
        let command = || {
            let mut cmd = Command::new(host_binary());
            cmd.arg("run")
                .arg("-c")
                .arg(ceph_conf())
                .arg("--output-dir")
                .arg(out.path())
                .arg(&job)
                .args(["--", "rbd", &src, "--claim-timeout", "0"])
                .env("RBD_WASM_CACHE", test_cache_dir());
            cmd
        };
        let run = || {
            command()
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
                    assert_eq!(m["stream_check"]["digest"], stream_check(&stream), "kill {i}: {path:?} looks complete but is not");
                }
            }
        }
        // A last, uncut run completes the chain, and takes over what the killed runs left.
        let last_run = command().output().expect("run rbd-wasm");
        let said = format!("{}{}", String::from_utf8_lossy(&last_run.stdout), String::from_utf8_lossy(&last_run.stderr));
        assert!(last_run.status.success(), "{said}");
        let names: Vec<String> = backend.open("rbd", &src, None, true).unwrap().list_snaps().unwrap().into_iter().map(|s| s.name).collect();
        let files: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        for name in &names {
            let n = name.trim_start_matches("backup-");
            assert!(
                dir.join(format!("{n}.json")).exists(),
                "{name}: a killed run's snapshot was left behind: {names:?}\nfiles: {files:?}\nthe last run said:\n{said}"
            );
        }

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
        let restored = format!("{src}-restored");
        rbd(&["create", "--size", "1", &format!("rbd/{restored}")]);
        for m in &chain {
            rbd(&["import-diff", "--no-progress", dir.join(m["stream"].as_str().unwrap()).to_str().unwrap(), &format!("rbd/{restored}")]);
        }
        let want = contents(backend.as_ref(), "rbd", &src, Some(&last));
        assert!(contents(backend.as_ref(), "rbd", &restored, Some(&last)) == want, "the restored chain differs");
        let by_job = format!("{src}-by-job");
        run_with_output("restore", &["rbd", &src, &by_job], backend.clone(), out.path()).assert_ok();
        assert!(contents(backend.as_ref(), "rbd", &by_job, None) == want, "the restore job's image differs");
    }
}
