//! Runs abandoned while blocked in a host call, counted per plugin.
//!
//! An abandoned run keeps its worker thread and its instance slot until the
//! host call returns, so they cannot pile up without bound. Counting them
//! for the whole host let one plugin that keeps getting stuck (a file that
//! blocks on open) refuse every other service; counted per plugin, that
//! plugin is refused on its own while the others keep running. A total cap,
//! larger than the per-plugin one, stays as the backstop on threads and
//! instance slots.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Abandoned runs of one plugin that may be outstanding before its new runs
/// are refused: one may be bad luck, two is a habit.
pub const PER_PLUGIN: usize = 2;

/// Abandoned runs of all plugins together before every new run is refused.
pub const TOTAL: usize = 16;

/// The abandoned runs still outstanding, by plugin file.
#[derive(Default)]
pub struct StuckRuns {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    per_plugin: HashMap<PathBuf, usize>,
    total: usize,
}

impl StuckRuns {
    /// Why a new run of the plugin at `path` (called `name`) must not start,
    /// if it must not.
    pub fn refusal(&self, path: &Path, name: &str) -> Option<String> {
        let counts = self.counts.lock().expect("stuck runs");
        let mine = counts.per_plugin.get(path).copied().unwrap_or(0);
        if mine >= PER_PLUGIN {
            return Some(format!(
                "{mine} earlier runs of plugin {name} are still blocked in host calls; \
                 it is not run again until they return"
            ));
        }
        (counts.total >= TOTAL).then(|| {
            format!(
                "{} earlier runs are still blocked in host calls; no new run starts until they return",
                counts.total
            )
        })
    }

    /// A run of the plugin at `path` was abandoned in a host call.
    pub fn abandoned(&self, path: &Path) {
        let mut counts = self.counts.lock().expect("stuck runs");
        *counts.per_plugin.entry(path.to_owned()).or_default() += 1;
        counts.total += 1;
    }

    /// An abandoned run of the plugin at `path` returned at last.
    pub fn returned(&self, path: &Path) {
        let mut counts = self.counts.lock().expect("stuck runs");
        if let Some(mine) = counts.per_plugin.get_mut(path) {
            *mine -= 1;
            if *mine == 0 {
                counts.per_plugin.remove(path);
            }
            counts.total -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_that_keeps_getting_stuck_is_refused_alone() {
        let stuck = StuckRuns::default();
        let (bad, good) = (Path::new("/p/bad.wasm"), Path::new("/p/good.wasm"));
        for _ in 0..PER_PLUGIN {
            assert_eq!(stuck.refusal(bad, "bad"), None);
            stuck.abandoned(bad);
        }
        let refusal = stuck.refusal(bad, "bad").expect("refused");
        assert!(
            refusal.starts_with("2 earlier runs of plugin bad are still blocked"),
            "{refusal}"
        );
        assert_eq!(stuck.refusal(good, "good"), None);
        stuck.returned(bad);
        assert_eq!(stuck.refusal(bad, "bad"), None);
    }

    #[test]
    fn the_total_is_a_backstop_above_the_per_plugin_cap() {
        const { assert!(TOTAL > PER_PLUGIN) };
        let stuck = StuckRuns::default();
        let paths: Vec<PathBuf> = (0..TOTAL)
            .map(|i| PathBuf::from(format!("/p/{i}.wasm")))
            .collect();
        for path in &paths {
            stuck.abandoned(path);
        }
        let refusal = stuck
            .refusal(Path::new("/p/new.wasm"), "new")
            .expect("refused");
        assert!(
            refusal.starts_with("16 earlier runs are still blocked"),
            "{refusal}"
        );
        stuck.returned(&paths[0]);
        assert_eq!(stuck.refusal(Path::new("/p/new.wasm"), "new"), None);
    }
}
