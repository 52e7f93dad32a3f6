//! Backups into the deduplicating, encrypted repository (`docs/dedup-format.md`; issue 15,
//! in progress: verify, prune and garbage collection are to come).
//!
//! Arguments: `[--s3 ENDPOINT BUCKET PREFIX] init [--chunk-size BYTES]`, `backup POOL
//! IMAGE`, `restore POOL IMAGE TARGET [--backup N]`. The repository is the job's `/out`, or
//! with `--s3` a bucket under a prefix (keys: the secrets `s3-access-key` and
//! `s3-secret-key`; the endpoint granted as `[[outbound]]`); its passphrase is the secret
//! `repo-passphrase`.
//!
//! `backup` takes the snapshot `dedup-N` and writes backup N: an index of the image chunk
//! by chunk, and the chunks the repository does not have yet, sealed by the host
//! (`ChunkCodec`: keyed id, zstd, AES-256-GCM). With a previous backup whose snapshot the
//! image still has, only the chunks `diff-iterate` names since it are read; the others are
//! the previous index's. The manifest is written last: a backup without one is not a
//! backup, and the next run takes its snapshot again. One runner per repository at a time
//! (runners' claims, as the plain backup job has, are to come). `restore` creates TARGET and writes every stored chunk of the index, each
//! checked by the host to be the chunk its id names.

use std::fs;
use std::path::PathBuf;

use backup_repo::{encode_name, write_atomically, Result};
use dedup_repo::chunk::ChunkId;
use dedup_repo::config::{Config, Keys};
use dedup_repo::index::{Entry, Index};
use dedup_repo::manifest::Manifest;
use rbd_wasm_guest::s3::Bucket;
use rbd_wasm_guest::{open_pool, report_progress, ChunkCodec, Image};

const ROOT: &str = "/out";
const USAGE: &str = "usage: [--s3 ENDPOINT BUCKET PREFIX] init [--chunk-size BYTES] | backup POOL IMAGE | restore POOL IMAGE (TARGET | -) [--backup N] | verify POOL IMAGE [--backup N] [--deep]";
const SNAPSHOT_PREFIX: &str = "dedup-";

fn run(args: Vec<String>) -> Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (store, args) = match args.as_slice() {
        ["--s3", endpoint, bucket, prefix, rest @ ..] => {
            let bucket = Bucket::from_secrets(endpoint, bucket, "default", "s3-access-key", "s3-secret-key")?;
            (Store::S3 { bucket, prefix: prefix.trim_matches('/').to_owned() }, rest)
        }
        rest => (Store::Dir(PathBuf::from(ROOT)), rest),
    };
    match args {
        // 256 KiB: bench/README.md, "The dedup repository's chunk size".
        ["init"] => init(&store, 256 << 10),
        ["init", "--chunk-size", n] => init(&store, n.parse().map_err(|_| format!("--chunk-size {n:?}: not a number"))?),
        ["backup", pool, image] => backup(&store, pool, image),
        ["restore", pool, image, "-"] => restore_to_stdout(&store, pool, image, None),
        ["restore", pool, image, "-", "--backup", n] => restore_to_stdout(&store, pool, image, Some(number(n)?)),
        ["restore", pool, image, target] => restore(&store, pool, image, target, None),
        ["restore", pool, image, target, "--backup", n] => restore(&store, pool, image, target, Some(number(n)?)),
        ["verify", pool, image, rest @ ..] => {
            let deep = rest.contains(&"--deep");
            let number = match rest.iter().position(|a| *a == "--backup") {
                Some(i) => Some(rest.get(i + 1).and_then(|n| n.parse().ok()).ok_or("--backup needs a number")?),
                None => None,
            };
            verify(&store, pool, image, number, deep)
        }
        _ => Err(USAGE.into()),
    }
}

fn number(n: &str) -> Result<u64> {
    Ok(n.parse().map_err(|_| format!("--backup {n:?}: not a number"))?)
}

/// Where the repository is: the output directory, or a bucket under a prefix. The same
/// paths in both; a file is complete when it appears (a rename, or a PUT).
enum Store {
    Dir(PathBuf),
    S3 { bucket: Bucket, prefix: String },
}

/// The largest file the job reads whole (an index of a 16 TiB image in 1 MiB chunks is 528 MiB
/// at worst; configs and manifests are small).
const MAX_READ: u64 = 1 << 30;

impl Store {
    fn key(&self, rel: &str) -> String {
        match self {
            Store::S3 { prefix, .. } if !prefix.is_empty() => format!("{prefix}/{rel}"),
            _ => rel.to_owned(),
        }
    }

    fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Store::Dir(root) => match fs::read(root.join(rel)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{}: {e}", root.join(rel).display()).into()),
            },
            Store::S3 { bucket, .. } => Ok(bucket.get(&self.key(rel), MAX_READ)?),
        }
    }

    fn put(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        match self {
            Store::Dir(root) => {
                let path = root.join(rel);
                fs::create_dir_all(path.parent().ok_or("a file has a directory")?)?;
                write_atomically(&path, bytes)
            }
            Store::S3 { bucket, .. } => Ok(bucket.put(&self.key(rel), bytes)?),
        }
    }

    fn exists(&self, rel: &str) -> Result<bool> {
        match self {
            Store::Dir(root) => Ok(root.join(rel).exists()),
            Store::S3 { bucket, .. } => Ok(bucket.head(&self.key(rel))?.is_some()),
        }
    }

    /// The names of the files directly in directory `rel`.
    fn list(&self, rel: &str) -> Result<Vec<String>> {
        match self {
            Store::Dir(root) => match fs::read_dir(root.join(rel)) {
                Ok(entries) => entries.map(|e| Ok(e?.file_name().to_string_lossy().into_owned())).collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(format!("{}: {e}", root.join(rel).display()).into()),
            },
            Store::S3 { bucket, .. } => {
                let dir = format!("{}/", self.key(rel));
                Ok(bucket.list(&dir)?.into_iter().filter_map(|o| o.key.strip_prefix(&dir).filter(|n| !n.contains('/')).map(str::to_owned)).collect())
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Store::Dir(root) => root.display().to_string(),
            Store::S3 { prefix, .. } => format!("the bucket, under {prefix:?}"),
        }
    }
}

fn passphrase() -> Result<Vec<u8>> {
    Ok(rbd_wasm_guest::secrets::get("repo-passphrase").map_err(|e| format!("the secret repo-passphrase: {e}"))?)
}

fn random(buf: &mut [u8]) {
    let bytes = wasip2::random::random::get_random_bytes(buf.len() as u64);
    buf.copy_from_slice(&bytes);
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
fn open_repo(store: &Store) -> Result<(Config, Keys)> {
    let bytes = store.get("config")?.ok_or_else(|| format!("{} has no config (run `init` first)", store.describe()))?;
    let config = Config::parse(&bytes)?;
    let keys = config.open(&passphrase()?)?;
    Ok((config, keys))
}

/// `indexes/POOL/IMAGE` and `backups/POOL/IMAGE`, relative to the repository.
fn image_dirs(pool: &str, image: &str) -> Result<(String, String)> {
    let (p, i) = (encode_name(pool)?, encode_name(image)?);
    Ok((format!("indexes/{p}/{i}"), format!("backups/{p}/{i}")))
}

/// The image's complete backups, oldest first, each manifest authenticated.
fn manifests(store: &Store, keys: &Keys, pool: &str, image: &str) -> Result<Vec<Manifest>> {
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
fn read_index(store: &Store, keys: &Keys, manifest: &Manifest) -> Result<Index> {
    let path = &manifest.index;
    let bytes = store.get(path)?.ok_or_else(|| format!("{path}: missing"))?;
    if hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)) != manifest.index_sha256 {
        return Err(format!("{path}: not the index its manifest names").into());
    }
    Ok(Index::decode(&bytes, &keys.mac).map_err(|e| format!("{path}: {e}"))?)
}

/// Every chunk of `index`, one entry each: `None` for zeroes.
fn per_chunk(index: &Index) -> Vec<Option<ChunkId>> {
    let mut out = Vec::with_capacity(index.chunks() as usize);
    for entry in &index.entries {
        match entry {
            Entry::Zeroes(n) => out.extend(std::iter::repeat_n(None, *n as usize)),
            Entry::Chunk(id) => out.push(Some(*id)),
        }
    }
    out
}

fn backup(store: &Store, pool_name: &str, image_name: &str) -> Result<()> {
    let (config, keys) = open_repo(store)?;
    let chunk = u64::from(config.chunk_size);
    let codec = ChunkCodec::new(&keys.data, &keys.id)?;
    let previous = manifests(store, &keys, pool_name, image_name)?;
    let n = previous.last().map_or(1, |m| m.number + 1);
    let snapshot = format!("{SNAPSHOT_PREFIX}{n}");
    let pool = open_pool(pool_name)?;
    let head = pool.open(image_name)?;
    let snaps: Vec<String> = head.list_snaps()?.into_iter().map(|s| s.name).collect();
    // A `dedup-N` without manifest N is a killed run's (the manifest is written last): it
    // is taken again, so a kill never blocks the next run.
    if snaps.contains(&snapshot) {
        head.remove_snap(&snapshot)?;
        println!("removed {snapshot}, left by a run that did not finish");
    }
    head.create_snap(&snapshot)?;
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
    let (mut read, mut stored, mut written) = (0u64, 0u64, 0u64);
    let todo = touched.iter().filter(|t| **t).count() as u64;
    for k in 0..chunks {
        if !touched[k as usize] {
            continue;
        }
        let offset = k * chunk;
        let data = image.read(offset, chunk.min(size - offset))?;
        read += 1;
        let id = codec.ids(&data, config.chunk_size)[0].map(ChunkId);
        if let Some(id) = id {
            if !store.exists(&id.path())? {
                let sealed = codec.seal(&data)?;
                store.put(&id.path(), &sealed.sealed)?;
                stored += 1;
                written += sealed.sealed.len() as u64;
            }
        }
        ids[k as usize] = id;
        if read % 64 == 0 {
            report_progress(&format!("backup {pool_name}/{image_name}"), read, Some(todo));
        }
    }
    let mut index = Index { chunk_size: config.chunk_size, image_size: size, entries: Vec::new() };
    for id in ids {
        index.push(id);
    }
    let (index_dir, backups_dir) = image_dirs(pool_name, image_name)?;
    let index_rel = format!("{index_dir}/{n}.idx");
    let index_bytes = index.encode(&keys.mac);
    store.put(&index_rel, &index_bytes)?;
    let manifest = Manifest {
        pool: pool_name.into(),
        image: image_name.into(),
        number: n,
        snapshot,
        image_size: size,
        index: index_rel,
        index_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&index_bytes)),
        created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    };
    store.put(&format!("{backups_dir}/{n}.json"), &manifest.encode(&keys.mac))?;
    println!(
        "backup {n} of {pool_name}/{image_name}: {read} chunks read{}, {stored} new stored ({written} bytes sealed)",
        if base.is_some() { " (changed since the last backup)" } else { "" }
    );
    Ok(())
}

/// The keys, a codec, and backup `number` (the newest if none) of an image with its index,
/// each authenticated.
fn chosen_backup(store: &Store, pool_name: &str, image_name: &str, number: Option<u64>) -> Result<(Keys, ChunkCodec, Manifest, Index)> {
    let (_, keys) = open_repo(store)?;
    let codec = ChunkCodec::new(&keys.data, &keys.id)?;
    let mut all = manifests(store, &keys, pool_name, image_name)?;
    let at = match number {
        Some(n) => all.iter().position(|m| m.number == n).ok_or_else(|| format!("no complete backup {n} of {pool_name}/{image_name}"))?,
        None => all.len().checked_sub(1).ok_or_else(|| format!("no complete backup of {pool_name}/{image_name}"))?,
    };
    let manifest = all.swap_remove(at);
    let index = read_index(store, &keys, &manifest)?;
    Ok((keys, codec, manifest, index))
}

fn restore(store: &Store, pool_name: &str, image_name: &str, target: &str, number: Option<u64>) -> Result<()> {
    let (_, codec, manifest, index) = chosen_backup(store, pool_name, image_name, number)?;
    let manifest = &manifest;
    let pool = open_pool(pool_name)?;
    pool.create(target, manifest.image_size)?;
    let image = pool.open(target)?;
    let chunk = u64::from(index.chunk_size);
    let mut written = 0u64;
    for (k, id) in per_chunk(&index).into_iter().enumerate() {
        let Some(id) = id else { continue };
        let sealed = store.get(&id.path())?.ok_or_else(|| format!("chunk {} of backup {}: missing", id.hex(), manifest.number))?;
        let data = codec.open(&id.0, &sealed).map_err(|e| format!("backup {}: {e}", manifest.number))?;
        write_all(&image, k as u64 * chunk, &data)?;
        written += 1;
    }
    println!("restored backup {} of {pool_name}/{image_name} to {target}: {written} chunks, each checked against its id", manifest.number);
    Ok(())
}

/// Write backup `number` of an image to standard output as an `rbd export-diff` v1 stream
/// of the whole image (`rbd import-diff -` applies it; the host must run the job with
/// `--stdout-data`). Each chunk is checked against its id before its bytes go out; runs of
/// zero chunks are `z` records. A run that fails midway leaves the stream without its end
/// record, which `rbd import-diff` refuses.
fn restore_to_stdout(store: &Store, pool_name: &str, image_name: &str, number: Option<u64>) -> Result<()> {
    let (_, codec, manifest, index) = chosen_backup(store, pool_name, image_name, number)?;
    let chunk = u64::from(index.chunk_size);
    let size = manifest.image_size;
    let mut out = backup_repo::stream::StreamWriter::new(rbd_wasm_guest::data_stdout(), None, &manifest.snapshot, size)?;
    let mut offset = 0u64;
    for entry in &index.entries {
        match entry {
            Entry::Zeroes(n) => {
                let length = (n * chunk).min(size - offset);
                out.zero(offset, length)?;
                offset += length;
            }
            Entry::Chunk(id) => {
                let sealed = store.get(&id.path())?.ok_or_else(|| format!("chunk {} of backup {}: missing", id.hex(), manifest.number))?;
                let data = codec.open(&id.0, &sealed).map_err(|e| format!("backup {}: {e}", manifest.number))?;
                out.data(offset, &data)?;
                offset += data.len() as u64;
            }
        }
    }
    let (mut stdout, _, bytes) = out.finish()?;
    std::io::Write::flush(&mut stdout)?;
    eprintln!("backup {} of {pool_name}/{image_name} written to standard output: {bytes} bytes, each chunk checked against its id", manifest.number);
    Ok(())
}

/// Check a backup: its manifest and index authenticate, and every chunk it refers to is
/// there; with `deep`, every chunk also opens (its tag, its decompression, its id).
fn verify(store: &Store, pool_name: &str, image_name: &str, number: Option<u64>, deep: bool) -> Result<()> {
    let (_, codec, manifest, index) = chosen_backup(store, pool_name, image_name, number)?;
    let manifest = &manifest;
    let mut ids: Vec<ChunkId> = index.chunk_ids().copied().collect();
    ids.sort_unstable();
    ids.dedup();
    let (mut missing, mut damaged) = (Vec::new(), Vec::new());
    for id in &ids {
        if deep {
            match store.get(&id.path())? {
                None => missing.push(id.hex()),
                Some(sealed) => {
                    if let Err(e) = codec.open(&id.0, &sealed) {
                        damaged.push(format!("{}: {e}", id.hex()));
                    }
                }
            }
        } else if !store.exists(&id.path())? {
            missing.push(id.hex());
        }
    }
    let what = if deep { "present and whole (opened, decompressed, rehashed)" } else { "present" };
    if missing.is_empty() && damaged.is_empty() {
        println!("backup {} of {pool_name}/{image_name}: all {} chunks {what}", manifest.number, ids.len());
        return Ok(());
    }
    Err(format!(
        "backup {} of {pool_name}/{image_name}: {} of {} chunks missing {:?}, {} damaged {:?}",
        manifest.number,
        missing.len(),
        ids.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        damaged.len(),
        damaged.iter().take(5).collect::<Vec<_>>()
    )
    .into())
}

fn write_all(image: &Image, offset: u64, data: &[u8]) -> Result<()> {
    let mut at = 0usize;
    while at < data.len() {
        let piece = &data[at..(at + (4 << 20)).min(data.len())];
        image.write(offset + at as u64, piece)?;
        at += piece.len();
    }
    Ok(())
}

rbd_wasm_guest::job!(run);
