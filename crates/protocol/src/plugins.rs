//! The messages that carry plugin files from the receiver to an agent
//! (protocol 1.1): the agent asks for a plugin by its sha256 and an offset,
//! the receiver answers with one chunk (or says it has no such plugin). One
//! chunk per request keeps a large transfer from delaying acknowledgements
//! on the same connection, and the offset makes it resumable.

use sandglass_core::wire_struct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The most plugin bytes a receiver puts in one `PluginChunk`: far below
/// the 8 MiB an agent accepts per frame, and small enough that an
/// acknowledgement queued behind a chunk waits for no more than 256 KiB.
pub const PLUGIN_CHUNK: usize = 256 << 10;

wire_struct! {
    /// Agent -> receiver: send the plugin file with this sha256, from
    /// `offset` on.
    #[derive(Clone, Debug, PartialEq)]
    pub struct PluginRequest {
        /// Lowercase hex sha256 of the whole file.
        pub sha256: String,
        pub offset: u64,
    }
}

wire_struct! {
    /// Receiver -> agent: bytes `offset..offset + bytes.len()` of the file
    /// with this sha256, whose whole size is `size`.
    #[derive(Clone, PartialEq)]
    pub struct PluginChunk {
        pub sha256: String,
        pub offset: u64,
        pub size: u64,
        pub bytes: Bytes,
    }
}

/// Chunks in logs: their size, not their bytes.
impl fmt::Debug for PluginChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginChunk")
            .field("sha256", &self.sha256)
            .field("offset", &self.offset)
            .field("size", &self.size)
            .field("bytes", &self.bytes.0.len())
            .finish()
    }
}

wire_struct! {
    /// Receiver -> agent: the receiver cannot serve this plugin (it has no
    /// file with that sha256, or the offset lies past its end).
    #[derive(Clone, Debug, PartialEq)]
    pub struct PluginUnavailable {
        pub sha256: String,
        /// Why, for the operator.
        pub reason: String,
    }
}

/// Raw bytes, written as a MessagePack `bin` (an array of integers would
/// cost up to twice the size and a decode step per byte).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Bytes;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }

            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}
