//! One agent's connection after its handshake, as a handler: [`Handler`]
//! registers the agent and greets it, then reads frames and dispatches each
//! message kind (and each timer) to a method of its own.

use super::handshake::{self, Conn, frame_fault, refuse};
use super::{Peer, Shared, fault, loggable};
use crate::batches::{self, Answers, Pending, Verdict};
use crate::clock;
use crate::config::Settings;
use crate::store::{self, Op, Prepared, SeriesCache};
use anyhow::Context;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use sandglass_core::text::Escaped;
use sandglass_core::time::now_ms;
use sandglass_protocol::{Fault, FaultCode, Hello, Message, Probe, ReportBatch, Revision, Welcome};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Messages queued for one agent at most; past it the agent is not reading
/// what the receiver sends and its answers wait (and so does its reading).
const OUTBOUND_QUEUE: usize = 256;

/// Text of the Busy refusal.
const BUSY: &str = "the receiver is at its connection limit (max_connections); retrying later";

/// Whether the connection goes on after a message.
enum Flow {
    Continue,
    /// The connection ends without an error.
    Close,
}

/// Serve one accepted connection: handshake, then the handler's loop.
pub(super) async fn connection(
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
    let (mut framed, hello) =
        handshake::admit(shared, stream, addr, id, &settings, permit.is_some()).await?;
    // Past max_connections only an agent replacing its own stale connection
    // gets in (it frees the slot the stale one holds).
    if permit.is_none()
        && !shared
            .peers
            .lock()
            .expect("peers lock")
            .contains_key(&hello.host_id)
    {
        return Err(refuse(&mut framed, FaultCode::Busy, BUSY.into()).await);
    }
    framed.codec_mut().set_max_frame(settings.max_frame);
    let link = Link {
        id,
        addr,
        socket,
        cancel,
        permit,
    };
    let (mut handler, queue) = Handler::start(shared.clone(), link, &hello, &settings).await?;
    let (sink, frames) = framed.split();
    let writer = tokio::spawn(write_frames(sink, queue));
    let result = handler.run(frames).await;
    handler.finish(writer).await;
    result
}

/// Send what is queued for the agent, up to an error frame (the last word).
/// What queued up together (the Acks of one group commit) goes out in one
/// write.
async fn write_frames(mut sink: SplitSink<Conn, Message>, mut queue: mpsc::Receiver<Message>) {
    while let Some(mut message) = queue.recv().await {
        loop {
            let last = matches!(message, Message::Error(_));
            if sink.feed(message).await.is_err() {
                return;
            }
            if last {
                let _ = sink.flush().await;
                return;
            }
            match queue.try_recv() {
                Ok(next) => message = next,
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// What identifies an accepted connection before it is the host's.
struct Link {
    id: u64,
    addr: SocketAddr,
    /// The socket under TLS and framing.
    socket: RawFd,
    cancel: CancellationToken,
    permit: Option<OwnedSemaphorePermit>,
}

/// An authenticated agent's connection.
struct Handler {
    shared: Arc<Shared>,
    host: String,
    /// The agent's spool stream its batches are numbered in.
    spool_stream: u64,
    link: Link,
    idle_timeout: Duration,
    clock: clock::Offset,
    outbound: mpsc::Sender<Message>,
    answers: Answers,
    /// The series of the agent's last report per service, which its next
    /// reports share (see `store::prepared`).
    series: SeriesCache,
}

impl Handler {
    /// Make the connection the host's, record it, and greet the agent
    /// (Welcome, its schedule if it has an older one, a clock ping).
    /// Returns the handler and the queue of frames to send.
    async fn start(
        shared: Arc<Shared>,
        link: Link,
        hello: &Hello,
        settings: &Settings,
    ) -> anyhow::Result<(Handler, mpsc::Receiver<Message>)> {
        let host = hello.host_id.clone();
        let now = now_ms();
        let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
        let mut link = link;
        super::register(
            &shared,
            &host,
            Peer {
                id: link.id,
                addr: link.addr,
                outbound: outbound.clone(),
                cancel: link.cancel.clone(),
                permit: link.permit.take(),
            },
        );
        tracing::info!(host, peer = %link.addr, version = %Escaped(&hello.agent_version), "agent connected");
        record_connected(&shared, hello, link.addr, now).await?;
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
        let mut clock = clock::Offset::from_hello(now, hello.time_ms);
        let _ = outbound.try_send(clock.ping(now));
        let answers = Answers::start(outbound.clone(), link.cancel.clone(), shared.health.clone());
        let handler = Handler {
            shared,
            host,
            spool_stream: hello.stream,
            link,
            idle_timeout: settings.idle_timeout,
            clock,
            outbound,
            answers,
            series: SeriesCache::default(),
        };
        Ok((handler, queue))
    }

    /// Read frames and dispatch them until the connection ends.
    async fn run(&mut self, mut frames: SplitStream<Conn>) -> anyhow::Result<()> {
        let mut next_ping = tokio::time::Instant::now() + clock::PING_EVERY;
        loop {
            let next = tokio::select! {
                () = self.link.cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(next_ping) => {
                    self.on_ping_timer();
                    next_ping += clock::PING_EVERY;
                    continue;
                }
                next = tokio::time::timeout(self.idle_timeout, frames.next()) => next,
            };
            let message = match next {
                Err(_) => return Err(self.on_idle()),
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(self.on_bad_frame(e)),
                Ok(Some(Ok(message))) => message,
            };
            if let Flow::Close = self.dispatch(message).await? {
                return Ok(());
            }
        }
    }

    /// One method per message kind.
    async fn dispatch(&mut self, message: Message) -> anyhow::Result<Flow> {
        match message {
            Message::Reports(batch) => self.on_reports(batch).await,
            Message::ScheduleRequest(revision) => Ok(self.on_schedule_request(revision)),
            Message::Ping(probe) => {
                self.on_ping(probe);
                Ok(Flow::Continue)
            }
            Message::Pong(probe) => {
                self.on_pong(probe);
                Ok(Flow::Continue)
            }
            Message::Error(f) => {
                self.on_error(f).await;
                Ok(Flow::Close)
            }
            Message::PluginRequest(request) => {
                // Queued with the acknowledgements, one chunk per request:
                // an Ack waits behind at most one chunk.
                let chunk = super::transfer::answer(&self.shared, &self.host, request);
                tokio::select! {
                    () = self.link.cancel.cancelled() => Ok(Flow::Close),
                    sent = self.outbound.send(chunk) => Ok(match sent {
                        Ok(()) => Flow::Continue,
                        Err(_) => Flow::Close,
                    }),
                }
            }
            other => Err(self.on_unexpected(&other)),
        }
    }

    /// Time to measure the agent's clock again.
    fn on_ping_timer(&mut self) {
        let _ = self.outbound.try_send(self.clock.ping(now_ms()));
    }

    /// Nothing arrived within `idle_timeout`.
    fn on_idle(&self) -> anyhow::Error {
        let _ = self.outbound.try_send(fault(
            FaultCode::Timeout,
            "nothing received within idle_timeout",
        ));
        anyhow::anyhow!("idle for longer than idle_timeout")
    }

    /// A frame that does not decode.
    fn on_bad_frame(&self, e: sandglass_protocol::ProtocolError) -> anyhow::Error {
        let code = frame_fault(&e);
        let e = anyhow::Error::from(e);
        tracing::warn!(host = self.host, peer = %self.link.addr, "bad frame: {}", loggable(&e));
        let _ = self.outbound.try_send(fault(code, e.to_string()));
        e
    }

    /// A batch of reports: judge it, queue it for the store, and queue its
    /// answer (sent in order once the store has answered).
    async fn on_reports(&mut self, batch: ReportBatch) -> anyhow::Result<Flow> {
        // A batch that waited in the socket while this receiver was
        // stopped (SIGSTOP, a hung host) after the agent gave up on it:
        // the agent keeps it and sends it elsewhere; storing it here too
        // would store it twice.
        if peer_closed(self.link.socket) {
            anyhow::bail!(
                "the agent closed the connection; its unanswered batches are not stored here"
            );
        }
        let cancel = self.link.cancel.clone();
        match batches::judge(batch) {
            Verdict::Store(batch) => {
                let (seq, last_seq) = (batch.seq, batch.last_seq());
                self.shared.health.received(&batch);
                let queued = std::time::Instant::now();
                let prepared = self.series.prepare(batch);
                let outcome = self.store_batch(prepared).await;
                let pending = Pending {
                    seq,
                    last_seq,
                    outcome,
                    queued,
                };
                // Waits while too many batches are unanswered: a peer
                // that does not read its answers is read no further.
                tokio::select! {
                    () = cancel.cancelled() => Ok(Flow::Close),
                    () = self.answers.push(pending) => Ok(Flow::Continue),
                }
            }
            Verdict::Reject {
                seq,
                last_seq,
                reason,
            } => {
                tracing::warn!(host = self.host, peer = %self.link.addr, "batch rejected: {reason}");
                tokio::select! {
                    () = cancel.cancelled() => Ok(Flow::Close),
                    () = self.answers.reject(seq, last_seq, reason) => Ok(Flow::Continue),
                }
            }
            Verdict::Fatal(text) => {
                tracing::warn!(host = self.host, peer = %self.link.addr, "bad batch: {text}");
                let _ = self
                    .outbound
                    .try_send(fault(FaultCode::Protocol, text.clone()));
                Err(anyhow::anyhow!(text))
            }
        }
    }

    /// Queue the batch for the store; its outcome arrives after the commit.
    async fn store_batch(&self, batch: Prepared) -> oneshot::Receiver<Result<u64, store::Refusal>> {
        let (done, stored) = oneshot::channel();
        self.shared
            .store
            .send(Op::Batch {
                host: self.host.clone(),
                stream: self.spool_stream,
                batch,
                offset_ms: self.clock.applied(),
                received_ms: now_ms(),
                done,
            })
            .await;
        stored
    }

    /// The agent asks whether its schedule is current.
    fn on_schedule_request(&self, Revision { revision }: Revision) -> Flow {
        let model = self.shared.model();
        let Some(h) = model.hosts.get(&self.host) else {
            return Flow::Close;
        };
        let answer = if h.schedule.revision == revision {
            Message::Unchanged(Revision { revision })
        } else {
            Message::Schedule(h.schedule.clone())
        };
        let _ = self.outbound.try_send(answer);
        Flow::Continue
    }

    /// The agent measures the clocks: answer, and measure back if they
    /// disagree.
    fn on_ping(&mut self, Probe { nonce, time_ms }: Probe) {
        let now = now_ms();
        let _ = self.outbound.try_send(Message::Pong(Probe {
            nonce,
            time_ms: now,
        }));
        if self.clock.disagrees(time_ms, now) {
            let _ = self.outbound.try_send(self.clock.ping(now));
        }
    }

    /// The answer to the receiver's clock ping.
    fn on_pong(&mut self, probe: Probe) {
        if let Some(step) = self.clock.pong(probe, now_ms()) {
            tracing::warn!(host = self.host, "{step}");
        }
    }

    /// The agent's last word: it moves to another receiver, or something
    /// went wrong on its side. The connection ends either way.
    async fn on_error(&self, f: Fault) {
        if f.code == FaultCode::Moved {
            self.moved(&f.text).await;
        } else {
            tracing::warn!(
                host = self.host,
                "agent reports an error: {}",
                Escaped(&f.to_string())
            );
        }
    }

    /// A message an agent never sends.
    fn on_unexpected(&self, message: &Message) -> anyhow::Error {
        let text = format!("unexpected {} from an agent", handshake::name(message));
        let _ = self
            .outbound
            .try_send(fault(FaultCode::Protocol, text.clone()));
        anyhow::anyhow!(text)
    }

    /// The agent said it leaves for another receiver: show the host as moved.
    async fn moved(&self, why: &str) {
        tracing::info!(
            host = self.host,
            "the agent moves to another receiver: {}",
            Escaped(why)
        );
        let reason = format!("the agent moved to another receiver ({why})");
        let change =
            self.shared
                .tracker
                .lock()
                .expect("tracker lock")
                .moved(&self.host, reason, now_ms());
        if let Some(change) = change {
            self.shared
                .store
                .send(Op::Changes {
                    changes: vec![change],
                })
                .await;
        }
    }

    /// Let queued answers and the error frame go out, then close and
    /// record the disconnection.
    async fn finish(self, mut writer: JoinHandle<()>) {
        let Handler {
            shared,
            host,
            link,
            outbound,
            answers,
            ..
        } = self;
        drop(answers);
        drop(outbound);
        // The registry's sender goes too, so the writer ends as soon as the
        // queue is out (kept, it held every closing connection, and a
        // receiver's stop, for the whole wait below). A connection that was
        // replaced leaves the host connected (by the one that replaced it).
        let current = super::unregister(&shared, &host, link.id);
        // A peer that does not read them is not waited for (nor its socket
        // kept).
        if tokio::time::timeout(Duration::from_secs(2), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
        if current {
            shared
                .store
                .send(Op::Disconnected { host: host.clone() })
                .await;
        }
        tracing::info!(host, peer = %link.addr, "agent disconnected");
    }
}

/// Record the agent's connection in the store and in liveness.
async fn record_connected(
    shared: &Shared,
    hello: &Hello,
    addr: SocketAddr,
    now: u64,
) -> anyhow::Result<()> {
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
            host: hello.host_id.clone(),
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
        .connected(&hello.host_id);
    Ok(())
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
