//! What can go wrong in the coordinator's colony work, by cause: a bad start request
//! ([`StartRequestError`]), one shard's init ([`InitError`]), a backend's data-plane link
//! ([`BackendError`]), the picture ([`ImageError`]), and the lifecycle operations that
//! gather them ([`ColonyError`]).
//!
//! Nothing here knows HTTP: [`crate::error`] gives each cause its status, in one place. The
//! messages are the ones users see, in answers and in `GET /colony`'s `error`.

use std::time::Duration;

use codec::Message;
use dataplane::ClientError;
use shared::registry::RegistryError;
use shared::sim::{ParamsError, RuleError};
use shared::token::IssueError;
use shared::topology::{ShardCoord, TopologyError};

/// Why a `POST /colony-start` body was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartRequestError {
    /// The world or shard dimensions are out of range.
    #[error(transparent)]
    Dimensions(TopologyError),
    /// The rule is not `B…/S…`.
    #[error("invalid rule {rule:?}: {source}")]
    Rule {
        /// The rule as sent.
        rule: String,
        /// What is wrong with it.
        source: RuleError,
    },
    /// The seed, density or pattern settings are out of range.
    #[error(transparent)]
    Simulation(TopologyError),
    /// A pattern cell lies outside the world (or there are too many).
    #[error("invalid cells: {0}")]
    Cells(#[source] ParamsError),
    /// The halo depth does not fit a shard.
    #[error(transparent)]
    HaloDepth(ParamsError),
}

/// Why one shard's `POST /init-colony-shard` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The init token could not be signed.
    #[error("cannot issue a token for {backend}: {source}")]
    Token {
        /// The backend the shard is placed on.
        backend: String,
        /// Why.
        source: IssueError,
    },
    /// The request body could not be written.
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
    /// The backend did not answer.
    #[error("{backend} ({url}) did not answer the init of shard {shard}: {source}")]
    NoAnswer {
        /// The backend.
        backend: String,
        /// Where it was asked.
        url: String,
        /// The shard.
        shard: ShardCoord,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The backend built the shard but sent a fingerprint that is not a number.
    #[error("{backend} sent a bad fingerprint: {source}")]
    BadFingerprint {
        /// The backend.
        backend: String,
        /// Why it does not parse.
        source: std::num::ParseIntError,
    },
    /// The backend refused the shard, saying why.
    #[error("{backend} refused shard {shard}: {message}")]
    Refused {
        /// The backend.
        backend: String,
        /// The shard.
        shard: ShardCoord,
        /// The backend's reason.
        message: String,
    },
    /// The backend answered something that is not an init answer.
    #[error("{backend} answered {status} to the init of shard {shard}: {body}")]
    BadAnswer {
        /// The backend.
        backend: String,
        /// The HTTP status of the answer.
        status: reqwest::StatusCode,
        /// The shard.
        shard: ShardCoord,
        /// The answer's body.
        body: String,
    },
}

/// Why a backend's data-plane link failed. Any of these is trouble for the colony's run:
/// the supervisor places the backend's shards elsewhere, or fails the run.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend could not be connected to or refused the coordinator's authentication.
    #[error("cannot reach {backend} at {address}: {source}")]
    Unreachable {
        /// The backend.
        backend: String,
        /// Its data-plane address.
        address: String,
        /// Why.
        source: ClientError,
    },
    /// A command went to a backend the run has no link to (a bug).
    #[error("no command link to {backend}")]
    NoLink {
        /// The backend.
        backend: String,
    },
    /// The backend answered a command with an error.
    #[error("{backend} refused: {code}: {message}")]
    Refused {
        /// The backend.
        backend: String,
        /// Its error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The link broke while a command waited for its answer.
    #[error("{backend} did not answer: {source}")]
    NoAnswer {
        /// The backend.
        backend: String,
        /// Why.
        source: ClientError,
    },
    /// A command's answer did not come within the stall limit.
    #[error("{backend} did not answer within {after:?}")]
    Timeout {
        /// The backend.
        backend: String,
        /// How long it was given.
        after: Duration,
    },
    /// The backend reports that its part of the run failed.
    #[error("{backend} failed: {reason}")]
    Failed {
        /// The backend.
        backend: String,
        /// Its reason.
        reason: String,
        /// The peer it says it cannot reach, when that is why (a cut path between two
        /// backends, or a lost peer: the re-placement's fence tells the two apart).
        unreachable_peer: Option<String>,
    },
    /// The backend answered a report request with something else.
    #[error("{backend} answered a report with {answer:?}")]
    UnexpectedAnswer {
        /// The backend.
        backend: String,
        /// What it sent.
        answer: Box<Message>,
    },
    /// The report link broke.
    #[error("{backend} stopped answering: {source}")]
    StoppedAnswering {
        /// The backend.
        backend: String,
        /// Why.
        source: ClientError,
    },
    /// No progress came within the report wait plus the stall limit.
    #[error("{backend} sent no progress for {silence:?}; it is stalled or gone")]
    Stalled {
        /// The backend.
        backend: String,
        /// How long it was silent.
        silence: Duration,
    },
}

impl BackendError {
    /// The backend it is about.
    pub fn backend(&self) -> &str {
        match self {
            BackendError::Unreachable { backend, .. }
            | BackendError::NoLink { backend }
            | BackendError::Refused { backend, .. }
            | BackendError::NoAnswer { backend, .. }
            | BackendError::Timeout { backend, .. }
            | BackendError::Failed { backend, .. }
            | BackendError::UnexpectedAnswer { backend, .. }
            | BackendError::StoppedAnswering { backend, .. }
            | BackendError::Stalled { backend, .. } => backend,
        }
    }
}

/// Why the world's picture could not be made (a bug, not bad input).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The picture is wider or taller than PNG allows.
    #[error("the picture is too large: {0}")]
    TooLarge(#[from] std::num::TryFromIntError),
    /// The PNG encoder failed.
    #[error("cannot encode the picture: {0}")]
    Encode(#[from] png::EncodingError),
}

/// Why a colony operation (start, run, pause, picture) failed.
#[derive(Debug, thiserror::Error)]
pub enum ColonyError {
    /// The start request is invalid.
    #[error(transparent)]
    InvalidRequest(#[from] StartRequestError),
    /// The registry could not be read to find backends.
    #[error("cannot read the cluster registry ({registry}): {source}")]
    Registry {
        /// Which registry.
        registry: String,
        /// Why (boxed: registry errors are large, and this one is rare).
        source: Box<RegistryError>,
    },
    /// No registered backend answers its liveness probe.
    #[error("no live backend: none registered in {registry} answers on its management port; start one with `colony backend`")]
    NoLiveBackend {
        /// Which registry was read.
        registry: String,
    },
    /// No colony id could be drawn (the system's random source failed).
    #[error("cannot draw a colony id: {0}")]
    ColonyId(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The shards cannot be placed on the live backends.
    #[error(transparent)]
    Placement(TopologyError),
    /// The topology could not be written for the inits (a bug).
    #[error("cannot encode the topology: {0}")]
    EncodeTopology(#[source] serde_json::Error),
    /// Some shards' inits failed.
    #[error("{failed} of {total} shard inits failed; first: {first}")]
    InitFailed {
        /// How many failed.
        failed: usize,
        /// How many shards there are.
        total: u32,
        /// The first failure.
        first: Box<InitError>,
    },
    /// A backend's data-plane link failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// No colony has been started.
    #[error("no colony: start one with POST /colony-start")]
    NoColony,
    /// The colony's start failed; only a restart helps.
    #[error("the colony failed to start ({reason}); POST /colony-start {{\"restart\":true}}")]
    StartFailed {
        /// Why the start failed.
        reason: String,
    },
    /// The colony's run failed; only a restart helps.
    #[error("colony {colony_id} failed ({reason}); start a new one with POST /colony-start {{\"restart\":true}}")]
    RunFailed {
        /// The colony.
        colony_id: String,
        /// Why the run failed.
        reason: String,
    },
    /// The picture could not be made.
    #[error(transparent)]
    Image(#[from] ImageError),
}
