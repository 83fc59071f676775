//! `HELP` / `{"type":"help"}`: the requests this server serves.

use codec::Message;

pub(crate) fn apply() -> Message {
    let mut commands: Vec<String> = ["PING", "HELP", "STATS"].map(String::from).to_vec();
    commands.extend(
        Message::REQUEST_TYPES
            .iter()
            .map(|t| format!("{{\"type\":\"{t}\"}}")),
    );
    Message::HelpReply { commands }
}
