//! The service's HTTP endpoint: `/metrics` (Prometheus), `/status` (JSON), `/healthz`.
//!
//! Loopback by default; bound elsewhere, `/metrics` and `/status` need the configured
//! bearer token (`/healthz` says only whether the process is up). Each connection is
//! served one request at a time and closed after at most [`CONNECTION_TIME`], and at most
//! [`MAX_CONNECTIONS`] are served at once: a scraper that stalls holds one slot for a
//! bounded time, and nothing it sends is kept beyond a request's headers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use wasmtime_wasi_http::io::TokioIo;

use super::metrics::Metrics;

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 32;
/// The longest one connection is served.
const CONNECTION_TIME: Duration = Duration::from_secs(30);

/// What the endpoint serves.
pub struct Endpoint {
    pub metrics: Arc<Metrics>,
    pub status: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
    pub token: Option<String>,
    /// Set once the service is stopping: `/healthz` answers 503 then.
    pub stopping: Arc<AtomicBool>,
}

/// Bind `addr` now (so a bad address fails the start, not later).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serve until `stop` turns true.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, _) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("http: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&endpoint, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .max_buf_size(64 << 10)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIME, conn).await;
        });
    }
}

fn answer(endpoint: &Endpoint, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    let path = req.uri().path();
    if path == "/healthz" {
        return if endpoint.stopping.load(Ordering::SeqCst) {
            plain(StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
        } else {
            plain(StatusCode::OK, "ok\n")
        };
    }
    if !matches!(path, "/metrics" | "/status") {
        return plain(StatusCode::NOT_FOUND, "not found: try /metrics, /status or /healthz\n");
    }
    if let Some(token) = &endpoint.token {
        let given = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if !given.is_some_and(|g| same(g, token.as_bytes())) {
            let mut response = plain(StatusCode::UNAUTHORIZED, "a bearer token is needed\n");
            response.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    if path == "/metrics" {
        return match endpoint.metrics.encode() {
            Ok(text) => with_type(StatusCode::OK, text, "application/openmetrics-text; version=1.0.0; charset=utf-8"),
            Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n"),
        };
    }
    let status = (endpoint.status)();
    match serde_json::to_string_pretty(&status) {
        Ok(json) => with_type(StatusCode::OK, json + "\n", "application/json"),
        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the status\n"),
    }
}

/// Compare in time that does not depend on where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    with_type(status, text.to_owned(), "text/plain; charset=utf-8")
}

fn with_type(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}
