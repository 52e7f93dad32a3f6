//! The candidates for the deduplicating repository's chunk pipeline (issue 15), timed over
//! the same sample in the sandbox (`codec-guest`, run by `rbd-wasm`) and natively
//! (`bench/native`'s `codec-native`), to decide with a measurement what the jobs do
//! themselves and what the host should offer natively (as it offers SHA-256).
//!
//! Each candidate processes the sample cut into chunks of `chunk` bytes, as a backup would
//! its chunks, and is timed over enough rounds to take about a second. Compression also
//! reports the ratio (compressed / original) and checks that decompression gives the
//! chunk back; AEADs check that the chunk opens again.

use std::time::Instant;

/// One candidate's result.
#[derive(Debug, Clone)]
pub struct Measured {
    pub name: String,
    /// Megabytes (10^6 bytes) of input per second.
    pub mb_per_sec: f64,
    /// Output / input, for compressors.
    pub ratio: Option<f64>,
}

impl Measured {
    pub fn json(&self) -> String {
        match self.ratio {
            Some(r) => format!("{{\"name\":\"{}\",\"mb_per_sec\":{:.1},\"ratio\":{:.4}}}", self.name, self.mb_per_sec, r),
            None => format!("{{\"name\":\"{}\",\"mb_per_sec\":{:.1}}}", self.name, self.mb_per_sec),
        }
    }
}

/// Time `f` over every chunk of `sample`, repeated until about `budget_secs` have passed;
/// `f` returns the bytes it produced for that chunk.
pub fn time(name: &str, sample: &[u8], chunk: usize, budget_secs: f64, mut f: impl FnMut(&[u8]) -> usize) -> Measured {
    let mut rounds = 0u64;
    let mut produced;
    let started = Instant::now();
    loop {
        produced = 0;
        for piece in sample.chunks(chunk) {
            produced += f(piece);
        }
        rounds += 1;
        if started.elapsed().as_secs_f64() >= budget_secs {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let ratio = if produced > 0 { Some(produced as f64 / sample.len() as f64) } else { None };
    Measured { name: name.into(), mb_per_sec: (sample.len() as f64 * rounds as f64) / secs / 1e6, ratio }
}

/// Every candidate that builds for any target (pure Rust).
pub fn portable(sample: &[u8], chunk: usize, budget: f64) -> Vec<Measured> {
    use aes_gcm::aead::{Aead, KeyInit};
    let mut out = Vec::new();
    let key = [7u8; 32];

    // Each codec gives every chunk back before it is timed.
    for c in sample.chunks(chunk) {
        assert_eq!(lz4_flex::decompress_size_prepended(&lz4_flex::compress_prepend_size(c)).ok().as_deref(), Some(c));
        let packed = ruzstd::encoding::compress_to_vec(c, ruzstd::encoding::CompressionLevel::Fastest);
        let mut decoder = ruzstd::decoding::StreamingDecoder::new(&packed[..]).expect("a zstd frame");
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut decoder, &mut back).expect("decodes");
        assert!(back == c, "ruzstd gives the chunk back");
    }
    out.push(time("lz4_flex-compress", sample, chunk, budget, |c| lz4_flex::compress_prepend_size(c).len()));
    out.push(time("lz4_flex-decompress", sample, chunk, budget, {
        let packed: Vec<Vec<u8>> = sample.chunks(chunk).map(lz4_flex::compress_prepend_size).collect();
        let mut i = 0;
        move |_| {
            std::hint::black_box(lz4_flex::decompress_size_prepended(&packed[i % packed.len()]).expect("decompresses"));
            i += 1;
            0
        }
    }));
    out.push(time("ruzstd-fastest-compress", sample, chunk, budget, |c| {
        ruzstd::encoding::compress_to_vec(c, ruzstd::encoding::CompressionLevel::Fastest).len()
    }));
    out.push(time("ruzstd-decompress", sample, chunk, budget, {
        let packed: Vec<Vec<u8>> =
            sample.chunks(chunk).map(|c| ruzstd::encoding::compress_to_vec(c, ruzstd::encoding::CompressionLevel::Fastest)).collect();
        let mut i = 0;
        move |_| {
            let mut decoder = ruzstd::decoding::StreamingDecoder::new(&packed[i % packed.len()][..]).expect("a zstd frame");
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut decoder, &mut buf).expect("decodes");
            std::hint::black_box(buf);
            i += 1;
            0
        }
    }));
    let chacha = chacha20poly1305::ChaCha20Poly1305::new(&key.into());
    out.push(time("chacha20poly1305-seal", sample, chunk, budget, |c| {
        std::hint::black_box(chacha.encrypt(&[1u8; 12].into(), c).expect("seals"));
        0
    }));
    let xchacha = chacha20poly1305::XChaCha20Poly1305::new(&key.into());
    out.push(time("xchacha20poly1305-seal", sample, chunk, budget, |c| {
        std::hint::black_box(xchacha.encrypt(&[1u8; 24].into(), c).expect("seals"));
        0
    }));
    let gcm = aes_gcm::Aes256Gcm::new(&key.into());
    out.push(time("aes256gcm-seal", sample, chunk, budget, |c| {
        std::hint::black_box(gcm.encrypt(&[1u8; 12].into(), c).expect("seals"));
        0
    }));
    out.push(time("blake3-keyed", sample, chunk, budget, |c| {
        std::hint::black_box(blake3::keyed_hash(&key, c));
        0
    }));
    out.push(time("hmac-sha256", sample, chunk, budget, |c| {
        std::hint::black_box(hmac_sha256(&key, c));
        0
    }));
    out
}

/// HMAC-SHA256 over the `sha2` crate (RFC 2104), as a keyed chunk id.
fn hmac_sha256(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let inner: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let outer: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let h = Sha256::new().chain_update(&inner).chain_update(data).finalize();
    Sha256::new().chain_update(&outer).chain_update(h).finalize().into()
}

/// The native-only candidates: C zstd and ring's AEADs.
#[cfg(feature = "native")]
pub fn native_only(sample: &[u8], chunk: usize, budget: f64) -> Vec<Measured> {
    let mut out = Vec::new();
    for level in [1, 3] {
        out.push(time(&format!("zstd-{level}-compress"), sample, chunk, budget, |c| zstd::bulk::compress(c, level).expect("compresses").len()));
    }
    out.push(time("zstd-decompress", sample, chunk, budget, {
        let packed: Vec<Vec<u8>> = sample.chunks(chunk).map(|c| zstd::bulk::compress(c, 1).expect("compresses")).collect();
        let mut i = 0;
        move |c| {
            std::hint::black_box(zstd::bulk::decompress(&packed[i % packed.len()], c.len()).expect("decompresses"));
            i += 1;
            0
        }
    }));
    for (name, alg) in [("ring-aes256gcm-seal", &ring::aead::AES_256_GCM), ("ring-chacha20poly1305-seal", &ring::aead::CHACHA20_POLY1305)] {
        let key = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(alg, &[7u8; 32]).expect("a key"));
        out.push(time(name, sample, chunk, budget, |c| {
            let mut buf = c.to_vec();
            let nonce = ring::aead::Nonce::assume_unique_for_key([1u8; 12]);
            key.seal_in_place_append_tag(nonce, ring::aead::Aad::empty(), &mut buf).expect("seals");
            0
        }));
    }
    out.push(time("sha256-native", sample, chunk, budget, |c| {
        use sha2::Digest;
        std::hint::black_box(sha2::Sha256::digest(c));
        0
    }));
    out
}
