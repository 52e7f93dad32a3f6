//! The repository's `config`: what every backup in it shares, and its keys, wrapped.
//!
//! ```json
//! {"format": "rbd-wasm-dedup", "version": 1, "chunk_size": 1048576,
//!  "compression": "zstd-1", "cipher": "aes-256-gcm",
//!  "kdf": {"algorithm": "argon2id", "memory_kib": 65536, "iterations": 3, "parallelism": 1,
//!          "salt": "<16 bytes, hex>"},
//!  "keys": "<hex: 12-byte nonce, then AES-256-GCM of data key || id key || MAC key>"}
//! ```
//!
//! The key-encryption key is Argon2id of the passphrase with the salt (RFC 9106's second
//! recommended setting, 64 MiB and 3 passes, with one lane: a job runs on one thread). The
//! three 32-byte keys are sealed under it with the config's fixed fields as associated
//! data, so a config whose chunk size or codecs were changed does not open either. A wrong
//! passphrase is told apart from a damaged config only by the tag: both fail it, and the
//! config's own shape is checked first.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub const FORMAT: &str = "rbd-wasm-dedup";
pub const VERSION: u32 = 1;
/// Chunk sizes a repository may have: powers of two from 64 KiB to 16 MiB.
pub const MIN_CHUNK: u32 = 64 << 10;
pub const MAX_CHUNK: u32 = 16 << 20;

/// The Argon2id setting of new repositories.
pub const ARGON2_MEMORY_KIB: u32 = 64 << 10;
pub const ARGON2_ITERATIONS: u32 = 3;
pub const ARGON2_PARALLELISM: u32 = 1;

/// The config as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub format: String,
    pub version: u32,
    pub chunk_size: u32,
    pub compression: String,
    pub cipher: String,
    pub kdf: Kdf,
    /// Hex: nonce, then the sealed keys.
    pub keys: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kdf {
    pub algorithm: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: String,
}

/// A repository's keys, once opened.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    /// Seals chunks (AES-256-GCM).
    pub data: [u8; 32],
    /// Names chunks (HMAC-SHA256 of their plaintext).
    pub id: [u8; 32],
    /// Authenticates indexes and manifests (HMAC-SHA256).
    pub mac: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys([hidden])")
    }
}

impl Config {
    /// A new repository of `chunk_size` chunks, with fresh keys, under `passphrase`.
    /// `random` fills a buffer with random bytes (the keys, the salt, the nonce).
    pub fn create(passphrase: &[u8], chunk_size: u32, random: &mut dyn FnMut(&mut [u8])) -> Result<(Config, Keys)> {
        Config::create_with(passphrase, chunk_size, ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, random)
    }

    /// As [`Config::create`], with another Argon2 memory (KiB) and number of passes.
    pub fn create_with(
        passphrase: &[u8],
        chunk_size: u32,
        memory_kib: u32,
        iterations: u32,
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(Config, Keys)> {
        check_chunk_size(chunk_size)?;
        let mut keys = Keys { data: [0; 32], id: [0; 32], mac: [0; 32] };
        random(&mut keys.data);
        random(&mut keys.id);
        random(&mut keys.mac);
        let mut salt = [0u8; 16];
        random(&mut salt);
        let mut nonce = [0u8; 12];
        random(&mut nonce);
        let mut config = Config {
            format: FORMAT.into(),
            version: VERSION,
            chunk_size,
            compression: "zstd-1".into(),
            cipher: "aes-256-gcm".into(),
            kdf: Kdf {
                algorithm: "argon2id".into(),
                memory_kib,
                iterations,
                parallelism: ARGON2_PARALLELISM,
                salt: hex::encode(salt),
            },
            keys: String::new(),
        };
        let kek = config.kek(passphrase)?;
        let plain: Vec<u8> = [keys.data, keys.id, keys.mac].concat();
        let cipher = aes_gcm::Aes256Gcm::new(&kek.into());
        let aad = config.associated_data();
        let sealed = cipher
            .encrypt(&nonce.into(), Payload { msg: &plain, aad: &aad })
            .map_err(|_| Error::Corrupt("sealing the keys failed".into()))?;
        config.keys = hex::encode([&nonce[..], &sealed].concat());
        Ok((config, keys))
    }

    /// Parse a stored config and check its shape (not its keys: see [`Config::open`]).
    pub fn parse(bytes: &[u8]) -> Result<Config> {
        if bytes.len() > 64 << 10 {
            return Err(Error::Corrupt("a config of more than 64 KiB".into()));
        }
        let config: Config = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("config: {e}")))?;
        if config.format != FORMAT {
            return Err(Error::Corrupt(format!("config: format {:?}, not {FORMAT:?}", config.format)));
        }
        if config.version != VERSION {
            return Err(Error::Unsupported(format!("repository version {} (this reads {VERSION})", config.version)));
        }
        if config.compression != "zstd-1" || config.cipher != "aes-256-gcm" || config.kdf.algorithm != "argon2id" {
            return Err(Error::Unsupported(format!(
                "codecs {} / {} / {}",
                config.compression, config.cipher, config.kdf.algorithm
            )));
        }
        check_chunk_size(config.chunk_size)?;
        let k = &config.kdf;
        if !(8..=(1 << 22)).contains(&k.memory_kib) || !(1..=64).contains(&k.iterations) || !(1..=16).contains(&k.parallelism) {
            return Err(Error::Corrupt(format!("config: Argon2 setting {}/{}/{} out of range", k.memory_kib, k.iterations, k.parallelism)));
        }
        Ok(config)
    }

    /// The keys, under `passphrase`.
    pub fn open(&self, passphrase: &[u8]) -> Result<Keys> {
        let sealed = hex::decode(&self.keys).map_err(|_| Error::Corrupt("config: keys are not hex".into()))?;
        if sealed.len() != 12 + 96 + 16 {
            return Err(Error::Corrupt(format!("config: sealed keys of {} bytes, not {}", sealed.len(), 12 + 96 + 16)));
        }
        let kek = self.kek(passphrase)?;
        let cipher = aes_gcm::Aes256Gcm::new(&kek.into());
        let (nonce, body) = sealed.split_at(12);
        let aad = self.associated_data();
        let plain = cipher
            .decrypt(nonce.into(), Payload { msg: body, aad: &aad })
            .map_err(|_| Error::WrongPassphrase)?;
        let key = |i: usize| -> [u8; 32] { plain[i * 32..(i + 1) * 32].try_into().expect("96 bytes") };
        Ok(Keys { data: key(0), id: key(1), mac: key(2) })
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a config serializes")
    }

    fn kek(&self, passphrase: &[u8]) -> Result<[u8; 32]> {
        let salt = hex::decode(&self.kdf.salt).map_err(|_| Error::Corrupt("config: salt is not hex".into()))?;
        if salt.len() < 16 {
            return Err(Error::Corrupt("config: a salt shorter than 16 bytes".into()));
        }
        let k = &self.kdf;
        let params = argon2::Params::new(k.memory_kib, k.iterations, k.parallelism, Some(32))
            .map_err(|e| Error::Corrupt(format!("config: Argon2 setting: {e}")))?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut kek = [0u8; 32];
        argon.hash_password_into(passphrase, &salt, &mut kek).map_err(|e| Error::Corrupt(format!("config: Argon2: {e}")))?;
        Ok(kek)
    }

    /// What the sealed keys are bound to: every field but the keys.
    fn associated_data(&self) -> Vec<u8> {
        let k = &self.kdf;
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.format, self.version, self.chunk_size, self.compression, self.cipher, k.algorithm, k.memory_kib, k.iterations,
            k.parallelism, k.salt
        )
        .into_bytes()
    }
}

fn check_chunk_size(n: u32) -> Result<()> {
    if !n.is_power_of_two() || !(MIN_CHUNK..=MAX_CHUNK).contains(&n) {
        return Err(Error::Corrupt(format!("chunk size {n}: a power of two from {MIN_CHUNK} to {MAX_CHUNK}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic "random" bytes for tests.
    pub(crate) fn counter() -> impl FnMut(&mut [u8]) {
        let mut n = 0u8;
        move |buf: &mut [u8]| {
            for b in buf {
                n = n.wrapping_add(1);
                *b = n;
            }
        }
    }

    #[test]
    fn a_config_opens_with_its_passphrase_only_and_binds_its_fields() {
        let (config, keys) = Config::create_with(b"correct horse", 1 << 20, 64, 1, &mut counter()).unwrap();
        let parsed = Config::parse(&config.to_json()).unwrap();
        assert_eq!(parsed.open(b"correct horse").unwrap(), keys);
        assert_eq!(parsed.open(b"wrong").unwrap_err(), Error::WrongPassphrase);
        let mut changed = parsed.clone();
        changed.chunk_size = 1 << 16;
        assert_eq!(changed.open(b"correct horse").unwrap_err(), Error::WrongPassphrase, "the fields are bound to the keys");
        assert!(format!("{keys:?}") == "Keys([hidden])");
    }

    #[test]
    fn new_repositories_take_the_full_argon2_setting() {
        let (config, keys) = Config::create(b"correct horse", 1 << 20, &mut counter()).unwrap();
        assert_eq!((config.kdf.memory_kib, config.kdf.iterations, config.kdf.parallelism), (65536, 3, 1));
        assert_eq!(Config::parse(&config.to_json()).unwrap().open(b"correct horse").unwrap(), keys);
    }

    #[test]
    fn bad_configs_are_told_apart() {
        assert!(matches!(Config::parse(b"{"), Err(Error::Corrupt(_))));
        let (config, _) = Config::create_with(b"p", 1 << 20, 64, 1, &mut counter()).unwrap();
        let mut v = config.clone();
        v.version = 2;
        assert!(matches!(Config::parse(&v.to_json()), Err(Error::Unsupported(_))));
        let mut c = config.clone();
        c.chunk_size = 3 << 20;
        assert!(matches!(Config::parse(&c.to_json()), Err(Error::Corrupt(_))));
        let mut k = config.clone();
        k.keys.truncate(20);
        assert!(matches!(k.open(b"p"), Err(Error::Corrupt(_))));
        assert!(matches!(Config::create(b"p", 1000, &mut counter()), Err(Error::Corrupt(_))));
    }
}
