//! Offsite copies of the backup repository (`backup-repo`) in an S3 bucket, and back.
//!
//! Arguments: `push ENDPOINT BUCKET PREFIX [POOL IMAGE]` or `pull ENDPOINT BUCKET PREFIX POOL
//! IMAGE`, with the bucket's keys handed to the job as the secrets `s3-access-key` and
//! `s3-secret-key`, `ENDPOINT` granted to it as an `[[outbound]]` URL, and the repository
//! mapped as `/out` (read-only will do for `push`). The region defaults to `default`
//! (Ceph's gateway); `--region R` sets it. `push` first aborts the unfinished multipart
//! uploads under its prefix started more than `--abort-uploads-after` seconds ago (default
//! a day): a killed push's, whose parts the bucket would otherwise keep.
//!
//! The bucket holds the repository's own layout under `PREFIX/`: `PREFIX/POOL/IMAGE/N.rbddiff`,
//! `N.sums` and `N.json`, POOL and IMAGE encoded as in the repository, so what is in the
//! bucket is the same repository (`rbd import-diff` restores its streams, and `pull` makes a
//! local copy that the restore and verify jobs read).
//!
//! The commit rule is the repository's: a backup is complete when its manifest exists, and
//! the manifest goes last. `push` uploads each complete local backup that the bucket lacks,
//! oldest first, its stream and sums first (as multipart uploads when large, which S3
//! completes only when every part is in), then the manifest; a killed push leaves at most
//! a stream or sums without a manifest, which is not a backup and is uploaded again by the
//! next push. `pull` downloads each complete remote backup the directory lacks under
//! temporary names, checks the stream against its manifest's check and the sums against
//! their sha256, renames them, and writes the manifest last. Data moves between files and
//! HTTP bodies inside the host; the job handles only manifests.

use std::fs;

use backup_repo::{
    decode_name, encode_name, manifest_file, parse_number, stream_file, sums_file, write_atomically, Manifest, Repo, Result, ROOT,
};
use rbd_wasm_guest::report_progress;
use rbd_wasm_guest::s3::Bucket;

const USAGE: &str =
    "usage: push ENDPOINT BUCKET PREFIX [POOL IMAGE] [--abort-uploads-after SECS] | pull ENDPOINT BUCKET PREFIX POOL IMAGE; [--region R]";
/// The largest manifest fetched (the repository's own limit is smaller).
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

struct Args {
    command: String,
    endpoint: String,
    bucket: String,
    prefix: String,
    image: Option<(String, String)>,
    region: String,
    /// Seconds after which an unfinished upload is taken for a killed push's.
    abandoned: u64,
}

fn parse(args: Vec<String>) -> Result<Args> {
    let mut positional = Vec::new();
    let mut region = "default".to_owned();
    let mut abandoned = 24 * 3600;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--region" => region = it.next().ok_or("--region needs a region name")?,
            "--abort-uploads-after" => {
                let v = it.next().ok_or("--abort-uploads-after needs a number of seconds")?;
                abandoned = v.parse().map_err(|_| format!("--abort-uploads-after {v:?}: not a number of seconds"))?;
            }
            a if a.starts_with("--") => return Err(format!("unknown option {a}; {USAGE}").into()),
            _ => positional.push(arg),
        }
    }
    let image = match &positional[..] {
        [_, _, _, _] => None,
        [_, _, _, _, pool, image] => Some((pool.clone(), image.clone())),
        _ => return Err(USAGE.into()),
    };
    let command = positional[0].clone();
    if command != "push" && !(command == "pull" && image.is_some()) {
        return Err(USAGE.into());
    }
    let prefix = positional[3].trim_matches('/').to_owned();
    Ok(Args { command, endpoint: positional[1].clone(), bucket: positional[2].clone(), prefix, image, region, abandoned })
}

fn run(args: Vec<String>) -> Result<()> {
    let args = parse(args)?;
    let bucket = Bucket::from_secrets(&args.endpoint, &args.bucket, &args.region, "s3-access-key", "s3-secret-key")?;
    let remote = |pool: &str, image: &str| -> Result<String> {
        let key = format!("{}/{}", encode_name(pool)?, encode_name(image)?);
        Ok(if args.prefix.is_empty() { key } else { format!("{}/{key}", args.prefix) })
    };
    match (args.command.as_str(), &args.image) {
        ("push", Some((pool, image))) => push(&bucket, &Repo::new(ROOT.as_ref(), pool, image)?, &remote(pool, image)?, args.abandoned),
        ("push", None) => {
            for (pool, image) in local_images()? {
                push(&bucket, &Repo::new(ROOT.as_ref(), &pool, &image)?, &remote(&pool, &image)?, args.abandoned)?;
            }
            Ok(())
        }
        (_, Some((pool, image))) => pull(&bucket, &Repo::new(ROOT.as_ref(), pool, image)?, &remote(pool, image)?),
        _ => Err(USAGE.into()),
    }
}

/// The (pool, image) of every image directory of the repository.
fn local_images() -> Result<Vec<(String, String)>> {
    let mut images = Vec::new();
    for pool_dir in fs::read_dir(ROOT)? {
        let pool_dir = pool_dir?.path();
        let Some(pool) = pool_dir.file_name().and_then(|n| n.to_str()).and_then(decode_name) else { continue };
        if !pool_dir.is_dir() {
            continue;
        }
        for image_dir in fs::read_dir(&pool_dir)? {
            let image_dir = image_dir?.path();
            if let Some(image) = image_dir.file_name().and_then(|n| n.to_str()).and_then(decode_name) {
                images.push((pool.clone(), image));
            }
        }
    }
    images.sort();
    Ok(images)
}

/// Upload the complete local backups of one image that the bucket lacks, oldest first;
/// each one's manifest after its stream and sums. Uploads a killed push left behind (older
/// than `abandoned` seconds) are aborted first.
fn push(bucket: &Bucket, repo: &Repo, remote: &str, abandoned: u64) -> Result<()> {
    let aborted = bucket.abort_stale_uploads(&format!("{remote}/"), abandoned)?;
    if aborted > 0 {
        println!("{}: aborted {aborted} uploads an earlier push left unfinished", repo.dir().display());
    }
    let backups = repo.backups()?;
    let mut sent = 0;
    for (n, manifest) in &backups {
        let manifest_key = format!("{remote}/{}", manifest_file(*n));
        if bucket.head(&manifest_key)?.is_some() {
            continue;
        }
        let mut bytes = 0;
        for (file, key) in [(repo.stream_path(manifest)?, stream_file(*n)), (repo.sums_path(manifest)?, sums_file(*n))] {
            report_progress(&format!("push {}", repo.dir().display()), bytes, Some(manifest.stream_bytes));
            bytes += bucket.put_file(&format!("{remote}/{key}"), &file).map_err(|e| format!("uploading {}: {e}", file.display()))?;
        }
        let manifest_bytes = fs::read(repo.dir().join(manifest_file(*n)))?;
        bucket.put(&manifest_key, &manifest_bytes).map_err(|e| format!("uploading {manifest_key}: {e}"))?;
        println!("pushed backup {n} of {} ({bytes} bytes) to {manifest_key}", repo.dir().display());
        sent += 1;
    }
    println!("{}: {sent} backups pushed, {} already in the bucket", repo.dir().display(), backups.len() - sent);
    Ok(())
}

/// Download the complete remote backups of one image that the directory lacks, oldest
/// first: stream and sums under temporary names, checked, renamed, then the manifest.
fn pull(bucket: &Bucket, repo: &Repo, remote: &str) -> Result<()> {
    fs::create_dir_all(repo.dir()).map_err(|e| format!("{}: {e}", repo.dir().display()))?;
    repo.clear_temporary_files()?;
    let local: Vec<u64> = repo.backups()?.into_iter().map(|(n, _)| n).collect();
    let mut remote_numbers: Vec<u64> = bucket
        .list(&format!("{remote}/"))?
        .into_iter()
        .filter_map(|o| o.key.strip_prefix(&format!("{remote}/"))?.strip_suffix(".json").and_then(parse_number))
        .collect();
    remote_numbers.sort_unstable();
    let mut fetched = 0;
    for n in remote_numbers.into_iter().filter(|n| !local.contains(n)) {
        let manifest_key = format!("{remote}/{}", manifest_file(n));
        let bytes = bucket.get(&manifest_key, MAX_MANIFEST_BYTES)?.ok_or_else(|| format!("{manifest_key} vanished"))?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| format!("{manifest_key}: not a backup manifest: {e}"))?;
        let (pool, image) = repo.pool_and_image();
        manifest.check(n, pool, image).map_err(|e| format!("{manifest_key}: {e}"))?;
        for name in [stream_file(n), sums_file(n)] {
            let tmp = repo.dir().join(format!("{name}.tmp"));
            report_progress(&format!("pull {}", repo.dir().display()), 0, Some(manifest.stream_bytes));
            bucket.get_to_file(&format!("{remote}/{name}"), &tmp).map_err(|e| format!("downloading {remote}/{name}: {e}"))?;
        }
        // Checked before they are renamed: a damaged or truncated copy never becomes a backup.
        let stream_tmp = repo.dir().join(format!("{}.tmp", stream_file(n)));
        let (check, length) = backup_repo::file_check(&stream_tmp, &manifest)?;
        backup_repo::check_stream_digest(&stream_tmp, &manifest, &check, length)?;
        let sums_tmp = repo.dir().join(format!("{}.tmp", sums_file(n)));
        let (sums_sha256, _) = backup_repo::file_sha256(&sums_tmp)?;
        if sums_sha256 != manifest.sums_sha256 {
            return Err(format!("{remote}/{}: its sha256 is not the manifest's", sums_file(n)).into());
        }
        fs::rename(&stream_tmp, repo.dir().join(stream_file(n)))?;
        fs::rename(&sums_tmp, repo.dir().join(sums_file(n)))?;
        write_atomically(&repo.dir().join(manifest_file(n)), &bytes)?;
        println!("pulled backup {n} ({length} bytes, checked) into {}", repo.dir().display());
        fetched += 1;
    }
    println!("{}: {fetched} backups pulled", repo.dir().display());
    Ok(())
}

rbd_wasm_guest::job!(run);
