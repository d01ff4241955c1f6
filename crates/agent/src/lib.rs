//! # Sandglass agent
//!
//! The daemon that runs the receiver's schedule of sandboxed collectors on
//! one host and delivers what they report; and, apart from it, the tools a
//! plugin author uses on one plugin file.
//!
//! Layout:
//! - [`config`]: `agent.toml`, strict and documented; [`config_check`]:
//!   `agent check`, what `agent run` would trip over, before it runs;
//! - [`services`]: running services through the runtime, with their state,
//!   pins, grants and limits — shared by `once` and the scheduler;
//! - [`state_store`]: per-service plugin state kept on disk between runs;
//! - [`schedule`]: the receiver's schedule as services, and its disk cache;
//! - [`scheduler`]: one timer per service, on a per-host grid (a host's services fire together);
//! - [`spool`]: reports on disk until the receiver acknowledges them;
//! - [`link`]: the connection to the receiver (backoff, batches, acks);
//! - [`installed`]: the plugins the Hello lists, hashes remembered;
//! - [`hygiene`]: removing compiled and fetched plugins no service uses;
//! - [`daemon`]: `agent run`, tying them together with signals;
//! - [`tools`]: `agent plugin run`, `check` and `new`, for plugin authors.

pub mod config;
pub mod config_check;
pub mod daemon;
pub mod hygiene;
pub mod installed;
pub mod link;
pub mod schedule;
pub mod scheduler;
pub mod services;
pub mod spool;
pub mod state_store;
pub mod tools;
