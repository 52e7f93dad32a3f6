//! librbd's asynchronous reads and writes (`rbd_aio_read2`, `rbd_aio_write2`): many in
//! flight at once, as `rbd export-diff` keeps them, with no thread waiting for each reply
//! (starting one may wait: see `rbd_backend::AsyncIo`).
//!
//! Each request owns its buffer and its `done` callback in a box that librbd hands back to
//! [`completed`], so a request outlives whoever started it (a job that ends mid-read frees
//! nothing librbd still writes into). A completion is released only after its callbacks
//! have finished (`rbd_aio_wait_for_complete`): the callback parks it, and the next request
//! or the image's close releases it. Closing waits for every request in flight.

use std::ffi::{c_char, c_int, c_void};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::ffi::{self, Api};
use crate::{Error, Result};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The requests of one image in flight, and the completions left to release.
#[derive(Default)]
pub(super) struct InFlight {
    state: Mutex<State>,
    idle: Condvar,
}

#[derive(Default)]
struct State {
    running: usize,
    /// Completions whose callbacks ran (as addresses: the pointers are not `Send`).
    done: Vec<usize>,
}

impl InFlight {
    /// Release the completions whose callbacks have run.
    fn release_done(&self, api: &Api) {
        let done = std::mem::take(&mut lock(&self.state).done);
        for c in done {
            let comp = c as ffi::rbd_completion_t;
            // SAFETY: a completion made by `start`, whose callback has been called; waiting
            // lets the callback's caller finish with it before it is freed.
            unsafe {
                (api.rbd_aio_wait_for_complete)(comp);
                (api.rbd_aio_release)(comp);
            }
        }
    }

    /// Wait until nothing is in flight, and release every completion.
    pub fn drain(&self, api: &Api) {
        let mut state = lock(&self.state);
        while state.running > 0 {
            state = self.idle.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        drop(state);
        self.release_done(api);
    }
}

/// What a request needs when it completes.
struct Request {
    api: &'static Api,
    in_flight: *const InFlight,
    kind: Kind,
}

pub(super) enum Kind {
    Read { buf: Vec<u8>, done: crate::ReadDone, what: String },
    Write { _data: Box<dyn AsRef<[u8]> + Send>, clipped: u64, requested: u64, done: crate::WriteDone, what: String },
}

// SAFETY: `in_flight` points into the image, which `drain`s before it is dropped, so the
// pointer outlives every request; everything else in a request is `Send`.
unsafe impl Send for Request {}

/// The completion callback: hand the result over, park the completion, count the request
/// done. Runs on a librbd thread.
extern "C" fn completed(comp: ffi::rbd_completion_t, arg: *mut c_void) {
    // SAFETY: `arg` is the box `start` leaked for this completion, handed back once.
    let request = unsafe { Box::from_raw(arg as *mut Request) };
    // SAFETY: a live completion.
    let ret = unsafe { (request.api.rbd_aio_get_return_value)(comp) };
    // SAFETY: see `Send for Request`.
    let in_flight = unsafe { &*request.in_flight };
    let kind = request.kind;
    // A panic must not unwind into C.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || match kind {
        Kind::Read { mut buf, done, what } => {
            if ret < 0 {
                done(Err(Error::from_errno(ret as c_int, what)));
            } else {
                buf.truncate(ret as usize);
                done(Ok(buf));
            }
        }
        Kind::Write { clipped, requested, done, what, .. } => {
            if ret < 0 {
                done(Err(Error::from_errno(ret as c_int, what)));
            } else if clipped < requested {
                done(Err(Error::IncompleteWrite { requested, written: clipped }));
            } else {
                done(Ok(requested));
            }
        }
    }));
    let mut state = lock(&in_flight.state);
    state.done.push(comp as usize);
    state.running -= 1;
    if state.running == 0 {
        in_flight.idle.notify_all();
    }
}

/// Start a request: `issue` is `rbd_aio_read2` or `rbd_aio_write2` over the request's
/// buffer. On an error nothing is in flight and `done` is dropped uncalled.
pub(super) fn start(
    api: &'static Api,
    in_flight: &InFlight,
    kind: Kind,
    issue: impl FnOnce(*mut c_char, ffi::rbd_completion_t) -> c_int,
) -> Result<()> {
    in_flight.release_done(api);
    let mut request = Box::new(Request { api, in_flight, kind });
    let buf: *mut c_char = match &mut request.kind {
        Kind::Read { buf, .. } => buf.as_mut_ptr().cast(),
        Kind::Write { _data, .. } => (**_data).as_ref().as_ptr().cast_mut().cast(),
    };
    let arg = Box::into_raw(request);
    let mut comp: ffi::rbd_completion_t = std::ptr::null_mut();
    // SAFETY: out-pointer; `arg` stays valid until the callback takes it back.
    let ret = unsafe { (api.rbd_aio_create_completion)(arg.cast(), completed, &mut comp) };
    if ret < 0 {
        // SAFETY: not handed to librbd.
        drop(unsafe { Box::from_raw(arg) });
        return Err(Error::from_errno(ret, "creating an AIO completion"));
    }
    lock(&in_flight.state).running += 1;
    let ret = issue(buf, comp);
    if ret < 0 {
        // librbd did not take the request: its callback will not run.
        let mut state = lock(&in_flight.state);
        state.running -= 1;
        if state.running == 0 {
            in_flight.idle.notify_all();
        }
        drop(state);
        // SAFETY: the completion was not started; the box was not handed over.
        unsafe { (api.rbd_aio_release)(comp) };
        drop(unsafe { Box::from_raw(arg) });
        return Err(Error::from_errno(ret, "starting an AIO request"));
    }
    Ok(())
}

/// A read request over a zeroed buffer of `len` bytes.
pub(super) fn read_request(len: usize, done: crate::ReadDone, what: String) -> Kind {
    Kind::Read { buf: vec![0u8; len], done, what }
}

/// A write request of `data`, `clipped` of whose `requested` bytes fit in the image.
pub(super) fn write_request(
    data: Box<dyn AsRef<[u8]> + Send>,
    clipped: u64,
    requested: u64,
    done: crate::WriteDone,
    what: String,
) -> Kind {
    Kind::Write { _data: data, clipped, requested, done, what }
}
