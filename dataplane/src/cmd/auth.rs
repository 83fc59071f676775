//! `HELLO` and `AUTH`: a node proves it holds the cluster secret by signing a fresh nonce.
//! A failed proof closes the connection, so secrets cannot be guessed at line rate.

use codec::Message;
use tracing::{info, warn};

use super::{Answer, Session};
use crate::state::Shared;

/// Longest instance id accepted in a HELLO.
const MAX_ID: usize = 128;

/// The answer to HELLO and AUTH on a node started without a cluster secret.
fn unavailable() -> Message {
    Message::error(
        "auth_unavailable",
        "this node has no cluster secret configured",
    )
}

pub(crate) fn hello(shared: &Shared, session: &mut Session, instance_id: String) -> Message {
    if shared.identity.is_none() {
        return unavailable();
    }
    if session.not_a_node {
        shared.refusals.refused("not_a_node_certificate");
        return Message::error(
            "not_a_node_certificate",
            "HELLO needs a node certificate from the cluster CA naming this connection's address",
        );
    }
    if instance_id.is_empty()
        || instance_id.len() > MAX_ID
        || instance_id.chars().any(char::is_control)
    {
        return Message::error(
            "bad_hello",
            format!("instance_id must be 1 to {MAX_ID} printable characters"),
        );
    }
    match shared::hello::new_nonce() {
        Ok(nonce) => {
            session.challenge = Some((nonce.clone(), instance_id));
            Message::Challenge { nonce }
        }
        Err(e) => Message::error("internal", format!("cannot draw a nonce: {e}")),
    }
}

pub(crate) fn auth(
    shared: &Shared,
    session: &mut Session,
    instance_id: &str,
    key_id: &str,
    mac: &str,
) -> Answer {
    let Some(identity) = &shared.identity else {
        return Answer::Now(unavailable());
    };
    let Some((nonce, claimed)) = session.challenge.take() else {
        return Answer::Now(Message::error(
            "bad_auth",
            "send HELLO first to get a nonce",
        ));
    };
    let ok = claimed == instance_id
        && key_id == identity.secret.key_id()
        && shared::hello::verify(&identity.secret, &nonce, instance_id, mac);
    if ok {
        info!(peer = instance_id, "data-plane peer authenticated");
        session.peer = Some(instance_id.to_owned());
        // A node reads everything.
        session.may_read = true;
        Answer::Now(Message::Welcome {
            instance_id: identity.instance_id.clone(),
        })
    } else {
        shared.refusals.refused("auth_failed");
        warn!(
            claimed = instance_id,
            "data-plane authentication failed; closing"
        );
        Answer::Close(Message::error(
            "auth_failed",
            "authentication failed: the proof does not match this cluster's secret",
        ))
    }
}
