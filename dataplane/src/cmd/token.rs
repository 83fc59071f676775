//! `TOKEN <operator token>`: the operator unlocks reads on a node with `--protect-reads`.
//! A wrong token closes the connection, as a failed AUTH does, so tokens cannot be guessed
//! at line rate.

use codec::{Message, Redacted};
use tracing::warn;

use super::{Answer, Session};
use crate::state::Shared;

pub(crate) fn apply(shared: &Shared, session: &mut Session, token: &Redacted) -> Answer {
    let Some(operator) = &shared.access.operator else {
        shared.refusals.refused("no_operator_token");
        return Answer::Now(Message::error(
            "auth_unavailable",
            "this node has no operator token configured (COLONY_OPERATOR_TOKEN or --operator-token-file)",
        ));
    };
    if operator.verify(token.0.as_bytes()) {
        session.may_read = true;
        Answer::Now(Message::TokenAccepted)
    } else {
        shared.refusals.refused("wrong_token");
        warn!("data-plane TOKEN refused; closing");
        Answer::Close(Message::error("auth_failed", "wrong operator token"))
    }
}
