//! `receiver`: the Sandglass receiver. Parses flags, reads config, calls the library.

use clap::{Parser, Subcommand};
use sandglass_core::time::now_ms;
use sandglass_core::units::HumanDuration;
use sandglass_receiver::config::{Model, database_of};
use sandglass_receiver::notify::{admin, message::rfc3339};
use sandglass_receiver::{events, plugins, query, rollout, server, store, view};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "receiver",
    version,
    about = "Sandglass receiver: hands out schedules, stores reports, tracks liveness"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve agents until SIGTERM or Ctrl-C; SIGHUP (or editing the file) reloads the configuration.
    Run {
        #[arg(long, default_value = "/etc/sandglass/receiver.toml")]
        config: PathBuf,
        /// Listen here instead of the configuration's `listen` (port 0: any free port).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Every host (OK / PROBLEM / UNREACHABLE / PENDING, since when, why) and its services.
    Status {
        #[arg(long, default_value = "/etc/sandglass/receiver.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Stored values: of one host, or of one service or metric across hosts.
    Query(query::QueryArgs),
    /// List the event log: status changes of hosts, lateness and levels of
    /// services, triggers firing and recovering. Oldest first.
    Events {
        #[arg(long, default_value = "/etc/sandglass/receiver.toml")]
        config: PathBuf,
        /// Only this host's events.
        #[arg(long)]
        host: Option<String>,
        /// Only this service's events.
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        listing: Listing,
    },
    /// Acknowledge a host's problem (or one service's): no more
    /// notifications about it until it recovers.
    Ack {
        #[arg(long, default_value = "/etc/sandglass/receiver.toml")]
        config: PathBuf,
        #[arg(long)]
        host: String,
        #[arg(long)]
        service: Option<String>,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Maintenance windows: no notifications for a host or a group while
    /// one lasts. Open one (--host/--group with --for, or --from/--until),
    /// --list them, or --end one.
    Maintenance(MaintenanceArgs),
    /// List notifications: each message per channel, its state (pending,
    /// sent, failed, suppressed), attempts and last error. Oldest first.
    Notifications {
        #[arg(long, default_value = "/etc/sandglass/receiver.toml")]
        config: PathBuf,
        #[command(flatten)]
        listing: Listing,
    },
    /// Each plugin: its builds (sha256, size, first seen), the hosts that
    /// run and pin each, its runs and UNKNOWN results over --since, and its
    /// rollout; `resume` or `abandon` a halted rollout.
    Plugins {
        #[command(subcommand)]
        action: Option<RolloutAction>,
        #[arg(long, default_value = "/etc/sandglass/receiver.toml")]
        config: PathBuf,
        /// The window runs and failures are counted over, e.g. `1h`, `1d`.
        #[arg(long, default_value = "1h")]
        since: HumanDuration,
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and print each host's schedule.
    Check {
        #[arg(long, default_value = "/etc/sandglass/receiver.toml")]
        config: PathBuf,
    },
}

/// What an operator does about a plugin's rollout.
#[derive(Subcommand)]
enum RolloutAction {
    /// Go on with a halted rollout: its canaries get the new build again,
    /// judged on runs from now on.
    Resume {
        /// The plugin, as `receiver plugins` names it.
        plugin: String,
        #[arg(long, default_value = "/etc/sandglass/receiver.toml")]
        config: PathBuf,
    },
    /// Give a halted (or stepping) rollout up: every host stays on the
    /// previous build until plugin_dir offers another.
    Abandon {
        plugin: String,
        #[arg(long, default_value = "/etc/sandglass/receiver.toml")]
        config: PathBuf,
    },
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["host", "group", "list", "end"])))]
struct MaintenanceArgs {
    #[arg(long, default_value = "/etc/sandglass/receiver.toml")]
    config: PathBuf,
    #[arg(long, conflicts_with_all = ["group", "list", "end"])]
    host: Option<String>,
    #[arg(long, conflicts_with_all = ["list", "end"])]
    group: Option<String>,
    /// How long, from --from or from now (e.g. `2h`).
    #[arg(long = "for", conflicts_with = "until")]
    duration: Option<HumanDuration>,
    /// Start: `YYYY-MM-DDTHH:MM[:SS]` UTC (default now).
    #[arg(long)]
    from: Option<String>,
    /// End: `YYYY-MM-DDTHH:MM[:SS]` UTC.
    #[arg(long)]
    until: Option<String>,
    #[arg(long, default_value = "")]
    comment: String,
    /// List the windows not yet over.
    #[arg(long, conflicts_with = "end")]
    list: bool,
    /// End window ID now.
    #[arg(long, value_name = "ID")]
    end: Option<i64>,
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    let long_running = matches!(cli.command, Command::Run { .. });
    sandglass_daemon::main("receiver", long_running, || run(cli));
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, listen } => serve(config, listen),
        Command::Status { config, json } => {
            let (database, config_error) = database_of(&config)?;
            if let Some(e) = config_error {
                eprintln!(
                    "warning: {e:#}\nwarning: showing what the database {} holds",
                    database.display()
                );
            }
            let conn = store::open_existing(&database)?;
            let read = |e: anyhow::Error| {
                e.context(format!(
                    "cannot read the receiver database {} (is it readable, and its directory writable for SQLite's -shm file?)",
                    database.display()
                ))
            };
            let hosts = view::status(&conn).map_err(read)?;
            let receiver = view::receiver(&conn, now_ms()).map_err(read)?;
            if json {
                sandglass_daemon::print(&(serde_json::to_string_pretty(&hosts)? + "\n"))?;
            } else {
                sandglass_daemon::print(&view::status_table(&receiver, &hosts, now_ms()))?;
            }
            if !receiver.running {
                eprintln!("note: the receiver is not running; this status is not live");
            }
            Ok(())
        }
        Command::Query(args) => query::command(args),
        Command::Events {
            config,
            host,
            service,
            listing,
        } => {
            let (database, _) = database_of(&config)?;
            let conn = store::open_existing(&database)?;
            let filter = events::Filter {
                host: host.as_deref(),
                service: service.as_deref(),
                since_ms: listing.since_ms(),
                limit: listing.limit,
            };
            let found = events::events(&conn, &filter)?;
            listing.print(&found, |rows| events::table(rows, now_ms()))
        }
        Command::Ack {
            config,
            host,
            service,
            comment,
        } => ack(&config, &host, service.as_deref(), &comment),
        Command::Maintenance(args) => maintenance(args),
        Command::Notifications { config, listing } => {
            let conn = notify_db(&config)?;
            let rows =
                sandglass_receiver::notify::queue::list(&conn, listing.since_ms(), listing.limit)?;
            listing.print(&rows, |rows| admin::notifications_table(rows))
        }
        Command::Plugins {
            action: Some(action),
            ..
        } => rollout_action(action),
        Command::Plugins {
            action: None,
            config,
            since,
            json,
        } => {
            let (database, _) = database_of(&config)?;
            let conn = store::open_existing(&database)?;
            let since_ms = now_ms().saturating_sub(since.0.as_millis() as u64);
            let found = plugins::listing::plugins(&conn, since_ms)?;
            if json {
                sandglass_daemon::print(&(serde_json::to_string_pretty(&found)? + "\n"))
            } else {
                sandglass_daemon::print(&plugins::listing::table(&found, &since.to_string()))
            }
        }
        Command::Check { config } => {
            let model = Model::load(&config)?;
            for (name, host) in &model.hosts {
                let services: Vec<String> = host
                    .schedule
                    .services
                    .iter()
                    .map(|s| format!("{} every {}ms", s.name, s.interval_ms))
                    .collect();
                println!("{name}: {}", services.join(", "));
            }
            println!("{}: OK, {} hosts", config.display(), model.hosts.len());
            Ok(())
        }
    }
}

fn rollout_action(action: RolloutAction) -> anyhow::Result<()> {
    let (config, plugin) = match &action {
        RolloutAction::Resume { config, plugin } | RolloutAction::Abandon { config, plugin } => {
            (config, plugin)
        }
    };
    let (database, _) = database_of(config)?;
    let conn = store::open_existing(&database)?;
    let rollout = match action {
        RolloutAction::Resume { .. } => rollout::resume(&conn, plugin, now_ms())?,
        RolloutAction::Abandon { .. } => rollout::abandon(&conn, plugin)?,
    };
    println!(
        "rollout of {plugin} to build {} is {} ({}); the receiver applies it within a second",
        rollout::short(&rollout.to),
        rollout.stage.as_str(),
        rollout.reason
    );
    Ok(())
}

/// The database of `config`, with the notification tables.
fn notify_db(config: &Path) -> anyhow::Result<rusqlite::Connection> {
    let (database, _) = database_of(config)?;
    let conn = store::open_existing(&database)?;
    admin::prepare(&conn)?;
    Ok(conn)
}

fn ack(config: &Path, host: &str, service: Option<&str>, comment: &str) -> anyhow::Result<()> {
    let conn = notify_db(config)?;
    let id = admin::ack(&conn, host, service, comment, now_ms())?;
    println!("acknowledged #{id}: no notifications about it until it recovers");
    Ok(())
}

/// How far back, how many and in what form `events` and `notifications`
/// list.
#[derive(clap::Args)]
struct Listing {
    /// How far back, e.g. `1h`, `1d`, `2w`.
    #[arg(long, default_value = "1d")]
    since: HumanDuration,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    #[arg(long)]
    json: bool,
}

impl Listing {
    fn since_ms(&self) -> u64 {
        now_ms().saturating_sub(self.since.0.as_millis() as u64)
    }

    fn print<T: serde::Serialize>(
        &self,
        rows: &T,
        table: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<()> {
        if self.json {
            sandglass_daemon::print(&(serde_json::to_string_pretty(rows)? + "\n"))
        } else {
            sandglass_daemon::print(&table(rows))
        }
    }
}

fn maintenance(a: MaintenanceArgs) -> anyhow::Result<()> {
    let now = now_ms();
    let conn = notify_db(&a.config)?;
    if a.list {
        let windows = admin::windows(&conn, now)?;
        if a.json {
            sandglass_daemon::print(&(serde_json::to_string_pretty(&windows)? + "\n"))?;
        } else {
            sandglass_daemon::print(&admin::windows_table(&windows))?;
        }
        return Ok(());
    }
    if let Some(id) = a.end {
        admin::end_maintenance(&conn, id, now)?;
        println!("maintenance window #{id} ended");
        return Ok(());
    }
    let model = Model::load(&a.config)?;
    let scope = match (a.host, a.group) {
        (Some(h), _) => admin::Scope::Host(h),
        (_, Some(g)) => admin::Scope::Group(g),
        _ => anyhow::bail!("say which: --host H or --group G"),
    };
    let from = a
        .from
        .as_deref()
        .map(admin::parse_time)
        .transpose()?
        .unwrap_or(now);
    let until = match (a.duration, a.until.as_deref()) {
        (Some(d), _) => from + d.0.as_millis() as u64,
        (None, Some(u)) => admin::parse_time(u)?,
        (None, None) => anyhow::bail!("say how long: --for 2h, or --until YYYY-MM-DDTHH:MM"),
    };
    let id = admin::maintenance(&conn, &model, &scope, (from, until), &a.comment, now)?;
    println!(
        "maintenance window #{id}: {} .. {}",
        rfc3339(from),
        rfc3339(until)
    );
    Ok(())
}

fn serve(config: PathBuf, listen: Option<String>) -> anyhow::Result<()> {
    let server = server::Server::open(&config)?;
    let files = sandglass_daemon::raise_open_files_limit();
    let wanted = server.max_connections() as u64 + 64;
    if files < wanted {
        tracing::warn!(
            "the open-files limit is {files}, below max_connections + 64 = {wanted}: raise it (ulimit -n, LimitNOFILE=) or lower max_connections"
        );
    }
    let address = listen.unwrap_or_else(|| server.listen().to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = server
            .listen_for_agents(&address)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
        let http = match server.http_listen() {
            Some(address) => Some(
                tokio::net::TcpListener::bind(address)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {address} ([http]): {e}"))?,
            ),
            None => None,
        };
        // The first line on stdout says where, for scripts and tests that
        // asked for port 0 (the second, where HTTP is). The store is open by
        // now.
        println!("listening on {}", listener.local_addr()?);
        if let Some(http) = &http {
            println!("http on http://{}/", http.local_addr()?);
        }
        let reload = Arc::new(tokio::sync::Notify::new());
        let shutdown = sandglass_daemon::signals(reload.clone())?;
        server.serve(listener, http, reload, shutdown).await
    })
}
