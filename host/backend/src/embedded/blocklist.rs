//! The OSDs' blocklist, as the embedded store keeps it.
//!
//! On a cluster, `break_lock` blocklists the broken lock's holder first
//! (`rbd_blocklist_on_break_lock`, on by default): every later call of that client answers
//! `ConnectionShutdown` (ESHUTDOWN), its watches are gone, and a client that breaks its own
//! lock blocklists itself (docs/librbd-semantics.md). Here `ROOT/blocklist/<client>` names a
//! blocklisted client and holds the Unix time its entry expires: an hour after it was made,
//! Ceph's default (`mon_osd_blocklist_default_expire`). A client's name is never used twice
//! (the store's counter), so an entry stands only for the client it names; expired entries
//! are removed when the next one is made.

use std::fs;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::store::{write_atomic, Root};
use crate::{Error, Result};

/// How long a client stays blocklisted.
pub(crate) const EXPIRY: Duration = Duration::from_secs(3600);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Blocklist `client` (a name `locks::check_entity` accepted: no path separator in it).
pub(crate) fn add(root: &Root, client: &str) -> Result<()> {
    let dir = root.blocklist();
    fs::create_dir_all(&dir)?;
    let expires = now() + EXPIRY.as_secs();
    write_atomic(&dir.join(client), expires.to_string().as_bytes(), true)?;
    // Expired entries go now: nobody else removes them.
    for entry in fs::read_dir(&dir)?.flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n != client) && expired(&entry.path()) {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

fn expired(path: &std::path::Path) -> bool {
    fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<u64>().ok()).is_some_and(|at| at <= now())
}

/// Whether `client` is blocklisted now.
pub(crate) fn contains(root: &Root, client: &str) -> Result<bool> {
    match fs::read_to_string(root.blocklist().join(client)) {
        // An entry being written (empty, unparsable) counts: it is there.
        Ok(text) => Ok(text.trim().parse::<u64>().map_or(true, |at| at > now())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `ConnectionShutdown` if `client` is blocklisted: what each of its calls checks first.
pub(crate) fn check(root: &Root, client: &str) -> Result<()> {
    if contains(root, client)? {
        return Err(Error::ConnectionShutdown(format!("{client} is blocklisted (a lock of it was broken)")));
    }
    Ok(())
}
