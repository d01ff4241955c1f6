//! The agent's on-disk spool: every report is appended here before it is
//! sent and stays until the receiver acknowledges it, so nothing is lost to
//! an absent receiver, a reconnect or an agent restart.
//!
//! Layout: `<state_dir>/spool/` holds `stream` (this spool's random id) and
//! segment files `<first seq>.spool`, each a run of records numbered
//! consecutively. A record is
//!
//! ```text
//! len u32 | crc32 u32 | seq u64 | time_ms u64 | kind u8 | payload (len bytes)
//! ```
//!
//! little-endian, the CRC over everything after it. Payload: the MessagePack
//! of a `Report` (kind 0) or a `Gap` (kind 1).
//!
//! Records are written with one `write` each and no fsync: a killed agent
//! (even `kill -9`) loses nothing the kernel has, and a torn last record
//! (power cut, full disk) fails its checksum on the next start and is cut
//! off with a log line. When the spool grows past its size, whole segments
//! are dropped oldest first and the loss is appended as a `Gap` entry, which
//! reaches the receiver like any report.
//!
//! `acked` holds the newest acknowledged number (`seq u64 | crc32 u32`,
//! rewritten in place on every acknowledgement), so a restart does not send
//! acknowledged entries again. Rewriting 12 bytes in place is cheap;
//! replacing the active segment by an empty file on every acknowledgement
//! (create one file, delete another) was a visible share of the agent's CPU,
//! so that happens only once the segment holds [`ROLL_BYTES`].

use crate::protocol::{Entry, Gap};
use crate::report::Report;
use crate::state_store::write_atomic;
use anyhow::Context;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const HEADER: usize = 25;
/// A record above this is damage, not data (reports are capped far below).
const MAX_PAYLOAD: u32 = 64 << 20;
const KIND_REPORT: u8 = 0;
const KIND_GAP: u8 = 1;

/// A fully acknowledged active segment this large is replaced by an empty one.
const ROLL_BYTES: u64 = 64 << 10;

/// Where a record is, and what the spool needs to know without reading it.
#[derive(Clone, Copy, Debug)]
struct Record {
    seq: u64,
    offset: u64,
    len: u32,
    time_ms: u64,
    kind: u8,
}

struct Segment {
    path: PathBuf,
    file: File,
    first_seq: u64,
    records: Vec<Record>,
    bytes: u64,
}

impl Segment {
    fn last_seq(&self) -> Option<u64> {
        self.records.last().map(|r| r.seq)
    }

    fn next_seq(&self) -> u64 {
        self.first_seq + self.records.len() as u64
    }
}

/// What opening the spool found.
#[derive(Debug, Default, PartialEq)]
pub struct Recovery {
    /// Entries waiting to be delivered.
    pub pending: u64,
    /// Damaged records cut off (a torn write at the end after a crash).
    pub torn: u64,
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
    /// Reports dropped since the agent started, for the log.
    dropped: u64,
}

impl Spool {
    /// Open the spool in `dir` (creating it), bounded to `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<(Spool, Recovery)> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the spool directory {}", dir.display()))?;
        let stream = stream_id(dir)?;
        let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list the spool {}", dir.display()))?
            .filter_map(|e| {
                let path = e.ok()?.path();
                let first = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".spool")?
                    .parse()
                    .ok()?;
                Some((first, path))
            })
            .collect();
        names.sort();
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
            acked_file: open_acked(dir)?,
            dropped: 0,
        };
        let mut recovery = Recovery::default();
        let mut damaged: Option<(u64, u64)> = None;
        for (first_seq, path) in names {
            let (segment, torn) = read_segment(&path, first_seq)?;
            recovery.torn += torn;
            if let Some(expected) = spool.segments.back().map(Segment::next_seq)
                && first_seq > expected
            {
                // Records lost inside the spool (damage, not a torn end).
                damaged = Some((expected, first_seq - 1));
            }
            spool.bytes += segment.bytes;
            spool.segments.push_back(segment);
        }
        spool.acked = spool
            .segments
            .front()
            .map_or(0, |s| s.first_seq.saturating_sub(1));
        if spool.segments.is_empty() {
            spool.start_segment(1)?;
        }
        // A damaged or stale `acked` only means entries are sent again.
        if let Some(acked) = read_acked(&spool.acked_file) {
            spool.acked = spool.acked.max(acked.min(spool.last_seq()));
        }
        recovery.pending = spool.pending();
        if let Some((from, to)) = damaged {
            tracing::warn!(
                spool = %dir.display(),
                "entries {from}..={to} of the spool were damaged and are lost; recording the gap"
            );
            spool.append_gap(Gap {
                reports: to - from + 1,
                first_ms: 0,
                last_ms: 0,
                reason: "the agent's spool was damaged".into(),
            })?;
        }
        Ok((spool, recovery))
    }

    /// This spool's stream id (sent in the Hello).
    pub fn stream(&self) -> u64 {
        self.stream
    }

    /// Entries written and not yet acknowledged.
    pub fn pending(&self) -> u64 {
        self.next_seq() - 1 - self.acked
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn next_seq(&self) -> u64 {
        self.segments.back().map_or(1, Segment::next_seq)
    }

    /// The number of the newest entry (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.next_seq() - 1
    }

    /// Every entry up to this number is acknowledged (or was dropped).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Append a report; returns its number.
    pub fn append_report(&mut self, report: &Report) -> anyhow::Result<u64> {
        let payload = rmp_serde::to_vec(report)?;
        self.append(KIND_REPORT, report.time_ms, &payload)
    }

    fn append_gap(&mut self, gap: Gap) -> anyhow::Result<u64> {
        let payload = rmp_serde::to_vec(&gap)?;
        self.append(KIND_GAP, gap.last_ms, &payload)
    }

    fn append(&mut self, kind: u8, time_ms: u64, payload: &[u8]) -> anyhow::Result<u64> {
        let seq = self.next_seq();
        if self
            .segments
            .back()
            .is_some_and(|s| s.bytes >= self.segment_bytes)
        {
            self.start_segment(seq)?;
        }
        let segment = self.segments.back_mut().expect("an active segment");
        let mut record = Vec::with_capacity(HEADER + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&[0; 4]);
        record.extend_from_slice(&seq.to_le_bytes());
        record.extend_from_slice(&time_ms.to_le_bytes());
        record.push(kind);
        record.extend_from_slice(payload);
        let crc = crc32fast::hash(&record[8..]);
        record[4..8].copy_from_slice(&crc.to_le_bytes());
        // One write: a kill cannot split it; only a power cut or a full disk
        // can leave it torn, which the checksum catches on the next start.
        if let Err(e) = segment.file.write_all(&record) {
            // Cut off whatever part was written so the file stays readable.
            let _ = segment.file.set_len(segment.bytes);
            return Err(e)
                .with_context(|| format!("cannot write the spool {}", segment.path.display()));
        }
        segment.records.push(Record {
            seq,
            offset: segment.bytes,
            len: payload.len() as u32,
            time_ms,
            kind,
        });
        segment.bytes += record.len() as u64;
        self.bytes += record.len() as u64;
        self.enforce_limit()?;
        Ok(seq)
    }

    fn start_segment(&mut self, first_seq: u64) -> anyhow::Result<()> {
        let path = self.dir.join(format!("{first_seq:020}.spool"));
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot create spool segment {}", path.display()))?;
        self.segments.push_back(Segment {
            path,
            file,
            first_seq,
            records: Vec::new(),
            bytes: 0,
        });
        Ok(())
    }

    /// Drop the oldest segments while the spool is over its size, and record
    /// what they held that was not delivered.
    fn enforce_limit(&mut self) -> anyhow::Result<()> {
        let mut gap = Gap {
            reports: 0,
            first_ms: u64::MAX,
            last_ms: 0,
            reason: format!(
                "the agent's spool was full ({} bytes): raise [spool] max_size or bring the receiver back sooner",
                self.max_bytes
            ),
        };
        while self.bytes > self.max_bytes && self.segments.len() > 1 {
            let oldest = self.segments.pop_front().expect("more than one segment");
            self.bytes -= oldest.bytes;
            for r in oldest.records.iter().filter(|r| r.seq > self.acked) {
                if r.kind == KIND_REPORT {
                    gap.reports += 1;
                    gap.first_ms = gap.first_ms.min(r.time_ms);
                    gap.last_ms = gap.last_ms.max(r.time_ms);
                } else if let Ok(Entry::Gap(earlier)) = self.read_record(&oldest, r) {
                    // A gap dropped in turn is folded into the new one.
                    gap.reports += earlier.reports;
                }
            }
            self.acked = self.acked.max(oldest.last_seq().unwrap_or(0));
            remove(&oldest.path);
        }
        if gap.reports > 0 {
            self.dropped += gap.reports;
            tracing::warn!(
                dropped = gap.reports,
                since_start = self.dropped,
                "{}; the receiver is told how many reports were lost",
                gap.reason
            );
            self.append_gap(gap)?;
        }
        Ok(())
    }

    /// Up to `max` consecutive entries from `from` on (or from the oldest
    /// one still held, if `from` was dropped), with the first one's number.
    pub fn read(&self, from: u64, max: usize) -> anyhow::Result<Option<(u64, Vec<Entry>)>> {
        let from = from.max(self.acked + 1);
        let mut entries = Vec::new();
        let mut first = None;
        for segment in &self.segments {
            if segment.next_seq() <= from {
                continue;
            }
            let skip = from.saturating_sub(segment.first_seq) as usize;
            for record in segment.records.iter().skip(skip) {
                if entries.len() >= max {
                    break;
                }
                let start = *first.get_or_insert(record.seq);
                if record.seq != start + entries.len() as u64 {
                    // Not consecutive (a damaged stretch): end the batch here.
                    return Ok(Some((start, entries)));
                }
                entries.push(self.read_record(segment, record)?);
            }
        }
        Ok(first.map(|f| (f, entries)))
    }

    fn read_record(&self, segment: &Segment, record: &Record) -> anyhow::Result<Entry> {
        let mut payload = vec![0; record.len as usize];
        segment
            .file
            .read_exact_at(&mut payload, record.offset + HEADER as u64)
            .with_context(|| format!("cannot read the spool {}", segment.path.display()))?;
        let decoded = match record.kind {
            KIND_GAP => rmp_serde::from_slice(&payload).map(Entry::Gap),
            _ => rmp_serde::from_slice(&payload).map(Entry::Report),
        };
        // A record that passed its checksum but does not decode (written by
        // an incompatible agent version) is reported as lost, not retried
        // forever.
        Ok(decoded.unwrap_or_else(|e| {
            tracing::error!(seq = record.seq, segment = %segment.path.display(), "undecodable spool entry: {e}");
            Entry::Gap(Gap {
                reports: u64::from(record.kind == KIND_REPORT),
                first_ms: record.time_ms,
                last_ms: record.time_ms,
                reason: format!("the agent could not decode its spool entry {}: {e}", record.seq),
            })
        }))
    }

    /// The receiver stored everything up to `seq`: forget it.
    pub fn ack(&mut self, seq: u64) -> anyhow::Result<()> {
        let seq = seq.min(self.next_seq() - 1);
        if seq <= self.acked {
            return Ok(());
        }
        self.acked = seq;
        let mut record = seq.to_le_bytes().to_vec();
        record.extend_from_slice(&crc32fast::hash(&seq.to_le_bytes()).to_le_bytes());
        self.acked_file
            .write_all_at(&record, 0)
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
        // one (named by the next number, which it keeps across restarts).
        let active = self.segments.back().expect("an active segment");
        if active.last_seq() == Some(self.acked) && active.bytes >= ROLL_BYTES {
            let next = active.next_seq();
            self.start_segment(next)?;
            let done = self.segments.pop_front().expect("two segments");
            self.bytes -= done.bytes;
            remove(&done.path);
        }
        Ok(())
    }
}

/// The file holding the newest acknowledged number.
const ACKED: &str = "acked";

fn open_acked(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join(ACKED);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// The number in `acked`, if it is whole.
fn read_acked(file: &File) -> Option<u64> {
    let mut bytes = [0u8; 12];
    file.read_exact_at(&mut bytes, 0).ok()?;
    let seq = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    let crc = u32::from_le_bytes(bytes[8..].try_into().ok()?);
    (crc32fast::hash(&bytes[..8]) == crc).then_some(seq)
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), "cannot remove a spool segment: {e}");
    }
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

/// Read a segment's records, cutting off a damaged tail; returns the number
/// of records cut (0 or 1: everything after a bad record is unreadable).
fn read_segment(path: &Path, first_seq: u64) -> anyhow::Result<(Segment, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open spool segment {}", path.display()))?;
    let data = std::fs::read(path)
        .with_context(|| format!("cannot read spool segment {}", path.display()))?;
    let mut records = Vec::new();
    let mut offset = 0usize;
    let mut expected = first_seq;
    while let Some(record) = parse_record(&data[offset..], offset as u64, expected) {
        offset += HEADER + record.len as usize;
        expected += 1;
        records.push(record);
    }
    let torn = u64::from(offset < data.len());
    if torn == 1 {
        tracing::warn!(
            segment = %path.display(),
            kept = records.len(),
            "the spool's last record is torn or damaged (the agent stopped mid-write); cutting it off"
        );
        file.set_len(offset as u64)
            .with_context(|| format!("cannot repair spool segment {}", path.display()))?;
    }
    Ok((
        Segment {
            path: path.to_owned(),
            file,
            first_seq,
            records,
            bytes: offset as u64,
        },
        torn,
    ))
}

/// The record at the start of `data` if it is whole, numbered `expected`
/// and passes its checksum.
fn parse_record(data: &[u8], offset: u64, expected: u64) -> Option<Record> {
    let header = data.get(..HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?);
    if len > MAX_PAYLOAD {
        return None;
    }
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let body = data.get(8..HEADER + len as usize)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let kind = header[24];
    (seq == expected && kind <= KIND_GAP).then_some(Record {
        seq,
        offset,
        len,
        time_ms: u64::from_le_bytes(header[16..24].try_into().ok()?),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Cost, Status};

    fn report(n: u64) -> Report {
        Report {
            service: "svc".into(),
            plugin: "p".into(),
            time_ms: 1000 + n,
            status: Status::unknown(format!("run {n} {}", "x".repeat(200))),
            samples: Vec::new(),
            cost: Cost::default(),
        }
    }

    fn numbers(entries: &[Entry]) -> Vec<u64> {
        entries
            .iter()
            .map(|e| match e {
                Entry::Report(r) => r.time_ms - 1000,
                Entry::Gap(g) => 1_000_000 + g.reports,
            })
            .collect()
    }

    /// A spool of at most `max` bytes in `dir` holding reports 1..=`n`.
    fn filled(dir: &Path, max: u64, n: u64) -> Spool {
        let (mut spool, recovery) = Spool::open(dir, max).unwrap();
        assert_eq!(recovery, Recovery::default(), "a new spool is empty");
        for i in 1..=n {
            assert_eq!(spool.append_report(&report(i)).unwrap(), i);
        }
        spool
    }

    /// Everything the spool would send: report numbers, and reports counted
    /// by gap entries.
    fn drain(spool: &Spool) -> (Vec<u64>, u64) {
        let (mut reports, mut gaps, mut from) = (Vec::new(), 0, 1);
        while let Some((first, entries)) = spool.read(from, 100).unwrap() {
            from = first + entries.len() as u64;
            for e in entries {
                match e {
                    Entry::Report(r) => reports.push(r.time_ms - 1000),
                    Entry::Gap(g) => gaps += g.reports,
                }
            }
        }
        (reports, gaps)
    }

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
        let (first, entries) = spool.read(3, 10).unwrap().unwrap();
        assert_eq!(first, 3);
        assert_eq!(numbers(&entries), [3, 4, 5]);
    }

    #[test]
    fn acknowledged_segments_are_removed_and_numbers_continue() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = filled(dir.path(), 1 << 20, 400);
        spool.ack(400).unwrap();
        assert_eq!(spool.pending(), 0);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 3, "the stream id, `acked` and one segment");
        drop(spool);
        let (mut spool, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovery.pending, 0);
        assert_eq!(spool.append_report(&report(401)).unwrap(), 401);
    }

    #[test]
    fn a_torn_last_record_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = filled(dir.path(), 1 << 20, 3).segments[0].path.clone();
        let len = std::fs::metadata(&path).unwrap().len();
        // A kill in the middle of the third record's write.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        let (mut spool, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            recovery,
            Recovery {
                pending: 2,
                torn: 1
            }
        );
        assert_eq!(spool.append_report(&report(3)).unwrap(), 3);
        let (_, entries) = spool.read(1, 10).unwrap().unwrap();
        assert_eq!(numbers(&entries), [1, 2, 3]);
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = filled(dir.path(), 1 << 20, 3).segments[0].path.clone();
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 5;
        data[last] ^= 0x40;
        std::fs::write(&path, data).unwrap();
        let (_, recovery) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            recovery,
            Recovery {
                pending: 2,
                torn: 1
            }
        );
    }

    #[test]
    fn a_lost_middle_segment_becomes_a_gap_entry() {
        let dir = tempfile::tempdir().unwrap();
        let spool = filled(dir.path(), 1 << 20, 600);
        assert!(spool.segments.len() >= 3);
        let middle = &spool.segments[1];
        let lost = middle.records.len() as u64;
        std::fs::remove_file(&middle.path).unwrap();
        drop(spool);
        let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        let (reports, gaps) = drain(&spool);
        assert_eq!((reports.len() as u64, gaps), (600 - lost, lost));
    }

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
        let (held, gaps) = drain(&spool);
        // What is held is the newest reports, in order, and the gaps count
        // every report that is not.
        assert!(held.len() < total as usize / 2, "{} held", held.len());
        let oldest = held[0];
        assert_eq!(held, (oldest..=total).collect::<Vec<_>>());
        assert_eq!(gaps, oldest - 1);
    }
}
