//! `agent`: the Sandglass host agent. Parses flags, reads config, calls the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sandglass::agent::render::{self, Format};
use sandglass::agent::services::{ServiceRunner, missing_grant};
use sandglass::config::{Agent, Service};
use sandglass::report::Report;
use sandglass::runtime::{LimitOverrides, Limits, RunRequest, Runtime, View};
use sandglass::units::{ByteSize, HumanDuration};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "agent",
    version,
    about = "Sandglass agent: runs sandboxed collector plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to the receiver and run its schedule until SIGTERM or Ctrl-C (SIGHUP reloads the config).
    Run {
        /// The agent configuration file.
        #[arg(long, default_value = "/etc/sandglass/agent.toml")]
        config: PathBuf,
    },
    /// Run every configured service once, each in its own sandbox, and print the results.
    Once {
        /// The agent configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Run only these services (repeatable); default all.
        #[arg(long = "service")]
        services: Vec<String>,
    },
    /// Inspect and try plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Print a plugin's name, version, ABI version, grants, interval and metrics.
    Info {
        /// The plugin component (`.wasm`).
        file: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Run a plugin once in the sandbox and print its output and what the run cost.
    Run {
        /// The plugin component (`.wasm`).
        file: PathBuf,
        /// A parameter for the plugin, `key=value` (repeatable).
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// Grant `sys` (read-only /sys) or `files` (with --files).
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// A directory to grant read-only with `--grant files` (repeatable).
        #[arg(long = "files")]
        files: Vec<PathBuf>,
        /// Keep the plugin's state in this file between invocations.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Fuel limit (default 1000000000).
        #[arg(long)]
        fuel: Option<u64>,
        /// Wall-clock deadline, e.g. `2s` (default 2s).
        #[arg(long)]
        deadline: Option<HumanDuration>,
        /// Memory limit, e.g. `32MiB` (default 32MiB).
        #[arg(long)]
        memory: Option<ByteSize>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {text:?}"))
}

fn main() {
    let cli = Cli::parse();
    let long_running = matches!(cli.command, Command::Run { .. });
    sandglass::daemon::main("agent", long_running, || run(cli));
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let reload = Arc::new(tokio::sync::Notify::new());
                let shutdown = sandglass::daemon::signals(reload.clone())?;
                sandglass::agent::daemon::run(&config, reload, shutdown).await
            })
        }
        Command::Once {
            config,
            format,
            services,
        } => once(&config, format, &services),
        Command::Plugin {
            command: PluginCommand::Info { file, format },
        } => info(&file, format),
        Command::Plugin {
            command:
                PluginCommand::Run {
                    file,
                    params,
                    grants,
                    files,
                    state,
                    fuel,
                    deadline,
                    memory,
                    format,
                },
        } => {
            let overrides = LimitOverrides {
                fuel,
                deadline,
                memory,
                ..Default::default()
            };
            let limits = Limits::default()
                .with(&overrides)
                .map_err(anyhow::Error::msg)?;
            plugin_run(&file, params, &grants, files, state, limits, format)
        }
    }
}

fn once(config: &std::path::Path, format: Format, only: &[String]) -> anyhow::Result<()> {
    let agent = Agent::load(config)?;
    for name in only {
        if !agent.services.iter().any(|s| &s.name == name) {
            anyhow::bail!("no service {name:?} in {}", config.display());
        }
    }
    let runner = ServiceRunner::new(&agent.state_dir)?;
    let reports: Vec<Report> = agent
        .services
        .iter()
        .filter(|s| only.is_empty() || only.contains(&s.name))
        .map(|s| runner.run(s).keep_state())
        .collect();
    print_reports(&reports, format)
}

fn print_reports(reports: &[Report], format: Format) -> anyhow::Result<()> {
    match format {
        Format::Table => print!("{}", render::table(reports)),
        Format::Json => println!("{}", serde_json::to_string_pretty(reports)?),
    }
    Ok(())
}

fn info(file: &std::path::Path, format: Format) -> anyhow::Result<()> {
    let runtime = Runtime::new(None)?;
    let plugin = runtime.load(file)?;
    let d = &plugin.description;
    match format {
        Format::Json => {
            let value = serde_json::json!({ "sha256": plugin.sha256, "description": d });
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Format::Table => {
            println!("name:      {}", d.name);
            println!("version:   {}", d.version);
            println!("abi:       {}", d.abi_version);
            let grants: Vec<String> = d
                .grants
                .iter()
                .map(|g| format!("{g:?}").to_lowercase())
                .collect();
            println!(
                "grants:    {}",
                if grants.is_empty() {
                    "none (read-only /proc only)".into()
                } else {
                    grants.join(", ")
                }
            );
            println!("interval:  {}s", d.interval_seconds);
            println!("sha256:    {}", plugin.sha256);
            println!("metrics:");
            for m in &d.metrics {
                let unit = if m.unit.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", m.unit)
                };
                println!("  {} ({:?}){unit} {}", m.name, m.kind, m.help);
            }
        }
    }
    Ok(())
}

fn plugin_run(
    file: &std::path::Path,
    params: Vec<(String, String)>,
    grants: &[String],
    files: Vec<PathBuf>,
    state_file: Option<PathBuf>,
    limits: Limits,
    format: Format,
) -> anyhow::Result<()> {
    let mut sys = false;
    for g in grants {
        match g.as_str() {
            "sys" => sys = true,
            "files" if !files.is_empty() => {}
            "files" => anyhow::bail!("--grant files needs at least one --files DIR"),
            other => anyhow::bail!("unknown grant {other:?}: use sys or files"),
        }
    }
    let runtime = Runtime::new(None)?;
    let plugin = runtime.load(file)?;
    let service = Service {
        name: plugin.description.name.clone(),
        plugin: plugin.description.name.clone(),
        plugin_path: file.to_owned(),
        params,
        sys,
        files,
        limits,
        sha256: None,
        interval: std::time::Duration::from_secs(60),
        refused: None,
    };
    if let Some(grant) = missing_grant(&plugin, &service) {
        anyhow::bail!(
            "plugin {} needs grant \"{grant}\": pass --grant {grant}",
            plugin.description.name
        );
    }
    let state = match &state_file {
        Some(path) if path.exists() => {
            Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)
        }
        _ => None,
    };
    let request = RunRequest {
        service: service.name.clone(),
        params: service.params.clone(),
        state,
        limits: service.limits.clone(),
        view: Arc::new(View::new(service.sys, &service.files)?),
    };
    let outcome = runtime.run(&plugin, request);
    if let (Some(path), Ok(output)) = (&state_file, &outcome.result)
        && let Some(state) = &output.state
    {
        std::fs::write(path, state).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let report = Report {
        service: service.name,
        plugin: plugin.description.name.clone(),
        time_ms: 0,
        status: outcome.status(),
        samples: outcome.result.map(|o| o.samples).unwrap_or_default(),
        cost: outcome.cost,
    };
    print_reports(std::slice::from_ref(&report), format)
}
