//! The frames of the persistent heartbeat channel (DESIGN §9, §13): a WebSocket at
//! [`CHANNEL_PATH`] on the coordinator's management port, over which a node sends its
//! heartbeats (and its goodbye) instead of one `POST /heartbeat` each.
//!
//! Each text frame is one signed heartbeat: the `Colony-Signature` value, a newline, then the
//! heartbeat's JSON, exactly the body `POST /heartbeat` would carry. The MAC covers
//! `CHANNEL \n /heartbeat/ws \n ts \n body`, so a frame cannot be replayed as a `POST` (nor
//! the other way round). The coordinator answers each frame with one text frame: `{"seq":N,
//! "status":"<state>"}`, or `{"error":"…","code":"<reason>"}` when it refused it.
//!
//! A channel opened as [`SPARSE_PATH`] (`?answers=sparse`, what backends do) is answered
//! sparsely instead: every refusal, the channel's first accepted heartbeat, any whose node is
//! not ACTIVE after it (a goodbye), and otherwise the first heartbeat after
//! [`SPARSE_ANSWER_EVERY`] without an answer. An accepted answer's `seq` then acknowledges
//! every frame up to it. A node learns as much (its heartbeats arrive, the coordinator is
//! alive), and the coordinator writes a few answers per node a minute instead of one per
//! heartbeat: at 10 000 nodes those writes were a third of its CPU, and at one answer per
//! 3 s still a sixth.
//!
//! A sender takes a sparsely answered channel for broken when frames have waited
//! [`SPARSE_ANSWER_TIMEOUT`] with no answer. That long wait is for a coordinator that is only
//! behind; a peer that is gone (its host down, the network cut) is noticed sooner by TCP
//! itself, since senders bound how long sent data may stay unacknowledged
//! ([`CHANNEL_TCP_USER_TIMEOUT`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the channel is served.
pub const CHANNEL_PATH: &str = "/heartbeat/ws";
/// The channel's path and query when it is answered sparsely.
pub const SPARSE_PATH: &str = "/heartbeat/ws?answers=sparse";
/// On a sparsely answered channel, an accepted heartbeat is answered at least this long after
/// the channel's previous answer: a node that beats every second hears from a live
/// coordinator every 20–21 s, well inside [`SPARSE_ANSWER_TIMEOUT`]. At 10 000 nodes on
/// loopback, one answer per node every 10 s was an eighth of the coordinator's CPU (each
/// write also delivers the segment into the peer); the answer only tells a node that the
/// coordinator still reads, and a host or network gone is noticed by TCP sooner
/// ([`CHANNEL_TCP_USER_TIMEOUT`]). Senders of older builds give up after 30 s, which these
/// answers still meet.
pub const SPARSE_ANSWER_EVERY: Duration = Duration::from_secs(20);

/// How long a sender lets frames on a sparsely answered channel wait for an answer before it
/// gives the channel up: three answer periods, so a coordinator that is behind (or paused
/// for some seconds) is not taken for a broken channel, which it would suspect at once.
pub const SPARSE_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a heartbeat a sender wrote may stay unacknowledged by the coordinator's host
/// before the sender's kernel closes the channel (`TCP_USER_TIMEOUT`): a coordinator whose
/// host or network is gone is noticed in this long, not after [`SPARSE_ANSWER_TIMEOUT`] (nor
/// after TCP's default of about a quarter of an hour). A live host acknowledges within
/// milliseconds even when the coordinator's process is behind.
pub const CHANNEL_TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// How a channel's accepted heartbeats are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Answers {
    /// Each one (the default: `curl`, `websocat`, older nodes).
    #[default]
    Every,
    /// As [`SPARSE_PATH`] says.
    Sparse,
}

impl Answers {
    /// The answering a channel's query string asks for; `None` for a query this does not
    /// know (`answers=` with another value).
    pub fn from_query(query: Option<&str>) -> Option<Answers> {
        let mut answers = Answers::Every;
        for pair in query.unwrap_or_default().split('&') {
            match pair.split_once('=') {
                Some(("answers", "sparse")) => answers = Answers::Sparse,
                Some(("answers", "every")) => answers = Answers::Every,
                Some(("answers", _)) => return None,
                _ => {}
            }
        }
        Some(answers)
    }
}

/// The method in the signed string of a channel frame.
pub const CHANNEL_METHOD: &str = "CHANNEL";

/// A frame: `signature`, a newline, `body`.
pub fn frame(signature: &str, body: &[u8]) -> String {
    let mut text = String::with_capacity(signature.len() + 1 + body.len());
    text.push_str(signature);
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(body));
    text
}

/// The signature value and the body of a frame; `None` when there is no newline.
pub fn split(text: &str) -> Option<(&str, &str)> {
    text.split_once('\n')
}

/// The coordinator's answer to one frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelAnswer {
    /// The `seq` of the heartbeat accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The node's state after it (`ACTIVE`, `LEFT`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why the frame was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The refusal's reason code (as in `colony_auth_refusals_total`, or `bad_request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_splits_back_into_its_parts() {
        let text = frame("key_id=k, ts=1, mac=00", br#"{"a":"b\nc"}"#);
        assert_eq!(
            split(&text),
            Some(("key_id=k, ts=1, mac=00", r#"{"a":"b\nc"}"#))
        );
        assert_eq!(split("no newline"), None);
    }

    #[test]
    fn the_query_says_how_frames_are_answered() {
        assert_eq!(Answers::from_query(None), Some(Answers::Every));
        assert_eq!(Answers::from_query(Some("")), Some(Answers::Every));
        assert_eq!(
            Answers::from_query(SPARSE_PATH.split_once('?').map(|(_, q)| q)),
            Some(Answers::Sparse)
        );
        assert_eq!(
            Answers::from_query(Some("x=1&answers=every")),
            Some(Answers::Every)
        );
        assert_eq!(Answers::from_query(Some("answers=some")), None);
    }
}
