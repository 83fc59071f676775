//! [`TokenAudit`]: the coordinator's record of the init tokens it issued and what became of
//! them (DESIGN §13, token audit): issued, used or refused by a backend (which says so in a
//! signed report), or expired unused.
//!
//! Bounded: the latest [`AUDIT_CAPACITY`] tokens, the oldest dropped first. It holds no
//! signature, so listing it hands out nothing that could be presented again. The routes that
//! feed and show it are in [`crate::management`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use shared::token::InitToken;
use shared::topology::ShardCoord;

use crate::time::rfc3339;
use crate::wire::tokens::{TokenOutcome, TokenReport};

/// Tokens remembered.
pub const AUDIT_CAPACITY: usize = 1024;

/// Where a token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    /// Issued; no backend has reported it, and it has not expired.
    Issued,
    /// A backend accepted it.
    Used,
    /// Issued, never used, and past its expiry.
    Expired,
    /// A backend refused it (and none accepted it).
    Refused,
}

/// What a backend last said about a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The backend's instance id.
    pub by: String,
    /// When, by its clock (RFC 3339).
    pub at: String,
    /// Why it refused, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One token as `GET /tokens` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenView {
    /// The token's id.
    pub token_id: String,
    /// The backend it was issued for.
    pub instance_id: String,
    /// The shard it initializes.
    pub shard: ShardCoord,
    /// Its colony.
    pub colony_id: String,
    /// When it was issued (RFC 3339).
    pub issued_at: String,
    /// When it expires (RFC 3339).
    pub expires_at: String,
    /// Where it stands now.
    pub state: TokenState,
    /// The acceptance, if a backend accepted it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used: Option<Report>,
    /// The latest refusal, if a backend refused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<Report>,
    /// How many times it was refused.
    pub refusals: u32,
}

#[derive(Debug)]
struct Entry {
    token_id: String,
    instance_id: String,
    shard: ShardCoord,
    colony_id: String,
    issued_at: u64,
    expires_at: u64,
    used: Option<Report>,
    refused: Option<Report>,
    refusals: u32,
}

/// The audit log. Cheap to clone; clones share the log.
#[derive(Debug, Clone)]
pub struct TokenAudit {
    entries: Arc<Mutex<VecDeque<Entry>>>,
    capacity: usize,
}

impl Default for TokenAudit {
    fn default() -> Self {
        Self::with_capacity(AUDIT_CAPACITY)
    }
}

impl TokenAudit {
    /// A log keeping the latest `capacity` tokens (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        TokenAudit {
            entries: Arc::new(Mutex::new(VecDeque::new())),
            capacity: capacity.max(1),
        }
    }

    /// Records that `token` was issued.
    pub fn issued(&self, token: &InitToken) {
        let entry = Entry {
            token_id: token.token_id.clone(),
            instance_id: token.instance_id.clone(),
            shard: token.shard,
            colony_id: token.colony_id.clone(),
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            used: None,
            refused: None,
            refusals: 0,
        };
        let mut entries = self.entries.lock();
        if entries.len() == self.capacity {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// Applies a backend's (validated, authenticated) report; returns how many of its
    /// outcomes were about tokens in the log. Outcomes about other tokens (dropped from the
    /// log, or never issued here) are ignored.
    pub fn apply(&self, report: &TokenReport) -> usize {
        let mut entries = self.entries.lock();
        let mut matched = 0;
        for outcome in &report.reports {
            // Reports come soon after issuing, so the newest end is the place to look.
            let Some(entry) = entries
                .iter_mut()
                .rev()
                .find(|e| e.token_id.eq_ignore_ascii_case(&outcome.token_id))
            else {
                continue;
            };
            matched += 1;
            let said = Report {
                by: report.instance_id.clone(),
                at: rfc3339(UNIX_EPOCH + Duration::from_millis(outcome.at_ms)),
                reason: outcome.reason.clone(),
            };
            match outcome.outcome {
                // The first acceptance is the one that counts; a later one is a replay the
                // backend should have refused, and its refusal is what it reports then.
                TokenOutcome::Used => {
                    entry.used.get_or_insert(said);
                }
                TokenOutcome::Refused => {
                    entry.refusals = entry.refusals.saturating_add(1);
                    entry.refused = Some(said);
                }
            }
        }
        matched
    }

    /// The log, newest first, as of `now`.
    pub fn view(&self, now: SystemTime) -> Vec<TokenView> {
        let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let at = |secs: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
        self.entries
            .lock()
            .iter()
            .rev()
            .map(|e| TokenView {
                token_id: e.token_id.clone(),
                instance_id: e.instance_id.clone(),
                shard: e.shard,
                colony_id: e.colony_id.clone(),
                issued_at: at(e.issued_at),
                expires_at: at(e.expires_at),
                state: if e.used.is_some() {
                    TokenState::Used
                } else if e.refused.is_some() {
                    TokenState::Refused
                } else if now_secs > e.expires_at {
                    TokenState::Expired
                } else {
                    TokenState::Issued
                },
                used: e.used.clone(),
                refused: e.refused.clone(),
                refusals: e.refusals,
            })
            .collect()
    }

    /// The most tokens it keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use shared::secret::ClusterSecret;
    use shared::token::TokenIssuer;

    use super::*;
    use crate::wire::tokens::TokenUse;

    const NOW: u64 = 1_750_000_000;

    fn issue(issuer: &TokenIssuer, backend: &str, x: u32) -> InitToken {
        issuer
            .issue_at(
                backend,
                ShardCoord::new(x, 0),
                "colony-1",
                Duration::from_secs(60),
                NOW,
            )
            .unwrap()
    }

    fn report(by: &str, outcomes: Vec<(&str, TokenOutcome, Option<&str>)>) -> TokenReport {
        TokenReport {
            instance_id: by.into(),
            reports: outcomes
                .into_iter()
                .map(|(id, outcome, reason)| TokenUse {
                    token_id: id.into(),
                    outcome,
                    reason: reason.map(Into::into),
                    at_ms: NOW * 1000 + 5,
                })
                .collect(),
        }
    }

    #[test]
    fn each_token_is_issued_used_refused_or_expired() {
        let issuer = TokenIssuer::new(&ClusterSecret::generate().unwrap());
        let audit = TokenAudit::default();
        let tokens: Vec<InitToken> = (0..4).map(|x| issue(&issuer, "backend_9000", x)).collect();
        for t in &tokens {
            audit.issued(t);
        }
        let matched = audit.apply(&report(
            "backend_9000",
            vec![
                (&tokens[0].token_id, TokenOutcome::Used, None),
                (
                    &tokens[1].token_id,
                    TokenOutcome::Refused,
                    Some("token_expired"),
                ),
                ("ffffffffffffffffffffffffffffffff", TokenOutcome::Used, None),
            ],
        ));
        assert_eq!(matched, 2);
        // A replay of the used token, refused by another backend.
        audit.apply(&report(
            "backend_9010",
            vec![(
                &tokens[0].token_id,
                TokenOutcome::Refused,
                Some("token_wrong_instance"),
            )],
        ));
        let within = UNIX_EPOCH + Duration::from_secs(NOW + 30);
        let view = audit.view(within);
        let states: Vec<TokenState> = view.iter().map(|v| v.state).collect();
        // Newest first.
        assert_eq!(
            states,
            [
                TokenState::Issued,
                TokenState::Issued,
                TokenState::Refused,
                TokenState::Used
            ]
        );
        let used = &view[3];
        assert_eq!(used.token_id, tokens[0].token_id);
        let by = used.used.as_ref().unwrap();
        assert_eq!(
            (by.by.as_str(), by.at.as_str()),
            ("backend_9000", "2025-06-15T15:06:40.005Z")
        );
        assert_eq!(used.refusals, 1);
        assert_eq!(
            used.refused.as_ref().unwrap().reason.as_deref(),
            Some("token_wrong_instance")
        );
        assert_eq!(
            view[2].refused.as_ref().unwrap().reason.as_deref(),
            Some("token_expired")
        );
        let later = audit.view(UNIX_EPOCH + Duration::from_secs(NOW + 61));
        assert_eq!(later[0].state, TokenState::Expired);
        assert_eq!(later[3].state, TokenState::Used);
        let json = serde_json::to_value(&later[0]).unwrap();
        assert_eq!(json["state"], "expired");
        assert_eq!(json["shard"], serde_json::json!({"x": 3, "y": 0}));
        assert!(json.get("used").is_none() && json.get("signature").is_none());
    }

    #[test]
    fn the_log_is_bounded_and_drops_the_oldest() {
        let issuer = TokenIssuer::new(&ClusterSecret::generate().unwrap());
        let audit = TokenAudit::with_capacity(3);
        let tokens: Vec<InitToken> = (0..5).map(|x| issue(&issuer, "b", x)).collect();
        for t in &tokens {
            audit.issued(t);
        }
        let ids: Vec<String> = audit
            .view(SystemTime::now())
            .into_iter()
            .map(|v| v.token_id)
            .collect();
        let expected: Vec<String> = tokens[2..]
            .iter()
            .rev()
            .map(|t| t.token_id.clone())
            .collect();
        assert_eq!(ids, expected);
        assert_eq!(
            audit.apply(&report(
                "b",
                vec![(&tokens[0].token_id, TokenOutcome::Used, None)]
            )),
            0
        );
    }
}
