//! The wasmtime side: one engine and linker for the host's lifetime, components loaded
//! (through the cache) and checked against the `job-world`, and jobs run in their own store
//! with their own grants, limits and output.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rbd_backend::Backend;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::filesystem::WasiFilesystemView;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use crate::audit::{Audit, AuditSink};
use crate::bindings::JobWorldPre;
use crate::cache::ComponentCache;
use crate::capability::Grants;
use crate::meter::{Meter, Quotas, Usage, DEFAULT_HOST_MEMORY_BYTES};
use crate::output::{terminal_safe, JobOutput, OutputSink};
use crate::output_dir::{overlaps, GuardedFs, HasGuardedFs, OutputQuota};
use crate::outbound::OutboundHooks;
use crate::policy::endpoints::Endpoints;
use crate::rbd::{HasRbd, RbdCtx, RbdView};
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};
use wasmtime_wasi_http::WasiHttpCtx;

/// How often the epoch advances: the granularity of yielding and of deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// The largest component the host compiles: compiling is host work no limit of the job's
/// covers yet, so its input is bounded (the Python runtime, the largest job we know,
/// is about 40 MB).
pub const MAX_COMPONENT_BYTES: usize = 256 << 20;
/// The most bytes one call may copy between the guest and the host (its arguments or its
/// results): a call past it traps. This is wasmtime's own default, named here because
/// the host's memory bound counts on it.
pub const MAX_CALL_COPY_BYTES: usize = 128 << 20;
/// The longest failure message of a job that is kept (the rest is cut).
pub const MAX_FAILURE_BYTES: usize = 4096;
/// Table elements all of a job's tables may hold together.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// A job stopped at its deadline while a backend call had been waiting this long is reported
/// as `backend-unresponsive` rather than as slow.
const BACKEND_STALL: Duration = Duration::from_secs(5);
/// How long the end of a job may wait for its images to close (a backend call still in
/// flight holds them); past it the job's result is returned and they close when it ends.
const CLOSE_TIME: Duration = Duration::from_secs(10);

/// Why a job did not run to a successful end. Each case is something the operator can act
/// on, and the CLI turns each into its own message and exit status.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot read job `{path}`: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("`{path}` is not a WebAssembly component: {reason}")]
    NotAComponent { path: PathBuf, reason: String },
    #[error("`{path}` is a component of another world: {reason}\n(a job must target the `ceph:rbd/job-world` world of this host's WIT package)")]
    WrongWorld { path: PathBuf, reason: String },
    #[error("the job trapped: {0:?}")]
    Trap(wasmtime::Error),
    #[error("the job failed: {0}")]
    Failed(String),
    #[error("the job exited with status {0}")]
    Exit(i32),
    #[error("the job ran past its deadline of {0:?} and was stopped")]
    Deadline(Duration),
    #[error("the job used up its CPU budget of {0:?} and was stopped")]
    CpuLimit(Duration),
    #[error("the job ran past its deadline of {deadline:?} while the storage backend did not answer (its oldest call had waited {waited:?}) and was stopped")]
    BackendUnresponsive { deadline: Duration, waited: Duration },
    #[error("the job was cancelled by the host")]
    Cancelled,
    #[error("cannot set up the job: {0}")]
    Setup(String),
}

impl JobError {
    /// A short, stable name for the outcome (reports and logs match on it).
    pub fn kind(&self) -> &'static str {
        match self {
            JobError::Unreadable { .. } => "unreadable",
            JobError::NotAComponent { .. } => "not-a-component",
            JobError::WrongWorld { .. } => "wrong-world",
            JobError::Trap(_) => "trap",
            JobError::Failed(_) => "failed",
            JobError::Exit(_) => "exit",
            JobError::Deadline(_) => "deadline",
            JobError::BackendUnresponsive { .. } => "backend-unresponsive",
            JobError::CpuLimit(_) => "cpu-limit",
            JobError::Cancelled => "cancelled",
            JobError::Setup(_) => "setup",
        }
    }

    /// The process exit status the CLI uses for this outcome.
    pub fn exit_code(&self) -> i32 {
        match self {
            JobError::Failed(_) => 1,
            JobError::Exit(code) => *code,
            JobError::Trap(_) => 3,
            JobError::Deadline(_) | JobError::CpuLimit(_) | JobError::Cancelled => 4,
            JobError::BackendUnresponsive { .. } => 5,
            JobError::Unreadable { .. } | JobError::NotAComponent { .. } | JobError::WrongWorld { .. } => 2,
            JobError::Setup(_) => 2,
        }
    }
}

/// Host-wide settings of the engine.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Most jobs alive at once in this host (slots of the pooling allocator).
    pub max_concurrent_jobs: u32,
    /// Largest linear memory any job may have (a job's own limit may be lower).
    pub max_memory_bytes: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: ComponentCache::default_dir(),
            max_concurrent_jobs: 128,
            max_memory_bytes: 4 << 30,
        }
    }
}

/// Per-job limits.
#[derive(Debug, Clone)]
pub struct JobLimits {
    /// Most bytes of linear memory, all the job's memories together.
    pub memory_bytes: usize,
    /// Wall-clock time before the job is stopped.
    pub deadline: Duration,
    /// Most bytes the job may print, per stream.
    pub output_bytes: u64,
    /// Most bytes of a data stdout ([`OutputSink::Data`]), in place of `output_bytes`.
    pub stdout_data_bytes: u64,
    /// Backend reads one job keeps in flight.
    pub reads_in_flight: usize,
    /// Handles, bytes, operations and bandwidth.
    pub quotas: Quotas,
    /// Time the guest may spend running its own code (not waiting on the host), measured in
    /// epoch ticks; `None` for no limit beyond the deadline.
    pub cpu: Option<Duration>,
    /// Most bytes the job may write to its output directory (writes and file growth).
    pub output_dir_bytes: u64,
    /// Most files and directories the job may create in its output directory.
    pub output_dir_files: u64,
    /// Outbound HTTP's bounds (response size, exchanges open, waits).
    pub http: crate::outbound::HttpLimits,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            memory_bytes: 1 << 30,
            deadline: Duration::from_secs(3600),
            output_bytes: 64 << 20,
            // A restore stream of a large image: as much as the output directory may take.
            stdout_data_bytes: crate::output_dir::DEFAULT_OUTPUT_BYTES,
            reads_in_flight: 8,
            quotas: Quotas {
                max_handles: Some(1024),
                host_memory_bytes: Some(DEFAULT_HOST_MEMORY_BYTES),
                ..Quotas::default()
            },
            cpu: None,
            output_dir_bytes: crate::output_dir::DEFAULT_OUTPUT_BYTES,
            output_dir_files: crate::output_dir::DEFAULT_OUTPUT_FILES,
            http: crate::outbound::HttpLimits::default(),
        }
    }
}

/// Everything one run of a job needs besides its component.
pub struct JobConfig {
    /// Tags the job's output and log lines.
    pub job_id: String,
    pub args: Vec<String>,
    pub backend: Arc<dyn Backend>,
    pub grants: Grants,
    pub limits: JobLimits,
    /// A host directory the job sees as `/out`; no filesystem otherwise. It must not
    /// overlap the store, the component cache or the audit log.
    pub output_dir: Option<PathBuf>,
    /// Map the output directory read-only (a restore or a verify only reads it).
    pub output_read_only: bool,
    pub stdout: OutputSink,
    pub stderr: OutputSink,
    pub progress: Option<Arc<dyn Fn(crate::bindings::types::Progress) + Send + Sync>>,
    /// Where the job's mutating operations and denials are recorded.
    pub audit: AuditSink,
    /// `notify_one` on it stops the job (its locks are released, its images closed).
    pub cancel: Option<Arc<tokio::sync::Notify>>,
    /// Filled with what the job used when it ends, however it ends.
    pub usage: Option<Arc<std::sync::Mutex<Usage>>>,
    /// The HTTP endpoints the job may reach (`wasi:http`); none: no network.
    pub outbound: Endpoints,
    /// The secrets the operator hands the job (the `secrets` interface).
    pub secrets: crate::secrets::Secrets,
}

/// A loaded component that has been checked against the job world, ready to instantiate.
#[derive(Clone)]
pub struct JobComponent {
    pre: JobWorldPre<JobState>,
}

/// The store data of one job.
pub struct JobState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    outbound: OutboundHooks,
    table: ResourceTable,
    rbd: RbdCtx,
    limits: JobLimiter,
    out_quota: Arc<OutputQuota>,
    /// Epoch ticks that found the guest running its own code.
    cpu_ticks: u64,
}

/// The trap that ends a job whose CPU budget ran out.
#[derive(Debug)]
struct CpuLimitReached;

impl std::fmt::Display for CpuLimitReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the job's CPU budget ran out")
    }
}

impl std::error::Error for CpuLimitReached {}

/// The memory limit of a job over all its linear memories and tables together (a
/// component may have several of each; a per-memory limit would multiply).
struct JobLimiter {
    memory_limit: usize,
    memory: usize,
    table_elements: usize,
}

impl ResourceLimiter for JobLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory.saturating_add(desired.saturating_sub(current));
        if total > self.memory_limit {
            return Ok(false);
        }
        self.memory = total;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.table_elements.saturating_add(desired.saturating_sub(current));
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

impl WasiView for JobState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for JobState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.outbound }
    }
}

/// The engine, the linker, the component cache, and the epoch ticker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<JobState>,
    cache: ComponentCache,
    cache_dir: Option<PathBuf>,
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_concurrent_jobs)
            .total_core_instances(config.max_concurrent_jobs * 8)
            .total_memories(config.max_concurrent_jobs * 4)
            .total_tables(config.max_concurrent_jobs * 8)
            .total_stacks(config.max_concurrent_jobs)
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            .max_core_instances_per_component(64)
            .max_memory_size(config.max_memory_bytes);

        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(|e| anyhow::anyhow!("{e:?}"))?;

        let mut linker: Linker<JobState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        // The output directory's files go through the quota: its `wasi:filesystem/types`
        // stands in for wasmtime-wasi's.
        linker.allow_shadowing(true);
        wasmtime_wasi::p2::bindings::filesystem::types::add_to_linker::<JobState, HasGuardedFs>(&mut linker, |s| {
            let quota = s.out_quota.clone();
            GuardedFs { fs: s.filesystem(), quota }
        })
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        linker.allow_shadowing(false);
        // The world's own interfaces; its `wasi:io` is wasmtime-wasi's, linked above.
        fn rbd_view(s: &mut JobState) -> RbdView<'_> {
            RbdView { ctx: &mut s.rbd, table: &mut s.table }
        }
        use crate::bindings::ceph::rbd::{job_host, rbd, types};
        types::add_to_linker::<JobState, HasRbd>(&mut linker, rbd_view).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        rbd::add_to_linker::<JobState, HasRbd>(&mut linker, rbd_view).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        job_host::add_to_linker::<JobState, HasRbd>(&mut linker, rbd_view).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        crate::bindings::ceph::rbd::secrets::add_to_linker::<JobState, HasRbd>(&mut linker, rbd_view).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        // Outbound HTTP: every request goes through the job's endpoint grants (`outbound`).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;

        // Epochs drive both cooperative yielding (a busy guest cannot starve other jobs on
        // the executor) and deadlines. A plain thread: it must tick even if tokio is busy.
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (stop, ticker_engine) = (ticker_stop.clone(), engine.weak());
        std::thread::Builder::new().name("rbd-wasm-epoch".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match ticker_engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })?;

        Ok(Runtime { engine, linker, cache: ComponentCache::new(config.cache_dir.clone()), cache_dir: config.cache_dir, ticker_stop })
    }

    /// Load a job from a file: read it, compile it (or take it from the cache), and check
    /// that it is a component of the job world whose imports this host provides.
    pub fn load(&self, path: &Path) -> Result<JobComponent, JobError> {
        let bytes = std::fs::read(path)
            .map_err(|source| JobError::Unreadable { path: path.to_owned(), source })?;
        self.load_bytes(path, &bytes)
    }

    /// As [`Runtime::load`], from bytes; `path` names them in errors.
    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<JobComponent, JobError> {
        let not_component = |reason: String| JobError::NotAComponent { path: path.to_owned(), reason };
        if bytes.len() > MAX_COMPONENT_BYTES {
            return Err(not_component(format!(
                "it is {} bytes, over the {MAX_COMPONENT_BYTES} bytes this host compiles",
                bytes.len()
            )));
        }
        match wasm_kind(bytes) {
            WasmKind::Component => {}
            WasmKind::CoreModule => {
                return Err(not_component(
                    "it is a core WebAssembly module; build the job for the wasm32-wasip2 target, which makes components".into(),
                ))
            }
            WasmKind::NotWasm => return Err(not_component("it does not start with the WebAssembly magic number".into())),
        }
        let component: Component = self
            .cache
            .load(&self.engine, bytes)
            .map_err(|e| not_component(format!("{e:#}")))?;
        let wrong_world = |e: wasmtime::Error| JobError::WrongWorld { path: path.to_owned(), reason: format!("{e:#}") };
        let pre = self.linker.instantiate_pre(&component).map_err(wrong_world)?;
        let pre = JobWorldPre::new(pre).map_err(wrong_world)?;
        Ok(JobComponent { pre })
    }

    /// Run a job to its end. However it ends, its store is dropped here, which closes every
    /// image it held open.
    pub async fn run(&self, component: &JobComponent, job: JobConfig) -> Result<(), JobError> {
        let mut wasi = WasiCtx::builder();
        // Secret values are kept out of everything the host writes for the job.
        let redactor = job.secrets.redactor();
        let stdout_bytes = match job.stdout {
            OutputSink::Data => job.limits.stdout_data_bytes,
            _ => job.limits.output_bytes,
        };
        wasi.stdout(JobOutput::new(&job.job_id, job.stdout, stdout_bytes, redactor.clone()))
            .stderr(JobOutput::new(&job.job_id, job.stderr, job.limits.output_bytes, redactor.clone()))
            .args(&[job.job_id.as_str()])
            // Deny-by-default, said out loud: no sockets, no name lookups, no environment,
            // no stdin, and no filesystem but the mapped output directory below.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(dir) = &job.output_dir {
            self.check_output_dir(dir, job.backend.as_ref(), &job.audit)?;
            let perms = if job.output_read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
            wasi.preopened_dir(dir, "/out", perms)
                .map_err(|e| JobError::Setup(format!("cannot map output directory {}: {e:#}", dir.display())))?;
        }
        let audit = Audit::new(&job.job_id, job.audit).with_redactor(redactor.clone());
        let meter = Arc::new(Meter::new(job.limits.quotas.clone()));
        let out_quota = Arc::new(OutputQuota::new(job.limits.output_dir_bytes, job.limits.output_dir_files, meter.clone()));
        let mut rbd = RbdCtx::new(job.backend, job.grants, job.limits.reads_in_flight, audit.clone(), meter.clone());
        if let Some(progress) = job.progress {
            let redactor = redactor.clone();
            rbd.job_host.on_progress(Arc::new(move |mut report: crate::bindings::types::Progress| {
                report.label = redactor.redact(&report.label).into_owned();
                progress(report)
            }));
        }
        rbd.secrets = job.secrets;
        let limits = JobLimiter { memory_limit: job.limits.memory_bytes, memory: 0, table_elements: 0 };
        let mut store = Store::new(
            &self.engine,
            JobState {
                wasi: wasi.build(),
                http: WasiHttpCtx::new(),
                outbound: OutboundHooks::new(job.outbound, audit.clone(), meter.clone(), job.limits.http),
                table: ResourceTable::new(),
                rbd,
                limits,
                out_quota: out_quota.clone(),
                cpu_ticks: 0,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.set_hostcall_fuel(MAX_CALL_COPY_BYTES);
        // Every epoch tick that finds the guest running its own code yields to the executor
        // (a busy guest cannot starve other jobs) and counts against its CPU budget, which
        // stops a tight loop even when the wall-clock deadline is far away.
        let cpu_budget = job.limits.cpu.map(|cpu| (cpu.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64);
        store.epoch_deadline_callback(move |mut ctx| {
            let state = ctx.data_mut();
            state.cpu_ticks += 1;
            match cpu_budget {
                Some(budget) if state.cpu_ticks > budget => Err(wasmtime::Error::new(CpuLimitReached)),
                _ => Ok(UpdateDeadline::Yield(1)),
            }
        });
        store.set_epoch_deadline(1);

        let deadline = job.limits.deadline;
        let cancel = job.cancel.clone().unwrap_or_default();
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(deadline, async {
                let instance = component.pre.instantiate_async(&mut store).await.map_err(JobError::Trap)?;
                instance.ceph_rbd_job().call_run(&mut store, &job.args).await.map_err(JobError::Trap)
            }) => Some(outcome),
            () = cancel.notified() => None,
        };
        // Long host work the job started (flatten, copy) stops at its next step.
        store.data().rbd.end_host_work();
        // Whether the cluster stopped answering: a call still waiting when the job was stopped.
        let backend_wait = store.data().rbd.backend_wait().filter(|w| *w >= BACKEND_STALL);
        // However the job ended, it leaves no lock behind, and its images are closed (on the
        // blocking pool: closing waits for backend calls in flight).
        store.data().rbd.release_locks().await;
        let cpu_ms = store.data().cpu_ticks * EPOCH_TICK.as_millis() as u64;
        let closing = tokio::task::spawn_blocking(move || drop(store));
        if tokio::time::timeout(CLOSE_TIME, closing).await.is_err() {
            tracing::warn!("the job's images did not close within {CLOSE_TIME:?}; they close when its backend calls end");
        }
        audit.flush().await;
        if let Some(usage) = &job.usage {
            let (output_dir_bytes, output_dir_files) = out_quota.used();
            *usage.lock().unwrap_or_else(|p| p.into_inner()) =
                Usage { cpu_ms, output_dir_bytes, output_dir_files, ..meter.usage() };
        }
        let Some(outcome) = outcome else {
            return Err(JobError::Cancelled);
        };
        match outcome {
            Err(_elapsed) => match backend_wait {
                Some(waited) => Err(JobError::BackendUnresponsive { deadline, waited }),
                None => Err(JobError::Deadline(deadline)),
            },
            Ok(Err(JobError::Trap(e))) if e.downcast_ref::<CpuLimitReached>().is_some() => {
                Err(JobError::CpuLimit(job.limits.cpu.unwrap_or_default()))
            }
            Ok(Err(JobError::Trap(e))) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Some(exit) if exit.0 == 0 => Ok(()),
                Some(exit) => Err(JobError::Exit(exit.0)),
                None => Err(JobError::Trap(e)),
            },
            Ok(Err(other)) => Err(other),
            Ok(Ok(Err(message))) => {
                let message = redactor.redact(&message).into_owned();
                Err(JobError::Failed(terminal_safe(&crate::audit::cut(&message, MAX_FAILURE_BYTES)).into_owned()))
            }
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }
}

impl Runtime {
    /// Refuse an output directory that reaches the store's data, the compiled-component
    /// cache (native code this host loads) or the audit log: a job could otherwise rewrite
    /// what the host trusts.
    fn check_output_dir(&self, dir: &Path, backend: &dyn Backend, audit: &AuditSink) -> Result<(), JobError> {
        let protected = [
            ("the embedded store", backend.local_dir()),
            ("the compiled-component cache", self.cache_dir.clone()),
            ("the audit log", audit.path().map(Path::to_owned)),
        ];
        for (what, path) in protected {
            if let Some(path) = path.filter(|p| overlaps(dir, p)) {
                return Err(JobError::Setup(format!(
                    "the output directory {} overlaps {what} ({}); map a directory of its own",
                    dir.display(),
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

enum WasmKind {
    Component,
    CoreModule,
    NotWasm,
}

/// Tell a component from a core module by the header's version and layer fields.
fn wasm_kind(bytes: &[u8]) -> WasmKind {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => WasmKind::CoreModule,
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => WasmKind::Component,
        _ => WasmKind::NotWasm,
    }
}
