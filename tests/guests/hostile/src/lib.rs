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
    /// Arguments after the prefix (an endpoint to reach, for the network cases).
    extra: Vec<String>,
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

/// Writes 4 GiB to a data stdout (`--stdout-data`) in 1 MiB writes: the host must neither
/// buffer what the reader has not taken nor pass more than `stdout_data_bytes`.
fn flood_a_data_stdout(_: &Ctx) -> R {
    use std::io::Write;
    let mut out = rbd_wasm_guest::data_stdout();
    let block = vec![0x5au8; 1 << 20];
    for i in 0..4096 {
        if let Err(e) = out.write_all(&block) {
            // Not println!: stdout is the refused stream.
            return Err(format!("refused after {i} MiB: {e}"));
        }
    }
    Err("wrote 4 GiB to standard output".into())
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


// ---- The host's own memory and time (the job's host-memory budget, every call charged).

fn hash_in_tiny_chunks(_: &Ctx) -> R {
    use rbd_wasm_guest::bindings::ceph::rbd::job_host;
    let data = vec![7u8; 40 << 20];
    let digests = job_host::sha256_chunks(&data, 1);
    Err(format!("40 MiB hashed in 1-byte chunks: {} bytes of digests", digests.len()))
}

fn hash_more_than_the_host_budget(_: &Ctx) -> R {
    use rbd_wasm_guest::bindings::ceph::rbd::job_host;
    let data = vec![7u8; 200 << 20];
    let digests = job_host::sha256_chunks(&data, 0);
    Err(format!("200 MiB hashed at once: {} bytes", digests.len()))
}

/// Seal and open the largest chunks, many at once, under a host-memory budget of 32 MiB:
/// each call needs more, and is refused; the ids of 100 MiB at once trap (ids has no error).
fn seal_chunks_past_the_host_budget(_: &Ctx) -> R {
    let codec = rbd_wasm_guest::ChunkCodec::new(&[1u8; 32], &[2u8; 32]).map_err(|e| e.to_string())?;
    let chunk = vec![3u8; 16 << 20];
    match codec.seal(&chunk) {
        Err(Error::QuotaExceeded(_)) => {}
        other => return Err(format!("16 MiB sealed under a 32 MiB budget: {:?}", other.map(|s| s.sealed.len()))),
    }
    // A sealed chunk a little larger than the largest plaintext: it and its opened
    // plaintext (up to 16 MiB) would pass the budget.
    match codec.open(&[0u8; 32], &vec![3u8; (16 << 20) + 100]) {
        Err(Error::QuotaExceeded(_)) => {}
        other => return Err(format!("16 MiB opened under a 32 MiB budget: {:?}", other.map(|p| p.len()))),
    }
    let ids = codec.ids(&vec![3u8; 100 << 20], 1 << 20);
    Err(format!("the ids of 100 MiB under a 32 MiB budget: {}", ids.len()))
}

fn check_in_tiny_chunks(_: &Ctx) -> R {
    let check = rbd_wasm_guest::Sha256::chunked(1);
    check.update_data(0, &vec![7u8; 40 << 20]);
    Err(format!("40 MiB checked in 1-byte chunks: {:?}", check.finish()))
}

fn feed_the_check_more_than_the_host_budget(_: &Ctx) -> R {
    let check = rbd_wasm_guest::Sha256::chunked(65536);
    check.update_data(0, &vec![7u8; 200 << 20]);
    Err(format!("200 MiB of stream data handed over at once: {:?}", check.finish()))
}

/// Feed a chunk-keeping hasher 100 MiB of whole 4 KiB chunks (25600 digests) and take
/// none: the host keeps at most 16384 and says so.
fn keep_chunk_sums_and_never_take_them(_: &Ctx) -> R {
    let check = rbd_wasm_guest::Sha256::chunked_keeping_sums(4096);
    let data = vec![7u8; 1 << 20];
    for i in 0..100u64 {
        check.update_data(i << 20, &data);
    }
    refused(check.take_chunk_sums(), &["quota-exceeded"], "take 25600 kept digests")?;
    check.update_data(0, &data[..8192]);
    match check.take_chunk_sums() {
        Ok(sums) if sums.len() == 2 => Ok(()),
        other => Err(format!("after the refusal, two new digests: got {other:?}")),
    }
}

// ---- The network: outbound HTTP only to granted endpoints (tests/tests/hostile.rs,
// "Outbound HTTP"). Each request's outcome is `status N` or the wasi:http error code.

/// GET `scheme://authority/path` through wasi:http; `status N` or the error's name.
fn http_get(scheme: &str, authority: &str, path: &str) -> String {
    use wasip2::http::types::{Fields, Method, OutgoingRequest, Scheme};
    let req = OutgoingRequest::new(Fields::new());
    let scheme = if scheme == "https" { Scheme::Https } else { Scheme::Http };
    if req.set_method(&Method::Get).is_err()
        || req.set_scheme(Some(&scheme)).is_err()
        || req.set_authority(Some(authority)).is_err()
        || req.set_path_with_query(Some(path)).is_err()
    {
        return "bad request".into();
    }
    let pending = match wasip2::http::outgoing_handler::handle(req, None) {
        Ok(p) => p,
        Err(wasip2::http::types::ErrorCode::HttpRequestDenied) => return "HttpRequestDenied".into(),
        Err(e) => return format!("{e:?}"),
    };
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => format!("status {}", response.status()),
        Some(Ok(Err(wasip2::http::types::ErrorCode::HttpRequestDenied))) => "HttpRequestDenied".into(),
        Some(Ok(Err(e))) => format!("{e:?}"),
        other => format!("no response: {other:?}"),
    }
}

/// Every request is denied: `extra` = [authority of a listening server, another one].
fn http_without_a_grant(c: &Ctx) -> R {
    let mut seen = Vec::new();
    for (scheme, authority, path) in [
        ("http", c.extra[0].as_str(), "/"),
        ("http", c.extra[1].as_str(), "/"),
        ("https", "example.com", "/"),
        ("http", "localhost", "/"),
    ] {
        let got = http_get(scheme, authority, path);
        if got != "HttpRequestDenied" {
            seen.push(format!("{scheme}://{authority}{path}: {got}"));
        }
    }
    if seen.is_empty() { Ok(()) } else { Err(format!("reached without a grant: {seen:?}")) }
}

/// Only the granted endpoint answers: `extra` = [the granted authority (an address:port),
/// its granted path prefix, an ungranted port on the same address].
fn http_to_the_granted_endpoint_only(c: &Ctx) -> R {
    let (granted, prefix, other) = (c.extra[0].as_str(), c.extra[1].as_str(), c.extra[2].as_str());
    let reached = http_get("http", granted, prefix);
    if !reached.starts_with("status ") {
        return Err(format!("the granted endpoint {granted}{prefix}: {reached}"));
    }
    let host = granted.rsplit_once(':').map_or(granted, |(h, _)| h);
    let port = granted.rsplit_once(':').map_or("80", |(_, p)| p);
    let mut seen = Vec::new();
    for (scheme, authority, path) in [
        ("http", granted.to_owned(), "/".to_owned()),
        ("http", granted.to_owned(), format!("{prefix}../other")),
        ("http", granted.to_owned(), format!("{}-other/", prefix.trim_end_matches('/'))),
        ("http", format!("{host}:{other}"), prefix.to_owned()),
        ("https", granted.to_owned(), prefix.to_owned()),
        ("http", format!("localhost:{port}"), prefix.to_owned()),
    ] {
        let got = http_get(scheme, &authority, &path);
        if got != "HttpRequestDenied" {
            seen.push(format!("{scheme}://{authority}{path}: {got}"));
        }
    }
    if seen.is_empty() { Ok(()) } else { Err(format!("reached outside the grant: {seen:?}")) }
}

/// A response larger than the job's `http_response_bytes` never reaches it whole: `extra` =
/// [the granted authority, the path of an object larger than the limit].
fn http_response_larger_than_the_limit(c: &Ctx) -> R {
    match http_get("http", &c.extra[0], &c.extra[1]) {
        got if got.contains("HttpResponseBodySize") => Ok(()),
        got => Err(format!("{}{}: {got}", c.extra[0], c.extra[1])),
    }
}

/// A granted name that resolves elsewhere than its granted addresses is denied: `extra` =
/// [the granted `name:port`].
fn http_to_a_name_resolving_elsewhere(c: &Ctx) -> R {
    match http_get("http", &c.extra[0], "/") {
        got if got == "HttpRequestDenied" => Ok(()),
        got => Err(format!("{}: {got}", c.extra[0])),
    }
}

/// A request through wasi:http with an optional body, written in pieces; the response, or
/// the error code's name.
fn http_send(method: &str, authority: &str, path: &str, body: Option<&[u8]>) -> Result<wasip2::http::types::IncomingResponse, String> {
    use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    let req = OutgoingRequest::new(Fields::new());
    let method = if method == "PUT" { Method::Put } else { Method::Get };
    if req.set_method(&method).is_err()
        || req.set_scheme(Some(&Scheme::Http)).is_err()
        || req.set_authority(Some(authority)).is_err()
        || req.set_path_with_query(Some(path)).is_err()
    {
        return Err("bad request".into());
    }
    let out = req.body().map_err(|_| "no body".to_string())?;
    let pending = wasip2::http::outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    if let Some(body) = body {
        let stream = out.write().map_err(|_| "no body stream".to_string())?;
        for piece in body.chunks(4096) {
            if stream.blocking_write_and_flush(piece).is_err() {
                break;
            }
        }
        drop(stream);
    }
    let _ = OutgoingBody::finish(out, None);
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => Ok(response),
        Some(Ok(Err(e))) => Err(format!("{e:?}")),
        other => Err(format!("no response: {other:?}")),
    }
}

/// Read a response's body to its end: the bytes read, or how it failed after how many.
fn read_body(response: wasip2::http::types::IncomingResponse) -> Result<u64, (u64, String)> {
    let body = response.consume().map_err(|_| (0, "no body".to_string()))?;
    let stream = body.stream().map_err(|_| (0, "no body stream".to_string()))?;
    let mut n = 0u64;
    loop {
        match stream.blocking_read(1 << 16) {
            Ok(bytes) => n += bytes.len() as u64,
            Err(wasip2::io::streams::StreamError::Closed) => return Ok(n),
            Err(wasip2::io::streams::StreamError::LastOperationFailed(e)) => {
                let why = wasip2::http::types::http_error_code(&e).map_or_else(|| e.to_debug_string(), |c| format!("{c:?}"));
                return Err((n, why));
            }
        }
    }
}

// ---- Secrets: only the names handed, and their values kept out of what the host writes.

/// No secret was handed to this job: every name is `not-found`, and none is listed.
fn read_secrets_without_a_grant(_: &Ctx) -> R {
    use rbd_wasm_guest::secrets;
    if !secrets::names().is_empty() {
        return Err(format!("names listed without a grant: {:?}", secrets::names()));
    }
    for name in ["s3-secret-key", "", "../../etc/shadow", "/etc/ceph/ceph.client.admin.keyring", "*", &"k".repeat(1 << 20)] {
        match secrets::get(name) {
            Err(Error::NotFound(_)) => {}
            other => return Err(format!("secret {:?}: {other:?}", name.chars().take(40).collect::<String>())),
        }
    }
    Ok(())
}

/// A job handed secret `repo-key` tries to leak it through everything the host writes for
/// it: stdout, stderr, a progress label, an audited image name, and its error. A name it
/// was not handed answers `not-found`.
fn leak_a_secret(c: &Ctx) -> R {
    use rbd_wasm_guest::secrets;
    if secrets::names() != ["repo-key"] {
        return Err(format!("names: {:?}", secrets::names()));
    }
    if !matches!(secrets::get("other-key"), Err(Error::NotFound(_))) {
        return Err("a name not handed was answered".into());
    }
    let key = secrets::get_text("repo-key").map_err(|e| e.to_string())?;
    println!("the key is {key}");
    eprintln!("the key, again: {key}\x1b[2J");
    rbd_wasm_guest::report_progress(&format!("uploading with {key}"), 1, Some(2));
    let _ = c.pool.remove(&c.job(&key));
    Err(format!("failed with key {key}"))
}

/// https to a granted name: `extra` = [its authority, how the request must end (`status `
/// when the grant trusts the server's CA, a TLS error's name when it does not), found in
/// what the request gave].
fn https_checked_against_the_granted_name(c: &Ctx) -> R {
    match http_get("https", &c.extra[0], "/") {
        got if got.contains(c.extra[1].as_str()) => Ok(()),
        got => Err(format!("https://{}/: {got}, expected {}", c.extra[0], c.extra[1])),
    }
}

/// A redirect is not followed to another endpoint: the job sees the 3xx, and its own
/// request to the new location is checked like any other. `extra` = [the granted
/// authority (a rogue server), an ungranted authority the server redirects to].
fn http_redirect_elsewhere(c: &Ctx) -> R {
    let (granted, elsewhere) = (&c.extra[0], &c.extra[1]);
    let response = http_send("GET", granted, &format!("/redirect?to=http://{elsewhere}/"), None)?;
    if response.status() != 302 {
        return Err(format!("expected the 302 itself, got status {}", response.status()));
    }
    let location = response.headers().get("location");
    let location = location.first().map(|l| String::from_utf8_lossy(l).into_owned()).unwrap_or_default();
    let authority = location.trim_start_matches("http://").split('/').next().unwrap_or("").to_owned();
    match http_get("http", &authority, "/") {
        got if got == "HttpRequestDenied" => Ok(()),
        got => Err(format!("followed the redirect to {location}: {got}")),
    }
}

/// A response that trickles a byte at a time, forever: the job reads it until the deadline
/// ends the job (and the host the connection). `extra` = [the rogue server].
fn http_slow_response(c: &Ctx) -> R {
    let response = http_send("GET", &c.extra[0], "/slow", None)?;
    match read_body(response) {
        Ok(n) => Err(format!("an endless response ended after {n} bytes")),
        Err((n, why)) => Err(format!("the slow response failed after {n} bytes: {why}")),
    }
}

/// A response without a length that never ends, sent as fast as the server can: cut at
/// the job's `http_response_bytes`. `extra` = [the rogue server].
fn http_endless_response(c: &Ctx) -> R {
    let response = http_send("GET", &c.extra[0], "/endless", None)?;
    match read_body(response) {
        Err((n, why)) if why.contains("HttpResponseBodySize") || why.contains("body size exceeds limit") => {
            println!("cut after {n} bytes");
            Ok(())
        }
        other => Err(format!("an endless response: {other:?}")),
    }
}

/// A server that accepts and never answers: the request fails after the host's idle limit.
/// `extra` = [the rogue server].
fn http_no_answer(c: &Ctx) -> R {
    match http_send("GET", &c.extra[0], "/hang", None) {
        Err(why) if why.contains("Timeout") => Ok(()),
        Err(why) => Err(format!("expected a timeout, got {why}")),
        Ok(r) => Err(format!("a server that never answers answered {}", r.status())),
    }
}

/// Many requests open at once, none answered: past the job's `http_connections` they are
/// refused. `extra` = [the rogue server].
fn http_many_connections(c: &Ctx) -> R {
    let mut pending = Vec::new();
    for _ in 0..200 {
        let req = wasip2::http::types::OutgoingRequest::new(wasip2::http::types::Fields::new());
        let _ = req.set_authority(Some(&c.extra[0]));
        let _ = req.set_path_with_query(Some("/hang"));
        let _ = req.set_scheme(Some(&wasip2::http::types::Scheme::Http));
        match wasip2::http::outgoing_handler::handle(req, None) {
            Ok(p) => pending.push(p),
            Err(e) => return Err(format!("refused before sending: {e:?}")),
        }
    }
    let mut refused = 0;
    for p in &pending {
        p.subscribe().block();
        match p.get() {
            Some(Ok(Err(wasip2::http::types::ErrorCode::ConnectionLimitReached))) => refused += 1,
            Some(Ok(Err(_))) => {}
            other => return Err(format!("a request that is never answered: {other:?}")),
        }
    }
    println!("{refused} of 200 refused at the connection limit");
    if refused >= 150 { Ok(()) } else { Err(format!("only {refused} of 200 refused")) }
}

/// Requests in a loop, with no end: the deadline stops them, and none leaves the host
/// after it. `extra` = [the rogue server].
fn http_after_the_deadline(c: &Ctx) -> R {
    loop {
        if let Ok(r) = http_send("GET", &c.extra[0], "/ping", None) {
            let _ = read_body(r);
        }
    }
}

/// An upload that announces a body and never sends it: the host gives up after its idle
/// limit. `extra` = [the rogue server].
fn http_upload_that_never_sends(c: &Ctx) -> R {
    use wasip2::http::types::{Fields, Method, OutgoingRequest, Scheme};
    let fields = Fields::from_list(&[("content-length".to_string(), b"1048576".to_vec())]).map_err(|e| format!("{e:?}"))?;
    let req = OutgoingRequest::new(fields);
    let _ = req.set_method(&Method::Put);
    let _ = req.set_scheme(Some(&Scheme::Http));
    let _ = req.set_authority(Some(&c.extra[0]));
    let _ = req.set_path_with_query(Some("/sink"));
    let body = req.body().map_err(|_| "no body".to_string())?;
    let pending = wasip2::http::outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let got = pending.get();
    drop(body);
    match got {
        Some(Ok(Err(e))) if format!("{e:?}").contains("Timeout") => Ok(()),
        other => Err(format!("an upload that never sent its body: {other:?}")),
    }
}

/// An upload larger than the job's network quota: refused once the quota is used.
/// `extra` = [the rogue server].
fn http_upload_past_the_network_quota(c: &Ctx) -> R {
    match http_send("PUT", &c.extra[0], "/sink", Some(&vec![5u8; 8 << 20])) {
        Err(why) => {
            println!("refused: {why}");
            Ok(())
        }
        Ok(r) => Err(format!("an 8 MiB upload past a 1 MiB quota answered {}", r.status())),
    }
}

fn start_reads_and_never_wait(c: &Ctx) -> R {
    c.pool.create(&c.job("ra"), 1 << 30).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("ra")).map_err(|e| e.to_string())?;
    img.write(0, &vec![1u8; 1 << 20]).map_err(|e| e.to_string())?;
    let mut held = Vec::new();
    for i in 0..30u64 {
        let ranges = [Range { offset: (i % 16) << 26, length: 64 << 20 }];
        match img.start_reads(&ranges, Some(65536)) {
            Ok(reads) => held.push(reads),
            Err(Error::QuotaExceeded(_)) => {
                println!("refused after {} reads of 64 MiB in flight", held.len());
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("30 reads of 64 MiB in flight and no limit".into())
}

fn drop_reads_past_the_read_quota(c: &Ctx) -> R {
    c.pool.create(&c.job("rq"), 1 << 30).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("rq")).map_err(|e| e.to_string())?;
    for i in 0..200u64 {
        match img.start_reads(&[Range { offset: (i % 100) << 23, length: 8 << 20 }], None) {
            Ok(reads) => drop(reads),
            Err(Error::QuotaExceeded(_)) => {
                println!("refused after {i} dropped reads of 8 MiB");
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("200 dropped reads of 8 MiB and no quota".into())
}

fn read_ahead_then_return(c: &Ctx) -> R {
    c.pool.create(&c.job("rr"), 1 << 30).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("rr")).map_err(|e| e.to_string())?;
    let reads = img.start_reads(&[Range { offset: 0, length: 64 << 20 }], None).map_err(|e| e.to_string())?;
    std::mem::forget(reads);
    Ok(())
}

fn read_after_the_image_grew_under_reads_in_flight(c: &Ctx) -> R {
    // A 1 MiB snapshot of an image that then grew to 1 GiB: reads measured against the
    // snapshot must not be served from the grown head when they run.
    let name = c.job("gr");
    c.pool.create(&name, 1 << 20).map_err(|e| e.to_string())?;
    let img = c.pool.open(&name).map_err(|e| e.to_string())?;
    img.create_snap("small").map_err(|e| e.to_string())?;
    img.resize(1 << 30).map_err(|e| e.to_string())?;
    img.write(0, &vec![1u8; 8 << 20]).map_err(|e| e.to_string())?;
    img.set_snap(Some("small")).map_err(|e| e.to_string())?;
    let ranges: Vec<Range> = (0..60).map(|_| Range { offset: 0, length: 1 << 40 }).collect();
    let reads = img.start_reads(&ranges, None).map_err(|e| e.to_string())?;
    img.set_snap(None).map_err(|e| e.to_string())?;
    let results = reads.wait().map_err(|e| e.to_string())?;
    if let Some(r) = results.iter().find(|r| r.data.len() > 1 << 20) {
        return Err(format!("a read measured at 1 MiB returned {} bytes", r.data.len()));
    }
    Ok(())
}

fn make_hashers_without_bound(_: &Ctx) -> R {
    let mut held = Vec::new();
    for _ in 0..1_000_000 {
        held.push(rbd_wasm_guest::Sha256::new());
    }
    Err("a million hashers".into())
}

fn call_the_hasher_past_the_operation_quota(_: &Ctx) -> R {
    let h = rbd_wasm_guest::Sha256::new();
    for _ in 0..10_000_000u64 {
        h.update(b"x");
    }
    Err("ten million uncharged hash calls".into())
}

fn report_progress_past_the_operation_quota(_: &Ctx) -> R {
    for i in 0..10_000_000u64 {
        rbd_wasm_guest::report_progress("spin", i, None);
    }
    Err("ten million uncharged progress reports".into())
}

fn report_progress_with_huge_and_many_labels(_: &Ctx) -> R {
    let long = "L".repeat(1 << 20);
    for i in 0..1000u64 {
        rbd_wasm_guest::report_progress(&format!("{i}{long}\x1b[2J"), i, Some(1000));
    }
    Ok(())
}

fn list_in_a_loop(c: &Ctx) -> R {
    for i in 0..10_000_000u64 {
        match c.pool.list() {
            Ok(_) => {}
            Err(Error::QuotaExceeded(_)) => {
                println!("refused after {i} listings");
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("ten million uncharged listings".into())
}

fn call_next_batch_past_the_end(c: &Ctx) -> R {
    use rbd_wasm_guest::bindings::ceph::rbd::{rbd as raw, types};
    c.pool.create(&c.job("nb"), 1 << 20).map_err(|e| e.to_string())?;
    let pool = raw::open_pool("rbd").map_err(|e| format!("{e:?}"))?;
    let img = pool.open(&c.job("nb"), &types::OpenOptions { snapshot: None, read_only: true }).map_err(|e| format!("{e:?}"))?;
    let it = img.diff_iterate(0, 1 << 20, None, false, false).map_err(|e| format!("{e:?}"))?;
    for i in 0..10_000_000u64 {
        match it.next_batch() {
            Ok(_) => {}
            Err(types::Error::QuotaExceeded(_)) => {
                println!("refused after {i} batches");
                return Ok(());
            }
            Err(e) => return Err(format!("{e:?}")),
        }
    }
    Err("ten million uncharged batches".into())
}

fn make_diff_iterators_without_bound(c: &Ctx) -> R {
    c.pool.create(&c.job("di"), 1 << 20).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("di")).map_err(|e| e.to_string())?;
    let mut held = Vec::new();
    for _ in 0..1_000_000 {
        match img.diff_iterate(0, 1 << 20, None) {
            Ok(it) => held.push(it),
            Err(Error::QuotaExceeded(_)) => {
                println!("refused after {} iterators", held.len());
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("a million diff iterators".into())
}

fn write_more_than_the_host_budget_at_once(c: &Ctx) -> R {
    c.pool.create(&c.job("wb"), 1 << 30).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("wb")).map_err(|e| e.to_string())?;
    // Over the 32 MiB host-memory budget the host suite sets for this attack.
    let writes: Vec<(u64, Vec<u8>)> = (0..4u64).map(|i| (i << 25, vec![3u8; 16 << 20])).collect();
    refused(img.write_ranges(writes), &["quota-exceeded"], "write 64 MiB in one call")
}

fn copy_past_the_read_quota(c: &Ctx) -> R {
    c.pool.create(&c.job("cp"), 1 << 30).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("cp")).map_err(|e| e.to_string())?;
    refused(img.copy(&c.pool, &c.job("cp2")), &["quota-exceeded"], "copy 1 GiB under a 16 MiB read quota")
}

fn outwait_the_deadline_in_the_host(c: &Ctx) -> R {
    c.pool.create(&c.job("dl"), 1 << 30).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("dl")).map_err(|e| e.to_string())?;
    // Under a 1 MiB/s cap, each of these waits a minute in the host, not in the guest.
    for i in 0..100u64 {
        img.read(i << 26, 64 << 20).map_err(|e| e.to_string())?;
    }
    Err("read 6 GiB at 1 MiB/s within the deadline".into())
}

// ---- The output directory.

fn fill_the_output_directory(_: &Ctx) -> R {
    use std::io::Write;
    let mut f = std::fs::File::create("/out/fill").map_err(|e| e.to_string())?;
    let block = vec![9u8; 1 << 20];
    for i in 0..1024 {
        if let Err(e) = f.write_all(&block) {
            println!("refused after {i} MiB: {e}");
            return Ok(());
        }
    }
    Err("wrote 1 GiB to the output directory".into())
}

fn grow_a_file_sparsely(_: &Ctx) -> R {
    let f = std::fs::File::create("/out/sparse").map_err(|e| e.to_string())?;
    if f.set_len(1 << 40).is_ok() {
        return Err("grew a file to 1 TiB".into());
    }
    Ok(())
}

fn create_files_without_bound(_: &Ctx) -> R {
    for i in 0..1_000_000 {
        if let Err(e) = std::fs::write(format!("/out/f{i}"), b"x") {
            println!("refused after {i} files: {e}");
            return Ok(());
        }
    }
    Err("a million files".into())
}

fn open_files_without_bound(_: &Ctx) -> R {
    std::fs::write("/out/o", b"x").map_err(|e| e.to_string())?;
    let mut held = Vec::new();
    for _ in 0..1_000_000 {
        match std::fs::File::open("/out/o") {
            Ok(f) => held.push(f),
            Err(e) => {
                println!("refused after {} open files: {e}", held.len());
                return Ok(());
            }
        }
    }
    Err("a million open files".into())
}

fn plant_symlinks(_: &Ctx) -> R {
    for (target, link) in [("../../../../../../etc/passwd", "/out/passwd-link"), ("..", "/out/up"), ("/etc", "/out/etc")] {
        #[allow(deprecated)]
        let made = std::fs::soft_link(target, link);
        if made.is_ok() {
            return Err(format!("made {link} -> {target}"));
        }
    }
    Ok(())
}

fn plant_a_hard_link(_: &Ctx) -> R {
    std::fs::write("/out/a", b"x").map_err(|e| e.to_string())?;
    if std::fs::hard_link("/out/a", "/out/b").is_ok() {
        return Err("made a hard link".into());
    }
    Ok(())
}

fn write_to_a_read_only_output_directory(_: &Ctx) -> R {
    if std::fs::write("/out/new", b"x").is_ok() {
        return Err("wrote to a read-only output directory".into());
    }
    if std::fs::create_dir("/out/d").is_ok() {
        return Err("made a directory in a read-only output directory".into());
    }
    if std::fs::read_dir("/out").is_err() {
        return Err("cannot even read it".into());
    }
    Ok(())
}

fn grow_a_file_by_writing_past_its_end(_: &Ctx) -> R {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::File::create("/out/holey").map_err(|e| e.to_string())?;
    f.seek(SeekFrom::Start(1 << 40)).map_err(|e| e.to_string())?;
    if f.write_all(b"x").and_then(|()| f.flush()).is_ok() && f.metadata().map(|m| m.len()).unwrap_or(0) > 1 << 30 {
        return Err("grew a file to 1 TiB with one byte".into());
    }
    Ok(())
}

// ---- The data plane: bytes the host moves on the job's behalf.

/// Start reads of `length` bytes at `offset` and have the host write them to `out`.
fn move_to(img: &rbd_wasm_guest::Image, out: &rbd_wasm_guest::OutputFile, offset: u64, length: u64) -> rbd_wasm_guest::Result<Vec<Vec<u8>>> {
    let range = Range { offset, length };
    img.start_reads(&[range], Some(65536))?.write_to(out, &[rbd_wasm_guest::Piece::Read(range)], None)
}

fn move_bytes_past_the_output_quota(c: &Ctx) -> R {
    c.pool.create(&c.job("dq"), 1 << 30).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("dq")).map_err(|e| e.to_string())?;
    let out = rbd_wasm_guest::OutputFile::create("/out/moved").map_err(|e| e.to_string())?;
    // 1 GiB through the host into a directory with a 64 MiB quota.
    for i in 0..32u64 {
        match move_to(&img, &out, i << 25, 32 << 20) {
            Ok(_) => {}
            Err(Error::QuotaExceeded(m)) => {
                println!("refused after {i} x 32 MiB: {m}");
                return Ok(());
            }
            Err(e) => return Err(format!("refused with {e}, expected quota-exceeded")),
        }
    }
    Err("the host wrote 1 GiB into a 64 MiB output directory".into())
}

fn move_bytes_past_the_read_quota(c: &Ctx) -> R {
    c.pool.create(&c.job("rq"), 1 << 30).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("rq")).map_err(|e| e.to_string())?;
    let out = rbd_wasm_guest::OutputFile::create("/out/moved").map_err(|e| e.to_string())?;
    // 8 MiB at a time under a 16 MiB read quota: two moves, then the reads are refused.
    for i in 0..8u64 {
        match move_to(&img, &out, i << 23, 8 << 20) {
            Ok(_) => {}
            Err(Error::QuotaExceeded(_)) if i == 2 => return Ok(()),
            Err(e) => return Err(format!("move {i}: {e}")),
        }
    }
    Err("the host moved 64 MiB under a 16 MiB read quota".into())
}

fn move_pieces_the_reads_do_not_hold(c: &Ctx) -> R {
    c.pool.create(&c.job("pc"), 1 << 30).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("pc")).map_err(|e| e.to_string())?;
    let out = rbd_wasm_guest::OutputFile::create("/out/pieces").map_err(|e| e.to_string())?;
    use rbd_wasm_guest::Piece;
    let whole = Range { offset: 4096, length: 65536 };
    let cases: [(&str, Vec<Piece>); 5] = [
        ("the read written twice", vec![Piece::Read(whole), Piece::Read(whole)]),
        ("past the read", vec![Piece::Bytes(b"header".to_vec()), Piece::Read(Range { offset: 4096, length: 65537 })]),
        ("before the read", vec![Piece::Read(Range { offset: 0, length: 10 })]),
        ("overflowing", vec![Piece::Read(Range { offset: u64::MAX, length: 2 })]),
        ("too many", vec![Piece::Bytes(vec![1]); 70_000]),
    ];
    for (what, pieces) in cases {
        let reads = img.start_reads(&[Range { offset: 4096, length: 65536 }], None).map_err(|e| e.to_string())?;
        refused(reads.write_to(&out, &pieces, None), &["invalid-argument"], what)?;
    }
    if std::fs::metadata("/out/pieces").map_err(|e| e.to_string())?.len() != 0 {
        return Err("a refused call wrote bytes".into());
    }
    Ok(())
}

fn write_from_past_the_host_budget_and_the_grant(c: &Ctx) -> R {
    use rbd_wasm_guest::{InputFile, StreamWrite};
    std::fs::write("/out/source", vec![5u8; 1 << 20]).map_err(|e| e.to_string())?;
    c.pool.create(&c.job("wf"), 1 << 30).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("wf")).map_err(|e| e.to_string())?;
    let source = InputFile::open("/out/source").map_err(|e| e.to_string())?;
    // Declared lengths over the 32 MiB host-memory budget: refused before a byte is read.
    let huge: Vec<StreamWrite> = (0..4u64).map(|i| StreamWrite { skip: 0, offset: i << 25, length: 16 << 20 }).collect();
    refused(img.write_from(&source, &huge, None), &["quota-exceeded"], "write-from declaring 64 MiB")?;
    // A stream that ends before the writes' bytes.
    let short = [StreamWrite { skip: 0, offset: 0, length: 2 << 20 }];
    let hash = rbd_wasm_guest::Sha256::new();
    refused(img.write_from(&source, &short, Some(&hash)), &["io"], "write-from past the stream's end")?;
    // Overlapping writes, and a handle opened read-only.
    let far = [StreamWrite { skip: 1 << 40, offset: 0, length: 10 }];
    refused(img.write_from(&source, &far, Some(&rbd_wasm_guest::Sha256::new())), &["invalid-argument"], "write-from skipping 1 TiB")?;
    let overlap = [StreamWrite { skip: 0, offset: 0, length: 10 }, StreamWrite { skip: 0, offset: 5, length: 10 }];
    refused(img.write_from(&InputFile::open("/out/source").map_err(|e| e.to_string())?, &overlap, None), &["invalid-argument"], "overlapping writes")?;
    let ro = c.pool.open_read_only(&c.job("wf")).map_err(|e| e.to_string())?;
    let one = [StreamWrite { skip: 0, offset: 0, length: 10 }];
    refused(ro.write_from(&InputFile::open("/out/source").map_err(|e| e.to_string())?, &one, None), &["read-only", "permission-denied"], "write-from on a read-only handle")
}

fn write_from_past_the_write_quota(c: &Ctx) -> R {
    use rbd_wasm_guest::{InputFile, StreamWrite};
    std::fs::write("/out/source", vec![5u8; 8 << 20]).map_err(|e| e.to_string())?;
    c.pool.create(&c.job("wq"), 1 << 30).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("wq")).map_err(|e| e.to_string())?;
    // 8 MiB at a time under a 16 MiB write quota.
    for i in 0..8u64 {
        let source = InputFile::open("/out/source").map_err(|e| e.to_string())?;
        match img.write_from(&source, &[StreamWrite { skip: 0, offset: i << 23, length: 8 << 20 }], None) {
            Ok(n) if n == 8 << 20 => {}
            Ok(n) => return Err(format!("write-from wrote {n} bytes")),
            Err(Error::QuotaExceeded(_)) if i == 2 => return Ok(()),
            Err(e) => return Err(format!("write {i}: {e}")),
        }
    }
    Err("the host wrote 64 MiB under a 16 MiB write quota".into())
}

fn write_from_past_the_deadline(c: &Ctx) -> R {
    use rbd_wasm_guest::{InputFile, StreamWrite};
    std::fs::write("/out/source", vec![5u8; 32 << 20]).map_err(|e| e.to_string())?;
    c.pool.create(&c.job("wd"), 1 << 30).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("wd")).map_err(|e| e.to_string())?;
    // Under a 1 MiB/s cap, each call waits half a minute in the host.
    for i in 0..32u64 {
        let source = InputFile::open("/out/source").map_err(|e| e.to_string())?;
        img.write_from(&source, &[StreamWrite { skip: 0, offset: i << 25, length: 32 << 20 }], None).map_err(|e| e.to_string())?;
    }
    Err("wrote 1 GiB at 1 MiB/s within the deadline".into())
}

fn read_ahead_in_many_files(_: &Ctx) -> R {
    use wasip2::filesystem::preopens;
    use wasip2::filesystem::types::{DescriptorFlags, OpenFlags, PathFlags};
    std::fs::write("/out/big", vec![3u8; 8 << 20]).map_err(|e| e.to_string())?;
    let (dir, _) = preopens::get_directories().into_iter().find(|(_, name)| name == "/out").ok_or("no /out")?;
    // Each stream's non-blocking read starts a read of up to 4 MiB in the host and returns
    // at once: as many as the handle quota allows, none of them ever consumed.
    let mut held = Vec::new();
    for i in 0..1000 {
        let file = match dir.open_at(PathFlags::empty(), "big", OpenFlags::empty(), DescriptorFlags::READ) {
            Ok(f) => f,
            Err(e) => {
                println!("refused after {i} files: {e}");
                return Ok(());
            }
        };
        let stream = match file.read_via_stream(0) {
            Ok(s) => s,
            Err(e) => {
                println!("refused after {i} streams: {e}");
                return Ok(());
            }
        };
        let _ = stream.read(4 << 20);
        held.push((stream, file));
    }
    Err("a thousand reads ahead".into())
}

fn hash_a_file_over_and_over(_: &Ctx) -> R {
    std::fs::write("/out/h", vec![1u8; 16 << 20]).map_err(|e| e.to_string())?;
    let hash = rbd_wasm_guest::Sha256::new();
    // 16 MiB hashed by the host for each operation: the deadline ends it.
    for _ in 0..1_000_000 {
        let file = rbd_wasm_guest::InputFile::open("/out/h").map_err(|e| e.to_string())?;
        match hash.update_from(&file) {
            Ok(_) => {}
            Err(Error::QuotaExceeded(_)) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("hashed 16 TiB".into())
}

// ---- What reaches the operator.

fn forge_another_jobs_line(_: &Ctx) -> R {
    println!("\r\x1b[2K[bystander] backup ok");
    println!("\x1b]52;c;cm0gLXJmIH4K\x07clipboard");
    eprintln!("\x1b]0;window title\x07\u{202e}reversed");
    print!("\u{9b}2J no newline at the end");
    Ok(())
}

fn fail_with_a_huge_message(_: &Ctx) -> R {
    Err(format!("\x1b[2J{}", "m".repeat(64 << 20)))
}

fn print_a_huge_line(_: &Ctx) -> R {
    use std::io::Write;
    let block = vec![b'y'; 1 << 20];
    let mut out = std::io::stdout();
    for _ in 0..256 {
        let _ = out.write_all(&block);
    }
    Ok(())
}

// ---- Grants and locks.

fn unlock_another_jobs_lock(c: &Ctx) -> R {
    // The host suite locked PREFIX-job-held with cookie `bystander` through the same client
    // this job uses (as another job of the same host would).
    let img = c.pool.open(&c.job("held")).map_err(|e| e.to_string())?;
    refused(img.unlock("bystander"), &["not-found"], "unlock another job's lock")?;
    let lockers = img.list_lockers().map_err(|e| e.to_string())?;
    if lockers.lockers.is_empty() {
        return Err("the other job's lock is gone".into());
    }
    Ok(())
}

fn see_parents_and_children_outside_the_grant(c: &Ctx) -> R {
    // The host suite cloned the secret image into PREFIX-job-child, and PREFIX-job-parent
    // into PREFIX-hidden-child (outside the grant).
    let child = c.pool.open(&c.job("child")).map_err(|e| e.to_string())?;
    if let Some(p) = child.parent_info().map_err(|e| e.to_string())? {
        return Err(format!("parent outside the grant shown: {}/{}", p.pool, p.image));
    }
    let parent = c.pool.open(&c.job("parent")).map_err(|e| e.to_string())?;
    let children = parent.list_children().map_err(|e| e.to_string())?;
    if !children.is_empty() {
        return Err(format!("children outside the grant shown: {children:?}"));
    }
    Ok(())
}

fn rename_a_locked_image_and_trap(c: &Ctx) -> R {
    c.pool.create(&c.job("mv"), 1 << 20).map_err(|e| e.to_string())?;
    let img = c.pool.open(&c.job("mv")).map_err(|e| e.to_string())?;
    img.lock_exclusive("mine").map_err(|e| e.to_string())?;
    drop(img);
    // librbd refuses to rename a locked image (read-only); the embedded store renames it.
    // Either way the host must find the lock when the job ends.
    let _ = c.pool.rename(&c.job("mv"), &c.job("moved"));
    std::process::abort()
}

// ---- For the fault suite (tests/tests/faults.rs): work that a frozen cluster interrupts.

fn hold_a_lock_and_write_forever(c: &Ctx) -> R {
    let name = c.job("lk");
    // Layering only: with exclusive-lock, librbd's advisory lock and writes interfere.
    let options = rbd_wasm_guest::CreateOptions { features: 1, ..Default::default() };
    c.pool.create_with(&name, 64 << 20, &options).map_err(|e| e.to_string())?;
    let img = c.pool.open(&name).map_err(|e| e.to_string())?;
    img.lock_exclusive("fault").map_err(|e| e.to_string())?;
    println!("locked");
    let block = vec![5u8; 1 << 20];
    for i in 0u64.. {
        img.write((i % 64) << 20, &block).map_err(|e| e.to_string())?;
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
    ("hold_a_lock_and_write_forever", hold_a_lock_and_write_forever),
    ("grow_a_file_by_writing_past_its_end", grow_a_file_by_writing_past_its_end),
    ("read_after_the_image_grew_under_reads_in_flight", read_after_the_image_grew_under_reads_in_flight),
    ("hash_in_tiny_chunks", hash_in_tiny_chunks),
    ("check_in_tiny_chunks", check_in_tiny_chunks),
    ("http_without_a_grant", http_without_a_grant),
    ("http_to_the_granted_endpoint_only", http_to_the_granted_endpoint_only),
    ("http_to_a_name_resolving_elsewhere", http_to_a_name_resolving_elsewhere),
    ("http_response_larger_than_the_limit", http_response_larger_than_the_limit),
    ("http_redirect_elsewhere", http_redirect_elsewhere),
    ("read_secrets_without_a_grant", read_secrets_without_a_grant),
    ("leak_a_secret", leak_a_secret),
    ("flood_a_data_stdout", flood_a_data_stdout),
    ("https_checked_against_the_granted_name", https_checked_against_the_granted_name),
    ("http_slow_response", http_slow_response),
    ("http_endless_response", http_endless_response),
    ("http_no_answer", http_no_answer),
    ("http_many_connections", http_many_connections),
    ("http_after_the_deadline", http_after_the_deadline),
    ("http_upload_past_the_network_quota", http_upload_past_the_network_quota),
    ("http_upload_that_never_sends", http_upload_that_never_sends),
    ("keep_chunk_sums_and_never_take_them", keep_chunk_sums_and_never_take_them),
    ("feed_the_check_more_than_the_host_budget", feed_the_check_more_than_the_host_budget),
    ("hash_more_than_the_host_budget", hash_more_than_the_host_budget),
    ("seal_chunks_past_the_host_budget", seal_chunks_past_the_host_budget),
    ("start_reads_and_never_wait", start_reads_and_never_wait),
    ("drop_reads_past_the_read_quota", drop_reads_past_the_read_quota),
    ("read_ahead_then_return", read_ahead_then_return),
    ("make_hashers_without_bound", make_hashers_without_bound),
    ("call_the_hasher_past_the_operation_quota", call_the_hasher_past_the_operation_quota),
    ("report_progress_past_the_operation_quota", report_progress_past_the_operation_quota),
    ("report_progress_with_huge_and_many_labels", report_progress_with_huge_and_many_labels),
    ("list_in_a_loop", list_in_a_loop),
    ("call_next_batch_past_the_end", call_next_batch_past_the_end),
    ("make_diff_iterators_without_bound", make_diff_iterators_without_bound),
    ("write_more_than_the_host_budget_at_once", write_more_than_the_host_budget_at_once),
    ("copy_past_the_read_quota", copy_past_the_read_quota),
    ("outwait_the_deadline_in_the_host", outwait_the_deadline_in_the_host),
    ("fill_the_output_directory", fill_the_output_directory),
    ("move_bytes_past_the_output_quota", move_bytes_past_the_output_quota),
    ("move_bytes_past_the_read_quota", move_bytes_past_the_read_quota),
    ("move_pieces_the_reads_do_not_hold", move_pieces_the_reads_do_not_hold),
    ("write_from_past_the_host_budget_and_the_grant", write_from_past_the_host_budget_and_the_grant),
    ("write_from_past_the_write_quota", write_from_past_the_write_quota),
    ("write_from_past_the_deadline", write_from_past_the_deadline),
    ("read_ahead_in_many_files", read_ahead_in_many_files),
    ("hash_a_file_over_and_over", hash_a_file_over_and_over),
    ("grow_a_file_sparsely", grow_a_file_sparsely),
    ("create_files_without_bound", create_files_without_bound),
    ("open_files_without_bound", open_files_without_bound),
    ("plant_symlinks", plant_symlinks),
    ("plant_a_hard_link", plant_a_hard_link),
    ("write_to_a_read_only_output_directory", write_to_a_read_only_output_directory),
    ("forge_another_jobs_line", forge_another_jobs_line),
    ("fail_with_a_huge_message", fail_with_a_huge_message),
    ("print_a_huge_line", print_a_huge_line),
    ("unlock_another_jobs_lock", unlock_another_jobs_lock),
    ("see_parents_and_children_outside_the_grant", see_parents_and_children_outside_the_grant),
    ("rename_a_locked_image_and_trap", rename_a_locked_image_and_trap),
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
    f(&Ctx { prefix, pool, extra: args.get(2..).map(<[String]>::to_vec).unwrap_or_default() })
}

rbd_wasm_guest::job!(run);
