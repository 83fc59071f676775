//! Who sent a request, judged from what it carries (DESIGN §13): the credential in its
//! `Authorization` header, and whether loopback trust may apply to it.
//!
//! Pure functions of header values and the peer's address; no sockets, no state. Loopback
//! trust applies only to a request from a loopback peer that no web page of another site
//! could have sent: no `Origin` but the dashboard's own (`null` is foreign), no
//! `Sec-Fetch-Site: cross-site`, and a `Host` that names the listener by a loopback name or
//! address (a DNS-rebinding page names its own host). Content type is not a signal: a
//! `curl -d` (form content type, no `Origin`) is trusted like any local tool.

use std::net::IpAddr;

/// The credential a request presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// No `Authorization` header.
    Nothing,
    /// `Bearer <token>`.
    Bearer(&'a [u8]),
    /// `Bearer` with nothing after it.
    Empty,
    /// Another scheme, or bytes that are not a header token.
    Malformed,
}

/// Reads an `Authorization` header value. The scheme is case-insensitive (RFC 9110).
pub fn presented(authorization: Option<&[u8]>) -> Presented<'_> {
    let Some(value) = authorization else {
        return Presented::Nothing;
    };
    let value = value.trim_ascii();
    if value.is_empty() {
        return Presented::Empty;
    }
    let Some(scheme) = value.get(..6) else {
        return Presented::Malformed;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Presented::Malformed;
    }
    let rest = &value[6..];
    if !rest.is_empty() && !rest[0].is_ascii_whitespace() {
        return Presented::Malformed;
    }
    match rest.trim_ascii() {
        [] => Presented::Empty,
        token => Presented::Bearer(token),
    }
}

/// Why a request without a valid token does not act as the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untrusted {
    /// Not from loopback, or the listener does not trust loopback (bound to another
    /// address, or `--require-token`).
    NoLoopbackTrust,
    /// From loopback, but sent by a web page of another origin (or `Origin: null`).
    ForeignOrigin,
    /// From loopback, but the browser says the page is of another site.
    CrossSite,
    /// From loopback, but `Host` does not name this machine by a loopback name: a page
    /// that rebound its own name to 127.0.0.1 (DNS rebinding), or a client that did not say.
    ForeignHost,
}

impl Untrusted {
    /// True for the signs of a browser sent by another site; those are answered 403.
    pub fn is_foreign(self) -> bool {
        !matches!(self, Untrusted::NoLoopbackTrust)
    }
}

/// What a request shows about its origin, for [`loopback_trust`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals<'a> {
    /// The peer's address, if known.
    pub peer: Option<IpAddr>,
    /// `Origin`.
    pub origin: Option<&'a [u8]>,
    /// `Sec-Fetch-Site`.
    pub sec_fetch_site: Option<&'a [u8]>,
    /// `Host` (or, without one, the request target's authority).
    pub host: Option<&'a [u8]>,
}

/// Whether a request without a token may act as the operator on a listener that trusts
/// loopback clients (`listener_trusts_loopback`): `Ok` if so, else why not.
///
/// The browser checks come first, so a cross-site request from this machine is told it was
/// refused as such (403) even where loopback is not trusted at all.
///
/// # Errors
/// The reason loopback trust does not apply.
pub fn loopback_trust(
    signals: &Signals<'_>,
    listener_trusts_loopback: bool,
    dashboard_port: Option<u16>,
) -> Result<(), Untrusted> {
    let from_loopback = signals
        .peer
        .is_some_and(|ip| ip.to_canonical().is_loopback());
    if from_loopback {
        if let Some(origin) = signals.origin {
            if !is_own_origin(origin, dashboard_port) {
                return Err(Untrusted::ForeignOrigin);
            }
        }
        if signals
            .sec_fetch_site
            .is_some_and(|s| s.trim_ascii().eq_ignore_ascii_case(b"cross-site"))
        {
            return Err(Untrusted::CrossSite);
        }
        if !signals.host.is_some_and(is_loopback_host) {
            return Err(Untrusted::ForeignHost);
        }
    }
    if from_loopback && listener_trusts_loopback {
        Ok(())
    } else {
        Err(Untrusted::NoLoopbackTrust)
    }
}

/// True if `host` (a `Host` value: a name or address, with or without a port) names this
/// machine by a loopback name: `localhost`, an address in 127.0.0.0/8, or `[::1]`.
pub fn is_loopback_host(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host.trim_ascii()) else {
        return false;
    };
    split_port(host).is_some_and(|(name, _)| is_loopback_name(name))
}

fn is_loopback_name(name: &str) -> bool {
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Splits `name[:port]` (`[v6]:port` for IPv6). `None` if the port is not a number, or an
/// IPv6 address is not in brackets.
fn split_port(host: &str) -> Option<(&str, Option<u16>)> {
    if host.starts_with('[') {
        let end = host.find(']')?;
        let (name, rest) = host.split_at(end + 1);
        return match rest.strip_prefix(':') {
            None if rest.is_empty() => Some((name, None)),
            Some(port) => Some((name, Some(port.parse().ok()?))),
            None => None,
        };
    }
    match host.split_once(':') {
        None => Some((host, None)),
        Some((_, port)) if port.contains(':') => None,
        Some((name, port)) => Some((name, Some(port.parse().ok()?))),
    }
}

/// True if `origin` is the dashboard's own: `http(s)://` a loopback name, on the management
/// listener's port. `null`, another port or another host is foreign.
pub fn is_own_origin(origin: &[u8], dashboard_port: Option<u16>) -> bool {
    let Some(dashboard_port) = dashboard_port else {
        return false;
    };
    let Ok(origin) = std::str::from_utf8(origin.trim_ascii()) else {
        return false;
    };
    let (default_port, rest) = if let Some(rest) = origin.strip_prefix("http://") {
        (80, rest)
    } else if let Some(rest) = origin.strip_prefix("https://") {
        (443, rest)
    } else {
        return false;
    };
    if rest.contains('/') {
        return false;
    }
    split_port(rest).is_some_and(|(name, port)| {
        is_loopback_name(name) && port.unwrap_or(default_port) == dashboard_port
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    fn signals<'a>(
        peer: Option<IpAddr>,
        origin: Option<&'a str>,
        site: Option<&'a str>,
        host: Option<&'a str>,
    ) -> Signals<'a> {
        Signals {
            peer,
            origin: origin.map(str::as_bytes),
            sec_fetch_site: site.map(str::as_bytes),
            host: host.map(str::as_bytes),
        }
    }

    #[test]
    fn bearer_tokens_are_read_and_everything_else_named() {
        let cases: [(Option<&str>, Presented); 10] = [
            (None, Presented::Nothing),
            (Some(""), Presented::Empty),
            (Some("Bearer abc"), Presented::Bearer(b"abc")),
            (Some("bearer   abc  "), Presented::Bearer(b"abc")),
            (Some("BEARER abc"), Presented::Bearer(b"abc")),
            (Some("Bearer"), Presented::Empty),
            (Some("Bearer    "), Presented::Empty),
            (Some("Basic dXNlcjpwdw=="), Presented::Malformed),
            (Some("Bearerabc"), Presented::Malformed),
            (Some("tok"), Presented::Malformed),
        ];
        for (header, expected) in cases {
            assert_eq!(presented(header.map(str::as_bytes)), expected, "{header:?}");
        }
    }

    #[test]
    fn loopback_names_with_or_without_ports() {
        for host in [
            "localhost",
            "LOCALHOST:8083",
            "127.0.0.1",
            "127.0.0.1:8083",
            "127.9.8.7:1",
            "[::1]",
            "[::1]:8084",
        ] {
            assert!(is_loopback_host(host.as_bytes()), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8083",
            "localhost.evil.example",
            "128.0.0.1",
            "10.0.0.1:8083",
            "[::2]:80",
            "::1",
            "127.0.0.1:port",
            "127.0.0.1:99999",
            "",
        ] {
            assert!(!is_loopback_host(host.as_bytes()), "{host}");
        }
    }

    #[test]
    fn only_the_dashboards_own_origin_is_own() {
        let port = Some(8084);
        for own in [
            "http://127.0.0.1:8084",
            "http://localhost:8084",
            "http://[::1]:8084",
        ] {
            assert!(is_own_origin(own.as_bytes(), port), "{own}");
        }
        assert!(is_own_origin(b"http://localhost", Some(80)));
        for foreign in [
            "null",
            "http://evil.example",
            "http://evil.example:8084",
            "http://localhost:3000",
            "http://127.0.0.1:8083",
            "file://",
            "http://127.0.0.1:8084/path",
        ] {
            assert!(!is_own_origin(foreign.as_bytes(), port), "{foreign}");
        }
        assert!(!is_own_origin(b"http://127.0.0.1:8084", None));
    }

    #[test]
    fn local_tools_are_trusted_where_the_listener_trusts_loopback() {
        // The README's curl: no Origin, Host localhost:8083.
        let curl = signals(LOOPBACK, None, None, Some("localhost:8083"));
        assert_eq!(loopback_trust(&curl, true, Some(8084)), Ok(()));
        assert_eq!(
            loopback_trust(&curl, false, Some(8084)),
            Err(Untrusted::NoLoopbackTrust)
        );
        // The dashboard's own page.
        let page = signals(
            LOOPBACK,
            Some("http://127.0.0.1:8084"),
            Some("same-origin"),
            Some("127.0.0.1:8084"),
        );
        assert_eq!(loopback_trust(&page, true, Some(8084)), Ok(()));
        // The same from another machine.
        let remote = signals(
            Some([10, 0, 0, 9].into()),
            None,
            None,
            Some("localhost:8083"),
        );
        assert_eq!(
            loopback_trust(&remote, true, Some(8084)),
            Err(Untrusted::NoLoopbackTrust)
        );
        assert_eq!(
            loopback_trust(&signals(None, None, None, Some("localhost")), true, None),
            Err(Untrusted::NoLoopbackTrust),
            "an unknown peer is not loopback"
        );
        let mapped = signals(
            Some("::ffff:127.0.0.1".parse().unwrap()),
            None,
            None,
            Some("127.0.0.1"),
        );
        assert_eq!(loopback_trust(&mapped, true, None), Ok(()));
    }

    #[test]
    fn pages_of_other_sites_are_not_trusted_even_from_loopback() {
        let cases = [
            (
                signals(
                    LOOPBACK,
                    Some("http://evil.example"),
                    None,
                    Some("127.0.0.1:8083"),
                ),
                Untrusted::ForeignOrigin,
            ),
            (
                signals(LOOPBACK, Some("null"), None, Some("127.0.0.1:8083")),
                Untrusted::ForeignOrigin,
            ),
            (
                signals(LOOPBACK, None, Some("cross-site"), Some("localhost:8083")),
                Untrusted::CrossSite,
            ),
            (
                signals(LOOPBACK, None, None, Some("evil.example:8083")),
                Untrusted::ForeignHost,
            ),
            (signals(LOOPBACK, None, None, None), Untrusted::ForeignHost),
        ];
        for (s, why) in cases {
            assert_eq!(loopback_trust(&s, true, Some(8084)), Err(why), "{s:?}");
            assert!(why.is_foreign());
            // Still named as foreign where loopback is not trusted anyway.
            assert_eq!(loopback_trust(&s, false, Some(8084)), Err(why), "{s:?}");
        }
    }
}
