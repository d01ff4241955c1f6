//! What a plugin component must export and may import for this ABI version:
//! shared by the agent's runtime (which loads it) and the receiver (which
//! checks a plugin before it offers it to agents, without a WebAssembly
//! runtime).
//!
//! Versions: a host runs plugins built for any minor version of its major
//! version up to its own (`COMPATIBLE`): ABI 1.1 added the lean world and
//! left everything of 1.0 as it was, so a 1.0 plugin runs unchanged on a 1.1
//! agent, while a 1.1 plugin is refused by a 1.0 agent with both versions
//! named. Wasmtime matches `@1.0.0` names against the host's `@1.1.0` ones by
//! semver, for imports and exports alike.

/// The ABI version: the WIT package version.
pub use sandglass_abi::ABI_VERSION;

/// The ABI versions this host runs, oldest first; the last is [`ABI_VERSION`].
pub const COMPATIBLE: [&str; 2] = ["1.0.0", "1.1.0"];

/// The export a plugin must provide.
const PLUGIN_INTERFACE: &str = "sandglass:collector/plugin";

/// The export a WASI command provides (any 0.2.x).
const COMMAND_INTERFACE: &str = "wasi:cli/run@0.2.";

/// The import only lean collectors have (ABI 1.1).
const HOST_INTERFACE: &str = "sandglass:collector/host@";

/// How a component is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exported {
    /// `sandglass:collector/plugin` at a version in [`COMPATIBLE`] (given).
    Collector(&'static str),
    /// `wasi:cli/run`: a command printing exposition text (see `exposition`).
    Command,
}

/// Check that a component exports the plugin interface at an ABI version
/// this host runs, or is a WASI command; say which ABI version it was built
/// for when it is neither.
pub fn check_exports<'a>(exports: impl Iterator<Item = &'a str>) -> Result<Exported, String> {
    let mut versions = Vec::new();
    let mut names = Vec::new();
    let mut command = false;
    for name in exports {
        match name
            .strip_prefix(PLUGIN_INTERFACE)
            .and_then(|v| v.strip_prefix('@'))
        {
            Some(version) => match COMPATIBLE.iter().find(|known| **known == version) {
                Some(known) => return Ok(Exported::Collector(known)),
                None => versions.push(version.to_owned()),
            },
            None => {
                command |= name.starts_with(COMMAND_INTERFACE);
                names.push(name.to_owned());
            }
        }
    }
    match versions.first() {
        Some(v) => Err(format!(
            "plugin was built for Sandglass ABI {v}, this agent speaks ABI {ABI_VERSION} (and runs {}): rebuild it with a plugin-sdk for ABI {ABI_VERSION}, or upgrade the agent",
            COMPATIBLE.join(", ")
        )),
        None if command => Ok(Exported::Command),
        None => Err(format!(
            "not a Sandglass collector: it exports neither {PLUGIN_INTERFACE}@{ABI_VERSION} nor wasi:cli/run (exports: {})",
            if names.is_empty() {
                "nothing".into()
            } else {
                names.join(", ")
            }
        )),
    }
}

/// The import namespaces an agent provides to a plugin: WASI 0.2 and the
/// Sandglass collector package (`log`, and `host` for lean collectors).
const PROVIDED_IMPORTS: [&str; 2] = ["wasi:", "sandglass:collector/"];

/// Check that a component imports nothing an agent does not provide, and
/// that a lean collector (one importing `host`) imports no WASI: the lean
/// sandbox has none to give, and the WASI one has no `host`.
pub fn check_imports<'a>(imports: impl Iterator<Item = &'a str> + Clone) -> Result<(), String> {
    let foreign: Vec<&str> = imports
        .clone()
        .filter(|name| !PROVIDED_IMPORTS.iter().any(|p| name.starts_with(p)))
        .collect();
    if !foreign.is_empty() {
        return Err(format!(
            "imports {}, which no agent provides (only WASI and sandglass:collector interfaces are given to plugins)",
            foreign.join(", ")
        ));
    }
    let host = imports.clone().any(|name| name.starts_with(HOST_INTERFACE));
    if host && !is_lean(imports.clone()) {
        let wasi: Vec<&str> = imports.filter(|name| name.starts_with("wasi:")).collect();
        return Err(format!(
            "imports sandglass:collector/host (the lean world) and WASI ({}): a lean collector must import no WASI; build it for wasm32-unknown-unknown (scripts/build-plugins.sh shows how)",
            wasi.join(", ")
        ));
    }
    Ok(())
}

/// Whether a component with these imports runs in the lean sandbox: it
/// imports nothing from WASI (only Sandglass interfaces, or nothing).
pub fn is_lean<'a>(mut imports: impl Iterator<Item = &'a str>) -> bool {
    !imports.any(|name| name.starts_with("wasi:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_check_names_both_versions() {
        assert_eq!(
            check_exports(["sandglass:collector/plugin@1.0.0"].into_iter()),
            Ok(Exported::Collector("1.0.0"))
        );
        assert_eq!(
            check_exports(["sandglass:collector/plugin@1.1.0"].into_iter()),
            Ok(Exported::Collector("1.1.0"))
        );
        assert_eq!(
            check_exports(["wasi:cli/environment@0.2.3", "wasi:cli/run@0.2.3"].into_iter()),
            Ok(Exported::Command)
        );
        for other in ["0.9.0", "1.2.0", "2.0.0"] {
            let export = format!("sandglass:collector/plugin@{other}");
            let err = check_exports([export.as_str()].into_iter()).unwrap_err();
            assert!(err.contains(other) && err.contains(ABI_VERSION), "{err}");
        }
        let err = check_exports(["wasi:http/incoming-handler@0.2.0"].into_iter()).unwrap_err();
        assert!(
            err.contains("not a Sandglass collector") && err.contains("wasi:http/incoming-handler"),
            "{err}"
        );
    }

    #[test]
    fn the_newest_compatible_version_is_this_abi() {
        assert_eq!(COMPATIBLE.last(), Some(&ABI_VERSION));
    }

    #[test]
    fn only_provided_imports_pass() {
        let provided = [
            "wasi:cli/environment@0.2.3",
            "sandglass:collector/log@1.0.0",
        ];
        assert_eq!(check_imports(provided.into_iter()), Ok(()));
        let err =
            check_imports(["wasi:io/streams@0.2.0", "acme:db/query"].into_iter()).unwrap_err();
        assert!(
            err.contains("acme:db/query") && !err.contains("wasi:io"),
            "{err}"
        );
    }

    #[test]
    fn a_lean_collector_imports_no_wasi() {
        let lean = [
            "sandglass:collector/types@1.1.0",
            "sandglass:collector/log@1.1.0",
            "sandglass:collector/host@1.1.0",
        ];
        assert_eq!(check_imports(lean.into_iter()), Ok(()));
        assert!(is_lean(lean.into_iter()));
        assert!(is_lean([].into_iter()));
        assert!(!is_lean(
            ["sandglass:collector/log@1.0.0", "wasi:io/streams@0.2.0"].into_iter()
        ));
        let mixed = ["sandglass:collector/host@1.1.0", "wasi:io/streams@0.2.0"];
        let err = check_imports(mixed.into_iter()).unwrap_err();
        assert!(
            err.contains("wasi:io/streams@0.2.0") && err.contains("wasm32-unknown-unknown"),
            "{err}"
        );
    }
}
