//! The conformance suite: every case of the conformance guest, run through the host on
//! both backends (the embedded store, and librbd on the test cluster).
//!
//! Each test names one behaviour of the `ceph:rbd` API; the guest's case of the same name
//! makes the calls and checks the answers (see tests/guests/conformance). The
//! `every_guest_case_has_a_test` test fails when a case is added to the guest without a test
//! here, so none is silently skipped.

use std::sync::Arc;

use rbd_wasm::backend::{Backend, CreateOptions};
use rbd_wasm::capability::{Grant, Grants, ImagePattern, Operations};
use rbd_wasm::runtime::JobLimits;
use rbd_wasm_tests::{embedded_store, librbd_backend, run, run_with, unique_prefix};

/// Run one conformance case on a fresh embedded store and expect success.
fn case_on_embedded(case: &str) {
    let store = embedded_store();
    run("conformance", &[case, "t"], store.backend.clone()).assert_ok();
}

/// Run one conformance case on the test cluster, under names no other test uses.
fn case_on_librbd(case: &str) {
    let prefix = unique_prefix("c");
    run("conformance", &[case, &prefix], librbd_backend()).assert_ok();
}

macro_rules! conformance_cases {
    ($($case:ident),* $(,)?) => {
        /// The names this file has a test for.
        const TESTED: &[&str] = &[$(stringify!($case)),*];

        mod embedded {
            $(
                #[test]
                fn $case() {
                    super::case_on_embedded(stringify!($case));
                }
            )*
        }

        mod librbd {
            $(
                #[test]
                fn $case() {
                    super::case_on_librbd(stringify!($case));
                }
            )*
        }
    };
}

conformance_cases! {
    version_reports_librbd_version,
    granted_pools_are_listed,
    open_pool_outside_grant_is_not_found,
    pool_name_is_its_name,
    create_lists_and_removes_images,
    create_existing_name_is_exists,
    create_size_zero_is_allowed,
    create_order_out_of_range,
    create_order_bounds_are_accepted,
    create_old_format_with_features_is_invalid,
    create_old_format_gives_a_current_image,
    create_unknown_feature_bits_are_not_supported,
    create_stripe_unit_not_dividing_object_is_invalid,
    create_with_striping_reports_it,
    remove_missing_is_not_found,
    remove_with_snapshots_is_has_snapshots,
    remove_open_image_is_busy,
    rename_moves_the_image,
    rename_missing_is_not_found,
    rename_onto_existing_is_exists,
    open_missing_is_not_found,
    open_at_missing_snapshot_is_not_found,
    open_at_snapshot_reads_it_and_is_read_only,
    open_read_only_rejects_changes,
    dropping_an_image_closes_it,
    image_name_is_the_opened_name,
    stat_reports_layout,
    default_features_and_striping,
    write_then_read_round_trips_across_objects,
    read_ranges_answers_in_order,
    holes_read_as_zeroes,
    read_past_end_is_clipped,
    read_at_or_past_end_is_invalid,
    read_of_zero_bytes_is_empty,
    write_past_end_is_incomplete_write,
    write_at_or_past_end_is_invalid,
    write_at_snapshot_is_read_only,
    discard_zeroes_the_range,
    flush_and_invalidate_cache_succeed,
    resize_shrinks_and_grows,
    image_cursor_reads_writes_and_seeks,
    snapshots_are_listed_oldest_first_with_sizes,
    write_ranges_writes_every_range,
    start_reads_hands_over_data_and_chunk_digests,
    host_sha256_gives_standard_digests,
    chunk_codec_seals_what_the_format_opens,
    snapshot_is_immutable,
    create_snap_existing_is_exists,
    remove_snap_removes_it,
    remove_snap_missing_is_not_found,
    remove_snap_protected_is_busy,
    protect_and_unprotect_snapshot,
    protect_twice_is_busy,
    protect_missing_snapshot_is_not_found,
    unprotect_unprotected_is_invalid,
    unprotect_with_children_is_busy,
    set_snap_missing_is_not_found,
    set_snap_selects_snapshot_size,
    rollback_restores_data_and_size,
    rollback_missing_is_not_found,
    diff_from_missing_snapshot_is_not_found,
    diff_from_newer_snapshot_is_invalid,
    diff_from_beginning_covers_the_data,
    diff_between_snapshots_reproduces_newer,
    diff_of_unchanged_image_is_empty,
    diff_extents_are_librbds_exact_ones,
    diff_iterator_after_close_is_not_found,
    diff_over_huge_range_is_clipped_to_the_image,
    clone_reads_parent_data,
    clone_writes_copy_up_and_leave_parent_alone,
    clone_of_unprotected_snapshot_is_invalid,
    clone_of_missing_parent_or_snapshot_is_not_found,
    clone_onto_existing_name_is_exists,
    clone_without_layering_feature_is_not_supported,
    clone_into_another_pool,
    list_children_of_snapshot,
    parent_info_of_non_clone_is_none,
    flatten_detaches_the_clone,
    flatten_of_non_clone_is_invalid,
    copy_copies_data_into_new_image,
    copy_at_snapshot_copies_the_snapshot,
    copy_onto_existing_name_is_exists,
    copy_of_clone_is_flat,
    snapshot_ids_are_pool_wide,
    unlocked_image_has_no_lockers,
    exclusive_lock_is_listed_and_released,
    writable_opens_watch_the_image,
    exclusive_lock_twice_same_cookie_is_exists,
    advisory_lock_makes_writes_busy_with_the_exclusive_lock_feature,
    a_write_takes_the_exclusive_lock_features_lock,
    breaking_ones_own_lock_ends_the_jobs_connection,
    exclusive_lock_other_cookie_is_busy,
    shared_locks_share_a_tag,
    unlock_not_held_is_not_found,
    break_lock_missing_is_not_found,
    name_with_nul_is_type_error,
    image_names_follow_librbd,
    discard_at_or_past_end_is_invalid,
    clone_with_bad_order_or_name,
}

/// Another client locks `PREFIX-locked` (cookie `theirs`); then the guest breaks that lock.
fn break_lock_case(backend: Arc<dyn Backend>, other: Arc<dyn Backend>, prefix: &str) {
    let name = format!("{prefix}-locked");
    other.create("rbd", &name, 1 << 20, &CreateOptions::default()).unwrap();
    let image = other.open("rbd", &name, None, false).unwrap();
    image.lock_exclusive("theirs").unwrap();
    drop(image);
    run("conformance", &["break_lock_releases_another_clients_lock", prefix], backend).assert_ok();
}

/// The error kind of a backend call's result (`ok` for none).
fn kind<T>(r: Result<T, rbd_wasm::backend::Error>) -> &'static str {
    r.err().map(|e| e.kind()).unwrap_or("ok")
}

/// Another client writes to `PREFIX-written` and keeps it open (holding the exclusive-lock
/// feature's lock); the guest breaks that lock; the writer is blocklisted: its next write,
/// and its next call on the pool, answer `connection-shutdown`.
fn blocklist_case(backend: Arc<dyn Backend>, writer: Arc<dyn Backend>, prefix: &str) {
    let name = format!("{prefix}-written");
    writer.create("rbd", &name, 1 << 20, &CreateOptions::default()).unwrap();
    let image = writer.open("rbd", &name, None, false).unwrap();
    image.write(0, b"theirs").unwrap();
    run("conformance", &["breaking_the_writers_lock_blocklists_it", prefix], backend.clone()).assert_ok();
    assert_eq!(kind(image.write(0, b"again")), "connection-shutdown", "the writer's next write");
    assert_eq!(kind(writer.list("rbd")), "connection-shutdown", "the writer's next call");
    drop(image);
    let mine = backend.open("rbd", &name, None, true).unwrap();
    assert_eq!(mine.read(0, 4).unwrap(), b"mine", "the breaker's write stands");
}

/// The host makes `PREFIX-ro`; the job is granted only `read` on pool `rbd`.
fn permission_case(backend: Arc<dyn Backend>, prefix: &str) {
    backend.create("rbd", &format!("{prefix}-ro"), 1 << 20, &CreateOptions::default()).unwrap();
    let grants = Grants::new(vec![
        Grant { pool: "rbd".into(), images: ImagePattern::any(), operations: Operations::read_only() },
        Grant { pool: "rbd2".into(), images: ImagePattern::any(), operations: Operations::read_only() },
    ]);
    let case = "operations_outside_the_grant_are_permission_denied";
    run_with("conformance", &[case, prefix], backend.clone(), grants, JobLimits::default()).assert_ok();
    let names: Vec<String> = backend.list("rbd").unwrap().into_iter().filter(|n| n.starts_with(prefix)).collect();
    assert_eq!(names, vec![format!("{prefix}-ro")], "a denied call changed the pool");
}

/// A job that ends holding locks (returning, or trapping) leaves none behind.
fn locks_released_case(backend: Arc<dyn Backend>, prefix: &str) {
    for case in ["job_leaves_locks_behind", "job_traps_holding_locks"] {
        let prefix = format!("{prefix}{}", if case.contains("traps") { "t" } else { "r" });
        let job = run("conformance", &[case, &prefix], backend.clone());
        assert_eq!(job.result.is_ok(), case == "job_leaves_locks_behind", "{case}: {:?}", job.result.err());
        for image in ["a", "b"] {
            let img = backend.open("rbd", &format!("{prefix}-{image}"), None, true).unwrap();
            assert_eq!(img.list_lockers().unwrap().lockers, vec![], "{case}: {image} still locked");
        }
    }
}

mod with_setup {
    use super::*;

    #[test]
    fn embedded_locks_a_job_leaves_are_released() {
        let store = embedded_store();
        locks_released_case(store.backend.clone(), "t");
    }

    #[test]
    fn librbd_locks_a_job_leaves_are_released() {
        locks_released_case(librbd_backend(), &unique_prefix("c"));
    }

    #[test]
    fn embedded_operations_outside_the_grant_are_permission_denied() {
        let store = embedded_store();
        permission_case(store.backend.clone(), "t");
    }

    #[test]
    fn librbd_operations_outside_the_grant_are_permission_denied() {
        permission_case(librbd_backend(), &unique_prefix("c"));
    }

    /// Every method that python-rbd documents as raising IOError answers `io` when the store
    /// under an open image is damaged (its header replaced by a directory), and the host
    /// survives to say so. (librbd's IOError needs a failing cluster.)
    #[test]
    fn embedded_methods_on_a_damaged_image_are_io() {
        let store = embedded_store();
        let b = store.backend.clone();
        b.create("rbd", "img", 1 << 20, &CreateOptions::default()).unwrap();
        let img = b.open("rbd", "img", None, false).unwrap();
        img.write(0, &[1u8; 4096]).unwrap();
        img.create_snap("s").unwrap();
        img.create_snap("t").unwrap();
        let headers: Vec<std::path::PathBuf> =
            walk(store.dir.path()).into_iter().filter(|p| p.ends_with("header.json")).collect();
        assert_eq!(headers.len(), 1, "{headers:?}");
        std::fs::remove_file(&headers[0]).unwrap();
        std::fs::create_dir(&headers[0]).unwrap();
        let kind = |r: Result<(), rbd_wasm::backend::Error>| r.err().map(|e| e.kind()).unwrap_or("ok");
        assert_eq!(kind(img.diff_iterate(0, 4096, Some("s"), true, false, &mut |_| {})), "io", "diff_iterate");
        assert_eq!(kind(img.is_protected_snap("s").map(drop)), "io", "is_protected_snap");
        assert_eq!(kind(img.protect_snap("s")), "io", "protect_snap");
        assert_eq!(kind(img.unprotect_snap("s")), "io", "unprotect_snap");
        assert_eq!(kind(img.remove_snap("t")), "io", "remove_snap");
        assert_eq!(kind(img.rollback_to_snap("s")), "io", "rollback_to_snap");
        assert_eq!(kind(img.write(0, b"x").map(drop)), "io", "write");
        assert_eq!(kind(img.read(0, 10).map(drop)), "io", "read");
    }

    /// librbd's IOError needs a failing cluster; on the embedded store a damaged object file
    /// (a directory where the data should be) is one.
    #[test]
    fn embedded_read_of_a_damaged_object_is_io() {
        let store = embedded_store();
        let image = "t-broken";
        store.backend.create("rbd", image, 1 << 20, &CreateOptions::default()).unwrap();
        let img = store.backend.open("rbd", image, None, false).unwrap();
        img.write(0, &[7u8; 4096]).unwrap();
        drop(img);
        let objects: Vec<std::path::PathBuf> = walk(store.dir.path())
            .into_iter()
            .filter(|p| p.parent().is_some_and(|d| d.ends_with("objects")))
            .collect();
        assert_eq!(objects.len(), 1, "one object file: {objects:?}");
        std::fs::remove_file(&objects[0]).unwrap();
        std::fs::create_dir(&objects[0]).unwrap();
        run("conformance", &["read_of_a_damaged_object_is_io", "t"], store.backend.clone()).assert_ok();
    }

    #[test]
    fn embedded_break_lock_releases_another_clients_lock() {
        let store = embedded_store();
        break_lock_case(store.backend.clone(), store.second_client(), "t");
    }

    #[test]
    fn librbd_break_lock_releases_another_clients_lock() {
        break_lock_case(librbd_backend(), librbd_backend(), &unique_prefix("c"));
    }

    #[test]
    fn embedded_breaking_the_writers_lock_blocklists_it() {
        let store = embedded_store();
        blocklist_case(store.backend.clone(), store.second_client(), "t");
    }

    #[test]
    fn librbd_breaking_the_writers_lock_blocklists_it() {
        blocklist_case(librbd_backend(), librbd_backend(), &unique_prefix("c"));
    }
}

/// Cases that need the host to prepare something first (tested in `with_setup`).
const WITH_SETUP: &[&str] = &[
    "break_lock_releases_another_clients_lock",
    "breaking_the_writers_lock_blocklists_it",
    "operations_outside_the_grant_are_permission_denied",
    "read_of_a_damaged_object_is_io",
    "job_leaves_locks_behind",
    "job_traps_holding_locks",
    "open_handles_until_refused",
    "lock_then_loop_forever",
    "read_until_refused",
];

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Cases that end a job badly on purpose; tests/tests/jobs.rs checks how they are reported.
const JOB_OUTCOME_CASES: &[&str] =
    &["job_error_is_reported", "job_panic_is_a_trap", "job_loops_forever", "job_allocates_without_bound"];

#[test]
fn every_guest_case_has_a_test() {
    let store = embedded_store();
    let listing = run("conformance", &["list-cases"], store.backend.clone());
    listing.assert_ok();
    let untested: Vec<&str> = listing
        .stdout
        .lines()
        .filter(|case| !TESTED.contains(case) && !JOB_OUTCOME_CASES.contains(case) && !WITH_SETUP.contains(case))
        .collect();
    assert!(untested.is_empty(), "guest cases without a host test: {untested:?}");
    let unknown: Vec<&&str> = TESTED.iter().filter(|t| !listing.stdout.lines().any(|l| l == **t)).collect();
    assert!(unknown.is_empty(), "tests for cases the guest does not have: {unknown:?}");
}
