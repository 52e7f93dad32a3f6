//! Outbound HTTP for jobs (`wasi:http/outgoing-handler`), checked against the job's
//! endpoint grants ([`crate::policy::endpoints`]) before any connection is made.
//!
//! Every job gets `wasi:http` linked; a job without grants has every request answered
//! `HTTP-request-denied`, as it had no network before. For a granted request the host
//! resolves the name itself, keeps the addresses the grant allows, and connects to one of
//! them ([`send`]), with TLS checked against the granted name for `https`, so a granted
//! name cannot be pointed elsewhere between the check and the connection.
//!
//! What a job can make the host spend here is bounded: at most `http_connections`
//! exchanges open at once (one more is refused `connection-limit-reached`); every wait
//! (connect, handshakes, response head, each next piece of a body) at most `http_idle`;
//! response bodies cut at `http_response_bytes`; every body byte, both ways, charged to the
//! network quota and the bandwidth cap as it passes ([`body`]); and the connections are
//! tasks of the job's store, aborted with it at the deadline. Redirects are not followed:
//! the job sees the 3xx, and a request it makes to the new location is checked like any
//! other. Each request is audited: denials and failures when they happen, exchanges when
//! their response body goes (method, endpoint and path, status, bytes each way).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::meter::Meter;
use crate::policy::audit::Audit;
use crate::policy::endpoints::{Endpoint, Endpoints, Host, Scheme, Target};

mod body;
mod send;

/// Largest response body a job may receive, by default.
pub const DEFAULT_RESPONSE_BYTES: u64 = 1 << 30;
/// Exchanges a job may have open at once, by default.
pub const DEFAULT_CONNECTIONS: usize = 8;
/// The longest wait for a connection, a response or the next bytes of one, by default.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);

/// The bounds on a job's outbound HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub response_bytes: u64,
    pub connections: usize,
    pub idle: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { response_bytes: DEFAULT_RESPONSE_BYTES, connections: DEFAULT_CONNECTIONS, idle: DEFAULT_IDLE }
    }
}

/// The `wasi:http` hooks of one job.
pub struct OutboundHooks {
    shared: Arc<Shared>,
}

struct Shared {
    endpoints: Endpoints,
    audit: Audit,
    meter: Arc<Meter>,
    limits: HttpLimits,
    open: AtomicUsize,
}

impl OutboundHooks {
    pub fn new(endpoints: Endpoints, audit: Audit, meter: Arc<Meter>, limits: HttpLimits) -> Self {
        OutboundHooks { shared: Arc::new(Shared { endpoints, audit, meter, limits, open: AtomicUsize::new(0) }) }
    }
}

/// One of the job's `http_connections`, given back when the exchange's connection ends.
struct Slot(Arc<Shared>);

impl Slot {
    fn take(shared: &Arc<Shared>) -> Option<Slot> {
        let max = shared.limits.connections;
        shared.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Slot(shared.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

type Driver = Box<dyn Future<Output = Result<(), Error>> + Send>;
type SendFuture = Box<dyn Future<Output = Result<(http::Response<WasiBody>, Driver), Error>> + Send>;

impl WasiHttpHooks for OutboundHooks {
    /// A certificate the granted roots do not vouch for is told apart from other TLS
    /// failures, so a job can say which it met.
    fn p2_error_from_tls(&mut self, err: &std::io::Error) -> wasmtime_wasi_http::p2::bindings::http::types::ErrorCode {
        use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
        match err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(_)) => ErrorCode::TlsCertificateError,
            _ => ErrorCode::TlsProtocolError,
        }
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let shared = self.shared.clone();
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
                    shared.audit.record_http_failure(&method, &uri.to_string(), &why).await;
                    return Err(Error::HttpRequestUriInvalid);
                }
            };
            let endpoint = target.to_string();
            match exchange(&shared, request, &target, options, method.clone()).await {
                Ok(done) => Ok(done),
                Err((why, error)) => {
                    shared.audit.record_http_failure(&method, &endpoint, &why).await;
                    Err(error)
                }
            }
        })
    }
}

/// Check, connect and send; a failure says why (for the audit) and how the job is told.
async fn exchange(
    shared: &Arc<Shared>,
    request: http::Request<WasiBody>,
    target: &Target,
    options: Option<RequestOptions>,
    method: String,
) -> Result<(http::Response<WasiBody>, Driver), (String, Error)> {
    let grant = shared.endpoints.grant_for(target).map_err(|d| (d.to_string(), Error::HttpRequestDenied))?;
    let slot = Slot::take(shared).ok_or_else(|| {
        let max = shared.limits.connections;
        (format!("{target}: the job already has its {max} HTTP exchanges open (limit http_connections)"), Error::ConnectionLimitReached)
    })?;
    let addr = SocketAddr::new(pin(grant, target, shared.limits.idle).await?, target.port);
    let security = match (&target.scheme, &target.host) {
        (Scheme::Http, _) => send::Security::Plain,
        (Scheme::Https, host) => {
            let name = match host {
                Host::Name(n) => rustls::pki_types::ServerName::try_from(n.clone()),
                Host::Ip(ip) => Ok(rustls::pki_types::ServerName::from(*ip)),
            }
            .map_err(|e| (format!("{target}: {e}"), Error::HttpRequestUriInvalid))?;
            let config = send::tls_config(&grant.ca_certificates).map_err(|e| (e, Error::ConfigurationError))?;
            send::Security::Tls { name, config }
        }
    };
    // The job's own timeouts count when shorter than the host's.
    let idle = shared.limits.idle;
    let shorter = |asked: Option<Duration>| asked.map_or(idle, |a| a.min(idle));
    let options = options.unwrap_or_default();
    let waits = send::Waits { connect: shorter(options.connect_timeout), first_byte: shorter(options.first_byte_timeout) };
    let between_bytes = shorter(options.between_bytes_timeout);

    let sent = Arc::new(AtomicU64::new(0));
    let request = request.map(|b| body::Metered::request(b, shared.meter.clone(), sent.clone()));
    let (response, driver) = send::send(request, addr, security, waits, &sent).await.map_err(|e| (format!("{target}: {e}"), e))?;
    let max = shared.limits.response_bytes;
    let announced = response.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max) {
        return Err((format!("{target}: the response announces {} bytes, over the job's http_response_bytes of {max}", announced.unwrap_or(0)), Error::HttpResponseBodySize(Some(max))));
    }
    let record = body::Exchange {
        audit: shared.audit.clone(),
        method,
        endpoint: target.to_string(),
        status: response.status().as_u16(),
        sent,
        received: 0,
    };
    let meter = shared.meter.clone();
    let response = response.map(|b| body::Metered::response(b, meter, max, between_bytes, record).boxed_unsync());
    let driver = async move {
        let _slot = slot;
        driver.await
    };
    Ok((response, Box::new(driver) as Driver))
}

/// The address to connect to: the name resolved by the host (within `wait`), then the
/// grant's address rule.
async fn pin(grant: &Endpoint, target: &Target, wait: Duration) -> Result<IpAddr, (String, Error)> {
    let resolved: Vec<IpAddr> = match &target.host {
        Host::Ip(ip) => vec![*ip],
        Host::Name(name) => match tokio::time::timeout(wait, tokio::net::lookup_host((name.as_str(), target.port))).await {
            Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
            Ok(Err(e)) => return Err((format!("{target}: cannot resolve {name}: {e}"), Error::DestinationNotFound)),
            Err(_) => return Err((format!("{target}: resolving {name} took longer than {wait:?}"), Error::DnsTimeout)),
        },
    };
    let usable = grant.usable_addresses(target, &resolved).map_err(|d| (d.to_string(), Error::HttpRequestDenied))?;
    Ok(usable[0])
}
