//! The operator role on the HTTP planes (DESIGN §13): who may change state, and who may read.
//!
//! A request acts as the operator if it carries the operator token
//! (`Authorization: Bearer <token>`), or, on a listener bound only to loopback and without
//! `--require-token`, if it comes from a loopback client that no web page of another site
//! could have sent ([`judge`]). A listener bound to any other address always wants the token.
//! With `--protect-reads` the reads want it too. A wrong, empty or malformed token is refused
//! wherever it is sent, never ignored.
//!
//! Routes say what they need by a layer from their listener's [`Guard`]:
//!
//! | layer | the route is | refused without |
//! |---|---|---|
//! | [`Guard::operator`] | operator (loopback trust allowed): colony start/run/pause, the dashboard's forwarded calls | the token or trusted loopback; state-changing methods are also rate limited per client address |
//! | [`Guard::operator_always`] | operator only, always, even from loopback: the token audit, package upload | the token |
//! | [`Guard::reads`] | a read: open to anyone unless `--protect-reads` | (with `--protect-reads`) the token or trusted loopback |
//!
//! A route with none of them is open to anyone (liveness, the dashboard's static files) or
//! checks node signatures itself (`crate::node_auth`). `/ws` judges its upgrade with
//! [`Guard::judge`] and its actions one by one ([`crate::ws`]). A refusal answers 401 (403
//! for a browser sent by another site) with `{"error","code"}`, reaches no handler, so
//! changes nothing, and is counted in `colony_auth_refusals_total{plane,reason}`.
//!
//! Not here: loading the token ([`shared::operator`]), the data plane's `TOKEN` command.

mod guard;
pub mod judge;

use std::net::IpAddr;
use std::sync::Arc;

use shared::operator::OperatorToken;

pub use guard::{Caller, Denied, Gate, GateService, Guard, Need, Peer};

use crate::metrics::{AuthRefusals, Metrics, RateLimited};
use crate::rate_limit::{AddressLimiter, RateLimit};

/// What a node's operator checks are configured with (flags `--operator-token-file`,
/// `--require-token`, `--protect-reads` and the rate limits).
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// The operator token; without one only trusted loopback clients act as the operator.
    pub token: Option<Arc<OperatorToken>>,
    /// Trust no client by its address, not even on a loopback-only listener.
    pub require_token: bool,
    /// Reads need the operator too.
    pub protect_reads: bool,
    /// State-changing HTTP calls per client address.
    pub http_rate: RateLimit,
    /// `/ws` requests per connection.
    pub ws_rate: RateLimit,
}

impl Default for OperatorConfig {
    /// No token, loopback trusted, reads open, the default rate limits.
    fn default() -> Self {
        OperatorConfig {
            token: None,
            require_token: false,
            protect_reads: false,
            http_rate: RateLimit::HTTP_DEFAULT,
            ws_rate: RateLimit::WS_DEFAULT,
        }
    }
}

/// A node's operator checks, shared by its listeners: the configuration, the per-address
/// rate limiter and the counters. Each listener gets its own [`Guard`] from it.
#[derive(Debug, Clone)]
pub struct Access {
    inner: Arc<AccessInner>,
}

#[derive(Debug)]
struct AccessInner {
    config: OperatorConfig,
    http_limiter: AddressLimiter,
    refusals: AuthRefusals,
    rate_limited: RateLimited,
}

impl Access {
    /// The checks `config` describes, counting in `metrics`.
    pub fn new(config: OperatorConfig, metrics: &Metrics) -> Self {
        Access {
            inner: Arc::new(AccessInner {
                http_limiter: AddressLimiter::new(config.http_rate),
                config,
                refusals: metrics.auth_refusals.clone(),
                rate_limited: metrics.rate_limited.clone(),
            }),
        }
    }

    /// The guard of the listener bound to `bind_ip` on `plane` (`control` or `mgmt`, the
    /// metrics label). `dashboard_port` is the management listener's port: pages from that
    /// origin are this node's own dashboard (`None` on a node without one).
    pub fn guard(
        &self,
        plane: &'static str,
        bind_ip: IpAddr,
        dashboard_port: Option<u16>,
    ) -> Guard {
        // Protected mode, after Redis: only a listener no other machine can reach may take
        // its clients' address as a credential.
        let trusts_loopback = bind_ip.is_loopback() && !self.inner.config.require_token;
        Guard::new(self.clone(), plane, trusts_loopback, dashboard_port)
    }

    fn config(&self) -> &OperatorConfig {
        &self.inner.config
    }
}
