//! `rbd-wasm run`: run one job, with its manifest and the command line's overrides, and
//! report how it ended (exit status, and with `--json` a report on standard output).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use clap::Args;
use rbd_wasm::manifest::{limit, Manifest};
use rbd_wasm::runtime::{JobConfig, JobError, JobLimits, Runtime, RuntimeConfig};
use rbd_wasm::audit::cut;
use rbd_wasm::output::terminal_safe;
use rbd_wasm::{AuditSink, Endpoints, Grant, Grants, OutputSink, Usage};

use crate::progress::{ProgressMode, ProgressView};
use crate::report::RunReport;
use crate::{open_backend, StoreArgs};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The job manifest (TOML: component, args, grants, limits, output directory). The
    /// options below override it.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Grant the job every operation on the images of this pool (repeatable). Replaces the
    /// manifest's grants; without a manifest the default is `rbd`.
    #[arg(long = "pool")]
    pools: Vec<String>,
    /// A host directory the job sees as `/out` (read-write). Without it the job has no
    /// filesystem at all. It must not overlap the store, the cache or the audit log.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Map the output directory read-only (enough for restore and verify).
    #[arg(long)]
    output_read_only: bool,
    /// The job's standard output is data (say, an `rbd export-diff` stream for `rbd
    /// import-diff -`): passed on as written, not tagged or escaped. Refused when standard
    /// output is a terminal; `--json` prints its report on standard error then.
    #[arg(long)]
    stdout_data: bool,
    /// Stop the job after this many seconds (default 3600).
    #[arg(long)]
    deadline_secs: Option<u64>,
    /// Most linear memory of the job, in MiB, all its memories together (default 1024).
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Tags the job's output lines; default: the component's file stem.
    #[arg(long)]
    job_id: Option<String>,
    /// Append a JSON line for every mutating operation and every denial to this file.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Compile the component every time instead of using the cache.
    #[arg(long)]
    no_cache: bool,
    /// How to show the job's progress reports. Default: bars when standard error is a
    /// terminal, plain lines otherwise.
    #[arg(long, value_enum)]
    progress: Option<ProgressArg>,
    /// When the job ends, print a JSON report on standard output (outcome, exit code, time,
    /// RBD traffic, CPU, last progress of each label); the job's own output goes to
    /// standard error then.
    #[arg(long)]
    json: bool,
    /// The job's component (optional with a manifest that names one).
    job: Option<PathBuf>,
    /// Arguments passed to the job's `run` (replace the manifest's).
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProgressArg {
    Bars,
    Lines,
    None,
}

/// What to run: the manifest (if any) with the command line's overrides applied.
struct JobPlan {
    component: PathBuf,
    args: Vec<String>,
    id: Option<String>,
    grants: Grants,
    /// Outbound HTTP endpoints: the manifest's only (no command-line way to grant them).
    outbound: Endpoints,
    limits: JobLimits,
    output_dir: Option<PathBuf>,
    output_read_only: bool,
    stdout_data: bool,
    /// Secrets: the manifest's only (a command line is seen by every user of the machine).
    secrets: rbd_wasm::Secrets,
}

fn job_plan(args: &RunArgs) -> Result<JobPlan, JobError> {
    let manifest = match &args.manifest {
        Some(path) => Some(Manifest::load(path).map_err(|e| JobError::Setup(e.to_string()))?),
        None => None,
    };
    let component = args
        .job
        .clone()
        .or_else(|| manifest.as_ref().and_then(|m| m.component.clone()))
        .ok_or_else(|| JobError::Setup("no job given: name a component, or a manifest with `job.component`".into()))?;
    let job_args = if !args.args.is_empty() || manifest.is_none() {
        args.args.clone()
    } else {
        manifest.as_ref().map(|m| m.args.clone()).unwrap_or_default()
    };
    let grants = if !args.pools.is_empty() {
        Grants::new(args.pools.iter().map(Grant::full).collect())
    } else {
        match &manifest {
            Some(m) => m.grants.clone(),
            None => Grants::new(vec![Grant::full("rbd")]),
        }
    };
    let mut limits = manifest.as_ref().map(|m| m.limits.clone()).unwrap_or_default();
    if let Some(mib) = args.memory_mib {
        limits.memory_bytes = limit::memory_mib(mib).map_err(|e| JobError::Setup(format!("--memory-mib: {e}")))?;
    }
    if let Some(secs) = args.deadline_secs {
        limits.deadline = limit::deadline_secs(secs).map_err(|e| JobError::Setup(format!("--deadline-secs: {e}")))?;
    }
    Ok(JobPlan {
        component,
        args: job_args,
        id: args.job_id.clone().or_else(|| manifest.as_ref().and_then(|m| m.id.clone())),
        grants,
        outbound: manifest.as_ref().map(|m| m.outbound.clone()).unwrap_or_default(),
        secrets: manifest.as_ref().map(|m| m.secrets.clone()).unwrap_or_default(),
        limits,
        output_dir: args.output_dir.clone().or_else(|| manifest.as_ref().and_then(|m| m.output_dir.clone())),
        output_read_only: args.output_read_only || manifest.as_ref().is_some_and(|m| m.output_read_only),
        stdout_data: args.stdout_data || manifest.as_ref().is_some_and(|m| m.stdout_data),
    })
}

pub fn run_job(args: RunArgs) -> ExitCode {
    use std::io::IsTerminal;
    let started = std::time::Instant::now();
    let mode = match args.progress {
        Some(ProgressArg::Bars) => ProgressMode::Bars,
        Some(ProgressArg::Lines) => ProgressMode::Lines,
        Some(ProgressArg::None) => ProgressMode::Quiet,
        None if std::io::stderr().is_terminal() => ProgressMode::Bars,
        None => ProgressMode::Lines,
    };
    let mut job_id = args.job_id.clone().unwrap_or_else(|| "job".into());
    let mut component_path = args.job.clone().unwrap_or_default();
    let usage = Arc::new(std::sync::Mutex::new(Usage::default()));
    let cancel = Arc::new(tokio::sync::Notify::new());
    let signalled = Arc::new(AtomicI32::new(0));
    let mut view = ProgressView::new(&job_id, mode);
    let mut report_to_stderr = args.stdout_data;
    let result = (|| -> Result<(), JobError> {
        let plan = job_plan(&args)?;
        component_path = plan.component;
        job_id = plan.id.unwrap_or_else(|| {
            component_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "job".into())
        });
        view = ProgressView::new(&job_id, mode);
        let audit = match &args.audit_log {
            Some(path) => AuditSink::append_to(path)
                .map_err(|e| JobError::Setup(format!("cannot open the audit log {}: {e}", path.display())))?,
            None => AuditSink::Off,
        };
        let backend = open_backend(&args.store).map_err(|e| JobError::Setup(format!("{e:#}")))?;
        let mut config = RuntimeConfig { max_concurrent_jobs: 4, ..RuntimeConfig::default() };
        if args.no_cache {
            config.cache_dir = None;
        }
        let runtime = Runtime::new(config).map_err(|e| JobError::Setup(format!("{e:#}")))?;
        let component = runtime.load(&component_path)?;
        // With `--json` standard output carries the report alone; with bars, lines are
        // printed above them.
        let line_sink = |to_stderr: bool| {
            let view = view.clone();
            OutputSink::Lines(Arc::new(move |line: &str| view.print_line(line, to_stderr)))
        };
        report_to_stderr = plan.stdout_data;
        if plan.stdout_data && std::io::stdout().is_terminal() {
            return Err(JobError::Setup("the job's stdout is data (--stdout-data) and standard output is a terminal: redirect it to a file or a pipe".into()));
        }
        let (stdout, stderr) = match (args.json, mode) {
            _ if plan.stdout_data => (OutputSink::Data, if args.json || mode == ProgressMode::Bars { line_sink(true) } else { OutputSink::Stderr }),
            (true, _) => (line_sink(true), line_sink(true)),
            (false, ProgressMode::Bars) => (line_sink(false), line_sink(true)),
            (false, _) => (OutputSink::Stdout, OutputSink::Stderr),
        };
        let job = JobConfig {
            job_id: job_id.clone(),
            args: plan.args,
            backend,
            grants: plan.grants,
            outbound: plan.outbound,
            secrets: plan.secrets,
            limits: plan.limits,
            output_dir: plan.output_dir,
            output_read_only: plan.output_read_only,
            stdout,
            stderr,
            progress: Some(view.sink()),
            audit,
            cancel: Some(cancel.clone()),
            usage: Some(usage.clone()),
        };
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| JobError::Setup(format!("cannot start the async runtime: {e}")))?;
        let result = tokio.block_on(async {
            tokio::spawn(cancel_on_signals(cancel.clone(), signalled.clone(), job_id.clone()));
            runtime.run(&component, job).await
        });
        // Backend calls that never came back (a frozen cluster) must not keep the process:
        // their threads are left to the exit.
        tokio.shutdown_timeout(SHUTDOWN_TIME);
        result
    })();
    let progress = view.finish();
    let signal = signalled.load(Ordering::SeqCst);
    let exit_code = match &result {
        Ok(()) => 0,
        // Stopped by a signal: the shell's convention, 128 + its number.
        Err(JobError::Cancelled) if signal != 0 => 128 + signal,
        Err(e) => {
            // A trap's backtrace and a load error quote names from the component: made safe.
            eprintln!("rbd-wasm: {}", terminal_safe(&cut(&e.to_string(), 64 << 10)));
            e.exit_code().clamp(1, 255)
        }
    };
    if args.json {
        let usage = *usage.lock().unwrap_or_else(|p| p.into_inner());
        let report = RunReport::new(job_id, component_path, &result, exit_code, started.elapsed(), usage, progress);
        match serde_json::to_string_pretty(&report) {
            // Standard output is the job's data: the report is standard error's last lines.
            Ok(json) if report_to_stderr => eprintln!("{json}"),
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("rbd-wasm: cannot write the report: {e}"),
        }
    }
    ExitCode::from(u8::try_from(exit_code).unwrap_or(1))
}


/// How long the process waits, once the job has ended, for host threads still in a backend
/// call before it exits without them.
const SHUTDOWN_TIME: Duration = Duration::from_secs(2);

/// SIGINT and SIGTERM cancel the job through the host (its locks are released and its images
/// closed, within the runtime's bounds); a second signal exits at once.
async fn cancel_on_signals(cancel: Arc<tokio::sync::Notify>, signalled: Arc<AtomicI32>, job_id: String) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        eprintln!("rbd-wasm: cannot watch for signals; SIGINT and SIGTERM will end the process at once");
        return;
    };
    loop {
        let (name, number) = tokio::select! {
            _ = int.recv() => ("SIGINT", libc_signal::SIGINT),
            _ = term.recv() => ("SIGTERM", libc_signal::SIGTERM),
        };
        if signalled.swap(number, Ordering::SeqCst) != 0 {
            eprintln!("rbd-wasm: {name} again: exiting at once");
            std::process::exit(128 + number);
        }
        eprintln!("rbd-wasm: {name}: cancelling job `{job_id}` (releasing its locks); send it again to exit at once");
        cancel.notify_one();
    }
}

/// The two signal numbers, as Linux numbers them (for the exit status).
mod libc_signal {
    pub const SIGINT: i32 = 2;
    pub const SIGTERM: i32 = 15;
}
