//! The agent's commands.
//!
//! - [`services`]: running services through the runtime, with their state,
//!   pins, grants and limits — shared by `once` and the scheduler;
//! - [`schedule`]: the receiver's schedule as services, and its disk cache;
//! - [`scheduler`]: one timer per service, on a per-host grid (a host's services fire together);
//! - [`link`]: the connection to the receiver (backoff, batches, acks);
//! - [`installed`]: the plugins the Hello lists, hashes remembered;
//! - [`daemon`]: `agent run`, tying them together with signals;
//! - [`render`]: the human table and JSON output;
//! - [`trial`], [`check`]: `agent plugin run` and `agent plugin check` on one file;
//! - [`template`]: `agent plugin new`, a plugin crate from plugin-sdk/template.

pub mod check;
pub mod daemon;
pub mod installed;
pub mod link;
pub mod render;
pub mod schedule;
pub mod scheduler;
pub mod services;
pub mod spool;
pub mod template;
pub mod trial;
