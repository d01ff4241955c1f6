//! `sandglass-componentize MODULE.wasm COMPONENT.wasm`: see the library.

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [module, component] = args.as_slice() else {
        anyhow::bail!("usage: sandglass-componentize MODULE.wasm COMPONENT.wasm");
    };
    let wasm = std::fs::read(module).with_context(|| format!("cannot read {module}"))?;
    let encoded = sandglass_componentize::componentize(&wasm).with_context(|| module.clone())?;
    std::fs::write(component, encoded).with_context(|| format!("cannot write {component}"))?;
    Ok(())
}
