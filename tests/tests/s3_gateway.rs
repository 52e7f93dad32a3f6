//! The test command's S3 gateway: Ceph's own `radosgw`, started beside the test cluster by
//! `scripts/ceph-cluster.sh` (`RBD_WASM_CEPH_RGW_PORT`), with a user and a bucket whose
//! endpoint and keys `scripts/test.sh` exports (`RBD_WASM_S3_*`). The offsite jobs are
//! tested against it; this checks the gateway itself with a standard client (curl's SigV4).

use rbd_wasm_tests::S3Gateway;

#[test]
fn the_gateway_keeps_an_object_for_signed_requests_and_refuses_unsigned_ones() {
    let g = S3Gateway::from_env();
    let key = format!("/{}/probe-{}", g.bucket, std::process::id());
    let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(g.request("PUT", &key, Some(&body), &[], true).0, 200, "put");
    let (code, got) = g.request("GET", &key, None, &[], true);
    assert_eq!((code, got == body), (200, true), "get");
    assert_eq!(g.request("GET", &key, None, &[], false).0, 403, "an unsigned get is refused");
    let (code, listing) = g.request("GET", &format!("/{}", g.bucket), None, &[], true);
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&listing).contains(&key[g.bucket.len() + 2..]), "listed");
    assert_eq!(g.request("DELETE", &key, None, &[], true).0, 204, "delete");
    assert_eq!(g.request("GET", &key, None, &[], true).0, 404, "gone");
}
