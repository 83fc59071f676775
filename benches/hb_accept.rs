//! The coordinator's CPU per heartbeat once a frame's text is in hand: the steps the
//! heartbeat channel's `accept` runs (`controlplane::management::channel`), in process, with
//! no socket: split the frame, check the signature header and the MAC
//! ([`shared::signing`]), parse the heartbeat, validate it, and record it in a
//! [`HealthTracker`].
//!
//! 10 000 nodes (`HB_NODES`) send one heartbeat each per round, round-robin in a fixed
//! shuffled order, as they do at one beat a second: every node's record, key and strings are
//! cold in the cache when its next heartbeat comes. Each heartbeat is a backend's real one
//! (six metrics, `deployed_digest` among them, the values moving every round), signed with
//! the real signer. The tracker has a subscriber, as on a coordinator (the `/ws` hub and
//! recovery listen), and is swept between rounds so its health-check events are spread as
//! at 10 000 nodes. Building a round's frames is not timed.
//!
//! Printed: ns per heartbeat for the whole path (median of `HB_ROUNDS` rounds, default 30,
//! after 3 warm-up rounds) as `POST /heartbeat` and a channel's first frame take it, finding
//! the node in the tracker's map; the same for a bound channel's frames, which check the
//! node id against the channel's handle and record through it
//! ([`HealthTracker::record_through`]); then each step alone over the same frames (each
//! step's pass also runs cold, so the steps do not add up to the whole exactly), recording
//! both ways. The two whole paths run on trackers of their own, taking turns going first.
//!
//! `HB_PATHS=map` or `HB_PATHS=handle` runs one whole path only and skips the record step
//! alone, so a run has one tracker's worth of records, as before the bound-channel case was
//! added: to compare with a build of then.
//!
//! Run: `cargo bench -j 2 --bench hb_accept`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use controlplane::coordinator::health::config::HealthConfig;
use controlplane::coordinator::health::tracker::{HealthTracker, NodeHandle};
use controlplane::wire::channel::{frame, split, CHANNEL_METHOD, CHANNEL_PATH};
use controlplane::wire::heartbeat::Heartbeat;
use shared::secret::ClusterSecret;
use shared::signing::{unix_millis, RequestSigner, SignatureVerifier};

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Node {
    id: String,
    boot: String,
    port: u16,
}

/// One round's frames, in arrival order.
fn round(nodes: &[Node], order: &[usize], seq: u64, signer: &RequestSigner) -> Vec<String> {
    let ts = unix_millis();
    order
        .iter()
        .map(|&n| {
            let node = &nodes[n];
            let p = node.port;
            let body = format!(
                r#"{{"instance_id":"{id}","node_type":"backend","address":{{"ip":"10.1.{a}.{b}","internal_port":{p},"http_port":{h},"mgmt_port":{m}}},"boot_id":"{boot}","seq":{seq},"metrics":{{"connections":{c},"deployed_digest":{d},"errors":0,"frames_in":{fi},"frames_out":{fo},"uptime_secs":{seq}}},"leaving":false}}"#,
                id = node.id,
                a = n / 250,
                b = n % 250,
                h = p + 1,
                m = p + 2,
                boot = node.boot,
                c = n % 7,
                d = splitmix64(n as u64) >> 12,
                fi = seq * 31 + n as u64,
                fo = seq * 29 + n as u64,
            );
            let signature = signer.sign_at(CHANNEL_METHOD, CHANNEL_PATH, body.as_bytes(), ts);
            frame(&signature, body.as_bytes())
        })
        .collect()
}

/// A frame's signature checked, its heartbeat parsed and validated, as the channel does
/// before recording it.
fn accept(verifier: &SignatureVerifier, text: &str) -> Heartbeat {
    let body = signed_body(verifier, text);
    let heartbeat: Heartbeat = serde_json::from_str(body).unwrap();
    heartbeat.validate().unwrap();
    heartbeat
}

/// A frame's signature checked: its body.
fn signed_body<'a>(verifier: &SignatureVerifier, text: &'a str) -> &'a str {
    let (signature, body) = split(text).unwrap();
    verifier
        .check_header(Some(signature.as_bytes()), unix_millis())
        .unwrap()
        .verify(CHANNEL_METHOD, CHANNEL_PATH, body.as_bytes())
        .unwrap();
    body
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    // NaN: not measured in this run (`HB_PATHS`).
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let count: usize = std::env::var("HB_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rounds: usize = std::env::var("HB_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let paths = std::env::var("HB_PATHS").unwrap_or_default();
    let passes: &[usize] = match paths.as_str() {
        "map" => &[0],
        "handle" => &[1],
        _ => &[0, 1],
    };
    let secret = ClusterSecret::generate().unwrap();
    let signer = RequestSigner::new(&secret);
    let verifier = SignatureVerifier::new(&secret);
    let nodes: Vec<Node> = (0..count)
        .map(|n| Node {
            id: format!("backend_{}", 20_000 + n),
            boot: format!(
                "{:016x}{:016x}",
                splitmix64(n as u64 ^ 0xb007),
                splitmix64(n as u64)
            ),
            port: 20_000 + (n % 40_000) as u16,
        })
        .collect();
    let mut order: Vec<usize> = (0..count).collect();
    // A fixed shuffle: nodes' records are not visited in the order they were made.
    for i in (1..count).rev() {
        let j = (splitmix64(i as u64 ^ 0x5eed) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }

    // One tracker per way of recording, each with a subscriber.
    let trackers: [HealthTracker; 4] =
        std::array::from_fn(|_| HealthTracker::new(HealthConfig::default(), None));
    let [by_map, bound, map_alone, handle_alone] = &trackers;
    let mut events: Vec<_> = trackers.iter().map(HealthTracker::subscribe).collect();
    // Each node's channel's handle, once bound, by node.
    let mut handles: Vec<Option<NodeHandle>> = vec![None; count];
    let mut alone_handles: Vec<Option<NodeHandle>> = vec![None; count];
    let mut seq = 0u64;
    let (mut whole, mut whole_bound) = (Vec::new(), Vec::new());
    let (mut sig, mut parse, mut validate) = (Vec::new(), Vec::new(), Vec::new());
    let (mut record_map, mut record_handle) = (Vec::new(), Vec::new());
    for r in 0..rounds + 3 {
        seq += 1;
        let frames = round(&nodes, &order, seq, &signer);
        let mut took = [std::time::Duration::ZERO; 2];
        for pass in [r % 2, 1 - r % 2] {
            if !passes.contains(&pass) {
                continue;
            }
            let started = Instant::now();
            if pass == 0 {
                for text in &frames {
                    let heartbeat = accept(&verifier, text);
                    let recorded = by_map.record(heartbeat, tokio::time::Instant::now());
                    black_box(recorded.unwrap());
                }
            } else {
                for (text, &n) in frames.iter().zip(&order) {
                    let heartbeat = accept(&verifier, text);
                    let now = tokio::time::Instant::now();
                    let recorded = match &mut handles[n] {
                        // The channel's check that the frame is its node's, then the record.
                        Some(handle) => {
                            assert!(handle.is_for(&heartbeat.instance_id));
                            bound.record_through(handle, heartbeat, now).unwrap()
                        }
                        None => {
                            let (recorded, handle) = bound.record_and_hold(heartbeat, now).unwrap();
                            handles[n] = Some(handle);
                            recorded
                        }
                    };
                    black_box(recorded);
                }
            }
            took[pass] = started.elapsed();
        }
        // Each step's pass over its own copy of the frames' heartbeats, not timed.
        let alone = passes.len() > 1;
        let mut parsed_twice = std::array::from_fn::<Vec<Heartbeat>, 2, _>(|_| {
            frames
                .iter()
                .filter(|_| alone)
                .map(|text| serde_json::from_str(split(text).unwrap().1).unwrap())
                .collect()
        });
        let (mut for_map, mut for_handle) = (
            Some(std::mem::take(&mut parsed_twice[0])),
            Some(std::mem::take(&mut parsed_twice[1])),
        );
        let mut record_took = [std::time::Duration::ZERO; 2];
        for pass in [r % 2, 1 - r % 2] {
            if !alone {
                break;
            }
            let started = Instant::now();
            if pass == 0 {
                for heartbeat in for_map.take().unwrap() {
                    black_box(
                        map_alone
                            .record(heartbeat, tokio::time::Instant::now())
                            .unwrap(),
                    );
                }
            } else {
                for (heartbeat, &n) in for_handle.take().unwrap().into_iter().zip(&order) {
                    let now = tokio::time::Instant::now();
                    let recorded = match &mut alone_handles[n] {
                        Some(handle) => handle_alone.record_through(handle, heartbeat, now),
                        None => handle_alone.record_and_hold(heartbeat, now).map(
                            |(recorded, handle)| {
                                alone_handles[n] = Some(handle);
                                recorded
                            },
                        ),
                    };
                    black_box(recorded.unwrap());
                }
            }
            record_took[pass] = started.elapsed();
        }
        for (tracker, events) in trackers.iter().zip(&mut events) {
            while events.try_recv().is_ok() {}
            tracker.sweep(tokio::time::Instant::now());
        }
        if r < 3 {
            continue;
        }
        let per = |took: std::time::Duration| took.as_nanos() as f64 / count as f64;
        for (pass, figures) in [&mut whole, &mut whole_bound].into_iter().enumerate() {
            if passes.contains(&pass) {
                figures.push(per(took[pass]));
            }
        }
        if alone {
            record_map.push(per(record_took[0]));
            record_handle.push(per(record_took[1]));
        }

        // The steps alone, each a cold pass over the same frames.
        let started = Instant::now();
        for text in &frames {
            black_box(signed_body(&verifier, text));
        }
        sig.push(started.elapsed().as_nanos() as f64 / count as f64);
        let started = Instant::now();
        let parsed: Vec<Heartbeat> = frames
            .iter()
            .map(|text| serde_json::from_str(split(text).unwrap().1).unwrap())
            .collect();
        let parse_took = started.elapsed();
        let started = Instant::now();
        for heartbeat in &parsed {
            heartbeat.validate().unwrap();
        }
        validate.push(started.elapsed().as_nanos() as f64 / count as f64);
        let started = Instant::now();
        drop(black_box(parsed));
        parse.push((parse_took + started.elapsed()).as_nanos() as f64 / count as f64);
    }
    println!(
        "hb_accept: {count} nodes, {rounds} rounds: whole path {:.0} ns/heartbeat (median; min {:.0})",
        median(whole.clone()),
        whole.iter().copied().fold(f64::INFINITY, f64::min)
    );
    println!(
        "  bound channel, through the handle: {:.0} ns/heartbeat (median; min {:.0})",
        median(whole_bound.clone()),
        whole_bound.iter().copied().fold(f64::INFINITY, f64::min)
    );
    println!(
        "  steps alone: signature {:.0} ns, parse+drop {:.0} ns, validate {:.0} ns, record by the map {:.0} ns, record through the handle {:.0} ns",
        median(sig),
        median(parse),
        median(validate),
        median(record_map),
        median(record_handle)
    );
}
