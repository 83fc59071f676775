//! The frames of the persistent heartbeat channel (DESIGN §9, §13): a WebSocket at
//! [`CHANNEL_PATH`] on the coordinator's management port, over which a node sends its
//! heartbeats (and its goodbye) instead of one `POST /heartbeat` each.
//!
//! Each text frame is one signed heartbeat: the `Colony-Signature` value, a newline, then the
//! heartbeat's JSON, exactly the body `POST /heartbeat` would carry. The MAC covers
//! `CHANNEL \n /heartbeat/ws \n ts \n body`, so a frame cannot be replayed as a `POST` (nor
//! the other way round). The coordinator answers each frame with one text frame: `{"seq":N,
//! "status":"<state>"}`, or `{"error":"…","code":"<reason>"}` when it refused it.

use serde::{Deserialize, Serialize};

/// Where the channel is served.
pub const CHANNEL_PATH: &str = "/heartbeat/ws";
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
}
