//! Request handlers, one file per command. Each turns a typed request into its answer; none
//! sees bytes or sockets.

mod echo;
mod help;
mod ping;
mod shard;
mod shards;
mod stats;

use codec::Message;

use crate::server::Shared;

/// Answers one request.
pub(crate) fn dispatch(request: Message, shared: &Shared) -> Message {
    match request {
        Message::Ping => ping::apply(),
        Message::Help => help::apply(),
        Message::Stats => stats::apply(shared),
        Message::Echo { payload } => echo::apply(payload),
        Message::Shards => shards::apply(&shared.store),
        Message::Shard { x, y } => shard::apply(&shared.store, x, y),
        // Replies and errors are what a server sends, not what it serves.
        other => Message::error(
            "not_a_request",
            format!(
                "{:?} is a reply, not a request; send HELP for the requests",
                type_name(&other)
            ),
        ),
    }
}

/// The `"type"` tag of a message, for error texts.
fn type_name(message: &Message) -> &'static str {
    match message {
        Message::Ping => "ping",
        Message::Pong => "pong",
        Message::Help => "help",
        Message::HelpReply { .. } => "help_reply",
        Message::Stats => "stats",
        Message::StatsReply(_) => "stats_reply",
        Message::Echo { .. } => "echo",
        Message::EchoReply { .. } => "echo_reply",
        Message::Shards => "shards",
        Message::ShardsReply { .. } => "shards_reply",
        Message::Shard { .. } => "shard",
        Message::ShardView { .. } => "shard_view",
        Message::Error { .. } => "error",
    }
}
