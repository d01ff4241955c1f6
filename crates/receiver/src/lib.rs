//! The receiver: accepts agents, hands out schedules, stores reports, judges
//! liveness and answers `status` and `query`.
//!
//! - [`config`]: `receiver.toml` and the host/group/template/service model;
//! - [`server`]: connections, handshake, acks, schedule pushes, reloads;
//! - [`store`]: the SQLite store and its group-committing writer;
//! - [`liveness`]: the late/UNREACHABLE/PROBLEM rule;
//! - [`notify`]: telling people (webhooks, commands, the log), acks and maintenance;
//! - [`view`]: what `receiver status` and `receiver query` print.

pub mod batches;
pub mod clock;
pub mod config;
pub mod duplicates;
pub mod events;
pub mod liveness;
pub mod notify;
pub mod server;
pub mod store;
pub mod streams;
pub mod triggers;
pub mod view;
