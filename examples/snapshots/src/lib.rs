//! Snapshots and diff-iterate: write, snapshot, change, snapshot again, and report what
//! changed between the two snapshots, checking each reported extent against the data.
//!
//! Arguments: `[POOL [IMAGE]]`, default `rbd snapdemo`. The image is created (16 MiB) if it
//! does not exist; the job fails if the snapshots it makes already exist.

use rbd_wasm_guest::{open_pool, Error};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const MIB: u64 = 1 << 20;

fn run(args: Vec<String>) -> Result<()> {
    let pool_name = args.first().map(String::as_str).unwrap_or("rbd");
    let image_name = args.get(1).map(String::as_str).unwrap_or("snapdemo");
    let pool = open_pool(pool_name)?;
    match pool.create(image_name, 16 * MIB) {
        Ok(()) | Err(Error::Exists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let image = pool.open(image_name)?;

    image.write(0, &[b'a'; 4096])?;
    image.write(9 * MIB, &[b'b'; 4096])?;
    image.create_snap("before")?;

    // Change one object, zero another, and leave the rest alone.
    image.write(9 * MIB + 100, b"changed")?;
    image.discard(0, 4 * MIB)?;
    image.create_snap("after")?;

    println!("snapshots of {pool_name}/{image_name}:");
    for snap in image.list_snaps()? {
        println!("  id {:>3}  {:>10} bytes  {}", snap.id, snap.size, snap.name);
    }

    // What changed from `before` to `after`, read at `after`.
    image.set_snap(Some("after"))?;
    let size = image.size()?;
    let mut changed = 0u64;
    println!("changed extents from `before` to `after`:");
    for extent in image.diff_iterate(0, size, Some("before"))? {
        let extent = extent?;
        println!(
            "  {:>10} +{:<10} {}",
            extent.offset,
            extent.length,
            if extent.exists { "data" } else { "zero" }
        );
        if !extent.exists {
            let data = image.read(extent.offset, extent.length)?;
            if data.iter().any(|&b| b != 0) {
                return Err(format!("extent at {} is reported zero but holds data", extent.offset).into());
            }
        }
        changed += extent.length;
    }
    let head = image.read(9 * MIB + 100, 7)?;
    if head != b"changed" {
        return Err("the `after` snapshot does not hold the change".into());
    }
    image.set_snap(None)?;
    println!("{changed} bytes differ between `before` and `after`");
    Ok(())
}

rbd_wasm_guest::job!(run);
