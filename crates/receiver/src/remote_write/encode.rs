//! Stored reports as one Prometheus remote-write request (protocol 1.0):
//! a protobuf `WriteRequest`, snappy-compressed (block format).
//!
//! The protobuf is written by hand: the message is four small types (below),
//! all this side ever encodes, and a code generator or derive crate would
//! bring a build step or a proc-macro tree for ~60 lines.
//!
//! ```proto
//! message WriteRequest { repeated TimeSeries timeseries = 1; }
//! message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
//! message Label        { string name = 1; string value = 2; }
//! message Sample       { double value = 1; int64 timestamp = 2; }
//! ```

use crate::http::metrics::{SERVICE_LEVEL, series};
use crate::store::StoredReport;
use sandglass_core::report::Level;
use std::collections::BTreeMap;

/// A series' labels, sorted by name, `__name__` among them.
type Labels = Vec<(String, String)>;

/// Series and their (timestamp ms, value) points, in the order added.
#[derive(Debug, Default, PartialEq)]
pub struct Request {
    series: BTreeMap<Labels, Vec<(i64, f64)>>,
    samples: u64,
}

impl Request {
    /// Every sample of `report`, and its level as `sandglass_service_level`.
    pub fn add(&mut self, report: &StoredReport) {
        let time = report.time_ms as i64;
        let level = Level::parse(&report.level) as u8;
        let level_labels = vec![
            ("host".to_owned(), report.host.clone()),
            ("service".to_owned(), report.service.clone()),
        ];
        self.push(
            SERVICE_LEVEL.to_owned(),
            level_labels,
            time,
            f64::from(level),
        );
        for sample in &report.samples {
            let (name, labels) = series(&report.host, &report.service, sample);
            self.push(name, labels, time, sample.value);
        }
    }

    /// Samples `report` adds.
    pub fn samples_of(report: &StoredReport) -> u64 {
        report.samples.len() as u64 + 1
    }

    /// Samples added so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    fn push(&mut self, name: String, mut labels: Labels, time: i64, value: f64) {
        labels.push(("__name__".to_owned(), name));
        // Receivers want the labels of a series sorted by name.
        labels.sort();
        let points = self.series.entry(labels).or_default();
        points.push((time, value));
        self.samples += 1;
    }

    /// The snappy-compressed protobuf body.
    pub fn body(&self) -> Vec<u8> {
        snap::raw::Encoder::new()
            .compress_vec(&self.protobuf())
            .expect("snappy takes any input below 4 GiB")
    }

    fn protobuf(&self) -> Vec<u8> {
        let mut request = Vec::new();
        for (labels, points) in &self.series {
            let mut timeseries = Vec::new();
            for (name, value) in labels {
                let mut label = Vec::new();
                bytes_field(&mut label, 1, name.as_bytes());
                bytes_field(&mut label, 2, value.as_bytes());
                bytes_field(&mut timeseries, 1, &label);
            }
            let mut points = points.clone();
            // A series' samples go in time order (reports of one service
            // may be stored out of order after a failover).
            points.sort_by_key(|(time, _)| *time);
            for (time, value) in points {
                let mut sample = Vec::new();
                key(&mut sample, 1, 1);
                sample.extend_from_slice(&value.to_le_bytes());
                key(&mut sample, 2, 0);
                varint(&mut sample, time as u64);
                bytes_field(&mut timeseries, 2, &sample);
            }
            bytes_field(&mut request, 1, &timeseries);
        }
        request
    }
}

/// A field's key: its number and wire type (0 varint, 1 64-bit, 2 bytes).
fn key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire_type));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_core::report::{MetricKind, Sample};

    fn report(samples: Vec<Sample>, time_ms: u64) -> StoredReport {
        StoredReport {
            host: "h".into(),
            service: "s".into(),
            time_ms,
            level: "CRIT".into(),
            text: String::new(),
            samples,
        }
    }

    fn sample(name: &str, value: f64, labels: &[(&str, &str)]) -> Sample {
        Sample {
            name: name.into(),
            value,
            kind: MetricKind::Gauge,
            unit: String::new(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn varints_and_a_sample_encode_as_protobuf_does() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        // One series `m{host="h",service="s"}` with one point (1.5 at 2 ms),
        // bytes written out from the protobuf encoding rules.
        let mut request = Request::default();
        request.push("m".into(), vec![("service".into(), "s".into())], 2, 1.5);
        let label = |n: &str, v: &str| {
            let mut l = vec![0x0a, n.len() as u8];
            l.extend_from_slice(n.as_bytes());
            l.extend_from_slice(&[0x12, v.len() as u8]);
            l.extend_from_slice(v.as_bytes());
            l
        };
        let mut series = Vec::new();
        for l in [label("__name__", "m"), label("service", "s")] {
            series.extend_from_slice(&[0x0a, l.len() as u8]);
            series.extend_from_slice(&l);
        }
        let mut point = vec![0x09];
        point.extend_from_slice(&1.5f64.to_le_bytes());
        point.extend_from_slice(&[0x10, 0x02]);
        series.extend_from_slice(&[0x12, point.len() as u8]);
        series.extend_from_slice(&point);
        let mut expected = vec![0x0a, series.len() as u8];
        expected.extend_from_slice(&series);
        assert_eq!(request.protobuf(), expected);
        let unpacked = snap::raw::Decoder::new()
            .decompress_vec(&request.body())
            .unwrap();
        assert_eq!(unpacked, expected);
    }

    #[test]
    fn reports_become_series_with_the_metrics_names_and_the_level() {
        let mut request = Request::default();
        let cpu = |v| sample("cpu.busy", v, &[("cpu", "0"), ("host", "guest")]);
        let later = report(vec![cpu(2.0)], 2_000);
        let earlier = report(vec![cpu(1.0)], 1_000);
        request.add(&later);
        request.add(&earlier);
        assert_eq!(request.samples(), 4);
        assert_eq!(Request::samples_of(&later), 2);
        let labels = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let cpu_series = labels(&[
            ("__name__", "cpu_busy"),
            ("cpu", "0"),
            ("host", "h"),
            ("plugin_host", "guest"),
            ("service", "s"),
        ]);
        let level_series = labels(&[
            ("__name__", "sandglass_service_level"),
            ("host", "h"),
            ("service", "s"),
        ]);
        assert_eq!(
            request.series[&cpu_series],
            vec![(2_000, 2.0), (1_000, 1.0)]
        );
        assert_eq!(
            request.series[&level_series],
            vec![(2_000, 2.0), (1_000, 2.0)]
        );
        // On the wire a series' points are in time order: 1000 before 2000.
        // (field 2 varint: 1000 is e8 07, 2000 is d0 0f).
        let body = request.protobuf();
        let at = |timestamp: [u8; 3]| body.windows(3).position(|w| w == timestamp).unwrap();
        assert!(at([0x10, 0xe8, 0x07]) < at([0x10, 0xd0, 0x0f]));
    }
}
