//! # Sandglass core
//!
//! The vocabulary every other crate speaks, with no I/O framework: the
//! protocol, the runtime, the agent and the receiver all depend on it, and
//! it depends on none of them.
//!
//! Layout:
//! - [`report`]: what a plugin run produces (samples, status, cost);
//! - [`limits`]: a run's fuel, deadline, memory and output limits, and the
//!   overrides configuration and schedules give;
//! - [`units`]: human durations and sizes (`2s`, `32MiB`);
//! - [`names`]: what a service, plugin or host may be called;
//! - [`render`]: reports as text for people;
//! - [`text`]: escaping text from plugins and peers for terminals and logs;
//! - [`config`]: TOML loading and parameter values, for both daemons;
//! - [`time`], [`hash`], [`files`]: Unix milliseconds, SHA-256, atomic file
//!   replacement;
//! - [`wire_struct!`]: structs that travel as MessagePack arrays and decode
//!   tolerantly;
//! - [`ABI_VERSION`]: the collector ABI version, from `wit/collector.wit`;
//!   [`plugin_abi`]: what a plugin must export and may import for it.

#[macro_use]
mod wire;

pub mod config;
pub mod files;
pub mod hash;
pub mod limits;
pub mod names;
pub mod plugin_abi;
pub mod render;
pub mod report;
pub mod text;
pub mod time;
pub mod units;

pub use sandglass_abi::ABI_VERSION;
