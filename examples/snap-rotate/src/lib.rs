//! Sanoid-style snapshot rotation: take hourly, daily, weekly, monthly and yearly snapshots
//! named `PREFIX_YYYY-MM-DD_HH:MM:SS_PERIOD` (UTC), and remove the ones past each period's
//! count.
//!
//! Arguments: `POOL [IMAGE...]` (no image: every image of the pool) and the options of
//! [`args::USAGE`]. The defaults are Sanoid's `production` template: 36 hourly, 30 daily,
//! 0 weekly, 3 monthly, 0 yearly, prefix `autosnap`. The rules (buckets, counts, what a
//! count of 0 means, names in the future) are in [`policy`].
//!
//! An expired snapshot that has clones or is protected stays, and is reported. Snapshots of
//! other names are never touched. One line per action:
//!
//! ```text
//! create rbd/vm-1@autosnap_2026-11-25_01:00:00_hourly
//! remove rbd/vm-1@autosnap_2026-11-23_23:00:00_hourly
//! keep rbd/vm-1@autosnap_2025-01-01_00:00:00_daily (has children)
//! keep rbd/vm-1@autosnap_2025-02-01_00:00:00_daily (protected)
//! keep rbd/vm-1@autosnap_2027-01-01_00:00:00_daily (in the future)
//! rbd/vm-1: created 1, removed 1, kept 38 (1 with children, 1 protected, 1 in the future), 2 other snapshots left alone
//! ```
//!
//! Snapshots are taken first and the expired ones removed after, so a new snapshot counts
//! among the ones kept. With `--dry-run` every action line starts with `would ` and nothing
//! changes; the lines are otherwise the ones the real run prints. An image that fails is
//! reported and the others are still rotated; the job then fails.
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2 -p snap-rotate
//! rbd-wasm run target/wasm32-wasip2/release/snap_rotate.wasm -- rbd vm-1 --hourly 24 --weekly 4 --dry-run
//! ```

mod args;
mod policy;

use args::{Command, Options, USAGE};
use policy::{format_rfc3339, Plan, Time};
use rbd_wasm_guest::{open_pool, Error, Image, Pool};

fn run(args: Vec<String>) -> Result<(), String> {
    let options = match args::parse(&args)? {
        Command::Help => {
            println!("{USAGE}");
            return Ok(());
        }
        Command::Rotate(options) => options,
    };
    let now = match options.now {
        Some(t) => t,
        None => clock()?,
    };
    let pool = open_pool(&options.pool).map_err(|e| format!("opening pool {}: {e}", options.pool))?;
    let all = options.images.is_empty();
    let images = if all { pool.list().map_err(|e| format!("listing pool {}: {e}", options.pool))? } else { options.images.clone() };
    println!(
        "rotating {} image(s) of {} at {}{}",
        images.len(),
        options.pool,
        format_rfc3339(now),
        if options.dry_run { " (dry run)" } else { "" }
    );

    let mut failed = Vec::new();
    for name in &images {
        let spec = format!("{}/{name}", options.pool);
        match rotate(&pool, name, &spec, &options, now) {
            Ok(()) => {}
            // Removed since the listing: nothing to rotate.
            Err(Error::NotFound(_)) if all && pool.open_read_only(name).is_err() => println!("{spec}: gone, skipped"),
            Err(e) => {
                eprintln!("{spec}: {e}");
                failed.push(spec);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} of {} image(s) failed: {}", failed.len(), images.len(), failed.join(", ")))
    }
}

fn clock() -> Result<Time, String> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970: give --now".to_string())?;
    Time::try_from(since.as_secs()).map_err(|_| "the clock is out of range: give --now".to_string())
}

/// Why an expired snapshot stays, if it does. `clones` says whether any snapshot of the
/// image has clones (listed at the head), so that an image without any needs no lookup per
/// snapshot.
fn held(image: &Image, snap: &str, clones: bool) -> rbd_wasm_guest::Result<Option<&'static str>> {
    if clones {
        // Clones of one snapshot are listed with it selected. Checked apart from protection:
        // clone format 2 clones unprotected snapshots too.
        image.set_snap(Some(snap))?;
        let children = image.list_children();
        image.set_snap(None)?;
        if !children?.is_empty() {
            return Ok(Some("has children"));
        }
    }
    if image.is_protected_snap(snap)? {
        return Ok(Some("protected"));
    }
    Ok(None)
}

fn rotate(pool: &Pool, name: &str, spec: &str, options: &Options, now: Time) -> rbd_wasm_guest::Result<()> {
    let image = if options.dry_run { pool.open_read_only(name)? } else { pool.open(name)? };
    let existing: Vec<String> = image.list_snaps()?.into_iter().map(|s| s.name).collect();
    let Plan { create, expire, future, foreign, .. } = options.policy.plan(&existing, now);
    let would = if options.dry_run { "would " } else { "" };

    for snap in &create {
        println!("{would}create {spec}@{snap}");
        if !options.dry_run {
            image.create_snap(snap)?;
        }
    }
    let (mut removed, mut with_children, mut protected) = (0, 0, 0);
    let mut failure = None;
    let clones = !expire.is_empty() && !image.list_children()?.is_empty();
    for snap in &expire {
        match held(&image, snap, clones)? {
            Some(why) => {
                println!("{would}keep {spec}@{snap} ({why})");
                if why == "has children" {
                    with_children += 1;
                } else {
                    protected += 1;
                }
            }
            None => {
                println!("{would}remove {spec}@{snap}");
                if options.dry_run {
                    removed += 1;
                } else {
                    // One snapshot that cannot go (a clone in the trash holds it) must not
                    // stop the others from going: report it, go on, and fail at the end.
                    match image.remove_snap(snap) {
                        Ok(()) => removed += 1,
                        Err(e) => {
                            eprintln!("{spec}@{snap}: not removed: {e}");
                            failure.get_or_insert(e);
                        }
                    }
                }
            }
        }
    }
    for snap in &future {
        println!("{would}keep {spec}@{snap} (in the future)");
    }

    let kept = existing.len() - foreign.len() + create.len() - removed;
    let held = format!("{with_children} with children, {protected} protected, {} in the future", future.len());
    let others = foreign.len();
    if options.dry_run {
        println!(
            "{spec}: would create {}, remove {removed}, keep {kept} ({held}), leave {others} other snapshots alone",
            create.len()
        );
    } else {
        println!("{spec}: created {}, removed {removed}, kept {kept} ({held}), {others} other snapshots left alone", create.len());
    }
    failure.map_or(Ok(()), Err)
}

rbd_wasm_guest::job!(run);
