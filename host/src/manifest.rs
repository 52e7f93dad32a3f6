//! The job manifest: which component, its arguments, its grants, its limits and its output
//! directory, as data (TOML, versioned schema). The CLI only overrides it.
//!
//! ```toml
//! schema = 1
//!
//! [job]
//! component = "backup.wasm"        # relative to the manifest's directory
//! args = ["vm-1"]
//! id = "nightly-backup"
//! output_dir = "/var/backups/rbd"  # the job's /out; no filesystem without it
//! output_read_only = false         # true maps /out read-only (restore, verify)
//! stdout_data = false              # true: the job's stdout is data, passed on raw (a pipe)
//!
//! [[grants]]
//! pool = "rbd"
//! images = "vm-*"                  # `*` matches any run of characters; default "*"
//! operations = ["read", "snapshot-create", "snapshot-remove"]   # or ["all"]
//!
//! [[outbound]]                     # HTTP endpoints the job may reach; none: no network
//! url = "http://127.0.0.1:7480/backups/"   # scheme, host, port, path prefix
//! addresses = ["127.0.0.1"]        # optional: what the name may resolve to
//! ca_file = "/etc/ceph/rgw-ca.pem" # optional: a private CA trusted for https (PEM)
//!
//! [secrets]                        # named secrets the job may read (the `secrets` interface)
//! s3-access-key = "/etc/rbd-wasm/s3-access-key"   # a file: its bytes, less one newline
//! s3-secret-key = "/etc/rbd-wasm/s3-secret-key"
//!
//! [limits]
//! memory_mib = 512
//! deadline_secs = 3600             # wall clock
//! cpu_secs = 600                   # time running guest code
//! output_bytes = 67108864          # per stream
//! stdout_data_bytes = 1099511627776 # stdout with stdout_data = true
//! reads_in_flight = 8
//! max_handles = 64                 # pools, images and diff iterators open at once
//! read_bytes = 1099511627776
//! write_bytes = 0
//! operations = 1000000
//! bandwidth_mib_per_sec = 200      # reads plus writes
//! host_memory_mib = 128            # host memory held for the job (reads in flight...)
//! output_dir_bytes = 1099511627776 # bytes the job may write to /out
//! output_dir_files = 100000        # files and directories it may create there
//! http_response_bytes = 1073741824 # largest response body of one outbound request
//! http_connections = 8             # outbound HTTP exchanges open at once
//! http_idle_secs = 60              # longest wait for a connection, a response, its next bytes
//! network_bytes = 1099511627776    # outbound HTTP body bytes sent plus received
//! ```
//!
//! Deny by default: a manifest without grants grants nothing. Unknown keys are errors, so a
//! misspelt limit is never silently ignored, and every number is range-checked ([`limit`]):
//! a value the host cannot honour is refused with the range it accepts.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::capability::{Grant, Grants, ImagePattern, Operation, Operations};
use crate::policy::endpoints::{Endpoint, Endpoints};
use crate::meter::Quotas;
use crate::outbound::HttpLimits;
use crate::secrets::Secrets;
use crate::runtime::JobLimits;

/// The schema version this host reads.
pub const SCHEMA: u32 = 1;

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("manifest {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    schema: u32,
    job: RawJob,
    #[serde(default)]
    grants: Vec<RawGrant>,
    #[serde(default)]
    outbound: Vec<RawEndpoint>,
    #[serde(default)]
    secrets: std::collections::BTreeMap<String, PathBuf>,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    url: String,
    #[serde(default)]
    addresses: Vec<String>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    component: Option<PathBuf>,
    #[serde(default)]
    args: Vec<String>,
    id: Option<String>,
    output_dir: Option<PathBuf>,
    #[serde(default)]
    output_read_only: bool,
    #[serde(default)]
    stdout_data: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    pool: String,
    #[serde(default = "any_image")]
    images: String,
    operations: Vec<String>,
}

fn any_image() -> String {
    "*".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory_mib: Option<u64>,
    deadline_secs: Option<u64>,
    cpu_secs: Option<f64>,
    output_bytes: Option<u64>,
    stdout_data_bytes: Option<u64>,
    reads_in_flight: Option<usize>,
    max_handles: Option<usize>,
    read_bytes: Option<u64>,
    write_bytes: Option<u64>,
    operations: Option<u64>,
    bandwidth_mib_per_sec: Option<f64>,
    host_memory_mib: Option<u64>,
    output_dir_bytes: Option<u64>,
    output_dir_files: Option<u64>,
    http_response_bytes: Option<u64>,
    http_connections: Option<usize>,
    http_idle_secs: Option<u64>,
    network_bytes: Option<u64>,
}

/// A checked manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The component, resolved against the manifest's directory.
    pub component: Option<PathBuf>,
    pub args: Vec<String>,
    pub id: Option<String>,
    /// Resolved against the manifest's directory.
    pub output_dir: Option<PathBuf>,
    pub output_read_only: bool,
    /// The job's stdout is data (`OutputSink::Data`), not lines of text.
    pub stdout_data: bool,
    pub grants: Grants,
    /// The HTTP endpoints the job may reach.
    pub outbound: Endpoints,
    /// The secrets handed to the job, read from their files.
    pub secrets: Secrets,
    pub limits: JobLimits,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ManifestError::Unreadable { path: path.to_owned(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Manifest::parse(&text, base).map_err(|message| ManifestError::Invalid { path: path.to_owned(), message })
    }

    /// Parse manifest text; relative paths are taken against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Manifest, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| e.to_string())?;
        if raw.schema != SCHEMA {
            return Err(format!("schema {} is not supported; this host reads schema {SCHEMA}", raw.schema));
        }
        let mut grants = Vec::with_capacity(raw.grants.len());
        for (i, g) in raw.grants.into_iter().enumerate() {
            if g.pool.is_empty() {
                return Err(format!("grants[{i}]: the pool name is empty"));
            }
            let operations = if g.operations.iter().any(|op| op == "all") {
                Operations::all()
            } else {
                g.operations
                    .iter()
                    .map(|op| op.parse::<Operation>())
                    .collect::<Result<Operations, _>>()
                    .map_err(|e| format!("grants[{i}]: {e}"))?
            };
            grants.push(Grant { pool: g.pool, images: ImagePattern::new(g.images), operations });
        }
        let outbound = raw
            .outbound
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut endpoint = Endpoint::parse(&e.url, &e.addresses).map_err(|why| format!("outbound[{i}]: {why}"))?;
                if let Some(file) = &e.ca_file {
                    endpoint.ca_certificates = read_ca_file(&base.join(file)).map_err(|why| format!("outbound[{i}].ca_file: {why}"))?;
                }
                Ok(endpoint)
            })
            .collect::<Result<Vec<_>, String>>()?;
        let secret_files: Vec<(String, PathBuf)> = raw.secrets.iter().map(|(name, file)| (name.clone(), base.join(file))).collect();
        let secrets = Secrets::load(secret_files.iter().map(|(n, p)| (n.as_str(), p.as_path()))).map_err(|e| format!("secrets: {e}"))?;
        let d = JobLimits::default();
        let l = raw.limits;
        let field = |name: &str, e: String| format!("limits.{name}: {e}");
        let limits = JobLimits {
            memory_bytes: l.memory_mib.map(limit::memory_mib).transpose().map_err(|e| field("memory_mib", e))?.unwrap_or(d.memory_bytes),
            deadline: l.deadline_secs.map(limit::deadline_secs).transpose().map_err(|e| field("deadline_secs", e))?.unwrap_or(d.deadline),
            output_bytes: l.output_bytes.map(|n| limit::range(n, 0, limit::MAX_BYTES)).transpose().map_err(|e| field("output_bytes", e))?.unwrap_or(d.output_bytes),
            stdout_data_bytes: l.stdout_data_bytes.map(|n| limit::range(n, 0, limit::MAX_BYTES)).transpose().map_err(|e| field("stdout_data_bytes", e))?.unwrap_or(d.stdout_data_bytes),
            reads_in_flight: l.reads_in_flight.map(|n| limit::range(n, 1, 256)).transpose().map_err(|e| field("reads_in_flight", e))?.unwrap_or(d.reads_in_flight),
            quotas: Quotas {
                max_handles: l.max_handles.map(|n| limit::range(n, 1, 1 << 20)).transpose().map_err(|e| field("max_handles", e))?.or(d.quotas.max_handles),
                read_bytes: l.read_bytes,
                write_bytes: l.write_bytes,
                operations: l.operations,
                bandwidth_bytes_per_sec: l.bandwidth_mib_per_sec.map(limit::bandwidth_mib).transpose().map_err(|e| field("bandwidth_mib_per_sec", e))?,
                network_bytes: l.network_bytes,
                host_memory_bytes: match l.host_memory_mib {
                    Some(mib) => Some(limit::range(mib, 1, 64 << 10).map_err(|e| field("host_memory_mib", e))? << 20),
                    None => d.quotas.host_memory_bytes,
                },
            },
            cpu: l.cpu_secs.map(limit::cpu_secs).transpose().map_err(|e| field("cpu_secs", e))?,
            output_dir_bytes: l.output_dir_bytes.map(|n| limit::range(n, 0, limit::MAX_BYTES)).transpose().map_err(|e| field("output_dir_bytes", e))?.unwrap_or(d.output_dir_bytes),
            output_dir_files: l.output_dir_files.map(|n| limit::range(n, 0, 1 << 32)).transpose().map_err(|e| field("output_dir_files", e))?.unwrap_or(d.output_dir_files),
            http: HttpLimits {
                response_bytes: l.http_response_bytes.map(|n| limit::range(n, 0, limit::MAX_BYTES)).transpose().map_err(|e| field("http_response_bytes", e))?.unwrap_or(d.http.response_bytes),
                connections: l.http_connections.map(|n| limit::range(n, 1, 1024)).transpose().map_err(|e| field("http_connections", e))?.unwrap_or(d.http.connections),
                idle: l.http_idle_secs.map(|n| limit::range(n, 1, 3600)).transpose().map_err(|e| field("http_idle_secs", e))?.map_or(d.http.idle, std::time::Duration::from_secs),
            },
        };
        Ok(Manifest {
            component: raw.job.component.map(|p| base.join(p)),
            args: raw.job.args,
            id: raw.job.id,
            output_dir: raw.job.output_dir.map(|p| base.join(p)),
            output_read_only: raw.job.output_read_only,
            stdout_data: raw.job.stdout_data,
            grants: Grants::new(grants),
            outbound: Endpoints(outbound),
            secrets,
            limits,
        })
    }
}

/// The certificates of a PEM file (a private CA an operator trusts for one endpoint).
fn read_ca_file(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The ranges the host accepts for each limit, shared by manifests and the command line.
pub mod limit {
    use std::time::Duration;

    /// The most linear memory a job may have (the runtime's per-memory maximum).
    pub const MAX_MEMORY_MIB: u64 = 4096;
    /// The longest deadline or CPU budget: a week.
    pub const MAX_SECS: u64 = 7 * 24 * 3600;
    /// The largest byte count any limit takes (1 PiB).
    pub const MAX_BYTES: u64 = 1 << 50;

    /// `n` if `min <= n <= max`, else a message naming the range.
    pub fn range<T: PartialOrd + std::fmt::Display + Copy>(n: T, min: T, max: T) -> Result<T, String> {
        if n < min || n > max {
            Err(format!("{n} is out of range ({min} to {max})"))
        } else {
            Ok(n)
        }
    }

    pub fn memory_mib(mib: u64) -> Result<usize, String> {
        let mib = range(mib, 1, MAX_MEMORY_MIB)?;
        usize::try_from(mib << 20).map_err(|_| format!("{mib} MiB does not fit this machine's address space"))
    }

    pub fn deadline_secs(secs: u64) -> Result<Duration, String> {
        Ok(Duration::from_secs(range(secs, 1, MAX_SECS)?))
    }

    pub fn cpu_secs(secs: f64) -> Result<Duration, String> {
        if !(secs.is_finite() && secs > 0.0 && secs <= MAX_SECS as f64) {
            return Err(format!("{secs:?} is out of range (a positive number of seconds up to {MAX_SECS})"));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    pub fn bandwidth_mib(mib: f64) -> Result<u64, String> {
        if !(mib.is_finite() && mib > 0.0 && mib <= (1u64 << 30) as f64) {
            return Err(format!("{mib:?} is out of range (a positive number of MiB/s up to {})", 1u64 << 30));
        }
        Ok((mib * 1048576.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const FULL: &str = r#"
schema = 1
[job]
component = "jobs/backup.wasm"
args = ["vm-1", "--full"]
id = "nightly"
output_dir = "out"
[[grants]]
pool = "rbd"
images = "vm-*"
operations = ["read", "snapshot-create"]
[[grants]]
pool = "backups"
operations = ["all"]
[limits]
memory_mib = 256
deadline_secs = 60
cpu_secs = 1.5
max_handles = 4
read_bytes = 1000
bandwidth_mib_per_sec = 2
"#;

    #[test]
    fn a_full_manifest_gives_grants_limits_and_paths() {
        let m = Manifest::parse(FULL, Path::new("/etc/rbd-wasm")).unwrap();
        assert_eq!(m.component.as_deref(), Some(Path::new("/etc/rbd-wasm/jobs/backup.wasm")));
        assert_eq!(m.output_dir.as_deref(), Some(Path::new("/etc/rbd-wasm/out")));
        assert_eq!(m.args, ["vm-1", "--full"]);
        assert_eq!(m.limits.memory_bytes, 256 << 20);
        assert_eq!(m.limits.deadline, Duration::from_secs(60));
        assert_eq!(m.limits.cpu, Some(Duration::from_millis(1500)));
        assert_eq!(m.limits.quotas.max_handles, Some(4));
        assert_eq!(m.limits.quotas.read_bytes, Some(1000));
        assert_eq!(m.limits.quotas.write_bytes, None);
        assert_eq!(m.limits.quotas.bandwidth_bytes_per_sec, Some(2 << 20));
        assert_eq!(m.grants.pools(), ["rbd", "backups"]);
        let rbd = m.grants.pool("rbd").unwrap();
        assert_eq!(rbd.image("db-1").unwrap_err().kind(), "not-found");
        let vm = rbd.image("vm-1").unwrap();
        assert!(vm.require(Operation::SnapshotCreate).is_ok());
        assert_eq!(vm.require(Operation::Write).unwrap_err().kind(), "permission-denied");
        assert!(m.grants.pool("backups").unwrap().image("x").unwrap().require(Operation::Remove).is_ok());
    }

    #[test]
    fn outbound_endpoints_are_granted_by_url_and_none_means_no_network() {
        let text = "schema = 1\n[job]\n[[outbound]]\nurl = \"http://127.0.0.1:7480/backups/\"\n[[outbound]]\nurl = \"https://s3.example.com\"\naddresses = [\"203.0.113.7\"]\n[limits]\nhttp_response_bytes = 1000\n";
        let m = Manifest::parse(text, Path::new(".")).unwrap();
        assert_eq!(m.outbound.0.len(), 2);
        assert_eq!((m.outbound.0[0].port, m.outbound.0[0].path_prefix.as_str()), (7480, "/backups/"));
        assert_eq!(m.outbound.0[1].addresses, Some(vec!["203.0.113.7".parse().unwrap()]));
        assert_eq!(m.limits.http.response_bytes, 1000);
        assert!(Manifest::parse("schema = 1\n[job]\n", Path::new(".")).unwrap().outbound.0.is_empty());
        let text = "schema = 1\n[job]\n[limits]\nhttp_connections = 2\nhttp_idle_secs = 5\nnetwork_bytes = 10\n";
        let m = Manifest::parse(text, Path::new(".")).unwrap();
        assert_eq!((m.limits.http.connections, m.limits.http.idle.as_secs(), m.limits.quotas.network_bytes), (2, 5, Some(10)));
        let bad = Manifest::parse("schema = 1\n[job]\n[limits]\nhttp_connections = 0\n", Path::new(".")).unwrap_err();
        assert!(bad.contains("http_connections"), "{bad}");
        let bad = Manifest::parse("schema = 1\n[job]\n[[outbound]]\nurl = \"https://h/\"\nca_file = \"/nonexistent.pem\"\n", Path::new(".")).unwrap_err();
        assert!(bad.contains("outbound[0].ca_file") && bad.contains("nonexistent"), "{bad}");
        let bad = Manifest::parse("schema = 1\n[job]\n[[outbound]]\nurl = \"http://u:p@host/\"\n", Path::new(".")).unwrap_err();
        assert!(bad.contains("outbound[0]") && bad.contains("user info"), "{bad}");
    }

    #[test]
    fn no_grants_means_no_pools() {
        let m = Manifest::parse("schema = 1\n[job]\n", Path::new(".")).unwrap();
        assert!(m.grants.pools().is_empty());
        assert_eq!(m.grants.pool("rbd").unwrap_err().kind(), "not-found");
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let cases = [
            ("schema = 2\n[job]\n", "schema 2 is not supported"),
            ("schema = 1\n[job]\nfrobnicate = 1\n", "unknown field"),
            ("schema = 1\n[job]\n[limits]\nmemory_mb = 5\n", "unknown field"),
            ("schema = 1\n[job]\n[[grants]]\npool = \"rbd\"\noperations = [\"fly\"]\n", "unknown operation `fly`"),
            ("schema = 1\n[job]\n[[grants]]\npool = \"\"\noperations = [\"read\"]\n", "pool name is empty"),
            ("schema = 1\n[job]\n[limits]\nreads_in_flight = 0\n", "limits.reads_in_flight: 0 is out of range (1 to 256)"),
            ("schema = 1\n[job]\n[limits]\ncpu_secs = -1.0\n", "limits.cpu_secs: -1.0 is out of range"),
            ("schema = 1\n[job]\n[limits]\ncpu_secs = 1e300\n", "limits.cpu_secs: 1e300 is out of range"),
            ("schema = 1\n[job]\n[limits]\ncpu_secs = nan\n", "limits.cpu_secs: NaN is out of range"),
            ("schema = 1\n[job]\n[limits]\nbandwidth_mib_per_sec = 0.0\n", "limits.bandwidth_mib_per_sec: 0.0 is out of range"),
            ("schema = 1\n[job]\n[limits]\nmemory_mib = 18446744073709551615\n", "limits.memory_mib: 18446744073709551615 is out of range"),
            ("schema = 1\n[job]\n[limits]\nmemory_mib = 0\n", "limits.memory_mib: 0 is out of range"),
            ("schema = 1\n[job]\n[limits]\ndeadline_secs = 0\n", "limits.deadline_secs: 0 is out of range"),
            ("schema = 1\n[job]\n[limits]\ndeadline_secs = 99999999999\n", "limits.deadline_secs: 99999999999 is out of range"),
            ("schema = 1\n[job]\n[limits]\nmax_handles = 0\n", "limits.max_handles: 0 is out of range"),
            ("schema = 1\n[job]\n[limits]\nhost_memory_mib = 0\n", "limits.host_memory_mib: 0 is out of range"),
            ("[job]\n", "missing field `schema`"),
        ];
        for (text, want) in cases {
            let err = Manifest::parse(text, Path::new(".")).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
