//! `rbd-wasm serve`: run the jobs of a configuration file on their schedules, once per
//! tick between all the processes (on any host) that serve the same configuration, with
//! an HTTP endpoint for metrics and status.
//!
//! One task per job decides which tick is due and claims it through the job's lease
//! ([`claim`]); the run itself happens in this process, on a runtime shared by all runs,
//! under the configuration's limits (overall and per pool). SIGHUP reloads the
//! configuration (a file that does not parse or check is refused and the running one
//! stays); SIGTERM or SIGINT stops taking new runs, cancels the running ones through the
//! host's cancellation (their locks are released), waits up to `shutdown_grace`, lets the
//! leases go and exits.

mod claim;
mod config;
mod history;
mod http;
mod metrics;
mod schedule;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context};
use clap::Args;
use rbd_wasm::backend::embedded::EmbeddedBackend;
use rbd_wasm::backend::librbd::{ConnectOptions, LibrbdBackend};
use rbd_wasm::backend::{Backend, Leases};
use rbd_wasm::runtime::{JobConfig, JobError, Runtime, RuntimeConfig};
use rbd_wasm::{AuditSink, OutputSink, Usage};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::progress::{ProgressMode, ProgressView};
use crate::report::RunReport;
use claim::{Claim, Held};
use config::{Config, JobSpec, Missed};
use history::{History, RunRecord};
use metrics::Metrics;
use schedule::{jitter_of, rfc3339, Tick};

#[derive(Args)]
pub struct ServeArgs {
    /// The service's configuration (TOML, `version = 1`; docs/serve.md).
    #[arg(long)]
    config: PathBuf,
    /// Check the configuration (and every job's manifest) and exit.
    #[arg(long)]
    check: bool,
    /// The history's directory, in place of the configuration's `state_dir` (each process
    /// needs its own; two on one machine that share a configuration set this).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The HTTP endpoint's address, in place of the configuration's `http.listen`.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
}

/// How often a process that finds a job's lease held by another looks again.
const POLL: Duration = Duration::from_secs(1);
/// Runs of each job `/status` shows.
const STATUS_RUNS: usize = 10;

pub fn serve(args: ServeArgs) -> ExitCode {
    let config = match load(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("rbd-wasm serve: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("{}: {} job(s), configuration good", args.config.display(), config.jobs.len());
        return ExitCode::SUCCESS;
    }
    let tokio = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rbd-wasm serve: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = tokio.block_on(run_service(args, config));
    // Runs abandoned past the grace time, and backend calls that never came back, must not
    // keep the process.
    tokio.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rbd-wasm serve: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load(args: &ServeArgs) -> Result<Config, String> {
    let mut config = Config::load(&args.config)?;
    if let Some(dir) = &args.state_dir {
        config.state_dir = dir.clone();
    }
    if let Some(listen) = args.listen {
        if !listen.ip().is_loopback() && config.http.token.is_none() {
            return Err(format!("--listen {listen} is not a loopback address: the configuration needs http.token_file"));
        }
        config.http.listen = listen;
    }
    Ok(config)
}

/// Everything the job tasks share.
struct Service {
    config: watch::Sender<Arc<Config>>,
    /// Who this process is, in lease states and history (`host:pid`).
    holder: String,
    backend: Arc<dyn Backend>,
    leases: Arc<dyn Leases>,
    runtime: Runtime,
    history: History,
    metrics: Arc<Metrics>,
    limits: Mutex<Slots>,
    running: Mutex<HashMap<String, Running>>,
    stop: watch::Sender<bool>,
    stopping: Arc<AtomicBool>,
    started: f64,
}

/// The run of one job under way in this process.
struct Running {
    tick: Tick,
    attempt: u32,
    started: f64,
    cancel: Arc<Notify>,
}

/// The concurrency limits: one semaphore for all runs and one per limited pool.
struct Slots {
    all: Arc<Semaphore>,
    pools: BTreeMap<String, Arc<Semaphore>>,
}

impl Slots {
    fn new(config: &Config) -> Slots {
        Slots {
            all: Arc::new(Semaphore::new(config.limits.max_concurrent_runs)),
            pools: config.limits.pools.iter().map(|(pool, n)| (pool.clone(), Arc::new(Semaphore::new(*n)))).collect(),
        }
    }
}

async fn run_service(args: ServeArgs, config: Config) -> anyhow::Result<()> {
    let holder = format!("{}:{}", hostname(), std::process::id());
    let (backend, leases) = open_store(&config, &holder)?;
    let runtime = Runtime::new(RuntimeConfig { max_concurrent_jobs: config::MAX_RUNS as u32, ..RuntimeConfig::default() })?;
    let history = History::open(&config.state_dir, config.keep_runs)
        .with_context(|| format!("cannot open the run history in {}", config.state_dir.display()))?;
    let listener = http::bind(config.http.listen).await.with_context(|| format!("cannot listen on {}", config.http.listen))?;
    let listening = listener.local_addr()?;
    let metrics = Arc::new(Metrics::new());
    for job in &config.jobs {
        metrics.register_job(&job.name);
    }
    let token = config.http.token.clone();
    let (stop, _) = watch::channel(false);
    let service = Arc::new(Service {
        limits: Mutex::new(Slots::new(&config)),
        config: watch::channel(Arc::new(config)).0,
        holder,
        backend,
        leases,
        runtime,
        history,
        metrics: metrics.clone(),
        running: Mutex::new(HashMap::new()),
        stop,
        stopping: Arc::new(AtomicBool::new(false)),
        started: unix_now(),
    });
    let status_of = Arc::downgrade(&service);
    let endpoint = Arc::new(http::Endpoint {
        metrics,
        status: Box::new(move || status_of.upgrade().map(|s| s.status()).unwrap_or_default()),
        token,
        stopping: service.stopping.clone(),
    });
    tokio::spawn(http::serve(listener, endpoint, service.stop.subscribe()));
    eprintln!(
        "rbd-wasm serve: `{}` as {}: {} job(s); http://{listening}/metrics, /status, /healthz",
        service.config().name,
        service.holder,
        service.config().jobs.len()
    );
    tokio::spawn(supervise(service.clone()));
    wait_for_signals(&service, &args).await;
    service.shut_down().await;
    Ok(())
}

/// The store of the configuration, and the leases beside it: a RADOS pool of the same
/// cluster, or the embedded store's directory.
fn open_store(config: &Config, holder: &str) -> anyhow::Result<(Arc<dyn Backend>, Arc<dyn Leases>)> {
    if let Some(conf) = &config.store.conf {
        let options = ConnectOptions { conf: Some(conf.clone()), id: config.store.id.clone(), keyring: config.store.keyring.clone() };
        let backend = LibrbdBackend::connect(&options)
            .with_context(|| format!("cannot connect to the Ceph cluster of {}", conf.display()))?;
        let c = &config.coordination;
        let leases = backend
            .leases(&c.pool, &c.namespace, holder)
            .with_context(|| format!("cannot use pool `{}` for the leases (coordination.pool)", c.pool))?;
        return Ok((Arc::new(backend), Arc::new(leases)));
    }
    let dir = match &config.store.dir {
        Some(dir) => dir.clone(),
        None => crate::default_store_dir()?,
    };
    let backend = EmbeddedBackend::open(&dir).with_context(|| format!("cannot open the embedded store at {}", dir.display()))?;
    let leases = backend.leases(holder).map_err(|e| anyhow!("cannot keep leases in {}: {e}", dir.display()))?;
    Ok((Arc::new(backend), Arc::new(leases)))
}

/// SIGHUP reloads; SIGTERM and SIGINT return (a second one exits at once).
async fn wait_for_signals(service: &Arc<Service>, args: &ServeArgs) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::hangup()), signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        eprintln!("rbd-wasm serve: cannot watch for signals; serving until killed");
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => service.reload(args),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("rbd-wasm serve: signalled again: exiting at once");
        std::process::exit(1);
    });
}

/// Start a task for each job, and for each job a reload adds.
async fn supervise(service: Arc<Service>) {
    let mut config = service.config.subscribe();
    let mut started: HashSet<String> = HashSet::new();
    loop {
        let names: Vec<String> = config.borrow_and_update().jobs.iter().map(|j| j.name.clone()).collect();
        // A job removed by a reload ends its own task; one added back gets a new one.
        started.retain(|name| names.contains(name));
        for name in names {
            if started.insert(name.clone()) {
                service.metrics.register_job(&name);
                tokio::spawn(job_loop(service.clone(), name));
            }
        }
        let mut stop = service.stop.subscribe();
        tokio::select! {
            changed = config.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// What came of trying a tick.
enum Outcome {
    /// Dealt with (run here or elsewhere, or found done).
    Handled,
    /// A newer tick came first: the loop goes for that one.
    Superseded,
    /// The service is stopping.
    Stopping,
}

/// One job's schedule: wait for the next tick, then claim and run it.
async fn job_loop(service: Arc<Service>, name: String) {
    let mut config = service.config.subscribe();
    let mut stop = service.stop.subscribe();
    let mut handled: Option<Tick> = None;
    loop {
        if service.stopping.load(Ordering::SeqCst) {
            return;
        }
        let current = config.borrow_and_update().clone();
        let Some(spec) = current.job(&name).cloned() else { return };
        let now = unix_now();
        let due = latest_fired(&current.name, &spec, now);
        let handled_tick = match handled {
            Some(t) => t,
            None => {
                let t = service.first_handled(&current.name, &spec, due).await;
                handled = Some(t);
                t
            }
        };
        if let Some(tick) = due.filter(|t| *t > handled_tick) {
            match service.handle(&current.name, &spec, tick).await {
                Outcome::Handled => handled = Some(tick),
                Outcome::Superseded => {}
                Outcome::Stopping => return,
            }
            continue;
        }
        let wake = spec
            .schedule
            .next_after(handled_tick.max(due.unwrap_or(i64::MIN)))
            .map(|t| t as f64 + jitter_of(&current.name, &name, t, spec.jitter).as_secs_f64());
        let sleep = match wake {
            Some(at) => Duration::from_secs_f64((at - unix_now()).clamp(0.0, 86400.0)),
            None => Duration::from_secs(86400),
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            changed = config.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The latest tick whose time (with its jitter) has come.
fn latest_fired(service: &str, spec: &JobSpec, now: f64) -> Option<Tick> {
    let fires = |t: Tick| t as f64 + jitter_of(service, &spec.name, t, spec.jitter).as_secs_f64();
    let t = spec.schedule.at_or_before(now.floor() as i64)?;
    if fires(t) <= now {
        Some(t)
    } else {
        spec.schedule.at_or_before(t - 1)
    }
}

impl Service {
    fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// The tick a job's task starts from: which ticks before this process started count as
    /// missed (the job's `missed`), from the last tick any process claimed.
    async fn first_handled(&self, service: &str, spec: &JobSpec, due: Option<Tick>) -> Tick {
        let leases = self.leases.clone();
        let name = claim::lease_name(service, &spec.name);
        let state = tokio::task::spawn_blocking(move || claim::current(&leases, &name)).await;
        let state = match state {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => {
                tracing::warn!("job `{}`: cannot read its lease ({e}); ticks before now are not run", spec.name);
                None
            }
            Err(_) => None,
        };
        let now_due = due.unwrap_or(i64::MIN);
        match state {
            // Never claimed anywhere: a new job misses nothing.
            None => now_due,
            Some(s) => {
                // A tick left `running` may be taken over (its holder may be gone).
                let last = if s.status == claim::Status::Running { s.tick - 1 } else { s.tick };
                match spec.missed {
                    Missed::RunOnce => last,
                    Missed::Skip => last.max(now_due),
                }
            }
        }
    }

    /// Claim `tick` of the job and run it, or find it dealt with; wait while another
    /// process holds the job's lease.
    async fn handle(self: &Arc<Self>, service: &str, spec: &JobSpec, tick: Tick) -> Outcome {
        let mut stop = self.stop.subscribe();
        let name = claim::lease_name(service, &spec.name);
        let ttl = self.config().coordination.lease;
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return Outcome::Stopping;
            }
            if latest_fired(service, spec, unix_now()).is_some_and(|t| t > tick) {
                return Outcome::Superseded;
            }
            let permits = tokio::select! {
                permits = self.slots(&spec.pools) => permits,
                _ = stop.wait_for(|s| *s) => return Outcome::Stopping,
            };
            let (leases, lease, holder) = (self.leases.clone(), name.clone(), self.holder.clone());
            let claimed = tokio::task::spawn_blocking(move || claim::claim(&leases, &lease, tick, &holder, ttl)).await;
            match claimed {
                Ok(Ok(Claim::Done)) => return Outcome::Handled,
                Ok(Ok(Claim::Mine(held))) => return self.run_tick(spec, held, permits).await,
                Ok(Ok(Claim::Busy)) => {}
                Ok(Err(e)) => tracing::warn!("job `{}`: cannot claim tick {}: {e}", spec.name, rfc3339(tick)),
                Err(e) => tracing::warn!("job `{}`: claim failed: {e}", spec.name),
            }
            drop(permits);
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.wait_for(|s| *s) => return Outcome::Stopping,
            }
        }
    }

    /// A slot of the overall limit and one of each limited pool the job is granted (taken
    /// in one order, the pools sorted, so two jobs never wait on each other).
    async fn slots(&self, pools: &[String]) -> Vec<OwnedSemaphorePermit> {
        let semaphores: Vec<Arc<Semaphore>> = {
            let slots = self.limits.lock().unwrap_or_else(|p| p.into_inner());
            std::iter::once(slots.all.clone()).chain(pools.iter().filter_map(|p| slots.pools.get(p).cloned())).collect()
        };
        let mut permits = Vec::with_capacity(semaphores.len());
        for semaphore in semaphores {
            if let Ok(permit) = semaphore.acquire_owned().await {
                permits.push(permit);
            }
        }
        permits
    }

    /// Run a claimed tick: attempts (with retries) while the lease is kept alive; then
    /// record it done and let the lease go.
    async fn run_tick(self: &Arc<Self>, spec: &JobSpec, held: Held, permits: Vec<OwnedSemaphorePermit>) -> Outcome {
        let tick = held.tick;
        let cancel = Arc::new(Notify::new());
        let lost = Arc::new(AtomicBool::new(false));
        if held.took_over {
            self.metrics.took_over(&spec.name);
            eprintln!("rbd-wasm serve: job `{}`: taking tick {} over (its holder's lease ran out)", spec.name, rfc3339(tick));
        }
        let keeper = tokio::spawn(keep_lease(
            held.leases.clone(),
            held.name.clone(),
            self.config().coordination.lease,
            cancel.clone(),
            lost.clone(),
        ));
        self.metrics.running(1);
        let mut outcome = String::from("cancelled");
        let mut stop = self.stop.subscribe();
        for attempt in 1..=spec.retry.retries + 1 {
            if attempt > 1 {
                let wait = spec.retry.wait(attempt - 1);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => break,
                    _ = cancel.notified() => break,
                }
            }
            if self.stopping.load(Ordering::SeqCst) || lost.load(Ordering::SeqCst) {
                break;
            }
            self.running_mut().insert(
                spec.name.clone(),
                Running { tick, attempt, started: unix_now(), cancel: cancel.clone() },
            );
            outcome = self.attempt(spec, tick, attempt, held.took_over, &cancel, &lost).await;
            if outcome == "success" || outcome == "cancelled" || outcome == "lease-lost" {
                break;
            }
        }
        keeper.abort();
        self.running_mut().remove(&spec.name);
        self.metrics.running(-1);
        drop(permits);
        let holder = self.holder.clone();
        let name = spec.name.clone();
        if self.stopping.load(Ordering::SeqCst) && outcome == "cancelled" {
            // Stopped mid-run: the lease goes with the tick still `running`, so another
            // process takes the tick over at once.
            let _ = tokio::task::spawn_blocking(move || held.abandon()).await;
            return Outcome::Stopping;
        }
        if lost.load(Ordering::SeqCst) {
            eprintln!("rbd-wasm serve: job `{name}`: lost its lease during tick {}; another process has the tick", rfc3339(tick));
            let _ = tokio::task::spawn_blocking(move || held.abandon()).await;
            return Outcome::Handled;
        }
        let finished = tokio::task::spawn_blocking(move || held.finish(&holder, &outcome)).await;
        match finished {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => eprintln!("rbd-wasm serve: job `{name}`: tick {} was taken over meanwhile", rfc3339(tick)),
            Ok(Err(e)) => eprintln!("rbd-wasm serve: job `{name}`: cannot record tick {} done: {e}", rfc3339(tick)),
            Err(e) => eprintln!("rbd-wasm serve: job `{name}`: {e}"),
        }
        Outcome::Handled
    }

    fn running_mut(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One attempt: run the job, then record it in the history and the metrics. Returns
    /// its outcome (`success`, the failure's kind, `cancelled` or `lease-lost`).
    async fn attempt(&self, spec: &JobSpec, tick: Tick, attempt: u32, took_over: bool, cancel: &Arc<Notify>, lost: &AtomicBool) -> String {
        let started_at = unix_now();
        let started = Instant::now();
        let usage = Arc::new(Mutex::new(Usage::default()));
        let view = ProgressView::new(&spec.name, ProgressMode::Quiet);
        let manifest = &spec.manifest;
        let component_path = manifest.component.clone().unwrap_or_default();
        let args: Vec<String> = spec
            .args
            .as_ref()
            .unwrap_or(&manifest.args)
            .iter()
            .map(|a| a.replace("{job}", &spec.name).replace("{tick}", &rfc3339(tick)).replace("{tick_unix}", &tick.to_string()))
            .collect();
        let result = async {
            let component = tokio::task::block_in_place(|| self.runtime.load(&component_path))?;
            let job = JobConfig {
                job_id: spec.name.clone(),
                args,
                backend: self.backend.clone(),
                grants: manifest.grants.clone(),
                outbound: manifest.outbound.clone(),
                secrets: manifest.secrets.clone(),
                limits: manifest.limits.clone(),
                output_dir: manifest.output_dir.clone(),
                output_read_only: manifest.output_read_only,
                stdout: OutputSink::Stderr,
                stderr: OutputSink::Stderr,
                progress: Some(view.sink()),
                audit: AuditSink::Off,
                cancel: Some(cancel.clone()),
                usage: Some(usage.clone()),
            };
            self.runtime.run(&component, job).await
        }
        .await;
        let ended_at = unix_now();
        let outcome = match &result {
            Ok(()) => "success".to_string(),
            Err(JobError::Cancelled) if lost.load(Ordering::SeqCst) => "lease-lost".to_string(),
            Err(e) => e.kind().to_string(),
        };
        if let Err(e) = &result {
            eprintln!("rbd-wasm serve: job `{}` tick {} attempt {attempt}: {e}", spec.name, rfc3339(tick));
        }
        let exit_code = result.as_ref().err().map_or(0, |e| e.exit_code().clamp(1, 255));
        let usage = *usage.lock().unwrap_or_else(|p| p.into_inner());
        let report = RunReport::new(spec.name.clone(), component_path, &result, exit_code, started.elapsed(), usage, view.finish());
        self.metrics.attempt(&spec.name, &outcome, started.elapsed().as_secs_f64(), &usage, ended_at);
        let record = RunRecord {
            job: spec.name.clone(),
            tick,
            tick_time: rfc3339(tick),
            attempt,
            host: self.holder.clone(),
            started: started_at,
            ended: ended_at,
            outcome: outcome.clone(),
            took_over,
            report: serde_json::to_value(&report).unwrap_or_default(),
        };
        if let Err(e) = tokio::task::block_in_place(|| self.history.append(record)) {
            eprintln!("rbd-wasm serve: cannot write the run history: {e}");
        }
        outcome
    }

    /// SIGHUP: read the file again; keep the running configuration if it does not check,
    /// or if it changes what only a restart can (the store, the leases, the endpoint).
    fn reload(&self, args: &ServeArgs) {
        let old = self.config();
        let new = match load(args) {
            Ok(new) => new,
            Err(e) => {
                self.metrics.reload(false);
                eprintln!("rbd-wasm serve: reload refused, the running configuration stays: {e}");
                return;
            }
        };
        let restart_only = [
            ("name", old.name != new.name),
            ("state_dir", old.state_dir != new.state_dir),
            ("[store]", format!("{:?}", old.store) != format!("{:?}", new.store)),
            ("[coordination]", old.coordination.pool != new.coordination.pool || old.coordination.namespace != new.coordination.namespace),
            ("[http]", old.http.listen != new.http.listen || old.http.token != new.http.token),
        ];
        if let Some((what, _)) = restart_only.iter().find(|(_, changed)| *changed) {
            self.metrics.reload(false);
            eprintln!("rbd-wasm serve: reload refused, the running configuration stays: changing {what} needs a restart");
            return;
        }
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = Slots::new(&new);
        self.history.set_keep(new.keep_runs);
        let jobs = new.jobs.len();
        self.config.send_replace(Arc::new(new));
        self.metrics.reload(true);
        eprintln!("rbd-wasm serve: configuration reloaded: {jobs} job(s)");
    }

    /// Stop: no new runs, cancel the running ones, wait up to the grace time for them,
    /// let every lease go.
    async fn shut_down(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.send_replace(true);
        let grace = self.config().limits.shutdown_grace;
        let running: Vec<(String, Arc<Notify>)> = self.running_mut().iter().map(|(n, r)| (n.clone(), r.cancel.clone())).collect();
        if !running.is_empty() {
            eprintln!("rbd-wasm serve: stopping: cancelling {} run(s), waiting up to {grace:?}", running.len());
        }
        for (_, cancel) in &running {
            cancel.notify_one();
        }
        let deadline = Instant::now() + grace;
        while !self.running_mut().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Give the runs' tasks a moment to let their leases go; then let go of whatever
        // is still held (runs that did not end within the grace time).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let config = self.config();
        let leases = self.leases.clone();
        let names: Vec<String> = config.jobs.iter().map(|j| claim::lease_name(&config.name, &j.name)).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for name in names {
                let _ = leases.release(&name);
            }
        })
        .await;
        let left = self.running_mut().len();
        if left > 0 {
            eprintln!("rbd-wasm serve: {left} run(s) did not end within {grace:?}; exiting without them");
        } else {
            eprintln!("rbd-wasm serve: stopped");
        }
    }

    /// `/status`: each job's schedule, next tick, run under way and last runs.
    fn status(&self) -> serde_json::Value {
        let config = self.config();
        let now = unix_now();
        let running = self.running_mut();
        let jobs: Vec<serde_json::Value> = config
            .jobs
            .iter()
            .map(|spec| {
                let next = spec.schedule.next_after(now.floor() as i64);
                let runs = self.history.runs(&spec.name);
                let last: Vec<&RunRecord> = runs.iter().rev().take(STATUS_RUNS).collect();
                serde_json::json!({
                    "name": spec.name,
                    "manifest": spec.manifest_path,
                    "schedule": spec.schedule.describe(),
                    "jitter_secs": spec.jitter.as_secs_f64(),
                    "missed": spec.missed,
                    "next_tick": next.map(rfc3339),
                    "next_run": next.map(|t| rfc3339(t + jitter_of(&config.name, &spec.name, t, spec.jitter).as_secs() as i64)),
                    "running": running.get(&spec.name).map(|r| serde_json::json!({
                        "tick": rfc3339(r.tick), "attempt": r.attempt, "started": r.started,
                    })),
                    "last_runs": last,
                })
            })
            .collect();
        serde_json::json!({
            "service": config.name,
            "holder": self.holder,
            "started": self.started,
            "stopping": self.stopping.load(Ordering::SeqCst),
            "jobs": jobs,
        })
    }
}

/// Renew the lease every third of its time to live; if it is lost (taken over after it
/// ran out, or not renewed for a whole time to live), cancel the run.
async fn keep_lease(leases: Arc<dyn Leases>, name: String, ttl: Duration, cancel: Arc<Notify>, lost: Arc<AtomicBool>) {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        let (l, n) = (leases.clone(), name.clone());
        match tokio::task::spawn_blocking(move || l.renew(&n, ttl)).await {
            Ok(Ok(true)) => renewed = Instant::now(),
            Ok(Ok(false)) => break,
            Ok(Err(e)) => tracing::warn!("cannot renew the lease `{name}`: {e}"),
            Err(_) => {}
        }
        if renewed.elapsed() >= ttl {
            break;
        }
    }
    lost.store(true, Ordering::SeqCst);
    eprintln!("rbd-wasm serve: the lease `{name}` is lost: cancelling its run");
    cancel.notify_one();
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "localhost".into())
}
