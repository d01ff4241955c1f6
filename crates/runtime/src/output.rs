//! What a run hands back, and what it may cost the host: the output account
//! (`max_output_bytes`), long texts cut with a marker, and the budget that
//! bounds wasmtime's copy of a result out of guest memory.
//!
//! Every byte a plugin hands the host counts: names, units, label keys and
//! values, the status or error text, and a fixed cost per sample and per
//! label pair, so that a million empty labels are not free. The copy out of
//! guest memory happens before any of that can be counted, and strings may
//! alias the same guest bytes, so it is bounded separately: wasmtime's
//! host-call fuel is set from the same caps ([`lift_budget`]).

use super::abi::wit;
use super::failure::RunFailure;
use sandglass_core::limits::Limits;
use sandglass_core::report::{Level, MetricKind, Sample, Status};
use sandglass_core::text::truncate;

/// What a successful run returned.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub samples: Vec<Sample>,
    pub status: Status,
    /// The state for the next run (none: keep none).
    pub state: Option<Vec<u8>>,
}

/// What a sample costs beside its strings (value, kind, list headers).
const SAMPLE_COST: u64 = 16;

/// What a label pair costs beside its key and value.
const LABEL_COST: u64 = 8;

/// Status and error texts are one human line: longer ones are cut here.
const TEXT_MAX: usize = 1024;

/// Headroom in the lift budget for what is not output: WASI calls (paths,
/// stdout writes of at most 4 KiB), log messages (16 KiB per run at most).
const LIFT_HEADROOM: usize = 64 << 10;

/// Bytes wasmtime may copy out of a plugin in one call: a result as large as
/// the caps allow, with every label pair as cheap as the account lets it be
/// (host-side, a pair is two `String`s whatever their length), every sample
/// at its host size, and the state. Wasmtime's default is 128 MiB per call,
/// which strings aliasing the same guest bytes reach from a few MiB of guest
/// memory.
pub(super) fn lift_budget(limits: &Limits) -> usize {
    let output = usize::try_from(limits.max_output_bytes.0).unwrap_or(usize::MAX);
    let state = usize::try_from(limits.max_state_bytes.0).unwrap_or(usize::MAX);
    let pairs = output / LABEL_COST as usize;
    output
        .saturating_add(pairs.saturating_mul(size_of::<(String, String)>()))
        .saturating_add(limits.max_samples.saturating_mul(size_of::<wit::Sample>()))
        .saturating_add(state)
        .saturating_add(LIFT_HEADROOM)
}

/// Whether `err` is wasmtime refusing to copy more than [`lift_budget`] out
/// of the guest. Wasmtime's error type for it is private: its text is the
/// only mark (the hostile-plugin tests fail if that text changes).
pub(super) fn is_lift_refusal(err: &wasmtime::Error) -> bool {
    format!("{err:#}").contains("fuel allocated for hostcalls has been exhausted")
}

/// `text`, cut to at most `max` bytes (and [`TEXT_MAX`]) with a marker
/// saying how long it was.
pub(super) fn cap_text(text: String, max: usize) -> String {
    let max = max.min(TEXT_MAX);
    if text.len() <= max {
        return text;
    }
    format!(
        "{}… [truncated from {} bytes]",
        truncate(&text, max),
        text.len()
    )
}

/// What one sample costs against `max_output_bytes`.
pub(super) fn sample_cost<'s>(
    name: &str,
    unit: &str,
    labels: impl Iterator<Item = (&'s str, &'s str)>,
) -> u64 {
    let labels: u64 = labels
        .map(|(k, v)| LABEL_COST + (k.len() + v.len()) as u64)
        .sum();
    SAMPLE_COST + (name.len() + unit.len()) as u64 + labels
}

/// What `collection` costs against `max_output_bytes`.
fn cost(collection: &wit::Collection) -> u64 {
    let sample = |s: &wit::Sample| {
        let labels = s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        sample_cost(&s.name, &s.unit, labels)
    };
    collection.status.text.len() as u64 + collection.samples.iter().map(sample).sum::<u64>()
}

/// Check a collection against the output and state caps and convert it; an
/// over-long status text is cut, not refused.
pub(super) fn check(
    mut collection: wit::Collection,
    limits: &Limits,
) -> Result<Output, RunFailure> {
    let count = collection.samples.len();
    if count > limits.max_samples {
        return Err(RunFailure::TooManySamples {
            count,
            limit: limits.max_samples,
        });
    }
    collection.status.text = cap_text(collection.status.text, text_max(limits));
    let size = cost(&collection);
    if size > limits.max_output_bytes.0 {
        return Err(RunFailure::OutputBytes {
            size,
            limit: limits.max_output_bytes,
        });
    }
    if let Some(state) = &collection.state
        && state.len() as u64 > limits.max_state_bytes.0
    {
        return Err(RunFailure::State {
            size: state.len() as u64,
            limit: limits.max_state_bytes,
        });
    }
    Ok(Output {
        samples: collection
            .samples
            .into_iter()
            .map(|s| Sample {
                name: s.name,
                value: s.value,
                kind: kind(s.kind),
                unit: s.unit,
                labels: s.labels,
            })
            .collect(),
        status: Status {
            level: match collection.status.level {
                wit::Level::Ok => Level::Ok,
                wit::Level::Warn => Level::Warn,
                wit::Level::Crit => Level::Crit,
                wit::Level::Unknown => Level::Unknown,
            },
            text: collection.status.text,
        },
        state: collection.state,
    })
}

/// The error a plugin returned, cut like a status text.
pub(super) fn plugin_error(message: String, limits: &Limits) -> RunFailure {
    RunFailure::Plugin(cap_text(message, text_max(limits)))
}

/// A status or error text may take at most this much of the output budget.
fn text_max(limits: &Limits) -> usize {
    usize::try_from(limits.max_output_bytes.0).unwrap_or(usize::MAX)
}

pub(super) fn kind(k: wit::MetricKind) -> MetricKind {
    match k {
        wit::MetricKind::Gauge => MetricKind::Gauge,
        wit::MetricKind::Counter => MetricKind::Counter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collection(samples: Vec<wit::Sample>, text: &str) -> wit::Collection {
        wit::Collection {
            samples,
            status: wit::Status {
                level: wit::Level::Ok,
                text: text.into(),
            },
            state: None,
        }
    }

    fn sample(labels: usize) -> wit::Sample {
        wit::Sample {
            name: String::new(),
            value: 0.0,
            kind: wit::MetricKind::Gauge,
            unit: String::new(),
            labels: vec![(String::new(), String::new()); labels],
        }
    }

    #[test]
    fn empty_strings_are_not_free() {
        let limits = Limits::default();
        // 1000 samples of 150 empty label pairs: no string bytes at all.
        let bomb = collection((0..1000).map(|_| sample(150)).collect(), "");
        assert_eq!(
            check(bomb, &limits).unwrap_err(),
            RunFailure::OutputBytes {
                size: 1000 * (SAMPLE_COST + 150 * LABEL_COST),
                limit: limits.max_output_bytes
            }
        );
        let fine = collection(vec![sample(2)], "ok");
        assert!(check(fine, &limits).is_ok());
    }

    #[test]
    fn long_status_and_error_texts_are_cut_with_a_marker() {
        let limits = Limits::default();
        let long = "é".repeat(100_000);
        let output = check(collection(vec![], &long), &limits).unwrap();
        assert!(
            output
                .status
                .text
                .ends_with("… [truncated from 200000 bytes]"),
            "{}",
            output.status.text
        );
        assert!(output.status.text.len() < TEXT_MAX + 40);
        let RunFailure::Plugin(text) = plugin_error("x".repeat(5000), &limits) else {
            panic!("not a plugin error");
        };
        assert_eq!(
            text,
            format!("{}… [truncated from 5000 bytes]", "x".repeat(TEXT_MAX))
        );
        assert_eq!(cap_text("short".into(), 3), "sho… [truncated from 5 bytes]");
    }

    #[test]
    fn the_lift_budget_covers_every_result_within_the_caps() {
        let limits = Limits::default();
        let budget = lift_budget(&limits);
        // The most label pairs the account allows, each as a host pair.
        let pairs = limits.max_output_bytes.0 as usize / LABEL_COST as usize;
        assert!(budget > pairs * size_of::<(String, String)>());
        assert!(budget > limits.max_samples * size_of::<wit::Sample>());
        // And far below wasmtime's default of 128 MiB.
        assert!(budget < 16 << 20, "{budget}");
    }
}
