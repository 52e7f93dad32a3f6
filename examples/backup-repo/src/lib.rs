//! The backup repository that the backup, restore and verify jobs share.
//!
//! One directory per image, `ROOT/POOL/IMAGE/`, holds numbered backups: `N.rbddiff`, a
//! stream in the `rbd export-diff` v1 format (so Ceph's `rbd import-diff` restores it), and
//! `N.json`, its [`Manifest`]. The manifest is written last, through a temporary name, so a
//! backup is complete if and only if its manifest exists; `*.tmp` files are never backups.

pub mod digest;
pub mod hash;
pub mod stream;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rbd_wasm_guest::Range;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Where the host maps the job's output directory.
pub const ROOT: &str = "/out";

/// The name of the snapshot backup `n` is of.
pub fn snapshot_name(n: u64) -> String {
    format!("backup-{n}")
}

/// The `n` of a `backup-N` snapshot name.
pub fn snapshot_number(name: &str) -> Option<u64> {
    name.strip_prefix("backup-")?.parse().ok()
}

/// What `N.json` records about `N.rbddiff`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub pool: String,
    pub image: String,
    /// None for a full backup.
    pub from_snapshot: Option<String>,
    pub to_snapshot: String,
    /// The image's size at the to-snapshot.
    pub size: u64,
    /// The stream's file name, beside the manifest.
    pub stream: String,
    pub stream_bytes: u64,
    pub stream_sha256: String,
    /// The image's digest at the to-snapshot: sha256 over the sha256 of each
    /// `chunk_size`-byte chunk (see [`digest`]).
    pub image_digest: String,
    pub chunk_size: u64,
    /// The file of the chunk digests (`N.sums`), from which the next incremental backup
    /// knows its digest without reading unchanged chunks; and its sha256.
    pub sums: String,
    pub sums_sha256: String,
}

/// One image's directory of backups.
pub struct Repo {
    dir: PathBuf,
}

impl Repo {
    pub fn new(root: &Path, pool: &str, image: &str) -> Repo {
        Repo { dir: root.join(pool).join(image) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stream_path(&self, manifest: &Manifest) -> PathBuf {
        self.dir.join(&manifest.stream)
    }

    /// The chunk digests of a backup's to-snapshot, if their file is whole.
    pub fn chunk_sums(&self, manifest: &Manifest) -> Result<digest::ChunkSums> {
        let path = self.dir.join(&manifest.sums);
        let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if hex::encode(Sha256::digest(&bytes)) != manifest.sums_sha256 {
            return Err(format!("{}: damaged (its sha256 is not the manifest's)", path.display()).into());
        }
        digest::ChunkSums::decode(&bytes)
    }

    /// Every complete backup, oldest first: (N, manifest).
    pub fn backups(&self) -> Result<Vec<(u64, Manifest)>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("{}: {e}", self.dir.display()).into()),
        };
        let mut backups = Vec::new();
        for entry in entries {
            // Another runner may rename a temporary file while this lists the directory;
            // under WASI the listing then reports the vanished name as an error.
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("listing {}: {e}", self.dir.display()).into()),
            };
            let Some(n) = path
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let manifest: Manifest =
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: not a backup manifest: {e}", path.display()))?;
            backups.push((n, manifest));
        }
        backups.sort_by_key(|(n, _)| *n);
        Ok(backups)
    }

    /// The backups to apply, in order, to restore the to-snapshot of backup `n` (the newest
    /// if None): back through the from-snapshots to a full backup.
    pub fn chain(&self, n: Option<u64>) -> Result<Vec<Manifest>> {
        let backups = self.backups()?;
        let last = match n {
            Some(n) => backups.iter().find(|(m, _)| *m == n).ok_or_else(|| format!("no complete backup {n} in {}", self.dir.display()))?,
            None => backups.last().ok_or_else(|| format!("no complete backup in {}", self.dir.display()))?,
        };
        let mut chain = vec![last.1.clone()];
        while let Some(from) = chain.last().and_then(|m| m.from_snapshot.clone()) {
            let base = backups
                .iter()
                .rev()
                .find(|(_, m)| m.to_snapshot == from)
                .ok_or_else(|| format!("the chain is broken: no backup of {from} in {}", self.dir.display()))?;
            chain.push(base.1.clone());
        }
        chain.reverse();
        Ok(chain)
    }

    /// Remove what killed runs left: temporary files are never backups.
    pub fn clear_temporary_files(&self) -> Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("listing {}: {e}", self.dir.display()).into()),
            };
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
            }
        }
        Ok(())
    }
}

/// Write `bytes` to `path` through a temporary name, synced before the rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let context = |e: std::io::Error| format!("writing {}: {e}", tmp.display());
    let mut f = fs::File::create(&tmp).map_err(context)?;
    f.write_all(bytes).map_err(context)?;
    f.sync_all().map_err(context)?;
    fs::rename(&tmp, path).map_err(context)?;
    Ok(())
}

/// Most bytes asked of the host in one read: well under its per-call limit.
pub const READ_PIECE: u64 = 4 << 20;
/// How many pieces go in one `read-ranges` call (the host keeps them in flight together).
pub const PIECES_PER_CALL: usize = 8;

/// `[offset, offset + length)` cut into pieces of at most [`READ_PIECE`] bytes.
pub fn pieces(offset: u64, length: u64) -> impl Iterator<Item = Range> {
    let end = offset + length;
    (offset..end).step_by(READ_PIECE as usize).map(move |o| Range { offset: o, length: READ_PIECE.min(end - o) })
}

/// sha256 of a file, and its length.
pub fn file_sha256(path: &Path) -> Result<(String, u64)> {
    let mut file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = hash::Hasher::new();
    let bytes = std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, &mut file), &mut hasher)?;
    Ok((hex::encode(hasher.finish()), bytes))
}

/// Check a backup's stream against its manifest before anything trusts it.
pub fn check_stream(repo: &Repo, manifest: &Manifest) -> Result<()> {
    let path = repo.stream_path(manifest);
    let (sha, bytes) = file_sha256(&path)?;
    if bytes != manifest.stream_bytes || sha != manifest.stream_sha256 {
        return Err(format!(
            "{}: the stream is damaged ({bytes} bytes, sha256 {sha}; the manifest says {} bytes, sha256 {})",
            path.display(),
            manifest.stream_bytes,
            manifest.stream_sha256
        )
        .into());
    }
    Ok(())
}
