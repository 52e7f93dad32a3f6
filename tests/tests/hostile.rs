//! The hostile-guest suite: one attack per test, on both backends. Each asserts a clear
//! error or a clean termination, that the host survives, that a second job running at the
//! same time is unaffected, that nothing outside the grant changed, and that no lock or
//! handle leaked.

use std::sync::Arc;
use std::time::Duration;

use rbd_wasm::backend::{Backend, CreateOptions};
use rbd_wasm::capability::{Grant, Grants, ImagePattern, Operation, Operations};
use rbd_wasm::runtime::{JobError, JobLimits};
use rbd_wasm_tests::{embedded_store, librbd_backend, run, run_with, unique_prefix, JobRun};

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

fn attack(backend: Arc<dyn Backend>, prefix: &str, name: &str, ending: Ending) -> JobRun {
    backend.create("rbd", &format!("{prefix}-secret"), 1 << 20, &CreateOptions::default()).unwrap();
    let secret = backend.open("rbd", &format!("{prefix}-secret"), None, false).unwrap();
    secret.write(0, b"the crown jewels").unwrap();
    secret.create_snap("s").unwrap();
    drop(secret);
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
        (want, got) => panic!(
            "{name}: expected {want:?}, got {got:?}\nstdout: {}\nstderr: {}",
            head(&job.stdout),
            head(&job.stderr)
        ),
    }
    assert!(job.stdout.len() as u64 <= OUTPUT_LIMIT && job.stderr.len() as u64 <= OUTPUT_LIMIT, "{name}: output past its limit");
    assert_eq!(outside(backend.as_ref(), prefix), before, "{name}: something outside the grant changed");
    for image in backend.list("rbd").unwrap().into_iter().filter(|n| n.starts_with(&format!("{prefix}-job-"))) {
        let img = backend.open("rbd", &image, None, true).unwrap();
        assert_eq!(img.list_lockers().unwrap().lockers, vec![], "{name}: {image} is still locked");
        drop(img);
        // Nothing of the job holds the image open any more (a leaked handle would make
        // this `busy`), unless it has snapshots.
        let snaps = backend.open("rbd", &image, None, true).unwrap().list_snaps().unwrap();
        if snaps.is_empty() {
            backend.remove("rbd", &image).unwrap_or_else(|e| panic!("{name}: {image} cannot be removed: {e}"));
        }
    }
    // The host is fine: another job runs.
    run("hello", &["rbd2", &format!("{prefix}-after")], backend.clone()).assert_ok();
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

#[test]
fn every_attack_has_a_test() {
    let store = embedded_store();
    let listing = run("hostile", &["list"], store.backend.clone());
    listing.assert_ok();
    let listed: Vec<&str> = listing.stdout.lines().collect();
    assert_eq!(listed, ATTACKS, "the hostile guest's attacks and this suite's tests differ");
}
