//! The reference text's own example, as a job: create a 4 GiB image `myimage`, write
//! `'foo' * 200` at offset 0, and close it.
//!
//! ```python
//! rbd_inst = rbd.RBD()
//! size = 4 * 1024**3  # 4 GiB
//! rbd_inst.create(ioctx, 'myimage', size)
//! with rbd.Image(ioctx, 'myimage') as image:
//!     data = 'foo' * 200
//!     image.write(data, 0)
//! ```
//!
//! Arguments: `[POOL [IMAGE]]`, default `rbd myimage`.

use rbd_wasm_guest::{open_pool, Result};

fn run(args: Vec<String>) -> Result<()> {
    let pool_name = args.first().map(String::as_str).unwrap_or("rbd");
    let image_name = args.get(1).map(String::as_str).unwrap_or("myimage");

    let pool = open_pool(pool_name)?;
    let size = 4 * 1024u64.pow(3); // 4 GiB
    pool.create(image_name, size)?;
    {
        let image = pool.open(image_name)?;
        let data = "foo".repeat(200);
        let written = image.write(0, data.as_bytes())?;
        println!("created {pool_name}/{image_name} ({size} bytes) and wrote {written} bytes at offset 0");
    } // dropping the image closes it, as `with rbd.Image(...)` does
    Ok(())
}

rbd_wasm_guest::job!(run);
