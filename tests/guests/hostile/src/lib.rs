//! The hostile guest: one case per attack on the sandbox, named after it.
//!
//! Arguments: `ATTACK PREFIX`. The job is granted pool `rbd`, images `PREFIX-job-*`, with
//! every operation but `break-lock`, and nothing else; the host suite made `PREFIX-secret`
//! (with data and a snapshot) in `rbd`, and pool `vault`, which the job must never reach. A
//! case returns `Ok` when every attempt was refused the way it should be (and `Err` saying
//! what got through); the cases that end the job (loops, bombs, forged handles) are judged
//! by the host.

use rbd_wasm_guest::{granted_pools, open_pool, Error, Pool, Range};

type R = Result<(), String>;

struct Ctx {
    prefix: String,
    pool: Pool,
}

impl Ctx {
    fn job(&self, short: &str) -> String {
        format!("{}-job-{short}", self.prefix)
    }
    fn secret(&self) -> String {
        format!("{}-secret", self.prefix)
    }
}

fn refused<T>(r: rbd_wasm_guest::Result<T>, kinds: &[&str], what: &str) -> R {
    match r {
        Err(e) if kinds.contains(&e.kind()) => Ok(()),
        Err(e) => Err(format!("{what}: refused with {e}, expected one of {kinds:?}")),
        Ok(_) => Err(format!("{what}: got through")),
    }
}

/// Names that must reach nothing: refused as missing, unrepresentable (NUL) or too long
/// for RADOS (ENAMETOOLONG, `other`), never served.
fn name_tricks(c: &Ctx, names: &[String]) -> R {
    const REFUSALS: &[&str] = &["not-found", "type-error", "other"];
    for name in names {
        let short: String = name.chars().take(60).collect();
        refused(c.pool.open(name).map(drop), REFUSALS, &format!("open {short:?}"))?;
        refused(c.pool.remove(name), REFUSALS, &format!("remove {short:?}"))?;
        refused(c.pool.open_at_snapshot(name, "s").map(drop), REFUSALS, &format!("open {short:?}@s"))?;
    }
    Ok(())
}

fn open_outside_grant_with_dot_dot(c: &Ctx) -> R {
    let p = &c.prefix;
    name_tricks(c, &[format!("{p}-job-../{p}-secret"), format!("../{p}-secret"), format!("{p}-job-/../../{p}-secret")])
}

fn open_outside_grant_with_slashes(c: &Ctx) -> R {
    let p = &c.prefix;
    name_tricks(c, &[format!("rbd/{p}-secret"), format!("/{p}-secret"), format!("vault/{p}-job-x")])
}

fn open_outside_grant_with_snapshot_suffix(c: &Ctx) -> R {
    let p = &c.prefix;
    name_tricks(c, &[format!("{p}-secret@s"), format!("{p}-job-x@{p}-secret")])
}

fn open_outside_grant_with_nul(c: &Ctx) -> R {
    let p = &c.prefix;
    name_tricks(c, &[format!("{p}-secret\0"), format!("{p}-job-\0{p}-secret"), format!("{p}-secret\0{p}-job-x")])
}

fn open_outside_grant_with_a_huge_name(c: &Ctx) -> R {
    name_tricks(c, &[format!("{}{}", c.job("x"), "y".repeat(1 << 20)), "z".repeat(1 << 20)])
}

fn open_outside_grant_with_unicode_lookalikes(c: &Ctx) -> R {
    let p = &c.prefix;
    // Cyrillic "ѕ" and "е", a fullwidth hyphen, a zero-width joiner.
    name_tricks(c, &[format!("{p}-ѕecret"), format!("{p}-secrеt"), format!("{p}－secret"), format!("{p}-\u{200d}secret")])
}

fn list_other_pools(c: &Ctx) -> R {
    let pools = granted_pools();
    if pools != ["rbd"] {
        return Err(format!("granted pools: {pools:?}"));
    }
    refused(open_pool("vault").map(drop), &["not-found"], "open pool vault")?;
    refused(open_pool("rbd2").map(drop), &["not-found"], "open pool rbd2")?;
    let _ = c;
    Ok(())
}

fn list_images_outside_grant(c: &Ctx) -> R {
    let names = c.pool.list().map_err(|e| e.to_string())?;
    if names.iter().any(|n| !n.starts_with(&format!("{}-job-", c.prefix)) && n.contains(&c.prefix)) {
        return Err(format!("list shows images outside the grant: {names:?}"));
    }
    Ok(())
}

fn write_outside_grant(c: &Ctx) -> R {
    refused(c.pool.open(&c.secret()).map(drop), &["not-found"], "open the secret image")?;
    refused(c.pool.create(&c.secret(), 1 << 20), &["not-found"], "create over the secret image")?;
    refused(c.pool.rename(&c.secret(), &c.job("stolen")), &["not-found"], "rename the secret image into the grant")
}

fn clone_out_of_grant(c: &Ctx) -> R {
    c.pool.create(&c.job("p"), 1 << 20).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("p")).map_err(|e| e.to_string())?;
    img.create_snap("s").map_err(|e| e.to_string())?;
    img.protect_snap("s").map_err(|e| e.to_string())?;
    refused(c.pool.clone_image(&c.job("p"), "s", &c.pool, "escaped-clone"), &["not-found"], "clone out of the grant")?;
    refused(c.pool.clone_image(&c.secret(), "s", &c.pool, &c.job("c")), &["not-found"], "clone the secret image")
}

fn copy_out_of_grant(c: &Ctx) -> R {
    c.pool.create(&c.job("src"), 1 << 20).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("src")).map_err(|e| e.to_string())?;
    refused(img.copy(&c.pool, "escaped-copy"), &["not-found"], "copy out of the grant")
}

fn rename_out_of_grant(c: &Ctx) -> R {
    c.pool.create(&c.job("r"), 1 << 20).map_err(|e| e.to_string())?;
    refused(c.pool.rename(&c.job("r"), "escaped-rename"), &["not-found"], "rename out of the grant")
}

fn break_a_lock_without_the_grant(c: &Ctx) -> R {
    c.pool.create(&c.job("l"), 1 << 20).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("l")).map_err(|e| e.to_string())?;
    refused(img.break_lock("client.1", "x"), &["permission-denied"], "break a lock")
}

fn forge_a_handle(_: &Ctx) -> R {
    use rbd_wasm_guest::bindings::ceph::rbd::rbd::Image;
    // SAFETY: none; this is the attack. The host must trap, not serve another handle.
    let forged = unsafe { Image::from_handle(0x7fff_0000) };
    let r = forged.read(0, 16);
    Err(format!("a forged handle answered {r:?}"))
}

fn reuse_a_dropped_handle(c: &Ctx) -> R {
    use rbd_wasm_guest::bindings::ceph::rbd::{rbd as raw, types::OpenOptions};
    c.pool.create(&c.job("d"), 1 << 20).map_err(|e| e.to_string())?;
    let pool = raw::open_pool("rbd").map_err(|e| format!("{e:?}"))?;
    let image = pool.open(&c.job("d"), &OpenOptions { snapshot: None, read_only: false }).map_err(|e| format!("{e:?}"))?;
    let handle = image.handle();
    drop(image);
    // SAFETY: none; the handle was dropped. The host must trap.
    let stale = unsafe { raw::Image::from_handle(handle) };
    let r = stale.read(0, 16);
    Err(format!("a dropped handle answered {r:?}"))
}

fn loop_forever(_: &Ctx) -> R {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

fn allocate_without_bound(_: &Ctx) -> R {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![7u8; 8 << 20]);
        std::hint::black_box(&hoard);
    }
}

fn overflow_the_stack(_: &Ctx) -> R {
    fn deeper(n: u64, pad: [u8; 256]) -> u64 {
        std::hint::black_box(&pad);
        if std::hint::black_box(n) == u64::MAX {
            return 0;
        }
        deeper(n + 1, std::hint::black_box(pad)).wrapping_add(1)
    }
    Err(format!("returned {}", deeper(0, [1; 256])))
}

fn read_a_huge_length(c: &Ctx) -> R {
    c.pool.create(&c.job("big"), 1 << 30).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("big")).map_err(|e| e.to_string())?;
    refused(img.read(0, u64::MAX), &["invalid-argument"], "read u64::MAX bytes")?;
    let ranges: Vec<Range> = (0..64).map(|i| Range { offset: i << 24, length: 1 << 24 }).collect();
    refused(img.read_ranges(&ranges), &["invalid-argument"], "read 1 GiB in one call")?;
    let many: Vec<Range> = (0..5000).map(|i| Range { offset: i, length: 1 }).collect();
    refused(img.read_ranges(&many), &["invalid-argument"], "5000 ranges in one call")
}

fn overflow_offset_plus_length(c: &Ctx) -> R {
    c.pool.create(&c.job("o"), 1 << 20).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("o")).map_err(|e| e.to_string())?;
    refused(img.read(u64::MAX - 1, 10), &["invalid-argument"], "read at u64::MAX - 1")?;
    refused(img.write(u64::MAX - 1, b"0123456789"), &["invalid-argument"], "write at u64::MAX - 1")?;
    refused(img.discard(u64::MAX - 1, 10), &["invalid-argument"], "discard at u64::MAX - 1")?;
    refused(img.diff_iterate(u64::MAX - 1, 10, None).map(drop), &["invalid-argument"], "diff at u64::MAX - 1")
}

fn write_past_the_end(c: &Ctx) -> R {
    c.pool.create(&c.job("w"), 1 << 20).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("w")).map_err(|e| e.to_string())?;
    refused(img.write((1 << 20) - 2, b"abcd"), &["incomplete-write"], "write across the end")?;
    refused(img.write(1 << 30, b"abcd"), &["invalid-argument"], "write far past the end")?;
    if img.size().map_err(|e| e.to_string())? != 1 << 20 {
        return Err("the image grew".into());
    }
    Ok(())
}

fn make_millions_of_tiny_calls(c: &Ctx) -> R {
    c.pool.create(&c.job("t"), 1 << 20).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("t")).map_err(|e| e.to_string())?;
    for i in 0..2_000_000u64 {
        match img.size() {
            Ok(_) => {}
            Err(Error::QuotaExceeded(_)) => {
                println!("refused after {i} calls");
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("two million calls and no quota".into())
}

fn exhaust_handles(c: &Ctx) -> R {
    c.pool.create(&c.job("h"), 1 << 20).map_err(|e| e.to_string())?;
    let mut held = Vec::new();
    for _ in 0..1_000_000 {
        match c.pool.open(&c.job("h")) {
            Ok(img) => held.push(img),
            Err(Error::QuotaExceeded(_)) => {
                println!("refused after {} handles", held.len());
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("a million handles and no quota".into())
}

fn diff_iterate_over_a_huge_range(c: &Ctx) -> R {
    c.pool.create(&c.job("df"), 1 << 30).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("df")).map_err(|e| e.to_string())?;
    img.write(5 << 20, b"x").map_err(|e| e.to_string())?;
    let n = img.diff_iterate(0, u64::MAX, None).map_err(|e| e.to_string())?.count();
    if n == 0 {
        return Err("no extent".into());
    }
    Ok(())
}

fn lock_and_trap(c: &Ctx) -> R {
    c.pool.create(&c.job("lk"), 1 << 20).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("lk")).map_err(|e| e.to_string())?;
    img.lock_exclusive("mine").map_err(|e| e.to_string())?;
    std::process::abort()
}

fn print_gigabytes(_: &Ctx) -> R {
    let line = "x".repeat(1 << 20);
    for _ in 0..2048 {
        println!("{line}");
    }
    Ok(())
}

fn reach_for_files(_: &Ctx) -> R {
    for path in ["/etc/passwd", "/", ".", "/out/../etc/passwd"] {
        if std::fs::read(path).is_ok() || std::fs::read_dir(path).is_ok() {
            return Err(format!("read {path}"));
        }
    }
    if std::fs::write("/tmp/escaped", b"x").is_ok() {
        return Err("wrote /tmp/escaped".into());
    }
    Ok(())
}

fn reach_for_the_network(_: &Ctx) -> R {
    for addr in ["127.0.0.1:6789", "127.0.0.1:22", "[::1]:80"] {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Err(format!("connected to {addr}"));
        }
    }
    if std::net::UdpSocket::bind("127.0.0.1:0").is_ok() {
        return Err("bound a UDP socket".into());
    }
    Ok(())
}

fn read_the_environment(_: &Ctx) -> R {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    if !vars.is_empty() {
        return Err(format!("environment: {vars:?}"));
    }
    Ok(())
}

const ATTACKS: &[(&str, fn(&Ctx) -> R)] = &[
    ("open_outside_grant_with_dot_dot", open_outside_grant_with_dot_dot),
    ("open_outside_grant_with_slashes", open_outside_grant_with_slashes),
    ("open_outside_grant_with_snapshot_suffix", open_outside_grant_with_snapshot_suffix),
    ("open_outside_grant_with_nul", open_outside_grant_with_nul),
    ("open_outside_grant_with_a_huge_name", open_outside_grant_with_a_huge_name),
    ("open_outside_grant_with_unicode_lookalikes", open_outside_grant_with_unicode_lookalikes),
    ("list_other_pools", list_other_pools),
    ("list_images_outside_grant", list_images_outside_grant),
    ("write_outside_grant", write_outside_grant),
    ("clone_out_of_grant", clone_out_of_grant),
    ("copy_out_of_grant", copy_out_of_grant),
    ("rename_out_of_grant", rename_out_of_grant),
    ("break_a_lock_without_the_grant", break_a_lock_without_the_grant),
    ("forge_a_handle", forge_a_handle),
    ("reuse_a_dropped_handle", reuse_a_dropped_handle),
    ("loop_forever", loop_forever),
    ("allocate_without_bound", allocate_without_bound),
    ("overflow_the_stack", overflow_the_stack),
    ("read_a_huge_length", read_a_huge_length),
    ("overflow_offset_plus_length", overflow_offset_plus_length),
    ("write_past_the_end", write_past_the_end),
    ("make_millions_of_tiny_calls", make_millions_of_tiny_calls),
    ("exhaust_handles", exhaust_handles),
    ("diff_iterate_over_a_huge_range", diff_iterate_over_a_huge_range),
    ("lock_and_trap", lock_and_trap),
    ("print_gigabytes", print_gigabytes),
    ("reach_for_files", reach_for_files),
    ("reach_for_the_network", reach_for_the_network),
    ("read_the_environment", read_the_environment),
];

fn run(args: Vec<String>) -> R {
    let attack = args.first().ok_or("usage: ATTACK PREFIX, or list")?;
    if attack == "list" {
        for (name, _) in ATTACKS {
            println!("{name}");
        }
        return Ok(());
    }
    let prefix = args.get(1).cloned().unwrap_or_else(|| "t".into());
    let f = ATTACKS.iter().find(|(n, _)| n == attack).map(|(_, f)| *f).ok_or_else(|| format!("no attack `{attack}`"))?;
    let pool = open_pool("rbd").map_err(|e| format!("open pool rbd: {e}"))?;
    f(&Ctx { prefix, pool })
}

rbd_wasm_guest::job!(run);
