//! What a plugin component must export for this ABI version: shared by
//! the agent's runtime (which loads it) and the receiver (which checks a
//! plugin before it offers it to agents, without a WebAssembly runtime).

/// The ABI version: the WIT package version.
pub use sandglass_abi::ABI_VERSION;

/// The export a plugin must provide.
const PLUGIN_INTERFACE: &str = "sandglass:collector/plugin";

/// The export a WASI command provides (any 0.2.x).
const COMMAND_INTERFACE: &str = "wasi:cli/run@0.2.";

/// How a component is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exported {
    /// `sandglass:collector/plugin` at this host's ABI version.
    Collector,
    /// `wasi:cli/run`: a command printing exposition text (see `exposition`).
    Command,
}

/// Check that a component exports the plugin interface at this host's ABI
/// version, or is a WASI command; say which ABI version it was built for when
/// it is neither.
pub fn check_exports<'a>(exports: impl Iterator<Item = &'a str>) -> Result<Exported, String> {
    let mut versions = Vec::new();
    let mut names = Vec::new();
    let mut command = false;
    for name in exports {
        match name
            .strip_prefix(PLUGIN_INTERFACE)
            .and_then(|v| v.strip_prefix('@'))
        {
            Some(ABI_VERSION) => return Ok(Exported::Collector),
            Some(other) => versions.push(other.to_owned()),
            None => {
                command |= name.starts_with(COMMAND_INTERFACE);
                names.push(name.to_owned());
            }
        }
    }
    match versions.first() {
        Some(v) => Err(format!(
            "plugin was built for Sandglass ABI {v}, this agent speaks ABI {ABI_VERSION}: rebuild it with a plugin-sdk for ABI {ABI_VERSION}"
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
/// Sandglass collector package (its `log` interface).
const PROVIDED_IMPORTS: [&str; 2] = ["wasi:", "sandglass:collector/"];

/// Check that a component imports nothing an agent does not provide.
pub fn check_imports<'a>(imports: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let foreign: Vec<&str> = imports
        .filter(|name| !PROVIDED_IMPORTS.iter().any(|p| name.starts_with(p)))
        .collect();
    match foreign.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "imports {}, which no agent provides (only WASI and sandglass:collector interfaces are given to plugins)",
            foreign.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_check_names_both_versions() {
        assert_eq!(
            check_exports(["sandglass:collector/plugin@1.0.0"].into_iter()),
            Ok(Exported::Collector)
        );
        assert_eq!(
            check_exports(["wasi:cli/environment@0.2.3", "wasi:cli/run@0.2.3"].into_iter()),
            Ok(Exported::Command)
        );
        let err = check_exports(["sandglass:collector/plugin@0.9.0"].into_iter()).unwrap_err();
        assert!(err.contains("0.9.0") && err.contains(ABI_VERSION), "{err}");
        let err = check_exports(["wasi:http/incoming-handler@0.2.0"].into_iter()).unwrap_err();
        assert!(
            err.contains("not a Sandglass collector") && err.contains("wasi:http/incoming-handler"),
            "{err}"
        );
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
}
