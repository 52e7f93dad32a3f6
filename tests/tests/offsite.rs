//! Offsite backups on Ceph's S3 gateway, on both backends, through the `rbd-wasm` binary as
//! an operator runs them (a manifest granting the gateway's bucket and handing the keys as
//! secrets): a chain of backups pushed to the bucket and pulled into an empty directory
//! restores byte-identical through the restore job; on Ceph the same chain, fetched from
//! the bucket with curl, restores with `rbd import-diff`; a push killed in the middle of a
//! multipart upload leaves no backup that looks complete, and the next push completes it.

use std::path::{Path, PathBuf};
use std::process::Command;

use rbd_wasm::backend::{Backend, CreateOptions};
use rbd_wasm_tests::{ceph_conf, guest, run_host_measured, run_with_output, unique_prefix, S3Gateway, Site};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

fn contents(backend: &dyn Backend, pool: &str, name: &str, snap: Option<&str>) -> Vec<u8> {
    let image = backend.open(pool, name, snap, true).unwrap_or_else(|e| panic!("open {pool}/{name}@{snap:?}: {e}"));
    let size = image.size().unwrap();
    image.read(0, size).unwrap()
}

/// Run the offsite job through `rbd-wasm` with a manifest that grants the gateway's bucket
/// (and nothing else), hands the keys as secrets, and maps `dir` as `/out`.
fn offsite(site: &Site, gateway: &S3Gateway, dir: &Path, args: &[&str], limits: &str) -> (String, serde_json::Value) {
    offsite_as(site, gateway, &gateway.secret, &gateway.bucket, dir, args, limits)
}

/// As [`offsite`], with `secret` as the secret key and only `granted` (a bucket) granted.
fn offsite_as(site: &Site, gateway: &S3Gateway, secret: &str, granted: &str, dir: &Path, args: &[&str], limits: &str) -> (String, serde_json::Value) {
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(conf.path().join("access"), &gateway.access).unwrap();
    std::fs::write(conf.path().join("secret"), format!("{secret}\n")).unwrap();
    let manifest = conf.path().join("offsite.toml");
    std::fs::write(
        &manifest,
        format!(
            "schema = 1\n[job]\nid = \"offsite\"\noutput_dir = \"{}\"\n[[outbound]]\nurl = \"{}/{}/\"\n\
             [secrets]\ns3-access-key = \"access\"\ns3-secret-key = \"secret\"\n[limits]\n{limits}\n",
            dir.display(),
            gateway.endpoint,
            granted
        ),
    )
    .unwrap();
    let component = guest("offsite");
    let mut all: Vec<&str> = vec!["run", "--json", "--progress", "none", "--manifest", manifest.to_str().unwrap()];
    all.extend(site.store_args.iter().map(String::as_str));
    all.push(component.to_str().unwrap());
    all.push("--");
    all.extend(args);
    let out = run_host_measured(&all, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no report ({e}): {stderr}"));
    assert!(!stderr.contains(&gateway.secret) && !stderr.contains(secret), "the secret key was printed");
    (stderr, report)
}

fn ok(run: (String, serde_json::Value)) -> String {
    assert_eq!(run.1["status"], "ok", "{}\n{}", run.1, run.0);
    run.0
}

/// The keys under `prefix` in the bucket (ListObjectsV2 through curl).
fn keys(gateway: &S3Gateway, prefix: &str) -> Vec<String> {
    let (code, body) = gateway.request("GET", &format!("/{}?list-type=2&prefix={prefix}", gateway.bucket), None, &[], true);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let text = String::from_utf8(body).unwrap();
    text.split("<Key>").skip(1).filter_map(|k| k.split("</Key>").next()).map(str::to_owned).collect()
}

/// Back up `rbd/src` `count` times, changing it before each, into `local`.
fn chain(site: &Site, src: &str, local: &Path, count: usize) {
    for step in 0..count {
        let img = site.backend.open("rbd", src, None, false).unwrap();
        match step {
            0 => {
                img.write(0, &pattern(6 << 20, 1)).unwrap();
            }
            1 => {
                img.write(3_000_001, &pattern(123_457, 2)).unwrap();
                img.discard(5 << 20, 1 << 20).unwrap();
            }
            _ => {
                img.resize(14 << 20).unwrap();
                img.write(13 << 20, &pattern(65536, step as u8)).unwrap();
            }
        }
        drop(img);
        run_with_output("backup", &["rbd", src], site.backend.clone(), local).assert_ok();
    }
}

fn a_chain_pushed_and_pulled_restores_byte_identical(site: Site) -> (Site, String, PathBuf, String) {
    let gateway = S3Gateway::from_env();
    let src = format!("{}-src", unique_prefix("off"));
    site.backend.create("rbd", &src, 12 << 20, &CreateOptions::default()).unwrap();
    let local = tempfile::tempdir().unwrap();
    chain(&site, &src, local.path(), 3);
    let prefix = unique_prefix("offsite");

    let pushed = ok(offsite(&site, &gateway, local.path(), &["push", &gateway.endpoint, &gateway.bucket, &prefix], ""));
    assert!(pushed.contains("3 backups pushed"), "{pushed}");
    let mut stored = keys(&gateway, &prefix);
    stored.sort();
    let want: Vec<String> = (1..=3).flat_map(|n| ["json", "rbddiff", "sums"].map(|ext| format!("{prefix}/rbd/{src}/{n}.{ext}"))).collect();
    assert_eq!(stored, want, "the bucket holds the repository's layout");
    let again = ok(offsite(&site, &gateway, local.path(), &["push", &gateway.endpoint, &gateway.bucket, &prefix], ""));
    assert!(again.contains("0 backups pushed, 3 already in the bucket"), "{again}");

    // Pulled into an empty directory, the chain restores byte-identical with the restore job.
    let fetched = tempfile::tempdir().unwrap();
    let pulled = ok(offsite(&site, &gateway, fetched.path(), &["pull", &gateway.endpoint, &gateway.bucket, &prefix, "rbd", &src], ""));
    assert!(pulled.contains("3 backups pulled"), "{pulled}");
    for n in 1..=3 {
        let restored = format!("{src}-from-s3-{n}");
        let job = run_with_output("restore", &["rbd", &src, &restored, "--backup", &n.to_string()], site.backend.clone(), fetched.path());
        job.assert_ok();
        assert!(job.stdout.contains("verified"), "{}", job.stdout);
        let snap = format!("backup-{n}");
        assert!(
            contents(site.backend.as_ref(), "rbd", &restored, None) == contents(site.backend.as_ref(), "rbd", &src, Some(&snap)),
            "backup {n} from the bucket restores different bytes"
        );
    }
    (site, src, fetched.keep(), prefix)
}

#[test]
fn embedded_a_chain_pushed_and_pulled_restores_byte_identical() {
    a_chain_pushed_and_pulled_restores_byte_identical(Site::embedded());
}

#[test]
fn librbd_a_chain_pushed_and_pulled_restores_byte_identical() {
    let (site, src, fetched, prefix) = a_chain_pushed_and_pulled_restores_byte_identical(Site::librbd());
    std::fs::remove_dir_all(fetched).unwrap();
    // The chain as stored in the bucket, fetched with curl, restores with Ceph's own tool.
    let gateway = S3Gateway::from_env();
    let restored = format!("{src}-import-diff");
    let rbd = |args: &[&str]| {
        let out = Command::new("rbd").arg("-c").arg(ceph_conf()).args(args).output().expect("run rbd");
        assert!(out.status.success(), "rbd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    rbd(&["create", "--size", "1", &format!("rbd/{restored}")]);
    let dir = tempfile::tempdir().unwrap();
    for n in 1..=3 {
        let (code, stream) = gateway.request("GET", &format!("/{}/{prefix}/rbd/{src}/{n}.rbddiff", gateway.bucket), None, &[], true);
        assert_eq!(code, 200);
        let file = dir.path().join(format!("{n}.rbddiff"));
        std::fs::write(&file, stream).unwrap();
        rbd(&["import-diff", "--no-progress", file.to_str().unwrap(), &format!("rbd/{restored}")]);
        let snap = format!("backup-{n}");
        assert!(
            contents(site.backend.as_ref(), "rbd", &restored, Some(&snap)) == contents(site.backend.as_ref(), "rbd", &src, Some(&snap)),
            "backup {n}: rbd import-diff of the bucket's stream differs"
        );
    }
}

/// A push killed (its deadline) in the middle of a multipart upload: the bucket has the
/// older backups and no manifest of the one being sent; the next push sends it, and a pull
/// of the whole chain restores it.
fn a_killed_push_never_looks_complete(site: Site) {
    let gateway = S3Gateway::from_env();
    let src = format!("{}-src", unique_prefix("offk"));
    site.backend.create("rbd", &src, 12 << 20, &CreateOptions::default()).unwrap();
    let local = tempfile::tempdir().unwrap();
    chain(&site, &src, local.path(), 1);
    let prefix = unique_prefix("offsite-killed");
    let push = ["push", gateway.endpoint.as_str(), gateway.bucket.as_str(), prefix.as_str()];
    ok(offsite(&site, &gateway, local.path(), &push, ""));
    // Backup 2 changes 80 MiB of pseudo-random data: a stream of several 32 MiB parts.
    let img = site.backend.open("rbd", &src, None, false).unwrap();
    img.resize(96 << 20).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..80 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    img.write(16 << 20, &noise).unwrap();
    drop(img);
    run_with_output("backup", &["rbd", &src], site.backend.clone(), local.path()).assert_ok();

    let (stderr, report) = offsite(&site, &gateway, local.path(), &push, "bandwidth_mib_per_sec = 16\ndeadline_secs = 3");
    assert_eq!(report["status"], "deadline", "{report}\n{stderr}");
    let sent = report["usage"]["network_sent_bytes"].as_u64().unwrap();
    assert!(sent > 8 << 20 && sent < 80 << 20, "killed in the middle: {} sent", report["usage"]);
    let stored = keys(&gateway, &prefix);
    assert!(!stored.iter().any(|k| k.ends_with("/2.json") || k.ends_with("/2.rbddiff")), "a killed push left {stored:?}");

    let (code, uploads) = gateway.request("GET", &format!("/{}?prefix={prefix}%2F&uploads=", gateway.bucket), None, &[], true);
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&uploads).contains("<UploadId>"), "the killed push's upload is pending");
    let mut again = push.to_vec();
    again.extend(["--abort-uploads-after", "0"]);
    let pushed = ok(offsite(&site, &gateway, local.path(), &again, ""));
    assert!(pushed.contains("1 backups pushed, 1 already"), "{pushed}");
    assert!(pushed.contains("aborted 1 uploads an earlier push left unfinished"), "{pushed}");
    let (_, uploads) = gateway.request("GET", &format!("/{}?prefix={prefix}%2F&uploads=", gateway.bucket), None, &[], true);
    assert!(!String::from_utf8_lossy(&uploads).contains("<UploadId>"), "uploads left: {}", String::from_utf8_lossy(&uploads));
    let fetched = tempfile::tempdir().unwrap();
    ok(offsite(&site, &gateway, fetched.path(), &["pull", &gateway.endpoint, &gateway.bucket, &prefix, "rbd", &src], ""));
    let restored = format!("{src}-restored");
    run_with_output("restore", &["rbd", &src, &restored], site.backend.clone(), fetched.path()).assert_ok();
    assert!(contents(site.backend.as_ref(), "rbd", &restored, None) == contents(site.backend.as_ref(), "rbd", &src, Some("backup-2")));
}

#[test]
fn embedded_a_killed_push_never_looks_complete() {
    a_killed_push_never_looks_complete(Site::embedded());
}

#[test]
fn librbd_a_killed_push_never_looks_complete() {
    a_killed_push_never_looks_complete(Site::librbd());
}

/// An operator's mistakes get clear errors, and change nothing in the bucket: a wrong
/// secret key (the gateway's own refusal, named), a bucket the manifest does not grant (the
/// host's denial, before any connection), a repository with no backups (nothing to do).
#[test]
fn wrong_keys_and_ungranted_buckets_are_named() {
    let site = Site::embedded();
    let gateway = S3Gateway::from_env();
    let src = format!("{}-src", unique_prefix("offe"));
    site.backend.create("rbd", &src, 12 << 20, &CreateOptions::default()).unwrap();
    let local = tempfile::tempdir().unwrap();
    chain(&site, &src, local.path(), 1);
    let prefix = unique_prefix("offsite-errors");
    let push = ["push", gateway.endpoint.as_str(), gateway.bucket.as_str(), prefix.as_str()];

    let (stderr, report) = offsite_as(&site, &gateway, "not-the-secret-key-at-all", &gateway.bucket, local.path(), &push, "");
    assert_eq!(report["status"], "failed", "{stderr}");
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("S3 answered 403 SignatureDoesNotMatch"), "{error}");

    let (stderr, report) = offsite_as(&site, &gateway, &gateway.secret, "another-bucket", local.path(), &push, "");
    assert_eq!(report["status"], "failed", "{stderr}");
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("HttpRequestDenied"), "{error}");
    assert!(keys(&gateway, &prefix).is_empty(), "nothing reached the bucket");

    let empty = tempfile::tempdir().unwrap();
    let pushed = ok(offsite(&site, &gateway, empty.path(), &push, ""));
    assert!(!pushed.contains("pushed backup"), "{pushed}");
}
