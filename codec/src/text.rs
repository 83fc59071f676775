//! The text framing's line grammar: human commands and JSON messages.
//!
//! A line that starts with `{` is a JSON message of the catalogue; any other line is a command,
//! matched case-insensitively. This module parses one line that the codec has already cut out
//! (newline and `\r` removed); it never sees the stream.

use bytes::{BufMut, BytesMut};

use crate::{CodecError, Message, ProtocolError, Style};

/// The one-line answer to `HELP` in the text framing.
pub const HELP_LINE: &str = "commands: PING | HELP | STATS | SHARDS | SHARD <x> <y> | or a JSON \
message {\"type\":\"ping\"|\"help\"|\"stats\"|\"shards\"|\"shard\"|\"echo\",...} \
(one response per request line; SHARD answers a header line then one line per row)";

/// The answer to a command-style `PING`, newline included.
pub const PONG_LINE: &[u8] = b"PONG\n";

/// Parses one line. `Ok(None)` means the line was blank and needs no answer.
///
/// # Errors
/// Returns the [`ProtocolError`] the line deserves; the caller answers it and keeps going.
pub fn parse_line(line: &[u8]) -> Result<Option<(Message, Style)>, ProtocolError> {
    let line = std::str::from_utf8(line).map_err(|e| ProtocolError::InvalidUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    if line.starts_with('{') {
        return parse_json(line).map(|m| Some((m, Style::Json)));
    }
    parse_command(line).map(|m| Some((m, Style::Command)))
}

fn parse_command(line: &str) -> Result<Message, ProtocolError> {
    let mut words = line.split_ascii_whitespace();
    let verb = words.next().unwrap_or_default();
    let no_args =
        |msg: Message, usage: &'static str, words: &mut std::str::SplitAsciiWhitespace| {
            if words.next().is_some() {
                Err(ProtocolError::Usage(usage))
            } else {
                Ok(msg)
            }
        };
    if verb.eq_ignore_ascii_case("PING") {
        no_args(Message::Ping, "PING", &mut words)
    } else if verb.eq_ignore_ascii_case("HELP") {
        no_args(Message::Help, "HELP", &mut words)
    } else if verb.eq_ignore_ascii_case("STATS") {
        no_args(Message::Stats, "STATS", &mut words)
    } else if verb.eq_ignore_ascii_case("SHARDS") {
        no_args(Message::Shards, "SHARDS", &mut words)
    } else if verb.eq_ignore_ascii_case("TOKEN") {
        const USAGE: &str = "TOKEN <operator token>";
        match (words.next(), words.next()) {
            (Some(token), None) => Ok(Message::Token {
                token: crate::Redacted(token.to_owned()),
            }),
            _ => Err(ProtocolError::Usage(USAGE)),
        }
    } else if verb.eq_ignore_ascii_case("SHARD") {
        const USAGE: &str = "SHARD <x> <y> (shard column and row, from 0)";
        let mut number = || words.next().and_then(|w| w.parse::<u32>().ok());
        match (number(), number(), words.next()) {
            (Some(x), Some(y), None) => Ok(Message::Shard { x, y }),
            _ => Err(ProtocolError::Usage(USAGE)),
        }
    } else {
        // Echo back a bounded prefix only: the line may be up to the line limit long.
        let shown: String = verb.chars().take(64).collect();
        Err(ProtocolError::UnknownCommand(shown))
    }
}

/// Parses a JSON message, telling bad JSON, a missing or unknown `type` and bad fields apart.
fn parse_json(line: &str) -> Result<Message, ProtocolError> {
    match serde_json::from_str::<Message>(line) {
        Ok(message) => Ok(message),
        Err(e) if e.is_syntax() || e.is_eof() => Err(ProtocolError::BadJson(e.to_string())),
        Err(e) => {
            // Only on the error path: look again to say precisely what was wrong.
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| ProtocolError::BadJson(e.to_string()))?;
            let Some(kind) = value.get("type").and_then(|t| t.as_str()) else {
                return Err(ProtocolError::MissingType);
            };
            if !Message::ALL_TYPES.contains(&kind) {
                let shown: String = kind.chars().take(64).collect();
                return Err(ProtocolError::UnknownType(shown));
            }
            Err(ProtocolError::InvalidMessage {
                kind: kind.to_owned(),
                reason: e.to_string(),
            })
        }
    }
}

/// Appends `message` as one text line (with its `\n`) in the given style.
///
/// Command-style answers are plain words where a person expects them (`PONG`, the help line);
/// everything else, errors included, is one JSON object.
///
/// # Errors
/// [`CodecError::Encode`] only if serde cannot serialize the message, which would be a bug.
pub fn write_line(message: &Message, style: Style, dst: &mut BytesMut) -> Result<(), CodecError> {
    match (style, message) {
        (Style::Command, Message::Pong) => {
            // Already a whole line.
            dst.put_slice(PONG_LINE);
            return Ok(());
        }
        (Style::Command, Message::TokenAccepted) => dst.put_slice(b"OK"),
        (Style::Command, Message::HelpReply { .. }) => dst.put_slice(HELP_LINE.as_bytes()),
        (
            Style::Command,
            Message::ShardView {
                colony_id,
                x,
                y,
                tick,
                width,
                height,
                population,
                rows,
            },
        ) => {
            // A header giving the row count, then one line per row (DESIGN §7).
            let header = format!(
                "SHARD {x} {y} rows={height} width={width} tick={tick} population={population} colony={colony_id}\n"
            );
            dst.put_slice(header.as_bytes());
            for (i, row) in rows.iter().enumerate() {
                dst.put_slice(row.as_bytes());
                if i + 1 < rows.len() {
                    dst.put_u8(b'\n');
                }
            }
        }
        _ => serde_json::to_writer(dst.writer(), message)
            .map_err(|e| CodecError::Encode(e.to_string()))?,
    }
    dst.put_u8(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_case_insensitive() {
        for line in ["PING", "ping", "PiNg", "  ping  "] {
            assert_eq!(
                parse_line(line.as_bytes()).unwrap(),
                Some((Message::Ping, Style::Command))
            );
        }
        assert_eq!(
            parse_line(b"stats").unwrap(),
            Some((Message::Stats, Style::Command))
        );
    }

    #[test]
    fn token_takes_one_word_and_is_answered_ok() {
        assert_eq!(
            parse_line(b"token abc-123").unwrap(),
            Some((
                Message::Token {
                    token: crate::Redacted("abc-123".into())
                },
                Style::Command
            ))
        );
        for bad in [&b"TOKEN"[..], b"TOKEN a b"] {
            assert_eq!(
                parse_line(bad),
                Err(ProtocolError::Usage("TOKEN <operator token>"))
            );
        }
        let mut out = BytesMut::new();
        write_line(&Message::TokenAccepted, Style::Command, &mut out).unwrap();
        assert_eq!(&out[..], b"OK\n");
    }

    #[test]
    fn blank_lines_need_no_answer() {
        assert_eq!(parse_line(b"").unwrap(), None);
        assert_eq!(parse_line(b"  \t ").unwrap(), None);
    }

    #[test]
    fn json_errors_are_told_apart() {
        assert!(matches!(
            parse_line(b"{\"type\":"),
            Err(ProtocolError::BadJson(_))
        ));
        assert!(matches!(
            parse_line(b"{\"kind\":\"ping\"}"),
            Err(ProtocolError::MissingType)
        ));
        assert!(matches!(
            parse_line(b"{\"type\":\"launch\"}"),
            Err(ProtocolError::UnknownType(t)) if t == "launch"
        ));
        assert!(matches!(
            parse_line(b"{\"type\":\"echo\",\"payload\":7}"),
            Err(ProtocolError::InvalidMessage { kind, .. }) if kind == "echo"
        ));
        assert!(matches!(
            parse_line(b"{\"type\":7}"),
            Err(ProtocolError::MissingType)
        ));
    }

    #[test]
    fn shard_commands_take_two_numbers() {
        assert_eq!(
            parse_line(b"shard 3 4").unwrap(),
            Some((Message::Shard { x: 3, y: 4 }, Style::Command))
        );
        for bad in [
            &b"SHARD"[..],
            b"SHARD 1",
            b"SHARD 1 2 3",
            b"SHARD -1 2",
            b"SHARD x y",
        ] {
            assert!(
                matches!(parse_line(bad), Err(ProtocolError::Usage(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_line(b"SHARDS").unwrap(),
            Some((Message::Shards, Style::Command))
        );
    }

    #[test]
    fn a_shard_view_is_a_header_then_its_rows() {
        let view = Message::ShardView {
            colony_id: "c1".into(),
            x: 1,
            y: 2,
            tick: 7,
            width: 3,
            height: 2,
            population: 2,
            rows: vec!["#..".into(), "..#".into()],
        };
        let mut out = BytesMut::new();
        write_line(&view, Style::Command, &mut out).unwrap();
        assert_eq!(
            &out[..],
            b"SHARD 1 2 rows=2 width=3 tick=7 population=2 colony=c1\n#..\n..#\n"
        );
    }

    #[test]
    fn unknown_commands_and_usage() {
        assert!(matches!(
            parse_line(b"FLY me"),
            Err(ProtocolError::UnknownCommand(c)) if c == "FLY"
        ));
        assert_eq!(parse_line(b"PING twice"), Err(ProtocolError::Usage("PING")));
        assert!(matches!(
            parse_line(b"\xff\xfe"),
            Err(ProtocolError::InvalidUtf8 { valid_up_to: 0 })
        ));
    }

    #[test]
    fn command_replies_are_words_and_the_rest_json() {
        let mut out = BytesMut::new();
        write_line(&Message::Pong, Style::Command, &mut out).unwrap();
        write_line(&Message::Pong, Style::Json, &mut out).unwrap();
        write_line(&Message::error("x", "y"), Style::Command, &mut out).unwrap();
        assert_eq!(
            &out[..],
            b"PONG\n{\"type\":\"pong\"}\n{\"type\":\"error\",\"code\":\"x\",\"message\":\"y\"}\n"
        );
    }
}
