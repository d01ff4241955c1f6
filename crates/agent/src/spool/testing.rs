//! Helpers the spool's unit tests share.

use super::{Budget, Recovery, Spool};
use sandglass_core::report::{Cost, Report, Status};
use sandglass_protocol::{Entry, Gap};
use std::path::Path;

pub(super) fn report(n: u64) -> Report {
    Report {
        service: "svc".into(),
        plugin: "p".into(),
        time_ms: 1000 + n,
        status: Status::unknown(format!("run {n} {}", "x".repeat(200))),
        samples: Vec::new(),
        cost: Cost::default(),
    }
}

pub(super) const ALL: Budget = Budget {
    entries: 100,
    bytes: u64::MAX,
};

pub(super) fn numbers(entries: &[Entry]) -> Vec<u64> {
    entries
        .iter()
        .map(|e| match e {
            Entry::Report(r) => r.time_ms - 1000,
            Entry::Gap(g) => 1_000_000 + g.reports,
        })
        .collect()
}

/// A spool of at most `max` bytes in `dir` holding reports 1..=`n`.
pub(super) fn filled(dir: &Path, max: u64, n: u64) -> Spool {
    let (mut spool, recovery) = Spool::open(dir, max).unwrap();
    assert_eq!(recovery, Recovery::default(), "a new spool is empty");
    for i in 1..=n {
        assert_eq!(spool.append_report(&report(i)).unwrap(), i);
    }
    spool
}

/// Everything the spool would send: the entry numbers, the report
/// numbers, and the gap entries.
pub(super) fn drain(spool: &Spool, budget: Budget) -> (Vec<u64>, Vec<u64>, Vec<Gap>) {
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

pub(super) fn lost(gaps: &[Gap]) -> u64 {
    gaps.iter().map(|g| g.reports).sum()
}

/// Overwrite the segment at `path` with `edit` applied to its bytes.
pub(super) fn damage(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut data = std::fs::read(path).unwrap();
    edit(&mut data);
    std::fs::write(path, data).unwrap();
}
