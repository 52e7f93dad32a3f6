//! Python jobs (`python/sdk`, `rbd-wasm build-py`, componentize-py) under the same host and
//! sandbox as Rust ones, on both backends: the reference text's three examples make the
//! image the Rust `hello` job makes; the SDK answers every call in python-rbd's shapes and
//! raises python-rbd's exceptions; a failing job's message is its exception's; the
//! snapshot-rotation job keeps the newest N; and a warm Python job starts in under 100 ms.
//!
//! The components are built with the `rbd-wasm` binary's `build-py` (so the command itself is
//! under test), into `target/python-jobs/`, named by a hash of everything that goes into
//! them, so an unchanged job is not built again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use rbd_wasm::backend::{Backend, Extent, ImageStat};
use rbd_wasm::capability::{Grant, Grants};
use rbd_wasm::runtime::{JobComponent, JobError, JobLimits};
use rbd_wasm_tests::{
    ceph_conf, embedded_store, host_binary, run_loaded_component, run_with, runtime, test_cache_dir, unique_prefix,
    workspace_root, JobRun,
};
use sha2::{Digest, Sha256};

/// The reference text's examples, each a script that creates `myimage` in its pool.
const REFERENCE_EXAMPLES: &[(&str, &str)] = &[
    ("examples/python/create_and_write.py", "mypool"),
    ("examples/python/try_finally.py", "my_pool"),
    ("examples/python/context_managers.py", "mypool"),
];

/// Taken for reading by every test, for writing by the timing test, so that no build or
/// compilation of this binary's other tests runs while it measures.
static TIMING: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    TIMING.read().unwrap_or_else(|p| p.into_inner())
}

/// The inputs of a Python component: the job, the SDK and the WIT it is built against, and
/// `build-py` itself (which writes the entry module).
fn inputs_digest(job: &Path) -> String {
    let root = workspace_root();
    let mut files = vec![job.to_owned(), root.join("host/src/bin/rbd-wasm/build_py.rs")];
    for dir in ["python/sdk", "wit"] {
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(root.join(dir)).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
        entries.sort();
        files.extend(entries);
    }
    let mut sha = Sha256::new();
    for file in files {
        sha.update(file.file_name().unwrap().as_encoded_bytes());
        sha.update(std::fs::read(&file).unwrap());
    }
    hex::encode(&sha.finalize()[..8])
}

/// `rbd-wasm build-py` on a job of the repository (a path relative to its root): the
/// component, built unless one of the same inputs is there already. One build at a time.
fn python_job(relative: &str) -> PathBuf {
    static BUILDS: Mutex<()> = Mutex::new(());
    let job = workspace_root().join(relative);
    let stem = job.file_stem().unwrap().to_str().unwrap().to_owned();
    let dir = test_cache_dir().parent().unwrap().join("python-jobs");
    let out = dir.join(format!("{stem}-{}.wasm", inputs_digest(&job)));
    let _one_at_a_time = BUILDS.lock().unwrap_or_else(|p| p.into_inner());
    if out.exists() {
        return out;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let started = Instant::now();
    let build = Command::new(host_binary()).arg("build-py").arg(&job).arg("-o").arg(&out).output().expect("run rbd-wasm build-py");
    let stderr = String::from_utf8_lossy(&build.stderr);
    assert!(
        !stderr.contains("componentize-py 0.25.1 is not installed"),
        "componentize-py is not installed: run scripts/install-py-deps.sh (scripts/test.sh does)\n{stderr}"
    );
    assert!(build.status.success(), "rbd-wasm build-py {relative} failed: {stderr}");
    eprintln!("built {relative} in {:.1} s", started.elapsed().as_secs_f64());
    out
}

/// A Python component, loaded (compiled, or taken from the compiled-component cache) once
/// per test process.
fn python_component(relative: &str) -> (PathBuf, JobComponent) {
    static LOADED: Mutex<Vec<(String, PathBuf, JobComponent)>> = Mutex::new(Vec::new());
    let path = python_job(relative);
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, path, c)) = loaded.iter().find(|(r, _, _)| r == relative) {
        return (path.clone(), c.clone());
    }
    let c = runtime().load(&path).unwrap_or_else(|e| panic!("loading {relative}: {e}"));
    loaded.push((relative.to_owned(), path.clone(), c.clone()));
    (path, c)
}

/// Run a loaded component with its output captured, granted every operation on `pools`.
fn run_loaded(component: &JobComponent, job_id: &str, args: &[&str], backend: Arc<dyn Backend>, pools: &[&str]) -> JobRun {
    run_loaded_component(component, job_id, args, backend, pools, None)
}

fn run_python(relative: &str, args: &[&str], backend: Arc<dyn Backend>, pools: &[&str]) -> JobRun {
    let (_, component) = python_component(relative);
    let job_id = Path::new(relative).file_stem().unwrap().to_str().unwrap().to_owned();
    run_loaded(&component, &job_id, args, backend, pools)
}

fn failure(run: &JobRun) -> String {
    match &run.result {
        Err(JobError::Failed(message)) => message.clone(),
        other => panic!("expected a failed job, got {other:?}\n--- stdout\n{}\n--- stderr\n{}", run.stdout, run.stderr),
    }
}

/// Everything a job could have made of an image, but its object-name prefix.
#[derive(Debug, PartialEq)]
struct ImageFacts {
    stat: ImageStat,
    features: u64,
    snapshots: usize,
    extents: Vec<Extent>,
    head: Vec<u8>,
}

fn image_facts(backend: &dyn Backend, pool: &str, name: &str) -> ImageFacts {
    let image = backend.open(pool, name, None, true).unwrap_or_else(|e| panic!("{pool}/{name}: {e}"));
    let stat = ImageStat { block_name_prefix: String::new(), ..image.stat().unwrap() };
    let mut extents = Vec::new();
    image.diff_iterate(0, stat.size, None, true, false, &mut |e| extents.push(e)).unwrap();
    ImageFacts {
        features: image.features().unwrap(),
        snapshots: image.list_snaps().unwrap().len(),
        extents,
        head: image.read(0, 64 << 10).unwrap(),
        stat,
    }
}

/// Each reference example makes `myimage` in its pool exactly as the Rust `hello` job makes
/// an image (`hello POOL NAME`: the same calls in Rust): same size, layout, features, data
/// and extents. The examples name their pool, so `myimage` is removed after each.
fn reference_examples_make_what_hello_makes(backend: Arc<dyn Backend>) {
    for &(example, pool) in REFERENCE_EXAMPLES {
        if backend.list(pool).unwrap().iter().any(|n| n == "myimage") {
            backend.remove(pool, "myimage").unwrap(); // left by an interrupted run
        }
        let py = run_python(example, &[], backend.clone(), &[pool]);
        py.assert_ok();
        assert_eq!(py.stdout, "", "{example} prints nothing");
        let python = image_facts(backend.as_ref(), pool, "myimage");
        backend.remove(pool, "myimage").unwrap();

        let rust_image = unique_prefix("hello");
        run_with("hello", &[pool, &rust_image], backend.clone(), Grants::new(vec![Grant::full(pool)]), JobLimits::default())
            .assert_ok();
        let rust = image_facts(backend.as_ref(), pool, &rust_image);
        backend.remove(pool, &rust_image).unwrap();

        assert_eq!(python.stat.size, 4 << 30, "{example}");
        assert_eq!(&python.head[..600], "foo".repeat(200).as_bytes(), "{example}");
        assert_eq!(python, rust, "{example} and hello made different images");
    }
}

/// A pool the job was not granted is one that does not exist, and the example fails as it
/// would under python-rados: `ObjectNotFound`, errno 2, the same message.
fn ungranted_pool_fails_as_a_missing_pool(backend: Arc<dyn Backend>) -> String {
    let job = run_python("examples/python/create_and_write.py", &[], backend.clone(), &["rbd"]);
    let message = failure(&job);
    assert_eq!(message, "ObjectNotFound: [errno 2] RADOS object not found (error opening pool 'mypool')");
    assert!(job.stderr.contains("Traceback") && job.stderr.contains("rados.ObjectNotFound"), "{}", job.stderr);
    message
}

/// Every check of `python/tests/sdk_api.py`; the lines it printed.
fn sdk_api_checks_pass(backend: Arc<dyn Backend>) -> Vec<String> {
    let prefix = unique_prefix("pysdk");
    let job = run_python("python/tests/sdk_api.py", &["api", "rbd", "rbd2", &prefix], backend.clone(), &["rbd", "rbd2"]);
    job.assert_ok();
    let lines: Vec<String> = job.stdout.lines().map(str::to_owned).collect();
    assert!(lines.len() >= 75 && lines.iter().all(|l| l.starts_with("ok ")), "{}", job.stdout);
    for pool in ["rbd", "rbd2"] {
        assert!(!backend.list(pool).unwrap().iter().any(|n| n.starts_with(&prefix)), "the job left images in {pool}");
    }
    lines
}

/// `snap_rotate.py` on an image `hello` made: four days of snapshots with `--keep 2` leave
/// the newest two; a dry run prints what it would do and changes nothing.
fn snap_rotate_keeps_the_newest(backend: Arc<dyn Backend>) {
    const JOB: &str = "examples/python/snap_rotate.py";
    let image = unique_prefix("pyrot");
    run_with("hello", &["rbd", &image], backend.clone(), Grants::new(vec![Grant::full("rbd")]), JobLimits::default()).assert_ok();
    let snaps = || -> Vec<String> {
        backend.open("rbd", &image, None, true).unwrap().list_snaps().unwrap().into_iter().map(|s| s.name).collect()
    };
    {
        let img = backend.open("rbd", &image, None, false).unwrap();
        img.create_snap("manual").unwrap();
    }
    for day in 1..=4 {
        let now = format!("2026-11-0{day}T01:00:00Z");
        let job = run_python(JOB, &["rbd", &image, "--keep", "2", "--now", &now], backend.clone(), &["rbd"]);
        job.assert_ok();
        assert!(job.stdout.contains(&format!("create rbd/{image}@auto-2026110{day}T010000Z")), "{}", job.stdout);
    }
    assert_eq!(snaps(), ["manual", "auto-20261103T010000Z", "auto-20261104T010000Z"]);

    let dry = run_python(JOB, &["rbd", &image, "--keep", "1", "--now", "2026-11-05T01:00:00Z", "--dry-run"], backend.clone(), &["rbd"]);
    dry.assert_ok();
    let lines: Vec<&str> = dry.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("would create rbd/{image}@auto-20261105T010000Z"),
            format!("would remove rbd/{image}@auto-20261103T010000Z"),
            format!("would remove rbd/{image}@auto-20261104T010000Z"),
            format!("rbd/{image}: would create 1, remove 2, keep 1"),
        ]
    );
    assert_eq!(snaps(), ["manual", "auto-20261103T010000Z", "auto-20261104T010000Z"], "a dry run changes nothing");

    let usage = run_python(JOB, &["rbd"], backend.clone(), &["rbd"]);
    assert_eq!(failure(&usage), "the job exited with status 2");
    assert!(usage.stderr.contains("the following arguments are required: image"), "{}", usage.stderr);

    let img = backend.open("rbd", &image, None, false).unwrap();
    for name in snaps() {
        img.remove_snap(&name).unwrap();
    }
    drop(img);
    backend.remove("rbd", &image).unwrap();
}

mod embedded {
    use super::*;

    fn reference_store() -> rbd_wasm_tests::TestStore {
        let store = embedded_store();
        store.backend.create_pool("mypool").unwrap();
        store.backend.create_pool("my_pool").unwrap();
        store
    }

    #[test]
    fn reference_examples_make_what_the_rust_hello_job_makes() {
        let _shared = shared();
        let store = reference_store();
        reference_examples_make_what_hello_makes(store.backend.clone());
    }

    #[test]
    fn ungranted_pool_raises_object_not_found() {
        let _shared = shared();
        let store = reference_store();
        ungranted_pool_fails_as_a_missing_pool(store.backend.clone());
    }

    #[test]
    fn sdk_api_answers_like_python_rbd() {
        let _shared = shared();
        sdk_api_checks_pass(embedded_store().backend.clone());
    }

    #[test]
    fn snap_rotate_keeps_the_newest_n() {
        let _shared = shared();
        snap_rotate_keeps_the_newest(embedded_store().backend.clone());
    }

    #[test]
    fn an_exception_fails_the_job_with_its_class_and_message() {
        let _shared = shared();
        let store = embedded_store();
        let job = run_python("python/tests/sdk_api.py", &["raise"], store.backend.clone(), &["rbd"]);
        assert_eq!(failure(&job), "ValueError: this job fails on purpose");
        assert!(job.stderr.contains("Traceback (most recent call last)"), "{}", job.stderr);
        assert!(!job.stderr.contains("rbd_wasm.py"), "the SDK's own frames are left out: {}", job.stderr);

        let job = run_python("python/tests/sdk_api.py", &["missing-image", "rbd"], store.backend.clone(), &["rbd"]);
        let message = failure(&job);
        assert!(message.starts_with("ImageNotFound: [errno 2] RBD image not found ("), "{message}");
    }

    #[test]
    fn sys_exit_zero_succeeds_and_nonzero_fails() {
        let _shared = shared();
        let store = embedded_store();
        run_python("python/tests/sdk_api.py", &["exit", "0"], store.backend.clone(), &["rbd"]).assert_ok();
        let job = run_python("python/tests/sdk_api.py", &["exit", "3"], store.backend.clone(), &["rbd"]);
        assert_eq!(failure(&job), "the job exited with status 3");
    }

    #[test]
    fn progress_reports_reach_the_host() {
        let _shared = shared();
        let job = run_python("python/tests/sdk_api.py", &["progress"], embedded_store().backend.clone(), &["rbd"]);
        job.assert_ok();
        assert_eq!(job.stdout, "reported\n");
    }

    #[test]
    fn a_script_runs_at_every_run_as_main_with_sys_argv() {
        let _shared = shared();
        const JOB: &str = "python/tests/script_job.py";
        let store = embedded_store();
        for _ in 0..2 {
            let job = run_python(JOB, &["a", "b"], store.backend.clone(), &["rbd"]);
            job.assert_ok();
            assert_eq!(job.stdout, "{\"name\": \"__main__\", \"argv\": [\"script_job\", \"a\", \"b\"]}\n");
        }
        let job = run_python(JOB, &["raise"], store.backend.clone(), &["rbd"]);
        assert_eq!(failure(&job), "RuntimeError: the script fails on purpose");
        let job = run_python(JOB, &["exit", "4"], store.backend.clone(), &["rbd"]);
        assert_eq!(failure(&job), "the job exited with status 4");
    }

    /// The WASI imports of a componentize-py component are all linked, and all deny: no
    /// environment, no host files, no network; only `/out`, and only when it is mapped.
    #[test]
    fn the_sandbox_denies_environment_files_and_network() {
        let _shared = shared();
        let (_, component) = python_component("python/tests/sdk_api.py");
        let store = embedded_store();
        let lines = |job: &JobRun| -> Vec<String> {
            job.assert_ok();
            job.stdout.lines().map(str::to_owned).collect()
        };
        let unmapped = lines(&run_loaded(&component, "sdk_api", &["sandbox"], store.backend.clone(), &["rbd"]));
        assert_eq!(
            unmapped,
            [
                "environment: {}",
                "read /etc/passwd: FileNotFoundError",
                "list /: FileNotFoundError",
                "connect localhost:22: gaierror",
                "connect 127.0.0.1:22: PermissionError",
                "write /out/hello.txt: FileNotFoundError",
            ]
        );
        let out = tempfile::tempdir().unwrap();
        let mapped = lines(&run_loaded_component(&component, "sdk_api", &["sandbox"], store.backend.clone(), &["rbd"], Some(out.path())));
        assert_eq!(mapped[5], "write /out/hello.txt: ok ['hello.txt']");
        assert_eq!(std::fs::read_to_string(out.path().join("hello.txt")).unwrap(), "hello from python\n");
        assert_eq!(mapped[..5], unmapped[..5], "mapping /out opens nothing else");
    }

    /// The acceptance criterion: with the compiled component cached, a Python job is loaded,
    /// instantiated and run (create a 4 GiB image and write 600 bytes) in under 100 ms. The
    /// first run may compile it (tens of seconds) and fills the cache; the second is timed
    /// from the `.wasm` file, as `rbd-wasm run` would start it.
    #[test]
    fn a_warm_python_job_starts_in_under_100_ms() {
        let path = python_job("examples/python/create_and_write.py");
        let _alone = TIMING.write().unwrap_or_else(|p| p.into_inner());
        let mut times = Vec::new();
        for round in 0..3 {
            let store = reference_store();
            let started = Instant::now();
            let component = runtime().load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
            let loaded = started.elapsed();
            let job = run_loaded(&component, "create_and_write", &[], store.backend.clone(), &["mypool"]);
            let total = started.elapsed();
            job.assert_ok();
            eprintln!("run {}: load {loaded:?}, load + instantiate + run {total:?}", round + 1);
            times.push(total);
        }
        // What the cache key (the SHA-256 of the component) costs in this build of the tests.
        let bytes = std::fs::read(&path).unwrap();
        let started = Instant::now();
        let _ = Sha256::digest(&bytes);
        eprintln!("sha256 of the {:.1} MB component: {:?}", bytes.len() as f64 / 1e6, started.elapsed());
        assert!(times[1] < Duration::from_millis(100), "the second run took {:?} (runs: {times:?})", times[1]);
    }

    #[test]
    fn build_py_explains_what_is_missing_or_wrong() {
        let _shared = shared();
        let dir = tempfile::tempdir().unwrap();
        let build = |job: &Path, env: &[(&str, &str)]| {
            let mut cmd = Command::new(host_binary());
            cmd.arg("build-py").arg(job).arg("-o").arg(dir.path().join("out.wasm"));
            for (k, v) in env {
                cmd.env(k, v);
            }
            let out = cmd.output().unwrap();
            assert!(!out.status.success(), "build-py {} succeeded", job.display());
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        let job = dir.path().join("job.py");
        std::fs::write(&job, "def run(args):\n    pass\n").unwrap();

        let stderr = build(&job, &[("RBD_WASM_PY_HOME", "/nonexistent/rbd-wasm-py")]);
        assert!(stderr.contains("scripts/install-py-deps.sh"), "{stderr}");
        assert!(stderr.contains("/nonexistent/rbd-wasm-py/venv/bin/componentize-py"), "{stderr}");

        let reserved = dir.path().join("rbd.py");
        std::fs::write(&reserved, "").unwrap();
        assert!(build(&reserved, &[]).contains("cannot be called rbd.py"));
        let not_python = dir.path().join("job.txt");
        std::fs::write(&not_python, "").unwrap();
        assert!(build(&not_python, &[]).contains("not a Python file"));
        assert!(build(&dir.path().join("missing.py"), &[]).contains("no Python job at"));

        // A job that does not compile: componentize-py's own error, and no component.
        let broken = dir.path().join("broken.py");
        std::fs::write(&broken, "def run(args):\n    return (\n").unwrap();
        let stderr = build(&broken, &[]);
        assert!(stderr.contains("SyntaxError"), "{stderr}");
        let shadowing = dir.path().join("json.py");
        std::fs::write(&shadowing, "def run(args):\n    pass\n").unwrap();
        assert!(build(&shadowing, &[]).contains("a job cannot be called json.py: that is a module of Python's standard library"));
        let left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(left.iter().all(|n| !n.starts_with("out.wasm")), "a failed build leaves no output: {left:?}");
    }
}

mod librbd {
    use super::*;

    /// The reference examples' pools, created on the test cluster when missing.
    fn ensure_reference_pools() {
        static READY: OnceLock<()> = OnceLock::new();
        READY.get_or_init(|| {
            let conf = ceph_conf();
            let ceph = |tool: &str, args: &[&str]| {
                let out = Command::new(tool).arg("-c").arg(&conf).args(args).output().unwrap_or_else(|e| panic!("{tool}: {e}"));
                assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let pools = ceph("ceph", &["osd", "pool", "ls"]);
            for &(_, pool) in REFERENCE_EXAMPLES {
                if !pools.lines().any(|l| l == pool) {
                    ceph("ceph", &["osd", "pool", "create", pool, "8", "8"]);
                    ceph("rbd", &["pool", "init", pool]);
                }
            }
        });
    }

    #[test]
    fn reference_examples_make_what_the_rust_hello_job_makes() {
        let _shared = shared();
        ensure_reference_pools();
        reference_examples_make_what_hello_makes(rbd_wasm_tests::librbd_backend());
    }

    /// The failure message is python-rados's own, asked of the real module on the cluster.
    #[test]
    fn ungranted_pool_raises_object_not_found_as_python_rados_does() {
        let _shared = shared();
        ensure_reference_pools();
        let ours = ungranted_pool_fails_as_a_missing_pool(rbd_wasm_tests::librbd_backend());
        let missing = unique_prefix("nopool");
        let script = format!(
            "import rados\nc = rados.Rados(conffile={conf:?})\nc.connect()\ntry:\n    c.open_ioctx({missing:?})\n\
             except rados.Error as e:\n    print(f'{{type(e).__name__}}: {{e}}')\nc.shutdown()\n",
            conf = ceph_conf().to_str().unwrap()
        );
        let out = Command::new("/usr/bin/python3").arg("-c").arg(&script).output().expect("run python-rados");
        let theirs = String::from_utf8_lossy(&out.stdout).trim().replace(&missing, "mypool");
        assert_eq!(ours, theirs);
    }

    /// The same checks pass on Ceph, and print the same lines as on the embedded store.
    #[test]
    fn sdk_api_answers_like_python_rbd() {
        let _shared = shared();
        let on_ceph = sdk_api_checks_pass(rbd_wasm_tests::librbd_backend());
        let embedded = sdk_api_checks_pass(embedded_store().backend.clone());
        assert_eq!(on_ceph, embedded);
    }

    #[test]
    fn snap_rotate_keeps_the_newest_n() {
        let _shared = shared();
        snap_rotate_keeps_the_newest(rbd_wasm_tests::librbd_backend());
    }
}
