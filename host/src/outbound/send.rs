//! Sending one request to the address its grant pinned: TCP to that address, TLS checked
//! against the name the job asked for, then HTTP/1.1 through hyper.
//!
//! wasmtime-wasi-http's `default_send_request` takes both the address and the TLS name from
//! the request's authority, so connecting it to a pinned address would check the
//! certificate against the address, not the granted name; this is its sequence with the two
//! kept apart, and with the host's own bounds on every wait.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::Error;

/// How long each step may wait.
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    /// TCP connect, and the TLS and HTTP handshakes, each.
    pub connect: Duration,
    /// The longest the response's head may be awaited with no request body byte sent
    /// meanwhile: an upload of any size may take its time, a stalled one may not.
    pub first_byte: Duration,
}

/// How the connection is secured: not at all (`http`), or TLS checked against `name` with
/// `config`'s roots.
pub enum Security {
    Plain,
    Tls { name: ServerName<'static>, config: Arc<rustls::ClientConfig> },
}

/// Connect to `addr`, send `request` (its URI's path and query; its `Host` header as the
/// job set it), and return the response head with its body, and the connection's driver,
/// which must be polled until the body has been read. `sent` counts the request body's
/// bytes as they go (the wait for the head restarts while it grows).
pub async fn send<B>(
    mut request: Request<B>,
    addr: SocketAddr,
    security: Security,
    waits: Waits,
    sent: &std::sync::atomic::AtomicU64,
) -> Result<(Response<hyper::body::Incoming>, impl Future<Output = Result<(), Error>> + Send), Error>
where
    B: http_body::Body<Data = Bytes, Error = Error> + Send + 'static,
{
    let tcp = match tokio::time::timeout(waits.connect, TcpStream::connect(addr)).await {
        Ok(stream) => stream.map_err(Error::Connect)?,
        Err(_) => return Err(Error::ConnectionTimeout),
    };
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Stream> = match security {
        Security::Plain => Box::new(tcp),
        Security::Tls { name, config } => {
            let connector = tokio_rustls::TlsConnector::from(config);
            match tokio::time::timeout(waits.connect, connector.connect(name, tcp)).await {
                Ok(tls) => Box::new(tls.map_err(Error::Tls)?),
                Err(_) => return Err(Error::ConnectionTimeout),
            }
        }
    };
    let (mut sender, conn) = tokio::time::timeout(waits.connect, hyper::client::conn::http1::handshake(TokioIo::new(io)))
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
    // Origin form: the scheme and authority go on the wire only to a proxy.
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    *request.uri_mut() = http::Uri::builder().path_and_query(path).build().map_err(|_| Error::HttpRequestUriInvalid)?;

    // Drive the connection while waiting for the response head; afterwards the caller does.
    let mut conn = Box::pin(conn);
    let mut conn_ended = false;
    let head = sender.send_request(request);
    tokio::pin!(head);
    let mut progress = sent.load(std::sync::atomic::Ordering::Relaxed);
    let response = loop {
        tokio::select! {
            head = &mut head => break head.map_err(Error::from)?,
            ended = &mut conn, if !conn_ended => {
                conn_ended = true;
                // Ended cleanly: the response is complete, or never comes.
                ended.map_err(Error::from)?;
            }
            () = tokio::time::sleep(waits.first_byte) => {
                let now = sent.load(std::sync::atomic::Ordering::Relaxed);
                if now == progress {
                    return Err(Error::ConnectionReadTimeout);
                }
                progress = now;
            }
        }
    };
    let driver = async move {
        if conn_ended {
            return Ok(());
        }
        conn.await.map_err(|e| if e.is_timeout() { Error::HttpResponseTimeout } else { Error::from(e) })
    };
    Ok((response, driver))
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

/// A TLS client configuration that trusts the public roots (webpki-roots, Mozilla's list)
/// and `extra_roots` (DER certificates an operator named for a private endpoint).
pub fn tls_config(extra_roots: &[Vec<u8>]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
    for der in extra_roots {
        roots.add(rustls::pki_types::CertificateDer::from(der.clone())).map_err(|e| format!("a granted CA certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
