//! What a run of a job reports when it ends: `rbd-wasm run --json` prints it, and
//! `rbd-wasm serve` keeps it in its history and shows it in `/status`.

use std::path::PathBuf;

use rbd_wasm::{JobError, Usage};

use crate::progress::ProgressEntry;

/// What `run --json` prints.
#[derive(serde::Serialize)]
pub struct RunReport {
    pub job_id: String,
    pub component: PathBuf,
    /// `ok`, or the kind of failure (`failed`, `trap`, `deadline`, `setup`...).
    pub status: &'static str,
    pub exit_code: i32,
    pub error: Option<String>,
    pub elapsed_secs: f64,
    /// The host process's peak resident memory (the kernel's VmHWM), when known.
    pub host_peak_rss_bytes: Option<u64>,
    pub usage: Usage,
    pub progress: Vec<ProgressEntry>,
}

impl RunReport {
    pub fn new(
        job_id: String,
        component: PathBuf,
        result: &Result<(), JobError>,
        exit_code: i32,
        elapsed: std::time::Duration,
        usage: Usage,
        progress: Vec<ProgressEntry>,
    ) -> RunReport {
        RunReport {
            job_id,
            component,
            status: result.as_ref().err().map_or("ok", JobError::kind),
            exit_code,
            // A trap's backtrace can be long (a deep stack): cut, as the CLI prints it.
            error: result.as_ref().err().map(|e| rbd_wasm::audit::cut(&e.to_string(), 64 << 10).into_owned()),
            elapsed_secs: elapsed.as_secs_f64(),
            host_peak_rss_bytes: peak_rss_bytes(),
            usage,
            progress,
        }
    }
}

/// This process's peak resident set size, from `/proc/self/status` (Linux).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

