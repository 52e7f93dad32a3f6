//! rbd-wasm: run sandboxed WebAssembly jobs against Ceph RBD images.
//!
//! Data flows one way: the CLI (or an embedder) builds [`capability::Grants`] and a
//! [`runtime::JobConfig`]; the [`runtime::Runtime`] loads the job's component and runs it;
//! the guest reaches storage only through the handles that [`api`] mints from the grants;
//! handles call a [`rbd_backend::Backend`].

pub mod api;
pub mod audit;
mod bindings;
pub mod cache;
pub mod capability;
mod hashing;
pub mod manifest;
pub mod meter;
pub mod output;
pub mod progress;
pub mod runtime;

pub use bindings::types::Progress;
pub use rbd_backend as backend;
