//! Init-token throughput, in tokens per second (criterion's "elem/s").
//!
//! - `token/sign`: MAC a token's signing input and hex-encode the tag (coordinator side).
//! - `token/issue`: `sign` plus a fresh random id and the token's strings.
//! - `token/check_signature`: key lookup, form checks and the constant-time tag check; no state.
//! - `token/verify_fresh`: the whole `verify`, each token with an unused random id, so every call
//!   inserts into the replay cache. The clock advances 1 s per 1000 tokens and tokens live 1 s
//!   (+30 s leeway), so about 31 000 ids are live and the 100 000-entry cache sweeps now and
//!   then, as it would under sustained load. Making and dropping the tokens is not timed.
//!
//! Target: ≥ 1 million verifications/s per core.
//!
//! Run: `cargo bench --bench token -- --warm-up-time 1 --measurement-time 3`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shared::secret::ClusterSecret;
use shared::token::{InitToken, TokenIssuer, TokenVerifier};
use shared::topology::ShardCoord;

const START: u64 = 1_750_000_000;
const SHARD: ShardCoord = ShardCoord::new(3, 4);

/// Unique, random-looking ids: sequential ones would sit in neighbouring hash buckets and
/// hide the cache misses real (random) ids cause.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn bench_token(c: &mut Criterion) {
    let secret = ClusterSecret::generate().unwrap();
    let issuer = TokenIssuer::new(&secret);
    let colony = "6a1f0c1e2b3d4c5e6f708192a3b4c5d6";
    let token = issuer
        .issue_at(
            "backend_9000",
            SHARD,
            colony,
            Duration::from_secs(60),
            START,
        )
        .unwrap();

    let mut group = c.benchmark_group("token");
    group.throughput(Throughput::Elements(1));

    let mut scratch = token.clone();
    group.bench_function("sign", |b| b.iter(|| issuer.sign(black_box(&mut scratch))));

    group.bench_function("issue", |b| {
        b.iter(|| {
            issuer
                .issue_at(
                    black_box("backend_9000"),
                    SHARD,
                    colony,
                    Duration::from_secs(60),
                    START,
                )
                .unwrap()
        })
    });

    let verifier = TokenVerifier::new(&secret);
    group.bench_function("check_signature", |b| {
        b.iter(|| verifier.check_signature(black_box(&token)).unwrap())
    });

    // Fresh ids come from a counter and are re-signed outside the timed part.
    let verifier = TokenVerifier::new(&secret);
    let counter = Cell::new(0u64);
    let fresh = || {
        let n = counter.get();
        counter.set(n + 1);
        let now = START + n / 1000;
        let mut t: InitToken = token.clone();
        t.token_id = format!("{:016x}{:016x}", splitmix64(n), n);
        t.issued_at = now;
        t.expires_at = now + 1;
        issuer.sign(&mut t);
        (t, now)
    };
    group.bench_function("verify_fresh", |b| {
        b.iter_batched_ref(
            fresh,
            |(t, now)| verifier.verify(t, "backend_9000", SHARD, *now).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_token);
criterion_main!(benches);
