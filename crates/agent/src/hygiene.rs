//! Cache hygiene: compiled artifacts (`<state_dir>/cache/<sha256>-….cwasm`)
//! and fetched plugins (`<state_dir>/plugins/<sha256>.wasm`, `.part`) that
//! no scheduled service has used for `[cache] keep_unused` (default 7 days)
//! are removed, so replaced plugins do not pile up in the state directory.
//!
//! When a build was last in use is kept in `<state_dir>/cache-used` (one
//! line per sha256: `sha256 unix_ms`), so a restart does not reset the
//! clock; a file the record does not know counts as unused from the first
//! sweep that sees it.

use crate::schedule::fetched_dir;
use sandglass_core::files::write_atomic;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the agent sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);

pub struct Hygiene {
    dirs: [PathBuf; 2],
    record: PathBuf,
    keep_ms: u64,
    /// sha256 -> when it was last in use (Unix ms).
    last_used: BTreeMap<String, u64>,
}

impl Hygiene {
    pub fn new(state_dir: &Path, keep: Duration) -> Hygiene {
        let record = state_dir.join("cache-used");
        let last_used = std::fs::read_to_string(&record)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (sha, ms) = line.split_once(' ')?;
                Some((sha.to_owned(), ms.parse().ok()?))
            })
            .collect();
        Hygiene {
            dirs: [state_dir.join("cache"), fetched_dir(state_dir)],
            record,
            keep_ms: keep.as_millis() as u64,
            last_used,
        }
    }

    /// Note the builds in use now, and remove the files of builds unused
    /// for longer than the keep time; returns the files removed.
    pub fn sweep(&mut self, in_use: &HashSet<String>, now_ms: u64) -> Vec<PathBuf> {
        for sha in in_use {
            self.last_used.insert(sha.clone(), now_ms);
        }
        let mut removed = Vec::new();
        let mut present = HashSet::new();
        for dir in &self.dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for path in entries.flatten().map(|e| e.path()) {
                let Some(sha) = build_of(&path) else { continue };
                let last = *self.last_used.entry(sha.to_owned()).or_insert(now_ms);
                if in_use.contains(sha) || now_ms.saturating_sub(last) < self.keep_ms {
                    present.insert(sha.to_owned());
                    continue;
                }
                match std::fs::remove_file(&path) {
                    Ok(()) => removed.push(path),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "cannot remove an unused cache file: {e}")
                    }
                }
            }
        }
        self.last_used
            .retain(|sha, _| present.contains(sha) || in_use.contains(sha));
        let lines: String = self
            .last_used
            .iter()
            .map(|(sha, ms)| format!("{sha} {ms}\n"))
            .collect();
        if let Err(e) = write_atomic(&self.record, lines.as_bytes()) {
            tracing::warn!(path = %self.record.display(), "cannot keep the cache record: {e}");
        }
        removed
    }
}

/// The sha256 a cache file belongs to: the 64 hex digits its name starts
/// with (anything else in these directories is not the agent's and stays).
fn build_of(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let sha = name.get(..64)?;
    let rest = &name[64..];
    (sha.bytes().all(|b| b.is_ascii_hexdigit()) && (rest.starts_with('-') || rest.starts_with('.')))
        .then_some(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    #[test]
    fn builds_unused_for_the_keep_time_are_removed_and_the_rest_stay() {
        let state = tempfile::tempdir().unwrap();
        let (old, current) = ("a".repeat(64), "b".repeat(64));
        let cache = state.path().join("cache");
        let plugins = fetched_dir(state.path());
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::create_dir_all(&plugins).unwrap();
        let files = [
            cache.join(format!("{old}-wasmtime48.0.8-0123.cwasm")),
            plugins.join(format!("{old}.wasm")),
            plugins.join(format!("{old}.part")),
            cache.join(format!("{current}-wasmtime48.0.8-0123.cwasm")),
            plugins.join(format!("{current}.wasm")),
            plugins.join("notes.txt"),
        ];
        for f in &files {
            std::fs::write(f, b"x").unwrap();
        }
        let in_use = HashSet::from([current.clone()]);
        let mut hygiene = Hygiene::new(state.path(), Duration::from_millis(7 * DAY));
        assert!(
            hygiene.sweep(&in_use, 10 * DAY).is_empty(),
            "unused since now"
        );
        // A restart remembers since when.
        let mut hygiene = Hygiene::new(state.path(), Duration::from_millis(7 * DAY));
        assert!(hygiene.sweep(&in_use, 16 * DAY).is_empty(), "six days");
        let mut removed = hygiene.sweep(&in_use, 17 * DAY);
        removed.sort();
        let mut expected = files[..3].to_vec();
        expected.sort();
        assert_eq!(removed, expected);
        assert!(files[3..].iter().all(|f| f.exists()));
        let record = std::fs::read_to_string(state.path().join("cache-used")).unwrap();
        assert_eq!(record, format!("{current} {}\n", 17 * DAY));
    }
}
