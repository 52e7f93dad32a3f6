//! Full and incremental backups of RBD images into the job's output directory, in the
//! `rbd export-diff` v1 stream format, so that the real `rbd import-diff` restores them.
//!
//! Arguments: `POOL IMAGE... [--every SECS] [--claim-timeout SECS]`. For each image the job
//! takes a snapshot `backup-N` and writes `/out/POOL/IMAGE/N.rbddiff` (POOL and IMAGE
//! encoded into one path component each, see `backup_repo::encode_name`): a diff from the
//! snapshot of the newest complete backup in that directory, if the image still has it, and
//! else a full one. Beside it, `N.json` (the manifest, see `backup-repo`) says what the
//! stream holds. The stream is written under a temporary name and renamed when complete and
//! synced; the manifest, written the same way after it, is the commit point.
//!
//! Several runners may back up the same images into one repository at once (two hosts on a
//! shared directory, or two cron jobs that overlap). They agree through Ceph, with no other
//! service. A runner decides and claims backup N of an image under a pool-wide mutex, the
//! exclusive advisory lock of the image `rbd-wasm-backup-claims` (created on first use,
//! without the exclusive-lock feature, whose managed lock shares that lock), and the claim
//! is the snapshot `backup-N` it creates there. (Snapshot creation alone is no claim: two
//! librbd clients creating one snapshot name at once are both told it worked.) The mutex
//! is held for milliseconds; a holder killed inside it is broken once its client is gone
//! (see below), or after a minute.
//!
//! Under the mutex the runner also takes its claim: a shared advisory lock on the image
//! `rbd-wasm-backup-running` with the cookie `claim POOL/IMAGE backup-N`, held until the
//! backup is complete. The host releases a job's locks however it ends (an error, a trap,
//! its deadline, a cancel, SIGTERM), so a claim lives as long as its runner: a `backup-N`
//! snapshot without a complete backup and without its claim is a dead runner's, and the
//! next runner removes it and backs up at once. A runner killed outright (SIGKILL, a crash
//! of the host) leaves its claim, but not its client's watch: every live runner holds the
//! claims image open for writing, which watches it (`list-watchers`), and Ceph drops the
//! watch of a dead client once it times out (30 s; the embedded store at once). A claim
//! whose holder no longer watches is broken and its snapshot removed. One whose holder
//! still watches is another runner's backup in progress, left alone while younger than
//! `--claim-timeout` (default 3600 s; a runner that hangs that long is taken over). With
//! `--every SECS` an image
//! whose newest backup snapshot is younger than SECS is up to date and skipped, so runners
//! started together make one backup of each image.

use std::fs;
use std::io::{BufReader, BufWriter};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backup_repo::digest::{walk_diff, Change, GroupSink, ImageDigest, Layers, SumsReader, SumsWriter, CHUNK, MAX_LAYERS};
use backup_repo::stream::PlannedStream;
use backup_repo::{
    manifest_file, snapshot_name, snapshot_number, stream_file, sums_file, write_atomically, Manifest, Repo, Result,
    DIGEST_VERSION, ROOT,
};
use rbd_wasm_guest::{open_pool, report_progress, CreateOptions, Error, Extent, Image, OutputFile, PendingReads, Pool, Range};

const USAGE: &str = "usage: POOL IMAGE... [--every SECS] [--claim-timeout SECS]";

struct Args {
    pool: String,
    images: Vec<String>,
    every: u64,
    claim_timeout: u64,
}

fn parse(args: Vec<String>) -> Result<Args> {
    let mut positional = Vec::new();
    let (mut every, mut claim_timeout) = (0, 3600);
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--every" | "--claim-timeout" => {
                let v = it.next().ok_or_else(|| format!("{arg} needs a number of seconds"))?;
                let secs = v.parse().map_err(|_| format!("{arg} {v:?}: not a number of seconds"))?;
                if arg == "--every" {
                    every = secs;
                } else {
                    claim_timeout = secs;
                }
            }
            a if a.starts_with("--") => return Err(format!("unknown option {a}; {USAGE}").into()),
            _ => positional.push(arg),
        }
    }
    let (pool, images) = positional.split_first().ok_or(USAGE)?;
    if images.is_empty() {
        return Err(USAGE.into());
    }
    Ok(Args { pool: pool.clone(), images: images.to_vec(), every, claim_timeout })
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The image whose advisory lock is the runners' mutex.
const CLAIMS_IMAGE: &str = "rbd-wasm-backup-claims";
/// A mutex holder older than this was killed inside it (it holds it for milliseconds).
const STALE_MUTEX_SECS: u64 = 60;
/// How long a runner waits for the mutex before it gives up.
const MUTEX_WAIT: Duration = Duration::from_secs(600);
/// librbd's layering feature bit: the claims image has no exclusive-lock feature.
const LAYERING: u64 = 1;

/// The image whose shared advisory locks are the runners' claims (layering only, empty).
const RUNNING_IMAGE: &str = "rbd-wasm-backup-running";
/// The tag of every claim (shared locks of one image share a tag).
const CLAIM_TAG: &str = "rbd-wasm-backup";

/// The claim of one backup in progress; released on drop (and by the host when the job
/// ends, however it ends).
struct Claim {
    image: Image,
    cookie: String,
}

impl Claim {
    fn cookie(pool: &str, image: &str, snapshot: &str) -> String {
        format!("claim {pool}/{image} {snapshot}")
    }

    fn running_image(pool: &Pool) -> Result<Image> {
        match pool.create_with(RUNNING_IMAGE, 0, &CreateOptions { features: LAYERING, ..CreateOptions::default() }) {
            Ok(()) | Err(Error::Exists(_)) => {}
            Err(e) => return Err(format!("creating the runners' claims image {RUNNING_IMAGE}: {e}").into()),
        }
        Ok(pool.open(RUNNING_IMAGE)?)
    }

    /// Take the claim (under the mutex, right after the snapshot it claims is made).
    fn take(pool: &Pool, cookie: String) -> Result<Claim> {
        let image = Claim::running_image(pool)?;
        image.lock_shared(&cookie, CLAIM_TAG).map_err(|e| format!("taking the claim `{cookie}`: {e}"))?;
        Ok(Claim { image, cookie })
    }

    /// Every claim held now, as (cookie, client). Read before the repository is listed: a
    /// runner writes its manifest before it lets go of its claim, so a claim missing here
    /// is either a dead runner's or one whose manifest the listing will show.
    fn held(pool: &Pool) -> Result<Vec<(String, String)>> {
        let image = Claim::running_image(pool)?;
        Ok(image.list_lockers()?.lockers.into_iter().map(|l| (l.cookie, l.client)).collect())
    }

    /// The clients that still have the claims image open: every live runner does while it
    /// holds its claim (the `Claim` keeps it open for writing, which watches it). A claim
    /// whose holder is not among them is a dead runner's: Ceph drops a dead client's watch
    /// once it times out (30 s), the embedded store at once.
    fn live_clients(pool: &Pool) -> Result<std::collections::HashSet<String>> {
        let image = Claim::running_image(pool)?;
        Ok(image.list_watchers()?.into_iter().map(|w| w.client).collect())
    }

    /// Fail unless this runner still holds its claim: another runner breaks a claim whose
    /// holder it takes for gone (and librbd then blocklists the holder), and a runner whose
    /// claim was broken must not make its backup look complete.
    fn still_held(&self) -> Result<()> {
        let me = self.image.lock_client();
        let lockers = self.image.list_lockers()?.lockers;
        if lockers.iter().any(|l| l.cookie == self.cookie && l.client == me) {
            Ok(())
        } else {
            Err(format!("the claim `{}` was broken by another runner, which took this one for gone: this backup is abandoned", self.cookie).into())
        }
    }

    /// Break a killed runner's claim.
    fn break_held(pool: &Pool, client: &str, cookie: &str) -> Result<()> {
        match Claim::running_image(pool)?.break_lock(client, cookie) {
            Ok(()) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(format!("breaking the claim `{cookie}`: {e}").into()),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Err(e) = self.image.unlock(&self.cookie) {
            eprintln!("releasing the claim `{}`: {e}", self.cookie);
        }
    }
}

/// The pool-wide mutex under which runners decide and claim backups; unlocked on drop.
struct ClaimsMutex {
    image: Image,
    cookie: String,
}

impl ClaimsMutex {
    fn lock(pool: &Pool) -> Result<ClaimsMutex> {
        match pool.create_with(CLAIMS_IMAGE, 0, &CreateOptions { features: LAYERING, ..CreateOptions::default() }) {
            Ok(()) | Err(Error::Exists(_)) => {}
            Err(e) => return Err(format!("creating the runners' mutex image {CLAIMS_IMAGE}: {e}").into()),
        }
        let image = pool.open(CLAIMS_IMAGE)?;
        let started = std::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            let cookie = format!("backup-claims {}", now());
            match image.lock_exclusive(&cookie) {
                Ok(()) => return Ok(ClaimsMutex { image, cookie }),
                Err(Error::Busy(_) | Error::Exists(_)) => {}
                Err(e) => return Err(format!("taking the runners' mutex: {e}").into()),
            }
            // A holder killed inside the mutex never lets go: break its lock once its client
            // is gone (it no longer watches the image it holds open) or the lock is old.
            // Lockers before watchers: a holder watches before it locks, so one that locked
            // after the watchers were listed is never taken for dead.
            let me = image.lock_client();
            let lockers = image.list_lockers()?.lockers;
            let live: std::collections::HashSet<String> = image.list_watchers()?.into_iter().map(|w| w.client).collect();
            for locker in lockers.into_iter().filter(|l| l.client != me) {
                let taken = locker.cookie.strip_prefix("backup-claims ").and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
                if !live.contains(&locker.client) || now().saturating_sub(taken) > STALE_MUTEX_SECS {
                    println!("breaking the runners' mutex held since {taken} by {} (killed?)", locker.client);
                    match image.break_lock(&locker.client, &locker.cookie) {
                        Ok(()) | Err(Error::NotFound(_)) => {}
                        Err(e) => return Err(format!("breaking a stale mutex: {e}").into()),
                    }
                }
            }
            if started.elapsed() > MUTEX_WAIT {
                return Err(format!("the runners' mutex ({CLAIMS_IMAGE}) stayed busy for {} s", MUTEX_WAIT.as_secs()).into());
            }
            attempt += 1;
            std::thread::sleep(Duration::from_millis(5 * u64::from(attempt.min(20))));
        }
    }
}

impl Drop for ClaimsMutex {
    fn drop(&mut self) {
        if let Err(e) = self.image.unlock(&self.cookie) {
            eprintln!("releasing the runners' mutex: {e}");
        }
    }
}

/// What became of one image.
enum Outcome {
    Done,
    /// Nothing to do (the newest backup is recent enough).
    Skipped(String),
    /// Another runner's claim (or a killed run's, until it times out) holds the image.
    Claimed(String),
}

/// The stream's records, one for each extent of the diff: the host writes them with the
/// bytes it read, which never enter the job.
struct Records(PlannedStream);

impl GroupSink for Records {
    fn extent(&mut self, extent: &Extent, ranges: &[Range]) -> Result<()> {
        if extent.exists {
            self.0.data(extent.offset, extent.length, ranges)
        } else {
            self.0.zero(extent.offset, extent.length);
            Ok(())
        }
    }
    fn take(&mut self, reads: PendingReads) -> Result<Vec<Vec<u8>>> {
        self.0.write(reads)
    }
}

fn backup_image(pool: &Pool, args: &Args, image_name: &str) -> Result<Outcome> {
    let pool_name = &args.pool;
    let repo = Repo::new(ROOT.as_ref(), pool_name, image_name)?;
    fs::create_dir_all(repo.dir()).map_err(|e| format!("creating {}: {e}", repo.dir().display()))?;
    // Decide and claim under the mutex; back up after it. The image is opened inside: an
    // open librbd handle answers from the header it last read, and a snapshot another
    // runner just took must be seen.
    let mutex = ClaimsMutex::lock(pool)?;
    let head = pool.open(image_name)?;
    let claims = Claim::held(pool)?;
    let live = Claim::live_clients(pool)?;
    let backups = repo.backups()?;
    let newest_complete = backups.iter().map(|(n, _)| *n).max().unwrap_or(0);
    let backed_up = |name: &str| backups.iter().any(|(_, m)| m.to_snapshot == name);
    let snaps = head.list_snaps()?;
    let ours: Vec<_> = snaps.iter().filter_map(|s| Some((snapshot_number(&s.name)?, s))).collect();
    let now = now();

    // Another runner's backup in progress (its claim is held), or a dead run's leftover.
    for (_, snap) in ours.iter().filter(|(_, s)| !backed_up(&s.name)) {
        let age = now.saturating_sub(snap.timestamp);
        let cookie = Claim::cookie(pool_name, image_name, &snap.name);
        match claims.iter().find(|(c, _)| *c == cookie).map(|(_, client)| client.clone()) {
            Some(client) if live.contains(&client) && age < args.claim_timeout => {
                return Ok(Outcome::Claimed(format!(
                    "{} (taken {age} s ago) has no complete backup yet: another runner ({client}) holds its \
                     claim and is backing it up (a runner killed outright keeps its claim until Ceph \
                     drops its watch, 30 s; one that hangs, until --claim-timeout {} s)",
                    snap.name, args.claim_timeout
                )));
            }
            Some(client) if live.contains(&client) => {
                println!("{pool_name}/{image_name}: breaking the claim of {} held by {client} for {age} s (hung?)", snap.name);
                Claim::break_held(pool, &client, &cookie)?;
            }
            Some(client) => {
                println!(
                    "{pool_name}/{image_name}: breaking the claim of {} held by {client}, which is gone (it no longer \
                     watches {RUNNING_IMAGE})",
                    snap.name
                );
                Claim::break_held(pool, &client, &cookie)?;
            }
            None => println!("{pool_name}/{image_name}: the runner of {} is gone (its claim was released)", snap.name),
        }
        match head.remove_snap(&snap.name) {
            Ok(()) | Err(Error::NotFound(_)) => {
                println!("{pool_name}/{image_name}: removed {}, the snapshot of a backup that never completed", snap.name)
            }
            Err(e) => return Err(format!("removing the unfinished backup's snapshot {}: {e}", snap.name).into()),
        }
    }
    if let Some((_, newest)) = ours.iter().filter(|(_, s)| backed_up(&s.name)).max_by_key(|(n, _)| *n) {
        let age = now.saturating_sub(newest.timestamp);
        if age < args.every {
            return Ok(Outcome::Skipped(format!("up to date: {} was taken {age} s ago (--every {})", newest.name, args.every)));
        }
    }

    // The claim. N is one more than any backup the image or the repository knows, so a
    // name is never reused.
    let n = ours
        .iter()
        .map(|(n, _)| *n)
        .max()
        .unwrap_or(0)
        .max(newest_complete)
        .checked_add(1)
        .ok_or("no backup number is left after the newest")?;
    let to = snapshot_name(n);
    head.create_snap(&to)?;
    let claim = match Claim::take(pool, Claim::cookie(pool_name, image_name, &to)) {
        Ok(claim) => claim,
        Err(e) => {
            let _ = head.remove_snap(&to);
            return Err(e);
        }
    };
    drop(mutex);
    // This runner holds the newest claim: temporary files here are killed runs' leftovers.
    repo.clear_temporary_files()?;

    // Incremental from the last backed-up snapshot if the image still has it, and the
    // digests of its chunks are whole; else full.
    let mut base = backups.last().filter(|(_, m)| snaps.iter().any(|s| s.name == m.to_snapshot));
    // Its sums files, checked now and read once the stream is written.
    let mut base_layers = match base.map(|(k, _)| repo.sums_layers(*k, &backups)) {
        Some(Ok(layers)) => layers,
        Some(Err(e)) => {
            println!("{pool_name}/{image_name}: a full backup: the base's chunk digests are unusable: {e}");
            base = None;
            Vec::new()
        }
        None => Vec::new(),
    };
    let from = base.map(|(_, m)| m.to_snapshot.clone());

    let image = pool.open_at_snapshot(image_name, &to)?;
    let size = image.size()?;
    // The chunk holding the smaller of the old and new ends changed length if the image
    // was resized: it is read again.
    let resized = base.map(|(_, m)| m.size).filter(|&old| old != size).map(|old| old.min(size)).filter(|end| end % CHUNK != 0);

    let stream_name = stream_file(n);
    let tmp = repo.dir().join(format!("{stream_name}.tmp"));
    let file = OutputFile::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let mut out = Records(PlannedStream::new(file, from.as_deref(), &to, size)?);
    let sums_name = sums_file(n);
    let sums_tmp = repo.dir().join(format!("{sums_name}.tmp"));
    let sums_out = fs::File::create(&sums_tmp).map_err(|e| format!("creating {}: {e}", sums_tmp.display()))?;
    let mut sums = SumsWriter::new(BufWriter::with_capacity(1 << 16, sums_out), size, base.map(|(k, _)| *k))?;
    let label = format!("backup {image_name}");
    walk_diff(
        &image,
        from.as_deref(),
        size,
        resized.map(|end| end / CHUNK),
        |change| sums.change(change),
        &mut out,
        |done| report_progress(&label, done, Some(size)),
    )?;
    let (file, stream_check, stream_bytes) = out.0.finish()?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, repo.dir().join(&stream_name)).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;

    // The digest: this backup's chunk sums over its base's. A chain grown to MAX_LAYERS
    // files is written whole instead, so that the next digest reads few files.
    let (sums_out, mut sums_sha256, _) = sums.finish()?;
    sums_out.into_inner().map_err(|e| format!("writing {}: {}", sums_tmp.display(), e.error()))?.sync_all()?;
    let mut whole = if base_layers.len() >= MAX_LAYERS {
        let path = repo.dir().join(format!("{sums_name}.whole.tmp"));
        let file = fs::File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Some((SumsWriter::new(BufWriter::with_capacity(1 << 16, file), size, None)?, path))
    } else {
        None
    };
    let mut readers = vec![SumsReader::new(BufReader::with_capacity(1 << 16, fs::File::open(&sums_tmp)?))?];
    readers.append(&mut base_layers);
    let mut merged = Layers::new(readers)?;
    let mut digest = ImageDigest::default();
    while let Some((index, sum)) = merged.next_data()? {
        digest.add(index, &sum);
        if let Some((writer, _)) = &mut whole {
            writer.change(Change::Data { index, sum })?;
        }
    }
    let image_digest = digest.finish(size);
    drop(merged);
    if let Some((writer, path)) = whole {
        let (out, sha, _) = writer.finish()?;
        out.into_inner().map_err(|e| format!("writing {}: {}", path.display(), e.error()))?.sync_all()?;
        fs::rename(&path, &sums_tmp)?;
        sums_sha256 = sha;
    }
    fs::rename(&sums_tmp, repo.dir().join(&sums_name)).map_err(|e| format!("renaming {}: {e}", sums_tmp.display()))?;
    let manifest = Manifest {
        pool: pool_name.clone(),
        image: image_name.into(),
        from_snapshot: from.clone(),
        to_snapshot: to.clone(),
        size,
        stream: stream_name,
        stream_bytes,
        stream_check: Some(stream_check),
        stream_sha256: None,
        image_digest,
        digest_version: DIGEST_VERSION,
        chunk_size: CHUNK,
        sums: sums_name,
        sums_sha256,
    };
    // The commit point: only while this runner still holds its claim.
    claim.still_held()?;
    write_atomically(&repo.dir().join(manifest_file(n)), &serde_json::to_vec_pretty(&manifest)?)?;
    match &from {
        Some(from) => println!("{pool_name}/{image_name}: incremental backup {from} -> {to}, {stream_bytes} bytes"),
        None => println!("{pool_name}/{image_name}: full backup of {to}, {stream_bytes} bytes"),
    }
    Ok(Outcome::Done)
}

fn run(args: Vec<String>) -> Result<()> {
    let args = parse(args)?;
    let pool = open_pool(&args.pool)?;
    let mut failed = Vec::new();
    let (mut done, mut claimed) = (0, 0);
    for image in &args.images {
        match backup_image(&pool, &args, image) {
            Ok(Outcome::Done) => done += 1,
            Ok(Outcome::Skipped(why)) => println!("{}/{image}: skipped: {why}", args.pool),
            Ok(Outcome::Claimed(why)) => {
                println!("{}/{image}: skipped: {why}", args.pool);
                claimed += 1;
            }
            Err(e) => {
                eprintln!("{}/{image}: {e}", args.pool);
                failed.push(image.as_str());
            }
        }
    }
    if !failed.is_empty() {
        return Err(format!("{} of {} images failed: {}", failed.len(), args.images.len(), failed.join(", ")).into());
    }
    if claimed > 0 && done == 0 {
        // Not a success: if the claim is a killed run's, nothing is being backed up until it
        // times out, and cron or monitoring must be able to tell.
        eprintln!("backed up nothing: {claimed} image(s) held by another runner's claim (exit status {EXIT_CLAIMED})");
        rbd_wasm_guest::exit(EXIT_CLAIMED);
    }
    Ok(())
}

/// The exit status of a run that backed up nothing because other runners' claims held its
/// images (EX_TEMPFAIL: try again later).
const EXIT_CLAIMED: u8 = 75;

rbd_wasm_guest::job!(run);
