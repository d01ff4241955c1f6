//! What the agent's and the receiver's TOML configuration share: loading a
//! file with errors that name it, and parameter values.

use anyhow::Context;
use serde::Deserialize;
use std::path::Path;

/// Read the TOML file `path` as `T` and `resolve` it against the file's
/// directory; errors name the file (and, for syntax, line and key).
pub fn load_toml<T: serde::de::DeserializeOwned, R>(
    path: &Path,
    resolve: impl FnOnce(T, &Path) -> anyhow::Result<R>,
) -> anyhow::Result<R> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let raw: T = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    resolve(raw, base).with_context(|| format!("invalid config {}", path.display()))
}

/// A parameter value: text, or a number or boolean written without quotes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl ParamValue {
    /// The value as the text a plugin receives.
    pub fn to_text(&self) -> String {
        match self {
            ParamValue::Text(t) => t.clone(),
            ParamValue::Integer(i) => i.to_string(),
            ParamValue::Float(f) => f.to_string(),
            ParamValue::Bool(b) => b.to_string(),
        }
    }
}
