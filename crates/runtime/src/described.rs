//! What a plugin's `describe` may say. The name becomes a field of every log
//! line about the plugin and of every report it makes (the receiver refuses
//! reports with names it could not store); the version and the metrics are
//! printed by `agent plugin info` and `check`. A plugin that describes
//! itself with text no name may hold, or with more than anyone documents,
//! is refused when it is loaded, naming the field, instead of failing in
//! every report or repainting the operator's terminal.

use super::abi::wit;
use sandglass_core::names::check_name;
use sandglass_core::text::{Escaped, truncate};

/// Metrics a description may document.
pub const MAX_METRICS: usize = 1000;

/// Bytes of a version, a metric's name or unit, and a metric's help.
const MAX_VERSION: usize = 64;
const MAX_METRIC_NAME: usize = 128;
const MAX_UNIT: usize = 64;
const MAX_HELP: usize = 1024;

/// Check a description; the error names the field and what is wrong.
pub fn check(d: &wit::Description) -> Result<(), String> {
    // Long names are cut before they are quoted in the error.
    check_name(truncate(&d.name, 129)).map_err(|e| format!("plugin {e}"))?;
    text("version", &d.version, MAX_VERSION)?;
    if d.metrics.len() > MAX_METRICS {
        return Err(format!(
            "{} metrics, more than the {MAX_METRICS} a description may list",
            d.metrics.len()
        ));
    }
    for m in &d.metrics {
        text("a metric name", &m.name, MAX_METRIC_NAME)?;
        text(&format!("the unit of metric {}", m.name), &m.unit, MAX_UNIT)?;
        text(&format!("the help of metric {}", m.name), &m.help, MAX_HELP)?;
    }
    Ok(())
}

/// `value` of `field`: at most `max` bytes, no control characters.
fn text(field: &str, value: &str, max: usize) -> Result<(), String> {
    let quoted = Escaped(truncate(value, 64));
    if value.len() > max {
        return Err(format!(
            "{field} \"{quoted}…\" is {} bytes, more than {max}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} \"{quoted}\" holds control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(name: &str, version: &str, metrics: &[(&str, &str, &str)]) -> wit::Description {
        wit::Description {
            name: name.into(),
            version: version.into(),
            grants: Vec::new(),
            interval_seconds: 10,
            metrics: metrics
                .iter()
                .map(|(name, unit, help)| wit::MetricInfo {
                    name: (*name).into(),
                    kind: wit::MetricKind::Gauge,
                    unit: (*unit).into(),
                    help: (*help).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_plain_description_passes() {
        let d = described("cpu", "1.2.0", &[("cpu_seconds_total", "seconds", "Time.")]);
        assert_eq!(check(&d), Ok(()));
    }

    #[test]
    fn each_field_is_refused_by_name_with_its_text_escaped() {
        let err = check(&described("bad\u{1b}[2J\nname", "1", &[])).unwrap_err();
        assert!(
            err.starts_with("plugin name \"bad\\u{1b}[2J\\nname\""),
            "{err}"
        );
        let err = check(&described(&"n".repeat(1 << 20), "1", &[])).unwrap_err();
        assert!(err.len() < 400, "{err}");
        let err = check(&described("p", "1\r\n", &[])).unwrap_err();
        assert_eq!(err, "version \"1\\r\\n\" holds control characters");
        let err = check(&described("p", &"9".repeat(65), &[])).unwrap_err();
        assert!(err.ends_with("is 65 bytes, more than 64"), "{err}");
        let err = check(&described("p", "1", &[("x", "", "red\u{1b}[31m")])).unwrap_err();
        assert_eq!(
            err,
            "the help of metric x \"red\\e[31m\" holds control characters"
        );
        let err = check(&described("p", "1", &[("x\ny", "", "")])).unwrap_err();
        assert!(err.starts_with("a metric name \"x\\ny\""), "{err}");
    }

    #[test]
    fn more_metrics_than_anyone_documents_are_refused() {
        let many = vec![("m", "", ""); MAX_METRICS + 1];
        let err = check(&described("p", "1", &many)).unwrap_err();
        assert_eq!(
            err,
            "1001 metrics, more than the 1000 a description may list"
        );
        let enough = vec![("m", "", ""); MAX_METRICS];
        assert_eq!(check(&described("p", "1", &enough)), Ok(()));
    }
}
