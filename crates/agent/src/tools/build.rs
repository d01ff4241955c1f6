//! `agent plugin build [DIR]`: build a plugin-sdk crate as a lean collector
//! (ABI 1.1, no WASI imports) — `cargo build --release --target
//! wasm32-unknown-unknown`, then each cdylib it made turned into a component
//! (`sandglass_componentize`) under `TARGET/sandglass/`.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The target lean collectors are built for.
const TARGET: &str = "wasm32-unknown-unknown";

/// A 64 KiB stack (Rust's default is 1 MiB): the stack, data and heap of a
/// run then lie in the first pages of memory, which the runtime keeps
/// resident and wipes in place between runs instead of faulting them in
/// again. `scripts/build-plugins.sh` builds the core collectors the same way.
const RUSTFLAGS: &str = "-C link-arg=-zstack-size=65536";

/// Build the crate in `dir` (its own target dir, or `target_dir`); the
/// components made, one per cdylib.
pub fn build(dir: &Path, target_dir: Option<&Path>) -> anyhow::Result<Vec<PathBuf>> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} is not a plugin crate (no Cargo.toml): run this in the crate made by `agent plugin new`, or name its directory",
            dir.display()
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .args(["build", "--release", "--target", TARGET])
        .args(["--message-format", "json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(&manifest)
        .stdout(Stdio::piped());
    if let Some(target_dir) = target_dir {
        command.arg("--target-dir").arg(target_dir);
    }
    let flags = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        TARGET.replace('-', "_").to_uppercase()
    );
    if std::env::var_os(&flags).is_none() {
        command.env(&flags, RUSTFLAGS);
    }
    let output = command
        .output()
        .with_context(|| format!("cannot run {}", Path::new(&cargo).display()))?;
    if !output.status.success() {
        bail!(
            "cargo build --target {TARGET} failed (its messages are above); if it cannot find `core` or `std`, install the target: rustup target add {TARGET}"
        );
    }
    let modules = cdylibs(&String::from_utf8_lossy(&output.stdout));
    if modules.is_empty() {
        bail!(
            "cargo built no wasm library: the plugin's Cargo.toml needs `[lib] crate-type = [\"cdylib\", \"rlib\"]`"
        );
    }
    modules.iter().map(|module| componentize(module)).collect()
}

/// The `.wasm` files of the cdylibs in cargo's JSON messages.
fn cdylibs(messages: &str) -> Vec<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"))
        })
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(PathBuf::from))
                .filter(|f| f.extension().is_some_and(|e| e == "wasm"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Make `module` (`TARGET_DIR/wasm32-unknown-unknown/release/NAME.wasm`) a
/// component at `TARGET_DIR/sandglass/NAME.wasm`.
fn componentize(module: &Path) -> anyhow::Result<PathBuf> {
    let bytes =
        std::fs::read(module).with_context(|| format!("cannot read {}", module.display()))?;
    let component = sandglass_componentize::componentize(&bytes)
        .with_context(|| module.display().to_string())?;
    let target_dir = module
        .ancestors()
        .nth(3)
        .context("cargo put the module outside a target directory")?;
    let out = target_dir
        .join("sandglass")
        .join(module.file_name().unwrap_or_default());
    std::fs::create_dir_all(out.parent().unwrap_or(target_dir))
        .and_then(|()| std::fs::write(&out, component))
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_wasm_of_cdylibs_is_taken_from_cargos_messages() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"]},"filenames":["/t/libdep.rlib"]}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["cdylib","rlib"]},"filenames":["/t/wasm32-unknown-unknown/release/p.wasm","/t/wasm32-unknown-unknown/release/libp.rlib"]}"#,
            r#"{"reason":"build-finished","success":true}"#,
            "not json",
        ]
        .join("\n");
        assert_eq!(
            cdylibs(&messages),
            [PathBuf::from("/t/wasm32-unknown-unknown/release/p.wasm")]
        );
    }

    #[test]
    fn a_directory_without_a_crate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = build(dir.path(), None).unwrap_err().to_string();
        assert!(
            err.contains("no Cargo.toml") && err.contains("agent plugin new"),
            "{err}"
        );
    }
}
