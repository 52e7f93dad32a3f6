//! The deduplicating, encrypted repository (issue 15, in progress), through `rbd-wasm` as an
//! operator runs it (a manifest handing the passphrase as a secret), on both backends: a
//! chain of backups restores byte-identical; an incremental backup reads only the changed
//! chunks; a second image that shares most of its data with the first stores little; a
//! wrong passphrase, a forged manifest and a damaged chunk are each named, and nothing is
//! restored from them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rbd_wasm::backend::{Backend, CreateOptions};
use rbd_wasm_tests::{ceph_conf, guest, host_binary, librbd_backend, run_host_measured, unique_prefix, S3Gateway, Site};

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|i| {
            if i % 4096 < 2048 {
                // Half of each page compresses (text-like), half does not.
                b"a virtual disk's text "[i % 22]
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

fn contents(backend: &dyn Backend, name: &str, snap: Option<&str>) -> Vec<u8> {
    let image = backend.open("rbd", name, snap, true).unwrap_or_else(|e| panic!("open {name}@{snap:?}: {e}"));
    image.read(0, image.size().unwrap()).unwrap()
}

/// Run the dedup job on the repository `repo` with `passphrase`; its stdout and report.
fn dedup(site: &Site, repo: &Path, passphrase: &str, args: &[&str]) -> (String, serde_json::Value) {
    dedup_with(site, repo, passphrase, None, args)
}

/// A manifest for the dedup job on `repo` with `passphrase` (in the returned directory);
/// with `s3`, the gateway's bucket is granted and its keys handed too.
fn manifest(repo: &Path, passphrase: &str, s3: Option<&S3Gateway>) -> (tempfile::TempDir, PathBuf) {
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(conf.path().join("passphrase"), format!("{passphrase}\n")).unwrap();
    let mut extra = String::new();
    if let Some(g) = s3 {
        std::fs::write(conf.path().join("access"), &g.access).unwrap();
        std::fs::write(conf.path().join("secret"), &g.secret).unwrap();
        extra = format!("s3-access-key = \"access\"\ns3-secret-key = \"secret\"\n[[outbound]]\nurl = \"{}/{}/\"\n", g.endpoint, g.bucket);
    }
    let manifest = conf.path().join("dedup.toml");
    std::fs::write(
        &manifest,
        format!(
            "schema = 1\n[job]\nid = \"dedup\"\noutput_dir = \"{}\"\n[[grants]]\npool = \"rbd\"\noperations = [\"all\"]\n\
             [limits]\nhost_memory_mib = 256\n[secrets]\nrepo-passphrase = \"passphrase\"\n{extra}",
            repo.display()
        ),
    )
    .unwrap();
    (conf, manifest)
}

/// `rbd-wasm run`'s arguments for the dedup job with `manifest` on `site`: `flags`, then
/// the component and `args`.
fn run_args(site: &Site, manifest: &Path, flags: &[&str], args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = ["run", "--progress", "none", "--manifest"].iter().map(|s| s.to_string()).collect();
    all.push(manifest.display().to_string());
    all.extend(flags.iter().map(|s| s.to_string()));
    all.extend(site.store_args.iter().cloned());
    all.push(guest("dedup").display().to_string());
    all.push("--".into());
    all.extend(args.iter().map(|s| s.to_string()));
    all
}

/// As [`dedup`]; with `s3`, the gateway's bucket is granted and its keys handed too.
fn dedup_with(site: &Site, repo: &Path, passphrase: &str, s3: Option<&S3Gateway>, args: &[&str]) -> (String, serde_json::Value) {
    let (_conf, manifest) = manifest(repo, passphrase, s3);
    let all = run_args(site, &manifest, &["--json"], args);
    let out = run_host_measured(&all.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no report ({e}): {stderr}"));
    assert!(!stderr.contains(passphrase), "the passphrase was printed");
    (stderr, report)
}

/// Restore backup `n` of `image` through a pipe: the dedup job writes an `rbd export-diff`
/// stream on its standard output (`--stdout-data`) and `rbd import-diff -` applies it to
/// the new Ceph image `target`. Whether both succeeded, and both's stderr.
fn restore_through_import_diff(site: &Site, repo: &Path, passphrase: &str, image: &str, n: u64, target: &str) -> (bool, String) {
    rbd(&["create", "--size", "1M", &format!("rbd/{target}")]);
    let (_conf, manifest) = manifest(repo, passphrase, None);
    let args = run_args(site, &manifest, &["--stdout-data"], &["restore", "rbd", image, "-", "--backup", &n.to_string()]);
    let mut job = Command::new(host_binary())
        .args(&args)
        .env_remove("CEPH_CONF")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let import = Command::new("rbd")
        .arg("-c")
        .arg(ceph_conf())
        .args(["import-diff", "--no-progress", "-", &format!("rbd/{target}")])
        .stdin(job.stdout.take().unwrap())
        .output()
        .unwrap();
    let job = job.wait_with_output().unwrap();
    let said = format!("{}\n{}", String::from_utf8_lossy(&job.stderr), String::from_utf8_lossy(&import.stderr));
    assert!(!said.contains(passphrase), "the passphrase was printed");
    (job.status.success() && import.status.success(), said)
}

fn rbd(args: &[&str]) {
    let out = Command::new("rbd").arg("-c").arg(ceph_conf()).args(args).output().expect("run rbd");
    assert!(out.status.success(), "rbd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn ok(run: (String, serde_json::Value)) -> String {
    assert_eq!(run.1["status"], "ok", "{}\n{}", run.1, run.0);
    run.0
}

fn failed(run: (String, serde_json::Value)) -> String {
    assert_eq!(run.1["status"], "failed", "{}\n{}", run.1, run.0);
    run.1["error"].as_str().unwrap().to_owned()
}

/// Bytes the repository's chunks take.
fn chunk_bytes(repo: &Path) -> u64 {
    let mut total = 0;
    for dir in std::fs::read_dir(repo.join("chunks")).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            total += f.unwrap().metadata().unwrap().len();
        }
    }
    total
}

fn a_chain_restores_and_a_shared_image_dedups(site: Site) {
    let prefix = unique_prefix("dd");
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let repo = tempfile::tempdir().unwrap();
    let pass = "correct horse battery staple";
    ok(dedup(&site, repo.path(), pass, &["init"]));

    site.backend.create("rbd", &a, 32 << 20, &CreateOptions::default()).unwrap();
    let img = site.backend.open("rbd", &a, None, false).unwrap();
    img.write(0, &pattern(24 << 20, 1)).unwrap();
    drop(img);
    let first = ok(dedup(&site, repo.path(), pass, &["backup", "rbd", &a]));
    // What each backup holds (older snapshots are removed by the next backup).
    let mut held = std::collections::HashMap::new();
    held.insert((a.clone(), 1), contents(site.backend.as_ref(), &a, Some("dedup-1")));
    assert!(first.contains("backup 1 of") && first.contains("96 chunks read"), "{first}");
    let after_first = chunk_bytes(repo.path());
    assert!(after_first < 20 << 20, "the text half compresses: {after_first} bytes for 24 MiB");

    // 3 scattered changes touching 4 chunks (the first crosses a chunk boundary): only
    // those are read.
    let img = site.backend.open("rbd", &a, None, false).unwrap();
    for (i, at) in [1_000_003u64, 9 << 20, (20 << 20) + 5].into_iter().enumerate() {
        img.write(at, &pattern(70_000, 10 + i as u64)).unwrap();
    }
    drop(img);
    let second = ok(dedup(&site, repo.path(), pass, &["backup", "rbd", &a]));
    assert!(second.contains("4 chunks read (changed since the last backup)"), "{second}");
    held.insert((a.clone(), 2), contents(site.backend.as_ref(), &a, Some("dedup-2")));
    let snaps: Vec<String> = site.backend.open("rbd", &a, None, true).unwrap().list_snaps().unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(snaps, ["dedup-2"], "the older snapshot is removed once a newer backup is complete");

    // A second image with the first's data and one change: it stores one chunk.
    site.backend.create("rbd", &b, 32 << 20, &CreateOptions::default()).unwrap();
    let img = site.backend.open("rbd", &b, None, false).unwrap();
    img.write(0, &contents(site.backend.as_ref(), &a, Some("dedup-2"))).unwrap();
    img.write(30 << 20, &pattern(4096, 99)).unwrap();
    drop(img);
    let before = chunk_bytes(repo.path());
    let shared = ok(dedup(&site, repo.path(), pass, &["backup", "rbd", &b]));
    assert!(shared.contains("1 new stored"), "{shared}");
    assert!(chunk_bytes(repo.path()) - before < 1 << 20, "the shared image stored more than its one new chunk");
    held.insert((b.clone(), 1), contents(site.backend.as_ref(), &b, Some("dedup-1")));

    for (image, n) in [(&a, 1), (&a, 2), (&b, 1)] {
        let target = format!("{image}-restored-{n}");
        let said = ok(dedup(&site, repo.path(), pass, &["restore", "rbd", image, &target, "--backup", &n.to_string()]));
        assert!(said.contains("each checked against its id"), "{said}");
        assert!(contents(site.backend.as_ref(), &target, None) == held[&(image.clone(), n)], "{image} backup {n} restores different bytes");
    }

    // The same chain through `rbd import-diff -`, onto a Ceph image (whichever backend the
    // backups came from).
    let ceph = librbd_backend();
    for (image, n) in [(&a, 1), (&a, 2), (&b, 1)] {
        let target = format!("{image}-imported-{n}");
        let (done, said) = restore_through_import_diff(&site, repo.path(), pass, image, n, &target);
        assert!(done, "{said}");
        assert!(said.contains("each chunk checked against its id"), "{said}");
        assert!(contents(ceph.as_ref(), &target, None) == held[&(image.clone(), n)], "{image} backup {n} imports different bytes");
    }

    let verified = ok(dedup(&site, repo.path(), pass, &["verify", "rbd", &a, "--deep"]));
    assert!(verified.contains("chunks present and whole"), "{verified}");

    // What is wrong is named, and nothing is restored from it.
    let error = failed(dedup(&site, repo.path(), "not the passphrase", &["restore", "rbd", &a, &format!("{a}-wrong")]));
    assert!(error.contains("the passphrase does not open"), "{error}");
    let manifest = repo.path().join(format!("backups/rbd/{a}/2.json"));
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("dedup-2", "dedup-1")).unwrap();
    let error = failed(dedup(&site, repo.path(), pass, &["restore", "rbd", &a, &format!("{a}-forged")]));
    assert!(error.contains("does not authenticate"), "{error}");
    std::fs::write(&manifest, text).unwrap();
    let some_chunk = std::fs::read_dir(repo.path().join("chunks")).unwrap().next().unwrap().unwrap().path();
    let chunk = std::fs::read_dir(&some_chunk).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&chunk).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&chunk, bytes).unwrap();
    let mut damaged = 0;
    for (image, n) in [(&a, 1), (&a, 2), (&b, 1)] {
        let run = dedup(&site, repo.path(), pass, &["restore", "rbd", image, &format!("{image}-damaged-{n}"), "--backup", &n.to_string()]);
        if run.1["status"] == "failed" {
            let error = run.1["error"].as_str().unwrap();
            assert!(error.contains("does not authenticate"), "{error}");
            damaged += 1;
            // Through a pipe too: the stream stops before its end record, and `rbd
            // import-diff` refuses it.
            let (done, said) = restore_through_import_diff(&site, repo.path(), pass, image, n, &format!("{image}-damaged-imported-{n}"));
            assert!(!done && said.contains("does not authenticate"), "a damaged chunk was imported: {said}");
        }
    }
    assert!(damaged > 0, "a damaged chunk went unnoticed");
    // Verify finds it: present for the shallow check, damaged for the deep one.
    let mut named = 0;
    for image in [&a, &b] {
        ok(dedup(&site, repo.path(), pass, &["verify", "rbd", image]));
        let run = dedup(&site, repo.path(), pass, &["verify", "rbd", image, "--deep", "--backup", "1"]);
        if run.1["status"] == "failed" {
            assert!(run.1["error"].as_str().unwrap().contains("1 damaged"), "{}", run.1);
            named += 1;
        }
    }
    assert!(named > 0, "the deep verify missed the damaged chunk");
    std::fs::remove_file(&chunk).unwrap();
    let missing = [&a, &b].iter().filter(|image| dedup(&site, repo.path(), pass, &["verify", "rbd", image, "--backup", "1"]).1["status"] == "failed").count();
    assert!(missing > 0, "the shallow verify missed a missing chunk");
}

#[test]
fn embedded_a_chain_restores_and_a_shared_image_dedups() {
    a_chain_restores_and_a_shared_image_dedups(Site::embedded());
}

#[test]
fn librbd_a_chain_restores_and_a_shared_image_dedups() {
    a_chain_restores_and_a_shared_image_dedups(Site::librbd());
}

/// The same repository on Ceph's S3 gateway: a chain restores byte-identical, only the
/// changed chunks go up, and a wrong passphrase is named.
#[test]
fn a_repository_on_s3_restores_byte_identical() {
    let site = Site::embedded();
    let gateway = S3Gateway::from_env();
    let prefix = unique_prefix("dedup-s3");
    let image = format!("{prefix}-img");
    let out = tempfile::tempdir().unwrap();
    let s3 = ["--s3", gateway.endpoint.as_str(), gateway.bucket.as_str(), prefix.as_str()];
    let run = |pass: &str, args: &[&str]| {
        let all: Vec<&str> = s3.iter().chain(args).copied().collect();
        dedup_with(&site, out.path(), pass, Some(&gateway), &all)
    };
    let pass = "an s3 repository passphrase";
    ok(run(pass, &["init"]));
    site.backend.create("rbd", &image, 16 << 20, &CreateOptions::default()).unwrap();
    let img = site.backend.open("rbd", &image, None, false).unwrap();
    img.write(0, &pattern(10 << 20, 3)).unwrap();
    drop(img);
    // 1 MiB chunks on S3 by default.
    assert!(ok(run(pass, &["backup", "rbd", &image])).contains("10 chunks read"));
    let img = site.backend.open("rbd", &image, None, false).unwrap();
    img.write(5 << 20, &pattern(1000, 4)).unwrap();
    drop(img);
    let first = contents(site.backend.as_ref(), &image, Some("dedup-1"));
    let second = ok(run(pass, &["backup", "rbd", &image]));
    assert!(second.contains("1 chunks read") && second.contains("1 new stored"), "{second}");
    let held = [first, contents(site.backend.as_ref(), &image, Some("dedup-2"))];
    for n in 1..=2 {
        let target = format!("{image}-restored-{n}");
        ok(run(pass, &["restore", "rbd", &image, &target, "--backup", &n.to_string()]));
        assert!(contents(site.backend.as_ref(), &target, None) == held[n - 1]);
    }
    assert!(std::fs::read_dir(out.path()).unwrap().next().is_none(), "nothing was written to the output directory");
    let error = failed(run("not the passphrase", &["restore", "rbd", &image, &format!("{image}-wrong")]));
    assert!(error.contains("the passphrase does not open"), "{error}");
}

/// A backup killed in the middle (its deadline, under a bandwidth cap) leaves no manifest,
/// so no backup, and does not block the next run, which completes and restores.
#[test]
fn a_killed_backup_never_looks_complete() {
    let site = Site::embedded();
    let image = format!("{}-img", unique_prefix("ddk"));
    let repo = tempfile::tempdir().unwrap();
    let pass = "correct horse battery staple";
    ok(dedup(&site, repo.path(), pass, &["init"]));
    site.backend.create("rbd", &image, 64 << 20, &CreateOptions::default()).unwrap();
    let img = site.backend.open("rbd", &image, None, false).unwrap();
    img.write(0, &pattern(64 << 20, 5)).unwrap();
    drop(img);
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(conf.path().join("passphrase"), pass).unwrap();
    let manifest = conf.path().join("killed.toml");
    std::fs::write(
        &manifest,
        format!(
            "schema = 1\n[job]\noutput_dir = \"{}\"\n[[grants]]\npool = \"rbd\"\noperations = [\"all\"]\n\
             [secrets]\nrepo-passphrase = \"passphrase\"\n[limits]\nbandwidth_mib_per_sec = 16\ndeadline_secs = 2\n",
            repo.path().display()
        ),
    )
    .unwrap();
    let component = guest("dedup");
    let mut args: Vec<&str> = vec!["run", "--json", "--progress", "none", "--manifest", manifest.to_str().unwrap()];
    args.extend(site.store_args.iter().map(String::as_str));
    args.extend([component.to_str().unwrap(), "--", "backup", "rbd", &image]);
    let killed = run_host_measured(&args, &[]);
    let report: serde_json::Value = serde_json::from_slice(&killed.stdout).unwrap();
    assert_eq!(report["status"], "deadline", "{report}");
    assert!(!repo.path().join(format!("backups/rbd/{image}/1.json")).exists(), "a killed backup looks complete");
    // Its lease was left behind, live for the stale time: the next run waits that out.
    let next = ok(dedup(&site, repo.path(), pass, &["backup", "rbd", &image, "--stale-after", "4"]));
    assert!(next.contains("removed dedup-1, left by a run that did not finish") && next.contains("backup 1 of"), "{next}");
    let target = format!("{image}-restored");
    ok(dedup(&site, repo.path(), pass, &["restore", "rbd", &image, &target]));
    assert!(contents(site.backend.as_ref(), &target, None) == contents(site.backend.as_ref(), &image, Some("dedup-1")));
}

/// Spawn the dedup job through `rbd-wasm` (output as an operator sees it: tagged lines on
/// stdout); the child and a channel of its stdout lines.
fn spawn_dedup(site: &Site, manifest: &Path, args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let all = run_args(site, manifest, &[], args);
    let mut child = Command::new(host_binary())
        .args(&all)
        .env_remove("CEPH_CONF")
        .env("RBD_WASM_CACHE", rbd_wasm_tests::test_cache_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Kill `child` (SIGKILL: no cleanup at all) as soon as it prints a line containing
/// `needle`; whether it did before ending.
fn kill_at(mut child: std::process::Child, lines: std::sync::mpsc::Receiver<String>, needle: &str) -> bool {
    let mut seen = false;
    while let Ok(line) = lines.recv_timeout(std::time::Duration::from_secs(120)) {
        if line.contains(needle) {
            child.kill().unwrap();
            seen = true;
            break;
        }
    }
    child.wait().unwrap();
    seen
}

/// Backups killed outright (SIGKILL) at each point of their work, and a garbage collection
/// killed in the middle of its sweep: no killed backup looks complete, every complete backup
/// still restores byte-identical and verifies deep, and each next run proceeds once the
/// killed run's lease is stale (`--stale-after` 4 s or 40 s here; 120 s by default).
fn kills_lose_nothing(site: Site) {
    let prefix = unique_prefix("ddkill");
    let image = format!("{prefix}-img");
    let repo = tempfile::tempdir().unwrap();
    let pass = "correct horse battery staple";
    // Short leases, so that each next run waits little for a killed one's to go stale. On
    // Ceph a killed client's watch on the image lasts 30 s, and snapshot calls wait for it:
    // the lease must outlast such a call.
    let stale_secs = if site.store_args[0] == "--store" { "4" } else { "40" };
    let stale = ["--stale-after", stale_secs];
    ok(dedup(&site, repo.path(), pass, &["init", "--chunk-size", "65536"]));
    site.backend.create("rbd", &image, 48 << 20, &CreateOptions::default()).unwrap();
    let write = |seed: u64, at: u64, len: usize| {
        let img = site.backend.open("rbd", &image, None, false).unwrap();
        img.write(at, &pattern(len, seed)).unwrap();
    };
    write(1, 0, 40 << 20);
    let (_conf, manifest) = manifest(repo.path(), pass, None);
    let mut held: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut made = 0u64;
    // `--pause-at` holds the run at the point until it is killed there.
    for (k, point) in ["snapshot", "chunks", "index"].into_iter().enumerate() {
        write(10 + k as u64, (k as u64 * 7) << 20, 6 << 20);
        let (child, lines) = spawn_dedup(&site, &manifest, &["backup", "rbd", &image, stale[0], stale[1], "--pause-at", point]);
        assert!(kill_at(child, lines, &format!("pausing at {point}")), "the backup never reached {point:?}");
        assert!(!repo.path().join(format!("backups/rbd/{image}/{}.json", made + 1)).exists(), "a backup killed at {point:?} looks complete");
        let next = ok(dedup(&site, repo.path(), pass, &["backup", "rbd", &image, stale[0], stale[1]]));
        made += 1;
        assert!(next.contains(&format!("backup {made} of")), "after a kill at {point:?}: {next}");
        held.push((made, contents(site.backend.as_ref(), &image, Some(&format!("dedup-{made}")))));
    }
    // Give gc something to sweep: prune the first backup, whose chunks the others changed.
    ok(dedup(&site, repo.path(), pass, &["prune", "rbd", &image, "--keep-last", "2"]));
    let (child, lines) = spawn_dedup(&site, &manifest, &["gc", stale[0], stale[1], "--pause-at", "sweep"]);
    assert!(kill_at(child, lines, "pausing at sweep"), "gc never reached its sweep");
    // A backup waits out the killed sweep's lease, then runs.
    write(20, 30 << 20, 1 << 20);
    let next = ok(dedup(&site, repo.path(), pass, &["backup", "rbd", &image, stale[0], stale[1]]));
    made += 1;
    assert!(next.contains(&format!("backup {made} of")), "{next}");
    held.push((made, contents(site.backend.as_ref(), &image, Some(&format!("dedup-{made}")))));
    let finished = ok(dedup(&site, repo.path(), pass, &["gc", stale[0], stale[1]]));
    assert!(finished.contains("1 dead runs' leases") || finished.contains("dead runs' leases"), "{finished}");
    for (n, bytes) in held.iter().skip(1) {
        let target = format!("{image}-restored-{n}");
        ok(dedup(&site, repo.path(), pass, &["restore", "rbd", &image, &target, "--backup", &n.to_string()]));
        assert!(contents(site.backend.as_ref(), &target, None) == *bytes, "backup {n} restores different bytes after the kills");
        ok(dedup(&site, repo.path(), pass, &["verify", "rbd", &image, "--deep", "--backup", &n.to_string()]));
    }
    assert!(failed(dedup(&site, repo.path(), pass, &["restore", "rbd", &image, &format!("{image}-pruned"), "--backup", "1"])).contains("no complete backup 1"));
    let leftovers: Vec<_> = walk(repo.path()).into_iter().filter(|p| p.contains(".tmp.") || p.contains("locks/")).collect();
    assert!(leftovers.is_empty(), "gc left {leftovers:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

#[test]
fn embedded_kills_lose_nothing() {
    kills_lose_nothing(Site::embedded());
}

#[test]
fn librbd_kills_lose_nothing() {
    kills_lose_nothing(Site::librbd());
}

/// Two runners backing up the same image, a third backing up another, and a garbage
/// collection, all at once on one repository: one backup of the shared image is made per
/// run that found nothing to take over (the other says another runner has it), gc sweeps
/// only when the backups are done, and afterwards every complete backup restores and
/// verifies deep.
fn runners_and_gc_at_once(site: Site) {
    let prefix = unique_prefix("ddconc");
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let repo = tempfile::tempdir().unwrap();
    let pass = "correct horse battery staple";
    ok(dedup(&site, repo.path(), pass, &["init", "--chunk-size", "65536"]));
    for (name, seed) in [(&a, 1), (&b, 2)] {
        site.backend.create("rbd", name, 32 << 20, &CreateOptions::default()).unwrap();
        site.backend.open("rbd", name, None, false).unwrap().write(0, &pattern(24 << 20, seed)).unwrap();
    }
    ok(dedup(&site, repo.path(), pass, &["backup", "rbd", &a]));
    site.backend.open("rbd", &a, None, false).unwrap().write(0, &pattern(16 << 20, 3)).unwrap();
    ok(dedup(&site, repo.path(), pass, &["backup", "rbd", &a]));
    ok(dedup(&site, repo.path(), pass, &["prune", "rbd", &a, "--keep-last", "1"]));
    site.backend.open("rbd", &a, None, false).unwrap().write(8 << 20, &pattern(8 << 20, 4)).unwrap();
    let a_now = contents(site.backend.as_ref(), &a, None);
    let b_now = contents(site.backend.as_ref(), &b, None);

    let runs: Vec<Vec<&str>> = vec![vec!["backup", "rbd", &a], vec!["backup", "rbd", &a], vec!["backup", "rbd", &b], vec!["gc"]];
    let outcomes: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = runs.iter().map(|args| scope.spawn(|| ok(dedup(&site, repo.path(), pass, args)))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let made_a = outcomes[..2].iter().filter(|o| o.contains(&format!("of rbd/{a}:"))).count();
    let busy_a = outcomes[..2].iter().filter(|o| o.contains("another runner")).count();
    assert!(made_a >= 1 && made_a + busy_a == 2, "{outcomes:#?}");
    assert!(outcomes[2].contains(&format!("backup 1 of rbd/{b}")), "{}", outcomes[2]);
    assert!(outcomes[3].contains("gc: "), "{}", outcomes[3]);

    let (_, report) = dedup(&site, repo.path(), pass, &["verify", "rbd", &a, "--all", "--deep"]);
    assert_eq!(report["status"], "ok", "{report}");
    for (image, expected) in [(&a, &a_now), (&b, &b_now)] {
        let target = format!("{image}-restored");
        ok(dedup(&site, repo.path(), pass, &["restore", "rbd", image, &target]));
        assert!(contents(site.backend.as_ref(), &target, None) == *expected, "{image} restores different bytes");
    }
    // A second gc, with nothing running, keeps what the backups refer to.
    ok(dedup(&site, repo.path(), pass, &["gc"]));
    ok(dedup(&site, repo.path(), pass, &["verify", "rbd", &a, "--all", "--deep"]));
    ok(dedup(&site, repo.path(), pass, &["verify", "rbd", &b, "--all", "--deep"]));
}

#[test]
fn embedded_runners_and_gc_at_once() {
    runners_and_gc_at_once(Site::embedded());
}

#[test]
fn librbd_runners_and_gc_at_once() {
    runners_and_gc_at_once(Site::librbd());
}

/// Retention on calendar boundaries, with a dry run that changes nothing; gc then frees the
/// chunks only the removed backups had; the verify modes (sampled, compared with the
/// snapshot, skipped when verified recently).
#[test]
fn prune_gc_and_verify_modes() {
    let site = Site::embedded();
    let image = format!("{}-img", unique_prefix("ddprune"));
    let repo = tempfile::tempdir().unwrap();
    let pass = "correct horse battery staple";
    ok(dedup(&site, repo.path(), pass, &["init", "--chunk-size", "65536"]));
    site.backend.create("rbd", &image, 16 << 20, &CreateOptions::default()).unwrap();
    let mut held = Vec::new();
    for n in 1..=4u64 {
        site.backend.open("rbd", &image, None, false).unwrap().write(0, &pattern(8 << 20, n)).unwrap();
        ok(dedup(&site, repo.path(), pass, &["backup", "rbd", &image]));
        held.push(contents(site.backend.as_ref(), &image, None));
    }
    let before = chunk_bytes(repo.path());
    let plan = ok(dedup(&site, repo.path(), pass, &["prune", "rbd", &image, "--keep-last", "1", "--keep-daily", "1", "--dry-run"]));
    assert!(plan.contains("keep backup 4") && plan.contains("last, daily ") && plan.contains("would remove backup 3") && plan.contains("would remove backup 1"), "{plan}");
    assert!(repo.path().join(format!("backups/rbd/{image}/1.json")).exists(), "a dry run removed a backup");
    let error = failed(dedup(&site, repo.path(), pass, &["prune", "rbd", &image]));
    assert!(error.contains("keeps nothing is refused"), "{error}");
    let pruned = ok(dedup(&site, repo.path(), pass, &["prune", "rbd", &image, "--keep-last", "2"]));
    assert!(pruned.contains("2 kept, 2 removed"), "{pruned}");
    let dry = ok(dedup(&site, repo.path(), pass, &["gc", "--dry-run"]));
    assert!(dry.contains("would remove 256 chunks"), "{dry}");
    assert_eq!(chunk_bytes(repo.path()), before, "a dry run removed chunks");
    let swept = ok(dedup(&site, repo.path(), pass, &["gc"]));
    assert!(swept.contains("removed 256 chunks") && swept.contains("2 other files"), "{swept}");
    assert!(chunk_bytes(repo.path()) * 2 < before + (1 << 20), "gc freed too little: {} of {before}", chunk_bytes(repo.path()));
    for n in [3u64, 4] {
        let target = format!("{image}-restored-{n}");
        ok(dedup(&site, repo.path(), pass, &["restore", "rbd", &image, &target, "--backup", &n.to_string()]));
        assert!(contents(site.backend.as_ref(), &target, None) == held[n as usize - 1]);
    }
    let sampled = ok(dedup(&site, repo.path(), pass, &["verify", "rbd", &image, "--all", "--sample", "50"]));
    assert!(sampled.contains("backups [3, 4] verified") && sampled.contains("50% sampled"), "{sampled}");
    let compared = ok(dedup(&site, repo.path(), pass, &["verify", "rbd", &image, "--deep", "--compare", "--skip-verified-within", "1"]));
    assert!(compared.contains("and the same as the snapshot"), "{compared}");
    let skipped = ok(dedup(&site, repo.path(), pass, &["verify", "rbd", &image, "--all", "--deep", "--skip-verified-within", "1"]));
    assert!(skipped.contains("skipped backups [4]") && skipped.contains("backups [3] verified"), "{skipped}");
    // Damage found by compare: the image's snapshot no longer matches a forged... (the
    // index is MAC'd, so a mismatch means the backup missed a change): not producible from
    // outside; a truncated index is named instead.
    let index = repo.path().join(format!("indexes/rbd/{image}/4.idx"));
    let bytes = std::fs::read(&index).unwrap();
    std::fs::write(&index, &bytes[..bytes.len() / 2]).unwrap();
    let error = failed(dedup(&site, repo.path(), pass, &["restore", "rbd", &image, &format!("{image}-truncated")]));
    assert!(error.contains("not the index its manifest names"), "{error}");
    let error = failed(dedup(&site, repo.path(), pass, &["gc"]));
    assert!(error.contains("nothing was deleted"), "{error}");
}
