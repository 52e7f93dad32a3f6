//! rbd-wasm: run sandboxed WebAssembly jobs against Ceph RBD images.
//!
//! An integrator needs four things: a [`Runtime`] (engine, linker, component cache), a
//! [`JobConfig`] for each run (the job's [`Grants`], [`JobLimits`], output and audit sinks),
//! and the [`JobError`] a run ends with.
//!
//! Data flows one way: grants and limits -> the runtime -> the handles that [`rbd`] mints
//! from the grants (each checks, charges and audits its own calls) -> the
//! [`rbd_backend::Backend`]. The policy the handles apply lives in [`policy`]: grants and
//! capabilities, the meter (quotas and budgets, held through guards) and the audit log.

mod bindings;
pub mod cache;
mod file_reader;
mod job_host;
pub mod manifest;
pub mod output;
mod outbound;
mod output_dir;
pub mod policy;
mod rbd;
pub mod runtime;
pub mod secrets;

pub use bindings::types::Progress;
pub use outbound::HttpLimits;
pub use output::OutputSink;
pub use policy::audit::AuditSink;
pub use policy::capability::{Grant, Grants, ImagePattern, Operation, Operations};
pub use policy::meter::{Quotas, Usage};
pub use policy::endpoints::{Endpoint, Endpoints};
pub use policy::{audit, capability, endpoints, meter};
pub use rbd_backend as backend;
pub use secrets::Secrets;
pub use runtime::{JobComponent, JobConfig, JobError, JobLimits, Runtime, RuntimeConfig};
