//! [`ColonyCodec`]: the `Decoder`/`Encoder` that picks a framing from the first byte.
//!
//! Text framing: newline-delimited lines, bounded by [`Limits::max_line`]; an over-long line is
//! reported once and discarded up to its newline. Binary framing: a 4-byte big-endian length
//! and a MessagePack body, bounded by [`Limits::max_frame`]. Recoverable problems come out as
//! [`Decoded::Invalid`] items so the stream goes on; only broken binary framing is an `Err`.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::{text, CodecError, Message, ProtocolError, Style};

/// Default longest text line, in bytes, not counting the newline.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;
/// Default largest binary frame body, in bytes.
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024 * 1024;
/// Binary frames must stay below 16 MiB so that the length's first byte is `0x00`, which is
/// what tells the framings apart.
pub const FRAME_LIMIT_CEILING: usize = (1 << 24) - 1;

/// Size of the binary length prefix.
const HEADER_LEN: usize = 4;

/// Which framing a connection speaks; fixed by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Newline-delimited lines.
    Text,
    /// Length-prefixed MessagePack.
    Binary,
}

/// The codec's input limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest text line in bytes, excluding the newline.
    pub max_line: usize,
    /// Largest binary frame body in bytes; at most [`FRAME_LIMIT_CEILING`].
    pub max_frame: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: DEFAULT_MAX_LINE,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

/// One decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A message of the catalogue and the style to answer it in.
    Message(Message, Style),
    /// A request whose end was found but which could not be understood.
    Invalid(ProtocolError),
}

/// An answer to encode: the message and the style of the request it answers.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    /// What to send.
    pub message: &'a Message,
    /// How the request was expressed.
    pub style: Style,
}

/// The data-plane codec. One per connection: it remembers the framing and the text state.
#[derive(Debug, Clone)]
pub struct ColonyCodec {
    limits: Limits,
    framing: Option<Framing>,
    /// Bytes of the current text line already searched for `\n`.
    scanned: usize,
    /// True while dropping the rest of an over-long line.
    discarding: bool,
}

impl ColonyCodec {
    /// A codec with the given limits; `max_frame` is clamped to [`FRAME_LIMIT_CEILING`].
    pub fn new(limits: Limits) -> Self {
        let limits = Limits {
            max_frame: limits.max_frame.min(FRAME_LIMIT_CEILING),
            ..limits
        };
        ColonyCodec {
            limits,
            framing: None,
            scanned: 0,
            discarding: false,
        }
    }

    /// A codec whose framing is fixed up front, as a client's is.
    pub fn with_framing(limits: Limits, framing: Framing) -> Self {
        ColonyCodec {
            framing: Some(framing),
            ..ColonyCodec::new(limits)
        }
    }

    /// The framing, once the first byte has been seen.
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// The style in which errors not tied to a request are sent on this connection.
    pub fn error_style(&self) -> Style {
        match self.framing {
            Some(Framing::Binary) => Style::Binary,
            _ => Style::Json,
        }
    }

    /// After [`Decoder::decode`] returned `Ok(None)`: `None` if nothing of a request is
    /// buffered in `src`, else the number of bytes still missing to complete it, at least 1
    /// (exact for a binary frame whose length has arrived; 1 for a text line, whose end is
    /// unknown). A line being discarded for its length counts as incomplete.
    pub fn incomplete(&self, src: &BytesMut) -> Option<usize> {
        match self.framing {
            Some(Framing::Text) if self.discarding || !src.is_empty() => Some(1),
            Some(Framing::Binary) if !src.is_empty() => {
                let need = src.get(..HEADER_LEN).map_or(HEADER_LEN, |h| {
                    HEADER_LEN + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize
                });
                Some(need.saturating_sub(src.len()).max(1))
            }
            _ => None,
        }
    }

    /// Skips up to `max` lines at the head of `src` that are exactly `PING` as clients send
    /// it (upper case, nothing else on the line, `\n` or `\r\n`) and returns how many: each
    /// is the request [`Decoder::decode`] would return as `Message::Ping` in
    /// `Style::Command`, and is answered with [`text::PONG_LINE`]. Text framing only (0 on a
    /// binary or not yet known framing, or while a long line is being dropped); anything else
    /// is left to [`Decoder::decode`]. At 50 connections x 1 PING the general path (UTF-8
    /// check, trim, word split, a `Message` built, matched and encoded) was a tenth of the
    /// data plane's user time (issue 17).
    pub fn skip_pings(&mut self, src: &mut BytesMut, max: usize) -> usize {
        if self.framing != Some(Framing::Text) || self.discarding {
            return 0;
        }
        let (mut skipped, mut end) = (0, 0);
        while skipped < max {
            let len = match src.get(end..end + 6) {
                Some([b'P', b'I', b'N', b'G', b'\n', ..]) => 5,
                Some(b"PING\r\n") => 6,
                // Fewer than 6 bytes: only a bare `PING\n` can be whole.
                None if src[end..] == *b"PING\n" => 5,
                _ => break,
            };
            end += len;
            skipped += 1;
        }
        if end == src.len() {
            // All of it: `clear` keeps the buffer's start where it is, so the next read
            // needs no room made.
            src.clear();
        } else {
            src.advance(end);
        }
        if skipped > 0 {
            self.scanned = 0;
        }
        skipped
    }

    fn decode_text(&mut self, src: &mut BytesMut) -> Option<Decoded> {
        loop {
            let newline = memchr::memchr(b'\n', &src[self.scanned..]).map(|i| self.scanned + i);
            match (self.discarding, newline) {
                (true, Some(end)) => {
                    src.advance(end + 1);
                    self.scanned = 0;
                    self.discarding = false;
                }
                (true, None) => {
                    // Keep nothing of a line we are dropping.
                    src.clear();
                    self.scanned = 0;
                    return None;
                }
                (false, Some(end)) => {
                    // Parsed in place, then skipped: `split_to` would turn the buffer into a
                    // shared one and count references on every line.
                    let body = strip_eol(&src[..=end]);
                    let parsed = if body.len() > self.limits.max_line {
                        Err(ProtocolError::LineTooLong {
                            max: self.limits.max_line,
                        })
                    } else {
                        text::parse_line(body)
                    };
                    src.advance(end + 1);
                    self.scanned = 0;
                    match parsed {
                        Ok(Some((message, style))) => {
                            return Some(Decoded::Message(message, style))
                        }
                        Ok(None) => continue,
                        Err(e) => return Some(Decoded::Invalid(e)),
                    }
                }
                (false, None) => {
                    // Allow one byte over the limit for a `\r` that may precede the `\n`.
                    if src.len() > self.limits.max_line + 1 {
                        src.clear();
                        self.scanned = 0;
                        self.discarding = true;
                        return Some(Decoded::Invalid(ProtocolError::LineTooLong {
                            max: self.limits.max_line,
                        }));
                    }
                    self.scanned = src.len();
                    return None;
                }
            }
        }
    }

    fn decode_binary(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, CodecError> {
        let Some(header) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > self.limits.max_frame {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.limits.max_frame,
            });
        }
        let total = HEADER_LEN + len;
        if src.len() < total {
            // No reserve for the whole frame here: the connection grows its buffer as bytes
            // arrive, against its memory budget, so a header alone cannot claim 8 MiB.
            return Ok(None);
        }
        let frame = src.split_to(total);
        let message = rmp_serde::from_slice::<Message>(&frame[HEADER_LEN..])
            .map_err(|e| CodecError::Undecodable(e.to_string()))?;
        Ok(Some(Decoded::Message(message, Style::Binary)))
    }
}

impl Default for ColonyCodec {
    fn default() -> Self {
        ColonyCodec::new(Limits::default())
    }
}

/// Removes the line's `\n` and an optional `\r` before it.
fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

impl Decoder for ColonyCodec {
    type Item = Decoded;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, CodecError> {
        let framing = match self.framing {
            Some(framing) => framing,
            None => {
                let Some(&first) = src.first() else {
                    return Ok(None);
                };
                let framing = if first == 0 {
                    Framing::Binary
                } else {
                    Framing::Text
                };
                self.framing = Some(framing);
                framing
            }
        };
        match framing {
            Framing::Text => Ok(self.decode_text(src)),
            Framing::Binary => self.decode_binary(src),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, CodecError> {
        if let Some(item) = self.decode(src)? {
            return Ok(Some(item));
        }
        if src.is_empty() {
            return Ok(None);
        }
        match self.framing {
            // A last line without its newline is still a request (`printf PING | nc`).
            Some(Framing::Text) => {
                src.put_u8(b'\n');
                Ok(self.decode_text(src))
            }
            _ => {
                let need = src
                    .get(..HEADER_LEN)
                    .map(|h| HEADER_LEN + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize)
                    .unwrap_or(HEADER_LEN);
                let have = src.len();
                src.clear();
                Err(CodecError::Truncated { have, need })
            }
        }
    }
}

impl Encoder<Reply<'_>> for ColonyCodec {
    type Error = CodecError;

    fn encode(&mut self, reply: Reply<'_>, dst: &mut BytesMut) -> Result<(), CodecError> {
        match reply.style {
            Style::Command | Style::Json => text::write_line(reply.message, reply.style, dst),
            Style::Binary => encode_frame(reply.message, self.limits.max_frame, dst),
        }
    }
}

impl Encoder<&Message> for ColonyCodec {
    type Error = CodecError;

    /// Encodes in the connection's own framing (binary for a codec made with
    /// [`ColonyCodec::with_framing`]`(.., Framing::Binary)`).
    fn encode(&mut self, message: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        let style = self.error_style();
        self.encode(Reply { message, style }, dst)
    }
}

/// Appends `message` as one length-prefixed MessagePack frame.
///
/// # Errors
/// [`CodecError::FrameTooLarge`] if the body exceeds `max_frame` (nothing is appended then).
pub fn encode_frame(
    message: &Message,
    max_frame: usize,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let start = dst.len();
    dst.put_u32(0);
    if let Err(e) = rmp_serde::encode::write_named(&mut dst.writer(), message) {
        dst.truncate(start);
        return Err(CodecError::Encode(e.to_string()));
    }
    let len = dst.len() - start - HEADER_LEN;
    if len > max_frame.min(FRAME_LIMIT_CEILING) {
        dst.truncate(start);
        return Err(CodecError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    // `len` fits in u32: it is at most FRAME_LIMIT_CEILING, checked just above.
    dst[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}
