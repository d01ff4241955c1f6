//! One sandbox: the store state a plugin run sees, the linker that defines
//! its imports, and the policy hooks in front of `wasi:filesystem`.

use super::abi;
use super::fs_policy::{Denied, FsPolicy, resolved_path};
use sandglass_core::limits::Limits;
use sandglass_core::text::{Escaped, truncate};
use sandglass_core::units::ByteSize;
use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, StoreContextMut};
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

/// Log lines a plugin may send through the `log` import per run, in bytes.
const LOG_BYTES_PER_RUN: usize = 16 << 10;

/// Denied opens remembered per run (the count is kept in full).
const DENIALS_KEPT: usize = 4;

/// Handles of any kind (streams, timers, directory listings) a run may hold
/// per file it may hold open: the backstop on the host's resource table,
/// which otherwise grows to a million entries.
const HANDLES_PER_FILE: usize = 16;

/// The directories a plugin sees, each read-only, and the policy that judges
/// every open under them. Built once per service, shared by its runs.
#[derive(Debug)]
pub struct View {
    /// (host directory, path the guest sees it at)
    dirs: Vec<(PathBuf, String)>,
    policy: FsPolicy,
}

impl View {
    /// `/proc` always; `/sys` when `sys` is granted; each of `files` (granted
    /// directories) at its own absolute path.
    pub fn new(sys: bool, files: &[PathBuf]) -> std::io::Result<View> {
        let mut dirs = vec![(PathBuf::from("/proc"), "/proc".to_owned())];
        if sys {
            dirs.push((PathBuf::from("/sys"), "/sys".to_owned()));
        }
        for dir in files {
            let real = std::fs::canonicalize(dir)?;
            dirs.push((real.clone(), real.to_string_lossy().into_owned()));
        }
        let roots = dirs.iter().map(|(host, _)| host.clone()).collect();
        let policy = FsPolicy::new(roots, "/proc".into(), "/sys".into(), std::process::id());
        Ok(View { dirs, policy })
    }
}

/// Tracks memory growth against the cap, remembering the peak and whether the
/// cap was hit (an infallible allocation then traps, and the trap alone would
/// not say why).
pub struct MemoryLimiter {
    cap: usize,
    pub peak: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Table slots are pointer-sized host memory: cap them by the same budget.
        Ok(desired.saturating_mul(8) <= self.cap)
    }
}

/// What a plugin run's store holds.
pub struct SandboxState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    view: Arc<View>,
    /// Opens refused by the policy: the first few, and how many in all.
    pub denied: Vec<Denied>,
    pub denied_count: usize,
    /// Files and directories the run may hold open at once.
    max_open_files: usize,
    /// Whether an open was refused because that many were open.
    pub open_files_hit: bool,
    plugin: String,
    service: String,
    log_budget: usize,
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
        if self.log_budget == 0 {
            return;
        }
        let message = truncate(&message, self.log_budget);
        self.log_budget = self.log_budget.saturating_sub(message.len().max(1));
        let (plugin, service) = (&self.plugin, &self.service);
        // Escaped: a newline or an escape sequence in a plugin's message must
        // not forge a log line of its own or repaint the operator's terminal.
        let message = Escaped(message);
        match level {
            abi::LogLevel::Trace => tracing::trace!(plugin, service, "{message}"),
            abi::LogLevel::Debug => tracing::debug!(plugin, service, "{message}"),
            abi::LogLevel::Info => tracing::info!(plugin, service, "{message}"),
            abi::LogLevel::Warn => tracing::warn!(plugin, service, "{message}"),
            abi::LogLevel::Error => tracing::error!(plugin, service, "{message}"),
        }
        if self.log_budget == 0 {
            tracing::warn!(
                plugin,
                service,
                "log limit of {LOG_BYTES_PER_RUN} bytes per run reached; dropping the rest"
            );
        }
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
        let path = denied.path.to_string_lossy();
        tracing::debug!(plugin = self.plugin, service = self.service, path = %Escaped(&path), rule = denied.rule, "open denied by the sandbox policy");
        // Inside the agent's own process, hidden and absent look the same.
        let code = if denied.absent {
            wasi_fs::ErrorCode::NoEntry
        } else {
            wasi_fs::ErrorCode::Access
        };
        self.denied_count += 1;
        if self.denied.len() < DENIALS_KEPT {
            self.denied.push(denied);
        }
        code
    }
}

/// The path of directory descriptor `dir_fd` (empty if it has none: then
/// nothing is judged by it but its descriptor's own resolved path).
fn directory(dir_fd: RawFd) -> PathBuf {
    resolved_path(dir_fd).unwrap_or_default()
}

/// Refuse `path` under `dir_fd` if it is a FIFO, socket or device node,
/// before anything opens it. `fstatat` never blocks on them. A path that
/// does not stat (absent, or escaping the directory) is left to
/// wasmtime-wasi, which refuses escapes itself; absolute paths too.
fn not_special(dir_fd: RawFd, path: &str, follow: bool) -> Result<(), Denied> {
    let Ok(c_path) = CString::new(path) else {
        return Ok(());
    };
    if path.starts_with('/') {
        return Ok(());
    }
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: a valid directory descriptor, a NUL-terminated path and a
    // buffer of the right type, read only when the call succeeded.
    let stat = unsafe {
        if libc::fstatat(dir_fd, c_path.as_ptr(), stat.as_mut_ptr(), flags) != 0 {
            return Ok(());
        }
        stat.assume_init()
    };
    match stat.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFDIR | libc::S_IFLNK => Ok(()),
        _ => Err(Denied::new(
            directory(dir_fd).join(path),
            "not a regular file or directory (a FIFO, socket or device node, whose open may block)",
        )),
    }
}

/// Check an open descriptor's resolved path; fail closed when it has none.
fn check_fd(policy: &FsPolicy, raw: RawFd) -> Result<(), Denied> {
    let real = resolved_path(raw)
        .map_err(|_| Denied::new(format!("fd {raw}"), "cannot resolve the opened path"))?;
    policy.check(&real)
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
        .allow_ip_name_lookup(false);
    for (host, guest) in &view.dirs {
        wasi.preopened_dir(host, guest, FsPerms::ReadOnly)?;
    }
    let mut table = ResourceTable::new();
    table.set_max_capacity(limits.max_open_files.saturating_mul(HANDLES_PER_FILE));
    let state = SandboxState {
        wasi: wasi.build(),
        table,
        limiter: MemoryLimiter {
            cap: usize::try_from(limits.memory.0).unwrap_or(usize::MAX),
            peak: 0,
            hit: false,
        },
        view: view.clone(),
        denied: Vec::new(),
        denied_count: 0,
        max_open_files: limits.max_open_files,
        open_files_hit: false,
        plugin: plugin.to_owned(),
        service: service.to_owned(),
        log_budget: LOG_BYTES_PER_RUN,
        deadline_at: Instant::now() + limits.deadline(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_hostcall_fuel(super::output::lift_budget(limits));
    store.set_fuel(limits.fuel)?;
    store.epoch_deadline_trap();
    store.set_epoch_deadline(super::epoch::ticks_for(limits.deadline()));
    Ok(Sandbox {
        store,
        stdout,
        stderr,
        stdout_cap,
    })
}
