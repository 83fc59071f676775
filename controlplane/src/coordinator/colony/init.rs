//! The second step of a colony start: every shard's signed `POST /init-colony-shard`, all at
//! once, and the colony's tick-0 figures summed from the answers. Each request carries an
//! init token (DESIGN §8), recorded in the token audit, and is itself a signed node call
//! (`Colony-Signature`, DESIGN §13).

use std::time::Duration;

use codec::Checkpoint;
use futures::future::join_all;
use shared::signing::{RequestSigner, HEADER};
use shared::token::TokenIssuer;
use shared::topology::{BackendEntry, ClusterTopology, ShardCoord};

use crate::coordinator::error::{ColonyError, InitError};
use crate::coordinator::tokens::TokenAudit;
use crate::wire::init::InitColonyShardResponse;

/// Sends every shard its signed init, all at once; fails if any is refused. Returns the
/// colony's tick-0 figures, summed from the answers.
pub(super) async fn init_all(
    sender: &Sender<'_>,
    topology: &ClusterTopology,
) -> Result<Checkpoint, ColonyError> {
    let topology_json = serde_json::to_string(topology).map_err(ColonyError::EncodeTopology)?;
    let inits = topology.placement().map(|(shard, backend)| {
        let topology_json = &topology_json;
        async move {
            sender
                .init_one(topology, topology_json, shard, backend)
                .await
        }
    });
    let mut total = Checkpoint {
        tick: 0,
        population: 0,
        fingerprint: 0,
    };
    let mut failures = Vec::new();
    for result in join_all(inits).await {
        match result {
            Ok((population, fingerprint)) => {
                total.population += population;
                total.fingerprint = total.fingerprint.wrapping_add(fingerprint);
            }
            Err(e) => failures.push(e),
        }
    }
    let failed = failures.len();
    if let Some(first) = failures.into_iter().next() {
        return Err(ColonyError::InitFailed {
            failed,
            total: topology.shard_count(),
            first: Box::new(first),
        });
    }
    Ok(total)
}

/// What sending an init takes: the coordinator's HTTP client, its token issuer, request
/// signer and token audit, and the token lifetime and request timeout from
/// [`ColonyConfig`](super::ColonyConfig).
pub(super) struct Sender<'a> {
    pub(super) client: &'a reqwest::Client,
    /// `http` or `https` (TLS between nodes).
    pub(super) scheme: &'static str,
    pub(super) issuer: &'a TokenIssuer,
    pub(super) signer: &'a RequestSigner,
    pub(super) audit: &'a TokenAudit,
    pub(super) token_ttl: Duration,
    pub(super) timeout: Duration,
}

impl Sender<'_> {
    /// Signs and sends one shard's init; its population and fingerprint at tick 0.
    async fn init_one(
        &self,
        topology: &ClusterTopology,
        topology_json: &str,
        shard: ShardCoord,
        backend: &BackendEntry,
    ) -> Result<(u64, u64), InitError> {
        let name = || backend.instance_id.clone();
        let token = self
            .issuer
            .issue(
                &backend.instance_id,
                shard,
                topology.colony_id(),
                self.token_ttl,
            )
            .map_err(|source| InitError::Token {
                backend: name(),
                source,
            })?;
        self.audit.issued(&token);
        let token_json = serde_json::to_string(&token)?;
        let shard_json = serde_json::to_string(&shard)?;
        // The topology is serialized once for all shards.
        let body =
            format!(r#"{{"shard":{shard_json},"topology":{topology_json},"token":{token_json}}}"#);
        let path = "/init-colony-shard";
        let url = format!(
            "{}://{}{path}",
            self.scheme,
            backend.address.to_http_address()
        );
        let signature = self.signer.sign("POST", path, body.as_bytes());
        let response = self
            .client
            .post(&url)
            .header("content-type", "application/json")
            .header(HEADER, signature)
            .body(body)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|source| InitError::NoAnswer {
                backend: name(),
                url: url.clone(),
                shard,
                source,
            })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<InitColonyShardResponse>(&text) {
            Ok(InitColonyShardResponse::Ok {
                population,
                fingerprint,
                ..
            }) if status.is_success() => {
                let fingerprint =
                    fingerprint
                        .parse::<u64>()
                        .map_err(|source| InitError::BadFingerprint {
                            backend: name(),
                            source,
                        })?;
                Ok((population, fingerprint))
            }
            Ok(InitColonyShardResponse::Error { message }) => Err(InitError::Refused {
                backend: name(),
                shard,
                message,
            }),
            _ => Err(InitError::BadAnswer {
                backend: name(),
                status,
                shard,
                body: text,
            }),
        }
    }
}
