//! `put-samples`: samples packed in one buffer ([`sandglass_abi::packed`]),
//! copied out of the plugin once and added to the collection `collect`
//! returns. Counted against the output caps before a string is allocated:
//! a first pass over the buffer adds up what its samples cost, a second
//! builds them only if they fit.

use crate::abi::wit;
use crate::failure::RunFailure;
use crate::output::{self, Output};
use sandglass_abi::packed::{Malformed, Reader};
use sandglass_core::limits::Limits;

/// What a run has put so far.
#[derive(Default)]
pub struct PutSamples {
    samples: Vec<wit::Sample>,
    /// Their cost against `max_output_bytes`.
    cost: u64,
    /// A put that broke a cap or was malformed: the run's failure, whatever
    /// `collect` returns after it.
    failed: Option<RunFailure>,
}

impl PutSamples {
    /// Take the samples in `packed`; the error, also kept as the run's
    /// failure, is what the plugin is told.
    pub fn put(&mut self, packed: &[u8], limits: &Limits) -> Result<(), String> {
        if let Some(failed) = &self.failed {
            return Err(failed.to_string());
        }
        self.take(packed, limits).map_err(|failed| {
            let text = failed.to_string();
            self.failed = Some(failed);
            text
        })
    }

    fn take(&mut self, packed: &[u8], limits: &Limits) -> Result<(), RunFailure> {
        let malformed = |e: Malformed| RunFailure::Plugin(e.to_string());
        let mut reader = Reader::new(packed).map_err(malformed)?;
        let count = self.samples.len() + reader.samples_left() as usize;
        if count > limits.max_samples {
            return Err(RunFailure::TooManySamples {
                count,
                limit: limits.max_samples,
            });
        }
        let mut values = Vec::new();
        let mut cost = self.cost;
        while let Some((family, _)) = reader.next_sample(&mut values).map_err(malformed)? {
            let labels = family.keys.iter().copied().zip(values.iter().copied());
            cost += output::sample_cost(family.name, family.unit, labels);
        }
        if cost > limits.max_output_bytes.0 {
            return Err(RunFailure::OutputBytes {
                size: cost,
                limit: limits.max_output_bytes,
            });
        }
        let mut reader = Reader::new(packed).map_err(malformed)?;
        self.samples.reserve(reader.samples_left() as usize);
        while let Some((family, value)) = reader.next_sample(&mut values).map_err(malformed)? {
            let labels = family.keys.iter().zip(&values);
            self.samples.push(wit::Sample {
                name: family.name.to_owned(),
                value,
                kind: match family.kind {
                    0 => wit::MetricKind::Gauge,
                    _ => wit::MetricKind::Counter,
                },
                unit: family.unit.to_owned(),
                labels: labels
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            });
        }
        self.cost = cost;
        Ok(())
    }

    /// The run's output: what `collect` returned with the samples put
    /// first, checked against the caps as one collection.
    pub fn finish(
        self,
        returned: Result<wit::Collection, String>,
        limits: &Limits,
    ) -> Result<Output, RunFailure> {
        if let Some(failed) = self.failed {
            return Err(failed);
        }
        let mut collection = returned.map_err(|message| output::plugin_error(message, limits))?;
        let mut samples = self.samples;
        samples.append(&mut collection.samples);
        collection.samples = samples;
        output::check(collection, limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandglass_abi::packed::{SampleRef, encode};
    use sandglass_core::units::ByteSize;

    fn packed(count: usize, label: &str) -> Vec<u8> {
        let labels = vec![("k".to_owned(), label.to_owned())];
        encode((0..count).map(|i| SampleRef {
            kind: (i % 2) as u8,
            name: "x",
            unit: "u",
            value: i as f64,
            labels: &labels,
        }))
    }

    fn returned(samples: usize) -> Result<wit::Collection, String> {
        Ok(wit::Collection {
            samples: (0..samples)
                .map(|_| wit::Sample {
                    name: "listed".into(),
                    value: 9.0,
                    kind: wit::MetricKind::Gauge,
                    unit: String::new(),
                    labels: Vec::new(),
                })
                .collect(),
            status: wit::Status {
                level: wit::Level::Ok,
                text: "fine".into(),
            },
            state: None,
        })
    }

    #[test]
    fn put_samples_come_first_and_count_like_listed_ones() {
        let limits = Limits::default();
        let mut put = PutSamples::default();
        put.put(&packed(3, "v"), &limits).unwrap();
        put.put(&packed(1, "w"), &limits).unwrap();
        let output = put.finish(returned(1), &limits).unwrap();
        let names: Vec<_> = output.samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["x", "x", "x", "x", "listed"]);
        assert_eq!(output.samples[1].labels, [("k".to_owned(), "v".to_owned())]);
        assert_eq!(output.samples[3].labels, [("k".to_owned(), "w".to_owned())]);
        assert_eq!(output.samples[2].value, 2.0);

        // The same caps as listed samples: count, then bytes.
        let limits = Limits {
            max_samples: 4,
            ..Limits::default()
        };
        let mut put = PutSamples::default();
        put.put(&packed(3, "v"), &limits).unwrap();
        let err = put.put(&packed(2, "v"), &limits).unwrap_err();
        assert!(err.contains('5') && err.contains('4'), "{err}");
        // Once failed, the run fails, whatever collect returns.
        assert!(matches!(
            put.finish(returned(0), &limits),
            Err(RunFailure::TooManySamples { count: 5, limit: 4 })
        ));
        let limits = Limits {
            max_output_bytes: ByteSize(1000),
            ..Limits::default()
        };
        let mut put = PutSamples::default();
        assert!(put.put(&packed(1, &"y".repeat(2000)), &limits).is_err());
        assert!(matches!(
            put.finish(returned(0), &limits),
            Err(RunFailure::OutputBytes { .. })
        ));
        // Put samples and listed ones together over the cap are refused too.
        let limits = Limits {
            max_samples: 3,
            ..Limits::default()
        };
        let mut put = PutSamples::default();
        put.put(&packed(2, "v"), &limits).unwrap();
        assert!(matches!(
            put.finish(returned(2), &limits),
            Err(RunFailure::TooManySamples { count: 4, limit: 3 })
        ));
    }

    #[test]
    fn a_malformed_buffer_fails_the_run_naming_it() {
        let limits = Limits::default();
        let mut put = PutSamples::default();
        let mut bytes = packed(2, "v");
        bytes.truncate(bytes.len() - 1);
        let err = put.put(&bytes, &limits).unwrap_err();
        assert!(err.contains("malformed packed samples"), "{err}");
        assert!(matches!(
            put.finish(returned(0), &limits),
            Err(RunFailure::Plugin(text)) if text.contains("the buffer ends")
        ));
    }
}
