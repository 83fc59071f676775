//! [`ServerStream`]: the byte stream of a served connection, plain TCP or TLS over it, in a
//! form that can leave the runtime it was accepted on for the node lane and resume there.
//!
//! A tokio socket belongs to the reactor of the runtime that registered it, so a connection
//! moves by taking its socket out of that reactor (`into_std`) and registering it again on
//! the lane. A TLS session cannot be taken apart and rebuilt, so under TLS the session stays
//! whole and only the TCP socket beneath it, a [`Movable`], changes reactor.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A served connection's stream. An enum, not a boxed trait object: PING's path stays
/// statically dispatched.
pub(crate) enum ServerStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<Movable>>),
}

/// A [`ServerStream`] out of every reactor, on its way to another runtime.
pub(crate) enum Parked {
    Plain(std::net::TcpStream),
    Tls(Box<TlsStream<Movable>>),
}

impl ServerStream {
    /// Takes the stream out of this runtime's reactor.
    pub(crate) fn park(self) -> io::Result<Parked> {
        match self {
            ServerStream::Plain(tcp) => Ok(Parked::Plain(tcp.into_std()?)),
            ServerStream::Tls(mut tls) => {
                tls.get_mut().0.detach()?;
                Ok(Parked::Tls(tls))
            }
        }
    }
}

impl Parked {
    /// The stream again, registered with the reactor of the runtime this is called on.
    pub(crate) fn resume(self) -> io::Result<ServerStream> {
        match self {
            Parked::Plain(tcp) => Ok(ServerStream::Plain(TcpStream::from_std(tcp)?)),
            Parked::Tls(mut tls) => {
                tls.get_mut().0.attach()?;
                Ok(ServerStream::Tls(tls))
            }
        }
    }
}

/// A TCP socket that can be taken out of its reactor and put back in another while a TLS
/// session wraps it. Detached, it answers every call with `NotConnected`.
pub(crate) struct Movable {
    live: Option<TcpStream>,
    parked: Option<std::net::TcpStream>,
}

impl Movable {
    pub(crate) fn new(tcp: TcpStream) -> Self {
        Movable {
            live: Some(tcp),
            parked: None,
        }
    }

    fn detach(&mut self) -> io::Result<()> {
        let tcp = self.live.take().ok_or_else(not_connected)?;
        self.parked = Some(tcp.into_std()?);
        Ok(())
    }

    fn attach(&mut self) -> io::Result<()> {
        let tcp = self.parked.take().ok_or_else(not_connected)?;
        self.live = Some(TcpStream::from_std(tcp)?);
        Ok(())
    }

    fn live(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.live.as_mut().map(Pin::new).ok_or_else(not_connected)
    }
}

fn not_connected() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket is between runtimes")
}

impl AsyncRead for Movable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().live() {
            Ok(tcp) => tcp.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Movable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().live() {
            Ok(tcp) => tcp.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().live() {
            Ok(tcp) => tcp.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().live() {
            Ok(tcp) => tcp.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().live() {
            Ok(tcp) => tcp.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            ServerStream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            ServerStream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            ServerStream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            ServerStream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
