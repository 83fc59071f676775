//! In-memory codec throughput: encode + decode of a small message and of a 32 KiB payload,
//! in both framings. No sockets here; `pingpong` measures the loopback round trip.
//!
//! Targets (DESIGN issue 2): ≥ 5 million small text frames/s per core through the decoder,
//! and binary 32 KiB frames at memory speed (≥ 2 GB/s).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::BytesMut;
use codec::{ColonyCodec, Decoded, Framing, Limits, Message, Reply, Style};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use tokio_util::codec::{Decoder, Encoder};

const BATCH: usize = 1024;

fn encode_many(message: &Message, style: Style, n: usize) -> BytesMut {
    let framing = if style == Style::Binary {
        Framing::Binary
    } else {
        Framing::Text
    };
    let mut codec = ColonyCodec::with_framing(LIMITS, framing);
    let mut buf = BytesMut::new();
    for _ in 0..n {
        codec.encode(Reply { message, style }, &mut buf).unwrap();
    }
    buf
}

/// Lines long enough for a 32 KiB payload as a JSON array of numbers (~130 KiB).
const LIMITS: Limits = Limits {
    max_line: 1 << 20,
    max_frame: codec::DEFAULT_MAX_FRAME,
};

fn decode_all(mut buf: BytesMut) -> usize {
    let mut codec = ColonyCodec::new(LIMITS);
    let mut n = 0;
    while let Some(item) = codec.decode(&mut buf).unwrap() {
        assert!(matches!(item, Decoded::Message(..)), "{item:?}");
        black_box(&item);
        n += 1;
    }
    n
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    let payload = Message::Echo {
        payload: vec![0xA5; 32 * 1024],
    };
    let cases: [(&str, BytesMut, usize); 5] = [
        (
            "text_command_PING",
            BytesMut::from(&b"PING\r\n".repeat(BATCH)[..]),
            BATCH,
        ),
        (
            "text_json_ping",
            encode_many(&Message::Ping, Style::Json, BATCH),
            BATCH,
        ),
        (
            "binary_ping",
            encode_many(&Message::Ping, Style::Binary, BATCH),
            BATCH,
        ),
        (
            "binary_echo_32KiB",
            encode_many(&payload, Style::Binary, 64),
            64,
        ),
        (
            "text_json_echo_32KiB",
            encode_many(&payload, Style::Json, 4),
            4,
        ),
    ];
    for (name, input, frames) in cases {
        group.throughput(Throughput::Elements(frames as u64));
        group.bench_function(format!("{name}/frames"), |b| {
            b.iter_batched(|| input.clone(), decode_all, BatchSize::SmallInput)
        });
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(format!("{name}/bytes"), |b| {
            b.iter_batched(|| input.clone(), decode_all, BatchSize::SmallInput)
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let payload = Message::Echo {
        payload: vec![0xA5; 32 * 1024],
    };
    let cases: [(&str, &Message, Style, usize); 5] = [
        ("text_command_PONG", &Message::Pong, Style::Command, BATCH),
        ("text_json_pong", &Message::Pong, Style::Json, BATCH),
        ("binary_pong", &Message::Pong, Style::Binary, BATCH),
        ("binary_echo_32KiB", &payload, Style::Binary, 64),
        ("text_json_echo_32KiB", &payload, Style::Json, 4),
    ];
    for (name, message, style, n) in cases {
        let bytes = encode_many(message, style, n).len() as u64;
        let mut buf = BytesMut::with_capacity(bytes as usize);
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(format!("{name}/bytes"), |b| {
            b.iter(|| {
                buf.clear();
                let mut codec = ColonyCodec::with_framing(LIMITS, Framing::Binary);
                for _ in 0..n {
                    codec.encode(Reply { message, style }, &mut buf).unwrap();
                }
                black_box(&buf);
            })
        });
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("{name}/frames"), |b| {
            b.iter(|| {
                buf.clear();
                let mut codec = ColonyCodec::with_framing(LIMITS, Framing::Binary);
                for _ in 0..n {
                    codec.encode(Reply { message, style }, &mut buf).unwrap();
                }
                black_box(&buf);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
