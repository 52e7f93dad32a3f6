//! The service's configuration file: TOML, `version = 1`. It is read whole and checked
//! whole (every job's manifest too) before anything of it is used, so a reload (SIGHUP)
//! with a broken file leaves the running configuration in force.
//!
//! ```toml
//! version = 1
//! name = "nightly"                    # the leases are named after it
//! state_dir = "/var/lib/rbd-wasm"     # run history (per host)
//! audit_log = "/var/log/rbd-wasm/audit.jsonl"   # every run's mutating calls and denials
//! [store]        conf = "/etc/ceph/ceph.conf"   # or `dir = ...` for the embedded store
//! [coordination] pool = "rbd"  lease = "60s"    # RADOS objects of the leases
//! [http]         listen = "127.0.0.1:9465"      # `token_file` required off loopback
//! [limits]       max_concurrent_runs = 4  shutdown_grace = "60s"  pools = { rbd = 2 }
//! [history]      keep_runs = 100                # per job
//! [[job]]
//! name = "backup"  manifest = "backup.toml"  schedule = "0 2 * * *"  jitter = "10m"
//! missed = "run-once"   retries = 2  backoff = "30s"  max_backoff = "10m"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rbd_wasm::manifest::Manifest;
use serde::Deserialize;

use super::schedule::Schedule;

/// The version of the schema this host reads.
pub const VERSION: u32 = 1;
/// Most runs at once a configuration may allow (the runtime's job slots).
pub const MAX_RUNS: usize = 128;

/// A configuration that was read and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub state_dir: PathBuf,
    /// Where every run's mutating RBD calls and denials are appended (as `run --audit-log`).
    pub audit_log: Option<PathBuf>,
    pub store: Store,
    pub coordination: Coordination,
    pub http: Http,
    pub limits: Limits,
    /// Runs of each job kept in the history.
    pub keep_runs: usize,
    pub jobs: Vec<JobSpec>,
}

/// Where the images are (as `rbd-wasm run`'s `--store`, `--conf`, `--id`, `--keyring`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    pub dir: Option<PathBuf>,
    pub conf: Option<PathBuf>,
    pub id: Option<String>,
    pub keyring: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Coordination {
    /// The RADOS pool (and namespace) of the lease objects (a cluster only).
    pub pool: String,
    pub namespace: String,
    /// How long a lease lasts unless renewed: a process that dies holding one blocks the
    /// job's next tick on the other hosts for at most this long.
    pub lease: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http {
    pub listen: SocketAddr,
    /// Required (a bearer token) when `listen` is not a loopback address.
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_concurrent_runs: usize,
    /// Most runs at once of jobs granted each pool.
    pub pools: BTreeMap<String, usize>,
    /// How long a stop (SIGTERM) waits for cancelled runs to end.
    pub shutdown_grace: Duration,
}

/// What to do with a tick that came while no process of the service was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Missed {
    /// Run the latest missed tick once, at start.
    RunOnce,
    /// Wait for the next tick.
    Skip,
}

#[derive(Debug, Clone)]
pub struct JobSpec {
    pub name: String,
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
    pub schedule: Schedule,
    pub jitter: Duration,
    pub missed: Missed,
    /// Replaces the manifest's arguments; `{job}`, `{tick}` and `{tick_unix}` are put in.
    pub args: Option<Vec<String>>,
    pub retry: Retry,
    /// The pools its grants name (for the per-pool limits).
    pub pools: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Further attempts after a failed one, within the same tick.
    pub retries: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Retry {
    /// The wait before attempt `n` (1 for the first retry): the backoff doubled each time,
    /// up to the maximum.
    pub fn wait(&self, n: u32) -> Duration {
        self.backoff.saturating_mul(1u32 << n.saturating_sub(1).min(20)).min(self.max_backoff)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    version: u32,
    name: String,
    state_dir: Option<PathBuf>,
    audit_log: Option<PathBuf>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    coordination: RawCoordination,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    history: RawHistory,
    #[serde(default, rename = "job")]
    jobs: Vec<RawJob>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    dir: Option<PathBuf>,
    conf: Option<PathBuf>,
    id: Option<String>,
    keyring: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCoordination {
    pool: Option<String>,
    namespace: Option<String>,
    lease: Option<Span>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_concurrent_runs: Option<usize>,
    #[serde(default)]
    pools: BTreeMap<String, usize>,
    shutdown_grace: Option<Span>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHistory {
    keep_runs: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: String,
    manifest: PathBuf,
    schedule: Option<String>,
    every: Option<Span>,
    start: Option<String>,
    jitter: Option<Span>,
    missed: Option<Missed>,
    args: Option<Vec<String>>,
    retries: Option<u32>,
    backoff: Option<Span>,
    max_backoff: Option<Span>,
}

/// A span of time: whole seconds, or text such as `90s`, `15m`, `6h`, `1d`, `1h30m`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Span {
    Seconds(u64),
    Text(String),
}

impl Span {
    fn get(&self, what: &str) -> Result<Duration, String> {
        match self {
            Span::Seconds(s) => Ok(Duration::from_secs(*s)),
            Span::Text(t) => parse_span(t).map_err(|e| format!("{what}: {e}")),
        }
    }
}

/// `1h30m`, `90s`, `2d`: numbers each followed by a unit (`s`, `m`, `h`, `d`).
pub fn parse_span(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a span of time (write it as 90s, 15m, 6h, 1d or 1h30m)");
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|s| total.checked_add(s)).ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || text.trim().is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// A name the service uses in lease object names, file names and metric labels.
fn check_name(name: &str, what: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("{what} `{name}`: use 1 to 64 letters, digits, `-` and `_`"))
    }
}

impl Config {
    /// Read and check the file at `path`. Relative paths in it are taken against its
    /// directory.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str, base: &Path) -> Result<Config, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| e.to_string())?;
        if raw.version != VERSION {
            return Err(format!("version {} is not supported: this rbd-wasm reads version {VERSION}", raw.version));
        }
        check_name(&raw.name, "the service's name")?;
        let state_dir = match raw.state_dir {
            Some(dir) => base.join(dir),
            None => default_state_dir()?,
        };
        let store = Store {
            dir: raw.store.dir.map(|d| base.join(d)),
            conf: raw.store.conf.map(|c| base.join(c)),
            id: raw.store.id,
            keyring: raw.store.keyring.map(|k| base.join(k)),
        };
        if store.dir.is_some() && store.conf.is_some() {
            return Err("store: give `dir` (the embedded store) or `conf` (a Ceph cluster), not both".into());
        }
        if store.conf.is_none() && (store.id.is_some() || store.keyring.is_some()) {
            return Err("store: `id` and `keyring` need `conf`".into());
        }
        let lease = raw.coordination.lease.map(|s| s.get("coordination.lease")).transpose()?.unwrap_or(Duration::from_secs(60));
        if lease < Duration::from_secs(3) || lease > Duration::from_secs(3600) {
            return Err("coordination.lease: between 3 seconds and an hour".into());
        }
        let coordination = Coordination {
            pool: raw.coordination.pool.unwrap_or_else(|| "rbd".into()),
            namespace: raw.coordination.namespace.unwrap_or_default(),
            lease,
        };
        let listen: SocketAddr = raw
            .http
            .listen
            .as_deref()
            .unwrap_or("127.0.0.1:9465")
            .parse()
            .map_err(|e| format!("http.listen: {e} (write it as 127.0.0.1:9465)"))?;
        let token = match raw.http.token_file {
            Some(file) => {
                let file = base.join(file);
                let token = std::fs::read_to_string(&file).map_err(|e| format!("http.token_file {}: {e}", file.display()))?;
                let token = token.trim().to_owned();
                if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(format!("http.token_file {}: the token must be one line of at least 16 characters", file.display()));
                }
                Some(token)
            }
            None => None,
        };
        if !listen.ip().is_loopback() && token.is_none() {
            return Err(format!("http.listen {listen} is not a loopback address: give http.token_file (a bearer token)"));
        }
        let max_concurrent_runs = raw.limits.max_concurrent_runs.unwrap_or(4);
        if !(1..=MAX_RUNS).contains(&max_concurrent_runs) {
            return Err(format!("limits.max_concurrent_runs: between 1 and {MAX_RUNS}"));
        }
        if let Some((pool, _)) = raw.limits.pools.iter().find(|(_, n)| !(1..=MAX_RUNS).contains(*n)) {
            return Err(format!("limits.pools.{pool}: between 1 and {MAX_RUNS}"));
        }
        let shutdown_grace =
            raw.limits.shutdown_grace.map(|s| s.get("limits.shutdown_grace")).transpose()?.unwrap_or(Duration::from_secs(60));
        if shutdown_grace > Duration::from_secs(3600) {
            return Err("limits.shutdown_grace: at most an hour".into());
        }
        let keep_runs = raw.history.keep_runs.unwrap_or(100);
        if !(1..=100_000).contains(&keep_runs) {
            return Err("history.keep_runs: between 1 and 100000".into());
        }
        let mut jobs: Vec<JobSpec> = Vec::new();
        for raw_job in raw.jobs {
            let job = job_spec(raw_job, base).map_err(|e| e.to_string())?;
            if jobs.iter().any(|j| j.name == job.name) {
                return Err(format!("job `{}` is named twice", job.name));
            }
            jobs.push(job);
        }
        if jobs.is_empty() {
            return Err("no [[job]]: name at least one job to schedule".into());
        }
        Ok(Config {
            name: raw.name,
            state_dir,
            audit_log: raw.audit_log.map(|p| base.join(p)),
            store,
            coordination,
            http: Http { listen, token },
            limits: Limits { max_concurrent_runs, pools: raw.limits.pools, shutdown_grace },
            keep_runs,
            jobs,
        })
    }

    pub fn job(&self, name: &str) -> Option<&JobSpec> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

fn job_spec(raw: RawJob, base: &Path) -> Result<JobSpec, String> {
    check_name(&raw.name, "job name")?;
    let at = |e: String| format!("job `{}`: {e}", raw.name);
    let manifest_path = base.join(&raw.manifest);
    let manifest = Manifest::load(&manifest_path).map_err(|e| at(e.to_string()))?;
    if manifest.component.is_none() {
        return Err(at(format!("the manifest {} names no `job.component`", manifest_path.display())));
    }
    if manifest.stdout_data {
        return Err(at("the manifest's stdout is data (`stdout_data`): a scheduled run has nowhere to send it".into()));
    }
    let schedule = match (&raw.schedule, &raw.every) {
        (Some(expr), None) => {
            if raw.start.is_some() {
                return Err(at("`start` goes with `every`; a calendar `schedule` says its own times".into()));
            }
            Schedule::calendar(expr).map_err(at)?
        }
        (None, Some(every)) => {
            let interval = every.get("every").map_err(at)?;
            let start = raw.start.as_deref().map(super::schedule::parse_time).transpose().map_err(|e| at(format!("start: {e}")))?;
            // Years 1970 to 9999: schedule arithmetic stays far from overflowing.
            if start.is_some_and(|s| !(0..=253_402_300_799).contains(&s)) {
                return Err(at("start: between 1970 and 9999".into()));
            }
            Schedule::every(interval, start.unwrap_or(0)).map_err(at)?
        }
        _ => return Err(at("give either `schedule` (a calendar expression) or `every` (an interval)".into())),
    };
    let jitter = raw.jitter.map(|s| s.get("jitter")).transpose().map_err(at)?.unwrap_or_default();
    if let Some(gap) = schedule.shortest_gap() {
        if jitter >= gap {
            return Err(at(format!("jitter {jitter:?} must be shorter than the time between ticks ({gap:?})")));
        }
    }
    let retry = Retry {
        retries: raw.retries.unwrap_or(0),
        backoff: raw.backoff.map(|s| s.get("backoff")).transpose().map_err(at)?.unwrap_or(Duration::from_secs(30)),
        max_backoff: raw.max_backoff.map(|s| s.get("max_backoff")).transpose().map_err(at)?.unwrap_or(Duration::from_secs(600)),
    };
    if retry.retries > 100 {
        return Err(at("retries: at most 100".into()));
    }
    if retry.max_backoff > Duration::from_secs(86400) || retry.backoff > retry.max_backoff {
        return Err(at("backoff: at most max_backoff, which is at most a day".into()));
    }
    let mut pools = manifest.grants.pools();
    pools.sort();
    pools.dedup();
    Ok(JobSpec {
        name: raw.name,
        manifest_path,
        manifest,
        schedule,
        jitter,
        missed: raw.missed.unwrap_or(Missed::RunOnce),
        args: raw.args,
        retry,
        pools,
    })
}

/// `$XDG_STATE_HOME/rbd-wasm` or `~/.local/state/rbd-wasm`.
fn default_state_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return Ok(PathBuf::from(dir).join("rbd-wasm"));
    }
    match std::env::var_os("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/rbd-wasm")),
        None => Err("no state_dir given, and neither XDG_STATE_HOME nor HOME is set".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_manifest(dir: &Path) {
        std::fs::write(dir.join("job.toml"), "schema = 1\n[job]\ncomponent = \"job.wasm\"\n[[grants]]\npool = \"rbd\"\noperations = [\"all\"]\n").unwrap();
    }

    fn parse(dir: &Path, text: &str) -> Result<Config, String> {
        Config::parse(&format!("version = 1\nname = \"svc\"\nstate_dir = \"state\"\n{text}"), dir)
    }

    #[test]
    fn spans() {
        assert_eq!(parse_span("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_span("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_span("2d").unwrap(), Duration::from_secs(172800));
        for bad in ["", "5", "m", "5x", "1.5h", "99999999999999999999d"] {
            assert!(parse_span(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_good_config_and_what_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_manifest(dir.path());
        let good = "[[job]]\nname = \"b\"\nmanifest = \"job.toml\"\nevery = \"3s\"\n";
        let config = parse(dir.path(), good).unwrap();
        assert_eq!(config.jobs[0].pools, vec!["rbd".to_string()]);
        assert_eq!(config.jobs[0].missed, Missed::RunOnce);
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:9465");
        let cases = [
            ("", "no [[job]]"),
            ("[[job]]\nname = \"b\"\nmanifest = \"job.toml\"\n", "either `schedule`"),
            ("[[job]]\nname = \"b\"\nmanifest = \"job.toml\"\nschedule = \"not cron\"\n", "job `b`"),
            ("[[job]]\nname = \"b\"\nmanifest = \"missing.toml\"\nevery = 5\n", "missing.toml"),
            ("[[job]]\nname = \"b c\"\nmanifest = \"job.toml\"\nevery = 5\n", "job name"),
            ("[[job]]\nname = \"b\"\nmanifest = \"job.toml\"\nevery = 5\njitter = \"5s\"\n", "jitter"),
            ("[http]\nlisten = \"0.0.0.0:9465\"\n", "token_file"),
            ("[limits]\nmax_concurrent_runs = 0\n", "max_concurrent_runs"),
            ("[coordination]\nlease = \"1s\"\n", "coordination.lease"),
            ("bogus = 1\n", "unknown field"),
        ];
        for (text, needle) in cases {
            let text = if text.starts_with("[[job]]") || text.is_empty() { text.to_string() } else { format!("{text}{good}") };
            let err = parse(dir.path(), &text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        let err = Config::parse("version = 2\nname = \"x\"\n", dir.path()).unwrap_err();
        assert!(err.contains("version 2"), "{err}");
    }

    #[test]
    fn retry_waits_double_up_to_the_maximum() {
        let r = Retry { retries: 5, backoff: Duration::from_secs(10), max_backoff: Duration::from_secs(60) };
        let waits: Vec<u64> = (1..=5).map(|n| r.wait(n).as_secs()).collect();
        assert_eq!(waits, vec![10, 20, 40, 60, 60]);
    }
}
