//! The `rbd-wasm` command line, as an operator uses it.

use std::process::{Command, Output};

use rbd_wasm_tests::{guest, host_binary};

fn rbd_wasm(store: &std::path::Path, args: &[&str]) -> Output {
    Command::new(host_binary())
        .args(args)
        .env("RBD_WASM_STORE", store)
        .env_remove("CEPH_CONF")
        .env("RBD_WASM_CACHE", rbd_wasm_tests::test_cache_dir())
        .output()
        .expect("run rbd-wasm")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn run_hello_then_inspect_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let hello = guest("hello");
    let out = rbd_wasm(dir.path(), &["run", hello.to_str().unwrap()]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("[hello] created rbd/myimage"), "stdout is tagged: {}", text(&out.stdout));

    let ls = rbd_wasm(dir.path(), &["image", "ls"]);
    assert_eq!(text(&ls.stdout), "myimage\n");

    let info = rbd_wasm(dir.path(), &["image", "info", "myimage"]);
    assert!(info.status.success(), "{}", text(&info.stderr));
    assert!(text(&info.stdout).contains("size 4 GiB (4294967296 bytes)"), "{}", text(&info.stdout));

    let read = rbd_wasm(dir.path(), &["image", "read", "myimage", "--length", "601"]);
    assert!(read.status.success(), "{}", text(&read.stderr));
    assert_eq!(&read.stdout[..600], "foo".repeat(200).as_bytes());
    assert_eq!(read.stdout[600], 0);

    let snap = dir.path().join("export.img");
    let export = rbd_wasm(dir.path(), &["image", "export", "myimage", snap.to_str().unwrap()]);
    assert!(export.status.success(), "{}", text(&export.stderr));
    assert_eq!(std::fs::metadata(&snap).unwrap().len(), 4 << 30);
}

#[test]
fn run_passes_arguments_after_the_double_dash() {
    let dir = tempfile::tempdir().unwrap();
    let out = rbd_wasm(dir.path(), &["pool", "create", "backups"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hello = guest("hello");
    let out = rbd_wasm(dir.path(), &["run", "--pool", "backups", hello.to_str().unwrap(), "--", "backups", "img1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ls = rbd_wasm(dir.path(), &["image", "ls", "--pool", "backups"]);
    assert_eq!(text(&ls.stdout), "img1\n");
}

#[test]
fn run_of_a_missing_file_says_so_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = rbd_wasm(dir.path(), &["run", "/nonexistent/job.wasm"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read job `/nonexistent/job.wasm`"), "{}", text(&out.stderr));
}

#[test]
fn run_of_another_world_says_so_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let plain = guest("plain-command");
    let out = rbd_wasm(dir.path(), &["run", plain.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("component of another world"), "{}", text(&out.stderr));
}

#[test]
fn a_failing_job_exits_1_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let conformance = guest("conformance");
    let out = rbd_wasm(dir.path(), &["run", "--pool", "rbd", conformance.to_str().unwrap(), "--", "job_error_is_reported"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("this job fails on purpose"), "{}", text(&out.stderr));
}

#[test]
fn a_trapping_job_exits_3_with_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let conformance = guest("conformance");
    let out = rbd_wasm(dir.path(), &["run", conformance.to_str().unwrap(), "--", "job_panic_is_a_trap"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("wasm backtrace"), "{stderr}");
    assert!(stderr.contains("[conformance] "), "guest stderr is tagged: {stderr}");
}

#[test]
fn info_of_a_missing_image_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = rbd_wasm(dir.path(), &["image", "info", "nothing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not found"), "{}", text(&out.stderr));
}

/// A manifest names the component (relative to itself), its arguments and its grants.
#[test]
fn run_with_a_manifest_enforces_its_grants() {
    let dir = tempfile::tempdir().unwrap();
    let hello = guest("hello");
    std::fs::copy(&hello, dir.path().join("hello.wasm")).unwrap();
    let write_manifest = |name: &str, operations: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "schema = 1\n[job]\ncomponent = \"hello.wasm\"\nargs = [\"rbd\", \"vm-1\"]\nid = \"nightly\"\n\
                 [[grants]]\npool = \"rbd\"\nimages = \"vm-*\"\noperations = {operations}\n"
            ),
        )
        .unwrap();
        path
    };
    let read_only = write_manifest("ro.toml", "[\"read\"]");
    let out = rbd_wasm(dir.path(), &["run", "--manifest", read_only.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("permission-denied"), "{}", text(&out.stderr));

    let writer = write_manifest("rw.toml", "[\"create\", \"read\", \"write\"]");
    let out = rbd_wasm(dir.path(), &["run", "--manifest", writer.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("[nightly] created rbd/vm-1"), "{}", text(&out.stdout));

    // The command line overrides the manifest's arguments, and the grant still holds.
    let out = rbd_wasm(dir.path(), &["run", "--manifest", writer.to_str().unwrap(), "--", "rbd", "db-1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not-found"), "an image outside the grant is invisible: {}", text(&out.stderr));
}

#[test]
fn a_manifest_with_an_unknown_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.toml");
    std::fs::write(&path, "schema = 1\n[job]\ncomponent = \"x.wasm\"\n[limits]\nmemory_mb = 5\n").unwrap();
    let out = rbd_wasm(dir.path(), &["run", "--manifest", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown field `memory_mb`"), "{}", text(&out.stderr));
}

/// `run --json`: standard output is one JSON report (the job's lines go to standard error),
/// with the outcome, the RBD traffic and each progress label's last report; `--progress
/// lines` shows progress as plain lines on standard error.
#[test]
fn run_json_reports_the_outcome_usage_and_progress() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    assert!(rbd_wasm(dir.path(), &["run", guest("hello").to_str().unwrap()]).status.success());
    let backup = guest("backup");
    let run = rbd_wasm(dir.path(), &["run", "--json", "--output-dir", out_dir, backup.to_str().unwrap(), "--", "rbd", "myimage"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).expect("stdout is one JSON report");
    assert_eq!(report["status"], "ok");
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["job_id"], "backup");
    assert!(report["usage"]["read_bytes"].as_u64().unwrap() >= 600, "{report}");
    assert!(report["usage"]["operations"].as_u64().unwrap() > 0, "{report}");
    let progress = &report["progress"][0];
    assert_eq!(progress["label"], "backup myimage");
    assert_eq!(progress["done"], 4u64 << 30, "the last report says done: {report}");
    assert_eq!(progress["total"], 4u64 << 30);
    assert!(text(&run.stderr).contains("[backup] rbd/myimage: full backup of backup-1"), "{}", text(&run.stderr));

    let verify = guest("verify");
    let lines = rbd_wasm(dir.path(), &["run", "--progress", "lines", "--output-dir", out_dir, verify.to_str().unwrap(), "--", "rbd", "myimage"]);
    assert!(lines.status.success(), "{}", text(&lines.stderr));
    assert!(text(&lines.stderr).contains("[verify] progress: verify backup-1 4294967296/4294967296 (100%)"), "{}", text(&lines.stderr));
    assert!(text(&lines.stdout).contains("[verify] rbd/myimage@backup-1 against 1.rbddiff: ok"), "{}", text(&lines.stdout));

    // A failed job: the report says how, and the exit status agrees.
    let failed = rbd_wasm(dir.path(), &["run", "--json", "--output-dir", out_dir, verify.to_str().unwrap(), "--", "rbd", "nosuch"]);
    assert_eq!(failed.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&failed.stdout).expect("a report even on failure");
    assert_eq!(report["status"], "failed");
    assert_eq!(report["exit_code"], 1);
    assert!(report["error"].as_str().unwrap().contains("no complete backup"), "{report}");
    // A job that cannot even load: status `unreadable`, exit status 2.
    let missing = rbd_wasm(dir.path(), &["run", "--json", "/nonexistent/job.wasm"]);
    assert_eq!(missing.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert_eq!(report["status"], "unreadable", "{report}");
}

#[test]
fn a_manifest_with_out_of_range_numbers_is_refused_with_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let hello = guest("hello");
    for (limit, want) in [
        ("cpu_secs = 1e300", "limits.cpu_secs: 1e300 is out of range"),
        ("memory_mib = 99999999", "limits.memory_mib: 99999999 is out of range (1 to 4096)"),
        ("deadline_secs = 0", "limits.deadline_secs: 0 is out of range"),
    ] {
        let manifest = dir.path().join("job.toml");
        std::fs::write(&manifest, format!("schema = 1\n[job]\n[limits]\n{limit}\n")).unwrap();
        let out = rbd_wasm(dir.path(), &["run", "--manifest", manifest.to_str().unwrap(), hello.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{limit}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(want), "{limit}: {}", text(&out.stderr));
    }
    let out = rbd_wasm(dir.path(), &["run", "--memory-mib", "0", hello.to_str().unwrap()]);
    assert!(text(&out.stderr).contains("--memory-mib: 0 is out of range"), "{}", text(&out.stderr));
}

#[test]
fn an_output_directory_that_reaches_the_store_the_cache_or_the_audit_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let hello = guest("hello");
    let audit = dir.path().join("logs/audit.log");
    std::fs::create_dir_all(audit.parent().unwrap()).unwrap();
    let cache = rbd_wasm_tests::test_cache_dir();
    for (out_dir, what) in [
        (store.join("rbd"), "the embedded store"),
        (dir.path().to_owned(), "the embedded store"),
        (cache.clone(), "the compiled-component cache"),
        (audit.parent().unwrap().to_owned(), "the audit log"),
    ] {
        let out = rbd_wasm(
            &store,
            &["run", "--audit-log", audit.to_str().unwrap(), "--output-dir", out_dir.to_str().unwrap(), hello.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(2), "{}: {}", out_dir.display(), text(&out.stderr));
        assert!(text(&out.stderr).contains(&format!("overlaps {what}")), "{}: {}", out_dir.display(), text(&out.stderr));
    }
    let own = dir.path().join("backups");
    std::fs::create_dir(&own).unwrap();
    let out = rbd_wasm(&store, &["run", "--output-dir", own.to_str().unwrap(), hello.to_str().unwrap()]);
    assert!(out.status.success(), "a directory of its own is fine: {}", text(&out.stderr));
}

#[test]
fn names_from_the_store_are_printed_made_safe_for_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let hello = guest("hello");
    let out = rbd_wasm(dir.path(), &["run", hello.to_str().unwrap(), "--", "rbd", "evil\u{1b}]0;pwned\u{7}"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ls = rbd_wasm(dir.path(), &["image", "ls"]);
    assert_eq!(text(&ls.stdout), "evil\\x1b]0;pwned\\x07\n");
    assert!(!text(&out.stdout).contains('\u{1b}'), "job output is escaped too: {}", text(&out.stdout));
}
