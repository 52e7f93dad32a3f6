//! The job `rbd-wasm serve`'s tests schedule: `POOL PREFIX TICK HOLD_MS`.
//!
//! It marks its tick by creating the image `PREFIX-tTICK` (what the test counts, through
//! the `rbd` CLI), says whether it was there already (a tick taken over from a process
//! killed mid-run finds its own), and then holds on for HOLD_MS, so a test can catch a
//! run in the middle. It opens no image: a process killed with an image open leaves its
//! watch on it for 30 s, which would slow the next run's snapshot (Ceph's business, not
//! the scheduler's, which these tests measure).

use rbd_wasm_guest::{open_pool, Error};

fn run(args: Vec<String>) -> Result<(), String> {
    let [pool, prefix, tick, hold_ms] = args.as_slice() else {
        return Err("usage: POOL PREFIX TICK HOLD_MS".into());
    };
    let hold_ms: u64 = hold_ms.parse().map_err(|e| format!("HOLD_MS: {e}"))?;
    let pool = open_pool(pool).map_err(|e| format!("open pool {pool}: {e}"))?;
    let mark = format!("{prefix}-t{tick}");
    match pool.create(&mark, 1 << 20) {
        Ok(()) => println!("tick {tick}: image {mark} made"),
        Err(Error::Exists(_)) => println!("tick {tick}: image {mark} was there already (taken over)"),
        Err(e) => return Err(format!("create {mark}: {e}")),
    }
    std::thread::sleep(std::time::Duration::from_millis(hold_ms));
    println!("tick {tick}: done");
    Ok(())
}

rbd_wasm_guest::job!(run);
