//! The body of `POST /tokens/report` (DESIGN §13, token audit): a backend tells the
//! coordinator what became of the init tokens it was shown, used or refused and why. The
//! backend's [`crate::token_reporter`] writes it, signed; the coordinator's audit
//! ([`crate::coordinator::tokens`]) reads it.

use serde::{Deserialize, Serialize};
use shared::registry::RegistryError;

/// Most outcomes one report may carry.
pub const MAX_REPORTS: usize = 256;
/// Longest refusal reason.
pub const MAX_REASON: usize = 64;

/// What a backend did with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenOutcome {
    /// It accepted the token and (tried to) initialize the shard.
    Used,
    /// It refused the token.
    Refused,
}

/// One token's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenUse {
    /// The token's id (32 hex digits).
    pub token_id: String,
    /// Used or refused.
    pub outcome: TokenOutcome,
    /// Why it was refused: the token error's code, e.g. `token_expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When, in Unix milliseconds by the backend's clock.
    pub at_ms: u64,
}

/// The body of `POST /tokens/report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenReport {
    /// The reporting backend.
    pub instance_id: String,
    /// What it did, oldest first (1 to [`MAX_REPORTS`]).
    pub reports: Vec<TokenUse>,
}

/// Why a report that parsed is still refused. Each message starts with the field it is about.
#[derive(Debug, thiserror::Error)]
pub enum TokenReportError {
    /// The instance id is not a valid id.
    #[error("instance_id: {0}")]
    InstanceId(#[source] RegistryError),
    /// No outcomes, or more than [`MAX_REPORTS`].
    #[error("reports: {count} entries, 1 to {MAX_REPORTS} allowed")]
    Count {
        /// How many there were.
        count: usize,
    },
    /// A token id is not 32 hex digits.
    #[error("reports[{index}].token_id: must be 32 hex digits")]
    TokenId {
        /// Which entry.
        index: usize,
    },
    /// A reason is empty, too long or not `[a-z_]`, or one is missing on a refusal.
    #[error(
        "reports[{index}].reason: a refusal needs one, 1 to {MAX_REASON} characters from a-z _"
    )]
    Reason {
        /// Which entry.
        index: usize,
    },
}

impl TokenReport {
    /// Checks what serde cannot: id syntax and bounds.
    ///
    /// # Errors
    /// The first [`TokenReportError`] found.
    pub fn validate(&self) -> Result<(), TokenReportError> {
        shared::registry::validate_instance_id(&self.instance_id)
            .map_err(TokenReportError::InstanceId)?;
        if self.reports.is_empty() || self.reports.len() > MAX_REPORTS {
            return Err(TokenReportError::Count {
                count: self.reports.len(),
            });
        }
        for (index, r) in self.reports.iter().enumerate() {
            if r.token_id.len() != 32 || !r.token_id.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(TokenReportError::TokenId { index });
            }
            let reason_ok = match (&r.outcome, &r.reason) {
                (_, Some(reason)) => {
                    (1..=MAX_REASON).contains(&reason.len())
                        && reason.bytes().all(|c| c.is_ascii_lowercase() || c == b'_')
                }
                (TokenOutcome::Used, None) => true,
                (TokenOutcome::Refused, None) => false,
            };
            if !reason_ok {
                return Err(TokenReportError::Reason { index });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(id: &str) -> TokenUse {
        TokenUse {
            token_id: id.into(),
            outcome: TokenOutcome::Used,
            reason: None,
            at_ms: 1,
        }
    }

    #[test]
    fn validation_names_the_field() {
        let id = "0123456789abcdef0123456789abcdef";
        let good = TokenReport {
            instance_id: "backend_9000".into(),
            reports: vec![used(id)],
        };
        assert!(good.validate().is_ok());
        let json = serde_json::to_string(&good).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"instance_id":"backend_9000","reports":[{{"token_id":"{id}","outcome":"used","at_ms":1}}]}}"#
            )
        );
        let cases: Vec<(TokenReport, &str)> = vec![
            (
                TokenReport {
                    instance_id: "../x".into(),
                    ..good.clone()
                },
                "instance_id",
            ),
            (
                TokenReport {
                    reports: vec![],
                    ..good.clone()
                },
                "reports: 0",
            ),
            (
                TokenReport {
                    reports: vec![used(id); MAX_REPORTS + 1],
                    ..good.clone()
                },
                "reports: 257",
            ),
            (
                TokenReport {
                    reports: vec![used(id), used("xyz")],
                    ..good.clone()
                },
                "reports[1].token_id",
            ),
            (
                TokenReport {
                    reports: vec![TokenUse {
                        outcome: TokenOutcome::Refused,
                        ..used(id)
                    }],
                    ..good.clone()
                },
                "reports[0].reason",
            ),
            (
                TokenReport {
                    reports: vec![TokenUse {
                        outcome: TokenOutcome::Refused,
                        reason: Some("Evil <script>".into()),
                        ..used(id)
                    }],
                    ..good.clone()
                },
                "reports[0].reason",
            ),
        ];
        for (report, needle) in cases {
            let e = report.validate().unwrap_err().to_string();
            assert!(e.starts_with(needle), "{needle:?}: {e}");
        }
        let refused = TokenUse {
            outcome: TokenOutcome::Refused,
            reason: Some("token_expired".into()),
            ..used(id)
        };
        assert!(TokenReport {
            reports: vec![refused],
            ..good
        }
        .validate()
        .is_ok());
    }
}
