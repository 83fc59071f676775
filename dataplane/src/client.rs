//! [`Client`]: a data-plane client speaking the binary framing (tests, benches, nodes).

use bytes::BytesMut;
use codec::{CodecError, ColonyCodec, Decoded, Framing, Limits, Message};
use shared::secret::ClusterSecret;
use shared::tls::{Tls, TlsError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::{Decoder, Encoder};

/// A data-plane byte stream: a TCP socket, or TLS over one.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for S {}

/// A boxed [`Stream`], so plaintext and TLS connections are the same type.
pub type Socket = Box<dyn Stream>;

/// The error for an answer that is not the one a step of an exchange expects.
fn refused(answer: Message) -> ClientError {
    match answer {
        Message::Error { code, message } => ClientError::Refused { code, message },
        other => ClientError::Unexpected(Box::new(other)),
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, reading or writing failed.
    #[error("data plane I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed or timed out.
    #[error("data plane TLS: {0}")]
    Tls(#[from] TlsError),
    /// The server's bytes did not decode, or a request did not encode.
    #[error("data plane framing: {0}")]
    Codec(#[from] CodecError),
    /// The server closed the connection before answering.
    #[error("server closed the connection")]
    Closed,
    /// The server answered with an error frame.
    #[error("server refused: {code}: {message}")]
    Refused {
        /// The error frame's code.
        code: String,
        /// The error frame's message.
        message: String,
    },
    /// The server answered with a message that does not answer the request.
    #[error("server refused: unexpected answer {0:?}")]
    Unexpected(Box<Message>),
}

/// A binary-framing connection to a data plane.
pub struct Client {
    socket: Socket,
    codec: ColonyCodec,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Connects with the default limits.
    ///
    /// # Errors
    /// [`ClientError::Io`] if the connection fails.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Self, ClientError> {
        Client::connect_with(addr, Limits::default()).await
    }

    /// Connects with explicit limits (they bound the answers this client accepts).
    ///
    /// # Errors
    /// [`ClientError::Io`] if the connection fails.
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        limits: Limits,
    ) -> Result<Self, ClientError> {
        Client::connect_tls(addr, limits, None).await
    }

    /// Connects with explicit limits, over TLS when `tls` is given: the server must present
    /// a certificate from the cluster CA naming the address connected to.
    ///
    /// # Errors
    /// [`ClientError::Io`] if the connection fails, [`ClientError::Tls`] if the handshake
    /// does.
    pub async fn connect_tls(
        addr: impl ToSocketAddrs,
        limits: Limits,
        tls: Option<&Tls>,
    ) -> Result<Self, ClientError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let socket: Socket = match tls {
            Some(tls) => Box::new(tls.connect(tcp.peer_addr()?.ip(), tcp).await?),
            None => Box::new(tcp),
        };
        Ok(Client::from_stream(socket, limits))
    }

    /// A client on a connection made elsewhere (the load generators make theirs in one
    /// place, `shared::loadgen::connect`).
    pub fn from_stream(socket: Socket, limits: Limits) -> Self {
        Client {
            socket,
            codec: ColonyCodec::with_framing(limits, Framing::Binary),
            read_buf: BytesMut::with_capacity(8 * 1024),
            write_buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// Queues a request without sending it; [`Client::flush`] sends the queue.
    ///
    /// # Errors
    /// [`ClientError::Codec`] if the message exceeds the frame limit.
    pub fn queue(&mut self, message: &Message) -> Result<(), ClientError> {
        self.codec.encode(message, &mut self.write_buf)?;
        Ok(())
    }

    /// Sends every queued request.
    ///
    /// # Errors
    /// [`ClientError::Io`] if the write fails.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.socket.write_all(&self.write_buf).await?;
        // TLS buffers what it encrypts; TCP's flush does nothing.
        self.socket.flush().await?;
        self.write_buf.clear();
        Ok(())
    }

    /// Waits for the next message from the server.
    ///
    /// # Errors
    /// [`ClientError::Closed`] at end of stream, or an I/O or framing failure.
    pub async fn recv(&mut self) -> Result<Message, ClientError> {
        loop {
            if let Some(Decoded::Message(message, _)) = self.codec.decode(&mut self.read_buf)? {
                return Ok(message);
            }
            if self.socket.read_buf(&mut self.read_buf).await? == 0 {
                return match self.codec.decode_eof(&mut self.read_buf)? {
                    Some(Decoded::Message(message, _)) => Ok(message),
                    _ => Err(ClientError::Closed),
                };
            }
        }
    }

    /// Sends one request and waits for its answer.
    ///
    /// # Errors
    /// As [`Client::queue`], [`Client::flush`] and [`Client::recv`].
    pub async fn request(&mut self, message: &Message) -> Result<Message, ClientError> {
        self.queue(message)?;
        self.flush().await?;
        self.recv().await
    }

    /// Proves this node holds the cluster secret (HELLO, challenge, AUTH), so the server
    /// accepts state-changing messages on this connection. Returns the server's instance id.
    ///
    /// # Errors
    /// [`ClientError::Refused`] if the server refuses (wrong secret, no secret configured),
    /// [`ClientError::Unexpected`] if it answers out of turn.
    pub async fn authenticate(
        &mut self,
        instance_id: &str,
        secret: &ClusterSecret,
    ) -> Result<String, ClientError> {
        let hello = Message::Hello {
            instance_id: instance_id.to_owned(),
        };
        let nonce = match self.request(&hello).await? {
            Message::Challenge { nonce } => nonce,
            other => return Err(refused(other)),
        };
        let auth = Message::Auth {
            instance_id: instance_id.to_owned(),
            key_id: secret.key_id().to_owned(),
            mac: shared::hello::sign(secret, &nonce, instance_id),
        };
        match self.request(&auth).await? {
            Message::Welcome { instance_id } => Ok(instance_id),
            other => Err(refused(other)),
        }
    }

    /// The socket, the bytes read but not yet decoded, and the codec, for a caller that
    /// reads and writes from separate tasks.
    pub fn into_parts(self) -> (Socket, BytesMut, ColonyCodec) {
        (self.socket, self.read_buf, self.codec)
    }

    /// Sends raw bytes as they are (for tests of malformed input).
    ///
    /// # Errors
    /// [`ClientError::Io`] if the write fails.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.socket.write_all(bytes).await?;
        self.socket.flush().await?;
        Ok(())
    }
}
