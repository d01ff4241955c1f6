//! The segment files records are appended to: starting a new one, dropping
//! the oldest when the spool is over its size, and counting the reports a
//! failed write (a full disk) loses.

use super::Spool;
use super::acks::RESERVE_STEP;
use super::lost::{Lost, tally};
use super::record::{HEADER, KIND_GAP, Record, encode_into};
use anyhow::Context;
use sandglass_core::time::{now_ms, utc_iso};
use sandglass_protocol::Gap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Its name: the number after the previous segment's last record.
    pub(super) first_seq: u64,
    /// The number the next record appended here gets.
    pub(super) next_seq: u64,
    /// Rising numbers, not always consecutive (see the module doc).
    pub(super) records: Vec<Record>,
    pub(super) bytes: u64,
}

impl Segment {
    pub(super) fn last_seq(&self) -> Option<u64> {
        self.records.last().map(|r| r.seq)
    }

    /// Where the chain of names continues: the next segment's name.
    pub(super) fn end(&self) -> u64 {
        self.last_seq().map_or(self.first_seq, |s| s + 1)
    }

    /// Its records numbered `from` or above.
    pub(super) fn from(&self, from: u64) -> &[Record] {
        &self.records[self.records.partition_point(|r| r.seq < from)..]
    }
}

/// An entry to be written: its kind, its time and its MessagePack.
pub(super) struct Unsaved {
    pub(super) kind: u8,
    pub(super) time_ms: u64,
    pub(super) payload: Vec<u8>,
}

/// Reports the spool could not write, held until a write succeeds and they
/// can be recorded as a gap ahead of the next entry.
pub(super) struct Unwritten {
    pub(super) lost: Lost,
    /// When the first write failed.
    since_ms: u64,
    /// Why: a full disk (said in plain words), or the error.
    cause: Option<String>,
}

impl Unwritten {
    pub(super) fn gap(&self, until_ms: u64) -> Gap {
        let n = self.lost.total();
        let (from, to) = (utc_iso(self.since_ms), utc_iso(until_ms));
        let reason = match &self.cause {
            None => format!("{n} reports lost: the agent's state_dir was full from {from} to {to}"),
            Some(error) => format!(
                "{n} reports lost: the agent could not write its spool from {from} to {to} ({error})"
            ),
        };
        self.lost.gap(reason)
    }
}

impl Spool {
    /// Append a gap entry counting `lost`; if it cannot be written, hold
    /// the count for the next write.
    pub(super) fn append_gap(&mut self, lost: Lost, reason: String) {
        let gap = lost.gap(reason);
        if let Err(e) = self.flush_unwritten().and_then(|()| self.write_gap(&gap)) {
            self.hold(&lost, &e);
        }
    }

    fn write_gap(&mut self, gap: &Gap) -> anyhow::Result<u64> {
        let payload = rmp_serde::to_vec(gap)?;
        self.write(vec![Unsaved {
            kind: KIND_GAP,
            time_ms: gap.last_ms,
            payload,
        }])
    }

    /// A write failed: count what it lost until a write succeeds.
    pub(super) fn hold(&mut self, lost: &Lost, error: &anyhow::Error) {
        match &mut self.unwritten {
            Some(unwritten) => unwritten.lost.merge(lost),
            None => {
                tracing::error!(
                    "{error:#}: reports are lost until the spool can be written again (free space in the state_dir); they are counted and the receiver will be told"
                );
                self.unwritten = Some(Unwritten {
                    lost: lost.clone(),
                    since_ms: now_ms(),
                    cause: (!is_full(error)).then(|| format!("{error:#}")),
                });
            }
        }
    }

    /// Record the reports lost to failed writes, if any, as a gap entry.
    pub(super) fn flush_unwritten(&mut self) -> anyhow::Result<()> {
        let Some(unwritten) = &self.unwritten else {
            return Ok(());
        };
        let gap = unwritten.gap(now_ms());
        self.write_gap(&gap)?;
        tracing::warn!("the spool can be written again: {}", gap.reason);
        self.unwritten = None;
        Ok(())
    }

    /// Write `entries` at the end of the active segment, all with one
    /// `write`; returns the first one's number. They stay in the tail,
    /// encoded, until they are sent.
    pub(super) fn write(&mut self, entries: Vec<Unsaved>) -> anyhow::Result<u64> {
        let active = self.active();
        if active.bytes >= self.segment_bytes {
            let (name, next) = (active.end(), active.next_seq);
            self.start_segment(name, next)?;
        }
        let first = self.active().next_seq;
        let last = first + entries.len() as u64 - 1;
        if last > self.reserved {
            self.write_reserved((first - 1 + RESERVE_STEP).max(last))?;
        }
        let size = entries.iter().map(|e| HEADER + e.payload.len()).sum();
        let mut bytes = Vec::with_capacity(size);
        for (seq, entry) in (first..).zip(&entries) {
            encode_into(&mut bytes, seq, entry.time_ms, entry.kind, &entry.payload);
        }
        let segment = self.segments.back_mut().expect("an active segment");
        // One write: a kill cannot split it; only a power cut or a full disk
        // can leave it torn, which the checksum catches on the next start.
        if let Err(e) = segment.file.write_all(&bytes) {
            // Cut off whatever part was written so the file stays readable.
            let _ = segment.file.set_len(segment.bytes);
            return Err(e)
                .with_context(|| format!("cannot write the spool {}", segment.path.display()));
        }
        let mut offset = segment.bytes;
        for (seq, entry) in (first..).zip(entries) {
            let record = Record {
                seq,
                offset,
                len: entry.payload.len() as u32,
                time_ms: entry.time_ms,
                kind: entry.kind,
            };
            offset += record.size();
            segment.records.push(record);
            self.tail.push(record, entry.payload);
        }
        segment.next_seq = last + 1;
        segment.bytes += bytes.len() as u64;
        self.bytes += bytes.len() as u64;
        Ok(first)
    }

    pub(super) fn start_segment(&mut self, name: u64, next_seq: u64) -> anyhow::Result<()> {
        let path = self.dir.join(format!("{name:020}.spool"));
        let file = open_segment(&path, true)?;
        self.segments.push_back(Segment {
            path,
            file,
            first_seq: name,
            next_seq,
            records: Vec::new(),
            bytes: 0,
        });
        Ok(())
    }

    /// Drop the oldest segments while the spool is over its size, and record
    /// what they held that was not delivered.
    pub(super) fn enforce_limit(&mut self) {
        let mut lost = Lost::default();
        while self.bytes > self.max_bytes && self.segments.len() > 1 {
            let oldest = self.segments.pop_front().expect("more than one segment");
            self.bytes -= oldest.bytes;
            for record in oldest.from(self.acked + 1) {
                tally(&oldest, record, &mut lost);
            }
            self.acked = self.acked.max(oldest.end() - 1);
            remove(&oldest.path);
        }
        if lost.total() > 0 {
            // Reports counted by gap entries dropped in turn were counted
            // when they were dropped first.
            self.dropped += lost.reports;
            let reason = format!(
                "the agent's spool was full ({} bytes): raise [spool] max_size or bring the receiver back sooner",
                self.max_bytes
            );
            tracing::warn!(
                dropped = lost.reports,
                since_start = self.dropped,
                "{reason}; the receiver is told how many reports were lost"
            );
            self.append_gap(lost, reason);
        }
    }
}

/// Whether a write failed because the disk (or the quota) is full.
fn is_full(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded))
}

pub(super) fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), "cannot remove a spool segment: {e}");
    }
}

/// The segment files of `dir` by name, oldest first.
pub(super) fn segment_files(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
    let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list the spool {}", dir.display()))?
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".spool")?
                .parse()
                .ok()?;
            Some((name, path))
        })
        .collect();
    names.sort();
    Ok(names)
}

pub(super) fn open_segment(path: &Path, create: bool) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(create)
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open spool segment {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::testing::*;

    #[test]
    fn a_full_spool_drops_the_oldest_and_records_exactly_what_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let max = 64 << 10;
        let (mut spool, _) = Spool::open(dir.path(), max).unwrap();
        let total = 2000;
        for n in 1..=total {
            spool.append_report(&report(n)).unwrap();
            assert!(spool.bytes() <= max + spool.segment_bytes);
        }
        let (_, held, gaps) = drain(&spool, ALL);
        // What is held is the newest reports, in order, and the gaps count
        // every report that is not.
        assert!(held.len() < total as usize / 2, "{} held", held.len());
        let oldest = held[0];
        assert_eq!(held, (oldest..=total).collect::<Vec<_>>());
        assert_eq!(lost(&gaps), oldest - 1);
        // Gap entries dropped in turn are folded into later ones, and the
        // log's count of dropped reports does not count them twice.
        assert_eq!(spool.dropped, oldest - 1);
    }

    #[test]
    fn reports_lost_to_a_full_disk_are_counted_in_one_gap_when_writes_succeed_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = filled(dir.path(), 1 << 20, 2);
        // The kernel's "disk full" for every write: /dev/full.
        let active = spool.segments.back_mut().unwrap();
        let real = std::mem::replace(
            &mut active.file,
            open_segment(Path::new("/dev/full"), false).unwrap(),
        );
        for n in 3..=5 {
            let err = spool.append_report(&report(n)).unwrap_err();
            assert!(is_full(&err), "{err:#}");
        }
        spool.segments.back_mut().unwrap().file = real;
        assert_eq!(
            spool.append_report(&report(6)).unwrap(),
            4,
            "the gap is number 3"
        );
        let (_, reports, gaps) = drain(&spool, ALL);
        assert_eq!(reports, [1, 2, 6]);
        assert_eq!(gaps.len(), 1);
        assert_eq!(
            (gaps[0].reports, gaps[0].first_ms, gaps[0].last_ms),
            (3, 1003, 1005)
        );
        assert!(
            gaps[0]
                .reason
                .starts_with("3 reports lost: the agent's state_dir was full from "),
            "{}",
            gaps[0].reason
        );
    }
}
