//! The receiver's plugin library: the checked `.wasm` files of its
//! `plugin_dir`, whose sha256 the schedules pin and whose bytes agents
//! fetch (docs/plugin-guide.md, "Distribution").
//!
//! The directory is watched by polling, once a second, each file's size
//! and modification time, and reading a file again only when they changed
//! *and then held still for one poll*: simpler than inotify and robust to
//! editors and `cp` that write in place or rename a temporary file over the
//! old one, and a file still being written is never offered half-done. A
//! file that fails the check ([`check`]) is logged and not offered; the
//! version before it stays.

pub mod check;
pub mod listing;

use crate::store::PluginVersion;
use sandglass_core::hash::sha256_hex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

/// Versions of each plugin whose bytes stay served: the current one and
/// the one before it (agents still on the old schedule may be fetching it),
/// and any older one a rollout still pins ([`Library::keep`]).
const KEPT_VERSIONS: usize = 2;

/// A file's modification time (ns) and size.
type Stamp = (u128, u64);

/// One checked version of a plugin.
#[derive(Clone)]
pub struct Version {
    pub sha256: String,
    pub bytes: Arc<Vec<u8>>,
}

/// What the library knows of one file name.
#[derive(Default)]
struct Entry {
    /// The stamp last read (checked or failed).
    read: Option<Stamp>,
    /// The stamp seen at the last poll, not read yet: read once it holds.
    pending: Option<Stamp>,
    /// Checked versions, newest last.
    versions: Vec<Version>,
    /// Why the newest file was refused, if it was.
    failure: Option<String>,
}

/// The checked plugins of one directory.
pub struct Library {
    dir: PathBuf,
    entries: BTreeMap<String, Entry>,
    /// Builds kept served beyond [`KEPT_VERSIONS`]: the previous builds of
    /// rollouts under way, which hosts not yet reached still run.
    keep: BTreeSet<String>,
}

impl Library {
    /// Read and check every plugin of `dir` now (at start and on a reload
    /// that names another directory): nothing waits for a second look.
    pub fn scan(dir: &Path) -> anyhow::Result<Library> {
        let mut library = Library {
            dir: dir.to_owned(),
            entries: BTreeMap::new(),
            keep: BTreeSet::new(),
        };
        for (name, stamp) in library.list()? {
            library.read(&name, stamp);
        }
        Ok(library)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keep serving these builds, whatever replaces them (the previous
    /// builds of rollouts under way).
    pub fn keep(&mut self, builds: BTreeSet<String>) {
        self.keep = builds;
    }

    /// Look at the directory again; returns whether a plugin's current
    /// version changed (one appeared, was replaced or went away).
    pub fn poll(&mut self) -> bool {
        let listed = match self.list() {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!("{e:#}");
                return false;
            }
        };
        let before = self.pins();
        self.entries.retain(|name, entry| {
            let present = listed.contains_key(name);
            if !present && !entry.versions.is_empty() {
                tracing::warn!(plugin = name, dir = %self.dir.display(), "plugin removed from plugin_dir");
            }
            present
        });
        for (name, stamp) in listed {
            let entry = self.entries.entry(name.clone()).or_default();
            if entry.read == Some(stamp) {
                entry.pending = None;
            } else if entry.pending == Some(stamp) {
                self.read(&name, stamp);
            } else {
                // Changed since the last look: read it once it holds still.
                entry.pending = Some(stamp);
            }
        }
        self.pins() != before
    }

    /// The `.wasm` files of the directory and their stamps.
    fn list(&self) -> anyhow::Result<BTreeMap<String, Stamp>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| {
            anyhow::anyhow!("plugin_dir {}: cannot list it: {e}", self.dir.display())
        })?;
        let mut listed = BTreeMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if let (Some(stem), Some("wasm"), Some(stamp)) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|e| e.to_str()),
                stamp(&path),
            ) {
                listed.insert(stem.to_owned(), stamp);
            }
        }
        Ok(listed)
    }

    /// Read, hash and check one file; keep it as the current version if it
    /// passes.
    fn read(&mut self, name: &str, stamp: Stamp) {
        let path = self.dir.join(format!("{name}.wasm"));
        let entry = self.entries.entry(name.to_owned()).or_default();
        entry.read = Some(stamp);
        entry.pending = None;
        let checked = std::fs::read(&path)
            .map_err(|e| format!("cannot read it: {e}"))
            .and_then(|bytes| check::check(&bytes).map(|()| bytes));
        match checked {
            Ok(bytes) => {
                let sha256 = sha256_hex(&bytes);
                entry.failure = None;
                if entry.versions.last().is_some_and(|v| v.sha256 == sha256) {
                    return;
                }
                tracing::info!(
                    plugin = name,
                    sha256,
                    size = bytes.len(),
                    "plugin checked; offering it to agents"
                );
                entry.versions.retain(|v| v.sha256 != sha256);
                entry.versions.push(Version {
                    sha256,
                    bytes: Arc::new(bytes),
                });
                while entry.versions.len() > KEPT_VERSIONS {
                    let oldest = entry.versions[..entry.versions.len() - KEPT_VERSIONS]
                        .iter()
                        .position(|v| !self.keep.contains(&v.sha256));
                    match oldest {
                        Some(i) => drop(entry.versions.remove(i)),
                        None => break,
                    }
                }
            }
            Err(why) => {
                let kept = match entry.versions.last() {
                    Some(v) => format!("still offering sha256 {}", v.sha256),
                    None => "not offered".into(),
                };
                tracing::error!(plugin = name, path = %path.display(), "plugin refused ({kept}): {why}");
                entry.failure = Some(why);
            }
        }
    }

    /// The sha256 of each plugin's current version.
    pub fn pins(&self) -> BTreeMap<String, String> {
        self.entries
            .iter()
            .filter_map(|(name, e)| Some((name.clone(), e.versions.last()?.sha256.clone())))
            .collect()
    }

    /// The sha256 a schedule pins for `plugin`, or why there is none.
    pub fn pin(&self, plugin: &str) -> anyhow::Result<String> {
        let entry = self.entries.get(plugin);
        if let Some(version) = entry.and_then(|e| e.versions.last()) {
            return Ok(version.sha256.clone());
        }
        match entry.and_then(|e| e.failure.as_deref()) {
            Some(why) => anyhow::bail!(
                "plugin {plugin:?} in plugin_dir {} was refused: {why}",
                self.dir.display()
            ),
            None => anyhow::bail!(
                "plugin {plugin:?} is not in plugin_dir {}: build it there, set sha256 explicitly, or remove plugin_dir",
                self.dir.display()
            ),
        }
    }

    /// Every build the library serves, as the store records them (`receiver
    /// plugins` lists them with the time each was first seen).
    pub fn versions(&self) -> Vec<PluginVersion> {
        self.entries
            .iter()
            .flat_map(|(name, e)| {
                e.versions.iter().map(|v| PluginVersion {
                    plugin: name.clone(),
                    sha256: v.sha256.clone(),
                    size: v.bytes.len() as u64,
                })
            })
            .collect()
    }

    /// The bytes of the version with this sha256, if the library serves it.
    pub fn bytes(&self, sha256: &str) -> Option<Arc<Vec<u8>>> {
        self.entries
            .values()
            .flat_map(|e| &e.versions)
            .find(|v| v.sha256 == sha256)
            .map(|v| v.bytes.clone())
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    meta.is_file().then_some((mtime.as_nanos(), meta.len()))
}

#[cfg(test)]
mod tests {
    use super::check::fixtures;
    use super::*;

    #[test]
    fn a_file_is_offered_once_it_holds_still_and_a_bad_one_never() {
        let dir = tempfile::tempdir().unwrap();
        let one = fixtures::command("one");
        std::fs::write(dir.path().join("cpu.wasm"), &one).unwrap();
        let mut library = Library::scan(dir.path()).unwrap();
        assert_eq!(library.pin("cpu").unwrap(), sha256_hex(&one));

        // A replacement is read at the second look that sees it unchanged.
        let two = fixtures::command("two-longer");
        std::fs::write(dir.path().join("cpu.wasm"), &two).unwrap();
        assert!(!library.poll(), "first sight: still being written?");
        assert_eq!(library.pin("cpu").unwrap(), sha256_hex(&one));
        assert!(library.poll(), "unchanged at the second look");
        assert_eq!(library.pin("cpu").unwrap(), sha256_hex(&two));
        assert!(
            library.bytes(&sha256_hex(&one)).is_some(),
            "the previous version is still served"
        );

        // A broken replacement is refused; the version before it stays.
        std::fs::write(dir.path().join("cpu.wasm"), b"\0asm broken").unwrap();
        library.poll();
        assert!(!library.poll());
        assert_eq!(library.pin("cpu").unwrap(), sha256_hex(&two));

        // A new plugin that fails says why a schedule cannot pin it.
        std::fs::write(dir.path().join("mem.wasm"), fixtures::reactor()).unwrap();
        library.poll();
        library.poll();
        let err = library.pin("mem").unwrap_err().to_string();
        assert!(err.contains("refused") && err.contains("_start"), "{err}");
        assert!(
            library
                .pin("disk")
                .unwrap_err()
                .to_string()
                .contains("is not in plugin_dir")
        );

        // A removed file is no longer offered.
        std::fs::remove_file(dir.path().join("cpu.wasm")).unwrap();
        assert!(library.poll());
        assert!(library.pin("cpu").is_err());
        assert!(library.bytes(&sha256_hex(&two)).is_none());
    }
}
