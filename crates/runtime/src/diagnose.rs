//! Telling from a failed call which limit it hit, or what trapped.

use super::failure::RunFailure;
use super::lean::LeanState;
use super::output;
use super::sandbox::Sandbox;
use sandglass_core::limits::Limits;
use sandglass_core::text::truncate;
use sandglass_core::units::ByteSize;
use wasmtime::Trap;

/// Stderr kept in a trap message, in bytes.
const STDERR_IN_MESSAGE: usize = 512;

/// The limit behind a failed call in either sandbox, if a limit was hit.
fn limit_hit(err: &wasmtime::Error, memory_hit: bool, limits: &Limits) -> Option<RunFailure> {
    if output::is_lift_refusal(err) {
        return Some(RunFailure::Lift(ByteSize(
            output::lift_budget(limits) as u64
        )));
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Some(RunFailure::Fuel(limits.fuel)),
        Some(Trap::Interrupt) => Some(RunFailure::Deadline(limits.deadline)),
        _ => memory_hit.then_some(RunFailure::Memory(limits.memory)),
    }
}

/// What trapped, in one line. Not a trap: the innermost error, which says
/// what went wrong (a host call's refusal, say); the outer ones are the
/// wasm backtrace wasmtime wraps it in, whose first line is only
/// "error while executing at wasm backtrace:".
fn trap_text(err: &wasmtime::Error) -> String {
    match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => err
            .root_cause()
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Name the limit behind a failed call in the lean sandbox, or the trap
/// with the last error the plugin logged (the SDK logs a panic's message
/// there: a lean plugin has no stderr).
pub(crate) fn classify_lean(
    err: wasmtime::Error,
    state: &LeanState,
    limits: &Limits,
) -> RunFailure {
    if let Some(failure) = limit_hit(&err, state.account.limiter.hit, limits) {
        return failure;
    }
    let mut message = trap_text(&err);
    if let Some(last) = &state.account.last_error {
        message.push_str(&format!("; plugin log: {last}"));
    }
    RunFailure::Trap(message)
}

/// Name the limit behind a failed call, or the trap.
pub(crate) fn classify(err: wasmtime::Error, sandbox: &Sandbox, limits: &Limits) -> RunFailure {
    if let Some(failure) = limit_hit(&err, sandbox.store.data().account.limiter.hit, limits) {
        return failure;
    }
    if sandbox.stdout.contents().len() >= sandbox.stdout_cap {
        return RunFailure::Stdio(ByteSize(sandbox.stdout_cap as u64));
    }
    if sandbox.stderr.contents().len() >= limits.max_stdio_bytes.0 as usize {
        return RunFailure::Stdio(limits.max_stdio_bytes);
    }
    let mut message = trap_text(&err);
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
