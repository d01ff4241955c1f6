//! Fetching pinned plugins from the receiver (protocol 1.1): one
//! `PluginRequest` at a time, the next only after the previous chunk is on
//! disk, so a large plugin never crowds out acknowledgements. The bytes
//! collect in `<state_dir>/plugins/<sha256>.part`; its length is the offset
//! to ask for, so a transfer goes on where it stopped after a reconnect or
//! a restart. A complete file becomes `<sha256>.wasm` (written atomically)
//! only if its sha256 is the one asked for; otherwise it is thrown away and
//! fetched again.

use anyhow::{Context, bail};
use sandglass_core::files::write_atomic;
use sandglass_core::hash::sha256_hex;
use sandglass_protocol::{PluginChunk, PluginRequest, PluginUnavailable};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Larger plugins are refused: a receiver cannot fill the agent's disk.
const MAX_PLUGIN_SIZE: u64 = 256 << 20;
/// Transfers of one plugin that may fail on a connection before the agent
/// stops asking for it there.
const MAX_ATTEMPTS: u32 = 3;

/// The plugins to fetch and the one being fetched.
pub(super) struct Fetcher {
    dir: PathBuf,
    /// sha256 of the plugins the schedule needs from the receiver.
    wanted: Vec<String>,
    /// The plugin asked for, waiting for its chunk.
    asked: Option<String>,
    /// Failed transfers per plugin on this connection.
    failures: Vec<(String, u32)>,
    /// Plugins the receiver said it cannot serve, not asked again on this
    /// connection.
    unavailable: HashSet<String>,
}

/// What storing a chunk came to.
pub(super) enum Stored {
    /// More to fetch: ask for the next chunk.
    More,
    /// The plugin is complete and checked.
    Complete(PathBuf),
}

impl Fetcher {
    pub(super) fn new(dir: PathBuf) -> Fetcher {
        Fetcher {
            dir,
            wanted: Vec::new(),
            asked: None,
            failures: Vec::new(),
            unavailable: HashSet::new(),
        }
    }

    /// A new connection: nothing is asked yet, and every plugin may be
    /// asked for again.
    pub(super) fn reconnected(&mut self) {
        self.asked = None;
        self.failures.clear();
        self.unavailable.clear();
    }

    /// The schedule changed what is wanted.
    pub(super) fn want(&mut self, wanted: Vec<String>) {
        self.unavailable.clear();
        self.wanted = wanted;
    }

    /// The next request, if none is waiting and a plugin is still missing.
    pub(super) fn next_request(&mut self) -> Option<PluginRequest> {
        if self.asked.is_some() {
            return None;
        }
        let sha256 = self
            .wanted
            .iter()
            .find(|sha| {
                !self.unavailable.contains(*sha)
                    && self.attempts(sha) < MAX_ATTEMPTS
                    && !self.dir.join(format!("{sha}.wasm")).exists()
            })?
            .clone();
        let offset = std::fs::metadata(self.part(&sha256)).map_or(0, |m| m.len());
        self.asked = Some(sha256.clone());
        Some(PluginRequest { sha256, offset })
    }

    /// The receiver cannot serve a plugin.
    pub(super) fn on_unavailable(&mut self, u: &PluginUnavailable) {
        tracing::error!(
            sha256 = u.sha256,
            "the receiver cannot send this plugin: {}",
            sandglass_core::text::Escaped(&u.reason)
        );
        self.unavailable.insert(u.sha256.clone());
        if self.asked.as_ref() == Some(&u.sha256) {
            self.asked = None;
        }
    }

    /// The answer to the request: which plugin it is for, and the store
    /// work to run off the executor (it writes and, at the end, hashes the
    /// whole file).
    pub(super) fn on_chunk(
        &mut self,
        chunk: &PluginChunk,
    ) -> anyhow::Result<impl FnOnce() -> anyhow::Result<Stored> + use<>> {
        if self.asked.as_ref() != Some(&chunk.sha256) {
            bail!(
                "the receiver sent a chunk of plugin {} that was not asked for",
                sandglass_core::text::excerpt(&chunk.sha256, 80)
            );
        }
        let (dir, part) = (self.dir.clone(), self.part(&chunk.sha256));
        let chunk = chunk.clone();
        Ok(move || store(&dir, &part, chunk))
    }

    /// The store work ended: ask for more (or the next plugin) next.
    pub(super) fn stored(&mut self, outcome: &anyhow::Result<Stored>) {
        let sha256 = self.asked.as_deref().unwrap_or_default();
        match outcome {
            Ok(Stored::Complete(path)) => {
                tracing::info!(sha256, path = %path.display(), "plugin fetched from the receiver")
            }
            Ok(Stored::More) => {}
            Err(e) => tracing::warn!(sha256, "{e:#}"),
        }
        if let (Err(_), Some(sha256)) = (outcome, self.asked.as_ref()) {
            match self.failures.iter_mut().find(|(s, _)| s == sha256) {
                Some((_, n)) => *n += 1,
                None => self.failures.push((sha256.clone(), 1)),
            }
        }
        self.asked = None;
    }

    fn attempts(&self, sha256: &str) -> u32 {
        self.failures
            .iter()
            .find(|(s, _)| s == sha256)
            .map_or(0, |(_, n)| *n)
    }

    fn part(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.part"))
    }
}

/// Append `chunk` to `part`; once complete, check its sha256 and keep it as
/// `<sha256>.wasm`. Anything inconsistent throws the partial file away, so
/// the next request starts over.
fn store(dir: &Path, part: &Path, chunk: PluginChunk) -> anyhow::Result<Stored> {
    let result = append(dir, part, &chunk).and_then(|have| {
        if have < chunk.size {
            return Ok(Stored::More);
        }
        let bytes = std::fs::read(part).with_context(|| format!("cannot read {}", part.display()))?;
        let sha256 = sha256_hex(&bytes);
        if sha256 != chunk.sha256 {
            bail!(
                "the plugin received has sha256 {sha256}, not the {} asked for (damaged in transit?): fetching it again",
                chunk.sha256
            );
        }
        let path = dir.join(format!("{sha256}.wasm"));
        write_atomic(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
        let _ = std::fs::remove_file(part);
        Ok(Stored::Complete(path))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(part);
    }
    result
}

/// Append the chunk where the partial file ends; returns its new length.
fn append(dir: &Path, part: &Path, chunk: &PluginChunk) -> anyhow::Result<u64> {
    let len = chunk.bytes.0.len() as u64;
    if chunk.size > MAX_PLUGIN_SIZE {
        bail!(
            "the receiver offers a plugin of {} bytes, over the agent's limit of {MAX_PLUGIN_SIZE}",
            chunk.size
        );
    }
    let have = std::fs::metadata(part).map_or(0, |m| m.len());
    if chunk.offset != have || have + len > chunk.size || (len == 0 && have < chunk.size) {
        bail!(
            "the receiver sent bytes {}..{} of {}, but {have} are stored",
            chunk.offset,
            chunk.offset.saturating_add(len),
            chunk.size
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .with_context(|| format!("cannot open {}", part.display()))?;
    file.write_all(&chunk.bytes.0)
        .with_context(|| format!("cannot write {}", part.display()))?;
    Ok(have + len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_protocol::Bytes;

    fn chunk(request: &PluginRequest, file: &[u8], step: usize) -> PluginChunk {
        let start = request.offset as usize;
        let end = (start + step).min(file.len());
        PluginChunk {
            sha256: request.sha256.clone(),
            offset: request.offset,
            size: file.len() as u64,
            bytes: Bytes(file[start..end].to_vec()),
        }
    }

    /// One request/chunk turn; returns what storing came to.
    fn turn(fetcher: &mut Fetcher, file: &[u8], step: usize) -> anyhow::Result<Stored> {
        let request = fetcher.next_request().expect("a request");
        let work = fetcher.on_chunk(&chunk(&request, file, step)).unwrap();
        let outcome = work();
        fetcher.stored(&outcome);
        outcome
    }

    #[test]
    fn a_transfer_resumes_after_a_reconnect_and_damage_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("plugins");
        let file: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let sha = sha256_hex(&file);
        let mut fetcher = Fetcher::new(dir.clone());
        fetcher.want(vec![sha.clone()]);
        assert!(matches!(turn(&mut fetcher, &file, 300), Ok(Stored::More)));
        assert!(fetcher.next_request().is_some());
        assert!(fetcher.next_request().is_none(), "one request at a time");

        // The connection drops; the next asks from what is stored.
        fetcher.reconnected();
        assert_eq!(fetcher.next_request().unwrap().offset, 300);
        fetcher.reconnected();

        // A damaged byte: refused, and the next request starts over.
        let mut damaged = file.clone();
        damaged[900] ^= 1;
        assert!(matches!(
            turn(&mut fetcher, &damaged, 300),
            Ok(Stored::More)
        ));
        assert!(matches!(
            turn(&mut fetcher, &damaged, 300),
            Ok(Stored::More)
        ));
        let err = turn(&mut fetcher, &damaged, 1000)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("damaged in transit"), "{err}");
        assert!(!dir.join(format!("{sha}.wasm")).exists());
        assert_eq!(fetcher.next_request().unwrap().offset, 0);
        fetcher.reconnected();
        let Ok(Stored::Complete(path)) = turn(&mut fetcher, &file, 1000) else {
            panic!("complete")
        };
        assert_eq!(std::fs::read(&path).unwrap(), file);
        assert!(!dir.join(format!("{sha}.part")).exists());
        assert!(fetcher.next_request().is_none(), "nothing left to fetch");
    }

    #[test]
    fn a_chunk_at_the_wrong_offset_or_not_asked_for_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let mut fetcher = Fetcher::new(state.path().join("plugins"));
        let file = vec![7u8; 100];
        fetcher.want(vec![sha256_hex(&file)]);
        let request = fetcher.next_request().unwrap();
        let mut wrong = chunk(&request, &file, 10);
        wrong.offset = 50;
        let outcome = fetcher.on_chunk(&wrong).unwrap()();
        assert!(
            outcome
                .err()
                .unwrap()
                .to_string()
                .contains("but 0 are stored")
        );
        let mut other = chunk(&request, &file, 10);
        other.sha256 = "ab".repeat(32);
        assert!(fetcher.on_chunk(&other).is_err(), "not asked for");
    }
}
