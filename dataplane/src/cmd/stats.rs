//! `STATS` / `{"type":"stats"}`: the server's counters as one JSON line.

use codec::Message;

use crate::state::Shared;

pub(crate) fn apply(shared: &Shared) -> Message {
    Message::StatsReply(shared.stats.snapshot())
}
