//! [`AlertLog`]: alerts about nodes (and, through [`HealthTracker::raise_alert`], about colony
//! runs) as `GET /alerts` shows them: open ones oldest first, a bounded tail of resolved
//! ones newest first.
//!
//! [`HealthTracker::raise_alert`]: super::tracker::HealthTracker::raise_alert

use std::collections::VecDeque;
use std::time::SystemTime;

use serde::Serialize;

use crate::time::rfc3339;

/// Resolved alerts kept for `GET /alerts`; older ones are forgotten.
pub const RESOLVED_ALERTS_KEPT: usize = 1000;

/// An alert about a node, or about a colony run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Increasing id.
    pub id: u64,
    /// The node it is about (`colony <id>` for a colony's alert).
    pub node_id: String,
    /// `node_stale`, `node_down` or `colony_failed`.
    pub kind: &'static str,
    /// `warning` or `critical`.
    pub severity: &'static str,
    /// What happened, in words.
    pub message: String,
    /// When it was raised (RFC 3339).
    pub raised_at: String,
    /// When it was resolved (RFC 3339), if it was.
    pub resolved_at: Option<String>,
}

/// `GET /alerts`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertsView {
    /// Alerts still open, oldest first.
    pub open: Vec<Alert>,
    /// Recently resolved alerts, newest first.
    pub resolved: Vec<Alert>,
}

/// Open alerts and the last [`RESOLVED_ALERTS_KEPT`] resolved ones.
#[derive(Debug, Default)]
pub struct AlertLog {
    next_id: u64,
    open: Vec<Alert>,
    resolved: VecDeque<Alert>,
}

impl AlertLog {
    /// Opens an alert of `kind` about `node_id`, unless one of that kind is already open
    /// for it (a node that stays DOWN is one alert, not one per sweep).
    pub fn raise(
        &mut self,
        node_id: &str,
        kind: &'static str,
        severity: &'static str,
        message: String,
    ) {
        if self
            .open
            .iter()
            .any(|a| a.node_id == node_id && a.kind == kind)
        {
            return;
        }
        self.next_id += 1;
        self.open.push(Alert {
            id: self.next_id,
            node_id: node_id.to_owned(),
            kind,
            severity,
            message,
            raised_at: rfc3339(SystemTime::now()),
            resolved_at: None,
        });
    }

    /// Resolves every open alert about `node_id`, now.
    pub fn resolve_all(&mut self, node_id: &str) {
        let now = rfc3339(SystemTime::now());
        let (done, open): (Vec<_>, Vec<_>) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(|a| a.node_id == node_id);
        self.open = open;
        for mut alert in done {
            alert.resolved_at = Some(now.clone());
            self.resolved.push_front(alert);
        }
        self.resolved.truncate(RESOLVED_ALERTS_KEPT);
    }

    /// Alerts open now.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// A copy for `GET /alerts`.
    pub fn view(&self) -> AlertsView {
        AlertsView {
            open: self.open.clone(),
            resolved: self.resolved.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(alerts: &[Alert]) -> Vec<u64> {
        alerts.iter().map(|a| a.id).collect()
    }

    #[test]
    fn one_open_alert_per_node_and_kind_and_resolving_is_per_node() {
        let mut log = AlertLog::default();
        log.raise("b1", "node_stale", "warning", "b1 is STALE".into());
        log.raise("b1", "node_stale", "warning", "b1 is STALE again".into());
        log.raise("b1", "node_down", "critical", "b1 is DOWN".into());
        log.raise("b2", "node_stale", "warning", "b2 is STALE".into());
        assert_eq!(ids(&log.view().open), [1, 2, 3]);
        assert_eq!(log.open_count(), 3);

        log.resolve_all("b1");
        let view = log.view();
        assert_eq!(ids(&view.open), [3]);
        // Newest first; both carry the time they were resolved.
        assert_eq!(ids(&view.resolved), [2, 1]);
        assert!(view.resolved.iter().all(|a| a.resolved_at.is_some()));
        assert!(view.open.iter().all(|a| a.resolved_at.is_none()));

        // Resolved, the same kind can open again, under a new id.
        log.raise("b1", "node_stale", "warning", "b1 is STALE".into());
        assert_eq!(ids(&log.view().open), [3, 4]);
    }

    #[test]
    fn the_resolved_tail_is_bounded_and_keeps_the_newest() {
        let mut log = AlertLog::default();
        let total = RESOLVED_ALERTS_KEPT as u64 + 5;
        for i in 0..total {
            let node = format!("b{i}");
            log.raise(&node, "node_stale", "warning", String::new());
            log.resolve_all(&node);
        }
        let resolved = log.view().resolved;
        assert_eq!(resolved.len(), RESOLVED_ALERTS_KEPT);
        assert_eq!(resolved.first().map(|a| a.id), Some(total));
        assert_eq!(resolved.last().map(|a| a.id), Some(6));
    }
}
