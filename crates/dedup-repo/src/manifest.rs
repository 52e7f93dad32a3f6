//! A backup's manifest: what it is of, where its index is, and a MAC over all of it. Written
//! last (a backup is complete when its manifest exists, as in the plain repository), and
//! checked before anything it names is trusted: a manifest forged by whoever can write the
//! bucket but lacks the key is refused as such.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A manifest's content, without its MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub pool: String,
    pub image: String,
    /// The backup's number among the image's.
    pub number: u64,
    /// The snapshot it is of.
    pub snapshot: String,
    pub image_size: u64,
    /// The index's path in the repository and its SHA-256.
    pub index: String,
    pub index_sha256: String,
    /// Seconds since the Unix epoch when the backup was made.
    pub created: u64,
}

/// The stored form: the manifest and its MAC (hex).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    manifest: Manifest,
    mac: String,
}

impl Manifest {
    pub fn encode(&self, mac_key: &[u8; 32]) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("a manifest serializes");
        let mac = hex::encode(crate::mac(mac_key, &[b"manifest\n", &body]));
        serde_json::to_vec_pretty(&Stored { manifest: self.clone(), mac }).expect("a manifest serializes")
    }

    pub fn decode(bytes: &[u8], mac_key: &[u8; 32]) -> Result<Manifest> {
        if bytes.len() > 64 << 10 {
            return Err(Error::Corrupt("a manifest of more than 64 KiB".into()));
        }
        let stored: Stored = serde_json::from_slice(bytes).map_err(|e| {
            if e.is_eof() {
                Error::Truncated(format!("manifest: {e}"))
            } else {
                Error::Corrupt(format!("manifest: {e}"))
            }
        })?;
        let tag = hex::decode(&stored.mac).map_err(|_| Error::Corrupt("manifest: its MAC is not hex".into()))?;
        let body = serde_json::to_vec(&stored.manifest).expect("a manifest serializes");
        if !crate::mac_holds(mac_key, &[b"manifest\n", &body], &tag) {
            return Err(Error::Forged(format!("manifest of backup {} of {}/{}", stored.manifest.number, stored.manifest.pool, stored.manifest.image)));
        }
        Ok(stored.manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            pool: "rbd".into(),
            image: "vm-1".into(),
            number: 3,
            snapshot: "backup-3".into(),
            image_size: 1 << 30,
            index: "indexes/rbd/vm-1/3.idx".into(),
            index_sha256: "00".repeat(32),
            created: 1_800_000_000,
        }
    }

    #[test]
    fn a_manifest_round_trips_and_a_forged_one_is_refused() {
        let bytes = sample().encode(&[1; 32]);
        assert_eq!(Manifest::decode(&bytes, &[1; 32]).unwrap(), sample());
        assert!(matches!(Manifest::decode(&bytes, &[2; 32]), Err(Error::Forged(_))));
        let forged = String::from_utf8(bytes.clone()).unwrap().replace("backup-3", "backup-4");
        assert!(matches!(Manifest::decode(forged.as_bytes(), &[1; 32]), Err(Error::Forged(_))));
        assert!(matches!(Manifest::decode(&bytes[..bytes.len() / 2], &[1; 32]), Err(Error::Truncated(_))));
        assert!(matches!(Manifest::decode(b"[1]", &[1; 32]), Err(Error::Corrupt(_))));
    }
}
