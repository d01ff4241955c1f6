//! Why a run produced no usable output, named exactly: the limit it hit,
//! the trap, or what the plugin said. (`diagnose` tells which from a failed
//! call.)

use sandglass_core::units::{ByteSize, HumanDuration};

/// Why a run produced no usable output. The text is what the operator sees
/// in the UNKNOWN status.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RunFailure {
    #[error("fuel limit {0} exhausted")]
    Fuel(u64),
    #[error("deadline {0} exceeded")]
    Deadline(HumanDuration),
    #[error("deadline {0} exceeded while blocked in a host call; the run was abandoned")]
    Blocked(HumanDuration),
    #[error("memory limit {0} reached")]
    Memory(ByteSize),
    #[error("output limit: {count} samples exceed max_samples {limit}")]
    TooManySamples { count: usize, limit: usize },
    #[error("output limit: {size} bytes of strings and items exceed max_output_bytes {limit}")]
    OutputBytes { size: u64, limit: ByteSize },
    #[error(
        "output limit: the plugin handed the host more than {0} in one call \
         (the copy budget set by max_output_bytes, max_samples and max_state_bytes)"
    )]
    Lift(ByteSize),
    #[error("open files limit {0} reached (max_open_files): the plugin held that many at once")]
    OpenFiles(usize),
    #[error("stdout/stderr limit {0} exceeded")]
    Stdio(ByteSize),
    #[error("state limit {limit} exceeded: the plugin returned {size} bytes of state")]
    State { size: u64, limit: ByteSize },
    #[error("trap: {0}")]
    Trap(String),
    #[error("plugin error: {0}")]
    Plugin(String),
    /// The text is the command's last stderr line, if any.
    #[error("command exited with a failure status{0}")]
    Exit(String),
    #[error("unreadable output: {0}")]
    Output(String),
    #[error("not run: {0}")]
    Refused(String),
}
