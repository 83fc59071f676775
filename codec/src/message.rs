//! The message catalogue: every message either framing can carry.
//!
//! One serde enum tagged by `"type"` serves both framings, so a handler is written once. In the
//! text framing a message is one JSON object on one line; in the binary framing it is the same
//! object encoded as a MessagePack map. The human commands of the text framing (`PING`, `HELP`,
//! …) are parsed into these same messages by [`crate::text`].
//!
//! The `"type"` tags are listed once, in the `catalogue!` table below, which also says which
//! messages a client may send; the code that needs them (the JSON `help_reply`, error texts,
//! the parser's "unknown type" check) takes them from there. Only the prose of the text
//! framing's help line names a few by hand.

use serde::{Deserialize, Serialize};

use crate::copies::{ColonyInfo, Held, HeldCopies, ShardCells, ShardRef};

/// How a request was expressed, so that its answer is expressed the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A human text command such as `PING`.
    Command,
    /// A JSON object on a text line.
    Json,
    /// A MessagePack frame.
    Binary,
}

/// A message of the data-plane protocol, in either direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Liveness probe; answered with [`Message::Pong`].
    Ping,
    /// The answer to [`Message::Ping`].
    Pong,
    /// Asks for the list of commands; answered with [`Message::HelpReply`].
    Help,
    /// The commands this server understands.
    HelpReply {
        /// One entry per command or message type.
        commands: Vec<String>,
    },
    /// Asks for the server's counters; answered with [`Message::StatsReply`].
    Stats,
    /// The server's counters at the moment of the request.
    StatsReply(StatsSnapshot),
    /// Asks the server to send the payload back unchanged (used to measure binary throughput).
    Echo {
        /// Opaque bytes, returned as they came.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// The answer to [`Message::Echo`].
    EchoReply {
        /// The request's payload.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Asks which shards this node holds; answered with [`Message::ShardsReply`].
    Shards,
    /// The shards this node holds.
    ShardsReply {
        /// The colony they belong to; `None` before any colony was started here.
        colony_id: Option<String>,
        /// One entry per shard, in `(y, x)` order.
        shards: Vec<ShardSummary>,
    },
    /// Asks for one shard's cells; answered with [`Message::ShardView`].
    Shard {
        /// Shard column.
        x: u32,
        /// Shard row.
        y: u32,
    },
    /// One shard's cells at its current tick.
    ShardView {
        /// The colony.
        colony_id: String,
        /// Shard column.
        x: u32,
        /// Shard row.
        y: u32,
        /// The tick the cells belong to.
        tick: u64,
        /// Cells per row.
        width: u32,
        /// Rows.
        height: u32,
        /// Live cells.
        population: u64,
        /// One string per row, `#` alive and `.` dead.
        rows: Vec<String>,
    },
    /// Starts authentication (node to node): answered with [`Message::Challenge`].
    Hello {
        /// Who is connecting (an instance id, or `coordinator`).
        instance_id: String,
    },
    /// A fresh random nonce to sign.
    Challenge {
        /// Hex nonce.
        nonce: String,
    },
    /// Proof of the cluster secret: an HMAC over the nonce and instance id.
    Auth {
        /// The id given in [`Message::Hello`].
        instance_id: String,
        /// Which secret signed.
        key_id: String,
        /// Hex HMAC-SHA256 (see `shared::hello`).
        mac: String,
    },
    /// Authentication succeeded: state-changing messages are accepted from now on.
    Welcome {
        /// The server's own instance id.
        instance_id: String,
    },
    /// The operator's token (`TOKEN <token>`): on a node with `--protect-reads`, reads are
    /// answered from then on. It grants reads only; state changes stay a node's (HELLO/AUTH).
    Token {
        /// The operator token, as it is.
        token: Redacted,
    },
    /// The token was right: reads are answered on this connection from now on.
    TokenAccepted,
    /// Border cells of one tick, sent by the backend that holds the neighbouring shards: a
    /// band as deep as the colony's `halo_depth`, which covers that many ticks.
    Halo {
        /// The colony.
        colony_id: String,
        /// The placement the sender ticks in; a receiver in another one refuses the border.
        #[serde(default)]
        epoch: u64,
        /// The tick the cells belong to.
        tick: u64,
        /// Each edge names the receiving shard and the side of its margin it fills.
        edges: Vec<HaloEdge>,
    },
    /// A [`Message::Halo`] was stored.
    HaloAck {
        /// Its tick.
        tick: u64,
    },
    /// Coordinator to backend: tick until `until_tick`.
    Run {
        /// The colony.
        colony_id: String,
        /// The placement the coordinator steers.
        #[serde(default)]
        epoch: u64,
        /// Stop after reaching this tick.
        until_tick: u64,
        /// Record population and fingerprint at ticks divisible by this (and at `until_tick`).
        checkpoint_every: u64,
    },
    /// Coordinator to backend: stop at the current tick; answered with [`Message::Progress`].
    Pause {
        /// The colony.
        colony_id: String,
        /// The placement the coordinator steers.
        #[serde(default)]
        epoch: u64,
    },
    /// Coordinator to backend: report progress past `after_tick`, waiting up to `wait_ms`.
    Report {
        /// The colony.
        colony_id: String,
        /// The placement the coordinator follows.
        #[serde(default)]
        epoch: u64,
        /// Checkpoints at or before this tick are already known.
        after_tick: u64,
        /// Longest wait for news, in milliseconds.
        wait_ms: u64,
    },
    /// A backend's progress.
    Progress {
        /// The colony.
        colony_id: String,
        /// The placement this backend ticks in.
        #[serde(default)]
        epoch: u64,
        /// The tick every shard of this backend has reached.
        tick: u64,
        /// The tick it is running to.
        until_tick: u64,
        /// `idle`, `running` or `failed`.
        state: String,
        /// Why it failed, if it did.
        error: Option<String>,
        /// When it failed because it could not reach a peer backend (a link it could not
        /// establish or use again within a bound, while the peer may be alive): the peer's
        /// instance id, so the coordinator can tell a cut link from a lost backend.
        /// Optional and omitted when empty: older coordinators ignore it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unreachable_peer: Option<String>,
        /// Figures of this backend's shards at recorded ticks after `after_tick`.
        checkpoints: Vec<Checkpoint>,
        /// Per checkpoint tick this backend keeps copies at: how many shards it holds a
        /// replica of for their owners (DESIGN §14).
        #[serde(default)]
        held: Vec<Held>,
    },
    /// Owner to replica holder: the cells of the owner's shards at a checkpoint tick
    /// (DESIGN §14). Stored silently in the binary framing, like a border.
    Replica {
        /// The colony.
        colony_id: String,
        /// The placement the owner ticks in; a holder in another one refuses the copy.
        epoch: u64,
        /// The checkpoint tick the cells belong to.
        tick: u64,
        /// One entry per shard.
        shards: Vec<ShardCells>,
    },
    /// Coordinator to backend: checkpoint `tick` is consistent (every backend reported its
    /// figures and every replica arrived), so older copies can go and ticking may go on.
    Commit {
        /// The colony.
        colony_id: String,
        /// The placement the coordinator steers.
        epoch: u64,
        /// The consistent checkpoint tick.
        tick: u64,
    },
    /// The answer to [`Message::Commit`].
    Committed {
        /// The newest consistent tick this backend knows.
        tick: u64,
    },
    /// Coordinator to backend: the colony is over (failed or replaced); stop ticking for good
    /// and drop its copies.
    Stop {
        /// The colony.
        colony_id: String,
        /// The placement the coordinator steered; a newer one on this backend is kept.
        epoch: u64,
        /// Why, for the backend's log and its progress.
        reason: String,
    },
    /// The answer to [`Message::Stop`].
    Stopped {
        /// The colony.
        colony_id: String,
    },
    /// Coordinator to backend: which colony do you hold? (A restarted coordinator re-adopts
    /// the colony its backends kept.)
    Describe,
    /// The answer to [`Message::Describe`].
    Described {
        /// The colony this backend is part of, if any.
        colony: Option<ColonyInfo>,
    },
    /// Coordinator to backend, first step of a re-placement: stop ticking, refuse anything
    /// from an older placement from now on, and list the copies held.
    Fence {
        /// The colony.
        colony_id: String,
        /// The new placement's epoch.
        epoch: u64,
    },
    /// The answer to [`Message::Fence`].
    Inventory {
        /// The colony.
        colony_id: String,
        /// The epoch this backend is now fenced at.
        epoch: u64,
        /// The newest consistent tick it was told.
        committed: u64,
        /// The tick its shards had reached.
        tick: u64,
        /// The tick it was running to.
        until_tick: u64,
        /// The copies it keeps, by tick (its own shards' and replicas alike).
        copies: Vec<HeldCopies>,
    },
    /// Coordinator to backend: send the copy of one shard at one tick.
    Fetch {
        /// The colony.
        colony_id: String,
        /// The checkpoint tick.
        tick: u64,
        /// Shard column.
        x: u32,
        /// Shard row.
        y: u32,
    },
    /// The answer to [`Message::Fetch`].
    Cells {
        /// The colony.
        colony_id: String,
        /// The checkpoint tick.
        tick: u64,
        /// The shard's cells.
        cells: ShardCells,
    },
    /// Coordinator to backend: keep these copies (shards it is about to own).
    Install {
        /// The colony.
        colony_id: String,
        /// The placement being built.
        epoch: u64,
        /// The checkpoint tick.
        tick: u64,
        /// One entry per shard.
        shards: Vec<ShardCells>,
    },
    /// The answer to [`Message::Install`].
    Installed {
        /// Shards stored.
        shards: u32,
    },
    /// Coordinator to backend, last step of a re-placement: take the new placement and set
    /// every shard it gives this backend back to checkpoint `tick` from the copies held.
    Restore {
        /// The colony.
        colony_id: String,
        /// The new placement's epoch.
        epoch: u64,
        /// The new placement, as `GET /topology` shows it.
        topology: String,
        /// The consistent checkpoint to go back to.
        tick: u64,
        /// Figures every this many ticks, as in [`Message::Run`].
        checkpoint_every: u64,
    },
    /// The answer to [`Message::Restore`]: this backend's shards are at `figures.tick`.
    Restored {
        /// The colony.
        colony_id: String,
        /// The placement now in force here.
        epoch: u64,
        /// Population and fingerprint of the shards restored here.
        figures: Checkpoint,
        /// The shards restored here.
        shards: Vec<ShardRef>,
    },
    /// A request could not be served. `code` is a stable machine-readable word; `message` says
    /// why in words a person can act on.
    Error {
        /// Stable identifier of the failure, e.g. `line_too_long`.
        code: String,
        /// Human-readable cause.
        message: String,
    },
}

impl Message {
    /// Builds an [`Message::Error`].
    pub fn error(code: impl Into<String>, message: impl Into<String>) -> Self {
        Message::Error {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Generates, from one list of `Variant => "tag"` lines (marked `request` where a client may
/// send it), [`Message::ALL_TYPES`], [`Message::REQUEST_TYPES`] and [`Message::type_name`].
/// The match in `type_name` makes a variant missing from the list a compile error; a test
/// checks each tag against the one serde writes.
macro_rules! catalogue {
    // REQUEST_TYPES: the tags marked `request`, in list order (a tt-muncher, since
    // macro_rules cannot filter a repetition).
    (@requests [$($acc:literal),*]) => { &[$($acc),*] };
    (@requests [$($acc:literal),*] $variant:ident => $tag:literal request; $($rest:tt)*) => {
        catalogue!(@requests [$($acc,)* $tag] $($rest)*)
    };
    (@requests [$($acc:literal),*] $variant:ident => $tag:literal; $($rest:tt)*) => {
        catalogue!(@requests [$($acc),*] $($rest)*)
    };
    ($($variant:ident => $tag:literal $($request:ident)?;)*) => {
        impl Message {
            /// Every `"type"` tag of the catalogue, requests and replies.
            pub const ALL_TYPES: &'static [&'static str] = &[$($tag),*];

            /// The `"type"` tags of every message a client may send, in the order `HELP`
            /// lists them.
            pub const REQUEST_TYPES: &'static [&'static str] =
                catalogue!(@requests [] $($variant => $tag $($request)?;)*);

            /// This message's `"type"` tag, as it goes on the wire.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(Message::$variant { .. } => $tag,)*
                }
            }
        }
    };
}

catalogue! {
    Ping => "ping" request;
    Pong => "pong";
    Help => "help" request;
    HelpReply => "help_reply";
    Stats => "stats" request;
    StatsReply => "stats_reply";
    Echo => "echo" request;
    EchoReply => "echo_reply";
    Shards => "shards" request;
    ShardsReply => "shards_reply";
    Shard => "shard" request;
    ShardView => "shard_view";
    Hello => "hello" request;
    Challenge => "challenge";
    Auth => "auth" request;
    Welcome => "welcome";
    Token => "token" request;
    TokenAccepted => "token_accepted";
    Halo => "halo" request;
    HaloAck => "halo_ack";
    Run => "run" request;
    Pause => "pause" request;
    Report => "report" request;
    Progress => "progress";
    Replica => "replica" request;
    Commit => "commit" request;
    Committed => "committed";
    Stop => "stop" request;
    Stopped => "stopped";
    Describe => "describe" request;
    Described => "described";
    Fence => "fence" request;
    Inventory => "inventory";
    Fetch => "fetch" request;
    Cells => "cells";
    Install => "install" request;
    Installed => "installed";
    Restore => "restore" request;
    Restored => "restored";
    Error => "error";
}

/// A string that is a credential: carried as it is on the wire, but `Debug` never shows it,
/// so a logged message cannot leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Server counters reported by `STATS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Connections open now.
    pub connections: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections turned away because the limit was reached.
    pub connections_refused: u64,
    /// Requests decoded, valid or not.
    pub frames_in: u64,
    /// Responses written.
    pub frames_out: u64,
    /// Requests answered with an error, plus connections closed on a framing error.
    pub errors: u64,
    /// Seconds since the server started.
    pub uptime_secs: u64,
}

/// One line of `SHARDS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSummary {
    /// Shard column.
    pub x: u32,
    /// Shard row.
    pub y: u32,
    /// Its current tick.
    pub tick: u64,
    /// Its live cells.
    pub population: u64,
}

/// One border block of a [`Message::Halo`]: a rectangle of cells for one side of the
/// receiving shard's margin (`shard_width` × depth for north and south, depth ×
/// `shard_height` for east and west, depth × depth for corners).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaloEdge {
    /// Receiving shard column.
    pub x: u32,
    /// Receiving shard row.
    pub y: u32,
    /// The side of the receiving shard's margin, as a direction index (0 = north, clockwise).
    pub side: u8,
    /// Cells per row of the block.
    pub width: u32,
    /// Rows of the block.
    pub height: u32,
    /// The cells, row by row, each row in `ceil(width / 8)` bytes, least significant bit first.
    #[serde(with = "serde_bytes")]
    pub bits: Vec<u8>,
}

/// Population and fingerprint of a set of shards at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The tick.
    pub tick: u64,
    /// Live cells.
    pub population: u64,
    /// Wrapping sum of live cells' hashes.
    pub fingerprint: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One message of every variant (the `match` keeps this list complete: a new variant
    /// does not compile until it is added here too).
    fn one_of_each() -> Vec<Message> {
        let all = vec![
            Message::Ping,
            Message::Pong,
            Message::Help,
            Message::HelpReply { commands: vec![] },
            Message::Stats,
            Message::StatsReply(StatsSnapshot::default()),
            Message::Echo { payload: vec![1] },
            Message::EchoReply { payload: vec![1] },
            Message::Shards,
            Message::ShardsReply {
                colony_id: None,
                shards: vec![],
            },
            Message::Shard { x: 0, y: 0 },
            Message::ShardView {
                colony_id: "c".into(),
                x: 0,
                y: 0,
                tick: 0,
                width: 0,
                height: 0,
                population: 0,
                rows: vec![],
            },
            Message::Hello {
                instance_id: "i".into(),
            },
            Message::Challenge { nonce: "n".into() },
            Message::Auth {
                instance_id: "i".into(),
                key_id: "k".into(),
                mac: "m".into(),
            },
            Message::Welcome {
                instance_id: "i".into(),
            },
            Message::Token {
                token: Redacted("t".into()),
            },
            Message::TokenAccepted,
            Message::Halo {
                colony_id: "c".into(),
                epoch: 0,
                tick: 0,
                edges: vec![],
            },
            Message::HaloAck { tick: 0 },
            Message::Run {
                colony_id: "c".into(),
                epoch: 0,
                until_tick: 0,
                checkpoint_every: 1,
            },
            Message::Pause {
                colony_id: "c".into(),
                epoch: 0,
            },
            Message::Report {
                colony_id: "c".into(),
                epoch: 0,
                after_tick: 0,
                wait_ms: 0,
            },
            Message::Progress {
                colony_id: "c".into(),
                epoch: 0,
                tick: 0,
                until_tick: 0,
                state: "idle".into(),
                error: None,
                unreachable_peer: None,
                checkpoints: vec![],
                held: vec![],
            },
            Message::Replica {
                colony_id: "c".into(),
                epoch: 1,
                tick: 100,
                shards: vec![ShardCells::default()],
            },
            Message::Commit {
                colony_id: "c".into(),
                epoch: 1,
                tick: 100,
            },
            Message::Committed { tick: 100 },
            Message::Stop {
                colony_id: "c".into(),
                epoch: 1,
                reason: "r".into(),
            },
            Message::Stopped {
                colony_id: "c".into(),
            },
            Message::Describe,
            Message::Described { colony: None },
            Message::Fence {
                colony_id: "c".into(),
                epoch: 2,
            },
            Message::Inventory {
                colony_id: "c".into(),
                epoch: 2,
                committed: 100,
                tick: 120,
                until_tick: 200,
                copies: vec![],
            },
            Message::Fetch {
                colony_id: "c".into(),
                tick: 100,
                x: 0,
                y: 0,
            },
            Message::Cells {
                colony_id: "c".into(),
                tick: 100,
                cells: ShardCells::default(),
            },
            Message::Install {
                colony_id: "c".into(),
                epoch: 2,
                tick: 100,
                shards: vec![],
            },
            Message::Installed { shards: 0 },
            Message::Restore {
                colony_id: "c".into(),
                epoch: 2,
                topology: "{}".into(),
                tick: 100,
                checkpoint_every: 100,
            },
            Message::Restored {
                colony_id: "c".into(),
                epoch: 2,
                figures: Checkpoint {
                    tick: 100,
                    population: 0,
                    fingerprint: 0,
                },
                shards: vec![],
            },
            Message::error("x", "y"),
        ];
        for m in &all {
            match m {
                Message::Ping
                | Message::Pong
                | Message::Help
                | Message::HelpReply { .. }
                | Message::Stats
                | Message::StatsReply(_)
                | Message::Echo { .. }
                | Message::EchoReply { .. }
                | Message::Shards
                | Message::ShardsReply { .. }
                | Message::Shard { .. }
                | Message::ShardView { .. }
                | Message::Hello { .. }
                | Message::Challenge { .. }
                | Message::Auth { .. }
                | Message::Welcome { .. }
                | Message::Token { .. }
                | Message::TokenAccepted
                | Message::Halo { .. }
                | Message::HaloAck { .. }
                | Message::Run { .. }
                | Message::Pause { .. }
                | Message::Report { .. }
                | Message::Progress { .. }
                | Message::Replica { .. }
                | Message::Commit { .. }
                | Message::Committed { .. }
                | Message::Stop { .. }
                | Message::Stopped { .. }
                | Message::Describe
                | Message::Described { .. }
                | Message::Fence { .. }
                | Message::Inventory { .. }
                | Message::Fetch { .. }
                | Message::Cells { .. }
                | Message::Install { .. }
                | Message::Installed { .. }
                | Message::Restore { .. }
                | Message::Restored { .. }
                | Message::Error { .. } => {}
            }
        }
        all
    }

    #[test]
    fn a_token_never_shows_in_debug() {
        let message = Message::Token {
            token: Redacted("s3cret-operator-token".into()),
        };
        assert!(!format!("{message:?}").contains("s3cret"));
        let json = serde_json::to_string(&message).unwrap();
        assert_eq!(json, r#"{"type":"token","token":"s3cret-operator-token"}"#);
    }

    #[test]
    fn type_names_are_the_tags_serde_writes() {
        for message in one_of_each() {
            let json = serde_json::to_value(&message).unwrap();
            assert_eq!(json["type"], message.type_name(), "{message:?}");
        }
    }

    /// Nodes that predate epochs send no `epoch`: their messages read as epoch 0, the
    /// placement every colony starts in.
    #[test]
    fn a_message_without_an_epoch_is_epoch_zero() {
        let run: Message = serde_json::from_str(
            r#"{"type":"run","colony_id":"c","until_tick":9,"checkpoint_every":1}"#,
        )
        .unwrap();
        assert_eq!(
            run,
            Message::Run {
                colony_id: "c".into(),
                epoch: 0,
                until_tick: 9,
                checkpoint_every: 1,
            }
        );
        let progress: Message = serde_json::from_str(
            r#"{"type":"progress","colony_id":"c","tick":1,"until_tick":2,"state":"idle","error":null,"checkpoints":[]}"#,
        )
        .unwrap();
        assert!(
            matches!(progress, Message::Progress { epoch: 0, ref held, .. } if held.is_empty()),
            "{progress:?}"
        );
    }

    #[test]
    fn every_message_survives_messagepack() {
        for message in one_of_each() {
            let bytes = rmp_serde::to_vec_named(&message).unwrap();
            let back: Message = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(back, message);
        }
    }

    #[test]
    fn all_types_lists_every_variant_once_in_catalogue_order() {
        let names: Vec<&str> = one_of_each().iter().map(Message::type_name).collect();
        assert_eq!(names, Message::ALL_TYPES);
    }

    #[test]
    fn request_types_are_the_requests_in_catalogue_order() {
        assert_eq!(
            Message::REQUEST_TYPES,
            [
                "ping", "help", "stats", "echo", "shards", "shard", "hello", "auth", "token",
                "halo", "run", "pause", "report", "replica", "commit", "stop", "describe", "fence",
                "fetch", "install", "restore"
            ]
        );
    }
}
