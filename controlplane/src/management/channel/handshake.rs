//! The WebSocket opening handshake of the heartbeat channel (RFC 6455 §4.2), over HTTP/1.1:
//! which requests may open a channel, and the `101 Switching Protocols` that opens one. The
//! checks of axum's `WebSocketUpgrade`, which served the channel before it had its own
//! transport, in the same order and with the same status codes; a little stricter in one
//! place: `Connection` must carry `upgrade` as a whole token (RFC 7230 §6.1), where axum
//! looked for it anywhere in the first such header.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode, Version};
use base64::Engine as _;
use sha1::{Digest, Sha1};
use thiserror::Error;

/// What RFC 6455 appends to a client's key before hashing it into the accept value.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a request cannot open a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// HTTP/2 and later (extended CONNECT) are not served here.
    #[error("a WebSocket opens over HTTP/1.1")]
    NotHttp1,
    /// Not a `GET`.
    #[error("request method must be `GET`")]
    NotGet,
    /// `Connection` does not list `upgrade`.
    #[error("Connection header did not include 'upgrade'")]
    NoConnectionUpgrade,
    /// `Upgrade` is not `websocket`.
    #[error("`Upgrade` header did not include 'websocket'")]
    NoUpgradeWebsocket,
    /// `Sec-WebSocket-Version` is not 13.
    #[error("`Sec-WebSocket-Version` header did not include '13'")]
    BadVersion,
    /// No `Sec-WebSocket-Key`.
    #[error("`Sec-WebSocket-Key` header missing")]
    NoKey,
}

/// Checks that `method`, `version` and `headers` ask to open a WebSocket; the
/// `Sec-WebSocket-Accept` value that opens it.
///
/// # Errors
///
/// The first thing missing, as [`HandshakeError`] names it.
pub fn check(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<HeaderValue, HandshakeError> {
    if version > Version::HTTP_11 {
        return Err(HandshakeError::NotHttp1);
    }
    if method != Method::GET {
        return Err(HandshakeError::NotGet);
    }
    if !lists_token(headers, header::CONNECTION, "upgrade") {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    if !is(headers, header::UPGRADE, "websocket") {
        return Err(HandshakeError::NoUpgradeWebsocket);
    }
    if !is(headers, header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(HandshakeError::BadVersion);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(HandshakeError::NoKey)?;
    Ok(accept_value(key.as_bytes()))
}

/// The `101 Switching Protocols` answer that opens the channel.
pub fn switching(accept: HeaderValue) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)).
fn accept_value(key: &[u8]) -> HeaderValue {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    let encoded = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    // Base64 is visible ASCII, which every header value may hold.
    HeaderValue::from_str(&encoded).unwrap_or(HeaderValue::from_static(""))
}

/// Whether header `name` equals `value`, ignoring ASCII case.
fn is(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// Whether header `name` (a comma-separated list, possibly over several lines) holds
/// `token`, ignoring ASCII case.
fn lists_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn the_accept_value_is_the_rfc_s_example() {
        let accept = check(&Method::GET, Version::HTTP_11, &headers(&GOOD)).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let response = switching(accept);
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers()[header::UPGRADE], "websocket");
    }

    #[test]
    fn each_missing_piece_is_named_in_order() {
        let without = |name: &str| -> Vec<(&'static str, &'static str)> {
            GOOD.iter().filter(|(n, _)| *n != name).copied().collect()
        };
        let check_headers = |pairs: &[(&'static str, &'static str)]| {
            check(&Method::GET, Version::HTTP_11, &headers(pairs))
        };
        assert_eq!(
            check(&Method::GET, Version::HTTP_2, &headers(&GOOD)),
            Err(HandshakeError::NotHttp1)
        );
        assert_eq!(
            check(&Method::POST, Version::HTTP_11, &headers(&GOOD)),
            Err(HandshakeError::NotGet)
        );
        assert_eq!(check_headers(&[]), Err(HandshakeError::NoConnectionUpgrade));
        assert_eq!(
            check_headers(&without("connection")),
            Err(HandshakeError::NoConnectionUpgrade)
        );
        let mut upgrade_only_in_name = without("connection");
        upgrade_only_in_name.push(("connection", "upgrades"));
        assert_eq!(
            check_headers(&upgrade_only_in_name),
            Err(HandshakeError::NoConnectionUpgrade)
        );
        let mut second_line = without("connection");
        second_line.extend([("connection", "keep-alive"), ("connection", " upgrade ")]);
        assert!(check_headers(&second_line).is_ok());
        assert_eq!(
            check_headers(&without("upgrade")),
            Err(HandshakeError::NoUpgradeWebsocket)
        );
        assert_eq!(
            check_headers(&without("sec-websocket-version")),
            Err(HandshakeError::BadVersion)
        );
        assert_eq!(
            check_headers(&without("sec-websocket-key")),
            Err(HandshakeError::NoKey)
        );
    }
}
