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
//!
//! [[grants]]
//! pool = "rbd"
//! images = "vm-*"                  # `*` matches any run of characters; default "*"
//! operations = ["read", "snapshot-create", "snapshot-remove"]   # or ["all"]
//!
//! [limits]
//! memory_mib = 512
//! deadline_secs = 3600             # wall clock
//! cpu_secs = 600                   # time running guest code
//! output_bytes = 67108864          # per stream
//! reads_in_flight = 8
//! max_handles = 64                 # pools, images and diff iterators open at once
//! read_bytes = 1099511627776
//! write_bytes = 0
//! operations = 1000000
//! bandwidth_mib_per_sec = 200      # reads plus writes
//! ```
//!
//! Deny by default: a manifest without grants grants nothing. Unknown keys are errors, so a
//! misspelt limit is never silently ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::capability::{Grant, Grants, ImagePattern, Operation, Operations};
use crate::meter::Quotas;
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
    limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    component: Option<PathBuf>,
    #[serde(default)]
    args: Vec<String>,
    id: Option<String>,
    output_dir: Option<PathBuf>,
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
    reads_in_flight: Option<usize>,
    max_handles: Option<usize>,
    read_bytes: Option<u64>,
    write_bytes: Option<u64>,
    operations: Option<u64>,
    bandwidth_mib_per_sec: Option<f64>,
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
    pub grants: Grants,
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
        let defaults = JobLimits::default();
        let l = raw.limits;
        let memory_bytes = match l.memory_mib {
            Some(mib) => usize::try_from(mib.saturating_mul(1 << 20)).map_err(|_| "limits.memory_mib is too large")?,
            None => defaults.memory_bytes,
        };
        let limits = JobLimits {
            memory_bytes,
            deadline: l.deadline_secs.map(Duration::from_secs).unwrap_or(defaults.deadline),
            output_bytes: l.output_bytes.unwrap_or(defaults.output_bytes),
            reads_in_flight: match l.reads_in_flight {
                Some(0) => return Err("limits.reads_in_flight must be at least 1".into()),
                Some(n) => n,
                None => defaults.reads_in_flight,
            },
            quotas: Quotas {
                max_handles: l.max_handles.or(defaults.quotas.max_handles),
                read_bytes: l.read_bytes,
                write_bytes: l.write_bytes,
                operations: l.operations,
                bandwidth_bytes_per_sec: match l.bandwidth_mib_per_sec {
                    Some(mib) if !(mib > 0.0 && mib.is_finite()) => {
                        return Err("limits.bandwidth_mib_per_sec must be a positive number".into())
                    }
                    Some(mib) => Some((mib * 1048576.0) as u64),
                    None => None,
                },
            },
            cpu: match l.cpu_secs {
                Some(secs) if !(secs > 0.0 && secs.is_finite()) => {
                    return Err("limits.cpu_secs must be a positive number".into())
                }
                Some(secs) => Some(Duration::from_secs_f64(secs)),
                None => None,
            },
        };
        Ok(Manifest {
            component: raw.job.component.map(|p| base.join(p)),
            args: raw.job.args,
            id: raw.job.id,
            output_dir: raw.job.output_dir.map(|p| base.join(p)),
            grants: Grants::new(grants),
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ("schema = 1\n[job]\n[limits]\nreads_in_flight = 0\n", "at least 1"),
            ("schema = 1\n[job]\n[limits]\ncpu_secs = -1.0\n", "cpu_secs must be a positive number"),
            ("schema = 1\n[job]\n[limits]\nbandwidth_mib_per_sec = 0.0\n", "must be a positive number"),
            ("[job]\n", "missing field `schema`"),
        ];
        for (text, want) in cases {
            let err = Manifest::parse(text, Path::new(".")).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
