//! The production backend: librbd on a real Ceph cluster.
//!
//! One [`LibrbdBackend`] is one RADOS client connection (one client identity for locks).
//! Every call goes straight to librbd's C API; errors come back as errnos and are mapped as
//! python-rbd's `make_ex` maps them, with the few Python-side checks (such as
//! `old_format` with features, or a short write being `IncompleteWriteError`) done here, so
//! that this backend answers what the reference implementation answers.

mod aio;
mod ffi;
mod leases;

pub use leases::RadosLeases;

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;
use std::ptr;
use std::sync::{Arc, Mutex, RwLock};

use crate::{
    AsyncIo, Backend, Child, CloneOptions, CreateOptions, Error, Extent, Image, ImageStat, LockInfo, Locker,
    ParentInfo, ReadDone, Result, SnapInfo, Version, Watcher, WriteDone,
};
use ffi::Api;

/// How to reach the cluster, as the `rbd` command line takes it.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// `-c/--conf`; `None` reads `$CEPH_CONF` or Ceph's default search path.
    pub conf: Option<PathBuf>,
    /// `--id`: the client name without `client.` (default `admin`).
    pub id: Option<String>,
    /// `--keyring`; `None` uses the conf file's.
    pub keyring: Option<PathBuf>,
    /// `rados_osd_op_timeout`: OSD operations give up (ETIMEDOUT) after this long. `None`
    /// for none, as jobs want it (the host bounds a job by its deadline); a connection
    /// for leases sets it, so that a renewal that cannot reach the OSD fails in time.
    pub osd_op_timeout: Option<std::time::Duration>,
}

/// Turn a string into a C string; a NUL inside is python-rbd's `TypeError`.
fn cstr(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::TypeError(format!("{what} contains a NUL byte")))
}

/// Check a C return code: negative is an errno.
fn check(ret: c_int, context: impl FnOnce() -> String) -> Result<()> {
    if ret < 0 {
        Err(Error::from_errno(ret, context()))
    } else {
        Ok(())
    }
}

/// A connected RADOS client. librados is thread-safe; the handle is shut down on drop,
/// after every ioctx and image holding an `Arc` to it is gone.
struct Cluster {
    api: &'static Api,
    handle: ffi::rados_t,
}

// SAFETY: librados client handles may be used from any thread.
unsafe impl Send for Cluster {}
unsafe impl Sync for Cluster {}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: the handle was connected by `connect` and nothing else uses it now.
        unsafe { (self.api.rados_shutdown)(self.handle) }
    }
}

/// An I/O context on one pool; keeps its cluster alive.
struct IoCtx {
    cluster: Arc<Cluster>,
    handle: ffi::rados_ioctx_t,
}

// SAFETY: an ioctx may be shared between threads for the calls made here.
unsafe impl Send for IoCtx {}
unsafe impl Sync for IoCtx {}

impl Drop for IoCtx {
    fn drop(&mut self) {
        // SAFETY: created by rados_ioctx_create; images using it hold an Arc and are gone.
        unsafe { (self.cluster.api.rados_ioctx_destroy)(self.handle) }
    }
}

/// A librbd client connection.
pub struct LibrbdBackend {
    cluster: Arc<Cluster>,
    ioctxs: Mutex<HashMap<String, Arc<IoCtx>>>,
}

impl LibrbdBackend {
    /// Connect to the cluster: the one place this backend uses the operator's ambient
    /// authority (the conf file and keyring).
    pub fn connect(options: &ConnectOptions) -> Result<Self> {
        let api = ffi::api().map_err(Error::NotSupported)?;
        let id = options.id.as_deref().map(|id| cstr(id.strip_prefix("client.").unwrap_or(id), "client id")).transpose()?;
        let mut handle: ffi::rados_t = ptr::null_mut();
        // SAFETY: out-pointer to a handle; a null id means `admin`.
        check(unsafe { (api.rados_create)(&mut handle, id.as_ref().map_or(ptr::null(), |c| c.as_ptr())) }, || {
            "rados_create".into()
        })?;
        let cluster = Cluster { api, handle };
        let conf = options.conf.as_ref().map(|p| cstr(&p.to_string_lossy(), "conf path")).transpose()?;
        // SAFETY: the handle is valid; a null path reads $CEPH_CONF or the default paths.
        check(unsafe { (api.rados_conf_read_file)(handle, conf.as_ref().map_or(ptr::null(), |c| c.as_ptr())) }, || {
            format!("cannot read the Ceph configuration {:?}", options.conf)
        })?;
        // SAFETY: valid handle; null means $CEPH_ARGS.
        check(unsafe { (api.rados_conf_parse_env)(handle, ptr::null()) }, || "CEPH_ARGS".into())?;
        // Connecting and monitor commands give up after 30 s instead of librados' defaults
        // (5 minutes to mount; monitor commands without end), so a job aimed at a dead
        // cluster fails with a clear error. OSD ops get no timeout here: the host bounds a
        // job by its deadline and abandons a call that does not come back (the call owns its
        // buffers, so nothing is freed under it).
        let osd_op_timeout = options.osd_op_timeout.map_or("0".to_string(), |t| t.as_secs().max(1).to_string());
        for (key, value) in [("client_mount_timeout", "30"), ("rados_mon_op_timeout", "30"), ("rados_osd_op_timeout", osd_op_timeout.as_str())] {
            let (key, value) = (cstr(key, "option")?, cstr(value, "value")?);
            // SAFETY: valid handle and C strings.
            check(unsafe { (api.rados_conf_set)(handle, key.as_ptr(), value.as_ptr()) }, || "rados_conf_set".into())?;
        }
        if let Some(keyring) = &options.keyring {
            let key = cstr("keyring", "option")?;
            let value = cstr(&keyring.to_string_lossy(), "keyring path")?;
            // SAFETY: valid handle and C strings.
            check(unsafe { (api.rados_conf_set)(handle, key.as_ptr(), value.as_ptr()) }, || {
                format!("cannot use keyring {}", keyring.display())
            })?;
        }
        // SAFETY: valid, configured handle.
        check(unsafe { (api.rados_connect)(handle) }, || "cannot connect to the Ceph cluster".into())?;
        Ok(LibrbdBackend { cluster: Arc::new(cluster), ioctxs: Mutex::new(HashMap::new()) })
    }

    fn api(&self) -> &'static Api {
        self.cluster.api
    }

    /// Leases on the objects of `pool` (in `namespace`; "" for the default one), held by
    /// this client under a cookie of their own; `holder` describes the holder to
    /// whoever lists a lease's holders.
    pub fn leases(&self, pool: &str, namespace: &str, holder: &str) -> Result<RadosLeases> {
        let ns = cstr(namespace, "namespace")?;
        let io = self.new_ioctx(pool)?;
        // SAFETY: an ioctx of its own (the images' ioctxs keep the default namespace).
        unsafe { (self.api().rados_ioctx_set_namespace)(io.handle, ns.as_ptr()) };
        RadosLeases::new(io, holder)
    }

    /// The images' ioctx of `pool`, made on first use.
    fn ioctx(&self, pool: &str) -> Result<Arc<IoCtx>> {
        let mut map = self.ioctxs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(io) = map.get(pool) {
            return Ok(io.clone());
        }
        let io = self.new_ioctx(pool)?;
        map.insert(pool.to_owned(), io.clone());
        Ok(io)
    }

    fn new_ioctx(&self, pool: &str) -> Result<Arc<IoCtx>> {
        let name = cstr(pool, "pool name")?;
        let mut handle: ffi::rados_ioctx_t = ptr::null_mut();
        // SAFETY: connected cluster, C string, out-pointer.
        check(unsafe { (self.api().rados_ioctx_create)(self.cluster.handle, name.as_ptr(), &mut handle) }, || {
            format!("pool `{pool}`")
        })?;
        Ok(Arc::new(IoCtx { cluster: self.cluster.clone(), handle }))
    }
}

/// librbd image options, destroyed on drop.
struct ImageOptions {
    api: &'static Api,
    handle: ffi::rbd_image_options_t,
}

impl ImageOptions {
    fn new(api: &'static Api) -> Self {
        let mut handle = ptr::null_mut();
        // SAFETY: out-pointer.
        unsafe { (api.rbd_image_options_create)(&mut handle) };
        ImageOptions { api, handle }
    }

    fn set(&self, option: c_int, value: u64) -> Result<()> {
        // SAFETY: valid options handle.
        check(unsafe { (self.api.rbd_image_options_set_uint64)(self.handle, option, value) }, || {
            format!("image option {option} = {value}")
        })
    }
}

impl Drop for ImageOptions {
    fn drop(&mut self) {
        // SAFETY: created by rbd_image_options_create.
        unsafe { (self.api.rbd_image_options_destroy)(self.handle) }
    }
}

/// Call a librbd list function that answers -ERANGE with the needed count, growing the
/// buffer until it fits.
fn list_with_retry<T>(
    mut call: impl FnMut(*mut T, &mut usize) -> c_int,
    empty: impl Fn() -> T,
    context: &str,
) -> Result<Vec<T>> {
    let mut max = 16usize;
    loop {
        let mut buf: Vec<T> = (0..max).map(|_| empty()).collect();
        let mut n = max;
        let ret = call(buf.as_mut_ptr(), &mut n);
        if ret == -ERANGE {
            // librbd says how many it needs; grow at least twofold in case it did not.
            max = n.max(max * 2);
            continue;
        }
        check(ret, || context.to_owned())?;
        buf.truncate(n);
        return Ok(buf);
    }
}

/// The errno librbd's list calls answer when the buffer is too short.
const ERANGE: c_int = 34;

/// A C string pointer into an owned String ("" for null).
///
/// # Safety
/// `p` is null or a valid NUL-terminated string.
unsafe fn owned(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: per the contract.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

impl Backend for LibrbdBackend {
    fn version(&self) -> Version {
        let (mut major, mut minor, mut extra) = (0, 0, 0);
        // SAFETY: out-pointers.
        unsafe { (self.api().rbd_version)(&mut major, &mut minor, &mut extra) };
        Version { major: major as u32, minor: minor as u32, extra: extra as u32 }
    }

    fn client_name(&self) -> String {
        // SAFETY: connected cluster.
        format!("client.{}", unsafe { (self.api().rados_get_instance_id)(self.cluster.handle) })
    }

    fn list_pools(&self) -> Result<Vec<String>> {
        let mut len = 4096usize;
        loop {
            let mut buf = vec![0u8; len];
            // SAFETY: buffer of `len` bytes.
            let ret = unsafe { (self.api().rados_pool_list)(self.cluster.handle, buf.as_mut_ptr().cast(), len) };
            check(ret, || "list pools".into())?;
            if ret as usize > len {
                len = ret as usize;
                continue;
            }
            let mut pools: Vec<String> = buf[..ret as usize]
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            pools.sort();
            return Ok(pools);
        }
    }

    fn open_pool(&self, pool: &str) -> Result<()> {
        self.ioctx(pool).map(|_| ())
    }

    fn create(&self, pool: &str, name: &str, size: u64, o: &CreateOptions) -> Result<()> {
        let io = self.ioctx(pool)?;
        let c_name = cstr(name, "image name")?;
        let api = self.api();
        if o.old_format {
            // python-rbd: format 1 takes no features or striping; `rbd_create` then makes
            // an image of the cluster's default format.
            if o.features != 0 || o.stripe_unit != 0 || o.stripe_count != 0 {
                return Err(Error::InvalidArgument(
                    "format 1 images do not support feature masks or non-default striping".into(),
                ));
            }
            let mut order = c_int::from(o.order.unwrap_or(0));
            // SAFETY: valid ioctx, C string, out-pointer.
            return check(unsafe { (api.rbd_create)(io.handle, c_name.as_ptr(), size, &mut order) }, || {
                format!("create image `{name}`")
            });
        }
        let opts = ImageOptions::new(api);
        opts.set(ffi::RBD_IMAGE_OPTION_FORMAT, 2)?;
        if o.features != 0 {
            opts.set(ffi::RBD_IMAGE_OPTION_FEATURES, o.features)?;
        }
        if let Some(order) = o.order {
            opts.set(ffi::RBD_IMAGE_OPTION_ORDER, u64::from(order))?;
        }
        if o.stripe_unit != 0 {
            opts.set(ffi::RBD_IMAGE_OPTION_STRIPE_UNIT, o.stripe_unit)?;
        }
        if o.stripe_count != 0 {
            opts.set(ffi::RBD_IMAGE_OPTION_STRIPE_COUNT, o.stripe_count)?;
        }
        // SAFETY: valid ioctx, C string and options.
        check(unsafe { (api.rbd_create4)(io.handle, c_name.as_ptr(), size, opts.handle) }, || {
            format!("create image `{name}`")
        })
    }

    fn clone_image(
        &self,
        parent_pool: &str,
        parent: &str,
        snap: &str,
        child_pool: &str,
        child: &str,
        o: &CloneOptions,
    ) -> Result<()> {
        let (p_io, c_io) = (self.ioctx(parent_pool)?, self.ioctx(child_pool)?);
        let (p_name, p_snap, c_name) = (cstr(parent, "parent name")?, cstr(snap, "snapshot name")?, cstr(child, "child name")?);
        let opts = ImageOptions::new(self.api());
        if o.features != 0 {
            opts.set(ffi::RBD_IMAGE_OPTION_FEATURES, o.features)?;
        }
        if let Some(order) = o.order {
            opts.set(ffi::RBD_IMAGE_OPTION_ORDER, u64::from(order))?;
        }
        // SAFETY: valid ioctxs, C strings and options.
        check(
            unsafe {
                (self.api().rbd_clone3)(p_io.handle, p_name.as_ptr(), p_snap.as_ptr(), c_io.handle, c_name.as_ptr(), opts.handle)
            },
            || format!("clone {parent_pool}/{parent}@{snap} to {child_pool}/{child}"),
        )
    }

    fn list(&self, pool: &str) -> Result<Vec<String>> {
        let io = self.ioctx(pool)?;
        let api = self.api();
        let mut specs = list_with_retry(
            // SAFETY: buffer of `n` specs.
            |buf, n| unsafe { (api.rbd_list2)(io.handle, buf, n) },
            || ffi::rbd_image_spec_t { id: ptr::null_mut(), name: ptr::null_mut() },
            "list images",
        )?;
        // SAFETY: librbd filled these specs; names are C strings.
        let mut names: Vec<String> = specs.iter().map(|s| unsafe { owned(s.name) }).collect();
        // SAFETY: the specs were filled by rbd_list2 and are freed once.
        unsafe { (api.rbd_image_spec_list_cleanup)(specs.as_mut_ptr(), specs.len()) };
        names.sort();
        Ok(names)
    }

    fn remove(&self, pool: &str, name: &str) -> Result<()> {
        let io = self.ioctx(pool)?;
        let c_name = cstr(name, "image name")?;
        // SAFETY: valid ioctx and C string.
        check(unsafe { (self.api().rbd_remove)(io.handle, c_name.as_ptr()) }, || format!("remove image `{name}`"))
    }

    fn rename(&self, pool: &str, src: &str, dest: &str) -> Result<()> {
        let io = self.ioctx(pool)?;
        let (s, d) = (cstr(src, "image name")?, cstr(dest, "image name")?);
        // SAFETY: valid ioctx and C strings.
        check(unsafe { (self.api().rbd_rename)(io.handle, s.as_ptr(), d.as_ptr()) }, || {
            format!("rename image `{src}` to `{dest}`")
        })
    }

    fn open(&self, pool: &str, name: &str, snapshot: Option<&str>, read_only: bool) -> Result<Box<dyn Image>> {
        let io = self.ioctx(pool)?;
        let c_name = cstr(name, "image name")?;
        let c_snap = snapshot.map(|s| cstr(s, "snapshot name")).transpose()?;
        let snap_ptr = c_snap.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        let mut handle: ffi::rbd_image_t = ptr::null_mut();
        let api = self.api();
        // SAFETY: valid ioctx, C strings, out-pointer.
        let ret = unsafe {
            if read_only || snapshot.is_some() {
                (api.rbd_open_read_only)(io.handle, c_name.as_ptr(), &mut handle, snap_ptr)
            } else {
                (api.rbd_open)(io.handle, c_name.as_ptr(), &mut handle, snap_ptr)
            }
        };
        check(ret, || match snapshot {
            Some(s) => format!("open image `{name}` at snapshot `{s}`"),
            None => format!("open image `{name}`"),
        })?;
        Ok(Box::new(LibrbdImage {
            api,
            handle,
            name: name.to_owned(),
            pool: pool.to_owned(),
            pools: PoolOpener { cluster: self.cluster.clone() },
            _io: io,
            state: RwLock::new(()),
            in_flight: aio::InFlight::default(),
        }))
    }
}

/// Opens ioctxs on the image's cluster, for calls that name another pool.
struct PoolOpener {
    cluster: Arc<Cluster>,
}

impl PoolOpener {
    fn open(&self, pool: &str) -> Result<IoCtx> {
        let name = cstr(pool, "pool name")?;
        let mut handle: ffi::rados_ioctx_t = ptr::null_mut();
        // SAFETY: connected cluster, C string, out-pointer.
        check(unsafe { (self.cluster.api.rados_ioctx_create)(self.cluster.handle, name.as_ptr(), &mut handle) }, || {
            format!("pool `{pool}`")
        })?;
        Ok(IoCtx { cluster: self.cluster.clone(), handle })
    }
}

/// An open librbd image. I/O may run from several threads at once (librbd allows it);
/// `set_snap`, `resize`, `rollback` and close take the state lock exclusively so they never
/// race I/O.
struct LibrbdImage {
    api: &'static Api,
    handle: ffi::rbd_image_t,
    name: String,
    pool: String,
    /// Reaches other pools of the same cluster (copy's destination).
    pools: PoolOpener,
    _io: Arc<IoCtx>,
    state: RwLock<()>,
    /// Asynchronous requests in flight; closing, and the calls that take `state`
    /// exclusively, wait for them.
    in_flight: aio::InFlight,
}

// SAFETY: librbd image handles allow concurrent I/O from several threads; the calls that
// must not race it are serialised by `state`.
unsafe impl Send for LibrbdImage {}
unsafe impl Sync for LibrbdImage {}

impl Drop for LibrbdImage {
    fn drop(&mut self) {
        let _exclusive = self.exclusive();
        // SAFETY: opened by rbd_open and closed once.
        let ret = unsafe { (self.api.rbd_close)(self.handle) };
        if ret < 0 {
            tracing::warn!(image = %self.name, "rbd_close failed: {}", Error::from_errno(ret, "close"));
        }
    }
}

impl LibrbdImage {
    /// One `rbd_diff_iterate2` call; the caller holds the state lock.
    fn diff_call(
        &self,
        from: *const c_char,
        offset: u64,
        length: u64,
        include_parent: bool,
        whole_object: bool,
        each: &mut dyn FnMut(Extent),
    ) -> Result<()> {
        let mut sink = DiffSink { each, panicked: false };
        // SAFETY: open image; `from` is null or a live C string; the callback receives
        // `sink`, which outlives the call.
        let ret = unsafe {
            (self.api.rbd_diff_iterate2)(
                self.handle,
                from,
                offset,
                length,
                u8::from(include_parent),
                u8::from(whole_object),
                diff_callback,
                (&mut sink as *mut DiffSink<'_>).cast(),
            )
        };
        if sink.panicked {
            return Err(Error::Logic("the diff callback panicked".into()));
        }
        check(ret, || self.ctx("diff_iterate"))
    }

    /// How to narrow an exact diff from `from_snap`: `None` where the object maps cannot
    /// say which objects can differ (no fast-diff, a map flagged invalid, fancy striping, or
    /// a parent the diff must include). The caller holds the state lock.
    fn narrowing(&self, from_snap: Option<&str>, include_parent: bool) -> Result<Option<Narrowing>> {
        let Some(object_size) = self.object_maps_answer()? else { return Ok(None) };
        if include_parent && self.has_parent()? {
            return Ok(None);
        }
        let at_from = match from_snap {
            Some(name) => {
                let image = self.sibling_at(name)?;
                if image.object_maps_answer()?.is_none() {
                    return Ok(None);
                }
                let size = image.size_unlocked()?;
                Some((image, size))
            }
            None => None,
        };
        Ok(Some(Narrowing { object_size, at_from }))
    }

    /// The object size, if this image's object maps can be trusted for a diff.
    fn object_maps_answer(&self) -> Result<Option<u64>> {
        let mut features = 0u64;
        let mut flags = 0u64;
        let mut stripe_count = 0u64;
        // SAFETY: open image, out-pointers.
        unsafe {
            check((self.api.rbd_get_features)(self.handle, &mut features), || self.ctx("features"))?;
            check((self.api.rbd_get_flags)(self.handle, &mut flags), || self.ctx("flags"))?;
            check((self.api.rbd_get_stripe_count)(self.handle, &mut stripe_count), || self.ctx("stripe count"))?;
        }
        const FAST_DIFF: u64 = 1 << 4;
        const OBJECT_MAP_INVALID: u64 = 1;
        const FAST_DIFF_INVALID: u64 = 2;
        if features & FAST_DIFF == 0 || flags & (OBJECT_MAP_INVALID | FAST_DIFF_INVALID) != 0 || stripe_count > 1 {
            return Ok(None);
        }
        // SAFETY: plain-old-data struct filled by librbd.
        let mut info: ffi::rbd_image_info_t = unsafe { std::mem::zeroed() };
        // SAFETY: open image, out-pointer with its size.
        check(unsafe { (self.api.rbd_stat)(self.handle, &mut info, std::mem::size_of::<ffi::rbd_image_info_t>()) }, || {
            self.ctx("stat")
        })?;
        Ok(Some(info.obj_size).filter(|&s| s > 0))
    }

    fn has_parent(&self) -> Result<bool> {
        // SAFETY: plain-old-data out-structs filled by librbd.
        let mut image: ffi::rbd_linked_image_spec_t = unsafe { std::mem::zeroed() };
        let mut snap: ffi::rbd_snap_spec_t = unsafe { std::mem::zeroed() };
        // SAFETY: open image, out-pointers.
        let ret = unsafe { (self.api.rbd_get_parent)(self.handle, &mut image, &mut snap) };
        if ret == -2 {
            return Ok(false);
        }
        check(ret, || self.ctx("parent info"))?;
        // SAFETY: frees what rbd_get_parent filled.
        unsafe {
            (self.api.rbd_linked_image_spec_cleanup)(&mut image);
            (self.api.rbd_snap_spec_cleanup)(&mut snap);
        }
        Ok(true)
    }

    fn size_unlocked(&self) -> Result<u64> {
        let mut v = 0u64;
        // SAFETY: open image, out-pointer.
        check(unsafe { (self.api.rbd_get_size)(self.handle, &mut v) }, || self.ctx("size"))?;
        Ok(v)
    }

    /// This image opened again, read-only, at snapshot `snap`.
    fn sibling_at(&self, snap: &str) -> Result<LibrbdImage> {
        let c_name = cstr(&self.name, "image name")?;
        let c_snap = cstr(snap, "snapshot name")?;
        let mut handle: ffi::rbd_image_t = ptr::null_mut();
        // SAFETY: valid ioctx, C strings, out-pointer.
        check(unsafe { (self.api.rbd_open_read_only)(self._io.handle, c_name.as_ptr(), &mut handle, c_snap.as_ptr()) }, || {
            self.ctx(&format!("open at snapshot `{snap}`"))
        })?;
        Ok(LibrbdImage {
            api: self.api,
            handle,
            name: self.name.clone(),
            pool: self.pool.clone(),
            pools: PoolOpener { cluster: self.pools.cluster.clone() },
            _io: self._io.clone(),
            state: RwLock::new(()),
            in_flight: aio::InFlight::default(),
        })
    }

    fn shared(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Shut out other calls, and wait for the asynchronous requests already in flight.
    fn exclusive(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        let guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        self.in_flight.drain(self.api);
        guard
    }

    /// With the exclusive-lock feature, librbd's writes wait for the image's lock, and an
    /// advisory lock (`lock_exclusive`, `lock_shared`: the same RADOS lock) held by anyone,
    /// this client included, makes them wait until it goes: for ever, for a crashed holder
    /// (docs/librbd-semantics.md). So a write from a handle that does not own the lock yet
    /// looks first and answers `busy`, as the embedded store does, instead of hanging. A
    /// lock taken between the look and the write still makes that write wait.
    fn check_not_blocked(&self) -> Result<()> {
        if self.owns_writes()? {
            return Ok(());
        }
        let info = self.list_lockers()?;
        let managed = info.tag == "internal" && info.lockers.iter().all(|l| l.cookie.starts_with("auto "));
        if !info.lockers.is_empty() && !managed {
            return Err(Error::Busy(format!(
                "{} holds an advisory lock on it; with the exclusive-lock feature a write would wait for it",
                self.ctx("write")
            )));
        }
        Ok(())
    }

    /// The image's size, for clipping a request as librbd will.
    fn current_size(&self) -> Result<u64> {
        let mut size = 0u64;
        // SAFETY: open image, out-pointer.
        check(unsafe { (self.api.rbd_get_size)(self.handle, &mut size) }, || self.ctx("size"))?;
        Ok(size)
    }

    fn ctx(&self, what: &str) -> String {
        format!("{what} on image `{}/{}`", self.pool, self.name)
    }

    fn u64_getter(&self, f: unsafe extern "C" fn(ffi::rbd_image_t, *mut u64) -> c_int, what: &str) -> Result<u64> {
        let _g = self.shared();
        let mut v = 0u64;
        // SAFETY: open image, out-pointer.
        check(unsafe { f(self.handle, &mut v) }, || self.ctx(what))?;
        Ok(v)
    }

    fn snap_call(&self, f: unsafe extern "C" fn(ffi::rbd_image_t, *const c_char) -> c_int, name: &str, what: &str) -> Result<()> {
        let c = cstr(name, "snapshot name")?;
        let _g = self.shared();
        // SAFETY: open image, C string.
        check(unsafe { f(self.handle, c.as_ptr()) }, || self.ctx(&format!("{what} `{name}`")))
    }
}

/// Objects per window of a narrowed diff: 1 TiB of 4 MiB objects, whose runs take at most
/// 2 MiB.
const WINDOW_OBJECTS: u64 = 1 << 18;

/// What narrows an exact diff: the object size, and the image at the from-snapshot (with
/// its size) when there is one.
struct Narrowing {
    object_size: u64,
    at_from: Option<(LibrbdImage, u64)>,
}

impl Narrowing {
    /// The byte ranges of `[start, stop)`, in runs of whole objects (clipped), outside which
    /// an exact diff reports nothing. An object can differ only if it exists now or existed
    /// at the from-snapshot: the objects the whole-object diff reports, plus the objects that
    /// existed at the from-snapshot. The second set covers what the whole-object diff was
    /// once seen to miss, objects removed by a shrink and grown back
    /// (docs/librbd-semantics.md).
    fn runs(&self, image: &LibrbdImage, from: *const c_char, start: u64, stop: u64, include_parent: bool) -> Result<Vec<(u64, u64)>> {
        let mut runs = ObjectRuns::new(self.object_size, start, stop);
        image.diff_call(from, start, stop - start, include_parent, true, &mut |e| runs.add(e.offset, e.length))?;
        if let Some((at_from, size)) = &self.at_from {
            if start < *size {
                let mut existed = ObjectRuns::new(self.object_size, start, stop);
                at_from.diff_call(ptr::null(), start, stop.min(*size) - start, include_parent, true, &mut |e| {
                    existed.add(e.offset, e.length)
                })?;
                runs.merge(existed);
            }
        }
        Ok(runs.into_runs())
    }
}

/// Runs of whole objects (clipped to a range), gathered from whole-object diffs in order.
struct ObjectRuns {
    object_size: u64,
    start: u64,
    end: u64,
    runs: Vec<(u64, u64)>,
}

impl ObjectRuns {
    fn new(object_size: u64, start: u64, end: u64) -> Self {
        ObjectRuns { object_size, start, end, runs: Vec::new() }
    }

    /// The objects holding `[offset, offset + length)`.
    fn add(&mut self, offset: u64, length: u64) {
        if length == 0 {
            return;
        }
        let os = self.object_size;
        let lo = (offset / os).saturating_mul(os).max(self.start);
        let hi = offset.saturating_add(length).div_ceil(os).saturating_mul(os).min(self.end);
        if lo >= hi {
            return;
        }
        match self.runs.last_mut() {
            Some(last) if last.1 == lo => last.1 = hi,
            _ => self.runs.push((lo, hi)),
        }
    }

    fn merge(&mut self, other: ObjectRuns) {
        self.runs.extend(other.runs);
    }

    /// Sorted, disjoint runs (the diffs report in order, but nothing here relies on it).
    fn into_runs(mut self) -> Vec<(u64, u64)> {
        self.runs.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.runs.len());
        for (lo, hi) in self.runs {
            match out.last_mut() {
                Some(last) if last.1 >= lo => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        out
    }
}

/// What the diff callback collects into.
struct DiffSink<'a> {
    each: &'a mut dyn FnMut(Extent),
    panicked: bool,
}

struct ProgressSink<'a> {
    keep_going: &'a mut dyn FnMut(u64, u64) -> bool,
    panicked: bool,
}

extern "C" fn progress_callback(done: u64, total: u64, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ProgressSink` passed by flatten or copy, alive for the call.
    let sink = unsafe { &mut *(arg as *mut ProgressSink<'_>) };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (sink.keep_going)(done, total))) {
        Ok(true) => 0,
        Ok(false) => -crate::error::ECANCELED,
        Err(_) => {
            sink.panicked = true;
            -crate::error::ECANCELED
        }
    }
}

/// The result of an operation with a progress callback: a stop it asked for is
/// [`Error::cancelled`].
fn progress_result(ret: c_int, sink: &ProgressSink<'_>, what: impl FnOnce() -> String) -> Result<()> {
    if sink.panicked {
        return Err(Error::Logic("the progress callback panicked".into()));
    }
    if ret == -crate::error::ECANCELED {
        return Err(Error::cancelled(&what()));
    }
    check(ret, what)
}

extern "C" fn diff_callback(offset: u64, length: usize, exists: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `DiffSink` passed by `diff_iterate`, alive for the whole call.
    let sink = unsafe { &mut *(arg as *mut DiffSink<'_>) };
    // A panic must not unwind into C: catch it, stop the iteration, report it after.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        (sink.each)(Extent { offset, length: length as u64, exists: exists != 0 })
    }));
    match result {
        Ok(()) => 0,
        Err(_) => {
            sink.panicked = true;
            -125 // ECANCELED: librbd stops iterating and returns it
        }
    }
}

impl AsyncIo for LibrbdImage {
    fn start_read(&self, offset: u64, length: u64, done: ReadDone) -> Result<bool> {
        let _g = self.shared();
        let size = self.current_size()?;
        // As `read`: allocate only what can come back; past the end, ask for a byte so that
        // librbd answers as it does there.
        let want = if offset >= size { length.min(1) } else { length.min(size - offset) };
        let want = usize::try_from(want).map_err(|_| Error::InvalidArgument("read too large".into()))?;
        let what = self.ctx(&format!("read {length} bytes at {offset}"));
        let (api, handle) = (self.api, self.handle);
        aio::start(api, &self.in_flight, aio::read_request(want, done, what), |buf, comp| {
            // SAFETY: open image; the buffer of `want` bytes lives in the request until the
            // completion's callback.
            unsafe { (api.rbd_aio_read2)(handle, offset, want, buf, comp, 0) }
        })?;
        Ok(true)
    }

    fn start_write(&self, offset: u64, data: Box<dyn AsRef<[u8]> + Send>, done: WriteDone) -> Result<bool> {
        let _g = self.shared();
        // Not owning the exclusive lock yet, the write must look at the lockers first
        // (`check_not_blocked`, in `write`).
        if !self.owns_writes()? {
            return Ok(false);
        }
        let size = self.current_size()?;
        let len = (*data).as_ref().len();
        // librbd writes the part inside the image (and fails one that starts past it).
        let clipped = if offset >= size { 0 } else { (len as u64).min(size - offset) };
        let what = self.ctx(&format!("write {len} bytes at {offset}"));
        let (api, handle) = (self.api, self.handle);
        aio::start(api, &self.in_flight, aio::write_request(data, clipped, len as u64, done, what), |buf, comp| {
            // SAFETY: open image; the data lives in the request until the callback.
            unsafe { (api.rbd_aio_write2)(handle, offset, len, buf, comp, 0) }
        })?;
        Ok(true)
    }
}

impl LibrbdImage {
    /// No exclusive-lock feature, or this handle owns the lock (no guard taken: callers
    /// hold one or need none; librbd may refresh the image first, which can wait).
    fn owns_writes(&self) -> Result<bool> {
        let mut features = 0u64;
        // SAFETY: open image, out-pointer.
        check(unsafe { (self.api.rbd_get_features)(self.handle, &mut features) }, || self.ctx("features"))?;
        if features & crate::features::EXCLUSIVE_LOCK == 0 {
            return Ok(true);
        }
        let mut owner: c_int = 0;
        // SAFETY: open image, out-pointer.
        check(unsafe { (self.api.rbd_is_exclusive_lock_owner)(self.handle, &mut owner) }, || self.ctx("is_exclusive_lock_owner"))?;
        Ok(owner != 0)
    }
}

impl Image for LibrbdImage {
    fn aio(&self) -> Option<&dyn AsyncIo> {
        Some(self)
    }

    fn size(&self) -> Result<u64> {
        self.u64_getter(self.api.rbd_get_size, "size")
    }

    fn stat(&self) -> Result<ImageStat> {
        let _g = self.shared();
        // SAFETY: plain-old-data struct filled by librbd.
        let mut info: ffi::rbd_image_info_t = unsafe { std::mem::zeroed() };
        // SAFETY: open image, out-pointer with its size.
        check(unsafe { (self.api.rbd_stat)(self.handle, &mut info, std::mem::size_of::<ffi::rbd_image_info_t>()) }, || {
            self.ctx("stat")
        })?;
        // SAFETY: NUL-terminated arrays inside the struct (zeroed, then filled by librbd).
        let (prefix, parent_name) = unsafe { (owned(info.block_name_prefix.as_ptr()), owned(info.parent_name.as_ptr())) };
        Ok(ImageStat {
            size: info.size,
            obj_size: info.obj_size,
            num_objs: info.num_objs,
            order: info.order as u8,
            block_name_prefix: prefix,
            parent_pool: info.parent_pool,
            parent_name,
        })
    }

    fn features(&self) -> Result<u64> {
        self.u64_getter(self.api.rbd_get_features, "features")
    }

    fn old_format(&self) -> Result<bool> {
        let _g = self.shared();
        let mut v = 0u8;
        // SAFETY: open image, out-pointer.
        check(unsafe { (self.api.rbd_get_old_format)(self.handle, &mut v) }, || self.ctx("old_format"))?;
        Ok(v != 0)
    }

    fn stripe_unit(&self) -> Result<u64> {
        self.u64_getter(self.api.rbd_get_stripe_unit, "stripe_unit")
    }

    fn stripe_count(&self) -> Result<u64> {
        self.u64_getter(self.api.rbd_get_stripe_count, "stripe_count")
    }

    fn read(&self, offset: u64, length: u64) -> Result<Vec<u8>> {
        let _g = self.shared();
        let mut size = 0u64;
        // SAFETY: open image, out-pointer.
        check(unsafe { (self.api.rbd_get_size)(self.handle, &mut size) }, || self.ctx("size"))?;
        // librbd clips a read at the end; allocate only what can come back.
        let want = if offset >= size { length.min(1) } else { length.min(size - offset) };
        let want = usize::try_from(want).map_err(|_| Error::InvalidArgument("read too large".into()))?;
        let mut buf = vec![0u8; want];
        // SAFETY: buffer of `want` bytes.
        let n = unsafe { (self.api.rbd_read2)(self.handle, offset, want, buf.as_mut_ptr().cast(), 0) };
        if n < 0 {
            return Err(Error::from_errno(n as c_int, self.ctx(&format!("read {length} bytes at {offset}"))));
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<u64> {
        self.check_not_blocked()?;
        let _g = self.shared();
        // SAFETY: `data` is valid for `data.len()` bytes.
        let n = unsafe { (self.api.rbd_write2)(self.handle, offset, data.len(), data.as_ptr().cast(), 0) };
        if n < 0 {
            return Err(Error::from_errno(n as c_int, self.ctx(&format!("write {} bytes at {offset}", data.len()))));
        }
        if (n as usize) < data.len() {
            return Err(Error::IncompleteWrite { requested: data.len() as u64, written: n as u64 });
        }
        Ok(n as u64)
    }

    fn discard(&self, offset: u64, length: u64) -> Result<()> {
        self.check_not_blocked()?;
        let _g = self.shared();
        // SAFETY: open image.
        check(unsafe { (self.api.rbd_discard)(self.handle, offset, length) }, || {
            self.ctx(&format!("discard {length} bytes at {offset}"))
        })
    }

    fn flush(&self) -> Result<()> {
        let _g = self.shared();
        // SAFETY: open image.
        check(unsafe { (self.api.rbd_flush)(self.handle) }, || self.ctx("flush"))
    }

    fn invalidate_cache(&self) -> Result<()> {
        let _g = self.shared();
        // SAFETY: open image.
        check(unsafe { (self.api.rbd_invalidate_cache)(self.handle) }, || self.ctx("invalidate_cache"))
    }

    fn resize(&self, size: u64) -> Result<()> {
        let _g = self.exclusive();
        // SAFETY: open image, no I/O in flight (exclusive).
        check(unsafe { (self.api.rbd_resize)(self.handle, size) }, || self.ctx(&format!("resize to {size}")))
    }

    fn create_snap(&self, name: &str) -> Result<()> {
        self.snap_call(self.api.rbd_snap_create, name, "create snapshot")
    }

    fn remove_snap(&self, name: &str) -> Result<()> {
        self.snap_call(self.api.rbd_snap_remove, name, "remove snapshot")
    }

    fn rollback_to_snap(&self, name: &str) -> Result<()> {
        let c = cstr(name, "snapshot name")?;
        let _g = self.exclusive();
        // SAFETY: open image, C string, no I/O in flight.
        check(unsafe { (self.api.rbd_snap_rollback)(self.handle, c.as_ptr()) }, || {
            self.ctx(&format!("rollback to snapshot `{name}`"))
        })
    }

    fn protect_snap(&self, name: &str) -> Result<()> {
        self.snap_call(self.api.rbd_snap_protect, name, "protect snapshot")
    }

    fn unprotect_snap(&self, name: &str) -> Result<()> {
        self.snap_call(self.api.rbd_snap_unprotect, name, "unprotect snapshot")
    }

    fn is_protected_snap(&self, name: &str) -> Result<bool> {
        let c = cstr(name, "snapshot name")?;
        let _g = self.shared();
        let mut v: c_int = 0;
        // SAFETY: open image, C string, out-pointer.
        check(unsafe { (self.api.rbd_snap_is_protected)(self.handle, c.as_ptr(), &mut v) }, || {
            self.ctx(&format!("is_protected_snap `{name}`"))
        })?;
        Ok(v != 0)
    }

    fn list_snaps(&self) -> Result<Vec<SnapInfo>> {
        let _g = self.shared();
        let mut max: c_int = 16;
        loop {
            // SAFETY: plain-old-data entries filled by librbd.
            let mut buf: Vec<ffi::rbd_snap_info_t> = (0..max).map(|_| unsafe { std::mem::zeroed() }).collect();
            let mut n = max;
            // SAFETY: buffer of `max` entries.
            let ret = unsafe { (self.api.rbd_snap_list)(self.handle, buf.as_mut_ptr(), &mut n) };
            if ret == -ERANGE {
                max = n.max(max * 2);
                continue;
            }
            check(ret, || self.ctx("list snapshots"))?;
            let count = ret as usize;
            // SAFETY: librbd filled `count` entries with C-string names.
            let mut snaps: Vec<SnapInfo> = buf[..count]
                .iter()
                .map(|s| SnapInfo { id: s.id, size: s.size, name: unsafe { owned(s.name) }, timestamp: 0 })
                .collect();
            // SAFETY: frees what rbd_snap_list allocated, once.
            unsafe { (self.api.rbd_snap_list_end)(buf.as_mut_ptr()) };
            for snap in &mut snaps {
                let mut ts = ffi::Timespec { tv_sec: 0, tv_nsec: 0 };
                // SAFETY: `ts` is a valid out-parameter.
                let ret = unsafe { (self.api.rbd_snap_get_timestamp)(self.handle, snap.id, &mut ts) };
                check(ret, || self.ctx(&format!("timestamp of snapshot `{}`", snap.name)))?;
                snap.timestamp = u64::try_from(ts.tv_sec).unwrap_or(0);
            }
            return Ok(snaps);
        }
    }

    fn set_snap(&self, name: Option<&str>) -> Result<()> {
        let c = name.map(|n| cstr(n, "snapshot name")).transpose()?;
        let _g = self.exclusive();
        // SAFETY: open image; null selects the head; no I/O in flight.
        check(unsafe { (self.api.rbd_snap_set)(self.handle, c.as_ref().map_or(ptr::null(), |c| c.as_ptr())) }, || {
            self.ctx(&format!("set snapshot {name:?}"))
        })
    }

    fn diff_iterate(
        &self,
        offset: u64,
        length: u64,
        from_snap: Option<&str>,
        include_parent: bool,
        whole_object: bool,
        each: &mut dyn FnMut(Extent),
    ) -> Result<()> {
        let c = from_snap.map(|n| cstr(n, "snapshot name")).transpose()?;
        let from = c.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        let _g = self.shared();
        if whole_object {
            return self.diff_call(from, offset, length, include_parent, true, each);
        }
        // Pacific's exact diff lists the snapshots of every object in the range, whether it
        // exists or not: 8-11 s for a 1 TiB image on the test cluster, however little it
        // holds. The object maps say at once which objects can differ; the exact diff then
        // runs only over them, and reports the same extents (docs/librbd-semantics.md).
        let Some(narrowing) = self.narrowing(from_snap, include_parent)? else {
            return self.diff_call(from, offset, length, include_parent, false, each);
        };
        // A window of objects at a time, so that the runs held stay small however large the
        // image and however scattered its data.
        let end = offset.saturating_add(length);
        let window = narrowing.object_size.saturating_mul(WINDOW_OBJECTS);
        let mut at = offset;
        while at < end {
            let stop = (at / window).saturating_add(1).saturating_mul(window).min(end);
            for (lo, hi) in narrowing.runs(self, from, at, stop, include_parent)? {
                self.diff_call(from, lo, hi - lo, include_parent, false, each)?;
            }
            at = stop;
        }
        Ok(())
    }

    fn list_children(&self) -> Result<Vec<Child>> {
        let _g = self.shared();
        let api = self.api;
        let mut specs = list_with_retry(
            // SAFETY: buffer of `n` specs.
            |buf, n| unsafe { (api.rbd_list_children3)(self.handle, buf, n) },
            || ffi::rbd_linked_image_spec_t {
                pool_id: 0,
                pool_name: ptr::null_mut(),
                pool_namespace: ptr::null_mut(),
                image_id: ptr::null_mut(),
                image_name: ptr::null_mut(),
                trash: false,
            },
            &self.ctx("list children"),
        )?;
        let mut children: Vec<Child> = specs
            .iter()
            .filter(|s| !s.trash)
            // SAFETY: C strings filled by librbd.
            .map(|s| unsafe { Child { pool: owned(s.pool_name), image: owned(s.image_name) } })
            .collect();
        // SAFETY: frees what rbd_list_children3 filled, once.
        unsafe { (api.rbd_linked_image_spec_list_cleanup)(specs.as_mut_ptr(), specs.len()) };
        children.sort();
        Ok(children)
    }

    fn parent_info(&self) -> Result<Option<ParentInfo>> {
        let _g = self.shared();
        // SAFETY: plain-old-data out-structs filled by librbd.
        let mut image: ffi::rbd_linked_image_spec_t = unsafe { std::mem::zeroed() };
        let mut snap: ffi::rbd_snap_spec_t = unsafe { std::mem::zeroed() };
        // SAFETY: open image, out-pointers.
        let ret = unsafe { (self.api.rbd_get_parent)(self.handle, &mut image, &mut snap) };
        if ret == -2 {
            return Ok(None); // ENOENT: not a clone
        }
        check(ret, || self.ctx("parent info"))?;
        // SAFETY: C strings filled by librbd, freed once below.
        let info = unsafe { ParentInfo { pool: owned(image.pool_name), image: owned(image.image_name), snap: owned(snap.name) } };
        // SAFETY: frees what rbd_get_parent filled.
        unsafe {
            (self.api.rbd_linked_image_spec_cleanup)(&mut image);
            (self.api.rbd_snap_spec_cleanup)(&mut snap);
        }
        Ok(Some(info))
    }

    fn flatten_with(&self, keep_going: &mut dyn FnMut(u64, u64) -> bool) -> Result<()> {
        let _g = self.shared();
        let mut sink = ProgressSink { keep_going, panicked: false };
        // SAFETY: open image; the callback receives `sink`, which outlives the call.
        let ret = unsafe {
            (self.api.rbd_flatten_with_progress)(self.handle, progress_callback, (&mut sink as *mut ProgressSink<'_>).cast())
        };
        progress_result(ret, &sink, || self.ctx("flatten"))
    }

    fn copy_with(&self, dest_pool: &str, dest_name: &str, keep_going: &mut dyn FnMut(u64, u64) -> bool) -> Result<()> {
        let dest = self.pools.open(dest_pool)?;
        let c = cstr(dest_name, "image name")?;
        let _g = self.shared();
        let mut sink = ProgressSink { keep_going, panicked: false };
        // SAFETY: open image, valid destination ioctx, C string; the callback receives
        // `sink`, which outlives the call.
        let ret = unsafe {
            (self.api.rbd_copy_with_progress)(
                self.handle,
                dest.handle,
                c.as_ptr(),
                progress_callback,
                (&mut sink as *mut ProgressSink<'_>).cast(),
            )
        };
        progress_result(ret, &sink, || self.ctx(&format!("copy to {dest_pool}/{dest_name}")))
    }

    fn list_lockers(&self) -> Result<LockInfo> {
        let _g = self.shared();
        let mut sizes = [256usize; 4];
        loop {
            let mut bufs: [Vec<u8>; 4] = sizes.map(|n| vec![0u8; n]);
            let mut lens = sizes;
            let mut exclusive: c_int = 0;
            let [tag, clients, cookies, addrs] = &mut bufs;
            // SAFETY: four buffers with their lengths.
            let ret = unsafe {
                (self.api.rbd_list_lockers)(
                    self.handle,
                    &mut exclusive,
                    tag.as_mut_ptr().cast(),
                    &mut lens[0],
                    clients.as_mut_ptr().cast(),
                    &mut lens[1],
                    cookies.as_mut_ptr().cast(),
                    &mut lens[2],
                    addrs.as_mut_ptr().cast(),
                    &mut lens[3],
                )
            };
            if ret == -(ERANGE as isize) {
                for (size, len) in sizes.iter_mut().zip(lens) {
                    *size = (*size).max(len).max(*size * 2);
                }
                continue;
            }
            check(ret as c_int, || self.ctx("list lockers"))?;
            let split = |b: &[u8], len: usize| -> Vec<String> {
                b[..len.min(b.len())]
                    .split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            };
            let tag = split(tag, lens[0]).into_iter().next().unwrap_or_default();
            let (clients, cookies, addrs) = (split(clients, lens[1]), split(cookies, lens[2]), split(addrs, lens[3]));
            let mut lockers: Vec<Locker> = clients
                .into_iter()
                .zip(cookies)
                .zip(addrs)
                .map(|((client, cookie), address)| Locker { client, cookie, address })
                .collect();
            lockers.sort();
            if lockers.is_empty() {
                // librbd keeps the last tag after the last locker leaves; python-rbd answers
                // nothing at all for an unlocked image.
                return Ok(LockInfo::default());
            }
            return Ok(LockInfo { tag, exclusive: exclusive != 0, lockers });
        }
    }

    fn list_watchers(&self) -> Result<Vec<Watcher>> {
        let _g = self.shared();
        let mut capacity = 8usize;
        loop {
            let mut list: Vec<ffi::rbd_image_watcher_t> = (0..capacity)
                .map(|_| ffi::rbd_image_watcher_t { addr: std::ptr::null_mut(), id: 0, cookie: 0 })
                .collect();
            let mut count = capacity;
            // SAFETY: an array of `capacity` entries; librbd fills `count` of them.
            let ret = unsafe { (self.api.rbd_watchers_list)(self.handle, list.as_mut_ptr(), &mut count) };
            if ret == -ERANGE {
                capacity = count.max(capacity * 2);
                continue;
            }
            check(ret, || self.ctx("list watchers"))?;
            let count = count.min(capacity);
            let mut watchers: Vec<Watcher> = list[..count]
                .iter()
                .map(|w| Watcher {
                    client: format!("client.{}", w.id),
                    // SAFETY: librbd's NUL-terminated address, or null.
                    address: if w.addr.is_null() {
                        String::new()
                    } else {
                        unsafe { std::ffi::CStr::from_ptr(w.addr) }.to_string_lossy().into_owned()
                    },
                    cookie: w.cookie,
                })
                .collect();
            // SAFETY: the entries librbd filled, given back once.
            unsafe { (self.api.rbd_watchers_list_cleanup)(list.as_mut_ptr(), count) };
            watchers.sort();
            return Ok(watchers);
        }
    }

    fn lock_exclusive(&self, cookie: &str) -> Result<()> {
        self.snap_call(self.api.rbd_lock_exclusive, cookie, "lock_exclusive with cookie")
    }

    fn lock_shared(&self, cookie: &str, tag: &str) -> Result<()> {
        let (c, t) = (cstr(cookie, "cookie")?, cstr(tag, "tag")?);
        let _g = self.shared();
        // SAFETY: open image, C strings.
        check(unsafe { (self.api.rbd_lock_shared)(self.handle, c.as_ptr(), t.as_ptr()) }, || {
            self.ctx(&format!("lock_shared cookie `{cookie}` tag `{tag}`"))
        })
    }

    fn unlock(&self, cookie: &str) -> Result<()> {
        self.snap_call(self.api.rbd_unlock, cookie, "unlock cookie")
    }

    fn break_lock(&self, client: &str, cookie: &str) -> Result<()> {
        let (cl, co) = (cstr(client, "client")?, cstr(cookie, "cookie")?);
        let _g = self.shared();
        // SAFETY: open image, C strings.
        check(unsafe { (self.api.rbd_break_lock)(self.handle, cl.as_ptr(), co.as_ptr()) }, || {
            self.ctx(&format!("break lock of {client} cookie `{cookie}`"))
        })
    }
}
