//! One record of the spool: its bytes on disk (header, checksum, payload)
//! and the entry it holds.

use super::segment::Segment;
use anyhow::Context;
use sandglass_core::report::{Report, Status};
use sandglass_protocol::{DEFAULT_MAX_FRAME, Entry, Gap};
use std::os::unix::fs::FileExt;

pub(super) const HEADER: usize = 25;
/// A record above this is damage, not data (reports are capped far below).
const MAX_PAYLOAD: u32 = 64 << 20;
pub(super) const KIND_REPORT: u8 = 0;
pub(super) const KIND_GAP: u8 = 1;

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
pub(super) struct Record {
    pub(super) seq: u64,
    pub(super) offset: u64,
    pub(super) len: u32,
    pub(super) time_ms: u64,
    pub(super) kind: u8,
}

impl Record {
    /// Bytes on disk, header included.
    pub(super) fn size(&self) -> u64 {
        HEADER as u64 + u64::from(self.len)
    }

    /// What it counts for in a batch's bytes.
    pub(super) fn cost(&self) -> u64 {
        u64::from(self.len) + ENTRY_OVERHEAD
    }
}

/// Append the bytes of one record to `out`: header, checksum and payload
/// (see the module doc of the spool for the layout).
pub(super) fn encode_into(out: &mut Vec<u8>, seq: u64, time_ms: u64, kind: u8, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&time_ms.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The MessagePack of `report`, or of an UNKNOWN report in its place if it
/// is over [`MAX_ENTRY_BYTES`].
pub(super) fn shippable(report: &Report) -> anyhow::Result<Vec<u8>> {
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
pub(super) fn oversized(record: &Record, max: u64) -> Gap {
    let reason = format!(
        "entry {} of {} bytes does not fit in a batch of at most {max} bytes (the receiver's max_frame); the agent gave it up",
        record.seq, record.len
    );
    tracing::warn!("{reason}");
    Gap {
        reports: u64::from(record.kind == KIND_REPORT),
        first_ms: record.time_ms,
        last_ms: record.time_ms,
        reason,
    }
}

pub(super) fn read_entry(segment: &Segment, record: &Record) -> anyhow::Result<Entry> {
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

/// The valid record at the start of `data`, if there is one: whole, passing
/// its checksum, numbered `above` or a little higher.
pub(super) fn parse_record(data: &[u8], offset: u64, above: u64) -> Option<Record> {
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
    use crate::spool::Spool;
    use crate::spool::testing::*;

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
}
