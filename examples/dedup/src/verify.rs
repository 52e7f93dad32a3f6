//! `verify POOL IMAGE [--backup N | --all] [--deep | --sample PERCENT] [--compare]
//! [--skip-verified-within DAYS]`.
//!
//! Every mode first authenticates the manifests and indexes. Then, for each distinct chunk
//! the chosen backups refer to:
//! - by default, that it is present;
//! - `--deep`: that it opens (its tag, its decompression, its id: the bytes are the ones
//!   backed up);
//! - `--sample PERCENT`: deep for a random PERCENT of the chunks, present for the rest (a
//!   cheap recurring check that finds widespread damage without reading everything).
//!
//! `--compare` also reads the backup's snapshot, if the image still has it, and checks that
//! each chunk's id is the one in the index (the backup says what the image said).
//!
//! `--skip-verified-within DAYS` skips a backup that a check at least as thorough passed
//! within DAYS days (recorded in `verified/POOL/IMAGE/N.json` after each pass), so a daily
//! run spreads deep checks over time instead of rereading the repository every day.

use std::collections::HashSet;

use backup_repo::Result;
use dedup_repo::chunk::ChunkId;
use serde::{Deserialize, Serialize};

use crate::store::{now, random, Store};
use crate::{image_dir, manifests, open_repo, per_chunk, read_index, Opts};

/// How thorough a pass was; a record of a stronger pass also covers a weaker one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Depth {
    Present,
    Sampled,
    Deep,
}

#[derive(Serialize, Deserialize)]
struct Record {
    depth: Depth,
    compared: bool,
    at: u64,
}

pub fn verify(store: &Store, pool_name: &str, image_name: &str, opts: &Opts) -> Result<()> {
    let depth = match (opts.flag("--deep"), opts.number("--sample")?) {
        (true, Some(_)) => return Err("--deep and --sample: choose one".into()),
        (true, None) => Depth::Deep,
        (false, Some(p)) if (1..=100).contains(&p) => Depth::Sampled,
        (false, Some(p)) => return Err(format!("--sample {p}: a percentage, 1 to 100").into()),
        (false, None) => Depth::Present,
    };
    let percent = opts.number("--sample")?.unwrap_or(100);
    let compare = opts.flag("--compare");
    let (_, keys) = open_repo(store)?;
    let all = manifests(store, &keys, pool_name, image_name)?;
    let chosen: Vec<u64> = match (opts.flag("--all"), opts.number("--backup")?) {
        (true, Some(_)) => return Err("--all and --backup: choose one".into()),
        (true, None) => all.iter().map(|m| m.number).collect(),
        (false, Some(n)) if all.iter().any(|m| m.number == n) => vec![n],
        (false, Some(n)) => return Err(format!("no complete backup {n} of {pool_name}/{image_name}").into()),
        (false, None) => vec![all.last().ok_or_else(|| format!("no complete backup of {pool_name}/{image_name}"))?.number],
    };
    let verified_dir = image_dir("verified", pool_name, image_name)?;
    let record_path = |n: u64| format!("{verified_dir}/{n}.json");
    let within = opts.number("--skip-verified-within")?.map(|days| days * 86_400);

    let codec = rbd_wasm_guest::ChunkCodec::new(&keys.data, &keys.id)?;
    let mut checked: HashSet<ChunkId> = HashSet::new();
    let (mut missing, mut damaged, mut mismatched, mut skipped, mut passed) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut opened = 0u64;
    for manifest in all.iter().filter(|m| chosen.contains(&m.number)) {
        if let Some(within) = within {
            let record = store.get(&record_path(manifest.number))?.and_then(|b| serde_json::from_slice::<Record>(&b).ok());
            if record.is_some_and(|r| r.depth >= depth && (r.compared || !compare) && now().saturating_sub(r.at) < within) {
                skipped.push(manifest.number);
                continue;
            }
        }
        let index = read_index(store, &keys, manifest)?;
        let (missing_before, damaged_before) = (missing.len(), damaged.len());
        for id in index.chunk_ids() {
            if !checked.insert(*id) {
                continue;
            }
            let deep = match depth {
                Depth::Deep => true,
                Depth::Sampled => {
                    let mut r = [0u8; 2];
                    random(&mut r);
                    u64::from(u16::from_le_bytes(r)) % 10_000 < percent * 100
                }
                Depth::Present => false,
            };
            if deep {
                match store.get(&id.path())? {
                    None => missing.push(id.hex()),
                    Some(sealed) => {
                        opened += 1;
                        if let Err(e) = codec.open(&id.0, &sealed) {
                            damaged.push(format!("{}: {e}", id.hex()));
                        }
                    }
                }
            } else if !store.exists(&id.path())? {
                missing.push(id.hex());
            }
        }
        let mut this_mismatched = 0;
        if compare {
            this_mismatched = compare_with_snapshot(pool_name, image_name, manifest, &index, &codec, &mut mismatched)?;
        }
        if missing.len() == missing_before && damaged.len() == damaged_before && this_mismatched == 0 {
            passed.push(manifest.number);
            let record = Record { depth, compared: compare, at: now() };
            store.put(&record_path(manifest.number), &serde_json::to_vec(&record)?)?;
        }
    }
    let what = match depth {
        Depth::Present => "present".to_string(),
        Depth::Sampled => format!("present ({opened} of them, {percent}% sampled, opened and rehashed)"),
        Depth::Deep => "present and whole (opened, decompressed, rehashed)".to_string(),
    };
    if !skipped.is_empty() {
        println!("skipped backups {skipped:?}: verified within {} days", within.unwrap_or(0) / 86_400);
    }
    if missing.is_empty() && damaged.is_empty() && mismatched.is_empty() {
        println!(
            "{pool_name}/{image_name}: backups {passed:?} verified: all {} chunks {what}{}",
            checked.len(),
            if compare { ", and the same as the snapshot where the image has it" } else { "" }
        );
        return Ok(());
    }
    Err(format!(
        "{pool_name}/{image_name}: of {} chunks, {} missing {:?}, {} damaged {:?}; {} differ from the snapshot {:?}",
        checked.len(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        damaged.len(),
        damaged.iter().take(5).collect::<Vec<_>>(),
        mismatched.len(),
        mismatched.iter().take(5).collect::<Vec<_>>(),
    )
    .into())
}

/// Read the backup's snapshot (if the image still has it) and compare each chunk's id with
/// the index's; how many differ (each named in `mismatched`).
fn compare_with_snapshot(
    pool_name: &str,
    image_name: &str,
    manifest: &dedup_repo::manifest::Manifest,
    index: &dedup_repo::index::Index,
    codec: &rbd_wasm_guest::ChunkCodec,
    mismatched: &mut Vec<String>,
) -> Result<usize> {
    let pool = rbd_wasm_guest::open_pool(pool_name)?;
    let head = pool.open(image_name)?;
    if !head.list_snaps()?.iter().any(|s| s.name == manifest.snapshot) {
        println!("backup {}: the image no longer has {}; not compared", manifest.number, manifest.snapshot);
        return Ok(0);
    }
    let image = pool.open_at_snapshot(image_name, &manifest.snapshot)?;
    let chunk = u64::from(index.chunk_size);
    let mut differ = 0;
    for (k, expected) in per_chunk(index).into_iter().enumerate() {
        let offset = k as u64 * chunk;
        let data = image.read(offset, chunk.min(manifest.image_size - offset))?;
        let actual = codec.ids(&data, index.chunk_size)[0].map(ChunkId);
        if actual != expected {
            differ += 1;
            mismatched.push(format!("backup {} chunk {k} (offset {offset})", manifest.number));
        }
    }
    Ok(differ)
}
