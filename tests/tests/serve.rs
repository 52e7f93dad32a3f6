//! `rbd-wasm serve`: two processes with one configuration run every job once per tick
//! between them, through leases on the store (RADOS objects on Ceph, flock'd files on the
//! embedded store); one killed mid-run is taken over once its lease runs out and leaves no
//! lock behind; a real Prometheus scrapes both and its API returns the runs; reloads with
//! a broken file keep the running configuration; SIGTERM stops within its grace time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rbd_wasm_tests::prometheus::{http_get, http_get_with, scalar_sum, Prometheus};
use rbd_wasm_tests::{ceph_conf, guest, host_binary, unique_prefix};
use serde_json::Value;

/// The schedule of the test jobs: a tick every 3 s.
const EVERY: i64 = 3;
/// The lease's time to live.
const LEASE: f64 = 6.0;

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

fn rbd(args: &[&str]) -> String {
    let out = Command::new("rbd").arg("-c").arg(ceph_conf()).args(args).output().expect("run rbd");
    assert!(out.status.success(), "rbd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rados(args: &[&str]) -> String {
    let out = Command::new("rados").arg("-c").arg(ceph_conf()).args(args).output().expect("run rados");
    assert!(out.status.success(), "rados {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A probe job's manifest: create the image `PREFIX-tTICK`, then hold on for `hold_ms`.
fn probe_manifest(dir: &Path, name: &str, prefix: &str, hold_ms: u64) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "schema = 1\n[job]\ncomponent = {:?}\nargs = [\"rbd\", {prefix:?}, \"{{tick_unix}}\", \"{hold_ms}\"]\n\
         [[grants]]\npool = \"rbd\"\nimages = \"{prefix}-t*\"\noperations = [\"all\"]\n",
        guest("tick-probe")
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// One `rbd-wasm serve` process, killed on drop.
struct Serve {
    child: Child,
    listen: String,
    state: PathBuf,
    log: PathBuf,
}

impl Serve {
    /// Start `rbd-wasm serve` on `config` with its own state directory, listening on a
    /// port of its choosing (read back from the line it prints), and wait until it answers.
    fn start(config: &Path, state: PathBuf) -> Serve {
        Serve::start_with(config, state, "127.0.0.1:0")
    }

    fn start_with(config: &Path, state: PathBuf, listen: &str) -> Serve {
        std::fs::create_dir_all(&state).unwrap();
        let log = state.with_extension("log");
        let child = Command::new(host_binary())
            .args(["serve", "--config"])
            .arg(config)
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", listen])
            .env("RBD_WASM_CACHE", rbd_wasm_tests::test_cache_dir())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start rbd-wasm serve");
        let mut serve = Serve { child, listen: String::new(), state, log };
        let started = Instant::now();
        loop {
            if let Some(status) = serve.child.try_wait().unwrap() {
                panic!("serve exited with {status}:\n{}", serve.log_text());
            }
            let log = serve.log_text();
            if let Some(at) = log.find("http://") {
                let rest = &log[at + "http://".len()..];
                serve.listen = rest[..rest.find('/').unwrap()].to_owned();
                if http_get(&serve.listen, "/healthz").ok().map(|(s, _)| s) == Some(200) {
                    return serve;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(60), "serve did not come up:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status(&self) -> Value {
        let (code, body) = http_get(&self.listen, "/status").expect("GET /status");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// The tick of `job` this process runs now, if it runs one.
    fn running(&self, job: &str) -> Option<String> {
        let status = self.status();
        let job = status["jobs"].as_array()?.iter().find(|j| j["name"] == job)?.clone();
        job["running"]["tick"].as_str().map(str::to_owned)
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// SIGTERM, and the time it took to exit (asserted successful).
    fn stop(mut self) -> Duration {
        let started = Instant::now();
        self.signal("TERM");
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "serve did not stop:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "serve exited with {status}:\n{}", self.log_text());
        started.elapsed()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every record of the history files in `states`.
fn history(states: &[&Path]) -> Vec<Value> {
    let mut records = Vec::new();
    for state in states {
        let Ok(text) = std::fs::read_to_string(state.join("history.jsonl")) else { continue };
        // The last line may be in the middle of being written: whole lines only.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        records.extend(whole.lines().map(|l| serde_json::from_str::<Value>(l).expect("a history line parses")));
    }
    records
}

/// The ticks of `job` that succeeded, with how many times each did.
fn successes(records: &[Value], job: &str) -> BTreeMap<i64, usize> {
    let mut ticks = BTreeMap::new();
    for r in records.iter().filter(|r| r["job"] == job && r["outcome"] == "success") {
        *ticks.entry(r["tick"].as_i64().unwrap()).or_insert(0) += 1;
    }
    ticks
}

/// Each tick from the first success to the last succeeded exactly once, but for ticks in
/// `gap` (seconds), which may be missing.
fn assert_once_per_tick(records: &[Value], job: &str, gap: Option<(f64, f64)>, at_least: usize) -> BTreeMap<i64, usize> {
    let ticks = successes(records, job);
    let twice: Vec<_> = ticks.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "job {job}: ticks that ran more than once: {twice:?}");
    assert!(ticks.len() >= at_least, "job {job}: {} ticks ran, wanted at least {at_least}: {ticks:?}", ticks.len());
    let (first, last) = (*ticks.keys().next().unwrap(), *ticks.keys().last().unwrap());
    let missing: Vec<i64> = (first..=last)
        .step_by(EVERY as usize)
        .filter(|t| !ticks.contains_key(t))
        .filter(|t| !gap.is_some_and(|(from, to)| (*t as f64) >= from && (*t as f64) <= to))
        .collect();
    assert!(missing.is_empty(), "job {job}: ticks that never ran: {missing:?} (gap allowed: {gap:?}); ran: {ticks:?}");
    ticks
}

#[test]
fn two_services_on_ceph_run_each_tick_once_survive_a_kill_and_prometheus_sees_the_runs() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("serve");
    let jobs = ["probe-a", "probe-b"];
    for job in jobs {
        probe_manifest(dir.path(), job, &format!("{prefix}-{job}"), 1200);
    }
    let service = prefix.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
    let config = dir.path().join("serve.toml");
    let mut text = format!(
        "version = 1\nname = {service:?}\nstate_dir = \"unused\"\n[store]\nconf = {:?}\n\
         [coordination]\npool = \"rbd\"\nlease = \"{LEASE}s\"\n[limits]\nshutdown_grace = \"20s\"\n",
        ceph_conf()
    );
    for job in jobs {
        text += &format!("[[job]]\nname = {job:?}\nmanifest = \"{job}.toml\"\nevery = {EVERY}\n");
    }
    std::fs::write(&config, text).unwrap();

    let a = Serve::start(&config, dir.path().join("a"));
    let b = Serve::start(&config, dir.path().join("b"));
    let prometheus = Prometheus::start(
        &dir.path().join("prometheus"),
        &[("serve-a", a.listen.clone(), None), ("serve-b", b.listen.clone(), None)],
        Duration::from_secs(1),
    );
    let states = [a.state.clone(), b.state.clone()];
    let state_refs: Vec<&Path> = states.iter().map(PathBuf::as_path).collect();

    // Eight ticks of probe-a, then kill whichever process is in the middle of one.
    let started = Instant::now();
    while successes(&history(&state_refs), "probe-a").len() < 8 {
        assert!(started.elapsed() < Duration::from_secs(90), "no runs:\n{}\n{}", a.log_text(), b.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let (victim, survivor) = loop {
        if a.running("probe-a").is_some() {
            break (a, b);
        }
        if b.running("probe-a").is_some() {
            break (b, a);
        }
        assert!(Instant::now() < deadline, "no run of probe-a under way");
        std::thread::sleep(Duration::from_millis(50));
    };
    let survivor_state = survivor.state.clone();
    let mut victim = victim;
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let killed_at = unix_now();

    // At least 24 ticks in all.
    let deadline = Instant::now() + Duration::from_secs(120);
    while successes(&history(&state_refs), "probe-a").len() < 24 || successes(&history(&state_refs), "probe-b").len() < 24 {
        assert!(Instant::now() < deadline, "too few runs after the kill:\n{}", survivor.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }

    // Prometheus scraped the survivor's runs: its count of successes is the survivor's
    // history's (the killed one's last runs may have gone unscraped); both processes and
    // both jobs are there.
    let instance = survivor.listen.clone();
    let query = format!("sum(rbd_wasm_runs_total{{outcome=\"success\",instance=\"{instance}\"}})");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let made: usize = jobs.iter().map(|j| successes(&history(&[&survivor_state]), j).values().sum::<usize>()).sum();
        let seen = scalar_sum(&prometheus.query(&query));
        if seen == Some(made as f64) {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus sees {seen:?} successful runs, the history {made}\n{}", prometheus.targets());
        std::thread::sleep(Duration::from_millis(300));
    }
    let by = prometheus.query("count by (instance, job_name) (max_over_time(rbd_wasm_runs_total{outcome=\"success\"}[15m]))");
    assert_eq!(by["data"]["result"].as_array().map(Vec::len), Some(4), "{by}");
    let all = scalar_sum(&prometheus.query("sum(max_over_time(rbd_wasm_runs_total{outcome=\"success\"}[15m]))")).unwrap();
    let made: usize = jobs.iter().map(|j| successes(&history(&state_refs), j).values().sum::<usize>()).sum();
    assert!(all <= made as f64 && all >= made as f64 - 4.0, "Prometheus saw {all} runs of {made}");

    let stop_time = survivor.stop();
    assert!(stop_time < Duration::from_secs(10), "SIGTERM took {stop_time:?}");
    // No lease left held (looked at at once, before a forgotten one could run out): the
    // killed process's ran out and was taken over, the survivor let its own go.
    for job in jobs {
        let object = format!("rbd-wasm-serve.{service}.{job}");
        let lease: Value = serde_json::from_str(&rados(&["-p", "rbd", "lock", "info", &object, "rbd-wasm-lease"])).unwrap();
        assert_eq!(lease["lockers"], serde_json::json!([]), "job {job}: the lease is still held: {lease}");
    }

    let records = history(&state_refs);
    let images: Vec<String> = serde_json::from_str::<Vec<String>>(&rbd(&["ls", "--format", "json", "rbd"]))
        .unwrap()
        .into_iter()
        .filter(|name| name.starts_with(&format!("{prefix}-")))
        .collect();
    // The ticks from the kill until the lease ran out (and the survivor's poll, and the
    // run it was holding) may be missing; no other.
    let gap = (killed_at - EVERY as f64, killed_at + LEASE + 1.0 + 1.2 + 2.0 * EVERY as f64);
    for job in jobs {
        let ticks = assert_once_per_tick(&records, job, Some(gap), 20);
        let after_kill = ticks.keys().find(|t| **t as f64 > killed_at).copied();
        assert!(
            after_kill.is_some_and(|t| (t as f64) <= killed_at + LEASE + 2.0 * EVERY as f64),
            "job {job}: the first tick after the kill at {killed_at} was {after_kill:?}"
        );
        // The images the job made: one for every tick that succeeded, and at most the
        // killed run's and the one stopped by SIGTERM besides.
        let marks: BTreeSet<i64> = images
            .iter()
            .filter_map(|name| name.strip_prefix(&format!("{prefix}-{job}-t"))?.parse().ok())
            .collect();
        for tick in ticks.keys() {
            assert!(marks.contains(tick), "job {job}: tick {tick} succeeded without its image");
        }
        assert!(marks.len() <= ticks.len() + 2, "job {job}: {} images for {} ticks", marks.len(), ticks.len());
    }
    for image in images {
        let _ = Command::new("rbd").arg("-c").arg(ceph_conf()).args(["rm", "--no-progress", &format!("rbd/{image}")]).status();
    }
    for job in jobs {
        let _ = Command::new("rados").arg("-c").arg(ceph_conf()).args(["-p", "rbd", "rm", &format!("rbd-wasm-serve.{service}.{job}")]).status();
    }
}

#[test]
fn on_the_embedded_store_two_services_share_ticks_reload_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let backend = rbd_wasm::backend::embedded::EmbeddedBackend::open(&store).unwrap();
    for job in ["one", "two"] {
        probe_manifest(dir.path(), job, job, 300);
    }
    let config = dir.path().join("serve.toml");
    let base = format!(
        "version = 1\nname = \"local\"\nstate_dir = \"unused\"\naudit_log = \"audit.jsonl\"\n[store]\ndir = {store:?}\n[limits]\nshutdown_grace = \"10s\"\n\
         [[job]]\nname = \"one\"\nmanifest = \"one.toml\"\nevery = {EVERY}\n"
    );
    std::fs::write(&config, &base).unwrap();

    // A configuration that does not check is refused with the reason.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, base.replace("every = 3", "every = 3\nschedule = \"0 2 * * *\"")).unwrap();
    let out = Command::new(host_binary()).args(["serve", "--check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("either `schedule`"), "{}", String::from_utf8_lossy(&out.stderr));

    let a = Serve::start(&config, dir.path().join("a"));
    let b = Serve::start(&config, dir.path().join("b"));
    let states = [a.state.clone(), b.state.clone()];
    let state_refs: Vec<&Path> = states.iter().map(PathBuf::as_path).collect();
    let wait_for = |job: &str, n: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while successes(&history(&state_refs), job).len() < n {
            assert!(Instant::now() < deadline, "{what}:\n{}\n{}", a.log_text(), b.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for("one", 4, "job one did not run");

    // A broken file on SIGHUP: refused, and the running configuration goes on.
    std::fs::write(&config, "version = 1\nname = \"local\"\n[[job]]\nname = \"one\"\n").unwrap();
    a.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.log_text().contains("reload refused") {
        assert!(Instant::now() < deadline, "no refusal:\n{}", a.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let ran = successes(&history(&state_refs), "one").len();
    wait_for("one", ran + 3, "job one stopped after a refused reload");

    // One that changes what needs a restart: refused too.
    std::fs::write(&config, base.replace("name = \"local\"", "name = \"other\"")).unwrap();
    a.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.log_text().contains("changing name needs a restart") {
        assert!(Instant::now() < deadline, "no refusal:\n{}", a.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }

    // A good one adds a job.
    std::fs::write(&config, format!("{base}[[job]]\nname = \"two\"\nmanifest = \"two.toml\"\nevery = {EVERY}\n")).unwrap();
    a.signal("HUP");
    b.signal("HUP");
    wait_for("two", 4, "the job added by the reload did not run");
    let (code, metrics) = http_get(&a.listen, "/metrics").unwrap();
    assert_eq!(code, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("rbd_wasm_config_reloads_total{outcome=\"refused\"} 2"), "{metrics}");
    assert!(metrics.contains("rbd_wasm_config_reloads_total{outcome=\"success\"} 1"), "{metrics}");
    assert!(metrics.contains("rbd_wasm_host_resident_memory_bytes "), "{metrics}");
    let (code, _) = http_get_with(&a.listen, "/status", Some("not-needed-on-loopback")).unwrap();
    assert_eq!(code, 200);

    let (ta, tb) = (a.stop(), b.stop());
    assert!(ta < Duration::from_secs(5) && tb < Duration::from_secs(5), "SIGTERM took {ta:?} and {tb:?}");
    let records = history(&state_refs);
    assert_once_per_tick(&records, "one", None, 9);
    assert_once_per_tick(&records, "two", None, 4);
    // The runs' mutating calls are in the audit log the configuration names.
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let creates = audit.lines().filter(|l| l.contains("\"job\":\"one\"") && l.contains("\"method\":\"create\"")).count();
    assert!(creates >= 9, "{creates} creates of job one audited:\n{audit}");
    // Every tick the processes ran is recorded done in the lease state.
    let leases = backend.leases("test").unwrap();
    use rbd_wasm::backend::Leases;
    for job in ["one", "two"] {
        let state: Value = serde_json::from_slice(&leases.state(&format!("rbd-wasm-serve.local.{job}")).unwrap()).unwrap();
        let last = *successes(&records, job).keys().last().unwrap();
        assert!(state["status"] == "done" && state["tick"].as_i64().unwrap() >= last, "{job}: {state}");
    }
    // A process's history survives its restart (one that ran job one: which of the two
    // won the ticks is up to the race for the lease).
    let ran = states.iter().find(|s| !successes(&history(&[s.as_path()]), "one").is_empty()).expect("someone ran job one");
    let runs = history(&[ran.as_path()]).iter().filter(|r| r["job"] == "one").count();
    let again = Serve::start(&config, ran.clone());
    let status = again.status();
    let one = status["jobs"].as_array().unwrap().iter().find(|j| j["name"] == "one").unwrap();
    assert_eq!(one["last_runs"].as_array().unwrap().len(), runs.min(10), "{status}");
}

#[test]
fn off_loopback_the_endpoint_wants_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    probe_manifest(dir.path(), "one", "one", 0);
    let token = "s3cret-token-of-some-length";
    std::fs::write(dir.path().join("token"), token).unwrap();
    let config = dir.path().join("serve.toml");
    let text = format!(
        "version = 1\nname = \"t\"\n[store]\ndir = {store:?}\n[http]\nlisten = \"0.0.0.0:9465\"\n\
         [[job]]\nname = \"one\"\nmanifest = \"one.toml\"\nschedule = \"0 2 * * *\"\n"
    );
    std::fs::write(&config, &text).unwrap();
    let out = Command::new(host_binary()).args(["serve", "--check", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token_file"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&config, text.replace("[[job]]", "token_file = \"token\"\n[[job]]")).unwrap();
    // Off loopback (any address, a port of its choosing): /healthz for anyone, the rest
    // for the token's holder.
    let serve = Serve::start_with(&config, dir.path().join("state"), "0.0.0.0:0");
    let authority = serve.listen.replace("0.0.0.0", "127.0.0.1");
    assert_eq!(http_get(&authority, "/metrics").unwrap().0, 401);
    assert_eq!(http_get_with(&authority, "/status", Some("wrong-token-of-some-length")).unwrap().0, 401);
    assert_eq!(http_get_with(&authority, "/metrics", Some(token)).unwrap().0, 200);
    assert_eq!(http_get_with(&authority, "/status", Some(token)).unwrap().0, 200);
    serve.stop();
}

/// The ```toml block of README.md that starts with `first_line`.
fn readme_block(first_line: &str) -> String {
    let readme = std::fs::read_to_string(rbd_wasm_tests::workspace_root().join("README.md")).unwrap();
    let start = readme.find(&format!("```toml\n{first_line}\n")).unwrap_or_else(|| panic!("README.md has no block {first_line}"));
    let body = &readme[start + "```toml\n".len()..];
    body[..body.find("```").unwrap()].to_owned()
}

/// The README's `serve` configuration, with its paths moved into a scratch directory, the
/// test cluster's configuration, a fresh image for `vm-1` and ticks every few seconds: it
/// backs the image up (dedup) and rotates its snapshots (snap-rotate) on schedule.
#[test]
fn the_readmes_serve_configuration_backs_up_and_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(etc.join("dedup")).unwrap();
    let image = unique_prefix("readme-vm");
    rbd(&["create", "--size", "8M", "--image-feature", "layering", &format!("rbd/{image}")]);
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let place = |text: String| {
        text.replace("/etc/rbd-wasm/", &format!("{}/", etc.display()))
            .replace("/usr/lib/rbd-wasm/dedup.wasm", &guest("dedup").display().to_string())
            .replace("/usr/lib/rbd-wasm/snap_rotate.wasm", &guest("snap-rotate").display().to_string())
            .replace("/var/backups/rbd-dedup", &repo.display().to_string())
            .replace("/var/lib/rbd-wasm", &dir.path().join("state").display().to_string())
            .replace("/var/log/rbd-wasm", &dir.path().display().to_string())
            .replace("/etc/ceph/ceph.conf", &ceph_conf().display().to_string())
            .replace("vm-1", &image)
    };
    let service = format!("readme-{}", std::process::id());
    let serve = place(readme_block("# /etc/rbd-wasm/serve.toml"))
        .replace("name = \"backups\"", &format!("name = {service:?}"))
        .replace("schedule = \"0 1 * * *\"", "every = 4")
        .replace("jitter = \"15m\"", "")
        .replace("every = \"1h\"", "every = 4");
    std::fs::write(etc.join("serve.toml"), serve).unwrap();
    std::fs::write(etc.join("dedup.toml"), place(readme_block("# /etc/rbd-wasm/dedup.toml"))).unwrap();
    std::fs::write(etc.join("snap-rotate.toml"), place(readme_block("# /etc/rbd-wasm/snap-rotate.toml"))).unwrap();
    for secret in ["passphrase", "access-key", "secret-key"] {
        std::fs::write(etc.join("dedup").join(secret), "a passphrase for the test").unwrap();
    }
    let config = etc.join("serve.toml");
    let check = Command::new(host_binary()).args(["serve", "--check", "--config"]).arg(&config).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let init = Command::new(host_binary())
        .args(["run", "-c"])
        .arg(ceph_conf())
        .arg("--manifest")
        .arg(etc.join("dedup.toml"))
        .args(["--", "init"])
        .output()
        .unwrap();
    assert!(init.status.success(), "dedup init: {}", String::from_utf8_lossy(&init.stderr));

    let serve = Serve::start(&config, dir.path().join("state"));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let records = history(&[&serve.state]);
        let ok = |job: &str| successes(&records, job).len() >= 2;
        if ok(&format!("backup-{image}")) && ok(&format!("rotate-{image}")) {
            break;
        }
        let failed: Vec<&Value> = records.iter().filter(|r| r["outcome"] != "success").collect();
        assert!(failed.is_empty(), "runs failed: {failed:?}\n{}", serve.log_text());
        assert!(Instant::now() < deadline, "the README's jobs did not run:\n{}", serve.log_text());
        std::thread::sleep(Duration::from_millis(300));
    }
    serve.stop();
    // Backups in the repository (one manifest each) and the rotation's snapshots on the image.
    let backups = std::fs::read_dir(repo.join("backups").join("rbd").join(&image)).map(|d| d.count()).unwrap_or(0);
    assert!(backups > 0, "no backup in {}", repo.display());
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(audit.contains(&format!("\"job\":\"backup-{image}\"")), "{audit}");
    let snaps = rbd(&["snap", "ls", &format!("rbd/{image}")]);
    assert!(snaps.contains("autosnap_") && snaps.contains("_hourly"), "{snaps}");
    let _ = Command::new("rbd").arg("-c").arg(ceph_conf()).args(["snap", "purge", "--no-progress", &format!("rbd/{image}")]).status();
    let _ = Command::new("rbd").arg("-c").arg(ceph_conf()).args(["rm", "--no-progress", &format!("rbd/{image}")]).status();
}

/// SIGTERM in the middle of a run: the run is cancelled through the host, the process
/// exits at once, and the other process takes the tick over without waiting for a lease to
/// run out.
#[test]
fn sigterm_mid_run_hands_the_tick_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    probe_manifest(dir.path(), "long", "long", 8000);
    let config = dir.path().join("serve.toml");
    let text = format!(
        "version = 1\nname = \"handover\"\n[store]\ndir = {store:?}\n[limits]\nshutdown_grace = \"20s\"\n\
         [[job]]\nname = \"long\"\nmanifest = \"long.toml\"\nevery = 12\n"
    );
    std::fs::write(&config, text).unwrap();
    let a = Serve::start(&config, dir.path().join("a"));
    let b = Serve::start(&config, dir.path().join("b"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let (holder, other, tick) = loop {
        if let Some(tick) = a.running("long") {
            break (a, b, tick);
        }
        if let Some(tick) = b.running("long") {
            break (b, a, tick);
        }
        assert!(Instant::now() < deadline, "no run started");
        std::thread::sleep(Duration::from_millis(100));
    };
    let holder_state = holder.state.clone();
    let took = holder.stop();
    assert!(took < Duration::from_secs(5), "SIGTERM mid-run took {took:?}");
    let handed = Instant::now();
    while other.running("long").as_deref() != Some(tick.as_str()) {
        assert!(handed.elapsed() < Duration::from_secs(5), "tick {tick} was not taken over:\n{}", other.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let records = loop {
        let records = history(&[&holder_state, &other.state]);
        if !successes(&records, "long").is_empty() {
            break records;
        }
        assert!(Instant::now() < deadline, "the taken-over run did not end:\n{}", other.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    let cancelled: Vec<&Value> = records.iter().filter(|r| r["outcome"] == "cancelled").collect();
    assert_eq!(cancelled.len(), 1, "{records:?}");
    let done: Vec<&Value> = records.iter().filter(|r| r["outcome"] == "success").collect();
    assert_eq!(done.len(), 1, "{records:?}");
    assert_eq!(done[0]["tick_time"], tick.as_str());
    assert_eq!(done[0]["took_over"], true);
    assert_eq!(cancelled[0]["tick"], done[0]["tick"]);
}

/// The peak resident memory of a process (the kernel's VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
}

/// Hostile jobs on a schedule (many huge progress labels, a 64 MiB failure message retried,
/// a 256 MiB line of output): what the service keeps of them (history, `/status`, its log, its
/// memory) stays bounded however many ticks pass.
#[test]
fn hostile_jobs_on_a_schedule_cost_the_service_a_bounded_amount() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let attacks = [
        ("labels", "report_progress_with_huge_and_many_labels"),
        ("failure", "fail_with_a_huge_message"),
        ("flood", "print_a_huge_line"),
    ];
    let mut text = format!(
        "version = 1\nname = \"hostile\"\n[store]\ndir = {store:?}\n[limits]\nmax_concurrent_runs = 2\n[history]\nkeep_runs = 3\n"
    );
    for (job, attack) in attacks {
        std::fs::write(
            dir.path().join(format!("{job}.toml")),
            format!(
                "schema = 1\n[job]\ncomponent = {:?}\nargs = [{attack:?}, \"h\"]\n[[grants]]\npool = \"rbd\"\nimages = \"h-job-*\"\n\
                 operations = [\"all\"]\n[limits]\nmemory_mib = 256\noutput_bytes = 1048576\n",
                guest("hostile")
            ),
        )
        .unwrap();
        text += &format!("[[job]]\nname = {job:?}\nmanifest = \"{job}.toml\"\nevery = 2\nretries = 1\nbackoff = \"1s\"\n");
    }
    let config = dir.path().join("serve.toml");
    std::fs::write(&config, text).unwrap();
    let serve = Serve::start(&config, dir.path().join("state"));
    let pid = serve.child.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Attempts as the metrics count them (the history keeps the last 3 of each job).
    let attempts_of = |job: &str| -> usize {
        let (_, metrics) = http_get(&serve.listen, "/metrics").unwrap();
        let metrics = String::from_utf8(metrics).unwrap();
        let prefix = format!("rbd_wasm_runs_total{{job_name=\"{job}\",");
        metrics.lines().filter(|l| l.starts_with(&prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok()).sum()
    };
    loop {
        let attempts = |job: &str| attempts_of(job);
        // The flood takes seconds a run (its ticks coalesce); the others a fraction of one.
        if attempts("labels") >= 8 && attempts("failure") >= 8 && attempts("flood") >= 3 {
            break;
        }
        let counts: Vec<(&str, usize)> = attacks.iter().map(|(job, _)| (*job, attempts(job))).collect();
        assert!(Instant::now() < deadline, "too few runs: {counts:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let records = history(&[&serve.state]);
    // 3 runs of each job kept; the file is compacted at twice that.
    assert!(records.len() <= 19, "the history file holds {} records", records.len());
    assert!(records.iter().any(|r| r["job"] == "failure" && r["outcome"] == "failed" && r["attempt"] == 2), "no retry recorded");
    assert!(records.iter().any(|r| r["job"] == "labels" && r["outcome"] == "success"));
    let history_bytes = std::fs::metadata(serve.state.join("history.jsonl")).unwrap().len();
    assert!(history_bytes < 512 << 10, "the history holds {history_bytes} bytes");
    let (_, status) = http_get(&serve.listen, "/status").unwrap();
    assert!(status.len() < 512 << 10, "/status is {} bytes", status.len());
    let rss = peak_rss(pid);
    assert!(rss < 512 << 20, "the service's peak RSS is {rss} bytes");
    let log = serve.log_text().len();
    let runs: usize = attacks.iter().map(|(job, _)| attempts_of(job)).sum();
    serve.stop();
    // Each run's output is cut at its 1 MiB per stream; the failure message at 4 KiB.
    assert!(log < runs * (3 << 20), "{log} bytes of log for {runs} runs");
}

/// A lease broken under a run (an operator's `rados lock break`, or a lease that ran out
/// while the process stalled): the renewal finds it gone, the run is cancelled and
/// recorded `lease-lost`, and the next tick runs as usual.
#[test]
fn a_run_whose_lease_is_broken_stops() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("lost");
    probe_manifest(dir.path(), "held", &prefix, 20_000);
    let service = prefix.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nname = {service:?}\n[store]\nconf = {:?}\n[coordination]\npool = \"rbd\"\nlease = \"6s\"\n\
             [[job]]\nname = \"held\"\nmanifest = \"held.toml\"\nevery = 12\n",
            ceph_conf()
        ),
    )
    .unwrap();
    let serve = Serve::start(&config, dir.path().join("state"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while serve.running("held").is_none() {
        assert!(Instant::now() < deadline, "no run started:\n{}", serve.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let object = format!("rbd-wasm-serve.{service}.held");
    let info: Value = serde_json::from_str(&rados(&["-p", "rbd", "lock", "info", &object, "rbd-wasm-lease"])).unwrap();
    let locker = &info["lockers"][0];
    let (client, cookie) = (locker["name"].as_str().unwrap(), locker["cookie"].as_str().unwrap());
    let broken = Instant::now();
    rados(&["-p", "rbd", "lock", "break", &object, "rbd-wasm-lease", client, "--lock-cookie", cookie]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let lost = loop {
        let records = history(&[&serve.state]);
        if let Some(r) = records.iter().find(|r| r["outcome"] == "lease-lost") {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "the run went on without its lease:\n{}", serve.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    // Renewals come every third of the lease: the run stopped within one (and the cancel).
    assert!(broken.elapsed() < Duration::from_secs(6), "the run stopped {:?} after its lease was broken", broken.elapsed());
    assert!(serve.log_text().contains("is lost"), "{}", serve.log_text());
    serve.stop();
    assert_eq!(lost["job"], "held");
    let images: Vec<String> = serde_json::from_str(&rbd(&["ls", "--format", "json", "rbd"])).unwrap();
    for image in images.iter().filter(|n| n.starts_with(&format!("{prefix}-"))) {
        let _ = Command::new("rbd").arg("-c").arg(ceph_conf()).args(["rm", "--no-progress", &format!("rbd/{image}")]).status();
    }
    let _ = Command::new("rados").arg("-c").arg(ceph_conf()).args(["-p", "rbd", "rm", &object]).status();
}

/// Ticks that came while no process served the configuration: `run-once` runs the latest
/// of them at start, `skip` waits for the next tick.
#[test]
fn missed_ticks_run_once_or_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    for job in ["once", "skipped"] {
        probe_manifest(dir.path(), job, job, 0);
    }
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nname = \"missed\"\n[store]\ndir = {store:?}\n\
             [[job]]\nname = \"once\"\nmanifest = \"once.toml\"\nevery = 4\nmissed = \"run-once\"\n\
             [[job]]\nname = \"skipped\"\nmanifest = \"skipped.toml\"\nevery = 4\nmissed = \"skip\"\n"
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let serve = Serve::start(&config, state.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while ["once", "skipped"].iter().any(|job| successes(&history(&[&state]), job).is_empty()) {
        assert!(Instant::now() < deadline, "no runs:\n{}", serve.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    serve.stop();
    // Down for two ticks or more, and started again just after a tick (ticks fall on
    // multiples of 4 s), so no tick comes while it starts.
    std::thread::sleep(Duration::from_secs(9));
    while !(0.5..1.0).contains(&(unix_now() % 4.0)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let restarted_at = unix_now();
    let serve = Serve::start(&config, state.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = |job: &str| -> Vec<i64> {
        let records = history(&[&state]);
        successes(&records, job).into_keys().filter(|t| records.iter().any(|r| r["tick"] == *t && r["started"].as_f64().unwrap() >= restarted_at)).collect()
    };
    while after("once").is_empty() || after("skipped").is_empty() {
        assert!(Instant::now() < deadline, "no runs after the restart:\n{}", serve.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    serve.stop();
    let (once, skipped) = (after("once"), after("skipped"));
    assert!(once[0] as f64 <= restarted_at, "run-once did not run the missed tick: {once:?} (restarted at {restarted_at})");
    assert!(once[0] as f64 > restarted_at - 4.0, "run-once ran an older tick than the latest: {once:?}");
    assert!(skipped[0] as f64 > restarted_at, "skip ran a missed tick: {skipped:?} (restarted at {restarted_at})");
}
