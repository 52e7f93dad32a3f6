//! SHA-256 and the stream check for the backup jobs: inside a job the host's (native, and
//! pipelined with the job's I/O; see `job-host.sha256` in wit/rbd.wit), elsewhere (these
//! crates' native unit tests) the `rbddiff-check` crate, which the host uses too. Both give
//! the same digests.

use std::io;

/// A SHA-256, or a stream check (`chunked-sha256`), being computed.
pub struct Hasher {
    #[cfg(target_family = "wasm")]
    inner: rbd_wasm_guest::Sha256,
    #[cfg(not(target_family = "wasm"))]
    inner: rbddiff_check::StreamCheck,
}

impl Hasher {
    /// A plain SHA-256.
    pub fn new() -> Self {
        #[cfg(target_family = "wasm")]
        return Hasher { inner: rbd_wasm_guest::Sha256::new() };
        #[cfg(not(target_family = "wasm"))]
        return Hasher { inner: rbddiff_check::StreamCheck::plain() };
    }

    /// A stream's `chunked-sha256` check with chunks of `chunk` bytes (at least 4096).
    pub fn chunked(chunk: u32) -> Self {
        #[cfg(target_family = "wasm")]
        return Hasher { inner: rbd_wasm_guest::Sha256::chunked(chunk) };
        #[cfg(not(target_family = "wasm"))]
        return Hasher { inner: rbddiff_check::StreamCheck::chunked(u64::from(chunk)) };
    }

    /// Add bytes as they are.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
    }

    /// Add a `w` record's data (or the next part of it): the image's bytes at `offset`.
    pub fn update_data(&mut self, offset: u64, data: &[u8]) {
        #[cfg(target_family = "wasm")]
        self.inner.update_data(offset, data);
        #[cfg(not(target_family = "wasm"))]
        self.inner.update_data(offset, data, None);
    }

    /// The digest of everything added; the hasher starts over.
    pub fn finish(&mut self) -> [u8; 32] {
        #[cfg(target_family = "wasm")]
        return self.inner.finish();
        #[cfg(not(target_family = "wasm"))]
        return self.inner.finalize_reset();
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
