//! The log-watch collector through the real agent: a granted directory,
//! offsets kept across agent restarts, rotation, truncation, and a 1 GB log
//! that is not read again.

use crate::common::{once, plugin, value};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

struct Watch {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Watch {
    /// An agent config watching `logs/<files>` for ERROR lines.
    fn new(files: &[&str]) -> Watch {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let paths: Vec<String> = files
            .iter()
            .map(|f| logs.join(f).to_str().unwrap().to_owned())
            .collect();
        for path in &paths {
            std::fs::write(path, "boot\n").unwrap();
        }
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "plugin_dir = {:?}\nstate_dir = {:?}\n\
                 [services.logs]\nplugin = \"logwatch\"\ngrants = [\"files\"]\nfiles = [{logs:?}]\n\
                 params = {{ files = {:?}, \"match.error\" = \"ERROR\", warn = 1, crit = 100 }}\n",
                plugin("logwatch").parent().unwrap(),
                dir.path().join("state"),
                paths.join(",")
            ),
        )
        .unwrap();
        Watch { dir, config }
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(name)
    }

    fn append(&self, name: &str, text: &str) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(name))
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    /// One `agent once` (a new agent process each time): the report.
    fn run(&self) -> Value {
        once(&self.config)[0].clone()
    }

    fn path(&self, name: &str) -> String {
        self.log(name).to_str().unwrap().to_owned()
    }

    fn new_matches(&self, report: &Value, name: &str) -> f64 {
        let path = self.path(name);
        value(
            report,
            "logwatch_new_matches",
            &[("file", &path), ("pattern", "error")],
        )
        .unwrap_or_else(|| panic!("no logwatch_new_matches for {path}: {report}"))
    }
}

fn level(report: &Value) -> &str {
    report["status"]["level"].as_str().unwrap()
}

#[test]
fn matches_are_counted_once_across_restarts_rotation_and_truncation() {
    let w = Watch::new(&["app.log"]);
    let first = w.run();
    assert_eq!(level(&first), "OK", "{first}");
    assert_eq!(w.new_matches(&first, "app.log"), 0.0);

    w.append("app.log", "ERROR disk full\nINFO ok\nERROR again\n");
    let report = w.run();
    assert_eq!(w.new_matches(&report, "app.log"), 2.0);
    assert_eq!(level(&report), "WARN");
    assert!(
        report["status"]["text"]
            .as_str()
            .unwrap()
            .ends_with("last: ERROR again"),
        "{report}"
    );
    // Nothing new: the offset survived the agent restart.
    let report = w.run();
    assert_eq!(w.new_matches(&report, "app.log"), 0.0);
    assert_eq!(level(&report), "OK");

    // Rotation: lines written just before it are read from app.log.1.
    w.append("app.log", "ERROR before rotation\n");
    std::fs::rename(w.log("app.log"), w.log("app.log.1")).unwrap();
    w.append("app.log", "ERROR in the new file\nINFO\n");
    let report = w.run();
    assert_eq!(w.new_matches(&report, "app.log"), 2.0);
    let path = w.path("app.log");
    assert_eq!(
        value(&report, "logwatch_rotations_total", &[("file", &path)]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &report,
            "logwatch_matches_total",
            &[("file", &path), ("pattern", "error")]
        ),
        Some(4.0)
    );

    // Truncation (copytruncate): read again from the start.
    std::fs::write(w.log("app.log"), "").unwrap();
    w.append("app.log", "ERROR after truncation\n");
    let report = w.run();
    assert_eq!(w.new_matches(&report, "app.log"), 1.0);
    assert_eq!(
        value(&report, "logwatch_rotations_total", &[("file", &path)]),
        Some(2.0)
    );
}

#[test]
fn a_file_outside_the_granted_directory_is_refused() {
    let w = Watch::new(&["app.log"]);
    let text = std::fs::read_to_string(&w.config).unwrap();
    let outside = w.dir.path().join("outside.log");
    std::fs::write(&outside, "ERROR\n").unwrap();
    std::fs::write(
        &w.config,
        text.replace(&w.path("app.log"), outside.to_str().unwrap()),
    )
    .unwrap();
    let report = w.run();
    assert_eq!(level(&report), "UNKNOWN");
    assert!(
        report["status"]["text"].as_str().unwrap().contains(
            "outside.log: Permission denied (outside the directories this plugin may see)"
        ),
        "{report}"
    );
}

/// Write `bytes` of log lines (a 1 MiB block repeated) to `path`.
fn generate_log(path: &Path, bytes: u64) {
    let line = "2026-11-21T10:00:00Z INFO request served in 12 ms path=/api/v1/items\n";
    let block = line.repeat((1 << 20) / line.len());
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut written = 0;
    while written < bytes {
        file.write_all(block.as_bytes()).unwrap();
        written += block.len() as u64;
    }
    file.flush().unwrap();
}

#[test]
fn a_one_gigabyte_log_is_not_read_again() {
    let w = Watch::new(&["big.log"]);
    generate_log(&w.log("big.log"), 1 << 30);
    let size = std::fs::metadata(w.log("big.log")).unwrap().len();
    let path = w.path("big.log");
    let first = w.run();
    assert_eq!(
        value(&first, "logwatch_read_bytes", &[("file", &path)]),
        Some(0.0)
    );
    assert_eq!(
        value(&first, "logwatch_file_bytes", &[("file", &path)]),
        Some(size as f64)
    );
    let line = "ERROR at the end\n";
    w.append("big.log", line);
    let report = w.run();
    assert_eq!(w.new_matches(&report, "big.log"), 1.0);
    assert_eq!(
        value(&report, "logwatch_read_bytes", &[("file", &path)]),
        Some(line.len() as f64)
    );
    // Reading 1 GB in wasm would take billions of instructions.
    let fuel = report["cost"]["fuel"].as_f64().unwrap();
    assert!(fuel < 50_000_000.0, "fuel {fuel}");
}
