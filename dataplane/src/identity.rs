//! [`Identity`]: who this node is on the data plane. Both directions of node-to-node
//! authentication use it: the server answers HELLO with it, peer links and the coordinator's
//! client prove it, and its TLS material (when configured) wraps both directions' sockets.

use std::sync::Arc;

use shared::secret::ClusterSecret;
use shared::tls::Tls;

/// Who this node is on the data plane: the id it authenticates as and the cluster secret.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Instance id (`coordinator`, `backend_9000`, …).
    pub instance_id: String,
    /// The cluster secret, for HELLO in both directions.
    pub secret: Arc<ClusterSecret>,
    /// The node's TLS (`--tls-*`): the data plane then serves only TLS, HELLO needs a node
    /// certificate, and peer links and the coordinator's client connect over TLS.
    pub tls: Option<Tls>,
}
