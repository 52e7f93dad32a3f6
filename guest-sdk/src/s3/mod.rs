//! An S3 client for jobs: objects of one bucket, through the host's `wasi:http` (so only
//! to an endpoint the operator granted), signed with SigV4 (`crates/sigv4`) from keys the
//! operator handed the job as secrets.
//!
//! Bodies that come from or go to files of the output directory are moved by the host
//! (`wasi:io` splice between the file's stream and the HTTP body's): the bytes of a
//! multi-GiB stream never enter the job's memory. Such uploads are sent with
//! `UNSIGNED-PAYLOAD` (the request itself is signed; its data is checked end to end by the
//! backup format's own digests), small bodies with their SHA-256 signed.
//!
//! ```no_run
//! use rbd_wasm_guest::s3::Bucket;
//! let bucket = Bucket::from_secrets("http://10.0.0.5:7480", "offsite", "default", "s3-access-key", "s3-secret-key")?;
//! bucket.put("hello.txt", b"hello")?;
//! assert_eq!(bucket.get("hello.txt", 1 << 20)?, Some(b"hello".to_vec()));
//! # Ok::<(), rbd_wasm_guest::s3::Error>(())
//! ```
//!
//! Large files go up in parts ([`Bucket::put_file`]: a multipart upload, completed only
//! when every part is in, aborted on failure, so an interrupted upload never leaves an
//! object), and come down in ranges ([`Bucket::get_to_file`]), each within the job's
//! `http_response_bytes`.

pub mod xml;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub use sigv4::Credentials;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::{InputStream, StreamError};

use crate::{InputFile, OutputFile};

/// Parts of a multipart upload are at least this large (S3's minimum is 5 MiB); larger for
/// a file that would need more than [`MAX_PARTS`] of them.
pub const PART_BYTES: u64 = 32 << 20;
/// S3's limit of parts in one upload.
pub const MAX_PARTS: u64 = 10_000;
/// A download's range: one GET's response at most (within the job's `http_response_bytes`).
pub const RANGE_BYTES: u64 = 64 << 20;

/// Why an S3 request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The HTTP status, when the server answered.
    pub status: Option<u16>,
    /// S3's error code (`NoSuchKey`, `AccessDenied`...), or the `wasi:http` error's name
    /// when no answer came (`HttpRequestDenied`: the endpoint is not granted).
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => write!(f, "S3 answered {status} {}: {}", self.code, self.message),
            None => write!(f, "S3 request failed: {} {}", self.code, self.message),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn local(code: &str, message: impl Into<String>) -> Error {
    Error { status: None, code: code.into(), message: message.into() }
}

/// An object listed by [`Bucket::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
}

/// How long a request waits in all for a connection the host has not given back yet.
const CONNECTION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One bucket of an S3 endpoint, addressed path-style (`/BUCKET/KEY`, which Ceph's gateway
/// and every S3 implementation answer).
pub struct Bucket {
    scheme: Scheme,
    authority: String,
    bucket: String,
    region: String,
    credentials: Credentials,
}

/// A request's body (references only, so it is copied into each try of a request).
#[derive(Clone, Copy)]
enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// `len` bytes of a stream, spliced by the host.
    Stream(&'a InputStream, u64),
}

impl Bucket {
    /// `endpoint` is `http://host[:port]` or `https://host[:port]` (no path).
    pub fn new(endpoint: &str, bucket: &str, region: &str, credentials: Credentials) -> Result<Bucket> {
        let (scheme, authority) = match endpoint.split_once("://") {
            Some(("http", rest)) => (Scheme::Http, rest),
            Some(("https", rest)) => (Scheme::Https, rest),
            _ => return Err(local("InvalidEndpoint", format!("{endpoint:?}: not http(s)://host[:port]"))),
        };
        let authority = authority.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(local("InvalidEndpoint", format!("{endpoint:?}: not http(s)://host[:port]")));
        }
        if bucket.is_empty() || bucket.contains('/') {
            return Err(local("InvalidBucketName", format!("{bucket:?}")));
        }
        Ok(Bucket { scheme, authority: authority.into(), bucket: bucket.into(), region: region.into(), credentials })
    }

    /// As [`Bucket::new`], with the access key and the secret key read from the secrets
    /// named `access` and `secret` (see [`crate::secrets`]).
    pub fn from_secrets(endpoint: &str, bucket: &str, region: &str, access: &str, secret: &str) -> Result<Bucket> {
        let read = |name: &str| crate::secrets::get_text(name).map_err(|e| local("MissingSecret", e.to_string()));
        let credentials = Credentials { access_key: read(access)?, secret_key: read(secret)? };
        Bucket::new(endpoint, bucket, region, credentials)
    }

    /// Store `data` as `key` (its SHA-256, computed by the host, signed).
    pub fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let hash: String = crate::sha256_chunks(data, 0).first().map(|d| d.iter().map(|b| format!("{b:02x}")).collect()).unwrap_or_default();
        let response = self.send(Method::Put, key, &[], &[], Body::Bytes(data), &hash)?;
        expect(response, &[200])?;
        Ok(())
    }

    /// Store the file at `path` (in a mapped directory) as `key`, its bytes moved by the
    /// host: one PUT up to [`PART_BYTES`], a multipart upload above (aborted if a part
    /// fails, so no object appears unless all of it is in). Returns the bytes stored.
    pub fn put_file(&self, key: &str, path: &Path) -> Result<u64> {
        let io = |e: std::io::Error| local("Io", format!("{}: {e}", path.display()));
        let size = InputFile::open(path).and_then(|f| f.size()).map_err(io)?;
        if size <= PART_BYTES {
            let file = InputFile::open(path).map_err(io)?;
            let response = self.send(Method::Put, key, &[], &[], Body::Stream(file.stream(), size), sigv4::UNSIGNED_PAYLOAD)?;
            expect(response, &[200])?;
            return Ok(size);
        }
        let part_bytes = PART_BYTES.max(size.div_ceil(MAX_PARTS).next_multiple_of(1 << 20));
        let started = self.send(Method::Post, key, &[("uploads", "")], &[], Body::Empty, &sigv4::sha256_hex(b""))?;
        let answer = read_text(expect(started, &[200])?, 1 << 20)?;
        let upload_id = xml::first(&answer, "UploadId").ok_or_else(|| local("InvalidResponse", "no UploadId in the answer"))?;
        let parts = (|| {
            let mut etags = Vec::new();
            let mut offset = 0;
            while offset < size {
                let len = part_bytes.min(size - offset);
                let number = (etags.len() + 1).to_string();
                let file = InputFile::open_at(path, offset).map_err(io)?;
                let query = [("partNumber", number.as_str()), ("uploadId", upload_id.as_str())];
                let response = self.send(Method::Put, key, &query, &[], Body::Stream(file.stream(), len), sigv4::UNSIGNED_PAYLOAD)?;
                let response = expect(response, &[200])?;
                let etag = header(&response, "etag").ok_or_else(|| local("InvalidResponse", "a part's answer has no ETag"))?;
                etags.push(etag);
                offset += len;
            }
            Ok(etags)
        })();
        let etags = match parts {
            Ok(etags) => etags,
            Err(e) => {
                let _ = self.send(Method::Delete, key, &[("uploadId", upload_id.as_str())], &[], Body::Empty, &sigv4::sha256_hex(b""));
                return Err(e);
            }
        };
        let mut done = String::from("<CompleteMultipartUpload>");
        for (i, etag) in etags.iter().enumerate() {
            done.push_str(&format!("<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>", i + 1, xml::escape(etag)));
        }
        done.push_str("</CompleteMultipartUpload>");
        let hash = sigv4::sha256_hex(done.as_bytes());
        let response = self.send(Method::Post, key, &[("uploadId", upload_id.as_str())], &[], Body::Bytes(done.as_bytes()), &hash)?;
        // S3 may answer 200 with an error in the body once the parts are being joined.
        let answer = read_text(expect(response, &[200])?, 1 << 20)?;
        if let Some(code) = xml::first(&answer, "Code") {
            return Err(Error { status: Some(200), code, message: xml::first(&answer, "Message").unwrap_or_default() });
        }
        Ok(size)
    }

    /// The object `key` whole, if it exists and has at most `max` bytes (a larger one is an
    /// `EntityTooLarge` error).
    pub fn get(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let response = self.send(Method::Get, key, &[], &[], Body::Empty, &sigv4::sha256_hex(b""))?;
        if response.status() == 404 {
            return Ok(None);
        }
        read_all(expect(response, &[200])?, max).map(Some)
    }

    /// Send a GET of `key` and return at once; [`Bucket::finish_get`] takes the object.
    pub fn start_get(&self, key: String) -> Result<PendingGet> {
        let started = self.start(Method::Get, &key, &[], &[], Body::Empty, &sigv4::sha256_hex(b""))?;
        Ok(PendingGet { started, key })
    }

    /// The object of a GET started by [`Bucket::start_get`] (`None` if there is none), at
    /// most `max` bytes; one the host refused for want of a free connection is sent again.
    pub fn finish_get(&self, get: PendingGet, max: u64) -> Result<Option<Vec<u8>>> {
        let response = match get.started.response() {
            Err(e) if e.code == "ConnectionLimitReached" => self.send(Method::Get, &get.key, &[], &[], Body::Empty, &sigv4::sha256_hex(b""))?,
            other => other?,
        };
        if response.status() == 404 {
            return Ok(None);
        }
        read_all(expect(response, &[200])?, max).map(Some)
    }

    /// The size of object `key`, if it exists.
    pub fn head(&self, key: &str) -> Result<Option<u64>> {
        let response = self.send(Method::Head, key, &[], &[], Body::Empty, &sigv4::sha256_hex(b""))?;
        if response.status() == 404 {
            return Ok(None);
        }
        let response = expect(response, &[200])?;
        let size = header(&response, "content-length").and_then(|v| v.parse().ok());
        size.map(Some).ok_or_else(|| local("InvalidResponse", "HEAD answered without Content-Length"))
    }

    /// Write object `key` to the file at `path` (created or truncated), its bytes moved by
    /// the host, in ranges of [`RANGE_BYTES`]; the file is synced. Returns the bytes
    /// written; `NoSuchKey` if there is no such object.
    pub fn get_to_file(&self, key: &str, path: &Path) -> Result<u64> {
        let io = |e: std::io::Error| local("Io", format!("{}: {e}", path.display()));
        let size = self.head(key)?.ok_or_else(|| Error { status: Some(404), code: "NoSuchKey".into(), message: key.into() })?;
        let out = OutputFile::create(path).map_err(io)?;
        let mut offset = 0;
        while offset < size {
            let end = (offset + RANGE_BYTES).min(size) - 1;
            let range = format!("bytes={offset}-{end}");
            let response = self.send(Method::Get, key, &[], &[("range", &range)], Body::Empty, &sigv4::sha256_hex(b""))?;
            let response = expect(response, &[206, 200])?;
            let body = response.consume().map_err(|_| local("InvalidResponse", "no body"))?;
            let stream = body.stream().map_err(|_| local("InvalidResponse", "no body stream"))?;
            let want = end + 1 - offset;
            let mut got = 0;
            while got < want {
                match out.stream().blocking_splice(&stream, want - got) {
                    Ok(n) => got += n,
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => return Err(local("Io", e.to_debug_string())),
                }
            }
            if got != want {
                return Err(local("IncompleteBody", format!("{key}: {got} of {want} bytes at {offset}")));
            }
            offset += want;
        }
        out.stream().blocking_flush().map_err(|e| local("Io", format!("{e:?}")))?;
        out.sync_all().map_err(io)?;
        Ok(size)
    }

    /// Remove object `key` (no error if it does not exist).
    pub fn delete(&self, key: &str) -> Result<()> {
        let response = self.send(Method::Delete, key, &[], &[], Body::Empty, &sigv4::sha256_hex(b""))?;
        expect(response, &[200, 204])?;
        Ok(())
    }

    /// Every object whose key starts with `prefix`, in key order (ListObjectsV2, page by page).
    pub fn list(&self, prefix: &str) -> Result<Vec<Object>> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2"), ("prefix", prefix)];
            if let Some(t) = &token {
                query.push(("continuation-token", t.as_str()));
            }
            let response = self.send(Method::Get, "", &query, &[], Body::Empty, &sigv4::sha256_hex(b""))?;
            let answer = read_text(expect(response, &[200])?, 64 << 20)?;
            for contents in xml::blocks(&answer, "Contents") {
                let key = xml::first(contents, "Key").unwrap_or_default();
                let size = xml::first(contents, "Size").and_then(|s| s.parse().ok()).unwrap_or(0);
                objects.push(Object { key, size });
            }
            token = match xml::first(&answer, "IsTruncated").as_deref() {
                Some("true") => xml::first(&answer, "NextContinuationToken"),
                _ => None,
            };
            if token.is_none() {
                return Ok(objects);
            }
        }
    }

    /// Abort the multipart uploads under `prefix` that were started more than `older_than`
    /// seconds ago (an upload killed before it completed keeps its parts, and the bucket's
    /// owner pays for them, until it is aborted). Returns how many were aborted.
    pub fn abort_stale_uploads(&self, prefix: &str, older_than: u64) -> Result<usize> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let response = self.send(Method::Get, "", &[("uploads", ""), ("prefix", prefix)], &[], Body::Empty, &sigv4::sha256_hex(b""))?;
        let answer = read_text(expect(response, &[200])?, 64 << 20)?;
        let mut aborted = 0;
        for upload in xml::blocks(&answer, "Upload") {
            let (Some(key), Some(id)) = (xml::first(upload, "Key"), xml::first(upload, "UploadId")) else { continue };
            let started = xml::first(upload, "Initiated").and_then(|t| unix_time(&t));
            if started.is_some_and(|t| now.saturating_sub(t) < older_than) {
                continue;
            }
            let response = self.send(Method::Delete, &key, &[("uploadId", id.as_str())], &[], Body::Empty, &sigv4::sha256_hex(b""))?;
            expect(response, &[200, 204, 404])?;
            aborted += 1;
        }
        Ok(aborted)
    }

    /// Send one signed request for `key` (empty: the bucket itself).
    /// A request whose body can be sent again (none, or bytes) waits for a free connection
    /// ([`Bucket::retrying`]); a streamed body is sent once.
    fn send(&self, method: Method, key: &str, query: &[(&str, &str)], headers: &[(&str, &str)], body: Body<'_>, payload_hash: &str) -> Result<IncomingResponse> {
        match body {
            // A stream is read as it is sent: it cannot be sent again.
            Body::Stream(..) => self.start(method, key, query, headers, body, payload_hash)?.response(),
            _ => self.retrying(|| self.start(method.clone(), key, query, headers, body, payload_hash)?.response()),
        }
    }

    /// `request()`, again while the host answers that the job's connections are all open:
    /// a finished exchange's connection is given back by the host a moment after its
    /// response is read, so a request made right after may find none free.
    fn retrying(&self, request: impl Fn() -> Result<IncomingResponse>) -> Result<IncomingResponse> {
        let mut wait = std::time::Duration::from_millis(2);
        let mut waited = std::time::Duration::ZERO;
        loop {
            match request() {
                Err(e) if e.code == "ConnectionLimitReached" && waited < CONNECTION_WAIT => {
                    std::thread::sleep(wait);
                    waited += wait;
                    wait = (wait * 2).min(std::time::Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// Send a PUT of `data` as `key` and return once its body is handed to the host; its
    /// answer comes with [`Bucket::finish_put`], so the job can prepare the next object
    /// meanwhile. The body is sent `UNSIGNED-PAYLOAD` (the request itself is signed): for
    /// objects that carry their own authentication, as sealed chunks do, hashing them again
    /// for the signature only costs time.
    pub fn start_put(&self, key: String, data: Vec<u8>) -> Result<PendingPut> {
        let started = self.start(Method::Put, &key, &[], &[], Body::Bytes(&data), sigv4::UNSIGNED_PAYLOAD)?;
        Ok(PendingPut { started, key, data })
    }

    /// Wait for a PUT started by [`Bucket::start_put`]; one the host refused for want of a
    /// free connection is sent again once one is.
    pub fn finish_put(&self, put: PendingPut) -> Result<()> {
        let response = match put.started.response() {
            Err(e) if e.code == "ConnectionLimitReached" => self.send(Method::Put, &put.key, &[], &[], Body::Bytes(&put.data), sigv4::UNSIGNED_PAYLOAD)?,
            other => other?,
        };
        expect(response, &[200])?;
        Ok(())
    }

    /// Sign and send a request and write its body; its answer comes with [`Started::response`].
    fn start<'b>(&self, method: Method, key: &str, query: &[(&str, &str)], headers: &[(&str, &str)], body: Body<'b>, payload_hash: &str) -> Result<Started> {
        let path = if key.is_empty() {
            format!("/{}", sigv4::uri_encode(&self.bucket, true))
        } else {
            format!("/{}/{}", sigv4::uri_encode(&self.bucket, true), sigv4::uri_encode(key, false))
        };
        let method_name = match &method {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
            _ => return Err(local("InvalidRequest", "unsupported method")),
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let request = sigv4::Request { method: method_name, host: &self.authority, path: &path, query, headers, payload_hash };
        let signed = sigv4::sign(&self.credentials, &self.region, "s3", now, &request);
        let length = match &body {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::Stream(_, n) => *n,
        };
        let length_text = length.to_string();
        let mut fields: Vec<(String, Vec<u8>)> = vec![
            ("x-amz-date".into(), signed.amz_date.into_bytes()),
            ("x-amz-content-sha256".into(), signed.content_sha256.into_bytes()),
            ("authorization".into(), signed.authorization.into_bytes()),
        ];
        if !matches!(method, Method::Get | Method::Head) || length > 0 {
            fields.push(("content-length".into(), length_text.into_bytes()));
        }
        for (name, value) in headers {
            fields.push((name.to_string(), value.as_bytes().to_vec()));
        }
        let fields = Fields::from_list(&fields).map_err(|e| local("InvalidRequest", format!("headers: {e:?}")))?;
        let outgoing = OutgoingRequest::new(fields);
        let path_with_query = if signed.query.is_empty() { path } else { format!("{path}?{}", signed.query) };
        if outgoing.set_method(&method).is_err()
            || outgoing.set_scheme(Some(&self.scheme)).is_err()
            || outgoing.set_authority(Some(&self.authority)).is_err()
            || outgoing.set_path_with_query(Some(&path_with_query)).is_err()
        {
            return Err(local("InvalidRequest", format!("{method_name} {path_with_query}")));
        }
        let out = outgoing.body().map_err(|_| local("InvalidRequest", "no request body"))?;
        // The request goes first, so that the host drains its body while it is written.
        let pending = outgoing_handler::handle(outgoing, None).map_err(transport)?;
        let written = write_body(&out, body);
        let finished = OutgoingBody::finish(out, None).map_err(transport);
        Ok(Started { pending, written, finished, what: format!("{method_name} {key}") })
    }
}

/// A GET on its way ([`Bucket::start_get`]).
pub struct PendingGet {
    started: Started,
    key: String,
}

/// A PUT on its way ([`Bucket::start_put`]).
pub struct PendingPut {
    started: Started,
    key: String,
    data: Vec<u8>,
}

/// A request sent, its body written (or failed), its answer to come.
struct Started {
    pending: wasip2::http::types::FutureIncomingResponse,
    written: Result<()>,
    finished: Result<()>,
    what: String,
}

impl Started {
    fn response(self) -> Result<IncomingResponse> {
        self.pending.subscribe().block();
        let response = match self.pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(e))) => return Err(transport(e)),
            _ => return Err(local("NoResponse", self.what)),
        };
        // A server that refuses a request may answer before reading its body: its answer
        // says more than the cut body does.
        if self.written.is_err() && response.status() >= 300 {
            return Ok(response);
        }
        self.written?;
        self.finished?;
        Ok(response)
    }
}

/// The Unix time of an ISO 8601 UTC timestamp as S3 writes them (`2026-11-30T13:20:00.000Z`).
fn unix_time(text: &str) -> Option<u64> {
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86400 + hour * 3600 + minute * 60 + second).ok()
}

fn write_body(out: &OutgoingBody, body: Body<'_>) -> Result<()> {
    let stream = out.write().map_err(|_| local("InvalidRequest", "no request body stream"))?;
    let failed = |e: StreamError| match e {
        StreamError::Closed => local("ConnectionClosed", "the request body was cut"),
        StreamError::LastOperationFailed(e) => local("Io", e.to_debug_string()),
    };
    match body {
        Body::Empty => {}
        Body::Bytes(mut bytes) => {
            // As much as the stream takes at once (`blocking-write-and-flush` takes at most
            // 4096 bytes a call, each a round trip through the host).
            while !bytes.is_empty() {
                let permit = stream.check_write().map_err(failed)?;
                if permit == 0 {
                    stream.subscribe().block();
                    continue;
                }
                let n = bytes.len().min(permit as usize);
                stream.write(&bytes[..n]).map_err(failed)?;
                bytes = &bytes[n..];
            }
            match stream.blocking_flush() {
                Ok(()) | Err(StreamError::Closed) => {}
                Err(e) => return Err(failed(e)),
            }
        }
        Body::Stream(src, len) => {
            let mut left = len;
            while left > 0 {
                match stream.blocking_splice(src, left) {
                    Ok(n) => left -= n,
                    Err(e) => return Err(failed(e)),
                }
            }
            // The host may close the stream as soon as the last of `content-length` is in.
            match stream.blocking_flush() {
                Ok(()) | Err(StreamError::Closed) => {}
                Err(e) => return Err(failed(e)),
            }
        }
    }
    Ok(())
}

fn transport(e: ErrorCode) -> Error {
    let message = match &e {
        ErrorCode::HttpRequestDenied => "the host refused the request: this endpoint, bucket or path is not granted to the job (the manifest's [[outbound]])".to_owned(),
        ErrorCode::ConnectionLimitReached => "the job has as many HTTP exchanges open as its http_connections limit allows".to_owned(),
        ErrorCode::HttpResponseBodySize(_) => "the response is larger than the job's http_response_bytes".to_owned(),
        other => format!("{other:?}"),
    };
    let name = format!("{e:?}");
    let code = name.split(['(', ' ', '{']).next().unwrap_or("HttpError").trim_start_matches("ErrorCode::").to_owned();
    local(&code, message)
}

/// The response if its status is one of `ok`; else S3's error from its body.
fn expect(response: IncomingResponse, ok: &[u16]) -> Result<IncomingResponse> {
    let status = response.status();
    if ok.contains(&status) {
        return Ok(response);
    }
    let body = read_text(response, 64 << 10).unwrap_or_default();
    let code = xml::first(&body, "Code").unwrap_or_else(|| format!("Http{status}"));
    Err(Error { status: Some(status), code, message: xml::first(&body, "Message").unwrap_or_default() })
}

fn header(response: &IncomingResponse, name: &str) -> Option<String> {
    response.headers().get(name).first().map(|v| String::from_utf8_lossy(v).into_owned())
}

fn read_text(response: IncomingResponse, max: u64) -> Result<String> {
    read_all(response, max).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A response's body, at most `max` bytes.
fn read_all(response: IncomingResponse, max: u64) -> Result<Vec<u8>> {
    let body = response.consume().map_err(|_| local("InvalidResponse", "no body"))?;
    let stream = body.stream().map_err(|_| local("InvalidResponse", "no body stream"))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(1 << 20) {
            Ok(piece) => {
                bytes.extend_from_slice(&piece);
                if bytes.len() as u64 > max {
                    return Err(local("EntityTooLarge", format!("more than {max} bytes")));
                }
            }
            Err(StreamError::Closed) => return Ok(bytes),
            Err(StreamError::LastOperationFailed(e)) => return Err(local("Io", e.to_debug_string())),
        }
    }
}

