//! What one plugin run produces, as the agent prints it and (later) ships it.

use serde::{Deserialize, Serialize};

/// How a sample's value behaves over time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    Gauge,
    Counter,
}

wire_struct! {
    /// One measured value.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Sample {
        pub name: String,
        pub value: f64,
        pub kind: MetricKind,
        /// Always serialized, empty or not: reports travel as MessagePack
        /// arrays, where a skipped field would shift the ones after it.
        pub unit: String,
        pub labels: Vec<(String, String)>,
    }
}

/// Check result level, ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Ok,
    Warn,
    Crit,
    Unknown,
}

impl Level {
    /// `OK`, `WARN`, `CRIT`, `UNKNOWN`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Crit => "CRIT",
            Level::Unknown => "UNKNOWN",
        }
    }

    /// The level `as_str` wrote; anything else is UNKNOWN.
    pub fn parse(text: &str) -> Level {
        match text {
            "OK" => Level::Ok,
            "WARN" => Level::Warn,
            "CRIT" => Level::Crit,
            _ => Level::Unknown,
        }
    }
}

wire_struct! {
    /// A service's status: level and one human line.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Status {
        pub level: Level,
        pub text: String,
    }
}

impl Status {
    /// An UNKNOWN status: the run did not produce a verdict, `text` says why.
    pub fn unknown(text: impl Into<String>) -> Self {
        Status {
            level: Level::Unknown,
            text: text.into(),
        }
    }
}

wire_struct! {
    /// What a run cost.
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct Cost {
        /// Wall-clock time of the run, including entering the sandbox, in µs.
        pub wall_micros: u64,
        /// Fuel units consumed (roughly wasm instructions).
        pub fuel: u64,
        /// Largest linear memory the plugin had, in bytes.
        pub peak_memory: u64,
    }
}

wire_struct! {
    /// The result of running one service once.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Report {
        pub service: String,
        pub plugin: String,
        /// Unix time in milliseconds when the run started.
        pub time_ms: u64,
        pub status: Status,
        pub samples: Vec<Sample>,
        pub cost: Cost,
    }
}
