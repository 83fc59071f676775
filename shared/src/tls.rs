//! TLS between nodes (DESIGN §15): loading a node's certificate, key and the cluster CA
//! into rustls configurations (on ring, as the rest of the tree), handshakes bounded by a
//! timeout, and the node-certificate rule. Owns no listener and no client: the planes wrap
//! their sockets with [`Tls::accept`] and [`Tls::connect`].
//!
//! Listeners *request* a client certificate but do not require one: a client without one is
//! "anyone" (DESIGN §13), while one presenting a certificate that does not chain to the
//! cluster CA fails the handshake. What only nodes may do also needs [`is_node`]: a
//! certificate from the CA whose IP SAN is the peer's address. Outgoing connections verify
//! the server against the CA by its IP address.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};

/// The default of `--tls-handshake-timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a node's TLS material is (`--tls-cert`, `--tls-key`, `--tls-ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate (PEM; its chain may follow it).
    pub cert: PathBuf,
    /// The node's private key (PEM).
    pub key: PathBuf,
    /// The cluster CA's certificate (PEM).
    pub ca: PathBuf,
}

/// Why TLS cannot be set up, or a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file that is not readable PEM of the expected kind.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the material (a key that does not match its certificate, say).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The CA cannot verify client certificates.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The handshake did not finish within the timeout.
    #[error("TLS handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    /// The handshake failed (not TLS, an untrusted certificate, ...).
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
}

/// A node's TLS: what its listeners serve and how it calls other nodes.
#[derive(Clone)]
pub struct Tls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// The crypto provider: ring, which the SSM client's rustls already builds.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, e))?;
    if certs.is_empty() {
        return Err(bad(path, "no certificate in it"));
    }
    Ok(certs)
}

/// A root store holding the certificates of `ca`.
///
/// # Errors
/// The file is not PEM certificates, or one is not a usable trust anchor.
pub fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca)? {
        roots.add(cert).map_err(|e| bad(ca, e))?;
    }
    Ok(roots)
}

impl Tls {
    /// Loads `files`: the server side requests (not requires) client certificates from the
    /// CA; the client side trusts only the CA and presents the node's certificate.
    ///
    /// # Errors
    /// A missing or malformed file, or a key that does not match the certificate.
    pub fn load(files: &TlsFiles, handshake_timeout: Duration) -> Result<Tls, TlsError> {
        let chain = certificates(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad(&files.key, e))?;
        let roots = Arc::new(roots(&files.ca)?);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .allow_unauthenticated()
            .build()?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| bad(&files.ca, e))?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain, key)?;
        Ok(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
            handshake_timeout,
        })
    }

    /// The listeners' configuration.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The outgoing connections' configuration (for an HTTP client, say).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// How long a handshake may take.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The server side of a handshake on an accepted connection, within the timeout: a
    /// client that sends nothing, or plaintext, gets nothing and is dropped.
    ///
    /// # Errors
    /// [`TlsError::HandshakeTimeout`] or [`TlsError::Handshake`].
    pub async fn accept<S>(&self, stream: S) -> Result<tokio_rustls::server::TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server.clone());
        tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream))
            .await
            .map_err(|_| TlsError::HandshakeTimeout(self.handshake_timeout))?
            .map_err(TlsError::Handshake)
    }

    /// The client side of a handshake with the node at `ip`, within the timeout, checking
    /// that its certificate chains to the CA and names `ip`.
    ///
    /// # Errors
    /// [`TlsError::HandshakeTimeout`] or [`TlsError::Handshake`].
    pub async fn connect<S>(
        &self,
        ip: IpAddr,
        stream: S,
    ) -> Result<tokio_rustls::client::TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let connector = tokio_rustls::TlsConnector::from(self.client.clone());
        let name = ServerName::IpAddress(ip.into());
        tokio::time::timeout(self.handshake_timeout, connector.connect(name, stream))
            .await
            .map_err(|_| TlsError::HandshakeTimeout(self.handshake_timeout))?
            .map_err(TlsError::Handshake)
    }
}

/// `https` with TLS, `http` without: the scheme of URLs to other nodes' HTTP planes.
pub fn scheme(tls: Option<&Tls>) -> &'static str {
    if tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// An HTTP client builder for calls to other nodes (and for tools and tests): over TLS with
/// `tls`'s configuration (trusting only the cluster CA, presenting the node's certificate),
/// else plaintext. No proxy: nodes talk directly.
///
/// reqwest is built without a crypto provider of its own (its default would pull aws-lc), so
/// every client must be given a configuration; without `tls` it gets one on ring that trusts
/// nothing, so `https` URLs fail while `http` works. Also installs ring as the process's
/// default provider, so a client built elsewhere with `reqwest::Client::builder()` does not
/// panic for want of one.
pub fn http_client(tls: Option<&Tls>) -> reqwest::ClientBuilder {
    // Err only means a default is already installed, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match tls {
        Some(tls) => tls.client_config(),
        None => plain_client_config(),
    };
    reqwest::Client::builder()
        .no_proxy()
        .use_preconfigured_tls((*config).clone())
}

/// A client configuration that trusts no server: for clients that only speak plaintext.
fn plain_client_config() -> Arc<ClientConfig> {
    static PLAIN: std::sync::OnceLock<Arc<ClientConfig>> = std::sync::OnceLock::new();
    PLAIN
        .get_or_init(|| {
            let config = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.with_root_certificates(RootCertStore::empty())
                        .with_no_client_auth()
                });
            // The ring provider supports the default versions, so this cannot fail; if it
            // ever did, an empty-provider config still serves plaintext.
            Arc::new(config.unwrap_or_else(|_| {
                ClientConfig::builder()
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth()
            }))
        })
        .clone()
}

/// Whether a peer at `peer_ip` is a node: it presented a certificate (which the handshake
/// checked chains to the cluster CA) whose IP SAN is `peer_ip`. A client with no
/// certificate, or a node's certificate used from another address, is not.
pub fn is_node(peer_certificates: Option<&[CertificateDer<'_>]>, peer_ip: IpAddr) -> bool {
    let Some(end_entity) = peer_certificates.and_then(<[_]>::first) else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(end_entity) else {
        return false;
    };
    // A v4 peer reached over a v6 socket shows as ::ffff:a.b.c.d.
    let ip = match peer_ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer_ip, IpAddr::V4),
        v4 => v4,
    };
    cert.verify_is_valid_for_subject_name(&ServerName::IpAddress(ip.into()))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose, SanType,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A CA and a way to certify addresses with it, written into a directory.
    struct Ca {
        dir: tempfile::TempDir,
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    impl Ca {
        fn new() -> Ca {
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let issuer =
                CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("ca.pem"), issuer.pem()).unwrap();
            Ca { dir, issuer }
        }

        /// Files for a node certified for `ip`, named `name`.
        fn node(&self, name: &str, ip: &str) -> TlsFiles {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![SanType::IpAddress(ip.parse().unwrap())];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            let files = TlsFiles {
                cert: self.dir.path().join(format!("{name}.pem")),
                key: self.dir.path().join(format!("{name}-key.pem")),
                ca: self.dir.path().join("ca.pem"),
            };
            std::fs::write(&files.cert, cert.pem()).unwrap();
            std::fs::write(&files.key, key.serialize_pem()).unwrap();
            files
        }
    }

    const TIMEOUT: Duration = Duration::from_millis(500);

    /// A TLS listener on loopback that reports, per connection, whether the peer is a node
    /// (by the loopback rule and by another address) or why the handshake failed.
    async fn server(
        tls: Tls,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Result<(bool, bool), String>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    match tls.accept(stream).await {
                        Ok(mut stream) => {
                            let certs = stream.get_ref().1.peer_certificates();
                            let here = is_node(certs, peer.ip());
                            let elsewhere = is_node(certs, "198.18.0.99".parse().unwrap());
                            let _ = tx.send(Ok((here, elsewhere)));
                            let _ = stream.write_all(b"hello\n").await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn a_node_certificate_for_the_peer_address_makes_a_node_and_nothing_else_does() {
        let ca = Ca::new();
        let tls = Tls::load(&ca.node("server", "127.0.0.1"), TIMEOUT).unwrap();
        let (addr, mut seen) = server(tls).await;

        // A node: verified both ways, and a node only from its own address.
        let node = Tls::load(&ca.node("node", "127.0.0.1"), TIMEOUT).unwrap();
        let mut stream = node
            .connect(addr.ip(), TcpStream::connect(addr).await.unwrap())
            .await
            .unwrap();
        let mut line = [0u8; 6];
        stream.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"hello\n");
        assert_eq!(seen.recv().await.unwrap(), Ok((true, false)));

        // A human trusting the CA with no certificate: served, but not a node.
        let anonymous = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&ca.dir.path().join("ca.pem")).unwrap())
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(anonymous));
        let mut stream = connector
            .connect(
                ServerName::IpAddress(addr.ip().into()),
                TcpStream::connect(addr).await.unwrap(),
            )
            .await
            .unwrap();
        stream.read_exact(&mut line).await.unwrap();
        assert_eq!(seen.recv().await.unwrap(), Ok((false, false)));

        // A node certified for another address is served, and is not a node here.
        let moved = Tls::load(&ca.node("moved", "198.18.0.5"), TIMEOUT).unwrap();
        let mut stream = moved
            .connect(addr.ip(), TcpStream::connect(addr).await.unwrap())
            .await
            .unwrap();
        stream.read_exact(&mut line).await.unwrap();
        assert_eq!(seen.recv().await.unwrap(), Ok((false, false)));
    }

    #[tokio::test]
    async fn another_cas_certificate_fails_the_handshake_both_ways() {
        let ca = Ca::new();
        let tls = Tls::load(&ca.node("server", "127.0.0.1"), TIMEOUT).unwrap();
        let (addr, mut seen) = server(tls).await;
        let other_ca = Ca::new();
        let stranger = Tls::load(&other_ca.node("stranger", "127.0.0.1"), TIMEOUT).unwrap();
        let result = stranger
            .connect(addr.ip(), TcpStream::connect(addr).await.unwrap())
            .await;
        // The stranger does not trust our server's certificate either.
        assert!(matches!(result, Err(TlsError::Handshake(_))), "{result:?}");
        // And a stranger that trusted us would still be refused by the server.
        let mixed = TlsFiles {
            ca: ca.dir.path().join("ca.pem"),
            ..other_ca.node("mixed", "127.0.0.1")
        };
        let mixed = Tls::load(&mixed, TIMEOUT).unwrap();
        let outcome = async {
            let mut stream = mixed
                .connect(addr.ip(), TcpStream::connect(addr).await.unwrap())
                .await?;
            let mut line = [0u8; 6];
            stream
                .read_exact(&mut line)
                .await
                .map_err(TlsError::Handshake)?;
            Ok::<_, TlsError>(())
        }
        .await;
        assert!(outcome.is_err());
        let mut refusals = 0;
        while refusals < 2 {
            if seen.recv().await.unwrap().is_err() {
                refusals += 1;
            }
        }
    }

    #[tokio::test]
    async fn the_server_must_be_certified_for_the_address_called() {
        let ca = Ca::new();
        let tls = Tls::load(&ca.node("server", "198.18.0.7"), TIMEOUT).unwrap();
        let (addr, _seen) = server(tls).await;
        let node = Tls::load(&ca.node("node", "127.0.0.1"), TIMEOUT).unwrap();
        let result = node
            .connect(addr.ip(), TcpStream::connect(addr).await.unwrap())
            .await;
        assert!(matches!(result, Err(TlsError::Handshake(_))), "{result:?}");
    }

    #[tokio::test]
    async fn plaintext_and_silent_clients_get_nothing_and_time_out() {
        let ca = Ca::new();
        let tls = Tls::load(&ca.node("server", "127.0.0.1"), TIMEOUT).unwrap();
        let (addr, mut seen) = server(tls).await;

        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain.write_all(b"PING\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf))
            .await
            .expect("the server closed the plaintext connection");
        assert!(!String::from_utf8_lossy(&buf).contains("PONG"));
        let why = seen.recv().await.unwrap().unwrap_err();
        assert!(why.contains("handshake"), "{why}");

        let silent = TcpStream::connect(addr).await.unwrap();
        let why = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("the silent client was cut by the handshake timeout")
            .unwrap()
            .unwrap_err();
        assert!(why.contains("not finished within"), "{why}");
        drop(silent);
    }

    #[test]
    fn bad_files_are_named() {
        let ca = Ca::new();
        let mut files = ca.node("n", "127.0.0.1");
        files.key = ca.dir.path().join("missing.pem");
        let e = Tls::load(&files, TIMEOUT).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        files.key = files.ca.clone();
        assert!(Tls::load(&files, TIMEOUT).is_err());
    }
}
