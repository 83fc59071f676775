//! Signed-call checks (`shared::signing`), per call, in calls per second (criterion's
//! "elem/s"). The coordinator runs them for every heartbeat: 10 000 nodes at one a second.
//!
//! - `signature_header_parse/signer_form`: [`SignatureHeader::parse`] of a value exactly as
//!   [`RequestSigner::sign_at`] writes it (derived key id, 13-digit `ts`, lower-case `mac`).
//! - `signature_header_parse/reordered`: the same fields in another order, spaces around some
//!   commas and none around others, upper-case `mac`.
//! - `signature_verify/heartbeat`: the whole [`SignatureVerifier::verify`] of a heartbeat-sized
//!   (~330-byte) body: the parse, the key lookup, the window, the HMAC and its comparison.
//!
//! Run: `cargo bench -j 2 --bench signing -- --warm-up-time 1 --measurement-time 3`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shared::secret::ClusterSecret;
use shared::signing::{RequestSigner, SignatureHeader, SignatureVerifier};

const NOW: u64 = 1_764_646_000_000;
const BODY: &[u8] = br#"{"instance_id":"backend_9000","node_type":"backend","address":{"ip":"10.1.0.7","internal_port":9000,"http_port":9001,"mgmt_port":9002},"boot_id":"5f0c3a9e1b2d4c6e","seq":4711,"metrics":{"connections":3,"deployed_digest":81985529216486895,"errors":0,"frames_in":146041,"frames_out":136619,"uptime_secs":4711},"leaving":false}"#;

fn bench_signing(c: &mut Criterion) {
    let secret = ClusterSecret::generate().unwrap();
    let signer = RequestSigner::new(&secret);
    let verifier = SignatureVerifier::new(&secret);
    let header = signer.sign_at("POST", "/heartbeat", BODY, NOW);
    let parts: Vec<&str> = header.split(", ").collect();
    let reordered = format!(
        "{} ,{},  {}",
        parts[2].to_uppercase().replace("MAC=", "mac="),
        parts[0],
        parts[1]
    );
    assert!(SignatureHeader::parse(reordered.as_bytes()).is_ok());

    let mut group = c.benchmark_group("signature_header_parse");
    group.throughput(Throughput::Elements(1));
    for (name, value) in [("signer_form", &header), ("reordered", &reordered)] {
        group.bench_function(name, |b| {
            b.iter(|| SignatureHeader::parse(black_box(value.as_bytes())).unwrap())
        });
    }
    group.finish();

    let mut group = c.benchmark_group("signature_verify");
    group.throughput(Throughput::Elements(1));
    group.bench_function("heartbeat", |b| {
        b.iter(|| {
            verifier
                .verify(
                    Some(black_box(header.as_bytes())),
                    "POST",
                    "/heartbeat",
                    black_box(BODY),
                    NOW,
                )
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_signing);
criterion_main!(benches);
