//! A batch as the writer takes it: each report's samples already split, on
//! the agent's connection, into the series they belong to and their values
//! (the layout the store keeps, see [`super::samples`]).
//!
//! Why on the connection: the writer is one thread for the whole fleet, and
//! comparing a report's names and labels with its service's layout, then
//! freeing them, was a third of its time (the strings lie scattered over
//! the heap of the thread that decoded them). A connection does it while
//! the decoded frame is still in its cache, on whichever core runs it, and
//! frees the strings where they were allocated; a report whose series are
//! those of the connection's previous report of the service shares that
//! report's series, so the writer recognizes its layout by pointer.

use super::samples::SeriesDesc;
use sandglass_core::report::{Level, Report, Sample};
use sandglass_protocol::{Entry, Gap, ReportBatch};
use std::collections::HashMap;
use std::sync::Arc;

/// The series of one report, in report order; shared by the reports that
/// have the same.
pub type Series = Arc<[SeriesDesc]>;

/// Services per connection whose series are remembered: more than any
/// agent runs, and a bound on what a peer sending ever new names can make
/// the receiver keep (past it, reports are prepared without sharing).
const REMEMBERED_SERVICES: usize = 256;

/// A batch ready for the writer: the batch's numbers and its entries.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub seq: u64,
    pub entries: Vec<PreparedEntry>,
    /// As in [`ReportBatch::settled`].
    pub settled: u64,
}

impl Prepared {
    /// The number of the batch's last entry (what the Ack carries).
    pub fn last_seq(&self) -> u64 {
        self.seq + (self.entries.len() as u64).saturating_sub(1)
    }
}

/// One entry of a prepared batch.
#[derive(Clone, Debug)]
pub enum PreparedEntry {
    Report(PreparedReport),
    Gap(Gap),
}

/// A report with its samples as series and values. The plugin name and
/// the run's cost are not stored, so they are not kept.
#[derive(Clone, Debug)]
pub struct PreparedReport {
    pub service: String,
    pub time_ms: u64,
    pub level: Level,
    pub text: String,
    pub series: Series,
    /// Little-endian f64 per series, as `reports.samples` stores them.
    pub values: Vec<u8>,
}

impl PreparedReport {
    /// The report's samples, rebuilt (for triggers, which judge samples).
    pub fn samples(&self) -> Vec<Sample> {
        self.series
            .iter()
            .zip(self.values.chunks_exact(8))
            .map(|(d, v)| d.with(f64::from_le_bytes(v.try_into().expect("8 bytes"))))
            .collect()
    }
}

/// One connection's newest series per service.
#[derive(Default)]
pub struct SeriesCache(HashMap<String, Series>);

impl SeriesCache {
    /// Split every report of `batch` into series and values.
    pub fn prepare(&mut self, batch: ReportBatch) -> Prepared {
        Prepared {
            seq: batch.seq,
            settled: batch.settled,
            entries: batch
                .entries
                .into_iter()
                .map(|entry| match entry {
                    Entry::Report(report) => PreparedEntry::Report(self.prepare_report(report)),
                    Entry::Gap(gap) => PreparedEntry::Gap(gap),
                })
                .collect(),
        }
    }

    fn prepare_report(&mut self, report: Report) -> PreparedReport {
        let values = report
            .samples
            .iter()
            .flat_map(|s| s.value.to_le_bytes())
            .collect();
        let series = match self.0.get(&report.service) {
            Some(known) if describe_all(known, &report.samples) => known.clone(),
            _ => {
                let fresh: Series = report.samples.into_iter().map(SeriesDesc::from).collect();
                if self.0.len() < REMEMBERED_SERVICES || self.0.contains_key(&report.service) {
                    self.0.insert(report.service.clone(), fresh.clone());
                }
                fresh
            }
        };
        PreparedReport {
            service: report.service,
            time_ms: report.time_ms,
            level: report.status.level,
            text: report.status.text,
            series,
            values,
        }
    }
}

/// Whether `series` are exactly the series of `samples`, in order.
fn describe_all(series: &[SeriesDesc], samples: &[Sample]) -> bool {
    series.len() == samples.len() && series.iter().zip(samples).all(|(d, s)| d.describes(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_core::report::{Cost, MetricKind, Status};

    fn report(service: &str, names: &[&str], first: f64) -> Entry {
        Entry::Report(Report {
            service: service.into(),
            plugin: "p".into(),
            time_ms: 7,
            status: Status::unknown("why"),
            samples: names
                .iter()
                .enumerate()
                .map(|(i, name)| Sample {
                    name: (*name).into(),
                    value: first + i as f64,
                    kind: MetricKind::Gauge,
                    unit: "u".into(),
                    labels: vec![("k".into(), (*name).into())],
                })
                .collect(),
            cost: Cost::default(),
        })
    }

    fn prepared_reports(cache: &mut SeriesCache, entries: Vec<Entry>) -> Vec<PreparedReport> {
        let batch = ReportBatch {
            seq: 1,
            entries,
            settled: 0,
        };
        cache
            .prepare(batch)
            .entries
            .into_iter()
            .map(|e| match e {
                PreparedEntry::Report(r) => r,
                PreparedEntry::Gap(g) => panic!("a report, not {g:?}"),
            })
            .collect()
    }

    #[test]
    fn a_prepared_report_gives_back_exactly_the_samples_sent() {
        let sent = report("svc", &["a", "b", "a"], f64::NAN);
        let Entry::Report(want) = sent.clone() else {
            unreachable!()
        };
        let got = prepared_reports(&mut SeriesCache::default(), vec![sent]).remove(0);
        assert_eq!(
            (
                got.service.as_str(),
                got.time_ms,
                got.level,
                got.text.as_str()
            ),
            ("svc", 7, Level::Unknown, "why")
        );
        let samples = got.samples();
        assert_eq!(samples.len(), 3);
        for (g, w) in samples.iter().zip(&want.samples) {
            assert_eq!(
                (&g.name, g.kind, &g.unit, &g.labels),
                (&w.name, w.kind, &w.unit, &w.labels)
            );
            assert!(g.value == w.value || (g.value.is_nan() && w.value.is_nan()));
        }
    }

    #[test]
    fn reports_with_the_series_of_the_last_one_share_them_and_a_change_is_seen() {
        let mut cache = SeriesCache::default();
        let first = prepared_reports(
            &mut cache,
            vec![
                report("svc", &["a", "b"], 1.0),
                report("other", &["a"], 1.0),
            ],
        );
        let again = prepared_reports(&mut cache, vec![report("svc", &["a", "b"], 5.0)]);
        assert!(Arc::ptr_eq(&first[0].series, &again[0].series));
        assert!(!Arc::ptr_eq(&first[0].series, &first[1].series));
        assert_eq!(again[0].samples()[1].value, 6.0);
        let changed = prepared_reports(&mut cache, vec![report("svc", &["a", "c"], 1.0)]);
        assert!(!Arc::ptr_eq(&first[0].series, &changed[0].series));
        assert_eq!(changed[0].samples()[1].name, "c");
        let back = prepared_reports(&mut cache, vec![report("svc", &["a", "c"], 1.0)]);
        assert!(Arc::ptr_eq(&changed[0].series, &back[0].series));
    }

    #[test]
    fn a_peer_sending_ever_new_services_cannot_grow_the_cache_without_bound() {
        let mut cache = SeriesCache::default();
        for i in 0..REMEMBERED_SERVICES + 10 {
            let got = prepared_reports(&mut cache, vec![report(&format!("s{i}"), &["a"], 1.0)]);
            assert_eq!(got[0].samples()[0].name, "a");
        }
        assert_eq!(cache.0.len(), REMEMBERED_SERVICES);
    }
}
