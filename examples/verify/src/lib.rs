//! Verify a backup against the image it was taken of: a deep scrub by default, a sample on
//! request.
//!
//! Arguments: `POOL IMAGE [--backup N] [--sample FRACTION] [--seed S]`. Checks backup N's
//! stream (default: the newest backup) against its manifest, then re-reads the image at the
//! backup's snapshot: every `w` record's data must equal the image's bytes there, and every
//! `z` record's extent must read as zeroes. The deep scrub (no `--sample`) also computes the
//! snapshot's digest (reading what is allocated) and compares it with the manifest's
//! `image_digest`, naming the chunks that differ. `--sample 0.1` checks
//! about a tenth of the records, chosen by a hash of their offset and the seed (a different
//! seed checks a different tenth). The job fails, naming the first differences, if anything
//! differs.

use std::fs::File;
use std::io::BufReader;

use backup_repo::stream::{Record, StreamReader};
use backup_repo::digest::{image_data_chunks, image_digest, image_digest_v1, Layers};
use backup_repo::{check_stream, pieces, to_usize, Manifest, Repo, Result, DIGEST_VERSION, PIECES_PER_CALL, READ_PIECE, ROOT};
use rbd_wasm_guest::{open_pool, report_progress, Image, Range};
use sha2::{Digest, Sha256};

const USAGE: &str = "usage: POOL IMAGE [--backup N] [--sample FRACTION] [--seed S]";
/// Differences listed before the rest are only counted.
const LISTED: usize = 10;
/// Most of a `w` record's data held at once: one `read-ranges` call's worth. A record may
/// be longer (Ceph writes one per extent) and its length is the stream's word, so it is
/// read and compared in parts of this size.
const DATA_PART: u64 = READ_PIECE * PIECES_PER_CALL as u64;

struct Args {
    pool: String,
    image: String,
    backup: Option<u64>,
    sample: Option<f64>,
    seed: u64,
}

fn parse(args: Vec<String>) -> Result<Args> {
    let mut positional = Vec::new();
    let (mut backup, mut sample, mut seed) = (None, None, 0);
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--backup" => {
                let v = value("--backup")?;
                backup = Some(v.parse().map_err(|_| format!("--backup {v:?}: not a backup number"))?);
            }
            "--sample" => {
                let v = value("--sample")?;
                let f: f64 = v.parse().map_err(|_| format!("--sample {v:?}: not a number"))?;
                if !(f > 0.0 && f <= 1.0) {
                    return Err(format!("--sample {v}: a fraction in (0, 1]").into());
                }
                sample = Some(f);
            }
            "--seed" => {
                let v = value("--seed")?;
                seed = v.parse().map_err(|_| format!("--seed {v:?}: not a number"))?;
            }
            a if a.starts_with("--") => return Err(format!("unknown option {a}; {USAGE}").into()),
            _ => positional.push(arg),
        }
    }
    let [pool, image]: [String; 2] = positional.try_into().map_err(|_| USAGE)?;
    Ok(Args { pool, image, backup, sample, seed })
}

/// Whether the record at `offset` is in the sample.
fn sampled(offset: u64, seed: u64, fraction: f64) -> bool {
    let h = Sha256::digest([seed.to_le_bytes(), offset.to_le_bytes()].concat());
    let x = u64::from_le_bytes(h[..8].try_into().unwrap_or_default());
    (x as f64) < fraction * (u64::MAX as f64)
}

#[derive(Default)]
struct Report {
    records: u64,
    checked: u64,
    bytes: u64,
    differences: Vec<String>,
    more: u64,
}

impl Report {
    fn differ(&mut self, what: String) {
        if self.differences.len() < LISTED {
            self.differences.push(what);
        } else {
            self.more += 1;
        }
    }
}

/// Compare `[offset, offset + length)` of `image` with `expected` (`length` bytes), or with
/// zeroes. The pieces are taken a call's worth at a time: a zero record of terabytes is
/// never a list of all its pieces.
fn compare(image: &Image, offset: u64, length: u64, expected: Option<&[u8]>, report: &mut Report) -> Result<()> {
    let mut ranges = pieces(offset, length);
    loop {
        let call: Vec<Range> = ranges.by_ref().take(PIECES_PER_CALL).collect();
        if call.is_empty() {
            return Ok(());
        }
        for (range, got) in call.iter().zip(image.read_ranges(&call)?) {
            let want = match expected {
                Some(e) => {
                    let at = to_usize(range.offset - offset, "an offset in a record")?;
                    let want = e.get(at..).and_then(|e| e.get(..got.len()));
                    Some(want.ok_or_else(|| format!("{}+{}: more bytes read than the backup has", range.offset, range.length))?)
                }
                None => None,
            };
            let same = match want {
                Some(want) => got == want,
                None => got.iter().all(|&b| b == 0),
            };
            if !same {
                let what = if want.is_some() { "data" } else { "zeroes" };
                report.differ(format!("{}+{}: the backup has {what}, the image differs", range.offset, range.length));
            }
            report.bytes += got.len() as u64;
        }
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let args = parse(args)?;
    let repo = Repo::new(ROOT.as_ref(), &args.pool, &args.image)?;
    let manifest = repo.chain(args.backup)?.pop().ok_or("no backup")?;
    check_stream(&repo, &manifest)?;
    let pool = open_pool(&args.pool)?;
    let image = pool.open_at_snapshot(&args.image, &manifest.to_snapshot).map_err(|e| {
        format!("{}/{}@{}: {e} (the snapshot is needed to verify against the image)", args.pool, args.image, manifest.to_snapshot)
    })?;
    let size = image.size()?;
    let mut report = Report::default();
    if size != manifest.size {
        report.differ(format!("the snapshot is {size} bytes, the manifest says {}", manifest.size));
    }

    let path = repo.stream_path(&manifest)?;
    let mut stream = StreamReader::new(BufReader::with_capacity(1 << 20, File::open(&path)?))?;
    let mut data = Vec::new();
    loop {
        match stream.next_record()? {
            Record::Data { offset, length } => {
                report.records += 1;
                if args.sample.is_none_or(|f| sampled(offset, args.seed, f)) {
                    report.checked += 1;
                    let mut done = 0;
                    while done < length {
                        let part = DATA_PART.min(length - done);
                        data.resize(to_usize(part, "a part of a data record")?, 0);
                        stream.read_data(&mut data)?;
                        compare(&image, offset + done, part, Some(&data), &mut report)?;
                        done += part;
                    }
                }
                report_progress(&format!("verify {}", manifest.to_snapshot), offset + length, Some(size));
            }
            Record::Zero { offset, length } => {
                report.records += 1;
                if args.sample.is_none_or(|f| sampled(offset, args.seed, f)) {
                    report.checked += 1;
                    compare(&image, offset, length.min(size.saturating_sub(offset)), None, &mut report)?;
                }
            }
            Record::End => {
                report_progress(&format!("verify {}", manifest.to_snapshot), size, Some(size));
                break;
            }
            Record::From(_) | Record::To(_) | Record::Size(_) => {}
        }
    }
    let scope = match args.sample {
        None if manifest.digest_version == 0 => {
            // An older job's whole-image digest: checked, but it names no chunks.
            let digest = image_digest_v1(&image)?;
            if digest != manifest.image_digest {
                report.differ(format!("the snapshot's digest (version 1) is {digest}, the manifest says {}", manifest.image_digest));
            }
            "deep scrub (an older job's image digest)".to_string()
        }
        None if manifest.digest_version != DIGEST_VERSION => {
            return Err(format!("backup {}'s image digest is of version {}, which this job does not know", manifest.to_snapshot, manifest.digest_version).into());
        }
        None => {
            let digest = image_digest(&image)?;
            if digest != manifest.image_digest {
                report.differ(format!("the snapshot's digest is {digest}, the manifest says {}", manifest.image_digest));
                // Which chunks, if the backup's chunk digests are there to say.
                if let Err(e) = differing_chunks(&repo, &manifest, &image, &mut report) {
                    report.differ(format!("no chunk digests to compare: {e}"));
                }
            }
            "deep scrub".to_string()
        }
        Some(f) => format!("sample of {f} (seed {})", args.seed),
    };
    let target = format!("{}/{}@{} against {}", args.pool, args.image, manifest.to_snapshot, manifest.stream);
    if report.differences.is_empty() {
        println!(
            "{target}: ok ({scope}: {} of {} records, {} bytes compared)",
            report.checked, report.records, report.bytes
        );
        return Ok(());
    }
    for d in &report.differences {
        println!("{target}: differs at {d}");
    }
    if report.more > 0 {
        println!("{target}: and {} more differences", report.more);
    }
    Err(format!("{target}: {} difference(s) ({scope})", report.differences.len() as u64 + report.more).into())
}

/// Name the chunks whose digests differ between the snapshot and the backup's chunk sums,
/// both read in chunk order (nothing held but one chunk of each).
fn differing_chunks(repo: &Repo, manifest: &Manifest, image: &Image, report: &mut Report) -> Result<()> {
    let backups = repo.backups()?;
    let mut kept = Layers::new(repo.sums_layers(manifest.number()?, &backups)?)?;
    let mut next = kept.next_data()?;
    let chunk = manifest.chunk_size;
    image_data_chunks(image, |index, sum| {
        while let Some((k, _)) = next.filter(|(k, _)| *k < index) {
            report.differ(format!("chunk {}+{chunk}: zeroes in the snapshot, data in the backup", k * chunk));
            next = kept.next_data()?;
        }
        match next {
            Some((k, kept_sum)) if k == index => {
                if kept_sum != *sum {
                    report.differ(format!("chunk {}+{chunk}: its digest is not the backup's", index * chunk));
                }
                next = kept.next_data()?;
            }
            _ => report.differ(format!("chunk {}+{chunk}: data in the snapshot, zeroes in the backup", index * chunk)),
        }
        Ok(())
    })?;
    while let Some((k, _)) = next {
        report.differ(format!("chunk {}+{chunk}: zeroes in the snapshot, data in the backup", k * chunk));
        next = kept.next_data()?;
    }
    Ok(())
}

rbd_wasm_guest::job!(run);
