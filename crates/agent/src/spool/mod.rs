//! The agent's on-disk spool: every report is appended here before it is
//! sent and stays until the receiver acknowledges it, so nothing is lost to
//! an absent receiver, a reconnect or an agent restart.
//!
//! Layout: `<state_dir>/spool/` holds `stream` (this spool's random id),
//! `acked`, `reserved` and segment files `<name>.spool`. A record is
//!
//! ```text
//! len u32 | crc32 u32 | seq u64 | time_ms u64 | kind u8 | payload (len bytes)
//! ```
//!
//! little-endian, the CRC over everything after it. Payload: the MessagePack
//! of a `Report` (kind 0) or a `Gap` (kind 1).
//!
//! **A number is never used twice**, even after a crash or a power cut that
//! loses the last records (the receiver may have stored them, and would take
//! a new entry with an old number for a duplicate). `reserved` holds a
//! high-water mark that is written and fsynced [`acks::RESERVE_STEP`] numbers
//! ahead of use (one fsync per that many entries), and a start continues
//! above it: a crash skips at most that many numbers. A clean stop
//! ([`Spool::close`]) syncs the segments and lowers the mark to the last
//! number used, so numbers continue without a skip.
//!
//! Within a segment numbers rise; two records next to each other may skip
//! numbers (after a restart), but bytes between them that are no valid
//! record are damage. A segment is named by the number after the previous
//! segment's last record, so a segment lost whole shows as a break in that
//! chain.
//!
//! Records are written with no fsync, a cycle's reports together with one
//! `write` ([`Spool::append_reports`]): a killed agent (even `kill -9`)
//! loses nothing the kernel has. Damage (a torn last record
//! after a power cut, a flipped byte) fails the checksum on the next start:
//! the reader resynchronises on the next valid record with a larger number,
//! keeps every valid record, rewrites the segment without the damaged bytes
//! and appends a `Gap` entry for the numbers lost that were not acknowledged.
//!
//! Every other loss becomes a `Gap` entry too, which reaches the receiver
//! like any report: whole segments dropped oldest first when the spool grows
//! past its size; reports that could not be written (a full disk), recorded
//! as soon as a write succeeds again; entries the receiver refuses
//! ([`Spool::reject`]).
//!
//! `acked` holds the newest acknowledged number (`seq u64 | crc32 u32`,
//! rewritten in place on every acknowledgement), so a restart does not send
//! acknowledged entries again. Rewriting 12 bytes in place is cheap;
//! replacing the active segment by an empty file on every acknowledgement
//! (create one file, delete another) was a visible share of the agent's CPU,
//! so that happens only once the segment holds [`acks::ROLL_BYTES`].
//!
//! The code is split by concern: [`record`] is the format of one record,
//! [`segment`] the files records are appended to (rotation, the size
//! budget, a full disk), [`acks`] what the receiver acknowledged or refused
//! and the reserved numbers, [`recovery`] reading the segments back after a
//! crash or damage; [`lost`] tallies what gap entries count; [`tail`] keeps
//! the entries just written, encoded, so that the link sends them without
//! reading them back ([`Spool::take_unsent`]).

mod acks;
mod lost;
mod record;
mod recovery;
mod segment;
mod tail;
#[cfg(test)]
mod testing;

pub use record::{ENTRY_OVERHEAD, MAX_ENTRY_BYTES};

use acks::{ACKED, RESERVED, open_mark};
use anyhow::Context;
use lost::Lost;
use record::{KIND_REPORT, Record, oversized, read_entry, shippable};
use sandglass_core::files::write_atomic;
use sandglass_core::report::Report;
use sandglass_protocol::Entry;
use segment::{Segment, Unsaved, Unwritten};
use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use tail::Tail;

/// What opening the spool found.
#[derive(Debug, Default, PartialEq)]
pub struct Recovery {
    /// Entries waiting to be delivered.
    pub pending: u64,
    /// Damaged stretches cut out of segments (a torn write at the end after
    /// a crash, a flipped byte) or segments missing from the chain.
    pub damaged: u64,
    /// Entries lost to that damage and not acknowledged before: the gap
    /// entry appended for them counts them.
    pub lost: u64,
}

/// How much one batch may hold.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub entries: usize,
    /// Payload bytes, each entry counted with [`ENTRY_OVERHEAD`].
    pub bytes: u64,
}

/// The spool of one agent.
pub struct Spool {
    dir: PathBuf,
    stream: u64,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    bytes: u64,
    /// Every entry up to this number is acknowledged.
    acked: u64,
    /// Where `acked` is kept across restarts.
    acked_file: File,
    /// Every number up to this one may have been handed out.
    reserved: u64,
    /// Where `reserved` is kept (fsynced) across restarts.
    reserved_file: File,
    /// Reports lost to failed writes, not yet recorded as a gap.
    unwritten: Option<Unwritten>,
    /// Reports dropped from a full spool since the agent started, for the log.
    dropped: u64,
    /// The newest entries, encoded, until they are sent.
    tail: Tail,
}

impl Spool {
    /// Open the spool in `dir` (creating it), bounded to `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<(Spool, Recovery)> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the spool directory {}", dir.display()))?;
        let stream = stream_id(dir)?;
        let mut spool = Spool {
            dir: dir.to_owned(),
            stream,
            max_bytes,
            // Dropping works in segments: small enough that a drop loses
            // little, large enough that the directory stays short.
            segment_bytes: (max_bytes / 16).clamp(16 << 10, 8 << 20),
            segments: VecDeque::new(),
            bytes: 0,
            acked: 0,
            acked_file: open_mark(dir, ACKED)?,
            reserved: 0,
            reserved_file: open_mark(dir, RESERVED)?,
            unwritten: None,
            dropped: 0,
            tail: Tail::default(),
        };
        let damage = spool.load_segments()?;
        spool.load_marks()?;
        let lost = spool.record_damage(&damage);
        let recovery = Recovery {
            pending: spool.pending(),
            damaged: damage.len() as u64,
            lost,
        };
        Ok((spool, recovery))
    }

    /// A clean stop: make the records durable, then lower `reserved` to the
    /// last number used, so the next start continues without a skip.
    pub fn close(mut self) -> anyhow::Result<()> {
        if let Err(e) = self.flush_unwritten() {
            tracing::error!("{e:#}: the count of unwritten reports is lost");
        }
        for segment in &self.segments {
            segment
                .file
                .sync_data()
                .with_context(|| format!("cannot sync {}", segment.path.display()))?;
        }
        let last = self.active().next_seq - 1;
        self.write_reserved(last)
    }

    /// This spool's stream id (sent in the Hello).
    pub fn stream(&self) -> u64 {
        self.stream
    }

    /// Entries written and not yet acknowledged.
    pub fn pending(&self) -> u64 {
        self.records(self.acked + 1).count() as u64
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The number of the newest entry held (the acknowledged number when
    /// none is held).
    pub fn last_seq(&self) -> u64 {
        self.segments
            .iter()
            .rev()
            .find_map(Segment::last_seq)
            .unwrap_or(self.acked)
    }

    /// Every entry up to this number is acknowledged (or was dropped).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    fn active(&self) -> &Segment {
        self.segments.back().expect("an active segment")
    }

    /// The records numbered `from` or above, oldest first, with their segment.
    fn records(&self, from: u64) -> impl Iterator<Item = (&Segment, &Record)> {
        self.segments
            .iter()
            .flat_map(move |s| s.from(from).iter().map(move |r| (s, r)))
    }

    /// Append a report; returns its number. See [`Spool::append_reports`].
    pub fn append_report(&mut self, report: &Report) -> anyhow::Result<u64> {
        self.append_reports(&[report])
    }

    /// Append reports (a cycle's) with one write; returns the first one's
    /// number, the others following it. A report too large to ship is
    /// replaced by an UNKNOWN report that says so. Reports that cannot be
    /// written are counted, and the count recorded as a gap entry ahead of
    /// the next entry that can be.
    pub fn append_reports(&mut self, reports: &[&Report]) -> anyhow::Result<u64> {
        anyhow::ensure!(!reports.is_empty(), "no report to append");
        let entries = reports
            .iter()
            .map(|report| {
                Ok(Unsaved {
                    kind: KIND_REPORT,
                    time_ms: report.time_ms,
                    payload: shippable(report)?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let written = self.flush_unwritten().and_then(|()| self.write(entries));
        match written {
            Ok(seq) => {
                self.enforce_limit();
                Ok(seq)
            }
            Err(e) => {
                let mut lost = Lost::default();
                for report in reports {
                    lost.reports(1, report.time_ms, report.time_ms);
                }
                self.hold(&lost, &e);
                Err(e)
            }
        }
    }

    /// Consecutive entries from `from` on (or from the oldest one still held,
    /// if `from` was dropped), within `budget`, with the first one's number,
    /// read from the segment files. An entry that alone is over the budget's
    /// bytes goes as a gap entry saying it was given up: it could never be
    /// delivered.
    pub fn read(&self, from: u64, budget: Budget) -> anyhow::Result<Option<(u64, Vec<Entry>)>> {
        let from = from.max(self.acked + 1);
        let Some((_, first)) = self.records(from).next() else {
            return Ok(None);
        };
        let count = batch_len(self.records(from).map(|(_, r)| r), budget);
        let entries = self
            .records(from)
            .take(count)
            .map(|(segment, record)| {
                if record.cost() > budget.bytes {
                    Ok(Entry::Gap(oversized(record, budget.bytes)))
                } else {
                    read_entry(segment, record)
                }
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Some((first.seq, entries)))
    }
}

/// How many of `records`, oldest first, go in one batch: consecutive
/// numbers (a skip ends it), at most the budget's entries and bytes, and at
/// least one (an entry alone over the bytes goes as the gap entry that
/// gives it up).
fn batch_len<'r>(records: impl Iterator<Item = &'r Record>, budget: Budget) -> usize {
    let (mut count, mut bytes) = (0, 0);
    let mut first = None;
    for record in records {
        let start = *first.get_or_insert(record.seq);
        let full = count >= budget.entries || (count > 0 && bytes + record.cost() > budget.bytes);
        if full || record.seq != start + count as u64 {
            break;
        }
        bytes += record.cost();
        count += 1;
    }
    count
}

/// The spool's stream id, made up when the spool is created.
fn stream_id(dir: &Path) -> anyhow::Result<u64> {
    let path = dir.join("stream");
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().with_context(|| {
            format!(
                "{} is damaged: remove the spool directory {} to start a new stream (its unsent reports are lost)",
                path.display(),
                dir.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Below 2^63: stores that only have signed 64-bit integers keep it as is.
            let id = fastrand::u64(1..=i64::MAX as u64);
            write_atomic(&path, format!("{id}\n").as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::testing::*;

    #[test]
    fn batches_stay_within_their_bytes_and_an_entry_that_never_fits_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = filled(dir.path(), 1 << 20, 20);
        let mut big = report(21);
        big.status.text = "y".repeat(5000);
        spool.append_report(&big).unwrap();
        let budget = Budget {
            entries: 100,
            bytes: 1000,
        };
        let mut from = 1;
        while let Some((first, entries)) = spool.read(from, budget).unwrap() {
            let bytes: usize = entries
                .iter()
                .map(|e| rmp_serde::to_vec(e).unwrap().len())
                .sum();
            assert!(bytes as u64 <= budget.bytes, "{bytes} bytes in one batch");
            from = first + entries.len() as u64;
        }
        let (seqs, reports, gaps) = drain(&spool, budget);
        assert_eq!(seqs, (1..=21).collect::<Vec<_>>());
        assert_eq!(reports, (1..=20).collect::<Vec<_>>());
        assert_eq!(lost(&gaps), 1);
        assert!(
            gaps[0].reason.contains("does not fit"),
            "{}",
            gaps[0].reason
        );
    }
}
