//! [`Leases`] on a Ceph cluster: one RADOS object per name, its lease an exclusive
//! `cls_lock` with a duration and its state an xattr.
//!
//! Why `cls_lock` and not an RBD advisory lock: a `cls_lock` taken with a duration expires
//! on the OSD's clock, so a holder that dies (or loses the network) frees it without anyone
//! breaking it, and taking over an expired one blocklists nobody. Breaking an RBD lock
//! blocklists the old holder's whole client, every job of that host with it.
//!
//! A lock's holder is this client (its instance) with this object's cookie: two processes,
//! or two `RadosLeases` of one process, never share one.

use std::ffi::{c_char, c_int, CString};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use super::ffi;
use super::{cstr, IoCtx};
use crate::lease::Leases;
use crate::{Error, Result};

/// The `cls_lock` name on every lease object.
const LOCK_NAME: &str = "rbd-wasm-lease";
/// The xattr that holds the state value.
const STATE_XATTR: &str = "rbd-wasm.state";
/// The largest state value read back.
const MAX_STATE: usize = 64 << 10;
use libc::{EBUSY, ECANCELED, EEXIST, ENODATA, ENOENT, ERANGE};

/// Leases on the objects of one pool (and namespace).
pub struct RadosLeases {
    io: Arc<IoCtx>,
    cookie: CString,
    description: CString,
    lock_name: CString,
}

impl RadosLeases {
    pub(super) fn new(io: Arc<IoCtx>, holder: &str) -> Result<Self> {
        let cookie = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
        Ok(RadosLeases {
            io,
            cookie: cstr(&cookie, "lease cookie")?,
            description: cstr(holder, "lease holder")?,
            lock_name: cstr(LOCK_NAME, "lock name")?,
        })
    }

    fn api(&self) -> &'static ffi::Api {
        self.io.cluster.api
    }

    fn lock(&self, name: &str, ttl: Duration, flags: u8) -> Result<c_int> {
        let oid = cstr(name, "lease name")?;
        let mut duration = libc::timeval {
            tv_sec: libc::time_t::try_from(ttl.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: libc::suseconds_t::from(ttl.subsec_micros()),
        };
        // SAFETY: valid ioctx and C strings; the duration lives across the call.
        Ok(unsafe {
            (self.api().rados_lock_exclusive)(
                self.io.handle,
                oid.as_ptr(),
                self.lock_name.as_ptr(),
                self.cookie.as_ptr(),
                self.description.as_ptr(),
                &mut duration,
                flags,
            )
        })
    }
}

impl Leases for RadosLeases {
    fn acquire(&self, name: &str, ttl: Duration) -> Result<bool> {
        // No renew flag: a lease this holder has already is `EEXIST`, not taken twice.
        match self.lock(name, ttl, 0)? {
            r if r >= 0 => Ok(true),
            r if r == -EBUSY || r == -EEXIST => Ok(false),
            r => Err(Error::from_errno(r, format!("lock the lease object `{name}`"))),
        }
    }

    fn renew(&self, name: &str, ttl: Duration) -> Result<bool> {
        match self.lock(name, ttl, ffi::LOCK_FLAG_MUST_RENEW)? {
            r if r >= 0 => Ok(true),
            // Not held by this client any more (expired and taken, or broken).
            r if r == -ENOENT || r == -EBUSY => Ok(false),
            r => Err(Error::from_errno(r, format!("renew the lease on `{name}`"))),
        }
    }

    fn release(&self, name: &str) -> Result<()> {
        let oid = cstr(name, "lease name")?;
        // SAFETY: valid ioctx and C strings.
        let r = unsafe { (self.api().rados_unlock)(self.io.handle, oid.as_ptr(), self.lock_name.as_ptr(), self.cookie.as_ptr()) };
        match r {
            r if r >= 0 || r == -ENOENT => Ok(()),
            r => Err(Error::from_errno(r, format!("unlock the lease object `{name}`"))),
        }
    }

    fn state(&self, name: &str) -> Result<Vec<u8>> {
        let oid = cstr(name, "lease name")?;
        let attr = cstr(STATE_XATTR, "xattr")?;
        let mut buf = vec![0u8; MAX_STATE];
        // SAFETY: valid ioctx, C strings, and a buffer of the length given.
        let r = unsafe {
            (self.api().rados_getxattr)(self.io.handle, oid.as_ptr(), attr.as_ptr(), buf.as_mut_ptr().cast::<c_char>(), buf.len())
        };
        match r {
            r if r >= 0 => {
                buf.truncate(r as usize);
                Ok(buf)
            }
            r if r == -ENOENT || r == -ENODATA => Ok(Vec::new()),
            r if r == -ERANGE => Err(Error::OutOfRange(format!("the state of `{name}` is larger than {MAX_STATE} bytes"))),
            r => Err(Error::from_errno(r, format!("read the state of `{name}`"))),
        }
    }

    fn swap_state(&self, name: &str, expected: &[u8], new: &[u8]) -> Result<bool> {
        let oid = cstr(name, "lease name")?;
        let attr = cstr(STATE_XATTR, "xattr")?;
        let api = self.api();
        // SAFETY: a fresh write op, released below whatever happens.
        let op = unsafe { (api.rados_create_write_op)() };
        if op.is_null() {
            return Err(Error::Io("rados_create_write_op returned null".into()));
        }
        // One compound write, applied whole or not at all: create the object if it is not
        // there (a lease never locked has none), check the state is still `expected` (the
        // OSD compares a missing xattr as empty), and then make it `new`.
        // SAFETY: valid op; the C strings and slices outlive the operate call.
        let r = unsafe {
            (api.rados_write_op_create)(op, ffi::CREATE_IDEMPOTENT, ptr::null());
            (api.rados_write_op_cmpxattr)(op, attr.as_ptr(), ffi::CMPXATTR_OP_EQ, expected.as_ptr().cast(), expected.len());
            (api.rados_write_op_setxattr)(op, attr.as_ptr(), new.as_ptr().cast(), new.len());
            let r = (api.rados_write_op_operate)(op, self.io.handle, oid.as_ptr(), ptr::null_mut(), 0);
            (api.rados_release_write_op)(op);
            r
        };
        match r {
            r if r >= 0 => Ok(true),
            r if r == -ECANCELED => Ok(false),
            r => Err(Error::from_errno(r, format!("write the state of `{name}`"))),
        }
    }

    fn holders(&self, name: &str) -> Result<Vec<String>> {
        let oid = cstr(name, "lease name")?;
        let mut size = 4096usize;
        loop {
            let (mut tag, mut clients, mut cookies, mut addrs) = (vec![0u8; size], vec![0u8; size], vec![0u8; size], vec![0u8; size]);
            let (mut tag_len, mut clients_len, mut cookies_len, mut addrs_len) = (size, size, size, size);
            let mut exclusive: c_int = 0;
            // SAFETY: valid ioctx and C strings; each buffer has the length passed with it.
            let r = unsafe {
                (self.api().rados_list_lockers)(
                    self.io.handle,
                    oid.as_ptr(),
                    self.lock_name.as_ptr(),
                    &mut exclusive,
                    tag.as_mut_ptr().cast(),
                    &mut tag_len,
                    clients.as_mut_ptr().cast(),
                    &mut clients_len,
                    cookies.as_mut_ptr().cast(),
                    &mut cookies_len,
                    addrs.as_mut_ptr().cast(),
                    &mut addrs_len,
                )
            };
            if r == -(ERANGE as isize) && size < (1 << 20) {
                size = [tag_len, clients_len, cookies_len, addrs_len, size * 2].into_iter().max().unwrap_or(size * 2);
                continue;
            }
            if r == -(ENOENT as isize) {
                return Ok(Vec::new());
            }
            if r < 0 {
                return Err(Error::from_errno(r as i32, format!("list the holders of `{name}`")));
            }
            let split = |buf: &[u8], len: usize| -> Vec<String> {
                buf[..len.min(buf.len())].split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
            };
            let (clients, addrs) = (split(&clients, clients_len), split(&addrs, addrs_len));
            return Ok(clients.iter().zip(addrs.iter().chain(std::iter::repeat(&String::new()))).map(|(c, a)| format!("{c} {a}")).collect());
        }
    }
}
