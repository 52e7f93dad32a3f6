//! JavaScript jobs (jco + componentize-js, `scripts/build-js.sh`) run under the same host
//! and sandbox as Rust ones: `examples/js/hello.js` does what `examples/hello` does, on both
//! backends, with the same results; its errors arrive as the job's failure message.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use rbd_wasm::backend::Backend;
use rbd_wasm::runtime::JobError;
use rbd_wasm_tests::{run, run_component, unique_prefix, workspace_root};

fn newest(paths: &[PathBuf]) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(m) = std::fs::metadata(&p).and_then(|m| m.modified()) {
            newest = newest.max(m);
        }
    }
    newest
}

/// `examples/js/hello.js` as a component, built when its sources are newer.
fn hello_js() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = workspace_root();
        let out = root.join("target/js/hello.wasm");
        let sources = newest(&[root.join("examples/js"), root.join("js/sdk"), root.join("js/bundle.config.js"), root.join("wit")]);
        let fresh = std::fs::metadata(&out).and_then(|m| m.modified()).is_ok_and(|built| built >= sources);
        if !fresh {
            assert!(
                root.join("js/node_modules/.bin/jco").exists(),
                "jco is not installed: run scripts/install-js-deps.sh (scripts/test.sh does)"
            );
            let status = Command::new(root.join("scripts/build-js.sh"))
                .arg(root.join("examples/js/hello.js"))
                .arg(&out)
                .status()
                .expect("run scripts/build-js.sh");
            assert!(status.success(), "building examples/js/hello.js failed: {status}");
        }
        out
    })
}

/// The JavaScript job and the Rust one, each on its own image of `backend`: same output
/// line, same image (size and bytes), same error when the image exists.
fn hello_js_does_what_the_rust_hello_does(backend: Arc<dyn Backend>) {
    let prefix = unique_prefix("js");
    let (js_image, rust_image) = (format!("{prefix}-js"), format!("{prefix}-rust"));
    let js = run_component(hello_js(), "hello", &["rbd", &js_image], backend.clone());
    js.assert_ok();
    let rust = run("hello", &["rbd", &rust_image], backend.clone());
    rust.assert_ok();
    assert_eq!(js.stdout.replace(&js_image, "IMG"), rust.stdout.replace(&rust_image, "IMG"));

    let (a, b) = (backend.open("rbd", &js_image, None, true).unwrap(), backend.open("rbd", &rust_image, None, true).unwrap());
    assert_eq!(a.size().unwrap(), b.size().unwrap());
    assert_eq!(a.read(0, 8192).unwrap(), b.read(0, 8192).unwrap());
    let stat = |i: &dyn rbd_wasm::backend::Image| rbd_wasm::backend::ImageStat { block_name_prefix: String::new(), ..i.stat().unwrap() };
    assert_eq!(stat(a.as_ref()), stat(b.as_ref()));
    assert_eq!(a.features().unwrap(), b.features().unwrap());

    // The second run fails as the Rust one does: the image exists.
    let again = run_component(hello_js(), "hello", &["rbd", &js_image], backend.clone());
    match again.result {
        Err(JobError::Failed(message)) => assert!(message.starts_with("exists: "), "{message}"),
        other => panic!("expected `exists`, got {other:?}"),
    }
    // A pool it was not granted does not exist for it.
    match run_component(hello_js(), "hello", &["secret", "x"], backend.clone()).result {
        Err(JobError::Failed(message)) => assert!(message.starts_with("not-found: "), "{message}"),
        other => panic!("expected `not-found`, got {other:?}"),
    }
}

mod embedded {
    #[test]
    fn hello_js_does_what_the_rust_hello_does() {
        super::hello_js_does_what_the_rust_hello_does(rbd_wasm_tests::embedded_store().backend.clone());
    }
}

mod librbd {
    #[test]
    fn hello_js_does_what_the_rust_hello_does() {
        super::hello_js_does_what_the_rust_hello_does(rbd_wasm_tests::librbd_backend());
    }
}
