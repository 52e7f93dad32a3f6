//! The `job-host` interface: what the host does for a job besides storage. Progress
//! reports (bounded: labels are cut, few, and made safe for a terminal) and hashing (native,
//! off the job's thread, in the job's host-memory budget). Every call is charged as an
//! operation.

pub mod chunks;
pub mod hashing;

use std::collections::HashSet;
use std::sync::Arc;

use wasmtime::component::Resource;

use crate::bindings::ceph::rbd::{job_host, types};
use crate::rbd::{trap_on_quota, RbdView};
use hashing::Sha256Job;
use rbddiff_check::StreamCheck;

/// The longest progress label kept (longer ones are cut).
pub const MAX_LABEL_BYTES: usize = 120;
/// Most distinct labels a job may report; reports of further labels are dropped.
pub const MAX_LABELS: usize = 32;

/// Where a job's progress reports go, and the labels seen so far.
#[derive(Default)]
pub struct JobHostCtx {
    progress: Option<Arc<dyn Fn(types::Progress) + Send + Sync>>,
    labels: HashSet<String>,
}

impl JobHostCtx {
    pub fn on_progress(&mut self, sink: Arc<dyn Fn(types::Progress) + Send + Sync>) {
        self.progress = Some(sink);
    }

    /// Hand a report on, its label made safe and bounded; a label past [`MAX_LABELS`] is
    /// dropped.
    fn report(&mut self, mut progress: types::Progress) {
        let Some(sink) = &self.progress else { return };
        progress.label = crate::output::terminal_safe(&crate::audit::cut(&progress.label, MAX_LABEL_BYTES)).into_owned();
        if !self.labels.contains(&progress.label) {
            if self.labels.len() >= MAX_LABELS {
                return;
            }
            self.labels.insert(progress.label.clone());
        }
        sink(progress);
    }
}

impl job_host::Host for RbdView<'_> {
    async fn report_progress(&mut self, progress: types::Progress) -> wasmtime::Result<()> {
        trap_on_quota(self.ctx.meter().operation())?;
        self.ctx.job_host.report(progress);
        Ok(())
    }

    async fn exit_with_code(&mut self, code: u8) -> wasmtime::Result<()> {
        // The same trap as WASI's exit, so the runtime ends every exit one way.
        Err(wasmtime::Error::new(wasmtime_wasi::I32Exit(i32::from(code))))
    }

    async fn sha256_chunks(&mut self, data: Vec<u8>, chunk_size: u32) -> wasmtime::Result<Vec<u8>> {
        let meter = self.ctx.meter().clone();
        trap_on_quota(meter.operation())?;
        if chunk_size != 0 && chunk_size < hashing::MIN_CHUNK {
            return Err(wasmtime::Error::msg(format!(
                "sha256-chunks: a chunk size of {chunk_size} bytes; it must be 0 (one piece) or at least {}",
                hashing::MIN_CHUNK
            )));
        }
        let memory = meter.reserve(data.len() as u64).map_err(|e| wasmtime::Error::msg(e.to_string()))?;
        hashing::sha256_chunks(data, chunk_size, memory).await
    }
}

impl RbdView<'_> {
    fn new_hasher(&mut self, state: StreamCheck) -> wasmtime::Result<Resource<Sha256Job>> {
        let meter = self.ctx.meter().clone();
        trap_on_quota(meter.operation())?;
        let slot = meter.handle_slot().map_err(|e| wasmtime::Error::msg(format!("cannot make a hasher: {e}")))?;
        Ok(self.table.push(Sha256Job::new(state, meter, slot))?)
    }
}

/// Hashers are pure computation, but each holds host memory: they count as handles.
impl job_host::HostSha256 for RbdView<'_> {
    async fn new(&mut self) -> wasmtime::Result<Resource<Sha256Job>> {
        self.new_hasher(StreamCheck::plain())
    }

    async fn chunked(&mut self, chunk_size: u32, keep_chunk_sums: bool) -> wasmtime::Result<Resource<Sha256Job>> {
        if chunk_size < hashing::MIN_CHUNK {
            return Err(wasmtime::Error::msg(format!(
                "sha256.chunked: a chunk size of {chunk_size} bytes; it must be at least {}",
                hashing::MIN_CHUNK
            )));
        }
        let check = StreamCheck::chunked(u64::from(chunk_size));
        self.new_hasher(if keep_chunk_sums { check.keeping_chunk_sums(hashing::MAX_KEPT_SUMS) } else { check })
    }

    async fn take_chunk_sums(
        &mut self,
        hasher: Resource<Sha256Job>,
    ) -> Result<Vec<job_host::ChunkSum>, crate::rbd::HostError> {
        use crate::rbd::HostError;
        trap_on_quota(self.ctx.meter().operation()).map_err(HostError::Trap)?;
        match self.table.get_mut(&hasher)?.take_chunk_sums().await.map_err(HostError::Trap)? {
            Ok(sums) => Ok(sums.into_iter().map(|(offset, sum)| job_host::ChunkSum { offset, sha256: sum.to_vec() }).collect()),
            Err(message) => Err(rbd_backend::Error::QuotaExceeded(message).into()),
        }
    }

    async fn update(&mut self, hasher: Resource<Sha256Job>, data: Vec<u8>) -> wasmtime::Result<()> {
        trap_on_quota(self.ctx.meter().operation())?;
        self.table.get_mut(&hasher)?.update(data, None).await
    }

    async fn update_data(&mut self, hasher: Resource<Sha256Job>, offset: u64, data: Vec<u8>) -> wasmtime::Result<()> {
        trap_on_quota(self.ctx.meter().operation())?;
        self.table.get_mut(&hasher)?.update(data, Some(offset)).await
    }

    async fn update_from(
        &mut self,
        hasher: Resource<Sha256Job>,
        input: Resource<wasmtime_wasi::p2::DynInputStream>,
    ) -> Result<u64, crate::rbd::HostError> {
        use crate::rbd::HostError;
        use wasmtime_wasi::p2::StreamError;
        trap_on_quota(self.ctx.meter().operation()).map_err(HostError::Trap)?;
        // The batch being read and the one being hashed.
        let _memory = self.ctx.meter().reserve(2 * hashing::STREAM_BATCH as u64)?;
        let state = self.table.get_mut(&hasher)?.lend().await.map_err(HostError::Trap)?;
        let (state, result) = match self.table.get_mut(&input) {
            Ok(stream) => hashing::hash_stream(stream, state).await,
            Err(e) => (Some(state), Err(StreamError::Trap(e.into()))),
        };
        // What was read before a failure is added: the hash is whole unless a task failed.
        let whole = state.is_some();
        self.table.get_mut(&hasher)?.give_back(state.unwrap_or_default(), whole);
        match result {
            Ok(n) => Ok(n),
            Err(StreamError::Closed) => Ok(0),
            Err(StreamError::LastOperationFailed(e)) => Err(rbd_backend::Error::Io(format!("reading the stream: {e}")).into()),
            Err(StreamError::Trap(e)) => Err(HostError::Trap(e)),
        }
    }

    async fn finish(&mut self, hasher: Resource<Sha256Job>) -> wasmtime::Result<Vec<u8>> {
        trap_on_quota(self.ctx.meter().operation())?;
        self.table.get_mut(&hasher)?.finish().await
    }

    async fn drop(&mut self, hasher: Resource<Sha256Job>) -> wasmtime::Result<()> {
        self.table.delete(hasher)?;
        Ok(())
    }
}
