//! Per-service plugin state on disk: what a run hands to the next one
//! (counters for rates, a log offset) survives agent restarts.
//!
//! One file per service, replaced atomically (write + rename), so a crash
//! leaves either the old or the new state, never a mix. There is no fsync:
//! losing the newest state to a power cut costs one run without rates.

use anyhow::Context;
use std::path::PathBuf;

/// A directory of state blobs, one per service.
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Open (and create) the state directory.
    pub fn open(dir: PathBuf) -> anyhow::Result<StateStore> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create state directory {}", dir.display()))?;
        Ok(StateStore { dir })
    }

    fn path(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.state"))
    }

    /// The state kept for `service`. An unreadable file is logged and treated
    /// as no state: the plugin then behaves as on a first run.
    pub fn load(&self, service: &str) -> Option<Vec<u8>> {
        let path = self.path(service);
        match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(service, path = %path.display(), "cannot read plugin state, starting without: {e}");
                None
            }
        }
    }

    /// Keep `state` for `service`'s next run (none: forget it).
    pub fn save(&self, service: &str, state: Option<&[u8]>) -> anyhow::Result<()> {
        let path = self.path(service);
        match state {
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("cannot remove plugin state {}", path.display()))
                }
                _ => Ok(()),
            },
            Some(bytes) => write_atomic(&path, bytes)
                .with_context(|| format!("cannot write plugin state {}", path.display())),
        }
    }
}

/// Replace `path` with `bytes` so a reader (or a crash) sees the old content
/// or the new, never a mix: write a sibling file, then rename it over.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_forget() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path().join("state")).unwrap();
        assert_eq!(store.load("cpu"), None);
        store.save("cpu", Some(b"abc")).unwrap();
        let reopened = StateStore::open(dir.path().join("state")).unwrap();
        assert_eq!(reopened.load("cpu").as_deref(), Some(&b"abc"[..]));
        reopened.save("cpu", None).unwrap();
        assert_eq!(reopened.load("cpu"), None);
        reopened.save("cpu", None).unwrap();
    }
}
