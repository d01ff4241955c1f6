//! What both long-running commands (`agent run`, `receiver run`) share:
//! logging set-up and signals.

use std::sync::Arc;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

/// Log to stderr, filtered by `SANDGLASS_LOG` (default `default`), with
/// colours only for people: log files and tests get plain text.
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SANDGLASS_LOG")
                .unwrap_or_else(|_| default.into()),
        )
        .init();
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
