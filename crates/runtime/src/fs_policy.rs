//! The filesystem policy: what a plugin may open, judged on the path the
//! **kernel** resolved, not the path the plugin asked for.
//!
//! wasmtime-wasi's read-only preopen already blocks writes and `..` escapes, but
//! it happily opens `/proc/self/environ` (the agent's environment, with its
//! credential), `/proc/self/mem`, or any process's `environ` when the agent runs
//! as root. So [`super::sandbox`] shadows `wasi:filesystem` `open-at` and
//! `readlink-at`: `open-at` delegates to wasmtime-wasi, then asks the kernel
//! where the new descriptor really points (`readlink /proc/self/fd/N`) and
//! closes it again unless [`FsPolicy::check`] allows that path. Judging the
//! resolved path makes `..`, `self`, `thread-self`, `net -> self/net`, hidden
//! thread ids (`/proc/<tid>`) and magic links all moot. Paths into `/proc`
//! are also judged before the open, as the kernel will walk them
//! ([`FsPolicy::proc_path`]), so that a secret is not even opened and a
//! `readlink` is judged by where the link lives. The exact rules are in
//! docs/security.md.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::{Component, Path, PathBuf};

/// Entries directly under `/proc` that no plugin may open.
const PROC_DENY: &[&str] = &[
    "kcore",
    "kmem",
    "mem",
    "kmsg",
    "kallsyms",
    "kpagecount",
    "kpageflags",
    "kpagecgroup",
    "sysrq-trigger",
    "keys",
    "key-users",
    "timer_list",
];

/// Entries under any `/proc/<pid>/` (or `/proc/<pid>/task/<tid>/`) that no
/// plugin may open: memory, environment and the links that leave `/proc`.
const PROCESS_DENY: &[&str] = &[
    "environ",
    "mem",
    "auxv",
    "pagemap",
    "syscall",
    "stack",
    "personality",
    "timers",
    "clear_refs",
    "map_files",
    "fd",
    "root",
    "cwd",
    "exe",
];

/// Paths under `/sys` (and everything below them) that no plugin may open:
/// kernel memory layout, firmware tables and variables, hardware serial
/// numbers, security and tracing file systems, crash dumps. Collectors read
/// devices, block and network statistics, power supplies and thermal zones,
/// none of which lives here. Judged on the resolved path, so the symlinks
/// that lead here (`/sys/class/dmi/id`, ...) are covered too.
const SYS_DENY: &[&str] = &[
    // Kernel memory: the crash-dump layout (KASLR offset, symbol addresses),
    // the boot parameters handed over by the firmware, and where each
    // module's sections are loaded.
    "kernel/vmcoreinfo",
    "kernel/boot_params",
    // Security, debug and tracing file systems: IMA measurement logs, TPM
    // event logs, lockdown state; kernel internals and addresses; tracing
    // pipes whose reads block.
    "kernel/security",
    "kernel/debug",
    "kernel/tracing",
    // Firmware: ACPI tables, EFI variables, raw DMI tables, the physical
    // memory map, device trees.
    "firmware",
    // DMI identity: product and board serial numbers, system UUID, asset tags.
    "devices/virtual/dmi",
    // Crash dumps of earlier kernels' logs; BPF objects pinned by others.
    "fs/pstore",
    "fs/bpf",
    // Suspend control; reading `wakeup_count` blocks while wake-up events
    // are in progress.
    "power",
];

/// Entries under any `/sys/module/<name>/` that no plugin may open: the load
/// addresses of the module's sections (a KASLR leak for a root agent).
const SYS_MODULE_DENY: &[&str] = &["sections"];

/// Entries under the agent's own `/proc/<pid>/` that a plugin may still open:
/// `/proc/net` and `/proc/mounts` are symlinks into `self`, and the network
/// and mount tables are the same for every process in the namespace.
const AGENT_ALLOW: &[&str] = &["net", "mounts", "mountinfo"];

/// Why an open was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub path: PathBuf,
    pub rule: &'static str,
    /// Tell the plugin the path does not exist: inside the agent's own
    /// process, a refusal must not tell hidden files from absent ones.
    pub absent: bool,
}

impl Denied {
    pub fn new(path: impl Into<PathBuf>, rule: &'static str) -> Denied {
        Denied {
            path: path.into(),
            rule,
            absent: false,
        }
    }
}

/// The roots a plugin may see and the process whose `/proc` entries are hidden.
#[derive(Debug, Clone)]
pub struct FsPolicy {
    roots: Vec<PathBuf>,
    proc_root: PathBuf,
    sys_root: PathBuf,
    agent_pid: u32,
}

impl FsPolicy {
    /// A policy for a plugin that sees `roots` (canonical host paths). Entries
    /// of process `agent_pid` and its threads are hidden under `proc_root`;
    /// the firmware and kernel secrets under `sys_root` are never opened.
    pub fn new(roots: Vec<PathBuf>, proc_root: PathBuf, sys_root: PathBuf, agent_pid: u32) -> Self {
        FsPolicy {
            roots,
            proc_root,
            sys_root,
            agent_pid,
        }
    }

    /// Allow or refuse opening `real`, the path the kernel resolved.
    pub fn check(&self, real: &Path) -> Result<(), Denied> {
        let deny = |rule| Err(Denied::new(real, rule));
        if !self.roots.iter().any(|root| real.starts_with(root)) {
            return deny("outside the directories this plugin may see");
        }
        if let Ok(rest) = real.strip_prefix(&self.sys_root) {
            if sys_denied(&names(rest)) {
                return deny(
                    "firmware, kernel memory and security data in /sys are never readable",
                );
            }
            return Ok(());
        }
        let Ok(rest) = real.strip_prefix(&self.proc_root) else {
            return Ok(());
        };
        let parts = names(rest);
        let Some((first, below)) = parts.split_first() else {
            return Ok(());
        };
        if PROC_DENY.contains(first) {
            return deny("kernel memory and keys are never readable");
        }
        let Ok(pid) = first.parse::<u32>() else {
            return Ok(());
        };
        if self.is_agent(pid) {
            let allowed = below.first().is_some_and(|name| AGENT_ALLOW.contains(name));
            if !allowed {
                return Err(Denied {
                    absent: true,
                    ..Denied::new(real, "the agent's own process is hidden")
                });
            }
        }
        if below.iter().any(|name| PROCESS_DENY.contains(name)) {
            return deny("process memory, environment and links out of /proc are never readable");
        }
        Ok(())
    }

    /// Where `path`, relative to directory `dir`, lies in `/proc` as the
    /// kernel walks it: `.` and `..` applied, `self` and `thread-self` as
    /// the agent's pid and the calling thread (the host call runs on the
    /// thread the kernel would see). Those are the only links in `/proc` a
    /// plugin can walk through: wasmtime-wasi does not follow magic links
    /// (`cwd`, `root`, `fd/*`) nor absolute ones. The last component is
    /// resolved only when `follow_last` (an open that follows symlinks, not
    /// a readlink). `None` outside `/proc`, where a lexical path may differ
    /// from what the kernel resolves, and for absolute paths (refused by
    /// wasmtime-wasi).
    pub fn proc_path(&self, dir: &Path, path: &str, follow_last: bool) -> Option<PathBuf> {
        if path.starts_with('/') {
            return None;
        }
        let parts: Vec<&str> = path
            .split('/')
            .filter(|part| !part.is_empty() && *part != ".")
            .collect();
        let mut walked = dir.to_owned();
        for (index, part) in parts.iter().enumerate() {
            let through = follow_last || index + 1 < parts.len();
            match *part {
                ".." => {
                    walked.pop();
                }
                "self" if through && walked == self.proc_root => {
                    walked.push(self.agent_pid.to_string());
                }
                "thread-self" if through && walked == self.proc_root => {
                    // SAFETY: gettid has no preconditions.
                    let tid = unsafe { libc::gettid() };
                    walked.push(format!("{}/task/{tid}", self.agent_pid));
                }
                name => walked.push(name),
            }
        }
        walked.starts_with(&self.proc_root).then_some(walked)
    }

    /// Is `pid` the agent or one of its threads (threads have hidden
    /// `/proc/<tid>` directories of their own)?
    fn is_agent(&self, pid: u32) -> bool {
        pid == self.agent_pid
            || self
                .proc_root
                .join(self.agent_pid.to_string())
                .join("task")
                .join(pid.to_string())
                .exists()
    }
}

/// The normal components of `path`.
fn names(path: &Path) -> Vec<&str> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect()
}

/// Whether `/sys/<parts>` is on the deny list.
fn sys_denied(parts: &[&str]) -> bool {
    let denied_prefix = SYS_DENY.iter().any(|prefix| {
        let prefix: Vec<&str> = prefix.split('/').collect();
        parts.starts_with(&prefix)
    });
    let module_secret =
        matches!(parts, ["module", _, entry, ..] if SYS_MODULE_DENY.contains(entry));
    denied_prefix || module_secret
}

/// The path the kernel resolved for an open file descriptor of this process.
pub fn resolved_path(fd: std::os::fd::RawFd) -> std::io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
}

/// The path of directory descriptor `dir_fd` (empty if it has none: then
/// nothing is judged by it but its descriptor's own resolved path).
pub(crate) fn directory(dir_fd: RawFd) -> PathBuf {
    resolved_path(dir_fd).unwrap_or_default()
}

/// Refuse `path` under `dir_fd` if it is a FIFO, socket or device node,
/// before anything opens it. `fstatat` never blocks on them. A path that
/// does not stat (absent, or escaping the directory) is left to
/// wasmtime-wasi, which refuses escapes itself; absolute paths too.
pub(crate) fn not_special(dir_fd: RawFd, path: &str, follow: bool) -> Result<(), Denied> {
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
pub(crate) fn check_fd(policy: &FsPolicy, raw: RawFd) -> Result<(), Denied> {
    let real = resolved_path(raw)
        .map_err(|_| Denied::new(format!("fd {raw}"), "cannot resolve the opened path"))?;
    policy.check(&real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> FsPolicy {
        FsPolicy::new(
            vec!["/proc".into(), "/sys".into(), "/var/log/app".into()],
            "/proc".into(),
            "/sys".into(),
            std::process::id(),
        )
    }

    fn allowed(path: &str) -> bool {
        policy().check(Path::new(path)).is_ok()
    }

    #[test]
    fn ordinary_proc_files_are_allowed() {
        for p in [
            "/proc",
            "/proc/stat",
            "/proc/meminfo",
            "/proc/1/stat",
            "/proc/1/status",
            "/proc/1/cmdline",
            "/proc/1/task/1/stat",
            "/var/log/app/x.log",
        ] {
            assert!(allowed(p), "{p}");
        }
    }

    #[test]
    fn secrets_and_escapes_are_denied() {
        let me = std::process::id();
        for p in [
            "/proc/kcore".to_string(),
            "/proc/kmsg".into(),
            "/proc/1/environ".into(),
            "/proc/1/mem".into(),
            "/proc/1/task/1/environ".into(),
            "/proc/1/fd".into(),
            "/proc/1/fd/0".into(),
            "/proc/1/map_files/400000-401000".into(),
            "/proc/1/root".into(),
            "/proc/1/cwd".into(),
            "/proc/1/exe".into(),
            format!("/proc/{me}"),
            format!("/proc/{me}/cmdline"),
            format!("/proc/{me}/stat"),
            "/etc/shadow".into(),
            "/var/log/other".into(),
            "socket:[1234]".into(),
        ] {
            assert!(!allowed(&p), "{p} must be denied");
        }
    }

    #[test]
    fn firmware_and_kernel_secrets_in_sys_are_denied() {
        for p in [
            "/sys/kernel/vmcoreinfo",
            "/sys/kernel/boot_params/data",
            "/sys/kernel/security/integrity/ima/ascii_runtime_measurements",
            "/sys/kernel/debug/tracing/trace_pipe",
            "/sys/kernel/tracing/trace_pipe",
            "/sys/firmware/acpi/tables/DSDT",
            "/sys/firmware/efi/efivars/x",
            "/sys/firmware/dmi/tables/DMI",
            "/sys/firmware/memmap/0/start",
            "/sys/devices/virtual/dmi/id/product_serial",
            "/sys/module/ext4/sections/.text",
            "/sys/fs/pstore/dmesg-ramoops-0",
            "/sys/power/wakeup_count",
        ] {
            assert!(!allowed(p), "{p} must be denied");
        }
        for p in [
            "/sys",
            "/sys/kernel/uevent_seqnum",
            "/sys/kernel/mm/transparent_hugepage/enabled",
            "/sys/class/net/lo/statistics/rx_bytes",
            "/sys/block/sda/stat",
            "/sys/devices/system/cpu/online",
            "/sys/module/ext4/parameters/x",
            "/sys/firmwarex",
        ] {
            assert!(allowed(p), "{p}");
        }
    }

    #[test]
    fn a_readlink_is_judged_where_the_link_lives() {
        let policy = policy();
        let me = std::process::id();
        let link = |dir: &str, path: &str| policy.proc_path(Path::new(dir), path, false);
        assert_eq!(
            link("/proc", "self/fd/3"),
            Some(PathBuf::from(format!("/proc/{me}/fd/3")))
        );
        let in_thread = link("/proc", "thread-self/fd/3").unwrap();
        assert!(
            in_thread.starts_with(format!("/proc/{me}/task/")) && in_thread.ends_with("fd/3"),
            "{}",
            in_thread.display()
        );
        for path in ["self/fd/3", "thread-self/fd/3", "self/exe", "./self/cwd"] {
            let denied = policy.check(&link("/proc", path).unwrap()).unwrap_err();
            assert!(denied.absent, "{path}");
        }
        // The link `/proc/self` itself lives in /proc, and may be read.
        assert_eq!(link("/proc", "self"), Some(PathBuf::from("/proc/self")));
        assert!(policy.check(Path::new("/proc/self")).is_ok());
        // Opening through it is judged where it leads.
        assert_eq!(
            policy.proc_path(Path::new("/proc"), "self", true),
            Some(PathBuf::from(format!("/proc/{me}")))
        );
        assert_eq!(
            link("/proc/1", "../self/environ"),
            Some(format!("/proc/{me}/environ").into())
        );
        assert_eq!(link("/var/log/app", "x"), None);
        assert_eq!(link("/proc", "/etc/passwd"), None);
    }

    #[test]
    fn hidden_agent_files_look_absent_and_other_denials_do_not() {
        let me = std::process::id();
        let policy = policy();
        assert!(
            policy
                .check(Path::new(&format!("/proc/{me}/environ")))
                .unwrap_err()
                .absent
        );
        assert!(
            !policy
                .check(Path::new("/proc/1/environ"))
                .unwrap_err()
                .absent
        );
        assert!(!policy.check(Path::new("/proc/kcore")).unwrap_err().absent);
    }

    #[test]
    fn agent_network_and_mount_tables_stay_visible() {
        let me = std::process::id();
        assert!(allowed(&format!("/proc/{me}/net/dev")));
        assert!(allowed(&format!("/proc/{me}/mounts")));
    }

    #[test]
    fn agent_threads_are_hidden_too() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            tx.send(std::fs::read_link("/proc/thread-self").unwrap())
                .unwrap();
            done_rx.recv().unwrap();
        });
        let live = rx.recv().unwrap();
        let tid = live.file_name().unwrap().to_str().unwrap();
        assert!(!allowed(&format!("/proc/{tid}/environ")));
        assert!(
            !allowed(&format!("/proc/{tid}/stat")),
            "hidden thread dir of the agent"
        );
        done_tx.send(()).unwrap();
        handle.join().unwrap();
    }
}
