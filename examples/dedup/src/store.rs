//! Where the repository is: the job's output directory, or a bucket under a prefix. The
//! same relative paths in both; a file is complete when it appears under its name (a
//! rename of a uniquely named temporary file, or a PUT).

use std::fs;
use std::path::PathBuf;

use backup_repo::Result;
use dedup_repo::chunk::ChunkId;
use rbd_wasm_guest::s3::Bucket;

pub enum Store {
    Dir(PathBuf),
    S3 { bucket: Bucket, prefix: String },
}

/// The largest file the job reads whole (an index of a 16 TiB image in 256 KiB chunks is
/// 2 GiB at worst, with no zero runs: a limit, checked; configs, manifests and markers are
/// small).
const MAX_READ: u64 = 1 << 30;

/// Requests a bucket keeps open at once when storing or fetching chunks: under the host's
/// default `http_connections` of 8, which also counts a response not yet read whole (read
/// ahead), and leaving room for a lease's heartbeat.
const REQUESTS_IN_FLIGHT: usize = 6;

/// A file under `chunks/` ([`Store::chunk_files`]).
pub struct ChunkFile {
    /// Its path under `chunks/`.
    pub rel: String,
    pub size: u64,
    pub id: Option<ChunkId>,
}

/// Marks a temporary file (`NAME.tmp.RANDOM`): never a repository file, removed by `gc`.
pub const TMP: &str = ".tmp.";

impl Store {
    fn key(&self, rel: &str) -> String {
        match self {
            Store::S3 { prefix, .. } if !prefix.is_empty() => format!("{prefix}/{rel}"),
            _ => rel.to_owned(),
        }
    }

    pub fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Store::Dir(root) => match fs::read(root.join(rel)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{}: {e}", root.join(rel).display()).into()),
            },
            Store::S3 { bucket, .. } => Ok(bucket.get(&self.key(rel), MAX_READ)?),
        }
    }

    /// Write `rel` whole. In a directory: a temporary file of its own (two runners storing
    /// the same chunk at once must not write into one), synced, then renamed.
    pub fn put(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        match self {
            Store::Dir(root) => {
                use std::io::Write;
                let path = root.join(rel);
                fs::create_dir_all(path.parent().ok_or("a file has a directory")?)?;
                let tmp = root.join(format!("{rel}{TMP}{}", random_hex(8)));
                let context = |e: std::io::Error| format!("writing {}: {e}", tmp.display());
                let mut f = fs::File::create(&tmp).map_err(context)?;
                f.write_all(bytes).map_err(context)?;
                f.sync_all().map_err(context)?;
                fs::rename(&tmp, &path).map_err(context)?;
                Ok(())
            }
            Store::S3 { bucket, .. } => Ok(bucket.put(&self.key(rel), bytes)?),
        }
    }

    /// Writes of files (chunks) that may still be on their way: to a bucket several at once.
    pub fn uploads(&self) -> Uploads<'_> {
        Uploads { store: self, pending: std::collections::VecDeque::new() }
    }

    /// The files `rels` in order, read ahead: from a bucket up to [`REQUESTS_IN_FLIGHT`]
    /// GETs open while the job works on the ones before.
    pub fn read_ahead(&self, rels: Vec<String>) -> ReadAhead<'_> {
        ReadAhead { store: self, rels: rels.into_iter(), pending: std::collections::VecDeque::new() }
    }

    pub fn exists(&self, rel: &str) -> Result<bool> {
        match self {
            Store::Dir(root) => Ok(root.join(rel).exists()),
            Store::S3 { bucket, .. } => Ok(bucket.head(&self.key(rel))?.is_some()),
        }
    }

    /// Remove `rel`; nothing if it is not there.
    pub fn delete(&self, rel: &str) -> Result<()> {
        match self {
            Store::Dir(root) => match fs::remove_file(root.join(rel)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("removing {}: {e}", root.join(rel).display()).into()),
            },
            Store::S3 { bucket, .. } => Ok(bucket.delete(&self.key(rel))?),
        }
    }

    /// Every file under directory `rel`, as (path relative to `rel`, size), in no order.
    pub fn list_tree(&self, rel: &str) -> Result<Vec<(String, u64)>> {
        match self {
            Store::Dir(root) => {
                let mut found = Vec::new();
                let mut dirs = vec![String::new()];
                while let Some(dir) = dirs.pop() {
                    let path = root.join(rel).join(&dir);
                    let entries = match fs::read_dir(&path) {
                        Ok(entries) => entries,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(format!("{}: {e}", path.display()).into()),
                    };
                    for entry in entries {
                        // Under WASI the listing looks each name up: one removed meanwhile
                        // (a lease given up, a temporary file renamed) is an error here.
                        let entry = match entry {
                            Ok(entry) => entry,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                            Err(e) => return Err(format!("{}: {e}", path.display()).into()),
                        };
                        let name = entry.file_name().to_string_lossy().into_owned();
                        let sub = if dir.is_empty() { name } else { format!("{dir}/{name}") };
                        // Another run may remove a file between the listing and this look
                        // (a lease it gave up, a temporary file it renamed).
                        let meta = match entry.metadata() {
                            Ok(meta) => meta,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                            Err(e) => return Err(format!("{}: {e}", path.join(&sub).display()).into()),
                        };
                        if meta.is_dir() {
                            dirs.push(sub);
                        } else {
                            found.push((sub, meta.len()));
                        }
                    }
                }
                Ok(found)
            }
            Store::S3 { bucket, .. } => {
                let dir = format!("{}/", self.key(rel));
                Ok(bucket.list(&dir)?.into_iter().filter_map(|o| Some((o.key.strip_prefix(&dir)?.to_owned(), o.size))).collect())
            }
        }
    }

    /// Every file under `chunks/`, and the chunk it is: none for a temporary file, a name
    /// that is no chunk id, or a chunk under another's prefix (what `gc` removes, and what
    /// a backup does not count as stored).
    pub fn chunk_files(&self) -> Result<Vec<ChunkFile>> {
        let files = self.list_tree("chunks")?.into_iter().map(|(rel, size)| {
            let id = Some(&rel)
                .filter(|rel| !rel.contains(TMP))
                .and_then(|rel| ChunkId::parse(rel.rsplit('/').next()?).ok())
                .filter(|id| id.path() == format!("chunks/{rel}"));
            ChunkFile { rel, size, id }
        });
        Ok(files.collect())
    }

    /// The names of the files directly in directory `rel`.
    pub fn list(&self, rel: &str) -> Result<Vec<String>> {
        Ok(self.list_tree(rel)?.into_iter().filter(|(n, _)| !n.contains('/')).map(|(n, _)| n).collect())
    }

    pub fn describe(&self) -> String {
        match self {
            Store::Dir(root) => root.display().to_string(),
            Store::S3 { prefix, .. } => format!("the bucket, under {prefix:?}"),
        }
    }
}

pub fn random(buf: &mut [u8]) {
    let bytes = wasip2::random::random::get_random_bytes(buf.len() as u64);
    buf.copy_from_slice(&bytes);
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    random(&mut buf);
    hex::encode(buf)
}

/// Seconds since the Unix epoch, by the host's wall clock.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Files being written ([`Store::uploads`]): to a bucket up to [`REQUESTS_IN_FLIGHT`] PUTs
/// open while the job prepares the next; to a directory each at once. Complete only after
/// [`Uploads::finish`].
pub struct Uploads<'a> {
    store: &'a Store,
    pending: std::collections::VecDeque<rbd_wasm_guest::s3::PendingPut>,
}

impl Uploads<'_> {
    pub fn put(&mut self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        match self.store {
            Store::Dir(_) => self.store.put(rel, &bytes),
            Store::S3 { bucket, .. } => {
                if self.pending.len() >= REQUESTS_IN_FLIGHT {
                    if let Some(oldest) = self.pending.pop_front() {
                        bucket.finish_put(oldest)?;
                    }
                }
                self.pending.push_back(bucket.start_put(self.store.key(rel), bytes)?);
                Ok(())
            }
        }
    }

    /// Wait until every file is written.
    pub fn finish(mut self) -> Result<()> {
        if let Store::S3 { bucket, .. } = self.store {
            while let Some(put) = self.pending.pop_front() {
                bucket.finish_put(put)?;
            }
        }
        Ok(())
    }
}

/// Files read in order, the next ones already asked for ([`Store::read_ahead`]).
pub struct ReadAhead<'a> {
    store: &'a Store,
    rels: std::vec::IntoIter<String>,
    pending: std::collections::VecDeque<rbd_wasm_guest::s3::PendingGet>,
}

impl Iterator for ReadAhead<'_> {
    /// A file's bytes, `None` if it is not there.
    type Item = Result<Option<Vec<u8>>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.store {
            Store::Dir(_) => self.rels.next().map(|rel| self.store.get(&rel)),
            Store::S3 { bucket, .. } => {
                while self.pending.len() < REQUESTS_IN_FLIGHT {
                    let Some(rel) = self.rels.next() else { break };
                    match bucket.start_get(self.store.key(&rel)) {
                        Ok(get) => self.pending.push_back(get),
                        Err(e) => return Some(Err(e.into())),
                    }
                }
                let get = self.pending.pop_front()?;
                Some(bucket.finish_get(get, MAX_READ).map_err(Into::into))
            }
        }
    }
}
