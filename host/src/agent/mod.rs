//! The agent's commands.
//!
//! - [`services`]: running configured services through the runtime, with
//!   their state, grants and limits — shared by `once` and the scheduler;
//! - [`render`]: the human table and JSON output.

pub mod render;
pub mod services;
pub mod schedule;
