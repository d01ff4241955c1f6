//! The plugin runtime: one engine, compiled plugins, a fresh sandbox per run.
//!
//! - [`abi`]: host bindings of `wit/collector.wit` and the ABI version check;
//! - [`cache`]: precompiled components on disk;
//! - [`command`]: plugins that are plain WASI commands, and [`exposition`],
//!   the text they print;
//! - [`sandbox`]: the store a WASI run gets, its imports, and the filesystem hooks;
//! - [`lean`]: the store a lean run gets (ABI 1.1, no WASI): its host calls;
//! - [`view`]: the directories a plugin sees; [`fs_policy`]: which resolved
//!   paths a plugin may open; `limited`: fuel, deadline and memory cap on a
//!   store; `account`: a run's log budget and refusals;
//! - [`epoch`]: the ticker behind deadlines;
//! - [`run`]: running a plugin once on the calling thread;
//! - [`failure`]: why a run produced nothing usable, named exactly, and
//!   `diagnose`, which tells it from a failed call;
//! - [`dispatch`]: runs on worker threads, bounded by their deadline even
//!   when a run blocks in a host call;
//! - `output`: what a run may hand back, and what copying it may cost;
//! - `stuck`: runs abandoned in host calls, counted per plugin;

pub mod abi;
mod account;
pub mod cache;
pub mod command;
mod described;
mod diagnose;
mod dispatch;
pub mod epoch;
pub mod exposition;
pub mod failure;
pub mod fs_policy;
pub mod lean;
mod limited;
mod output;
pub mod run;
pub mod sandbox;
mod stuck;
pub mod view;

use anyhow::Context;
use cache::{ArtifactCache, CacheOutcome};
pub use cache::{CompileLimits, Compiler};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use failure::RunFailure;
pub use output::Output;
pub use run::{RunOutcome, RunRequest};
pub use sandglass_core::limits::{LimitOverrides, Limits};
pub use view::View;

/// A loaded plugin: compiled, version-checked and described.
pub struct Plugin {
    pub path: PathBuf,
    pub sha256: String,
    pub description: Description,
    pub cache: CacheOutcome,
    entry: Entry,
}

/// How a plugin is called.
enum Entry {
    /// A `plugin-sdk` component importing WASI: `collect` returns samples.
    Collector(abi::CollectorPre<sandbox::SandboxState>),
    /// A collector importing no WASI (ABI 1.1), run in the lean sandbox.
    Lean(abi::CollectorPre<lean::LeanState>),
    /// A WASI command printing exposition text.
    Command(wasmtime_wasi::p2::bindings::sync::CommandPre<sandbox::SandboxState>),
}

/// Slots for plugin instances, reserved once and reused by every run.
///
/// A fresh instance per run stays the rule; the pool only recycles the
/// memory behind it (wiped between runs). Without it each run mmaps a 4 GiB
/// reservation, mprotects it, page-faults its first pages in and munmaps it
/// all again: sandbox entry 55 µs against 34 µs pooled, the cpu collector
/// 149 against 112 µs (`bash scripts/bench-hot-paths.sh`). Tables are small
/// and are wiped in place (`table_keep_resident`): one `madvise` per run
/// instead of three, each of which interrupts the other core to flush its TLB.
/// The first 128 KiB of linear memory are wiped in place too
/// (`linear_memory_keep_resident`): a lean collector, linked with a 64 KiB
/// stack (`scripts/build-plugins.sh`), keeps its stack, data and heap there,
/// and a page fault per page it touched was most of its entry cost (26-31
/// µs; 15-16 µs wiped in place, `bash scripts/bench-sandbox.sh`). The price:
/// those pages stay resident per memory slot in use (the wipe touches them
/// all; the pool keeps a slot per plugin, more over time), so the size is
/// what the lean entry needs: 256 KiB cost `agent run` with the core
/// plugins 2.0-2.1 MiB more and bought no faster entry than 128 KiB (lean
/// entry 23.0-23.5 µs against 20.8-21.3; docs/performance.md, "Agent memory
/// with the core plugins"). A WASI plugin's 1 MiB stack lies above it, so for those
/// it is a wipe of pages they do not use; keeping all of memory resident was
/// measured before and gained them nothing.
///
/// Sizes: runs at once are bounded by the workers (plus at most
/// `stuck::TOTAL` = 16 stuck runs) and plugin loads; 64 instances leave room
/// for both. A component has a few core instances, memories and tables (the
/// Python one the most); the counts below are generous for each. Each memory slot reserves 4 GiB of
/// address space so bounds checks stay free — 128 of them ≈ 520 GiB virtual,
/// nothing resident until used.
fn instance_pool() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(64)
        .total_core_instances(512)
        .total_memories(128)
        .total_tables(256)
        .max_memories_per_module(2)
        .max_tables_per_module(4)
        .table_elements(100_000)
        .table_keep_resident(64 << 10)
        .linear_memory_keep_resident(128 << 10);
    pool
}

/// The engine every runtime uses: [`compile_config`] and the instance
/// pool. An artifact loads only into an engine with the same compile
/// settings.
fn new_engine() -> anyhow::Result<Engine> {
    let mut config = compile_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(instance_pool()));
    Engine::new(&config).map_err(anyhow::Error::from).context(
        "cannot reserve address space for the plugin instance pool (about 520 GiB of \
         virtual memory, none of it resident): lift `ulimit -v` for the agent",
    )
}

/// What the compiled code depends on: fuel and epochs. The instance pool
/// is not part of it (wasmtime's compatibility hash covers the compiler's
/// flags, tunables and features), so the compiler child does without one.
fn compile_config() -> Config {
    let mut config = Config::new();
    config.consume_fuel(true).epoch_interruption(true);
    config
}

/// The compiler child's work ([`Compiler::Child`]): read a component on
/// stdin, write its artifact for this build's engine to `out`, in at most
/// `memory` bytes of data (`RLIMIT_DATA`). Its engine has no instance pool,
/// whose reservations would count against that limit.
pub fn compile_child(out: &Path, memory: Option<u64>) -> anyhow::Result<()> {
    if let Some(memory) = memory {
        cache::limit_data(memory)?;
    }
    let engine = Engine::new(&compile_config())?;
    // A componentized command is a little larger than the module it wraps.
    cache::compile_from_stdin(&engine, 2 * MAX_PLUGIN_BYTES, out)
}

/// Plugin files above this size are refused: compiling one would take the
/// agent seconds and tens of MiB.
pub const MAX_PLUGIN_BYTES: usize = 128 << 20;

impl Plugin {
    /// Whether it runs in the lean sandbox (a collector importing no WASI).
    pub fn is_lean(&self) -> bool {
        matches!(self.entry, Entry::Lean(_))
    }
}

/// What a plugin says about itself (`describe`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Description {
    pub name: String,
    pub version: String,
    pub abi_version: &'static str,
    pub grants: Vec<Grant>,
    pub interval_seconds: u32,
    pub metrics: Vec<MetricInfo>,
}

/// A capability beyond the default read-only `/proc` view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    Sys,
    Files,
}

/// A metric a plugin documents.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MetricInfo {
    pub name: String,
    pub kind: sandglass_core::report::MetricKind,
    pub unit: String,
    pub help: String,
}

/// Shared by every run: the engine, the linker, the cache and the ticker.
/// Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<sandbox::SandboxState>,
    lean_linker: Linker<lean::LeanState>,
    cache: ArtifactCache,
    ticker: Arc<epoch::EpochTicker>,
    /// Runs abandoned while blocked in a host call and not yet returned.
    stuck: stuck::StuckRuns,
    workers: dispatch::Workers,
}

impl Runtime {
    /// A runtime caching compiled plugins in `cache_dir` (none: no cache),
    /// compiling in this process.
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Runtime> {
        Runtime::with_compiler(cache_dir, Compiler::InProcess)
    }

    /// A runtime whose plugins the cache lacks are compiled by `compiler`.
    pub fn with_compiler(
        cache_dir: Option<PathBuf>,
        compiler: Compiler,
    ) -> anyhow::Result<Runtime> {
        let engine = new_engine()?;
        let linker = sandbox::linker(&engine)?;
        let lean_linker = lean::linker(&engine)?;
        let cache = ArtifactCache::new(cache_dir, &engine, compiler);
        let ticker = epoch::EpochTicker::start(engine.clone());
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                linker,
                lean_linker,
                cache,
                ticker,
                stuck: stuck::StuckRuns::default(),
                workers: dispatch::Workers::new(),
            }),
        })
    }

    /// Load the plugin at `path`: read, hash, compile (or load from cache),
    /// check its ABI version and imports, and ask it to describe itself.
    pub fn load(&self, path: &Path) -> anyhow::Result<Arc<Plugin>> {
        let wasm = std::fs::read(path)
            .with_context(|| format!("cannot read plugin {}", path.display()))?;
        self.load_bytes(path, &wasm)
            .with_context(|| format!("cannot load plugin {}", path.display()))
    }

    fn load_bytes(&self, path: &Path, wasm: &[u8]) -> anyhow::Result<Arc<Plugin>> {
        let inner = &self.inner;
        if wasm.len() > MAX_PLUGIN_BYTES {
            anyhow::bail!(
                "the file is {} bytes, above the {MAX_PLUGIN_BYTES}-byte limit for a plugin",
                wasm.len()
            );
        }
        // The hash (what a schedule pins) is of the file as shipped.
        let sha256 = sandglass_core::hash::sha256_hex(wasm);
        let wrapped;
        let component_bytes = if command::is_core_module(wasm) {
            wrapped = command::componentize(wasm)?;
            &wrapped[..]
        } else {
            wasm
        };
        let (component, cache) = inner.cache.load(&inner.engine, component_bytes, &sha256)?;
        let ty = component.component_type();
        let exported = abi::check_exports(ty.exports(&inner.engine).map(|(name, _)| name))
            .map_err(anyhow::Error::msg)?;
        let imports: Vec<&str> = ty.imports(&inner.engine).map(|(name, _)| name).collect();
        abi::check_imports(imports.iter().copied()).map_err(anyhow::Error::msg)?;
        let lean = abi::is_lean(imports.iter().copied());
        let unprovided = |e: wasmtime::Error| {
            anyhow::anyhow!("the plugin imports something the sandbox does not provide: {e:#}")
        };
        let (entry, description) = match exported {
            abi::Exported::Collector(version) if lean => {
                let pre = inner
                    .lean_linker
                    .instantiate_pre(&component)
                    .map_err(unprovided)?;
                let pre = abi::CollectorPre::new(pre)?;
                let description = run::describe(self, run::DescribeIn::Lean(&pre), path, version)?;
                (Entry::Lean(pre), description)
            }
            abi::Exported::Collector(version) => {
                let pre = inner
                    .linker
                    .instantiate_pre(&component)
                    .map_err(unprovided)?;
                let pre = abi::CollectorPre::new(pre)?;
                let description = run::describe(self, run::DescribeIn::Wasi(&pre), path, version)?;
                (Entry::Collector(pre), description)
            }
            abi::Exported::Command => {
                let pre = inner
                    .linker
                    .instantiate_pre(&component)
                    .map_err(unprovided)?;
                let pre = wasmtime_wasi::p2::bindings::sync::CommandPre::new(pre)?;
                (Entry::Command(pre), command::description(file_stem(path)))
            }
        };
        Ok(Arc::new(Plugin {
            path: path.to_owned(),
            sha256,
            description,
            cache,
            entry,
        }))
    }

    /// The names a component imports, for `agent plugin check`.
    pub fn imports(&self, plugin: &Plugin) -> Vec<String> {
        let ty = match &plugin.entry {
            Entry::Collector(pre) => pre.instance_pre().component(),
            Entry::Lean(pre) => pre.instance_pre().component(),
            Entry::Command(pre) => pre.instance_pre().component(),
        }
        .component_type();
        ty.imports(&self.inner.engine)
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }
}

/// A file's name without its extension: a command plugin's name.
pub fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
