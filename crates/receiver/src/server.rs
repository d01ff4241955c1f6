//! The receiver's network side: accept agents (up to a connection cap),
//! handshake and authenticate them, hand their batches to the store and
//! acknowledge each after commit, push schedules when the configuration
//! changes, and run the liveness clock.

use super::batches::{self, Answers, Pending, Verdict};
use super::clock;
use super::config::{Model, token_matches};
use super::duplicates::Duplicates;
use super::liveness::Tracker;
use super::store::{self, Op, Store};
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use sandglass_core::text::Escaped;
use sandglass_core::time::now_ms;
use sandglass_daemon::tls;
use sandglass_protocol::{
    Fault, FaultCode, FrameCodec, HANDSHAKE_MAX_FRAME, Hello, Message, PROTOCOL_VERSION, Probe,
    ProtocolError, ReportBatch, Revision, Welcome, read_preamble, write_preamble,
};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// How often liveness is judged.
const LIVENESS_TICK: Duration = Duration::from_millis(500);
/// Liveness ticks between heartbeats in the store (5 s).
const HEARTBEAT_TICKS: u64 = 10;
/// How often the configuration file is checked for changes.
const CONFIG_POLL: Duration = Duration::from_secs(1);

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
}

/// Connections in their handshake, oldest first. Past `max_handshakes` the
/// oldest is told to go: a real agent finishes its handshake in
/// milliseconds, so the ones that linger are the idle and the slow.
#[derive(Default)]
struct Handshakes {
    pending: Mutex<BTreeMap<u64, CancellationToken>>,
}

/// Removes a connection from [`Handshakes`] when its handshake ends.
struct InHandshake {
    handshakes: Arc<Handshakes>,
    id: u64,
}

impl Handshakes {
    /// Register connection `id`; the token is cancelled if it is evicted.
    fn enter(self: &Arc<Self>, id: u64, max: usize) -> (InHandshake, CancellationToken) {
        let token = CancellationToken::new();
        let mut pending = self.pending.lock().expect("handshakes lock");
        pending.insert(id, token.clone());
        while pending.len() > max {
            if let Some((_, oldest)) = pending.pop_first() {
                oldest.cancel();
            }
        }
        (
            InHandshake {
                handshakes: self.clone(),
                id,
            },
            token,
        )
    }
}

impl Drop for InHandshake {
    fn drop(&mut self) {
        self.handshakes
            .pending
            .lock()
            .expect("handshakes lock")
            .remove(&self.id);
    }
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
}

impl Server {
    /// Load the configuration, open (or create) the store and restore what
    /// it remembers for liveness.
    pub fn open(config_path: &Path) -> anyhow::Result<Server> {
        let model = Model::load(config_path)?;
        let tls = model
            .settings
            .tls
            .as_ref()
            .map(|t| tls::acceptor(&t.cert, &t.key, t.client_ca.as_deref()))
            .transpose()
            .with_context(|| format!("{}: [tls]", config_path.display()))?;
        let conn = store::open(&model.settings.database)?;
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
        })
    }

    /// The configured listen address.
    pub fn listen(&self) -> &str {
        &self.model.settings.listen
    }

    /// The configured connection cap.
    pub fn max_connections(&self) -> usize {
        self.model.settings.max_connections
    }

    /// Serve agents on `listener` until `shutdown` resolves. `reload` asks
    /// for the configuration to be read again (SIGHUP); file changes are
    /// noticed by themselves.
    pub async fn serve(
        self,
        listener: TcpListener,
        reload: Arc<Notify>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Server {
            config_path,
            model,
            tracker,
            conn,
            tls,
        } = self;
        let (store, writer) = Store::start(conn, tracker.clone());
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
        });
        serve(shared, cap, writer, listener, reload, shutdown).await
    }
}

async fn serve(
    shared: Arc<Shared>,
    cap: Arc<Semaphore>,
    writer: std::thread::JoinHandle<()>,
    listener: TcpListener,
    reload: Arc<Notify>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let mut background = JoinSet::new();
    background.spawn(liveness_clock(shared.clone(), cancel.clone()));
    background.spawn(config_watch(shared.clone(), reload, cancel.clone()));
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
                    if let Err(e) = connection(&shared, stream, addr, cancel, permit).await {
                        if over_cap {
                            tracing::warn!(peer = %addr, "connection refused: at max_connections");
                        } else {
                            tracing::info!(peer = %addr, "connection closed: {}", Escaped(&format!("{e:#}")));
                        }
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        }
    }
    tracing::info!("receiver shutting down");
    cancel.cancel();
    let drain = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    background.shutdown().await;
    // Last word for `receiver status`: the data is no longer live.
    shared
        .store
        .send(Op::Heartbeat {
            time_ms: now_ms(),
            running: false,
        })
        .await;
    drop(shared);
    // The writer ends once every Store handle is gone, after committing
    // what was queued.
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .ok();
    Ok(())
}

/// The store op recording the configured services and hosts.
fn scheduled_op(model: &Model, tracker: &Mutex<Tracker>) -> Op {
    let tracker = tracker.lock().expect("tracker lock");
    let mut services = Vec::new();
    let mut hosts = Vec::new();
    for (name, host) in &model.hosts {
        for s in &host.schedule.services {
            services.push((
                name.clone(),
                s.name.clone(),
                s.plugin.clone(),
                s.interval_ms,
            ));
        }
        if let Some((status, since, reason)) = tracker.host(name) {
            hosts.push((name.clone(), status, since, reason.to_owned()));
        }
    }
    Op::Scheduled {
        services,
        hosts,
        time_ms: now_ms(),
    }
}

async fn liveness_clock(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(LIVENESS_TICK);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if ticks.is_multiple_of(HEARTBEAT_TICKS) {
            shared
                .store
                .send(Op::Heartbeat {
                    time_ms: now_ms(),
                    running: true,
                })
                .await;
            sandglass_daemon::release_freed_memory();
        }
        ticks += 1;
        let tolerance = shared.model().settings.late_tolerance.as_millis() as u64;
        let changes = shared
            .tracker
            .lock()
            .expect("tracker lock")
            .evaluate(now_ms(), tolerance);
        for c in changes.iter().filter(|c| c.service.is_none()) {
            if c.new == "OK" {
                tracing::info!(
                    host = c.host,
                    "{} -> {}: {}",
                    c.old,
                    c.new,
                    Escaped(&c.reason)
                );
            } else {
                tracing::warn!(
                    host = c.host,
                    "{} -> {}: {}",
                    c.old,
                    c.new,
                    Escaped(&c.reason)
                );
            }
        }
        if !changes.is_empty() {
            shared.store.send(Op::Changes { changes }).await;
        }
    }
}

/// Reload on SIGHUP or when the file changes (checked every second).
async fn config_watch(shared: Arc<Shared>, reload: Arc<Notify>, cancel: CancellationToken) {
    let stamp = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut last = stamp(&shared.config_path);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = reload.notified() => {}
            () = tokio::time::sleep(CONFIG_POLL) => {
                let now = stamp(&shared.config_path);
                if now == last {
                    continue;
                }
            }
        }
        last = stamp(&shared.config_path);
        apply_reload(&shared).await;
    }
}

async fn apply_reload(shared: &Shared) {
    let new = match Model::load(&shared.config_path) {
        Ok(model) => Arc::new(model),
        Err(e) => {
            tracing::error!("reload failed, keeping the running configuration: {e:#}");
            return;
        }
    };
    let old = shared.model();
    for (what, changed) in [
        ("listen", old.settings.listen != new.settings.listen),
        ("database", old.settings.database != new.settings.database),
        ("[tls]", old.settings.tls != new.settings.tls),
    ] {
        if changed {
            tracing::warn!("{what} changed in the configuration; it applies after a restart");
        }
    }
    *shared.model.write().expect("model lock") = new.clone();
    shared
        .tracker
        .lock()
        .expect("tracker lock")
        .apply_model(&new, now_ms());
    shared.store.send(scheduled_op(&new, &shared.tracker)).await;
    let mut pushed = 0;
    for (host, peer) in shared.peers.lock().expect("peers lock").iter() {
        let before = old.hosts.get(host).map(|h| h.schedule.revision);
        match new.hosts.get(host) {
            None => {
                let _ = peer.outbound.try_send(fault(
                    FaultCode::Auth,
                    format!("host {host} was removed from the receiver's configuration"),
                ));
                peer.cancel.cancel();
            }
            Some(h) if Some(h.schedule.revision) != before => {
                let _ = peer
                    .outbound
                    .try_send(Message::Schedule(h.schedule.clone()));
                pushed += 1;
            }
            Some(_) => {}
        }
    }
    tracing::info!(
        hosts = new.hosts.len(),
        pushed,
        "configuration reloaded; new schedules pushed to {pushed} connected agents"
    );
}

fn fault(code: FaultCode, text: impl Into<String>) -> Message {
    Message::Error(Fault {
        code,
        text: text.into(),
    })
}

type Conn = Framed<tls::Stream, FrameCodec>;

/// The connection as a stream: TLS if the receiver is configured for it.
async fn accept_tls(tcp: TcpStream, tls: Option<&TlsAcceptor>) -> anyhow::Result<tls::Stream> {
    Ok(match tls {
        None => Box::new(tcp),
        Some(acceptor) => Box::new(acceptor.accept(tcp).await.context("TLS handshake failed")?),
    })
}

/// Send an error frame, then fail with the same text.
async fn refuse(framed: &mut Conn, code: FaultCode, text: String) -> anyhow::Error {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        framed.send(fault(code, text.clone())),
    )
    .await;
    anyhow::anyhow!("{text}")
}

/// The fault to answer a broken frame with.
fn frame_fault(e: &ProtocolError) -> FaultCode {
    match e {
        ProtocolError::TooLarge { .. } => FaultCode::TooLarge,
        _ => FaultCode::Malformed,
    }
}

/// TLS, preamble and Hello, within the handshake timeout.
async fn handshake(tcp: TcpStream, shared: &Shared) -> anyhow::Result<(Conn, Hello)> {
    let mut stream = accept_tls(tcp, shared.tls.as_ref()).await?;
    let version = read_preamble(&mut stream).await?;
    write_preamble(&mut stream).await?;
    let mut framed = Framed::new(stream, FrameCodec::new(HANDSHAKE_MAX_FRAME));
    if version != PROTOCOL_VERSION {
        return Err(refuse(
            &mut framed,
            FaultCode::Version,
            format!("the agent speaks protocol version {version}, this receiver speaks {PROTOCOL_VERSION}: upgrade the older side"),
        )
        .await);
    }
    let hello = match framed.next().await {
        Some(Ok(Message::Hello(hello))) => hello,
        Some(Ok(other)) => {
            let text = format!("expected Hello as the first message, got {}", name(&other));
            return Err(refuse(&mut framed, FaultCode::Protocol, text).await);
        }
        Some(Err(e)) => return Err(refuse(&mut framed, frame_fault(&e), e.to_string()).await),
        None => bail!("closed before Hello"),
    };
    let model = shared.model();
    let refusal = match model.hosts.get(&hello.host_id) {
        None => Some(format!(
            "host {:?} is not known to this receiver: add [hosts.{}] to its configuration",
            hello.host_id, hello.host_id
        )),
        Some(host) if !token_matches(&host.token_hash, &hello.token) => Some(format!(
            "wrong token for host {}: the agent's token must equal [hosts.{}] token in the receiver's configuration",
            hello.host_id, hello.host_id
        )),
        Some(_) => None,
    };
    if let Some(text) = refusal {
        return Err(refuse(&mut framed, FaultCode::Auth, text).await);
    }
    Ok((framed, hello))
}

fn name(message: &Message) -> &'static str {
    match message {
        Message::Hello(_) => "Hello",
        Message::Welcome(_) => "Welcome",
        Message::Schedule(_) => "Schedule",
        Message::ScheduleRequest(_) => "ScheduleRequest",
        Message::Unchanged(_) => "Unchanged",
        Message::Reports(_) => "Reports",
        Message::Ack(_) => "Ack",
        Message::Rejected(_) => "Rejected",
        Message::Error(_) => "Error",
        Message::Ping(_) => "Ping",
        Message::Pong(_) => "Pong",
    }
}

async fn connection(
    shared: &Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    cancel: CancellationToken,
    permit: Option<OwnedSemaphorePermit>,
) -> anyhow::Result<()> {
    let settings = shared.model().settings.clone();
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    // The socket under TLS and framing, to see whether the agent left.
    let socket = stream.as_raw_fd();
    let (in_handshake, evicted) = shared.handshakes.enter(id, settings.max_handshakes);
    let attempt = tokio::select! {
        () = evicted.cancelled() => bail!("dropped in its handshake to make room for newer connections (max_handshakes)"),
        attempt = tokio::time::timeout(settings.handshake_timeout, handshake(stream, shared)) => attempt,
    };
    drop(in_handshake);
    let (mut framed, hello) = match attempt {
        Ok(result) => result.map_err(|e| {
            tracing::warn!(peer = %addr, "agent refused: {}", Escaped(&format!("{e:#}")));
            e
        })?,
        Err(_) => bail!("no Hello within handshake_timeout"),
    };
    let host = hello.host_id.clone();
    // Past max_connections only an agent replacing its own stale connection
    // gets in (it frees the slot the stale one holds).
    if permit.is_none() && !shared.peers.lock().expect("peers lock").contains_key(&host) {
        return Err(refuse(&mut framed, FaultCode::Busy, BUSY.into()).await);
    }
    framed.codec_mut().set_max_frame(settings.max_frame);
    let now = now_ms();
    let mut clock = clock::Offset::from_hello(now, hello.time_ms);
    let (outbound, mut queue) = mpsc::channel(OUTBOUND_QUEUE);
    register(shared, &host, id, addr, &outbound, &cancel, permit);
    tracing::info!(host, peer = %addr, version = %Escaped(&hello.agent_version), "agent connected");
    let plugins = serde_json::to_string(
        &hello
            .plugins
            .iter()
            .map(|p| (&p.name, &p.sha256))
            .collect::<Vec<_>>(),
    )?;
    shared
        .store
        .send(Op::Connected {
            host: host.clone(),
            peer: addr.to_string(),
            agent_version: hello.agent_version.clone(),
            plugins,
            time_ms: now,
        })
        .await;
    shared
        .tracker
        .lock()
        .expect("tracker lock")
        .connected(&host);
    let model = shared.model();
    let schedule = &model.hosts.get(&host).context("host removed")?.schedule;
    let _ = outbound.try_send(Message::Welcome(Welcome {
        receiver_version: env!("CARGO_PKG_VERSION").into(),
        time_ms: now,
        refresh_ms: settings.schedule_refresh.as_millis() as u64,
        max_frame: settings.max_frame as u64,
    }));
    if hello.schedule_revision != schedule.revision {
        let _ = outbound.try_send(Message::Schedule(schedule.clone()));
    }
    let _ = outbound.try_send(clock.ping(now));
    let (mut sink, mut stream) = framed.split();
    let mut writer = tokio::spawn(async move {
        while let Some(message) = queue.recv().await {
            let last = matches!(message, Message::Error(_));
            if sink.send(message).await.is_err() || last {
                break;
            }
        }
    });
    let answers = Answers::start(outbound.clone(), cancel.clone());
    let mut next_ping = tokio::time::Instant::now() + clock::PING_EVERY;
    let result = loop {
        let next = tokio::select! {
            () = cancel.cancelled() => break Ok(()),
            () = tokio::time::sleep_until(next_ping) => {
                let _ = outbound.try_send(clock.ping(now_ms()));
                next_ping += clock::PING_EVERY;
                continue;
            }
            next = tokio::time::timeout(settings.idle_timeout, stream.next()) => next,
        };
        let message = match next {
            Err(_) => {
                let _ = outbound.try_send(fault(
                    FaultCode::Timeout,
                    "nothing received within idle_timeout",
                ));
                break Err(anyhow::anyhow!("idle for longer than idle_timeout"));
            }
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => {
                tracing::warn!(host, peer = %addr, "bad frame: {}", Escaped(&e.to_string()));
                let _ = outbound.try_send(fault(frame_fault(&e), e.to_string()));
                break Err(e.into());
            }
            Ok(Some(Ok(message))) => message,
        };
        match message {
            // A batch that waited in the socket while this receiver was
            // stopped (SIGSTOP, a hung host) after the agent gave up on it:
            // the agent keeps it and sends it elsewhere; storing it here too
            // would store it twice.
            Message::Reports(_) if peer_closed(socket) => {
                break Err(anyhow::anyhow!(
                    "the agent closed the connection; its unanswered batches are not stored here"
                ));
            }
            Message::Reports(batch) => match batches::judge(batch) {
                Verdict::Store(batch) => {
                    let (seq, last_seq) = (batch.seq, batch.last_seq());
                    let outcome =
                        store_batch(shared, &host, hello.stream, batch, clock.applied()).await;
                    let pending = Pending {
                        seq,
                        last_seq,
                        outcome,
                    };
                    // Waits while too many batches are unanswered: a peer
                    // that does not read its answers is read no further.
                    tokio::select! {
                        () = cancel.cancelled() => break Ok(()),
                        () = answers.push(pending) => {}
                    }
                }
                Verdict::Reject {
                    seq,
                    last_seq,
                    reason,
                } => {
                    tracing::warn!(host, peer = %addr, "batch rejected: {reason}");
                    tokio::select! {
                        () = cancel.cancelled() => break Ok(()),
                        () = answers.reject(seq, last_seq, reason) => {}
                    }
                }
                Verdict::Fatal(text) => {
                    tracing::warn!(host, peer = %addr, "bad batch: {text}");
                    let _ = outbound.try_send(fault(FaultCode::Protocol, text.clone()));
                    break Err(anyhow::anyhow!(text));
                }
            },
            Message::ScheduleRequest(Revision { revision }) => {
                let model = shared.model();
                let Some(h) = model.hosts.get(&host) else {
                    break Ok(());
                };
                let answer = if h.schedule.revision == revision {
                    Message::Unchanged(Revision { revision })
                } else {
                    Message::Schedule(h.schedule.clone())
                };
                let _ = outbound.try_send(answer);
            }
            Message::Ping(Probe { nonce, time_ms }) => {
                let now = now_ms();
                let _ = outbound.try_send(Message::Pong(Probe {
                    nonce,
                    time_ms: now,
                }));
                if clock.disagrees(time_ms, now) {
                    let _ = outbound.try_send(clock.ping(now));
                }
            }
            Message::Pong(probe) => {
                if let Some(step) = clock.pong(probe, now_ms()) {
                    tracing::warn!(host, "{step}");
                }
            }
            Message::Error(f) if f.code == FaultCode::Moved => {
                moved(shared, &host, &f.text).await;
                break Ok(());
            }
            Message::Error(f) => {
                tracing::warn!(host, "agent reports an error: {}", Escaped(&f.to_string()));
                break Ok(());
            }
            other => {
                let text = format!("unexpected {} from an agent", name(&other));
                let _ = outbound.try_send(fault(FaultCode::Protocol, text.clone()));
                break Err(anyhow::anyhow!(text));
            }
        }
    };
    drop(answers);
    drop(outbound);
    // Let queued answers and the error frame go out, then close; a peer
    // that does not read them is not waited for (nor its socket kept).
    if tokio::time::timeout(Duration::from_secs(2), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    let current = {
        let mut peers = shared.peers.lock().expect("peers lock");
        let current = peers.get(&host).is_some_and(|p| p.id == id);
        if current {
            peers.remove(&host);
        }
        current
    };
    // A connection that was replaced leaves the host connected (by the
    // connection that replaced it).
    if current {
        shared
            .store
            .send(Op::Disconnected { host: host.clone() })
            .await;
    }
    tracing::info!(host, peer = %addr, "agent disconnected");
    result
}

/// Messages queued for one agent at most; past it the agent is not reading
/// what the receiver sends and its answers wait (and so does its reading).
const OUTBOUND_QUEUE: usize = 256;

/// Text of the Busy refusal.
const BUSY: &str = "the receiver is at its connection limit (max_connections); retrying later";

/// The agent said it leaves for another receiver: show the host as moved.
async fn moved(shared: &Shared, host: &str, why: &str) {
    tracing::info!(
        host,
        "the agent moves to another receiver: {}",
        Escaped(why)
    );
    let reason = format!("the agent moved to another receiver ({why})");
    let change = shared
        .tracker
        .lock()
        .expect("tracker lock")
        .moved(host, reason, now_ms());
    if let Some(change) = change {
        shared
            .store
            .send(Op::Changes {
                changes: vec![change],
            })
            .await;
    }
}

/// Make this connection the host's; tell a connection it replaces to go,
/// and warn when two agents keep replacing each other (a duplicated
/// `host_id`).
fn register(
    shared: &Shared,
    host: &str,
    id: u64,
    addr: SocketAddr,
    outbound: &mpsc::Sender<Message>,
    cancel: &CancellationToken,
    permit: Option<OwnedSemaphorePermit>,
) {
    let previous = {
        let mut peers = shared.peers.lock().expect("peers lock");
        let mut previous = peers.remove(host);
        let permit = permit.or_else(|| previous.as_mut()?.permit.take());
        peers.insert(
            host.to_owned(),
            Peer {
                id,
                addr,
                outbound: outbound.clone(),
                cancel: cancel.clone(),
                permit,
            },
        );
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

/// Whether the agent has closed its side of the connection: a FIN waits
/// behind the data still buffered. Our agent never half-closes a connection
/// it expects answers on, so a closed side means it has given up on it.
fn peer_closed(socket: RawFd) -> bool {
    let mut pollfd = libc::pollfd {
        fd: socket,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for a socket this connection owns; no wait.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
    ready > 0 && pollfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Queue the batch for the store; its outcome arrives after the commit.
async fn store_batch(
    shared: &Shared,
    host: &str,
    stream: u64,
    batch: ReportBatch,
    offset_ms: i64,
) -> oneshot::Receiver<Result<u64, store::Refusal>> {
    let (done, stored) = oneshot::channel();
    shared
        .store
        .send(Op::Batch {
            host: host.to_owned(),
            stream,
            batch,
            offset_ms,
            received_ms: now_ms(),
            done,
        })
        .await;
    stored
}
