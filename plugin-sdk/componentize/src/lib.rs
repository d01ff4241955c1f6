//! Make the core module of a lean collector (plugin-sdk built for
//! `wasm32-unknown-unknown`) a component, from the WIT world wit-bindgen
//! embedded in it. No adapter is added: the module imports only Sandglass
//! interfaces, so the component imports no WASI.
//!
//! Used by `scripts/build-plugins.sh` (through the `sandglass-componentize`
//! binary, which builds without wasmtime) and by `agent plugin build`.

use anyhow::Context;

/// The component of the core module `module`.
pub fn componentize(module: &[u8]) -> anyhow::Result<Vec<u8>> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .and_then(|encoder| encoder.validate(true).encode())
        .context(
            "not a lean collector module: build a plugin-sdk crate for \
             wasm32-unknown-unknown (a module that imports WASI needs wasm32-wasip2)",
        )
}
