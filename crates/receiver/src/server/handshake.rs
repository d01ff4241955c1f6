//! A connection's handshake: TLS, the preamble and `Hello`, authenticated
//! against the configuration, within `handshake_timeout`, and at most
//! `max_handshakes` of them at once.

use super::{Shared, fault, loggable};
use crate::config::{Settings, token_matches};
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use sandglass_core::names::check_name;
use sandglass_core::text::excerpt;
use sandglass_daemon::tls;
use sandglass_protocol::{
    FaultCode, FrameCodec, HANDSHAKE_MAX_FRAME, Hello, Message, PROTOCOL_VERSION, ProtocolError,
    read_preamble, write_preamble,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// An agent's connection once framed.
pub(super) type Conn = Framed<tls::Stream, FrameCodec>;

/// Connections in their handshake, oldest first. Past `max_handshakes` the
/// oldest is told to go if it has been in its handshake for a while: a
/// real agent finishes in milliseconds, so the ones that linger are the
/// idle and the slow. A young handshake is never evicted: in a herd of
/// thousands of agents reconnecting at once (a receiver restart) every one
/// is young, and evicting them cut agents off; they are admitted beyond
/// `max_handshakes` instead, bounded by `max_connections`.
#[derive(Default)]
pub(super) struct Handshakes {
    pending: Mutex<BTreeMap<(Instant, u64), CancellationToken>>,
}

/// Removes a connection from [`Handshakes`] when its handshake ends.
struct InHandshake {
    handshakes: Arc<Handshakes>,
    key: (Instant, u64),
}

impl Handshakes {
    /// Register connection `id`; the token is cancelled if it is evicted.
    /// `has_slot`: the connection holds a slot under `max_connections`; one
    /// without is refused rather than admitted beyond `max` (it could only
    /// replace its host's stale connection, and may retry).
    fn enter(
        self: &Arc<Self>,
        id: u64,
        max: usize,
        young: Duration,
        has_slot: bool,
    ) -> Option<(InHandshake, CancellationToken)> {
        let token = CancellationToken::new();
        let now = Instant::now();
        let mut pending = self.pending.lock().expect("handshakes lock");
        while pending.len() >= max {
            match pending.first_entry() {
                Some(oldest) if now.duration_since(oldest.key().0) >= young => {
                    oldest.remove().cancel();
                }
                _ if has_slot => break,
                _ => return None,
            }
        }
        let key = (now, id);
        pending.insert(key, token.clone());
        let handshakes = self.clone();
        Some((InHandshake { handshakes, key }, token))
    }
}

impl Drop for InHandshake {
    fn drop(&mut self) {
        self.handshakes
            .pending
            .lock()
            .expect("handshakes lock")
            .remove(&self.key);
    }
}

/// How long a handshake is safe from eviction: a quarter of
/// `handshake_timeout` (at least 250 ms).
fn young(settings: &Settings) -> Duration {
    (settings.handshake_timeout / 4).max(Duration::from_millis(250))
}

/// Connection `id`'s handshake, unless it is evicted (`max_handshakes`) or
/// takes longer than `handshake_timeout`. A refusal is logged.
pub(super) async fn admit(
    shared: &Shared,
    stream: TcpStream,
    addr: SocketAddr,
    id: u64,
    settings: &Settings,
    has_slot: bool,
) -> anyhow::Result<(Conn, Hello)> {
    let entered = shared
        .handshakes
        .enter(id, settings.max_handshakes, young(settings), has_slot);
    let Some((in_handshake, evicted)) = entered else {
        bail!("at max_connections, with max_handshakes handshakes under way: try again later");
    };
    let attempt = tokio::select! {
        () = evicted.cancelled() => bail!("dropped in its handshake to make room for newer connections (max_handshakes)"),
        attempt = tokio::time::timeout(settings.handshake_timeout, handshake(stream, shared)) => attempt,
    };
    drop(in_handshake);
    match attempt {
        Ok(result) => result.inspect_err(|e| {
            tracing::warn!(peer = %addr, "agent refused: {}", loggable(e));
        }),
        Err(_) => bail!("no Hello within handshake_timeout"),
    }
}

/// The connection as a stream: TLS if the receiver is configured for it.
async fn accept_tls(tcp: TcpStream, tls: Option<&TlsAcceptor>) -> anyhow::Result<tls::Stream> {
    Ok(match tls {
        None => Box::new(tcp),
        Some(acceptor) => Box::new(acceptor.accept(tcp).await.context("TLS handshake failed")?),
    })
}

/// Send an error frame, then fail with the same text.
pub(super) async fn refuse(framed: &mut Conn, code: FaultCode, text: String) -> anyhow::Error {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        framed.send(fault(code, text.clone())),
    )
    .await;
    anyhow::anyhow!("{text}")
}

/// The fault to answer a broken frame with.
pub(super) fn frame_fault(e: &ProtocolError) -> FaultCode {
    match e {
        ProtocolError::TooLarge { .. } => FaultCode::TooLarge,
        _ => FaultCode::Malformed,
    }
}

/// TLS, preamble and Hello.
async fn handshake(tcp: TcpStream, shared: &Shared) -> anyhow::Result<(Conn, Hello)> {
    let mut stream = accept_tls(tcp, shared.tls.as_ref()).await?;
    let version = read_preamble(&mut stream).await?.version;
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
    if let Some(text) = authenticate(shared, &hello) {
        return Err(refuse(&mut framed, FaultCode::Auth, text).await);
    }
    Ok((framed, hello))
}

/// Why the configuration refuses `hello`, if it does.
fn authenticate(shared: &Shared, hello: &Hello) -> Option<String> {
    // Not a name, so no configured host: said without quoting all of it
    // (the refusal must fit the 64 KiB frame it goes back in).
    if check_name(&hello.host_id).is_err() {
        return Some(format!(
            "host {} is not known to this receiver, nor can it be: a host id holds letters, digits, '_', '-' and '.' (at most 128 bytes, not starting with '.'); fix host_id in the agent's configuration",
            excerpt(&hello.host_id, 128)
        ));
    }
    let model = shared.model();
    match model.hosts.get(&hello.host_id) {
        None => Some(format!(
            "host {:?} is not known to this receiver: add [hosts.{}] to its configuration",
            hello.host_id, hello.host_id
        )),
        Some(host) if !token_matches(&host.token_hash, &hello.token) => Some(format!(
            "wrong token for host {}: the agent's token must equal [hosts.{}] token in the receiver's configuration",
            hello.host_id, hello.host_id
        )),
        Some(_) => None,
    }
}

/// A message kind's name, for errors.
pub(super) fn name(message: &Message) -> &'static str {
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
        Message::PluginRequest(_) => "PluginRequest",
        Message::PluginChunk(_) => "PluginChunk",
        Message::PluginUnavailable(_) => "PluginUnavailable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lingering_handshakes_are_evicted_and_a_herd_is_admitted() {
        let handshakes = Arc::new(Handshakes::default());
        let long = Duration::from_secs(3600);
        // A herd of young handshakes beyond max: all admitted, none evicted.
        let herd: Vec<_> = (0..5)
            .map(|id| handshakes.enter(id, 2, long, true).expect("admitted"))
            .collect();
        assert!(herd.iter().all(|(_, token)| !token.is_cancelled()));
        // Without a connection slot a newcomer is refused, not admitted.
        assert!(handshakes.enter(5, 2, long, false).is_none());
        // Once they linger (here: at once), each newcomer evicts the oldest.
        let (_kept, token) = handshakes
            .enter(6, 2, Duration::ZERO, false)
            .expect("room made");
        assert!(!token.is_cancelled());
        let evicted: Vec<bool> = herd.iter().map(|(_, t)| t.is_cancelled()).collect();
        assert_eq!(
            evicted,
            [true, true, true, true, false],
            "oldest first, down to max - 1"
        );
        // A finished handshake leaves room.
        drop(herd);
        assert_eq!(handshakes.pending.lock().unwrap().len(), 1);
    }
}
