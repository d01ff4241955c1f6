//! # Sandglass host side
//!
//! Everything that runs natively: the plugin runtime that sandboxes collector
//! plugins, the agent's configuration and commands, and the report types.
//!
//! Layout:
//! - [`runtime`]: the sandbox. One wasmtime engine, compiled plugins cached on
//!   disk, a fresh store per run with fuel, deadline, memory and output limits,
//!   and the filesystem policy that keeps `/proc` secrets out of plugins
//!   ([`runtime::fs_policy`]).
//! - [`report`]: what a plugin run produces (samples, status, cost), as the agent
//!   prints and ships it.
//! - [`state_store`]: per-service plugin state kept on disk between runs.
//! - [`config`]: the agent's TOML configuration, strict and documented.
//! - [`units`]: human durations and sizes (`2s`, `32MiB`) in configuration.
//! - [`text`]: escaping text from plugins and peers for terminals and logs.
//! - [`agent`]: the agent's commands (`once`, `plugin info`, `plugin run`) and
//!   their output.

pub mod agent;
pub mod config;
pub mod daemon;
pub mod protocol;
pub mod receiver;
pub mod report;
pub mod runtime;
pub mod state_store;
pub mod text;
pub mod tls;
pub mod units;
