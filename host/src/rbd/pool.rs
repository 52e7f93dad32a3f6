//! The `pool` resource: a granted pool. Its methods name images rather than hold them, so
//! each checks the named image against the pool's capability ([`PoolHandle::require`]),
//! charges the call and audits it.

use std::sync::Arc;

use rbd_backend::Error;
use wasmtime::component::Resource;

use super::{audit_denial, blocking, outcome, trap_on_quota, HostResult, ImageHandle, JobScope, RbdView};
use crate::audit::Target;
use crate::bindings::ceph::rbd::{rbd, types};
use crate::capability::{ImageCapability, Operation, PoolCapability};
use crate::meter::HandleSlot;

/// A granted pool, as the guest holds it.
pub struct PoolHandle {
    scope: Arc<JobScope>,
    cap: PoolCapability,
    _slot: HandleSlot,
}

impl PoolHandle {
    /// Mint a pool handle: the grant decides, the backend confirms the pool exists.
    pub(super) async fn open(scope: &Arc<JobScope>, name: &str) -> HostResult<PoolHandle> {
        scope.meter().operation()?;
        scope.connected()?;
        let cap = match scope.grants().pool(name) {
            Ok(cap) => cap,
            Err(denied) => {
                let target = Target { pool: name, image: None, method: "open-pool", operation: "read", grant: "none" };
                audit_denial(scope.audit(), &target, &denied).await;
                return Err(denied.into());
            }
        };
        let slot = scope.meter().handle_slot()?;
        let backend = scope.backend().clone();
        let pool = name.to_owned();
        blocking(scope.watch(), move || backend.open_pool(&pool)).await?;
        Ok(PoolHandle { scope: scope.clone(), cap, _slot: slot })
    }

    /// Charge a call naming `image` and check `op` on it; a denial (an image outside the
    /// grant, or an operation it does not allow) is audited.
    pub(super) async fn require(&self, method: &str, image: &str, op: Operation) -> HostResult<ImageCapability> {
        self.scope.meter().operation()?;
        self.scope.connected()?;
        match self.cap.require(image, op) {
            Ok(cap) => Ok(cap),
            Err(denied) => {
                // Denied for want of the operation (a grant matched), or invisible (none did).
                let grant = self.cap.image(image).map(|c| c.grant().to_owned()).unwrap_or_else(|_| "none".into());
                let target = Target { pool: self.cap.pool(), image: Some(image), method, operation: op.name(), grant: &grant };
                audit_denial(self.scope.audit(), &target, &denied).await;
                Err(denied.into())
            }
        }
    }

    /// Audit the end of a mutating call on `cap`'s image.
    pub(super) async fn audit_end(&self, cap: &ImageCapability, method: &str, op: Operation, result: &Result<(), Error>) {
        let target = Target { pool: cap.pool(), image: Some(cap.image()), method, operation: op.name(), grant: cap.grant() };
        self.scope.audit().record(&target, result).await;
    }

    /// Run a mutating backend call on `cap`'s image and audit how it ended.
    async fn mutate<F>(&self, cap: &ImageCapability, method: &str, op: Operation, f: F) -> HostResult<()>
    where
        F: FnOnce(&dyn rbd_backend::Backend) -> Result<(), Error> + Send + 'static,
    {
        let backend = self.scope.backend().clone();
        let result = blocking(self.scope.watch(), move || f(backend.as_ref())).await;
        self.audit_end(cap, method, op, &outcome(&result)).await;
        result
    }

    async fn create(&self, name: String, size: u64, options: types::CreateOptions) -> HostResult<()> {
        let cap = self.require("create", &name, Operation::Create).await?;
        let options = rbd_backend::CreateOptions {
            order: options.order,
            old_format: options.old_format,
            features: options.features,
            stripe_unit: options.stripe_unit,
            stripe_count: options.stripe_count,
        };
        let pool = cap.pool().to_owned();
        self.mutate(&cap, "create", Operation::Create, move |b| b.create(&pool, &name, size, &options)).await
    }

    async fn clone_image(
        &self,
        parent: String,
        parent_snap: String,
        dest: &PoolHandle,
        child: String,
        options: types::CloneOptions,
    ) -> HostResult<()> {
        let parent_cap = self.require("clone", &parent, Operation::Clone).await?;
        let child_cap = dest.require("clone", &child, Operation::Create).await?;
        let options = rbd_backend::CloneOptions { features: options.features, order: options.order };
        let (parent_pool, child_pool) = (parent_cap.pool().to_owned(), child_cap.pool().to_owned());
        self.mutate(&child_cap, "clone", Operation::Create, move |b| {
            b.clone_image(&parent_pool, &parent, &parent_snap, &child_pool, &child, &options)
        })
        .await
    }

    async fn list(&self) -> HostResult<Vec<String>> {
        self.scope.meter().operation()?;
        self.scope.connected()?;
        let cap = self.cap.clone();
        let backend = self.scope.backend().clone();
        blocking(self.scope.watch(), move || {
            let mut names = backend.list(cap.pool())?;
            names.retain(|n| cap.can_see(n));
            Ok(names)
        })
        .await
    }

    async fn remove(&self, name: String) -> HostResult<()> {
        let cap = self.require("remove", &name, Operation::Remove).await?;
        let pool = cap.pool().to_owned();
        self.mutate(&cap, "remove", Operation::Remove, move |b| b.remove(&pool, &name)).await
    }

    async fn rename(&self, src: String, dest: String) -> HostResult<()> {
        let cap = self.require("rename", &src, Operation::Rename).await?;
        self.require("rename", &dest, Operation::Create).await?;
        let pool = cap.pool().to_owned();
        let (from, to) = (src.clone(), dest.clone());
        self.mutate(&cap, "rename", Operation::Rename, move |b| b.rename(&pool, &from, &to)).await?;
        // The job's locks on the image go with it, so the host can still release them.
        self.scope.locks().renamed(cap.pool(), &src, &dest);
        Ok(())
    }

    async fn open_image(&self, name: String, options: types::OpenOptions) -> HostResult<ImageHandle> {
        let cap = self.require("open", &name, Operation::Read).await?;
        ImageHandle::open(&self.scope, cap, options.snapshot, options.read_only).await
    }
}

impl rbd::HostPool for RbdView<'_> {
    async fn name(&mut self, pool: Resource<PoolHandle>) -> wasmtime::Result<String> {
        let handle = self.table.get(&pool)?;
        trap_on_quota(handle.scope.meter().operation())?;
        Ok(handle.cap.pool().to_owned())
    }

    async fn create(
        &mut self,
        pool: Resource<PoolHandle>,
        name: String,
        size: u64,
        options: types::CreateOptions,
    ) -> HostResult<()> {
        self.table.get(&pool)?.create(name, size, options).await
    }

    async fn clone(
        &mut self,
        pool: Resource<PoolHandle>,
        parent: String,
        parent_snap: String,
        dest: Resource<PoolHandle>,
        child_name: String,
        options: types::CloneOptions,
    ) -> HostResult<()> {
        let dest = self.table.get(&dest)?;
        self.table.get(&pool)?.clone_image(parent, parent_snap, dest, child_name, options).await
    }

    async fn list(&mut self, pool: Resource<PoolHandle>) -> HostResult<Vec<String>> {
        self.table.get(&pool)?.list().await
    }

    async fn remove(&mut self, pool: Resource<PoolHandle>, name: String) -> HostResult<()> {
        self.table.get(&pool)?.remove(name).await
    }

    async fn rename(&mut self, pool: Resource<PoolHandle>, src: String, dest: String) -> HostResult<()> {
        self.table.get(&pool)?.rename(src, dest).await
    }

    async fn open(
        &mut self,
        pool: Resource<PoolHandle>,
        name: String,
        options: types::OpenOptions,
    ) -> HostResult<Resource<ImageHandle>> {
        let image = self.table.get(&pool)?.open_image(name, options).await?;
        Ok(self.table.push(image)?)
    }

    async fn drop(&mut self, pool: Resource<PoolHandle>) -> wasmtime::Result<()> {
        self.table.delete(pool)?;
        Ok(())
    }
}
