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

mod attempt;
mod claim;
mod config;
mod history;
mod http;
mod metrics;
mod schedule;
mod ticks;

use std::collections::{BTreeMap, HashMap};
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
use rbd_wasm::runtime::{Runtime, RuntimeConfig};
use rbd_wasm::AuditSink;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use attempt::Outcome;
use claim::{Claim, Held};
use config::{Config, JobSpec};
use history::{History, RunRecord};
use metrics::Metrics;
use schedule::{rfc3339, Tick};
use ticks::{fire_time, latest_fired};

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
/// The least time between two warnings that a job's lease cannot be reached.
const WARN_EVERY: Duration = Duration::from_secs(60);

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
    /// Who this process is, in lease states and history: `host:pid:nonce` (containers
    /// often share a pid and may share a host name; the nonce keeps two apart).
    holder: String,
    backend: Arc<dyn Backend>,
    leases: Arc<dyn Leases>,
    audit: AuditSink,
    runtime: Runtime,
    history: History,
    metrics: Arc<Metrics>,
    limits: Mutex<Slots>,
    running: Mutex<HashMap<String, Running>>,
    /// Turns true when the service stops: the job tasks end, running attempts are told.
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

/// The signals the service answers, watched from its start (a SIGHUP before it is ready
/// must not end it).
struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

async fn run_service(args: ServeArgs, config: Config) -> anyhow::Result<()> {
    let mut signals = Signals {
        hangup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
        terminate: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
        interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
    };
    let holder = format!("{}:{}:{:08x}", hostname(), std::process::id(), rand::random::<u32>());
    let (backend, leases) = open_store(&config, &holder)?;
    let audit = match &config.audit_log {
        Some(path) => AuditSink::append_to(path).with_context(|| format!("cannot open the audit log {}", path.display()))?,
        None => AuditSink::Off,
    };
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
    let service = Arc::new(Service {
        limits: Mutex::new(Slots::new(&config)),
        config: watch::channel(Arc::new(config)).0,
        holder,
        backend,
        leases,
        audit,
        runtime,
        history,
        metrics: metrics.clone(),
        running: Mutex::new(HashMap::new()),
        stop: watch::channel(false).0,
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
    // The endpoint outlives the stop (its /healthz says 503 meanwhile).
    let (http_stop, http_stopped) = watch::channel(false);
    tokio::spawn(http::serve(listener, endpoint, http_stopped));
    eprintln!(
        "rbd-wasm serve: `{}` as {}: {} job(s); http://{listening}/metrics, /status, /healthz",
        service.config().name,
        service.holder,
        service.config().jobs.len()
    );
    tokio::spawn(supervise(service.clone()));
    loop {
        tokio::select! {
            _ = signals.hangup.recv() => service.reload(&args),
            _ = signals.terminate.recv() => break,
            _ = signals.interrupt.recv() => break,
        }
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = signals.terminate.recv() => {}
            _ = signals.interrupt.recv() => {}
        }
        eprintln!("rbd-wasm serve: signalled again: exiting at once");
        std::process::exit(1);
    });
    service.shut_down().await;
    http_stop.send_replace(true);
    Ok(())
}

/// The store of the configuration, and the leases beside it: a RADOS pool of the same
/// cluster, or the embedded store's directory.
fn open_store(config: &Config, holder: &str) -> anyhow::Result<(Arc<dyn Backend>, Arc<dyn Leases>)> {
    if let Some(conf) = &config.store.conf {
        let options = ConnectOptions {
            conf: Some(conf.clone()),
            id: config.store.id.clone(),
            keyring: config.store.keyring.clone(),
            ..ConnectOptions::default()
        };
        let backend = LibrbdBackend::connect(&options)
            .with_context(|| format!("cannot connect to the Ceph cluster of {}", conf.display()))?;
        // The leases get a connection of their own whose OSD operations give up: a renewal
        // that cannot reach the OSD must fail while the lease lasts (the jobs' connection
        // waits, bounded by each job's deadline).
        let c = &config.coordination;
        let lease_options = ConnectOptions { osd_op_timeout: Some((c.lease / 3).max(Duration::from_secs(1))), ..options };
        let lease_client = LibrbdBackend::connect(&lease_options)
            .with_context(|| format!("cannot connect to the Ceph cluster of {}", conf.display()))?;
        let leases = lease_client
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

/// Start a task for each job, and for each job a reload adds; a task that ended (its job
/// removed by a reload) is started again only once it has ended, so a job removed and
/// added back never has two.
async fn supervise(service: Arc<Service>) {
    let mut config = service.config.subscribe();
    let mut stop = service.stop.subscribe();
    let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
    loop {
        let names: Vec<String> = config.borrow_and_update().jobs.iter().map(|j| j.name.clone()).collect();
        for name in names {
            if tasks.get(&name).is_some_and(|task| !task.is_finished()) {
                continue;
            }
            if let Some(ended) = tasks.remove(&name) {
                if let Err(e) = ended.await {
                    eprintln!("rbd-wasm serve: job `{name}`'s task ended: {e}; starting it again");
                }
            }
            service.metrics.register_job(&name);
            tasks.insert(name.clone(), tokio::spawn(job_loop(service.clone(), name)));
        }
        tokio::select! {
            changed = config.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
            // A task that ends on its own (a panic) is reported and started again.
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// What came of trying a tick.
enum Tried {
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
        let due = latest_fired(&current.name, &spec, unix_now());
        let handled_tick = match handled {
            Some(t) => t,
            None => match service.start_tick(&current.name, &spec, due).await {
                Some(t) => *handled.insert(t),
                None => return,
            },
        };
        if let Some(tick) = due.filter(|t| *t > handled_tick) {
            match service.handle(&current.name, &spec, tick).await {
                Tried::Handled => handled = Some(tick),
                Tried::Superseded => {}
                Tried::Stopping => return,
            }
            continue;
        }
        // The next tick after those dealt with or fired; a tick whose jitter has not
        // passed yet is at most the jitter (and a second) old.
        let pending = unix_now().floor() as i64 - i64::try_from(spec.jitter.as_secs()).unwrap_or(i64::MAX / 2) - 1;
        let from = handled_tick.max(due.unwrap_or(i64::MIN)).max(pending);
        let wake = spec.schedule.next_after(from).map(|t| fire_time(&current.name, &spec, t));
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

impl Service {
    fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// The tick a job's task starts after ([`ticks::start_tick`]), from the job's lease
    /// state, read again until it can be (`None`: the service stopped first).
    async fn start_tick(&self, service: &str, spec: &JobSpec, due: Option<Tick>) -> Option<Tick> {
        let name = claim::lease_name(service, &spec.name);
        let mut stop = self.stop.subscribe();
        let mut warned: Option<Instant> = None;
        loop {
            let (leases, lease) = (self.leases.clone(), name.clone());
            match tokio::task::spawn_blocking(move || claim::current(&leases, &lease)).await {
                Ok(Ok(state)) => return Some(ticks::start_tick(state.as_ref(), spec.missed, due)),
                Ok(Err(e)) => warn_now(&mut warned, || format!("job `{}`: cannot read its lease: {e}", spec.name)),
                Err(e) => warn_now(&mut warned, || format!("job `{}`: {e}", spec.name)),
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.wait_for(|s| *s) => return None,
            }
        }
    }

    /// Claim `tick` of the job and run it, or find it dealt with; wait while another
    /// process holds the job's lease.
    async fn handle(self: &Arc<Self>, service: &str, spec: &JobSpec, tick: Tick) -> Tried {
        let mut stop = self.stop.subscribe();
        let name = claim::lease_name(service, &spec.name);
        let mut warned: Option<Instant> = None;
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return Tried::Stopping;
            }
            if latest_fired(service, spec, unix_now()).is_some_and(|t| t > tick) {
                return Tried::Superseded;
            }
            let permits = tokio::select! {
                permits = self.slots(&spec.pools) => permits,
                _ = stop.wait_for(|s| *s) => return Tried::Stopping,
            };
            let ttl = self.config().coordination.lease;
            let (leases, lease, holder) = (self.leases.clone(), name.clone(), self.holder.clone());
            let claimed = tokio::task::spawn_blocking(move || claim::claim(&leases, &lease, tick, &holder, ttl)).await;
            match claimed {
                Ok(Ok(Claim::Done)) => return Tried::Handled,
                Ok(Ok(Claim::Mine(held))) => return self.run_tick(spec, held, permits).await,
                Ok(Ok(Claim::Busy)) => {}
                Ok(Err(e)) => warn_now(&mut warned, || format!("job `{}`: cannot claim tick {}: {e}", spec.name, rfc3339(tick))),
                Err(e) => warn_now(&mut warned, || format!("job `{}`: claim failed: {e}", spec.name)),
            }
            drop(permits);
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.wait_for(|s| *s) => return Tried::Stopping,
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
    async fn run_tick(self: &Arc<Self>, spec: &JobSpec, held: Held, permits: Vec<OwnedSemaphorePermit>) -> Tried {
        let (tick, took_over) = (held.tick(), held.took_over());
        let cancel = Arc::new(Notify::new());
        let lost = Arc::new(AtomicBool::new(false));
        if took_over {
            self.metrics.took_over(&spec.name);
            eprintln!("rbd-wasm serve: job `{}`: taking tick {} over (its holder's lease ran out or was let go)", spec.name, rfc3339(tick));
        }
        let (leases, lease, ttl, valid_until) = held.keeper_parts();
        let keeper = {
            let (cancel, lost) = (cancel.clone(), lost.clone());
            tokio::spawn(Held::keep(leases, lease.clone(), ttl, valid_until, move || {
                lost.store(true, Ordering::SeqCst);
                eprintln!("rbd-wasm serve: the lease `{lease}` is lost: cancelling its run");
                cancel.notify_one();
            }))
        };
        self.metrics.running(1);
        let mut outcome = Outcome::Cancelled;
        let mut stop = self.stop.subscribe();
        for attempt in 1..=spec.retry.retries + 1 {
            if attempt > 1 {
                let wait = spec.retry.wait(attempt - 1);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => { outcome = Outcome::Cancelled; break }
                    _ = cancel.notified() => { outcome = Outcome::LeaseLost; break }
                }
            }
            self.running_mut().insert(spec.name.clone(), Running { tick, attempt, started: unix_now(), cancel: cancel.clone() });
            // A stop that looked at the runs just before this one was listed.
            if self.stopping.load(Ordering::SeqCst) || lost.load(Ordering::SeqCst) {
                cancel.notify_one();
            }
            let stops = attempt::Stops { cancel: &cancel, lease_lost: &lost };
            outcome = attempt::run(self, spec, tick, attempt, took_over, stops).await;
            if !outcome.retryable() {
                break;
            }
        }
        keeper.abort();
        drop(permits);
        let holder = self.holder.clone();
        let name = spec.name.clone();
        let tried = if outcome == Outcome::Cancelled && self.stopping.load(Ordering::SeqCst) {
            // Stopped mid-run: the lease goes with the tick still `running`, so another
            // process takes the tick over at once.
            let _ = tokio::task::spawn_blocking(move || held.abandon()).await;
            Tried::Stopping
        } else if lost.load(Ordering::SeqCst) {
            eprintln!("rbd-wasm serve: job `{name}`: lost its lease during tick {}; another process has the tick", rfc3339(tick));
            let _ = tokio::task::spawn_blocking(move || held.abandon()).await;
            Tried::Handled
        } else {
            match tokio::task::spawn_blocking(move || held.finish(&holder, outcome.as_str())).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => eprintln!("rbd-wasm serve: job `{name}`: tick {} was taken over meanwhile", rfc3339(tick)),
                Ok(Err(e)) => eprintln!("rbd-wasm serve: job `{name}`: cannot record tick {} done: {e}", rfc3339(tick)),
                Err(e) => eprintln!("rbd-wasm serve: job `{name}`: {e}"),
            }
            Tried::Handled
        };
        // Listed until the lease is let go: a stop waits for that.
        self.running_mut().remove(&spec.name);
        self.metrics.running(-1);
        tried
    }

    fn running_mut(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
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
            ("audit_log", old.audit_log != new.audit_log),
            ("[store]", old.store != new.store),
            ("[coordination] pool or namespace", old.coordination.pool != new.coordination.pool || old.coordination.namespace != new.coordination.namespace),
            ("[http]", old.http != new.http),
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

    /// Stop: no new runs, cancel the running ones, wait up to the grace time for them to
    /// end and let their leases go. A run that does not end in time keeps its lease until
    /// the lease runs out: another process must not start the tick while it may still
    /// write.
    async fn shut_down(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.send_replace(true);
        let grace = self.config().limits.shutdown_grace;
        let running: Vec<Arc<Notify>> = self.running_mut().values().map(|r| r.cancel.clone()).collect();
        if !running.is_empty() {
            eprintln!("rbd-wasm serve: stopping: cancelling {} run(s), waiting up to {grace:?}", running.len());
        }
        for cancel in &running {
            cancel.notify_one();
        }
        let deadline = Instant::now() + grace;
        while !self.running_mut().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left: Vec<String> = self.running_mut().keys().cloned().collect();
        if left.is_empty() {
            eprintln!("rbd-wasm serve: stopped");
        } else {
            eprintln!("rbd-wasm serve: {} run(s) did not end within {grace:?} ({}); exiting without them, their leases run out", left.len(), left.join(", "));
        }
    }

    /// `/status`: each job's schedule, next tick and run time, the run under way and the
    /// last runs.
    fn status(&self) -> serde_json::Value {
        let config = self.config();
        let now = unix_now();
        let running = self.running_mut();
        let jobs: Vec<serde_json::Value> = config
            .jobs
            .iter()
            .map(|spec| {
                let next = spec.schedule.next_after(now.floor() as i64);
                let last: Vec<RunRecord> = self.history.last(&spec.name, STATUS_RUNS);
                serde_json::json!({
                    "name": spec.name,
                    "manifest": spec.manifest_path,
                    "schedule": spec.schedule.describe(),
                    "jitter_secs": spec.jitter.as_secs_f64(),
                    "missed": spec.missed,
                    "next_tick": next.map(rfc3339),
                    "next_run": next.map(|t| rfc3339(fire_time(&config.name, spec, t).floor() as i64)),
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

/// Log `message` unless the last warning of this kind was less than [`WARN_EVERY`] ago (a
/// cluster out of reach would otherwise fill the log with a line a second per job).
fn warn_now(last: &mut Option<Instant>, message: impl FnOnce() -> String) {
    if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
        tracing::warn!("{}", message());
        *last = Some(Instant::now());
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "localhost".into())
}
