//! Command plugins: a plain WASI command, in any language, that prints its
//! samples on stdout in the exposition text format ([`super::exposition`]).
//!
//! A `wasm32-wasip1` core module is wrapped into a component with the
//! preview1 command adapter when it is loaded, so it runs through the same
//! linker as every other plugin: the same `/proc` view, the same `open-at`
//! policy hook, the same limits. (wasmtime-wasi's own preview1 host would
//! bypass the component-level hooks the policy lives in.) A component that
//! exports `wasi:cli/run` is taken as is.
//!
//! The run: `argv` is the plugin name followed by the service's parameters as
//! `key=value`; stdin holds the state the previous run printed after
//! `# STATE ` (empty on the first run); stdout (up to `max_output_bytes`) is
//! parsed; exit status 0 is required.

use super::abi::wit;
use super::diagnose::{classify, last_stderr_line};
use super::failure::RunFailure;
use super::sandbox::Sandbox;
use super::{Description, exposition};
use sandglass_core::limits::Limits;
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p2::bindings::sync::CommandPre;

/// Whether `wasm` is a core module (not a component).
pub fn is_core_module(wasm: &[u8]) -> bool {
    wasm.starts_with(b"\0asm\x01\0\0\0")
}

/// Wrap a `wasm32-wasip1` command module into a component.
pub fn componentize(module: &[u8]) -> anyhow::Result<Vec<u8>> {
    let encoded = wit_component::ComponentEncoder::default()
        .module(module)
        .and_then(|encoder| {
            encoder.adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
            )
        })
        .and_then(|encoder| encoder.validate(true).encode());
    encoded.map_err(|e| {
        anyhow::anyhow!(
            "this core wasm module is not a WASI command: {e:#}. Build a program with a `main` for \
             wasm32-wasip1 (e.g. `clang --target=wasm32-wasi`), or a plugin-sdk component for wasm32-wasip2"
        )
    })
}

/// What the agent knows about a command: only its name (the file's stem).
pub fn description(name: String) -> Description {
    Description {
        name,
        version: String::new(),
        abi_version: "command (exposition text on stdout)",
        grants: Vec::new(),
        interval_seconds: 60,
        metrics: Vec::new(),
    }
}

/// The command's argv: its name, then `key=value` per parameter.
pub fn args(name: &str, params: &[(String, String)]) -> Vec<String> {
    std::iter::once(name.to_owned())
        .chain(params.iter().map(|(k, v)| format!("{k}={v}")))
        .collect()
}

/// Run the command in `sandbox` and parse what it printed.
pub fn call(
    pre: &CommandPre<super::sandbox::SandboxState>,
    sandbox: &mut Sandbox,
    limits: &Limits,
) -> Result<wit::Collection, RunFailure> {
    let called = pre
        .instantiate(&mut sandbox.store)
        .and_then(|command| command.wasi_cli_run().call_run(&mut sandbox.store));
    let stdout = sandbox.stdout.contents();
    if stdout.len() >= sandbox.stdout_cap {
        // Writes past the cap fail. A program that ignores that either exits
        // 0 with its output cut short, which must not pass as complete, or
        // spins on failing writes until its fuel runs out: the cap is the
        // cause either way.
        return Err(RunFailure::Stdio(limits.max_output_bytes));
    }
    let failed = match called {
        Ok(Ok(())) => false,
        Ok(Err(())) => true,
        // The preview1 adapter turns every non-zero exit status into 1.
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(I32Exit(code)) => *code != 0,
            None => return Err(classify(e, sandbox, limits)),
        },
    };
    if failed {
        let stderr = last_stderr_line(sandbox)
            .map(|l| format!("; stderr: {l}"))
            .unwrap_or_default();
        return Err(RunFailure::Exit(stderr));
    }
    let text = std::str::from_utf8(&stdout).map_err(|e| {
        RunFailure::Output(format!("stdout is not UTF-8 (byte {})", e.valid_up_to()))
    })?;
    // Counted before parsing: a megabyte of `a 1` lines is 262,000
    // samples, which parsed held 39 MiB of the agent's memory, only to be
    // refused by the cap afterwards.
    let count = exposition::sample_lines(text);
    if count > limits.max_samples {
        return Err(RunFailure::TooManySamples {
            count,
            limit: limits.max_samples,
        });
    }
    exposition::parse(text).map_err(RunFailure::Output)
}
