//! Host-side measurements for `bench/run.sh`, through the `rbd-wasm` library:
//!
//! - `startup`: loading a cached component, running an empty job (store, WASI context,
//!   instantiation, the call, teardown), and instantiation alone (wasmtime's
//!   `InstancePre::instantiate_async` with the runtime's pooling settings).
//! - `scale`: N jobs at once on one host (one tokio runtime, one backend connection), each on
//!   its own image: N backups to completion (total time, peak RSS), then N idle jobs parked
//!   in a sleep (RSS per idle job).
//!
//! Both print one JSON object on stdout.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use rbd_backend::{Backend, CreateOptions, Error};
use rbd_wasm::audit::AuditSink;
use rbd_wasm::capability::{Grant, Grants};
use rbd_wasm::output::OutputSink;
use rbd_wasm::runtime::{JobComponent, JobConfig, JobLimits, Runtime, RuntimeConfig};
use rbd_wasm_bench::{fill_data, peak_rss_bytes, reset_peak_rss, rss_bytes, Store};
use serde_json::json;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Startup {
        /// The bench guest (`bench_guest.wasm`).
        #[arg(long)]
        guest: PathBuf,
        /// The compiled-component cache.
        #[arg(long)]
        cache: PathBuf,
        /// An embedded store for the empty jobs (they touch nothing).
        #[arg(long)]
        store: PathBuf,
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
    },
    Scale {
        #[command(flatten)]
        store: Store,
        #[arg(long, default_value_t = 100)]
        jobs: usize,
        /// The backup job (`backup.wasm`).
        #[arg(long)]
        backup: PathBuf,
        /// The bench guest (`bench_guest.wasm`).
        #[arg(long)]
        guest: PathBuf,
        #[arg(long)]
        cache: PathBuf,
        /// The backups' output directory.
        #[arg(long)]
        out: PathBuf,
        /// Size of each job's image.
        #[arg(long, default_value_t = 8)]
        image_mib: u64,
        /// How long the idle jobs stay parked.
        #[arg(long, default_value_t = 8)]
        park_secs: u64,
        /// Image names are PREFIX-000, PREFIX-001...
        #[arg(long, default_value = "scale")]
        prefix: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Startup { guest, cache, store, iterations } => startup(&guest, &cache, &store, iterations),
        Command::Scale { store, jobs, backup, guest, cache, out, image_mib, park_secs, prefix } => {
            scale(&store, jobs, &backup, &guest, &cache, &out, image_mib, park_secs, &prefix)
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn summary(mut samples: Vec<f64>) -> serde_json::Value {
    samples.sort_by(|a, b| a.total_cmp(b));
    json!({"n": samples.len(), "median": percentile(&samples, 0.5), "p10": percentile(&samples, 0.1),
           "p90": percentile(&samples, 0.9), "min": samples.first(), "max": samples.last()})
}

fn job(id: String, args: Vec<String>, backend: Arc<dyn Backend>, pool: &str, output_dir: Option<PathBuf>, stdout: OutputSink, stderr: OutputSink) -> JobConfig {
    JobConfig {
        job_id: id,
        args,
        backend,
        grants: Grants::new(vec![Grant::full(pool)]),
        limits: JobLimits::default(),
        output_dir,
        output_read_only: false,
        stdout,
        stderr,
        progress: None,
        audit: AuditSink::Off,
        cancel: None,
        usage: None,
        outbound: Default::default(),
        secrets: Default::default(),
    }
}

fn startup(guest: &Path, cache: &Path, store: &Path, iterations: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let runtime = Runtime::new(RuntimeConfig { cache_dir: Some(cache.to_owned()), max_concurrent_jobs: 16, ..RuntimeConfig::default() })?;
    let runtime_new_ms = started.elapsed().as_secs_f64() * 1e3;
    // The first load may compile (and fill the cache); the ones after are what a cached run pays.
    runtime.load(guest)?;
    let mut load_ms = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        runtime.load(guest)?;
        load_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let component = runtime.load(guest)?;
    let backend: Arc<dyn Backend> = Arc::new(rbd_backend::embedded::EmbeddedBackend::open(store)?);
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut run_us = Vec::with_capacity(iterations);
    let sink = Arc::new(Mutex::new(Vec::new()));
    for i in 0..iterations + 50 {
        let config = job("noop".into(), vec!["noop".into()], backend.clone(), "rbd", None, OutputSink::Capture(sink.clone()), OutputSink::Capture(sink.clone()));
        let t = Instant::now();
        tokio.block_on(runtime.run(&component, config)).map_err(|e| anyhow!("the empty job failed: {e}"))?;
        if i >= 50 {
            run_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let (instantiate_us, store_new_us) = instantiate_only(guest, iterations)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "runtime_new_ms": runtime_new_ms,
            "load_cached_ms": summary(load_ms),
            "empty_job_run_us": summary(run_us),
            "instantiate_us": summary(instantiate_us),
            "store_new_us": summary(store_new_us),
            "notes": "empty_job_run_us: Runtime::run of a job that returns at once (new store and WASI context, \
                      instantiation from the pooling allocator, the call, teardown). instantiate_us: \
                      InstancePre::instantiate_async alone, on an engine with the runtime's pooling settings, WASI \
                      linked and the ceph:rbd imports stubbed (they are not called at instantiation).",
        }))?
    );
    Ok(())
}

struct Bare {
    wasi: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
}

impl wasmtime_wasi::WasiView for Bare {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Instantiation alone, on an engine set up as `Runtime::new` sets up its own.
fn instantiate_only(guest: &Path, iterations: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    use wasmtime::component::{Component, Linker};
    use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
    let jobs = 16u32;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(jobs)
        .total_core_instances(jobs * 8)
        .total_memories(jobs * 4)
        .total_tables(jobs * 8)
        .total_stacks(jobs)
        .max_memories_per_component(8)
        .max_tables_per_component(16)
        .max_core_instances_per_component(64)
        .max_memory_size(4 << 30);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config).map_err(|e| anyhow!("{e:?}"))?;
    let component = Component::from_file(&engine, guest).map_err(|e| anyhow!("{e:?}"))?;
    let mut linker: Linker<Bare> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow!("{e:?}"))?;
    stub_world_imports(&engine, &component, &mut linker)?;
    let pre = linker.instantiate_pre(&component).map_err(|e| anyhow!("{e:?}"))?;
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (mut inst, mut stores) = (Vec::new(), Vec::new());
    for i in 0..iterations + 50 {
        let t = Instant::now();
        let mut store = Store::new(&engine, Bare { wasi: wasmtime_wasi::WasiCtx::builder().build(), table: Default::default() });
        store.set_epoch_deadline(u64::MAX / 2);
        let made = t.elapsed();
        let t = Instant::now();
        tokio.block_on(pre.instantiate_async(&mut store)).map_err(|e| anyhow!("{e:?}"))?;
        let took = t.elapsed();
        drop(store);
        if i >= 50 {
            inst.push(took.as_secs_f64() * 1e6);
            stores.push(made.as_secs_f64() * 1e6);
        }
    }
    Ok((inst, stores))
}

/// Stub the `ceph:rbd` imports with functions that trap (never called at instantiation).
/// Not `Linker::define_unknown_imports_as_traps`: it also defines the resources an
/// interface takes from another (`wasi:io`'s streams in `ceph:rbd/rbd`, `pollable` in the
/// WASI interfaces) as new resource types, which then do not match WASI's. A resource an
/// instance only re-uses needs no definition: the linker resolves it through its owner.
fn stub_world_imports<T: 'static>(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
    linker: &mut wasmtime::component::Linker<T>,
) -> anyhow::Result<()> {
    use wasmtime::component::types::ComponentItem;
    use wasmtime::component::ResourceType;
    let err = |e: wasmtime::Error| anyhow!("{e:?}");
    const BORROWED: [&str; 2] = ["input-stream", "output-stream"];
    for (name, item) in component.component_type().imports(engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else { continue };
        if !name.starts_with("ceph:rbd/") {
            continue;
        }
        let mut stub = linker.instance(name).map_err(err)?;
        for (export, item) in instance.exports(engine) {
            match item.ty {
                ComponentItem::ComponentFunc(_) => {
                    let what = format!("{name}#{export}");
                    stub.func_new(export, move |_, _, _, _| Err(wasmtime::Error::msg(format!("{what} is stubbed in this benchmark"))))
                        .map_err(err)?;
                }
                ComponentItem::Resource(_) if !BORROWED.contains(&export) => {
                    stub.resource(export, ResourceType::host::<()>(), |_, _| Ok(())).map_err(err)?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Create and fill `name` unless it exists.
fn ensure_image(backend: &dyn Backend, pool: &str, name: &str, size: u64, seed: u64) -> anyhow::Result<()> {
    match backend.create(pool, name, size, &CreateOptions::default()) {
        Ok(()) => {}
        Err(Error::Exists(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let image = backend.open(pool, name, None, false)?;
    let mut buf = vec![0u8; 4 << 20];
    let mut offset = 0;
    while offset < size {
        let len = buf.len().min((size - offset) as usize);
        fill_data(seed, offset, &mut buf[..len]);
        image.write(offset, &buf[..len])?;
        offset += len as u64;
    }
    image.flush()?;
    Ok(())
}

/// RSS sampled every 20 ms while a phase runs; the largest sample.
struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    max: Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start() -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let max = Arc::new(std::sync::atomic::AtomicU64::new(rss_bytes()));
        let (s, m) = (stop.clone(), max.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler { stop, max, thread: Some(thread) }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.max.load(Ordering::Relaxed)
    }
}

const MIB: f64 = 1048576.0;

#[allow(clippy::too_many_arguments)]
fn scale(
    store: &Store,
    jobs: usize,
    backup: &Path,
    guest: &Path,
    cache: &Path,
    out: &Path,
    image_mib: u64,
    park_secs: u64,
    prefix: &str,
) -> anyhow::Result<()> {
    let backend = store.open()?;
    let pool = store.pool.clone();
    let names: Vec<String> = (0..jobs).map(|i| format!("{prefix}-{i:03}")).collect();
    let t = Instant::now();
    for (i, name) in names.iter().enumerate() {
        ensure_image(&*backend, &pool, name, image_mib << 20, 1000 + i as u64)?;
    }
    let prepare_secs = t.elapsed().as_secs_f64();
    std::fs::create_dir_all(out)?;

    let rss_start = rss_bytes();
    let runtime = Arc::new(Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.to_owned()),
        max_concurrent_jobs: (jobs as u32).max(128),
        ..RuntimeConfig::default()
    })?);
    let backup_component = runtime.load(backup)?;
    let guest_component = runtime.load(guest)?;
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;

    // Phase 1: every job backs up its own image, all at once.
    let rss_before_backups = rss_bytes();
    let hwm_reset = reset_peak_rss();
    let sampler = Sampler::start();
    let t = Instant::now();
    let outcomes = tokio.block_on(run_all(&runtime, &backup_component, &backend, &pool, &names, |name| {
        vec![pool.clone(), name.to_owned()]
    }, Some(out), None))?;
    let backup_secs = t.elapsed().as_secs_f64();
    let backup_sampled_peak = sampler.finish();
    let backup_hwm = peak_rss_bytes();
    let backup_ok = outcomes.iter().filter(|o| o.is_ok()).count();
    let backup_errors: Vec<String> = outcomes.iter().filter_map(|o| o.as_ref().err().cloned()).take(5).collect();

    // Phase 2: every job parks in a sleep with its image open.
    let rss_before_park = rss_bytes();
    reset_peak_rss();
    let sampler = Sampler::start();
    let parked = Arc::new(AtomicUsize::new(0));
    let rss_parked = Arc::new(Mutex::new(None));
    let t = Instant::now();
    let outcomes = {
        let (seen, rss_parked) = (parked.clone(), rss_parked.clone());
        let watcher = std::thread::spawn(move || {
            // Wait until every job says it is parked, then let the host settle and measure.
            let deadline = Instant::now() + Duration::from_secs(park_secs);
            while seen.load(Ordering::Relaxed) < jobs && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let all = seen.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(300));
            *rss_parked.lock().unwrap() = Some((all, rss_bytes(), Instant::now()));
        });
        let args = |name: &str| vec!["park".into(), pool.clone(), format!("{name}-idle"), park_secs.to_string()];
        let outcomes = tokio.block_on(run_all(&runtime, &guest_component, &backend, &pool, &names, args, None, Some(parked.clone())));
        let _ = watcher.join();
        outcomes?
    };
    let park_secs_total = t.elapsed().as_secs_f64();
    let park_sampled_peak = sampler.finish();
    let park_ok = outcomes.iter().filter(|o| o.is_ok()).count();
    let park_errors: Vec<String> = outcomes.iter().filter_map(|o| o.as_ref().err().cloned()).take(5).collect();
    let (parked_seen, rss_while_parked, measured_at) = rss_parked.lock().unwrap().take().unwrap_or((0, 0, t));

    // Clean up the idle jobs' images (the backups' are left for inspection).
    for name in &names {
        let _ = backend.remove(&pool, &format!("{name}-idle"));
    }
    drop(tokio);

    let backend_kind = if store.conf.is_some() { "librbd" } else { "embedded" };
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "backend": backend_kind,
            "jobs": jobs,
            "image_mib": image_mib,
            "prepare_secs": prepare_secs,
            "rss_at_start_mib": rss_start as f64 / MIB,
            "peak_reset_worked": hwm_reset,
            "backup": {
                "all_finished": backup_ok == jobs,
                "ok": backup_ok,
                "errors": backup_errors,
                "total_secs": backup_secs,
                "rss_before_mib": rss_before_backups as f64 / MIB,
                "peak_rss_mib": backup_hwm.max(backup_sampled_peak) as f64 / MIB,
                "peak_rss_sampled_mib": backup_sampled_peak as f64 / MIB,
                "vmhwm_mib": backup_hwm as f64 / MIB,
            },
            "idle": {
                "all_finished": park_ok == jobs,
                "ok": park_ok,
                "errors": park_errors,
                "parked_at_measurement": parked_seen,
                "park_secs": park_secs,
                "measured_after_secs": measured_at.duration_since(t).as_secs_f64(),
                "total_secs": park_secs_total,
                "rss_before_mib": rss_before_park as f64 / MIB,
                "rss_parked_mib": rss_while_parked as f64 / MIB,
                "per_idle_job_kib": (rss_while_parked as f64 - rss_before_park as f64) / jobs as f64 / 1024.0,
                "peak_rss_mib": peak_rss_bytes().max(park_sampled_peak) as f64 / MIB,
            },
        }))?
    );
    if backup_ok != jobs || park_ok != jobs {
        bail!("not every job finished: {backup_ok}/{jobs} backups, {park_ok}/{jobs} idle jobs");
    }
    Ok(())
}

/// Run one job per image, all at once on the current tokio runtime; each job's outcome (its
/// error and output on failure).
#[allow(clippy::too_many_arguments)]
async fn run_all(
    runtime: &Arc<Runtime>,
    component: &JobComponent,
    backend: &Arc<dyn Backend>,
    pool: &str,
    names: &[String],
    args: impl Fn(&str) -> Vec<String>,
    output_dir: Option<&Path>,
    parked: Option<Arc<AtomicUsize>>,
) -> anyhow::Result<Vec<Result<(), String>>> {
    let mut tasks = Vec::new();
    for name in names {
        let (runtime, component, backend) = (runtime.clone(), component.clone(), backend.clone());
        let captured = Arc::new(Mutex::new(Vec::new()));
        let stdout = match &parked {
            Some(parked) => {
                let parked = parked.clone();
                OutputSink::Lines(Arc::new(move |line: &str| {
                    if line.contains("parked") {
                        parked.fetch_add(1, Ordering::Relaxed);
                    }
                }))
            }
            None => OutputSink::Capture(captured.clone()),
        };
        let config = job(name.clone(), args(name), backend, pool, output_dir.map(Path::to_owned), stdout, OutputSink::Capture(captured.clone()));
        tasks.push(tokio::spawn(async move {
            runtime.run(&component, config).await.map_err(|e| {
                let output = String::from_utf8_lossy(&captured.lock().unwrap()).into_owned();
                format!("{e}: {}", output.trim())
            })
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.context("a job's task panicked")?);
    }
    Ok(outcomes)
}
