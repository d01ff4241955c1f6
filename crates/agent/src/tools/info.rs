//! `agent plugin info`: what a plugin says about itself, the sandbox it runs
//! in (lean or WASI) and the interfaces it imports.

use sandglass_core::text::Escaped;
use sandglass_runtime::Runtime;
use std::path::Path;

/// Print the plugin at `file`'s description, as a table or as JSON.
pub fn show(file: &Path, json: bool) -> anyhow::Result<()> {
    let runtime = Runtime::new(None)?;
    let plugin = runtime.load(file)?;
    let d = &plugin.description;
    let imports = runtime.imports(&plugin);
    let sandbox = if plugin.is_lean() {
        "lean (no WASI)"
    } else {
        "WASI"
    };
    if json {
        let value = serde_json::json!({
            "sha256": plugin.sha256,
            "description": d,
            "sandbox": sandbox,
            "imports": imports,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        // Everything below but the hash is the plugin's own word: escaped.
        println!("name:      {}", Escaped(&d.name));
        println!("version:   {}", Escaped(&d.version));
        println!("abi:       {}", d.abi_version);
        let grants: Vec<String> = d
            .grants
            .iter()
            .map(|g| format!("{g:?}").to_lowercase())
            .collect();
        println!(
            "grants:    {}",
            if grants.is_empty() {
                "none (read-only /proc only)".into()
            } else {
                grants.join(", ")
            }
        );
        println!("interval:  {}s", d.interval_seconds);
        println!("sandbox:   {sandbox}");
        println!("imports:   {}", imports.join(", "));
        println!("sha256:    {}", plugin.sha256);
        println!("metrics:");
        for m in &d.metrics {
            let unit = if m.unit.is_empty() {
                String::new()
            } else {
                format!(" [{}]", Escaped(&m.unit))
            };
            println!(
                "  {} ({:?}){unit} {}",
                Escaped(&m.name),
                m.kind,
                Escaped(&m.help)
            );
        }
    }
    Ok(())
}
