//! Hostile plugins against their neighbours and the host: output that costs
//! the host more than the caps say, files that block on open, runs that keep
//! getting stuck, descriptors held by the thousand, the agent's own
//! `/proc` entries and `/sys` secrets, text meant to fool the operator,
//! runaway recursion, memory growth storms and odd lean listings.
//! Each run is stopped or cut with a message naming the limit, and the other
//! services of the same agent are unharmed.

use crate::common::{build_plugins, fixture, plugin, plugin_run, root, status};
use serde_json::Value;
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Peak resident memory of `agent once` with a core plugin and one plugin
/// returning a million aliased label strings (docs/security.md): the agent
/// (~40 MiB) plus one run's memory and copy budget (~30 MiB), with room. It
/// was 161 MiB before the copy was bounded.
const ALIASED_RSS_BOUND: u64 = 100 << 20;

/// The same with seven hostile services at once: all of them running at
/// the same time on a machine with cores enough stays below it too.
const BOMBS_RSS_BOUND: u64 = 200 << 20;

/// An agent config: the core plugin `uptime` as the neighbour, then
/// `services` (`FIXTURES` stands for the fixtures directory).
fn write_config(dir: &Path, services: &str) -> PathBuf {
    build_plugins();
    let text = format!(
        "plugin_dir = {:?}\nstate_dir = {:?}\n[services.uptime]\nplugin = \"uptime\"\n{}",
        root().join("target/plugins"),
        dir.join("state"),
        services.replace("FIXTURES", root().join("target/fixtures").to_str().unwrap())
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `agent once --format json` on `config`: the reports and the agent's peak
/// resident memory in bytes.
fn once_measured(config: &Path) -> (Vec<Value>, u64) {
    let (stdout, peak) = crate::common::agent_measured(&[
        "once",
        "--config",
        config.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let reports = serde_json::from_slice::<Value>(&stdout).unwrap();
    (reports.as_array().unwrap().clone(), peak)
}

fn report_of(reports: &[Value], service: &str) -> (String, String) {
    let report = reports
        .iter()
        .find(|r| r["service"] == service)
        .unwrap_or_else(|| panic!("no report for {service}"));
    status(report)
}

fn assert_neighbour_ok(reports: &[Value]) {
    let (level, text) = report_of(reports, "uptime");
    assert_eq!(level, "OK", "uptime beside the hostile plugins: {text}");
}

const OUTPUT_BOMBS: &str = r#"
[services.huge_error]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "huge-error" }
limits = { memory = "64MiB" }
[services.long_error]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "huge-error", size = "100000" }
[services.empty_labels]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "empty-labels" }
[services.aliased1]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "aliased-labels", len = "100" }
[services.aliased2]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "aliased-labels", len = "100" }
[services.aliased3]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "aliased-labels", len = "100" }
[services.aliased4]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "aliased-labels", len = "100" }
"#;

/// `agent once` on `services` beside `uptime`, run twice: the first run
/// compiles and caches the plugins, the second is measured, so that a bound
/// is on running them, not on the compiler. Its reports and peak RSS.
fn once_warm(services: &str) -> (Vec<Value>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), services);
    once_measured(&config);
    once_measured(&config)
}

fn assert_peak_below(peak: u64, bound: u64) {
    assert!(
        peak < bound,
        "agent peak RSS {} MiB, bound {} MiB",
        peak >> 20,
        bound >> 20
    );
}

/// Strings aliasing the same guest bytes: the lift is refused when it
/// reaches the copy budget, long before the host holds 100 MB of copies.
#[test]
fn aliased_strings_cannot_make_the_host_copy_more_than_the_caps() {
    let (reports, peak) = once_warm(
        r#"
[services.aliased]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "aliased-labels", len = "100" }
"#,
    );
    let (level, text) = report_of(&reports, "aliased");
    assert_eq!(level, "UNKNOWN");
    assert!(text.starts_with(LIFT_REFUSED), "{text}");
    assert_neighbour_ok(&reports);
    assert_peak_below(peak, ALIASED_RSS_BOUND);
}

/// How a refused copy out of the guest reads.
const LIFT_REFUSED: &str = "output limit: the plugin handed the host more than ";

#[test]
fn output_that_would_cost_the_host_more_than_the_caps_is_refused_or_cut() {
    assert_output_bombs_refused_or_cut(OUTPUT_BOMBS);
}

/// The same bombs from the lean build of the fixture (ABI 1.1, no WASI),
/// through the agent: the lean sandbox keeps every output cap.
#[test]
fn output_bombs_from_a_lean_plugin_are_refused_or_cut_alike() {
    assert_output_bombs_refused_or_cut(
        &OUTPUT_BOMBS.replace("misbehave.wasm", "misbehave-lean.wasm"),
    );
}

fn assert_output_bombs_refused_or_cut(services: &str) {
    let (reports, peak) = once_warm(services);
    for service in ["huge_error", "aliased1", "aliased2", "aliased3", "aliased4"] {
        let (level, text) = report_of(&reports, service);
        assert_eq!(level, "UNKNOWN", "{service}: {text}");
        assert!(text.starts_with(LIFT_REFUSED), "{service}: {text}");
    }
    let (_, text) = report_of(&reports, "long_error");
    assert!(
        text.starts_with("plugin error: eeee")
            && text.ends_with("… [truncated from 100000 bytes]")
            && text.len() < 1200,
        "{text}"
    );
    let (_, text) = report_of(&reports, "empty_labels");
    assert!(
        text.starts_with("output limit: ")
            && text.ends_with("bytes of strings and items exceed max_output_bytes 1 MiB"),
        "{text}"
    );
    assert_neighbour_ok(&reports);
    assert_peak_below(peak, BOMBS_RSS_BOUND);
}

#[test]
fn a_plugin_holding_files_open_is_stopped_at_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        r#"
[services.opens]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "many-opens" }
[services.opens_few]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "many-opens" }
limits = { max_open_files = 10 }
[services.opens_within]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "many-opens", count = "40" }
"#,
    );
    let reports = crate::common::once(&config);
    let (level, text) = report_of(&reports, "opens");
    assert_eq!(level, "UNKNOWN");
    assert!(
        text.starts_with("open files limit 64 reached (max_open_files)"),
        "{text}"
    );
    let (_, text) = report_of(&reports, "opens_few");
    assert!(text.starts_with("open files limit 10 reached"), "{text}");
    let (level, text) = report_of(&reports, "opens_within");
    assert_eq!(
        (level.as_str(), text.as_str()),
        ("OK", "escaped: held 40 files open")
    );
    assert_neighbour_ok(&reports);
}

/// A directory holding a FIFO (no writer will ever come) and a log file.
fn dir_with_fifo() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("app.log");
    let c_path = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    std::fs::write(dir.path().join("other.log"), "ERROR x\n").unwrap();
    (dir, fifo)
}

#[test]
fn a_fifo_in_a_granted_directory_is_refused_instead_of_blocking_the_run() {
    let (dir, fifo) = dir_with_fifo();
    let fifo = fifo.to_str().unwrap();
    let (report, _) = plugin_run(
        &fixture("misbehave"),
        &[
            "--param",
            "mode=read",
            "--param",
            &format!("path={fifo}"),
            "--grant",
            "files",
            "--files",
            dir.path().to_str().unwrap(),
        ],
    );
    let (level, text) = status(&report);
    assert_eq!(level, "UNKNOWN");
    assert!(
        text.starts_with(&format!("plugin error: blocked: {fifo}: Permission denied"))
            && text.contains("(1 opens denied by the sandbox, first ")
            && text.contains("app.log (not a regular file or directory"),
        "{text}"
    );
}

#[test]
fn logwatch_on_a_fifo_reports_it_and_reads_the_other_files() {
    let (dir, fifo) = dir_with_fifo();
    let other = dir.path().join("other.log");
    let logs = dir.path().to_str().unwrap().to_owned();
    let config = write_config(
        dir.path(),
        &format!(
            "[services.logs]\nplugin = \"logwatch\"\ngrants = [\"files\"]\nfiles = [{logs:?}]\n\
             params = {{ files = \"{},{}\", \"match.error\" = \"ERROR\", from_start = \"true\" }}\n",
            fifo.display(),
            other.display()
        ),
    );
    let reports = crate::common::once(&config);
    let (level, text) = report_of(&reports, "logs");
    assert_ne!(level, "OK", "{text}");
    assert!(
        text.contains(&format!(
            "{}: Permission denied (not a regular file",
            fifo.display()
        )) && !text.contains("blocked in a host call"),
        "{text}"
    );
    let logs_report = reports.iter().find(|r| r["service"] == "logs").unwrap();
    let other = other.to_str().unwrap();
    assert!(
        crate::common::value(logs_report, "logwatch_file_bytes", &[("file", other)]).is_some(),
        "{logs_report}"
    );
    assert_neighbour_ok(&reports);
}

/// A file whose every open blocks in the kernel while the write lease this
/// holds is in place (Samba's oplocks, for one, hold such leases): a real
/// host call that blocks past any deadline, until [`Lease::release`].
struct Lease {
    file: std::fs::File,
}

/// `fcntl(F_SETSIG)`, which the libc crate does not name (linux/fcntl.h).
const F_SETSIG: libc::c_int = 10;

impl Lease {
    fn take(path: &Path) -> Lease {
        std::fs::write(path, "ERROR x\n").unwrap();
        let file = std::fs::File::open(path).unwrap();
        let fd = file.as_raw_fd();
        // SAFETY: plain fcntl calls on a descriptor we own. The lease break
        // is signalled with SIGURG, whose default action is to ignore it.
        unsafe {
            assert_eq!(libc::fcntl(fd, F_SETSIG, libc::SIGURG), 0);
            assert_eq!(libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK), 0);
        }
        Lease { file }
    }

    fn release(&self) {
        // SAFETY: as above.
        let released =
            unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
        assert_eq!(released, 0);
    }
}

#[test]
fn a_plugin_that_keeps_getting_stuck_is_refused_alone() {
    use sandglass_runtime::{LimitOverrides, Limits, RunRequest, Runtime, View};
    use std::sync::Arc;
    build_plugins();
    let dir = tempfile::tempdir().unwrap();
    let leased = dir.path().join("leased.log");
    let lease = Lease::take(&leased);
    let runtime = Runtime::new(None).unwrap();
    let stuck_plugin = runtime.load(&fixture("misbehave")).unwrap();
    let other_plugin = runtime.load(&plugin("uptime")).unwrap();
    let limits = Limits::default()
        .with(&LimitOverrides {
            deadline: Some("100ms".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
    let view = Arc::new(View::new(false, &[dir.path().to_owned()]).unwrap());
    let request = |params: &[(&str, &str)]| RunRequest {
        service: "test".into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        state: None,
        limits: limits.clone(),
        view: view.clone(),
    };
    let path = leased.to_str().unwrap();
    let read_leased = [("mode", "read"), ("path", path)];
    for run in 1..=2 {
        let text = runtime
            .run(&stuck_plugin, request(&read_leased))
            .status()
            .text;
        assert!(
            text.contains("while blocked in a host call; the run was abandoned"),
            "run {run}: {text}"
        );
    }
    let text = runtime.run(&stuck_plugin, request(&[])).status().text;
    assert_eq!(
        text,
        "not run: 2 earlier runs of plugin misbehave are still blocked in host calls; \
         it is not run again until they return"
    );
    let other = runtime.run(&other_plugin, request(&[]));
    assert!(other.result.is_ok(), "another plugin: {:?}", other.status());

    // Once the blocked opens return, the plugin runs again.
    lease.release();
    let again = (0..100).find_map(|_| {
        let outcome = runtime.run(&stuck_plugin, request(&[]));
        if outcome.result.is_ok() {
            return Some(outcome);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        None
    });
    assert!(
        again.is_some(),
        "misbehave still refused after the lease went"
    );
}

fn misbehave(args: &[&str]) -> (String, String) {
    status(&plugin_run(&fixture("misbehave"), args).0)
}

#[test]
fn readlink_of_the_agents_own_descriptors_is_refused() {
    for path in [
        "/proc/self/fd/0",
        "/proc/self/fd/1",
        "/proc/thread-self/fd/0",
        "/proc/self/exe",
        "/proc/self/cwd",
    ] {
        let (level, text) = misbehave(&[
            "--param",
            "mode=readlink",
            "--param",
            &format!("path={path}"),
        ]);
        assert_eq!(level, "UNKNOWN", "{path}: {text}");
        assert!(
            text.starts_with(&format!(
                "plugin error: blocked: readlink {path}: No such file"
            )),
            "{path}: {text}"
        );
    }
    // Links that live in /proc itself stay readable.
    let (level, text) = misbehave(&["--param", "mode=readlink", "--param", "path=/proc/mounts"]);
    assert_eq!(
        (level.as_str(), text.as_str()),
        ("OK", "escaped: /proc/mounts -> self/mounts")
    );
}

#[test]
fn the_agents_hidden_files_look_like_absent_ones() {
    let read = |path: &str| {
        let (_, text) = misbehave(&["--param", "mode=read", "--param", &format!("path={path}")]);
        let error = text
            .strip_prefix(&format!("plugin error: blocked: {path}: "))
            .unwrap_or_else(|| panic!("{path}: {text}"));
        error.split(" (").next().unwrap().to_owned()
    };
    let absent = read("/proc/self/no-such-entry");
    for hidden in ["/proc/self/environ", "/proc/self/status", "/proc/self/fd/0"] {
        assert_eq!(read(hidden), absent, "{hidden}");
    }
}

#[test]
fn firmware_and_kernel_secrets_in_sys_are_refused_even_when_granted() {
    for path in [
        "/sys/kernel/vmcoreinfo",
        "/sys/kernel/boot_params/data",
        "/sys/firmware/memmap/",
    ] {
        if !Path::new(path).exists() {
            continue;
        }
        let (level, text) = misbehave(&[
            "--param",
            "mode=read",
            "--param",
            &format!("path={path}"),
            "--grant",
            "sys",
        ]);
        assert_eq!(level, "UNKNOWN", "{path}: {text}");
        assert!(
            text.contains("blocked:") && text.contains("firmware, kernel memory and security data"),
            "{path}: {text}"
        );
    }
    let (level, text) = misbehave(&[
        "--param",
        "mode=read",
        "--param",
        "path=/sys/kernel/uevent_seqnum",
        "--grant",
        "sys",
    ]);
    assert_eq!(level, "OK", "{text}");
}

/// The `ansi` mode's status text and log message.
const FORGED: &str = "\u{1b}[2J\rreal status\ncpu      OK       forged line";

#[test]
fn plugin_text_cannot_drive_the_terminal_or_forge_lines() {
    let path = fixture("misbehave");
    let run = |format: &str| {
        let output = Command::new(sandglass_tests::binary("agent"))
            .args([
                "plugin",
                "run",
                path.to_str().unwrap(),
                "--param",
                "mode=ansi",
            ])
            .args(["--format", format])
            .env("SANDGLASS_LOG", "warn")
            .output()
            .unwrap();
        assert!(output.status.success());
        (
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    let (table, log) = run("table");
    assert_eq!(table.lines().count(), 1, "{table}");
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "{table:?}"
    );
    assert!(
        table.contains("\\e[2J\\rreal status\\ncpu      OK"),
        "{table}"
    );
    assert!(!log.contains('\u{1b}') && !log.contains('\r'), "{log:?}");
    assert!(log.contains("\\e[2J\\rreal status\\ncpu"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("cpu")), "{log}");
    let (json, _) = run("json");
    let reports: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status(&reports[0]), ("CRIT".to_owned(), FORGED.to_owned()));
}

#[test]
fn a_plugin_error_cannot_forge_a_line_of_the_agents_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        r#"
[services.forger]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "ansi", fail = "yes" }
"#,
    );
    let output = Command::new(sandglass_tests::binary("agent"))
        .args([
            "once",
            "--config",
            config.to_str().unwrap(),
            "--format",
            "json",
        ])
        .env("SANDGLASS_LOG", "warn")
        .output()
        .unwrap();
    assert!(output.status.success());
    let log = String::from_utf8(output.stderr).unwrap();
    assert!(
        log.contains("run failed: plugin error: \\e[2J\\rreal status\\ncpu"),
        "{log}"
    );
    assert!(!log.contains('\u{1b}') && !log.contains('\r'), "{log:?}");
    assert!(!log.lines().any(|l| l.starts_with("cpu")), "{log}");
    let reports: Value = serde_json::from_slice(&output.stdout).unwrap();
    let forger = reports
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "forger")
        .unwrap();
    assert_eq!(status(forger).1, format!("plugin error: {FORGED}"));
}

/// Recursion until a stack overflows, in both sandboxes, beside a
/// neighbour: a trap for the run, nothing for the agent or the neighbour.
/// The WASI build overflows wasm's own call stack; the lean build's 64 KiB
/// stack in linear memory runs out first, below address 0.
#[test]
fn runaway_recursion_traps_the_run_alone_in_both_sandboxes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        r#"
[services.wasi_stack]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "recurse" }
[services.wasi_frames]
plugin = "FIXTURES/misbehave.wasm"
params = { mode = "recurse", frame = "memory" }
[services.lean_stack]
plugin = "FIXTURES/misbehave-lean.wasm"
params = { mode = "recurse" }
[services.bounded]
plugin = "FIXTURES/misbehave-lean.wasm"
params = { mode = "recurse", depth = "100" }
"#,
    );
    let reports = crate::common::once(&config);
    assert_eq!(
        report_of(&reports, "wasi_stack"),
        (
            "UNKNOWN".into(),
            "trap: wasm trap: call stack exhausted".into()
        )
    );
    for service in ["wasi_frames", "lean_stack"] {
        assert_eq!(
            report_of(&reports, service),
            (
                "UNKNOWN".into(),
                "trap: wasm trap: out of bounds memory access".into()
            ),
            "{service}"
        );
    }
    assert_eq!(
        report_of(&reports, "bounded"),
        ("OK".into(), "recursed 100".into())
    );
    assert_neighbour_ok(&reports);
}

/// Growing memory a page at a time to the cap and then asking 100,000
/// times more: each refusal is a failed `memory.grow`, not a trap, and the
/// run ends normally with what it got, within the cap.
#[test]
fn a_storm_of_memory_growth_stops_at_the_cap_in_both_sandboxes() {
    for build in ["misbehave", "misbehave-lean"] {
        let (report, _) = plugin_run(
            &fixture(build),
            &["--param", "mode=grow-storm", "--memory", "8MiB"],
        );
        let (level, text) = status(&report);
        assert_eq!(level, "OK", "{build}: {text}");
        assert!(
            text.ends_with("then 100000 growths refused"),
            "{build}: {text}"
        );
        let pages = crate::common::value(&report, "pages", &[]).unwrap();
        assert!(
            pages > 0.0 && pages * 65536.0 <= (8 << 20) as f64,
            "{build}: {pages}"
        );
    }
}

/// Listing directories the policy hides, and `fs-usage` of what is no
/// mount point, are refused in the lean sandbox.
#[test]
fn lean_listings_and_usage_of_hidden_or_odd_paths_are_refused() {
    let lean = |mode: &str, path: &str| {
        status(
            &plugin_run(
                &fixture("misbehave-lean"),
                &[
                    "--param",
                    &format!("mode={mode}"),
                    "--param",
                    &format!("path={path}"),
                ],
            )
            .0,
        )
    };
    for path in [
        "/proc/1/fd",
        "/proc/1/map_files",
        "/proc/1/root",
        "/proc/1/cwd",
    ] {
        let (level, text) = lean("list", path);
        assert_eq!(level, "UNKNOWN", "{path}: {text}");
        assert!(
            text.starts_with(&format!("plugin error: blocked: {path}: Permission denied")),
            "{path}: {text}"
        );
    }
    let (level, text) = lean("list", "/proc/self/");
    assert_eq!(level, "UNKNOWN", "{text}");
    assert!(text.contains("No such file or directory"), "{text}");
    for path in ["/proc/../", "//", "/etc", "relative"] {
        let (level, text) = lean("fs-usage", path);
        assert_eq!(level, "UNKNOWN", "{path}: {text}");
        assert!(
            text.starts_with(&format!(
                "plugin error: blocked: {path}: not a regular file, directory or mount point"
            )),
            "{path}: {text}"
        );
    }
}
