//! Read an image from start to end, 4 MiB at a time with several reads in flight, and
//! report the rate: the job behind `bench/bandwidth.sh` (and a template for a job that
//! streams an image).
//!
//! Arguments: `POOL IMAGE [MIB]`. The image is created (MIB MiB, default 256, and filled)
//! if it does not exist.

use std::time::Instant;

use rbd_wasm_guest::{open_pool, report_progress, Error, Range};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const CHUNK: u64 = 4 << 20;

fn run(args: Vec<String>) -> Result<()> {
    let pool_name = args.first().map(String::as_str).unwrap_or("rbd");
    let image_name = args.get(1).map(String::as_str).unwrap_or("throughput");
    let mib: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(256);
    let pool = open_pool(pool_name)?;
    match pool.create(image_name, mib << 20) {
        Ok(()) => {
            let image = pool.open(image_name)?;
            let data = vec![0xa5u8; CHUNK as usize];
            let mut off = 0;
            while off < mib << 20 {
                image.write(off, &data[..CHUNK.min((mib << 20) - off) as usize])?;
                off += CHUNK;
            }
        }
        Err(Error::Exists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let image = pool.open_read_only(image_name)?;
    let size = image.size()?;
    let started = Instant::now();
    let mut done = 0u64;
    while done < size {
        let ranges: Vec<Range> = (0..8)
            .map(|i| done + i * CHUNK)
            .filter(|&o| o < size)
            .map(|o| Range { offset: o, length: CHUNK.min(size - o) })
            .collect();
        for data in image.read_ranges(&ranges)? {
            done += data.len() as u64;
        }
        report_progress("read", done, Some(size));
    }
    let secs = started.elapsed().as_secs_f64();
    println!("read {} MiB in {secs:.3} s: {:.1} MiB/s", done >> 20, (done as f64 / 1048576.0) / secs);
    Ok(())
}

rbd_wasm_guest::job!(run);
