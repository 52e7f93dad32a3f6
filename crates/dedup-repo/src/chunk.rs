//! Chunks: their ids, and the framing of a sealed chunk.
//!
//! A chunk's id is HMAC-SHA256 of its plaintext under the repository's id key: equal data
//! gets one id (and is stored once) across backups and images, and an id says nothing about
//! the data to whoever lacks the key (an unkeyed hash would let a bucket's reader test
//! whether a known file is stored). Stored as `chunks/XX/ID` (ID in hex, XX its first byte).
//!
//! A sealed chunk is `RWC1`, a flags byte (bit 0: the payload is zstd-compressed; set when
//! compressing made it smaller), the 12-byte nonce, and AES-256-GCM of the payload under the
//! data key with the chunk's id as associated data (a chunk stored under another id does not
//! open). Nonces are random (96 bits): NIST SP 800-38D bounds a key to 2^32 random-nonce
//! seals, which at 1 MiB chunks is 4 PiB of distinct chunks; a repository that stores that
//! much needs a key rotation this version does not have. Sealing and compressing are done
//! by whoever holds the data (the host, natively: `bench/README.md` says why); this module
//! is the framing both sides agree on.

use aes_gcm::aead::{Aead, KeyInit, Payload};

use crate::{Error, Result};

pub const MAGIC: &[u8; 4] = b"RWC1";
/// Magic, flags, nonce.
pub const HEADER: usize = 4 + 1 + 12;
/// AES-GCM's tag.
pub const TAG: usize = 16;
pub const FLAG_ZSTD: u8 = 1;

/// A chunk's id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `plaintext` under `id_key`.
    pub fn of(id_key: &[u8; 32], plaintext: &[u8]) -> ChunkId {
        ChunkId(crate::mac(id_key, &[plaintext]))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Where the chunk is stored, relative to the repository's root.
    pub fn path(&self) -> String {
        let h = self.hex();
        format!("chunks/{}/{h}", &h[..2])
    }

    pub fn parse(hex_id: &str) -> Result<ChunkId> {
        let bytes = hex::decode(hex_id).map_err(|_| Error::Corrupt(format!("chunk id {hex_id:?} is not hex")))?;
        Ok(ChunkId(bytes.try_into().map_err(|_| Error::Corrupt(format!("chunk id {hex_id:?} is not 32 bytes")))?))
    }
}

impl std::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkId({})", &self.hex()[..16])
    }
}

/// Seal `payload` (already compressed if `compressed`) as chunk `id` with `nonce`.
pub fn seal(data_key: &[u8; 32], id: &ChunkId, payload: &[u8], compressed: bool, nonce: [u8; 12]) -> Vec<u8> {
    let cipher = aes_gcm::Aes256Gcm::new(data_key.into());
    let body = cipher.encrypt(&nonce.into(), Payload { msg: payload, aad: &id.0 }).expect("AES-GCM seals any length a chunk has");
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.push(if compressed { FLAG_ZSTD } else { 0 });
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    out
}

/// Open a sealed chunk stored as `id`: its payload, and whether it is compressed.
pub fn open(data_key: &[u8; 32], id: &ChunkId, sealed: &[u8]) -> Result<(Vec<u8>, bool)> {
    if sealed.len() < HEADER + TAG {
        return Err(Error::Truncated(format!("chunk {}: {} bytes", id.hex(), sealed.len())));
    }
    if &sealed[..4] != MAGIC {
        return Err(Error::Corrupt(format!("chunk {}: not a sealed chunk", id.hex())));
    }
    let flags = sealed[4];
    if flags & !FLAG_ZSTD != 0 {
        return Err(Error::Unsupported(format!("chunk {}: flags {flags:#x}", id.hex())));
    }
    let nonce: [u8; 12] = sealed[5..HEADER].try_into().expect("12 bytes");
    let cipher = aes_gcm::Aes256Gcm::new(data_key.into());
    let payload = cipher
        .decrypt(&nonce.into(), Payload { msg: &sealed[HEADER..], aad: &id.0 })
        .map_err(|_| Error::Forged(format!("chunk {}", id.hex())))?;
    Ok((payload, flags & FLAG_ZSTD != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_keyed_and_a_sealed_chunk_opens_only_as_itself() {
        let (id_key, data_key) = ([1u8; 32], [2u8; 32]);
        let a = ChunkId::of(&id_key, b"data");
        assert_eq!(a, ChunkId::of(&id_key, b"data"));
        assert_ne!(a, ChunkId::of(&[3u8; 32], b"data"), "another repository names it differently");
        assert_eq!(ChunkId::parse(&a.hex()).unwrap(), a);
        assert!(a.path().starts_with(&format!("chunks/{}/", &a.hex()[..2])));
        let sealed = seal(&data_key, &a, b"payload", true, [7; 12]);
        assert_eq!(open(&data_key, &a, &sealed).unwrap(), (b"payload".to_vec(), true));
        let b = ChunkId::of(&id_key, b"other");
        assert!(matches!(open(&data_key, &b, &sealed), Err(Error::Forged(_))), "stored under another id");
        assert!(matches!(open(&[9u8; 32], &a, &sealed), Err(Error::Forged(_))), "another key");
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(open(&data_key, &a, &flipped), Err(Error::Forged(_))));
        assert!(matches!(open(&data_key, &a, &sealed[..20]), Err(Error::Truncated(_))));
        assert!(matches!(open(&data_key, &a, b"XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"), Err(Error::Corrupt(_))));
    }
}
