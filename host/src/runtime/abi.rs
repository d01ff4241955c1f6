//! Host bindings of `wit/collector.wit`, and the ABI version check.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "collector",
});

pub use self::sandglass::collector::log::LogLevel;
pub use self::sandglass::collector::types as wit;

/// The ABI version this host speaks: the WIT package version.
pub const ABI_VERSION: &str = "1.0.0";

/// The export a plugin must provide.
const PLUGIN_INTERFACE: &str = "sandglass:collector/plugin";

/// Check that a component exports the plugin interface at this host's ABI
/// version; say which version it was built for when it does not.
pub fn check_exports<'a>(exports: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let mut versions = Vec::new();
    let mut names = Vec::new();
    for name in exports {
        match name
            .strip_prefix(PLUGIN_INTERFACE)
            .and_then(|v| v.strip_prefix('@'))
        {
            Some(ABI_VERSION) => return Ok(()),
            Some(other) => versions.push(other.to_owned()),
            None => names.push(name.to_owned()),
        }
    }
    match versions.first() {
        Some(v) => Err(format!(
            "plugin was built for Sandglass ABI {v}, this agent speaks ABI {ABI_VERSION}: rebuild it with a plugin-sdk for ABI {ABI_VERSION}"
        )),
        None => Err(format!(
            "not a Sandglass collector: it does not export {PLUGIN_INTERFACE}@{ABI_VERSION} (exports: {})",
            if names.is_empty() {
                "nothing".into()
            } else {
                names.join(", ")
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_check_names_both_versions() {
        assert!(check_exports(["sandglass:collector/plugin@1.0.0"].into_iter()).is_ok());
        let err = check_exports(["sandglass:collector/plugin@0.9.0"].into_iter()).unwrap_err();
        assert!(err.contains("0.9.0") && err.contains(ABI_VERSION), "{err}");
        let err = check_exports(["wasi:cli/run@0.2.0"].into_iter()).unwrap_err();
        assert!(
            err.contains("not a Sandglass collector") && err.contains("wasi:cli/run"),
            "{err}"
        );
    }
}
