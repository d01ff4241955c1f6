//! Compiled plugins cached on disk, so an agent restart does not recompile.
//!
//! An artifact is keyed by the wasm's sha256, the wasmtime version and the
//! engine's compatibility hash (fuel, epochs, memory settings, cpu features):
//! a precompiled artifact only loads into an engine with the same settings.
//! Loading an artifact runs its machine code, so the cache directory must be
//! writable only by the agent (it lives under the agent's state directory).

use anyhow::{Context, bail};
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// Who compiles a component the cache lacks.
#[derive(Clone, Debug)]
pub enum Compiler {
    /// This process. Cranelift's memory (tens of MiB for a large plugin)
    /// then stays with it: the allocator does not give it back.
    InProcess,
    /// A short-lived child process, `program args... OUT`, that reads the
    /// component on stdin and writes the artifact to OUT
    /// ([`compile_from_stdin`]); its memory goes when it exits. Falls back
    /// to this process if the child fails.
    Child {
        program: PathBuf,
        args: Vec<OsString>,
    },
}

/// A directory of precompiled components.
pub struct ArtifactCache {
    dir: Option<PathBuf>,
    engine_key: String,
    compiler: Compiler,
}

impl ArtifactCache {
    /// A cache in `dir` (none: always compile, in this process) for
    /// components of `engine`, compiled by `compiler`.
    pub fn new(dir: Option<PathBuf>, engine: &Engine, compiler: Compiler) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("wasmtime{WASMTIME_VERSION}-{:016x}", hasher.finish());
        ArtifactCache {
            dir,
            engine_key,
            compiler,
        }
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
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create cache directory {}", dir.display()))?;
        if let Compiler::Child { program, args } = &self.compiler {
            match compile_in_child(program, args, wasm, &path) {
                // SAFETY: written by the child, an engine with this one's
                // settings (wasmtime checks the header), into the agent's
                // own cache directory. Mapped from the file: its pages are
                // clean and shared, not the agent's heap.
                Ok(()) => match unsafe { Component::deserialize_file(engine, &path) } {
                    Ok(component) => return Ok((component, CacheOutcome::Compiled)),
                    Err(e) => {
                        tracing::warn!(artifact = %path.display(), "the compiler process wrote an unusable artifact, compiling here: {e:#}")
                    }
                },
                Err(e) => {
                    tracing::warn!("compiling in a child process failed, compiling here: {e:#}")
                }
            }
        }
        let artifact = engine.precompile_component(wasm)?;
        write_artifact(&path, &artifact)?;
        // SAFETY: just produced by this engine.
        let component = unsafe { Component::deserialize(engine, &artifact)? };
        Ok((component, CacheOutcome::Compiled))
    }
}

/// Write `artifact` to `path` atomically, through a temporary name of this
/// process (two processes compiling one plugin never mix their writes).
fn write_artifact(path: &Path, artifact: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, artifact)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write cache artifact {}", path.display()))
}

/// Run the compiler child for `wasm`, to write `path`.
fn compile_in_child(
    program: &Path,
    args: &[OsString],
    wasm: &[u8],
    path: &Path,
) -> anyhow::Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    // The child reads all of stdin before it compiles: writing it whole
    // here, then waiting, cannot deadlock.
    let written = child.stdin.take().expect("piped stdin").write_all(wasm);
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "{} {}: {}",
            program.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    written.context("cannot hand the plugin to the compiler process")
}

/// The compiler child's side of [`Compiler::Child`]: the component on
/// stdin (at most `max_bytes`), its artifact for `engine` written to `out`.
pub fn compile_from_stdin(engine: &Engine, max_bytes: usize, out: &Path) -> anyhow::Result<()> {
    let mut wasm = Vec::new();
    std::io::stdin()
        .take(max_bytes as u64 + 1)
        .read_to_end(&mut wasm)
        .context("cannot read the component from stdin")?;
    if wasm.len() > max_bytes {
        bail!("the component on stdin is above {max_bytes} bytes");
    }
    write_artifact(out, &engine.precompile_component(&wasm)?)
}
