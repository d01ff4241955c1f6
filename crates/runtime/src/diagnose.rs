//! Telling from a failed call which limit it hit, or what trapped.

use super::failure::RunFailure;
use super::output;
use super::sandbox::Sandbox;
use sandglass_core::limits::Limits;
use sandglass_core::text::truncate;
use sandglass_core::units::ByteSize;
use wasmtime::Trap;

/// Stderr kept in a trap message, in bytes.
const STDERR_IN_MESSAGE: usize = 512;

/// Name the limit behind a failed call, or the trap.
pub(crate) fn classify(err: wasmtime::Error, sandbox: &Sandbox, limits: &Limits) -> RunFailure {
    if output::is_lift_refusal(&err) {
        return RunFailure::Lift(ByteSize(output::lift_budget(limits) as u64));
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => return RunFailure::Fuel(limits.fuel),
        Some(Trap::Interrupt) => return RunFailure::Deadline(limits.deadline),
        _ => {}
    }
    if sandbox.store.data().limiter.hit {
        return RunFailure::Memory(limits.memory);
    }
    if sandbox.stdout.contents().len() >= sandbox.stdout_cap {
        return RunFailure::Stdio(ByteSize(sandbox.stdout_cap as u64));
    }
    if sandbox.stderr.contents().len() >= limits.max_stdio_bytes.0 as usize {
        return RunFailure::Stdio(limits.max_stdio_bytes);
    }
    let mut message = match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{err:#}")
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    };
    if let Some(last) = last_stderr_line(sandbox) {
        message.push_str(&format!("; plugin stderr: {last}"));
    }
    RunFailure::Trap(message)
}

/// The last useful line the plugin wrote to stderr, cut to a readable size.
pub(crate) fn last_stderr_line(sandbox: &Sandbox) -> Option<String> {
    let stderr = sandbox.stderr.contents();
    let stderr = String::from_utf8_lossy(&stderr);
    // Rust panics end with a hint about RUST_BACKTRACE; the message is above it.
    let useful =
        |l: &&str| !l.trim().is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE");
    let last = stderr.lines().rev().find(useful)?;
    Some(truncate(last, STDERR_IN_MESSAGE).to_owned())
}
