//! One heartbeat channel's connection after the handshake: the upgraded stream (TCP or TLS),
//! its one read buffer with the frame decoder over it ([`Input`]), and the answers not yet
//! written ([`Socket::output`]). Above this, the channel sees messages, never bytes.
//!
//! Why not tungstenite: at 10 000 nodes beating every second its layers (a waker registered
//! per poll, a codec copying into and splitting a `BytesMut`, a read buffer zeroed before
//! every read) were ~3 µs of the coordinator's ~22 µs per heartbeat. Here a read lands in a
//! buffer zeroed once, every complete frame in it is unmasked in place and handed out as a
//! slice, and the answers to all of them leave in one write.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::wire::ws_frame::{Decoder, FrameError, Message, MAX_HEADER};

/// The read buffer's size to start with. A heartbeat frame is a few hundred bytes; the
/// buffer grows (up to a frame's worth, [`Input::limit`]) only for a larger one, so 10 000
/// idle channels hold 10 MiB of it.
pub const READ_BUFFER: usize = 1024;

/// After the server closed a channel, how long the peer gets to close its side. Reading what
/// it still sends (rather than dropping the socket with bytes unread, which resets the
/// connection and can destroy the close frame before the peer reads it) lets it learn why.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// How long writing the answers may take: a peer that reads nothing for this long while
/// answers (or pongs) wait for it is cut, so it cannot hold its channel's task and slot.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`Input::next`] found.
#[derive(Debug)]
pub enum Next<'a> {
    /// A complete message.
    Message(Message<'a>),
    /// A fragment of a message not complete yet, taken in.
    Fragment,
    /// No complete frame: read more.
    NeedMore,
}

/// Bytes read and not yet decoded, and the decoder of the frames in them.
#[derive(Debug)]
pub struct Input {
    buf: Vec<u8>,
    /// The first byte not yet decoded.
    start: usize,
    /// The end of the bytes read.
    end: usize,
    /// The most the buffer grows to: the largest frame and its header.
    limit: usize,
    decoder: Decoder,
}

impl Input {
    fn new(max_message: usize) -> Self {
        let limit = max_message.saturating_add(MAX_HEADER);
        Input {
            buf: vec![0; READ_BUFFER.min(limit)],
            start: 0,
            end: 0,
            limit,
            decoder: Decoder::new(max_message),
        }
    }

    /// The next frame in what was read, its payload unmasked in place.
    ///
    /// # Errors
    ///
    /// The [`FrameError`] that ends the channel.
    pub fn next(&mut self) -> Result<Next<'_>, FrameError> {
        let buf = &mut self.buf[self.start..self.end];
        let Some(decoded) = self.decoder.decode(buf)? else {
            return Ok(Next::NeedMore);
        };
        self.start += decoded.consumed;
        Ok(decoded.message.map_or(Next::Fragment, Next::Message))
    }

    /// Makes room to read into: moves what is left of a frame to the front, and grows the
    /// buffer (up to [`Input::limit`]) when a frame fills it.
    fn room(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > READ_BUFFER {
                // A large frame is answered: the channel goes back to its small buffer.
                self.buf = vec![0; READ_BUFFER];
            }
        } else if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() && self.buf.len() < self.limit {
            let grown = self.buf.len().saturating_mul(2).min(self.limit);
            self.buf.resize(grown, 0);
        }
        &mut self.buf[self.end..]
    }
}

/// A channel's connection: the stream, what was read from it, what is to be written.
#[derive(Debug)]
pub struct Socket<S> {
    io: S,
    /// What was read and not yet decoded.
    pub input: Input,
    /// Encoded frames not yet written ([`crate::wire::ws_frame::encode`] appends here): they
    /// leave together at the next [`Socket::flush`].
    pub output: Vec<u8>,
    /// The last read filled all the room it had: more may be waiting in the socket.
    filled_up: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    /// A connection over `io`, taking messages up to `max_message` bytes.
    pub fn new(io: S, max_message: usize) -> Self {
        Socket {
            io,
            input: Input::new(max_message),
            output: Vec::new(),
            filled_up: false,
        }
    }

    /// Reads what the peer sent next into [`Socket::input`]: the bytes read, 0 at its end.
    ///
    /// # Errors
    ///
    /// The stream's.
    pub async fn fill(&mut self) -> io::Result<usize> {
        let room = self.input.room();
        if room.is_empty() {
            // Cannot happen: the decoder refuses a frame longer than the limit before it
            // fills the buffer. Ending the channel is the safe answer if it ever did.
            return Err(io::Error::other("channel read buffer full"));
        }
        let room_len = room.len();
        let read = self.io.read(room).await?;
        self.input.end += read;
        self.filled_up = read == room_len;
        Ok(read)
    }

    /// Whether the last read filled all the room it had, so that more bytes may be waiting
    /// in the socket; after a shorter read it was empty.
    pub fn filled_up(&self) -> bool {
        self.filled_up
    }

    /// Writes every frame in [`Socket::output`] and flushes the stream (TLS holds what it
    /// was given until then), within [`WRITE_TIMEOUT`].
    ///
    /// # Errors
    ///
    /// The stream's, or [`io::ErrorKind::TimedOut`] when the peer did not take the answers
    /// in time.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(WRITE_TIMEOUT, self.write_out()).await {
            Ok(written) => written,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer took no answer in time",
            )),
        }
    }

    async fn write_out(&mut self) -> io::Result<()> {
        self.io.write_all(&self.output).await?;
        self.output.clear();
        if self.output.capacity() > READ_BUFFER {
            // A burst of refusals does not stay allocated on an idle channel.
            self.output = Vec::new();
        }
        self.io.flush().await
    }

    /// After the server's close frame went out: ends the write side, then reads and drops
    /// what the peer still sends until it closes too, [`CLOSE_LINGER`] passes (all of it,
    /// the write side's end included: a TLS close is a write), or `stop` (the listener is
    /// stopping, and its grace period is shorter).
    pub async fn linger(mut self, stop: &CancellationToken) {
        let until = Instant::now() + CLOSE_LINGER;
        let drain = async {
            let _ = self.flush().await;
            let _ = self.io.shutdown().await;
            let mut scratch = std::mem::take(&mut self.input.buf);
            if scratch.is_empty() {
                scratch = vec![0; READ_BUFFER];
            }
            while let Ok(read) = self.io.read(&mut scratch).await {
                if read == 0 {
                    break;
                }
            }
        };
        tokio::select! {
            () = stop.cancelled() => {}
            _ = tokio::time::timeout_at(until, drain) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ws_frame::{encode_masked, Opcode};

    /// Copies `bytes` into `input` as reads of at most `chunk` bytes would.
    fn read_into(input: &mut Input, bytes: &[u8], chunk: usize) -> Vec<String> {
        let mut texts = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = input.room();
            let n = room.len().min(chunk).min(rest.len());
            room[..n].copy_from_slice(&rest[..n]);
            input.end += n;
            rest = &rest[n..];
            while let Next::Message(Message::Text(text)) = input.next().unwrap() {
                texts.push(text.to_owned());
            }
        }
        texts
    }

    #[test]
    fn the_read_buffer_grows_for_a_large_frame_compacts_and_shrinks_back() {
        let mut input = Input::new(8 * 1024);
        let big = "x".repeat(3000);
        let mut bytes = Vec::new();
        encode_masked(&mut bytes, true, Opcode::Text, [1, 2, 3, 4], b"small");
        encode_masked(&mut bytes, true, Opcode::Text, [5, 6, 7, 8], big.as_bytes());
        encode_masked(&mut bytes, true, Opcode::Text, [9, 9, 9, 9], b"after");
        // Reads that split every frame, the large one across several buffers' worth.
        let texts = read_into(&mut input, &bytes, 700);
        assert_eq!(texts, ["small".to_owned(), big, "after".to_owned()]);
        assert!(input.buf.len() > READ_BUFFER, "grew for the large frame");
        // Everything was decoded: the next read starts on a small buffer again.
        let _ = input.room();
        assert_eq!(input.buf.len(), READ_BUFFER);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_a_peer_never_reads_end_the_channel_after_the_write_timeout() {
        let (ours, _peer) = tokio::io::duplex(64);
        let mut socket = Socket::new(ours, 1024);
        socket.output.extend_from_slice(&[0; 4096]);
        let started = Instant::now();
        let error = socket.flush().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= WRITE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn lingering_ends_when_the_listener_stops() {
        let (ours, _peer) = tokio::io::duplex(64);
        let socket = Socket::new(ours, 1024);
        let stop = CancellationToken::new();
        stop.cancel();
        let started = Instant::now();
        socket.linger(&stop).await;
        assert!(started.elapsed() < CLOSE_LINGER);
    }
}
