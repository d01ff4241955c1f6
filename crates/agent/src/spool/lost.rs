//! Entries given up, counted for the gap entry that tells the receiver.

use super::record::{KIND_REPORT, Record, read_entry};
use super::segment::Segment;
use sandglass_protocol::{Entry, Gap};

/// Entries given up, tallied for one gap entry.
#[derive(Clone, Debug)]
pub(super) struct Lost {
    /// Reports given up now.
    pub(super) reports: u64,
    /// Reports that earlier gap entries, given up in turn, had counted:
    /// carried into the new gap, not counted as new losses.
    folded: u64,
    /// Times of the oldest and newest (u64::MAX and 0: none known yet).
    pub(super) first_ms: u64,
    pub(super) last_ms: u64,
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
    pub(super) fn reports(&mut self, n: u64, first_ms: u64, last_ms: u64) {
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

    pub(super) fn merge(&mut self, other: &Lost) {
        self.reports += other.reports;
        self.folded += other.folded;
        self.times(other.first_ms, other.last_ms);
    }

    pub(super) fn total(&self) -> u64 {
        self.reports + self.folded
    }

    pub(super) fn gap(&self, reason: String) -> Gap {
        Gap {
            reports: self.total(),
            first_ms: self.first_ms.min(self.last_ms),
            last_ms: self.last_ms,
            reason,
        }
    }
}

/// Count `record` into `lost`: a report as one, a gap entry by the reports
/// it counted.
pub(super) fn tally(segment: &Segment, record: &Record, lost: &mut Lost) {
    if record.kind == KIND_REPORT {
        lost.reports(1, record.time_ms, record.time_ms);
    } else if let Ok(Entry::Gap(gap)) = read_entry(segment, record) {
        lost.fold(&gap);
    }
}
