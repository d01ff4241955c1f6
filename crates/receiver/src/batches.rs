//! What the receiver accepts in a batch, and how it answers batches: in the
//! order they came, each with `Ack`, `Rejected` or (for a failure worth
//! retrying) `Error(Internal)` and the end of the connection.
//!
//! An Ack is cumulative for the agent, so it must never overtake the answer
//! of an earlier batch: were batch 1's commit to fail and batch 2's to
//! succeed, an Ack of 2 sent first would make the agent forget batch 1.
//! [`Answers`] therefore waits for each batch's outcome in turn.

use super::health::Health;
use super::store::Refusal;
use sandglass_core::names::check_name;
use sandglass_protocol::{Ack, Entry, Fault, FaultCode, Gap, Message, Rejected, ReportBatch};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Most entries one batch may carry; past it the batch is rejected.
pub const MAX_REPORTS_PER_BATCH: usize = 10_000;

/// Numbers and counts are stored as SQLite's signed 64-bit integers.
const MAX_NUMBER: u64 = i64::MAX as u64;

/// Reports one gap may count: far above any real loss, and low enough that
/// summing a host's gaps cannot overflow SQLite's integers.
const MAX_GAP_REPORTS: u64 = 1 << 40;

/// What to do with a batch that arrived.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Store it (entries that cannot be stored were replaced by gaps).
    Store(ReportBatch),
    /// Well-formed but never storable: answer `Rejected` and go on.
    Reject {
        seq: u64,
        last_seq: u64,
        reason: String,
    },
    /// Its numbers are unusable: the connection ends with this error.
    Fatal(String),
}

/// Judge a batch. A report the receiver cannot store (a bad service or
/// plugin name) is replaced by a one-report gap saying why, so that it is
/// counted and shown, and the rest of the batch is stored.
pub fn judge(mut batch: ReportBatch) -> Verdict {
    let count = batch.entries.len() as u64;
    if count == 0 {
        return Verdict::Fatal(format!(
            "batch {} holds no entries; a batch holds 1 to {MAX_REPORTS_PER_BATCH}",
            batch.seq
        ));
    }
    if batch.seq == 0 || batch.seq > MAX_NUMBER - count {
        return Verdict::Fatal(format!(
            "batch number {} is out of range 1..2^63",
            batch.seq
        ));
    }
    if batch.entries.len() > MAX_REPORTS_PER_BATCH {
        return Verdict::Reject {
            seq: batch.seq,
            last_seq: batch.last_seq(),
            reason: format!(
                "batch {} holds {count} entries, more than the {MAX_REPORTS_PER_BATCH} a batch may hold",
                batch.seq
            ),
        };
    }
    batch.settled = batch.settled.min(batch.seq - 1);
    for entry in &mut batch.entries {
        if let Some(replacement) = refused_entry(entry) {
            *entry = Entry::Gap(replacement);
        }
    }
    Verdict::Store(batch)
}

/// The gap that stands for `entry` if the receiver cannot store it.
fn refused_entry(entry: &Entry) -> Option<Gap> {
    match entry {
        Entry::Report(r) => {
            let problem = check_name(&r.service)
                .map_err(|e| format!("service {e}"))
                .and_then(|()| check_name(&r.plugin).map_err(|e| format!("plugin {e}")))
                .err()?;
            Some(Gap {
                reports: 1,
                first_ms: r.time_ms.min(MAX_NUMBER),
                last_ms: r.time_ms.min(MAX_NUMBER),
                reason: format!("the receiver refused a report: {problem}"),
            })
        }
        Entry::Gap(g) => (g.reports > MAX_GAP_REPORTS || g.first_ms.max(g.last_ms) > MAX_NUMBER)
            .then(|| Gap {
                reports: g.reports.min(MAX_GAP_REPORTS),
                first_ms: g.first_ms.min(MAX_NUMBER),
                last_ms: g.last_ms.min(MAX_NUMBER),
                reason: format!("(numbers out of range, capped) {}", g.reason),
            }),
    }
}

/// One batch's outcome, awaited in order.
pub struct Pending {
    pub seq: u64,
    pub last_seq: u64,
    pub outcome: oneshot::Receiver<Result<u64, Refusal>>,
    /// When it was queued for the store (for the commit latency).
    pub queued: Instant,
}

/// Batches of one connection waiting for their answer, at most.
const UNANSWERED: usize = 256;

/// Sends the answers of a connection's batches in the order they came.
pub struct Answers {
    queue: mpsc::Sender<Pending>,
}

impl Answers {
    /// Start answering onto `outbound`; on a failure worth retrying the
    /// agent is told so, `cancel` ends the connection, and no later batch of
    /// it is acknowledged (the agent sends them again; they are stored once).
    /// Each commit's latency goes to `health`.
    pub fn start(
        outbound: mpsc::Sender<Message>,
        cancel: CancellationToken,
        health: Arc<Health>,
    ) -> Answers {
        let (queue, mut pending) = mpsc::channel::<Pending>(UNANSWERED);
        tokio::spawn(async move {
            while let Some(p) = pending.recv().await {
                let answer = match p.outcome.await {
                    Ok(Ok(seq)) => {
                        health.committed(p.queued.elapsed());
                        Message::Ack(Ack { seq })
                    }
                    Ok(Err(Refusal::Rejected(reason))) => Message::Rejected(Rejected {
                        seq: p.seq,
                        last_seq: p.last_seq,
                        reason,
                    }),
                    Ok(Err(Refusal::Transient(text))) => {
                        let _ = outbound.try_send(internal(text));
                        cancel.cancel();
                        return;
                    }
                    Err(_) => {
                        let _ = outbound
                            .try_send(internal("the receiver is shutting down; send again".into()));
                        cancel.cancel();
                        return;
                    }
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    sent = outbound.send(answer) => if sent.is_err() { return },
                }
            }
        });
        Answers { queue }
    }

    /// Answer this batch after the ones queued before it; waits while
    /// [`UNANSWERED`] batches are.
    pub async fn push(&self, pending: Pending) {
        let _ = self.queue.send(pending).await;
    }

    /// Answer `Rejected` for a batch, in its turn.
    pub async fn reject(&self, seq: u64, last_seq: u64, reason: String) {
        let (done, outcome) = oneshot::channel();
        let _ = done.send(Err(Refusal::Rejected(reason)));
        self.push(Pending {
            seq,
            last_seq,
            outcome,
            queued: Instant::now(),
        })
        .await;
    }
}

fn internal(text: String) -> Message {
    Message::Error(Fault {
        code: FaultCode::Internal,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_core::report::{Cost, Report, Status};

    fn report(service: &str) -> Entry {
        Entry::Report(Report {
            service: service.into(),
            plugin: "p".into(),
            time_ms: 5,
            status: Status::unknown("x"),
            samples: Vec::new(),
            cost: Cost::default(),
        })
    }

    fn batch(seq: u64, entries: Vec<Entry>) -> ReportBatch {
        ReportBatch {
            seq,
            entries,
            settled: 0,
        }
    }

    #[test]
    fn a_bad_report_becomes_a_counted_gap_and_the_rest_is_stored() {
        let Verdict::Store(stored) = judge(batch(3, vec![report("ok"), report("bad\nname")]))
        else {
            panic!("stored")
        };
        assert_eq!(stored.entries[0], report("ok"));
        match &stored.entries[1] {
            Entry::Gap(g) => {
                assert_eq!(g.reports, 1);
                assert!(g.reason.contains("service name"), "{}", g.reason);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unusable_numbers_end_the_connection_and_oversized_batches_are_rejected() {
        assert!(matches!(judge(batch(1, vec![])), Verdict::Fatal(_)));
        assert!(matches!(
            judge(batch(0, vec![report("a")])),
            Verdict::Fatal(_)
        ));
        assert!(matches!(
            judge(batch(i64::MAX as u64, vec![report("a")])),
            Verdict::Fatal(_)
        ));
        let big = batch(7, vec![report("a"); MAX_REPORTS_PER_BATCH + 1]);
        assert!(matches!(
            judge(big),
            Verdict::Reject { seq: 7, last_seq, .. } if last_seq == 7 + MAX_REPORTS_PER_BATCH as u64
        ));
    }

    #[test]
    fn a_gap_claiming_absurd_numbers_is_capped_so_sums_cannot_overflow() {
        let huge = Entry::Gap(Gap {
            reports: u64::MAX,
            first_ms: u64::MAX,
            last_ms: 1,
            reason: "spool full".into(),
        });
        let Verdict::Store(stored) = judge(batch(1, vec![huge.clone(), huge])) else {
            panic!("stored")
        };
        for entry in &stored.entries {
            let Entry::Gap(g) = entry else {
                panic!("a gap")
            };
            assert_eq!((g.reports, g.first_ms), (MAX_GAP_REPORTS, MAX_NUMBER));
        }
    }

    #[test]
    fn a_settled_mark_cannot_cover_the_batch_itself() {
        let mut b = batch(10, vec![report("a")]);
        b.settled = 50;
        let Verdict::Store(stored) = judge(b) else {
            panic!("stored")
        };
        assert_eq!(stored.settled, 9);
    }

    #[tokio::test]
    async fn answers_keep_the_order_of_batches_and_stop_after_a_transient_failure() {
        let (outbound, mut sent) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let answers = Answers::start(outbound, cancel.clone(), Arc::default());
        let mut senders = Vec::new();
        for seq in [1u64, 2, 3] {
            let (done, outcome) = oneshot::channel();
            senders.push(done);
            answers
                .push(Pending {
                    seq,
                    last_seq: seq,
                    outcome,
                    queued: Instant::now(),
                })
                .await;
        }
        // Batch 3 and 2 finish first; 1 fails for a reason worth retrying.
        let mut senders = senders.into_iter();
        let (one, two, three) = (
            senders.next().unwrap(),
            senders.next().unwrap(),
            senders.next().unwrap(),
        );
        three.send(Ok(3)).unwrap();
        two.send(Ok(2)).unwrap();
        one.send(Err(Refusal::Transient("disk full".into())))
            .unwrap();
        match sent.recv().await.unwrap() {
            Message::Error(f) => assert_eq!(f.code, FaultCode::Internal),
            other => panic!("the failure comes first, got {other:?}"),
        }
        cancel.cancelled().await;
        assert!(sent.recv().await.is_none(), "no Ack after the failure");
    }
}
