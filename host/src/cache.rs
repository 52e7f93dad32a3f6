//! Compiled components, cached on disk.
//!
//! Compiling a component takes tens of milliseconds for a small Rust guest and tens of
//! seconds for a Python one; loading a compiled one takes well under a millisecond. The
//! cache key is the SHA-256 of the component's bytes plus wasmtime's compatibility hash of
//! the engine's settings, so a host upgrade or a config change never loads stale code.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// A directory of precompiled components (`<key>.cwasm`).
pub struct ComponentCache {
    dir: Option<PathBuf>,
}

impl ComponentCache {
    /// A cache in `dir`, or no cache at all with `None` (every load compiles).
    pub fn new(dir: Option<PathBuf>) -> Self {
        ComponentCache { dir }
    }

    /// The default directory: `$RBD_WASM_CACHE`, else `$XDG_CACHE_HOME/rbd-wasm`, else
    /// `~/.cache/rbd-wasm`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("RBD_WASM_CACHE") {
            return Some(PathBuf::from(dir));
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(PathBuf::from(dir).join("rbd-wasm"));
        }
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("rbd-wasm"))
    }

    /// The component for `bytes`: from the cache if it was compiled before, else compiled
    /// now and stored. A cache that cannot be read or written is skipped, not fatal.
    pub fn load(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
        let Some(dir) = &self.dir else {
            return Component::new(engine, bytes);
        };
        let path = dir.join(format!("{}.cwasm", cache_key(engine, bytes)));
        if path.exists() {
            // SAFETY: the file is one this cache wrote (under a key that names both these
            // bytes and this engine's configuration) into the operator's own cache directory;
            // `deserialize_file` itself checks that it was made by a compatible engine.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok(component),
                Err(e) => tracing::warn!(path = %path.display(), "ignoring unusable cached component: {e}"),
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        if let Err(e) = store_atomically(dir, &path, &compiled) {
            tracing::warn!(dir = %dir.display(), "could not cache the compiled component: {e}");
        }
        // SAFETY: `compiled` was produced just now by `precompile_component` on this engine.
        unsafe { Component::deserialize(engine, &compiled) }
    }
}

fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut engine_hash);
    let mut sha = Sha256::new();
    sha.update(bytes);
    sha.update(engine_hash.finish().to_le_bytes());
    sha.update(env!("CARGO_PKG_VERSION").as_bytes());
    hex::encode(sha.finalize())
}

/// Write to a temporary name and rename, so a reader never sees half a file.
fn store_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.{}.tmp", std::process::id(), rand::random::<u64>()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
