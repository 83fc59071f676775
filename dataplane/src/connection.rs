//! One client connection: read bytes → decode → dispatch → encode → write.
//!
//! The connection owns both buffers, so nothing above it sees bytes. It answers every request
//! decodable from what has arrived, then writes all the answers at once: a pipelined burst
//! costs one write, and a lone request is answered as soon as it is complete.

use std::sync::Arc;

use bytes::BytesMut;
use codec::{CodecError, ColonyCodec, Decoded, Message, Reply};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::client::Socket;
use crate::cmd::{self, Answer, Deferred, Session};
use crate::state::Shared;

/// Initial capacity of each buffer; they grow up to the codec limits when needed.
const BUFFER_CAPACITY: usize = 8 * 1024;

pub(crate) struct Connection {
    socket: Socket,
    codec: ColonyCodec,
    read_buf: BytesMut,
    write_buf: BytesMut,
    shared: Arc<Shared>,
    session: Session,
}

/// Where answering the buffered requests stopped.
enum Step {
    /// Everything buffered is answered.
    Drained,
    /// This request's answer comes later; nothing after it is answered before it.
    Deferred(Deferred, codec::Style),
    /// The last answer ends the connection.
    Close,
}

/// Why a connection ended, for the log.
#[derive(Debug)]
enum End {
    PeerClosed,
    Shutdown,
    Idle,
    Framing(CodecError),
    Io(std::io::Error),
    Refused,
}

impl Connection {
    /// A connection on `socket`; `not_a_node` when TLS showed the peer holds no node
    /// certificate for its address, so it may not HELLO.
    pub(crate) fn new(socket: Socket, shared: Arc<Shared>, not_a_node: bool) -> Self {
        let mut session = Session::new(&shared);
        session.not_a_node = not_a_node;
        Connection {
            socket,
            codec: ColonyCodec::new(shared.config.limits),
            read_buf: BytesMut::with_capacity(BUFFER_CAPACITY),
            write_buf: BytesMut::with_capacity(BUFFER_CAPACITY),
            session,
            shared,
        }
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let end = self.serve(&shutdown).await;
        match &end {
            End::PeerClosed | End::Shutdown => debug!(reason = ?end, "connection closed"),
            End::Idle => debug!("connection closed: idle timeout"),
            End::Framing(e) => warn!(error = %e, "connection closed: framing error"),
            End::Io(e) => debug!(error = %e, "connection closed: I/O error"),
            End::Refused => debug!("connection closed: authentication failed"),
        }
    }

    async fn serve(&mut self, shutdown: &CancellationToken) -> End {
        let idle = self.shared.config.idle_timeout;
        // One timer for the connection's life, re-armed only when it fires early: touching the
        // timer wheel on every request would cost more than answering a PING.
        let mut last_request = Instant::now();
        let idle_timer = tokio::time::sleep(idle);
        tokio::pin!(idle_timer);
        // Likewise one registration with the shutdown token, not one per request.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            if let Some(end) = self.drain(false, shutdown).await {
                return end;
            }
            let read = tokio::select! {
                biased;
                _ = &mut cancelled => return End::Shutdown,
                read = self.socket.read_buf(&mut self.read_buf) => read,
                _ = &mut idle_timer => {
                    if last_request.elapsed() < idle {
                        idle_timer.as_mut().reset(last_request + idle);
                        continue;
                    }
                    let message = Message::error(
                        "idle_timeout",
                        format!("no complete request for {idle:?}; closing"),
                    );
                    self.send_unsolicited(&message).await;
                    return End::Idle;
                }
            };
            match read {
                Err(e) => return End::Io(e),
                Ok(0) => {
                    return self.drain(true, shutdown).await.unwrap_or(End::PeerClosed);
                }
                Ok(_) => last_request = Instant::now(),
            }
        }
    }

    /// Answers everything buffered (waiting out deferred answers in order) and flushes.
    /// `Some` means the connection must end.
    async fn drain(&mut self, eof: bool, shutdown: &CancellationToken) -> Option<End> {
        let idle = self.shared.config.idle_timeout;
        loop {
            let step = match self.answer_buffered(eof) {
                Ok(step) => step,
                Err(e) => return Some(self.fail(e).await),
            };
            if let Err(e) = self.flush(idle).await {
                return Some(End::Io(e));
            }
            match step {
                Step::Drained => return None,
                Step::Close => {
                    let _ = self.socket.shutdown().await;
                    return Some(End::Refused);
                }
                Step::Deferred(answer, style) => {
                    let message = tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return Some(End::Shutdown),
                        message = answer => message,
                    };
                    self.encode_answer(&message, style, &mut 0);
                    self.shared.stats.add(0, 1, 0);
                }
            }
        }
    }

    fn encode_answer(&mut self, answer: &Message, style: codec::Style, errors: &mut u64) {
        if let Err(e) = self.codec.encode(
            Reply {
                message: answer,
                style,
            },
            &mut self.write_buf,
        ) {
            // The answer itself is too big for a frame: say so instead.
            *errors += 1;
            let message = Message::error("internal", format!("cannot send the answer: {e}"));
            let _ = self.codec.encode(
                Reply {
                    message: &message,
                    style,
                },
                &mut self.write_buf,
            );
        }
    }

    /// Answers every complete request in the read buffer (all of it at EOF), appending the
    /// answers to the write buffer, until a request must be answered later or closes.
    fn answer_buffered(&mut self, eof: bool) -> Result<Step, CodecError> {
        let (mut frames_in, mut frames_out, mut errors) = (0, 0, 0);
        let result = loop {
            let decoded = if eof {
                self.codec.decode_eof(&mut self.read_buf)
            } else {
                self.codec.decode(&mut self.read_buf)
            };
            let (answer, style) = match decoded {
                Ok(Some(Decoded::Message(request, style))) => {
                    if matches!(request, Message::Stats) {
                        // Let STATS see this batch's traffic so far, not just earlier batches.
                        self.shared.stats.add(frames_in, frames_out, errors);
                        (frames_in, frames_out, errors) = (0, 0, 0);
                    }
                    (
                        cmd::dispatch(request, &self.shared, &mut self.session),
                        style,
                    )
                }
                Ok(Some(Decoded::Invalid(e))) => {
                    (Answer::Now(e.to_message()), self.codec.error_style())
                }
                Ok(None) => break Ok(Step::Drained),
                Err(e) => break Err(e),
            };
            frames_in += 1;
            let (message, close) = match answer {
                Answer::Now(m) => (m, false),
                Answer::Close(m) => (m, true),
                Answer::Quiet(_) if style == codec::Style::Binary => continue,
                Answer::Quiet(m) => (m, false),
                Answer::Later(deferred) => break Ok(Step::Deferred(deferred, style)),
            };
            if matches!(message, Message::Error { .. }) {
                errors += 1;
            }
            self.encode_answer(&message, style, &mut errors);
            frames_out += 1;
            if close {
                break Ok(Step::Close);
            }
        };
        if result.is_err() {
            errors += 1;
        }
        self.shared.stats.add(frames_in, frames_out, errors);
        result
    }

    async fn flush(&mut self, limit: std::time::Duration) -> std::io::Result<()> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        // Usually the socket takes it all at once, without arming a timer: one attempt that
        // does not wait (and a flush, which sends what TLS buffered; a no-op on TCP).
        {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let mut socket = std::pin::Pin::new(&mut self.socket);
            match socket.as_mut().poll_write(&mut cx, &self.write_buf) {
                std::task::Poll::Ready(Ok(n)) => {
                    let _ = self.write_buf.split_to(n);
                }
                std::task::Poll::Ready(Err(e)) => return Err(e),
                std::task::Poll::Pending => {}
            }
            if self.write_buf.is_empty() {
                if let std::task::Poll::Ready(result) = socket.poll_flush(&mut cx) {
                    return result;
                }
            }
        }
        // A peer that stops reading must not pin this task forever.
        let rest = async {
            self.socket.write_all(&self.write_buf).await?;
            self.socket.flush().await
        };
        match tokio::time::timeout(limit, rest).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "peer stopped reading",
                ))
            }
        }
        self.write_buf.clear();
        Ok(())
    }

    /// Sends the answers so far plus an error for the framing failure, then ends.
    async fn fail(&mut self, error: CodecError) -> End {
        self.send_unsolicited(&error.to_message()).await;
        End::Framing(error)
    }

    /// Best effort: flush what is pending plus `message`, then shut the write side.
    async fn send_unsolicited(&mut self, message: &Message) {
        let style = self.codec.error_style();
        if self
            .codec
            .encode(Reply { message, style }, &mut self.write_buf)
            .is_ok()
        {
            let limit = std::time::Duration::from_secs(1);
            let _ = self.flush(limit).await;
        }
        let _ = self.socket.shutdown().await;
    }
}
