//! [`NodeAddress`]: where a node's three listeners can be reached.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The advertised address of a node: one IP and the three listener ports.
///
/// Its JSON form is exactly
/// `{"ip":"127.0.0.1","internal_port":8082,"http_port":8083,"mgmt_port":8084}` (DESIGN §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAddress {
    /// The IP other nodes should use.
    pub ip: IpAddr,
    /// The framed TCP data plane.
    pub internal_port: u16,
    /// The HTTP control plane.
    pub http_port: u16,
    /// The HTTP management port.
    pub mgmt_port: u16,
}

impl NodeAddress {
    /// Builds an address from its parts.
    pub fn new(ip: IpAddr, internal_port: u16, http_port: u16, mgmt_port: u16) -> Self {
        NodeAddress {
            ip,
            internal_port,
            http_port,
            mgmt_port,
        }
    }

    /// `ip:internal_port`, the data plane.
    pub fn to_internal_address(&self) -> String {
        join(self.ip, self.internal_port)
    }

    /// `ip:http_port`, the control plane.
    pub fn to_http_address(&self) -> String {
        join(self.ip, self.http_port)
    }

    /// `ip:mgmt_port`, the management port.
    pub fn to_mgmt_address(&self) -> String {
        join(self.ip, self.mgmt_port)
    }

    /// True when both name the same data-plane endpoint (IP and internal port); this is how
    /// a node recognises itself in a list.
    pub fn same_endpoint(&self, other: &NodeAddress) -> bool {
        self.ip == other.ip && self.internal_port == other.internal_port
    }
}

/// `ip:port`, with brackets around an IPv6 address so the result parses as a socket address.
fn join(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

impl std::fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (internal), {} (http), {} (mgmt)",
            self.to_internal_address(),
            self.to_http_address(),
            self.to_mgmt_address()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> NodeAddress {
        NodeAddress::new([127, 0, 0, 1].into(), 8082, 8083, 8084)
    }

    #[test]
    fn json_form_is_exact() {
        let json = serde_json::to_string(&local()).unwrap();
        assert_eq!(
            json,
            r#"{"ip":"127.0.0.1","internal_port":8082,"http_port":8083,"mgmt_port":8084}"#
        );
        assert_eq!(serde_json::from_str::<NodeAddress>(&json).unwrap(), local());
    }

    #[test]
    fn helpers_join_ip_and_port() {
        let a = local();
        assert_eq!(a.to_internal_address(), "127.0.0.1:8082");
        assert_eq!(a.to_http_address(), "127.0.0.1:8083");
        assert_eq!(a.to_mgmt_address(), "127.0.0.1:8084");
        let v6 = NodeAddress::new("::1".parse().unwrap(), 1, 2, 3);
        assert_eq!(v6.to_http_address(), "[::1]:2");
    }

    #[test]
    fn bad_json_is_refused() {
        for bad in [
            r#"{"ip":"127.0.0.1","internal_port":8082,"http_port":8083}"#,
            r#"{"ip":"nope","internal_port":1,"http_port":2,"mgmt_port":3}"#,
            r#"{"ip":"127.0.0.1","internal_port":70000,"http_port":2,"mgmt_port":3}"#,
            r#"{"ip":"127.0.0.1","internal_port":"1","http_port":2,"mgmt_port":3}"#,
        ] {
            assert!(serde_json::from_str::<NodeAddress>(bad).is_err(), "{bad}");
        }
    }
}
