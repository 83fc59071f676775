//! One heartbeat channel's connection after the handshake: the upgraded stream of a channel
//! served on the management thread (over TLS), what was read with the frame decoder over it
//! ([`Input`], which the channels' own thread uses too), and the answers not yet written
//! ([`Socket::output`]). Above this, the channel sees messages, never bytes.
//!
//! Why not tungstenite: at 10 000 nodes beating every second its layers (a waker registered
//! per poll, a codec copying into and splitting a `BytesMut`, a read buffer zeroed before
//! every read) were ~3 µs of the coordinator's ~22 µs per heartbeat. Here a read lands in
//! the thread's one scratch buffer (hot in the cache; a channel keeps a buffer of its own
//! only while part of a frame waits for the rest), every complete frame in it is unmasked in
//! place and handed out as a slice, and the answers to all of them leave in one write.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::wire::ws_frame::{Decoder, FrameError, Message, MAX_HEADER};

/// A channel's own read buffer, when it needs one (part of a frame waits for the rest): its
/// size to start with. It grows (up to a frame's worth, [`Input::limit`]) only for a larger
/// frame, and is freed once the frame is complete.
pub const READ_BUFFER: usize = 1024;

/// The scratch buffer channels read into: the most one read takes.
pub const SCRATCH: usize = 16 * 1024;

thread_local! {
    /// The read buffer every channel on this thread reads into while it holds no part of a
    /// frame: one buffer, hot in the cache, instead of 10 000 of their own that the kernel
    /// copies each heartbeat into cold. A channel holds it only from a read to the end of
    /// handling what it read, never across an await.
    static SCRATCH_BUFFER: Cell<Option<Vec<u8>>> = const { Cell::new(None) };
}

/// The thread's scratch buffer, or a new one if another channel holds it.
fn take_scratch() -> Vec<u8> {
    SCRATCH_BUFFER.take().unwrap_or_else(|| vec![0; SCRATCH])
}

fn give_back_scratch(scratch: Vec<u8>) {
    SCRATCH_BUFFER.set(Some(scratch));
}

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
///
/// The bytes are in the thread's scratch buffer while what one read brought is handled
/// ([`Input::borrow_scratch`] to [`Input::release`]); a part of a frame left over then moves
/// to the channel's own buffer, which reads take until the frame is complete.
#[derive(Debug)]
pub struct Input {
    /// The bytes being decoded: the scratch buffer, or the channel's own.
    buf: Vec<u8>,
    /// The channel's own buffer while `buf` is the scratch buffer.
    parked: Option<Vec<u8>>,
    /// The first byte not yet decoded.
    start: usize,
    /// The end of the bytes read.
    end: usize,
    /// The most the buffer grows to: the largest frame and its header.
    limit: usize,
    decoder: Decoder,
}

impl Input {
    pub(super) fn new(max_message: usize) -> Self {
        let limit = max_message.saturating_add(MAX_HEADER);
        Input {
            buf: Vec::new(),
            parked: None,
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

    /// A channel's input that begins with `early`, bytes read before it existed (what the
    /// HTTP server read past the upgrade request).
    pub(super) fn starting_with(max_message: usize, early: Vec<u8>) -> Self {
        let mut input = Input::new(max_message);
        input.end = early.len();
        input.buf = early;
        input
    }

    /// Reads once from a non-blocking `stream` into the scratch buffer (or the channel's
    /// own, while part of a frame waits there): the bytes read, 0 at its end, and whether
    /// the read filled all its room (so more may be waiting). Nothing is held on an error
    /// (`WouldBlock` included); otherwise handle the bytes, then [`Input::release`].
    pub(super) fn read_from(&mut self, stream: &mut impl io::Read) -> io::Result<(usize, bool)> {
        self.borrow_scratch();
        let room = self.room();
        if room.is_empty() {
            self.release();
            return Err(io::Error::other("channel read buffer full"));
        }
        let room_len = room.len();
        match stream.read(room) {
            Ok(read) => {
                self.end += read;
                Ok((read, read == room_len))
            }
            Err(e) => {
                self.release();
                Err(e)
            }
        }
    }

    /// Reads go to the thread's scratch buffer from now on, unless part of a frame waits in
    /// the channel's own (or the scratch buffer is already held).
    fn borrow_scratch(&mut self) {
        if self.parked.is_none() && self.start == self.end {
            let own = std::mem::replace(&mut self.buf, take_scratch());
            self.parked = Some(own);
            self.start = 0;
            self.end = 0;
        }
    }

    /// Gives the scratch buffer back, moving a part of a frame still in it to the channel's
    /// own buffer; frees the channel's own buffer when nothing is left. Called before every
    /// await but the read itself.
    pub fn release(&mut self) {
        let Some(mut own) = self.parked.take() else {
            return;
        };
        let rest = self.end - self.start;
        if rest == 0 {
            own = Vec::new();
        } else {
            if own.len() < rest {
                own.resize(rest.max(READ_BUFFER), 0);
            }
            own[..rest].copy_from_slice(&self.buf[self.start..self.end]);
        }
        self.start = 0;
        self.end = rest;
        give_back_scratch(std::mem::replace(&mut self.buf, own));
    }

    /// Makes room to read into: moves what is left of a frame to the front, and grows the
    /// buffer (up to [`Input::limit`]) when a frame fills it.
    fn room(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.parked.is_none() && self.buf.len() > READ_BUFFER {
                // A large frame is answered: the channel goes back to a small buffer.
                self.buf = vec![0; READ_BUFFER];
            }
        } else if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.is_empty() {
            self.buf.resize(READ_BUFFER.min(self.limit), 0);
        } else if self.end == self.buf.len() && self.buf.len() < self.limit {
            let grown = self.buf.len().saturating_mul(2).min(self.limit);
            self.buf.resize(grown, 0);
        }
        &mut self.buf[self.end..]
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        if self.parked.is_some() {
            give_back_scratch(std::mem::take(&mut self.buf));
        }
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
    /// After the last read, more bytes may be waiting in the stream.
    more_waiting: bool,
    /// A read shorter than its room emptied the stream: true of plain TCP, not of TLS,
    /// where one read returns one record's plaintext while more may be decrypted already.
    short_read_drains: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    /// A connection over `io`, taking messages up to `max_message` bytes; `plain` if `io`
    /// is a plain TCP stream, so that a short read means nothing more is waiting.
    pub fn new(io: S, max_message: usize, plain: bool) -> Self {
        Socket {
            io,
            input: Input::new(max_message),
            output: Vec::new(),
            more_waiting: false,
            short_read_drains: plain,
        }
    }

    /// Reads what the peer sent next into [`Socket::input`]: the bytes read, 0 at its end.
    ///
    /// # Errors
    ///
    /// The stream's.
    ///
    /// The read goes to the thread's scratch buffer when the channel holds no part of a
    /// frame, and the bytes stay there until [`Input::release`] (or the next
    /// [`Socket::flush`]): handle them first.
    pub async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.input.borrow_scratch();
        let room = self.input.room();
        if room.is_empty() {
            // Cannot happen: the decoder refuses a frame longer than the limit before it
            // fills the buffer. Ending the channel is the safe answer if it ever did.
            self.input.release();
            return Poll::Ready(Err(io::Error::other("channel read buffer full")));
        }
        let room_len = room.len();
        let mut read_buf = ReadBuf::new(room);
        match Pin::new(&mut self.io).poll_read(cx, &mut read_buf) {
            Poll::Ready(Ok(())) => {
                let read = read_buf.filled().len();
                self.input.end += read;
                self.more_waiting = read == room_len || !self.short_read_drains;
                Poll::Ready(Ok(read))
            }
            Poll::Ready(Err(e)) => {
                self.input.release();
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                // Nothing to read: the scratch buffer is not held while waiting.
                self.input.release();
                Poll::Pending
            }
        }
    }

    /// Whether more bytes may be waiting after the last read: on plain TCP only if it
    /// filled all the room it had (a shorter one emptied the socket); over TLS always.
    pub fn more_waiting(&self) -> bool {
        self.more_waiting
    }

    /// Writes every frame in [`Socket::output`] and flushes the stream (TLS holds what it
    /// was given until then), within [`WRITE_TIMEOUT`].
    ///
    /// # Errors
    ///
    /// The stream's, or [`io::ErrorKind::TimedOut`] when the peer did not take the answers
    /// in time.
    pub async fn flush(&mut self) -> io::Result<()> {
        // Writing may wait: the scratch buffer is given back first.
        self.input.release();
        if self.output.is_empty() {
            return Ok(());
        }
        self.write_timed().await
    }

    /// [`Socket::flush`] of a non-empty output, apart so that the common empty case does not
    /// set up a timer's worth of future state.
    async fn write_timed(&mut self) -> io::Result<()> {
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

    #[tokio::test]
    async fn reads_share_the_scratch_buffer_and_a_partial_frame_moves_to_the_channels_own() {
        use tokio::io::AsyncWriteExt;
        let (ours, mut peer) = tokio::io::duplex(64 * 1024);
        let mut socket = Socket::new(ours, 8 * 1024, true);
        let mut bytes = Vec::new();
        encode_masked(&mut bytes, true, Opcode::Text, [1, 2, 3, 4], b"one");
        encode_masked(&mut bytes, true, Opcode::Text, [5, 6, 7, 8], b"two");
        let mut third = Vec::new();
        encode_masked(&mut third, true, Opcode::Text, [9, 9, 9, 9], b"three");
        let (head, tail) = third.split_at(4);
        bytes.extend_from_slice(head);
        peer.write_all(&bytes).await.unwrap();

        assert_eq!(socket.fill().await.unwrap(), bytes.len());
        assert!(
            socket.input.parked.is_some(),
            "read into the scratch buffer"
        );
        let mut texts = Vec::new();
        while let Next::Message(Message::Text(text)) = socket.input.next().unwrap() {
            texts.push(text.to_owned());
        }
        assert_eq!(texts, ["one", "two"]);
        // Before waiting, the scratch buffer goes back and the part of the third frame moves
        // to the channel's own buffer, where the rest of it is read.
        socket.flush().await.unwrap();
        assert!(socket.input.parked.is_none());
        assert!(SCRATCH_BUFFER.take().is_some_and(|b| b.len() == SCRATCH));
        assert_eq!(&socket.input.buf[..socket.input.end], head);
        peer.write_all(tail).await.unwrap();
        socket.fill().await.unwrap();
        assert!(socket.input.parked.is_none(), "read into its own buffer");
        assert!(matches!(
            socket.input.next().unwrap(),
            Next::Message(Message::Text("three"))
        ));
        // Nothing waits: the next read is into the scratch buffer again, and once that is
        // handled the channel holds no buffer at all.
        peer.write_all(&bytes[..bytes.len() - head.len()])
            .await
            .unwrap();
        socket.fill().await.unwrap();
        assert!(socket.input.parked.is_some());
        while let Next::Message(_) = socket.input.next().unwrap() {}
        socket.input.release();
        assert_eq!(socket.input.buf.capacity(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_a_peer_never_reads_end_the_channel_after_the_write_timeout() {
        let (ours, _peer) = tokio::io::duplex(64);
        let mut socket = Socket::new(ours, 1024, true);
        socket.output.extend_from_slice(&[0; 4096]);
        let started = Instant::now();
        let error = socket.flush().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= WRITE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn lingering_ends_when_the_listener_stops() {
        let (ours, _peer) = tokio::io::duplex(64);
        let socket = Socket::new(ours, 1024, true);
        let stop = CancellationToken::new();
        stop.cancel();
        let started = Instant::now();
        socket.linger(&stop).await;
        assert!(started.elapsed() < CLOSE_LINGER);
    }
}
