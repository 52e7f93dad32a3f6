//! A tiny job for the benchmarks in `bench/`.
//!
//! - `noop`: returns at once; what instantiating and running a job costs.
//! - `park POOL IMAGE SECS`: opens its own image (creating a 1 MiB one if missing), says
//!   `parked` on stdout, sleeps SECS seconds holding the image open, then reads 4 KiB and
//!   returns: an idle job, for the memory each one costs the host.
//! - `digest POOL IMAGE SNAP`: the image digest of `IMAGE@SNAP`, computed as the restore
//!   job verifies what it restored (`backup_repo::digest::image_chunk_sums`), to tell the
//!   restore's verification from its apply.

use std::time::Duration;

use backup_repo::digest::image_digest;
use rbd_wasm_guest::{open_pool, Error};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "usage: noop | park POOL IMAGE SECS | digest POOL IMAGE SNAP";

fn run(args: Vec<String>) -> Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["noop"] => Ok(()),
        ["park", pool, image, secs] => {
            let secs: u64 = secs.parse().map_err(|_| format!("{secs:?}: not a number of seconds"))?;
            let pool = open_pool(pool)?;
            match pool.create(image, 1 << 20) {
                Ok(()) | Err(Error::Exists(_)) => {}
                Err(e) => return Err(e.into()),
            }
            let image = pool.open(image)?;
            println!("parked");
            std::thread::sleep(Duration::from_secs(secs));
            image.read(0, 4096)?;
            Ok(())
        }
        ["digest", pool, image, snap] => {
            let pool = open_pool(pool)?;
            let image = pool.open_at_snapshot(image, snap)?;
            println!("{}", image_digest(&image)?);
            Ok(())
        }
        _ => Err(USAGE.into()),
    }
}

rbd_wasm_guest::job!(run);
