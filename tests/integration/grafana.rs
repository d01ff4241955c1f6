//! The Grafana dashboard (`packaging/grafana/sandglass.json`): every query
//! in it, run against VictoriaMetrics fed by a real receiver and a real
//! agent through remote write, returns data.

use crate::common::{plugin_dir, root};
use crate::fleet_support::{Agent, Receiver, wait_until};
use crate::victoria::Victoria;
use serde_json::Value;
use std::time::Duration;

const TOKEN: &str = "token-grafana-test";

/// Every PromQL expression of the dashboard's panels, and of its `host`
/// variable (`label_values(METRIC, LABEL)` asks for METRIC's series).
fn expressions(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            out.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            let query = variable["query"]["query"].as_str().unwrap();
            let (metric, label) = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .and_then(|q| q.split_once(','))
                .unwrap_or_else(|| panic!("not label_values(METRIC, LABEL): {query}"));
            out.push(format!("count by ({}) ({metric})", label.trim()));
        }
    }
    out
}

#[test]
fn every_dashboard_query_returns_data_from_victoria_metrics() {
    let path = root().join("packaging/grafana/sandglass.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let queries = expressions(&dashboard);
    assert!(queries.len() >= 8, "{queries:?}");

    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path(), &["uptime", "cpu", "loadavg", "memory"]);
    let vm = Victoria::start(dir.path(), false);
    let mut model = format!(
        "[[remote_write]]\nname = \"vm\"\nurl = \"{}\"\nbackoff = \"100ms\"\nmax_backoff = \"1s\"\n",
        vm.write_url()
    );
    let services = ["uptime", "cpu", "loadavg", "memory"];
    for s in services {
        model += &format!("[services.{s}]\nplugin = \"{s}\"\ninterval = \"1s\"\n");
    }
    model += &format!("[hosts.a]\ntoken = \"{TOKEN}\"\nservices = {services:?}\n");
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &model);
    let _agent = Agent::start_with(dir.path(), "a", TOKEN, &[&receiver.address], &plugins, "");

    // The host variable set to the agent's host.
    let queries: Vec<String> = queries.iter().map(|q| q.replace("$host", "a")).collect();
    let mut empty: Vec<(String, String)> = Vec::new();
    let answered = wait_until(Duration::from_secs(90), || {
        empty = queries
            .iter()
            .filter_map(|q| match vm.query(q) {
                Ok(result) if !result.is_empty() => None,
                Ok(_) => Some((q.clone(), "no data".to_owned())),
                Err(e) => Some((q.clone(), e)),
            })
            .collect();
        empty.is_empty()
    });
    assert!(
        answered,
        "queries without data: {empty:#?}\n{}",
        receiver.log_text()
    );
}
