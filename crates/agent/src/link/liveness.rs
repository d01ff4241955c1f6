//! Telling a hung receiver from a slow one: a receiver is alive while it
//! says something, or while its host takes the bytes written to it.

use super::connect::Conn;
use futures_util::SinkExt;
use sandglass_protocol::{FrameCodec, ProtocolError};
use std::os::fd::RawFd;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::codec::Encoder;

/// Why a connection broke.
#[derive(Debug, thiserror::Error)]
pub(super) enum Broken {
    /// Nothing heard, or a write not taken, for this long: the receiver hangs.
    #[error("nothing heard from the receiver for {} s", .0.as_secs_f64())]
    Silent(Duration),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// When the receiver was last heard from, and how long a silence means that
/// it hangs.
pub(super) struct Liveness {
    pub(super) last_heard: Instant,
    pub(super) dead_after: Duration,
    pub(super) socket: RawFd,
}

impl Liveness {
    pub(super) fn deadline(&self) -> Instant {
        self.last_heard + self.dead_after
    }
}

/// Send `message` (a [`sandglass_protocol::Message`], or a batch of entries
/// already encoded). A hung receiver stops reading, and a write to it would
/// wait forever once the socket is full; a receiver behind a slow link reads
/// slowly. So a write that waits goes on while the receiver's host
/// acknowledges bytes, and is given up when it did not for the whole
/// liveness limit.
pub(super) async fn write<M>(
    framed: &mut Conn,
    message: M,
    alive: &mut Liveness,
) -> Result<(), Broken>
where
    FrameCodec: Encoder<M, Error = ProtocolError>,
{
    let send = framed.send(message);
    tokio::pin!(send);
    let mut unacked = unacknowledged(alive.socket);
    // A tenth of the limit at least, so that a write starting late in a
    // quiet spell is not judged on a moment's stall.
    let mut deadline = alive.deadline().max(Instant::now() + alive.dead_after / 10);
    let mut waited = false;
    loop {
        match tokio::time::timeout_at(deadline, &mut send).await {
            Ok(sent) => {
                if waited {
                    // It read what was sent: as good as hearing from it.
                    alive.last_heard = Instant::now();
                }
                return sent.map_err(|e| Broken::Failed(e.into()));
            }
            Err(_) => {
                let now = unacknowledged(alive.socket);
                if now.is_none() || now == unacked {
                    return Err(Broken::Silent(alive.dead_after));
                }
                (unacked, waited) = (now, true);
                deadline = Instant::now() + alive.dead_after;
            }
        }
    }
}

/// Bytes sent on `socket` that the peer's host has not acknowledged yet
/// (TIOCOUTQ): while a write waits, the count moves as long as the peer
/// reads, and stands still when it has stopped.
fn unacknowledged(socket: RawFd) -> Option<libc::c_int> {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ stores one c_int through a pointer valid for it; an
    // fd that is not a socket only makes the call fail.
    let done = unsafe { libc::ioctl(socket, libc::TIOCOUTQ, &mut queued) };
    (done == 0).then_some(queued)
}
