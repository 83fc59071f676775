//! Frame-level behaviour of `ColonyCodec`: both framings, split input, limits and bad bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{BufMut, BytesMut};
use codec::{
    CodecError, ColonyCodec, Decoded, Framing, Limits, Message, ProtocolError, Reply,
    StatsSnapshot, Style,
};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn small_limits() -> Limits {
    Limits {
        max_line: 32,
        max_frame: 1024,
    }
}

/// Decodes everything in `bytes` (fed in the given chunk sizes), then EOF.
fn decode_all(limits: Limits, bytes: &[u8], chunks: &[usize]) -> (Vec<Decoded>, Option<String>) {
    decode_all_with(limits, bytes, chunks, None)
}

/// [`decode_all`], taking PINGs with `skip_pings` (at most `pings_at_once` at a time) before
/// each `decode`, as the data plane does; each skipped one is listed as the PING it was.
fn decode_all_with(
    limits: Limits,
    bytes: &[u8],
    chunks: &[usize],
    pings_at_once: Option<usize>,
) -> (Vec<Decoded>, Option<String>) {
    let mut codec = ColonyCodec::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            if let Some(max) = pings_at_once {
                for _ in 0..codec.skip_pings(&mut buf, max) {
                    out.push(Decoded::Message(Message::Ping, Style::Command));
                }
            }
            match codec.decode(&mut buf) {
                Ok(Some(item)) => out.push(item),
                Ok(None) => break,
                Err(e) => return (out, Some(e.code().to_owned())),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(item)) => out.push(item),
            Ok(None) => break,
            Err(e) => return (out, Some(e.code().to_owned())),
        }
    }
    (out, None)
}

fn frame(message: &Message) -> BytesMut {
    let mut codec = ColonyCodec::with_framing(Limits::default(), Framing::Binary);
    let mut buf = BytesMut::new();
    codec.encode(message, &mut buf).unwrap();
    buf
}

fn line(message: &Message) -> BytesMut {
    let mut codec = ColonyCodec::with_framing(Limits::default(), Framing::Text);
    let mut buf = BytesMut::new();
    codec
        .encode(
            Reply {
                message,
                style: Style::Json,
            },
            &mut buf,
        )
        .unwrap();
    buf
}

#[test]
fn crlf_and_lf_both_end_a_line() {
    let (items, err) = decode_all(Limits::default(), b"PING\r\nping\nSTATS\r\n", &[64]);
    assert_eq!(err, None);
    assert_eq!(
        items,
        vec![
            Decoded::Message(Message::Ping, Style::Command),
            Decoded::Message(Message::Ping, Style::Command),
            Decoded::Message(Message::Stats, Style::Command),
        ]
    );
}

#[test]
fn a_last_line_without_newline_still_counts() {
    let (items, err) = decode_all(Limits::default(), b"PING\nHELP", &[3]);
    assert_eq!(err, None);
    assert_eq!(items.len(), 2);
    assert_eq!(items[1], Decoded::Message(Message::Help, Style::Command));
}

#[test]
fn an_overlong_line_is_reported_once_and_the_next_line_served() {
    for chunk in [1, 7, 33, 4096] {
        let mut input = vec![b'x'; 100];
        input.extend_from_slice(b"\nPING\n");
        let (items, err) = decode_all(small_limits(), &input, &[chunk]);
        assert_eq!(err, None, "chunk {chunk}");
        assert_eq!(
            items,
            vec![
                Decoded::Invalid(ProtocolError::LineTooLong { max: 32 }),
                Decoded::Message(Message::Ping, Style::Command),
            ],
            "chunk {chunk}"
        );
    }
}

#[test]
fn a_line_exactly_at_the_limit_with_crlf_is_accepted() {
    let mut input = b"{\"type\":\"ping\"}".to_vec();
    input.resize(32, b' ');
    input.extend_from_slice(b"\r\n");
    let (items, _) = decode_all(small_limits(), &input, &[1]);
    assert_eq!(items, vec![Decoded::Message(Message::Ping, Style::Json)]);
}

#[test]
fn an_oversized_frame_is_fatal() {
    let mut input = BytesMut::new();
    input.put_u32(1025);
    input.extend_from_slice(&[0; 16]);
    let (items, err) = decode_all(small_limits(), &input, &[2]);
    assert!(items.is_empty());
    assert_eq!(err.as_deref(), Some("frame_too_large"));
}

#[test]
fn an_undecodable_frame_is_fatal() {
    let mut input = BytesMut::new();
    input.put_u32(3);
    input.extend_from_slice(&[0xc1, 0xc1, 0xc1]);
    let (_, err) = decode_all(small_limits(), &input, &[64]);
    assert_eq!(err.as_deref(), Some("undecodable_frame"));
}

#[test]
fn a_truncated_frame_then_eof_is_reported() {
    let mut input = frame(&Message::Ping);
    input.truncate(input.len() - 1);
    let (items, err) = decode_all(Limits::default(), &input, &[64]);
    assert!(items.is_empty());
    assert_eq!(err.as_deref(), Some("truncated_frame"));
}

#[test]
fn incomplete_requests_are_told_apart_from_an_empty_buffer() {
    // Binary: the missing byte count is exact once the length has arrived, and a header
    // announcing a large frame reserves nothing (the connection grows its buffer itself).
    let mut codec = ColonyCodec::new(Limits::default());
    let mut buf = BytesMut::new();
    assert_eq!(codec.incomplete(&buf), None);
    buf.extend_from_slice(&[0, 0x80]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert_eq!(codec.incomplete(&buf), Some(2));
    buf.extend_from_slice(&[0, 0, 1, 2, 3]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert_eq!(codec.incomplete(&buf), Some(4 + 0x80_0000 - 7));
    assert!(buf.capacity() < 1024 * 1024, "{}", buf.capacity());
    let mut whole = frame(&Message::Ping);
    let mut codec = ColonyCodec::new(Limits::default());
    assert!(codec.decode(&mut whole).unwrap().is_some());
    assert_eq!(codec.incomplete(&whole), None);

    // Text: a line without its newline is incomplete; so is one being discarded.
    let mut codec = ColonyCodec::new(small_limits());
    let mut buf = BytesMut::from(&b"PING\nPI"[..]);
    assert!(codec.decode(&mut buf).unwrap().is_some());
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert_eq!(codec.incomplete(&buf), Some(1));
    buf.extend_from_slice(&[b'x'; 64]);
    assert!(matches!(
        codec.decode(&mut buf).unwrap(),
        Some(Decoded::Invalid(ProtocolError::LineTooLong { .. }))
    ));
    assert!(buf.is_empty());
    assert_eq!(
        codec.incomplete(&buf),
        Some(1),
        "still inside the long line"
    );
    buf.extend_from_slice(b"x\n");
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert_eq!(codec.incomplete(&buf), None);
}

#[test]
fn encoding_an_oversized_frame_fails_cleanly() {
    let mut codec = ColonyCodec::with_framing(small_limits(), Framing::Binary);
    let mut buf = BytesMut::from(&b"keep"[..]);
    let err = codec
        .encode(
            &Message::Echo {
                payload: vec![0; 2048],
            },
            &mut buf,
        )
        .unwrap_err();
    assert!(matches!(err, CodecError::FrameTooLarge { .. }));
    assert_eq!(&buf[..], b"keep");
}

fn any_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        Just(Message::Ping),
        Just(Message::Pong),
        Just(Message::Help),
        Just(Message::Stats),
        proptest::collection::vec(".{0,12}", 0..4)
            .prop_map(|commands| Message::HelpReply { commands }),
        any::<[u64; 7]>().prop_map(|v| Message::StatsReply(StatsSnapshot {
            connections: v[0],
            connections_total: v[1],
            connections_refused: v[2],
            frames_in: v[3],
            frames_out: v[4],
            errors: v[5],
            uptime_secs: v[6],
        })),
        proptest::collection::vec(any::<u8>(), 0..300)
            .prop_map(|payload| Message::Echo { payload }),
        proptest::collection::vec(any::<u8>(), 0..300)
            .prop_map(|payload| Message::EchoReply { payload }),
        (".{0,20}", ".{0,40}").prop_map(|(code, message)| Message::Error { code, message }),
        Just(Message::Shards),
        (any::<u32>(), any::<u32>()).prop_map(|(x, y)| Message::Shard { x, y }),
        (
            proptest::option::of("[a-f0-9]{0,8}"),
            proptest::collection::vec(any::<(u32, u32, u64, u64)>(), 0..4)
        )
            .prop_map(|(colony_id, s)| Message::ShardsReply {
                colony_id,
                shards: s
                    .into_iter()
                    .map(|(x, y, tick, population)| codec::ShardSummary {
                        x,
                        y,
                        tick,
                        population
                    })
                    .collect(),
            }),
        (
            "[a-f0-9]{0,8}",
            any::<(u32, u32, u64, u32, u32, u64)>(),
            proptest::collection::vec("[.#]{0,10}", 0..4)
        )
            .prop_map(
                |(colony_id, (x, y, tick, width, height, population), rows)| Message::ShardView {
                    colony_id,
                    x,
                    y,
                    tick,
                    width,
                    height,
                    population,
                    rows,
                }
            ),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips_in_binary(messages in proptest::collection::vec(any_message(), 1..8),
                                           chunks in proptest::collection::vec(1usize..64, 1..8)) {
        let mut input = BytesMut::new();
        for m in &messages {
            input.extend_from_slice(&frame(m));
        }
        let (items, err) = decode_all(Limits::default(), &input, &chunks);
        prop_assert_eq!(err, None);
        let expected: Vec<_> = messages.into_iter().map(|m| Decoded::Message(m, Style::Binary)).collect();
        prop_assert_eq!(items, expected);
    }

    #[test]
    fn every_message_round_trips_as_json_lines(messages in proptest::collection::vec(any_message(), 1..8),
                                               chunks in proptest::collection::vec(1usize..64, 1..8)) {
        let mut input = BytesMut::new();
        for m in &messages {
            input.extend_from_slice(&line(m));
        }
        let (items, err) = decode_all(Limits::default(), &input, &chunks);
        prop_assert_eq!(err, None);
        let expected: Vec<_> = messages.into_iter().map(|m| Decoded::Message(m, Style::Json)).collect();
        prop_assert_eq!(items, expected);
    }

    #[test]
    fn splitting_never_changes_what_is_decoded(input in proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'{'), Just(b'}'), any::<u8>(), Just(b'P')], 0..400),
            chunks in proptest::collection::vec(1usize..50, 1..6)) {
        let whole = decode_all(small_limits(), &input, &[input.len().max(1)]);
        let split = decode_all(small_limits(), &input, &chunks);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn skipping_pings_decodes_as_decode_does(
            lines in proptest::collection::vec(prop_oneof![
                Just(&b"PING\n"[..]), Just(&b"PING\r\n"[..]), Just(&b"ping\n"[..]),
                Just(&b"PING \n"[..]), Just(&b"PING x\n"[..]), Just(&b"PINGPING\n"[..]),
                Just(&b"PING\r\r\n"[..]), Just(&b"\n"[..]), Just(&b"PIN"[..]), Just(&b"G\n"[..]),
                Just(&b"{\"type\":\"ping\"}\n"[..]), Just(&b"HELP\n"[..]),
                Just(&b"0123456789012345678901234567890123456789\n"[..]),
            ], 0..40),
            chunks in proptest::collection::vec(1usize..20, 1..6),
            at_once in 1usize..4) {
        let input = lines.concat();
        let plain = decode_all(small_limits(), &input, &chunks);
        let skipping = decode_all_with(small_limits(), &input, &chunks, Some(at_once));
        prop_assert_eq!(plain, skipping);
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..2048),
                                   chunks in proptest::collection::vec(1usize..300, 1..6)) {
        let _ = decode_all(small_limits(), &input, &chunks);
        let mut binary = vec![0u8];
        binary.extend_from_slice(&input);
        let _ = decode_all(small_limits(), &binary, &chunks);
    }
}
