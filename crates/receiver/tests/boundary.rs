//! The receiver is built, tested and shipped without the plugin runtime: no
//! wasmtime, cranelift or WASI crate may enter its dependency tree. A stray
//! `use` of the runtime does not compile (the crate is not a dependency);
//! this test catches the dependency itself coming back, directly or through
//! a crate the receiver uses.
//!
//! One crate of that family is allowed: `wasmparser`, the parser (no code
//! generation, no execution) with which the receiver checks a plugin before
//! it offers it to agents (docs/plugin-guide.md, "Distribution").

use std::process::Command;

#[test]
fn the_receiver_depends_on_no_wasm_runtime() {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--package",
            "sandglass-receiver",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        tree.lines().any(|l| l.starts_with("sandglass-protocol ")),
        "not the receiver's tree:\n{tree}"
    );
    let runtime: Vec<&str> = tree
        .lines()
        .filter(|l| {
            [
                "wasmtime",
                "cranelift",
                "wasi",
                "wit-",
                "wasm",
                "sandglass-runtime",
            ]
            .iter()
            .any(|name| l.starts_with(name))
                && !l.starts_with("wasmparser ")
        })
        .collect();
    assert!(
        runtime.is_empty(),
        "the receiver's dependency tree holds {runtime:?}: it must build without the plugin runtime"
    );
}
