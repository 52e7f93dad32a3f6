//! Backups into the deduplicating, encrypted repository (`docs/dedup-format.md`; issue 15,
//! in progress: a repository in the output directory; S3, verify, prune and garbage
//! collection are to come).
//!
//! Arguments: `init [--chunk-size BYTES]`, `backup POOL IMAGE`, `restore POOL IMAGE TARGET
//! [--backup N]`. The repository is the job's `/out`; its passphrase is the secret
//! `repo-passphrase`.
//!
//! `backup` takes the snapshot `dedup-N` and writes backup N: an index of the image chunk
//! by chunk, and the chunks the repository does not have yet, sealed by the host
//! (`ChunkCodec`: keyed id, zstd, AES-256-GCM). With a previous backup whose snapshot the
//! image still has, only the chunks `diff-iterate` names since it are read; the others are
//! the previous index's. The manifest is written last: a backup without one is not a
//! backup. `restore` creates TARGET and writes every stored chunk of the index, each
//! checked by the host to be the chunk its id names.

use std::fs;
use std::path::PathBuf;

use backup_repo::{encode_name, write_atomically, Result};
use dedup_repo::chunk::ChunkId;
use dedup_repo::config::{Config, Keys};
use dedup_repo::index::{Entry, Index};
use dedup_repo::manifest::Manifest;
use rbd_wasm_guest::{open_pool, report_progress, ChunkCodec, Image};

const ROOT: &str = "/out";
const USAGE: &str = "usage: init [--chunk-size BYTES] | backup POOL IMAGE | restore POOL IMAGE TARGET [--backup N]";
const SNAPSHOT_PREFIX: &str = "dedup-";

fn run(args: Vec<String>) -> Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["init"] => init(1 << 20),
        ["init", "--chunk-size", n] => init(n.parse().map_err(|_| format!("--chunk-size {n:?}: not a number"))?),
        ["backup", pool, image] => backup(pool, image),
        ["restore", pool, image, target] => restore(pool, image, target, None),
        ["restore", pool, image, target, "--backup", n] => {
            restore(pool, image, target, Some(n.parse().map_err(|_| format!("--backup {n:?}: not a number"))?))
        }
        _ => Err(USAGE.into()),
    }
}

fn passphrase() -> Result<Vec<u8>> {
    Ok(rbd_wasm_guest::secrets::get("repo-passphrase").map_err(|e| format!("the secret repo-passphrase: {e}"))?)
}

fn random(buf: &mut [u8]) {
    let bytes = wasip2::random::random::get_random_bytes(buf.len() as u64);
    buf.copy_from_slice(&bytes);
}

fn root() -> PathBuf {
    PathBuf::from(ROOT)
}

fn init(chunk_size: u32) -> Result<()> {
    let path = root().join("config");
    if path.exists() {
        return Err(format!("{} exists: this is a repository already", path.display()).into());
    }
    let (config, _) = Config::create(&passphrase()?, chunk_size, &mut random)?;
    write_atomically(&path, &config.to_json())?;
    println!("a repository of {chunk_size}-byte chunks in {ROOT}");
    Ok(())
}

/// The repository's config and keys.
fn open_repo() -> Result<(Config, Keys)> {
    let bytes = fs::read(root().join("config")).map_err(|e| format!("{ROOT}/config: {e} (run `init` first)"))?;
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
fn manifests(keys: &Keys, pool: &str, image: &str) -> Result<Vec<Manifest>> {
    let (_, backups) = image_dirs(pool, image)?;
    let dir = root().join(&backups);
    let mut found = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(format!("{}: {e}", dir.display()).into()),
    };
    for entry in entries {
        let path = entry?.path();
        let Some(n) = path.file_name().and_then(|f| f.to_str()).and_then(|f| f.strip_suffix(".json")).and_then(backup_repo::parse_number) else {
            continue;
        };
        let manifest = Manifest::decode(&fs::read(&path)?, &keys.mac).map_err(|e| format!("{}: {e}", path.display()))?;
        if manifest.number != n || manifest.pool != pool || manifest.image != image {
            return Err(format!("{}: the manifest of backup {} of {}/{}", path.display(), manifest.number, manifest.pool, manifest.image).into());
        }
        found.push(manifest);
    }
    found.sort_by_key(|m| m.number);
    Ok(found)
}

/// A backup's index, authenticated and checked against its manifest.
fn read_index(keys: &Keys, manifest: &Manifest) -> Result<Index> {
    let path = root().join(&manifest.index);
    let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)) != manifest.index_sha256 {
        return Err(format!("{}: not the index its manifest names", path.display()).into());
    }
    Ok(Index::decode(&bytes, &keys.mac).map_err(|e| format!("{}: {e}", path.display()))?)
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

fn backup(pool_name: &str, image_name: &str) -> Result<()> {
    let (config, keys) = open_repo()?;
    let chunk = u64::from(config.chunk_size);
    let codec = ChunkCodec::new(&keys.data, &keys.id)?;
    let previous = manifests(&keys, pool_name, image_name)?;
    let n = previous.last().map_or(1, |m| m.number + 1);
    let snapshot = format!("{SNAPSHOT_PREFIX}{n}");
    let pool = open_pool(pool_name)?;
    let head = pool.open(image_name)?;
    let snaps: Vec<String> = head.list_snaps()?.into_iter().map(|s| s.name).collect();
    head.create_snap(&snapshot)?;
    let image = pool.open_at_snapshot(image_name, &snapshot)?;
    let size = image.size()?;
    let chunks = size.div_ceil(chunk);

    // The chunks to read: all allocated ones, or those changed since a base backup whose
    // snapshot the image still has.
    let base = previous.last().filter(|m| snaps.contains(&m.snapshot) && m.image_size == size);
    let mut ids: Vec<Option<ChunkId>> = match base {
        Some(m) => per_chunk(&read_index(&keys, m)?),
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
            let path = root().join(id.path());
            if !path.exists() {
                let sealed = codec.seal(&data)?;
                fs::create_dir_all(path.parent().ok_or("a chunk path has a parent")?)?;
                write_atomically(&path, &sealed.sealed)?;
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
    fs::create_dir_all(root().join(&index_dir))?;
    write_atomically(&root().join(&index_rel), &index_bytes)?;
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
    fs::create_dir_all(root().join(&backups_dir))?;
    write_atomically(&root().join(format!("{backups_dir}/{n}.json")), &manifest.encode(&keys.mac))?;
    println!(
        "backup {n} of {pool_name}/{image_name}: {read} chunks read{}, {stored} new stored ({written} bytes sealed)",
        if base.is_some() { " (changed since the last backup)" } else { "" }
    );
    Ok(())
}

fn restore(pool_name: &str, image_name: &str, target: &str, number: Option<u64>) -> Result<()> {
    let (_, keys) = open_repo()?;
    let codec = ChunkCodec::new(&keys.data, &keys.id)?;
    let all = manifests(&keys, pool_name, image_name)?;
    let manifest = match number {
        Some(n) => all.iter().find(|m| m.number == n).ok_or_else(|| format!("no complete backup {n} of {pool_name}/{image_name}"))?,
        None => all.last().ok_or_else(|| format!("no complete backup of {pool_name}/{image_name}"))?,
    };
    let index = read_index(&keys, manifest)?;
    let pool = open_pool(pool_name)?;
    pool.create(target, manifest.image_size)?;
    let image = pool.open(target)?;
    let chunk = u64::from(index.chunk_size);
    let mut written = 0u64;
    for (k, id) in per_chunk(&index).into_iter().enumerate() {
        let Some(id) = id else { continue };
        let path = root().join(id.path());
        let sealed = fs::read(&path).map_err(|e| format!("chunk {} of backup {}: {e}", id.hex(), manifest.number))?;
        let data = codec.open(&id.0, &sealed).map_err(|e| format!("backup {}: {e}", manifest.number))?;
        write_all(&image, k as u64 * chunk, &data)?;
        written += 1;
    }
    println!("restored backup {} of {pool_name}/{image_name} to {target}: {written} chunks, each checked against its id", manifest.number);
    Ok(())
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
