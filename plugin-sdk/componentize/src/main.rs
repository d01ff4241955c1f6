//! `sandglass-componentize MODULE.wasm COMPONENT.wasm`: make the core module
//! of a lean collector (plugin-sdk built for `wasm32-unknown-unknown`) a
//! component, from the WIT world wit-bindgen embedded in it. No adapter is
//! added: the module imports only Sandglass interfaces, so the component
//! imports no WASI.

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [module, component] = args.as_slice() else {
        anyhow::bail!("usage: sandglass-componentize MODULE.wasm COMPONENT.wasm");
    };
    let wasm = std::fs::read(module).with_context(|| format!("cannot read {module}"))?;
    let encoded = wit_component::ComponentEncoder::default()
        .module(&wasm)
        .and_then(|encoder| encoder.validate(true).encode())
        .with_context(|| {
            format!(
                "{module} is not a lean collector module: build a plugin-sdk crate for \
                 wasm32-unknown-unknown (a module that imports WASI needs wasm32-wasip2)"
            )
        })?;
    std::fs::write(component, encoded).with_context(|| format!("cannot write {component}"))?;
    Ok(())
}
