//! Compiled plugins cached on disk, so an agent restart does not recompile.
//!
//! An artifact is keyed by the wasm's sha256, the wasmtime version and the
//! engine's compatibility hash (fuel, epochs, memory settings, cpu features):
//! a precompiled artifact only loads into an engine with the same settings.
//! Loading an artifact runs its machine code, so the cache directory must be
//! writable only by the agent (it lives under the agent's state directory).

use anyhow::{Context, bail};
use sandglass_core::text::Escaped;
use sandglass_core::units::{ByteSize, HumanDuration};
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
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
    /// A short-lived child process, `program args... --memory BYTES OUT`,
    /// that reads the component on stdin and writes the artifact to OUT
    /// ([`compile_from_stdin`]); its memory goes when it exits, and it is
    /// held to `limits`. Only a child that cannot be started falls back to
    /// this process: one that failed, ran out of time or of memory refuses
    /// the plugin (a compile bomb must not get a second, unlimited try in
    /// the agent).
    Child {
        program: PathBuf,
        args: Vec<OsString>,
        limits: CompileLimits,
    },
}

/// What compiling one plugin may take, in the compiler child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompileLimits {
    /// Wall-clock time; past it the child is killed.
    pub time: Duration,
    /// The child's data segment (`RLIMIT_DATA`: heap and private writable
    /// mappings), bytes.
    pub memory: u64,
}

/// The settings that name the limits in errors (the agent's `[cache]`).
const TIME_SETTING: &str = "[cache] compile_time";
const MEMORY_SETTING: &str = "[cache] compile_memory";

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
        if let Compiler::Child {
            program,
            args,
            limits,
        } = &self.compiler
        {
            match compile_in_child(program, args, *limits, wasm, &path)? {
                // SAFETY: written by the child, an engine with this one's
                // settings (wasmtime checks the header), into the agent's
                // own cache directory. Mapped from the file: its pages are
                // clean and shared, not the agent's heap.
                Compiled::InChild => {
                    let component = unsafe { Component::deserialize_file(engine, &path) }
                        .map_err(anyhow::Error::from)
                        .context("the compiler process wrote an unusable artifact")?;
                    return Ok((component, CacheOutcome::Compiled));
                }
                Compiled::CannotStart(e) => {
                    tracing::warn!("cannot start the compiler process, compiling here: {e:#}")
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

/// How a compile in the child went, when it did not fail.
enum Compiled {
    /// The artifact is written.
    InChild,
    /// The child could not be started (its program is gone, say): the one
    /// case compiled in this process instead.
    CannotStart(std::io::Error),
}

/// How often a waiting agent looks whether the compiler child ended.
const CHILD_POLL: Duration = Duration::from_millis(20);
/// The most of the child's error output kept for the message.
const CHILD_STDERR_MAX: u64 = 16 << 10;

/// Run the compiler child for `wasm`, to write `path`, within `limits`.
fn compile_in_child(
    program: &Path,
    args: &[OsString],
    limits: CompileLimits,
    wasm: &[u8],
    path: &Path,
) -> anyhow::Result<Compiled> {
    let spawned = Command::new(program)
        .args(args)
        .arg("--memory")
        .arg(limits.memory.to_string())
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return Ok(Compiled::CannotStart(e)),
    };
    let started = Instant::now();
    // Read on a thread of its own: a child filling the pipe while the agent
    // only polls its exit would never exit.
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = (&mut stderr).take(CHILD_STDERR_MAX).read_to_end(&mut text);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        String::from_utf8_lossy(&text).trim().to_owned()
    });
    // The child reads all of stdin before it compiles: writing it whole
    // here, then waiting, cannot deadlock.
    let written = child.stdin.take().expect("piped stdin").write_all(wasm);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() >= limits.time {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(CHILD_POLL);
    };
    let stderr = stderr.join().unwrap_or_default();
    let Some(status) = status else {
        bail!(
            "compiling the plugin took longer than {} ({TIME_SETTING} in agent.toml), so it was stopped: \
             the plugin is refused until its file changes or the agent restarts; raise compile_time if the plugin is genuine",
            HumanDuration(limits.time)
        );
    };
    if !status.success() {
        return Err(child_failure(program, status, &stderr, limits));
    }
    written.context("cannot hand the plugin to the compiler process")?;
    Ok(Compiled::InChild)
}

/// Why the compiler child failed, naming the limit it ran into.
fn child_failure(
    program: &Path,
    status: ExitStatus,
    stderr: &str,
    limits: CompileLimits,
) -> anyhow::Error {
    // Rust's allocator aborts with this line when the data limit refuses it.
    if stderr.contains("memory allocation of") {
        return anyhow::anyhow!(
            "compiling the plugin needed more than {} of memory ({MEMORY_SETTING} in agent.toml): \
             the plugin is refused until its file changes or the agent restarts; raise compile_memory if the plugin is genuine",
            ByteSize(limits.memory)
        );
    }
    anyhow::anyhow!(
        "the compiler process ({} compile-plugin) failed, {status}: {}",
        program.display(),
        Escaped(stderr)
    )
}

/// Hold this process's data segment to `bytes` (the compiler child's
/// memory limit): an allocation beyond it fails, and Rust's allocator then
/// aborts with "memory allocation of N bytes failed", which the agent
/// recognises.
pub fn limit_data(bytes: u64) -> anyhow::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit reads the struct it is given and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot limit the compiler's memory");
    }
    Ok(())
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
