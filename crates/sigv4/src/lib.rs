//! AWS Signature Version 4 (the `AWS4-HMAC-SHA256` scheme) for S3 requests: what an S3
//! client in a job computes for each request it sends through `wasi:http`.
//!
//! Pure: the caller gives the time, the request's parts and the payload's hash (or
//! [`UNSIGNED_PAYLOAD`]) and gets the `Authorization` header. The steps are those of AWS's
//! specification (canonical request, string to sign, signing key derived by four HMACs,
//! signature); the tests check them against AWS's own published S3 example, and the
//! integration tests against Ceph's S3 gateway.
//!
//! Written here rather than taken from the AWS SDK (`aws-sigv4`): that crate pulls in the
//! SDK's runtime, HTTP and time types, which do not build for `wasm32-wasip2` without
//! features we would have to vet, for about 150 lines of arithmetic.

use sha2::{Digest, Sha256};

/// The payload hash for a body that is not signed (S3 accepts it; the job's own format
/// checks the data end to end).
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// An access key and its secret.
#[derive(Clone)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ access_key: {:?}, secret_key: [hidden] }}", self.access_key)
    }
}

/// What is signed of a request.
pub struct Request<'a> {
    pub method: &'a str,
    /// The `Host` header as sent (`host[:port]`).
    pub host: &'a str,
    /// The path as sent: already URI-encoded ([`uri_encode`] with `/` kept).
    pub path: &'a str,
    /// Query parameters, not encoded (they are encoded and sorted here).
    pub query: &'a [(&'a str, &'a str)],
    /// Further headers to sign besides `host`, `x-amz-content-sha256` and `x-amz-date`
    /// (which are always signed), such as `range`.
    pub headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the body, or [`UNSIGNED_PAYLOAD`].
    pub payload_hash: &'a str,
}

/// A signed request's headers: send `x-amz-date`, `x-amz-content-sha256` and
/// `authorization` with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub amz_date: String,
    pub content_sha256: String,
    pub authorization: String,
    /// The query string as it must be sent (encoded, sorted).
    pub query: String,
}

/// Sign `request` for `region` and `service` (`s3`) at `unix_secs`.
pub fn sign(credentials: &Credentials, region: &str, service: &str, unix_secs: u64, request: &Request<'_>) -> Signed {
    let (date, amz_date) = amz_dates(unix_secs);
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), request.host.trim().to_owned()),
        ("x-amz-content-sha256".into(), request.payload_hash.to_owned()),
        ("x-amz-date".into(), amz_date.clone()),
    ];
    for (name, value) in request.headers {
        headers.push((name.to_ascii_lowercase(), collapse_spaces(value.trim())));
    }
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed_headers = headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(";");
    let mut query: Vec<(String, String)> = request.query.iter().map(|(k, v)| (uri_encode(k, true), uri_encode(v, true))).collect();
    query.sort();
    let query = query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method, request.path, query, canonical_headers, signed_headers, request.payload_hash
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical_request.as_bytes())));
    let mut key = hmac_sha256(format!("AWS4{}", credentials.secret_key).as_bytes(), date.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
    Signed {
        authorization: format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            credentials.access_key
        ),
        amz_date,
        content_sha256: request.payload_hash.to_owned(),
        query,
    }
}

/// URI-encode as SigV4 wants: every byte but `A-Z a-z 0-9 - . _ ~` as `%XX` (upper case);
/// `/` too when `encode_slash` (query parts), kept otherwise (object key paths).
pub fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (b == b'/' && !encode_slash) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Hex SHA-256 of `data` (a payload hash).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

/// `YYYYMMDD` and `YYYYMMDDTHHMMSSZ` of a Unix time (UTC).
pub fn amz_dates(unix_secs: u64) -> (String, String) {
    let days = (unix_secs / 86400) as i64;
    let secs = unix_secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let date = format!("{year:04}{month:02}{day:02}");
    let time = format!("{date}T{:02}{:02}{:02}Z", secs / 3600, secs / 60 % 60, secs % 60);
    (date, time)
}

fn collapse_spaces(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's worked example of a signed S3 GET ("Signature Calculations for the
    /// Authorization Header: Transferring Payload in a Single Chunk", GET Object).
    #[test]
    fn aws_published_get_object_example() {
        let credentials = Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        };
        // 2013-05-24T00:00:00Z
        let at = 1_369_353_600;
        assert_eq!(amz_dates(at), ("20130524".into(), "20130524T000000Z".into()));
        let empty = sha256_hex(b"");
        let signed = sign(
            &credentials,
            "us-east-1",
            "s3",
            at,
            &Request {
                method: "GET",
                host: "examplebucket.s3.amazonaws.com",
                path: "/test.txt",
                query: &[],
                headers: &[("Range", "bytes=0-9")],
                payload_hash: &empty,
            },
        );
        assert_eq!(
            signed.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn rfc_4231_hmac_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // A key longer than a block is hashed first (case 6).
        let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(hex(&mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn dates_and_encoding() {
        assert_eq!(amz_dates(0).1, "19700101T000000Z");
        assert_eq!(amz_dates(951_782_400).0, "20000229");
        assert_eq!(amz_dates(4_102_444_799).1, "20991231T235959Z");
        assert_eq!(uri_encode("a b/c~d%e", false), "a%20b/c~d%25e");
        assert_eq!(uri_encode("a/b", true), "a%2Fb");
        assert_eq!(uri_encode("é", true), "%C3%A9");
    }
}
