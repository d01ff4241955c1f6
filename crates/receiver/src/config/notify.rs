//! `[notify]` in `receiver.toml`: who is told when a trigger fires or
//! recovers and when a host becomes PROBLEM or UNREACHABLE and comes back
//! (docs/notifications.md). The log is always told; webhooks and commands
//! are named channels.
//!
//! ```toml
//! [notify]
//! repeat = "1h"          # one message per host per `repeat` while a problem lasts
//! group_wait = "10s"     # messages wait this long to be grouped
//! storm_hosts = 5        # more hosts than this in one group: one summary message
//! [notify.webhooks.ops]
//! url = "http://127.0.0.1:9000/hook"
//! timeout = "5s"
//! attempts = 10
//! backoff = "2s"         # doubles after each failed attempt ...
//! max_backoff = "10m"    # ... up to this
//! [notify.commands.page]
//! command = ["/usr/local/bin/page", "--team", "ops"]
//! timeout = "10s"
//! attempts = 1
//! ```

use sandglass_core::names::check_name;
use sandglass_core::units::HumanDuration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    repeat: Option<HumanDuration>,
    group_wait: Option<HumanDuration>,
    storm_hosts: Option<usize>,
    #[serde(default)]
    webhooks: BTreeMap<String, RawWebhook>,
    #[serde(default)]
    commands: BTreeMap<String, RawCommand>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    timeout: Option<HumanDuration>,
    attempts: Option<u32>,
    backoff: Option<HumanDuration>,
    max_backoff: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    command: Vec<String>,
    timeout: Option<HumanDuration>,
    attempts: Option<u32>,
    backoff: Option<HumanDuration>,
    max_backoff: Option<HumanDuration>,
}

/// The validated `[notify]`.
#[derive(Clone, Debug, PartialEq)]
pub struct NotifyConfig {
    pub repeat: Duration,
    pub group_wait: Duration,
    pub storm_hosts: usize,
    pub channels: Vec<Channel>,
}

/// Where a notification goes, and how hard to try.
#[derive(Clone, Debug, PartialEq)]
pub struct Channel {
    pub name: String,
    pub target: Target,
    pub timeout: Duration,
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Plain HTTP: `host:port` to connect to, `Host` header and path.
    Webhook {
        url: String,
        address: String,
        path: String,
    },
    /// The program and its arguments (the notification comes on stdin).
    Command { argv: Vec<String> },
}

impl Default for NotifyConfig {
    fn default() -> NotifyConfig {
        RawNotify::default()
            .resolve(Path::new("."))
            .expect("the defaults are valid")
    }
}

impl RawNotify {
    pub(super) fn resolve(&self, base: &Path) -> anyhow::Result<NotifyConfig> {
        let repeat = self.repeat.map_or(Duration::from_secs(3600), |d| d.0);
        if repeat < Duration::from_secs(1) {
            anyhow::bail!(
                "[notify] repeat = \"{}\" is below 1s: write e.g. \"1h\"",
                fmt(repeat)
            );
        }
        let storm_hosts = self.storm_hosts.unwrap_or(5);
        if storm_hosts == 0 {
            anyhow::bail!(
                "[notify] storm_hosts = 0: write at least 1 (a summary for more hosts than this)"
            );
        }
        let mut channels = Vec::new();
        for (name, w) in &self.webhooks {
            let where_ = format!("[notify.webhooks.{name}]");
            check_unique(name, &self.commands, &where_)?;
            let target = webhook(&w.url).map_err(|e| anyhow::anyhow!("{where_} url: {e}"))?;
            let tries = (w.timeout, w.attempts, w.backoff, w.max_backoff);
            channels.push(channel(name, target, tries, 10, &where_)?);
        }
        for (name, c) in &self.commands {
            let where_ = format!("[notify.commands.{name}]");
            check_name(name).map_err(|e| anyhow::anyhow!("{where_}: channel {e}"))?;
            let Some(program) = c.command.first() else {
                anyhow::bail!(
                    "{where_} command is empty: write [\"/path/to/program\", \"arg\", ...]"
                );
            };
            let mut argv = c.command.clone();
            if program.contains('/') {
                argv[0] = base.join(program).to_string_lossy().into_owned();
            }
            let tries = (c.timeout, c.attempts, c.backoff, c.max_backoff);
            channels.push(channel(name, Target::Command { argv }, tries, 1, &where_)?);
        }
        Ok(NotifyConfig {
            repeat,
            group_wait: self.group_wait.map_or(Duration::from_secs(10), |d| d.0),
            storm_hosts,
            channels,
        })
    }
}

type Tries = (
    Option<HumanDuration>,
    Option<u32>,
    Option<HumanDuration>,
    Option<HumanDuration>,
);

fn channel(
    name: &str,
    target: Target,
    (timeout, attempts, backoff, max_backoff): Tries,
    default_attempts: u32,
    where_: &str,
) -> anyhow::Result<Channel> {
    check_name(name).map_err(|e| anyhow::anyhow!("{where_}: channel {e}"))?;
    let timeout = timeout.map_or(Duration::from_secs(5), |d| d.0);
    if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(600) {
        anyhow::bail!(
            "{where_} timeout = \"{}\": write between 100ms and 10m",
            fmt(timeout)
        );
    }
    let attempts = attempts.unwrap_or(default_attempts);
    if attempts == 0 {
        anyhow::bail!("{where_} attempts = 0: write at least 1 (the first try counts)");
    }
    let backoff = backoff.map_or(Duration::from_secs(2), |d| d.0);
    let max_backoff = max_backoff.map_or(Duration::from_secs(600), |d| d.0);
    if backoff.is_zero() || max_backoff < backoff {
        anyhow::bail!("{where_} backoff must be above 0 and max_backoff at least backoff");
    }
    Ok(Channel {
        name: name.to_owned(),
        target,
        timeout,
        attempts,
        backoff,
        max_backoff,
    })
}

fn check_unique(
    name: &str,
    commands: &BTreeMap<String, RawCommand>,
    where_: &str,
) -> anyhow::Result<()> {
    if commands.contains_key(name) {
        anyhow::bail!("{where_}: [notify.commands.{name}] has the same name: rename one of them");
    }
    Ok(())
}

/// A webhook's target: see [`http_url`].
fn webhook(url: &str) -> Result<Target, String> {
    let (address, path) = http_url(
        url,
        "for https use a command channel (e.g. curl) or a local relay",
    )?;
    Ok(Target::Webhook {
        url: url.to_owned(),
        address,
        path,
    })
}

/// `http://host[:port][/path]` split into the address to connect to
/// (`host:port`, port 80 by default) and the path. Only plain HTTP: the
/// receiver carries no HTTPS client; `https_advice` says what to do instead.
pub(super) fn http_url(url: &str, https_advice: &str) -> Result<(String, String), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "{url:?}: only http:// URLs are supported; {https_advice}"
        ));
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url:?}: write http://host[:port]/path"));
    }
    let address = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let path = if path.is_empty() { "/" } else { path };
    Ok((address, path.to_owned()))
}

fn fmt(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<NotifyConfig> {
        let raw: RawNotify = toml::from_str(text)?;
        raw.resolve(Path::new("/etc/sandglass"))
    }

    #[test]
    fn defaults_channels_and_errors_that_name_the_key() {
        let c = parse("").unwrap();
        assert_eq!((c.repeat.as_secs(), c.storm_hosts), (3600, 5));
        let c = parse(
            "[webhooks.ops]\nurl = \"http://127.0.0.1:9000/hook\"\n\
             [commands.page]\ncommand = [\"bin/page\", \"-x\"]\ntimeout = \"1s\"\n",
        )
        .unwrap();
        assert_eq!(c.channels.len(), 2);
        assert_eq!(
            c.channels[0].target,
            Target::Webhook {
                url: "http://127.0.0.1:9000/hook".into(),
                address: "127.0.0.1:9000".into(),
                path: "/hook".into()
            }
        );
        assert_eq!((c.channels[0].attempts, c.channels[1].attempts), (10, 1));
        assert_eq!(
            c.channels[1].target,
            Target::Command {
                argv: vec!["/etc/sandglass/bin/page".into(), "-x".into()]
            }
        );
        for (text, says) in [
            (
                "[webhooks.a]\nurl = \"https://x/\"\n",
                "[notify.webhooks.a] url",
            ),
            (
                "[webhooks.a]\nurl = \"http://x/\"\nattempts = 0\n",
                "attempts = 0",
            ),
            (
                "[commands.a]\ncommand = []\n",
                "[notify.commands.a] command is empty",
            ),
            ("repeat = \"0s\"\n", "repeat"),
            (
                "[webhooks.a]\nurl = \"http://x/\"\n[commands.a]\ncommand = [\"x\"]\n",
                "same name",
            ),
        ] {
            let e = format!("{:#}", parse(text).unwrap_err());
            assert!(e.contains(says), "{text}: {e}");
        }
        let e = parse("[webhooks.a]\nurl = \"http://x/\"\nretries = 3\n").unwrap_err();
        assert!(e.to_string().contains("retries"), "{e}");
    }
}
