//! `PING` / `{"type":"ping"}`: answers `PONG`.

use codec::Message;

pub(crate) fn apply() -> Message {
    Message::Pong
}
