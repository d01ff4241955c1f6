//! The plugins in `plugin_dir` and their sha256, as the Hello lists them.
//!
//! Hashing every file on each connect put 33 ms of a 37 ms warm start on
//! the critical path (the Python plugin alone is 18 MB). The hashes are kept
//! in `<state_dir>/installed`, one line per file — `name mtime_ns size
//! sha256` — and a file is hashed again only when its modification time or
//! size changes, the same test the agent uses to reload a plugin. The list is
//! what the receiver shows; the pin a schedule checks is always compared
//! with the hash of the bytes actually loaded (`Runtime::load`).

use sandglass_core::files::write_atomic;
use sandglass_core::hash::sha256_hex;
use sandglass_protocol::InstalledPlugin;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// A plugin file's modification time (ns since the epoch) and size: how the
/// agent notices a replaced plugin, here and in `services`.
pub type Stamp = (u128, u64);

pub struct Installed {
    dir: PathBuf,
    cache: PathBuf,
    known: HashMap<String, (Stamp, String)>,
}

impl Installed {
    /// The plugins of `dir`, with hashes remembered in `cache` (a damaged or
    /// missing cache only means hashing again).
    pub fn new(dir: PathBuf, cache: PathBuf) -> Installed {
        let known = std::fs::read_to_string(&cache)
            .unwrap_or_default()
            .lines()
            .filter_map(parse_line)
            .collect();
        Installed { dir, cache, known }
    }

    /// The `.wasm` files in the directory now, sorted by name.
    pub fn list(&mut self) -> Vec<InstalledPlugin> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut current = HashMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "wasm") {
                continue;
            }
            let (Some(name), Some(stamp)) =
                (path.file_stem().and_then(|s| s.to_str()), stamp(&path))
            else {
                continue;
            };
            let sha256 = match self.known.get(name) {
                Some((known, sha256)) if *known == stamp => sha256.clone(),
                _ => match std::fs::read(&path) {
                    Ok(bytes) => sha256_hex(&bytes),
                    Err(_) => continue,
                },
            };
            current.insert(name.to_owned(), (stamp, sha256));
        }
        if current != self.known {
            self.known = current;
            let mut lines: Vec<String> = self
                .known
                .iter()
                .map(|(name, ((mtime, size), sha))| format!("{name} {mtime} {size} {sha}\n"))
                .collect();
            lines.sort();
            if let Err(e) = write_atomic(&self.cache, lines.concat().as_bytes()) {
                tracing::warn!(path = %self.cache.display(), "cannot keep the plugin hashes: {e}");
            }
        }
        let mut plugins: Vec<InstalledPlugin> = self
            .known
            .iter()
            .map(|(name, (_, sha256))| InstalledPlugin {
                name: name.clone(),
                sha256: sha256.clone(),
            })
            .collect();
        plugins.sort_by(|a, b| a.name.cmp(&b.name));
        plugins
    }
}

pub fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some((mtime.as_nanos(), meta.len()))
}

/// `name mtime_ns size sha256` (a name with spaces cannot be a plugin name
/// the receiver schedules, so it is simply hashed on every list).
fn parse_line(line: &str) -> Option<(String, (Stamp, String))> {
    let mut parts = line.split(' ');
    let name = parts.next()?.to_owned();
    let mtime = parts.next()?.parse().ok()?;
    let size = parts.next()?.parse().ok()?;
    let sha256 = parts.next()?;
    (sha256.len() == 64 && parts.next().is_none())
        .then(|| (name, ((mtime, size), sha256.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        sha256_hex(bytes)
    }

    #[test]
    fn hashes_are_remembered_until_the_file_changes() {
        let plugins = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let cache = state.path().join("installed");
        std::fs::write(plugins.path().join("cpu.wasm"), b"one").unwrap();
        std::fs::write(plugins.path().join("notes.txt"), b"not a plugin").unwrap();
        let listed = Installed::new(plugins.path().into(), cache.clone()).list();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].name.as_str(), listed[0].sha256.clone()),
            ("cpu", sha(b"one"))
        );

        // A fresh start trusts the cache while the stamp matches: a planted
        // hash shows that the file was not read again.
        let text = std::fs::read_to_string(&cache).unwrap();
        std::fs::write(&cache, text.replace(&sha(b"one"), &sha(b"planted"))).unwrap();
        let mut installed = Installed::new(plugins.path().into(), cache.clone());
        assert_eq!(installed.list()[0].sha256, sha(b"planted"));

        // A replaced file (other size) is hashed again, and a removed one goes.
        std::fs::write(plugins.path().join("cpu.wasm"), b"two!").unwrap();
        std::fs::write(plugins.path().join("mem.wasm"), b"three").unwrap();
        let listed = installed.list();
        let pairs: Vec<_> = listed
            .iter()
            .map(|p| (p.name.as_str(), p.sha256.clone()))
            .collect();
        assert_eq!(pairs, [("cpu", sha(b"two!")), ("mem", sha(b"three"))]);
        std::fs::remove_file(plugins.path().join("cpu.wasm")).unwrap();
        assert_eq!(installed.list().len(), 1);
        assert!(!std::fs::read_to_string(&cache).unwrap().contains("cpu "));
    }

    #[test]
    fn a_damaged_cache_means_hashing_again() {
        let plugins = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let cache = state.path().join("installed");
        std::fs::write(plugins.path().join("cpu.wasm"), b"one").unwrap();
        std::fs::write(&cache, "cpu 12 garbage\n\u{0}\u{1}").unwrap();
        let listed = Installed::new(plugins.path().into(), cache).list();
        assert_eq!(listed[0].sha256, sha(b"one"));
    }
}
