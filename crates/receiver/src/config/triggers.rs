//! `[triggers.NAME]` in `receiver.toml`: a condition over one metric of a
//! service, wherever the service runs (or only on hosts with one of the
//! listed templates, directly or through their groups).
//!
//! ```toml
//! [triggers.cpu_high]
//! service = "cpu"
//! metric = "cpu_usage_percent"
//! labels = { cpu = "total" }          # optional: samples must carry these
//! when = "avg(1m) > 90"               # see triggers::expr
//! recover = "avg(1m) < 80"            # optional (default: when `when` no longer holds)
//! for = "30s"                         # optional: must hold this long first
//! severity = "CRIT"                   # WARN or CRIT (default)
//! message = "{host}: cpu at {value}%" # optional
//! templates = ["linux"]               # optional: only on hosts with these templates
//! ```

use crate::triggers::Trigger;
use sandglass_core::names::check_name;
use sandglass_core::report::Level;
use sandglass_core::units::HumanDuration;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// The message of a trigger that sets none.
const DEFAULT_MESSAGE: &str = "{host} {service}: {trigger} {severity} ({metric}{labels} = {value})";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrigger {
    service: String,
    metric: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    when: String,
    recover: Option<String>,
    #[serde(rename = "for")]
    hold: Option<HumanDuration>,
    severity: Option<String>,
    message: Option<String>,
    #[serde(default)]
    templates: Vec<String>,
}

/// A trigger and where it applies.
#[derive(Clone, Debug)]
pub(super) struct Placed {
    pub service: String,
    /// Empty: every host running the service.
    pub templates: BTreeSet<String>,
    pub trigger: Arc<Trigger>,
}

/// Check every trigger against the services and templates defined.
pub(super) fn resolve(
    raw: &BTreeMap<String, RawTrigger>,
    services: &BTreeSet<&str>,
    templates: &BTreeSet<&str>,
) -> anyhow::Result<Vec<Placed>> {
    raw.iter()
        .map(|(name, t)| {
            resolve_one(name, t, services, templates)
                .map_err(|e| anyhow::anyhow!("[triggers.{name}]: {e}"))
        })
        .collect()
}

fn resolve_one(
    name: &str,
    t: &RawTrigger,
    services: &BTreeSet<&str>,
    templates: &BTreeSet<&str>,
) -> anyhow::Result<Placed> {
    check_name(name).map_err(|e| anyhow::anyhow!("trigger {e}"))?;
    if !services.contains(t.service.as_str()) {
        anyhow::bail!(
            "no service {:?}: define [services.{}] or attach the trigger to another service",
            t.service,
            t.service
        );
    }
    for template in &t.templates {
        if !templates.contains(template.as_str()) {
            anyhow::bail!("no template {template:?}: define [templates.{template}] or remove it");
        }
    }
    let severity = match t.severity.as_deref().unwrap_or("CRIT") {
        "WARN" => Level::Warn,
        "CRIT" => Level::Crit,
        other => anyhow::bail!("severity {other:?}: write \"WARN\" or \"CRIT\""),
    };
    let trigger = Trigger {
        name: name.to_owned(),
        metric: t.metric.clone(),
        labels: t.labels.clone().into_iter().collect(),
        fire: t.when.parse().map_err(|e| anyhow::anyhow!("when: {e}"))?,
        recover: t
            .recover
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("recover: {e}"))?,
        hold: t.hold.map_or(Duration::ZERO, |h| h.0),
        severity,
        message: t
            .message
            .clone()
            .unwrap_or_else(|| DEFAULT_MESSAGE.to_owned()),
    };
    trigger.validate().map_err(anyhow::Error::msg)?;
    Ok(Placed {
        service: t.service.clone(),
        templates: t.templates.iter().cloned().collect(),
        trigger: Arc::new(trigger),
    })
}

/// The triggers of a host that runs `services` and has `templates`, by
/// service.
pub(super) fn for_host(
    placed: &[Placed],
    services: &BTreeSet<&str>,
    templates: &BTreeSet<&str>,
) -> BTreeMap<String, Vec<Arc<Trigger>>> {
    let mut by_service: BTreeMap<String, Vec<Arc<Trigger>>> = BTreeMap::new();
    for p in placed {
        let placed_here =
            p.templates.is_empty() || p.templates.iter().any(|t| templates.contains(t.as_str()));
        if placed_here && services.contains(p.service.as_str()) {
            by_service
                .entry(p.service.clone())
                .or_default()
                .push(p.trigger.clone());
        }
    }
    by_service
}
