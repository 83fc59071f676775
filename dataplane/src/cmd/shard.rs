//! `SHARD x y` / `{"type":"shard","x":..,"y":..}`: one shard's cells as rows of `.` and `#`.

use codec::Message;

use crate::shards::ShardStore;

pub(crate) fn apply(store: &ShardStore, x: u32, y: u32) -> Message {
    store.view(x, y).unwrap_or_else(|| {
        Message::error(
            "no_such_shard",
            format!("shard ({x}, {y}) is not held by this node; send SHARDS for the list"),
        )
    })
}
