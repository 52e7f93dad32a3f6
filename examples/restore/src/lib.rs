//! Restore a chain of backups onto a new image, and prove it: the result's digest must be
//! the one the newest manifest recorded.
//!
//! Arguments: `POOL IMAGE TARGET [--backup N] [--target-pool POOL]`. Reads the backups of
//! `POOL/IMAGE` from the repository in the job's output directory (see `backup-repo`),
//! follows the chain back from backup N (default: the newest) to a full backup, and applies
//! the streams in
//! order the way `rbd import-diff` does (the size record resizes, `w` records write, `z`
//! records zero, and the to-snapshot is created at each stream's end) to a new image named
//! `TARGET.restoring`, checking each stream against its manifest as it goes: the host reads
//! the stream's data and hashes every byte of it on the way (`image.write-from`), so the
//! stream is read once and its bytes never enter the job; a damaged one fails the restore
//! before its to-snapshot is taken. The same hashing gives the digest of every chunk a write
//! covered whole, which is compared with the backup's chunk digests as the stream is
//! applied (`checked`): only the chunks a stream touched in part are read back, and the
//! newest backup's layered digests must give the manifest's image digest. (A backup of an
//! older job, or a stream out of order, is checked the old way: the restored image is read
//! back whole and its digest, see `backup_repo::digest`, compared with the manifest's.)
//! Only then is it renamed to
//! `TARGET` (which must not exist). So an image named `TARGET` is always a verified restore:
//! a restore that fails removes its `.restoring` image, and one that is killed leaves it for
//! the next restore to `TARGET`, which removes it first. The job's grant needs `create`,
//! `rename` and `remove` on `TARGET.restoring` as well as `create` on `TARGET`.

mod checked;

use std::fs::File;
use std::io::BufReader;

use backup_repo::digest::{image_digest, image_digest_v1, Layers, SumsReader, CHUNK};
use backup_repo::stream::{Record, StreamReader};
use backup_repo::{check_stream_digest, file_sha256, to_usize, Expected, Manifest, Repo, Result, DIGEST_VERSION, ROOT};
use checked::Checker;
use rbd_wasm_guest::{open_pool, report_progress, Image, InputFile, Pool, Sha256, StreamWrite};

/// librbd drops discards finer than this (`rbd_discard_granularity_bytes`); zeroes inside
/// it are written instead.
const DISCARD_GRANULARITY: u64 = 64 << 10;
/// Largest piece of a `w` record in one write; records are cut at image offsets that are
/// multiples of it, so no chunk is split between two writes.
const WRITE_PIECE: u64 = 4 << 20;
/// Most bytes and writes handed to the host in one `write-from` call (it keeps several in
/// flight, as `rbd import-diff` does).
const BATCH_BYTES: u64 = 32 << 20;
const BATCH_WRITES: usize = 64;

/// Writes gathered for one `write-from` call: the host reads their bytes from the stream
/// file itself, so they never enter the job.
struct Batch<'a> {
    data: &'a InputFile,
    /// Sees every byte the host reads from the stream, headers included.
    hash: &'a Sha256,
    writes: Vec<StreamWrite>,
    bytes: u64,
    /// Where the host's reader of the stream will be once the gathered writes are read.
    at: u64,
}

impl Batch<'_> {
    /// A write of `length` bytes at `offset`, whose bytes start at `from` in the stream;
    /// whether the batch is full.
    fn push(&mut self, from: u64, offset: u64, length: u64) -> Result<bool> {
        let skip = from.checked_sub(self.at).ok_or("the stream's records go backwards")?;
        self.writes.push(StreamWrite { skip, offset, length });
        self.at = from + length;
        self.bytes += length;
        Ok(self.bytes >= BATCH_BYTES || self.writes.len() >= BATCH_WRITES)
    }

    /// Have the host make the writes gathered; the checker compares the chunks they
    /// covered whole with the backup's digests.
    fn flush(&mut self, image: &Image, checker: &mut Option<Checker<BufReader<File>>>) -> Result<()> {
        if self.writes.is_empty() {
            return Ok(());
        }
        let writes = std::mem::take(&mut self.writes);
        image.write_from(self.data, &writes, Some(self.hash))?;
        self.bytes = 0;
        if let Some(checker) = checker {
            let spans: Vec<(u64, u64)> = writes.iter().map(|w| (w.offset, w.length)).collect();
            checker.written(&spans, self.hash.take_chunk_sums()?)?;
        }
        Ok(())
    }
}

struct Args {
    pool: String,
    image: String,
    target: String,
    target_pool: Option<String>,
    backup: Option<u64>,
}

const USAGE: &str = "usage: POOL IMAGE TARGET [--backup N] [--target-pool POOL]";

fn parse(args: Vec<String>) -> Result<Args> {
    let mut positional = Vec::new();
    let mut backup = None;
    let mut target_pool = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--backup" => {
                let n = it.next().ok_or("--backup needs a number")?;
                backup = Some(n.parse().map_err(|_| format!("--backup {n:?}: not a backup number"))?);
            }
            "--target-pool" => target_pool = Some(it.next().ok_or("--target-pool needs a pool")?),
            a if a.starts_with("--") => return Err(format!("unknown option {a}; {USAGE}").into()),
            _ => positional.push(arg),
        }
    }
    let [pool, image, target]: [String; 3] = positional.try_into().map_err(|_| USAGE)?;
    Ok(Args { pool, image, target, target_pool, backup })
}

/// Zero `[offset, offset + length)`: discard the part librbd discards exactly, write zeroes
/// at the unaligned edges.
fn zero(image: &Image, offset: u64, length: u64) -> Result<()> {
    // The stream reader checked that the record ends inside the image, so below 2^64.
    let end = offset.checked_add(length).ok_or("a zero record past 2^64")?;
    let aligned_start = offset.div_ceil(DISCARD_GRANULARITY).saturating_mul(DISCARD_GRANULARITY);
    let aligned_end = end / DISCARD_GRANULARITY * DISCARD_GRANULARITY;
    if aligned_start >= aligned_end {
        return write_zeroes(image, offset, length);
    }
    write_zeroes(image, offset, aligned_start - offset)?;
    image.discard(aligned_start, aligned_end - aligned_start)?;
    write_zeroes(image, aligned_end, end - aligned_end)
}

fn write_zeroes(image: &Image, offset: u64, length: u64) -> Result<()> {
    // Less than two granules: the edges of a zero record.
    if length > 0 {
        image.write(offset, &vec![0u8; to_usize(length, "a run of zeroes")?])?;
    }
    Ok(())
}

/// A checker of backup `manifest`'s stream against its chunk digests, if the backup has
/// what it needs (this job's digests, a chunked stream check of the digest chunks, a sums
/// file as its manifest says); else none, and the image is read back whole at the end.
fn sums_checker(repo: &Repo, manifest: &Manifest, size: u64) -> Result<Option<Checker<BufReader<File>>>> {
    let chunked = matches!(manifest.expected_check()?, Expected::Chunked(c, _) if u64::from(c) == CHUNK);
    if manifest.digest_version != DIGEST_VERSION || !chunked {
        return Ok(None);
    }
    let path = repo.dir().join(&manifest.sums);
    match file_sha256(&path) {
        Ok((sha, _)) if sha == manifest.sums_sha256 => {}
        outcome => {
            let why = outcome.map_or_else(|e| e.to_string(), |(sha, _)| format!("sha256 {sha}, the manifest says {}", manifest.sums_sha256));
            println!("{}: damaged ({why}); the restored image will be read back whole", path.display());
            return Ok(None);
        }
    }
    let reader = SumsReader::new(BufReader::with_capacity(1 << 16, File::open(&path)?))?;
    Ok(Some(Checker::new(reader, size)))
}

/// How a stream's changes were checked.
enum Checked {
    /// Against the backup's chunk digests: chunks compared from what was written, and
    /// chunks read back.
    FromWrites { compared: u64, read_back: u64 },
    /// Not: the image must be read back whole.
    No,
}

/// Apply one stream to `image`, as `rbd import-diff` does; `base` is the snapshot the
/// stream must start from.
fn apply(repo: &Repo, manifest: &Manifest, image: &Image, base: Option<&str>) -> Result<Checked> {
    let path = repo.stream_path(manifest)?;
    let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The job reads the records and passes over their data; the host reads the data from
    // its own reader of the same file (`write-from`).
    let mut stream = StreamReader::new(BufReader::with_capacity(16 << 10, file))?;
    let data = InputFile::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut checker = sums_checker(repo, manifest, image.size()?)?;
    // The check its manifest records: the host computes it from the bytes it reads (the
    // written ones as data, the skipped ones as they are), keeping the digests of the
    // chunks written whole for the checker.
    let hash = match checker {
        Some(_) => Sha256::chunked_keeping_sums(CHUNK as u32),
        None => manifest.stream_hasher()?,
    };
    let mut batch = Batch { data: &data, hash: &hash, writes: Vec::new(), bytes: 0, at: 0 };
    let mut to = None;
    loop {
        match stream.next_record()? {
            Record::From(from) => {
                if Some(from.as_str()) != base {
                    return Err(format!("{}: starts from {from}, but the image is at {base:?}", path.display()).into());
                }
            }
            Record::To(name) => to = Some(name),
            Record::Size(size) => {
                batch.flush(image, &mut checker)?;
                let old = image.size()?;
                if old != size {
                    image.resize(size)?;
                }
                if let Some(c) = &mut checker {
                    c.resized(old, size);
                }
            }
            Record::Data { offset, length } => {
                if let Some(c) = &mut checker {
                    c.passed(image, offset)?;
                }
                let mut done = 0;
                // In pieces: the record's length is the stream's word, not an allocation.
                while done < length {
                    let at = offset + done;
                    let piece = (WRITE_PIECE - at % WRITE_PIECE).min(length - done);
                    if batch.push(stream.position(), at, piece)? {
                        batch.flush(image, &mut checker)?;
                    }
                    stream.skip_data(piece)?;
                    done += piece;
                }
                report_progress(&format!("restore {}", manifest.to_snapshot), offset + length, Some(manifest.size));
            }
            Record::Zero { offset, length } => {
                batch.flush(image, &mut checker)?;
                if let Some(c) = &mut checker {
                    c.passed(image, offset)?;
                }
                zero(image, offset, length)?;
                if let Some(c) = &mut checker {
                    c.zero_record(offset, length)?;
                }
            }
            Record::End => {
                batch.flush(image, &mut checker)?;
                break;
            }
        }
    }
    // The stream is checked as it is applied: the host hashed every byte it read, and
    // hashes the rest now. A damaged stream fails the restore, whose work image is then
    // removed: nothing unverified gets the target's name.
    let tail = hash.update_from(&data).map_err(|e| format!("{}: {e}", path.display()))?;
    let (check, bytes) = (hex::encode(hash.finish()), batch.at + tail);
    check_stream_digest(&path, manifest, &check, bytes)?;
    let to = to.ok_or_else(|| format!("{}: no to-snapshot record", path.display()))?;
    if to != manifest.to_snapshot {
        return Err(format!("{}: is of {to}, but its manifest says {}", path.display(), manifest.to_snapshot).into());
    }
    image.flush()?;
    let checked = match &mut checker {
        Some(c) if !c.unordered() => {
            c.finish(image)?;
            Checked::FromWrites { compared: c.compared, read_back: c.read_back }
        }
        _ => Checked::No,
    };
    image.create_snap(&to)?;
    report_progress(&format!("restore {}", manifest.to_snapshot), manifest.size, Some(manifest.size));
    Ok(checked)
}

fn restore(args: &Args, target_pool: &Pool) -> Result<String> {
    let repo = Repo::new(ROOT.as_ref(), &args.pool, &args.image)?;
    let chain = repo.chain(args.backup)?;
    let last = chain.last().ok_or("an empty chain")?;
    if last.digest_version != DIGEST_VERSION && last.digest_version != 0 {
        return Err(format!(
            "backup of {} has an image digest of version {}, which this job does not know",
            last.to_snapshot, last.digest_version
        )
        .into());
    }
    match target_pool.open(&args.target) {
        Ok(_) => return Err(format!("{}/{} exists; restore to a new name", target_pool.name(), args.target).into()),
        Err(rbd_wasm_guest::Error::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let restoring = format!("{}{RESTORING}", args.target);
    if target_pool.open(&restoring).is_ok() {
        println!("removing {}/{restoring}, left by a restore that did not finish", target_pool.name());
        remove_restored(target_pool, &restoring);
    }
    target_pool.create(&restoring, chain[0].size)?;
    let result = (|| -> Result<String> {
        let image = target_pool.open(&restoring)?;
        let mut base: Option<&str> = None;
        let (mut compared, mut read_back, mut from_writes) = (0, 0, true);
        for manifest in &chain {
            match apply(&repo, manifest, &image, base)? {
                Checked::FromWrites { compared: c, read_back: r } => (compared, read_back) = (compared + c, read_back + r),
                Checked::No => from_writes = false,
            }
            base = Some(&manifest.to_snapshot);
        }
        let digest = if from_writes {
            // Every chunk has the digest of the newest backup that touched it: the newest
            // backup's layered digests, which must give its manifest's image digest.
            let layers = repo.sums_layers(last.number()?, &repo.backups()?)?;
            let digest = Layers::new(layers)?.digest(last.size)?;
            println!("checked from what was written: {compared} chunks compared, {read_back} read back");
            digest
        } else {
            let at = target_pool.open_at_snapshot(&restoring, &last.to_snapshot)?;
            println!("checked by reading the restored image back");
            // Version 0 is an older job's whole-image digest (see `image_digest_v1`).
            if last.digest_version == 0 { image_digest_v1(&at)? } else { image_digest(&at)? }
        };
        if digest != last.image_digest {
            return Err(format!(
                "the restored image's digest is {digest}, the manifest of {} says {}",
                last.to_snapshot, last.image_digest
            )
            .into());
        }
        drop(image);
        // Verified: only now does it get the name the operator asked for.
        target_pool.rename(&restoring, &args.target)?;
        Ok(digest)
    })();
    if result.is_err() {
        remove_restored(target_pool, &restoring);
    }
    result
}

/// The suffix of the image a restore writes before it is verified.
const RESTORING: &str = ".restoring";

/// How many times a half-restored image's removal is tried, a second apart: a snapshot
/// that an earlier, abandoned run asked for (its job ended while the monitor was away) may
/// still land after the snapshots were listed and removed.
const REMOVE_ATTEMPTS: u32 = 15;

/// Remove a target this job created and could not finish.
fn remove_restored(pool: &Pool, name: &str) {
    for attempt in 1..=REMOVE_ATTEMPTS {
        if let Ok(image) = pool.open(name) {
            for snap in image.list_snaps().unwrap_or_default() {
                let _ = image.remove_snap(&snap.name);
            }
        }
        match pool.remove(name) {
            Ok(()) | Err(rbd_wasm_guest::Error::NotFound(_)) => return,
            Err(rbd_wasm_guest::Error::HasSnapshots(_)) if attempt < REMOVE_ATTEMPTS => {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            Err(e) => {
                eprintln!("could not remove the half-restored {}/{name}: {e}", pool.name());
                return;
            }
        }
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let args = parse(args)?;
    let target_pool = open_pool(args.target_pool.as_deref().unwrap_or(&args.pool))?;
    let digest = restore(&args, &target_pool)?;
    println!(
        "restored {}/{} to {}/{}: image digest {digest} verified",
        args.pool,
        args.image,
        target_pool.name(),
        args.target
    );
    Ok(())
}

rbd_wasm_guest::job!(run);
