//! `agent`: the Sandglass host agent. Parses flags, reads config, calls the library.

use clap::{Parser, Subcommand};
use sandglass_agent::config::Agent;
use sandglass_agent::services::ServiceRunner;
use sandglass_agent::tools::trial::Trial;
use sandglass_agent::tools::{check, template};
use sandglass_core::render;
use sandglass_core::report::Report;
use sandglass_core::text::Escaped;
use sandglass_core::units::{ByteSize, HumanDuration};
use sandglass_runtime::{LimitOverrides, Limits, Runtime};
use std::path::PathBuf;
use std::sync::Arc;

/// `--format`: a table for people or JSON for machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Table,
    Json,
}

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
    /// Check a configuration as `agent run` would use it, without running
    /// anything: the file, receiver and token, TLS files, plugins, state
    /// directory. Lists every problem; exits 1 when there is one.
    Check {
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
    /// Internal: compile the plugin component on stdin into the artifact
    /// OUT, for `agent run` (which starts it so that the compiler's memory
    /// leaves with this short-lived process).
    #[command(name = sandglass_agent::services::COMPILE_COMMAND, hide = true)]
    CompilePlugin {
        out: PathBuf,
        /// The most memory (data segment) compiling may take, bytes.
        #[arg(long)]
        memory: Option<u64>,
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
        /// The plugin (`.wasm`: a component, or a wasip1 command module).
        file: PathBuf,
        #[command(flatten)]
        trial: TrialArgs,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Validate a plugin (size, ABI, imports, grants), run it in the sandbox
    /// against the real /proc, show its output and cost, and give a verdict.
    /// Exits 1 when the plugin cannot be deployed.
    Check {
        /// The plugin (`.wasm`: a component, or a wasip1 command module).
        file: PathBuf,
        #[command(flatten)]
        trial: TrialArgs,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Build a plugin crate (made by `agent plugin new`) as a lean collector:
    /// cargo build for wasm32-unknown-unknown, then made a component.
    /// Prints the path of each component made.
    Build {
        /// The crate's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Cargo's target directory (default: the crate's own).
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Create a new plugin crate from the template in plugin-sdk/template.
    New {
        /// The plugin's name: lower-case letters, digits and '-'.
        name: String,
        /// Create the crate in DIR/NAME (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The plugin-sdk directory to depend on (default: the one beside
        /// the source tree this agent was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

/// Grants, parameters, state and limits for trying a plugin.
#[derive(clap::Args)]
struct TrialArgs {
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
}

impl TrialArgs {
    fn trial(self) -> anyhow::Result<Trial> {
        let overrides = LimitOverrides {
            fuel: self.fuel,
            deadline: self.deadline,
            memory: self.memory,
            ..Default::default()
        };
        let mut trial = Trial {
            params: self.params,
            files: self.files,
            state_file: self.state,
            limits: Limits::default()
                .with(&overrides)
                .map_err(anyhow::Error::msg)?,
            ..Default::default()
        };
        trial.grant(&self.grants)?;
        Ok(trial)
    }
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {text:?}"))
}

/// When `agent run` hands back the code pages start-up touched (plugins
/// loaded and run once by then), and how often again (docs/performance.md,
/// "Agent memory").
const PAGE_OUT_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
const PAGE_OUT_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

fn main() {
    let cli = Cli::parse();
    let long_running = matches!(cli.command, Command::Run { .. });
    sandglass_daemon::main("agent", long_running, || run(cli));
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            runtime.block_on(async {
                tokio::spawn(sandglass_daemon::cold_pages::page_out_now_and_then(
                    PAGE_OUT_AFTER,
                    PAGE_OUT_EVERY,
                ));
                let reload = Arc::new(tokio::sync::Notify::new());
                let shutdown = sandglass_daemon::signals(reload.clone())?;
                sandglass_agent::daemon::run(&config, reload, shutdown).await
            })
        }
        Command::Check { config } => check_config(&config),
        Command::CompilePlugin { out, memory } => sandglass_runtime::compile_child(&out, memory),
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
                    trial,
                    format,
                },
        } => {
            let runtime = Runtime::new(None)?;
            let plugin = runtime.load(&file)?;
            let (report, _) = trial.trial()?.run(&runtime, &plugin)?;
            print_reports(std::slice::from_ref(&report), format)
        }
        Command::Plugin {
            command:
                PluginCommand::Check {
                    file,
                    trial,
                    format,
                },
        } => {
            let checked = check::check(&Runtime::new(None)?, &file, &trial.trial()?);
            match format {
                Format::Table => print!("{}", check::table(&checked)),
                Format::Json => println!("{}", serde_json::to_string_pretty(&checked)?),
            }
            if checked.verdict == check::Verdict::Fail {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Plugin {
            command: PluginCommand::Build { dir, target_dir },
        } => {
            for component in sandglass_agent::tools::build::build(&dir, target_dir.as_deref())? {
                println!("{}", component.display());
            }
            Ok(())
        }
        Command::Plugin {
            command: PluginCommand::New { name, dir, sdk },
        } => {
            let sdk = sdk.or_else(template::default_sdk).ok_or_else(|| {
                anyhow::anyhow!("cannot find plugin-sdk: pass --sdk DIR, the plugin-sdk directory of a Sandglass source tree")
            })?;
            let made = template::create(&name, &dir, &sdk, &std::env::current_exe()?)?;
            let wasm = format!("target/sandglass/{}.wasm", name.replace('-', "_"));
            println!("created plugin {name} in {}", made.display());
            println!("next:");
            println!("  cd {}", made.display());
            println!("  agent plugin build");
            println!("  cargo test --release");
            println!("  agent plugin check {wasm}");
            Ok(())
        }
    }
}

fn check_config(config: &std::path::Path) -> anyhow::Result<()> {
    let checked = sandglass_agent::config_check::check(config);
    for line in &checked.summary {
        println!("{line}");
    }
    for warning in &checked.warnings {
        println!("warning: {}", Escaped(warning));
    }
    if checked.problems.is_empty() {
        println!("{}: OK", config.display());
        return Ok(());
    }
    for problem in &checked.problems {
        eprintln!("agent: {}", Escaped(problem));
    }
    anyhow::bail!(
        "{}: {} problem(s); `agent run` would not start",
        config.display(),
        checked.problems.len()
    )
}

fn once(config: &std::path::Path, format: Format, only: &[String]) -> anyhow::Result<()> {
    let agent = Agent::load(config)?;
    for name in only {
        if !agent.services.iter().any(|s| &s.name == name) {
            anyhow::bail!("no service {name:?} in {}", config.display());
        }
    }
    let runner = ServiceRunner::new(&agent.state_dir, agent.cache.compile_limits())?;
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
        Format::Table => sandglass_daemon::print(&render::table(reports))?,
        Format::Json => sandglass_daemon::print(&(serde_json::to_string_pretty(reports)? + "\n"))?,
    }
    Ok(())
}

fn info(file: &std::path::Path, format: Format) -> anyhow::Result<()> {
    sandglass_agent::tools::info::show(file, matches!(format, Format::Json))
}
