//! Prometheus metrics (`GET /metrics`) through `prometheus-client`, the Prometheus project's
//! own Rust client: HTTP requests (with a latency histogram), heartbeats and refused
//! credentials as live counters, and node states, heartbeat ages and transitions, the colony,
//! a backend's simulation, data-plane counters and the process's CPU, memory and fds
//! collected from their owners at scrape time, so nothing is counted twice. Conventions:
//! units in names, `_total` counters, `_seconds` histograms.
//!
//! | file | owns |
//! |---|---|
//! | this one | the registry, HTTP, refusal and rate-limit counters, the health collector |
//! | `collectors` | the simulation, colony and process collectors |
//! | [`process`] | reading `/proc/self` |

mod collectors;
pub mod process;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::Method;
use dataplane::DataPlane;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    text::encode, DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
    LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use self::collectors::{single, ColonyCollector, ConstHistogram, ProcessCollector, SimCollector};
use crate::coordinator::colony::ColonyManager;
use crate::coordinator::health::tracker::HealthTracker;

/// Labels of the HTTP request counter. Nothing in it is allocated per request: the method
/// is a static name and the route shares the router's own string.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    plane: &'static str,
    method: &'static str,
    route: RouteLabel,
    status: u16,
}

/// The matched route of a request (`unmatched` for the 404 fallback).
#[derive(Debug, Clone)]
struct RouteLabel(Option<MatchedPath>);

impl RouteLabel {
    fn as_str(&self) -> &str {
        self.0.as_ref().map_or("unmatched", MatchedPath::as_str)
    }
}

impl PartialEq for RouteLabel {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RouteLabel {}

impl Hash for RouteLabel {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// The metrics label of an HTTP method: the standard ones by name, any other as `OTHER`, so
/// a client inventing methods cannot grow the label set.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Labels of the HTTP latency histogram: by route, not status, so a route has one series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    plane: &'static str,
    route: RouteLabel,
}

type LatencyFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(dataplane::LATENCY_BUCKETS)
}

/// The HTTP request counter and latency histogram, shared by every listener of a node.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    latency: LatencyFamily,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl HttpMetrics {
    /// Counts one answered request that took `took` to answer; `route` is the matched
    /// route, `None` for no route.
    pub fn observe(
        &self,
        plane: &'static str,
        method: &'static str,
        route: Option<MatchedPath>,
        status: u16,
        took: Duration,
    ) {
        let route = RouteLabel(route);
        self.latency
            .get_or_create(&LatencyLabels {
                plane,
                route: route.clone(),
            })
            .observe(took.as_secs_f64());
        self.requests
            .get_or_create(&HttpLabels {
                plane,
                method,
                route,
                status,
            })
            .inc();
    }
}

/// Labels of the refusal counter: both are static names, so the label set is bounded.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    plane: &'static str,
    reason: &'static str,
}

/// `colony_auth_refusals_total{plane,reason}`: requests refused for their credentials, shared
/// by every check that refuses one (node signatures, heartbeat replays, init tokens, and the
/// operator's token), so one counter shows every attempt that did not get in.
#[derive(Debug, Clone, Default)]
pub struct AuthRefusals {
    refusals: Family<RefusalLabels, Counter>,
}

impl AuthRefusals {
    /// Counts one refusal on `plane` (`control`, `mgmt`, `data`, `ws`) for `reason`, a
    /// stable machine-readable code such as `bad_mac` or `replay`.
    pub fn count(&self, plane: &'static str, reason: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels { plane, reason })
            .inc();
    }

    /// How many refusals were counted on `plane` for `reason`. Reading creates no series.
    pub fn get(&self, plane: &'static str, reason: &'static str) -> u64 {
        self.refusals
            .get(&RefusalLabels { plane, reason })
            .map_or(0, |c| c.get())
    }
}

/// Labels of the rate-limit counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlaneLabel {
    plane: &'static str,
}

/// `colony_rate_limited_total{plane}`: requests answered `429` (HTTP) or `rate_limited`
/// (`/ws`) by the token buckets of [`crate::rate_limit`].
#[derive(Debug, Clone, Default)]
pub struct RateLimited {
    limited: Family<PlaneLabel, Counter>,
}

impl RateLimited {
    /// Counts one request turned away on `plane` (`control`, `mgmt`, `ws`).
    pub fn count(&self, plane: &'static str) {
        self.limited.get_or_create(&PlaneLabel { plane }).inc();
    }

    /// How many were turned away on `plane`. Reading creates no series.
    pub fn get(&self, plane: &'static str) -> u64 {
        self.limited
            .get(&PlaneLabel { plane })
            .map_or(0, |c| c.get())
    }
}

/// A node's metric registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// HTTP requests by plane, route and status.
    pub http: HttpMetrics,
    /// Heartbeats accepted by the coordinator.
    pub heartbeats: Counter,
    /// Of those, the ones that came over a persistent heartbeat channel.
    pub channel_heartbeats: Counter,
    /// Heartbeat channels open now.
    pub heartbeat_channels: Gauge,
    /// Turns of the heartbeat and management threads lengthened to batch heartbeats
    /// ([`crate::management::batching`]).
    pub batched_turns: Counter,
    /// Requests refused for their credentials, by plane and reason.
    pub auth_refusals: AuthRefusals,
    /// Requests turned away by a rate limit, by plane.
    pub rate_limited: RateLimited,
    /// `/ws` connections open now (upgraded and attached to the hub).
    pub ws_connections: Gauge,
    /// Events the `/ws` hub published (numbered), whoever was listening.
    pub ws_events: Counter,
}

impl Metrics {
    /// A registry with this node's data-plane counters and, on the coordinator, its health
    /// tracker; without one (a backend), the simulation counters of its shard store.
    pub fn new(data_plane: DataPlane, health: Option<HealthTracker>) -> Self {
        Self::build(data_plane, health, None)
    }

    /// The coordinator's registry: as [`Metrics::new`] with its health tracker, plus its
    /// colony's tick, population and state.
    pub fn coordinator(
        data_plane: DataPlane,
        health: HealthTracker,
        colony: ColonyManager,
    ) -> Self {
        Self::build(data_plane, Some(health), Some(colony))
    }

    fn build(
        data_plane: DataPlane,
        health: Option<HealthTracker>,
        colony: Option<ColonyManager>,
    ) -> Self {
        let mut registry = Registry::with_prefix("colony");
        let http = HttpMetrics::default();
        let heartbeats = Counter::default();
        let channel_heartbeats = Counter::default();
        let heartbeat_channels = Gauge::default();
        let batched_turns = Counter::default();
        let auth_refusals = AuthRefusals::default();
        let rate_limited = RateLimited::default();
        let ws_connections = Gauge::default();
        let ws_events = Counter::default();
        registry.register(
            "ws_connections",
            "/ws connections open now",
            ws_connections.clone(),
        );
        registry.register(
            "ws_events",
            "Events published by the /ws hub",
            ws_events.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by plane, method, route and status",
            http.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by plane and route",
            http.latency.clone(),
        );
        registry.register(
            "heartbeats_received",
            "Heartbeats accepted from nodes",
            heartbeats.clone(),
        );
        registry.register(
            "heartbeat_channel_received",
            "Heartbeats accepted over a persistent heartbeat channel (also in heartbeats_received)",
            channel_heartbeats.clone(),
        );
        registry.register(
            "heartbeat_channels",
            "Persistent heartbeat channels open now",
            heartbeat_channels.clone(),
        );
        registry.register(
            "mgmt_batched_turns",
            "Turns of the heartbeat and management threads lengthened to read heartbeats in batches",
            batched_turns.clone(),
        );
        registry.register(
            "auth_refusals",
            "Requests refused for their credentials (signature, replay, token), by plane and reason",
            auth_refusals.refusals.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests turned away by a rate limit (429 or rate_limited), by plane",
            rate_limited.limited.clone(),
        );
        // The data plane reports its own refusals (reads before TOKEN, wrong TOKEN or AUTH)
        // into the same counter, so one family shows every plane.
        let data_refusals = auth_refusals.clone();
        data_plane.on_refusal(move |reason| data_refusals.count("data", reason));
        registry.register_collector(Box::new(ProcessCollector));
        if health.is_none() {
            registry.register_collector(Box::new(SimCollector(data_plane.store().clone())));
        }
        registry.register_collector(Box::new(DataPlaneCollector(data_plane)));
        if let Some(health) = health {
            registry.register_collector(Box::new(HealthCollector(health)));
        }
        registry.register_collector(Box::new(LogLimitCollector));
        if let Some(colony) = colony {
            registry.register_collector(Box::new(ColonyCollector(colony)));
        }
        Metrics {
            registry: Arc::new(registry),
            http,
            heartbeats,
            channel_heartbeats,
            heartbeat_channels,
            batched_turns,
            auth_refusals,
            rate_limited,
            ws_connections,
            ws_events,
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

#[derive(Debug)]
struct DataPlaneCollector(DataPlane);

impl Collector for DataPlaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats().snapshot();
        let counters = [
            (
                "dataplane_frames_in",
                "Data-plane requests decoded",
                s.frames_in,
            ),
            (
                "dataplane_frames_out",
                "Data-plane responses written",
                s.frames_out,
            ),
            (
                "dataplane_errors",
                "Data-plane requests answered with an error, and framing failures",
                s.errors,
            ),
            (
                "dataplane_connections_accepted",
                "Data-plane connections accepted",
                s.connections_total,
            ),
            (
                "dataplane_connections_refused",
                "Data-plane connections refused at the limit",
                s.connections_refused,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let open = ConstGauge::new(s.connections as i64);
        open.encode(encoder.encode_descriptor(
            "dataplane_connections",
            "Data-plane connections open now",
            None,
            open.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The lines each rate-limited log site held back ([`shared::log_limit`]).
#[derive(Debug)]
struct LogLimitCollector;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabel {
    site: &'static str,
}

impl Collector for LogLimitCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "log_lines_suppressed",
            "Warning lines held back by a rate-limited log site, by site",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for site in shared::log_limit::sites() {
            let counter = ConstCounter::new(site.suppressed());
            counter.encode(family.encode_family(&SiteLabel { site: site.site() })?)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct HealthCollector(HealthTracker);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    from: &'static str,
    to: &'static str,
}

impl Collector for HealthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.0.counts();
        let mut family = encoder.encode_descriptor(
            "nodes",
            "Nodes known to the coordinator, by health state",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (state, n) in counts.by_state() {
            let gauge = ConstGauge::new(n as i64);
            gauge.encode(family.encode_family(&StateLabel { state })?)?;
        }
        let flaps = ConstCounter::new(counts.flaps);
        flaps.encode(encoder.encode_descriptor(
            "node_flaps",
            "Returns to ACTIVE soon after a failure, summed over nodes",
            None,
            flaps.metric_type(),
        )?)?;
        let open = ConstGauge::new(counts.open_alerts as i64);
        open.encode(encoder.encode_descriptor(
            "alerts_open",
            "Alerts not yet resolved",
            None,
            open.metric_type(),
        )?)?;
        let stats = self.0.stats();
        single(
            &mut encoder,
            "heartbeat_interarrival_seconds",
            "Time between two heartbeats of one node, over every node of the cluster",
            &ConstHistogram(stats.interarrival()),
        )?;
        let stalled = ConstCounter::new(stats.stalled_seconds());
        stalled.encode(encoder.encode_descriptor(
            "health_sweep_stalled_seconds",
            "Time the threads reading heartbeats ran late (starved or behind), forgiven to every node",
            None,
            stalled.metric_type(),
        )?)?;
        let mut ages = encoder.encode_descriptor(
            "heartbeat_age_seconds",
            "Time since each node's last heartbeat",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (node, age) in self.0.heartbeat_ages(tokio::time::Instant::now()) {
            ConstGauge::new(age).encode(ages.encode_family(&NodeLabel { node })?)?;
        }
        let mut moves = encoder.encode_descriptor(
            "node_transitions",
            "Node state transitions by from (NONE: first seen) and to",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (from, to, n) in stats.transitions() {
            ConstCounter::new(n).encode(moves.encode_family(&TransitionLabels { from, to })?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shared::NodeAddress;

    use super::*;
    use crate::coordinator::health::config::HealthConfig;
    use crate::wire::heartbeat::{Heartbeat, NodeType};
    use shared::log_limit::LogLimit;

    fn data_plane() -> DataPlane {
        DataPlane::new(dataplane::DataPlaneConfig::default())
    }

    fn hb(id: &str, seq: u64) -> Heartbeat {
        Heartbeat {
            instance_id: id.into(),
            node_type: NodeType::Backend,
            address: NodeAddress::new([127, 0, 0, 1].into(), 9000, 9001, 9002),
            boot_id: "boot".into(),
            seq,
            metrics: Default::default(),
            leaving: false,
        }
    }

    /// The value of the sample `series` (name and labels exactly as rendered).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    #[tokio::test]
    async fn coordinator_renders_colony_heartbeat_and_http_latency_series() {
        let health = HealthTracker::new(HealthConfig::default(), None);
        let now = tokio::time::Instant::now();
        health.record(hb("b1", 1), now).unwrap();
        health
            .record(hb("b1", 2), now + Duration::from_millis(200))
            .unwrap();
        let colony = crate::coordinator::colony::testing::manager(Arc::new(
            shared::registry::InMemoryClusterRegistry::new(),
        ));
        let metrics = Metrics::coordinator(data_plane(), health, colony);
        metrics
            .http
            .observe("mgmt", "GET", None, 404, Duration::from_millis(3));
        let text = metrics.render();
        assert_eq!(sample(&text, "colony_colony_tick"), Some(0.0), "{text}");
        assert_eq!(
            sample(&text, "colony_colony_state{state=\"none\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "colony_heartbeat_interarrival_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "colony_heartbeat_interarrival_seconds_bucket{le=\"0.25\"}"
            ),
            Some(1.0)
        );
        assert!(sample(&text, "colony_heartbeat_age_seconds{node=\"b1\"}").is_some());
        assert_eq!(
            sample(
                &text,
                "colony_node_transitions_total{from=\"NONE\",to=\"ACTIVE\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "colony_http_request_duration_seconds_count{plane=\"mgmt\",route=\"unmatched\"}"
            ),
            Some(1.0)
        );
        assert!(sample(&text, "colony_process_resident_memory_bytes").is_some_and(|v| v > 0.0));
        // The backend's simulation series are not the coordinator's.
        assert!(!text.contains("colony_ticks_completed"));
    }

    #[test]
    fn backend_renders_simulation_and_process_series() {
        let dp = data_plane();
        let sim = dp.store().sim_stats().clone();
        sim.batch(4, Duration::from_millis(2), Duration::from_millis(1));
        sim.peer("b2").sent(100);
        sim.checkpoints
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let text = Metrics::new(dp, None).render();
        assert_eq!(
            sample(&text, "colony_ticks_completed_total"),
            Some(4.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "colony_tick_batch_duration_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "colony_border_wait_seconds_total"),
            Some(0.001)
        );
        assert_eq!(sample(&text, "colony_checkpoints_total"), Some(1.0));
        assert_eq!(sample(&text, "colony_recoveries_total"), Some(0.0));
        assert_eq!(sample(&text, "colony_shards_held"), Some(0.0));
        assert_eq!(
            sample(&text, "colony_border_sent_bytes_total{peer=\"b2\"}"),
            Some(100.0)
        );
        assert_eq!(
            sample(&text, "colony_border_received_frames_total{peer=\"b2\"}"),
            Some(0.0)
        );
        assert!(sample(&text, "colony_process_open_fds").is_some_and(|v| v >= 3.0));
        assert!(sample(&text, "colony_process_cpu_seconds_total").is_some());
    }

    #[test]
    fn suppressed_log_lines_are_counted_by_site() {
        static SITE: LogLimit =
            LogLimit::new("test_metrics_site", std::time::Duration::from_secs(3600));
        for _ in 0..4 {
            shared::warn_limited!(SITE, "repeated warning");
        }
        let metrics = Metrics::new(DataPlane::new(dataplane::DataPlaneConfig::default()), None);
        let text = metrics.render();
        assert!(
            text.contains("colony_log_lines_suppressed_total{site=\"test_metrics_site\"} 3"),
            "{text}"
        );
    }
}
