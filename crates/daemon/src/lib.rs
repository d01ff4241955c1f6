//! # Sandglass daemon support
//!
//! What the agent and the receiver binaries share, and nothing else needs:
//! logging set-up, error exit, the signals of their long-running commands
//! (`agent run`, `receiver run`), process limits, memory given back
//! ([`release_freed_memory`], [`cold_pages`]), and [`tls`] for their
//! connections.

pub mod cold_pages;
pub mod tls;

use std::sync::Arc;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

/// Log to stderr, filtered by `SANDGLASS_LOG` (default `default`), with
/// colours only for people: log files and tests get plain text.
fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SANDGLASS_LOG")
                .unwrap_or_else(|_| default.into()),
        )
        .init();
}

/// When the process started (first call: from `main`).
pub fn started() -> std::time::Instant {
    static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *STARTED.get_or_init(std::time::Instant::now)
}

/// A binary's `main`: log at `info` for the long-running command and at
/// `warn` for one-shot ones (a daemon tells what it does; a command speaks
/// only of problems), run, and exit 1 with `program: error` on failure.
pub fn main(program: &str, long_running: bool, run: impl FnOnce() -> anyhow::Result<()>) {
    started();
    init_logging(if long_running { "info" } else { "warn" });
    if let Err(e) = run() {
        eprintln!("{program}: {e:#}");
        std::process::exit(1);
    }
}

/// Install the handlers: SIGHUP wakes `reload`; the returned future
/// resolves on SIGTERM or SIGINT (Ctrl-C).
pub fn signals(reload: Arc<Notify>) -> anyhow::Result<impl Future<Output = ()>> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            reload.notify_one();
        }
    });
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    })
}

/// Raise the soft limit on open files to the hard limit (a receiver holds
/// one per agent) and return it.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Give memory that was freed back to the operating system.
///
/// glibc's malloc keeps freed memory in its arenas for reuse; after a burst
/// (a thousand connections each buffering a half-sent 64 KiB handshake) the
/// receiver's RSS stayed ~70 MiB above its start for good, growing slowly
/// round after round as the arenas fragmented (scripts/handshake-memory.py).
/// That is retention, not a leak; trimming now and then returns it.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; any argument is valid.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Write `text` to stdout. A reader that went away (`receiver query | head`, `agent once | head`)
/// ends the process quietly with exit 0: it took what it wanted, and
/// `print!` would panic there (Rust ignores SIGPIPE, so the write fails
/// with EPIPE instead of killing the process as it would a C program).
pub fn print(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}
