//! `receiver`: the Sandglass receiver. Parses flags, reads config, calls the library.

use clap::{Parser, Subcommand};
use sandglass_core::time::now_ms;
use sandglass_core::units::HumanDuration;
use sandglass_receiver::config::{Model, database_of};
use sandglass_receiver::{events, query, server, store, view};
use std::path::PathBuf;
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
        /// How far back, e.g. `1h`, `1d`, `2w`.
        #[arg(long, default_value = "1d")]
        since: HumanDuration,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and print each host's schedule.
    Check {
        #[arg(long, default_value = "/etc/sandglass/receiver.toml")]
        config: PathBuf,
    },
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
                println!("{}", serde_json::to_string_pretty(&hosts)?);
            } else {
                print!("{}", view::status_table(&receiver, &hosts, now_ms()));
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
            since,
            limit,
            json,
        } => {
            let (database, _) = database_of(&config)?;
            let conn = store::open_existing(&database)?;
            let filter = events::Filter {
                host: host.as_deref(),
                service: service.as_deref(),
                since_ms: now_ms().saturating_sub(since.0.as_millis() as u64),
                limit,
            };
            let found = events::events(&conn, &filter)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                print!("{}", events::table(&found, now_ms()));
            }
            Ok(())
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
        let listener = tokio::net::TcpListener::bind(&address)
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
