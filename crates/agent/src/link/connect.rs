//! Connecting to a receiver: the first of the list that answers, the
//! preamble, the Hello and the Welcome.

use super::LinkConfig;
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use sandglass_core::text::Escaped;
use sandglass_core::time::now_ms;
use sandglass_daemon::tls;
use sandglass_protocol::{
    DEFAULT_MAX_FRAME, FrameCodec, Hello, Message, PROTOCOL_VERSION, Welcome, read_preamble,
    write_preamble,
};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

pub(super) type Conn = Framed<tls::Stream, FrameCodec>;

/// The smallest frame limit a Welcome may announce: below it, no batch
/// holds a report of a few samples.
const MIN_MAX_FRAME: u64 = 4 << 10;

/// A connection that was welcomed.
pub(super) struct Established {
    pub(super) framed: Conn,
    pub(super) refresh: Duration,
    /// The largest frame the receiver accepts.
    pub(super) max_frame: u64,
    /// The TCP socket under it (and under TLS), to see whether the
    /// receiver takes what is sent.
    pub(super) socket: RawFd,
    /// Position of its receiver in the list.
    pub(super) index: usize,
    /// Whether the receiver answers `PluginRequest` (protocol 1.1 and later).
    pub(super) serves_plugins: bool,
}

/// The positions of `n` receivers from `first` on, wrapping around.
pub(super) fn rotated(n: usize, first: usize) -> Vec<usize> {
    (0..n).map(|i| (first + i) % n).collect()
}

/// The first receiver, of those at positions `order`, that welcomes this agent.
pub(super) async fn connect_any(
    config: &LinkConfig,
    hello: Hello,
    order: &[usize],
) -> anyhow::Result<Established> {
    let mut failures = Vec::new();
    for &index in order {
        let address = &config.receivers[index];
        match connect(config, address, hello.clone()).await {
            Ok((framed, welcome, socket, minor)) => {
                return Ok(Established {
                    framed,
                    serves_plugins: minor >= 1,
                    refresh: Duration::from_millis(welcome.refresh_ms.max(1000)),
                    max_frame: welcome.max_frame,
                    socket,
                    index,
                });
            }
            Err(e) => failures.push(format!("{address}: {e:#}")),
        }
    }
    bail!("{}", failures.join("; "))
}

async fn connect(
    config: &LinkConfig,
    address: &str,
    mut hello: Hello,
) -> anyhow::Result<(Conn, Welcome, RawFd, u16)> {
    let timeout = config.connection.timeout.0;
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .context("connect timed out")?
        .context("cannot connect")?;
    tcp.set_nodelay(true)?;
    let socket = tcp.as_raw_fd();
    let mut stream: tls::Stream = match &config.tls {
        None => Box::new(tcp),
        Some(client) => tokio::time::timeout(timeout, client.connect(tcp, address))
            .await
            .context("TLS handshake timed out")??,
    };
    write_preamble(&mut stream).await?;
    // A live receiver answers at once; one that accepted the connection but
    // says nothing hangs (its backlog took the connect): no longer than the
    // silence that ends a session.
    let answer = timeout.min(config.connection.ping_interval.0 * 2);
    let preamble = tokio::time::timeout(answer, read_preamble(&mut stream))
        .await
        .context("no answer from the receiver")?
        .with_context(|| match config.tls {
            Some(_) => "the receiver ended the TLS session (if it requires client certificates, set [tls] cert and key)",
            None => "the receiver ended the connection",
        })?;
    let version = preamble.version;
    let mut framed = Framed::new(stream, FrameCodec::new(DEFAULT_MAX_FRAME));
    if version == PROTOCOL_VERSION {
        // Now, not before connecting: the receiver takes the difference to
        // its clock for clock skew, and a slow connect is not skew.
        hello.time_ms = now_ms();
        framed.send(Message::Hello(hello)).await?;
    }
    let first = tokio::time::timeout(answer, framed.next())
        .await
        .context("no Welcome from the receiver")?
        .context("the receiver closed the connection")??;
    match first {
        // Every report would go as a gap entry saying it was too large: lost.
        Message::Welcome(welcome) if welcome.max_frame < MIN_MAX_FRAME => bail!(
            "the receiver announces frames of at most {} bytes, too small for any report (a receiver's max_frame is 64 KiB or more): the reports wait in the spool",
            welcome.max_frame
        ),
        Message::Welcome(welcome) if version == PROTOCOL_VERSION => {
            Ok((framed, welcome, socket, preamble.minor))
        }
        Message::Error(f) => {
            let f = Escaped(&f.to_string()).to_string();
            tracing::error!(receiver = address, "the receiver refused this agent: {f}");
            bail!("refused by the receiver: {f}")
        }
        _ if version != PROTOCOL_VERSION => {
            bail!("the receiver speaks protocol version {version}, this agent {PROTOCOL_VERSION}")
        }
        other => bail!("expected Welcome, got {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::tests::link_config;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn the_hello_carries_the_time_it_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let receiver = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = link_config(dir.path(), &[&receiver]);
        let address = config.receivers[0].clone();
        let hello = Hello {
            host_id: "h".into(),
            token: "t".into(),
            agent_version: "0".into(),
            abi_version: "0".into(),
            time_ms: 0,
            schedule_revision: 0,
            plugins: Vec::new(),
            stream: 1,
        };
        let agent =
            tokio::spawn(async move { connect(&config, &address, hello).await.map(|_| ()) });
        // A receiver slow to answer: its preamble comes a while after the
        // connection is made.
        let (mut tcp, _) = receiver.accept().await.unwrap();
        read_preamble(&mut tcp).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let answered = now_ms();
        write_preamble(&mut tcp).await.unwrap();
        let mut peer = Framed::new(tcp, FrameCodec::new(DEFAULT_MAX_FRAME));
        let Some(Ok(Message::Hello(hello))) = peer.next().await else {
            panic!("no Hello")
        };
        assert!(
            hello.time_ms >= answered,
            "the Hello's time {} is from before the receiver answered ({answered})",
            hello.time_ms
        );
        drop(peer);
        assert!(agent.await.unwrap().is_err(), "no Welcome came");
    }
}
