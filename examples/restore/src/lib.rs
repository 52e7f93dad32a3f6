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
//! before its to-snapshot is taken. Then the restored image is read back and its digest (see
//! `backup_repo::digest`) compared with the manifest's, and only then is it renamed to
//! `TARGET` (which must not exist). So an image named `TARGET` is always a verified restore:
//! a restore that fails removes its `.restoring` image, and one that is killed leaves it for
//! the next restore to `TARGET`, which removes it first. The job's grant needs `create`,
//! `rename` and `remove` on `TARGET.restoring` as well as `create` on `TARGET`.

use std::fs::File;
use std::io::BufReader;

use backup_repo::stream::{Record, StreamReader};
use backup_repo::digest::{image_digest, image_digest_v1};
use backup_repo::{check_stream_digest, to_usize, Manifest, Repo, Result, DIGEST_VERSION, ROOT};
use rbd_wasm_guest::{open_pool, report_progress, Image, InputFile, Pool, Sha256, StreamWrite};

/// librbd drops discards finer than this (`rbd_discard_granularity_bytes`); zeroes inside
/// it are written instead.
const DISCARD_GRANULARITY: u64 = 64 << 10;
/// Largest piece of a `w` record in one write.
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
    /// A write of `length` bytes at `offset`, whose bytes start at `from` in the stream.
    fn push(&mut self, image: &Image, from: u64, offset: u64, length: u64) -> Result<()> {
        let skip = from.checked_sub(self.at).ok_or("the stream's records go backwards")?;
        self.writes.push(StreamWrite { skip, offset, length });
        self.at = from + length;
        self.bytes += length;
        if self.bytes >= BATCH_BYTES || self.writes.len() >= BATCH_WRITES {
            self.flush(image)?;
        }
        Ok(())
    }

    fn flush(&mut self, image: &Image) -> Result<()> {
        if !self.writes.is_empty() {
            image.write_from(self.data, &std::mem::take(&mut self.writes), Some(self.hash))?;
            self.bytes = 0;
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

/// Apply one stream to `image`, as `rbd import-diff` does; `base` is the snapshot the
/// stream must start from.
fn apply(repo: &Repo, manifest: &Manifest, image: &Image, base: Option<&str>) -> Result<()> {
    let path = repo.stream_path(manifest)?;
    let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The job reads the records and passes over their data; the host reads the data from
    // its own reader of the same file (`write-from`).
    let mut stream = StreamReader::new(BufReader::with_capacity(16 << 10, file))?;
    let data = InputFile::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The check its manifest records: the host computes it from the bytes it reads (the
    // written ones as data, the skipped ones as they are).
    let hash = manifest.stream_hasher()?;
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
                batch.flush(image)?;
                if image.size()? != size {
                    image.resize(size)?;
                }
            }
            Record::Data { offset, length } => {
                let mut done = 0;
                // In pieces: the record's length is the stream's word, not an allocation.
                while done < length {
                    let piece = WRITE_PIECE.min(length - done);
                    batch.push(image, stream.position(), offset + done, piece)?;
                    stream.skip_data(piece)?;
                    done += piece;
                }
                report_progress(&format!("restore {}", manifest.to_snapshot), offset + length, Some(manifest.size));
            }
            Record::Zero { offset, length } => {
                batch.flush(image)?;
                zero(image, offset, length)?;
            }
            Record::End => {
                batch.flush(image)?;
                break;
            }
        }
    }
    // The stream is checked as it is applied: the host hashed every byte it read, and
    // hashes the rest now. A damaged stream fails the restore, whose work image is then
    // removed: nothing unverified gets the target's name.
    let tail = hash.update_from(&data).map_err(|e| format!("{}: {e}", path.display()))?;
    let (sha, bytes) = (hex::encode(hash.finish()), batch.at + tail);
    check_stream_digest(&path, manifest, &sha, bytes)?;
    let to = to.ok_or_else(|| format!("{}: no to-snapshot record", path.display()))?;
    if to != manifest.to_snapshot {
        return Err(format!("{}: is of {to}, but its manifest says {}", path.display(), manifest.to_snapshot).into());
    }
    image.flush()?;
    image.create_snap(&to)?;
    report_progress(&format!("restore {}", manifest.to_snapshot), manifest.size, Some(manifest.size));
    Ok(())
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
        for manifest in &chain {
            apply(&repo, manifest, &image, base)?;
            base = Some(&manifest.to_snapshot);
        }
        let at = target_pool.open_at_snapshot(&restoring, &last.to_snapshot)?;
        // Version 0 is an older job's whole-image digest (see `image_digest_v1`).
        let digest = if last.digest_version == 0 { image_digest_v1(&at)? } else { image_digest(&at)? };
        if digest != last.image_digest {
            return Err(format!(
                "the restored image's digest is {digest}, the manifest of {} says {}",
                last.to_snapshot, last.image_digest
            )
            .into());
        }
        drop((at, image));
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

/// Remove a target this job created and could not finish.
fn remove_restored(pool: &Pool, name: &str) {
    if let Ok(image) = pool.open(name) {
        for snap in image.list_snaps().unwrap_or_default() {
            let _ = image.remove_snap(&snap.name);
        }
    }
    if let Err(e) = pool.remove(name) {
        eprintln!("could not remove the half-restored {}/{name}: {e}", pool.name());
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
