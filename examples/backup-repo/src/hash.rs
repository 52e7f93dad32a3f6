//! SHA-256 for the backup jobs: inside a job the host's (native, and pipelined with the
//! job's I/O; see `job-host.sha256` in wit/rbd.wit), elsewhere (these crates' native unit
//! tests) the `sha2` crate. Both give the same digests.

use std::io;

/// A SHA-256 being computed.
pub struct Hasher {
    #[cfg(target_family = "wasm")]
    inner: rbd_wasm_guest::Sha256,
    #[cfg(not(target_family = "wasm"))]
    inner: sha2::Sha256,
}

impl Hasher {
    pub fn new() -> Self {
        #[cfg(target_family = "wasm")]
        return Hasher { inner: rbd_wasm_guest::Sha256::new() };
        #[cfg(not(target_family = "wasm"))]
        return Hasher { inner: <sha2::Sha256 as sha2::Digest>::new() };
    }

    pub fn update(&mut self, data: &[u8]) {
        #[cfg(target_family = "wasm")]
        self.inner.update(data);
        #[cfg(not(target_family = "wasm"))]
        sha2::Digest::update(&mut self.inner, data);
    }

    /// The digest of everything added; the hasher starts over.
    pub fn finish(&mut self) -> [u8; 32] {
        #[cfg(target_family = "wasm")]
        return self.inner.finish();
        #[cfg(not(target_family = "wasm"))]
        return sha2::Digest::finalize_reset(&mut self.inner).into();
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher::new()
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
