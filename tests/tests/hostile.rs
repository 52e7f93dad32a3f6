//! The hostile-guest suite: one attack per test, on both backends. Each asserts a clear
//! error or a clean termination, that the host survives, that a second job running at the
//! same time is unaffected, that nothing outside the grant changed, and that no lock or
//! handle leaked.

use std::sync::Arc;
use std::time::Duration;

use rbd_wasm::backend::{Backend, CreateOptions};
use rbd_wasm::capability::{Grant, Grants, ImagePattern, Operation, Operations};
use rbd_wasm::runtime::{JobError, JobLimits};
use rbd_wasm_tests::rogue_http::RogueHttp;
use rbd_wasm_tests::{
    ceph_conf, embedded_store, guest, host_binary, librbd_backend, run, run_host_measured, run_with, unique_prefix, JobRun, Measured,
};
use std::process::{Command, Stdio};

/// How an attack must end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    /// The guest saw every attempt refused and returned Ok.
    Refused,
    /// The host trapped the guest.
    Trap,
    /// The CPU budget stopped it.
    CpuLimit,
    /// Either refused within its limits, or stopped by the CPU budget first (an attack
    /// whose cost is the host's time, such as printing gigabytes or making a flood of
    /// calls: the budget counts each epoch tick a call spans, so on a loaded machine it may
    /// run out before the operation quota does).
    RefusedOrCpuLimit,
    /// The job returned an error (which the host shows bounded and escaped).
    Failed,
    /// Its deadline stopped it.
    Deadline,
}

impl Ending {
    /// The `--json` report's status for this ending.
    fn statuses(self) -> &'static [&'static str] {
        match self {
            Ending::Refused => &["ok"],
            Ending::Trap => &["trap"],
            Ending::CpuLimit => &["cpu-limit"],
            Ending::RefusedOrCpuLimit => &["ok", "cpu-limit"],
            Ending::Failed => &["failed"],
            Ending::Deadline => &["deadline"],
        }
    }
}

const OUTPUT_LIMIT: u64 = 1 << 20;

fn head(text: &str) -> &str {
    &text[..text.char_indices().nth(2000).map_or(text.len(), |(i, _)| i)]
}

fn limits() -> JobLimits {
    let mut l = JobLimits {
        memory_bytes: 256 << 20,
        deadline: Duration::from_secs(60),
        cpu: Some(Duration::from_secs(2)),
        output_bytes: OUTPUT_LIMIT,
        ..JobLimits::default()
    };
    l.quotas.max_handles = Some(64);
    l.quotas.operations = Some(20_000);
    l
}

/// Everything outside the grant that an attack might touch.
fn outside(backend: &dyn Backend, prefix: &str) -> (Vec<String>, Vec<u8>, Vec<String>) {
    let mine = format!("{prefix}-");
    let names: Vec<String> = backend
        .list("rbd")
        .unwrap()
        .into_iter()
        .filter(|n| (n.starts_with(&mine) && !n.starts_with(&format!("{prefix}-job-"))) || n.starts_with("escaped-"))
        .collect();
    let secret = backend.open("rbd", &format!("{prefix}-secret"), None, true).unwrap();
    let data = secret.read(0, 1 << 20).unwrap();
    let snaps = secret.list_snaps().unwrap().into_iter().map(|s| s.name).collect();
    (names, data, snaps)
}

/// The secret image every attack is kept away from: data and a protected snapshot.
fn plant_the_secret(backend: &dyn Backend, prefix: &str) {
    backend.create("rbd", &format!("{prefix}-secret"), 1 << 20, &CreateOptions::default()).unwrap();
    let secret = backend.open("rbd", &format!("{prefix}-secret"), None, false).unwrap();
    secret.write(0, b"the crown jewels").unwrap();
    secret.create_snap("s").unwrap();
    secret.protect_snap("s").unwrap();
}

/// What is left to check once an attack ended: nothing outside the grant changed, no lock
/// or handle leaked, and the host runs the next job.
fn after_the_attack(backend: &Arc<dyn Backend>, prefix: &str, name: &str, before: &(Vec<String>, Vec<u8>, Vec<String>)) {
    assert_eq!(&outside(backend.as_ref(), prefix), before, "{name}: something outside the grant changed");
    for image in backend.list("rbd").unwrap().into_iter().filter(|n| n.starts_with(&format!("{prefix}-job-"))) {
        let img = backend.open("rbd", &image, None, true).unwrap();
        assert_eq!(img.list_lockers().unwrap().lockers, vec![], "{name}: {image} is still locked");
        drop(img);
        // Nothing of the job holds the image open any more (a leaked handle would make
        // this `busy`), unless it has snapshots or children.
        let img = backend.open("rbd", &image, None, true).unwrap();
        let (snaps, children) = (img.list_snaps().unwrap(), img.list_children().unwrap());
        drop(img);
        if snaps.is_empty() && children.is_empty() {
            backend.remove("rbd", &image).unwrap_or_else(|e| panic!("{name}: {image} cannot be removed: {e}"));
        }
    }
    // The host is fine: another job runs.
    run("hello", &["rbd2", &format!("{prefix}-after")], backend.clone()).assert_ok();
}

fn attack(backend: Arc<dyn Backend>, prefix: &str, name: &str, ending: Ending) -> JobRun {
    plant_the_secret(backend.as_ref(), prefix);
    let before = outside(backend.as_ref(), prefix);

    let operations: Operations = Operation::ALL.into_iter().filter(|op| *op != Operation::BreakLock).collect();
    let grants = Grants::new(vec![Grant { pool: "rbd".into(), images: ImagePattern::new(format!("{prefix}-job-*")), operations }]);

    // A bystander runs at the same time, on its own image, and must not notice.
    let bystander_name = format!("{prefix}-bystander");
    let bystander = {
        let backend = backend.clone();
        let name = bystander_name.clone();
        std::thread::spawn(move || run("hello", &["rbd2", &name], backend))
    };
    let job = run_with("hostile", &[name, prefix], backend.clone(), grants, limits());
    bystander.join().expect("bystander thread").assert_ok();

    match (ending, &job.result) {
        (Ending::Refused, Ok(())) => {}
        (Ending::Trap, Err(JobError::Trap(_))) => {}
        (Ending::CpuLimit, Err(JobError::CpuLimit(_))) => {}
        (Ending::RefusedOrCpuLimit, Ok(()) | Err(JobError::CpuLimit(_))) => {}
        (Ending::Failed, Err(JobError::Failed(_))) => {}
        (Ending::Deadline, Err(JobError::Deadline(_))) => {}
        (want, got) => panic!(
            "{name}: expected {want:?}, got {got:?}\nstdout: {}\nstderr: {}",
            head(&job.stdout),
            head(&job.stderr)
        ),
    }
    assert!(job.stdout.len() as u64 <= OUTPUT_LIMIT && job.stderr.len() as u64 <= OUTPUT_LIMIT, "{name}: output past its limit");
    after_the_attack(&backend, prefix, name, &before);
    job
}

fn on_embedded(name: &str, ending: Ending) -> JobRun {
    let store = embedded_store();
    store.backend.create_pool("vault").unwrap();
    attack(store.backend.clone(), "t", name, ending)
}

fn on_librbd(name: &str, ending: Ending) -> JobRun {
    attack(librbd_backend(), &unique_prefix("h"), name, ending)
}

macro_rules! attacks {
    ($($name:ident => $ending:expr),* $(,)?) => {
        const ATTACKS: &[&str] = &[$(stringify!($name)),*];
        mod embedded {
            use super::*;
            $(#[test] fn $name() { on_embedded(stringify!($name), $ending); })*
        }
        mod librbd {
            use super::*;
            $(#[test] fn $name() { on_librbd(stringify!($name), $ending); })*
        }
    };
}

attacks! {
    open_outside_grant_with_dot_dot => Ending::Refused,
    read_secrets_without_a_grant => Ending::Refused,
    open_outside_grant_with_slashes => Ending::Refused,
    open_outside_grant_with_snapshot_suffix => Ending::Refused,
    open_outside_grant_with_nul => Ending::Refused,
    open_outside_grant_with_a_huge_name => Ending::Refused,
    open_outside_grant_with_unicode_lookalikes => Ending::Refused,
    list_other_pools => Ending::Refused,
    list_images_outside_grant => Ending::Refused,
    write_outside_grant => Ending::Refused,
    clone_out_of_grant => Ending::Refused,
    copy_out_of_grant => Ending::Refused,
    rename_out_of_grant => Ending::Refused,
    break_a_lock_without_the_grant => Ending::Refused,
    forge_a_handle => Ending::Trap,
    reuse_a_dropped_handle => Ending::Trap,
    loop_forever => Ending::CpuLimit,
    allocate_without_bound => Ending::Trap,
    overflow_the_stack => Ending::Trap,
    read_a_huge_length => Ending::Refused,
    overflow_offset_plus_length => Ending::Refused,
    write_past_the_end => Ending::Refused,
    make_millions_of_tiny_calls => Ending::RefusedOrCpuLimit,
    exhaust_handles => Ending::Refused,
    diff_iterate_over_a_huge_range => Ending::Refused,
    lock_and_trap => Ending::Trap,
    print_gigabytes => Ending::RefusedOrCpuLimit,
    reach_for_files => Ending::Refused,
    reach_for_the_network => Ending::Refused,
    read_the_environment => Ending::Refused,
}

// ---- Attacks on what the host spends, run through the `rbd-wasm` binary so that its peak
// memory (its own VmHWM, in its report) and wall time are measured, and its `--json` usage checked.

/// The job's limits in the measured attacks (a manifest's `[limits]`).
const MEMORY_MIB: u64 = 256;
const HOST_MEMORY_MIB: u64 = 128;
const DEADLINE_SECS: u64 = 60;
/// What the host process itself takes, besides what a job's limits let it hold: wasmtime,
/// the compiled job, librados' threads and buffers (measured: 30-60 MiB), plus the one
/// call's copy of its arguments that wasmtime bounds (`MAX_CALL_COPY_BYTES`, 128 MiB). The
/// README states the same bound.
const HOST_BASE_MIB: u64 = 128 + 128;
/// How late a job may end after its deadline (closing, releasing locks, process exit).
const DEADLINE_MARGIN_SECS: u64 = 12;

/// How an attack's job is set up.
#[derive(Clone, Copy)]
struct Setup {
    ending: Ending,
    /// Extra `[limits]` lines.
    limits: &'static str,
    output: OutputDir,
    /// Made before the job runs (with the host suite's own client).
    plant: fn(&dyn Backend, &str),
    /// Checked after the job, with its report.
    check: fn(&Measured, &serde_json::Value),
}

#[derive(Clone, Copy, PartialEq)]
enum OutputDir {
    None,
    ReadWrite,
    ReadOnly,
}

fn nothing(_: &dyn Backend, _: &str) {}
fn no_check(_: &Measured, _: &serde_json::Value) {}

fn setup(ending: Ending) -> Setup {
    Setup { ending, limits: "", output: OutputDir::None, plant: nothing, check: no_check }
}

/// Operator-visible output carries no control character but newline and tab.
fn no_control_bytes(out: &Measured, _: &serde_json::Value) {
    for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        let bad: Vec<char> = text
            .chars()
            .filter(|c| (c.is_control() && *c != '\n' && *c != '\t') || ('\u{202a}'..='\u{202e}').contains(c))
            .collect();
        assert!(bad.is_empty(), "{stream} carries control characters {bad:?}: {}", head(&text));
    }
}

fn labels_are_few_short_and_safe(out: &Measured, report: &serde_json::Value) {
    no_control_bytes(out, report);
    let labels: Vec<&str> = report["progress"].as_array().unwrap().iter().map(|p| p["label"].as_str().unwrap()).collect();
    assert!(labels.len() <= 32, "{} labels kept", labels.len());
    assert!(labels.iter().all(|l| l.len() <= 130 && !l.contains('\u{1b}')), "labels: {:?}", &labels[..2]);
}

fn read_quota_charged_when_started(_: &Measured, report: &serde_json::Value) {
    // Two reads of 8 MiB fit the 16 MiB quota and were charged though never waited for.
    assert_eq!(report["usage"]["read_bytes"], 16u64 << 20, "usage: {}", report["usage"]);
}

fn nothing_read_past_the_quota(_: &Measured, report: &serde_json::Value) {
    assert_eq!(report["usage"]["read_bytes"], 0, "usage: {}", report["usage"]);
}

fn output_quota_held(_: &Measured, report: &serde_json::Value) {
    let usage = &report["usage"];
    assert!(usage["output_dir_bytes"].as_u64().unwrap() <= 64 << 20, "usage: {usage}");
    assert!(usage["output_dir_files"].as_u64().unwrap() <= 100, "usage: {usage}");
}

fn output_quota_held_and_reads_charged(out: &Measured, report: &serde_json::Value) {
    output_quota_held(out, report);
    // Every byte the host wrote was read, and charged, first.
    let usage = &report["usage"];
    assert!(usage["read_bytes"].as_u64().unwrap() >= usage["output_dir_bytes"].as_u64().unwrap(), "usage: {usage}");
}

fn moved_within_the_read_quota(_: &Measured, report: &serde_json::Value) {
    let usage = &report["usage"];
    assert_eq!(usage["read_bytes"], 16u64 << 20, "usage: {usage}");
    assert_eq!(usage["output_dir_bytes"], 16u64 << 20, "usage: {usage}");
}

fn written_within_the_write_quota(_: &Measured, report: &serde_json::Value) {
    assert_eq!(report["usage"]["written_bytes"], 16u64 << 20, "usage: {}", report["usage"]);
}

fn host_memory_within_32_mib(_: &Measured, report: &serde_json::Value) {
    let peak = report["usage"]["host_memory_peak_bytes"].as_u64().unwrap();
    assert!(peak <= 32 << 20, "host memory peak {peak}");
}

fn host_memory_within_budget(_: &Measured, report: &serde_json::Value) {
    let peak = report["usage"]["host_memory_peak_bytes"].as_u64().unwrap();
    assert!(peak <= HOST_MEMORY_MIB << 20, "host memory peak {peak}");
}

fn plant_a_lock(backend: &dyn Backend, prefix: &str) {
    let name = format!("{prefix}-job-held");
    backend.create("rbd", &name, 1 << 20, &CreateOptions::default()).unwrap();
    backend.open("rbd", &name, None, false).unwrap().lock_exclusive("bystander").unwrap();
}

fn plant_family(backend: &dyn Backend, prefix: &str) {
    let (secret, child) = (format!("{prefix}-secret"), format!("{prefix}-job-child"));
    backend.clone_image("rbd", &secret, "s", "rbd", &child, &Default::default()).unwrap();
    let parent = format!("{prefix}-job-parent");
    backend.create("rbd", &parent, 1 << 20, &CreateOptions::default()).unwrap();
    let img = backend.open("rbd", &parent, None, false).unwrap();
    img.create_snap("s").unwrap();
    img.protect_snap("s").unwrap();
    backend.clone_image("rbd", &parent, "s", "rbd", &format!("{prefix}-hidden-child"), &Default::default()).unwrap();
}

/// The manifest of a measured attack: the same grant as the in-process attacks, the
/// limits above plus the attack's own.
fn manifest(prefix: &str, setup: &Setup) -> String {
    let base = format!(
        "memory_mib = {MEMORY_MIB}\ndeadline_secs = {DEADLINE_SECS}\ncpu_secs = 5\noutput_bytes = {OUTPUT_LIMIT}\n\
         max_handles = 64\noperations = 20000\nhost_memory_mib = {HOST_MEMORY_MIB}\noutput_dir_bytes = {}\noutput_dir_files = 100\n",
        64u64 << 20
    );
    let own: Vec<&str> = setup.limits.lines().filter_map(|l| l.split(" = ").next()).collect();
    let base: Vec<&str> = base.lines().filter(|l| !own.iter().any(|k| l.starts_with(&format!("{k} = ")))).collect();
    let ops: Vec<String> =
        Operation::ALL.iter().filter(|op| **op != Operation::BreakLock).map(|op| format!("\"{}\"", op.name())).collect();
    format!(
        "schema = 1\n[job]\nid = \"hostile\"\n[[grants]]\npool = \"rbd\"\nimages = \"{prefix}-job-*\"\noperations = [{}]\n\
         [limits]\n{}\n{}\n",
        ops.join(", "),
        base.join("\n"),
        setup.limits
    )
}

fn measured_attack(backend: Arc<dyn Backend>, store: Option<&std::path::Path>, prefix: &str, name: &str, setup: Setup) {
    plant_the_secret(backend.as_ref(), prefix);
    (setup.plant)(backend.as_ref(), prefix);
    let before = outside(backend.as_ref(), prefix);
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("job.toml");
    std::fs::write(&manifest_path, manifest(prefix, &setup)).unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::write(out_dir.join("existing"), b"the operator's file").unwrap();

    let bystander = {
        let backend = backend.clone();
        let name = format!("{prefix}-bystander");
        std::thread::spawn(move || run("hello", &["rbd2", &name], backend))
    };
    let component = guest("hostile");
    let conf = ceph_conf_if(store.is_none());
    let mut args = vec!["run", "--json", "--progress", "none", "--manifest", manifest_path.to_str().unwrap()];
    match &conf {
        Some(conf) => args.extend(["-c", conf.to_str().unwrap()]),
        None => args.extend(["--store", store.unwrap().to_str().unwrap()]),
    }
    if setup.output != OutputDir::None {
        args.extend(["--output-dir", out_dir.to_str().unwrap()]);
    }
    if setup.output == OutputDir::ReadOnly {
        args.push("--output-read-only");
    }
    args.extend([component.to_str().unwrap(), "--", name, prefix]);
    let out = run_host_measured(&args, &[]);
    bystander.join().expect("bystander thread").assert_ok();

    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{name}: no --json report ({e}); exit {}, stderr: {}", out.code, head(&stderr)));
    let status = report["status"].as_str().unwrap_or_default();
    assert!(
        setup.ending.statuses().contains(&status),
        "{name}: expected {:?}, got {status} ({})\nstderr: {}",
        setup.ending,
        report["error"],
        head(&stderr)
    );
    // The kernel's high-water mark of the host process (VmHWM, which exec resets), as the
    // host reports it.
    let peak = report["host_peak_rss_bytes"].as_u64().unwrap_or_else(|| panic!("{name}: no peak RSS in {report}"));
    let bound = (MEMORY_MIB + HOST_MEMORY_MIB + HOST_BASE_MIB) << 20;
    println!("{name}: {status}, peak RSS {} MiB (bound {} MiB), {:.1} s", peak >> 20, bound >> 20, out.wall.as_secs_f64());
    assert!(peak <= bound, "{name}: the host's peak RSS was {} MiB, over {} MiB", peak >> 20, bound >> 20);
    let deadline = report_deadline(&setup);
    assert!(
        out.wall <= Duration::from_secs(deadline + DEADLINE_MARGIN_SECS),
        "{name}: the job took {:?}, past its deadline of {deadline} s",
        out.wall
    );
    let usage = &report["usage"];
    assert!(usage["operations"].as_u64().unwrap() <= 20_001, "{name}: {usage}");
    assert!(out.stderr.len() as u64 <= 2 * OUTPUT_LIMIT + (64 << 10), "{name}: output past its limit");
    no_control_bytes(&out, &report);
    (setup.check)(&out, &report);
    // The operator's file in the output directory is untouched, and nothing links out.
    assert_eq!(std::fs::read(out_dir.join("existing")).unwrap(), b"the operator's file");
    for entry in std::fs::read_dir(&out_dir).unwrap() {
        let entry = entry.unwrap();
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        assert!(!meta.file_type().is_symlink(), "{name}: the job left a link {}", entry.path().display());
    }
    after_the_attack(&backend, prefix, name, &before);
}

fn report_deadline(setup: &Setup) -> u64 {
    setup
        .limits
        .lines()
        .find_map(|l| l.strip_prefix("deadline_secs = ").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(DEADLINE_SECS)
}

fn ceph_conf_if(librbd: bool) -> Option<std::path::PathBuf> {
    librbd.then(ceph_conf)
}

fn measured_on_embedded(name: &str, setup: Setup) {
    let store = embedded_store();
    store.backend.create_pool("vault").unwrap();
    let path = store.dir.path().to_owned();
    measured_attack(store.backend.clone(), Some(&path), "t", name, setup);
}

fn measured_on_librbd(name: &str, setup: Setup) {
    measured_attack(librbd_backend(), None, &unique_prefix("m"), name, setup);
}

macro_rules! measured_attacks {
    ($($name:ident => $setup:expr),* $(,)?) => {
        const MEASURED: &[&str] = &[$(stringify!($name)),*];
        mod measured_embedded {
            use super::*;
            $(#[test] fn $name() { measured_on_embedded(stringify!($name), $setup); })*
        }
        mod measured_librbd {
            use super::*;
            $(#[test] fn $name() { measured_on_librbd(stringify!($name), $setup); })*
        }
    };
}

measured_attacks! {
    hash_in_tiny_chunks => setup(Ending::Trap),
    hash_more_than_the_host_budget => Setup { check: host_memory_within_budget, ..setup(Ending::Trap) },
    seal_chunks_past_the_host_budget => Setup { limits: "host_memory_mib = 32", check: host_memory_within_32_mib, ..setup(Ending::Trap) },
    check_in_tiny_chunks => setup(Ending::Trap),
    keep_chunk_sums_and_never_take_them => Setup { check: host_memory_within_budget, ..setup(Ending::Refused) },
    feed_the_check_more_than_the_host_budget => Setup { check: host_memory_within_budget, ..setup(Ending::Trap) },
    start_reads_and_never_wait => Setup { check: host_memory_within_budget, ..setup(Ending::Refused) },
    drop_reads_past_the_read_quota => Setup {
        limits: "read_bytes = 16777216",
        check: read_quota_charged_when_started,
        ..setup(Ending::Refused)
    },
    read_ahead_then_return => setup(Ending::Refused),
    make_hashers_without_bound => setup(Ending::Trap),
    call_the_hasher_past_the_operation_quota => setup(Ending::Trap),
    report_progress_past_the_operation_quota => setup(Ending::Trap),
    report_progress_with_huge_and_many_labels => Setup { check: labels_are_few_short_and_safe, ..setup(Ending::Refused) },
    list_in_a_loop => setup(Ending::RefusedOrCpuLimit),
    call_next_batch_past_the_end => setup(Ending::RefusedOrCpuLimit),
    make_diff_iterators_without_bound => setup(Ending::Refused),
    write_more_than_the_host_budget_at_once => Setup { limits: "host_memory_mib = 32", ..setup(Ending::Refused) },
    copy_past_the_read_quota => Setup {
        limits: "read_bytes = 16777216",
        check: nothing_read_past_the_quota,
        ..setup(Ending::Refused)
    },
    outwait_the_deadline_in_the_host => Setup {
        limits: "deadline_secs = 5\nbandwidth_mib_per_sec = 1",
        ..setup(Ending::Deadline)
    },
    fill_the_output_directory => Setup { output: OutputDir::ReadWrite, check: output_quota_held, ..setup(Ending::Refused) },
    // The data plane (`write-to`, `write-from`): bytes the host moves for the job are
    // checked and charged as the job's own.
    move_bytes_past_the_output_quota => Setup {
        output: OutputDir::ReadWrite,
        check: output_quota_held_and_reads_charged,
        ..setup(Ending::Refused)
    },
    move_bytes_past_the_read_quota => Setup {
        limits: "read_bytes = 16777216",
        output: OutputDir::ReadWrite,
        check: moved_within_the_read_quota,
        ..setup(Ending::Refused)
    },
    move_pieces_the_reads_do_not_hold => Setup { output: OutputDir::ReadWrite, ..setup(Ending::Refused) },
    write_from_past_the_host_budget_and_the_grant => Setup {
        limits: "host_memory_mib = 32",
        output: OutputDir::ReadWrite,
        check: host_memory_within_32_mib,
        ..setup(Ending::Refused)
    },
    write_from_past_the_write_quota => Setup {
        limits: "write_bytes = 16777216",
        output: OutputDir::ReadWrite,
        check: written_within_the_write_quota,
        ..setup(Ending::Refused)
    },
    read_ahead_in_many_files => Setup { output: OutputDir::ReadWrite, check: host_memory_within_budget, ..setup(Ending::Refused) },
    hash_a_file_over_and_over => Setup {
        limits: "deadline_secs = 5",
        output: OutputDir::ReadWrite,
        ..setup(Ending::Deadline)
    },
    write_from_past_the_deadline => Setup {
        limits: "deadline_secs = 5\nbandwidth_mib_per_sec = 1",
        output: OutputDir::ReadWrite,
        ..setup(Ending::Deadline)
    },
    grow_a_file_sparsely => Setup { output: OutputDir::ReadWrite, check: output_quota_held, ..setup(Ending::Refused) },
    grow_a_file_by_writing_past_its_end => Setup { output: OutputDir::ReadWrite, check: output_quota_held, ..setup(Ending::Refused) },
    read_after_the_image_grew_under_reads_in_flight => Setup { check: host_memory_within_budget, ..setup(Ending::Refused) },
    create_files_without_bound => Setup { output: OutputDir::ReadWrite, check: output_quota_held, ..setup(Ending::Refused) },
    open_files_without_bound => Setup { output: OutputDir::ReadWrite, ..setup(Ending::Refused) },
    plant_symlinks => Setup { output: OutputDir::ReadWrite, ..setup(Ending::Refused) },
    plant_a_hard_link => Setup { output: OutputDir::ReadWrite, ..setup(Ending::Refused) },
    write_to_a_read_only_output_directory => Setup { output: OutputDir::ReadOnly, ..setup(Ending::Refused) },
    forge_another_jobs_line => setup(Ending::Refused),
    fail_with_a_huge_message => setup(Ending::Failed),
    print_a_huge_line => setup(Ending::RefusedOrCpuLimit),
    see_parents_and_children_outside_the_grant => Setup { plant: plant_family, ..setup(Ending::Refused) },
    rename_a_locked_image_and_trap => setup(Ending::Trap),
}

/// A job may unlock only its own locks, though every job of a host is one client to Ceph:
/// run in this process, on the very client that holds the other job's lock.
fn unlock_another_jobs_lock(backend: Arc<dyn Backend>, prefix: &str) {
    plant_a_lock(backend.as_ref(), prefix);
    let operations: Operations = Operation::ALL.into_iter().filter(|op| *op != Operation::BreakLock).collect();
    let grants = Grants::new(vec![Grant { pool: "rbd".into(), images: ImagePattern::new(format!("{prefix}-job-*")), operations }]);
    let job = run_with("hostile", &["unlock_another_jobs_lock", prefix], backend.clone(), grants, limits());
    job.assert_ok();
    let held = backend.open("rbd", &format!("{prefix}-job-held"), None, false).unwrap();
    assert_eq!(held.list_lockers().unwrap().lockers.len(), 1, "the other job's lock is gone");
    held.unlock("bystander").unwrap();
}

#[test]
fn embedded_unlock_another_jobs_lock() {
    let store = embedded_store();
    unlock_another_jobs_lock(store.backend.clone(), "t");
}

#[test]
fn librbd_unlock_another_jobs_lock() {
    unlock_another_jobs_lock(librbd_backend(), &unique_prefix("u"));
}

#[test]
fn every_attack_has_a_test() {
    let store = embedded_store();
    let listing = run("hostile", &["list"], store.backend.clone());
    listing.assert_ok();
    let listed: Vec<&str> = listing.stdout.lines().collect();
    // `hold_a_lock_and_write_forever` is the fault suite's (tests/tests/faults.rs).
    let by_hand = ["unlock_another_jobs_lock", "hold_a_lock_and_write_forever", "leak_a_secret", "flood_a_data_stdout"].into_iter().chain(NETWORK.iter().copied());
    let tested: Vec<&str> = ATTACKS.iter().chain(MEASURED).copied().chain(by_hand).collect();
    let (mut listed, mut tested) = (listed, tested);
    listed.sort_unstable();
    tested.sort_unstable();
    assert_eq!(listed, tested, "the hostile guest's attacks and this suite's tests differ");
}

// ---- Outbound HTTP: deny by default, and only the granted endpoints, paths and addresses.
// The endpoint reached is the test command's S3 gateway (scripts/test.sh exports it).

const NETWORK: &[&str] = &[
    "http_without_a_grant",
    "http_to_the_granted_endpoint_only",
    "http_to_a_name_resolving_elsewhere",
    "http_response_larger_than_the_limit",
    "http_redirect_elsewhere",
    "https_checked_against_the_granted_name",
    "http_slow_response",
    "http_endless_response",
    "http_no_answer",
    "http_many_connections",
    "http_after_the_deadline",
    "http_upload_past_the_network_quota",
    "http_upload_that_never_sends",
];

/// The S3 gateway's `address:port`.
fn gateway_authority() -> String {
    rbd_wasm_tests::S3Gateway::from_env().authority().to_owned()
}

fn network_case(case: &str, extra: &[&str], outbound: rbd_wasm::Endpoints) -> Vec<serde_json::Value> {
    network_case_limited(case, extra, outbound, JobLimits::default())
}

fn network_case_limited(case: &str, extra: &[&str], outbound: rbd_wasm::Endpoints, limits: JobLimits) -> Vec<serde_json::Value> {
    let store = embedded_store();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut args = vec![case, "n"];
    args.extend_from_slice(extra);
    let job = rbd_wasm_tests::run_with_outbound("hostile", &args, store.backend.clone(), outbound, limits, rbd_wasm::AuditSink::Capture(lines.clone()));
    job.assert_ok();
    let lines = lines.lock().unwrap().clone();
    lines.iter().map(|l| serde_json::from_str(l).unwrap()).filter(|v: &serde_json::Value| v["method"] == "http").collect()
}

#[test]
fn http_without_a_grant() {
    let gateway = gateway_authority();
    let audited = network_case("http_without_a_grant", &[&gateway, "127.0.0.1:1"], Default::default());
    assert_eq!(audited.len(), 4, "every request audited: {audited:?}");
    assert!(audited.iter().all(|a| a["result"] == "denied-or-failed" && a["status"].is_null()), "{audited:?}");
}

#[test]
fn http_to_the_granted_endpoint_only() {
    let g = rbd_wasm_tests::S3Gateway::from_env();
    let (gateway, prefix) = (g.authority().to_owned(), format!("/{}/", g.bucket));
    let grant = rbd_wasm::Endpoint::parse(&format!("http://{gateway}{prefix}"), &[]).unwrap();
    let audited = network_case("http_to_the_granted_endpoint_only", &[&gateway, &prefix, "1"], rbd_wasm::Endpoints(vec![grant]));
    let reached: Vec<&serde_json::Value> = audited.iter().filter(|a| a["result"] == "ok").collect();
    assert_eq!(reached.len(), 1, "one request reached the gateway: {audited:?}");
    assert!(reached[0]["endpoint"].as_str().unwrap().ends_with(&prefix) && reached[0]["status"].is_u64(), "{reached:?}");
    assert_eq!(audited.len(), 7, "each denial audited with what was asked: {audited:?}");
}

#[test]
fn http_to_a_name_resolving_elsewhere() {
    let gateway = gateway_authority();
    let port = gateway.rsplit_once(':').unwrap().1;
    // `localhost` resolves to 127.0.0.1 (and ::1); the grant allows only 127.0.0.2.
    let grant = rbd_wasm::Endpoint::parse(&format!("http://localhost:{port}/"), &["127.0.0.2".into()]).unwrap();
    let audited = network_case("http_to_a_name_resolving_elsewhere", &[&format!("localhost:{port}")], rbd_wasm::Endpoints(vec![grant]));
    assert_eq!(audited.len(), 1);
    assert!(audited[0]["message"].as_str().unwrap().contains("none of them an address the grant allows"), "{audited:?}");
}

#[test]
fn http_response_larger_than_the_limit() {
    let g = rbd_wasm_tests::S3Gateway::from_env();
    // A 3 MiB object, public-read (the gateway answers a private object 403 to the job's
    // unsigned GET); the job's limit is 1 MiB.
    let key = format!("/{}/big-{}", g.bucket, std::process::id());
    let put = g.request("PUT", &key, Some(&vec![7u8; 3 << 20]), &["x-amz-acl: public-read"], true);
    assert_eq!(put.0, 200, "put the object");
    let grant = rbd_wasm::Endpoint::parse(&format!("http://{}/{}/", g.authority(), g.bucket), &[]).unwrap();
    let limits = JobLimits { http: rbd_wasm::HttpLimits { response_bytes: 1 << 20, ..Default::default() }, ..JobLimits::default() };
    let audited = network_case_limited("http_response_larger_than_the_limit", &[g.authority(), &key], rbd_wasm::Endpoints(vec![grant]), limits);
    assert_eq!(audited.len(), 1, "{audited:?}");
}

#[test]
fn http_redirect_elsewhere() {
    let rogue = RogueHttp::start();
    let elsewhere = RogueHttp::start();
    let grant = rbd_wasm::Endpoint::parse(&format!("http://{}/", rogue.authority), &[]).unwrap();
    let audited = network_case("http_redirect_elsewhere", &[&rogue.authority, &elsewhere.authority], rbd_wasm::Endpoints(vec![grant]));
    assert_eq!(audited.len(), 2, "the redirect and the denied follow-up: {audited:?}");
    assert!(audited.iter().any(|a| a["status"] == 302 && a["result"] == "ok"), "{audited:?}");
    assert!(audited.iter().any(|a| a["result"] == "denied-or-failed" && a["endpoint"].as_str().unwrap().contains(&elsewhere.authority)));
    assert!(elsewhere.requests().is_empty(), "the other endpoint was reached: {:?}", elsewhere.requests());
}

#[test]
fn https_checked_against_the_granted_name() {
    // The gateway's https port has a certificate for localhost from the test cluster's own
    // CA: trusted when the grant names the CA, refused as a certificate error when not.
    let endpoint = std::env::var("RBD_WASM_S3_TLS_ENDPOINT").expect("RBD_WASM_S3_TLS_ENDPOINT: run through scripts/test.sh");
    let ca = std::env::var("RBD_WASM_S3_CA_FILE").expect("RBD_WASM_S3_CA_FILE");
    let authority = endpoint.trim_start_matches("https://").to_owned();
    for (ca_file, expected) in [(Some(&ca), "status 200"), (None, "TlsCertificateError")] {
        let ca_line = ca_file.map_or(String::new(), |f| format!("ca_file = \"{f}\"\n"));
        let text = format!("schema = 1\n[job]\n[[outbound]]\nurl = \"{endpoint}/\"\naddresses = [\"127.0.0.1\"]\n{ca_line}");
        let manifest = rbd_wasm::manifest::Manifest::parse(&text, std::path::Path::new(".")).unwrap();
        let audited = network_case("https_checked_against_the_granted_name", &[&authority, expected], manifest.outbound);
        assert_eq!(audited.len(), 1, "{audited:?}");
    }
}

// Network attacks on what the host spends, through the `rbd-wasm` binary (peak RSS, wall
// time, its `--json` usage) against the rogue server, granted to the job by its manifest.

const NETWORK_DEADLINE_SECS: u64 = 30;

fn measured_network(case: &str, limits: &str, ending: Ending, check: impl Fn(&Measured, &serde_json::Value, &RogueHttp, std::time::Instant)) {
    let rogue = RogueHttp::start();
    let dir = tempfile::tempdir().unwrap();
    let test_store = embedded_store();
    let store = test_store.dir.path().to_owned();
    let manifest = dir.path().join("job.toml");
    let deadline = limits.lines().find_map(|l| l.strip_prefix("deadline_secs = ")?.parse().ok()).unwrap_or(NETWORK_DEADLINE_SECS);
    let base = format!("memory_mib = {MEMORY_MIB}\ncpu_secs = 20\noutput_bytes = {OUTPUT_LIMIT}\nhost_memory_mib = {HOST_MEMORY_MIB}\n");
    let base = if limits.contains("deadline_secs") { base } else { format!("{base}deadline_secs = {deadline}\n") };
    std::fs::write(
        &manifest,
        format!(
            "schema = 1\n[job]\nid = \"hostile\"\n[[grants]]\npool = \"rbd\"\noperations = [\"all\"]\n\
             [[outbound]]\nurl = \"http://{}/\"\n[limits]\n{base}{limits}\n",
            rogue.authority
        ),
    )
    .unwrap();
    let component = guest("hostile");
    let args = [
        "run", "--json", "--progress", "none", "--manifest", manifest.to_str().unwrap(), "--store", store.to_str().unwrap(),
        component.to_str().unwrap(), "--", case, "n", &rogue.authority,
    ];
    let out = run_host_measured(&args, &[]);
    let ended = std::time::Instant::now();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{case}: no --json report ({e}); exit {}, stderr: {}", out.code, head(&stderr)));
    let status = report["status"].as_str().unwrap_or_default();
    assert!(ending.statuses().contains(&status), "{case}: expected {ending:?}, got {status} ({})\nstderr: {}", report["error"], head(&stderr));
    let peak = report["host_peak_rss_bytes"].as_u64().unwrap();
    let bound = (MEMORY_MIB + HOST_MEMORY_MIB + HOST_BASE_MIB) << 20;
    println!("{case}: {status}, peak RSS {} MiB (bound {} MiB), {:.1} s ({} s in the job), usage {}", peak >> 20, bound >> 20, out.wall.as_secs_f64(), report["elapsed_secs"], report["usage"]);
    assert!(peak <= bound, "{case}: the host's peak RSS was {} MiB, over {} MiB", peak >> 20, bound >> 20);
    assert!(out.wall <= Duration::from_secs(deadline + DEADLINE_MARGIN_SECS), "{case}: took {:?}, deadline {deadline} s", out.wall);
    no_control_bytes(&out, &report);
    // Whatever the job did, the host left no connection open behind it.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rogue.seen.open.load(std::sync::atomic::Ordering::SeqCst), 0, "{case}: connections left open after the host exited");
    check(&out, &report, &rogue, ended);
}

#[test]
fn http_slow_response() {
    // The trickle never idles past the limit; the deadline ends it, and the connection with it.
    measured_network("http_slow_response", "deadline_secs = 4", Ending::Deadline, |out, _, _, _| {
        assert!(out.wall >= Duration::from_secs(4), "ended before the deadline: {:?}", out.wall);
    });
    // Embedded in a process that lives on, the host hangs up when the job ends.
    let rogue = RogueHttp::start();
    let grant = rbd_wasm::Endpoint::parse(&format!("http://{}/", rogue.authority), &[]).unwrap();
    let limits = JobLimits { deadline: Duration::from_secs(2), ..JobLimits::default() };
    let store = embedded_store();
    let job = rbd_wasm_tests::run_with_outbound("hostile", &["http_slow_response", "n", &rogue.authority], store.backend.clone(), rbd_wasm::Endpoints(vec![grant]), limits, Default::default());
    let ended = std::time::Instant::now();
    assert!(matches!(job.result, Err(JobError::Deadline(_))), "{:?}", job.result);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rogue.seen.open.load(std::sync::atomic::Ordering::SeqCst), 0, "the connection outlived the job");
    let closed = rogue.seen.last_closed.lock().unwrap().expect("closed");
    assert!(closed <= ended + Duration::from_millis(300), "the host hung up {:?} after the job ended", closed - ended);
}

#[test]
fn http_endless_response() {
    measured_network("http_endless_response", "http_response_bytes = 67108864", Ending::Refused, |_, report, _, _| {
        let received = report["usage"]["network_received_bytes"].as_u64().unwrap();
        assert!(received <= 64 << 20 && received > 60 << 20, "received {received} bytes, limit 64 MiB");
    });
}

fn within_a_2_s_idle_limit(out: &Measured, _: &serde_json::Value, _: &RogueHttp, _: std::time::Instant) {
    assert!(out.wall < Duration::from_secs(15), "a 2 s idle limit took {:?}", out.wall);
}

#[test]
fn http_no_answer() {
    measured_network("http_no_answer", "http_idle_secs = 2", Ending::Refused, within_a_2_s_idle_limit);
}

#[test]
fn http_many_connections() {
    measured_network("http_many_connections", "http_idle_secs = 2\nhttp_connections = 8", Ending::Refused, |_, _, rogue, _| {
        let most = rogue.seen.most_open.load(std::sync::atomic::Ordering::SeqCst);
        assert!((1..=8).contains(&most), "{most} connections open at once, limit 8");
    });
}

#[test]
fn http_after_the_deadline() {
    measured_network("http_after_the_deadline", "deadline_secs = 3", Ending::Deadline, |_, _, rogue, ended| {
        let requests = rogue.requests();
        assert!(requests.len() > 10, "the loop made only {} requests", requests.len());
        let last = requests.iter().map(|(at, _)| *at).max().unwrap();
        assert!(last <= ended, "a request reached the server after the host exited");
    });
}

#[test]
fn http_upload_that_never_sends() {
    measured_network("http_upload_that_never_sends", "http_idle_secs = 2", Ending::Refused, within_a_2_s_idle_limit);
}

#[test]
fn http_upload_past_the_network_quota() {
    measured_network("http_upload_past_the_network_quota", "network_bytes = 1048576", Ending::Refused, |_, report, rogue, _| {
        let sent = report["usage"]["network_sent_bytes"].as_u64().unwrap();
        assert!(sent <= 1 << 20, "sent {sent} bytes past a 1 MiB quota");
        let sunk = rogue.seen.sunk.load(std::sync::atomic::Ordering::SeqCst);
        assert!(sunk <= (1 << 20) + (64 << 10), "the server got {sunk} body bytes past a 1 MiB quota");
    });
}

// ---- Secrets through the `rbd-wasm` binary: a job that prints the secret it was handed
// everywhere it can; the value appears nowhere the host writes, its name does.

/// A job floods its data stdout (`--stdout-data`, a restore stream's channel). With a reader
/// that takes everything, the stream is cut at `stdout_data_bytes` exactly and the job's
/// write fails (a cut stream must not look whole); with a reader that takes nothing, the job
/// waits on the pipe until its deadline. Either way the host holds no more than a write.
#[test]
fn flood_a_data_stdout() {
    use std::io::Read;
    let store = embedded_store();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("job.toml");
    let limit = 64u64 << 20;
    std::fs::write(&manifest, format!("schema = 1\n[job]\nstdout_data = true\n[[grants]]\npool = \"rbd\"\nimages = \"d-job-*\"\noperations = [\"read\"]\n[limits]\nstdout_data_bytes = {limit}\ndeadline_secs = 8\n")).unwrap();
    let component = guest("hostile");
    let args = |_: &str| {
        vec![
            "run".to_string(), "--json".into(), "--progress".into(), "none".into(), "--manifest".into(), manifest.display().to_string(),
            "--store".into(), store.dir.path().display().to_string(), component.display().to_string(), "--".into(), "flood_a_data_stdout".into(), "d".into(),
        ]
    };
    let _ = host_binary();
    for reader in ["drains", "stalls"] {
        let started = std::time::Instant::now();
        let mut child = Command::new(host_binary())
            .args(args(reader))
            .env("RBD_WASM_CACHE", rbd_wasm_tests::test_cache_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let taken = std::thread::spawn(move || {
            let mut n = 0u64;
            if reader == "drains" {
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(k) = stdout.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    n += k as u64;
                }
            } else {
                // Hold the pipe open, read nothing, until the host has gone.
                std::thread::sleep(std::time::Duration::from_secs(30));
            }
            n
        });
        let out = child.wait_with_output().unwrap();
        let wall = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report: serde_json::Value = serde_json::from_str(&stderr[stderr.rfind("\n{").map_or(0, |i| i + 1)..]).unwrap_or_else(|e| panic!("no report on stderr ({e}): {stderr}"));
        let peak = report["host_peak_rss_bytes"].as_u64().unwrap();
        assert!(peak < (HOST_BASE_MIB + 64) << 20, "{reader}: the host peaked at {} MiB", peak >> 20);
        if reader == "drains" {
            assert_eq!(report["status"], "failed", "{report}");
            assert!(stderr.contains("reached its limit (limits.stdout_data_bytes)"), "{stderr}");
            assert_eq!(taken.join().unwrap(), limit, "the reader got other than the limit's bytes");
        } else {
            assert_eq!(report["status"], "deadline", "{report}");
            assert!(wall < std::time::Duration::from_secs(8 + DEADLINE_MARGIN_SECS), "{reader}: the host took {wall:?}");
        }
    }
}

#[test]
fn leak_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let value = "Rk9PQkFSLXJlcG8ta2V5LTQyLXNlY3JldA";
    std::fs::write(dir.path().join("repo.key"), format!("{value}\n")).unwrap();
    let store = embedded_store();
    let audit = dir.path().join("audit.log");
    let manifest = dir.path().join("job.toml");
    std::fs::write(
        &manifest,
        "schema = 1\n[job]\nid = \"leaky\"\n[[grants]]\npool = \"rbd\"\nimages = \"n-job-*\"\noperations = [\"all\"]\n\
         [secrets]\nrepo-key = \"repo.key\"\n",
    )
    .unwrap();
    let component = guest("hostile");
    for progress in ["lines", "none"] {
        let out = run_host_measured(
            &[
                "run", "--json", "--progress", progress, "--manifest", manifest.to_str().unwrap(), "--store",
                store.dir.path().to_str().unwrap(), "--audit-log", audit.to_str().unwrap(), component.to_str().unwrap(),
                "--", "leak_a_secret", "n",
            ],
            &[],
        );
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("no report ({e}): {stderr}"));
        assert_eq!(report["status"], "failed", "the job's own error ends it: {report}");
        let audit = std::fs::read_to_string(&audit).unwrap();
        for (what, text) in [("stdout", &*stdout), ("stderr", &*stderr), ("the audit log", &audit)] {
            assert!(!text.contains(value), "{what} shows the secret: {text}");
        }
        assert!(stderr.contains("the key is [secret repo-key]"), "{stderr}");
        assert!(report["error"].as_str().unwrap().contains("failed with key [secret repo-key]"), "{report}");
        if progress == "lines" {
            assert!(stderr.contains("uploading with [secret repo-key]"), "the label: {stderr}");
        }
        let gets: Vec<serde_json::Value> =
            audit.lines().map(|l| serde_json::from_str(l).unwrap()).filter(|v: &serde_json::Value| v["method"] == "secrets.get").collect();
        assert!(gets.iter().any(|g| g["image"] == "repo-key" && g["result"] == "ok"), "{gets:?}");
        assert!(gets.iter().any(|g| g["image"] == "other-key" && g["result"] == "not-found"), "{gets:?}");
        assert!(audit.contains("n-job-[secret repo-key]"), "the audited image name: {audit}");
    }
}
