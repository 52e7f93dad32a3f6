//! Full and incremental backups of RBD images into the job's output directory, in the
//! `rbd export-diff` v1 stream format, so that the real `rbd import-diff` restores them.
//!
//! Arguments: `POOL IMAGE...`. For each image the job takes a snapshot `backup-N` (N one more
//! than the newest it finds), and writes `/out/POOL/IMAGE/N.rbddiff`: a diff from the
//! snapshot of the newest complete backup in that directory, if the image still has it, and
//! else a full one. Beside it, `N.json` says what the stream holds (image, from and to
//! snapshot, size, sha256 of the stream and of the image at the to-snapshot).
//!
//! Nothing that looks complete is ever half-written: the stream is written under a
//! temporary name and renamed when it is complete and synced, and the manifest, written the
//! same way after it, is the commit point. A backup is complete if and only if its manifest
//! exists.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rbd_wasm_guest::{open_pool, report_progress, Image, Pool, Range};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// What `N.json` records about `N.rbddiff`.
#[derive(Debug, Serialize, Deserialize)]
struct BackupManifest {
    pool: String,
    image: String,
    /// None for a full backup.
    from_snapshot: Option<String>,
    to_snapshot: String,
    size: u64,
    stream: String,
    stream_bytes: u64,
    stream_sha256: String,
    image_sha256: String,
}

/// Most bytes read from the image in one `read-ranges` call.
const BATCH_BYTES: u64 = 32 << 20;

/// A writer that hashes what it writes.
struct Hashing<W: Write> {
    inner: W,
    sha: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn record_name(w: &mut impl Write, tag: u8, name: &str) -> std::io::Result<()> {
    w.write_all(&[tag])?;
    w.write_all(&(name.len() as u32).to_le_bytes())?;
    w.write_all(name.as_bytes())
}

/// The newest complete backup in `dir`: (N, its manifest).
fn newest_backup(dir: &Path) -> Result<Option<(u64, BackupManifest)>> {
    let mut newest: Option<(u64, BackupManifest)> = None;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let path = entry?.path();
        let Some(n) = path
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if newest.as_ref().is_some_and(|(m, _)| *m >= n) {
            continue;
        }
        let manifest: BackupManifest = serde_json::from_slice(&fs::read(&path)?)?;
        newest = Some((n, manifest));
    }
    Ok(newest)
}

/// Write `bytes` to `path` through a temporary name, synced before the rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

fn backup_image(pool: &Pool, pool_name: &str, image_name: &str) -> Result<()> {
    let dir = PathBuf::from("/out").join(pool_name).join(image_name);
    fs::create_dir_all(&dir)?;
    // What a killed run left: temporary files, never mistaken for backups; clear them.
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            fs::remove_file(&path)?;
        }
    }
    let head = pool.open(image_name)?;

    // The snapshot this backup is of: one more than any `backup-N` the image or the
    // directory knows, so a name is never reused.
    let previous = newest_backup(&dir)?;
    let snaps = head.list_snaps()?;
    let highest_snap = snaps
        .iter()
        .filter_map(|s| s.name.strip_prefix("backup-").and_then(|n| n.parse::<u64>().ok()))
        .max()
        .unwrap_or(0);
    let n = highest_snap.max(previous.as_ref().map_or(0, |(n, _)| *n)) + 1;
    let to = format!("backup-{n}");
    head.create_snap(&to)?;

    // Incremental from the last backed-up snapshot if the image still has it; else full.
    let from = previous
        .map(|(_, m)| m.to_snapshot)
        .filter(|base| snaps.iter().any(|s| &s.name == base));

    let image = pool.open_at_snapshot(image_name, &to)?;
    let size = image.size()?;
    let stream_name = format!("{n}.rbddiff");
    let tmp = dir.join(format!("{n}.rbddiff.tmp"));
    let file = fs::File::create(&tmp)?;
    let mut out = Hashing { inner: BufWriter::with_capacity(1 << 20, file), sha: Sha256::new(), bytes: 0 };
    out.write_all(b"rbd diff v1\n")?;
    if let Some(from) = &from {
        record_name(&mut out, b'f', from)?;
    }
    record_name(&mut out, b't', &to)?;
    out.write_all(b"s")?;
    out.write_all(&size.to_le_bytes())?;
    write_extents(&image, from.as_deref(), size, &mut out)?;
    out.write_all(b"e")?;
    let Hashing { inner, sha, bytes } = out;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(&stream_name))?;

    let manifest = BackupManifest {
        pool: pool_name.into(),
        image: image_name.into(),
        from_snapshot: from.clone(),
        to_snapshot: to.clone(),
        size,
        stream: stream_name,
        stream_bytes: bytes,
        stream_sha256: hex::encode(sha.finalize()),
        image_sha256: image_sha256(&image, size)?,
    };
    write_atomically(&dir.join(format!("{n}.json")), &serde_json::to_vec_pretty(&manifest)?)?;
    match &from {
        Some(from) => println!("{pool_name}/{image_name}: incremental backup {from} -> {to}, {bytes} bytes"),
        None => println!("{pool_name}/{image_name}: full backup of {to}, {bytes} bytes"),
    }
    Ok(())
}

/// The `w` and `z` records: data where the diff says data, zeroes where it says zeroes.
fn write_extents(image: &Image, from: Option<&str>, size: u64, out: &mut impl Write) -> Result<()> {
    let mut iter = image.diff_iterate(0, size, from)?;
    let mut done = 0u64;
    while let Some(batch) = iter.next_batch()? {
        // Read the data extents of the batch a slice at a time, several reads in flight.
        let mut pending: Vec<(u64, u64)> = Vec::new();
        let mut pending_bytes = 0u64;
        for extent in batch {
            if extent.exists {
                pending.push((extent.offset, extent.length));
                pending_bytes += extent.length;
                if pending_bytes >= BATCH_BYTES {
                    flush_data(image, &mut pending, out)?;
                    pending_bytes = 0;
                }
            } else {
                flush_data(image, &mut pending, out)?;
                pending_bytes = 0;
                out.write_all(b"z")?;
                out.write_all(&extent.offset.to_le_bytes())?;
                out.write_all(&extent.length.to_le_bytes())?;
            }
            done = extent.offset + extent.length;
        }
        flush_data(image, &mut pending, out)?;
        report_progress(&format!("backup {}", image.name()), done, Some(size));
    }
    Ok(())
}

fn flush_data(image: &Image, pending: &mut Vec<(u64, u64)>, out: &mut impl Write) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    // Split long extents so no single read is over the host's per-call limit.
    let mut ranges = Vec::new();
    for &(offset, length) in pending.iter() {
        let mut o = offset;
        while o < offset + length {
            let l = (4 << 20).min(offset + length - o);
            ranges.push(Range { offset: o, length: l });
            o += l;
        }
    }
    for chunk in ranges.chunks(8) {
        for (range, data) in chunk.iter().zip(image.read_ranges(chunk)?) {
            out.write_all(b"w")?;
            out.write_all(&range.offset.to_le_bytes())?;
            out.write_all(&(data.len() as u64).to_le_bytes())?;
            out.write_all(&data)?;
        }
    }
    pending.clear();
    Ok(())
}

fn image_sha256(image: &Image, size: u64) -> Result<String> {
    let mut sha = Sha256::new();
    let mut offset = 0;
    while offset < size {
        let ranges: Vec<Range> = (0..8)
            .map(|i| offset + i * (4 << 20))
            .filter(|&o| o < size)
            .map(|o| Range { offset: o, length: (4 << 20).min(size - o) })
            .collect();
        for data in image.read_ranges(&ranges)? {
            offset += data.len() as u64;
            sha.update(&data);
        }
    }
    Ok(hex::encode(sha.finalize()))
}

fn run(args: Vec<String>) -> Result<()> {
    let (pool_name, images) = args.split_first().ok_or("usage: POOL IMAGE...")?;
    if images.is_empty() {
        return Err("usage: POOL IMAGE...".into());
    }
    let pool = open_pool(pool_name)?;
    for image in images {
        backup_image(&pool, pool_name, image).map_err(|e| format!("{pool_name}/{image}: {e}"))?;
    }
    Ok(())
}

rbd_wasm_guest::job!(run);
