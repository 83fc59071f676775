//! The two kinds of decoding failure.
//!
//! A [`ProtocolError`] is recoverable: the request is answered with an error message and the
//! connection goes on. A [`CodecError`] is not: the byte stream can no longer be trusted to be
//! framed, so the connection answers once (best effort) and closes.

use crate::Message;

/// A request that could not be understood, but whose end was found: answer it and carry on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A text line grew past the limit; its bytes up to the next newline are discarded.
    #[error("line longer than {max} bytes; discarded up to the next newline")]
    LineTooLong {
        /// The configured line limit.
        max: usize,
    },
    /// A text line was not valid UTF-8.
    #[error("line is not valid UTF-8 (byte {valid_up_to} is not)")]
    InvalidUtf8 {
        /// Offset of the first invalid byte.
        valid_up_to: usize,
    },
    /// A line started like JSON but did not parse.
    #[error("bad JSON: {0}")]
    BadJson(String),
    /// A JSON object with no string `"type"` field.
    #[error("JSON message has no string \"type\" field")]
    MissingType,
    /// A JSON object whose `"type"` is not in the catalogue.
    #[error("unknown message type {0:?}; send HELP for the list")]
    UnknownType(String),
    /// A known `"type"` whose fields are wrong.
    #[error("invalid {kind:?} message: {reason}")]
    InvalidMessage {
        /// The message's `"type"`.
        kind: String,
        /// What serde found wrong.
        reason: String,
    },
    /// A text command that is not in the catalogue.
    #[error("unknown command {0:?}; send HELP for the list")]
    UnknownCommand(String),
    /// A known text command with the wrong arguments.
    #[error("usage: {0}")]
    Usage(&'static str),
}

impl ProtocolError {
    /// The stable `code` of the error message sent back.
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolError::LineTooLong { .. } => "line_too_long",
            ProtocolError::InvalidUtf8 { .. } => "invalid_utf8",
            ProtocolError::BadJson(_) => "bad_json",
            ProtocolError::MissingType => "missing_type",
            ProtocolError::UnknownType(_) => "unknown_type",
            ProtocolError::InvalidMessage { .. } => "invalid_message",
            ProtocolError::UnknownCommand(_) => "unknown_command",
            ProtocolError::Usage(_) => "usage",
        }
    }

    /// The error as a catalogue message, ready to send.
    pub fn to_message(&self) -> Message {
        Message::error(self.code(), self.to_string())
    }
}

/// A failure that ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A binary frame announced a body larger than the limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// The announced (or, when encoding, the actual) body length.
        len: usize,
        /// The configured frame limit.
        max: usize,
    },
    /// A binary frame's body is not a catalogue message in MessagePack.
    #[error("undecodable frame: {0}")]
    Undecodable(String),
    /// The peer closed the stream in the middle of a binary frame.
    #[error("stream ended inside a frame ({have} of {need} bytes)")]
    Truncated {
        /// Bytes received.
        have: usize,
        /// Bytes the frame needed.
        need: usize,
    },
    /// A message could not be serialized (a bug, not bad input).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The underlying stream failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl CodecError {
    /// The stable `code` of the error message sent back before closing.
    pub fn code(&self) -> &'static str {
        match self {
            CodecError::FrameTooLarge { .. } => "frame_too_large",
            CodecError::Undecodable(_) => "undecodable_frame",
            CodecError::Truncated { .. } => "truncated_frame",
            CodecError::Encode(_) => "internal",
            CodecError::Io(_) => "io",
        }
    }

    /// The error as a catalogue message, ready to send.
    pub fn to_message(&self) -> Message {
        Message::error(self.code(), self.to_string())
    }
}
