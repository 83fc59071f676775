//! `{"type":"echo","payload":...}`: sends the payload back (a throughput probe).

use codec::Message;

pub(crate) fn apply(payload: Vec<u8>) -> Message {
    Message::EchoReply { payload }
}
