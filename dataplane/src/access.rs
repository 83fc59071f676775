//! [`ReadAccess`]: who may read on the data plane without authenticating (DESIGN §13), and
//! where its refusals are reported.
//!
//! By default anyone may `PING`, `HELP`, `STATS`, `SHARDS` and `SHARD`; only state changes
//! need a node (HELLO/AUTH). With `--protect-reads` a connection is answered nothing but
//! `PING` (and the authentication commands) until it authenticates as a node, or as the
//! operator with `TOKEN <operator token>`. The check is one `bool` of the connection's
//! session, read after `PING` is dispatched, so `PING` costs nothing more.

use std::fmt;
use std::sync::{Arc, OnceLock};

use shared::operator::OperatorToken;

/// Read access to one data-plane server.
#[derive(Debug, Clone, Default)]
pub struct ReadAccess {
    /// Reads need `HELLO`/`AUTH` or `TOKEN` first.
    pub protect_reads: bool,
    /// The operator token `TOKEN` is checked against; without one `TOKEN` is refused.
    pub operator: Option<Arc<OperatorToken>>,
}

/// Told the `reason` of every refusal (the management plane counts them in
/// `colony_auth_refusals_total{plane="data",reason}`).
pub(crate) struct RefusalSink(OnceLock<Box<dyn Fn(&'static str) + Send + Sync>>);

impl RefusalSink {
    pub(crate) fn new() -> Self {
        RefusalSink(OnceLock::new())
    }

    /// Sets the sink; only the first call counts.
    pub(crate) fn set(&self, sink: Box<dyn Fn(&'static str) + Send + Sync>) {
        let _ = self.0.set(sink);
    }

    /// Reports one refusal.
    pub(crate) fn refused(&self, reason: &'static str) {
        if let Some(sink) = self.0.get() {
            sink(reason);
        }
    }
}

impl fmt::Debug for RefusalSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "RefusalSink(set)"
        } else {
            "RefusalSink(unset)"
        })
    }
}
