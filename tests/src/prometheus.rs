//! A real Prometheus for the tests of `rbd-wasm serve`'s `/metrics`: it scrapes the service
//! the way an operator's would, so a test checks that the exposition parses and that the
//! numbers add up through PromQL, not only that some text came back.
//!
//! The binary is Debian's (`/usr/bin/prometheus`, 2.42.x), which
//! `scripts/install-prometheus.sh` installs without letting its own service start. Each
//! [`Prometheus`] is a private instance: its config, its TSDB and its log in a directory of
//! the test's, on a free loopback port, killed when dropped.
//!
//! Talking to it uses only std and serde_json: a minimal HTTP/1.1 GET (one request per
//! connection, `Connection: close`, read to the end), which is all the query API needs and
//! keeps the tests crate free of an HTTP client. Prometheus answers large bodies (a
//! `/api/v1/targets`, a query with many series) with `Transfer-Encoding: chunked`, so that
//! is decoded; compression never comes, since no `Accept-Encoding` is sent.
//!
//! Timing: `/-/ready` turns 200 before any target is scraped. Prometheus hands discovered
//! targets to its scrape manager at most every 5 s, so the first scrape comes 5-6 s after
//! readiness (seen with 2.42.0), and then once per scrape interval. Give
//! [`Prometheus::wait_for`] 15 s or more for a first sample.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary the Debian package installs.
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";

/// How long [`Prometheus::start`] waits for `/-/ready`: it replays an empty TSDB, which
/// takes milliseconds, but a loaded CI machine can be slow to exec a 100 MB binary.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How often [`Prometheus::wait_for`] asks again.
const POLL: Duration = Duration::from_millis(500);

/// A running Prometheus on 127.0.0.1, killed (and reaped) when dropped.
pub struct Prometheus {
    /// `127.0.0.1:PORT`, its web and API address.
    pub authority: String,
    /// Its stdout and stderr (Prometheus logs to stderr).
    pub log: PathBuf,
    child: Child,
}

impl Prometheus {
    /// Start a Prometheus in `dir` (its `prometheus.yml`, its TSDB in `data/`, its log in
    /// `prometheus.log`) that scrapes each of `scrape_targets` every `scrape_interval`, and
    /// wait until it is ready.
    ///
    /// Each target is `(job name, "host:port", bearer token)`: a scrape config of its own
    /// named after the job (so the series carry `job="NAME"`), scraping `/metrics` over
    /// plain HTTP, with `Authorization: Bearer TOKEN` when a token is given.
    ///
    /// The port is a free one picked by binding port 0 and letting go, so another process
    /// can take it in between; if Prometheus then cannot listen, it is started again on
    /// another port (three tries). Panics, with the end of its log, if it exits or is not
    /// ready within 60 s.
    pub fn start(dir: &Path, scrape_targets: &[(&str, String, Option<String>)], scrape_interval: Duration) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS_BIN).exists(),
            "{PROMETHEUS_BIN} is missing: run scripts/install-prometheus.sh (scripts/test.sh does)"
        );
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_yaml(scrape_targets, scrape_interval))
            .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        let log = dir.join("prometheus.log");

        let mut tries = 0;
        loop {
            tries += 1;
            let authority = format!("127.0.0.1:{}", free_port());
            let out = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
            let err = out.try_clone().expect("clone the log's handle");
            let child = Command::new(PROMETHEUS_BIN)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address={authority}"))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {PROMETHEUS_BIN}: {e}"));
            // From here on a panic drops it, which kills it.
            let mut prometheus = Prometheus { authority, log: log.clone(), child };
            match prometheus.wait_ready() {
                Ok(()) => return prometheus,
                Err(exited) => {
                    let tail = prometheus.log_tail();
                    if tries < 3 && tail.contains("address already in use") {
                        continue;
                    }
                    panic!("prometheus on {} {exited}; its log ends:\n{tail}", prometheus.authority);
                }
            }
        }
    }

    /// Poll `/-/ready` until it answers 200; `Err` says why not (the process exited, or
    /// time ran out).
    fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll prometheus") {
                return Err(format!("exited ({status}) before it was ready"));
            }
            // Connection refused until it listens; 503 while the TSDB opens.
            if let Ok((200, _)) = http_get(&self.authority, "/-/ready") {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(format!("was not ready within {READY_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process id (for a test that wants to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An instant query (`/api/v1/query`, evaluated now): the whole response,
    /// `{"status":"success","data":{"resultType":"vector","result":[{"metric":{...},
    /// "value":[TIME,"VALUE"]}, ...]}}`, values being strings as Prometheus sends them.
    /// Panics with the body on any other answer (a PromQL syntax error is a 400 with
    /// `"status":"error"`), since no test means to send a bad query.
    pub fn query(&self, promql: &str) -> Value {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) =
            http_get(&self.authority, &path).unwrap_or_else(|e| panic!("querying prometheus on {}: {e}", self.authority));
        let text = String::from_utf8_lossy(&body);
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("query {promql:?}: HTTP {status}, a body that is not JSON ({e}): {text}"));
        if status != 200 || value["status"] != "success" {
            panic!("query {promql:?}: HTTP {status}: {text}");
        }
        value
    }

    /// Query `promql` every 500 ms until `predicate` accepts the response (as
    /// [`query`](Self::query) returns it), and return that response. Panics after
    /// `timeout` with the last response, the targets' state (a scrape error shows there as
    /// `lastError`) and the end of Prometheus's log.
    pub fn wait_for(&self, promql: &str, timeout: Duration, predicate: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let value = self.query(promql);
            if predicate(&value) {
                return value;
            }
            if started.elapsed() > timeout {
                panic!(
                    "query {promql:?} did not give what was waited for within {timeout:?}; it last gave\n{value}\n\
                     targets:\n{:#}\nprometheus's log ends:\n{}",
                    self.targets(),
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// `/api/v1/targets`: each target's `health` (`up`, `down`, `unknown` before its first
    /// scrape), `lastError` and `lastScrape`. For diagnostics.
    pub fn targets(&self) -> Value {
        match http_get(&self.authority, "/api/v1/targets") {
            Ok((_, body)) => serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned())),
            Err(e) => Value::String(format!("asking for the targets failed: {e}")),
        }
    }

    /// The last 40 lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SIGKILL to its pid: its TSDB is thrown away with the test's directory, so a clean
        // shutdown buys nothing. Reaped, so no zombie outlives the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of the values of a query's result (a response from [`Prometheus::query`], its
/// `data`, or the `result` array): `None` when the vector is empty (nothing matched, or
/// nothing scraped yet), so that `scalar_sum(&v).is_some_and(|n| n >= 3.0)` waits for the
/// series to exist. A scalar result (`"resultType":"scalar"`) gives its value.
pub fn scalar_sum(result: &Value) -> Option<f64> {
    let result = result.pointer("/data/result").or_else(|| result.get("result")).unwrap_or(result);
    let number = |pair: &Value| pair.get(1).and_then(Value::as_str).and_then(|s| s.parse::<f64>().ok());
    let items = result.as_array()?;
    // A scalar or string result is one `[TIME, "VALUE"]` pair rather than a list of series.
    if items.first().is_some_and(Value::is_number) {
        return number(result);
    }
    let mut sum = None;
    for item in items {
        let value = number(&item["value"])?;
        *sum.get_or_insert(0.0) += value;
    }
    sum
}

/// The `prometheus.yml` for [`Prometheus::start`]. Strings are written as JSON strings,
/// which YAML reads as its double-quoted scalars, so a token with `"`, `:` or `#` in it
/// stays one string.
pub fn config_yaml(scrape_targets: &[(&str, String, Option<String>)], scrape_interval: Duration) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("a string serialises");
    // Prometheus takes durations such as `500ms` or `2s`. scrape_timeout is left out: it
    // defaults to 10 s, or to the interval when that is shorter.
    let interval = format!("{}ms", scrape_interval.as_millis().max(1));
    let mut yaml = format!("global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\nscrape_configs:\n");
    for (i, (job, target, token)) in scrape_targets.iter().enumerate() {
        assert!(
            !scrape_targets[..i].iter().any(|(other, _, _)| other == job),
            "job name {job:?} given twice: Prometheus refuses duplicate scrape configs"
        );
        yaml += &format!("  - job_name: {}\n", quote(job));
        if let Some(token) = token {
            // The 2.x syntax (bearer_token is its older, deprecated spelling).
            yaml += &format!("    authorization:\n      type: Bearer\n      credentials: {}\n", quote(token));
        }
        yaml += &format!("    static_configs:\n      - targets: [{}]\n", quote(target));
    }
    yaml
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// A query string's value as a URL carries it: RFC 3986's unreserved characters as they
/// are, every other byte of the UTF-8 as `%XX` (so a space is `%20`, which Go's query
/// parser takes as well as `+`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One `GET path` to `authority` over HTTP/1.1: its status and its body (de-chunked).
/// `Connection: close` makes the end of the stream the end of the answer, so the whole
/// stream is read and the headers decide only how to take the body out of it.
pub fn http_get(authority: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    http_get_with(authority, path, None)
}

/// [`http_get`] with `Authorization: Bearer TOKEN` when a token is given.
pub fn http_get_with(authority: &str, path: &str, bearer: Option<&str>) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut stream = TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\n{auth}Connection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;

    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad(format!("no end of headers in {} bytes", raw.len())))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    // "HTTP/1.1 200 OK"
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        } else if name == "content-length" {
            length = value.parse::<usize>().ok();
        }
    }
    let body = if chunked {
        dechunk(body).map_err(bad)?
    } else if let Some(length) = length {
        body[..length.min(body.len())].to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

/// The data of a `Transfer-Encoding: chunked` body: chunks of `SIZE-IN-HEX[;ext]\r\n DATA
/// \r\n`, ended by a chunk of size 0 (and trailers, which are dropped).
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n").ok_or("a chunk size line without its end")?;
        let line = String::from_utf8_lossy(&body[..eol]);
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16).map_err(|e| format!("bad chunk size {hex:?}: {e}"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            return Err(format!("a chunk of {size} bytes cut short at {}", body.len()));
        }
        out.extend_from_slice(&body[..size]);
        body = body[size..].strip_prefix(b"\r\n").ok_or("a chunk without its closing CRLF")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        assert_eq!(dechunk(b"5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\nTrailer: a\r\n\r\n").unwrap(), b"hello, world");
        assert!(dechunk(b"a\r\nshort\r\n").is_err());
    }

    #[test]
    fn encodes_promql() {
        assert_eq!(percent_encode(r#"sum(up{job="a b"})"#), "sum%28up%7Bjob%3D%22a%20b%22%7D%29");
        assert_eq!(percent_encode("rate(x[1m]) > 0.5"), "rate%28x%5B1m%5D%29%20%3E%200.5");
    }

    #[test]
    fn sums_results() {
        let vector: Value = serde_json::from_str(
            r#"{"status":"success","data":{"resultType":"vector","result":[
                {"metric":{"job":"a"},"value":[1.5,"3"]},{"metric":{"job":"b"},"value":[1.5,"4.5"]}]}}"#,
        )
        .unwrap();
        assert_eq!(scalar_sum(&vector), Some(7.5));
        assert_eq!(scalar_sum(&vector["data"]), Some(7.5));
        let empty: Value = serde_json::from_str(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#).unwrap();
        assert_eq!(scalar_sum(&empty), None);
        let scalar: Value = serde_json::from_str(r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"2"]}}"#).unwrap();
        assert_eq!(scalar_sum(&scalar), Some(2.0));
    }

    #[test]
    fn quotes_tokens() {
        let yaml = config_yaml(&[("serve", "127.0.0.1:1".into(), Some("a\"b: #c".into()))], Duration::from_secs(1));
        assert!(yaml.contains("scrape_interval: 1000ms"), "{yaml}");
        assert!(yaml.contains(r#"credentials: "a\"b: #c""#), "{yaml}");
    }
}
