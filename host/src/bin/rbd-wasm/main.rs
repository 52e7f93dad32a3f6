//! The `rbd-wasm` command line: one module per subcommand (`run`, `image`, `pool`,
//! `build-py`); the terminal UI (progress bars, plain progress lines) is [`progress`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use rbd_wasm::backend::embedded::EmbeddedBackend;
use rbd_wasm::backend::librbd::{ConnectOptions, LibrbdBackend};
use rbd_wasm::backend::Backend;

mod build_py;
mod image;
mod pool;
mod progress;
mod report;
mod run;
mod serve;

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
    Run(run::RunArgs),
    /// Look at images without writing a job.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// List or create pools of the embedded store.
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// Build a Python job into a component (offline, with the pinned componentize-py that
    /// scripts/install-py-deps.sh installs): `rbd-wasm build-py app.py -o job.wasm`.
    BuildPy(build_py::BuildPyArgs),
    /// Run the jobs of a configuration on their schedules, once per tick between every
    /// process serving it (on any host), with /metrics, /status and /healthz over HTTP.
    Serve(serve::ServeArgs),
}

/// Where the images are: a Ceph cluster (with `--conf`), else the embedded store.
#[derive(Args, Clone)]
pub(crate) struct StoreArgs {
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


fn main() -> ExitCode {
    // wasmtime-wasi-http logs a warning for every exchange that fails, which a job decides
    // (a flood of them would be output no limit bounds); the audit log records each one.
    // Colour only on a terminal: a log file or a `--json` caller gets plain text.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RBD_WASM_LOG")
                .unwrap_or_else(|_| "warn,wasmtime_wasi_http=error".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    raise_open_file_limit();
    bound_the_allocators_retained_memory();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::run_job(args),
        Command::Image(cmd) => report(image::image_command(cmd)),
        Command::Pool(cmd) => report(pool::pool_command(cmd)),
        Command::BuildPy(args) => report(build_py::build_py(args)),
        Command::Serve(args) => serve::serve(args),
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
pub(crate) fn open_backend(store: &StoreArgs) -> anyhow::Result<Arc<dyn Backend>> {
    if let Some(conf) = &store.conf {
        let options = ConnectOptions { conf: Some(conf.clone()), id: store.id.clone(), keyring: store.keyring.clone(), ..ConnectOptions::default() };
        let backend = LibrbdBackend::connect(&options)
            .with_context(|| format!("cannot connect to the Ceph cluster of {}", conf.display()))?;
        return Ok(Arc::new(backend));
    }
    Ok(open_embedded(store)?)
}

pub(crate) fn open_embedded(store: &StoreArgs) -> anyhow::Result<Arc<EmbeddedBackend>> {
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

pub(crate) fn default_store_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return Ok(PathBuf::from(dir).join("rbd-wasm").join("store"));
    }
    match std::env::var_os("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/rbd-wasm/store")),
        None => bail!("no --store given, and neither RBD_WASM_STORE, XDG_DATA_HOME nor HOME is set"),
    }
}

/// Keep the allocator's retained memory bounded without paying for fresh pages on every
/// I/O buffer. Job I/O moves through buffers of up to 4 MiB that blocking-pool threads
/// allocate and free. With glibc's defaults its mmap threshold rises after the first such
/// buffer is freed (up to 32 MiB) and every thread's arena keeps freed buffers: a 1 TiB
/// backup peaked at 331 MiB. With a low fixed threshold (128 KiB) every buffer is mapped
/// and unmapped, and the kernel zeroing fresh pages took a fifth of the host's CPU. One
/// arena and a fixed 32 MiB threshold reuse the buffers, and the heap's top is trimmed
/// only past 64 MiB free: with the data plane's buffers churning, a trim at 8 MiB made the
/// kernel zero the same pages again and again (half the host's CPU on a restore, twice the
/// CPU of a backup; bench/README.md, "Memory"), while the 1 TiB test's runs peak at
/// 64-151 MiB either way. A fixed threshold also turns the dynamic raise off.
fn bound_the_allocators_retained_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// Raise the soft limit of open files to the hard one: a job may hold up to its handle
/// quota of files (1024 by default), and librados and the host need their own beside them.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("cannot raise the open-file limit: {}", std::io::Error::last_os_error());
            }
        }
    }
}
