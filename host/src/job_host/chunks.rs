//! The deduplicating repository's chunk pipeline for jobs (`job-host.chunk-codec`), run by
//! the host natively: chunk ids (HMAC-SHA256 under the id key), zstd level 1, AES-256-GCM
//! under the data key, framed as `dedup_repo::chunk` says (docs/dedup-format.md). The job
//! keeps the policy (which chunks, where they go); this is the arithmetic, on tokio's
//! blocking pool, each call's bytes held against the job's host-memory budget.

use std::sync::Arc;

use dedup_repo::chunk::{FLAG_ZSTD, HEADER, MAGIC, TAG};
use rbd_backend::Error;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};

use crate::meter::{HandleSlot, Meter};

/// The largest chunk sealed or opened (the format's largest chunk size).
pub const MAX_CHUNK: usize = dedup_repo::config::MAX_CHUNK as usize;
/// zstd's level for chunks (bench/README.md: the best ratio per second measured).
const LEVEL: i32 = 1;

/// One `chunk-codec` resource: the keys, in the host.
pub struct ChunkCodec {
    inner: Arc<Keys>,
    meter: Arc<Meter>,
    _slot: HandleSlot,
}

struct Keys {
    data: LessSafeKey,
    id: ring::hmac::Key,
    random: SystemRandom,
}

/// What `seal` gives: the id, the sealed bytes, whether they are compressed.
pub struct Sealed {
    pub id: [u8; 32],
    pub sealed: Vec<u8>,
    pub compressed: bool,
}

impl ChunkCodec {
    pub fn new(data_key: &[u8], id_key: &[u8], meter: Arc<Meter>, slot: HandleSlot) -> Result<ChunkCodec, Error> {
        if data_key.len() != 32 || id_key.len() != 32 {
            return Err(Error::InvalidArgument(format!(
                "chunk-codec: keys of {} and {} bytes; both must be 32",
                data_key.len(),
                id_key.len()
            )));
        }
        let data = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, data_key).map_err(|_| Error::InvalidArgument("chunk-codec: data key".into()))?);
        let id = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, id_key);
        Ok(ChunkCodec { inner: Arc::new(Keys { data, id, random: SystemRandom::new() }), meter, _slot: slot })
    }

    pub fn meter(&self) -> &Arc<Meter> {
        &self.meter
    }

    /// The ids of `data`'s pieces (none for zeroes).
    pub async fn ids(&self, data: Vec<u8>, chunk_size: usize) -> Result<Vec<Option<[u8; 32]>>, Error> {
        let _held = self.meter.reserve(data.len() as u64)?;
        let keys = self.inner.clone();
        blocking(move || {
            data.chunks(chunk_size.max(1)).map(|piece| (!is_zero(piece)).then(|| keys.id_of(piece))).collect()
        })
        .await
    }

    pub async fn seal(&self, data: Vec<u8>) -> Result<Sealed, Error> {
        if data.len() > MAX_CHUNK {
            return Err(Error::InvalidArgument(format!("chunk-codec.seal: {} bytes, over the {MAX_CHUNK} a chunk may have", data.len())));
        }
        let _held = self.meter.reserve(3 * data.len() as u64 + 4096)?;
        let keys = self.inner.clone();
        blocking(move || keys.seal(&data)).await?
    }

    pub async fn open(&self, id: Vec<u8>, sealed: Vec<u8>) -> Result<Vec<u8>, Error> {
        let id: [u8; 32] = id.try_into().map_err(|_| Error::InvalidArgument("chunk-codec.open: an id is 32 bytes".into()))?;
        if sealed.len() > MAX_CHUNK + HEADER + TAG + 1024 {
            return Err(Error::InvalidArgument(format!("chunk-codec.open: {} bytes, larger than any sealed chunk", sealed.len())));
        }
        let _held = self.meter.reserve(sealed.len() as u64 + MAX_CHUNK as u64)?;
        let keys = self.inner.clone();
        blocking(move || keys.open(&id, sealed)).await?
    }
}

impl Keys {
    fn id_of(&self, plaintext: &[u8]) -> [u8; 32] {
        ring::hmac::sign(&self.id, plaintext).as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
    }

    fn seal(&self, data: &[u8]) -> Result<Sealed, Error> {
        let id = self.id_of(data);
        let packed = zstd::bulk::compress(data, LEVEL).map_err(|e| Error::Io(format!("zstd: {e}")))?;
        let compressed = packed.len() < data.len();
        let payload = if compressed { packed } else { data.to_vec() };
        let mut nonce = [0u8; 12];
        self.random.fill(&mut nonce).map_err(|_| Error::Io("no randomness for a nonce".into()))?;
        let mut sealed = Vec::with_capacity(HEADER + payload.len() + TAG);
        sealed.extend_from_slice(MAGIC);
        sealed.push(if compressed { FLAG_ZSTD } else { 0 });
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&payload);
        let mut body = sealed.split_off(HEADER);
        self.data
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&id), &mut body)
            .map_err(|_| Error::Io("sealing a chunk failed".into()))?;
        sealed.extend_from_slice(&body);
        Ok(Sealed { id, sealed, compressed })
    }

    fn open(&self, id: &[u8; 32], mut sealed: Vec<u8>) -> Result<Vec<u8>, Error> {
        let name = hex::encode(&id[..8]);
        let bad = |why: &str| Error::InvalidArgument(format!("chunk {name}…: {why}"));
        if sealed.len() < HEADER + TAG {
            return Err(bad("truncated"));
        }
        if &sealed[..4] != MAGIC {
            return Err(bad("not a sealed chunk"));
        }
        let flags = sealed[4];
        if flags & !FLAG_ZSTD != 0 {
            return Err(bad(&format!("unknown flags {flags:#x}")));
        }
        let nonce: [u8; 12] = sealed[5..HEADER].try_into().expect("12 bytes");
        let mut body = sealed.split_off(HEADER);
        let payload = self
            .data
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(id), &mut body)
            .map_err(|_| bad("does not authenticate (changed, forged, stored under another id, or another repository's)"))?;
        let plain = if flags & FLAG_ZSTD != 0 {
            zstd::bulk::decompress(payload, MAX_CHUNK).map_err(|_| bad(&format!("does not decompress within {MAX_CHUNK} bytes")))?
        } else {
            payload.to_vec()
        };
        if self.id_of(&plain) != *id {
            return Err(bad("its plaintext is not this id's"));
        }
        Ok(plain)
    }
}

fn is_zero(piece: &[u8]) -> bool {
    piece.iter().all(|&b| b == 0)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Io(format!("the chunk pipeline's task failed: {e}")))
}

/// The `chunk-codec` resource: every call an operation; a codec a handle.
impl crate::bindings::ceph::rbd::job_host::HostChunkCodec for crate::rbd::RbdView<'_> {
    async fn create(
        &mut self,
        data_key: Vec<u8>,
        id_key: Vec<u8>,
    ) -> Result<wasmtime::component::Resource<ChunkCodec>, crate::rbd::HostError> {
        let meter = self.ctx.meter().clone();
        meter.operation()?;
        let slot = meter.handle_slot()?;
        let codec = ChunkCodec::new(&data_key, &id_key, meter, slot)?;
        Ok(self.table.push(codec)?)
    }

    async fn ids(
        &mut self,
        codec: wasmtime::component::Resource<ChunkCodec>,
        data: Vec<u8>,
        chunk_size: u32,
    ) -> wasmtime::Result<Vec<Option<Vec<u8>>>> {
        let codec = self.table.get(&codec)?;
        crate::rbd::trap_on_quota(codec.meter().operation())?;
        if chunk_size < super::hashing::MIN_CHUNK {
            return Err(wasmtime::Error::msg(format!(
                "chunk-codec.ids: a chunk size of {chunk_size} bytes; it must be at least {}",
                super::hashing::MIN_CHUNK
            )));
        }
        let ids = codec.ids(data, chunk_size as usize).await.map_err(|e| wasmtime::Error::msg(e.to_string()))?;
        Ok(ids.into_iter().map(|id| id.map(|id| id.to_vec())).collect())
    }

    async fn seal(
        &mut self,
        codec: wasmtime::component::Resource<ChunkCodec>,
        data: Vec<u8>,
    ) -> Result<crate::bindings::ceph::rbd::job_host::SealedChunk, crate::rbd::HostError> {
        let codec = self.table.get(&codec)?;
        codec.meter().operation()?;
        let sealed = codec.seal(data).await?;
        Ok(crate::bindings::ceph::rbd::job_host::SealedChunk { id: sealed.id.to_vec(), sealed: sealed.sealed, compressed: sealed.compressed })
    }

    async fn open(
        &mut self,
        codec: wasmtime::component::Resource<ChunkCodec>,
        id: Vec<u8>,
        sealed: Vec<u8>,
    ) -> Result<Vec<u8>, crate::rbd::HostError> {
        let codec = self.table.get(&codec)?;
        codec.meter().operation()?;
        Ok(codec.open(id, sealed).await?)
    }

    async fn drop(&mut self, codec: wasmtime::component::Resource<ChunkCodec>) -> wasmtime::Result<()> {
        self.table.delete(codec)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::Quotas;

    fn codec(meter: &Arc<Meter>) -> ChunkCodec {
        ChunkCodec::new(&[2u8; 32], &[1u8; 32], meter.clone(), meter.handle_slot().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn what_the_host_seals_the_format_opens_and_back() {
        let meter = Arc::new(Meter::new(Quotas::default()));
        let c = codec(&meter);
        let text = b"the quick brown fox ".repeat(5000);
        let sealed = c.seal(text.clone()).await.unwrap();
        assert!(sealed.compressed && sealed.sealed.len() < text.len() / 4, "text compresses");
        let id = dedup_repo::chunk::ChunkId(sealed.id);
        assert_eq!(id, dedup_repo::chunk::ChunkId::of(&[1u8; 32], &text), "the format's id");
        let (payload, compressed) = dedup_repo::chunk::open(&[2u8; 32], &id, &sealed.sealed).unwrap();
        assert!(compressed);
        assert_eq!(zstd::bulk::decompress(&payload, MAX_CHUNK).unwrap(), text);
        assert_eq!(c.open(sealed.id.to_vec(), sealed.sealed.clone()).await.unwrap(), text);
        // And what the format seals (in a job, say), the host opens.
        let raw = vec![7u8; 5000];
        let raw_id = dedup_repo::chunk::ChunkId::of(&[1u8; 32], &raw);
        let theirs = dedup_repo::chunk::seal(&[2u8; 32], &raw_id, &raw, false, [3; 12]);
        assert_eq!(c.open(raw_id.0.to_vec(), theirs).await.unwrap(), raw);
        let ids = c.ids([vec![0u8; 4096], vec![9u8; 4096]].concat(), 4096).await.unwrap();
        assert_eq!(ids.len(), 2);
        assert!(ids[0].is_none() && ids[1] == Some(dedup_repo::chunk::ChunkId::of(&[1u8; 32], &[9u8; 4096]).0));
        assert_eq!(meter.host_memory_held(), 0, "each call's memory comes back");
    }

    #[tokio::test]
    async fn forged_swapped_bombed_and_oversized_chunks_are_refused() {
        let meter = Arc::new(Meter::new(Quotas::default()));
        let c = codec(&meter);
        let a = c.seal(vec![1u8; 10000]).await.unwrap();
        let b = c.seal(vec![2u8; 10000]).await.unwrap();
        let refused = |r: Result<Vec<u8>, Error>| r.unwrap_err().to_string();
        assert!(refused(c.open(b.id.to_vec(), a.sealed.clone()).await).contains("does not authenticate"), "swapped");
        let mut flipped = a.sealed.clone();
        flipped[HEADER + 2] ^= 1;
        assert!(refused(c.open(a.id.to_vec(), flipped).await).contains("does not authenticate"));
        assert!(refused(c.open(a.id.to_vec(), a.sealed[..10].to_vec()).await).contains("truncated"));
        let other = ChunkCodec::new(&[5u8; 32], &[1u8; 32], meter.clone(), meter.handle_slot().unwrap()).unwrap();
        assert!(refused(other.open(a.id.to_vec(), a.sealed.clone()).await).contains("does not authenticate"), "another repository");
        // A payload that decompresses past the largest chunk (a zstd bomb), sealed properly.
        let bomb = zstd::bulk::compress(&vec![0u8; MAX_CHUNK + 1], 19).unwrap();
        let bomb_id = dedup_repo::chunk::ChunkId([4u8; 32]);
        let sealed_bomb = dedup_repo::chunk::seal(&[2u8; 32], &bomb_id, &bomb, true, [1; 12]);
        assert!(refused(c.open(bomb_id.0.to_vec(), sealed_bomb).await).contains("does not decompress"));
        // A chunk whose plaintext is not its id's (sealed by someone with the data key only).
        let liar = dedup_repo::chunk::seal(&[2u8; 32], &bomb_id, b"not what the id names", false, [1; 12]);
        assert!(refused(c.open(bomb_id.0.to_vec(), liar).await).contains("plaintext is not"));
        assert!(c.seal(vec![0u8; MAX_CHUNK + 1]).await.is_err());
        assert!(ChunkCodec::new(&[0u8; 16], &[0u8; 32], meter.clone(), meter.handle_slot().unwrap()).is_err());
    }
}
