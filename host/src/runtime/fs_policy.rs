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
//! thread ids (`/proc/<tid>`) and magic links all moot. The exact rules are in
//! docs/security.md.

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

/// Entries under the agent's own `/proc/<pid>/` that a plugin may still open:
/// `/proc/net` and `/proc/mounts` are symlinks into `self`, and the network
/// and mount tables are the same for every process in the namespace.
const AGENT_ALLOW: &[&str] = &["net", "mounts", "mountinfo"];

/// Why an open was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub path: PathBuf,
    pub rule: &'static str,
}

/// The roots a plugin may see and the process whose `/proc` entries are hidden.
#[derive(Debug, Clone)]
pub struct FsPolicy {
    roots: Vec<PathBuf>,
    proc_root: PathBuf,
    agent_pid: u32,
}

impl FsPolicy {
    /// A policy for a plugin that sees `roots` (canonical host paths). Entries
    /// of process `agent_pid` and its threads are hidden under `proc_root`.
    pub fn new(roots: Vec<PathBuf>, proc_root: PathBuf, agent_pid: u32) -> Self {
        FsPolicy {
            roots,
            proc_root,
            agent_pid,
        }
    }

    /// Allow or refuse opening `real`, the path the kernel resolved.
    pub fn check(&self, real: &Path) -> Result<(), Denied> {
        let deny = |rule| {
            Err(Denied {
                path: real.to_owned(),
                rule,
            })
        };
        if !self.roots.iter().any(|root| real.starts_with(root)) {
            return deny("outside the directories this plugin may see");
        }
        let Ok(rest) = real.strip_prefix(&self.proc_root) else {
            return Ok(());
        };
        let parts: Vec<&str> = rest
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect();
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
                return deny("the agent's own process is hidden");
            }
        }
        if below.iter().any(|name| PROCESS_DENY.contains(name)) {
            return deny("process memory, environment and links out of /proc are never readable");
        }
        Ok(())
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

/// The path the kernel resolved for an open file descriptor of this process.
pub fn resolved_path(fd: std::os::fd::RawFd) -> std::io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> FsPolicy {
        FsPolicy::new(
            vec!["/proc".into(), "/var/log/app".into()],
            "/proc".into(),
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
