//! The example jobs, and how the host reports every way a job can go wrong.

use std::time::{Duration, Instant};

use rbd_wasm::backend::Backend;
use rbd_wasm::capability::{Grant, Grants};
use rbd_wasm::runtime::{JobError, JobLimits};
use rbd_wasm_tests::{embedded_store, guest, run, run_with, runtime};

#[test]
fn hello_creates_myimage_with_foo_repeated() {
    let store = embedded_store();
    let job = run("hello", &[], store.backend.clone());
    job.assert_ok();
    assert!(job.stdout.contains("wrote 600 bytes at offset 0"), "stdout: {}", job.stdout);

    let image = store.backend.open("rbd", "myimage", None, true).expect("myimage exists");
    assert_eq!(image.size().unwrap(), 4 << 30);
    assert_eq!(image.read(0, 600).unwrap(), "foo".repeat(200).into_bytes());
    assert_eq!(image.read(600, 10).unwrap(), vec![0; 10], "nothing past the 600 bytes");
}

#[test]
fn hello_twice_fails_because_the_image_exists() {
    let store = embedded_store();
    run("hello", &[], store.backend.clone()).assert_ok();
    match run("hello", &[], store.backend.clone()).result {
        Err(JobError::Failed(message)) => assert!(message.contains("exists"), "{message}"),
        other => panic!("expected a failed job, got {other:?}"),
    }
}

#[test]
fn hello_takes_pool_and_image_arguments() {
    let store = embedded_store();
    run("hello", &["rbd2", "other"], store.backend.clone()).assert_ok();
    assert_eq!(store.backend.list("rbd2").unwrap(), vec!["other".to_string()]);
    assert!(store.backend.list("rbd").unwrap().is_empty());
}

#[test]
fn snapshots_example_reports_what_changed() {
    let store = embedded_store();
    let job = run("snapshots", &[], store.backend.clone());
    job.assert_ok();
    assert!(job.stdout.contains("changed extents from `before` to `after`"), "{}", job.stdout);
    let image = store.backend.open("rbd", "snapdemo", None, true).unwrap();
    let names: Vec<String> = image.list_snaps().unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["before", "after"]);
    // The job reported the zeroed first object and the changed one.
    assert!(job.stdout.contains("zero"), "{}", job.stdout);
    assert!(job.stdout.contains("data"), "{}", job.stdout);
}

#[test]
fn a_job_that_returns_an_error_is_a_failed_job() {
    let store = embedded_store();
    match run("conformance", &["job_error_is_reported", "t"], store.backend.clone()).result {
        Err(e @ JobError::Failed(_)) => {
            assert!(e.to_string().contains("this job fails on purpose"));
            assert_eq!(e.exit_code(), 1);
        }
        other => panic!("expected a failed job, got {other:?}"),
    }
}

#[test]
fn a_guest_panic_is_a_trap_with_the_guest_backtrace() {
    let store = embedded_store();
    let job = run("conformance", &["job_panic_is_a_trap", "t"], store.backend.clone());
    match &job.result {
        Err(e @ JobError::Trap(_)) => {
            let text = e.to_string();
            assert!(text.contains("wasm backtrace"), "no backtrace in: {text}");
            assert!(text.contains("job_panic_is_a_trap"), "backtrace does not name the guest function: {text}");
            assert_eq!(e.exit_code(), 3);
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    // The guest's own panic message went to its stderr.
    assert!(job.stderr.contains("index out of bounds"), "stderr: {}", job.stderr);
}

#[test]
fn a_missing_job_file_is_unreadable() {
    let err = runtime().load("/nonexistent/job.wasm".as_ref()).err().expect("load fails");
    assert!(matches!(err, JobError::Unreadable { .. }), "{err}");
}

#[test]
fn a_core_module_is_not_a_component() {
    let empty_module = b"\0asm\x01\0\0\0";
    let err = runtime().load_bytes("module.wasm".as_ref(), empty_module).err().expect("load fails");
    assert!(matches!(err, JobError::NotAComponent { .. }), "{err}");
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");
}

#[test]
fn bytes_that_are_not_wasm_are_not_a_component() {
    let err = runtime().load_bytes("job.txt".as_ref(), b"#!/bin/sh\necho hi\n").err().expect("load fails");
    assert!(matches!(err, JobError::NotAComponent { .. }), "{err}");
}

#[test]
fn a_truncated_component_is_not_a_component() {
    let bytes = std::fs::read(guest("hello")).unwrap();
    let err = runtime().load_bytes("cut.wasm".as_ref(), &bytes[..bytes.len() / 2]).err().expect("load fails");
    assert!(matches!(err, JobError::NotAComponent { .. }), "{err}");
}

#[test]
fn a_component_of_another_world_is_rejected() {
    let err = runtime().load(&guest("plain-command")).err().expect("load fails");
    assert!(matches!(err, JobError::WrongWorld { .. }), "{err}");
    assert!(err.to_string().contains("job-world"), "{err}");
}

#[test]
fn a_job_that_loops_forever_is_stopped_at_its_deadline() {
    let store = embedded_store();
    let limits = JobLimits { deadline: Duration::from_millis(500), ..JobLimits::default() };
    let started = Instant::now();
    let job = run_with("conformance", &["job_loops_forever"], store.backend.clone(), Grants::new(vec![Grant::full("rbd")]), limits);
    match job.result {
        Err(e @ JobError::Deadline(_)) => assert_eq!(e.exit_code(), 4),
        other => panic!("expected the deadline, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10), "the loop was not stopped promptly: {:?}", started.elapsed());
}

#[test]
fn a_job_that_allocates_without_bound_traps_at_its_memory_limit() {
    let store = embedded_store();
    let limits = JobLimits { memory_bytes: 64 << 20, ..JobLimits::default() };
    let job = run_with("conformance", &["job_allocates_without_bound"], store.backend.clone(), Grants::new(vec![Grant::full("rbd")]), limits);
    assert!(matches!(job.result, Err(JobError::Trap(_))), "expected a trap, got {:?}", job.result);
    // The host is fine: the next job runs.
    run("hello", &[], store.backend.clone()).assert_ok();
}

#[test]
fn the_audit_log_records_mutations_and_denials() {
    use rbd_wasm::audit::AuditSink;
    use rbd_wasm::backend::CreateOptions;
    use rbd_wasm::capability::{ImagePattern, Operations};
    use rbd_wasm_tests::run_audited;
    use std::sync::{Arc, Mutex};

    let store = embedded_store();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let full = Grants::new(vec![Grant::full("rbd"), Grant::full("rbd2")]);
    run_audited("hello", &[], store.backend.clone(), full, JobLimits::default(), AuditSink::Capture(lines.clone())).assert_ok();
    let records: Vec<serde_json::Value> =
        lines.lock().unwrap().iter().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let summary: Vec<(String, String, String)> = records
        .iter()
        .map(|r| (r["method"].as_str().unwrap().into(), r["image"].as_str().unwrap_or("").into(), r["result"].as_str().unwrap().into()))
        .collect();
    assert_eq!(summary, [("create".into(), "myimage".into(), "ok".into()), ("write".into(), "myimage".into(), "ok".into())]);
    assert!(records.iter().all(|r| r["job"] == "hello" && r["pool"] == "rbd" && r["grant"] == "rbd/*"), "{records:?}");

    // Under a read-only grant every attempt is denied, audited, and changes nothing.
    lines.lock().unwrap().clear();
    store.backend.create("rbd", "t-ro", 1 << 20, &CreateOptions::default()).unwrap();
    let read_only = Grants::new(vec![
        Grant { pool: "rbd".into(), images: ImagePattern::any(), operations: Operations::read_only() },
        Grant { pool: "rbd2".into(), images: ImagePattern::any(), operations: Operations::read_only() },
    ]);
    let case = "operations_outside_the_grant_are_permission_denied";
    run_audited("conformance", &[case, "t"], store.backend.clone(), read_only, JobLimits::default(), AuditSink::Capture(lines.clone()))
        .assert_ok();
    let denied: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["result"] == "permission-denied")
        .map(|r| r["method"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        denied,
        ["create", "remove", "rename", "write", "resize", "create-snap", "lock-exclusive", "copy"],
        "every denied call is audited"
    );
}

fn full_grants() -> Grants {
    Grants::new(vec![Grant::full("rbd"), Grant::full("rbd2")])
}

#[test]
fn a_job_that_spins_is_stopped_by_its_cpu_budget_long_before_its_deadline() {
    let store = embedded_store();
    let limits = JobLimits { cpu: Some(Duration::from_millis(300)), deadline: Duration::from_secs(600), ..JobLimits::default() };
    let started = Instant::now();
    let job = run_with("conformance", &["job_loops_forever"], store.backend.clone(), full_grants(), limits);
    match job.result {
        Err(e @ JobError::CpuLimit(_)) => assert_eq!(e.exit_code(), 4),
        other => panic!("expected the CPU limit, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
}

#[test]
fn a_job_cannot_hold_more_handles_than_its_quota() {
    let store = embedded_store();
    let mut limits = JobLimits::default();
    limits.quotas.max_handles = Some(10);
    let job = run_with("conformance", &["open_handles_until_refused", "t"], store.backend.clone(), full_grants(), limits);
    job.assert_ok();
    // Pools rbd and rbd2 hold 2 of the 10 slots.
    assert!(job.stdout.contains("images open when refused: 8"), "{}", job.stdout);
}

#[test]
fn a_job_cannot_read_more_than_its_byte_quota() {
    let store = embedded_store();
    let mut limits = JobLimits::default();
    limits.quotas.read_bytes = Some(200_000);
    let job = run_with("conformance", &["read_until_refused", "t"], store.backend.clone(), full_grants(), limits);
    job.assert_ok();
    assert!(job.stdout.contains("bytes read when refused: 196608"), "{}", job.stdout);
}

#[test]
fn a_cancelled_job_stops_and_leaves_no_lock() {
    use rbd_wasm::output::OutputSink;
    use rbd_wasm::runtime::JobConfig;
    use rbd_wasm_tests::{component, tokio};
    use std::sync::Arc;

    let store = embedded_store();
    let cancel = Arc::new(::tokio::sync::Notify::new());
    let stdout = Arc::new(std::sync::Mutex::new(Vec::new()));
    let job = JobConfig {
        job_id: "spinner".into(),
        args: vec!["lock_then_loop_forever".into(), "t".into()],
        backend: store.backend.clone(),
        grants: full_grants(),
        limits: JobLimits::default(),
        output_dir: None,
        output_read_only: false,
        stdout: OutputSink::Capture(stdout.clone()),
        stderr: OutputSink::Capture(Default::default()),
        progress: None,
        audit: Default::default(),
        cancel: Some(cancel.clone()),
        usage: None,
        outbound: Default::default(),
        secrets: Default::default(),
    };
    let conformance = component("conformance");
    let started = Instant::now();
    let result = tokio().block_on(async {
        let canceller = ::tokio::spawn(async move {
            ::tokio::time::sleep(Duration::from_millis(500)).await;
            cancel.notify_one();
        });
        let result = runtime().run(&conformance, job).await;
        canceller.await.unwrap();
        result
    });
    assert!(matches!(result, Err(JobError::Cancelled)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(String::from_utf8_lossy(&stdout.lock().unwrap()), "locked\n", "the job held the lock when cancelled");
    let image = store.backend.open("rbd", "t-a", None, true).unwrap();
    assert_eq!(image.list_lockers().unwrap().lockers, vec![], "the cancelled job's lock was released");
}
