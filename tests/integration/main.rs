//! Integration tests: the real `agent` binary, real wasm plugins built from
//! `plugins/`, the real `/proc`.
//!
//! - [`sandbox`]: each misbehaving fixture is stopped with the right reason;
//! - [`secrets`]: the `/proc` view hides secrets and links out of `/proc`;
//! - [`once`]: `agent once` with core plugins and misbehaving ones side by side;
//! - [`fleet`]: a real receiver and real agents on 127.0.0.1 (`fleet_support`).

mod common;
mod fleet;
mod fleet_support;
mod once;
mod sandbox;
mod secrets;
