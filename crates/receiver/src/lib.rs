//! The receiver: accepts agents, hands out schedules, stores reports, judges
//! liveness, fires triggers, tells people, and answers `status`, `query`,
//! `events` and `/metrics`. No plugin runtime in its tree
//! (`tests/boundary.rs`).
//!
//! - [`config`]: `receiver.toml` and the host/group/template/service model;
//! - [`server`]: connections, handshake, acks, schedule pushes, reloads,
//!   housekeeping;
//! - [`batches`], [`clock`], [`streams`], [`duplicates`]: judging batches,
//!   agents' clocks, stored sequence ranges, two agents on one host id;
//! - [`store`]: the SQLite store, its group-committing writer, retention;
//! - [`liveness`]: the late/UNREACHABLE/PROBLEM rule and the changes it sees;
//! - [`triggers`]: conditions over metrics, judged as reports are stored;
//! - [`notify`]: telling people (webhooks, commands, the log), acks and
//!   maintenance;
//! - [`view`], [`events`], [`query`]: what `receiver status`, `events` and
//!   `query` print;
//! - [`http`]: the HTTP listener (`/metrics`), showing [`health`], the
//!   receiver's own counters;
//! - [`remote_write`]: every stored sample forwarded to Prometheus
//!   remote-write endpoints, through [`http_post`] (shared with `notify`).
//! - [`plugins`]: the checked plugins of `plugin_dir`, served to agents;
//!   [`rollout`]: a new build of a running plugin, host group by group.

pub mod batches;
pub mod clock;
pub mod config;
pub mod duplicates;
pub mod events;
pub mod health;
pub mod http;
pub mod http_post;
pub mod liveness;
pub mod notify;
pub mod plugins;
pub mod query;
pub mod remote_write;
pub mod rollout;
pub mod server;
pub mod store;
pub mod streams;
pub mod triggers;
pub mod view;
