//! Every kind of misbehaviour is stopped with the reason that names the limit,
//! within its deadline plus slack.

use crate::common::{agent, fixture, plugin_run, status};
use std::time::Duration;

/// Slack for process start-up, compilation (no cache in `plugin run`) and a
/// loaded CI machine. Generous: this checks containment, not speed.
const SLACK: Duration = Duration::from_secs(5);

fn run_mode(mode: &str, extra: &[&str]) -> (String, String, Duration) {
    let param = format!("mode={mode}");
    let mut args = vec!["--param", param.as_str()];
    args.extend_from_slice(extra);
    let (report, elapsed) = plugin_run(&fixture("misbehave"), &args);
    let (level, text) = status(&report);
    (level, text, elapsed)
}

#[test]
fn noop_plugin_reports_ok() {
    let (level, text, _) = run_mode("noop", &[]);
    assert_eq!((level.as_str(), text.as_str()), ("OK", "0 samples"));
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let (level, text, elapsed) = run_mode("spin", &["--fuel", "50000000"]);
    assert_eq!(level, "UNKNOWN");
    assert_eq!(text, "fuel limit 50000000 exhausted");
    assert!(elapsed < Duration::from_secs(2) + SLACK, "{elapsed:?}");
}

#[test]
fn infinite_loop_with_ample_fuel_hits_the_deadline() {
    let (level, text, elapsed) = run_mode(
        "spin",
        &["--fuel", "100000000000000", "--deadline", "300ms"],
    );
    assert_eq!(level, "UNKNOWN");
    assert_eq!(text, "deadline 300ms exceeded");
    assert!(elapsed < Duration::from_millis(300) + SLACK, "{elapsed:?}");
}

#[test]
fn a_guest_sleeping_in_a_host_call_is_stopped_at_the_deadline() {
    // Its timer is cut at the deadline, so it is back in wasm in time for
    // the epoch trap: stopped, not abandoned on a stuck thread.
    let (level, text, elapsed) = run_mode("sleep", &["--deadline", "500ms"]);
    assert_eq!(level, "UNKNOWN");
    assert_eq!(text, "deadline 500ms exceeded");
    assert!(elapsed < Duration::from_millis(500) + SLACK, "{elapsed:?}");
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    let (level, text, _) = run_mode("membomb", &["--memory", "16MiB"]);
    assert_eq!(
        (level.as_str(), text.as_str()),
        ("UNKNOWN", "memory limit 16 MiB reached")
    );
}

#[test]
fn output_bombs_hit_the_output_limits() {
    let (_, text, _) = run_mode("many-samples", &[]);
    assert_eq!(text, "output limit: 20000 samples exceed max_samples 10000");
    let (_, text, _) = run_mode("huge-strings", &[]);
    assert!(
        text.starts_with("output limit: ")
            && text.ends_with("bytes of strings and items exceed max_output_bytes 1 MiB"),
        "{text}"
    );
    let (_, text, _) = run_mode("stdout-flood", &[]);
    assert_eq!(text, "stdout/stderr limit 64 KiB exceeded");
}

#[test]
fn panic_is_a_trap_carrying_the_panic_message() {
    let (level, text, _) = run_mode("panic", &[]);
    assert_eq!(level, "UNKNOWN");
    assert!(text.starts_with("trap: "), "{text}");
    assert!(text.contains("fixture panicked on purpose"), "{text}");
}

#[test]
fn oversize_state_is_refused() {
    let (_, text, _) = run_mode("big-state", &[]);
    assert_eq!(
        text,
        "state limit 64 KiB exceeded: the plugin returned 1048576 bytes of state"
    );
}

/// wasmtime fills up to 64 MiB of random bytes per call in host memory
/// before the copy into the guest can fail on the memory cap: a run held
/// 97 MiB resident that way. A call is now refused above 1 MiB.
#[test]
fn random_bytes_are_handed_out_in_small_calls_only() {
    let (level, text, _) = run_mode("random", &["--param", "times=1"]);
    assert_eq!(level, "UNKNOWN");
    assert!(
        text.contains("requested len 67108864 exceeds limit 1048576"),
        "{text}"
    );
    let (level, text, _) = run_mode("random", &["--param", "times=1", "--param", "size=1048576"]);
    assert_eq!(
        (level.as_str(), text.as_str()),
        ("OK", "escaped: got 1048576 random bytes")
    );
}

#[test]
fn writes_fail_everywhere() {
    for path in [
        "/proc/sandglass-test",
        "/proc/sys/kernel/hostname",
        "/tmp/sandglass-escape-test",
    ] {
        let (level, text, _) = run_mode("write", &["--param", &format!("path={path}")]);
        assert_eq!(level, "UNKNOWN", "{path}: {text}");
        assert!(text.contains("blocked:"), "{path}: {text}");
    }
    assert!(!std::path::Path::new("/tmp/sandglass-escape-test").exists());
}

#[test]
fn sockets_are_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (level, text, _) = run_mode("socket", &["--param", &format!("path={address}")]);
    assert_eq!(level, "UNKNOWN");
    assert!(text.contains("blocked: connect"), "{text}");
}

#[test]
fn no_environment_and_no_arguments() {
    let (level, text, _) = run_mode("env", &[]);
    assert_eq!((level.as_str(), text.as_str()), ("OK", "env [] args []"));
}

#[test]
fn plugin_for_another_abi_is_refused_naming_both_versions() {
    let path = fixture("abi-mismatch");
    let (output, _) = agent(&["plugin", "info", path.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ABI 0.9.0")
            && stderr.contains(&format!("ABI {}", sandglass_core::ABI_VERSION)),
        "{stderr}"
    );
    assert!(stderr.contains("abi-mismatch.wasm"), "{stderr}");
}

#[test]
fn plugin_info_shows_name_abi_grants_and_interval() {
    let path = crate::common::plugin("cpu");
    let (output, _) = agent(&["plugin", "info", path.to_str().unwrap(), "--format", "json"]);
    assert!(output.status.success());
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let d = &info["description"];
    assert_eq!(d["name"], "cpu");
    assert_eq!(d["abi_version"], sandglass_core::ABI_VERSION);
    assert_eq!(d["interval_seconds"], 10);
    assert_eq!(d["grants"], serde_json::json!([]));
    assert_eq!(info["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn garbage_file_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.wasm");
    std::fs::write(&path, b"definitely not wasm").unwrap();
    let (output, _) = agent(&["plugin", "run", path.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot load plugin") && stderr.contains("junk.wasm"),
        "{stderr}"
    );
}

#[test]
fn a_plugin_describing_itself_with_control_characters_is_refused() {
    let path = fixture("bad-describe");
    let (output, _) = agent(&["plugin", "run", path.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "describe returned plugin name \"bad\\u{1b}[2J\\rdescribe\\nforged\" may only hold"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\r'),
        "{stderr:?}"
    );
}

#[test]
fn plugin_log_lines_reach_the_agent_log_tagged_and_capped() {
    let path = fixture("misbehave");
    let output = std::process::Command::new(sandglass_tests::binary("agent"))
        .args([
            "plugin",
            "run",
            path.to_str().unwrap(),
            "--param",
            "mode=log",
        ])
        .env("SANDGLASS_LOG", "info")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let hello = stderr
        .lines()
        .find(|l| l.contains("hello from the sandbox"))
        .expect("log line");
    assert!(
        hello.contains("plugin=") && hello.contains("misbehave") && hello.contains("service="),
        "{hello}"
    );
    let flood = stderr.lines().filter(|l| l.contains("zzzz")).count();
    assert!(
        flood > 0 && flood < 20,
        "{flood} flood lines got through a 16 KiB budget"
    );
    assert!(
        stderr.contains("log limit of 16384 bytes per run reached"),
        "{stderr}"
    );
}

/// A million empty log messages cost their lines, not only their bytes:
/// 16,384 of them once made as many lines of the agent's log per run.
#[test]
fn a_flood_of_empty_log_lines_is_capped_in_lines_in_both_sandboxes() {
    for build in ["misbehave", "misbehave-lean"] {
        let output = std::process::Command::new(sandglass_tests::binary("agent"))
            .args(["plugin", "run", fixture(build).to_str().unwrap()])
            .args(["--param", "mode=log-lines"])
            .env("SANDGLASS_LOG", "warn")
            .output()
            .unwrap();
        assert!(output.status.success(), "{build}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines = stderr.lines().count();
        assert!(
            lines <= 16384 / 64 + 1,
            "{build}: {lines} lines of the agent's log from one run"
        );
        assert!(
            stderr.contains("log limit of 16384 bytes per run reached"),
            "{build}: {stderr}"
        );
    }
}

#[test]
fn a_run_queued_before_a_slow_one_is_not_held_up_by_it() {
    // Two runs dispatched together share one worker: the quick one first,
    // then one that spins to its 5 s deadline. The quick run's waking is
    // held while the worker goes on to the slow run; its outcome must still
    // be taken as soon as it is there, not given up as blocked after the
    // quick run's own 2 s deadline.
    use sandglass_runtime::{LimitOverrides, Limits, RunRequest, Runtime, View};
    use std::sync::Arc;
    crate::common::build_plugins();
    let runtime = Runtime::new(None).unwrap();
    let plugin = runtime.load(&fixture("misbehave")).unwrap();
    let request = |mode: Option<&str>, limits: Limits| RunRequest {
        service: mode.unwrap_or("quick").into(),
        params: mode
            .map(|m| ("mode".to_owned(), m.to_owned()))
            .into_iter()
            .collect(),
        state: None,
        limits,
        view: Arc::new(View::new(false, &[]).unwrap()),
    };
    let slow_limits = Limits::default()
        .with(&LimitOverrides {
            deadline: Some("5s".parse().unwrap()),
            fuel: Some(u64::MAX / 2),
            ..Default::default()
        })
        .unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (quick, slow) = tokio.block_on(async {
        tokio::join!(
            runtime.run_async(&plugin, request(None, Limits::default())),
            runtime.run_async(&plugin, request(Some("spin"), slow_limits)),
        )
    });
    assert!(quick.result.is_ok(), "the quick run: {:?}", quick.status());
    assert!(
        slow.status().text.contains("deadline 5s exceeded"),
        "the slow run: {:?}",
        slow.status()
    );
}

/// `agent compile-plugin`, as `agent run` starts it, held to `limits`.
fn compiler_child(limits: sandglass_runtime::CompileLimits) -> sandglass_runtime::Compiler {
    sandglass_runtime::Compiler::Child {
        program: sandglass_tests::binary("agent"),
        args: vec!["compile-plugin".into()],
        limits,
    }
}

/// A compiler child that takes the plugin and never finishes.
fn hanging_compiler(time: Duration) -> sandglass_runtime::Compiler {
    sandglass_runtime::Compiler::Child {
        program: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            "cat >/dev/null; exec sleep 60".into(),
            "sh".into(),
        ],
        limits: sandglass_runtime::CompileLimits {
            time,
            memory: 1 << 30,
        },
    }
}

#[test]
fn a_plugin_compiled_by_the_agents_child_process_loads_and_a_failing_child_refuses_it() {
    use sandglass_runtime::cache::CacheOutcome;
    use sandglass_runtime::{
        CompileLimits, Compiler, LimitOverrides, Limits, RunRequest, Runtime, View,
    };
    use std::sync::Arc;
    let path = crate::common::plugin("loadavg");
    let run = |runtime: &Runtime, plugin: &Arc<sandglass_runtime::Plugin>| {
        runtime.run(
            plugin,
            RunRequest {
                service: "loadavg".into(),
                params: Default::default(),
                state: None,
                limits: Limits::default().with(&LimitOverrides::default()).unwrap(),
                view: Arc::new(View::new(false, &[]).unwrap()),
            },
        )
    };
    let generous = CompileLimits {
        time: Duration::from_secs(300),
        memory: 2 << 30,
    };
    let cache = tempfile::tempdir().unwrap();
    let runtime =
        Runtime::with_compiler(Some(cache.path().to_owned()), compiler_child(generous)).unwrap();
    let plugin = runtime.load(&path).unwrap();
    assert_eq!(plugin.cache, CacheOutcome::Compiled);
    let artifacts: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        artifacts.len(),
        1,
        "one artifact, no temporary left: {artifacts:?}"
    );
    assert!(artifacts[0].starts_with(&plugin.sha256) && artifacts[0].ends_with(".cwasm"));
    let outcome = run(&runtime, &plugin);
    assert!(outcome.result.is_ok(), "{:?}", outcome.status());
    // The artifact the child wrote loads in a runtime of this process.
    let again = Runtime::new(Some(cache.path().to_owned())).unwrap();
    assert_eq!(again.load(&path).unwrap().cache, CacheOutcome::Hit);

    let load_with = |compiler: Compiler| {
        let cache = tempfile::tempdir().unwrap();
        let runtime = Runtime::with_compiler(Some(cache.path().to_owned()), compiler).unwrap();
        runtime.load(&path).map(|plugin| {
            assert!(run(&runtime, &plugin).result.is_ok());
            plugin.cache
        })
    };
    // A child that cannot start (the agent's executable replaced by an
    // upgrade, say) costs only the fallback: compiled in this process.
    let gone = Compiler::Child {
        program: cache.path().join("no-such-agent"),
        args: vec![],
        limits: generous,
    };
    assert_eq!(load_with(gone).unwrap(), CacheOutcome::Compiled);
    // One that ran and failed refuses the plugin: no second, unlimited try
    // in the agent.
    let failing = Compiler::Child {
        program: "/bin/false".into(),
        args: vec![],
        limits: generous,
    };
    let error = format!("{:#}", load_with(failing).unwrap_err());
    assert!(
        error.contains("the compiler process (/bin/false compile-plugin) failed"),
        "{error}"
    );
    // Past its time it is killed, and the error names the setting.
    let error = format!(
        "{:#}",
        load_with(hanging_compiler(Duration::from_secs(1))).unwrap_err()
    );
    assert!(
        error.contains("took longer than 1s ([cache] compile_time in agent.toml)"),
        "{error}"
    );
    // Past its memory (the 18 MB Python plugin needs ~400 MiB to compile).
    let tight = compiler_child(CompileLimits {
        time: Duration::from_secs(300),
        memory: 64 << 20,
    });
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::with_compiler(Some(cache.path().to_owned()), tight).unwrap();
    let Err(error) = runtime.load(&crate::common::plugin("pressure")) else {
        panic!("the Python plugin compiled within 64 MiB");
    };
    let error = format!("{error:#}");
    assert!(
        error.contains("needed more than 64 MiB of memory ([cache] compile_memory in agent.toml)"),
        "{error}"
    );
}

/// A service of the core plugin `name`, with default limits.
fn core_service(name: &str) -> sandglass_agent::config::Service {
    sandglass_agent::config::Service {
        name: name.into(),
        plugin: name.into(),
        plugin_path: crate::common::plugin(name),
        params: Vec::new(),
        sys: false,
        files: Vec::new(),
        limits: sandglass_runtime::Limits::default(),
        sha256: None,
        interval: Duration::from_secs(1),
        refused: None,
    }
}

/// A plugin that compiles for long (a compile bomb, or the 18 MB Python
/// example's 20 s on two cores) holds up its own service only: the others,
/// and the event loop they share with the connection, run meanwhile.
#[test]
fn the_other_services_run_while_a_plugin_compiles() {
    use sandglass_agent::services::ServiceRunner;
    use std::sync::Arc;
    use std::time::Instant;
    let state = tempfile::tempdir().unwrap();
    let (loadavg, uptime) = (
        Arc::new(core_service("loadavg")),
        Arc::new(core_service("uptime")),
    );
    // loadavg is in the compiled-plugin cache already; uptime is not.
    let warm = Arc::new(
        ServiceRunner::with_compiler(state.path(), sandglass_runtime::Compiler::InProcess).unwrap(),
    );
    let events = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    events.block_on(async {
        let report = warm.run_async(&loadavg).await.keep_state();
        assert_eq!(report.status.level.as_str(), "OK", "{:?}", report.status);
    });
    let limit = Duration::from_secs(8);
    let runner =
        Arc::new(ServiceRunner::with_compiler(state.path(), hanging_compiler(limit)).unwrap());
    events.block_on(async {
        let started = Instant::now();
        let compiling = {
            let (runner, uptime) = (runner.clone(), uptime.clone());
            tokio::spawn(async move { runner.run_async(&uptime).await.keep_state() })
        };
        // Let uptime's load start: its compiler child is running.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..3 {
            let report = runner.run_async(&loadavg).await.keep_state();
            assert_eq!(report.status.level.as_str(), "OK", "{:?}", report.status);
        }
        assert!(
            started.elapsed() < limit && !compiling.is_finished(),
            "loadavg waited {:?} for uptime's compile",
            started.elapsed()
        );
        let report = compiling.await.unwrap();
        assert_eq!(report.status.level.as_str(), "UNKNOWN");
        assert!(
            report.status.text.contains("[cache] compile_time"),
            "{:?}",
            report.status
        );
    });
}
