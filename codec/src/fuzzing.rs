//! Entry points of the fuzz campaign over the decoder (the `fuzz/` crate's targets
//! `codec_text` and `codec_binary`) and of the test that replays its corpus
//! (`tests/fuzz_corpus.rs`), so both run exactly the same code.
//!
//! Each entry feeds the input to a [`ColonyCodec`] whose framing is fixed, as a connection's
//! is after its first byte, and checks what a fuzzer cannot see from a crash alone:
//! - the items decoded from the whole input at once equal those decoded from the same bytes
//!   arriving in small pieces (a frame split at any offset decodes the same), with
//!   [`ColonyCodec::incomplete`] asked after every `Ok(None)` as the connection does;
//! - every message decoded re-encodes, and decodes back to itself.
//!
//! A violated check panics, which is what a fuzzer records as a crash. Small limits make
//! the over-long line and oversized frame paths reachable from small inputs.
//!
//! Not here: what the data plane answers (`dataplane`).

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::{
    encode_frame, text, CodecError, ColonyCodec, Decoded, Framing, Limits, ProtocolError, Style,
    FRAME_LIMIT_CEILING,
};

/// The limits the fuzz entries decode with: small, so the limit paths are reached.
pub const FUZZ_LIMITS: Limits = Limits {
    max_line: 256,
    max_frame: 4096,
};

/// What one input decoded to, in order: the requests, then the error that ended the stream,
/// if one did (a `Framed` stream ends at its first `Err`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoding {
    /// Every item decoded before the stream ended.
    pub items: Vec<Decoded>,
    /// The connection-ending error, as its message.
    pub error: Option<String>,
}

/// The text framing: newline-delimited commands and JSON messages.
///
/// # Panics
/// When a check of the module docs fails: that is a bug the fuzzer found.
pub fn codec_text(data: &[u8]) -> Decoding {
    decode_checked(data, Framing::Text)
}

/// The binary framing: length-prefixed MessagePack frames.
///
/// # Panics
/// When a check of the module docs fails: that is a bug the fuzzer found.
pub fn codec_binary(data: &[u8]) -> Decoding {
    decode_checked(data, Framing::Binary)
}

fn decode_checked(data: &[u8], framing: Framing) -> Decoding {
    let whole = decode_in_pieces(data, framing, data.len().max(1));
    // The piece size comes from the input, so the fuzzer explores the splits too.
    let piece = 1 + usize::from(data.first().copied().unwrap_or(0) % 16);
    let pieces = decode_in_pieces(data, framing, piece);
    assert_eq!(
        whole, pieces,
        "decoding in pieces of {piece} bytes differs from decoding at once"
    );
    for item in &whole.items {
        match item {
            Decoded::Message(message, style) => round_trip(message, *style),
            Decoded::Invalid(e) => answerable(e, framing),
        }
    }
    whole
}

/// Decodes `data` arriving `piece` bytes at a time, then the end of the stream, as
/// `FramedRead` does.
fn decode_in_pieces(data: &[u8], framing: Framing, piece: usize) -> Decoding {
    let mut codec = ColonyCodec::with_framing(FUZZ_LIMITS, framing);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {
                    if let Some(need) = codec.incomplete(&buf) {
                        assert!(need >= 1, "incomplete() said 0 bytes are missing");
                    }
                    break;
                }
                Err(e) => return ended(items, &e),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(item)) => items.push(item),
            Ok(None) => break,
            Err(e) => return ended(items, &e),
        }
    }
    assert!(
        buf.is_empty(),
        "{} bytes left in the buffer after the end of the stream",
        buf.len()
    );
    Decoding { items, error: None }
}

/// The stream ended with `error`: the error frame the connection sends before closing must
/// fit in a frame, or the client would never learn why.
fn ended(items: Vec<Decoded>, error: &CodecError) -> Decoding {
    let mut frame = BytesMut::new();
    if let Err(e) = encode_frame(&error.to_message(), FUZZ_LIMITS.max_frame, &mut frame) {
        panic!("the error frame for {error} does not encode: {e}");
    }
    Decoding {
        items,
        error: Some(error.to_string()),
    }
}

/// The error answer to an invalid request is one line (text) or one frame (binary).
fn answerable(error: &ProtocolError, framing: Framing) {
    let message = error.to_message();
    let mut out = BytesMut::new();
    let written = match framing {
        Framing::Text => text::write_line(&message, Style::Json, &mut out),
        Framing::Binary => encode_frame(&message, FUZZ_LIMITS.max_frame, &mut out),
    };
    if let Err(e) = written {
        panic!("the answer to {error:?} does not encode: {e}");
    }
    if framing == Framing::Text {
        assert_eq!(
            out.iter().filter(|&&b| b == b'\n').count(),
            1,
            "the answer to {error:?} is not one line"
        );
    }
}

/// A decoded message encodes in its framing and decodes back to itself.
fn round_trip(message: &crate::Message, style: Style) {
    match style {
        Style::Binary => {
            let mut frame = BytesMut::new();
            if let Err(e) = encode_frame(message, FRAME_LIMIT_CEILING, &mut frame) {
                panic!("a decoded message does not encode: {e}");
            }
            let limits = Limits {
                max_line: FUZZ_LIMITS.max_line,
                max_frame: FRAME_LIMIT_CEILING,
            };
            let mut codec = ColonyCodec::with_framing(limits, Framing::Binary);
            let again = codec.decode(&mut frame);
            assert!(
                matches!(&again, Ok(Some(Decoded::Message(m, Style::Binary))) if m == message),
                "re-encoded frame decodes to {again:?}, not {message:?}"
            );
            assert!(frame.is_empty(), "re-encoded frame left bytes behind");
        }
        // A command (`PING`) is the same message as its JSON form; both travel as JSON.
        Style::Command | Style::Json => {
            let mut line = BytesMut::new();
            if let Err(e) = text::write_line(message, Style::Json, &mut line) {
                panic!("a decoded message does not encode: {e}");
            }
            let body = line.strip_suffix(b"\n").unwrap_or(&line);
            assert!(
                !body.contains(&b'\n'),
                "a JSON message was written on more than one line"
            );
            let again = text::parse_line(body);
            assert!(
                matches!(&again, Ok(Some((m, Style::Json))) if m == message),
                "re-encoded line parses to {again:?}, not {message:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    #[test]
    fn text_input_decodes_the_same_in_pieces() {
        let input = b"\x05PING\r\nshard 1 2\n{\"type\":\"echo\",\"payload\":[1,2]}\nnope";
        let decoding = codec_text(input);
        assert_eq!(decoding.error, None);
        assert_eq!(decoding.items.len(), 4, "{decoding:?}");
        assert!(matches!(
            &decoding.items[1],
            Decoded::Message(Message::Shard { x: 1, y: 2 }, Style::Command)
        ));
        assert!(matches!(
            &decoding.items[3],
            Decoded::Invalid(ProtocolError::UnknownCommand(c)) if c == "nope"
        ));
    }

    #[test]
    fn a_long_line_is_one_error_whatever_the_pieces() {
        let mut input = vec![b'x'; FUZZ_LIMITS.max_line + 40];
        input.extend_from_slice(b"\nPING\n");
        let decoding = codec_text(&input);
        assert_eq!(decoding.items.len(), 2, "{decoding:?}");
        assert!(matches!(
            decoding.items[0],
            Decoded::Invalid(ProtocolError::LineTooLong { .. })
        ));
    }

    #[test]
    fn binary_frames_round_trip_and_bad_ones_end_the_stream() {
        let mut input = BytesMut::new();
        encode_frame(&Message::Ping, FUZZ_LIMITS.max_frame, &mut input).unwrap();
        encode_frame(
            &Message::Echo {
                payload: vec![0, 1, 2],
            },
            FUZZ_LIMITS.max_frame,
            &mut input,
        )
        .unwrap();
        input.extend_from_slice(&[0, 0, 0, 1, 0xc1]);
        let decoding = codec_binary(&input);
        assert_eq!(decoding.items.len(), 2, "{decoding:?}");
        assert!(decoding.error.is_some());
        let too_large = codec_binary(&[0, 1, 0, 0]);
        assert!(too_large.items.is_empty());
        assert!(too_large
            .error
            .unwrap()
            .contains("exceeds the 4096-byte limit"));
    }
}
