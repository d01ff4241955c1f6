//! What a run is accounted for, in either sandbox (WASI or lean): its
//! memory against the cap, the log lines it may send (a budget per run), and
//! the opens the policy refused, kept for the run's outcome.

use super::abi::LogLevel;
use super::fs_policy::Denied;
use super::limited::MemoryLimiter;
use sandglass_core::limits::Limits;
use sandglass_core::text::{Escaped, truncate};

/// Log lines a plugin may send through the `log` import per run, in bytes.
const LOG_BYTES_PER_RUN: usize = 16 << 10;

/// What a line costs against that budget beyond its text: the time, level,
/// plugin and service the agent's log adds to it. Without it, 16,384 empty
/// messages were 16,384 lines of the agent's log per run.
const LOG_LINE_COST: usize = 64;

/// Denied opens remembered per run (the count is kept in full).
const DENIALS_KEPT: usize = 4;

/// The last error line kept for a trap message, in bytes.
const LAST_ERROR_KEPT: usize = 512;

/// One run's memory, log budget and refusals, tagged with its plugin and
/// service.
pub struct Account {
    pub limiter: MemoryLimiter,
    plugin: String,
    service: String,
    log_budget: usize,
    /// Opens refused by the policy: the first few, and how many in all.
    pub denied: Vec<Denied>,
    pub denied_count: usize,
    /// The last error-level log line: where a lean plugin, which has no
    /// stderr, leaves its panic message.
    pub last_error: Option<String>,
}

impl Account {
    pub fn new(plugin: &str, service: &str, limits: &Limits) -> Account {
        Account {
            limiter: MemoryLimiter::new(limits),
            plugin: plugin.to_owned(),
            service: service.to_owned(),
            log_budget: LOG_BYTES_PER_RUN,
            denied: Vec::new(),
            denied_count: 0,
            last_error: None,
        }
    }

    /// A line from the plugin's `log` import into the agent's log, within
    /// the run's budget.
    pub fn log(&mut self, level: LogLevel, message: String) {
        if level == LogLevel::Error {
            self.last_error = Some(truncate(&message, LAST_ERROR_KEPT).to_owned());
        }
        if self.log_budget == 0 {
            return;
        }
        let message = truncate(&message, self.log_budget);
        self.log_budget = self
            .log_budget
            .saturating_sub(message.len() + LOG_LINE_COST);
        let (plugin, service) = (&self.plugin, &self.service);
        // Escaped: a newline or an escape sequence in a plugin's message must
        // not forge a log line of its own or repaint the operator's terminal.
        let message = Escaped(message);
        match level {
            LogLevel::Trace => tracing::trace!(plugin, service, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, service, "{message}"),
            LogLevel::Info => tracing::info!(plugin, service, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, service, "{message}"),
            LogLevel::Error => tracing::error!(plugin, service, "{message}"),
        }
        if self.log_budget == 0 {
            tracing::warn!(
                plugin,
                service,
                "log limit of {LOG_BYTES_PER_RUN} bytes per run reached; dropping the rest"
            );
        }
    }

    /// Count and log a refusal by the policy.
    pub fn deny(&mut self, denied: Denied) {
        let path = denied.path.to_string_lossy();
        tracing::debug!(plugin = self.plugin, service = self.service, path = %Escaped(&path), rule = denied.rule, "open denied by the sandbox policy");
        self.denied_count += 1;
        if self.denied.len() < DENIALS_KEPT {
            self.denied.push(denied);
        }
    }

    /// The refusals kept, as the run outcome lists them.
    pub fn denied_paths(&self) -> Vec<String> {
        self.denied
            .iter()
            .map(|d| format!("{} ({})", d.path.display(), d.rule))
            .collect()
    }
}
