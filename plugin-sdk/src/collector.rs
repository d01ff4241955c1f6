//! The [`Collector`] trait and the plain-Rust types around the ABI.

use crate::bindings::sandglass::collector::types as abi;
use crate::error::{Error, Result};

/// Check result level, as in a check_mk local check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Crit,
    Unknown,
}

/// A collector plugin. Implement it on a unit struct and pass that struct to
/// [`crate::export_collector!`].
pub trait Collector {
    /// Static facts about the plugin. Must not read files: `agent plugin info`
    /// calls it without running a collection.
    fn describe() -> Description;

    /// Collect once: read what you need, add samples to `ctx`, optionally set
    /// a status and a state for the next run. An `Err` becomes an UNKNOWN
    /// status with the error's text.
    fn collect(ctx: &mut Context) -> Result<()>;
}

/// A metric the plugin may emit, for documentation.
#[derive(Clone, Debug)]
pub struct Metric {
    name: String,
    kind: abi::MetricKind,
    unit: String,
    help: String,
}

impl Metric {
    /// A gauge: a value that goes up and down.
    pub fn gauge(name: &str, unit: &str, help: &str) -> Self {
        Self::new(name, abi::MetricKind::Gauge, unit, help)
    }

    /// A counter: a monotonically increasing total.
    pub fn counter(name: &str, unit: &str, help: &str) -> Self {
        Self::new(name, abi::MetricKind::Counter, unit, help)
    }

    fn new(name: &str, kind: abi::MetricKind, unit: &str, help: &str) -> Self {
        Metric {
            name: name.into(),
            kind,
            unit: unit.into(),
            help: help.into(),
        }
    }
}

/// What `describe` returns: name, version, grants, suggested interval, metrics.
#[derive(Clone, Debug)]
pub struct Description {
    inner: abi::Description,
}

impl Description {
    /// A plugin called `name` at `version`, suggesting a 60 s interval and
    /// needing nothing beyond `/proc`.
    pub fn new(name: &str, version: &str) -> Self {
        Description {
            inner: abi::Description {
                name: name.into(),
                version: version.into(),
                grants: Vec::new(),
                interval_seconds: 60,
                metrics: Vec::new(),
            },
        }
    }

    /// Suggested collection interval.
    pub fn interval_seconds(mut self, seconds: u32) -> Self {
        self.inner.interval_seconds = seconds;
        self
    }

    /// Ask for read-only `/sys`.
    pub fn needs_sys(mut self) -> Self {
        self.inner.grants.push(abi::Grant::Sys);
        self
    }

    /// Ask for read-only access to operator-chosen directories.
    pub fn needs_files(mut self) -> Self {
        self.inner.grants.push(abi::Grant::Files);
        self
    }

    /// Document a metric the plugin emits.
    pub fn metric(mut self, metric: Metric) -> Self {
        self.inner.metrics.push(abi::MetricInfo {
            name: metric.name,
            kind: metric.kind,
            unit: metric.unit,
            help: metric.help,
        });
        self
    }
}

/// One collection run: the parameters and previous state going in, samples,
/// status and new state coming out.
pub struct Context {
    params: Vec<(String, String)>,
    previous_state: Option<Vec<u8>>,
    samples: Vec<abi::Sample>,
    status: Option<abi::Status>,
    state: Option<Vec<u8>>,
}

impl Context {
    /// A context as the host would create it. Public so plugin tests can run
    /// `collect` natively on recorded input.
    pub fn new(params: Vec<(String, String)>, previous_state: Option<Vec<u8>>) -> Self {
        Context {
            params,
            previous_state,
            samples: Vec::new(),
            status: None,
            state: None,
        }
    }

    /// The value of parameter `key`, if the service configures it.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Parameter `key` parsed as `T`, or `default` when it is not set.
    pub fn param_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T> {
        match self.param(key) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| Error::new(format!("parameter {key}={text:?} is not valid"))),
        }
    }

    /// All parameters, in configuration order.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// What the previous run stored with [`Context::set_state`], if anything.
    pub fn previous_state(&self) -> Option<&[u8]> {
        self.previous_state.as_deref()
    }

    /// State to hand to the next run (and to keep across agent restarts).
    pub fn set_state(&mut self, state: Vec<u8>) {
        self.state = Some(state);
    }

    /// Add a gauge sample; chain `.unit(..)` and `.label(..)` on the result.
    pub fn gauge(&mut self, name: &str, value: f64) -> SampleBuilder<'_> {
        self.push(name, value, abi::MetricKind::Gauge)
    }

    /// Add a counter sample; chain `.unit(..)` and `.label(..)` on the result.
    pub fn counter(&mut self, name: &str, value: f64) -> SampleBuilder<'_> {
        self.push(name, value, abi::MetricKind::Counter)
    }

    fn push(&mut self, name: &str, value: f64, kind: abi::MetricKind) -> SampleBuilder<'_> {
        self.samples.push(abi::Sample {
            name: name.into(),
            value,
            kind,
            unit: String::new(),
            labels: Vec::new(),
        });
        SampleBuilder {
            sample: self.samples.last_mut().expect("just pushed"),
        }
    }

    /// Set the status. Without a call the status is OK with a sample count.
    pub fn status(&mut self, level: Level, text: impl Into<String>) {
        let level = match level {
            Level::Ok => abi::Level::Ok,
            Level::Warn => abi::Level::Warn,
            Level::Crit => abi::Level::Crit,
            Level::Unknown => abi::Level::Unknown,
        };
        self.status = Some(abi::Status {
            level,
            text: text.into(),
        });
    }

    /// Status OK with `text`.
    pub fn ok(&mut self, text: impl Into<String>) {
        self.status(Level::Ok, text);
    }

    /// Status WARN with `text`.
    pub fn warn(&mut self, text: impl Into<String>) {
        self.status(Level::Warn, text);
    }

    /// Status CRIT with `text`.
    pub fn crit(&mut self, text: impl Into<String>) {
        self.status(Level::Crit, text);
    }

    /// Set the status from `value` against check_mk-style levels: CRIT at or
    /// above `crit`, WARN at or above `warn`, else OK. The text is `text`,
    /// followed by `(warn at W)` / `(crit at C)` when a level is reached.
    /// Use `f64::INFINITY` for a level that is not set.
    pub fn status_by_levels(&mut self, value: f64, warn: f64, crit: f64, text: impl Into<String>) {
        let text = text.into();
        if value >= crit {
            self.crit(format!("{text} (crit at {crit})"));
        } else if value >= warn {
            self.warn(format!("{text} (warn at {warn})"));
        } else {
            self.ok(text);
        }
    }

    /// Samples added so far, as `(name, value, labels)`, for plugin tests.
    pub fn samples(&self) -> impl Iterator<Item = (&str, f64, &[(String, String)])> {
        self.samples
            .iter()
            .map(|s| (s.name.as_str(), s.value, s.labels.as_slice()))
    }

    /// The value of the first sample called `name` whose labels include all of
    /// `labels`, for plugin tests.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.value)
    }

    /// The status set so far, as `(level, text)`, for plugin tests.
    pub fn current_status(&self) -> Option<(Level, &str)> {
        self.status.as_ref().map(|s| {
            let level = match s.level {
                abi::Level::Ok => Level::Ok,
                abi::Level::Warn => Level::Warn,
                abi::Level::Crit => Level::Crit,
                abi::Level::Unknown => Level::Unknown,
            };
            (level, s.text.as_str())
        })
    }

    /// The state set for the next run, for plugin tests.
    pub fn next_state(&self) -> Option<&[u8]> {
        self.state.as_deref()
    }

    fn into_collection(mut self) -> std::result::Result<abi::Collection, String> {
        let status = self.status.take().unwrap_or_else(|| abi::Status {
            level: abi::Level::Ok,
            text: format!("{} samples", self.samples.len()),
        });
        Ok(abi::Collection {
            samples: put_samples(self.samples)?,
            status,
            state: self.state,
        })
    }
}

/// Refines the sample just added: unit and labels.
pub struct SampleBuilder<'a> {
    sample: &'a mut abi::Sample,
}

impl SampleBuilder<'_> {
    /// Set the unit (`bytes`, `seconds`, `percent`, ...).
    pub fn unit(self, unit: &str) -> Self {
        self.sample.unit = unit.into();
        self
    }

    /// Add a label.
    pub fn label(self, key: &str, value: &str) -> Self {
        self.sample.labels.push((key.into(), value.into()));
        self
    }
}

/// A lean collector hands its samples over packed in one buffer
/// (`put-samples`): one copy out of the plugin instead of one per string. The
/// WASI world has no `put-samples`: there they go in the collection.
fn put_samples(samples: Vec<abi::Sample>) -> std::result::Result<Vec<abi::Sample>, String> {
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    {
        use sandglass_abi::packed::{SampleRef, encode};
        let packed = encode(samples.iter().map(|s| SampleRef {
            kind: match s.kind {
                abi::MetricKind::Gauge => 0,
                abi::MetricKind::Counter => 1,
            },
            name: &s.name,
            unit: &s.unit,
            value: s.value,
            labels: &s.labels,
        }));
        crate::bindings::sandglass::collector::host::put_samples(&packed)?;
        Ok(Vec::new())
    }
    #[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
    Ok(samples)
}

/// A lean collector has no stderr: its panic message goes to the agent's log
/// at error level, where the host also takes it for the run's UNKNOWN text.
/// (Elsewhere the standard hook writes it to stderr, which the host reads.)
fn log_panics() {
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    std::panic::set_hook(Box::new(|info| crate::log::error(&info.to_string())));
}

/// Called by [`crate::export_collector!`]: `describe` through the ABI.
pub fn describe<C: Collector>() -> abi::Description {
    C::describe().inner
}

/// Called by [`crate::export_collector!`]: `collect` through the ABI.
pub fn collect<C: Collector>(
    params: Vec<(String, String)>,
    state: Option<Vec<u8>>,
) -> std::result::Result<abi::Collection, String> {
    log_panics();
    let mut ctx = Context::new(params, state);
    C::collect(&mut ctx).map_err(|e| e.to_string())?;
    ctx.into_collection()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_pick_the_worst_reached_and_say_which() {
        let status = |value: f64| {
            let mut ctx = Context::new(vec![], None);
            ctx.status_by_levels(value, 80.0, 90.0, "used");
            let (level, text) = ctx.current_status().unwrap();
            (level, text.to_owned())
        };
        assert_eq!(status(50.0), (Level::Ok, "used".into()));
        assert_eq!(status(80.0), (Level::Warn, "used (warn at 80)".into()));
        assert_eq!(status(95.0), (Level::Crit, "used (crit at 90)".into()));
    }

    #[test]
    fn default_status_counts_samples_and_param_errors_name_the_key() {
        let mut ctx = Context::new(vec![("warn".into(), "lots".into())], None);
        ctx.gauge("a", 1.0).unit("bytes").label("k", "v");
        assert_eq!(ctx.value("a", &[("k", "v")]), Some(1.0));
        let err = ctx.param_or("warn", 1.0).unwrap_err().to_string();
        assert!(err.contains("warn") && err.contains("lots"), "{err}");
        assert_eq!(ctx.param_or("absent", 7u32).unwrap(), 7);
        let collection = ctx.into_collection().unwrap();
        assert_eq!(collection.status.text, "1 samples");
        assert_eq!(collection.samples[0].unit, "bytes");
    }
}
