//! Bodies of outbound HTTP exchanges, metered as their bytes pass: each data frame is
//! charged to the job's network quota, waits its turn under the bandwidth cap, and counts
//! toward the exchange's audit record. A response body is also cut at the job's
//! `http_response_bytes` and fails when the server sends nothing for the idle limit.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;
use wasmtime_wasi_http::Error;

use crate::meter::Meter;
use crate::policy::audit::Audit;

/// One exchange's record, written when its response body goes (read to the end, dropped
/// by the job, or dropped with the job's store), with the bytes that moved.
pub struct Exchange {
    pub audit: Audit,
    pub method: String,
    pub endpoint: String,
    pub status: u16,
    pub sent: Arc<AtomicU64>,
    pub received: u64,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let sent = self.sent.load(Ordering::Relaxed);
        self.audit.record_http_exchange(&self.method, &self.endpoint, self.status, sent, self.received);
    }
}

/// Which way a body goes.
enum Way {
    /// The job's request body: counted into the exchange's `sent`.
    Out(Arc<AtomicU64>),
    /// A response body, at most `left` more bytes, recorded in the exchange when it goes.
    In { left: u64, exchange: Exchange, idle: Duration, idle_timer: Pin<Box<Sleep>> },
}

/// A body whose data frames are charged and throttled as they pass.
pub struct Metered<B> {
    inner: B,
    meter: Arc<Meter>,
    way: Way,
    /// A frame charged and waiting out the bandwidth cap.
    held: Option<(Frame<Bytes>, Pin<Box<Sleep>>)>,
}

impl<B> Metered<B> {
    /// The job's request body; its bytes are added to `sent`.
    pub fn request(inner: B, meter: Arc<Meter>, sent: Arc<AtomicU64>) -> Self {
        Metered { inner, meter, way: Way::Out(sent), held: None }
    }

    /// A response body: at most `max` bytes, none of them more than `idle` after the last.
    pub fn response(inner: B, meter: Arc<Meter>, max: u64, idle: Duration, exchange: Exchange) -> Self {
        let idle_timer = Box::pin(tokio::time::sleep(idle));
        Metered { inner, meter, way: Way::In { left: max, exchange, idle, idle_timer }, held: None }
    }

    /// Charge a data frame of `n` bytes, or say why it may not pass.
    fn charge(&mut self, n: u64) -> Result<(), Error> {
        match &mut self.way {
            Way::Out(sent) => {
                self.meter.charge_network(n, true).map_err(quota)?;
                sent.fetch_add(n, Ordering::Relaxed);
            }
            Way::In { left, exchange, .. } => {
                if n > *left {
                    return Err(Error::HttpResponseBodySize(None));
                }
                self.meter.charge_network(n, false).map_err(quota)?;
                *left -= n;
                exchange.received += n;
            }
        }
        Ok(())
    }
}

fn quota(e: rbd_backend::Error) -> Error {
    Error::InternalError(Some(e.to_string()))
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Error>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if let Some((_, wait)) = &mut this.held {
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let (frame, _) = this.held.take().expect("held");
            return Poll::Ready(Some(Ok(frame)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Way::In { idle, idle_timer, .. } = &mut this.way {
                    idle_timer.as_mut().reset(tokio::time::Instant::now() + *idle);
                }
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                if n == 0 {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Err(e) = this.charge(n) {
                    return Poll::Ready(Some(Err(e)));
                }
                let wait = this.meter.bandwidth_wait(n);
                if wait.is_zero() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                let mut sleep = Box::pin(tokio::time::sleep(wait));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                this.held = Some((frame, sleep));
                Poll::Pending
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if let Way::In { idle_timer, .. } = &mut this.way {
                    if idle_timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(Error::ConnectionReadTimeout)));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
