//! The job's output directory (`/out`): WASI's filesystem with the walls an operator needs
//! around a directory a stranger's job writes to.
//!
//! wasmtime-wasi confines every path below the directory (cap-std); on top of that, this
//! module's [`GuardedFs`] stands in for `wasi:filesystem/types` and:
//! - charges every byte written (by `write`, through streams, or by growing a file, which
//!   includes a write past its end) to the job's byte quota, and every file or directory
//!   created to its file quota: past either the guest gets `quota` (EDQUOT);
//! - refuses to create symbolic and hard links (`not-permitted`): a link left in the
//!   directory would lead the operator's own tools (`tar -h`, `rsync -L`, a restore) out of it;
//! - counts every open file or directory, and every stream and listing of one (each keeps
//!   the file open, or the listing in memory), as a handle of the job.
//!
//! Everything else is wasmtime-wasi's own implementation, called as is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, DirectoryEntryStream, ErrorCode, HostDescriptor, HostDirectoryEntryStream,
};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, FsError, FsResult, InputStream, OutputStream, Pollable, StreamError, StreamResult,
};

use crate::meter::{HandleSlot, Meter};

/// Defaults of the output directory's quotas.
pub const DEFAULT_OUTPUT_BYTES: u64 = 1 << 40;
pub const DEFAULT_OUTPUT_FILES: u64 = 100_000;

/// What one job may put in its output directory, and what it has.
pub struct OutputQuota {
    max_bytes: u64,
    max_files: u64,
    bytes: AtomicU64,
    files: AtomicU64,
    meter: Arc<Meter>,
    /// The handle slots of the descriptors and listings the guest holds, by resource index.
    open: Mutex<HashMap<u32, HandleSlot>>,
    listings: Mutex<HashMap<u32, HandleSlot>>,
}

impl OutputQuota {
    pub fn new(max_bytes: u64, max_files: u64, meter: Arc<Meter>) -> Self {
        OutputQuota {
            max_bytes,
            max_files,
            bytes: AtomicU64::new(0),
            files: AtomicU64::new(0),
            meter,
            open: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
        }
    }

    /// Bytes written and files created so far.
    pub fn used(&self) -> (u64, u64) {
        (self.bytes.load(Ordering::Relaxed), self.files.load(Ordering::Relaxed))
    }

    fn charge(counter: &AtomicU64, max: u64, n: u64) -> bool {
        counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_add(n).filter(|t| *t <= max)).is_ok()
    }

    fn charge_bytes(&self, n: u64) -> Result<(), ErrorCode> {
        if Self::charge(&self.bytes, self.max_bytes, n) {
            Ok(())
        } else {
            tracing::info!("a job reached its output directory's quota of {} bytes", self.max_bytes);
            Err(ErrorCode::Quota)
        }
    }

    fn refund_bytes(&self, n: u64) {
        let _ = self.bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
    }

    fn charge_file(&self) -> Result<(), ErrorCode> {
        if Self::charge(&self.files, self.max_files, 1) {
            Ok(())
        } else {
            tracing::info!("a job reached its output directory's quota of {} files", self.max_files);
            Err(ErrorCode::Quota)
        }
    }

    fn opened(&self, fd: &Resource<Descriptor>, slot: HandleSlot) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).insert(fd.rep(), slot);
    }

    fn closed(&self, fd: &Resource<Descriptor>) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&fd.rep());
    }

    /// A handle slot for a stream or listing, or the guest's error when none is left.
    fn slot(&self) -> Result<HandleSlot, FsError> {
        self.meter.handle_slot().map_err(|e| {
            tracing::info!("a job cannot open more files or streams: {e}");
            FsError::from(ErrorCode::InsufficientMemory)
        })
    }

    /// Bytes a write of `len` at `offset` costs in a file of `size` bytes: the bytes, and
    /// the hole it leaves past the old end.
    fn write_cost(offset: u64, len: u64, size: u64) -> u64 {
        len.saturating_add(offset.saturating_sub(size))
    }
}

/// Whether `a` and `b` overlap: one is `b` itself or a directory above or below it.
/// Both are compared as canonical paths where they exist.
pub fn overlaps(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| -> PathBuf {
        // A path that does not exist yet: canonicalize the part that does.
        let mut existing = p.to_path_buf();
        let mut rest = Vec::new();
        while !existing.exists() {
            match (existing.file_name().map(|n| n.to_owned()), existing.parent()) {
                (Some(name), Some(parent)) => {
                    rest.push(name);
                    existing = parent.to_path_buf();
                }
                _ => break,
            }
        }
        let mut path = existing.canonicalize().unwrap_or(existing);
        path.extend(rest.into_iter().rev());
        path
    };
    let (a, b) = (canon(a), canon(b));
    a.starts_with(&b) || b.starts_with(&a)
}

/// The `wasi:filesystem/types` host of a job: wasmtime-wasi's, behind the quota.
pub struct GuardedFs<'a> {
    pub fs: WasiFilesystemCtxView<'a>,
    pub quota: Arc<OutputQuota>,
}

/// Marker for `add_to_linker`.
pub struct HasGuardedFs;

impl HasData for HasGuardedFs {
    type Data<'a> = GuardedFs<'a>;
}

/// Another reference to a descriptor the guest lent (the generated API takes them by value).
fn again<T: 'static>(r: &Resource<T>) -> Resource<T> {
    Resource::new_borrow(r.rep())
}

fn refused(what: &str) -> FsError {
    tracing::info!("a job tried to {what} in its output directory: refused");
    ErrorCode::NotPermitted.into()
}

impl types::Host for GuardedFs<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        self.fs.convert_error_code(err)
    }

    fn filesystem_error_code(&mut self, err: Resource<wasmtime::Error>) -> wasmtime::Result<Option<ErrorCode>> {
        self.fs.filesystem_error_code(err)
    }
}

impl HostDescriptor for GuardedFs<'_> {
    async fn advise(&mut self, fd: Resource<Descriptor>, offset: u64, len: u64, advice: types::Advice) -> FsResult<()> {
        self.fs.advise(fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.fs.sync_data(fd).await
    }

    async fn get_flags(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorFlags> {
        self.fs.get_flags(fd).await
    }

    async fn get_type(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorType> {
        self.fs.get_type(fd).await
    }

    async fn set_size(&mut self, fd: Resource<Descriptor>, size: u64) -> FsResult<()> {
        // Growing a file is charged as writing the bytes it grows by (sparse or not: the
        // operator's tools may well read them).
        let now = self.fs.stat(again(&fd)).await?.size;
        let growth = size.saturating_sub(now);
        self.quota.charge_bytes(growth)?;
        let result = self.fs.set_size(fd, size).await;
        if result.is_err() {
            self.quota.refund_bytes(growth);
        }
        result
    }

    async fn set_times(&mut self, fd: Resource<Descriptor>, atim: types::NewTimestamp, mtim: types::NewTimestamp) -> FsResult<()> {
        self.fs.set_times(fd, atim, mtim).await
    }

    async fn read(&mut self, fd: Resource<Descriptor>, len: u64, offset: u64) -> FsResult<(Vec<u8>, bool)> {
        self.fs.read(fd, len, offset).await
    }

    async fn write(&mut self, fd: Resource<Descriptor>, buf: Vec<u8>, offset: u64) -> FsResult<u64> {
        let len = buf.len() as u64;
        let size = self.fs.stat(again(&fd)).await?.size;
        let cost = OutputQuota::write_cost(offset, len, size);
        self.quota.charge_bytes(cost)?;
        let result = self.fs.write(fd, buf, offset).await;
        self.quota.refund_bytes(len.saturating_sub(*result.as_ref().unwrap_or(&0)));
        result
    }

    async fn read_directory(&mut self, fd: Resource<Descriptor>) -> FsResult<Resource<DirectoryEntryStream>> {
        let slot = self.quota.slot()?;
        let listing = self.fs.read_directory(fd).await?;
        self.quota.listings.lock().unwrap_or_else(|p| p.into_inner()).insert(listing.rep(), slot);
        Ok(listing)
    }

    async fn sync(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.fs.sync(fd).await
    }

    async fn create_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.quota.charge_file()?;
        self.fs.create_directory_at(fd, path).await
    }

    async fn stat(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorStat> {
        self.fs.stat(fd).await
    }

    async fn stat_at(&mut self, fd: Resource<Descriptor>, flags: types::PathFlags, path: String) -> FsResult<types::DescriptorStat> {
        self.fs.stat_at(fd, flags, path).await
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.fs.set_times_at(fd, flags, path, atim, mtim).await
    }

    async fn link_at(
        &mut self,
        _fd: Resource<Descriptor>,
        _old_flags: types::PathFlags,
        _old_path: String,
        _new_fd: Resource<Descriptor>,
        _new_path: String,
    ) -> FsResult<()> {
        Err(refused("make a hard link"))
    }

    async fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        dflags: types::DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        let slot = self.quota.meter.handle_slot().map_err(|e| {
            tracing::info!("a job cannot open more files: {e}");
            FsError::from(ErrorCode::InsufficientMemory)
        })?;
        if oflags.contains(types::OpenFlags::CREATE) {
            let exists = self.fs.stat_at(again(&fd), types::PathFlags::empty(), path.clone()).await.is_ok();
            if !exists {
                self.quota.charge_file()?;
            }
        }
        let opened = self.fs.open_at(fd, flags, path, oflags, dflags).await?;
        self.quota.opened(&opened, slot);
        Ok(opened)
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        self.quota.closed(&fd);
        HostDescriptor::drop(&mut self.fs, fd)
    }

    async fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<String> {
        self.fs.readlink_at(fd, path).await
    }

    async fn remove_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.fs.remove_directory_at(fd, path).await
    }

    async fn rename_at(&mut self, fd: Resource<Descriptor>, old: String, new_fd: Resource<Descriptor>, new: String) -> FsResult<()> {
        self.fs.rename_at(fd, old, new_fd, new).await
    }

    async fn symlink_at(&mut self, _fd: Resource<Descriptor>, _src: String, _dest: String) -> FsResult<()> {
        Err(refused("make a symbolic link"))
    }

    async fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.fs.unlink_file_at(fd, path).await
    }

    fn read_via_stream(&mut self, fd: Resource<Descriptor>, offset: u64) -> FsResult<Resource<DynInputStream>> {
        let slot = self.quota.slot()?;
        let file = self.file_of(&fd);
        // wasmtime-wasi's own call checks the descriptor (a file, opened for reading).
        let stream = self.fs.read_via_stream(fd, offset)?;
        let inner = self.fs.table.delete(stream)?;
        let wrapped: DynInputStream = match file {
            // Read in large pieces, in the job's budget (`file_reader`).
            Some(file) => Box::new(crate::file_reader::FileReader::new(file, offset, self.quota.meter.clone(), slot)),
            None => Box::new(SlottedInput { inner, _slot: slot }),
        };
        Ok(self.fs.table.push(wrapped)?)
    }

    fn write_via_stream(&mut self, fd: Resource<Descriptor>, offset: u64) -> FsResult<Resource<DynOutputStream>> {
        let file = self.file_of(&fd);
        let stream = self.fs.write_via_stream(fd, offset)?;
        self.charged(stream, file, Some(offset))
    }

    fn append_via_stream(&mut self, fd: Resource<Descriptor>) -> FsResult<Resource<DynOutputStream>> {
        let file = self.file_of(&fd);
        let stream = self.fs.append_via_stream(fd)?;
        self.charged(stream, file, None)
    }

    async fn is_same_object(&mut self, a: Resource<Descriptor>, b: Resource<Descriptor>) -> wasmtime::Result<bool> {
        self.fs.is_same_object(a, b).await
    }

    async fn metadata_hash(&mut self, fd: Resource<Descriptor>) -> FsResult<types::MetadataHashValue> {
        self.fs.metadata_hash(fd).await
    }

    async fn metadata_hash_at(&mut self, fd: Resource<Descriptor>, flags: types::PathFlags, path: String) -> FsResult<types::MetadataHashValue> {
        self.fs.metadata_hash_at(fd, flags, path).await
    }
}

impl GuardedFs<'_> {
    /// The open file behind a descriptor (for its size), if it is a file.
    fn file_of(&self, fd: &Resource<Descriptor>) -> Option<Arc<std::fs::File>> {
        match self.fs.table.get(fd) {
            Ok(Descriptor::File(f)) => Some(f.file.clone()),
            _ => None,
        }
    }

    /// Put a file's output stream behind the byte quota and the handle count; `at` is
    /// where it writes (`None`: at the end, appending).
    fn charged(
        &mut self,
        stream: Resource<DynOutputStream>,
        file: Option<Arc<std::fs::File>>,
        at: Option<u64>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let slot = match self.quota.slot() {
            Ok(slot) => slot,
            Err(e) => {
                let _ = self.fs.table.delete(stream);
                return Err(e);
            }
        };
        let inner = self.fs.table.delete(stream)?;
        let wrapped: DynOutputStream = Box::new(ChargedStream { inner, quota: self.quota.clone(), file, at, _slot: slot });
        Ok(self.fs.table.push(wrapped)?)
    }
}

impl HostDirectoryEntryStream for GuardedFs<'_> {
    async fn read_directory_entry(&mut self, stream: Resource<DirectoryEntryStream>) -> FsResult<Option<types::DirectoryEntry>> {
        self.fs.read_directory_entry(stream).await
    }

    fn drop(&mut self, stream: Resource<DirectoryEntryStream>) -> wasmtime::Result<()> {
        self.quota.listings.lock().unwrap_or_else(|p| p.into_inner()).remove(&stream.rep());
        HostDirectoryEntryStream::drop(&mut self.fs, stream)
    }
}

/// A write refused because the output directory's byte quota is used up: the error inside
/// the stream error, so that the host's own writes (`pending-reads.write-to`) can answer
/// `quota-exceeded` rather than `io`.
#[derive(Debug)]
pub struct OutputQuotaExceeded;

impl std::fmt::Display for OutputQuotaExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the output directory's byte quota is used up")
    }
}

impl std::error::Error for OutputQuotaExceeded {}

/// A file's output stream whose bytes are charged to the output quota.
struct ChargedStream {
    inner: DynOutputStream,
    quota: Arc<OutputQuota>,
    /// The file, for its size when a write lands past its end.
    file: Option<Arc<std::fs::File>>,
    /// Where the next write lands; `None` when appending (at the end, whatever it is).
    at: Option<u64>,
    _slot: HandleSlot,
}

impl ChargedStream {
    /// Charge a write of `len` bytes at the stream's position, and move past it.
    fn charge(&mut self, len: usize) -> StreamResult<()> {
        let len = len as u64;
        let size = self.file.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.len());
        let cost = match self.at {
            Some(at) => OutputQuota::write_cost(at, len, size),
            None => len,
        };
        self.quota
            .charge_bytes(cost)
            .map_err(|_| StreamError::LastOperationFailed(wasmtime::Error::new(OutputQuotaExceeded)))?;
        if let Some(at) = self.at.as_mut() {
            *at = at.saturating_add(len);
        }
        Ok(())
    }
}

/// A file's input stream, counted as an open handle (it keeps the file open).
struct SlottedInput {
    inner: DynInputStream,
    _slot: HandleSlot,
}

#[wasmtime_wasi::async_trait]
impl Pollable for SlottedInput {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[wasmtime_wasi::async_trait]
impl InputStream for SlottedInput {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.inner.read(size)
    }

    async fn blocking_read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.inner.blocking_read(size).await
    }

    fn skip(&mut self, nelem: usize) -> StreamResult<usize> {
        self.inner.skip(nelem)
    }

    async fn blocking_skip(&mut self, nelem: usize) -> StreamResult<usize> {
        self.inner.blocking_skip(nelem).await
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for ChargedStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for ChargedStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.write(bytes)
    }

    async fn blocking_write_and_flush(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.blocking_write_and_flush(bytes).await
    }

    fn write_zeroes(&mut self, nelem: usize) -> StreamResult<()> {
        self.charge(nelem)?;
        self.inner.write_zeroes(nelem)
    }

    async fn write_ready(&mut self) -> StreamResult<usize> {
        self.inner.write_ready().await
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_paths_are_found_through_links_and_missing_parts() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        std::os::unix::fs::symlink(&store, dir.path().join("alias")).unwrap();
        assert!(overlaps(&store, &store));
        assert!(overlaps(&dir.path().join("alias/pool"), &store), "a link into the store");
        assert!(overlaps(dir.path(), &store), "a directory above the store");
        assert!(overlaps(&store.join("not/yet"), &store), "a directory below, not made yet");
        assert!(!overlaps(&dir.path().join("out"), &store));
    }

    #[test]
    fn a_write_past_the_end_costs_the_hole_too() {
        assert_eq!(OutputQuota::write_cost(0, 10, 0), 10);
        assert_eq!(OutputQuota::write_cost(5, 10, 100), 10, "inside the file");
        assert_eq!(OutputQuota::write_cost(1 << 40, 1, 0), (1 << 40) + 1, "a 1 TiB hole");
        assert_eq!(OutputQuota::write_cost(u64::MAX, u64::MAX, 0), u64::MAX, "saturates");
    }

    #[test]
    fn quotas_refuse_past_the_limit_and_refund() {
        let q = OutputQuota::new(100, 1, Arc::new(Meter::new(Default::default())));
        assert!(q.charge_bytes(60).is_ok());
        assert!(q.charge_bytes(41).is_err());
        q.refund_bytes(10);
        assert!(q.charge_bytes(50).is_ok());
        assert!(q.charge_file().is_ok());
        assert!(q.charge_file().is_err());
        assert_eq!(q.used(), (100, 1));
    }
}
