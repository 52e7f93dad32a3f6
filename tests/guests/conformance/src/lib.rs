//! The conformance guest: one named case per behaviour of the `ceph:rbd` API.
//!
//! Arguments: `CASE PREFIX`. Every image a case makes is named `PREFIX-...`, so cases can
//! share a cluster. The job is granted pools `rbd` and `rbd2`. A case returns `Err` with a
//! message saying what differed; the host suite (tests/tests/conformance.rs) runs each case
//! on each backend, and `list-cases` prints every case so the suite can check none is
//! missing a test.

use rbd_wasm_guest::{
    open_pool, CloneOptions, CreateOptions, Error, Extent, Image, Pool, Range,
};

type R<T = ()> = std::result::Result<T, String>;

const MIB: u64 = 1 << 20;
const OBJ: u64 = 4 * MIB;

struct Ctx {
    prefix: String,
    pool: Pool,
    pool2: Pool,
}

impl Ctx {
    /// The test-unique name for `short`.
    fn n(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Create `short` of `size` bytes and open it.
    fn image(&self, short: &str, size: u64) -> R<Image> {
        let name = self.n(short);
        ok(self.pool.create(&name, size), "create")?;
        ok(self.pool.open(&name), "open")
    }

    /// The images of `pool` that this case made.
    fn mine(&self, pool: &Pool) -> R<Vec<String>> {
        let mut names = ok(pool.list(), "list")?;
        names.retain(|n| n.starts_with(&format!("{}-", self.prefix)));
        Ok(names)
    }
}

fn ok<T>(r: rbd_wasm_guest::Result<T>, what: &str) -> R<T> {
    r.map_err(|e| format!("{what}: unexpected error {e}"))
}

fn expect_err<T: std::fmt::Debug>(r: rbd_wasm_guest::Result<T>, kind: &str, what: &str) -> R {
    match r {
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => Err(format!("{what}: expected {kind}, got {e}")),
        Ok(v) => Err(format!("{what}: expected {kind}, got Ok({v:?})")),
    }
}

fn check(cond: bool, what: impl Into<String>) -> R {
    if cond {
        Ok(())
    } else {
        Err(what.into())
    }
}

fn eq<T: PartialEq + std::fmt::Debug>(got: T, want: T, what: &str) -> R {
    check(got == want, format!("{what}: got {got:?}, want {want:?}"))
}

/// Deterministic bytes that differ by offset and seed, so a misplaced byte shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

fn read_all(img: &Image) -> R<Vec<u8>> {
    let size = ok(img.size(), "size")?;
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        let chunk = ok(img.read(out.len() as u64, (16 * MIB).min(size - out.len() as u64)), "read")?;
        if chunk.is_empty() {
            return Err("read returned nothing before the end".into());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn diff(img: &Image, from: Option<&str>, whole_object: bool) -> R<Vec<Extent>> {
    let size = ok(img.size(), "size")?;
    let iter = ok(img.diff_iterate_with(0, size, from, true, whole_object), "diff_iterate")?;
    iter.map(|e| e.map_err(|e| format!("diff batch: {e}"))).collect()
}

/// Apply a diff (read from `img`'s selected state) to `old`, resized to `new_size`.
fn apply_diff(img: &Image, mut old: Vec<u8>, extents: &[Extent], new_size: u64) -> R<Vec<u8>> {
    old.resize(new_size as usize, 0);
    let mut last_end = 0;
    for e in extents {
        check(e.offset >= last_end, format!("extents out of order or overlapping at {}", e.offset))?;
        last_end = e.offset + e.length;
        check(last_end <= new_size, format!("extent {}+{} past the end {new_size}", e.offset, e.length))?;
        let range = e.offset as usize..last_end as usize;
        if e.exists {
            let data = ok(img.read(e.offset, e.length), "read extent")?;
            old[range].copy_from_slice(&data);
        } else {
            old[range].fill(0);
        }
    }
    Ok(old)
}

// ---- pools and images ----------------------------------------------------------------

fn version_reports_librbd_version(_: &Ctx) -> R {
    let v = rbd_wasm_guest::version();
    check(v.major >= 1, format!("version {v:?}"))
}

fn granted_pools_are_listed(_: &Ctx) -> R {
    eq(rbd_wasm_guest::granted_pools(), vec!["rbd".to_string(), "rbd2".to_string()], "granted pools")
}

fn open_pool_outside_grant_is_not_found(_: &Ctx) -> R {
    expect_err(open_pool("not-granted").map(|p| p.name()), "not-found", "open_pool")
}

fn pool_name_is_its_name(c: &Ctx) -> R {
    eq(c.pool.name(), "rbd".to_string(), "pool name")?;
    eq(c.pool2.name(), "rbd2".to_string(), "pool2 name")
}

fn create_lists_and_removes_images(c: &Ctx) -> R {
    eq(c.mine(&c.pool)?, vec![], "before")?;
    ok(c.pool.create(&c.n("b"), MIB), "create b")?;
    ok(c.pool.create(&c.n("a"), MIB), "create a")?;
    eq(c.mine(&c.pool)?, vec![c.n("a"), c.n("b")], "listed sorted")?;
    ok(c.pool.remove(&c.n("a")), "remove")?;
    eq(c.mine(&c.pool)?, vec![c.n("b")], "after remove")
}

fn create_existing_name_is_exists(c: &Ctx) -> R {
    ok(c.pool.create(&c.n("x"), MIB), "create")?;
    expect_err(c.pool.create(&c.n("x"), MIB), "exists", "second create")
}

fn create_size_zero_is_allowed(c: &Ctx) -> R {
    let img = c.image("zero", 0)?;
    eq(ok(img.size(), "size")?, 0, "size")
}

fn create_order_out_of_range(c: &Ctx) -> R {
    for order in [11u8, 26] {
        let o = CreateOptions { order: Some(order), ..Default::default() };
        expect_err(c.pool.create_with(&c.n(&format!("o{order}")), MIB, &o), "out-of-range", "order")?;
    }
    Ok(())
}

fn create_order_bounds_are_accepted(c: &Ctx) -> R {
    for order in [12u8, 25] {
        let name = c.n(&format!("o{order}"));
        ok(c.pool.create_with(&name, MIB, &CreateOptions { order: Some(order), ..Default::default() }), "create")?;
        let stat = ok(ok(c.pool.open(&name), "open")?.stat(), "stat")?;
        eq(stat.order, order, "order")?;
        eq(stat.obj_size, 1 << order, "obj size")?;
    }
    Ok(())
}

fn create_old_format_with_features_is_invalid(c: &Ctx) -> R {
    let o = CreateOptions { old_format: true, features: 1, ..Default::default() };
    expect_err(c.pool.create_with(&c.n("old"), MIB, &o), "invalid-argument", "old format + features")
}

fn create_old_format_gives_a_current_image(c: &Ctx) -> R {
    let o = CreateOptions { old_format: true, ..Default::default() };
    ok(c.pool.create_with(&c.n("old"), MIB, &o), "create")?;
    let img = ok(c.pool.open(&c.n("old")), "open")?;
    eq(ok(img.old_format(), "old_format")?, false, "old_format")
}

fn create_unknown_feature_bits_are_not_supported(c: &Ctx) -> R {
    let o = CreateOptions { features: 1 << 40, ..Default::default() };
    expect_err(c.pool.create_with(&c.n("f"), MIB, &o), "not-supported", "unknown features")
}

fn create_stripe_unit_not_dividing_object_is_invalid(c: &Ctx) -> R {
    let o = CreateOptions { features: 3, stripe_unit: 3 * 4096, stripe_count: 2, ..Default::default() };
    expect_err(c.pool.create_with(&c.n("s"), MIB, &o), "invalid-argument", "stripe unit")
}

fn create_with_striping_reports_it(c: &Ctx) -> R {
    let o = CreateOptions { features: 3, stripe_unit: 65536, stripe_count: 4, ..Default::default() };
    ok(c.pool.create_with(&c.n("s"), 8 * MIB, &o), "create")?;
    let img = ok(c.pool.open(&c.n("s")), "open")?;
    eq(ok(img.stripe_unit(), "stripe_unit")?, 65536, "stripe unit")?;
    eq(ok(img.stripe_count(), "stripe_count")?, 4, "stripe count")?;
    let data = pattern(300_000, 3);
    ok(img.write(12345, &data), "write")?;
    eq(ok(img.read(12345, data.len() as u64), "read")?, data, "striped data")
}

fn remove_missing_is_not_found(c: &Ctx) -> R {
    expect_err(c.pool.remove(&c.n("nothing")), "not-found", "remove")
}

fn remove_with_snapshots_is_has_snapshots(c: &Ctx) -> R {
    let img = c.image("s", MIB)?;
    ok(img.create_snap("s1"), "snap")?;
    drop(img);
    expect_err(c.pool.remove(&c.n("s")), "has-snapshots", "remove")
}

fn remove_open_image_is_busy(c: &Ctx) -> R {
    let img = c.image("open", MIB)?;
    expect_err(c.pool.remove(&c.n("open")), "busy", "remove while open")?;
    drop(img);
    ok(c.pool.remove(&c.n("open")), "remove after close")
}

fn rename_moves_the_image(c: &Ctx) -> R {
    let img = c.image("src", MIB)?;
    ok(img.write(0, b"kept"), "write")?;
    drop(img);
    ok(c.pool.rename(&c.n("src"), &c.n("dst")), "rename")?;
    eq(c.mine(&c.pool)?, vec![c.n("dst")], "listed")?;
    let img = ok(c.pool.open(&c.n("dst")), "open renamed")?;
    eq(ok(img.read(0, 4), "read")?, b"kept".to_vec(), "data")
}

fn rename_missing_is_not_found(c: &Ctx) -> R {
    expect_err(c.pool.rename(&c.n("nothing"), &c.n("x")), "not-found", "rename")
}

fn rename_onto_existing_is_exists(c: &Ctx) -> R {
    ok(c.pool.create(&c.n("a"), MIB), "create a")?;
    ok(c.pool.create(&c.n("b"), MIB), "create b")?;
    expect_err(c.pool.rename(&c.n("a"), &c.n("b")), "exists", "rename")
}

fn open_missing_is_not_found(c: &Ctx) -> R {
    expect_err(c.pool.open(&c.n("nothing")).map(|i| i.name()), "not-found", "open")
}

fn open_at_missing_snapshot_is_not_found(c: &Ctx) -> R {
    c.image("img", MIB)?;
    expect_err(c.pool.open_at_snapshot(&c.n("img"), "nosnap").map(|i| i.name()), "not-found", "open at snap")
}

fn open_at_snapshot_reads_it_and_is_read_only(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.write(0, b"old"), "write")?;
    ok(img.create_snap("s"), "snap")?;
    ok(img.write(0, b"new"), "write")?;
    let at = ok(c.pool.open_at_snapshot(&c.n("img"), "s"), "open at snap")?;
    eq(ok(at.read(0, 3), "read")?, b"old".to_vec(), "snapshot data")?;
    expect_err(at.write(0, b"x"), "read-only", "write at snapshot")
}

fn open_read_only_rejects_changes(c: &Ctx) -> R {
    c.image("img", MIB)?;
    let ro = ok(c.pool.open_read_only(&c.n("img")), "open ro")?;
    expect_err(ro.write(0, b"x"), "read-only", "write")?;
    expect_err(ro.discard(0, 10), "read-only", "discard")?;
    expect_err(ro.resize(2 * MIB), "read-only", "resize")?;
    expect_err(ro.create_snap("s"), "read-only", "create_snap")?;
    eq(ok(ro.read(0, 4), "read")?, vec![0; 4], "read works")
}

fn dropping_an_image_closes_it(c: &Ctx) -> R {
    {
        let _img = c.image("img", MIB)?;
    }
    ok(c.pool.remove(&c.n("img")), "remove after drop")
}

fn image_name_is_the_opened_name(c: &Ctx) -> R {
    let img = c.image("named", MIB)?;
    eq(img.name(), c.n("named"), "name")
}

// ---- layout ----------------------------------------------------------------------------

fn stat_reports_layout(c: &Ctx) -> R {
    let img = c.image("img", 10 * MIB + 1)?;
    let s = ok(img.stat(), "stat")?;
    eq(s.size, 10 * MIB + 1, "size")?;
    eq(s.order, 22, "order")?;
    eq(s.obj_size, OBJ, "obj_size")?;
    eq(s.num_objs, 3, "num_objs")?;
    check(s.block_name_prefix.starts_with("rbd_data."), format!("prefix {}", s.block_name_prefix))?;
    eq(s.parent_pool, -1, "parent_pool")?;
    eq(s.parent_name, String::new(), "parent_name")
}

fn default_features_and_striping(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    eq(ok(img.features(), "features")?, 61, "features")?;
    eq(ok(img.stripe_unit(), "stripe_unit")?, OBJ, "stripe unit")?;
    eq(ok(img.stripe_count(), "stripe_count")?, 1, "stripe count")?;
    eq(ok(img.old_format(), "old_format")?, false, "old format")
}

// ---- I/O -------------------------------------------------------------------------------

fn write_then_read_round_trips_across_objects(c: &Ctx) -> R {
    let img = c.image("img", 3 * OBJ)?;
    let data = pattern((OBJ + 12345) as usize, 7);
    eq(ok(img.write(OBJ - 1000, &data), "write")?, data.len() as u64, "written")?;
    eq(ok(img.read(OBJ - 1000, data.len() as u64), "read")?, data, "data")?;
    eq(ok(img.read(OBJ - 1001, 1), "read before")?, vec![0], "byte before")
}

fn read_ranges_answers_in_order(c: &Ctx) -> R {
    let img = c.image("img", 3 * OBJ)?;
    let data = pattern((2 * OBJ) as usize, 9);
    ok(img.write(OBJ / 2, &data), "write")?;
    let ranges = [
        Range { offset: 2 * OBJ, length: 777 },
        Range { offset: 0, length: 10 },
        Range { offset: OBJ / 2 + 5, length: OBJ },
    ];
    let got = ok(img.read_ranges(&ranges), "read_ranges")?;
    eq(got.len(), 3, "answers")?;
    for (r, data) in ranges.iter().zip(&got) {
        eq(data, &ok(img.read(r.offset, r.length), "read")?, "range data")?;
    }
    Ok(())
}

fn holes_read_as_zeroes(c: &Ctx) -> R {
    let img = c.image("img", 2 * OBJ)?;
    ok(img.write(100, b"x"), "write")?;
    eq(ok(img.read(OBJ + 5, 1000), "read hole")?, vec![0; 1000], "hole")?;
    eq(ok(img.read(0, 100), "read before")?, vec![0; 100], "zero prefix")
}

fn read_past_end_is_clipped(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    eq(ok(img.read(MIB - 10, 100), "read")?.len(), 10, "clipped length")
}

fn read_at_or_past_end_is_invalid(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    expect_err(img.read(MIB, 1), "invalid-argument", "read at end")?;
    expect_err(img.read(MIB + 1, 1), "invalid-argument", "read past end")
}

fn read_of_zero_bytes_is_empty(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    eq(ok(img.read(10, 0), "read")?, vec![], "empty read")
}

fn write_past_end_is_incomplete_write(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    match img.write(MIB - 4, b"12345678") {
        Err(Error::IncompleteWrite { requested: 8, written: 4 }) => {}
        other => return Err(format!("write past end: got {other:?}")),
    }
    eq(ok(img.read(MIB - 4, 4), "read")?, b"1234".to_vec(), "the part inside was written")
}

fn discard_at_or_past_end_is_invalid(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    expect_err(img.discard(MIB, 10), "invalid-argument", "discard at end")?;
    expect_err(img.discard(2 * MIB, 10), "invalid-argument", "discard past end")?;
    ok(img.discard(MIB, 0), "zero-length discard at the end")
}

fn write_at_or_past_end_is_invalid(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    expect_err(img.write(MIB, b"x"), "invalid-argument", "write at end")
}

fn write_at_snapshot_is_read_only(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.create_snap("s"), "snap")?;
    ok(img.set_snap(Some("s")), "set_snap")?;
    expect_err(img.write(0, b"x"), "read-only", "write at snapshot")?;
    ok(img.set_snap(None), "unset")?;
    ok(img.write(0, b"x"), "write at head").map(|_| ())
}

/// `start-reads`: the data of every range, as `read` gives it, with the host's chunk
/// digests when asked; several batches may be under way at once.
fn start_reads_hands_over_data_and_chunk_digests(c: &Ctx) -> R {
    let img = c.image("img", 2 * OBJ)?;
    ok(img.write(OBJ - 1000, &pattern(300_000, 4)), "write")?;
    let ranges = [Range { offset: OBJ - 4096, length: 200_000 }, Range { offset: 0, length: 10 }, Range { offset: 2 * OBJ - 5, length: 100 }];
    let first = ok(img.start_reads(&ranges, Some(65536)), "start")?;
    let second = ok(img.start_reads(&ranges[..1], None), "start another")?;
    let results = ok(first.wait(), "wait")?;
    eq(results.len(), 3, "one result a range")?;
    for (r, got) in ranges.iter().zip(&results) {
        let want = ok(img.read(r.offset, r.length), "read")?;
        check(got.data == want, format!("data at {}", r.offset))?;
        let digests: Vec<u8> = rbd_wasm_guest::sha256_chunks(&want, 65536).concat();
        check(got.chunk_sha256 == digests, format!("chunk digests at {}", r.offset))?;
    }
    eq(results[2].data.len(), 5, "clipped at the end")?;
    let plain = ok(second.wait(), "wait for the other")?;
    check(plain[0].chunk_sha256.is_empty(), "no digests without a chunk size")?;
    expect_err(img.start_reads(&ranges, Some(0)).map(|_| ()), "invalid-argument", "chunk size 0")?;
    expect_err(img.start_reads(&[Range { offset: 2 * OBJ, length: 1 }], None).and_then(|p| p.wait()).map(|_| ()), "invalid-argument", "past the end")
}

/// `write-ranges`: every write lands, in objects and across their boundaries; the total
/// comes back; overlaps are refused before anything is written; past the end is as `write`.
fn write_ranges_writes_every_range(c: &Ctx) -> R {
    let img = c.image("img", 3 * OBJ)?;
    let writes: Vec<(u64, Vec<u8>)> =
        vec![(OBJ - 100, pattern(300, 1)), (17, pattern(5000, 2)), (2 * OBJ, pattern(OBJ as usize, 3)), (9000, vec![])];
    let mut want = vec![0u8; (3 * OBJ) as usize];
    for (offset, data) in &writes {
        want[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
    }
    eq(ok(img.write_ranges(writes), "write_ranges")?, 300 + 5000 + OBJ, "bytes written")?;
    check(read_all(&img)? == want, "the image is not what was written")?;
    expect_err(img.write_ranges(vec![(0, vec![1; 10]), (9, vec![2; 10])]), "invalid-argument", "overlapping writes")?;
    check(ok(img.read(0, 20), "read")? == want[..20], "an overlapping batch wrote something")?;
    expect_err(img.write_ranges(vec![(3 * OBJ - 5, vec![7; 10])]), "incomplete-write", "past the end")?;
    ok(img.create_snap("s"), "snap")?;
    ok(img.set_snap(Some("s")), "set_snap")?;
    expect_err(img.write_ranges(vec![(0, vec![1])]), "read-only", "at a snapshot")
}

/// Discards on 64 KiB boundaries: librbd skips the unaligned head and tail of a partial
/// discard (`rbd_discard_granularity_bytes`), so only aligned ranges are sure to read zero.
fn discard_zeroes_the_range(c: &Ctx) -> R {
    const G: u64 = 64 << 10;
    let img = c.image("img", 3 * OBJ)?;
    ok(img.write(0, &pattern((3 * OBJ) as usize, 1)), "fill")?;
    let (start, len) = (3 * G, OBJ + 5 * G);
    ok(img.discard(start, len), "discard")?;
    eq(ok(img.read(start, len), "read")?, vec![0; len as usize], "zeroed")?;
    check(ok(img.read(start - 1, 1), "read before")? != vec![0], "byte before discard kept")?;
    check(ok(img.read(start + len, 1), "read after")? != vec![0], "byte after discard kept")
}

fn flush_and_invalidate_cache_succeed(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.write(0, b"durable"), "write")?;
    ok(img.flush(), "flush")?;
    ok(img.invalidate_cache(), "invalidate_cache")?;
    eq(ok(img.read(0, 7), "read")?, b"durable".to_vec(), "data")
}

fn resize_shrinks_and_grows(c: &Ctx) -> R {
    let img = c.image("img", 2 * OBJ)?;
    ok(img.write(0, &pattern((2 * OBJ) as usize, 5)), "fill")?;
    ok(img.resize(OBJ + 100), "shrink")?;
    eq(ok(img.size(), "size")?, OBJ + 100, "shrunk size")?;
    ok(img.resize(3 * OBJ), "grow")?;
    eq(ok(img.size(), "size")?, 3 * OBJ, "grown size")?;
    eq(ok(img.read(OBJ + 100, 1000), "read")?, vec![0; 1000], "cut data is gone")?;
    eq(ok(img.read(0, 100), "read")?, pattern((2 * OBJ) as usize, 5)[..100].to_vec(), "kept data")
}

fn image_cursor_reads_writes_and_seeks(c: &Ctx) -> R {
    use std::io::{Read, Seek, SeekFrom, Write};
    let img = c.image("img", 8192)?;
    let mut cur = img.cursor();
    cur.seek(SeekFrom::Start(100)).map_err(|e| e.to_string())?;
    cur.write_all(b"hello").map_err(|e| e.to_string())?;
    cur.seek(SeekFrom::End(-8192 + 100)).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 5];
    cur.read_exact(&mut buf).map_err(|e| e.to_string())?;
    eq(&buf, b"hello", "cursor data")?;
    let mut rest = Vec::new();
    cur.read_to_end(&mut rest).map_err(|e| e.to_string())?;
    eq(rest.len(), 8192 - 105, "read to end stops at the end")
}

// ---- snapshots -------------------------------------------------------------------------

/// The host's chunk pipeline (`job-host.chunk-codec`) seals what the repository format
/// (`dedup-repo`, compiled into this guest) opens, and refuses what it must.
fn chunk_codec_seals_what_the_format_opens(_c: &Ctx) -> R {
    use rbd_wasm_guest::ChunkCodec;
    let (data_key, id_key) = ([2u8; 32], [1u8; 32]);
    let codec = ChunkCodec::new(&data_key, &id_key).map_err(|e| e.to_string())?;
    let text = b"a chunk of a virtual disk ".repeat(4000);
    let sealed = codec.seal(&text).map_err(|e| e.to_string())?;
    let id = dedup_repo::chunk::ChunkId::of(&id_key, &text);
    eq(sealed.id.clone(), id.0.to_vec(), "the id is the format's")?;
    check(sealed.compressed, "text compresses")?;
    let (payload, compressed) = dedup_repo::chunk::open(&data_key, &id, &sealed.sealed).map_err(|e| e.to_string())?;
    check(compressed && payload.len() < text.len(), "the format opens it")?;
    eq(codec.open(&id.0, &sealed.sealed).map_err(|e| e.to_string())?, text.clone(), "the host opens it")?;
    let other = ChunkCodec::new(&data_key, &id_key).map_err(|e| e.to_string())?.seal(b"another chunk").map_err(|e| e.to_string())?;
    match codec.open(&id.0, &other.sealed) {
        Err(Error::InvalidArgument(m)) if m.contains("does not authenticate") => {}
        other => return Err(format!("a chunk opened as another's id: {other:?}")),
    }
    let ids = codec.ids(&[vec![0u8; 8192], text[..8192].to_vec()].concat(), 8192);
    eq(ids.len(), 2, "two pieces")?;
    check(ids[0].is_none() && ids[1] == Some(dedup_repo::chunk::ChunkId::of(&id_key, &text[..8192]).0), "zeroes have no id")?;
    match ChunkCodec::new(&data_key, &id_key).and_then(|c| c.seal(&vec![1u8; (16 << 20) + 1])) {
        Err(Error::InvalidArgument(_)) => {}
        other => return Err(format!("a chunk over 16 MiB: {:?}", other.map(|s| s.sealed.len()))),
    }
    Ok(())
}

/// The host's SHA-256 (`job-host.sha256`, `sha256-chunks`) gives the standard digests,
/// also when updates are pipelined and large.
fn host_sha256_gives_standard_digests(_c: &Ctx) -> R {
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let h = rbd_wasm_guest::Sha256::new();
    h.update(b"a");
    h.update(b"bc");
    eq(hex(&h.finish()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string(), "sha256(abc)")?;
    eq(hex(&h.finish()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_string(), "finish starts over")?;
    // A million `a`s in large pieces: the FIPS 180-2 test vector.
    let piece = vec![b'a'; 250_000];
    for _ in 0..4 {
        h.update(&piece);
    }
    eq(hex(&h.finish()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0".to_string(), "a million a")?;
    // Chunks of 4096 bytes (the smallest the host hashes apart) and a short last one.
    let mut data = vec![b'a'; 4096];
    data.extend_from_slice(b"abc");
    let chunks = rbd_wasm_guest::sha256_chunks(&data, 4096);
    eq(chunks.len(), 2, "two chunks")?;
    eq(hex(&chunks[1]), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string(), "chunk digest")?;
    eq(rbd_wasm_guest::sha256_chunks(b"abc", 0).len(), 1, "chunk size 0 is one chunk")
}

/// librbd: snapshot ids come from the pool's sequence, so the ids of one pool's images
/// interleave, and a removal consumes an id too (docs/librbd-semantics.md).
fn snapshot_ids_are_pool_wide(c: &Ctx) -> R {
    let a = c.image("a", MIB)?;
    let b = c.image("b", MIB)?;
    ok(a.create_snap("s1"), "snap a")?;
    ok(b.create_snap("s1"), "snap b")?;
    ok(a.create_snap("s2"), "snap a again")?;
    let on_a = ok(a.list_snaps(), "list a")?;
    let on_b = ok(b.list_snaps(), "list b")?;
    eq(on_a.len(), 2, "two on a")?;
    check(on_a[0].id < on_b[0].id && on_b[0].id < on_a[1].id, "the ids of one pool's images interleave")?;
    ok(a.remove_snap("s2"), "remove")?;
    ok(a.create_snap("s3"), "snap after the removal")?;
    let s3 = ok(a.list_snaps(), "list a")?.into_iter().find(|s| s.name == "s3").ok_or_else(|| "s3 is not listed".to_string())?;
    check(s3.id >= on_a[1].id + 2, "a removal consumes an id")
}

fn snapshots_are_listed_oldest_first_with_sizes(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    eq(ok(img.list_snaps(), "list")?.len(), 0, "none")?;
    ok(img.create_snap("one"), "snap one")?;
    ok(img.resize(2 * MIB), "resize")?;
    ok(img.create_snap("two"), "snap two")?;
    let snaps = ok(img.list_snaps(), "list")?;
    eq(snaps.iter().map(|s| s.name.clone()).collect::<Vec<_>>(), vec!["one".into(), "two".into()], "names")?;
    eq(snaps.iter().map(|s| s.size).collect::<Vec<_>>(), vec![MIB, 2 * MIB], "sizes")?;
    check(snaps[0].id < snaps[1].id, "ids increase")?;
    // Timestamps are the wall clock's (the guest's clock is the host's), to the second.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    for s in &snaps {
        check(s.timestamp + 120 >= now && s.timestamp <= now + 120, format!("timestamp {} is not about now ({now})", s.timestamp))?;
    }
    check(snaps[0].timestamp <= snaps[1].timestamp, "timestamps in order")
}

fn snapshot_is_immutable(c: &Ctx) -> R {
    let img = c.image("img", 2 * OBJ)?;
    let before = pattern((2 * OBJ) as usize, 11);
    ok(img.write(0, &before), "fill")?;
    ok(img.create_snap("s"), "snap")?;
    ok(img.write(10, b"changed"), "write")?;
    ok(img.discard(OBJ, OBJ), "discard")?;
    ok(img.resize(OBJ / 2), "shrink")?;
    ok(img.set_snap(Some("s")), "set_snap")?;
    eq(ok(img.size(), "size at snap")?, 2 * OBJ, "snapshot size")?;
    check(read_all(&img)? == before, "snapshot data changed")
}

fn create_snap_existing_is_exists(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.create_snap("s"), "snap")?;
    expect_err(img.create_snap("s"), "exists", "second snap")
}

fn remove_snap_removes_it(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.create_snap("s"), "snap")?;
    ok(img.remove_snap("s"), "remove")?;
    eq(ok(img.list_snaps(), "list")?.len(), 0, "no snapshots left")
}

fn remove_snap_missing_is_not_found(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    expect_err(img.remove_snap("nope"), "not-found", "remove_snap")
}

fn remove_snap_protected_is_busy(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.create_snap("s"), "snap")?;
    ok(img.protect_snap("s"), "protect")?;
    expect_err(img.remove_snap("s"), "busy", "remove protected")
}

fn protect_and_unprotect_snapshot(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.create_snap("s"), "snap")?;
    eq(ok(img.is_protected_snap("s"), "is_protected")?, false, "before")?;
    ok(img.protect_snap("s"), "protect")?;
    eq(ok(img.is_protected_snap("s"), "is_protected")?, true, "protected")?;
    ok(img.unprotect_snap("s"), "unprotect")?;
    eq(ok(img.is_protected_snap("s"), "is_protected")?, false, "after")
}

fn protect_twice_is_busy(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.create_snap("s"), "snap")?;
    ok(img.protect_snap("s"), "protect")?;
    expect_err(img.protect_snap("s"), "busy", "protect again")
}

fn protect_missing_snapshot_is_not_found(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    expect_err(img.protect_snap("nope"), "not-found", "protect")?;
    expect_err(img.unprotect_snap("nope"), "not-found", "unprotect")?;
    expect_err(img.is_protected_snap("nope"), "not-found", "is_protected")
}

fn unprotect_unprotected_is_invalid(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.create_snap("s"), "snap")?;
    expect_err(img.unprotect_snap("s"), "invalid-argument", "unprotect")
}

fn unprotect_with_children_is_busy(c: &Ctx) -> R {
    let img = c.image("parent", MIB)?;
    ok(img.create_snap("s"), "snap")?;
    ok(img.protect_snap("s"), "protect")?;
    ok(c.pool.clone_image(&c.n("parent"), "s", &c.pool, &c.n("child")), "clone")?;
    expect_err(img.unprotect_snap("s"), "busy", "unprotect with child")
}

fn set_snap_missing_is_not_found(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    expect_err(img.set_snap(Some("nope")), "not-found", "set_snap")
}

fn set_snap_selects_snapshot_size(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.create_snap("s"), "snap")?;
    ok(img.resize(3 * MIB), "resize")?;
    ok(img.set_snap(Some("s")), "set")?;
    eq(ok(img.size(), "size")?, MIB, "at snapshot")?;
    ok(img.set_snap(None), "unset")?;
    eq(ok(img.size(), "size")?, 3 * MIB, "at head")
}

fn rollback_restores_data_and_size(c: &Ctx) -> R {
    let img = c.image("img", 2 * OBJ)?;
    let before = pattern((2 * OBJ) as usize, 13);
    ok(img.write(0, &before), "fill")?;
    ok(img.create_snap("s"), "snap")?;
    ok(img.write(5, b"changed"), "write")?;
    ok(img.resize(5 * OBJ), "grow")?;
    ok(img.write(4 * OBJ, b"tail"), "write tail")?;
    ok(img.rollback_to_snap("s"), "rollback")?;
    eq(ok(img.size(), "size")?, 2 * OBJ, "size")?;
    check(read_all(&img)? == before, "data after rollback")
}

fn rollback_missing_is_not_found(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    expect_err(img.rollback_to_snap("nope"), "not-found", "rollback")
}

// ---- diff-iterate ----------------------------------------------------------------------

fn diff_from_missing_snapshot_is_not_found(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    expect_err(img.diff_iterate(0, MIB, Some("nope")).map(|_| ()), "not-found", "diff")
}

fn diff_from_newer_snapshot_is_invalid(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.create_snap("old"), "snap")?;
    ok(img.create_snap("new"), "snap")?;
    ok(img.set_snap(Some("old")), "set")?;
    expect_err(img.diff_iterate(0, MIB, Some("new")).map(|_| ()), "invalid-argument", "diff")
}

fn diff_from_beginning_covers_the_data(c: &Ctx) -> R {
    let img = c.image("img", 4 * OBJ)?;
    ok(img.write(OBJ + 10, b"data"), "write")?;
    ok(img.write(3 * OBJ, b"more"), "write")?;
    let extents = diff(&img, None, false)?;
    for (off, len) in [(OBJ + 10, 4), (3 * OBJ, 4)] {
        check(
            extents.iter().any(|e| e.exists && e.offset <= off && e.offset + e.length >= off + len),
            format!("no extent covers {off}+{len}: {extents:?}"),
        )?;
    }
    check(!extents.iter().any(|e| e.offset + e.length <= OBJ), "the untouched first object is reported")?;
    let rebuilt = apply_diff(&img, Vec::new(), &extents, 4 * OBJ)?;
    check(rebuilt == read_all(&img)?, "applying the diff to zeroes does not give the image")
}

fn diff_between_snapshots_reproduces_newer(c: &Ctx) -> R {
    let img = c.image("img", 4 * OBJ)?;
    ok(img.write(0, &pattern((4 * OBJ) as usize, 2)), "fill")?;
    ok(img.create_snap("a"), "snap a")?;
    let old = read_all(&img)?;
    ok(img.write(OBJ + 333, &pattern(5000, 3)), "write")?;
    ok(img.discard(2 * OBJ, OBJ), "discard whole object")?;
    ok(img.discard(3 * OBJ + 10, 100), "discard part")?;
    ok(img.resize(3 * OBJ + 4096), "shrink")?;
    ok(img.resize(5 * OBJ), "grow")?;
    ok(img.write(4 * OBJ + 1, b"grown"), "write in grown part")?;
    ok(img.create_snap("b"), "snap b")?;
    ok(img.set_snap(Some("b")), "set b")?;
    let new = read_all(&img)?;
    for whole_object in [false, true] {
        let extents = diff(&img, Some("a"), whole_object)?;
        let rebuilt = apply_diff(&img, old.clone(), &extents, 5 * OBJ)?;
        check(rebuilt == new, format!("whole_object={whole_object}: applying the diff does not give b"))?;
    }
    Ok(())
}

/// The extents librbd reports (issue 13's example, on the test cluster): from the beginning,
/// each object new since then from its start to its end (an object written up to its end is
/// whole); since a snapshot, exactly what changed in an object that existed.
fn diff_extents_are_librbds_exact_ones(c: &Ctx) -> R {
    let o = CreateOptions { order: Some(20), ..Default::default() };
    ok(c.pool.create_with(&c.n("img"), 10 * MIB, &o), "create")?;
    let img = ok(c.pool.open(&c.n("img")), "open")?;
    ok(img.write(MIB - 1000, &[b'a'; 3000]), "write across objects 0 and 1")?;
    ok(img.write(3 * MIB + 7, &[b'b'; 5000]), "write in object 3")?;
    let got: Vec<(u64, u64, bool)> = diff(&img, None, false)?.iter().map(|e| (e.offset, e.length, e.exists)).collect();
    eq(got, vec![(0, MIB, true), (MIB, 2000, true), (3 * MIB, 5007, true)], "from the beginning")?;
    ok(img.create_snap("s"), "snap")?;
    ok(img.write(5 * MIB + 50, &[b'c'; 100]), "write in a new object")?;
    ok(img.write(3 * MIB + 100, &[b'd'; 10]), "write in an object that existed")?;
    let got: Vec<(u64, u64, bool)> = diff(&img, Some("s"), false)?.iter().map(|e| (e.offset, e.length, e.exists)).collect();
    eq(got, vec![(3 * MIB + 100, 10, true), (5 * MIB, 150, true)], "since the snapshot")
}

fn diff_of_unchanged_image_is_empty(c: &Ctx) -> R {
    let img = c.image("img", 2 * OBJ)?;
    ok(img.write(0, b"x"), "write")?;
    ok(img.create_snap("a"), "snap")?;
    eq(diff(&img, Some("a"), false)?, vec![], "diff from a to head")
}

fn diff_iterator_after_close_is_not_found(c: &Ctx) -> R {
    let mut iter = {
        let img = c.image("img", 2 * OBJ)?;
        ok(img.write(0, b"x"), "write")?;
        ok(img.write(OBJ * 2 - 1, b"y"), "write")?;
        ok(img.diff_iterate_with(0, 1, None, true, false), "diff")?
    };
    // Even the batch computed when the iterator was made is not handed out once the image
    // is closed.
    expect_err(iter.next_batch(), "not-found", "next batch after close")
}

/// A 64 GiB sparse image with data only at its far end; the diff is asked over the whole
/// u64 range and must come back clipped to the image. (librbd's exact diff visits every
/// object of the range, so a much larger image would take minutes there.)
fn diff_over_huge_range_is_clipped_to_the_image(c: &Ctx) -> R {
    const SIZE: u64 = 1 << 36;
    let img = c.image("img", SIZE)?;
    ok(img.write(SIZE - 10, b"end"), "write at the far end")?;
    let iter = ok(img.diff_iterate_with(0, u64::MAX, None, true, false), "diff_iterate")?;
    let extents: Vec<Extent> = iter.map(|e| e.map_err(|e| e.to_string())).collect::<R<_>>()?;
    check(extents.iter().all(|e| e.offset + e.length <= SIZE), "extents past the end")?;
    check(extents.iter().any(|e| e.exists && e.offset + e.length >= SIZE - 7), "far extent")
}

// ---- clones ----------------------------------------------------------------------------

/// Make `parent` with data, snapshot `s`, protect it.
fn protected_parent(c: &Ctx, size: u64) -> R<(Image, Vec<u8>)> {
    let img = c.image("parent", size)?;
    let data = pattern(size as usize, 21);
    ok(img.write(0, &data), "fill parent")?;
    ok(img.create_snap("s"), "snap")?;
    ok(img.protect_snap("s"), "protect")?;
    Ok((img, data))
}

fn clone_reads_parent_data(c: &Ctx) -> R {
    let (_parent, data) = protected_parent(c, 2 * OBJ)?;
    ok(c.pool.clone_image(&c.n("parent"), "s", &c.pool, &c.n("child")), "clone")?;
    let child = ok(c.pool.open(&c.n("child")), "open child")?;
    eq(ok(child.size(), "size")?, 2 * OBJ, "child size")?;
    check(read_all(&child)? == data, "child data")
}

fn clone_writes_copy_up_and_leave_parent_alone(c: &Ctx) -> R {
    let (parent, data) = protected_parent(c, 2 * OBJ)?;
    ok(c.pool.clone_image(&c.n("parent"), "s", &c.pool, &c.n("child")), "clone")?;
    let child = ok(c.pool.open(&c.n("child")), "open child")?;
    ok(child.write(100, b"child!"), "write child")?;
    let mut want = data.clone();
    want[100..106].copy_from_slice(b"child!");
    check(read_all(&child)? == want, "child data after write")?;
    ok(parent.set_snap(Some("s")), "set parent snap")?;
    check(read_all(&parent)? == data, "parent snapshot unchanged")
}

fn clone_of_unprotected_snapshot_is_invalid(c: &Ctx) -> R {
    let img = c.image("parent", MIB)?;
    ok(img.create_snap("s"), "snap")?;
    expect_err(c.pool.clone_image(&c.n("parent"), "s", &c.pool, &c.n("child")), "invalid-argument", "clone")
}

fn clone_of_missing_parent_or_snapshot_is_not_found(c: &Ctx) -> R {
    expect_err(c.pool.clone_image(&c.n("nothing"), "s", &c.pool, &c.n("c1")), "not-found", "missing parent")?;
    c.image("parent", MIB)?;
    expect_err(c.pool.clone_image(&c.n("parent"), "nosnap", &c.pool, &c.n("c2")), "not-found", "missing snap")
}

fn clone_onto_existing_name_is_exists(c: &Ctx) -> R {
    protected_parent(c, MIB)?;
    ok(c.pool.create(&c.n("taken"), MIB), "create")?;
    expect_err(c.pool.clone_image(&c.n("parent"), "s", &c.pool, &c.n("taken")), "exists", "clone")
}

fn clone_without_layering_feature_is_not_supported(c: &Ctx) -> R {
    protected_parent(c, MIB)?;
    let o = CloneOptions { features: 4, order: None };
    expect_err(c.pool.clone_image_with(&c.n("parent"), "s", &c.pool, &c.n("child"), &o), "not-supported", "clone")
}

fn clone_with_bad_order_or_name(c: &Ctx) -> R {
    protected_parent(c, MIB)?;
    let o = CloneOptions { features: 0, order: Some(11) };
    expect_err(c.pool.clone_image_with(&c.n("parent"), "s", &c.pool, &c.n("c1"), &o), "out-of-range", "order 11")?;
    expect_err(c.pool.clone_image(&c.n("parent"), "s", &c.pool, &c.n("c\0x")), "type-error", "NUL in child name")?;
    expect_err(c.pool.clone_image(&c.n("parent"), "s", &c.pool, ""), "invalid-argument", "empty child name")
}

fn clone_into_another_pool(c: &Ctx) -> R {
    let (_parent, data) = protected_parent(c, OBJ)?;
    ok(c.pool.clone_image(&c.n("parent"), "s", &c.pool2, &c.n("child")), "clone")?;
    eq(c.mine(&c.pool2)?, vec![c.n("child")], "listed in pool2")?;
    let child = ok(c.pool2.open(&c.n("child")), "open")?;
    check(read_all(&child)? == data, "child data")?;
    let parent = ok(child.parent_info(), "parent_info")?
        .ok_or_else(|| "clone has no parent".to_string())?;
    eq((parent.pool, parent.image, parent.snap), ("rbd".into(), c.n("parent"), "s".into()), "parent")
}

fn list_children_of_snapshot(c: &Ctx) -> R {
    let (parent, _) = protected_parent(c, MIB)?;
    ok(c.pool.clone_image(&c.n("parent"), "s", &c.pool, &c.n("c1")), "clone 1")?;
    ok(c.pool.clone_image(&c.n("parent"), "s", &c.pool2, &c.n("c2")), "clone 2")?;
    ok(parent.set_snap(Some("s")), "set snap")?;
    let mut children: Vec<(String, String)> =
        ok(parent.list_children(), "list_children")?.into_iter().map(|c| (c.pool, c.image)).collect();
    children.sort();
    eq(children, vec![("rbd".into(), c.n("c1")), ("rbd2".into(), c.n("c2"))], "children")
}

fn parent_info_of_non_clone_is_none(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    eq(ok(img.parent_info(), "parent_info")?, None, "parent")
}

fn flatten_detaches_the_clone(c: &Ctx) -> R {
    let (parent, data) = protected_parent(c, 2 * OBJ)?;
    ok(c.pool.clone_image(&c.n("parent"), "s", &c.pool, &c.n("child")), "clone")?;
    let child = ok(c.pool.open(&c.n("child")), "open child")?;
    ok(child.write(OBJ + 1, b"mine"), "write child")?;
    ok(child.flatten(), "flatten")?;
    eq(ok(child.parent_info(), "parent_info")?, None, "no parent after flatten")?;
    let mut want = data;
    want[(OBJ + 1) as usize..(OBJ + 5) as usize].copy_from_slice(b"mine");
    check(read_all(&child)? == want, "data after flatten")?;
    ok(parent.unprotect_snap("s"), "unprotect: no children left")
}

fn flatten_of_non_clone_is_invalid(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    expect_err(img.flatten(), "invalid-argument", "flatten")
}

// ---- copy ------------------------------------------------------------------------------

fn copy_copies_data_into_new_image(c: &Ctx) -> R {
    let img = c.image("src", 2 * OBJ)?;
    let data = pattern((2 * OBJ) as usize, 31);
    ok(img.write(0, &data), "fill")?;
    ok(img.copy(&c.pool2, &c.n("dst")), "copy")?;
    let dst = ok(c.pool2.open(&c.n("dst")), "open copy")?;
    check(read_all(&dst)? == data, "copy data")?;
    eq(ok(dst.list_snaps(), "snaps")?.len(), 0, "copy has no snapshots")
}

fn copy_at_snapshot_copies_the_snapshot(c: &Ctx) -> R {
    let img = c.image("src", OBJ)?;
    ok(img.write(0, b"old"), "write")?;
    ok(img.create_snap("s"), "snap")?;
    ok(img.write(0, b"new"), "write")?;
    ok(img.set_snap(Some("s")), "set")?;
    ok(img.copy(&c.pool, &c.n("dst")), "copy")?;
    let dst = ok(c.pool.open(&c.n("dst")), "open copy")?;
    eq(ok(dst.read(0, 3), "read")?, b"old".to_vec(), "copied snapshot")
}

fn copy_onto_existing_name_is_exists(c: &Ctx) -> R {
    let img = c.image("src", MIB)?;
    ok(c.pool.create(&c.n("taken"), MIB), "create")?;
    expect_err(img.copy(&c.pool, &c.n("taken")), "exists", "copy")
}

fn copy_of_clone_is_flat(c: &Ctx) -> R {
    let (_parent, data) = protected_parent(c, OBJ)?;
    ok(c.pool.clone_image(&c.n("parent"), "s", &c.pool, &c.n("child")), "clone")?;
    let child = ok(c.pool.open(&c.n("child")), "open child")?;
    ok(child.copy(&c.pool, &c.n("copy")), "copy")?;
    let copy = ok(c.pool.open(&c.n("copy")), "open copy")?;
    eq(ok(copy.parent_info(), "parent_info")?, None, "copy is flat")?;
    check(read_all(&copy)? == data, "copy data")
}

// ---- locks -----------------------------------------------------------------------------

fn unlocked_image_has_no_lockers(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    let info = ok(img.list_lockers(), "list_lockers")?;
    eq(info.lockers.len(), 0, "lockers")
}

fn writable_opens_watch_the_image(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    let watchers = ok(img.list_watchers(), "list_watchers")?;
    eq(watchers.len(), 1, "one writable open")?;
    eq(watchers[0].client.clone(), img.lock_client(), "the watcher is this job's client, as a locker would be")?;
    let second = ok(c.pool.open(&c.n("img")), "open again")?;
    eq(ok(img.list_watchers(), "list")?.len(), 2, "two writable opens")?;
    drop(second);
    eq(ok(img.list_watchers(), "list")?.len(), 1, "a closed handle stops watching")?;
    let read_only = ok(c.pool.open_read_only(&c.n("img")), "open read-only")?;
    eq(ok(read_only.list_watchers(), "list")?.len(), 1, "a read-only open does not watch")
}

fn exclusive_lock_is_listed_and_released(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.lock_exclusive("cookie1"), "lock")?;
    let info = ok(img.list_lockers(), "list_lockers")?;
    eq(info.exclusive, true, "exclusive")?;
    eq(info.lockers.len(), 1, "one locker")?;
    eq(info.lockers[0].client.clone(), img.lock_client(), "client")?;
    eq(info.lockers[0].cookie.clone(), "cookie1".to_string(), "cookie")?;
    ok(img.unlock("cookie1"), "unlock")?;
    eq(ok(img.list_lockers(), "list")?.lockers.len(), 0, "released")
}

/// librbd with the exclusive-lock feature: an advisory lock held by anyone makes every
/// write wait (for ever, for a crashed holder); both backends answer `busy` instead.
fn advisory_lock_makes_writes_busy_with_the_exclusive_lock_feature(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.lock_exclusive("adv"), "lock")?;
    expect_err(img.write(0, b"x"), "busy", "the holder's own write")?;
    let other = ok(c.pool.open(&c.n("img")), "open again")?;
    expect_err(other.write(0, b"x"), "busy", "another handle's write")?;
    expect_err(other.discard(0, MIB), "busy", "a discard")?;
    ok(img.unlock("adv"), "unlock")?;
    ok(img.write(0, b"x"), "a write once the lock is gone")?;
    // Without the feature, advisory locks are only advisory.
    let o = CreateOptions { features: 1, ..Default::default() };
    ok(c.pool.create_with(&c.n("plain"), MIB, &o), "create without exclusive-lock")?;
    let plain = ok(c.pool.open(&c.n("plain")), "open")?;
    ok(plain.lock_exclusive("adv"), "lock")?;
    ok(plain.write(0, b"x"), "the holder writes")?;
    ok(plain.unlock("adv"), "unlock")
}

/// With the exclusive-lock feature, a write takes the feature's lock (the same RADOS lock as
/// advisory locks: exclusive, tag `internal`, cookie `auto <n>`); another handle's write
/// takes it over; closing the holder releases it.
fn a_write_takes_the_exclusive_lock_features_lock(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.write(0, b"x"), "write")?;
    expect_err(img.lock_exclusive("adv"), "busy", "the writer's own lock_exclusive")?;
    expect_err(img.lock_shared("adv", "t"), "busy", "lock_shared")?;
    // librbd shows it to handles opened after it was taken.
    let second = ok(c.pool.open(&c.n("img")), "open after the write")?;
    let info = ok(second.list_lockers(), "list")?;
    eq((info.exclusive, info.tag.clone(), info.lockers.len()), (true, "internal".to_string(), 1), "the feature's lock")?;
    let first = info.lockers[0].clone();
    eq(first.client.clone(), img.lock_client(), "held by this client")?;
    check(first.cookie.starts_with("auto "), "its cookie is `auto <n>`")?;
    ok(second.write(4096, b"y"), "another handle writes")?;
    let info = ok(ok(c.pool.open(&c.n("img")), "open")?.list_lockers(), "list")?;
    eq(info.lockers.len(), 1, "one holder")?;
    check(info.lockers[0].cookie != first.cookie, "handed over to the second handle")?;
    drop(second);
    drop(img);
    let after = ok(c.pool.open(&c.n("img")), "open after both closed")?;
    eq(ok(after.list_lockers(), "list")?.lockers.len(), 0, "released by the holder's close")?;
    ok(after.lock_exclusive("adv"), "an advisory lock once it is gone")?;
    ok(after.unlock("adv"), "unlock")
}

/// Breaking a lock of one's own client blocklists it on a cluster: librbd answers
/// `connection-shutdown` and the lock stays. Through the host the job's calls end alone.
fn breaking_ones_own_lock_ends_the_jobs_connection(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    expect_err(img.break_lock(&img.lock_client(), "none"), "not-found", "a lock that is not there")?;
    ok(img.lock_exclusive("mine"), "lock")?;
    expect_err(img.break_lock(&img.lock_client(), "mine"), "connection-shutdown", "break one's own lock")?;
    expect_err(img.list_lockers(), "connection-shutdown", "a later call on the image")?;
    expect_err(img.read(0, 1), "connection-shutdown", "a read")?;
    expect_err(c.pool.list(), "connection-shutdown", "a call on the pool")
}

/// The host made `PREFIX-written` and another client wrote to it (and keeps it open): it
/// holds the exclusive-lock feature's lock. Breaking that lock blocklists the writer.
fn breaking_the_writers_lock_blocklists_it(c: &Ctx) -> R {
    let img = ok(c.pool.open(&c.n("written")), "open")?;
    let info = ok(img.list_lockers(), "list")?;
    eq((info.tag.clone(), info.lockers.len()), ("internal".to_string(), 1), "the writer's lock")?;
    let holder = info.lockers[0].clone();
    check(holder.client != img.lock_client(), "another client's")?;
    expect_err(img.lock_exclusive("mine"), "busy", "an advisory lock over it")?;
    ok(img.break_lock(&holder.client, &holder.cookie), "break")?;
    eq(ok(img.list_lockers(), "list")?.lockers.len(), 0, "broken")?;
    let watchers = ok(img.list_watchers(), "watchers")?;
    check(!watchers.iter().any(|w| w.client == holder.client), "the blocklisted writer's watch is gone")?;
    ok(img.write(0, b"mine"), "this client writes and takes the lock").map(drop)
}

fn exclusive_lock_twice_same_cookie_is_exists(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.lock_exclusive("c"), "lock")?;
    expect_err(img.lock_exclusive("c"), "exists", "lock again")
}

fn exclusive_lock_other_cookie_is_busy(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.lock_exclusive("c1"), "lock")?;
    expect_err(img.lock_exclusive("c2"), "busy", "second cookie")?;
    expect_err(img.lock_shared("c3", "tag"), "busy", "shared over exclusive")
}

fn shared_locks_share_a_tag(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    ok(img.lock_shared("c1", "tag"), "lock 1")?;
    ok(img.lock_shared("c2", "tag"), "lock 2")?;
    expect_err(img.lock_shared("c3", "other"), "busy", "other tag")?;
    expect_err(img.lock_shared("c1", "tag"), "exists", "same cookie")?;
    expect_err(img.lock_exclusive("c4"), "busy", "exclusive over shared")?;
    let info = ok(img.list_lockers(), "list")?;
    eq((info.exclusive, info.tag.clone(), info.lockers.len()), (false, "tag".into(), 2), "shared lockers")
}

fn unlock_not_held_is_not_found(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    expect_err(img.unlock("never"), "not-found", "unlock")
}

/// The host suite has another client lock `PREFIX-locked` with cookie `theirs` first.
/// (Breaking one's own lock on Ceph blocklists one's own connection.)
fn break_lock_releases_another_clients_lock(c: &Ctx) -> R {
    let img = ok(c.pool.open(&c.n("locked")), "open")?;
    let info = ok(img.list_lockers(), "list")?;
    eq(info.lockers.len(), 1, "one locker")?;
    let holder = info.lockers[0].client.clone();
    check(holder != img.lock_client(), "the lock is another client's")?;
    expect_err(img.lock_exclusive("mine"), "busy", "lock while another holds it")?;
    ok(img.break_lock(&holder, "theirs"), "break")?;
    eq(ok(img.list_lockers(), "list")?.lockers.len(), 0, "broken")?;
    ok(img.lock_exclusive("mine"), "lock after break")
}

fn break_lock_missing_is_not_found(c: &Ctx) -> R {
    let img = c.image("img", MIB)?;
    expect_err(img.break_lock("client.999999", "nope"), "not-found", "break")
}

// ---- errors that need a name librbd cannot take, a grant, or a damaged store ----------

/// librbd takes any name but "" and those RADOS cannot store (ENAMETOOLONG: the base
/// `Error`, `other` here): `/`, `@`, spaces and unicode are fine.
fn image_names_follow_librbd(c: &Ctx) -> R {
    for name in [c.n("a/b@c"), c.n("é x")] {
        ok(c.pool.create(&name, MIB), "create")?;
        eq(ok(c.pool.open(&name), "open")?.name(), name.clone(), "name")?;
    }
    expect_err(c.pool.create("", MIB), "invalid-argument", "empty")?;
    match c.pool.create(&c.n(&"x".repeat(5000)), MIB) {
        Err(Error::Other { errno: 36, .. }) => Ok(()),
        other => Err(format!("a 5000-byte name: expected ENAMETOOLONG, got {other:?}")),
    }
}

fn name_with_nul_is_type_error(c: &Ctx) -> R {
    expect_err(c.pool.create(&c.n("a\0b"), MIB), "type-error", "create")?;
    expect_err(c.pool.open(&c.n("a\0b")).map(|i| i.name()), "type-error", "open")?;
    let img = c.image("img", MIB)?;
    expect_err(img.create_snap("s\0x"), "type-error", "create_snap")
}

/// Run with a read-only grant on pool `rbd`; the host made `PREFIX-ro` (1 MiB) first.
fn operations_outside_the_grant_are_permission_denied(c: &Ctx) -> R {
    expect_err(c.pool.create(&c.n("new"), MIB), "permission-denied", "create")?;
    expect_err(c.pool.remove(&c.n("ro")), "permission-denied", "remove")?;
    expect_err(c.pool.rename(&c.n("ro"), &c.n("x")), "permission-denied", "rename")?;
    let img = ok(c.pool.open(&c.n("ro")), "open")?;
    eq(ok(img.read(0, 4), "read")?, vec![0; 4], "read is granted")?;
    expect_err(img.write(0, b"x"), "permission-denied", "write")?;
    expect_err(img.resize(2 * MIB), "permission-denied", "resize")?;
    expect_err(img.create_snap("s"), "permission-denied", "create_snap")?;
    expect_err(img.lock_exclusive("c"), "permission-denied", "lock_exclusive")?;
    expect_err(img.copy(&c.pool, &c.n("copy")), "permission-denied", "copy")?;
    eq(ok(img.list_snaps(), "list_snaps")?.len(), 0, "nothing changed")
}

/// The host damaged the first object of `PREFIX-broken` (embedded store only).
fn read_of_a_damaged_object_is_io(c: &Ctx) -> R {
    let img = ok(c.pool.open(&c.n("broken")), "open")?;
    expect_err(img.read(0, 4096), "io", "read")
}

// ---- jobs that end badly (the host suite checks how they are reported) -----------------

fn job_error_is_reported() -> R {
    Err("this job fails on purpose".into())
}

fn job_panic_is_a_trap() -> R {
    let v: Vec<u32> = Vec::new();
    let i = std::hint::black_box(3usize);
    eq(v[i], 0, "unreachable")
}

/// Every case, by name. The host suite runs each.
const CASES: &[(&str, fn(&Ctx) -> R)] = &[
    ("version_reports_librbd_version", version_reports_librbd_version),
    ("granted_pools_are_listed", granted_pools_are_listed),
    ("open_pool_outside_grant_is_not_found", open_pool_outside_grant_is_not_found),
    ("pool_name_is_its_name", pool_name_is_its_name),
    ("create_lists_and_removes_images", create_lists_and_removes_images),
    ("create_existing_name_is_exists", create_existing_name_is_exists),
    ("create_size_zero_is_allowed", create_size_zero_is_allowed),
    ("create_order_out_of_range", create_order_out_of_range),
    ("create_order_bounds_are_accepted", create_order_bounds_are_accepted),
    ("create_old_format_with_features_is_invalid", create_old_format_with_features_is_invalid),
    ("create_old_format_gives_a_current_image", create_old_format_gives_a_current_image),
    ("create_unknown_feature_bits_are_not_supported", create_unknown_feature_bits_are_not_supported),
    ("create_stripe_unit_not_dividing_object_is_invalid", create_stripe_unit_not_dividing_object_is_invalid),
    ("create_with_striping_reports_it", create_with_striping_reports_it),
    ("remove_missing_is_not_found", remove_missing_is_not_found),
    ("remove_with_snapshots_is_has_snapshots", remove_with_snapshots_is_has_snapshots),
    ("remove_open_image_is_busy", remove_open_image_is_busy),
    ("rename_moves_the_image", rename_moves_the_image),
    ("rename_missing_is_not_found", rename_missing_is_not_found),
    ("rename_onto_existing_is_exists", rename_onto_existing_is_exists),
    ("open_missing_is_not_found", open_missing_is_not_found),
    ("open_at_missing_snapshot_is_not_found", open_at_missing_snapshot_is_not_found),
    ("open_at_snapshot_reads_it_and_is_read_only", open_at_snapshot_reads_it_and_is_read_only),
    ("open_read_only_rejects_changes", open_read_only_rejects_changes),
    ("dropping_an_image_closes_it", dropping_an_image_closes_it),
    ("image_name_is_the_opened_name", image_name_is_the_opened_name),
    ("stat_reports_layout", stat_reports_layout),
    ("default_features_and_striping", default_features_and_striping),
    ("write_then_read_round_trips_across_objects", write_then_read_round_trips_across_objects),
    ("read_ranges_answers_in_order", read_ranges_answers_in_order),
    ("holes_read_as_zeroes", holes_read_as_zeroes),
    ("read_past_end_is_clipped", read_past_end_is_clipped),
    ("read_at_or_past_end_is_invalid", read_at_or_past_end_is_invalid),
    ("read_of_zero_bytes_is_empty", read_of_zero_bytes_is_empty),
    ("write_past_end_is_incomplete_write", write_past_end_is_incomplete_write),
    ("write_at_or_past_end_is_invalid", write_at_or_past_end_is_invalid),
    ("write_at_snapshot_is_read_only", write_at_snapshot_is_read_only),
    ("discard_zeroes_the_range", discard_zeroes_the_range),
    ("flush_and_invalidate_cache_succeed", flush_and_invalidate_cache_succeed),
    ("resize_shrinks_and_grows", resize_shrinks_and_grows),
    ("image_cursor_reads_writes_and_seeks", image_cursor_reads_writes_and_seeks),
    ("snapshots_are_listed_oldest_first_with_sizes", snapshots_are_listed_oldest_first_with_sizes),
    ("write_ranges_writes_every_range", write_ranges_writes_every_range),
    ("start_reads_hands_over_data_and_chunk_digests", start_reads_hands_over_data_and_chunk_digests),
    ("host_sha256_gives_standard_digests", host_sha256_gives_standard_digests),
    ("chunk_codec_seals_what_the_format_opens", chunk_codec_seals_what_the_format_opens),
    ("snapshot_is_immutable", snapshot_is_immutable),
    ("create_snap_existing_is_exists", create_snap_existing_is_exists),
    ("remove_snap_removes_it", remove_snap_removes_it),
    ("remove_snap_missing_is_not_found", remove_snap_missing_is_not_found),
    ("remove_snap_protected_is_busy", remove_snap_protected_is_busy),
    ("protect_and_unprotect_snapshot", protect_and_unprotect_snapshot),
    ("protect_twice_is_busy", protect_twice_is_busy),
    ("protect_missing_snapshot_is_not_found", protect_missing_snapshot_is_not_found),
    ("unprotect_unprotected_is_invalid", unprotect_unprotected_is_invalid),
    ("unprotect_with_children_is_busy", unprotect_with_children_is_busy),
    ("set_snap_missing_is_not_found", set_snap_missing_is_not_found),
    ("set_snap_selects_snapshot_size", set_snap_selects_snapshot_size),
    ("rollback_restores_data_and_size", rollback_restores_data_and_size),
    ("rollback_missing_is_not_found", rollback_missing_is_not_found),
    ("diff_from_missing_snapshot_is_not_found", diff_from_missing_snapshot_is_not_found),
    ("diff_from_newer_snapshot_is_invalid", diff_from_newer_snapshot_is_invalid),
    ("diff_from_beginning_covers_the_data", diff_from_beginning_covers_the_data),
    ("diff_between_snapshots_reproduces_newer", diff_between_snapshots_reproduces_newer),
    ("diff_of_unchanged_image_is_empty", diff_of_unchanged_image_is_empty),
    ("diff_iterator_after_close_is_not_found", diff_iterator_after_close_is_not_found),
    ("diff_over_huge_range_is_clipped_to_the_image", diff_over_huge_range_is_clipped_to_the_image),
    ("clone_reads_parent_data", clone_reads_parent_data),
    ("clone_writes_copy_up_and_leave_parent_alone", clone_writes_copy_up_and_leave_parent_alone),
    ("clone_of_unprotected_snapshot_is_invalid", clone_of_unprotected_snapshot_is_invalid),
    ("clone_of_missing_parent_or_snapshot_is_not_found", clone_of_missing_parent_or_snapshot_is_not_found),
    ("clone_onto_existing_name_is_exists", clone_onto_existing_name_is_exists),
    ("clone_without_layering_feature_is_not_supported", clone_without_layering_feature_is_not_supported),
    ("clone_into_another_pool", clone_into_another_pool),
    ("list_children_of_snapshot", list_children_of_snapshot),
    ("parent_info_of_non_clone_is_none", parent_info_of_non_clone_is_none),
    ("flatten_detaches_the_clone", flatten_detaches_the_clone),
    ("flatten_of_non_clone_is_invalid", flatten_of_non_clone_is_invalid),
    ("copy_copies_data_into_new_image", copy_copies_data_into_new_image),
    ("copy_at_snapshot_copies_the_snapshot", copy_at_snapshot_copies_the_snapshot),
    ("copy_onto_existing_name_is_exists", copy_onto_existing_name_is_exists),
    ("copy_of_clone_is_flat", copy_of_clone_is_flat),
    ("snapshot_ids_are_pool_wide", snapshot_ids_are_pool_wide),
    ("unlocked_image_has_no_lockers", unlocked_image_has_no_lockers),
    ("exclusive_lock_is_listed_and_released", exclusive_lock_is_listed_and_released),
    ("writable_opens_watch_the_image", writable_opens_watch_the_image),
    ("exclusive_lock_twice_same_cookie_is_exists", exclusive_lock_twice_same_cookie_is_exists),
    (
        "advisory_lock_makes_writes_busy_with_the_exclusive_lock_feature",
        advisory_lock_makes_writes_busy_with_the_exclusive_lock_feature,
    ),
    ("exclusive_lock_other_cookie_is_busy", exclusive_lock_other_cookie_is_busy),
    ("shared_locks_share_a_tag", shared_locks_share_a_tag),
    ("unlock_not_held_is_not_found", unlock_not_held_is_not_found),
    ("break_lock_releases_another_clients_lock", break_lock_releases_another_clients_lock),
    ("diff_extents_are_librbds_exact_ones", diff_extents_are_librbds_exact_ones),
    ("a_write_takes_the_exclusive_lock_features_lock", a_write_takes_the_exclusive_lock_features_lock),
    ("breaking_ones_own_lock_ends_the_jobs_connection", breaking_ones_own_lock_ends_the_jobs_connection),
    ("breaking_the_writers_lock_blocklists_it", breaking_the_writers_lock_blocklists_it),
    ("break_lock_missing_is_not_found", break_lock_missing_is_not_found),
    ("name_with_nul_is_type_error", name_with_nul_is_type_error),
    ("image_names_follow_librbd", image_names_follow_librbd),
    ("discard_at_or_past_end_is_invalid", discard_at_or_past_end_is_invalid),
    ("clone_with_bad_order_or_name", clone_with_bad_order_or_name),
    ("job_leaves_locks_behind", job_leaves_locks_behind),
    ("lock_then_loop_forever", lock_then_loop_forever),
    ("open_handles_until_refused", open_handles_until_refused),
    ("read_until_refused", read_until_refused),
    ("job_traps_holding_locks", job_traps_holding_locks),
    ("operations_outside_the_grant_are_permission_denied", operations_outside_the_grant_are_permission_denied),
    ("read_of_a_damaged_object_is_io", read_of_a_damaged_object_is_io),
];

fn job_loops_forever() -> R {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

fn job_allocates_without_bound() -> R {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 16 << 20]);
        std::hint::black_box(&hoard);
    }
}

/// Takes locks and ends without releasing them: `PREFIX-a` exclusively (handle kept open),
/// `PREFIX-b` shared (handle closed first); the host must release both. With `trap`, the job
/// then traps instead of returning.
fn leave_locks_behind(c: &Ctx, trap: bool) -> R {
    let a = c.image("a", MIB)?;
    ok(a.lock_exclusive("left"), "lock a")?;
    {
        let b = c.image("b", MIB)?;
        ok(b.lock_shared("left", "tag"), "lock b")?;
    }
    if trap {
        let v: Vec<u8> = Vec::new();
        std::hint::black_box(v[std::hint::black_box(1)]);
    }
    Ok(())
}

/// Run with a handle quota: keep opening until refused, then print how many were open.
fn open_handles_until_refused(c: &Ctx) -> R {
    c.image("img", MIB)?;
    let mut held = Vec::new();
    loop {
        match c.pool.open(&c.n("img")) {
            Ok(img) => held.push(img),
            Err(e) if e.kind() == "quota-exceeded" => break,
            Err(e) => return Err(format!("open: {e}")),
        }
        if held.len() > 100_000 {
            return Err("no handle quota".into());
        }
    }
    println!("images open when refused: {}", held.len());
    // Closing one gives its slot back.
    held.pop();
    held.push(ok(c.pool.open(&c.n("img")), "open after a close")?);
    Ok(())
}

/// Run with a read quota: read 64 KiB at a time until refused, then print the bytes read.
fn read_until_refused(c: &Ctx) -> R {
    let img = c.image("img", 4 * MIB)?;
    let mut total = 0u64;
    loop {
        match img.read(0, 65536) {
            Ok(d) => total += d.len() as u64,
            Err(e) if e.kind() == "quota-exceeded" => break,
            Err(e) => return Err(format!("read: {e}")),
        }
        if total > 1 << 30 {
            return Err("no read quota".into());
        }
    }
    println!("bytes read when refused: {total}");
    Ok(())
}

/// Takes a lock on `PREFIX-a`, says so, and spins until the host stops it.
fn lock_then_loop_forever(c: &Ctx) -> R {
    let a = c.image("a", MIB)?;
    ok(a.lock_exclusive("spinning"), "lock")?;
    println!("locked");
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

fn job_leaves_locks_behind(c: &Ctx) -> R {
    leave_locks_behind(c, false)
}

fn job_traps_holding_locks(c: &Ctx) -> R {
    leave_locks_behind(c, true)
}

/// Cases that need no pools: they end the job badly on purpose.
const OUTCOME_CASES: &[(&str, fn() -> R)] = &[
    ("job_loops_forever", job_loops_forever),
    ("job_allocates_without_bound", job_allocates_without_bound),
    ("job_error_is_reported", job_error_is_reported),
    ("job_panic_is_a_trap", job_panic_is_a_trap),
];

fn run(args: Vec<String>) -> R {
    let case = args.first().ok_or("usage: CASE PREFIX, or list-cases")?;
    if case == "list-cases" {
        for name in CASES.iter().map(|c| c.0).chain(OUTCOME_CASES.iter().map(|c| c.0)) {
            println!("{name}");
        }
        return Ok(());
    }
    if let Some((_, f)) = OUTCOME_CASES.iter().find(|(name, _)| name == case) {
        return f();
    }
    let prefix = args.get(1).cloned().unwrap_or_else(|| "t".into());
    let f = CASES
        .iter()
        .find(|(name, _)| name == case)
        .map(|(_, f)| *f)
        .ok_or_else(|| format!("no case named `{case}`"))?;
    let ctx = Ctx {
        prefix,
        pool: open_pool("rbd").map_err(|e| format!("open pool rbd: {e}"))?,
        pool2: open_pool("rbd2").map_err(|e| format!("open pool rbd2: {e}"))?,
    };
    f(&ctx)
}

rbd_wasm_guest::job!(run);
