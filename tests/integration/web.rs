//! The status page and its JSON API on the receiver's HTTP listener, with a
//! real receiver, real agents and real plugins: the API as a script uses it
//! (token, filters, pages, series, errors, ack and maintenance through the
//! same code as the commands), and the page in headless Chromium (log in,
//! see the hosts, open one, a plot with points drawn, acknowledge).

use crate::fleet_support::{Agent, Receiver, wait_until};
use crate::http_client::{Answer, request};
use crate::webdriver::Browser;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const HTTP_TOKEN: &str = "web-token-123456";

/// Hosts `sick` (its `seq` service reports CRIT: a PROBLEM to acknowledge)
/// and `well` (its `calm` service reports low values), both with `uptime`
/// and in group `web`; `[web]` names the listener (the alias of `[http]`).
/// No cpu service: on a busy machine its own threshold would make `well` a
/// PROBLEM too.
fn model() -> String {
    format!(
        r#"
[web]
listen = "127.0.0.1:0"
token = "{HTTP_TOKEN}"
[services.uptime]
plugin = "uptime"
interval = "1s"
[services.calm]
plugin = "misbehave"
interval = "1s"
params = {{ mode = "sequence", values = "10,20,30" }}
[services.seq]
plugin = "misbehave"
interval = "1s"
params = {{ mode = "sequence", values = "99,97,98", crit = 50 }}
[templates.base]
services = ["uptime"]
[groups.web]
templates = ["base"]
[hosts.sick]
token = "token-sick-host"
groups = ["web"]
services = ["seq"]
[hosts.well]
token = "token-well-host"
groups = ["web"]
services = ["calm"]
"#
    )
}

/// A receiver with `model()` and an agent for each host.
fn fleet(dir: &Path) -> (Receiver, Vec<Agent>, String) {
    let plugins = crate::common::plugin_dir(dir, &["uptime"]);
    let receiver = Receiver::start(dir, "127.0.0.1:0", &model());
    let http = receiver
        .http
        .clone()
        .expect("the receiver says where HTTP is");
    let agents = ["sick", "well"]
        .iter()
        .map(|h| {
            let token = format!("token-{h}-host");
            Agent::start_with(dir, h, &token, &[&receiver.address], &plugins, "")
        })
        .collect();
    (receiver, agents, http)
}

fn api(http: &str, path: &str) -> Answer {
    let auth = format!("Bearer {HTTP_TOKEN}");
    request(http, "GET", path, &[("Authorization", &auth)], "")
}

fn post(http: &str, path: &str, body: &str) -> Answer {
    let auth = format!("Bearer {HTTP_TOKEN}");
    request(
        http,
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body,
    )
}

fn host_status(http: &str, host: &str) -> String {
    api(http, &format!("/api/hosts/{host}")).json()["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_api_lists_filters_plots_and_acts_like_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, _agents, http) = fleet(dir.path());
    assert!(
        wait_until(Duration::from_secs(30), || host_status(&http, "sick")
            == "PROBLEM"
            && host_status(&http, "well") == "OK"),
        "{}\n{}",
        api(&http, "/api/hosts").body,
        receiver.log_text()
    );

    // The table: worst first, counts per status, filters, pages.
    let all = api(&http, "/api/hosts").json();
    let names: Vec<&str> = all["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sick", "well"], "{all}");
    assert_eq!(all["counts"]["PROBLEM"], 1);
    assert_eq!(all["hosts"][0]["groups"][0], "web");
    assert!(
        all["hosts"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("seq CRIT"),
        "{all}"
    );
    let ok = api(&http, "/api/hosts?status=ok").json();
    assert_eq!(ok["total"], 1);
    assert_eq!(ok["hosts"][0]["name"], "well");
    let page2 = api(&http, "/api/hosts?per_page=1&page=2").json();
    assert_eq!(
        (page2["pages"].as_u64(), page2["hosts"][0]["name"].as_str()),
        (Some(2), Some("well"))
    );
    assert_eq!(api(&http, "/api/hosts?name=WEL").json()["total"], 1);
    assert_eq!(api(&http, "/api/hosts?group=web").json()["total"], 2);

    // Mistakes are 4xx with a message naming the thing.
    for (path, code, says) in [
        ("/api/hosts/nosuch", 404, "no host \"nosuch\""),
        ("/api/hosts?status=BAD", 400, "UNREACHABLE, PROBLEM"),
        ("/api/hosts?group=nogroup", 404, "nogroup"),
        ("/api/hosts?colour=red", 400, "unknown parameter \"colour\""),
        ("/api/series?host=sick&service=seq", 400, "give metric="),
        ("/api/series?host=sick&service=seq&metric=nope", 404, "nope"),
        (
            "/api/series?host=sick&service=seq&metric=value&since=soon",
            400,
            "invalid time",
        ),
        ("/api/nothing", 404, "no API endpoint /api/nothing"),
    ] {
        let answer = api(&http, path);
        assert_eq!(answer.code, code, "{path}: {}", answer.body);
        let message = answer.json()["error"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{path}: {message}");
    }
    assert_eq!(request(&http, "GET", "/api/hosts", &[], "").code, 401);

    // A host's page: services with level and values, events.
    let sick = api(&http, "/api/hosts/sick").json();
    let seq = service(&sick, "seq");
    assert_eq!(seq["level"], "CRIT", "{sick}");
    assert_eq!(seq["values"][0]["name"], "value");
    assert!(
        sick["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["service"] == "seq" && e["new"] == "CRIT"),
        "{sick}"
    );

    // A series aggregated to the width asked: 1 h over 60 px is 60 s a point.
    let mut series = Value::Null;
    assert!(wait_until(Duration::from_secs(20), || {
        series = api(
            &http,
            "/api/series?host=sick&service=seq&metric=value&label=kind=driven&since=1h&width=60",
        )
        .json();
        series["series"][0]["points"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    }));
    assert_eq!(series["step_ms"], 60_000, "{series}");
    let points = series["series"][0]["points"].as_array().unwrap();
    assert!(points.len() <= 2, "one bucket a minute: {series}");
    let value = points[0][1].as_f64().unwrap();
    assert!(
        (97.0..=99.0).contains(&value),
        "the average of 99, 97, 98: {series}"
    );

    // Changes: JSON only, through the same code as `receiver ack` and
    // `receiver maintenance`.
    let auth = format!("Bearer {HTTP_TOKEN}");
    let form = request(
        &http,
        "POST",
        "/api/ack",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        "host=sick",
    );
    assert_eq!(form.code, 415, "{}", form.body);
    let elsewhere = request(
        &http,
        "POST",
        "/api/ack",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Origin", "http://evil.example"),
        ],
        r#"{"host":"sick"}"#,
    );
    assert_eq!(elsewhere.code, 403, "{}", elsewhere.body);
    let refused = post(&http, "/api/ack", r#"{"host":"well"}"#);
    assert_eq!(refused.code, 409);
    assert!(
        refused.body.contains("no problem to acknowledge"),
        "{}",
        refused.body
    );
    let acked = post(&http, "/api/ack", r#"{"host":"sick","comment":"on it"}"#);
    assert_eq!(acked.code, 201, "{}", acked.body);
    let acks = &api(&http, "/api/hosts/sick").json()["acks"];
    assert_eq!(acks[0]["id"], acked.json()["id"]);
    assert_eq!(acks[0]["comment"], "on it");
    assert_eq!(
        api(&http, "/api/hosts").json()["hosts"][0]["acknowledged"],
        true
    );

    let window = post(
        &http,
        "/api/maintenance",
        r#"{"group":"web","for":"2h","comment":"upgrade"}"#,
    );
    assert_eq!(window.code, 201, "{}", window.body);
    let id = window.json()["id"].as_i64().unwrap();
    let listed = receiver.json(&[
        "maintenance",
        "--config",
        receiver.config.to_str().unwrap(),
        "--list",
        "--json",
    ]);
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["group"], "web");
    assert_eq!(
        api(&http, "/api/hosts/well").json()["maintenance"][0]["id"],
        id
    );
    let unknown = post(&http, "/api/maintenance", r#"{"host":"ghost","for":"1h"}"#);
    assert_eq!(unknown.code, 404, "{}", unknown.body);
    assert_eq!(
        post(&http, "/api/maintenance", r#"{"host":"well"}"#).code,
        400
    );
    assert_eq!(
        post(&http, &format!("/api/maintenance/{id}/end"), "{}").code,
        200
    );
    assert_eq!(
        post(&http, &format!("/api/maintenance/{id}/end"), "{}").code,
        404
    );

    // A browser logs in with the token and gets a session cookie, not the
    // token; the cookie opens the API.
    let login = request(
        &http,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("token={HTTP_TOKEN}"),
    );
    let cookie = login.header("set-cookie").unwrap_or_default().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(HTTP_TOKEN));
    let session = cookie.split(';').next().unwrap();
    let with_cookie = request(&http, "GET", "/api/hosts", &[("Cookie", session)], "");
    assert_eq!(with_cookie.code, 200);
    let wrong = request(
        &http,
        "GET",
        "/api/hosts",
        &[("Cookie", "sandglass_session=0000")],
        "",
    );
    assert_eq!(wrong.code, 401);
}

fn service<'a>(host: &'a Value, name: &str) -> &'a Value {
    host["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no service {name}: {host}"))
}

#[test]
fn the_page_in_chromium_shows_hosts_plots_and_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, _agents, http) = fleet(dir.path());
    assert!(
        wait_until(Duration::from_secs(30), || host_status(&http, "sick")
            == "PROBLEM"),
        "{}",
        receiver.log_text()
    );
    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::start(profile.path(), &dir.path().join("chromedriver.log"));
    let wait = |what: &str, script: &str| {
        let held = wait_until(Duration::from_secs(30), || {
            browser.eval(script) == Value::Bool(true)
        });
        assert!(
            held,
            "{what}: the page shows {}",
            browser.eval("return document.body.innerText")
        );
    };

    // The token guards the page: the login form first.
    browser.goto(&http);
    wait(
        "the login form",
        "return !!document.querySelector('input[name=token]')",
    );
    browser.type_into("input[name=token]", HTTP_TOKEN);
    browser.click("button[type=submit]");

    // The hosts table, worst first, with status badges.
    wait(
        "two hosts",
        "return document.querySelectorAll('#hosts tr.host-row').length === 2",
    );
    let first = browser.eval(
        "const r = document.querySelector('#hosts tr.host-row'); \
         return [r.querySelector('.host-link').textContent, r.querySelector('.badge').textContent]",
    );
    assert_eq!(first, serde_json::json!(["sick", "PROBLEM"]));
    assert_eq!(
        browser.eval("return document.querySelector('.tab.active').textContent"),
        "All2"
    );

    // A host's page: services, and a plot with points drawn.
    browser.click("#hosts tr.host-row .host-link");
    wait(
        "the host's page",
        "return document.getElementById('host-name')?.textContent === 'sick'",
    );
    wait(
        "the seq service at CRIT",
        "return [...document.querySelectorAll('.service-row')].some(r => r.textContent.includes('seq') && r.textContent.includes('CRIT'))",
    );
    wait(
        "a plot with points",
        "return [...document.querySelectorAll('#plot path.series')].some(p => Number(p.dataset.points) >= 2)",
    );
    // Click a value of another service to plot it instead.
    browser.eval(
        "[...document.querySelectorAll('.service-row')] \
         .find(r => r.querySelector('b').textContent === 'uptime').querySelector('.chip').click()",
    );
    wait(
        "the uptime plot",
        "return document.getElementById('plot-metric').value.startsWith('uptime/') && \
         [...document.querySelectorAll('#plot path.series')].some(p => Number(p.dataset.points) >= 1)",
    );

    // Acknowledge: the receiver records it.
    browser.type_into("#ack-comment", "seen in the browser");
    browser.click("#ack-button");
    wait(
        "the ack's confirmation",
        "return document.getElementById('action-note').textContent.startsWith('acknowledged #')",
    );
    let conn = rusqlite::Connection::open(dir.path().join("receiver.db")).unwrap();
    let (host, comment): (String, String) = conn
        .query_row(
            "SELECT host, comment FROM acks WHERE cleared_ms IS NULL",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (host.as_str(), comment.as_str()),
        ("sick", "seen in the browser")
    );
    wait(
        "the ack on the page",
        "return document.getElementById('host-actions').textContent.includes('Acknowledged #')",
    );

    browser.eval("window.scrollTo(0, 0)");
    let png = browser.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let shot = dir.path().join("host-page.png");
    std::fs::write(&shot, &png).unwrap();
    // The temp dir goes with the test; SANDGLASS_SCREENSHOT=FILE keeps a copy.
    if let Ok(keep) = std::env::var("SANDGLASS_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}
