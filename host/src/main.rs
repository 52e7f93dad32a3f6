//! The `rbd-wasm` command line.

use std::io::{Seek, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use rbd_wasm::backend::embedded::EmbeddedBackend;
use rbd_wasm::backend::librbd::{ConnectOptions, LibrbdBackend};
use rbd_wasm::backend::{Backend, Image};
use rbd_wasm::capability::{Grant, Grants};
use rbd_wasm::audit::AuditSink;
use rbd_wasm::manifest::Manifest;
use rbd_wasm::output::OutputSink;
use rbd_wasm::meter::Usage;
use rbd_wasm::progress::{ProgressEntry, ProgressMode, ProgressView};
use rbd_wasm::runtime::{JobConfig, JobError, JobLimits, Runtime, RuntimeConfig};

mod build_py;

/// Run sandboxed WebAssembly jobs against Ceph RBD images.
#[derive(Parser)]
#[command(name = "rbd-wasm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job (a wasm32-wasip2 component of the `ceph:rbd/job-world` world).
    Run(RunArgs),
    /// Look at images without writing a job.
    #[command(subcommand)]
    Image(ImageCommand),
    /// List or create pools of the embedded store.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Build a Python job into a component (offline, with the pinned componentize-py that
    /// scripts/install-py-deps.sh installs): `rbd-wasm build-py app.py -o job.wasm`.
    BuildPy(build_py::BuildPyArgs),
}

/// Where the images are: a Ceph cluster (with `--conf`), else the embedded store.
#[derive(Args, Clone)]
struct StoreArgs {
    /// The embedded store's directory (created if missing). Default:
    /// `$XDG_DATA_HOME/rbd-wasm/store` or `~/.local/share/rbd-wasm/store`.
    #[arg(long, env = "RBD_WASM_STORE", conflicts_with = "conf")]
    store: Option<PathBuf>,
    /// Use the Ceph cluster of this configuration file (through librbd) instead of the
    /// embedded store.
    #[arg(short = 'c', long, env = "CEPH_CONF")]
    conf: Option<PathBuf>,
    /// The Ceph client id (without `client.`), as `rbd --id`.
    #[arg(long, requires = "conf")]
    id: Option<String>,
    /// The keyring of that client, as `rbd --keyring`.
    #[arg(long, requires = "conf")]
    keyring: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
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
    /// filesystem at all.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Stop the job after this many seconds (default 3600).
    #[arg(long)]
    deadline_secs: Option<u64>,
    /// Most linear memory of the job, in MiB (default 1024).
    #[arg(long)]
    memory_mib: Option<usize>,
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

/// What `run --json` prints.
#[derive(serde::Serialize)]
struct RunReport {
    job_id: String,
    component: PathBuf,
    /// `ok`, or the kind of failure (`failed`, `trap`, `deadline`, `setup`...).
    status: &'static str,
    exit_code: i32,
    error: Option<String>,
    elapsed_secs: f64,
    usage: Usage,
    progress: Vec<ProgressEntry>,
}

/// What to run: the manifest (if any) with the command line's overrides applied.
fn job_plan(args: &RunArgs) -> Result<(PathBuf, Vec<String>, Option<String>, Grants, JobLimits, Option<PathBuf>), JobError> {
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
        limits.memory_bytes = mib.saturating_mul(1 << 20);
    }
    if let Some(secs) = args.deadline_secs {
        limits.deadline = Duration::from_secs(secs);
    }
    let id = args.job_id.clone().or_else(|| manifest.as_ref().and_then(|m| m.id.clone()));
    let output_dir = args.output_dir.clone().or_else(|| manifest.as_ref().and_then(|m| m.output_dir.clone()));
    Ok((component, job_args, id, grants, limits, output_dir))
}

#[derive(Subcommand)]
enum ImageCommand {
    /// List the images of a pool.
    Ls {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value = "rbd")]
        pool: String,
    },
    /// Show an image's size, layout, features, snapshots, parent and lockers.
    Info {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value = "rbd")]
        pool: String,
        /// `NAME` or `NAME@SNAP`.
        image: String,
    },
    /// Remove an image (it must have no snapshots and be open nowhere).
    Rm {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value = "rbd")]
        pool: String,
        image: String,
    },
    /// Write bytes of an image (or snapshot) to stdout, as they are.
    Read {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value = "rbd")]
        pool: String,
        /// `NAME` or `NAME@SNAP`.
        image: String,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// How many bytes (cut at the end of the image).
        #[arg(long)]
        length: u64,
    },
    /// Write an image's (or snapshot's) bytes to a file (sparse), or to stdout with `-`.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value = "rbd")]
        pool: String,
        /// `NAME` or `NAME@SNAP`.
        image: String,
        /// Destination file, or `-` for stdout.
        dest: PathBuf,
    },
}

#[derive(Subcommand)]
enum PoolCommand {
    /// List pools.
    Ls {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Create a pool in the embedded store.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        name: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RBD_WASM_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run_job(args),
        Command::Image(cmd) => report(image_command(cmd)),
        Command::Pool(cmd) => report(pool_command(cmd)),
        Command::BuildPy(args) => report(build_py::build_py(args)),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rbd-wasm: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The one place where the CLI opens storage with the operator's ambient authority: the
/// cluster named by `--conf`, or else the embedded store's directory.
fn open_backend(store: &StoreArgs) -> anyhow::Result<Arc<dyn Backend>> {
    if let Some(conf) = &store.conf {
        let options = ConnectOptions { conf: Some(conf.clone()), id: store.id.clone(), keyring: store.keyring.clone() };
        let backend = LibrbdBackend::connect(&options)
            .with_context(|| format!("cannot connect to the Ceph cluster of {}", conf.display()))?;
        return Ok(Arc::new(backend));
    }
    Ok(open_embedded(store)?)
}

fn open_embedded(store: &StoreArgs) -> anyhow::Result<Arc<EmbeddedBackend>> {
    if store.conf.is_some() {
        bail!("this command works on the embedded store only (use Ceph's own tools on a cluster)");
    }
    let dir = match &store.store {
        Some(dir) => dir.clone(),
        None => default_store_dir()?,
    };
    let backend = EmbeddedBackend::open(&dir)
        .with_context(|| format!("cannot open the embedded store at {}", dir.display()))?;
    Ok(Arc::new(backend))
}

fn default_store_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return Ok(PathBuf::from(dir).join("rbd-wasm").join("store"));
    }
    match std::env::var_os("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/rbd-wasm/store")),
        None => bail!("no --store given, and neither RBD_WASM_STORE, XDG_DATA_HOME nor HOME is set"),
    }
}

fn run_job(args: RunArgs) -> ExitCode {
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
    let mut view = ProgressView::new(&job_id, mode);
    let result = (|| -> Result<(), JobError> {
        let (path, job_args, id, grants, limits, output_dir) = job_plan(&args)?;
        component_path = path;
        job_id = id.unwrap_or_else(|| {
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
        let (stdout, stderr) = match (args.json, mode) {
            (true, _) => (line_sink(true), line_sink(true)),
            (false, ProgressMode::Bars) => (line_sink(false), line_sink(true)),
            (false, _) => (OutputSink::Stdout, OutputSink::Stderr),
        };
        let job = JobConfig {
            job_id: job_id.clone(),
            args: job_args,
            backend,
            grants,
            limits,
            output_dir,
            stdout,
            stderr,
            progress: Some(view.sink()),
            audit,
            cancel: None,
            usage: Some(usage.clone()),
        };
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| JobError::Setup(format!("cannot start the async runtime: {e}")))?;
        tokio.block_on(runtime.run(&component, job))
    })();
    let progress = view.finish();
    let exit_code = match &result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rbd-wasm: {e}");
            e.exit_code().clamp(1, 255)
        }
    };
    if args.json {
        let report = RunReport {
            job_id,
            component: component_path,
            status: result.as_ref().err().map_or("ok", JobError::kind),
            exit_code,
            error: result.as_ref().err().map(|e| e.to_string()),
            elapsed_secs: started.elapsed().as_secs_f64(),
            usage: *usage.lock().unwrap_or_else(|p| p.into_inner()),
            progress,
        };
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("rbd-wasm: cannot write the report: {e}"),
        }
    }
    ExitCode::from(u8::try_from(exit_code).unwrap_or(1))
}

/// `NAME@SNAP` into its parts.
fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('@') {
        Some((name, snap)) => (name, Some(snap)),
        None => (spec, None),
    }
}

fn image_command(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Ls { store, pool } => {
            let backend = open_backend(&store)?;
            for name in backend.list(&pool)? {
                println!("{name}");
            }
        }
        ImageCommand::Info { store, pool, image } => {
            let backend = open_backend(&store)?;
            let (name, snap) = split_spec(&image);
            let img = backend.open(&pool, name, snap, true)?;
            print_info(&pool, &image, img.as_ref())?;
        }
        ImageCommand::Rm { store, pool, image } => open_backend(&store)?.remove(&pool, &image)?,
        ImageCommand::Read { store, pool, image, offset, length } => {
            let backend = open_backend(&store)?;
            let (name, snap) = split_spec(&image);
            let img = backend.open(&pool, name, snap, true)?;
            let mut out = std::io::stdout().lock();
            copy_out(img.as_ref(), offset, length, |chunk| out.write_all(chunk))?;
            out.flush()?;
        }
        ImageCommand::Export { store, pool, image, dest } => {
            let backend = open_backend(&store)?;
            let (name, snap) = split_spec(&image);
            let img = backend.open(&pool, name, snap, true)?;
            let size = img.size()?;
            if dest.as_os_str() == "-" {
                let mut out = std::io::stdout().lock();
                copy_out(img.as_ref(), 0, size, |chunk| out.write_all(chunk))?;
                out.flush()?;
            } else {
                // Zero chunks are skipped by seeking, so the file stays sparse.
                let mut file =
                    std::fs::File::create(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
                copy_out(img.as_ref(), 0, size, |chunk| {
                    if chunk.iter().all(|&b| b == 0) {
                        file.seek(std::io::SeekFrom::Current(chunk.len() as i64)).map(|_| ())
                    } else {
                        file.write_all(chunk)
                    }
                })?;
                file.set_len(size)?;
            }
        }
    }
    Ok(())
}

/// Hand `[offset, offset + length)` of an image (cut at its end) to `each`, a chunk at a time.
fn copy_out(
    img: &dyn Image,
    offset: u64,
    length: u64,
    mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    const CHUNK: u64 = 4 << 20;
    let end = offset.saturating_add(length).min(img.size()?);
    let mut pos = offset;
    while pos < end {
        let chunk = img.read(pos, CHUNK.min(end - pos))?;
        each(&chunk)?;
        pos += chunk.len() as u64;
    }
    Ok(())
}

fn print_info(pool: &str, spec: &str, img: &dyn Image) -> anyhow::Result<()> {
    let stat = img.stat()?;
    println!("rbd image '{spec}' in pool '{pool}':");
    println!("\tsize {} ({} bytes) in {} objects", human(stat.size), stat.size, stat.num_objs);
    println!("\torder {} ({} objects)", stat.order, human(stat.obj_size));
    println!("\tblock_name_prefix: {}", stat.block_name_prefix);
    println!("\tfeatures: {}", feature_names(img.features()?));
    println!("\tstripe unit {}, stripe count {}", human(img.stripe_unit()?), img.stripe_count()?);
    if let Some(parent) = img.parent_info()? {
        println!("\tparent: {}/{}@{}", parent.pool, parent.image, parent.snap);
    }
    let snaps = img.list_snaps()?;
    if !snaps.is_empty() {
        println!("\tsnapshots:");
        for s in snaps {
            let protected = if img.is_protected_snap(&s.name)? { " (protected)" } else { "" };
            println!("\t\t{:>4} {} {}{protected}", s.id, s.name, human(s.size));
        }
    }
    let locks = img.list_lockers()?;
    if !locks.lockers.is_empty() {
        let kind = if locks.exclusive { "exclusive".to_string() } else { format!("shared, tag '{}'", locks.tag) };
        println!("\tlock ({kind}):");
        for l in locks.lockers {
            println!("\t\t{} cookie '{}' at {}", l.client, l.cookie, l.address);
        }
    }
    Ok(())
}

fn feature_names(bits: u64) -> String {
    const NAMES: [(u64, &str); 8] = [
        (1, "layering"),
        (2, "striping"),
        (4, "exclusive-lock"),
        (8, "object-map"),
        (16, "fast-diff"),
        (32, "deep-flatten"),
        (64, "journaling"),
        (128, "data-pool"),
    ];
    let names: Vec<&str> = NAMES.iter().filter(|(b, _)| bits & b != 0).map(|(_, n)| *n).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn pool_command(cmd: PoolCommand) -> anyhow::Result<()> {
    match cmd {
        PoolCommand::Ls { store } => {
            for pool in open_backend(&store)?.list_pools()? {
                println!("{pool}");
            }
        }
        PoolCommand::Create { store, name } => open_embedded(&store)?.create_pool(&name)?,
    }
    Ok(())
}
