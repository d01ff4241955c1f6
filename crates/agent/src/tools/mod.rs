//! Tools for plugin authors, on one plugin file and apart from the daemon:
//!
//! - [`info`]: `agent plugin info`, a plugin's description, sandbox and imports;
//! - [`trial`]: `agent plugin run`, one run with its report and cost;
//! - [`check`]: `agent plugin check`, a plugin judged against what the
//!   sandbox allows, with a verdict per point;
//! - [`template`]: `agent plugin new`, a plugin crate from plugin-sdk/template;
//! - [`build`]: `agent plugin build`, that crate built as a lean collector.

pub mod build;
pub mod check;
pub mod info;
pub mod template;
pub mod trial;
