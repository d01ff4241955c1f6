//! The receiver's network side: accept agents (up to a connection cap),
//! handshake and authenticate them, hand their batches to the store and
//! acknowledge each after commit, push schedules when the configuration
//! changes, and run the liveness clock.

mod background;
mod connection;
mod handshake;
mod housekeeping;
mod transfer;

use crate::config::Model;
use crate::duplicates::Duplicates;
use crate::health::Health;
use crate::liveness::Tracker;
use crate::notify::{Notifier, Setup};
use crate::plugins::Library;
use crate::remote_write::RemoteWriters;
use crate::rollout::Rollouts;
use crate::store::{self, Op, ScheduledHost, ScheduledService, Store};
use anyhow::Context;
use handshake::Handshakes;
use sandglass_core::text::{escape, truncate};
use sandglass_core::time::now_ms;
use sandglass_daemon::tls;
use sandglass_protocol::{Fault, FaultCode, Message};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// A connected, authenticated agent.
struct Peer {
    id: u64,
    addr: SocketAddr,
    outbound: mpsc::Sender<Message>,
    cancel: CancellationToken,
    /// The connection's slot under `max_connections`; a connection that
    /// replaces this one without a slot of its own takes it over.
    permit: Option<OwnedSemaphorePermit>,
}

struct Shared {
    config_path: PathBuf,
    model: RwLock<Arc<Model>>,
    tracker: Arc<Mutex<Tracker>>,
    store: Store,
    peers: Mutex<HashMap<String, Peer>>,
    next_id: AtomicU64,
    tls: Option<TlsAcceptor>,
    handshakes: Arc<Handshakes>,
    duplicates: Mutex<Duplicates>,
    notifier: Notifier,
    /// The remote-write threads; dropping this stops them.
    remote_write: RemoteWriters,
    health: Arc<Health>,
    /// The checked plugins of `plugin_dir`, pinned and served to agents.
    plugins: Mutex<Option<Library>>,
    /// Their rollouts (lock after `plugins` when both are needed).
    rollouts: Mutex<Rollouts>,
    /// Test hook: plugin transfers still to corrupt (see [`CORRUPT_HOOK`]).
    corrupt_transfers: AtomicU64,
}

impl Shared {
    fn model(&self) -> Arc<Model> {
        self.model.read().expect("model lock").clone()
    }
}

/// A receiver with its configuration loaded and its store open, ready to
/// serve.
pub struct Server {
    config_path: PathBuf,
    model: Model,
    tracker: Arc<Mutex<Tracker>>,
    conn: rusqlite::Connection,
    tls: Option<TlsAcceptor>,
    plugins: Option<Library>,
    rollouts: Rollouts,
}

/// A test hook, documented in docs/plugin-guide.md ("Distribution"): the number of plugin
/// transfers whose first chunk this receiver sends with one byte flipped,
/// so tests can see an agent refuse bytes that do not match their sha256.
pub const CORRUPT_HOOK: &str = "SANDGLASS_TEST_CORRUPT_PLUGIN_TRANSFERS";

impl Server {
    /// Load the configuration, open (or create) the store and restore what
    /// it remembers for liveness.
    pub fn open(config_path: &Path) -> anyhow::Result<Server> {
        let mut plugins = None;
        let mut model = Model::load_with(config_path, &mut plugins)?;
        let tls = model
            .settings
            .tls
            .as_ref()
            .map(|t| tls::acceptor(&t.cert, &t.key, t.client_ca.as_deref()))
            .transpose()
            .with_context(|| format!("{}: [tls]", config_path.display()))?;
        let conn = store::open(&model.settings.database)?;
        let mut rollouts = Rollouts::open(&model.settings.database)?;
        pin_rollouts(&mut rollouts, &mut model, &mut plugins);
        // No agent is connected to a receiver that is only starting (one
        // that crashed left its hosts marked connected).
        conn.execute("UPDATE hosts SET connected = 0", [])
            .and_then(|_| store::write_heartbeat(&conn, now_ms(), true))
            .context("cannot update the store")?;
        let (hosts, services) = store::remembered(&conn).context("cannot read the store")?;
        let mut tracker = Tracker::default();
        tracker.start(now_ms());
        tracker.remember(hosts, services);
        tracker.apply_model(&model, now_ms());
        Ok(Server {
            config_path: config_path.to_owned(),
            model,
            tracker: Arc::new(Mutex::new(tracker)),
            conn,
            tls,
            plugins,
            rollouts,
        })
    }

    /// The configured listen address.
    pub fn listen(&self) -> &str {
        &self.model.settings.listen
    }

    /// The configured HTTP listen address, if any.
    pub fn http_listen(&self) -> Option<&str> {
        self.model.settings.http.as_ref().map(|h| h.listen.as_str())
    }

    /// The configured connection cap.
    pub fn max_connections(&self) -> usize {
        self.model.settings.max_connections
    }

    /// Listen for agents on `address`, with room in the accept queue for
    /// `max_connections` of them (see [`agent_listener`]).
    pub async fn listen_for_agents(&self, address: &str) -> std::io::Result<TcpListener> {
        agent_listener(address, self.max_connections()).await
    }

    /// Serve agents on `listener` (and, when given, HTTP on `http`) until
    /// `shutdown` resolves. `reload` asks for the configuration to be read
    /// again (SIGHUP); file changes are noticed by themselves.
    pub async fn serve(
        self,
        listener: TcpListener,
        http: Option<TcpListener>,
        reload: Arc<Notify>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Server {
            config_path,
            model,
            tracker,
            conn,
            tls,
            plugins,
            rollouts,
        } = self;
        let corrupt_transfers = std::env::var(CORRUPT_HOOK)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // The notifier has a connection of its own: its queue writes and
        // slow channels never wait on (or hold up) the store writer.
        let notifier = Notifier::start(store::open(&model.settings.database)?, Setup::of(&model))?;
        let (store, writer) = Store::start(conn, tracker.clone());
        let remote_write =
            crate::remote_write::start(&model.settings.remote_write, &model.settings.database);
        store.send(versions_op(plugins.as_ref())).await;
        store.send(scheduled_op(&model, &tracker)).await;
        let cap = Arc::new(Semaphore::new(model.settings.max_connections));
        let shared = Arc::new(Shared {
            config_path,
            model: RwLock::new(Arc::new(model)),
            tracker,
            store,
            peers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            tls,
            handshakes: Arc::default(),
            duplicates: Mutex::default(),
            notifier,
            remote_write,
            health: Arc::default(),
            plugins: Mutex::new(plugins),
            rollouts: Mutex::new(rollouts),
            corrupt_transfers: AtomicU64::new(corrupt_transfers),
        });
        serve(shared, cap, writer, listener, http, reload, shutdown).await
    }
}

async fn serve(
    shared: Arc<Shared>,
    cap: Arc<Semaphore>,
    writer: std::thread::JoinHandle<()>,
    listener: TcpListener,
    http: Option<TcpListener>,
    reload: Arc<Notify>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let mut background = JoinSet::new();
    if let Some(http) = http {
        background.spawn(serve_http(shared.clone(), http, cancel.clone()));
    }
    background.spawn(background::liveness_clock(shared.clone(), cancel.clone()));
    background.spawn(housekeeping::housekeeping(shared.clone(), cancel.clone()));
    background.spawn(background::config_watch(
        shared.clone(),
        reload,
        cancel.clone(),
    ));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    tracing::info!(address = %listener.local_addr()?, "receiver listening");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // Past the cap a connection still gets its handshake (bounded
                // by max_handshakes), but only to let an agent replace its own
                // stale connection; any other is told Busy.
                let permit = cap.clone().try_acquire_owned().ok();
                let over_cap = permit.is_none();
                let shared = shared.clone();
                let cancel = cancel.child_token();
                connections.spawn(async move {
                    if let Err(e) = connection::connection(&shared, stream, addr, cancel, permit).await {
                        if over_cap {
                            tracing::warn!(peer = %addr, "connection refused: at max_connections");
                        } else {
                            tracing::info!(peer = %addr, "connection closed: {}", loggable(&e));
                        }
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        }
    }
    // Closed before the drain: an agent reconnecting meanwhile is refused
    // and retries after its backoff, where it would wait in the queue of a
    // listener nobody accepts from until the process exits and resets it.
    drop(listener);
    tracing::info!("receiver shutting down");
    cancel.cancel();
    let drain = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    background.shutdown().await;
    // Last word for `receiver status`: the data is no longer live.
    shared.store.heartbeat(false).await;
    let stopping = shared.clone();
    tokio::task::spawn_blocking(move || stopping.notifier.stop())
        .await
        .ok();
    drop(shared);
    // The writer ends once every Store handle is gone, after committing
    // what was queued.
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .ok();
    Ok(())
}

/// The HTTP listener, until `cancel`.
async fn serve_http(shared: Arc<Shared>, listener: TcpListener, cancel: CancellationToken) {
    let settings = shared.model().settings.clone();
    let state = Arc::new(crate::http::HttpState::new(
        settings.database,
        settings.http.and_then(|h| h.token_hash),
        Box::new(LiveServer(shared)),
    ));
    if let Err(e) = crate::http::serve(listener, state, cancel).await {
        tracing::error!("the HTTP listener stopped: {e:#}");
    }
}

/// What the HTTP listener reads from the running server.
struct LiveServer(Arc<Shared>);

impl crate::http::Live for LiveServer {
    fn connected_agents(&self) -> usize {
        self.0.peers.lock().expect("peers lock").len()
    }

    fn model(&self) -> Arc<Model> {
        self.0.model()
    }

    fn firing(&self, host: &str) -> Vec<crate::triggers::Firing> {
        self.0.tracker.lock().expect("tracker lock").firing(host)
    }

    fn remote_write(&self) -> Vec<Arc<crate::remote_write::Progress>> {
        self.0.remote_write.progress.clone()
    }

    fn health(&self) -> Arc<crate::health::Health> {
        self.0.health.clone()
    }
}

/// The store op recording the configured services and hosts.
fn scheduled_op(model: &Model, tracker: &Mutex<Tracker>) -> Op {
    let tracker = tracker.lock().expect("tracker lock");
    let mut services = Vec::new();
    let mut hosts = Vec::new();
    for (name, host) in &model.hosts {
        for s in &host.schedule.services {
            services.push(ScheduledService {
                host: name.clone(),
                service: s.name.clone(),
                plugin: s.plugin.clone(),
                sha256: s.sha256.clone(),
                interval_ms: s.interval_ms,
            });
        }
        if let Some((status, since, reason)) = tracker.host(name) {
            hosts.push(ScheduledHost {
                host: name.clone(),
                status,
                since_ms: since,
                reason: reason.to_owned(),
            });
        }
    }
    Op::Scheduled {
        services,
        hosts,
        time_ms: now_ms(),
    }
}

/// Start rollouts for new builds of running plugins and pin each host's
/// schedule to the build its rollout gives it; `plugin_dir` keeps serving
/// the builds those pins still need.
fn pin_rollouts(rollouts: &mut Rollouts, model: &mut Model, plugins: &mut Option<Library>) {
    if let Some(library) = plugins {
        let needed = rollouts.reconcile(model, library, now_ms());
        library.keep(needed);
    }
}

/// The store op recording the builds `plugin_dir` offers (none without one).
fn versions_op(plugins: Option<&Library>) -> Op {
    Op::PluginVersions {
        versions: plugins.map(Library::versions).unwrap_or_default(),
        time_ms: now_ms(),
    }
}

/// An error frame. Its text may quote what a peer sent: cut to a size that
/// always fits a frame, even the 64 KiB of a handshake, so the peer is told.
fn fault(code: FaultCode, text: impl Into<String>) -> Message {
    let mut text = text.into();
    text.truncate(truncate(&text, MAX_FAULT_TEXT).len());
    Message::Error(Fault { code, text })
}

/// An error that may quote a peer, for the log: escaped and cut.
pub(super) fn loggable(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    escape(truncate(&text, MAX_FAULT_TEXT)).into_owned()
}

/// Bytes of an error frame's text, at most.
pub(super) const MAX_FAULT_TEXT: usize = 4096;

/// Make `peer` the host's connection; tell a connection it replaces to go,
/// and warn when two agents keep replacing each other (a duplicated
/// `host_id`). A peer without a slot under `max_connections` takes over the
/// slot of the one it replaces.
fn register(shared: &Shared, host: &str, mut peer: Peer) {
    let addr = peer.addr;
    let previous = {
        let mut peers = shared.peers.lock().expect("peers lock");
        let mut previous = peers.remove(host);
        peer.permit = peer.permit.or_else(|| previous.as_mut()?.permit.take());
        peers.insert(host.to_owned(), peer);
        previous
    };
    let Some(previous) = previous else {
        return;
    };
    let _ = previous.outbound.try_send(fault(
        FaultCode::Replaced,
        format!("another connection authenticated as host {host}"),
    ));
    previous.cancel.cancel();
    let warning = shared.duplicates.lock().expect("duplicates lock").replaced(
        host,
        previous.addr,
        addr,
        now_ms(),
    );
    if let Some(warning) = warning {
        tracing::warn!(host, "{warning}");
        shared
            .tracker
            .lock()
            .expect("tracker lock")
            .warn(host, warning, now_ms());
    }
}

/// Forget connection `id` of `host`, unless another connection replaced
/// it; returns whether it was still the host's.
fn unregister(shared: &Shared, host: &str, id: u64) -> bool {
    let mut peers = shared.peers.lock().expect("peers lock");
    let current = peers.get(host).is_some_and(|p| p.id == id);
    if current {
        peers.remove(host);
    }
    current
}

/// A listener on `address` whose accept queue holds `backlog` connections
/// (the kernel caps it at net.core.somaxconn). Tokio's `bind` asks for 128:
/// when thousands of agents reconnect at once (a receiver restart) the
/// queue overflows, the kernel drops their SYNs, and each waits 1, 3, 7 ...
/// seconds for its SYN to be sent again (measured: 31 s for one of 10,000).
pub async fn agent_listener(address: &str, backlog: usize) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(address).await? {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // As tokio's bind: a restarted receiver rebinds at once.
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(u32::try_from(backlog).unwrap_or(u32::MAX)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{address} resolves to no address"),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_herd_waits_in_the_accept_queue_instead_of_having_its_syns_dropped() {
        // More than tokio's default queue of 128, within the kernel's cap.
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        let herd = somaxconn.min(600) - 1;
        assert!(
            herd > 129,
            "net.core.somaxconn {somaxconn} is too low for this test"
        );
        let listener = agent_listener("127.0.0.1:0", herd).await.unwrap();
        let address = listener.local_addr().unwrap();
        // Nothing accepts: a connect completes only if its connection fits
        // in the queue; one whose SYN is dropped is still waiting at the
        // end of the bound.
        let connects: Vec<_> = (0..herd)
            .map(|_| tokio::spawn(tokio::net::TcpStream::connect(address)))
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut connected = 0;
        for connect in connects {
            if let Ok(Ok(Ok(_stream))) = tokio::time::timeout_at(deadline, connect).await {
                connected += 1;
            }
        }
        assert_eq!(connected, herd, "connections left out of the accept queue");
        drop(listener);
    }

    #[tokio::test]
    async fn an_address_in_use_is_an_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap().to_string();
        let error = agent_listener(&address, 10).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    }
}
