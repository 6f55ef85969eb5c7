//! What inbound digest authentication costs the node per call, per algorithm: one
//! challenge (a keyed-hash nonce and the header values of a 407) and one check of the
//! caller's answer (parse, nonce tag, H(A2) and the response, nonce-count). The SIP
//! transactions around them (the 407, its ACK, the second INVITE) are what `load/bench.sh`'s
//! `trunkline-auth` row measures; Debian's SIPp answers MD5 only, so this is where MD5
//! and SHA-256 are compared.
//!
//! Run: `cargo bench -p trunkline-call --bench digest`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use std::hint::black_box;
use std::time::Duration;
use trunkline_call::digest::{Algorithm, Credentials, DigestAuth, DigestConfig, Verdict};
use trunkline_sip::digest::Challenge;

const REALM: &str = "trunkline";
const URI: &str = "sip:+4930123456@127.0.0.1:5062";

fn node(alg: Algorithm) -> DigestAuth {
    DigestAuth::new(DigestConfig {
        realm: REALM.to_string(),
        algorithms: vec![alg],
        nonce_ttl: Duration::from_secs(300),
        secret: [7; 32],
        max_nonces: 65_536,
    })
}

fn bench(c: &mut Criterion) {
    let creds = Credentials::new("carrier", "a long enough trunk password", REALM);
    let now = trunkline_call::digest::epoch_secs();
    for alg in [Algorithm::Md5, Algorithm::Sha256] {
        let auth = node(alg);
        let mut group = c.benchmark_group(alg.token());
        group.bench_function("challenge", |b| {
            b.iter(|| black_box(auth.challenge(black_box(now), false)))
        });
        // Each check gets a fresh nonce answered by the caller (the caller's work is in
        // the setup, outside the measurement), as every call does.
        group.bench_function("verify", |b| {
            b.iter_batched(
                || {
                    let values = auth.challenge(now, false);
                    let ch = Challenge::parse(values[0].as_bytes()).expect("own challenge");
                    ch.answer(
                        "carrier",
                        "a long enough trunk password",
                        "INVITE",
                        URI,
                        "0a4f113b",
                        1,
                    )
                },
                |answer| {
                    let verdict = auth.verify(
                        "INVITE",
                        std::iter::once(answer.as_bytes()),
                        |u| (u == "carrier").then_some(&creds),
                        now,
                    );
                    assert!(matches!(verdict, Verdict::Valid { .. }), "{verdict:?}");
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
