//! Outbound HTTP for jobs (`wasi:http/outgoing-handler`), checked against the job's
//! endpoint grants ([`crate::policy::endpoints`]) before any connection is made.
//!
//! Every job gets `wasi:http` linked; a job without grants has every request answered
//! `HTTP-request-denied`, as it had no network before. For a granted request the host
//! resolves the name itself, keeps the addresses the grant allows, and connects to one of
//! them (the request's authority is rewritten to that address; its `Host` header keeps the
//! name), so a granted name cannot be pointed elsewhere between the check and the
//! connection. Responses are cut at the job's `http_response_bytes` limit; each request is
//! audited (method, endpoint, path, status or denial); the connection's tasks belong to the
//! job's store, so they end with the job.
//!
//! Not yet (issue 14): `https` to a name (the TLS name must be the granted name while the
//! connection goes to the pinned address; `default_send_request` takes both from the
//! authority), charging the bytes to the job's quotas and bandwidth cap, redirects (a
//! guest follows them itself, and each new request is checked like any other).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::policy::audit::Audit;
use crate::policy::endpoints::{Endpoints, Host, Scheme, Target};

/// Largest response body a job may receive, by default.
pub const DEFAULT_RESPONSE_BYTES: u64 = 1 << 30;

/// The `wasi:http` hooks of one job.
pub struct OutboundHooks {
    endpoints: Arc<Endpoints>,
    audit: Audit,
    max_response_bytes: u64,
}

impl OutboundHooks {
    pub fn new(endpoints: Endpoints, audit: Audit, max_response_bytes: u64) -> Self {
        OutboundHooks { endpoints: Arc::new(endpoints), audit, max_response_bytes }
    }
}

type SendFuture = Box<dyn Future<Output = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>), Error>> + Send>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let (endpoints, audit, max) = (self.endpoints.clone(), self.audit.clone(), self.max_response_bytes);
        Box::new(async move {
            let method = request.method().as_str().to_owned();
            let uri = request.uri().clone();
            let target = Target::parse(
                uri.scheme_str().unwrap_or(""),
                uri.authority().map_or("", |a| a.as_str()),
                uri.path_and_query().map_or("/", |p| p.as_str()),
            );
            let target = match target {
                Ok(t) => t,
                Err(why) => {
                    record(&audit, &method, &uri.to_string(), Err(why)).await;
                    return Err(Error::HttpRequestUriInvalid);
                }
            };
            let pinned = match pin(&endpoints, &target).await {
                Ok(addr) => addr,
                Err((why, error)) => {
                    record(&audit, &method, &target.to_string(), Err(why)).await;
                    return Err(error);
                }
            };
            let authority = SocketAddr::new(pinned, target.port).to_string();
            let mut parts = uri.into_parts();
            parts.authority = Some(authority.parse().map_err(|_| Error::HttpRequestUriInvalid)?);
            *request.uri_mut() = http::Uri::from_parts(parts).map_err(|_| Error::HttpRequestUriInvalid)?;
            let sent = wasmtime_wasi_http::default_send_request(request, options).await;
            let (response, io) = match sent {
                Ok(done) => done,
                Err(e) => {
                    record(&audit, &method, &target.to_string(), Err(format!("{e}"))).await;
                    return Err(e);
                }
            };
            record(&audit, &method, &target.to_string(), Ok(response.status().as_u16())).await;
            if response.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).is_some_and(|n| n > max) {
                return Err(Error::HttpResponseBodySize(Some(max)));
            }
            let response = response.map(|body| Bounded { inner: body.boxed_unsync(), left: max }.boxed_unsync());
            Ok((response, Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>))
        })
    }
}

/// The address to connect to: the grant's check, then the name resolved by the host and
/// the grant's address rule. A denial says why (for the audit) and how the guest is told.
async fn pin(endpoints: &Endpoints, target: &Target) -> Result<IpAddr, (String, Error)> {
    let grant = endpoints.grant_for(target).map_err(|d| (d.to_string(), Error::HttpRequestDenied))?;
    let resolved: Vec<IpAddr> = match &target.host {
        Host::Ip(ip) => vec![*ip],
        Host::Name(_) if target.scheme == Scheme::Https => {
            return Err((format!("{target}: https to a host name is not supported yet"), Error::HttpRequestDenied));
        }
        Host::Name(name) => match tokio::net::lookup_host((name.as_str(), target.port)).await {
            Ok(addrs) => addrs.map(|a| a.ip()).collect(),
            Err(e) => return Err((format!("{target}: cannot resolve {name}: {e}"), Error::DestinationNotFound)),
        },
    };
    let usable = grant.usable_addresses(target, &resolved).map_err(|d| (d.to_string(), Error::HttpRequestDenied))?;
    Ok(usable[0])
}

async fn record(audit: &Audit, method: &str, endpoint: &str, outcome: Result<u16, String>) {
    audit.record_http(method, endpoint, outcome.as_ref().map(|s| *s).map_err(String::as_str)).await;
}

/// A response body cut at `left` bytes: past it, the guest's next read fails.
struct Bounded {
    inner: WasiBody,
    left: u64,
}

impl http_body::Body for Bounded {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                if n > self.left {
                    return std::task::Poll::Ready(Some(Err(Error::HttpResponseBodySize(None))));
                }
                self.left -= n;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}
