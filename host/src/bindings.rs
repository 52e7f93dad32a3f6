//! Host bindings of the `ceph:rbd` world, generated from `wit/`.
//!
//! Every import is async (backend calls run on tokio's blocking pool) and trappable: host
//! functions answer [`HostError`](crate::rbd::HostError), which is either an RBD error the guest
//! sees or a trap that ends the job. The guest's resources are the host's handle types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "job-world",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        // The job's streams are WASI's own (an output-directory file's, say).
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "ceph:rbd/rbd.pool": crate::rbd::PoolHandle,
        "ceph:rbd/rbd.image": crate::rbd::ImageHandle,
        "ceph:rbd/rbd.diff-iterator": crate::rbd::DiffIterator,
        "ceph:rbd/rbd.pending-reads": crate::rbd::PendingReads,
        "ceph:rbd/job-host.sha256": crate::job_host::hashing::Sha256Job,
        "ceph:rbd/job-host.chunk-codec": crate::job_host::chunks::ChunkCodec,
    },
    trappable_error_type: {
        "ceph:rbd/types.error" => crate::rbd::HostError,
    },
});

pub use ceph::rbd::types;
