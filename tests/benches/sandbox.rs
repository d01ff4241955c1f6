//! Sandbox benchmark: ratios measured in one run, printed as a table.
//!
//! `bash scripts/bench-sandbox.sh` (builds the plugins, then
//! `cargo bench --profile release --workspace --bench sandbox`). Measures:
//! - the fixed cost of entering the sandbox (a plugin that does nothing), in
//!   the lean sandbox (ABI 1.1, no WASI) against the WASI one: the same
//!   fixture source built both ways, and loadavg built both ways;
//! - each core collector in the sandbox against its parser called natively
//!   on the same /proc file;
//! - cold (compile) against warm (cached artifact) start of the plugin set;
//! - RSS with all plugins loaded, and across 1,000 runs of the memory bomb.
//!
//! Means of many runs, after a warm-up; no assertions (machines are noisy).

#[path = "support/natives.rs"]
mod natives;

use sandglass_plugin_sdk::Context;
use sandglass_runtime::{Limits, Plugin, RunRequest, Runtime, View};
use sandglass_tests::root;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUNS: u32 = 2000;

fn request(params: &[(&str, &str)], limits: &Limits) -> RunRequest {
    RunRequest {
        service: "bench".into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        state: None,
        limits: limits.clone(),
        view: Arc::new(View::new(false, &[]).unwrap()),
    }
}

/// Mean time of `f` over `runs` calls, after `runs / 10` warm-up calls.
fn mean(runs: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..runs / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..runs {
        f();
    }
    start.elapsed() / runs
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let rss_start = rss_kib();
    let cache = tempfile::tempdir().unwrap();
    let plugins_dir = root().join("target/plugins");
    let names = [
        "cpu",
        "cpuinfo",
        "diskio",
        "loadavg",
        "lvs",
        "memory",
        "network",
        "processes",
        "uptime",
    ];
    let paths: Vec<PathBuf> = names
        .iter()
        .map(|n| plugins_dir.join(format!("{n}.wasm")))
        .collect();
    assert!(
        paths[0].exists(),
        "run scripts/build-plugins.sh first (scripts/bench-sandbox.sh does)"
    );

    // Cold start: compile every plugin; warm: load the cached artifacts.
    let start = Instant::now();
    let cold_rt = Runtime::new(Some(cache.path().to_owned())).unwrap();
    for p in &paths {
        cold_rt.load(p).unwrap();
    }
    let cold = start.elapsed();
    drop(cold_rt);
    let rss_before_warm = rss_kib();
    let start = Instant::now();
    let runtime = Runtime::new(Some(cache.path().to_owned())).unwrap();
    let rss_engine = rss_kib();
    let loaded: Vec<Arc<Plugin>> = paths.iter().map(|p| runtime.load(p).unwrap()).collect();
    let warm = start.elapsed();
    let rss_plugins = rss_kib();
    println!(
        "start of the {}-plugin set   cold (compile) {:>9.1} ms   warm (cached) {:>7.2} ms   cold/warm {:>6.1}x",
        names.len(),
        cold.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3,
        cold.as_secs_f64() / warm.as_secs_f64()
    );

    let limits = Limits::default();
    for plugin in &loaded {
        runtime.run_here(plugin, &request(&[], &limits));
    }
    let rss_loaded = rss_kib();
    println!(
        "RSS in this process: start {rss_start} KiB; after a cold start {rss_before_warm} KiB; warm runtime: engine {:+} KiB, {} plugins loaded {:+} KiB, each run once {:+} KiB = {rss_loaded} KiB",
        rss_engine as i64 - rss_before_warm as i64,
        names.len(),
        rss_plugins as i64 - rss_engine as i64,
        rss_loaded as i64 - rss_plugins as i64,
    );

    // Fixed cost of entering the sandbox.
    let noop = runtime
        .load(&root().join("target/fixtures/misbehave.wasm"))
        .unwrap();
    let noop_req = request(&[], &limits);
    let entry = mean(RUNS, || {
        runtime.run_here(&noop, &noop_req);
    });
    let entry_thread = mean(RUNS / 4, || {
        runtime.run(&noop, noop_req.clone());
    });
    println!(
        "sandbox entry (noop plugin)   run_here {:>7.1} us   run (worker thread + hard timer) {:>7.1} us",
        us(entry),
        us(entry_thread)
    );
    lean_against_wasi(
        &runtime,
        &noop,
        &loaded[names.iter().position(|n| *n == "loadavg").unwrap()],
    );

    // Each core collector vs its parser called natively on the same file.
    let natives = natives::natives();
    println!(
        "{:<10} {:>12} {:>12} {:>14} {:>8}",
        "collector", "native us", "sandbox us", "minus entry", "ratio"
    );
    for (name, file, parse) in natives {
        let plugin = &loaded[names.iter().position(|n| *n == name).unwrap()];
        let req = request(&[], &limits);
        let sandboxed = mean(RUNS, || {
            let outcome = runtime.run_here(plugin, &req);
            assert!(outcome.result.is_ok());
        });
        let native = mean(RUNS, || {
            let text = std::fs::read_to_string(file).unwrap();
            let mut ctx = Context::new(Vec::new(), None);
            parse(&text, &mut ctx);
            std::hint::black_box(ctx);
        });
        println!(
            "{:<10} {:>12.1} {:>12.1} {:>14.1} {:>7.1}x",
            name,
            us(native),
            us(sandboxed),
            us(sandboxed.saturating_sub(entry)),
            us(sandboxed) / us(native)
        );
    }

    agent_rss(&plugins_dir, &names);

    // RSS across 1,000 memory bombs (each grows to the 32 MiB cap and traps).
    let bomb = request(&[("mode", "membomb")], &limits);
    for _ in 0..10 {
        runtime.run_here(&noop, &bomb);
    }
    let rss_10 = rss_kib();
    let start = Instant::now();
    for _ in 0..990 {
        let outcome = runtime.run_here(&noop, &bomb);
        assert!(outcome.result.is_err());
    }
    let rss_1000 = rss_kib();
    println!(
        "memory bomb x1000: RSS after 10 runs {rss_10} KiB, after 1000 runs {rss_1000} KiB ({:+} KiB, {:.2}x); {:.1} ms per contained bomb",
        rss_1000 as i64 - rss_10 as i64,
        rss_1000 as f64 / rss_10 as f64,
        start.elapsed().as_secs_f64() * 1e3 / 990.0
    );
}

/// The same collector source in the lean sandbox and in the WASI one, in
/// this run: the noop fixture (sandbox entry) and loadavg; and the lean
/// filesystem collector (WASI has no `statvfs`, so no WASI build of it).
fn lean_against_wasi(runtime: &Runtime, noop_wasi: &Arc<Plugin>, loadavg_lean: &Arc<Plugin>) {
    let fixtures = root().join("target/fixtures");
    let noop_lean = runtime.load(&fixtures.join("misbehave-lean.wasm")).unwrap();
    let loadavg_wasi = runtime.load(&fixtures.join("loadavg-wasi.wasm")).unwrap();
    let filesystem = runtime
        .load(&root().join("target/plugins/filesystem.wasm"))
        .unwrap();
    assert!(noop_lean.is_lean() && loadavg_lean.is_lean() && !loadavg_wasi.is_lean());
    let req = request(&[], &Limits::default());
    let time = |plugin: &Arc<Plugin>| {
        mean(RUNS, || {
            let outcome = runtime.run_here(plugin, &req);
            assert!(outcome.result.is_ok(), "{:?}", outcome.result);
        })
    };
    let rows = [
        ("sandbox entry (noop)", time(&noop_lean), time(noop_wasi)),
        ("loadavg", time(loadavg_lean), time(&loadavg_wasi)),
    ];
    println!(
        "{:<22} {:>10} {:>10} {:>11}",
        "lean vs WASI", "lean us", "WASI us", "WASI/lean"
    );
    for (name, lean, wasi) in rows {
        println!(
            "{:<22} {:>10.1} {:>10.1} {:>10.1}x",
            name,
            us(lean),
            us(wasi),
            us(wasi) / us(lean)
        );
    }
    println!(
        "{:<22} {:>10.1}",
        "filesystem (lean)",
        us(time(&filesystem))
    );
}

/// Peak RSS and wall time of the real `agent` binary running every core
/// plugin once with a warm cache.
fn agent_rss(plugins_dir: &Path, names: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = format!(
        "plugin_dir = {plugins_dir:?}\nstate_dir = {:?}\n",
        dir.path().join("state")
    );
    for name in names {
        config.push_str(&format!("[services.{name}]\nplugin = \"{name}\"\n"));
    }
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config).unwrap();
    // GNU time reports the agent's own peak RSS. getrusage(RUSAGE_CHILDREN)
    // from this process would not: a child's peak includes the image it had
    // before exec, which is this (large) benchmark process.
    let agent = sandglass_tests::binary("agent");
    let once = || {
        let start = Instant::now();
        let output = std::process::Command::new("/usr/bin/time")
            .args([
                "-f",
                "%M",
                agent.to_str().unwrap(),
                "once",
                "--config",
                path.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .output()
            .expect("/usr/bin/time (Debian package `time`; scripts/bench-sandbox.sh installs it)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let elapsed = start.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let kib: u64 = stderr.lines().last().unwrap().trim().parse().unwrap();
        (elapsed, kib)
    };
    // Warm the agent's cache in this process: RUSAGE_CHILDREN reports the
    // peak over all children, so the agent must run only once, warm.
    let runtime = Runtime::new(Some(dir.path().join("state/cache"))).unwrap();
    for name in names {
        runtime
            .load(&plugins_dir.join(format!("{name}.wasm")))
            .unwrap();
    }
    let (warm, max_rss_kib) = once();
    println!(
        "agent once, {} plugins, warm cache: {:.1} ms for the whole process; peak RSS of the agent {} KiB",
        names.len(),
        warm.as_secs_f64() * 1e3,
        max_rss_kib
    );
}
