//! One sandbox: the store state a plugin run sees, the linker that defines
//! its imports, and the policy hooks in front of `wasi:filesystem`.

use super::abi;
use super::account::Account;
use super::fs_policy::{Denied, check_fd, directory, not_special};
use super::limited::limited_store;
pub use super::view::View;
use sandglass_core::limits::Limits;
use sandglass_core::units::ByteSize;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store, StoreContextMut};
use wasmtime_wasi::clocks::WasiClocksView;
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::bindings::sync::filesystem::types as wasi_fs;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// The instance name wasmtime-wasi registers `wasi:filesystem/types` under.
const WASI_FS_TYPES: &str = "wasi:filesystem/types@0.2.12";
/// And `wasi:clocks/monotonic-clock`.
const WASI_MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Handles of any kind (streams, timers, directory listings) a run may hold
/// per file it may hold open: the backstop on the host's resource table,
/// which otherwise grows to a million entries.
const HANDLES_PER_FILE: usize = 16;

/// Random bytes a plugin may ask for in one call (wasmtime's default is
/// 64 MiB): the host fills a buffer of that size before the copy into the
/// guest can fail on the memory cap, in a host call the deadline cannot end.
/// A collector needs a hash seed at most.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// What a plugin run's store holds.
pub struct SandboxState {
    wasi: WasiCtx,
    table: ResourceTable,
    view: Arc<View>,
    /// Log budget and refused opens.
    pub account: Account,
    /// Files and directories the run may hold open at once.
    max_open_files: usize,
    /// Whether an open was refused because that many were open.
    pub open_files_hit: bool,
    /// When the run's deadline passes: no sleep lasts beyond it.
    deadline_at: Instant,
}

impl SandboxState {
    /// A sleep of `nanos`, cut to end at the run's deadline. The epoch
    /// interruption that enforces the deadline cannot stop a thread blocked
    /// in a host call; with every timer ending by the deadline, a plugin that
    /// sleeps gets back into wasm in time to be stopped there, instead of
    /// leaving its thread stuck.
    fn sleep_within_deadline(&mut self, nanos: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let left = self.deadline_at.saturating_duration_since(Instant::now());
        let nanos = nanos.min(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX));
        monotonic_clock::Host::subscribe_duration(&mut self.clocks(), nanos)
    }
}

impl WasiView for SandboxState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl abi::sandglass::collector::types::Host for SandboxState {}

impl abi::sandglass::collector::log::Host for SandboxState {
    fn log(&mut self, level: abi::LogLevel, message: String) {
        self.account.log(level, message);
    }
}

impl SandboxState {
    /// `open-at`, judged before and after wasmtime-wasi opens the file.
    ///
    /// Before: a path into `/proc` is judged as the kernel will walk it, so a
    /// secret is not even opened and a path into the agent's own process
    /// fails as if absent whatever lies there (after the open, the error of
    /// a magic link such as `/proc/self/fd/N` would tell what `N` is); then
    /// anything that is not a regular file or a directory is refused (`open`
    /// on a FIFO blocks in the kernel until a writer comes, and a device node
    /// or socket is nothing a collector reads); then the run's cap on open
    /// files. This costs a `readlink` and an `fstatat` per open. After: the
    /// policy judges the path the kernel resolved for the new descriptor,
    /// which no path trick can disguise.
    fn open_at_checked(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: wasi_fs::PathFlags,
        path: String,
        open_flags: wasi_fs::OpenFlags,
        flags: wasi_fs::DescriptorFlags,
    ) -> wasmtime::Result<Result<Resource<Descriptor>, wasi_fs::ErrorCode>> {
        let view = self.view.clone();
        let follow = path_flags.contains(wasi_fs::PathFlags::SYMLINK_FOLLOW);
        if let Descriptor::Dir(dir) = self.table.get(&fd)? {
            let dir_fd = dir.dir.as_raw_fd();
            let before = view
                .policy
                .proc_path(&directory(dir_fd), &path, follow)
                .map_or(Ok(()), |requested| view.policy.check(&requested))
                .and_then(|()| not_special(dir_fd, &path, follow));
            if let Err(denied) = before {
                return Ok(Err(self.deny(denied)));
            }
        }
        if self.open_descriptors() >= self.max_open_files {
            self.open_files_hit = true;
            return Ok(Err(wasi_fs::ErrorCode::Quota));
        }
        let mut fs = self.filesystem();
        let opened = match wasi_fs::HostDescriptor::open_at(
            &mut fs, fd, path_flags, path, open_flags, flags,
        ) {
            Ok(opened) => opened,
            Err(e) => return Ok(Err(wasi_fs::Host::convert_error_code(&mut fs, e)?)),
        };
        let raw = match fs.table.get(&opened)? {
            Descriptor::File(f) => f.file.as_raw_fd(),
            Descriptor::Dir(d) => d.dir.as_raw_fd(),
        };
        match check_fd(&view.policy, raw) {
            Ok(()) => Ok(Ok(opened)),
            Err(denied) => {
                fs.table.delete(opened)?;
                Ok(Err(self.deny(denied)))
            }
        }
    }

    /// Files and directories open in this run, preopens included. Counted
    /// in the table rather than at open and close: a descriptor is dropped
    /// by wasmtime-wasi's own resource destructor, which the sandbox does
    /// not see. The table holds a few dozen entries at most.
    fn open_descriptors(&mut self) -> usize {
        self.table
            .iter_mut()
            .filter(|entry| entry.is::<Descriptor>())
            .count()
    }

    /// `readlink-at`, refused for any path with `..` and for links the
    /// policy hides (`cwd`, `root`, `exe`, `fd/*`, `map_files/*`, anything of
    /// the agent's own process, ...), judged by where the link lives:
    /// `/proc/self/fd/3` is a link in the agent's own `/proc/<pid>/fd`.
    fn readlink_at_checked(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> wasmtime::Result<Result<String, wasi_fs::ErrorCode>> {
        let view = self.view.clone();
        let dir_fd = match self.table.get(&fd)? {
            Descriptor::Dir(d) => d.dir.as_raw_fd(),
            Descriptor::File(_) => return Ok(Err(wasi_fs::ErrorCode::NotDirectory)),
        };
        let verdict = if path.split('/').any(|part| part == "..") {
            Err(Denied::new(path.clone(), "`..` in a readlink path"))
        } else {
            let dir = directory(dir_fd);
            let link = view
                .policy
                .proc_path(&dir, &path, false)
                .unwrap_or_else(|| dir.join(&path));
            view.policy.check(&link)
        };
        if let Err(denied) = verdict {
            return Ok(Err(self.deny(denied)));
        }
        let mut fs = self.filesystem();
        match wasi_fs::HostDescriptor::readlink_at(&mut fs, fd, path) {
            Ok(target) => Ok(Ok(target)),
            Err(e) => Ok(Err(wasi_fs::Host::convert_error_code(&mut fs, e)?)),
        }
    }

    /// Count and log a denial; the error the plugin gets for it.
    fn deny(&mut self, denied: Denied) -> wasi_fs::ErrorCode {
        // Inside the agent's own process, hidden and absent look the same.
        let code = if denied.absent {
            wasi_fs::ErrorCode::NoEntry
        } else {
            wasi_fs::ErrorCode::Access
        };
        self.account.deny(denied);
        code
    }
}

/// The linker every plugin is instantiated with: WASI p2 (sync, no network),
/// the `log` import, the policy hooks shadowing `open-at` and `readlink-at`,
/// and monotonic-clock timers cut at the run's deadline.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<SandboxState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    abi::sandglass::collector::log::add_to_linker::<_, HasSelf<SandboxState>>(&mut linker, |s| s)?;
    abi::sandglass::collector::types::add_to_linker::<_, HasSelf<SandboxState>>(
        &mut linker,
        |s| s,
    )?;
    linker.allow_shadowing(true);
    let mut types = linker.instance(WASI_FS_TYPES)?;
    types.func_wrap(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, SandboxState>,
         (fd, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            wasi_fs::PathFlags,
            String,
            wasi_fs::OpenFlags,
            wasi_fs::DescriptorFlags,
        )| {
            Ok((store
                .data_mut()
                .open_at_checked(fd, path_flags, path, open_flags, flags)?,))
        },
    )?;
    types.func_wrap(
        "[method]descriptor.readlink-at",
        |mut store: StoreContextMut<'_, SandboxState>,
         (fd, path): (Resource<Descriptor>, String)| {
            Ok((store.data_mut().readlink_at_checked(fd, path)?,))
        },
    )?;
    let mut clock = linker.instance(WASI_MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |mut store: StoreContextMut<'_, SandboxState>, (nanos,): (u64,)| {
            Ok((store.data_mut().sleep_within_deadline(nanos)?,))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store: StoreContextMut<'_, SandboxState>, (when,): (u64,)| {
            let state = store.data_mut();
            let now = monotonic_clock::Host::now(&mut state.clocks())?;
            Ok((state.sleep_within_deadline(when.saturating_sub(now))?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(linker)
}

/// A store ready for one run, and the pipes that capture its stdout/stderr.
pub struct Sandbox {
    pub store: Store<SandboxState>,
    pub stdout: MemoryOutputPipe,
    pub stderr: MemoryOutputPipe,
    /// Bytes stdout holds at most: writes beyond fail.
    pub stdout_cap: usize,
}

/// What a command plugin gets besides the filesystem: its argv and stdin.
pub struct CommandIo {
    pub args: Vec<String>,
    pub stdin: Vec<u8>,
}

/// Build a fresh store for one run of `plugin` as `service` under `limits`.
pub fn new_sandbox(
    engine: &Engine,
    view: &Arc<View>,
    limits: &Limits,
    plugin: &str,
    service: &str,
    command: Option<CommandIo>,
) -> anyhow::Result<Sandbox> {
    let cap = |bytes: ByteSize| usize::try_from(bytes.0).unwrap_or(usize::MAX);
    // A command's samples come on stdout: it gets the output budget there.
    let stdout_cap = match command {
        Some(_) => cap(limits.max_output_bytes),
        None => cap(limits.max_stdio_bytes),
    };
    let stdout = MemoryOutputPipe::new(stdout_cap);
    let stderr = MemoryOutputPipe::new(cap(limits.max_stdio_bytes));
    let mut wasi = WasiCtxBuilder::new();
    if let Some(command) = command {
        wasi.args(&command.args)
            .stdin(MemoryInputPipe::new(command.stdin));
    }
    // Must come before the preopens: each captures the flag when added, and
    // without it every file operation is a tokio spawn_blocking (10x slower).
    wasi.allow_blocking_current_thread(true)
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .max_random_size(MAX_RANDOM_BYTES);
    for (host, guest) in &view.dirs {
        wasi.preopened_dir(host, guest, FsPerms::ReadOnly)?;
    }
    let mut table = ResourceTable::new();
    table.set_max_capacity(limits.max_open_files.saturating_mul(HANDLES_PER_FILE));
    let state = SandboxState {
        wasi: wasi.build(),
        table,
        view: view.clone(),
        account: Account::new(plugin, service, limits),
        max_open_files: limits.max_open_files,
        open_files_hit: false,
        deadline_at: Instant::now() + limits.deadline(),
    };
    let store = limited_store(engine, state, limits, |s| &mut s.account)?;
    Ok(Sandbox {
        store,
        stdout,
        stderr,
        stdout_cap,
    })
}
