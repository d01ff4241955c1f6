//! The wire protocol between agent and receiver (docs/protocol.md is the
//! specification; this module is its reference implementation).
//!
//! One TCP stream per agent. Each side first sends an 8-byte preamble (magic
//! `SGLS`, protocol version, reserved), then length-prefixed MessagePack
//! frames: a 4-byte big-endian payload length, then one [`Message`].
//! The preamble lets a receiver answer a foreign client or another protocol
//! version with a clear error before it parses anything else.

mod codec;
mod messages;
mod plugins;
mod spliced;

pub use codec::{FrameCodec, Preamble, ProtocolError, read_preamble, write_preamble};
pub use messages::{
    Ack, Entry, Fault, FaultCode, Gap, GrantName, Hello, InstalledPlugin, Message, Probe, Rejected,
    ReportBatch, Revision, Schedule, ScheduledService, ServiceLimits, Welcome,
};
pub use plugins::{Bytes, PLUGIN_CHUNK, PluginChunk, PluginRequest, PluginUnavailable};
pub use spliced::{EncodedBatch, EncodedEntry};

/// First four bytes of every Sandglass connection, in both directions.
pub const MAGIC: [u8; 4] = *b"SGLS";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The minor version this build speaks, in bytes 6–7 of the preamble (0 from
/// peers that predate it): a minor version only adds messages a peer sends
/// once it knows the other side speaks them. 1: plugin transfer.
pub const PROTOCOL_MINOR: u16 = 1;
/// The receiver's default TCP port.
pub const DEFAULT_PORT: u16 = 7531;
/// Largest frame before the peer has authenticated: a Hello is small, and an
/// unauthenticated peer should cost the receiver next to nothing.
pub const HANDSHAKE_MAX_FRAME: usize = 64 << 10;
/// Default largest frame after the handshake.
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;
