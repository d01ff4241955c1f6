//! Logging into the agent's log. Each line is tagged by the host with the plugin
//! and service; the host caps how much a run may log.

use crate::bindings::sandglass::collector::log::{LogLevel, log};

/// Log at debug level.
pub fn debug(message: &str) {
    log(LogLevel::Debug, message);
}

/// Log at info level.
pub fn info(message: &str) {
    log(LogLevel::Info, message);
}

/// Log at warn level.
pub fn warn(message: &str) {
    log(LogLevel::Warn, message);
}

/// Log at error level.
pub fn error(message: &str) {
    log(LogLevel::Error, message);
}
