//! `--step`: one value per time bucket and series, so that a week of 10 s
//! samples reads as a few hundred lines.
//!
//! Buckets are aligned to multiples of the step since the Unix epoch (a
//! `1h` step starts on the hour in UTC), so two queries over overlapping
//! ranges agree on the buckets they share. A series is one (host, service,
//! metric, labels): two CPUs or two disks are never averaged together.

use super::Point;
use std::collections::BTreeMap;

/// How a bucket's samples become its one value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Agg {
    #[default]
    Avg,
    Min,
    Max,
}

type Series = (u64, String, String, String, Vec<(String, String)>);

struct Bucket {
    first: Point,
    sum: f64,
    min: f64,
    max: f64,
    count: u64,
}

/// The start of the bucket of `time_ms`.
pub fn bucket_start(time_ms: u64, step_ms: u64) -> u64 {
    time_ms - time_ms % step_ms.max(1)
}

/// One point per bucket and series, at the bucket's start, ordered by time
/// and then series; each carries how many samples it stands for.
pub fn aggregate(points: Vec<Point>, step_ms: u64, agg: Agg) -> Vec<Point> {
    let mut buckets: BTreeMap<Series, Bucket> = BTreeMap::new();
    for p in points {
        let key = (
            bucket_start(p.time_ms, step_ms),
            p.host.clone(),
            p.service.clone(),
            p.sample.name.clone(),
            p.sample.labels.clone(),
        );
        let v = p.sample.value;
        buckets
            .entry(key)
            .and_modify(|b| {
                b.sum += v;
                b.min = b.min.min(v);
                b.max = b.max.max(v);
                b.count += 1;
            })
            .or_insert(Bucket {
                first: p,
                sum: v,
                min: v,
                max: v,
                count: 1,
            });
    }
    buckets
        .into_iter()
        .map(|((start, ..), b)| {
            let mut p = b.first;
            p.time_ms = start;
            p.sample.value = match agg {
                Agg::Avg => b.sum / b.count as f64,
                Agg::Min => b.min,
                Agg::Max => b.max,
            };
            p.count = Some(b.count);
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_core::report::{MetricKind, Sample};

    fn point(time_ms: u64, host: &str, cpu: &str, value: f64) -> Point {
        Point {
            time_ms,
            host: host.into(),
            service: "cpu".into(),
            sample: Sample {
                name: "busy".into(),
                value,
                kind: MetricKind::Gauge,
                unit: "%".into(),
                labels: vec![("cpu".into(), cpu.into())],
            },
            count: None,
        }
    }

    fn values(points: &[Point]) -> Vec<(u64, &str, &str, f64, u64)> {
        points
            .iter()
            .map(|p| {
                (
                    p.time_ms,
                    p.host.as_str(),
                    p.sample.labels[0].1.as_str(),
                    p.sample.value,
                    p.count.unwrap(),
                )
            })
            .collect()
    }

    fn sample_points() -> Vec<Point> {
        vec![
            point(60_000, "a", "cpu0", 10.0),
            point(60_000, "a", "cpu1", 90.0),
            point(60_000, "b", "cpu0", 50.0),
            point(70_000, "a", "cpu0", 20.0),
            point(119_999, "a", "cpu0", 60.0),
            point(120_000, "a", "cpu0", 5.0),
        ]
    }

    #[test]
    fn buckets_are_aligned_to_the_step() {
        assert_eq!(bucket_start(119_999, 60_000), 60_000);
        assert_eq!(bucket_start(120_000, 60_000), 120_000);
        assert_eq!(bucket_start(7, 0), 7, "a zero step is one bucket per ms");
    }

    #[test]
    fn each_series_is_aggregated_alone_per_bucket() {
        let avg = aggregate(sample_points(), 60_000, Agg::Avg);
        assert_eq!(
            values(&avg),
            [
                (60_000, "a", "cpu0", 30.0, 3),
                (60_000, "a", "cpu1", 90.0, 1),
                (60_000, "b", "cpu0", 50.0, 1),
                (120_000, "a", "cpu0", 5.0, 1),
            ]
        );
        assert_eq!(avg[0].sample.unit, "%", "kind and unit are kept");
        let min = aggregate(sample_points(), 60_000, Agg::Min);
        assert_eq!(min[0].sample.value, 10.0);
        let max = aggregate(sample_points(), 60_000, Agg::Max);
        assert_eq!(max[0].sample.value, 60.0);
    }

    #[test]
    fn a_step_wider_than_the_range_gives_one_point_per_series() {
        let day = aggregate(sample_points(), 86_400_000, Agg::Max);
        assert_eq!(
            values(&day),
            [
                (0, "a", "cpu0", 60.0, 4),
                (0, "a", "cpu1", 90.0, 1),
                (0, "b", "cpu0", 50.0, 1),
            ]
        );
    }
}
