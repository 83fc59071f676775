//! Collectors that read their figures from the owners at scrape time: a backend's simulation
//! counters and shards, the coordinator's colony, and every node's process figures.

use std::sync::atomic::Ordering::Relaxed;

use dataplane::{HistogramSnapshot, ShardStore};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::process::ProcessStats;
use crate::coordinator::colony::ColonyManager;

/// A histogram copied out of a [`dataplane::Histogram`], encoded as a Prometheus histogram.
#[derive(Debug)]
pub(super) struct ConstHistogram(pub(super) HistogramSnapshot);

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(
            self.0.sum_seconds,
            self.0.count,
            &self.0.buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Encodes one unlabelled metric.
pub(super) fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

/// A backend's simulation: ticks, batch durations, border waits and traffic, checkpoints,
/// recoveries and the shards it holds.
#[derive(Debug)]
pub(super) struct SimCollector(pub(super) ShardStore);

impl Collector for SimCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.sim_stats();
        let e = &mut encoder;
        single(
            e,
            "ticks_completed",
            "Simulation ticks completed by this backend",
            &ConstCounter::new(s.ticks.load(Relaxed)),
        )?;
        single(
            e,
            "tick_batch_duration_seconds",
            "Duration of each batch of ticks between two border exchanges",
            &ConstHistogram(s.batch_seconds.snapshot()),
        )?;
        single(
            e,
            "border_wait_seconds",
            "Time spent waiting for neighbours' borders",
            &ConstCounter::new(s.border_wait().as_secs_f64()),
        )?;
        single(
            e,
            "checkpoints",
            "Checkpoints kept (own copies taken and sent to replica holders)",
            &ConstCounter::new(s.checkpoints.load(Relaxed)),
        )?;
        single(
            e,
            "recoveries",
            "Re-placements taken from a checkpoint after a fence",
            &ConstCounter::new(s.recoveries.load(Relaxed)),
        )?;
        let held = self.0.colony().map_or(0, |c| c.shards_held());
        single(
            e,
            "shards_held",
            "Shards of the current colony held by this backend",
            &ConstGauge::new(held as i64),
        )?;
        let peers = s.peers();
        type Field = fn(&dataplane::PeerTraffic) -> u64;
        let families: [(&str, &str, Field); 4] = [
            (
                "border_sent_bytes",
                "Border cell bytes sent, by peer backend",
                |t| t.bytes_sent.load(Relaxed),
            ),
            (
                "border_received_bytes",
                "Border cell bytes received, by peer backend",
                |t| t.bytes_received.load(Relaxed),
            ),
            (
                "border_sent_frames",
                "HALO messages sent, by peer backend",
                |t| t.frames_sent.load(Relaxed),
            ),
            (
                "border_received_frames",
                "HALO messages received, by peer backend",
                |t| t.frames_received.load(Relaxed),
            ),
        ];
        for (name, help, field) in families {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (peer, traffic) in &peers {
                let label = PeerLabel { peer: peer.clone() };
                ConstCounter::new(field(traffic)).encode(family.encode_family(&label)?)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ColonyStateLabel {
    state: String,
}

/// The coordinator's colony: its tick, population and state.
#[derive(Debug)]
pub(super) struct ColonyCollector(pub(super) ColonyManager);

impl Collector for ColonyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.0.status();
        let number = |key: &str| status.get(key).and_then(serde_json::Value::as_i64);
        let e = &mut encoder;
        single(
            e,
            "colony_tick",
            "The colony's last consistent tick",
            &ConstGauge::new(number("tick").unwrap_or(0)),
        )?;
        // A colony whose population is not known (a failed start) reports none.
        if let Some(population) = number("population") {
            single(
                e,
                "colony_population",
                "Live cells at the colony's last consistent tick",
                &ConstGauge::new(population),
            )?;
        }
        let state = status
            .get("state")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("none")
            .to_owned();
        let mut family = e.encode_descriptor(
            "colony_state",
            "1 for the colony's current state",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1).encode(family.encode_family(&ColonyStateLabel { state })?)?;
        Ok(())
    }
}

/// This process's CPU time, resident memory and open file descriptors.
#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let e = &mut encoder;
        single(
            e,
            "process_cpu_seconds",
            "User and system CPU time of this node's process",
            &ConstCounter::new(p.cpu_seconds),
        )?;
        single(
            e,
            "process_resident_memory_bytes",
            "Resident memory of this node's process",
            &ConstGauge::new(i64::try_from(p.resident_bytes).unwrap_or(i64::MAX)),
        )?;
        single(
            e,
            "process_open_fds",
            "Open file descriptors of this node's process",
            &ConstGauge::new(i64::try_from(p.open_fds).unwrap_or(i64::MAX)),
        )?;
        Ok(())
    }
}
