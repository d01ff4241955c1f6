//! Integration tests: the real `agent` binary, real wasm plugins built from
//! `plugins/`, the real `/proc`.
//!
//! - [`sandbox`]: each misbehaving fixture is stopped with the right reason;
//! - [`secrets`]: the `/proc` view hides secrets and links out of `/proc`;
//! - [`once`]: `agent once` with core plugins and misbehaving ones side by side.

mod common;
mod once;
mod sandbox;
mod secrets;
