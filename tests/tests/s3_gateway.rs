//! The test command's S3 gateway: Ceph's own `radosgw`, started beside the test cluster by
//! `scripts/ceph-cluster.sh` (`RBD_WASM_CEPH_RGW_PORT`), with a user and a bucket whose
//! endpoint and keys `scripts/test.sh` exports (`RBD_WASM_S3_*`). The offsite jobs are
//! tested against it; this checks the gateway itself with a standard client (curl's SigV4).

use std::process::Command;

struct Gateway {
    endpoint: String,
    access: String,
    secret: String,
    bucket: String,
}

fn gateway() -> Gateway {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests through scripts/test.sh, which starts the S3 gateway"))
    };
    Gateway {
        endpoint: var("RBD_WASM_S3_ENDPOINT"),
        access: var("RBD_WASM_S3_ACCESS_KEY"),
        secret: var("RBD_WASM_S3_SECRET_KEY"),
        bucket: var("RBD_WASM_S3_BUCKET"),
    }
}

/// SHA-256 of nothing: the payload hash of a request without a body.
const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// `curl` a request, signed with the gateway's keys unless `signed` is false; the HTTP
/// status and the body.
fn request(g: &Gateway, method: &str, path: &str, body: Option<&[u8]>, signed: bool) -> (u16, Vec<u8>) {
    use sha2::Digest;
    let hash = body.map_or_else(|| EMPTY.to_owned(), |b| hex::encode(sha2::Sha256::digest(b)));
    let dir = tempfile::tempdir().unwrap();
    let (out, input) = (dir.path().join("out"), dir.path().join("in"));
    let mut curl = Command::new("curl");
    curl.args(["-s", "-o"]).arg(&out).args(["-w", "%{http_code}", "-X", method]);
    if signed {
        curl.args(["-H", &format!("x-amz-content-sha256: {hash}")]);
        curl.args(["--aws-sigv4", "aws:amz:default:s3", "--user", &format!("{}:{}", g.access, g.secret)]);
    }
    if let Some(body) = body {
        std::fs::write(&input, body).unwrap();
        curl.arg("--data-binary").arg(format!("@{}", input.display()));
    }
    let done = curl.arg(format!("{}{path}", g.endpoint)).output().expect("run curl");
    let code = String::from_utf8_lossy(&done.stdout).trim().parse().unwrap_or(0);
    (code, std::fs::read(&out).unwrap_or_default())
}

#[test]
fn the_gateway_keeps_an_object_for_signed_requests_and_refuses_unsigned_ones() {
    let g = gateway();
    let key = format!("/{}/probe-{}", g.bucket, std::process::id());
    let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(request(&g, "PUT", &key, Some(&body), true).0, 200, "put");
    let (code, got) = request(&g, "GET", &key, None, true);
    assert_eq!((code, got == body), (200, true), "get");
    assert_eq!(request(&g, "GET", &key, None, false).0, 403, "an unsigned get is refused");
    let (code, listing) = request(&g, "GET", &format!("/{}", g.bucket), None, true);
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&listing).contains(&key[g.bucket.len() + 2..]), "listed");
    assert_eq!(request(&g, "DELETE", &key, None, true).0, 204, "delete");
    assert_eq!(request(&g, "GET", &key, None, true).0, 404, "gone");
}
