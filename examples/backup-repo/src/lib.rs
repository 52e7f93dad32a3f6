//! The backup repository that the backup, restore and verify jobs share.
//!
//! One directory per image, `ROOT/POOL/IMAGE/`, holds numbered backups: `N.rbddiff`, a
//! stream in the `rbd export-diff` v1 format (so Ceph's `rbd import-diff` restores it),
//! `N.sums`, the image's chunk digests (see [`digest`]), and `N.json`, its [`Manifest`]. The
//! manifest is written last, through a temporary name, so a backup is complete if and only
//! if its manifest exists; `*.tmp` files are never backups.
//!
//! # Names in paths
//!
//! `POOL` and `IMAGE` are the pool's and the image's names, each encoded into one path
//! component by [`encode_name`]: the bytes `A`-`Z`, `a`-`z`, `0`-`9`, `.`, `_` and `-`
//! stand for themselves, every other byte (`/`, `%`, NUL, a space, each byte of a non-ASCII
//! character...) is written `%XX`, two upper-case hex digits, and so is a leading `.`. So
//! `vm-1` is `vm-1`, `a/b` is `a%2Fb`, `..` is `%2E.` and `.x` is `%2Ex`: no name escapes its
//! directory or shares another's, and [`decode_name`] gives the name back. An empty name, or
//! one longer than [`MAX_COMPONENT`] bytes once encoded, has no directory and is refused.
//!
//! # What a manifest may name
//!
//! The repository may have been written by someone else, so nothing in it becomes a path
//! unchecked. `N` is a backup number in decimal without a sign or leading zeroes; other
//! files are not backups. Manifest `N.json` must be of the pool and image of its directory
//! and name exactly `N.rbddiff` and `N.sums`; a from-snapshot must be the to-snapshot of an
//! older backup (a smaller N), so a chain always ends.

pub mod digest;
pub mod hash;
pub mod stream;

use std::fmt::Write as _;
use std::fs;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use rbd_wasm_guest::Range;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// How many times a listing that met a vanishing file is taken again before giving up.
const LISTING_ATTEMPTS: usize = 20;

/// Where the host maps the job's output directory.
pub const ROOT: &str = "/out";

/// Longest encoded pool or image name: the usual limit of a file name (`NAME_MAX`).
pub const MAX_COMPONENT: usize = 255;

/// Largest manifest read: a real one is well under a kilobyte.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// `n` as a `usize`, or an error naming `what` (a job is wasm32: its `usize` has 32 bits).
pub fn to_usize(n: u64, what: &str) -> Result<usize> {
    usize::try_from(n).map_err(|_| format!("{what} of {n}: more than this job can address").into())
}

/// A backup number: decimal digits without a sign or leading zeroes (`0` alone is zero).
pub fn parse_number(s: &str) -> Option<u64> {
    let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

/// The name of the snapshot backup `n` is of.
pub fn snapshot_name(n: u64) -> String {
    format!("backup-{n}")
}

/// The `n` of a `backup-N` snapshot name.
pub fn snapshot_number(name: &str) -> Option<u64> {
    parse_number(name.strip_prefix("backup-")?)
}

/// Whether `b` stands for itself in an encoded name (a `.` only after the first byte).
fn plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// A pool or image name as one path component (see the crate docs): plain names are
/// themselves, every other byte and a leading `.` are `%XX`.
pub fn encode_name(name: &str) -> Result<String> {
    if name.is_empty() {
        return Err("an empty name has no directory in the repository".into());
    }
    let mut out = String::with_capacity(name.len());
    for (i, &b) in name.as_bytes().iter().enumerate() {
        if plain_byte(b) && !(i == 0 && b == b'.') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    if out.len() > MAX_COMPONENT {
        return Err(format!(
            "the name {name:?} is too long for the repository ({} bytes encoded, at most {MAX_COMPONENT})",
            out.len()
        )
        .into());
    }
    Ok(out)
}

/// The name [`encode_name`] encoded as `component`; None if no name encodes to it.
pub fn decode_name(component: &str) -> Option<String> {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = component.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    // Only the one encoding of each name: no `%2e`, no `%41` for `A`, no bare `.` first.
    (encode_name(&name).ok()? == component).then_some(name)
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
    /// The stream's file name, beside the manifest: `N.rbddiff`.
    pub stream: String,
    pub stream_bytes: u64,
    /// The stream's check, which hashes each byte of a backup once (see [`StreamCheck`]).
    /// Absent from the manifests of older jobs, which have `stream_sha256` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_check: Option<StreamCheck>,
    /// The sha256 of the stream file (`sha256sum`), in an older job's manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_sha256: Option<String>,
    /// The image's digest at the to-snapshot, of its `chunk_size`-byte chunks (see
    /// [`digest`]; the way it is computed is `digest_version`).
    pub image_digest: String,
    /// [`DIGEST_VERSION`] for the digests this job writes; 0 (absent) for the whole-image
    /// digests of older jobs (`digest::image_digest_v1`), which the restore and verify jobs
    /// still check. Their sums files are not read: a backup over one is a full backup.
    #[serde(default)]
    pub digest_version: u32,
    pub chunk_size: u64,
    /// The file of the chunk digests that changed (`N.sums`, see [`digest`]), from which
    /// the next incremental backup knows its digest without reading unchanged chunks; and
    /// its sha256.
    pub sums: String,
    pub sums_sha256: String,
}

/// A stream's check as a manifest records it: `method` is [`rbddiff_check::METHOD`],
/// `chunked-sha256`, the SHA-256 of the stream with each `w` record's data replaced by the
/// SHA-256 of each of its pieces, cut at image offsets that are multiples of `chunk_size`
/// (docs/backup-format.md; `tools/rbddiff-check.py` computes it from a file). The backup's
/// reads hashed those chunks already, so the stream's data is not hashed a second time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamCheck {
    pub method: String,
    pub chunk_size: u64,
    /// Hex.
    pub digest: String,
}

/// The image digest's version that [`digest`] computes and its sums files hold.
pub const DIGEST_VERSION: u32 = 2;

/// The stream file of backup `n`.
pub fn stream_file(n: u64) -> String {
    format!("{n}.rbddiff")
}

/// The chunk digests file of backup `n`.
pub fn sums_file(n: u64) -> String {
    format!("{n}.sums")
}

/// The manifest file of backup `n`.
pub fn manifest_file(n: u64) -> String {
    format!("{n}.json")
}

impl Manifest {
    /// The backup number its file names give: `stream` and `sums` must be `N.rbddiff` and
    /// `N.sums` for one backup number N.
    pub fn number(&self) -> Result<u64> {
        let n = self
            .stream
            .strip_suffix(".rbddiff")
            .and_then(parse_number)
            .ok_or_else(|| format!("not a backup manifest: stream `{}` is not `N.rbddiff`", self.stream))?;
        self.check_files(n)?;
        Ok(n)
    }

    /// That it names `n.rbddiff` and `n.sums`, and nothing else.
    fn check_files(&self, n: u64) -> Result<()> {
        for (what, name, want) in [("stream", &self.stream, stream_file(n)), ("sums", &self.sums, sums_file(n))] {
            if *name != want {
                return Err(format!("not a backup manifest: {what} `{name}` is not `{want}`").into());
            }
        }
        Ok(())
    }

    /// That this is the manifest of backup `n` of `pool/image`.
    pub fn check(&self, n: u64, pool: &str, image: &str) -> Result<()> {
        self.check_files(n)?;
        if self.pool != pool || self.image != image {
            return Err(format!(
                "not a backup manifest of {pool:?}/{image:?}: it says it is of {:?}/{:?}",
                self.pool, self.image
            )
            .into());
        }
        Ok(())
    }
}

/// One image's directory of backups.
pub struct Repo {
    dir: PathBuf,
    pool: String,
    image: String,
}

impl Repo {
    /// The directory of `pool/image` under `root`: `root/POOL/IMAGE`, each name encoded by
    /// [`encode_name`]. An error for a name that has no directory (empty, or too long).
    pub fn new(root: &Path, pool: &str, image: &str) -> Result<Repo> {
        let pool_dir = encode_name(pool).map_err(|e| format!("pool {pool:?}: {e}"))?;
        let image_dir = encode_name(image).map_err(|e| format!("image {image:?}: {e}"))?;
        Ok(Repo { dir: root.join(pool_dir).join(image_dir), pool: pool.into(), image: image.into() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pool and the image this directory holds backups of.
    pub fn pool_and_image(&self) -> (&str, &str) {
        (&self.pool, &self.image)
    }

    /// The path of a backup's stream; made of the backup's number, never of the manifest's
    /// text.
    pub fn stream_path(&self, manifest: &Manifest) -> Result<PathBuf> {
        Ok(self.dir.join(stream_file(manifest.number()?)))
    }

    /// The path of a backup's chunk digests, as [`Repo::stream_path`].
    pub fn sums_path(&self, manifest: &Manifest) -> Result<PathBuf> {
        Ok(self.dir.join(sums_file(manifest.number()?)))
    }

    /// The sums files that the chunk digests of backup `n` are read from, newest first (its
    /// own, then its base's, down to one with no base; see [`digest::Layers`]), each checked
    /// whole against its manifest's sha256 before it is read. `backups` is [`Repo::backups`].
    pub fn sums_layers(&self, n: u64, backups: &[(u64, Manifest)]) -> Result<Vec<digest::SumsReader<BufReader<fs::File>>>> {
        let mut layers = Vec::new();
        let mut at = Some(n);
        while let Some(k) = at {
            if layers.len() > digest::MAX_LAYERS {
                return Err(format!("the chunk sums of backup {n} are a chain of more than {} files", digest::MAX_LAYERS).into());
            }
            let (_, manifest) = backups
                .iter()
                .find(|(m, _)| *m == k)
                .ok_or_else(|| format!("the chunk sums of backup {n} need those of backup {k}, which is not complete"))?;
            if manifest.digest_version != DIGEST_VERSION {
                return Err(format!(
                    "backup {k} has digests of version {} (an older job's); this job reads version {DIGEST_VERSION}",
                    manifest.digest_version
                )
                .into());
            }
            let path = self.dir.join(sums_file(k));
            if sha256_of_file(&path)? != manifest.sums_sha256 {
                return Err(format!("{}: damaged (its sha256 is not the manifest's)", path.display()).into());
            }
            let file = fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let reader = digest::SumsReader::new(BufReader::with_capacity(1 << 16, file)).map_err(|e| format!("{}: {e}", path.display()))?;
            if reader.size() != manifest.size {
                return Err(format!("{}: the digests of {} bytes, the manifest says {}", path.display(), reader.size(), manifest.size).into());
            }
            at = reader.base();
            if at.is_some_and(|base| base >= k) {
                return Err(format!("{}: changes backup {at:?}, not an older one", path.display()).into());
            }
            layers.push(reader);
        }
        Ok(layers)
    }

    /// Every complete backup, oldest first: (N, manifest). Each manifest is checked to be
    /// of this image and to name only its own files.
    pub fn backups(&self) -> Result<Vec<(u64, Manifest)>> {
        // Another runner may rename a temporary file while this lists the directory; under
        // WASI the listing then reports the vanished name as an error, and may end there,
        // without the names after it. A listing that met one is taken again.
        for _ in 0..LISTING_ATTEMPTS {
            if let Some(names) = self.list_once()? {
                return self.read_manifests(names);
            }
        }
        Err(format!("listing {}: files kept vanishing while it was listed", self.dir.display()).into())
    }

    /// The directory's entries, or None when one vanished while it was listed.
    fn list_once(&self) -> Result<Option<Vec<PathBuf>>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(Vec::new())),
            Err(e) => return Err(format!("{}: {e}", self.dir.display()).into()),
        };
        let mut names = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => names.push(entry.path()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(format!("listing {}: {e}", self.dir.display()).into()),
            }
        }
        Ok(Some(names))
    }

    fn read_manifests(&self, names: Vec<PathBuf>) -> Result<Vec<(u64, Manifest)>> {
        let mut backups = Vec::new();
        for path in names {
            let Some(n) = path
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_suffix(".json"))
                .and_then(parse_number)
            else {
                continue;
            };
            let bytes = read_at_most(&path, MAX_MANIFEST_BYTES)?;
            if bytes.len() as u64 > MAX_MANIFEST_BYTES {
                return Err(format!("{}: not a backup manifest: more than {MAX_MANIFEST_BYTES} bytes", path.display()).into());
            }
            let manifest: Manifest =
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: not a backup manifest: {e}", path.display()))?;
            manifest.check(n, &self.pool, &self.image).map_err(|e| format!("{}: {e}", path.display()))?;
            backups.push((n, manifest));
        }
        backups.sort_by_key(|(n, _)| *n);
        Ok(backups)
    }

    /// The backups to apply, in order, to restore the to-snapshot of backup `n` (the newest
    /// if None): back through the from-snapshots to a full backup. Each step goes to an
    /// older backup (a smaller number); a from-snapshot that only a backup as new or newer
    /// has is a loop, and an error.
    pub fn chain(&self, n: Option<u64>) -> Result<Vec<Manifest>> {
        let backups = self.backups()?;
        let last = match n {
            Some(n) => backups.iter().find(|(m, _)| *m == n).ok_or_else(|| format!("no complete backup {n} in {}", self.dir.display()))?,
            None => backups.last().ok_or_else(|| format!("no complete backup in {}", self.dir.display()))?,
        };
        let mut chain = vec![last.1.clone()];
        let mut at = last.0;
        while let Some(from) = chain.last().and_then(|m| m.from_snapshot.clone()) {
            let of_from = |(_, m): &&(u64, Manifest)| m.to_snapshot == from;
            let Some((base_n, base)) = backups.iter().rev().filter(|(k, _)| *k < at).find(of_from) else {
                if let Some((k, _)) = backups.iter().find(of_from) {
                    return Err(format!(
                        "the chain loops: backup {at} is from {from}, which is backup {k}, not an older one (in {})",
                        self.dir.display()
                    )
                    .into());
                }
                return Err(format!("the chain is broken: no backup of {from} in {}", self.dir.display()).into());
            };
            chain.push(base.clone());
            at = *base_n;
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

/// The sha256 of a file, read in pieces.
fn sha256_of_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf).map_err(|e| format!("{}: {e}", path.display()))? {
            0 => return Ok(hex::encode(hash.finalize())),
            n => hash.update(&buf[..n]),
        }
    }
}

/// The first `limit + 1` bytes of a file at most, so that a caller can tell one longer
/// than `limit` without reading (or allocating for) all of it.
fn read_at_most(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(bytes)
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

/// `[offset, offset + length)` cut into pieces of at most [`READ_PIECE`] bytes, in order;
/// a range past 2^64 is cut short there. Lazy: a range of terabytes costs nothing until
/// its pieces are taken.
pub fn pieces(offset: u64, length: u64) -> impl Iterator<Item = Range> {
    let end = offset.saturating_add(length);
    let mut at = offset;
    std::iter::from_fn(move || {
        (at < end).then(|| {
            let piece = Range { offset: at, length: READ_PIECE.min(end - at) };
            at += piece.length;
            piece
        })
    })
}

/// How a manifest's stream is checked: the hasher to feed and what it must give.
pub enum Expected<'a> {
    /// `chunked-sha256` with chunks of this size.
    Chunked(u32, &'a str),
    /// An older job's sha256 of the file.
    Plain(&'a str),
}

impl Manifest {
    /// How this backup's stream is checked; an error for a method this job does not know.
    pub fn expected_check(&self) -> Result<Expected<'_>> {
        match (&self.stream_check, &self.stream_sha256) {
            (Some(c), _) if c.method == rbddiff_check::METHOD => {
                let chunk = u32::try_from(c.chunk_size).ok().filter(|&n| n >= 4096).ok_or_else(|| {
                    format!("backup {}: a stream check with chunks of {} bytes", self.to_snapshot, c.chunk_size)
                })?;
                Ok(Expected::Chunked(chunk, &c.digest))
            }
            (Some(c), _) => {
                Err(format!("backup {}: a stream check of method {:?}, which this job does not know", self.to_snapshot, c.method).into())
            }
            (None, Some(sha)) => Ok(Expected::Plain(sha)),
            (None, None) => Err(format!("backup {}: its manifest has no stream check", self.to_snapshot).into()),
        }
    }

    /// A hasher of this backup's stream check, for the host's data plane (`write-from`).
    #[cfg(target_family = "wasm")]
    pub fn stream_hasher(&self) -> Result<rbd_wasm_guest::Sha256> {
        Ok(match self.expected_check()? {
            Expected::Chunked(chunk, _) => rbd_wasm_guest::Sha256::chunked(chunk),
            Expected::Plain(_) => rbd_wasm_guest::Sha256::new(),
        })
    }
}

/// A stream file's check, of the kind `manifest` records, and its length. A chunked check
/// needs the records: the job reads the headers, and the data goes to the hasher in parts
/// (inside a job, the host hashes them); a plain sha256 is of the file's bytes, which
/// inside a job never enter it.
pub fn file_check(path: &Path, manifest: &Manifest) -> Result<(String, u64)> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let chunk = match manifest.expected_check()? {
        Expected::Chunked(chunk, _) => chunk,
        Expected::Plain(_) => return file_sha256(path),
    };
    let file = fs::File::open(path).map_err(|e| at(&e))?;
    let mut reader = stream::StreamReader::new(BufReader::with_capacity(1 << 20, file)).map_err(|e| at(&e))?.keeping_raw();
    let mut hasher = hash::Hasher::chunked(chunk);
    let mut data = Vec::new();
    loop {
        let record = reader.next_record().map_err(|e| at(&e))?;
        hasher.update(&reader.take_raw());
        match record {
            stream::Record::Data { offset, length } => {
                let mut done = 0;
                while done < length {
                    let part = READ_PIECE.min(length - done);
                    data.resize(to_usize(part, "a part of a data record")?, 0);
                    reader.read_data(&mut data).map_err(|e| at(&e))?;
                    hasher.update_data(offset + done, &data);
                    done += part;
                }
            }
            stream::Record::End => break,
            _ => {}
        }
    }
    // Bytes after the `e` record are part of the file, not of the stream: a damaged file.
    let bytes = reader.position() + reader.trailing_bytes().map_err(|e| at(&e))?;
    Ok((hex::encode(hasher.finish()), bytes))
}

/// sha256 of a file, and its length.
pub fn file_sha256(path: &Path) -> Result<(String, u64)> {
    // Inside a job the host reads and hashes the file: its bytes need not enter the job.
    #[cfg(target_family = "wasm")]
    {
        let file = rbd_wasm_guest::InputFile::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let hasher = rbd_wasm_guest::Sha256::new();
        let bytes = hasher.update_from(&file).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok((hex::encode(hasher.finish()), bytes));
    }
    #[allow(unreachable_code)]
    let mut file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = hash::Hasher::new();
    let bytes = std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, &mut file), &mut hasher)?;
    Ok((hex::encode(hasher.finish()), bytes))
}

/// Check a backup's stream against its manifest before anything trusts it.
pub fn check_stream(repo: &Repo, manifest: &Manifest) -> Result<()> {
    let path = repo.stream_path(manifest)?;
    let (check, bytes) = file_check(&path, manifest)?;
    check_stream_digest(&path, manifest, &check, bytes)
}

/// Compare a stream's check (of the kind its manifest records) and length, however they
/// were computed, with its manifest's.
pub fn check_stream_digest(path: &Path, manifest: &Manifest, check: &str, bytes: u64) -> Result<()> {
    let (method, want) = match manifest.expected_check()? {
        Expected::Chunked(_, want) => (rbddiff_check::METHOD, want),
        Expected::Plain(want) => ("sha256", want),
    };
    if bytes != manifest.stream_bytes || check != want {
        return Err(format!(
            "{}: the stream is damaged ({bytes} bytes, {method} {check}; the manifest says {} bytes, {method} {want})",
            path.display(),
            manifest.stream_bytes,
        )
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::path::Component;
    use std::sync::atomic::{AtomicU32, Ordering};

    const TIB: u64 = 1 << 40;

    /// A fresh directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let name = format!("backup-repo-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            let dir = std::env::temp_dir().join(name);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A stream file's chunked check, computed by reading its records, is the check of its
    /// records fed one by one; trailing bytes count in its length; a method nobody knows,
    /// or no check at all, is refused.
    #[test]
    fn a_stream_files_check_is_its_records_check() {
        let dir = TempDir::new();
        let path = dir.0.join("1.rbddiff");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = stream::StreamWriter::new(Vec::new(), Some("a"), "b", 1 << 20).unwrap();
        w.data(1000, &data).unwrap();
        w.zero(300_000, 5000).unwrap();
        w.data(400_000, &data[..10]).unwrap();
        let (bytes, _, len) = w.finish().unwrap();
        fs::write(&path, &bytes).unwrap();

        let mut want = rbddiff_check::StreamCheck::chunked(digest::CHUNK);
        let header_end = bytes.len() - (17 + data.len() + 17 + 17 + 10 + 1);
        want.update(&bytes[..header_end + 17]);
        want.update_data(1000, &data, None);
        want.update(&bytes[header_end + 17 + data.len()..header_end + 17 + data.len() + 34]);
        want.update_data(400_000, &data[..10], None);
        want.update(b"e");
        let want = hex::encode(want.finalize_reset());

        let mut m = manifest(1, None);
        m.stream_sha256 = None;
        m.stream_check = Some(StreamCheck { method: rbddiff_check::METHOD.into(), chunk_size: digest::CHUNK, digest: want.clone() });
        m.stream_bytes = len;
        assert_eq!(file_check(&path, &m).unwrap(), (want.clone(), len));
        check_stream_digest(&path, &m, &want, len).unwrap();

        let mut longer = bytes.clone();
        longer.extend_from_slice(b"junk");
        fs::write(&path, &longer).unwrap();
        assert_eq!(file_check(&path, &m).unwrap(), (want.clone(), len + 4), "trailing bytes count in the length");
        assert!(check_stream_digest(&path, &m, &want, len + 4).unwrap_err().to_string().contains("damaged"));

        m.stream_check.as_mut().unwrap().method = "blake3".into();
        assert!(file_check(&path, &m).unwrap_err().to_string().contains("does not know"));
        m.stream_check = None;
        assert!(file_check(&path, &m).unwrap_err().to_string().contains("no stream check"));
    }

    fn manifest(n: u64, from: Option<u64>) -> Manifest {
        Manifest {
            pool: "rbd".into(),
            image: "vm-1".into(),
            from_snapshot: from.map(snapshot_name),
            to_snapshot: snapshot_name(n),
            size: 1 << 20,
            stream: stream_file(n),
            stream_bytes: 0,
            stream_check: None,
            stream_sha256: Some(String::new()),
            image_digest: String::new(),
            digest_version: DIGEST_VERSION,
            chunk_size: digest::CHUNK,
            sums: sums_file(n),
            sums_sha256: String::new(),
        }
    }

    /// The repository of rbd/vm-1 under a fresh root, with these manifests.
    fn repo_with(root: &TempDir, manifests: &[(&str, Manifest)]) -> Repo {
        let repo = Repo::new(&root.0, "rbd", "vm-1").unwrap();
        fs::create_dir_all(repo.dir()).unwrap();
        for (file, m) in manifests {
            fs::write(repo.dir().join(file), serde_json::to_vec(m).unwrap()).unwrap();
        }
        repo
    }

    fn error<T>(result: Result<T>) -> String {
        match result {
            Ok(_) => panic!("no error"),
            Err(e) => e.to_string(),
        }
    }

    fn numbers(chain: &[Manifest]) -> Vec<u64> {
        chain.iter().map(|m| snapshot_number(&m.to_snapshot).unwrap()).collect()
    }

    #[test]
    fn plain_names_are_their_own_directories() {
        for name in ["vm-1", "rbd", "Db_2.img", "a..b", "x.", "0"] {
            assert_eq!(encode_name(name).unwrap(), name);
            assert_eq!(decode_name(name).as_deref(), Some(name));
        }
        let repo = Repo::new(Path::new("/var/backups/rbd"), "rbd", "vm-1").unwrap();
        assert_eq!(repo.dir(), Path::new("/var/backups/rbd/rbd/vm-1"));
    }

    #[test]
    fn hostile_names_are_one_directory_of_their_own() {
        let expected = [
            ("..", "%2E."),
            (".", "%2E"),
            ("../other/db", "%2E.%2Fother%2Fdb"),
            ("a/b", "a%2Fb"),
            ("/etc", "%2Fetc"),
            ("a\0b", "a%00b"),
            (".hidden", "%2Ehidden"),
            ("%", "%25"),
            ("%2E", "%252E"),
            ("a b\\c", "a%20b%5Cc"),
            ("vm-ü", "vm-%C3%BC"),
        ];
        let mut seen = HashSet::new();
        let root = Path::new("/out");
        for (name, encoded) in expected.into_iter().chain(["...", "a/", "/", "\n"].map(|n| (n, ""))) {
            let got = encode_name(name).unwrap();
            if !encoded.is_empty() {
                assert_eq!(got, encoded, "{name:?}");
            }
            assert_eq!(Path::new(&got).components().collect::<Vec<_>>(), [Component::Normal(got.as_ref())], "{name:?}");
            assert!(!got.contains(['/', '\\', '\0']), "{name:?} as {got:?}");
            assert_eq!(decode_name(&got).as_deref(), Some(name));
            assert!(seen.insert(got.clone()), "{name:?} shares {got:?}");
            assert_eq!(Repo::new(root, "rbd", name).unwrap().dir(), root.join("rbd").join(&got));
            assert_eq!(Repo::new(root, name, "vm-1").unwrap().dir(), root.join(&got).join("vm-1"));
        }
    }

    #[test]
    fn names_without_a_directory_are_refused() {
        assert!(error(encode_name("")).contains("empty name"));
        assert!(error(Repo::new(Path::new("/out"), "", "vm-1")).contains("pool \"\""));
        assert!(error(Repo::new(Path::new("/out"), "rbd", "")).contains("image \"\""));
        assert_eq!(encode_name(&"a".repeat(255)).unwrap().len(), 255);
        assert!(error(encode_name(&"a".repeat(256))).contains("too long"));
        // Short, but three times as long encoded.
        assert_eq!(encode_name(&"/".repeat(85)).unwrap().len(), 255);
        assert!(error(encode_name(&"/".repeat(86))).contains("258 bytes encoded"));
    }

    #[test]
    fn only_the_one_encoding_of_a_name_decodes() {
        for component in ["", ".", "..", ".x", "a/b", "%", "%4", "%GG", "%2e", "%41", "%2d", "%C3", "a\0b", "%2F%2"] {
            assert_eq!(decode_name(component), None, "{component:?}");
        }
    }

    #[test]
    fn backup_numbers_are_plain_decimal() {
        assert_eq!(parse_number("0"), Some(0));
        assert_eq!(parse_number("42"), Some(42));
        assert_eq!(parse_number("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "03", "+3", "-3", " 3", "3 ", "0x3", "18446744073709551616", "٣"] {
            assert_eq!(parse_number(bad), None, "{bad:?}");
        }
        assert_eq!(snapshot_number("backup-7"), Some(7));
        assert_eq!(snapshot_number("backup-07"), None);
    }

    #[test]
    fn a_manifest_naming_other_files_is_refused() {
        for bad in ["../../x", "/etc/passwd", "03.rbddiff", "+3.rbddiff", "2.rbddiff", "3.rbddiff/../../x", "3.sums", "", "3.json"] {
            let root = TempDir::new();
            let mut m = manifest(3, None);
            m.stream = bad.into();
            let repo = repo_with(&root, &[("3.json", m.clone())]);
            let e = error(repo.backups());
            assert!(e.contains("3.json: not a backup manifest") && e.contains(&format!("stream `{bad}` is not `3.rbddiff`")), "{e}");
            assert!(error(repo.chain(None)).contains("not a backup manifest"));
            // Asked directly, it gives no path either.
            assert!(error(repo.stream_path(&m)).contains("not a backup manifest"));
            assert!(error(repo.sums_path(&m)).contains("not a backup manifest"));
            assert!(error(check_stream(&repo, &m)).contains("not a backup manifest"));

            let mut m = manifest(3, None);
            m.sums = bad.replace("rbddiff", "sums");
            if m.sums == "3.sums" {
                continue;
            }
            let repo = repo_with(&root, &[("3.json", m.clone())]);
            let e = error(repo.backups());
            assert!(e.contains(&format!("sums `{}` is not `3.sums`", m.sums)), "{e}");
        }
    }

    #[test]
    fn a_manifest_of_another_image_is_refused() {
        for (pool, image) in [("rbd", "vm-2"), ("other", "vm-1"), ("rbd", "../vm-1")] {
            let root = TempDir::new();
            let mut m = manifest(1, None);
            (m.pool, m.image) = (pool.into(), image.into());
            let e = error(repo_with(&root, &[("1.json", m)]).backups());
            assert!(e.contains("not a backup manifest of \"rbd\"/\"vm-1\": it says it is of"), "{e}");
        }
    }

    #[test]
    fn files_not_named_by_a_backup_number_are_not_backups() {
        let root = TempDir::new();
        let repo = repo_with(&root, &[("2.json", manifest(2, None))]);
        for name in ["02.json", "+2.json", "2.json.tmp", "x.json", ".json", "2.JSON"] {
            fs::write(repo.dir().join(name), "not json").unwrap();
        }
        assert_eq!(repo.backups().unwrap().iter().map(|(n, _)| *n).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn an_oversized_manifest_is_refused() {
        let root = TempDir::new();
        let repo = repo_with(&root, &[]);
        fs::write(repo.dir().join("1.json"), vec![b' '; 2 << 20]).unwrap();
        assert!(error(repo.backups()).contains("more than 1048576 bytes"));
    }

    #[test]
    fn a_chain_goes_back_to_a_full_backup() {
        let root = TempDir::new();
        let repo = repo_with(
            &root,
            &[("1.json", manifest(1, None)), ("2.json", manifest(2, Some(1))), ("3.json", manifest(3, Some(2)))],
        );
        assert_eq!(numbers(&repo.chain(None).unwrap()), [1, 2, 3]);
        assert_eq!(numbers(&repo.chain(Some(2)).unwrap()), [1, 2]);
        assert!(error(repo.chain(Some(9))).contains("no complete backup 9"));
        fs::remove_file(repo.dir().join("1.json")).unwrap();
        assert!(error(repo.chain(None)).contains("the chain is broken: no backup of backup-1"));
        assert!(error(repo_with(&TempDir::new(), &[]).chain(None)).contains("no complete backup in"));
    }

    #[test]
    fn a_backup_from_itself_is_a_loop_not_a_hang() {
        let root = TempDir::new();
        let repo = repo_with(&root, &[("1.json", manifest(1, None)), ("2.json", manifest(2, Some(2)))]);
        let e = error(repo.chain(None));
        assert!(e.contains("the chain loops: backup 2 is from backup-2, which is backup 2, not an older one"), "{e}");
        assert_eq!(numbers(&repo.chain(Some(1)).unwrap()), [1]);
    }

    #[test]
    fn two_backups_from_each_other_are_a_loop() {
        let root = TempDir::new();
        let repo = repo_with(&root, &[("2.json", manifest(2, Some(3))), ("3.json", manifest(3, Some(2)))]);
        let e = error(repo.chain(Some(3)));
        assert!(e.contains("backup 2 is from backup-3, which is backup 3"), "{e}");
        assert!(error(repo.chain(Some(2))).contains("the chain loops"));
        // The same loop through snapshot names that are not `backup-N`.
        let mut two = manifest(2, None);
        (two.to_snapshot, two.from_snapshot) = ("x".into(), Some("y".into()));
        let mut three = manifest(3, None);
        (three.to_snapshot, three.from_snapshot) = ("y".into(), Some("x".into()));
        let root = TempDir::new();
        let repo = repo_with(&root, &[("2.json", two), ("3.json", three)]);
        assert!(error(repo.chain(None)).contains("backup 2 is from y, which is backup 3"));
    }

    #[test]
    fn a_later_backup_of_the_same_snapshot_is_not_taken_for_the_base() {
        // 3 is from backup-1; 4 also claims to be of backup-1: the chain takes the older.
        let root = TempDir::new();
        let mut four = manifest(4, Some(3));
        four.to_snapshot = snapshot_name(1);
        let repo = repo_with(
            &root,
            &[("1.json", manifest(1, None)), ("3.json", manifest(3, Some(1))), ("4.json", four)],
        );
        assert_eq!(repo.chain(Some(3)).unwrap().len(), 2);
    }

    /// Write `N.sums` with these changes over `base`, and its manifest.
    fn sums_backup(repo: &Repo, n: u64, size: u64, base: Option<u64>, changes: &[digest::Change]) -> (u64, Manifest) {
        let mut w = digest::SumsWriter::new(Vec::new(), size, base).unwrap();
        for &c in changes {
            w.change(c).unwrap();
        }
        let (bytes, sha, _) = w.finish().unwrap();
        fs::write(repo.dir().join(sums_file(n)), &bytes).unwrap();
        let mut m = manifest(n, base);
        m.size = size;
        m.sums_sha256 = sha;
        (n, m)
    }

    #[test]
    fn chunk_sums_layers_are_checked_and_merged() {
        use digest::Change::{Data, Zero};
        let root = TempDir::new();
        let repo = repo_with(&root, &[]);
        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        let mib = 1 << 20;
        let one = sums_backup(&repo, 1, mib, None, &[Data { index: 0, sum: a }, Data { index: 5, sum: a }, Data { index: 15, sum: a }]);
        // 2: chunk 5 zeroed, 7 written, and shrunk to 10 chunks (15 goes).
        let two = sums_backup(&repo, 2, 10 * digest::CHUNK, Some(1), &[Zero { first: 4, count: 2 }, Data { index: 7, sum: b }]);
        // 3: grown back: 15 must not come back; 12 written.
        let three = sums_backup(&repo, 3, mib, Some(2), &[Data { index: 0, sum: c }, Data { index: 12, sum: c }]);
        let backups = vec![one, two, three];
        let merged = |n| {
            let mut layers = digest::Layers::new(repo.sums_layers(n, &backups).unwrap()).unwrap();
            let mut got = Vec::new();
            while let Some((i, s)) = layers.next_data().unwrap() {
                got.push((i, s[0]));
            }
            got
        };
        assert_eq!(merged(1), [(0, 1), (5, 1), (15, 1)]);
        assert_eq!(merged(2), [(0, 1), (7, 2)]);
        assert_eq!(merged(3), [(0, 3), (7, 2), (12, 3)]);
        // A damaged file is refused by its sha256; a missing base by name.
        fs::write(repo.dir().join("2.sums"), b"rbd-wasm chunk sums v2\n").unwrap();
        assert!(error(repo.sums_layers(3, &backups)).contains("2.sums: damaged"));
        assert!(error(repo.sums_layers(3, &backups[2..])).contains("need those of backup 2"));
        // Older jobs' digests are named as such.
        let mut old = backups.clone();
        old[0].1.digest_version = 0;
        assert!(error(repo.sums_layers(1, &old)).contains("version 0"));
    }

    #[test]
    fn pieces_at_300_tib_and_at_the_end_of_the_address_space() {
        let at = 300 * TIB - (5 << 20);
        let got: Vec<_> = pieces(at, 5 << 20).map(|r| (r.offset, r.length)).collect();
        assert_eq!(got, [(at, READ_PIECE), (at + READ_PIECE, 1 << 20)]);
        let mut huge = pieces(300 * TIB, 300 * TIB);
        assert_eq!(huge.next().map(|r| (r.offset, r.length)), Some((300 * TIB, READ_PIECE)));
        assert_eq!(huge.nth(1000).map(|r| r.offset), Some(300 * TIB + 1001 * READ_PIECE));
        let near_end = u64::MAX - (5 << 20);
        let got: Vec<_> = pieces(near_end, 10 << 20).map(|r| (r.offset, r.length)).collect();
        assert_eq!(got, [(near_end, READ_PIECE), (near_end + READ_PIECE, 1 << 20)]);
        assert_eq!(pieces(7, 0).count(), 0);
    }

    #[test]
    fn sizes_past_a_jobs_address_space_are_errors() {
        assert_eq!(to_usize(300, "a length").unwrap(), 300);
        if usize::BITS == 32 {
            assert!(error(to_usize(300 * TIB, "a length")).contains("a length of 329853488332800"));
        }
    }
}
