//! `SHARDS` / `{"type":"shards"}`: the shards this node holds, with tick and population.

use codec::Message;

use crate::shards::ShardStore;

pub(crate) fn apply(store: &ShardStore) -> Message {
    store.summary()
}
