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
//! high-water mark that is written and fsynced [`RESERVE_STEP`] numbers
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
//! Records are written with one `write` each and no fsync: a killed agent
//! (even `kill -9`) loses nothing the kernel has. Damage (a torn last record
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
//! so that happens only once the segment holds [`ROLL_BYTES`].

use anyhow::Context;
use sandglass_core::files::write_atomic;
use sandglass_core::report::{Report, Status};
use sandglass_core::time::now_ms;
use sandglass_protocol::{DEFAULT_MAX_FRAME, Entry, Gap};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const HEADER: usize = 25;
/// A record above this is damage, not data (reports are capped far below).
const MAX_PAYLOAD: u32 = 64 << 20;
const KIND_REPORT: u8 = 0;
const KIND_GAP: u8 = 1;

/// A fully acknowledged active segment this large is replaced by an empty one.
const ROLL_BYTES: u64 = 64 << 10;

/// How far ahead of use `reserved` is written: one fsync per this many
/// entries, and at most this many numbers skipped after a crash.
const RESERVE_STEP: u64 = 1024;

/// Resynchronising after damage, a record is believed only if its number is
/// at most this far above the last good one: random bytes almost never pass,
/// and no restart skips more.
const MAX_SKIP: u64 = 1 << 32;

/// Bytes an entry takes in a `Reports` frame besides its payload: the
/// `{"Report": ...}` map around it (8 bytes; a gap's 5), with room to spare.
pub const ENTRY_OVERHEAD: u64 = 16;

/// The largest payload the spool ships: the protocol's default frame limit
/// (8 MiB) less 64 KiB for the batch around the entry, so that one entry
/// always fits a frame for a receiver with the default `max_frame`. A bigger
/// report is replaced, when it is appended, by an UNKNOWN report saying so.
pub const MAX_ENTRY_BYTES: u64 = DEFAULT_MAX_FRAME as u64 - (64 << 10);

/// Where a record is, and what the spool needs to know without reading it.
#[derive(Clone, Copy, Debug)]
struct Record {
    seq: u64,
    offset: u64,
    len: u32,
    time_ms: u64,
    kind: u8,
}

impl Record {
    /// Bytes on disk, header included.
    fn size(&self) -> u64 {
        HEADER as u64 + u64::from(self.len)
    }
}

struct Segment {
    path: PathBuf,
    file: File,
    /// Its name: the number after the previous segment's last record.
    first_seq: u64,
    /// The number the next record appended here gets.
    next_seq: u64,
    /// Rising numbers, not always consecutive (see the module doc).
    records: Vec<Record>,
    bytes: u64,
}

impl Segment {
    fn last_seq(&self) -> Option<u64> {
        self.records.last().map(|r| r.seq)
    }

    /// Where the chain of names continues: the next segment's name.
    fn end(&self) -> u64 {
        self.last_seq().map_or(self.first_seq, |s| s + 1)
    }

    /// Its records numbered `from` or above.
    fn from(&self, from: u64) -> &[Record] {
        &self.records[self.records.partition_point(|r| r.seq < from)..]
    }
}

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

/// Entries given up, tallied for one gap entry.
#[derive(Clone, Debug)]
struct Lost {
    /// Reports given up now.
    reports: u64,
    /// Reports that earlier gap entries, given up in turn, had counted:
    /// carried into the new gap, not counted as new losses.
    folded: u64,
    /// Times of the oldest and newest (u64::MAX and 0: none known yet).
    first_ms: u64,
    last_ms: u64,
}

impl Default for Lost {
    fn default() -> Self {
        Lost {
            reports: 0,
            folded: 0,
            first_ms: u64::MAX,
            last_ms: 0,
        }
    }
}

impl Lost {
    fn reports(&mut self, n: u64, first_ms: u64, last_ms: u64) {
        self.reports += n;
        self.times(first_ms, last_ms);
    }

    /// Widen the time range; 0 is "unknown".
    fn times(&mut self, first_ms: u64, last_ms: u64) {
        if first_ms > 0 {
            self.first_ms = self.first_ms.min(first_ms);
        }
        self.last_ms = self.last_ms.max(last_ms);
    }

    fn fold(&mut self, gap: &Gap) {
        self.folded += gap.reports;
        self.times(gap.first_ms, gap.last_ms);
    }

    fn merge(&mut self, other: &Lost) {
        self.reports += other.reports;
        self.folded += other.folded;
        self.times(other.first_ms, other.last_ms);
    }

    fn total(&self) -> u64 {
        self.reports + self.folded
    }

    fn gap(&self, reason: String) -> Gap {
        Gap {
            reports: self.total(),
            first_ms: self.first_ms.min(self.last_ms),
            last_ms: self.last_ms,
            reason,
        }
    }
}

/// Reports the spool could not write, held until a write succeeds and they
/// can be recorded as a gap ahead of the next entry.
struct Unwritten {
    lost: Lost,
    /// When the first write failed.
    since_ms: u64,
    /// Why: a full disk (said in plain words), or the error.
    cause: Option<String>,
}

impl Unwritten {
    fn gap(&self, until_ms: u64) -> Gap {
        let n = self.lost.total();
        let (from, to) = (utc(self.since_ms), utc(until_ms));
        let reason = match &self.cause {
            None => format!("{n} reports lost: the agent's state_dir was full from {from} to {to}"),
            Some(error) => format!(
                "{n} reports lost: the agent could not write its spool from {from} to {to} ({error})"
            ),
        };
        self.lost.gap(reason)
    }
}

/// A damaged stretch of the spool and the numbers it may have held.
#[derive(Debug)]
struct Damage {
    /// The numbers it may have held, `from..=to`.
    from: u64,
    to: u64,
    /// At most this many records fit in the damaged bytes.
    most: u64,
    first_ms: u64,
    last_ms: u64,
}

impl Damage {
    /// Entries lost: its numbers above `acked` (the receiver stored those
    /// at or below), no more than fit in it.
    fn lost(&self, acked: u64) -> u64 {
        let from = self.from.max(acked + 1);
        (self.to + 1).saturating_sub(from).min(self.most)
    }
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
        };
        let mut damage = Vec::new();
        for (name, path) in segment_files(dir)? {
            let (segment, damaged) = read_segment(&path, name)?;
            if let Some(previous) = spool.segments.back()
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
            spool.bytes += segment.bytes;
            spool.segments.push_back(segment);
        }
        spool.acked = spool
            .segments
            .front()
            .map_or(0, |s| s.first_seq.saturating_sub(1));
        spool.resume()?;
        // A damaged or stale `acked` only means entries are sent again. It
        // may be above every record left (the receiver stored records that a
        // crash then damaged), not above every number handed out.
        if let Some(acked) = read_mark(&spool.acked_file) {
            spool.acked = spool.acked.max(acked.min(spool.active().next_seq - 1));
        }
        let mut lost = Lost::default();
        for d in damage.iter().filter(|d| d.lost(spool.acked) > 0) {
            lost.reports(d.lost(spool.acked), d.first_ms, d.last_ms);
        }
        let lost_entries = lost.reports;
        if lost_entries > 0 {
            tracing::warn!(
                spool = %dir.display(),
                lost = lost_entries,
                "entries of the spool were damaged and are lost; recording the gap"
            );
            spool.append_gap(lost, "the agent's spool was damaged".into());
        }
        let recovery = Recovery {
            pending: spool.pending(),
            damaged: damage.len() as u64,
            lost: lost_entries,
        };
        Ok((spool, recovery))
    }

    /// Continue numbering above every number handed out before: above the
    /// records found and above `reserved`.
    fn resume(&mut self) -> anyhow::Result<()> {
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

    /// Append a report; returns its number. A report too large to ship is
    /// replaced by an UNKNOWN report that says so. A report that cannot be
    /// written is counted, and the count recorded as a gap entry ahead of
    /// the next entry that can be.
    pub fn append_report(&mut self, report: &Report) -> anyhow::Result<u64> {
        let payload = shippable(report)?;
        let written = self
            .flush_unwritten()
            .and_then(|()| self.write(KIND_REPORT, report.time_ms, &payload));
        match written {
            Ok(seq) => {
                self.enforce_limit();
                Ok(seq)
            }
            Err(e) => {
                let mut lost = Lost::default();
                lost.reports(1, report.time_ms, report.time_ms);
                self.hold(&lost, &e);
                Err(e)
            }
        }
    }

    /// Append a gap entry counting `lost`; if it cannot be written, hold
    /// the count for the next write.
    fn append_gap(&mut self, lost: Lost, reason: String) {
        let gap = lost.gap(reason);
        if let Err(e) = self.flush_unwritten().and_then(|()| self.write_gap(&gap)) {
            self.hold(&lost, &e);
        }
    }

    fn write_gap(&mut self, gap: &Gap) -> anyhow::Result<u64> {
        let payload = rmp_serde::to_vec(gap)?;
        self.write(KIND_GAP, gap.last_ms, &payload)
    }

    /// A write failed: count what it lost until a write succeeds.
    fn hold(&mut self, lost: &Lost, error: &anyhow::Error) {
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
    fn flush_unwritten(&mut self) -> anyhow::Result<()> {
        let Some(unwritten) = &self.unwritten else {
            return Ok(());
        };
        let gap = unwritten.gap(now_ms());
        self.write_gap(&gap)?;
        tracing::warn!("the spool can be written again: {}", gap.reason);
        self.unwritten = None;
        Ok(())
    }

    /// Write one record at the end of the active segment; returns its number.
    fn write(&mut self, kind: u8, time_ms: u64, payload: &[u8]) -> anyhow::Result<u64> {
        let active = self.active();
        if active.bytes >= self.segment_bytes {
            let (name, next) = (active.end(), active.next_seq);
            self.start_segment(name, next)?;
        }
        let seq = self.active().next_seq;
        if seq > self.reserved {
            self.write_reserved(seq - 1 + RESERVE_STEP)?;
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
        segment.next_seq = seq + 1;
        segment.bytes += record.len() as u64;
        self.bytes += record.len() as u64;
        Ok(seq)
    }

    /// Raise (or, at a clean stop, lower) the mark no number may pass
    /// without being written down first.
    fn write_reserved(&mut self, mark: u64) -> anyhow::Result<()> {
        write_mark(&self.reserved_file, mark)
            .and_then(|()| self.reserved_file.sync_data())
            .with_context(|| format!("cannot write {}", self.dir.join(RESERVED).display()))?;
        self.reserved = mark;
        Ok(())
    }

    fn start_segment(&mut self, name: u64, next_seq: u64) -> anyhow::Result<()> {
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
    fn enforce_limit(&mut self) {
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

    /// Consecutive entries from `from` on (or from the oldest one still held,
    /// if `from` was dropped), within `budget`, with the first one's number.
    /// An entry that alone is over the budget's bytes goes as a gap entry
    /// saying it was given up: it could never be delivered.
    pub fn read(&self, from: u64, budget: Budget) -> anyhow::Result<Option<(u64, Vec<Entry>)>> {
        let mut entries = Vec::new();
        let mut first = None;
        let mut bytes = 0;
        for (segment, record) in self.records(from.max(self.acked + 1)) {
            let start = *first.get_or_insert(record.seq);
            let cost = u64::from(record.len) + ENTRY_OVERHEAD;
            let full = entries.len() >= budget.entries
                || (!entries.is_empty() && bytes + cost > budget.bytes);
            // Numbers in a batch are consecutive: a skip ends it too.
            if full || record.seq != start + entries.len() as u64 {
                break;
            }
            bytes += cost;
            entries.push(if cost > budget.bytes {
                oversized(record, budget.bytes)
            } else {
                read_entry(segment, record)?
            });
        }
        Ok(first.map(|f| (f, entries)))
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

/// Count `record` into `lost`: a report as one, a gap entry by the reports
/// it counted.
fn tally(segment: &Segment, record: &Record, lost: &mut Lost) {
    if record.kind == KIND_REPORT {
        lost.reports(1, record.time_ms, record.time_ms);
    } else if let Ok(Entry::Gap(gap)) = read_entry(segment, record) {
        lost.fold(&gap);
    }
}

/// The MessagePack of `report`, or of an UNKNOWN report in its place if it
/// is over [`MAX_ENTRY_BYTES`].
fn shippable(report: &Report) -> anyhow::Result<Vec<u8>> {
    let payload = rmp_serde::to_vec(report)?;
    if payload.len() as u64 <= MAX_ENTRY_BYTES {
        return Ok(payload);
    }
    let text = format!(
        "report of {} bytes exceeds the largest entry the spool ships ({MAX_ENTRY_BYTES} bytes); its samples were dropped",
        payload.len()
    );
    tracing::warn!(service = report.service, plugin = report.plugin, "{text}");
    let replacement = Report {
        service: report.service.clone(),
        plugin: report.plugin.clone(),
        time_ms: report.time_ms,
        status: Status::unknown(text),
        samples: Vec::new(),
        cost: report.cost.clone(),
    };
    Ok(rmp_serde::to_vec(&replacement)?)
}

/// The gap entry sent in place of an entry over the batch budget.
fn oversized(record: &Record, max: u64) -> Entry {
    let reason = format!(
        "entry {} of {} bytes does not fit in a batch of at most {max} bytes (the receiver's max_frame); the agent gave it up",
        record.seq, record.len
    );
    tracing::warn!("{reason}");
    Entry::Gap(Gap {
        reports: u64::from(record.kind == KIND_REPORT),
        first_ms: record.time_ms,
        last_ms: record.time_ms,
        reason,
    })
}

fn read_entry(segment: &Segment, record: &Record) -> anyhow::Result<Entry> {
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

/// Whether a write failed because the disk (or the quota) is full.
fn is_full(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded))
}

/// `ms` (Unix time) as `2026-12-02T15:04:05Z`, for texts an operator reads.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, time) = ((secs / 86_400) as i64, secs % 86_400);
    // The civil date of a day number (H. Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

/// The file holding the newest acknowledged number.
const ACKED: &str = "acked";
/// The file holding the highest number that may have been handed out.
const RESERVED: &str = "reserved";

/// A file holding one number (`seq u64 | crc32 u32`), rewritten in place.
fn open_mark(dir: &Path, name: &str) -> anyhow::Result<File> {
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

/// The segment files of `dir` by name, oldest first.
fn segment_files(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
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

fn open_segment(path: &Path, create: bool) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(create)
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open spool segment {}", path.display()))
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

/// The valid record at the start of `data`, if there is one: whole, passing
/// its checksum, numbered `above` or a little higher.
fn parse_record(data: &[u8], offset: u64, above: u64) -> Option<Record> {
    let header = data.get(..HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let seq = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let kind = header[24];
    // Cheap checks first: resynchronising tries this at every byte.
    if len > MAX_PAYLOAD || kind > KIND_GAP || seq < above || seq - above > MAX_SKIP {
        return None;
    }
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let body = data.get(8..HEADER + len as usize)?;
    (crc32fast::hash(body) == crc).then_some(Record {
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
    use sandglass_core::report::Cost;

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

    const ALL: Budget = Budget {
        entries: 100,
        bytes: u64::MAX,
    };

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

    /// Everything the spool would send: the entry numbers, the report
    /// numbers, and the gap entries.
    fn drain(spool: &Spool, budget: Budget) -> (Vec<u64>, Vec<u64>, Vec<Gap>) {
        let (mut seqs, mut reports, mut gaps, mut from) = (Vec::new(), Vec::new(), Vec::new(), 1);
        while let Some((first, entries)) = spool.read(from, budget).unwrap() {
            from = first + entries.len() as u64;
            for (i, e) in entries.into_iter().enumerate() {
                seqs.push(first + i as u64);
                match e {
                    Entry::Report(r) => reports.push(r.time_ms - 1000),
                    Entry::Gap(g) => gaps.push(g),
                }
            }
        }
        (seqs, reports, gaps)
    }

    fn lost(gaps: &[Gap]) -> u64 {
        gaps.iter().map(|g| g.reports).sum()
    }

    /// Overwrite the segment at `path` with `edit` applied to its bytes.
    fn damage(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
        let mut data = std::fs::read(path).unwrap();
        edit(&mut data);
        std::fs::write(path, data).unwrap();
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
    fn a_report_too_large_to_ship_is_replaced_by_an_unknown_report_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 64 << 20).unwrap();
        let mut big = report(1);
        big.samples = vec![sandglass_core::report::Sample {
            name: "x".repeat(9 << 20),
            value: 1.0,
            kind: sandglass_core::report::MetricKind::Gauge,
            unit: String::new(),
            labels: Vec::new(),
        }];
        spool.append_report(&big).unwrap();
        let (_, entries) = spool.read(1, ALL).unwrap().unwrap();
        let Entry::Report(replaced) = &entries[0] else {
            panic!("{entries:?}")
        };
        assert_eq!(
            replaced.status.level,
            sandglass_core::report::Level::Unknown
        );
        assert!(
            replaced
                .status
                .text
                .contains("exceeds the largest entry the spool ships"),
            "{}",
            replaced.status.text
        );
        assert!(replaced.samples.is_empty());
        assert_eq!((replaced.service.as_str(), replaced.time_ms), ("svc", 1001));
    }

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

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
