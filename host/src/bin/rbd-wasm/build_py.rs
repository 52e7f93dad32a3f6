//! `rbd-wasm build-py`: turn a Python job into a component of the job world, offline.
//!
//! The work is componentize-py's (pinned: [`COMPONENTIZE_PY_VERSION`], installed by
//! `scripts/install-py-deps.sh` into a virtualenv of its own). This command hands it the
//! job's WIT world and the Python SDK (`rados`, `rbd`, `rbd_wasm`), both compiled into this
//! binary, so a job is always built against the interface of the host that will run it, and
//! building needs neither the repository nor the network. componentize-py generates the
//! bindings from the WIT at every build, imports the job (see `python/sdk/rbd_wasm.py` for
//! what runs at build time and what at run time) and snapshots the interpreter.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;

/// The componentize-py release jobs are built with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The job world, as the host implements it.
const WIT: &[(&str, &str)] = &[
    ("types.wit", include_str!("../../../../wit/types.wit")),
    ("rbd.wit", include_str!("../../../../wit/rbd.wit")),
    ("world.wit", include_str!("../../../../wit/world.wit")),
    // WASI's streams, which the data plane's functions take.
    ("deps/io/io.wit", include_str!("../../../../wit/deps/io/io.wit")),
];

/// The Python SDK.
const SDK: &[(&str, &str)] = &[
    ("rados.py", include_str!("../../../../python/sdk/rados.py")),
    ("rbd.py", include_str!("../../../../python/sdk/rbd.py")),
    ("rbd_wasm.py", include_str!("../../../../python/sdk/rbd_wasm.py")),
];

/// The module componentize-py is told to wrap; it exports the job's `Job` class.
const ENTRY_MODULE: &str = "_rbd_wasm_main";

/// Module names a job may not take: the SDK's, the bindings', and the entry module's.
const RESERVED: &[&str] = &[
    "rados",
    "rbd",
    "rbd_wasm",
    ENTRY_MODULE,
    "wit_world",
    "componentize_py_types",
    "componentize_py_runtime",
    "componentize_py_async_support",
    "poll_loop",
];

#[derive(Args)]
pub struct BuildPyArgs {
    /// The job: a Python file that either defines `run(args)` or is a script (see
    /// docs/python.md). Modules next to it can be imported by it.
    job: PathBuf,
    /// The component to write. Default: the job's path with `.wasm`.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Another directory of Python modules the job imports (repeatable).
    #[arg(short = 'p', long = "python-path")]
    python_path: Vec<PathBuf>,
    /// The componentize-py executable. Default: the one scripts/install-py-deps.sh installs,
    /// `$RBD_WASM_PY_HOME/venv/bin/componentize-py` (`RBD_WASM_PY_HOME` defaults to
    /// `$XDG_DATA_HOME/rbd-wasm/py`, else `~/.local/share/rbd-wasm/py`).
    #[arg(long, env = "RBD_WASM_COMPONENTIZE_PY")]
    componentize_py: Option<PathBuf>,
}

pub fn build_py(args: BuildPyArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let module = job_module(&args.job)?;
    let job_dir = absolute(args.job.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    let output = args.output.clone().unwrap_or_else(|| args.job.with_extension("wasm"));
    let tool = componentize_py(args.componentize_py.as_deref())?;

    let work = WorkDir::new()?;
    let wit_dir = work.path().join("wit");
    let sdk_dir = work.path().join("sdk");
    for (dir, files) in [(&wit_dir, WIT), (&sdk_dir, SDK)] {
        std::fs::create_dir_all(dir)?;
        for (name, text) in files {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, text)?;
        }
    }
    std::fs::write(
        sdk_dir.join(format!("{ENTRY_MODULE}.py")),
        format!(
            "# Written by rbd-wasm build-py: the component's entry module.\n\
             import sys\n\
             sys.dont_write_bytecode = True  # no __pycache__ beside the job's sources\n\
             import rbd_wasm\n\n\
             Job = rbd_wasm.load_job({module:?})\n"
        ),
    )?;

    // Written beside the destination and renamed, so a failed build leaves no component.
    let partial = output.with_extension(format!("wasm.partial.{}", std::process::id()));
    let mut cmd = Command::new(&tool);
    cmd.current_dir(work.path())
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYTHONPATH")
        // Its Python traceback says what is wrong; its own Rust backtrace would bury it.
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .arg("-d")
        .arg(&wit_dir)
        .args(["-w", "job-world", "--quiet", "componentize", "-p"])
        .arg(&sdk_dir)
        .arg("-p")
        .arg(&job_dir);
    for dir in &args.python_path {
        cmd.arg("-p").arg(absolute(dir)?);
    }
    cmd.arg(ENTRY_MODULE).arg("-o").arg(absolute(&partial)?);
    let out = cmd.output().with_context(|| format!("cannot run {}", tool.display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "componentize-py could not build {} ({}):\n{}{}",
            args.job.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::rename(&partial, &output).with_context(|| format!("cannot write {}", output.display()))?;
    let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "built {} ({:.1} MB) from {} in {:.1} s",
        output.display(),
        size as f64 / 1e6,
        args.job.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The job's module name: its file stem, which must be a Python identifier of its own.
fn job_module(job: &Path) -> anyhow::Result<String> {
    if !job.is_file() {
        bail!("no Python job at {}", job.display());
    }
    if job.extension().is_none_or(|e| e != "py") {
        bail!("{} is not a Python file (.py)", job.display());
    }
    let stem = job.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let identifier = stem.chars().next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && stem.chars().all(|c| c == '_' || c.is_alphanumeric());
    if !identifier {
        bail!("the job's file name must be a Python module name (letters, digits, `_`): {stem:?}");
    }
    if RESERVED.contains(&stem) {
        bail!("a job cannot be called {stem}.py: that is a module of the SDK or of its bindings; rename it");
    }
    Ok(stem.to_owned())
}

/// The componentize-py to use, checked to be the pinned release.
fn componentize_py(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    const INSTALL: &str = "run scripts/install-py-deps.sh (it installs componentize-py into $RBD_WASM_PY_HOME, \
                           default ~/.local/share/rbd-wasm/py), or name one with --componentize-py";
    let tool = match explicit {
        Some(path) => path.to_owned(),
        None => py_home()?.join("venv/bin/componentize-py"),
    };
    if !tool.is_file() {
        bail!("componentize-py {COMPONENTIZE_PY_VERSION} is not installed: no {}; {INSTALL}", tool.display());
    }
    let out = Command::new(&tool)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}; {INSTALL}", tool.display()))?;
    let version = String::from_utf8_lossy(&out.stdout);
    let version = version.trim();
    if version != format!("componentize-py {COMPONENTIZE_PY_VERSION}") {
        bail!("{} is `{version}`, not componentize-py {COMPONENTIZE_PY_VERSION}; {INSTALL}", tool.display());
    }
    Ok(tool)
}

/// Where scripts/install-py-deps.sh installs: the same rule, in the same order.
fn py_home() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("RBD_WASM_PY_HOME") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return Ok(PathBuf::from(dir).join("rbd-wasm/py"));
    }
    match std::env::var_os("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/rbd-wasm/py")),
        None => bail!("neither RBD_WASM_PY_HOME, XDG_DATA_HOME nor HOME is set: cannot find componentize-py"),
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// A scratch directory for one build, removed however the build ends.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("rbd-wasm-build-py.{}.{:x}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(WorkDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
