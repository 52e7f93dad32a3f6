//! The librados and librbd C functions this backend calls, loaded at run time.
//!
//! The libraries are opened with `dlopen` when the first cluster connection is made, not
//! linked: a host without Ceph's libraries installed still runs jobs on the embedded store,
//! and one with them gets a clear error naming the missing library only when it asks for a
//! cluster. The declarations follow `rados/librados.h` and `rbd/librbd.h` of Ceph Pacific
//! (librbd 1.16); every struct below is `#[repr(C)]` with the header's field order.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

use libloading::Library;

pub type rados_t = *mut c_void;
pub type rados_ioctx_t = *mut c_void;
pub type rados_write_op_t = *mut c_void;

/// `LIBRADOS_LOCK_FLAG_MUST_RENEW`: renew only; ENOENT if this client does not hold it.
pub const LOCK_FLAG_MUST_RENEW: u8 = 2;
/// `LIBRADOS_CMPXATTR_OP_EQ`.
pub const CMPXATTR_OP_EQ: u8 = 1;
/// `LIBRADOS_CREATE_IDEMPOTENT`.
pub const CREATE_IDEMPOTENT: c_int = 0;
pub type rbd_image_t = *mut c_void;
pub type rbd_image_options_t = *mut c_void;
pub type DiffCallback = extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;
pub type rbd_completion_t = *mut c_void;
/// `rbd_callback_t`: called once when an asynchronous request completes.
pub type CompletionCallback = extern "C" fn(rbd_completion_t, *mut c_void);
/// `librbd_progress_fn_t`: a non-zero answer stops the operation (flatten and copy end with it).
pub type ProgressCallback = extern "C" fn(u64, u64, *mut c_void) -> c_int;

pub const RBD_MAX_BLOCK_NAME_SIZE: usize = 24;
pub const RBD_MAX_IMAGE_NAME_SIZE: usize = 96;

pub const RBD_IMAGE_OPTION_FORMAT: c_int = 0;
pub const RBD_IMAGE_OPTION_FEATURES: c_int = 1;
pub const RBD_IMAGE_OPTION_ORDER: c_int = 2;
pub const RBD_IMAGE_OPTION_STRIPE_UNIT: c_int = 3;
pub const RBD_IMAGE_OPTION_STRIPE_COUNT: c_int = 4;

#[repr(C)]
pub struct rbd_image_info_t {
    pub size: u64,
    pub obj_size: u64,
    pub num_objs: u64,
    pub order: c_int,
    pub block_name_prefix: [c_char; RBD_MAX_BLOCK_NAME_SIZE],
    pub parent_pool: i64,
    pub parent_name: [c_char; RBD_MAX_IMAGE_NAME_SIZE],
}

#[repr(C)]
pub struct rbd_image_watcher_t {
    pub addr: *mut c_char,
    pub id: i64,
    pub cookie: u64,
}

#[repr(C)]
pub struct Timespec {
    pub tv_sec: i64,
    pub tv_nsec: i64,
}

#[repr(C)]
pub struct rbd_snap_info_t {
    pub id: u64,
    pub size: u64,
    pub name: *const c_char,
}

#[repr(C)]
pub struct rbd_image_spec_t {
    pub id: *mut c_char,
    pub name: *mut c_char,
}

#[repr(C)]
pub struct rbd_linked_image_spec_t {
    pub pool_id: i64,
    pub pool_name: *mut c_char,
    pub pool_namespace: *mut c_char,
    pub image_id: *mut c_char,
    pub image_name: *mut c_char,
    pub trash: bool,
}

#[repr(C)]
pub struct rbd_snap_spec_t {
    pub id: u64,
    pub namespace_type: c_int,
    pub name: *mut c_char,
}

/// Declare the function table: each entry is looked up by its own name, in librados for
/// `rados_*` and in librbd for `rbd_*`.
macro_rules! api {
    ($($name:ident: fn($($arg:ty),* $(,)?) -> $ret:ty;)*) => {
        /// The loaded functions. The libraries stay loaded for the life of the process.
        pub struct Api {
            $(pub $name: unsafe extern "C" fn($($arg),*) -> $ret,)*
        }

        impl Api {
            /// # Safety
            /// The libraries must be Ceph's, with the signatures above.
            unsafe fn load(rados: &'static Library, rbd: &'static Library) -> Result<Api, String> {
                Ok(Api {
                    $($name: {
                        let name = stringify!($name);
                        let lib = if name.starts_with("rados_") { rados } else { rbd };
                        // SAFETY: the symbol has the declared signature in Ceph's headers.
                        *unsafe { lib.get::<unsafe extern "C" fn($($arg),*) -> $ret>(name.as_bytes()) }
                            .map_err(|e| format!("symbol {name}: {e}"))?
                    },)*
                })
            }
        }
    };
}

api! {
    rados_create: fn(*mut rados_t, *const c_char) -> c_int;
    rados_conf_read_file: fn(rados_t, *const c_char) -> c_int;
    rados_conf_set: fn(rados_t, *const c_char, *const c_char) -> c_int;
    rados_conf_parse_env: fn(rados_t, *const c_char) -> c_int;
    rados_connect: fn(rados_t) -> c_int;
    rados_shutdown: fn(rados_t) -> ();
    rados_pool_list: fn(rados_t, *mut c_char, usize) -> c_int;
    rados_ioctx_create: fn(rados_t, *const c_char, *mut rados_ioctx_t) -> c_int;
    rados_ioctx_destroy: fn(rados_ioctx_t) -> ();
    rados_get_instance_id: fn(rados_t) -> u64;
    rados_ioctx_set_namespace: fn(rados_ioctx_t, *const c_char) -> ();
    rados_lock_exclusive: fn(rados_ioctx_t, *const c_char, *const c_char, *const c_char, *const c_char, *mut libc::timeval, u8) -> c_int;
    rados_unlock: fn(rados_ioctx_t, *const c_char, *const c_char, *const c_char) -> c_int;
    rados_list_lockers: fn(rados_ioctx_t, *const c_char, *const c_char, *mut c_int, *mut c_char, *mut usize, *mut c_char, *mut usize, *mut c_char, *mut usize, *mut c_char, *mut usize) -> isize;
    rados_getxattr: fn(rados_ioctx_t, *const c_char, *const c_char, *mut c_char, usize) -> c_int;
    rados_create_write_op: fn() -> rados_write_op_t;
    rados_release_write_op: fn(rados_write_op_t) -> ();
    rados_write_op_create: fn(rados_write_op_t, c_int, *const c_char) -> ();
    rados_write_op_cmpxattr: fn(rados_write_op_t, *const c_char, u8, *const c_char, usize) -> ();
    rados_write_op_setxattr: fn(rados_write_op_t, *const c_char, *const c_char, usize) -> ();
    rados_write_op_operate: fn(rados_write_op_t, rados_ioctx_t, *const c_char, *mut i64, c_int) -> c_int;

    rbd_version: fn(*mut c_int, *mut c_int, *mut c_int) -> ();
    rbd_image_options_create: fn(*mut rbd_image_options_t) -> ();
    rbd_image_options_destroy: fn(rbd_image_options_t) -> ();
    rbd_image_options_set_uint64: fn(rbd_image_options_t, c_int, u64) -> c_int;
    rbd_create: fn(rados_ioctx_t, *const c_char, u64, *mut c_int) -> c_int;
    rbd_create4: fn(rados_ioctx_t, *const c_char, u64, rbd_image_options_t) -> c_int;
    rbd_clone3: fn(rados_ioctx_t, *const c_char, *const c_char, rados_ioctx_t, *const c_char, rbd_image_options_t) -> c_int;
    rbd_list2: fn(rados_ioctx_t, *mut rbd_image_spec_t, *mut usize) -> c_int;
    rbd_image_spec_list_cleanup: fn(*mut rbd_image_spec_t, usize) -> ();
    rbd_remove: fn(rados_ioctx_t, *const c_char) -> c_int;
    rbd_rename: fn(rados_ioctx_t, *const c_char, *const c_char) -> c_int;
    rbd_open: fn(rados_ioctx_t, *const c_char, *mut rbd_image_t, *const c_char) -> c_int;
    rbd_open_read_only: fn(rados_ioctx_t, *const c_char, *mut rbd_image_t, *const c_char) -> c_int;
    rbd_close: fn(rbd_image_t) -> c_int;

    rbd_get_size: fn(rbd_image_t, *mut u64) -> c_int;
    rbd_stat: fn(rbd_image_t, *mut rbd_image_info_t, usize) -> c_int;
    rbd_get_features: fn(rbd_image_t, *mut u64) -> c_int;
    rbd_get_flags: fn(rbd_image_t, *mut u64) -> c_int;
    rbd_get_old_format: fn(rbd_image_t, *mut u8) -> c_int;
    rbd_get_stripe_unit: fn(rbd_image_t, *mut u64) -> c_int;
    rbd_get_stripe_count: fn(rbd_image_t, *mut u64) -> c_int;
    rbd_read2: fn(rbd_image_t, u64, usize, *mut c_char, c_int) -> isize;
    rbd_aio_create_completion: fn(*mut c_void, CompletionCallback, *mut rbd_completion_t) -> c_int;
    rbd_aio_read2: fn(rbd_image_t, u64, usize, *mut c_char, rbd_completion_t, c_int) -> c_int;
    rbd_aio_write2: fn(rbd_image_t, u64, usize, *const c_char, rbd_completion_t, c_int) -> c_int;
    rbd_aio_get_return_value: fn(rbd_completion_t) -> isize;
    rbd_aio_wait_for_complete: fn(rbd_completion_t) -> c_int;
    rbd_aio_release: fn(rbd_completion_t) -> ();
    rbd_write2: fn(rbd_image_t, u64, usize, *const c_char, c_int) -> isize;
    rbd_discard: fn(rbd_image_t, u64, u64) -> c_int;
    rbd_flush: fn(rbd_image_t) -> c_int;
    rbd_invalidate_cache: fn(rbd_image_t) -> c_int;
    rbd_resize: fn(rbd_image_t, u64) -> c_int;

    rbd_snap_create: fn(rbd_image_t, *const c_char) -> c_int;
    rbd_snap_remove: fn(rbd_image_t, *const c_char) -> c_int;
    rbd_snap_rollback: fn(rbd_image_t, *const c_char) -> c_int;
    rbd_snap_protect: fn(rbd_image_t, *const c_char) -> c_int;
    rbd_snap_unprotect: fn(rbd_image_t, *const c_char) -> c_int;
    rbd_snap_is_protected: fn(rbd_image_t, *const c_char, *mut c_int) -> c_int;
    rbd_snap_list: fn(rbd_image_t, *mut rbd_snap_info_t, *mut c_int) -> c_int;
    rbd_snap_list_end: fn(*mut rbd_snap_info_t) -> ();
    rbd_snap_get_timestamp: fn(rbd_image_t, u64, *mut Timespec) -> c_int;
    rbd_snap_set: fn(rbd_image_t, *const c_char) -> c_int;
    rbd_diff_iterate2: fn(rbd_image_t, *const c_char, u64, u64, u8, u8, DiffCallback, *mut c_void) -> c_int;

    rbd_list_children3: fn(rbd_image_t, *mut rbd_linked_image_spec_t, *mut usize) -> c_int;
    rbd_linked_image_spec_list_cleanup: fn(*mut rbd_linked_image_spec_t, usize) -> ();
    rbd_linked_image_spec_cleanup: fn(*mut rbd_linked_image_spec_t) -> ();
    rbd_snap_spec_cleanup: fn(*mut rbd_snap_spec_t) -> ();
    rbd_get_parent: fn(rbd_image_t, *mut rbd_linked_image_spec_t, *mut rbd_snap_spec_t) -> c_int;
    rbd_flatten_with_progress: fn(rbd_image_t, ProgressCallback, *mut c_void) -> c_int;
    rbd_copy_with_progress: fn(rbd_image_t, rados_ioctx_t, *const c_char, ProgressCallback, *mut c_void) -> c_int;

    rbd_list_lockers: fn(rbd_image_t, *mut c_int, *mut c_char, *mut usize, *mut c_char, *mut usize, *mut c_char, *mut usize, *mut c_char, *mut usize) -> isize;
    rbd_lock_exclusive: fn(rbd_image_t, *const c_char) -> c_int;
    rbd_is_exclusive_lock_owner: fn(rbd_image_t, *mut c_int) -> c_int;
    rbd_lock_shared: fn(rbd_image_t, *const c_char, *const c_char) -> c_int;
    rbd_unlock: fn(rbd_image_t, *const c_char) -> c_int;
    rbd_break_lock: fn(rbd_image_t, *const c_char, *const c_char) -> c_int;
    rbd_watchers_list: fn(rbd_image_t, *mut rbd_image_watcher_t, *mut usize) -> c_int;
    rbd_watchers_list_cleanup: fn(*mut rbd_image_watcher_t, usize) -> ();
}

/// The function table, loading the libraries on first use. They stay loaded for the life
/// of the process (leaked on purpose: the function pointers must never dangle).
pub fn api() -> Result<&'static Api, String> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| {
        let open = |name: &str| -> Result<&'static Library, String> {
            // SAFETY: loading Ceph's libraries runs their initialisers, which is what linking
            // them would do too.
            let lib = unsafe { Library::new(name) }.map_err(|e| {
                format!("cannot load {name} ({e}); install Ceph's client libraries (librbd1, librados2) to use a cluster")
            })?;
            Ok(Box::leak(Box::new(lib)))
        };
        let rados = open("librados.so.2")?;
        let rbd = open("librbd.so.1")?;
        // SAFETY: these are Ceph's libraries, whose headers declare the signatures above.
        unsafe { Api::load(rados, rbd) }
    })
    .as_ref()
    .map_err(Clone::clone)
}
