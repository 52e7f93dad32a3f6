//! The deduplicating, encrypted backup repository's format (issue 15; `docs/dedup-format.md`
//! is the specification, this crate its one implementation).
//!
//! - [`config`]: the repository's `config`: the chunk size and codecs, and the three keys
//!   (data, chunk id, MAC) wrapped by a key derived from the passphrase (Argon2id).
//! - [`chunk`]: a chunk's id (HMAC-SHA256 of its plaintext under the id key: equal data has
//!   equal ids across backups and images, and the id reveals nothing without the key) and
//!   the framing of a sealed chunk (AES-256-GCM, the id as associated data).
//! - [`index`]: one flat index per backup, the image chunk by chunk (chunk ids and runs of
//!   zero chunks), MAC'd whole.
//! - [`manifest`]: a backup's manifest, MAC'd, written last.
//!
//! Pure: no I/O, no clock; randomness (salts, nonces) comes from the caller, so the same
//! code serves the jobs in the sandbox (WASI's random) and the host, and the tests are
//! deterministic. Every way a repository can be wrong has its own [`Error`]: a wrong
//! passphrase, a truncated or damaged file, a forged one (its MAC or tag does not hold),
//! an unsupported version.

pub mod chunk;
pub mod config;
pub mod index;
pub mod manifest;
pub mod retention;

/// Why a repository's file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The passphrase does not open the repository's keys.
    WrongPassphrase,
    /// A file ends before its format says it does.
    Truncated(String),
    /// A file's MAC or authentication tag does not hold: changed, forged, or under another key.
    Forged(String),
    /// A file that is not what it should be (bad magic, bad JSON, values out of range).
    Corrupt(String),
    /// A version or codec this implementation does not know.
    Unsupported(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::WrongPassphrase => f.write_str("the passphrase does not open this repository's keys"),
            Error::Truncated(what) => write!(f, "truncated: {what}"),
            Error::Forged(what) => write!(f, "does not authenticate (changed, forged, or another repository's): {what}"),
            Error::Corrupt(what) => write!(f, "damaged: {what}"),
            Error::Unsupported(what) => write!(f, "unsupported: {what}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// HMAC-SHA256 of `parts` in order, under `key`.
pub(crate) fn mac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::Mac;
    let mut m = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        m.update(part);
    }
    m.finalize().into_bytes().into()
}

/// Whether `tag` is the HMAC of `parts` (in constant time).
pub(crate) fn mac_holds(key: &[u8; 32], parts: &[&[u8]], tag: &[u8]) -> bool {
    use hmac::Mac;
    let mut m = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        m.update(part);
    }
    m.verify_slice(tag).is_ok()
}
