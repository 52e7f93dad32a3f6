//! The `snap-rotate` job: Sanoid-style snapshot rotation with the time injected by `--now`.
//!
//! Histories are made directly through the backend, with names spanning years, and what the
//! job must keep is computed here from those names with a calendar of our own (counted day
//! by day, where the job uses closed forms), not from hard-coded lists. Each scenario runs
//! on the embedded store (`embedded::`) and, with a smaller history, on librbd (`librbd::`,
//! which needs `RBD_WASM_CEPH_CONF`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use rbd_wasm::backend::{Backend, CloneOptions, CreateOptions};
use rbd_wasm::runtime::JobError;
use rbd_wasm_tests::{run, JobRun};

const GUEST: &str = "snap-rotate";
const PREFIX: &str = "autosnap";
const PERIODS: [&str; 5] = ["hourly", "daily", "weekly", "monthly", "yearly"];
const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;
/// Small images: a snapshot costs metadata only, and the history is hundreds of them.
const IMAGE_SIZE: u64 = 4 << 20;

// ---- A calendar of our own, the slow and obvious way (Unix time, UTC, years from 1970) ----

fn leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn month_days(y: i64, m: i64) -> i64 {
    [31, if leap(y) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m as usize - 1]
}

/// Unix time of a UTC date and time.
fn unix(y: i64, m: i64, d: i64, hh: i64, mm: i64, ss: i64) -> i64 {
    let mut days = 0;
    for year in 1970..y {
        days += if leap(year) { 366 } else { 365 };
    }
    for month in 1..m {
        days += month_days(y, month);
    }
    (days + d - 1) * DAY + hh * HOUR + mm * 60 + ss
}

/// (year, month, day) of a Unix time.
fn date(t: i64) -> (i64, i64, i64) {
    let mut days = t.div_euclid(DAY);
    let mut y = 1970;
    while days >= if leap(y) { 366 } else { 365 } {
        days -= if leap(y) { 366 } else { 365 };
        y += 1;
    }
    let mut m = 1;
    while days >= month_days(y, m) {
        days -= month_days(y, m);
        m += 1;
    }
    (y, m, days + 1)
}

/// `YYYY-MM-DD_HH:MM:SS`.
fn stamp(t: i64) -> String {
    let (y, m, d) = date(t);
    let s = t.rem_euclid(DAY);
    format!("{y:04}-{m:02}-{d:02}_{:02}:{:02}:{:02}", s / HOUR, s / 60 % 60, s % 60)
}

fn rfc3339(t: i64) -> String {
    stamp(t).replace('_', "T") + "Z"
}

/// The bucket a time falls in for a period: hour, day, week from Monday, month, year.
fn bucket(period: &str, t: i64) -> i64 {
    let (y, m, _) = date(t);
    let day = t.div_euclid(DAY);
    match period {
        "hourly" => t.div_euclid(HOUR),
        "daily" => day,
        // Whole weeks since Monday 1969-12-29.
        "weekly" => (day - unix(1970, 1, 1, 0, 0, 0) / DAY + 3).div_euclid(7),
        "monthly" => y * 12 + m,
        "yearly" => y,
        _ => unreachable!("{period}"),
    }
}

fn name(t: i64, period: &str) -> String {
    format!("{PREFIX}_{}_{period}", stamp(t))
}

/// The time and period of a name the job made.
fn parse(name: &str) -> Option<(i64, &str)> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix('_')?;
    let (stamp, period) = (rest.get(..19)?, rest.get(20..)?);
    let n: Vec<i64> = stamp.split(['-', '_', ':']).map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let t = unix(*n.first()?, *n.get(1)?, *n.get(2)?, *n.get(3)?, *n.get(4)?, *n.get(5)?);
    // Only a name that prints back the same is valid (no February 30th, no month 13).
    (PERIODS.contains(&period) && (1..=12).contains(&n[1]) && self::name(t, period) == name).then_some((t, period))
}

// ---- Policies and what they keep ----

/// Counts per period, in the order of `PERIODS`.
#[derive(Clone, Copy)]
struct Keep([usize; 5]);

impl Keep {
    fn of(&self, period: &str) -> usize {
        self.0[PERIODS.iter().position(|p| *p == period).unwrap()]
    }

    fn args(&self) -> Vec<String> {
        PERIODS.iter().zip(self.0).flat_map(|(p, n)| [format!("--{p}"), n.to_string()]).collect()
    }
}

/// What one run at `now` must do to the snapshots of ours, `ours` (time, period, name), all
/// at or before `now`: (created, kept), kept including the created ones.
fn expected_run(keep: Keep, ours: &[(i64, String, String)], now: i64) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut created = BTreeSet::new();
    let mut kept = BTreeSet::new();
    for period in PERIODS {
        let mut times: Vec<(i64, String)> =
            ours.iter().filter(|(_, p, _)| p == period).map(|(t, _, n)| (*t, n.clone())).collect();
        if keep.of(period) > 0 && !times.iter().any(|(t, _)| bucket(period, *t) == bucket(period, now)) {
            created.insert(name(now, period));
            times.push((now, name(now, period)));
        }
        times.sort();
        kept.extend(times.iter().rev().take(keep.of(period)).map(|(_, n)| n.clone()));
    }
    (created, kept)
}

// ---- Helpers ----

fn snap_names(backend: &dyn Backend, pool: &str, image: &str) -> Vec<String> {
    backend.open(pool, image, None, true).unwrap().list_snaps().unwrap().into_iter().map(|s| s.name).collect()
}

fn rotate(backend: &Arc<dyn Backend>, image: &str, keep: Keep, now: i64, extra: &[&str]) -> JobRun {
    let mut args: Vec<String> = vec!["rbd".into(), image.into(), "--now".into(), rfc3339(now)];
    args.extend(keep.args());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let job = run(GUEST, &args, backend.clone());
    job.assert_ok();
    job
}

/// The action lines of a run (`create`, `remove`, `keep`), without the `would ` of a dry run.
fn actions(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| l.strip_prefix("would ").unwrap_or(l))
        .filter(|l| l.starts_with("create ") || l.starts_with("remove ") || l.starts_with("keep "))
        .map(str::to_owned)
        .collect()
}

/// The snapshot names of the action lines of one kind (`"create"`, `"remove"`, `"keep"`),
/// without the reason a `keep` gives.
fn acted(stdout: &str, spec: &str, verb: &str) -> BTreeSet<String> {
    let head = format!("{verb} {spec}@");
    actions(stdout)
        .iter()
        .filter_map(|l| l.strip_prefix(&head))
        .map(|l| l.split_once(" (").map_or(l, |(name, _)| name).to_owned())
        .collect()
}

/// The numbers of the summary line of `spec`.
fn summary(stdout: &str, spec: &str) -> Vec<u64> {
    let line = stdout.lines().find(|l| l.starts_with(&format!("{spec}: "))).unwrap_or_else(|| panic!("no summary in {stdout}"));
    line[spec.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

fn failure(job: &JobRun) -> String {
    match &job.result {
        Err(JobError::Failed(message)) => message.clone(),
        other => panic!("expected a failed job, got {other:?}\n{}", job.stdout),
    }
}

/// A history of snapshots made through the backend, back from `now`.
struct History {
    /// Ours: (time, period, name), oldest first.
    ours: Vec<(i64, String, String)>,
    /// An expired daily snapshot that is protected.
    protected: String,
    /// An expired weekly snapshot with a clone.
    cloned: String,
    clone: String,
    /// Names that are not ours, some nearly.
    foreign: Vec<String>,
    /// A name of ours after `now`.
    future: String,
}

/// How many snapshots of each period to make, back from `now`: hourly ones in the hours
/// before `now`'s (so an hourly one is due), daily ones from `now`'s day back (none is due),
/// weekly ones on the Mondays before `now`'s week (due), monthly ones on the firsts from
/// `now`'s month back (not due), yearly ones on the January firsts before `now`'s year (due).
fn make_history(backend: &dyn Backend, image: &str, clone: &str, now: i64, counts: [i64; 5]) -> History {
    let [hourly, daily, weekly, monthly, yearly] = counts;
    let today = now.div_euclid(DAY) * DAY;
    // `now`'s week starts on the Monday on or before today.
    let monday = today - ((today / DAY + 3).rem_euclid(7)) * DAY;
    let (y, m, _) = date(now);
    let mut ours: Vec<(i64, String, String)> = Vec::new();
    let mut add = |t: i64, p: &str| ours.push((t, p.to_owned(), name(t, p)));
    for k in 1..=hourly {
        add(now.div_euclid(HOUR) * HOUR - k * HOUR, "hourly");
    }
    for k in 0..daily {
        add(today - k * DAY, "daily");
    }
    for k in 1..=weekly {
        add(monday - k * 7 * DAY, "weekly");
    }
    for k in 0..monthly {
        let months = y * 12 + (m - 1) - k;
        add(unix(months.div_euclid(12), months.rem_euclid(12) + 1, 1, 0, 0, 0), "monthly");
    }
    for k in 1..=yearly {
        add(unix(y - k, 1, 1, 0, 0, 0), "yearly");
    }
    ours.sort();
    let foreign: Vec<String> = [
        "manual-before-upgrade",
        "autosnap",
        "autosnap_2025-13-01_00:00:00_daily",
        "autosnap_2025-02-29_00:00:00_daily",
        "autosnap_2025-06-01_00:00:00_fortnightly",
        "autosnap_2025-06-01_00:00:00_daily.bak",
        "autosnap_2025-06-01T00:00:00_daily",
        "other_2025-06-01_00:00:00_daily",
        "Autosnap_2025-06-01_00:00:00_daily",
    ]
    .map(String::from)
    .into();
    let future = name(unix(y + 1, 1, 1, 0, 0, 0), "daily");

    let img = backend.open("rbd", image, None, false).unwrap();
    // Interleaved in time as a real history would be, foreign names among them.
    for (i, (_, _, n)) in ours.iter().enumerate() {
        img.create_snap(n).unwrap();
        if i % (ours.len() / foreign.len() + 1) == 0 {
            img.create_snap(&foreign[i / (ours.len() / foreign.len() + 1)]).unwrap();
        }
    }
    for f in &foreign {
        if !img.list_snaps().unwrap().iter().any(|s| &s.name == f) {
            img.create_snap(f).unwrap();
        }
    }
    img.create_snap(&future).unwrap();
    let oldest = |p: &str| ours.iter().find(|(_, q, _)| q == p).unwrap().2.clone();
    let (protected, cloned) = (oldest("daily"), oldest("weekly"));
    img.protect_snap(&protected).unwrap();
    img.protect_snap(&cloned).unwrap();
    backend.clone_image("rbd", image, &cloned, "rbd", clone, &CloneOptions::default()).unwrap();
    History { ours, protected, cloned, clone: clone.to_owned(), foreign, future }
}

// ---- Scenarios, each on a backend ----

/// A long history, rotated once at `now`: what stays is what the policy says, protected and
/// cloned snapshots stay and are reported, and other names are not touched. A second run at
/// the same time does nothing.
fn history_is_rotated_as_the_policy_says(backend: Arc<dyn Backend>, image: &str, counts: [i64; 5], keep: Keep) {
    let now = unix(2026, 11, 25, 1, 0, 0);
    backend.create("rbd", image, IMAGE_SIZE, &CreateOptions::default()).unwrap();
    let started = Instant::now();
    let h = make_history(backend.as_ref(), image, &format!("{image}-clone"), now, counts);
    eprintln!("made {} snapshots in {:?}", h.ours.len() + h.foreign.len() + 1, started.elapsed());

    let started = Instant::now();
    let job = rotate(&backend, image, keep, now, &[]);
    eprintln!("rotated in {:?}", started.elapsed());
    let spec = format!("rbd/{image}");

    let (created, kept) = expected_run(keep, &h.ours, now);
    let held: BTreeSet<String> = [h.protected.clone(), h.cloned.clone()].into();
    assert!(!kept.contains(&h.protected) && !kept.contains(&h.cloned), "the held snapshots must be expired ones");
    let expired: BTreeSet<String> =
        h.ours.iter().map(|o| o.2.clone()).filter(|n| !kept.contains(n) && !held.contains(n)).collect();

    let mut expected: BTreeSet<String> = kept.union(&held).cloned().collect();
    expected.extend(h.foreign.iter().cloned());
    expected.insert(h.future.clone());
    let after: BTreeSet<String> = snap_names(backend.as_ref(), "rbd", image).into_iter().collect();
    assert_eq!(after, expected, "kept set\n{}", job.stdout);

    assert_eq!(acted(&job.stdout, &spec, "create"), created, "{}", job.stdout);
    assert_eq!(acted(&job.stdout, &spec, "remove"), expired, "{}", job.stdout);
    let lines = actions(&job.stdout);
    for (snap, why) in [(&h.protected, "protected"), (&h.cloned, "has children"), (&h.future, "in the future")] {
        let line = format!("keep {spec}@{snap} ({why})");
        assert!(lines.contains(&line), "no `{line}` in\n{}", job.stdout);
    }
    assert_eq!(acted(&job.stdout, &spec, "keep").len(), 3, "{}", job.stdout);
    for verb in ["create", "remove", "keep"] {
        let foreign: Vec<&String> = h.foreign.iter().filter(|f| acted(&job.stdout, &spec, verb).contains(*f)).collect();
        assert!(foreign.is_empty(), "{verb} {foreign:?}:\n{}", job.stdout);
    }
    // created, removed, kept, with children, protected, in the future, others.
    let kept_count = (kept.len() + held.len() + 1) as u64;
    assert_eq!(
        summary(&job.stdout, &spec),
        [created.len() as u64, expired.len() as u64, kept_count, 1, 1, 1, h.foreign.len() as u64],
        "{}",
        job.stdout
    );
    // The clone still reads its parent snapshot.
    let parent = backend.open("rbd", &h.clone, None, true).unwrap().parent_info().unwrap().expect("still a clone");
    assert_eq!((parent.image.as_str(), parent.snap.as_str()), (image, h.cloned.as_str()));

    let again = rotate(&backend, image, keep, now, &[]);
    let keeps: Vec<String> = lines.into_iter().filter(|l| l.starts_with("keep ")).collect();
    assert_eq!(actions(&again.stdout), keeps, "a second run at the same time only reports what it keeps");
    assert_eq!(snap_names(backend.as_ref(), "rbd", image).into_iter().collect::<BTreeSet<_>>(), expected);
}

/// Runs at `start`, `start + step`, ... (`runs` of them) on an image without snapshots:
/// after each, every period holds min(keep, buckets seen so far) snapshots, each in its
/// own bucket, and they are the first snapshots of the newest buckets.
fn a_timeline_keeps_one_snapshot_per_bucket(backend: Arc<dyn Backend>, image: &str, start: i64, step: i64, runs: i64, keep: Keep) {
    backend.create("rbd", image, IMAGE_SIZE, &CreateOptions::default()).unwrap();
    // Per period, the buckets seen so far with the time of the first run in each.
    let mut seen: BTreeMap<&str, BTreeMap<i64, i64>> = PERIODS.iter().map(|p| (*p, BTreeMap::new())).collect();
    let started = Instant::now();
    for i in 0..runs {
        let now = start + i * step;
        let job = rotate(&backend, image, keep, now, &[]);
        for period in PERIODS {
            if keep.of(period) > 0 {
                seen.get_mut(period).unwrap().entry(bucket(period, now)).or_insert(now);
            }
        }
        let mut have: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for n in snap_names(backend.as_ref(), "rbd", image) {
            let (t, period) = parse(&n).unwrap_or_else(|| panic!("a name not of ours: {n}"));
            have.entry(*PERIODS.iter().find(|p| **p == period).unwrap()).or_default().push(t);
        }
        for period in PERIODS {
            let mut times = have.remove(period).unwrap_or_default();
            times.sort();
            let buckets: BTreeSet<i64> = times.iter().map(|t| bucket(period, *t)).collect();
            let when = format!("run {i} at {}, {period}", rfc3339(now));
            assert_eq!(times.len(), keep.of(period).min(seen[period].len()), "{when}: count\n{}", job.stdout);
            assert_eq!(buckets.len(), times.len(), "{when}: two snapshots in one bucket: {times:?}");
            let newest: Vec<i64> = seen[period].values().rev().take(keep.of(period)).rev().copied().collect();
            assert_eq!(times, newest, "{when}: not the first snapshots of the newest buckets");
        }
    }
    eprintln!("{runs} runs in {:?}", started.elapsed());
}

/// A dry run changes nothing and prints exactly what the real run then does.
fn a_dry_run_changes_nothing_and_says_what_a_run_does(backend: Arc<dyn Backend>, image: &str, counts: [i64; 5], keep: Keep) {
    let now = unix(2027, 1, 4, 0, 30, 0); // a Monday, the first of a week, in a new year
    backend.create("rbd", image, IMAGE_SIZE, &CreateOptions::default()).unwrap();
    let h = make_history(backend.as_ref(), image, &format!("{image}-clone"), now, counts);
    let before = backend.open("rbd", image, None, true).unwrap().list_snaps().unwrap();

    let dry = rotate(&backend, image, keep, now, &["--dry-run"]);
    assert_eq!(backend.open("rbd", image, None, true).unwrap().list_snaps().unwrap(), before, "the dry run changed snapshots");
    let dry_lines: Vec<&str> = dry.stdout.lines().filter(|l| l.starts_with("would ")).collect();
    assert!(!dry_lines.is_empty() && dry.stdout.lines().all(|l| !l.starts_with("create ") && !l.starts_with("remove ")), "{}", dry.stdout);

    let real = rotate(&backend, image, keep, now, &[]);
    let spec = format!("rbd/{image}");
    assert_eq!(actions(&dry.stdout), actions(&real.stdout), "dry run:\n{}\nreal run:\n{}", dry.stdout, real.stdout);
    assert_eq!(summary(&dry.stdout, &spec), summary(&real.stdout, &spec));
    let (created, _) = expected_run(keep, &h.ours, now);
    assert!(!created.is_empty(), "the scenario should create snapshots");
    assert!(!acted(&real.stdout, &spec, "remove").is_empty(), "the scenario should remove snapshots");
    assert_eq!(acted(&real.stdout, &spec, "create"), created);
}

/// `--no-take` prunes and creates nothing.
fn no_take_only_prunes(backend: Arc<dyn Backend>, image: &str) {
    let now = unix(2026, 11, 25, 1, 0, 0);
    backend.create("rbd", image, IMAGE_SIZE, &CreateOptions::default()).unwrap();
    let h = make_history(backend.as_ref(), image, &format!("{image}-clone"), now, [4, 4, 2, 0, 0]);
    // The oldest weekly is cloned; the other goes.
    let keep = Keep([2, 2, 0, 0, 0]);
    let job = rotate(&backend, image, keep, now, &["--no-take"]);
    let spec = format!("rbd/{image}");
    assert!(acted(&job.stdout, &spec, "create").is_empty(), "{}", job.stdout);
    let ours: BTreeSet<String> =
        snap_names(backend.as_ref(), "rbd", image).into_iter().filter(|n| parse(n).is_some() && *n != h.future).collect();
    let newest = |p: &str| h.ours.iter().rev().filter(|o| o.1 == p).take(2).map(|o| o.2.clone()).collect::<Vec<_>>();
    let mut expected: BTreeSet<String> = newest("hourly").into_iter().chain(newest("daily")).collect();
    expected.extend([h.protected, h.cloned]);
    assert_eq!(ours, expected, "{}", job.stdout);
}

fn cleanup(backend: &dyn Backend, image: &str) {
    let _ = backend.remove("rbd", &format!("{image}-clone"));
    if let Ok(img) = backend.open("rbd", image, None, false) {
        for snap in img.list_snaps().unwrap_or_default() {
            let _ = img.unprotect_snap(&snap.name);
            let _ = img.remove_snap(&snap.name);
        }
    }
    let _ = backend.remove("rbd", image);
}

mod embedded {
    use super::*;
    use rbd_wasm_tests::embedded_store;

    #[test]
    fn two_years_of_history_keep_what_the_policy_says() {
        let store = embedded_store();
        // 72 hourly, 730 daily, 104 weekly, 24 monthly, 2 yearly: 932 of ours.
        history_is_rotated_as_the_policy_says(store.backend.clone(), "vm", [72, 730, 104, 24, 2], Keep([24, 30, 8, 12, 0]));
    }

    #[test]
    fn a_sixty_day_timeline_keeps_one_snapshot_per_bucket() {
        let store = embedded_store();
        // Every 6 hours from a Friday afternoon across two month ends and a new year (whose
        // first days are in the week that started on Monday 2026-12-28).
        let start = unix(2026, 11, 20, 13, 30, 0);
        a_timeline_keeps_one_snapshot_per_bucket(store.backend.clone(), "vm", start, 6 * HOUR, 240, Keep([6, 7, 3, 2, 1]));
    }

    #[test]
    fn a_dry_run_changes_nothing_and_says_what_a_run_does() {
        let store = embedded_store();
        super::a_dry_run_changes_nothing_and_says_what_a_run_does(store.backend.clone(), "vm", [30, 60, 20, 12, 3], Keep([24, 30, 8, 12, 1]));
    }

    #[test]
    fn no_take_only_prunes() {
        let store = embedded_store();
        super::no_take_only_prunes(store.backend.clone(), "vm");
    }

    #[test]
    fn a_protected_snapshot_stays_on_an_image_without_clones() {
        let store = embedded_store();
        store.backend.create("rbd", "vm", IMAGE_SIZE, &CreateOptions::default()).unwrap();
        let img = store.backend.open("rbd", "vm", None, false).unwrap();
        for hour in 20..24 {
            img.create_snap(&name(unix(2026, 11, 24, hour, 0, 0), "hourly")).unwrap();
        }
        img.protect_snap("autosnap_2026-11-24_20:00:00_hourly").unwrap();
        let job = rotate(&(store.backend.clone() as Arc<dyn Backend>), "vm", Keep([1, 0, 0, 0, 0]), unix(2026, 11, 25, 1, 0, 0), &[]);
        assert_eq!(
            actions(&job.stdout),
            [
                "create rbd/vm@autosnap_2026-11-25_01:00:00_hourly",
                "keep rbd/vm@autosnap_2026-11-24_20:00:00_hourly (protected)",
                "remove rbd/vm@autosnap_2026-11-24_21:00:00_hourly",
                "remove rbd/vm@autosnap_2026-11-24_22:00:00_hourly",
                "remove rbd/vm@autosnap_2026-11-24_23:00:00_hourly",
            ]
        );
        assert_eq!(
            snap_names(store.backend.as_ref(), "rbd", "vm"),
            ["autosnap_2026-11-24_20:00:00_hourly", "autosnap_2026-11-25_01:00:00_hourly"]
        );
    }

    #[test]
    fn every_image_of_the_pool_is_rotated_when_none_is_named() {
        let store = embedded_store();
        for image in ["a", "b", "c"] {
            store.backend.create("rbd", image, IMAGE_SIZE, &CreateOptions::default()).unwrap();
        }
        store.backend.create("rbd2", "elsewhere", IMAGE_SIZE, &CreateOptions::default()).unwrap();
        let job = run(GUEST, &["rbd", "--now", "2026-11-25T01:00:00Z", "--hourly", "1", "--daily", "0", "--monthly", "0"], store.backend.clone());
        job.assert_ok();
        assert!(job.stdout.contains("rotating 3 image(s) of rbd at 2026-11-25T01:00:00Z"), "{}", job.stdout);
        for image in ["a", "b", "c"] {
            assert_eq!(snap_names(store.backend.as_ref(), "rbd", image), ["autosnap_2026-11-25_01:00:00_hourly"]);
        }
        assert!(snap_names(store.backend.as_ref(), "rbd2", "elsewhere").is_empty());
    }

    #[test]
    fn a_prefix_of_its_own_leaves_other_prefixes_alone() {
        let store = embedded_store();
        store.backend.create("rbd", "vm", IMAGE_SIZE, &CreateOptions::default()).unwrap();
        let img = store.backend.open("rbd", "vm", None, false).unwrap();
        img.create_snap("autosnap_2020-01-01_00:00:00_hourly").unwrap();
        img.create_snap("nightly_2020-01-01_00:00:00_hourly").unwrap();
        let job = run(GUEST, &["rbd", "vm", "--prefix", "nightly", "--hourly", "1", "--daily", "0", "--monthly", "0", "--now", "1795568400"], store.backend.clone());
        job.assert_ok();
        assert_eq!(snap_names(store.backend.as_ref(), "rbd", "vm"), ["autosnap_2020-01-01_00:00:00_hourly", "nightly_2026-11-25_01:00:00_hourly"]);
    }

    #[test]
    fn without_now_the_clock_names_the_snapshots() {
        let store = embedded_store();
        store.backend.create("rbd", "vm", IMAGE_SIZE, &CreateOptions::default()).unwrap();
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        run(GUEST, &["rbd", "vm", "--daily", "0", "--monthly", "0", "--hourly", "1"], store.backend.clone()).assert_ok();
        let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let names = snap_names(store.backend.as_ref(), "rbd", "vm");
        assert_eq!(names.len(), 1, "{names:?}");
        let (t, period) = parse(&names[0]).unwrap();
        assert_eq!(period, "hourly");
        assert!((before..=after).contains(&t), "{} is not between {before} and {after}", names[0]);
    }

    #[test]
    fn bad_arguments_fail_with_a_usage_message() {
        let store = embedded_store();
        for (args, says) in [
            (&["rbd", "--bogus"][..], "unknown option --bogus"),
            (&["rbd", "--hourly", "x"], "--hourly: `x` is not a count"),
            (&["rbd", "--daily", "-3"], "--daily: `-3` is not a count"),
            (&["rbd", "--weekly"], "--weekly needs a value"),
            (&["rbd", "--now", "yesterday"], "--now: `yesterday` is not a time"),
            (&["rbd", "--now", "2026-02-30T00:00:00Z"], "--now: `2026-02-30T00:00:00Z` is not a time"),
            (&[], "no pool given"),
        ] {
            let job = run(GUEST, args, store.backend.clone());
            let message = failure(&job);
            assert!(message.starts_with(says), "{args:?}: {message}");
            assert!(message.contains("usage: snap-rotate POOL [IMAGE...]"), "{args:?}: {message}");
        }
        assert!(store.backend.list("rbd").unwrap().is_empty());
    }

    #[test]
    fn a_missing_image_fails_the_job_after_rotating_the_others() {
        let store = embedded_store();
        store.backend.create("rbd", "vm", IMAGE_SIZE, &CreateOptions::default()).unwrap();
        let job = run(GUEST, &["rbd", "nope", "vm", "--now", "1795568400"], store.backend.clone());
        let message = failure(&job);
        assert!(message.contains("1 of 2 image(s) failed: rbd/nope"), "{message}");
        assert!(job.stderr.contains("rbd/nope: not-found"), "{}", job.stderr);
        assert_eq!(snap_names(store.backend.as_ref(), "rbd", "vm").len(), 3, "vm was rotated (hourly, daily, monthly)");
        let job = run(GUEST, &["nopool", "vm", "--now", "1795568400"], store.backend.clone());
        assert!(failure(&job).contains("opening pool nopool: not-found"), "{}", failure(&job));
    }
}

mod librbd {
    use super::*;
    use rbd_wasm_tests::{librbd_backend, unique_prefix};

    #[test]
    fn a_history_keeps_what_the_policy_says() {
        let backend: Arc<dyn Backend> = librbd_backend();
        let image = unique_prefix("rot-hist");
        // 6 hourly, 10 daily, 4 weekly, 4 monthly, 1 yearly, 9 foreign, 1 in the future: 35.
        history_is_rotated_as_the_policy_says(backend.clone(), &image, [6, 10, 4, 4, 1], Keep([3, 5, 2, 2, 0]));
        cleanup(backend.as_ref(), &image);
    }

    #[test]
    fn a_timeline_keeps_one_snapshot_per_bucket() {
        let backend: Arc<dyn Backend> = librbd_backend();
        let image = unique_prefix("rot-time");
        // Every 6 hours for 6 days, across a month end.
        let start = unix(2026, 11, 27, 13, 30, 0);
        super::a_timeline_keeps_one_snapshot_per_bucket(backend.clone(), &image, start, 6 * HOUR, 24, Keep([3, 2, 1, 1, 1]));
        cleanup(backend.as_ref(), &image);
    }

    #[test]
    fn a_dry_run_changes_nothing_and_says_what_a_run_does() {
        let backend: Arc<dyn Backend> = librbd_backend();
        let image = unique_prefix("rot-dry");
        super::a_dry_run_changes_nothing_and_says_what_a_run_does(backend.clone(), &image, [4, 6, 3, 3, 2], Keep([2, 3, 1, 2, 1]));
        cleanup(backend.as_ref(), &image);
    }

    #[test]
    fn no_take_only_prunes() {
        let backend: Arc<dyn Backend> = librbd_backend();
        let image = unique_prefix("rot-notake");
        super::no_take_only_prunes(backend.clone(), &image);
        cleanup(backend.as_ref(), &image);
    }
}
