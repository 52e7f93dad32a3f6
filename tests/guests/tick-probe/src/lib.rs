//! The job `rbd-wasm serve`'s tests schedule: `POOL IMAGE TICK HOLD_MS`.
//!
//! It marks its tick with a snapshot `tick-TICK` of IMAGE (what the test counts, through
//! the `rbd` CLI), says whether the snapshot was there already (a tick taken over from a
//! process killed mid-run finds its own), and then holds on for HOLD_MS, so a test can
//! catch a run in the middle.

use rbd_wasm_guest::{open_pool, Error};

fn run(args: Vec<String>) -> Result<(), String> {
    let [pool, image, tick, hold_ms] = args.as_slice() else {
        return Err("usage: POOL IMAGE TICK HOLD_MS".into());
    };
    let hold_ms: u64 = hold_ms.parse().map_err(|e| format!("HOLD_MS: {e}"))?;
    let image = open_pool(pool).and_then(|p| p.open(image)).map_err(|e| format!("open {pool}/{image}: {e}"))?;
    let snap = format!("tick-{tick}");
    match image.create_snap(&snap) {
        Ok(()) => println!("tick {tick}: snapshot {snap} made"),
        Err(Error::Exists(_)) => println!("tick {tick}: snapshot {snap} was there already (taken over)"),
        Err(e) => return Err(format!("snapshot {snap}: {e}")),
    }
    std::thread::sleep(std::time::Duration::from_millis(hold_ms));
    println!("tick {tick}: done");
    Ok(())
}

rbd_wasm_guest::job!(run);
