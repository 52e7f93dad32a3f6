//! Host bindings of the `ceph:rbd` world, generated from `wit/`.
//!
//! Every import is async (backend calls run on tokio's blocking pool) and trappable: host
//! functions answer [`HostError`](crate::api::HostError), which is either an RBD error the guest
//! sees or a trap that ends the job. The guest's resources are the host's handle types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "job-world",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "ceph:rbd/rbd.pool": crate::api::PoolHandle,
        "ceph:rbd/rbd.image": crate::api::ImageHandle,
        "ceph:rbd/rbd.diff-iterator": crate::api::DiffIterator,
        "ceph:rbd/rbd.pending-reads": crate::api::PendingReads,
        "ceph:rbd/job-host.sha256": crate::hashing::Sha256Job,
    },
    trappable_error_type: {
        "ceph:rbd/types.error" => crate::api::HostError,
    },
});

pub use ceph::rbd::types;
