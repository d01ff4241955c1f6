//! TLS between agent and receiver, with client certificates, using the
//! test CA that `scripts/make-test-ca.sh` makes.

use crate::common::{build_plugins, root};
use crate::fleet_support::{Agent, Receiver, wait_until};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TOKEN_H: &str = "tls-token-h-0123";
const TOKEN_G: &str = "tls-token-g-0123";

fn make_ca(dir: &Path) {
    let status = Command::new("bash")
        .arg(root().join("scripts/make-test-ca.sh"))
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn agents_with_a_client_certificate_get_in_and_others_do_not() {
    build_plugins();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    make_ca(&ca);
    let receiver = Receiver::start(
        dir.path(),
        "127.0.0.1:0",
        &format!(
            r#"tls = {{ cert = "{0}/receiver.pem", key = "{0}/receiver.key", client_ca = "{0}/ca.pem" }}
[services.uptime]
plugin = "uptime"
interval = "1s"
[hosts.h]
token = "{TOKEN_H}"
services = ["uptime"]
[hosts.g]
token = "{TOKEN_G}"
services = ["uptime"]
"#,
            ca.display()
        ),
    );
    let plugins = root().join("target/plugins");
    let with_cert = format!(
        "[tls]\nca = \"{0}/ca.pem\"\ncert = \"{0}/agent.pem\"\nkey = \"{0}/agent.key\"\n",
        ca.display()
    );
    let h = Agent::start_with(
        dir.path(),
        "h",
        TOKEN_H,
        &[&receiver.address],
        &plugins,
        &with_cert,
    );
    let without_cert = format!("[tls]\nca = \"{}/ca.pem\"\n", ca.display());
    let g = Agent::start_with(
        dir.path(),
        "g",
        TOKEN_G,
        &[&receiver.address],
        &plugins,
        &without_cert,
    );
    assert!(
        wait_until(Duration::from_secs(20), || receiver.host_status("h")
            == "OK"),
        "h over TLS: {}\n{}",
        h.log_text(),
        receiver.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(10), || g
            .log_text()
            .contains("set [tls] cert and key")),
        "g: {}",
        g.log_text()
    );
    assert!(receiver.values("g", "uptime", "uptime_seconds").is_empty());
    assert_ne!(receiver.host_status("g"), "OK");
    assert!(
        receiver.log_text().contains("TLS handshake failed"),
        "{}",
        receiver.log_text()
    );
    for log in [h.log_text(), g.log_text(), receiver.log_text()] {
        assert!(
            !log.contains(TOKEN_H) && !log.contains(TOKEN_G),
            "a token reached a log"
        );
    }
    // The agent warns that its config (holding the token) is world-readable.
    assert!(h.log_text().contains("chmod 600"), "{}", h.log_text());
}
