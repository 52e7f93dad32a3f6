//! Backups into the deduplicating, encrypted repository (`docs/dedup-format.md`).
//!
//! Arguments: `[--s3 ENDPOINT BUCKET PREFIX] COMMAND ...` (see [`USAGE`]). The repository is
//! the job's `/out`, or with `--s3` a bucket under a prefix (keys: the secrets
//! `s3-access-key` and `s3-secret-key`; the endpoint granted as `[[outbound]]`); its
//! passphrase is the secret `repo-passphrase`.
//!
//! - `init` writes the config (the keys, wrapped by the passphrase).
//! - `backup` takes the snapshot `dedup-N` and writes backup N: the chunks the repository
//!   does not have yet, sealed by the host (`ChunkCodec`: keyed id, zstd, AES-256-GCM), an
//!   index of the image chunk by chunk, and last the manifest: a backup without one is not a
//!   backup, and the next run takes its snapshot again. With a previous backup whose
//!   snapshot the image still has, only the chunks `diff-iterate` names since it are read;
//!   the others are the previous index's. Older `dedup-*` snapshots are removed after.
//! - `restore` writes every chunk of a backup, each checked by the host to be the chunk its
//!   id names, to a new image, or (TARGET `-`) as an `rbd export-diff` v1 stream on
//!   standard output for `rbd import-diff -`.
//! - `verify` checks backups: manifest and index authenticated, every chunk present; more
//!   with `--deep`, `--sample`, `--compare`, and `--skip-verified-within` ([`verify`]).
//! - `prune` removes backups (their manifests) that a retention policy does not keep;
//!   `gc` removes what no complete backup refers to ([`maintenance`]).
//!
//! Runs share the repository through leases ([`lease`]): two backups of one image at once
//! make one backup, and `gc` never deletes a chunk while a backup that may refer to it runs.

mod lease;
mod maintenance;
mod store;
mod verify;

use std::collections::HashSet;
use std::time::Duration;

use backup_repo::{encode_name, Result};
use dedup_repo::chunk::ChunkId;
use dedup_repo::config::{Config, Keys};
use dedup_repo::index::{Entry, Index};
use dedup_repo::manifest::Manifest;
use rbd_wasm_guest::s3::Bucket;
use rbd_wasm_guest::{open_pool, report_progress, ChunkCodec, Range};

use lease::{Lease, Taken};
use store::{now, random, Store};

const ROOT: &str = "/out";
pub const USAGE: &str = "usage: [--s3 ENDPOINT BUCKET PREFIX] COMMAND, one of\n\
  init [--chunk-size BYTES]\n\
  backup POOL IMAGE\n\
  restore POOL IMAGE (TARGET | -) [--backup N]\n\
  verify POOL IMAGE [--backup N | --all] [--deep | --sample PERCENT] [--compare] [--skip-verified-within DAYS]\n\
  prune POOL IMAGE [--keep-last N] [--keep-hourly N] [--keep-daily N] [--keep-weekly N] [--keep-monthly N] [--keep-yearly N] [--dry-run]\n\
  gc [--dry-run]\n\
and with any command: [--stale-after SECS] (a lease without heartbeat this long is a dead run's; default 120) [--wait SECS] (longest wait for a sweep, or for runs before one; default 3600) [--pause-at snapshot|chunks|index|sweep] (kill tests: wait a minute there)";
const SNAPSHOT_PREFIX: &str = "dedup-";
/// How many chunks are read, sealed and stored (or fetched, opened and written) together:
/// 4 MiB of them, 1 to 64. A backup's next batch is read while one is sealed and stored.
fn batch_len(chunk: u64) -> usize {
    ((4u64 << 20) / chunk.max(1)).clamp(1, 64) as usize
}

/// A command's positional arguments and options.
pub struct Opts<'a> {
    pub positional: Vec<&'a str>,
    values: Vec<(&'a str, &'a str)>,
    flags: Vec<&'a str>,
}

const FLAGS: &[&str] = &["--deep", "--dry-run", "--compare", "--all"];
const VALUES: &[&str] = &[
    "--backup", "--chunk-size", "--stale-after", "--wait", "--sample", "--skip-verified-within", "--keep-last", "--keep-hourly",
    "--keep-daily", "--keep-weekly", "--keep-monthly", "--keep-yearly", "--pause-at",
];

impl<'a> Opts<'a> {
    fn parse(args: &[&'a str]) -> Result<Opts<'a>> {
        let mut opts = Opts { positional: Vec::new(), values: Vec::new(), flags: Vec::new() };
        let mut rest = args.iter();
        while let Some(&arg) = rest.next() {
            if FLAGS.contains(&arg) {
                opts.flags.push(arg);
            } else if VALUES.contains(&arg) {
                let value = rest.next().ok_or_else(|| format!("{arg} needs a value"))?;
                opts.values.push((arg, value));
            } else if arg.starts_with("--") {
                return Err(format!("unknown option {arg}\n{USAGE}").into());
            } else {
                opts.positional.push(arg);
            }
        }
        Ok(opts)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }

    pub fn value(&self, name: &str) -> Option<&'a str> {
        self.values.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    pub fn number(&self, name: &str) -> Result<Option<u64>> {
        match self.values.iter().rev().find(|(k, _)| *k == name) {
            None => Ok(None),
            Some((_, v)) => Ok(Some(v.parse().map_err(|_| format!("{name} {v:?}: not a number"))?)),
        }
    }

    fn stale(&self) -> Result<u64> {
        Ok(self.number("--stale-after")?.unwrap_or(lease::STALE_SECS).max(4))
    }

    fn wait(&self) -> Result<Duration> {
        Ok(Duration::from_secs(self.number("--wait")?.unwrap_or(3600)))
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (store, args) = match args.as_slice() {
        ["--s3", endpoint, bucket, prefix, rest @ ..] => {
            let bucket = Bucket::from_secrets(endpoint, bucket, "default", "s3-access-key", "s3-secret-key")?;
            (Store::S3 { bucket, prefix: prefix.trim_matches('/').to_owned() }, rest)
        }
        rest => (Store::Dir(ROOT.into()), rest),
    };
    let opts = Opts::parse(args)?;
    let (stale, wait) = (opts.stale()?, opts.wait()?);
    match opts.positional.as_slice() {
        // By measurement (bench/README.md, "The dedup repository's chunk size"): 256 KiB in
        // a directory (files are cheap: the least stored); 1 MiB on S3, where each object
        // costs the gateway and the OSD more than the extra bytes do (a 1 GiB backup 6.2 s
        // against 11.0 s, a restore 5.9 s against 8.7 s).
        ["init"] => {
            let default = match store {
                Store::Dir(_) => 256 << 10,
                Store::S3 { .. } => 1 << 20,
            };
            init(&store, opts.number("--chunk-size")?.unwrap_or(default).try_into().map_err(|_| "--chunk-size: too large")?)
        }
        ["backup", pool, image] => backup(&store, pool, image, stale, wait, opts.value("--pause-at")),
        ["restore", pool, image, target] => {
            let _lease = read_lease(&store, pool, image, stale, wait)?;
            match *target {
                "-" => restore_to_stdout(&store, pool, image, opts.number("--backup")?),
                target => restore(&store, pool, image, target, opts.number("--backup")?),
            }
        }
        ["verify", pool, image] => {
            let _lease = read_lease(&store, pool, image, stale, wait)?;
            verify::verify(&store, pool, image, &opts)
        }
        ["prune", pool, image] => maintenance::prune(&store, pool, image, &opts),
        ["gc"] => maintenance::gc(&store, opts.flag("--dry-run"), stale, wait, opts.value("--pause-at")),
        _ => Err(USAGE.into()),
    }
}

/// Fault injection for the kill tests (`--pause-at POINT`): at POINT (a backup's
/// `snapshot`, `chunks` (64 stored), `index`; gc's `sweep` (64 removed)) say so and wait a
/// minute, so that a test can kill the run there and not a moment later.
pub(crate) fn pause(pause_at: Option<&str>, point: &str) {
    if pause_at == Some(point) {
        println!("pausing at {point}");
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// The lease of a restore or a verify: a sweep waits for it.
fn read_lease<'a>(store: &'a Store, pool: &str, image: &str, stale: u64, wait: Duration) -> Result<Lease<'a>> {
    match Lease::for_run(store, "read", pool, image, stale, wait)? {
        Taken::Held(lease) => Ok(lease),
        Taken::Busy(_) => Err("a read lease is never busy".into()),
    }
}

pub(crate) fn passphrase() -> Result<Vec<u8>> {
    Ok(rbd_wasm_guest::secrets::get("repo-passphrase").map_err(|e| format!("the secret repo-passphrase: {e}"))?)
}

fn init(store: &Store, chunk_size: u32) -> Result<()> {
    if store.exists("config")? {
        return Err(format!("{} has a config: it is a repository already", store.describe()).into());
    }
    let (config, _) = Config::create(&passphrase()?, chunk_size, &mut random)?;
    store.put("config", &config.to_json())?;
    println!("a repository of {chunk_size}-byte chunks in {}", store.describe());
    Ok(())
}

/// The repository's config and keys.
pub(crate) fn open_repo(store: &Store) -> Result<(Config, Keys)> {
    let bytes = store.get("config")?.ok_or_else(|| format!("{} has no config (run `init` first)", store.describe()))?;
    let config = Config::parse(&bytes)?;
    let keys = config.open(&passphrase()?)?;
    Ok((config, keys))
}

/// `DIR/POOL/IMAGE`, relative to the repository (POOL and IMAGE encoded as in the plain
/// repository).
pub(crate) fn image_dir(dir: &str, pool: &str, image: &str) -> Result<String> {
    Ok(format!("{dir}/{}/{}", encode_name(pool)?, encode_name(image)?))
}

/// `indexes/POOL/IMAGE` and `backups/POOL/IMAGE`.
pub(crate) fn image_dirs(pool: &str, image: &str) -> Result<(String, String)> {
    Ok((image_dir("indexes", pool, image)?, image_dir("backups", pool, image)?))
}

/// The image's complete backups, oldest first, each manifest authenticated.
pub(crate) fn manifests(store: &Store, keys: &Keys, pool: &str, image: &str) -> Result<Vec<Manifest>> {
    let (_, backups) = image_dirs(pool, image)?;
    let mut found = Vec::new();
    for name in store.list(&backups)? {
        let Some(n) = name.strip_suffix(".json").and_then(backup_repo::parse_number) else { continue };
        let path = format!("{backups}/{name}");
        let Some(bytes) = store.get(&path)? else { continue };
        let manifest = Manifest::decode(&bytes, &keys.mac).map_err(|e| format!("{path}: {e}"))?;
        if manifest.number != n || manifest.pool != pool || manifest.image != image {
            return Err(format!("{path}: the manifest of backup {} of {}/{}", manifest.number, manifest.pool, manifest.image).into());
        }
        found.push(manifest);
    }
    found.sort_by_key(|m| m.number);
    Ok(found)
}

/// A backup's index, authenticated and checked against its manifest.
pub(crate) fn read_index(store: &Store, keys: &Keys, manifest: &Manifest) -> Result<Index> {
    let path = &manifest.index;
    let bytes = store.get(path)?.ok_or_else(|| format!("{path}: missing"))?;
    if hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)) != manifest.index_sha256 {
        return Err(format!("{path}: not the index its manifest names").into());
    }
    Ok(Index::decode(&bytes, &keys.mac).map_err(|e| format!("{path}: {e}"))?)
}

/// Every chunk of `index`, one entry each: `None` for zeroes.
pub(crate) fn per_chunk(index: &Index) -> Vec<Option<ChunkId>> {
    let mut out = Vec::with_capacity(index.chunks() as usize);
    for entry in &index.entries {
        match entry {
            Entry::Zeroes(n) => out.extend(std::iter::repeat_n(None, *n as usize)),
            Entry::Chunk(id) => out.push(Some(*id)),
        }
    }
    out
}

fn backup(store: &Store, pool_name: &str, image_name: &str, stale: u64, wait: Duration, pause_at: Option<&str>) -> Result<()> {
    let (config, keys) = open_repo(store)?;
    let mut lease = match Lease::for_run(store, "backup", pool_name, image_name, stale, wait)? {
        Taken::Held(lease) => lease,
        Taken::Busy(other) => {
            println!("another runner (since {}, lease {}) is backing up {pool_name}/{image_name}: nothing to do", other.started, other.id);
            return Ok(());
        }
    };
    let chunk = u64::from(config.chunk_size);
    let codec = ChunkCodec::new(&keys.data, &keys.id)?;
    // Read under the lease: a sweep cannot remove the base's chunks until it ends.
    let previous = manifests(store, &keys, pool_name, image_name)?;
    let n = previous.last().map_or(1, |m| m.number + 1);
    let snapshot = format!("{SNAPSHOT_PREFIX}{n}");
    let pool = open_pool(pool_name)?;
    let head = pool.open(image_name)?;
    let snaps: Vec<String> = head.list_snaps()?.into_iter().map(|s| s.name).collect();
    // A `dedup-N` without manifest N is a killed run's (the manifest is written last, and no
    // other run of this image holds a lease): it is taken again, so a kill never blocks the
    // next run.
    if snaps.contains(&snapshot) {
        head.remove_snap(&snapshot)?;
        println!("removed {snapshot}, left by a run that did not finish");
    }
    head.create_snap(&snapshot)?;
    println!("took {snapshot}");
    pause(pause_at, "snapshot");
    let image = pool.open_at_snapshot(image_name, &snapshot)?;
    let size = image.size()?;
    let chunks = size.div_ceil(chunk);

    // The chunks to read: all allocated ones, or those changed since a base backup whose
    // snapshot the image still has.
    let base = previous.last().filter(|m| snaps.contains(&m.snapshot) && m.image_size == size);
    let mut ids: Vec<Option<ChunkId>> = match base {
        Some(m) => per_chunk(&read_index(store, &keys, m)?),
        None => vec![None; chunks as usize],
    };
    let mut touched = vec![false; chunks as usize];
    for extent in image.diff_iterate(0, size, base.map(|m| m.snapshot.as_str()))? {
        let extent = extent?;
        let first = extent.offset / chunk;
        let last = (extent.offset + extent.length).div_ceil(chunk).min(chunks);
        for k in first..last {
            touched[k as usize] = true;
        }
    }
    // The chunks the repository has: listed once (under the lease no sweep removes one),
    // instead of a look per chunk.
    let mut known: HashSet<ChunkId> = store.chunk_files()?.into_iter().filter_map(|file| file.id).collect();
    let todo: Vec<u64> = (0..chunks).filter(|k| touched[*k as usize]).collect();
    let (mut read, mut stored, mut written) = (0u64, 0u64, 0u64);
    // Batches of chunks: the next batch's reads are in flight while this one is hashed,
    // sealed and stored.
    let ranges = |batch: &[u64]| -> Vec<Range> { batch.iter().map(|k| Range { offset: k * chunk, length: chunk.min(size - k * chunk) }).collect() };
    let batches: Vec<&[u64]> = todo.chunks(batch_len(chunk)).collect();
    let mut next = match batches.first() {
        Some(batch) => Some(image.start_reads(&ranges(batch), None)?),
        None => None,
    };
    // Chunks go up while the next are read and sealed.
    let mut uploads = store.uploads();
    let mut hits = Hits::new(known.is_empty());
    for (b, batch) in batches.iter().enumerate() {
        lease.heartbeat()?;
        let results = next.take().ok_or("reads were started")?.wait()?;
        if let Some(following) = batches.get(b + 1) {
            next = Some(image.start_reads(&ranges(following), None)?);
        }
        let before = stored;
        for (k, result) in batch.iter().zip(results) {
            let data = result.data;
            read += 1;
            // Sealing gives the id too: while most chunks are new, seal at once (one pass
            // of the keyed hash, not two); while most are stored already, ask the id first
            // (no sealing of chunks that are not stored).
            let (id, sealed) = if hits.mostly_new() && !data.iter().all(|&b| b == 0) {
                let sealed = codec.seal(&data)?;
                let id = ChunkId(sealed.id.as_slice().try_into().map_err(|_| "the host's chunk id is 32 bytes")?);
                (Some(id), Some(sealed))
            } else {
                (codec.ids(&data, config.chunk_size)[0].map(ChunkId), None)
            };
            if let Some(id) = id {
                let new = known.insert(id);
                hits.record(!new);
                if new {
                    let sealed = match sealed {
                        Some(sealed) => sealed,
                        None => codec.seal(&data)?,
                    };
                    written += sealed.sealed.len() as u64;
                    stored += 1;
                    uploads.put(&id.path(), sealed.sealed)?;
                }
            }
            ids[*k as usize] = id;
        }
        // At 64 chunks stored, then at each doubling.
        let mark = (before + 1).max(64).next_power_of_two();
        if stored >= mark {
            println!("stored {} chunks", mark);
            if mark == 64 {
                pause(pause_at, "chunks");
            }
        }
        report_progress(&format!("backup {pool_name}/{image_name}"), read, Some(todo.len() as u64));
    }
    uploads.finish()?;
    let mut index = Index { chunk_size: config.chunk_size, image_size: size, entries: Vec::new() };
    for id in ids {
        index.push(id);
    }
    let (index_dir, backups_dir) = image_dirs(pool_name, image_name)?;
    let index_rel = format!("{index_dir}/{n}.idx");
    let index_bytes = index.encode(&keys.mac);
    store.put(&index_rel, &index_bytes)?;
    println!("wrote the index of backup {n}");
    pause(pause_at, "index");
    let manifest = Manifest {
        pool: pool_name.into(),
        image: image_name.into(),
        number: n,
        snapshot: snapshot.clone(),
        image_size: size,
        index: index_rel,
        index_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&index_bytes)),
        created: now(),
    };
    // The commit point: only while the lease certainly holds (a sweep that took this run
    // for dead may have removed chunks it found stored).
    lease.check()?;
    store.put(&format!("{backups_dir}/{n}.json"), &manifest.encode(&keys.mac))?;
    drop(lease);
    println!(
        "backup {n} of {pool_name}/{image_name}: {read} chunks read{}, {stored} new stored ({written} bytes sealed)",
        if base.is_some() { " (changed since the last backup)" } else { "" }
    );
    // Only the newest snapshot is a base for the next backup.
    for old in snaps.iter().filter(|s| s.strip_prefix(SNAPSHOT_PREFIX).and_then(|k| k.parse::<u64>().ok()).is_some_and(|k| k < n)) {
        if let Err(e) = head.remove_snap(old) {
            eprintln!("removing the older snapshot {old}: {e}");
        }
    }
    Ok(())
}

/// How many of the last chunks were stored already: decides whether the next is sealed
/// before its id is known.
struct Hits {
    window: std::collections::VecDeque<bool>,
    hits: usize,
    /// With no history: whether to assume chunks are new (a fresh repository).
    fresh: bool,
}

impl Hits {
    const WINDOW: usize = 64;

    fn new(fresh: bool) -> Hits {
        Hits { window: std::collections::VecDeque::with_capacity(Self::WINDOW), hits: 0, fresh }
    }

    fn record(&mut self, hit: bool) {
        if self.window.len() == Self::WINDOW && self.window.pop_front() == Some(true) {
            self.hits -= 1;
        }
        self.window.push_back(hit);
        self.hits += usize::from(hit);
    }

    /// Fewer than a quarter of the recent chunks were stored already.
    fn mostly_new(&self) -> bool {
        if self.window.len() < 8 {
            return self.fresh;
        }
        self.hits * 4 < self.window.len()
    }
}

/// A codec, and backup `number` (the newest if none) of an image with its index,
/// each authenticated.
pub(crate) fn chosen_backup(store: &Store, pool_name: &str, image_name: &str, number: Option<u64>) -> Result<(ChunkCodec, Manifest, Index)> {
    let (_, keys) = open_repo(store)?;
    let codec = ChunkCodec::new(&keys.data, &keys.id)?;
    let mut all = manifests(store, &keys, pool_name, image_name)?;
    let at = match number {
        Some(n) => all.iter().position(|m| m.number == n).ok_or_else(|| format!("no complete backup {n} of {pool_name}/{image_name}"))?,
        None => all.len().checked_sub(1).ok_or_else(|| format!("no complete backup of {pool_name}/{image_name}"))?,
    };
    let manifest = all.swap_remove(at);
    let index = read_index(store, &keys, &manifest)?;
    Ok((codec, manifest, index))
}

fn restore(store: &Store, pool_name: &str, image_name: &str, target: &str, number: Option<u64>) -> Result<()> {
    let (codec, manifest, index) = chosen_backup(store, pool_name, image_name, number)?;
    let pool = open_pool(pool_name)?;
    pool.create(target, manifest.image_size)?;
    let image = pool.open(target)?;
    let chunk = u64::from(index.chunk_size);
    let stored: Vec<(u64, ChunkId)> = per_chunk(&index).into_iter().enumerate().filter_map(|(k, id)| Some((k as u64 * chunk, id?))).collect();
    let total = stored.len() as u64;
    let mut written = 0u64;
    let mut writes = Vec::new();
    // The next chunks are fetched while these are opened and written.
    for (offset, data) in opened_chunks(store, &codec, manifest.number, stored) {
        writes.push(data.map(|d| (offset, d))?);
        if writes.len() == batch_len(chunk) {
            written += writes.len() as u64;
            image.write_ranges(std::mem::take(&mut writes))?;
            report_progress(&format!("restore {target}"), written, Some(total));
        }
    }
    written += writes.len() as u64;
    image.write_ranges(writes)?;
    println!("restored backup {} of {pool_name}/{image_name} to {target}: {written} chunks, each checked against its id", manifest.number);
    Ok(())
}

/// The plaintext of each chunk of `chunks` (image offset, id) in order, read ahead, each
/// checked by the host to be the chunk its id names.
fn opened_chunks<'a>(store: &'a Store, codec: &'a ChunkCodec, backup: u64, chunks: Vec<(u64, ChunkId)>) -> impl Iterator<Item = (u64, Result<Vec<u8>>)> + 'a {
    let paths: Vec<String> = chunks.iter().map(|(_, id)| id.path()).collect();
    chunks.into_iter().zip(store.read_ahead(paths)).map(move |((offset, id), sealed)| {
        let data = sealed.and_then(|sealed| {
            let sealed = sealed.ok_or_else(|| format!("chunk {} of backup {backup}: missing", id.hex()))?;
            Ok(codec.open(&id.0, &sealed).map_err(|e| format!("backup {backup}: {e}"))?)
        });
        (offset, data)
    })
}

/// Write backup `number` of an image to standard output as an `rbd export-diff` v1 stream
/// of the whole image (`rbd import-diff -` applies it; the host must run the job with
/// `--stdout-data`). Each chunk is checked against its id before its bytes go out; runs of
/// zero chunks are `z` records. A run that fails midway leaves the stream without its end
/// record, which `rbd import-diff` refuses.
fn restore_to_stdout(store: &Store, pool_name: &str, image_name: &str, number: Option<u64>) -> Result<()> {
    let (codec, manifest, index) = chosen_backup(store, pool_name, image_name, number)?;
    let chunk = u64::from(index.chunk_size);
    let size = manifest.image_size;
    let mut out = backup_repo::stream::StreamWriter::new(rbd_wasm_guest::data_stdout(), None, &manifest.snapshot, size)?;
    // Chunks are read ahead across zero runs; a zero run is a `z` record.
    let mut stored = Vec::new();
    let mut runs = Vec::new();
    let mut offset = 0u64;
    for entry in &index.entries {
        match entry {
            Entry::Zeroes(n) => {
                let length = (n * chunk).min(size - offset);
                runs.push((stored.len(), offset, length));
                offset += length;
            }
            Entry::Chunk(id) => {
                stored.push((offset, *id));
                offset += chunk.min(size - offset);
            }
        }
    }
    let mut runs = runs.into_iter().peekable();
    for (k, (at, data)) in opened_chunks(store, &codec, manifest.number, stored).enumerate() {
        while let Some((_, zero_at, length)) = runs.next_if(|(before, _, _)| *before <= k) {
            out.zero(zero_at, length)?;
        }
        out.data(at, &data?)?;
    }
    for (_, zero_at, length) in runs {
        out.zero(zero_at, length)?;
    }
    let (mut stdout, _, bytes) = out.finish()?;
    std::io::Write::flush(&mut stdout)?;
    eprintln!("backup {} of {pool_name}/{image_name} written to standard output: {bytes} bytes, each chunk checked against its id", manifest.number);
    Ok(())
}

rbd_wasm_guest::job!(run);
