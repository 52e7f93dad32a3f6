//! `prune` and `gc`.
//!
//! `prune POOL IMAGE --keep-...` removes the manifests of the image's backups that the
//! retention policy does not keep (`dedup_repo::retention`: calendar periods in UTC), and
//! with `--dry-run` only prints the plan. A backup whose manifest is gone is no backup; its
//! index and the chunks no other backup refers to are left for `gc`.
//!
//! `gc` removes what no complete backup refers to: chunks, indexes without a manifest (a
//! pruned backup's, a killed run's), temporary files of killed writes, and dead runs'
//! leases. It holds the sweep lease ([`crate::lease`]) from before it reads the first
//! manifest to its last deletion, so no backup runs meanwhile: a chunk a backup found stored
//! and refers to, or one of its base's, is never swept from under it. A manifest or index
//! that does not authenticate stops it before anything is deleted (the chunks such a backup
//! refers to cannot be known). Killed at any point, it has deleted only unreferenced files;
//! its lease goes stale and the next run proceeds.

use std::collections::HashSet;
use std::time::Duration;

use backup_repo::Result;
use dedup_repo::chunk::ChunkId;
use dedup_repo::retention::{plan, Policy};

use crate::lease::{self, Lease};
use crate::store::{Store, TMP};
use crate::{image_dirs, manifests, open_repo, read_index, Opts};

pub fn prune(store: &Store, pool_name: &str, image_name: &str, opts: &Opts) -> Result<()> {
    let keep = |name: &str| -> Result<u32> { Ok(opts.number(name)?.unwrap_or(0).try_into().map_err(|_| format!("{name}: too large"))?) };
    let policy = Policy {
        last: keep("--keep-last")?,
        hourly: keep("--keep-hourly")?,
        daily: keep("--keep-daily")?,
        weekly: keep("--keep-weekly")?,
        monthly: keep("--keep-monthly")?,
        yearly: keep("--keep-yearly")?,
    };
    if policy.is_empty() {
        return Err("prune: no --keep-... given; a policy that keeps nothing is refused".into());
    }
    let (_, keys) = open_repo(store)?;
    let all = manifests(store, &keys, pool_name, image_name)?;
    let verdicts = plan(&policy, &all.iter().map(|m| (m.number, m.created)).collect::<Vec<_>>());
    let dry = opts.flag("--dry-run");
    let (_, backups_dir) = image_dirs(pool_name, image_name)?;
    let mut removed = 0;
    for v in &verdicts {
        if v.kept_by.is_empty() {
            println!("{} backup {} (made at {}): not kept by any rule", if dry { "would remove" } else { "remove" }, v.number, v.created);
            if !dry {
                store.delete(&format!("{backups_dir}/{}.json", v.number))?;
            }
            removed += 1;
        } else {
            println!("keep backup {} (made at {}): {}", v.number, v.created, v.kept_by.join(", "));
        }
    }
    println!(
        "{pool_name}/{image_name}: {} backups, {} kept, {removed} {}",
        verdicts.len(),
        verdicts.len() - removed,
        if dry { "would be removed (dry run: nothing changed)" } else { "removed (run gc to free their chunks)" }
    );
    Ok(())
}

pub fn gc(store: &Store, dry: bool, stale: u64, wait: Duration, pause_at: Option<&str>) -> Result<()> {
    let (_, keys) = open_repo(store)?;
    // A dry run changes nothing and takes no lease: what it counts may change meanwhile.
    let mut lease = match dry {
        true => None,
        false => match Lease::for_sweep(store, stale, wait)? {
            Some(lease) => Some(lease),
            None => return Err(format!("runs still held their leases after {} s: nothing was deleted", wait.as_secs()).into()),
        },
    };
    println!("sweep: marking what complete backups refer to");
    let mut referenced: HashSet<ChunkId> = HashSet::new();
    let mut live_indexes: HashSet<String> = HashSet::new();
    let mut backups = 0;
    for (pool, image) in images(store)? {
        for manifest in manifests(store, &keys, &pool, &image).map_err(|e| format!("{e}: nothing was deleted"))? {
            let index = read_index(store, &keys, &manifest).map_err(|e| format!("{e}: nothing was deleted"))?;
            referenced.extend(index.chunk_ids().copied());
            live_indexes.insert(manifest.index.clone());
            backups += 1;
            if let Some(lease) = &mut lease {
                lease.heartbeat()?;
            }
        }
    }
    println!("sweep: {backups} backups refer to {} chunks; removing the others", referenced.len());
    let (mut chunks, mut bytes, mut others) = (0u64, 0u64, 0u64);
    let mut kept = 0u64;
    for file in store.chunk_files()? {
        let (rel, size) = (file.rel, file.size);
        if file.id.is_some_and(|id| referenced.contains(&id)) {
            kept += 1;
            continue;
        }
        if let Some(lease) = &mut lease {
            lease.heartbeat()?;
            store.delete(&format!("chunks/{rel}"))?;
        }
        chunks += 1;
        bytes += size;
        if chunks % 64 == 0 {
            println!("sweep: {} {chunks} chunks", if dry { "would remove" } else { "removed" });
            if chunks == 64 {
                crate::pause(pause_at, "sweep");
            }
        }
    }
    for dir in ["indexes", "backups", "verified"] {
        for (rel, _) in store.list_tree(dir)? {
            let path = format!("{dir}/{rel}");
            let garbage = rel.contains(TMP) || (dir == "indexes" && !live_indexes.contains(&path));
            if garbage {
                if let Some(lease) = &mut lease {
                    lease.heartbeat()?;
                    store.delete(&path)?;
                }
                others += 1;
            }
        }
    }
    let leases = match &lease {
        Some(_) => lease::remove_stale(store, stale)?,
        None => 0,
    };
    drop(lease);
    println!(
        "gc: {kept} chunks kept; {} {chunks} chunks ({bytes} bytes), {others} other files (indexes of removed backups, temporary files){}",
        if dry { "would remove" } else { "removed" },
        if dry { " (dry run: nothing changed)".to_string() } else { format!(", {leases} dead runs' leases") }
    );
    Ok(())
}

/// Every (pool, image) with a backup directory.
fn images(store: &Store) -> Result<Vec<(String, String)>> {
    let mut found: Vec<(String, String)> = Vec::new();
    for (rel, _) in store.list_tree("backups")? {
        let mut parts = rel.split('/');
        let (Some(pool), Some(image), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else { continue };
        let (Some(pool), Some(image)) = (decode(pool), decode(image)) else { continue };
        if !found.iter().any(|(p, i)| *p == pool && *i == image) {
            found.push((pool, image));
        }
    }
    Ok(found)
}

fn decode(component: &str) -> Option<String> {
    backup_repo::decode_name(component)
}
