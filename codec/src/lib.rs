//! Colony's data-plane codec: bytes in, catalogue messages out, and back.
//!
//! Owns the two framings of DESIGN §7 (text lines and length-prefixed MessagePack, chosen by
//! the first byte a client sends), the message catalogue both carry, and the two error kinds
//! (recoverable [`ProtocolError`], connection-ending [`CodecError`]). It does no I/O and holds
//! no policy: what to answer, when to close and how long to wait belong to `dataplane`.

mod codec;
mod copies;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod message;
pub mod text;

pub use codec::{
    encode_frame, ColonyCodec, Decoded, Framing, Limits, Reply, DEFAULT_MAX_FRAME,
    DEFAULT_MAX_LINE, FRAME_LIMIT_CEILING,
};
pub use copies::{ColonyInfo, Held, HeldCopies, ShardCells, ShardRef};
pub use error::{CodecError, ProtocolError};
pub use message::{Checkpoint, HaloEdge, Message, Redacted, ShardSummary, StatsSnapshot, Style};
