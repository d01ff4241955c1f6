//! Lean collectors (ABI 1.1, no WASI): they import only Sandglass
//! interfaces, run in the lean sandbox, report what `/proc` and `statvfs`
//! say, stay inside the same `/proc` policy as WASI plugins, and are stopped
//! by the same limits. Plugins built for ABI 1.0 keep running beside them.
//! Through the runtime library (the agent's own), on real wasm and the real
//! `/proc`; `agent plugin info` through the binary.

use crate::common::{agent, build_plugins, fixture, plugin};
use sandglass_runtime::{Limits, Plugin, RunFailure, RunOutcome, RunRequest, Runtime, View};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn runtime() -> Runtime {
    build_plugins();
    Runtime::new(None).unwrap()
}

fn run(
    runtime: &Runtime,
    plugin: &Arc<Plugin>,
    params: &[(&str, &str)],
    limits: Limits,
    view: View,
) -> RunOutcome {
    let request = RunRequest {
        service: "lean-test".into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        state: None,
        limits,
        view: Arc::new(view),
    };
    runtime.run(plugin, request)
}

fn proc_view() -> View {
    View::new(false, &[]).unwrap()
}

fn value(outcome: &RunOutcome, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let output = outcome.result.as_ref().ok()?;
    output.samples.iter().find_map(|s| {
        let matches = s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v));
        matches.then_some(s.value)
    })
}

#[test]
fn lean_plugins_import_only_sandglass_interfaces_and_run_lean() {
    let runtime = runtime();
    let core = sandglass_tests::CORE_PLUGINS.map(plugin);
    for path in core.into_iter().chain([fixture("misbehave-lean")]) {
        let loaded = runtime.load(&path).unwrap();
        assert!(loaded.is_lean(), "{}", path.display());
        assert_eq!(loaded.description.abi_version, "1.1.0");
        let imports = runtime.imports(&loaded);
        assert!(
            imports
                .iter()
                .all(|i| i.starts_with("sandglass:collector/")),
            "{}: {imports:?}",
            path.display()
        );
        assert!(
            imports
                .iter()
                .any(|i| i == "sandglass:collector/host@1.1.0"),
            "{imports:?}"
        );
    }
    for path in [
        fixture("loadavg-wasi"),
        fixture("cpu-wasi"),
        fixture("misbehave"),
    ] {
        let loaded = runtime.load(&path).unwrap();
        assert!(!loaded.is_lean(), "{}", path.display());
        assert!(
            runtime
                .imports(&loaded)
                .iter()
                .any(|i| i.starts_with("wasi:"))
        );
    }
}

#[test]
fn a_plugin_built_for_abi_1_0_runs_unchanged() {
    let runtime = runtime();
    let old = runtime.load(&fixture("abi-1-0")).unwrap();
    assert!(!old.is_lean());
    assert_eq!(old.description.abi_version, "1.0.0");
    let imports = runtime.imports(&old);
    assert!(
        imports.iter().any(|i| i == "sandglass:collector/log@1.0.0"),
        "{imports:?}"
    );
    let outcome = run(&runtime, &old, &[], Limits::default(), proc_view());
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert!(value(&outcome, "load1", &[]).unwrap() >= 0.0);
}

#[test]
fn plugin_info_shows_the_lean_sandbox_and_the_imports() {
    build_plugins();
    let path = plugin("filesystem");
    let (output, _) = agent(&["plugin", "info", path.to_str().unwrap(), "--format", "json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["sandbox"], "lean (no WASI)");
    let imports: Vec<&str> = info["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    assert!(
        imports.contains(&"sandglass:collector/host@1.1.0"),
        "{imports:?}"
    );
    assert!(
        !imports.iter().any(|i| i.starts_with("wasi:")),
        "{imports:?}"
    );
    let path = fixture("loadavg-wasi");
    let (output, _) = agent(&["plugin", "info", path.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("sandbox:   WASI") && table.contains("wasi:filesystem/"),
        "{table}"
    );
}

/// The three load averages of `/proc/loadavg` now.
fn loads() -> Vec<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap();
    text.split_whitespace()
        .take(3)
        .map(|f| f.parse().unwrap())
        .collect()
}

#[test]
fn lean_loadavg_reports_what_proc_says_like_its_wasi_build() {
    let runtime = runtime();
    let lean = runtime.load(&plugin("loadavg")).unwrap();
    let wasi = runtime.load(&fixture("loadavg-wasi")).unwrap();
    // The kernel updates the averages every 5 s: a run between two reads
    // that agree saw the same values.
    let (outcome, before, after) = loop {
        let before = loads();
        let outcome = run(&runtime, &lean, &[], Limits::default(), proc_view());
        let after = loads();
        if before == after {
            break (outcome, before, after);
        }
    };
    assert_eq!(before, after);
    for (name, expected) in ["load1", "load5", "load15"].iter().zip(&before) {
        assert_eq!(value(&outcome, name, &[]), Some(*expected), "{name}");
    }
    let wasi_outcome = run(&runtime, &wasi, &[], Limits::default(), proc_view());
    let names = |o: &RunOutcome| -> Vec<String> {
        o.result
            .as_ref()
            .unwrap()
            .samples
            .iter()
            .map(|s| s.name.clone())
            .collect()
    };
    assert_eq!(names(&outcome), names(&wasi_outcome));
}

/// `statvfs` of `/`, as the test sees it.
fn statvfs_root() -> libc::statvfs {
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a buffer of the right type.
    unsafe {
        assert_eq!(libc::statvfs(c"/".as_ptr(), stat.as_mut_ptr()), 0);
        stat.assume_init()
    }
}

#[test]
fn filesystem_reports_root_as_statvfs_and_df_see_it_and_skips_pseudo_filesystems() {
    let runtime = runtime();
    let filesystem = runtime.load(&plugin("filesystem")).unwrap();
    let outcome = run(&runtime, &filesystem, &[], Limits::default(), proc_view());
    let output = outcome.result.as_ref().expect("filesystem ran");
    let root = [("mountpoint", "/")];
    let stat = statvfs_root();
    let block = stat.f_frsize;
    assert_eq!(
        value(&outcome, "filesystem_size", &root),
        Some((stat.f_blocks * block) as f64)
    );
    assert_eq!(
        value(&outcome, "filesystem_files", &root),
        Some(stat.f_files as f64)
    );
    // Free space moves with every write on the machine: within 1 GiB.
    let avail = value(&outcome, "filesystem_avail", &root).unwrap();
    assert!(
        (avail - (stat.f_bavail * block) as f64).abs() < (1u64 << 30) as f64,
        "{avail}"
    );
    let df = std::process::Command::new("df")
        .args(["-B1", "--output=size,fstype", "/"])
        .output()
        .expect("df (coreutils)");
    let df = String::from_utf8_lossy(&df.stdout);
    let mut fields = df.lines().nth(1).unwrap().split_whitespace();
    let df_size: f64 = fields.next().unwrap().parse().unwrap();
    let df_type = fields.next().unwrap();
    assert_eq!(value(&outcome, "filesystem_size", &root), Some(df_size));
    assert_eq!(
        value(
            &outcome,
            "filesystem_size",
            &[("mountpoint", "/"), ("fstype", df_type)]
        ),
        Some(df_size)
    );
    for sample in &output.samples {
        let label = |key: &str| {
            sample
                .labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let point = label("mountpoint").unwrap();
        assert!(
            !["/proc", "/sys", "/dev"]
                .iter()
                .any(|p| point == *p || point.starts_with(&format!("{p}/"))),
            "{point}"
        );
        assert!(
            !["proc", "sysfs", "cgroup", "cgroup2", "devpts"].contains(&label("fstype").unwrap())
        );
    }
    assert!(
        output.status.text.contains("filesystems, fullest"),
        "{}",
        output.status.text
    );
}

/// A misbehave-lean run in `mode` on `path`: (ok, status or error text).
fn lean_mode(runtime: &Runtime, mode: &str, path: &str, view: View) -> (bool, String, usize) {
    let lean = runtime.load(&fixture("misbehave-lean")).unwrap();
    let outcome = run(
        runtime,
        &lean,
        &[("mode", mode), ("path", path)],
        Limits::default(),
        view,
    );
    let count = outcome.denied_count;
    match outcome.result {
        Ok(output) => (true, output.status.text, count),
        Err(failure) => (false, failure.to_string(), count),
    }
}

#[test]
fn a_lean_plugin_reads_only_what_the_policy_allows() {
    let runtime = runtime();
    let me = std::process::id();
    let (ok, text, _) = lean_mode(&runtime, "read", "/proc/loadavg", proc_view());
    assert!(ok && text.starts_with("escaped: read"), "{text}");
    // /proc/net is a link into the agent's own /proc/<pid>/net: visible.
    let (ok, text, _) = lean_mode(&runtime, "read", "/proc/net/dev", proc_view());
    assert!(ok, "{text}");
    let refused = [
        "/etc/shadow".to_string(),
        "/etc/passwd".into(),
        "/proc/../etc/passwd".into(),
        "/proc/self/environ".into(),
        format!("/proc/{me}/environ"),
        format!("/proc/{me}/mem"),
        "/proc/self/fd/".into(),
        "/proc/self/root/etc/passwd".into(),
        "/proc/1/environ".into(),
        "/proc/1/root/etc/passwd".into(),
        "/proc/kcore".into(),
        "/sys/kernel/uevent_seqnum".into(),
        "proc/loadavg".into(),
    ];
    // A part of a file (read-file-part, as logwatch reads) is judged alike.
    let (ok, text, _) = lean_mode(&runtime, "read-part", "/proc/meminfo", proc_view());
    assert!(ok && text.starts_with("escaped: read 64 of"), "{text}");
    for path in &refused {
        for mode in ["read", "read-part"] {
            let (ok, text, _) = lean_mode(&runtime, mode, path, proc_view());
            assert!(!ok && text.contains("blocked: "), "{mode} {path}: {text}");
        }
    }
    // The agent's own secrets look absent; another's are refused by rule.
    let (_, text, denied) = lean_mode(&runtime, "read", "/proc/self/environ", proc_view());
    assert!(text.contains("No such file"), "{text}");
    assert_eq!(denied, 1);
    let (_, text, denied) = lean_mode(&runtime, "read", "/proc/kcore", proc_view());
    assert!(text.contains("Permission denied"), "{text}");
    assert_eq!(denied, 1);
    // /sys with the grant, its secrets still refused.
    let sys = || View::new(true, &[]).unwrap();
    let (ok, text, _) = lean_mode(&runtime, "read", "/sys/kernel/uevent_seqnum", sys());
    assert!(ok, "{text}");
    let (ok, text, _) = lean_mode(&runtime, "read", "/sys/kernel/vmcoreinfo", sys());
    assert!(!ok && text.contains("Permission denied"), "{text}");
}

/// A granted directory holding a FIFO (no writer) and a regular file.
fn dir_with_fifo() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let c_fifo = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o644) }, 0);
    std::fs::write(dir.path().join("a.log"), "line\n").unwrap();
    (dir, fifo)
}

#[test]
fn a_fifo_in_a_granted_directory_is_refused_instead_of_blocking_a_lean_run() {
    let runtime = runtime();
    let (dir, fifo) = dir_with_fifo();
    let view = || View::new(false, &[dir.path().to_owned()]).unwrap();
    let real = std::fs::canonicalize(dir.path()).unwrap();
    let (ok, text, _) = lean_mode(
        &runtime,
        "read",
        &format!("{}/a.log", real.display()),
        view(),
    );
    assert!(ok, "{text}");
    let fifo = std::fs::canonicalize(&fifo).unwrap();
    for mode in ["read", "read-part"] {
        let (ok, text, denied) = lean_mode(&runtime, mode, fifo.to_str().unwrap(), view());
        assert!(
            !ok && text.contains("blocked: ") && !text.contains("deadline"),
            "{mode}: {text}"
        );
        assert_eq!(denied, 1);
    }
}

fn lean_failure(runtime: &Runtime, params: &[(&str, &str)], limits: Limits) -> RunFailure {
    let lean = runtime.load(&fixture("misbehave-lean")).unwrap();
    run(runtime, &lean, params, limits, proc_view())
        .result
        .expect_err("the limit must stop the run")
}

#[test]
fn fuel_deadline_memory_and_output_caps_stop_a_lean_plugin() {
    let runtime = runtime();
    let defaults = Limits::default();
    assert_eq!(
        lean_failure(&runtime, &[("mode", "spin")], defaults.clone()),
        RunFailure::Fuel(defaults.fuel)
    );
    let slow = Limits {
        fuel: u64::MAX / 2,
        deadline: sandglass_core::units::HumanDuration(Duration::from_millis(300)),
        ..defaults.clone()
    };
    assert_eq!(
        lean_failure(&runtime, &[("mode", "spin")], slow.clone()),
        RunFailure::Deadline(slow.deadline)
    );
    assert_eq!(
        lean_failure(&runtime, &[("mode", "membomb")], defaults.clone()),
        RunFailure::Memory(defaults.memory)
    );
    assert!(matches!(
        lean_failure(&runtime, &[("mode", "many-samples")], defaults.clone()),
        RunFailure::TooManySamples { count: 20_000, .. }
    ));
    // Packed samples that lie about their count fail the run, although
    // the plugin ignores the refusal and reports OK.
    assert!(matches!(
        lean_failure(&runtime, &[("mode", "packed-lies")], defaults.clone()),
        RunFailure::Plugin(text) if text.contains("malformed packed samples: 4294967295 samples claimed")
    ));
    assert!(matches!(
        lean_failure(&runtime, &[("mode", "huge-strings")], defaults.clone()),
        RunFailure::OutputBytes { .. } | RunFailure::Lift(_)
    ));
    assert!(matches!(
        lean_failure(
            &runtime,
            &[("mode", "aliased-labels"), ("len", "100")],
            defaults.clone()
        ),
        RunFailure::Lift(_)
    ));
    assert!(matches!(
        lean_failure(&runtime, &[("mode", "big-state")], defaults.clone()),
        RunFailure::State { .. }
    ));
    let RunFailure::Trap(text) = lean_failure(&runtime, &[("mode", "panic")], defaults.clone())
    else {
        panic!("a panic traps");
    };
    assert!(text.contains("fixture panicked on purpose"), "{text}");
    // An error text larger than the copy budget is refused before the copy;
    // a long one is cut.
    let roomy = Limits {
        memory: sandglass_core::units::ByteSize(64 << 20),
        ..defaults.clone()
    };
    assert!(matches!(
        lean_failure(&runtime, &[("mode", "huge-error")], roomy),
        RunFailure::Lift(_)
    ));
    let long = [("mode", "huge-error"), ("size", "100000")];
    let RunFailure::Plugin(text) = lean_failure(&runtime, &long, defaults) else {
        panic!("an error is the plugin's");
    };
    assert!(
        text.starts_with("eeee") && text.ends_with("… [truncated from 100000 bytes]"),
        "{text}"
    );
}

#[test]
fn the_receiver_offers_lean_and_abi_1_0_plugins_to_agents() {
    build_plugins();
    for path in [
        plugin("loadavg"),
        plugin("filesystem"),
        fixture("misbehave-lean"),
        fixture("abi-1-0"),
        plugin("cpu"),
    ] {
        let wasm = std::fs::read(&path).unwrap();
        assert_eq!(
            sandglass_receiver::plugins::check::check(&wasm),
            Ok(()),
            "{}",
            path.display()
        );
    }
    let err =
        sandglass_receiver::plugins::check::check(&std::fs::read(fixture("abi-mismatch")).unwrap())
            .unwrap_err();
    assert!(err.contains("0.9.0"), "{err}");
}
