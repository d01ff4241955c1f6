//! Serving plugin files to agents (protocol 1.1): one chunk per
//! `PluginRequest`, from the library of checked plugins, by sha256 only.

use super::Shared;
use sandglass_core::text::{excerpt, truncate};
use sandglass_protocol::{
    Bytes, Message, PLUGIN_CHUNK, PluginChunk, PluginRequest, PluginUnavailable,
};
use std::sync::atomic::Ordering;

/// The answer to `request` from `host`: the chunk at its offset, or why
/// there is none.
pub(super) fn answer(shared: &Shared, host: &str, request: PluginRequest) -> Message {
    let PluginRequest { mut sha256, offset } = request;
    // The hash is the agent's text: checked before it goes anywhere; what
    // is no hash is quoted (escaped, cut) in the log and echoed cut.
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        let reason = format!(
            "a plugin is asked for by its sha256 (64 hex digits), not by {}",
            excerpt(&sha256, 80)
        );
        tracing::warn!(host, "plugin request refused: {reason}");
        sha256.truncate(truncate(&sha256, 128).len());
        return Message::PluginUnavailable(PluginUnavailable { sha256, reason });
    }
    let unavailable = |reason: String| {
        tracing::warn!(host, "plugin request refused: {reason}");
        Message::PluginUnavailable(PluginUnavailable {
            sha256: sha256.clone(),
            reason,
        })
    };
    let bytes = shared
        .plugins
        .lock()
        .expect("plugins lock")
        .as_ref()
        .and_then(|library| library.bytes(&sha256));
    let Some(bytes) = bytes else {
        return unavailable(format!(
            "this receiver has no plugin with sha256 {sha256} in its plugin_dir"
        ));
    };
    let size = bytes.len() as u64;
    if offset > size {
        return unavailable(format!(
            "offset {offset} lies past the end of the plugin ({size} bytes)"
        ));
    }
    let start = offset as usize;
    let end = (start + PLUGIN_CHUNK).min(bytes.len());
    let mut chunk = bytes[start..end].to_vec();
    if offset == 0 {
        tracing::info!(host, sha256, size, "sending a plugin");
        corrupt_if_asked(shared, &mut chunk);
    }
    Message::PluginChunk(PluginChunk {
        sha256,
        offset,
        size,
        bytes: Bytes(chunk),
    })
}

/// The test hook ([`super::CORRUPT_HOOK`]): flip a byte of the first chunk
/// of the next transfers, as many as it says.
fn corrupt_if_asked(shared: &Shared, chunk: &mut [u8]) {
    let take = shared
        .corrupt_transfers
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    if take.is_ok()
        && let Some(byte) = chunk.last_mut()
    {
        tracing::warn!(
            "test hook {}: corrupting this transfer",
            super::CORRUPT_HOOK
        );
        *byte ^= 0xff;
    }
}
