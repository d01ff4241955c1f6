//! Compiled plugins cached on disk, so an agent restart does not recompile.
//!
//! An artifact is keyed by the wasm's sha256, the wasmtime version and the
//! engine's compatibility hash (fuel, epochs, memory settings, cpu features):
//! a precompiled artifact only loads into an engine with the same settings.
//! Loading an artifact runs its machine code, so the cache directory must be
//! writable only by the agent (it lives under the agent's state directory).

use anyhow::Context;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The wasmtime this host is built against (pinned with `=` in the workspace Cargo.toml).
const WASMTIME_VERSION: &str = "48.0.8";

/// Where a component came from when it was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheOutcome {
    /// Loaded from a precompiled artifact.
    Hit,
    /// Compiled now and stored for next time.
    Compiled,
    /// Compiled now; no cache directory is configured.
    Uncached,
}

/// A directory of precompiled components.
pub struct ArtifactCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

impl ArtifactCache {
    /// A cache in `dir` (none: always compile) for components of `engine`.
    pub fn new(dir: Option<PathBuf>, engine: &Engine) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("wasmtime{WASMTIME_VERSION}-{:016x}", hasher.finish());
        ArtifactCache { dir, engine_key }
    }

    fn artifact_path(&self, dir: &Path, sha256: &str) -> PathBuf {
        dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The component for `wasm` (whose sha256 is `sha256`), from the cache or
    /// compiled now. A damaged artifact is recompiled and replaced.
    pub fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
        sha256: &str,
    ) -> anyhow::Result<(Component, CacheOutcome)> {
        let Some(dir) = &self.dir else {
            return Ok((Component::new(engine, wasm)?, CacheOutcome::Uncached));
        };
        let path = self.artifact_path(dir, sha256);
        if path.exists() {
            // SAFETY: the artifact was written by `Engine::precompile_component`
            // into the agent's own cache directory (see module docs), and
            // wasmtime checks its header against this engine's settings.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(artifact = %path.display(), "damaged cache artifact, recompiling: {e:#}")
                }
            }
        }
        let artifact = engine.precompile_component(wasm)?;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create cache directory {}", dir.display()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &artifact)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write cache artifact {}", path.display()))?;
        // SAFETY: just produced by this engine.
        let component = unsafe { Component::deserialize(engine, &artifact)? };
        Ok((component, CacheOutcome::Compiled))
    }
}
