//! Reading the segments back at a start: resynchronising past damage (a
//! torn write after a crash, a flipped byte), repairing the segment, and
//! counting what was lost.

use super::Spool;
use super::lost::Lost;
use super::record::{HEADER, Record, parse_record};
use super::segment::{Segment, open_segment, segment_files};
use anyhow::Context;
use std::fs::File;
use std::io::Write;
use std::path::Path;

impl Spool {
    /// Read every segment of the spool's directory, oldest first; returns
    /// the damaged stretches and the segments missing from the chain.
    pub(super) fn load_segments(&mut self) -> anyhow::Result<Vec<Damage>> {
        let mut damage = Vec::new();
        for (name, path) in segment_files(&self.dir)? {
            let (segment, damaged) = read_segment(&path, name)?;
            if let Some(previous) = self.segments.back()
                && name > previous.end()
            {
                // A segment lost whole (deleted, or never reached the disk).
                damage.push(Damage {
                    from: previous.end(),
                    to: name - 1,
                    most: u64::MAX,
                    first_ms: previous.records.last().map_or(0, |r| r.time_ms),
                    last_ms: segment.records.first().map_or(0, |r| r.time_ms),
                });
            }
            damage.extend(damaged);
            self.bytes += segment.bytes;
            self.segments.push_back(segment);
        }
        Ok(damage)
    }

    /// Record the entries `damage` lost that were not acknowledged as one
    /// gap entry; returns how many.
    pub(super) fn record_damage(&mut self, damage: &[Damage]) -> u64 {
        let mut lost = Lost::default();
        for d in damage.iter().filter(|d| d.lost(self.acked) > 0) {
            lost.reports(d.lost(self.acked), d.first_ms, d.last_ms);
        }
        let lost_entries = lost.reports;
        if lost_entries > 0 {
            tracing::warn!(
                spool = %self.dir.display(),
                lost = lost_entries,
                "entries of the spool were damaged and are lost; recording the gap"
            );
            self.append_gap(lost, "the agent's spool was damaged".into());
        }
        lost_entries
    }
}

/// A damaged stretch of the spool and the numbers it may have held.
#[derive(Debug)]
pub(super) struct Damage {
    /// The numbers it may have held, `from..=to`.
    pub(super) from: u64,
    pub(super) to: u64,
    /// At most this many records fit in the damaged bytes.
    most: u64,
    pub(super) first_ms: u64,
    pub(super) last_ms: u64,
}

impl Damage {
    /// Entries lost: its numbers above `acked` (the receiver stored those
    /// at or below), no more than fit in it.
    pub(super) fn lost(&self, acked: u64) -> u64 {
        let from = self.from.max(acked + 1);
        (self.to + 1).saturating_sub(from).min(self.most)
    }
}

/// Read a segment's records. Bytes that are no valid record are damage: the
/// reader resynchronises on the next valid record with a larger number,
/// rewrites the segment without the damaged bytes (so the damage is counted
/// once) and returns the numbers each damaged stretch may have held.
fn read_segment(path: &Path, name: u64) -> anyhow::Result<(Segment, Vec<Damage>)> {
    let data = std::fs::read(path)
        .with_context(|| format!("cannot read spool segment {}", path.display()))?;
    let mut records: Vec<Record> = Vec::new();
    // Damaged stretches: (records before it, bytes).
    let mut stretches = Vec::new();
    let mut offset = 0;
    while offset < data.len() {
        let above = records.last().map_or(name, |r| r.seq + 1);
        let valid = |at: usize| parse_record(&data[at..], at as u64, above);
        if let Some(record) = valid(offset) {
            offset += record.size() as usize;
            records.push(record);
            continue;
        }
        let resume = (offset + 1..data.len())
            .find(|&at| valid(at).is_some())
            .unwrap_or(data.len());
        stretches.push((records.len(), (resume - offset) as u64));
        offset = resume;
    }
    let damage = stretches
        .iter()
        .map(|&(before, bytes)| {
            let previous = before.checked_sub(1).map(|i| records[i]);
            let from = previous.map_or(name, |r| r.seq + 1);
            let previous_ms = previous.map_or(0, |r| r.time_ms);
            match records.get(before) {
                Some(next) => Damage {
                    from,
                    to: next.seq - 1,
                    most: bytes / HEADER as u64,
                    first_ms: previous_ms,
                    last_ms: next.time_ms,
                },
                // A torn end: the one record being written when the agent
                // stopped. (A power cut may lose more whole records; they
                // cannot be counted, and their numbers are never reused.)
                None => Damage {
                    from,
                    to: from,
                    most: 1,
                    first_ms: previous_ms,
                    last_ms: modified_ms(path).unwrap_or(previous_ms),
                },
            }
        })
        .collect::<Vec<_>>();
    let mut segment = Segment {
        path: path.to_owned(),
        file: open_segment(path, false)?,
        first_seq: name,
        next_seq: 0,
        records,
        bytes: offset as u64,
    };
    segment.next_seq = segment.end();
    if !damage.is_empty() {
        tracing::warn!(
            segment = %path.display(),
            kept = segment.records.len(),
            damaged_stretches = damage.len(),
            damaged_bytes = stretches.iter().map(|s| s.1).sum::<u64>(),
            "the spool segment is damaged (a torn write after a crash, or a damaged disk); keeping its valid records and cutting out the rest"
        );
        rewrite(&mut segment, &data)?;
    }
    Ok((segment, damage))
}

/// Replace the segment's file by its valid records only, through a
/// temporary file, so a crash leaves either the old file or the new one.
fn rewrite(segment: &mut Segment, data: &[u8]) -> anyhow::Result<()> {
    let mut kept = Vec::with_capacity(data.len());
    for record in &mut segment.records {
        let start = record.offset as usize;
        record.offset = kept.len() as u64;
        kept.extend_from_slice(&data[start..start + record.size() as usize]);
    }
    let path = &segment.path;
    let tmp = path.with_extension("tmp");
    File::create(&tmp)
        .and_then(|mut f| f.write_all(&kept).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot repair spool segment {}", path.display()))?;
    segment.file = open_segment(path, false)?;
    segment.bytes = kept.len() as u64;
    Ok(())
}

fn modified_ms(path: &Path) -> Option<u64> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    let since = modified.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Recovery;
    use crate::spool::testing::*;

    #[test]
    fn a_torn_last_record_is_cut_off_counted_and_its_number_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = filled(dir.path(), 1 << 20, 3).segments[0].path.clone();
        // A kill in the middle of the third record's write.
        damage(&path, |data| data.truncate(data.len() - 10));
        let (mut spool, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            recovery,
            Recovery {
                pending: 3,
                damaged: 1,
                lost: 1
            },
            "reports 1 and 2, and the gap entry for 3"
        );
        let next = spool.append_report(&report(4)).unwrap();
        assert!(next > 3, "number {next} used again");
        let (_, reports, gaps) = drain(&spool, ALL);
        assert_eq!(reports, [1, 2, 4]);
        assert_eq!(lost(&gaps), 1);
        assert_eq!(gaps[0].reason, "the agent's spool was damaged");
        assert_eq!(gaps[0].first_ms, 1002, "from the last good report on");
    }

    #[test]
    fn a_flipped_byte_in_the_middle_loses_one_record_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let spool = filled(dir.path(), 1 << 20, 10);
        let segment = &spool.segments[0];
        let fourth = segment.records[3];
        let path = segment.path.clone();
        drop(spool);
        damage(&path, |data| {
            data[(fourth.offset + fourth.size() / 2) as usize] ^= 0x40;
        });
        let (mut spool, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((recovery.damaged, recovery.lost), (1, 1));
        let next = spool.append_report(&report(11)).unwrap();
        assert!(next > 10, "number {next} used again");
        let (_, reports, gaps) = drain(&spool, ALL);
        assert_eq!(reports, [1, 2, 3, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(lost(&gaps), 1);
        assert_eq!((gaps[0].first_ms, gaps[0].last_ms), (1003, 1005));
        // The damage was cut out: counted once, not at every start.
        drop(spool);
        let (spool, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((recovery.damaged, recovery.lost), (0, 0));
        assert_eq!(drain(&spool, ALL).1.len(), 10);
    }

    #[test]
    fn damage_to_acknowledged_records_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = filled(dir.path(), 1 << 20, 3);
        spool.ack(3).unwrap();
        let path = spool.segments[0].path.clone();
        drop(spool);
        damage(&path, |data| data.truncate(data.len() - 10));
        let (spool, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            recovery,
            Recovery {
                pending: 0,
                damaged: 1,
                lost: 0
            }
        );
        assert!(spool.read(1, ALL).unwrap().is_none());
    }

    #[test]
    fn a_lost_middle_segment_becomes_a_gap_entry() {
        let dir = tempfile::tempdir().unwrap();
        let spool = filled(dir.path(), 1 << 20, 600);
        assert!(spool.segments.len() >= 3);
        let middle = &spool.segments[1];
        let lost_here = middle.records.len() as u64;
        std::fs::remove_file(&middle.path).unwrap();
        drop(spool);
        let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        let (_, reports, gaps) = drain(&spool, ALL);
        assert_eq!(
            (reports.len() as u64, lost(&gaps)),
            (600 - lost_here, lost_here)
        );
    }
}
