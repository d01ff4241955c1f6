//! `/metrics` on the receiver's HTTP listener: what a real agent's plugins
//! reported, service levels and host status as series, the receiver's own
//! health — in a text Prometheus' own `promtool check metrics` accepts —
//! and a bearer token that guards it.

use crate::fleet_support::{Agent, Receiver, wait_until};
use crate::http_client::get;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "token-metrics-test";
const HTTP_TOKEN: &str = "scrape-token-1234";

pub fn promtool_accepts(text: &str) {
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/setup.sh installs it)");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
}

#[test]
fn metrics_carry_what_the_plugins_reported_and_promtool_accepts_them() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = crate::common::plugin_dir(dir.path(), &["uptime", "cpu", "loadavg"]);
    let model = format!(
        r#"
[http]
listen = "127.0.0.1:0"
token = "{HTTP_TOKEN}"
[services.uptime]
plugin = "uptime"
interval = "1s"
[services.cpu]
plugin = "cpu"
interval = "1s"
[services.loadavg]
plugin = "loadavg"
interval = "1s"
[services.seq]
plugin = "misbehave"
interval = "1s"
params = {{ mode = "sequence", values = "99", crit = 50 }}
[services.boom]
plugin = "misbehave"
interval = "1s"
params = {{ mode = "panic" }}
[hosts.a]
token = "{TOKEN}"
services = ["uptime", "cpu", "loadavg", "seq", "boom"]
"#
    );
    let receiver = Receiver::start(dir.path(), "127.0.0.1:0", &model);
    let http = receiver
        .http
        .clone()
        .expect("the receiver says where HTTP is");
    let _agent = Agent::start_with(dir.path(), "a", TOKEN, &[&receiver.address], &plugins, "");
    // The cpu plugin reports utilisation from its second run on.
    let mut body = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            body = get(&http, "/metrics", Some(HTTP_TOKEN)).1;
            body.contains("cpu_utilization_percent{")
                && body.contains("service=\"seq\"")
                && body.contains("sandglass_plugin_failures_total{")
        }),
        "{body}\n{}",
        receiver.log_text()
    );
    promtool_accepts(&body);
    for expected in [
        "# TYPE cpu_jiffies_total counter",
        "# TYPE load1 gauge",
        "value{host=\"a\",service=\"seq\",kind=\"driven\"} 99",
        "sandglass_service_level{host=\"a\",service=\"seq\"} 2",
        "sandglass_service_level{host=\"a\",service=\"loadavg\"} 0",
        "sandglass_receiver_connected_agents 1",
        // The receiver's own health.
        "# TYPE sandglass_receiver_batches_total counter",
        "# TYPE sandglass_receiver_gaps_total counter",
        "# TYPE sandglass_receiver_commit_seconds histogram",
        "sandglass_receiver_commit_seconds_bucket{le=\"+Inf\"} ",
        "sandglass_plugin_failures_total{reason=\"trap\"} ",
    ] {
        assert!(body.contains(expected), "{expected}:\n{body}");
    }
    assert!(
        body.contains("sandglass_host_up{host=\"a\",status="),
        "{body}"
    );
    let counter = |name: &str| -> f64 {
        let prefix = format!("{name} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{body}"))
    };
    assert!(counter("sandglass_receiver_batches_total") >= 1.0);
    assert!(counter("sandglass_receiver_samples_total") >= 1.0);
    // Every committed batch was received (one may be in flight).
    let committed = counter("sandglass_receiver_commit_seconds_count");
    assert!(committed >= 1.0 && committed <= counter("sandglass_receiver_batches_total"));
    // Without the token, or with another: refused.
    assert_eq!(get(&http, "/metrics", None).0, 401);
    assert_eq!(get(&http, "/metrics", Some("scrape-token-wrong")).0, 401);
    assert_eq!(get(&http, "/nothing-here", Some(HTTP_TOKEN)).0, 404);
}
