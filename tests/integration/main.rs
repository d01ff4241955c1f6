//! Integration tests: the real `agent` binary, real wasm plugins built from
//! `plugins/`, the real `/proc`.
//!
//! - [`sandbox`]: each misbehaving fixture is stopped with the right reason;
//! - [`secrets`]: the `/proc` view hides secrets and links out of `/proc`;
//! - [`command`]: plugins in C (wasip1 commands) and Python (componentize-py);
//! - [`metrics`]: `/metrics` for Prometheus, checked with promtool;
//! - [`remote_write`]: samples forwarded to a real VictoriaMetrics
//!   ([`victoria`]) exactly once, across its outage and a receiver failover;
//! - [`grafana`]: every query of the shipped Grafana dashboard answers;
//! - [`lean`]: lean collectors (ABI 1.1, no WASI): imports, values, policy, limits;
//! - [`once`]: `agent once` with core plugins and misbehaving ones side by side;
//! - [`logwatch`]: the log-watch collector on real files;
//! - [`fleet`]: a real receiver and real agents on 127.0.0.1 (`fleet_support`);
//! - [`faults`]: kill -9 of either side, connections cut mid-frame, a full
//!   spool, failover — every run counted end to end;
//! - [`distribution`]: plugins sent by the receiver to agents without them;
//! - [`delivery`]: the largest reports through a receiver outage, a hung
//!   receiver, a full agent disk: every report stored or counted as lost;
//! - [`hostile`]: slow and idle connections at the receiver;
//! - [`hostile_peers`]: agents that lie to the receiver (frames, bombs,
//!   numbers, HTTP requests) and a receiver that lies to the agent;
//! - [`hostile_plugins`]: plugins that attack the host and their neighbours
//!   (output that is costly to copy, blocking files, stuck runs, held
//!   descriptors, `/proc` and `/sys` secrets, terminal escapes);
//! - [`hostile_components`]: components with many core instances, memories
//!   and tables, against the memory cap and the shared instance pool;
//! - [`query`]: `receiver query` for people and scripts (times, ranges,
//!   hosts, labels, buckets, unknown names, a closed pipe);
//! - [`packaging`]: `packaging/install.sh` and the systemd units;
//! - [`template`]: `agent plugin new` and `agent plugin check`;
//! - [`triggers`]: triggers firing and recovering, levels as events, host status;
//! - [`notify`]: webhooks and commands told of triggers, maintenance, a webhook down;
//! - [`tls`]: TLS with client certificates from the test CA script;
//! - [`web`]: the status page's JSON API, and the page itself in headless
//!   Chromium (driven through chromedriver, [`webdriver`]).

mod command;
mod common;
mod delivery;
mod distribution;
mod faults;
mod fleet;
mod fleet_support;
mod grafana;
mod hostile;
mod hostile_components;
mod hostile_peers;
mod hostile_plugins;
mod http_client;
mod lean;
mod logwatch;
mod metrics;
mod notify;
mod once;
mod packaging;
mod protocol;
mod query;
mod remote_write;
mod rollout;
mod sandbox;
mod secrets;
mod status;
mod template;
mod tls;
mod triggers;
mod victoria;
mod web;
mod webdriver;
