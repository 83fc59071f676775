//! One client connection: read bytes → decode → dispatch → encode → write.
//!
//! The connection owns both buffers, so nothing above it sees bytes. It answers every request
//! decodable from what has arrived, then writes all the answers at once: a pipelined burst
//! costs one write, and a lone request is answered as soon as it is complete.

use std::sync::Arc;

use bytes::BytesMut;
use codec::{CodecError, ColonyCodec, Decoded, Message, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::cmd;
use crate::server::Shared;

/// Initial capacity of each buffer; they grow up to the codec limits when needed.
const BUFFER_CAPACITY: usize = 8 * 1024;

pub(crate) struct Connection {
    socket: TcpStream,
    codec: ColonyCodec,
    read_buf: BytesMut,
    write_buf: BytesMut,
    shared: Arc<Shared>,
}

/// Why a connection ended, for the log.
#[derive(Debug)]
enum End {
    PeerClosed,
    Shutdown,
    Idle,
    Framing(CodecError),
    Io(std::io::Error),
}

impl Connection {
    pub(crate) fn new(socket: TcpStream, shared: Arc<Shared>) -> Self {
        Connection {
            socket,
            codec: ColonyCodec::new(shared.config.limits),
            read_buf: BytesMut::with_capacity(BUFFER_CAPACITY),
            write_buf: BytesMut::with_capacity(BUFFER_CAPACITY),
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
        }
    }

    async fn serve(&mut self, shutdown: &CancellationToken) -> End {
        let idle = self.shared.config.idle_timeout;
        loop {
            if let Err(e) = self.answer_buffered(false) {
                return self.fail(e).await;
            }
            if let Err(e) = self.flush(idle).await {
                return End::Io(e);
            }
            let read = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Shutdown,
                read = tokio::time::timeout(idle, self.socket.read_buf(&mut self.read_buf)) => read,
            };
            match read {
                Err(_elapsed) => {
                    let message = Message::error(
                        "idle_timeout",
                        format!("no complete request for {idle:?}; closing"),
                    );
                    self.send_unsolicited(&message).await;
                    return End::Idle;
                }
                Ok(Err(e)) => return End::Io(e),
                Ok(Ok(0)) => {
                    return match self.answer_buffered(true) {
                        Ok(()) => match self.flush(idle).await {
                            Ok(()) => End::PeerClosed,
                            Err(e) => End::Io(e),
                        },
                        Err(e) => self.fail(e).await,
                    };
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Answers every complete request in the read buffer (all of it at EOF), appending the
    /// answers to the write buffer.
    fn answer_buffered(&mut self, eof: bool) -> Result<(), CodecError> {
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
                    (cmd::dispatch(request, &self.shared), style)
                }
                Ok(Some(Decoded::Invalid(e))) => (e.to_message(), self.codec.error_style()),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            frames_in += 1;
            if matches!(answer, Message::Error { .. }) {
                errors += 1;
            }
            let reply = Reply {
                message: &answer,
                style,
            };
            if let Err(e) = self.codec.encode(reply, &mut self.write_buf) {
                // The answer itself is too big for a frame: say so instead.
                errors += 1;
                let message = Message::error("internal", format!("cannot send the answer: {e}"));
                let fallback = Reply {
                    message: &message,
                    style,
                };
                if self.codec.encode(fallback, &mut self.write_buf).is_err() {
                    break Err(e);
                }
            }
            frames_out += 1;
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
        // A peer that stops reading must not pin this task forever.
        match tokio::time::timeout(limit, self.socket.write_all(&self.write_buf)).await {
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
