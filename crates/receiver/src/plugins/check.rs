//! The receiver's check of a plugin file before it offers it to agents:
//! the bytes are valid WebAssembly, a component imports only what an agent
//! provides (WASI and `sandglass:collector`) and exports the collector
//! interface at this ABI version (or `wasi:cli/run`), and a core module is
//! a WASI preview1 command. Running the plugin's `describe` needs a
//! sandbox, which the receiver does not carry (no wasmtime in its tree):
//! that part happens on the agents, where a plugin that cannot describe
//! itself or run reports UNKNOWN (docs/plugin-guide.md, "Distribution").

use sandglass_core::plugin_abi::{check_exports, check_imports};
use wasmparser::{Encoding, Parser, Payload, Validator, WasmFeatures};

/// What a core module may import: the agent wraps it with the preview1
/// command adapter, which provides exactly this module.
const PREVIEW1: &str = "wasi_snapshot_preview1";

/// Why `wasm` cannot be offered, if it cannot.
pub fn check(wasm: &[u8]) -> Result<(), String> {
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(wasm)
        .map_err(|e| format!("not valid WebAssembly: {e}"))?;
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut encoding = None;
    // Only the outermost module or component counts: nested ones are its
    // implementation.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| format!("not valid WebAssembly: {e}"))?;
        match payload {
            Payload::Version { encoding: e, .. } => {
                depth += 1;
                encoding.get_or_insert(e);
            }
            Payload::End(_) => depth -= 1,
            Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    let import = import.map_err(|e| e.to_string())?;
                    imports.push(import.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(section) if depth == 1 => {
                for export in section {
                    let export = export.map_err(|e| e.to_string())?;
                    exports.push(export.name.name.to_owned());
                }
            }
            Payload::ImportSection(section) if depth == 1 => {
                for import in section.into_imports() {
                    let import = import.map_err(|e| e.to_string())?;
                    imports.push(import.module.to_owned());
                }
            }
            Payload::ExportSection(section) if depth == 1 => {
                for export in section {
                    let export = export.map_err(|e| e.to_string())?;
                    exports.push(export.name.to_owned());
                }
            }
            _ => {}
        }
    }
    match encoding {
        Some(Encoding::Component) => {
            check_imports(imports.iter().map(String::as_str))?;
            check_exports(exports.iter().map(String::as_str)).map(drop)
        }
        _ => check_command_module(&imports, &exports),
    }
}

/// A core module runs as a WASI command: it has `_start` and imports
/// only WASI preview1.
fn check_command_module(imports: &[String], exports: &[String]) -> Result<(), String> {
    if let Some(foreign) = imports.iter().find(|m| *m != PREVIEW1) {
        return Err(format!(
            "a core module importing from {foreign:?}: an agent provides only {PREVIEW1} to a WASI command"
        ));
    }
    if !exports.iter().any(|e| e == "_start") {
        return Err(
            "a core module without `_start`: build a WASI command (a program with a `main`), not a reactor or library"
                .into(),
        );
    }
    Ok(())
}

/// Hand-assembled core modules for tests.
#[cfg(test)]
pub(crate) mod fixtures {
    const HEADER: &[u8] = b"\0asm\x01\0\0\0";
    /// One type: `() -> ()`.
    const TYPES: &[u8] = &[0x01, 0x04, 0x01, 0x60, 0x00, 0x00];
    /// One function of that type, with an empty body.
    const FUNC: &[u8] = &[0x03, 0x02, 0x01, 0x00];
    const CODE: &[u8] = &[0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b];

    /// The export section naming function 0 `name`.
    fn export(name: &str) -> Vec<u8> {
        let mut body = vec![0x01, name.len() as u8];
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&[0x00, 0x00]);
        let mut section = vec![0x07, body.len() as u8];
        section.extend(body);
        section
    }

    /// A WASI command that does nothing; `tag` (a custom section) makes
    /// builds with other hashes.
    pub(crate) fn command(tag: &str) -> Vec<u8> {
        let mut wasm = [HEADER, TYPES, FUNC, &export("_start"), CODE].concat();
        let mut custom = vec![0x00, (tag.len() + 2) as u8, 0x01, b't'];
        custom.extend_from_slice(tag.as_bytes());
        wasm.extend(custom);
        wasm
    }

    /// A reactor: no `_start`.
    pub(crate) fn reactor() -> Vec<u8> {
        [HEADER, TYPES, FUNC, &export("_initialize"), CODE].concat()
    }

    /// A command importing `env.f`, which no agent provides.
    pub(crate) fn foreign_import() -> Vec<u8> {
        let import = [
            0x02, 0x09, 0x01, 0x03, b'e', b'n', b'v', 0x01, b'f', 0x00, 0x00,
        ];
        [HEADER, TYPES, &import, &export("_start")].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_pass_and_everything_else_is_named() {
        assert_eq!(check(&fixtures::command("a")), Ok(()));
        let err = check(&fixtures::reactor()).unwrap_err();
        assert!(err.contains("without `_start`"), "{err}");
        let err = check(&fixtures::foreign_import()).unwrap_err();
        assert!(err.contains("\"env\""), "{err}");
        let mut truncated = fixtures::command("a");
        truncated.truncate(20);
        let err = check(&truncated).unwrap_err();
        assert!(err.starts_with("not valid WebAssembly"), "{err}");
        let err = check(b"#!/bin/sh\necho hi\n").unwrap_err();
        assert!(err.starts_with("not valid WebAssembly"), "{err}");
    }
}
