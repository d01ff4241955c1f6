//! What the receiver acknowledged (`acked`) or refused, and the numbers
//! handed out (`reserved`): both kept in small mark files rewritten in place.

use super::Spool;
use super::lost::{Lost, tally};
use super::segment::remove;
use anyhow::Context;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A fully acknowledged active segment this large is replaced by an empty one.
pub(super) const ROLL_BYTES: u64 = 64 << 10;

/// How far ahead of use `reserved` is written: one fsync per this many
/// entries, and at most this many numbers skipped after a crash.
pub(super) const RESERVE_STEP: u64 = 1024;

/// The file holding the newest acknowledged number.
pub(super) const ACKED: &str = "acked";
/// The file holding the highest number that may have been handed out.
pub(super) const RESERVED: &str = "reserved";

/// A file holding one number (`seq u64 | crc32 u32`), rewritten in place.
pub(super) fn open_mark(dir: &Path, name: &str) -> anyhow::Result<File> {
    let path = dir.join(name);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// The number in a mark file, if it is whole.
fn read_mark(file: &File) -> Option<u64> {
    let mut bytes = [0u8; 12];
    file.read_exact_at(&mut bytes, 0).ok()?;
    let seq = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    let crc = u32::from_le_bytes(bytes[8..].try_into().ok()?);
    (crc32fast::hash(&bytes[..8]) == crc).then_some(seq)
}

fn write_mark(file: &File, seq: u64) -> std::io::Result<()> {
    let mut record = seq.to_le_bytes().to_vec();
    record.extend_from_slice(&crc32fast::hash(&seq.to_le_bytes()).to_le_bytes());
    file.write_all_at(&record, 0)
}

impl Spool {
    /// Where the numbers stand after the segments are read: acknowledged up
    /// to the `acked` mark (or the first segment's start), handed out up to
    /// the `reserved` mark.
    pub(super) fn load_marks(&mut self) -> anyhow::Result<()> {
        self.acked = self
            .segments
            .front()
            .map_or(0, |s| s.first_seq.saturating_sub(1));
        self.resume()?;
        // A damaged or stale `acked` only means entries are sent again. It
        // may be above every record left (the receiver stored records that a
        // crash then damaged), not above every number handed out.
        if let Some(acked) = read_mark(&self.acked_file) {
            self.acked = self.acked.max(acked.min(self.active().next_seq - 1));
        }
        Ok(())
    }

    /// Continue numbering above every number handed out before: above the
    /// records found and above `reserved`.
    pub(super) fn resume(&mut self) -> anyhow::Result<()> {
        let found = self.segments.back().map_or(0, |s| s.end() - 1);
        let reserved = match read_mark(&self.reserved_file) {
            Some(reserved) => reserved,
            // A spool from before `reserved` existed: its records tell.
            None if self.reserved_file.metadata()?.len() == 0 => found,
            None => {
                tracing::warn!(
                    spool = %self.dir.display(),
                    "{RESERVED} is damaged; skipping {RESERVE_STEP} numbers to be safe"
                );
                found + RESERVE_STEP
            }
        };
        self.reserved = reserved;
        let next = reserved.max(found) + 1;
        match self.segments.back_mut() {
            Some(active) => active.next_seq = next,
            None => self.start_segment(next, next)?,
        }
        Ok(())
    }

    /// without being written down first.
    pub(super) fn write_reserved(&mut self, mark: u64) -> anyhow::Result<()> {
        write_mark(&self.reserved_file, mark)
            .and_then(|()| self.reserved_file.sync_data())
            .with_context(|| format!("cannot write {}", self.dir.join(RESERVED).display()))?;
        self.reserved = mark;
        Ok(())
    }

    /// The receiver stored everything up to `seq`: forget it.
    pub fn ack(&mut self, seq: u64) -> anyhow::Result<()> {
        let seq = seq.min(self.active().next_seq - 1);
        if seq <= self.acked {
            return Ok(());
        }
        self.acked = seq;
        write_mark(&self.acked_file, seq)
            .with_context(|| format!("cannot write {}", self.dir.join(ACKED).display()))?;
        while self.segments.len() > 1
            && self.segments[0]
                .last_seq()
                .is_none_or(|last| last <= self.acked)
        {
            let done = self.segments.pop_front().expect("more than one segment");
            self.bytes -= done.bytes;
            remove(&done.path);
        }
        // A large, fully acknowledged active segment is replaced by an empty
        // one, which continues the chain of names.
        let active = self.active();
        if active.last_seq() == Some(self.acked) && active.bytes >= ROLL_BYTES {
            let (name, next) = (active.end(), active.next_seq);
            self.start_segment(name, next)?;
            let done = self.segments.pop_front().expect("two segments");
            self.bytes -= done.bytes;
            remove(&done.path);
        }
        Ok(())
    }

    /// The receiver will never store entries `first..=last` (`reason` says
    /// why): count the reports they held as lost, in a gap entry, and treat
    /// them as acknowledged, so they are never sent again.
    pub fn reject(&mut self, first: u64, last: u64, reason: &str) -> anyhow::Result<()> {
        let mut lost = Lost::default();
        for (segment, record) in self.records(first.max(self.acked + 1)) {
            if record.seq > last {
                break;
            }
            tally(segment, record, &mut lost);
        }
        self.ack(last)?;
        if lost.total() > 0 {
            self.append_gap(lost, format!("refused by the receiver: {reason}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Recovery;
    use crate::spool::record::HEADER;
    use crate::spool::testing::*;
    use sandglass_protocol::Gap;

    #[test]
    fn entries_survive_a_reopen_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = filled(dir.path(), 1 << 20, 5);
        spool.ack(2).unwrap();
        let stream = spool.stream();
        drop(spool);
        let (spool, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.stream(), stream, "the stream id is kept");
        // The acknowledgement was written down: 1 and 2 are not sent again.
        assert_eq!(recovery.pending, 3);
        let (first, entries) = spool.read(3, ALL).unwrap().unwrap();
        assert_eq!(first, 3);
        assert_eq!(numbers(&entries), [3, 4, 5]);
    }

    #[test]
    fn after_a_clean_stop_numbers_continue() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = filled(dir.path(), 1 << 20, 400);
        spool.ack(400).unwrap();
        assert_eq!(spool.pending(), 0);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(
            files, 4,
            "the stream id, `acked`, `reserved` and one segment"
        );
        spool.close().unwrap();
        let (mut spool, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovery, Recovery::default());
        assert_eq!(spool.append_report(&report(401)).unwrap(), 401);
    }

    #[test]
    fn after_a_crash_numbers_skip_ahead_and_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = filled(dir.path(), 1 << 20, 3).segments[0].path.clone();
        // A power cut loses the last record whole: the receiver may have
        // stored number 3 already, so 3 must never be used again.
        let len = std::fs::metadata(&path).unwrap().len();
        let last = len - (HEADER as u64 + rmp_serde::to_vec(&report(3)).unwrap().len() as u64);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(last)
            .unwrap();
        let (mut spool, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovery.pending, 2);
        let next = spool.append_report(&report(4)).unwrap();
        assert!(next > 3, "number {next} used again");
        let (seqs, reports, _) = drain(&spool, ALL);
        assert_eq!(reports, [1, 2, 4]);
        assert_eq!(seqs, [1, 2, next]);
        // And the skip is no damage: the next start records no gap.
        drop(spool);
        let (_, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((recovery.damaged, recovery.lost), (0, 0));
    }

    #[test]
    fn rejected_entries_become_a_gap_and_are_never_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = filled(dir.path(), 1 << 20, 6);
        spool.reject(3, 5, "batch over the limits").unwrap();
        assert_eq!(spool.acked(), 5);
        let (seqs, reports, gaps) = drain(&spool, ALL);
        assert_eq!(reports, [6]);
        assert_eq!(seqs, [6, 7]);
        assert_eq!(
            gaps,
            [Gap {
                reports: 3,
                first_ms: 1003,
                last_ms: 1005,
                reason: "refused by the receiver: batch over the limits".into()
            }]
        );
    }
}
