//! Request handlers, one file per command. Each turns a typed request into its answer; none
//! sees bytes or sockets.

mod auth;
mod colony;
mod echo;
mod help;
mod ping;
mod recovery;
mod shard;
mod shards;
mod stats;
mod token;

use std::future::Future;
use std::pin::Pin;

use codec::Message;

use crate::state::Shared;

/// What a connection learned about its peer.
#[derive(Debug)]
pub(crate) struct Session {
    /// The nonce of a HELLO awaiting its AUTH, and the id it claimed.
    pub(crate) challenge: Option<(String, String)>,
    /// The authenticated peer's instance id.
    pub(crate) peer: Option<String>,
    /// Reads are answered: always, unless `--protect-reads`; then after AUTH or TOKEN.
    pub(crate) may_read: bool,
    /// Over TLS, the peer showed no node certificate for its address: HELLO is refused.
    pub(crate) not_a_node: bool,
}

impl Session {
    /// A new connection's session on `shared`.
    pub(crate) fn new(shared: &Shared) -> Self {
        Session {
            challenge: None,
            peer: None,
            may_read: !shared.access.protect_reads,
            not_a_node: false,
        }
    }
}

/// A request refused: the code and text of its error frame. (Kept apart from [`Message`],
/// whose larger variants would make every `Result` carrying it large.)
#[derive(Debug)]
pub(crate) struct Refusal {
    code: &'static str,
    message: String,
}

impl Refusal {
    /// A refusal with a stable `code` and a text a person can act on.
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// The error frame.
    pub(crate) fn into_message(self) -> Message {
        Message::error(self.code, self.message)
    }
}

/// An answer to send later (a long poll).
pub(crate) type Deferred = Pin<Box<dyn Future<Output = Message> + Send>>;

/// How a request is answered.
pub(crate) enum Answer {
    /// Right away.
    Now(Message),
    /// When the future resolves; later requests on the connection wait for it.
    Later(Deferred),
    /// Right away, then the connection is closed (a failed authentication).
    Close(Message),
    /// Success needs no answer in the binary framing (borders: one fewer message per tick);
    /// a text client still gets this message, so every line has its answer.
    Quiet(Message),
}

/// Answers one request.
pub(crate) fn dispatch(request: Message, shared: &Shared, session: &mut Session) -> Answer {
    let now = Answer::Now;
    match request {
        Message::Ping => now(ping::apply()),
        Message::Hello { instance_id } => now(auth::hello(shared, session, instance_id)),
        Message::Auth {
            instance_id,
            key_id,
            mac,
        } => auth::auth(shared, session, &instance_id, &key_id, &mac),
        Message::Token { token } => token::apply(shared, session, &token),
        // After PING, so the commonest request never reads the flag.
        request if !session.may_read => {
            shared.refusals.refused("reads_protected");
            now(Message::error(
                "unauthenticated",
                format!(
                    "{} is a read, and reads on this node are protected: send TOKEN <operator token> first (or HELLO as a node)",
                    request.type_name()
                ),
            ))
        }
        Message::Help => now(help::apply()),
        Message::Stats => now(stats::apply(shared)),
        Message::Echo { payload } => now(echo::apply(payload)),
        Message::Shards => now(shards::apply(&shared.store)),
        Message::Shard { x, y } => now(shard::apply(&shared.store, x, y)),
        message @ (Message::Halo { .. }
        | Message::Replica { .. }
        | Message::Run { .. }
        | Message::Pause { .. }
        | Message::Report { .. }
        | Message::Commit { .. }) => match &session.peer {
            None => now(unauthenticated(shared, &message)),
            Some(_) => colony::apply(shared, message),
        },
        message @ (Message::Describe
        | Message::Fence { .. }
        | Message::Fetch { .. }
        | Message::Install { .. }
        | Message::Restore { .. }
        | Message::Stop { .. }) => match &session.peer {
            None => now(unauthenticated(shared, &message)),
            Some(_) => recovery::apply(shared, message),
        },
        // Replies and errors are what a server sends, not what it serves.
        other => now(Message::error(
            "not_a_request",
            format!(
                "{:?} is a reply, not a request; send HELP for the requests",
                other.type_name()
            ),
        )),
    }
}

/// The refusal of a node-to-node message on a connection that did not authenticate.
fn unauthenticated(shared: &Shared, message: &Message) -> Message {
    shared.refusals.refused("unauthenticated");
    let what = match message {
        Message::Describe | Message::Fetch { .. } => "is for nodes only",
        _ => "changes cluster state",
    };
    Message::error(
        "unauthenticated",
        format!(
            "{} {what} and needs an authenticated connection: send HELLO first",
            message.type_name()
        ),
    )
}
