//! The newest entries as they were just written, still encoded, until the
//! link sends them: a cycle's batch is made from these bytes ([`Spool::take_unsent`])
//! instead of reading the records back from the segment and decoding them
//! to encode them again. Only what is not in memory — entries sent once
//! already and sent again after a reconnect, a backlog larger than the
//! bound, entries from before a restart — is read from the files
//! ([`Spool::read`]); both make the same frame.

use super::record::{KIND_GAP, Record, oversized};
use super::{Budget, Spool, batch_len};
use sandglass_protocol::{EncodedBatch, EncodedEntry};
use std::collections::VecDeque;

/// Payload bytes the tail holds at most: hundreds of cycles of a typical
/// host; beyond, the oldest are left to the files (a receiver away for
/// long does not grow the agent's memory).
const MAX_TAIL_BYTES: usize = 256 << 10;

/// Entries with consecutive numbers ending at the spool's newest one.
#[derive(Default)]
pub(super) struct Tail {
    entries: VecDeque<(Record, Vec<u8>)>,
    bytes: usize,
}

impl Tail {
    /// A record just written, with its payload.
    pub(super) fn push(&mut self, record: Record, payload: Vec<u8>) {
        let follows = self
            .entries
            .back()
            .is_none_or(|(last, _)| last.seq + 1 == record.seq);
        if !follows {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += payload.len();
        self.entries.push_back((record, payload));
        while self.bytes > MAX_TAIL_BYTES {
            self.pop();
        }
    }

    fn pop(&mut self) -> Option<(Record, Vec<u8>)> {
        let (record, payload) = self.entries.pop_front()?;
        self.bytes -= payload.len();
        Some((record, payload))
    }

    fn first_seq(&self) -> Option<u64> {
        self.entries.front().map(|(r, _)| r.seq)
    }
}

impl Spool {
    /// The batch [`Spool::read`] would make from `from` on, within `budget`,
    /// made from the entries held in memory since they were written (no
    /// file read, no decoding), with its `settled` number. `None` if memory
    /// does not hold the entry `from` (or the oldest one held): then the
    /// batch is read from the files.
    pub fn take_unsent(
        &mut self,
        from: u64,
        budget: Budget,
    ) -> anyhow::Result<Option<EncodedBatch>> {
        let from = from.max(self.acked + 1);
        // Sent already, or acknowledged: a second sending reads the files.
        while self.tail.first_seq().is_some_and(|seq| seq < from) {
            self.tail.pop();
        }
        if self.tail.first_seq() != Some(from) {
            return Ok(None);
        }
        let count = batch_len(self.tail.entries.iter().map(|(r, _)| r), budget);
        let mut entries = Vec::with_capacity(count);
        for (record, payload) in (0..count).filter_map(|_| self.tail.pop()) {
            entries.push(if record.cost() > budget.bytes {
                EncodedEntry::Gap(rmp_serde::to_vec(&oversized(&record, budget.bytes))?)
            } else if record.kind == KIND_GAP {
                EncodedEntry::Gap(payload)
            } else {
                EncodedEntry::Report(payload)
            });
        }
        Ok(Some(EncodedBatch {
            seq: from,
            entries,
            settled: self.acked,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::lost::Lost;
    use crate::spool::record::{HEADER, KIND_REPORT, parse_record};
    use crate::spool::testing::*;
    use sandglass_core::report::{MetricKind, Report, Sample};
    use sandglass_protocol::{DEFAULT_MAX_FRAME, FrameCodec, Message, ProtocolError, ReportBatch};
    use std::fs::File;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixDatagram;
    use std::path::Path;
    use tokio_util::bytes::BytesMut;
    use tokio_util::codec::Encoder;

    /// Report `n` with samples, labels and a unit, as collectors make them.
    fn sampled(n: u64) -> Report {
        let mut report = report(n);
        report.samples = (0..n * 3)
            .map(|i| Sample {
                name: format!("cpu_seconds_{i}"),
                value: i as f64 * 0.25 - 1.0,
                kind: MetricKind::Counter,
                unit: "seconds".into(),
                labels: vec![
                    ("cpu".into(), format!("{i}")),
                    ("mode".into(), "idle".into()),
                ],
            })
            .collect();
        report
    }

    /// A spool with two cycles and a gap entry between them.
    fn two_cycles(dir: &Path) -> Spool {
        let (mut spool, _) = Spool::open(dir, 1 << 20).unwrap();
        let first: Vec<Report> = (1..=3).map(sampled).collect();
        spool
            .append_reports(&first.iter().collect::<Vec<_>>())
            .unwrap();
        let mut lost = Lost::default();
        lost.reports(2, 900, 950);
        spool.append_gap(lost, "lost in a test".into());
        let second: Vec<Report> = (4..=8).map(sampled).collect();
        spool
            .append_reports(&second.iter().collect::<Vec<_>>())
            .unwrap();
        spool
    }

    fn frame<M>(message: M) -> BytesMut
    where
        FrameCodec: Encoder<M, Error = ProtocolError>,
    {
        let mut buf = BytesMut::new();
        FrameCodec::new(DEFAULT_MAX_FRAME)
            .encode(message, &mut buf)
            .unwrap();
        buf
    }

    #[test]
    fn a_batch_from_memory_is_byte_for_byte_the_batch_read_from_the_files() {
        let budgets = [
            ALL,
            Budget {
                entries: 2,
                bytes: u64::MAX,
            },
            // A few entries per batch by bytes.
            Budget {
                entries: 100,
                bytes: 2000,
            },
            // Every report alone over it: each goes as the gap giving it up.
            Budget {
                entries: 100,
                bytes: 100,
            },
        ];
        for budget in budgets {
            let dir = tempfile::tempdir().unwrap();
            let mut spool = two_cycles(dir.path());
            spool.ack(1).unwrap();
            let (mut from, mut batches) = (1, 0);
            while let Some((seq, entries)) = spool.read(from, budget).unwrap() {
                let read = ReportBatch {
                    seq,
                    entries,
                    settled: spool.acked(),
                };
                let taken = spool
                    .take_unsent(from, budget)
                    .unwrap()
                    .expect("the entries are in memory");
                assert_eq!(
                    frame(taken),
                    frame(Message::Reports(read.clone())),
                    "{budget:?}"
                );
                from = read.last_seq() + 1;
                batches += 1;
            }
            assert_eq!(from, 10, "entries 2..=9 sent, {budget:?}");
            assert!(batches >= 1);
            // Sending again (after a reconnect) is the files' job.
            assert!(spool.take_unsent(2, budget).unwrap().is_none());
            assert!(spool.read(2, budget).unwrap().is_some());
        }
    }

    #[test]
    fn after_a_restart_or_past_the_bound_batches_come_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        drop(two_cycles(dir.path()));
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(spool.take_unsent(1, ALL).unwrap().is_none());
        assert_eq!(spool.read(1, ALL).unwrap().unwrap().1.len(), 9);
        // More than the tail holds: its oldest are left to the files, the
        // newest still come from memory.
        let big = |n| {
            let mut report = report(n);
            report.status.text = "z".repeat(100 << 10);
            report
        };
        let burst: Vec<Report> = (10..=14).map(big).collect();
        let first = spool
            .append_reports(&burst.iter().collect::<Vec<_>>())
            .unwrap();
        assert!(spool.take_unsent(first, ALL).unwrap().is_none());
        let held = spool.tail.first_seq().unwrap();
        assert!(held > first && held <= first + 4, "{held}");
        let taken = spool.take_unsent(held, ALL).unwrap().unwrap();
        assert_eq!(taken.last_seq(), first + 4);
    }

    /// Put a datagram socket in place of the active segment file: each
    /// `write` arrives as one datagram, so writes can be counted.
    fn count_writes(spool: &mut Spool, work: impl FnOnce(&mut Spool)) -> Vec<Vec<u8>> {
        let (socket, peer) = UnixDatagram::pair().unwrap();
        let active = spool.segments.back_mut().unwrap();
        let real = std::mem::replace(&mut active.file, File::from(OwnedFd::from(socket)));
        work(spool);
        spool.segments.back_mut().unwrap().file = real;
        peer.set_nonblocking(true).unwrap();
        let mut writes = Vec::new();
        let mut buf = vec![0; 1 << 20];
        while let Ok(n) = peer.recv(&mut buf) {
            writes.push(buf[..n].to_vec());
        }
        writes
    }

    #[test]
    fn a_cycle_is_appended_with_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = filled(dir.path(), 1 << 20, 2);
        let cycle: Vec<Report> = (3..=7).map(sampled).collect();
        let writes = count_writes(&mut spool, |spool| {
            let first = spool.append_reports(&cycle.iter().collect::<Vec<_>>());
            assert_eq!(first.unwrap(), 3);
        });
        assert_eq!(writes.len(), 1, "one write for the cycle");
        // And that write holds the cycle's five records, whole.
        let (mut offset, mut seqs) = (0, Vec::new());
        while let Some(record) = parse_record(&writes[0][offset..], 0, 3) {
            assert_eq!(record.kind, KIND_REPORT);
            seqs.push(record.seq);
            offset += HEADER + record.len as usize;
        }
        assert_eq!((seqs, offset), (vec![3, 4, 5, 6, 7], writes[0].len()));
        // Reports appended one by one are a write each: what the count
        // above tells apart.
        let writes = count_writes(&mut spool, |spool| {
            for report in &cycle {
                spool.append_report(report).unwrap();
            }
        });
        assert_eq!(writes.len(), 5);
    }
}
