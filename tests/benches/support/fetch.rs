//! A plugin fetched by a simulated agent with `PluginRequest` /
//! `PluginChunk`, checked as the real agent checks it
//! (crates/agent/src/link/fetch.rs): each chunk at the offset asked for,
//! within the size, and the sha256 of the whole against the pin. The bytes
//! are hashed as they come instead of written to disk.

use anyhow::bail;
use sandglass_core::hash::hex;
use sandglass_protocol::{Message, PluginChunk, PluginRequest};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

/// One plugin being fetched, checked as the real agent checks it.
pub struct Fetch {
    sha256: String,
    /// Bytes received and stored (hashed) so far.
    have: u64,
    /// The whole file's size, from the first chunk.
    size: Option<u64>,
    /// `None` while a chunk is being stored.
    hasher: Option<Sha256>,
}

impl Fetch {
    /// Nothing received yet of the plugin with this sha256.
    pub fn new(sha256: String) -> Fetch {
        Fetch {
            sha256,
            have: 0,
            size: None,
            hasher: Some(Sha256::new()),
        }
    }

    /// Bytes received so far.
    pub fn have(&self) -> u64 {
        self.have
    }

    /// The whole file's size (0 before the first chunk).
    pub fn size(&self) -> u64 {
        self.size.unwrap_or_default()
    }

    /// The request for the rest, from what has been received.
    pub fn request(&self) -> Message {
        Message::PluginRequest(PluginRequest {
            sha256: self.sha256.clone(),
            offset: self.have,
        })
    }

    /// Check a chunk against what was asked for; returns the work that
    /// stores it (hashing 256 KiB, off the executor like the agent's disk
    /// write).
    pub fn on_chunk(&mut self, chunk: PluginChunk) -> anyhow::Result<JoinHandle<Sha256>> {
        let len = chunk.bytes.0.len() as u64;
        let size = *self.size.get_or_insert(chunk.size);
        if chunk.sha256 != self.sha256
            || chunk.offset != self.have
            || chunk.size != size
            || len == 0
            || self.have + len > size
        {
            bail!(
                "wrong chunk: plugin {} bytes {}..{} of {}, but {} of {size} bytes of {} were asked for",
                chunk.sha256,
                chunk.offset,
                chunk.offset + len,
                chunk.size,
                self.have,
                self.sha256
            );
        }
        let Some(mut hasher) = self.hasher.take() else {
            bail!(
                "a chunk arrived while the previous one was being stored (one request at a time)"
            );
        };
        self.have += len;
        Ok(tokio::task::spawn_blocking(move || {
            hasher.update(&chunk.bytes.0);
            hasher
        }))
    }

    /// The chunk is stored: the next request, or `None` once the whole
    /// plugin is here with the sha256 asked for.
    pub fn stored(&mut self, hasher: Sha256) -> anyhow::Result<Option<Message>> {
        if Some(self.have) != self.size {
            self.hasher = Some(hasher);
            return Ok(Some(self.request()));
        }
        let got = hex(&hasher.finalize());
        if got != self.sha256 {
            bail!(
                "wrong bytes: the plugin received has sha256 {got}, not the {} asked for",
                self.sha256
            );
        }
        Ok(None)
    }
}
