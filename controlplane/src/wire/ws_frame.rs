//! RFC 6455 frames as the heartbeat channel's server reads and writes them: a pure decoder
//! of client frames over a byte buffer, and an encoder of server frames. No sockets here;
//! the channel's connection ([`crate::management::channel`]) owns the buffers.
//!
//! The decoder takes what RFC 6455 lets a client send and nothing else, and names the close
//! code each refusal ends the connection with ([`FrameError::close_code`]):
//! - every client frame is masked, its reserved bits are 0 (no extension is negotiated) and
//!   its opcode is known, else 1002;
//! - control frames (close, ping, pong) carry at most 125 bytes and are not fragmented,
//!   else 1002; a close carries nothing, or a code a peer may send and a UTF-8 reason;
//! - a message (one frame, or a fragmented message reassembled from its continuations)
//!   larger than the decoder's limit is refused 1009 as soon as a frame header says so,
//!   before its payload is read, so a peer cannot make the server hold more than the limit;
//! - a text message is UTF-8, else 1007.
//!
//! Fragmented messages are reassembled (control frames may come between their fragments, as
//! the RFC allows) into a buffer of the decoder's own, up to the same limit; an unfragmented
//! message is unmasked in place and handed out as a slice of the caller's buffer, so the
//! common case copies nothing.

use thiserror::Error;

/// The close codes the channel sends (RFC 6455 §7.4.1).
pub mod close_code {
    /// A normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (the coordinator stops).
    pub const AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL: u16 = 1002;
    /// A text message that is not UTF-8.
    pub const INVALID: u16 = 1007;
    /// The peer broke the channel's policy (an unauthenticated channel).
    pub const POLICY: u16 = 1008;
    /// A message larger than the server takes.
    pub const TOO_BIG: u16 = 1009;
    /// The server met a condition it cannot go on with (the heartbeat thread failed).
    pub const INTERNAL: u16 = 1011;
}

/// The largest payload of a control frame.
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// The longest frame header: 2 bytes, a 64-bit length, a mask.
pub const MAX_HEADER: usize = 14;
/// The longest reason a close frame can carry after its code.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

const FIN: u8 = 0x80;
const RESERVED: u8 = 0x70;
const OPCODE: u8 = 0x0f;
const MASKED: u8 = 0x80;
const LENGTH: u8 = 0x7f;

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// The next fragment of a fragmented message.
    Continuation,
    /// (The first fragment of) a UTF-8 message.
    Text,
    /// (The first fragment of) a binary message.
    Binary,
    /// A close, with an optional code and reason.
    Close,
    /// A ping, to be answered with a pong carrying the same payload.
    Ping,
    /// A pong.
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xa => Opcode::Pong,
            _ => return None,
        })
    }

    /// The opcode's 4 bits.
    pub fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xa,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Why a client's bytes end the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// A client frame without a mask.
    #[error("client frames must be masked")]
    Unmasked,
    /// Reserved bits set, with no extension negotiated.
    #[error("reserved bits set")]
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// A control frame with more than [`MAX_CONTROL_PAYLOAD`] bytes.
    #[error("control frame of {0} bytes, more than 125")]
    ControlTooLong(u64),
    /// A control frame without FIN.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A continuation frame with no fragmented message to continue.
    #[error("continuation frame outside a fragmented message")]
    StrayContinuation,
    /// A text or binary frame while a fragmented message is unfinished.
    #[error("new message inside a fragmented message")]
    Interleaved,
    /// A message larger than the decoder's limit.
    #[error("message of {len} bytes or more, more than {max}")]
    TooBig {
        /// The bytes the message has at least.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A text message that is not UTF-8.
    #[error("text message is not UTF-8")]
    InvalidUtf8,
    /// A close frame whose payload is one byte (half a code).
    #[error("close frame with a 1-byte payload")]
    ShortClose,
    /// A close code a peer may not send (1004-1006, 1015, below 1000, 1016-2999, 5000+).
    #[error("close code {0} may not be sent")]
    BadCloseCode(u16),
    /// A close reason that is not UTF-8.
    #[error("close reason is not UTF-8")]
    InvalidCloseReason,
}

impl FrameError {
    /// The close code the connection ends with.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooBig { .. } => close_code::TOO_BIG,
            FrameError::InvalidUtf8 | FrameError::InvalidCloseReason => close_code::INVALID,
            _ => close_code::PROTOCOL,
        }
    }
}

/// A client's close frame's code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// The close code.
    pub code: u16,
    /// Why, in UTF-8 (often empty).
    pub reason: &'a str,
}

/// A complete message from a client, unmasked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping and its payload.
    Ping(&'a [u8]),
    /// A pong and its payload.
    Pong(&'a [u8]),
    /// A close, with its code and reason if it had one.
    Close(Option<CloseFrame<'a>>),
}

/// One frame decoded.
#[derive(Debug)]
pub struct Decoded<'a> {
    /// The bytes of the buffer the frame took: the caller drops them before decoding again.
    pub consumed: usize,
    /// The message the frame completed; `None` for a fragment of an unfinished message.
    pub message: Option<Message<'a>>,
}

/// A frame's header, once all of it has arrived.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    /// Its own length in bytes.
    len: usize,
    payload: usize,
}

/// The decoder of one connection's client frames: the limit, and a fragmented message's
/// fragments so far.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// The kind of the fragmented message under way ([`Opcode::Text`] or
    /// [`Opcode::Binary`]), if one is.
    fragmented: Option<Opcode>,
    fragments: Vec<u8>,
}

impl Decoder {
    /// A decoder of messages up to `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            fragmented: None,
            fragments: Vec::new(),
        }
    }

    /// Decodes the first frame of `buf`, unmasking its payload in place: `Ok(None)` when the
    /// frame is not all there yet (`buf` is left as it was).
    ///
    /// # Errors
    ///
    /// The [`FrameError`] that ends the connection, as soon as the bytes show it (a header
    /// announcing a message over the limit is refused before its payload arrives).
    pub fn decode<'a>(&'a mut self, buf: &'a mut [u8]) -> Result<Option<Decoded<'a>>, FrameError> {
        if self.fragmented.is_none() && self.fragments.capacity() > 0 {
            // The last fragmented message is answered: its buffer is not kept for a rare
            // next one on an otherwise idle channel.
            self.fragments = Vec::new();
        }
        let Some(header) = parse_header(buf, self.max_message)? else {
            return Ok(None);
        };
        match (header.opcode, self.fragmented) {
            (Opcode::Continuation, None) => return Err(FrameError::StrayContinuation),
            (Opcode::Continuation, Some(_)) => {
                let len = self.fragments.len().saturating_add(header.payload);
                if len > self.max_message {
                    return Err(too_big(len as u64, self.max_message));
                }
            }
            (Opcode::Text | Opcode::Binary, Some(_)) => return Err(FrameError::Interleaved),
            _ => {}
        }
        // Cannot overflow: the payload is at most the limit, which is a buffer's length.
        let end = header.len.saturating_add(header.payload);
        let Some(frame) = buf.get_mut(..end) else {
            return Ok(None);
        };
        let payload = &mut frame[header.len..];
        unmask(payload, header.mask);
        let payload: &'a [u8] = payload;
        let message = match header.opcode {
            Opcode::Close => Some(Message::Close(close_frame(payload)?)),
            Opcode::Ping => Some(Message::Ping(payload)),
            Opcode::Pong => Some(Message::Pong(payload)),
            Opcode::Text | Opcode::Binary if header.fin => {
                Some(data_message(header.opcode, payload)?)
            }
            Opcode::Text | Opcode::Binary => {
                self.fragments.clear();
                self.fragments.extend_from_slice(payload);
                self.fragmented = Some(header.opcode);
                None
            }
            Opcode::Continuation => {
                self.fragments.extend_from_slice(payload);
                match self.fragmented.take_if(|_| header.fin) {
                    Some(kind) => Some(data_message(kind, &self.fragments)?),
                    None => None,
                }
            }
        };
        Ok(Some(Decoded {
            consumed: end,
            message,
        }))
    }
}

/// The header at the start of `buf`, checked; `Ok(None)` until all of it has arrived.
fn parse_header(buf: &[u8], max_message: usize) -> Result<Option<Header>, FrameError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    if first & RESERVED != 0 {
        return Err(FrameError::ReservedBits);
    }
    let opcode =
        Opcode::from_bits(first & OPCODE).ok_or(FrameError::UnknownOpcode(first & OPCODE))?;
    if second & MASKED == 0 {
        return Err(FrameError::Unmasked);
    }
    let fin = first & FIN != 0;
    let short = second & LENGTH;
    if opcode.is_control() {
        if !fin {
            return Err(FrameError::FragmentedControl);
        }
        if usize::from(short) > MAX_CONTROL_PAYLOAD {
            return Err(FrameError::ControlTooLong(u64::from(short)));
        }
    }
    let (payload, at) = match short {
        126 => match buf.get(2..4) {
            Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
            _ => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(bytes) => (u64::from_be_bytes(bytes), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let payload = match usize::try_from(payload) {
        Ok(n) if n <= max_message => n,
        _ => return Err(too_big(payload, max_message)),
    };
    let Some(mask) = buf
        .get(at..at + 4)
        .and_then(|m| <[u8; 4]>::try_from(m).ok())
    else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        len: at + 4,
        payload,
    }))
}

fn too_big(len: u64, max: usize) -> FrameError {
    FrameError::TooBig { len, max }
}

/// XORs `payload` with `mask`, eight bytes at a time where it can.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (byte, m) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
}

fn data_message(kind: Opcode, payload: &[u8]) -> Result<Message<'_>, FrameError> {
    if kind == Opcode::Binary {
        return Ok(Message::Binary(payload));
    }
    std::str::from_utf8(payload)
        .map(Message::Text)
        .map_err(|_| FrameError::InvalidUtf8)
}

fn close_frame(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, FrameError> {
    let (code, reason) = match payload {
        [] => return Ok(None),
        [_] => return Err(FrameError::ShortClose),
        [a, b, reason @ ..] => (u16::from_be_bytes([*a, *b]), reason),
    };
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(FrameError::BadCloseCode(code));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| FrameError::InvalidCloseReason)?;
    Ok(Some(CloseFrame { code, reason }))
}

/// Appends a server frame (final, unmasked) carrying `payload` to `out`.
pub fn encode(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8]) {
    out.reserve(10 + payload.len());
    out.push(FIN | opcode.bits());
    push_length(out, 0, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a server close frame with `code` and `reason` (cut to fit a control frame, at a
/// character boundary) to `out`.
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut cut = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason.as_bytes()[..cut];
    out.push(FIN | Opcode::Close.bits());
    push_length(out, 0, 2 + reason.len());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
}

/// Appends a client frame (masked with `mask`) to `out`: what a WebSocket client sends. The
/// server never does; the channel's tests and its fuzz target build their input with it.
pub fn encode_masked(out: &mut Vec<u8>, fin: bool, opcode: Opcode, mask: [u8; 4], payload: &[u8]) {
    out.push(if fin { FIN } else { 0 } | opcode.bits());
    push_length(out, MASKED, payload.len());
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask);
}

/// The length field(s) of a header, with `flags` (the mask bit) in its second byte.
fn push_length(out: &mut Vec<u8>, flags: u8, len: usize) {
    if let Ok(short) = u8::try_from(len) {
        if short < 126 {
            out.push(flags | short);
            return;
        }
    }
    if let Ok(medium) = u16::try_from(len) {
        out.push(flags | 126);
        out.extend_from_slice(&medium.to_be_bytes());
        return;
    }
    out.push(flags | 127);
    out.extend_from_slice(&(len as u64).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MAX: usize = 1024;
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn client(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_masked(&mut out, fin, opcode, MASK, payload);
        out
    }

    /// An owned copy of a message, to compare across decodes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    impl From<Message<'_>> for Owned {
        fn from(message: Message<'_>) -> Self {
            match message {
                Message::Text(t) => Owned::Text(t.to_owned()),
                Message::Binary(b) => Owned::Binary(b.to_vec()),
                Message::Ping(p) => Owned::Ping(p.to_vec()),
                Message::Pong(p) => Owned::Pong(p.to_vec()),
                Message::Close(c) => Owned::Close(c.map(|c| (c.code, c.reason.to_owned()))),
            }
        }
    }

    /// Decodes everything `chunks` deliver, one chunk at a time, as a connection would:
    /// the messages, and the error that ended it if one did.
    fn decode_chunks(chunks: &[&[u8]], max: usize) -> (Vec<Owned>, Option<FrameError>) {
        let mut decoder = Decoder::new(max);
        let mut buf = Vec::new();
        let mut messages = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(decoded)) => {
                        let consumed = decoded.consumed;
                        messages.extend(decoded.message.map(Owned::from));
                        buf.drain(..consumed);
                    }
                    Ok(None) => break,
                    Err(e) => return (messages, Some(e)),
                }
            }
        }
        (messages, None)
    }

    fn decode_all(bytes: &[u8]) -> (Vec<Owned>, Option<FrameError>) {
        decode_chunks(&[bytes], MAX)
    }

    #[test]
    fn a_masked_text_frame_decodes_in_place() {
        let mut bytes = client(true, Opcode::Text, b"sig\n{\"seq\":1}");
        let mut decoder = Decoder::new(MAX);
        let len = bytes.len();
        let decoded = decoder.decode(&mut bytes).unwrap().unwrap();
        assert_eq!(decoded.consumed, len);
        assert_eq!(decoded.message, Some(Message::Text("sig\n{\"seq\":1}")));
    }

    #[test]
    fn lengths_of_every_width_decode() {
        for len in [0, 1, 125, 126, 127, 1000, 65_535, 65_536, 70_000] {
            let payload = vec![b'a'; len];
            let (messages, error) =
                decode_chunks(&[&client(true, Opcode::Text, &payload)], 100_000);
            assert_eq!(error, None, "{len}");
            assert_eq!(messages, [Owned::Text("a".repeat(len))], "{len}");
        }
    }

    #[test]
    fn a_frame_split_at_every_byte_decodes_the_same() {
        let mut bytes = client(true, Opcode::Text, &[b'x'; 300]);
        bytes.extend(client(true, Opcode::Ping, b"hi"));
        bytes.extend(client(false, Opcode::Text, "é".as_bytes()));
        bytes.extend(client(true, Opcode::Continuation, b"!"));
        let whole = decode_all(&bytes);
        assert_eq!(whole.0.len(), 3);
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(decode_chunks(&[a, b], MAX), whole, "split at {at}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_chunks(&bytewise, MAX), whole);
    }

    #[test]
    fn fragments_reassemble_around_control_frames() {
        let mut bytes = client(false, Opcode::Text, b"he");
        bytes.extend(client(true, Opcode::Ping, b"p"));
        bytes.extend(client(false, Opcode::Continuation, b"ll"));
        bytes.extend(client(true, Opcode::Continuation, b"o"));
        bytes.extend(client(true, Opcode::Binary, &[0xff]));
        assert_eq!(
            decode_all(&bytes),
            (
                vec![
                    Owned::Ping(b"p".to_vec()),
                    Owned::Text("hello".into()),
                    Owned::Binary(vec![0xff])
                ],
                None
            )
        );
    }

    #[test]
    fn each_refusal_has_its_close_code() {
        let unmasked = {
            let mut out = Vec::new();
            encode(&mut out, Opcode::Text, b"hi");
            out
        };
        let mut reserved = client(true, Opcode::Text, b"hi");
        reserved[0] |= 0x40;
        let mut unknown = client(true, Opcode::Text, b"hi");
        unknown[0] = FIN | 0x3;
        let mut long_ping = vec![FIN | 0x9, MASKED | 126, 0, 126];
        long_ping.extend(MASK);
        long_ping.extend([0; 126]);
        let cases: Vec<(&str, Vec<u8>, FrameError)> = vec![
            ("unmasked", unmasked, FrameError::Unmasked),
            ("reserved bits", reserved, FrameError::ReservedBits),
            ("unknown opcode", unknown, FrameError::UnknownOpcode(3)),
            ("long ping", long_ping, FrameError::ControlTooLong(126)),
            (
                "fragmented ping",
                client(false, Opcode::Ping, b""),
                FrameError::FragmentedControl,
            ),
            (
                "stray continuation",
                client(true, Opcode::Continuation, b"x"),
                FrameError::StrayContinuation,
            ),
            (
                "interleaved",
                [
                    client(false, Opcode::Text, b"a"),
                    client(true, Opcode::Text, b"b"),
                ]
                .concat(),
                FrameError::Interleaved,
            ),
            (
                "too big",
                client(true, Opcode::Binary, &[0; MAX + 1]),
                too_big(MAX as u64 + 1, MAX),
            ),
            (
                "too big in fragments",
                [
                    client(false, Opcode::Text, &[b'a'; MAX]),
                    client(true, Opcode::Continuation, b"a"),
                ]
                .concat(),
                too_big(MAX as u64 + 1, MAX),
            ),
            (
                "bad utf-8",
                client(true, Opcode::Text, &[b'a', 0xc3]),
                FrameError::InvalidUtf8,
            ),
            (
                "bad utf-8 across fragments",
                [
                    client(false, Opcode::Text, &[0xc3]),
                    client(true, Opcode::Continuation, &[0x28]),
                ]
                .concat(),
                FrameError::InvalidUtf8,
            ),
            (
                "half a close code",
                client(true, Opcode::Close, &[3]),
                FrameError::ShortClose,
            ),
            (
                "reserved close code",
                client(true, Opcode::Close, &1005u16.to_be_bytes()),
                FrameError::BadCloseCode(1005),
            ),
            (
                "bad close reason",
                client(true, Opcode::Close, &[3, 0xe8, 0xff]),
                FrameError::InvalidCloseReason,
            ),
        ];
        for (what, bytes, expected) in cases {
            assert_eq!(decode_all(&bytes).1, Some(expected.clone()), "{what}");
            let code = match what {
                "too big" | "too big in fragments" => 1009,
                "bad utf-8" | "bad utf-8 across fragments" | "bad close reason" => 1007,
                _ => 1002,
            };
            assert_eq!(expected.close_code(), code, "{what}");
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header_alone() {
        let bytes = client(true, Opcode::Text, &vec![b'a'; 70_000]);
        // The 64-bit length and nothing else: refused before any payload arrives.
        assert_eq!(
            decode_chunks(&[&bytes[..10]], MAX).1,
            Some(too_big(70_000, MAX))
        );
        let mut huge = vec![FIN | 0x1, MASKED | 127];
        huge.extend(u64::MAX.to_be_bytes());
        assert_eq!(decode_all(&huge).1, Some(too_big(u64::MAX, MAX)));
    }

    #[test]
    fn close_frames_decode_with_and_without_a_code() {
        let mut reason = 1000u16.to_be_bytes().to_vec();
        reason.extend(b"bye");
        let bytes = [
            client(true, Opcode::Close, b""),
            client(true, Opcode::Close, &reason),
        ]
        .concat();
        assert_eq!(
            decode_all(&bytes),
            (
                vec![Owned::Close(None), Owned::Close(Some((1000, "bye".into())))],
                None
            )
        );
    }

    #[test]
    fn server_frames_are_unmasked_and_final() {
        let mut out = Vec::new();
        encode(&mut out, Opcode::Text, b"ok");
        assert_eq!(out, [0x81, 2, b'o', b'k']);
        out.clear();
        encode(&mut out, Opcode::Pong, &[0; 200]);
        assert_eq!(&out[..4], [0x8a, 126, 0, 200]);
        out.clear();
        // A reason too long for a control frame is cut at a character boundary.
        encode_close(&mut out, close_code::TOO_BIG, &"é".repeat(100));
        assert_eq!(&out[..4], [0x88, 124, 0x03, 0xf1]);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
        assert!(out.len() - 2 <= MAX_CONTROL_PAYLOAD);
    }

    /// A frame a client could send, as a generator draws it.
    fn frames() -> impl Strategy<Value = Vec<(Opcode, Vec<u8>, [u8; 4])>> {
        let frame = (
            prop_oneof![
                Just(Opcode::Text),
                Just(Opcode::Binary),
                Just(Opcode::Ping),
                Just(Opcode::Pong),
            ],
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<[u8; 4]>(),
        )
            .prop_map(|(opcode, payload, mask)| {
                let payload = match opcode {
                    Opcode::Text => String::from_utf8_lossy(&payload).into_owned().into_bytes(),
                    Opcode::Ping | Opcode::Pong => payload[..payload.len().min(125)].to_vec(),
                    _ => payload,
                };
                (opcode, payload, mask)
            });
        proptest::collection::vec(frame, 1..8)
    }

    proptest! {
        #[test]
        fn random_masked_frames_split_anywhere_decode_to_their_messages(
            frames in frames(),
            fragment in any::<bool>(),
            splits in proptest::collection::vec(any::<proptest::sample::Index>(), 0..6),
        ) {
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for (opcode, payload, mask) in &frames {
                let split_data = fragment && !opcode.is_control() && payload.len() >= 2;
                if split_data {
                    // Two fragments; a ping between them.
                    let (a, b) = payload.split_at(payload.len() / 2);
                    encode_masked(&mut bytes, false, *opcode, *mask, a);
                    encode_masked(&mut bytes, true, Opcode::Ping, *mask, b"between");
                    expected.push(Owned::Ping(b"between".to_vec()));
                    encode_masked(&mut bytes, true, Opcode::Continuation, *mask, b);
                } else {
                    encode_masked(&mut bytes, true, *opcode, *mask, payload);
                }
                expected.push(Owned::from(match opcode {
                    // Cut in two above, a text may be split inside a character: it is whole
                    // again once reassembled.
                    Opcode::Text => Message::Text(std::str::from_utf8(payload).unwrap()),
                    Opcode::Binary => Message::Binary(payload),
                    Opcode::Ping => Message::Ping(payload),
                    _ => Message::Pong(payload),
                }));
            }
            let mut cuts: Vec<usize> = splits.iter().map(|i| i.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in cuts {
                chunks.push(&bytes[from..cut]);
                from = cut;
            }
            chunks.push(&bytes[from..]);
            prop_assert_eq!(decode_chunks(&chunks, MAX), (expected, None));
        }

        #[test]
        fn any_bytes_decode_or_are_refused_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let _ = decode_chunks(&[&bytes], 64);
        }
    }
}
