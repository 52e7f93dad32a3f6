//! What a job may do and what it has done: grants and the capabilities minted from them
//! ([`capability`]), the outbound HTTP endpoints a job may reach ([`endpoints`]), the per-job
//! meter of quotas and budgets ([`meter`]), and the audit log ([`audit`]). The handles of [`crate::rbd`] apply these; nothing here knows WebAssembly.

pub mod audit;
pub mod capability;
pub mod endpoints;
pub mod meter;
