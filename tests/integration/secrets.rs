//! The `/proc` view keeps secrets: the agent's own process, every process's
//! environment and memory, kernel memory, and links out of `/proc`.

use crate::common::{fixture, plugin_run, status};
use std::process::{Child, Command};

/// A child process holding a secret in its environment, killed on drop.
struct SecretHolder(Child);

impl SecretHolder {
    fn start() -> Self {
        let child = Command::new("sleep")
            .arg("60")
            .env("SANDGLASS_TEST_SECRET", "hunter2")
            .spawn()
            .expect("spawn sleep");
        SecretHolder(child)
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for SecretHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read(path: &str) -> (String, String) {
    let (report, _) = plugin_run(
        &fixture("misbehave"),
        &["--param", "mode=read", "--param", &format!("path={path}")],
    );
    status(&report)
}

fn assert_blocked(path: &str) {
    let (level, text) = read(path);
    assert_eq!(level, "UNKNOWN", "{path} was readable: {text}");
    assert!(text.contains("blocked:"), "{path}: {text}");
    assert!(!text.contains("hunter2"), "{path}: {text}");
}

#[test]
fn agent_own_process_is_hidden() {
    for path in [
        "/proc/self/environ",
        "/proc/self/mem",
        "/proc/self/cmdline",
        "/proc/self/stat",
        "/proc/self/maps",
        "/proc/thread-self/environ",
        "/proc/self/task/",
        "/proc/net/../environ",
        "/proc/self/map_files/",
        "/proc/self/fd/",
    ] {
        assert_blocked(path);
    }
}

#[test]
fn other_processes_keep_environment_memory_and_links() {
    let holder = SecretHolder::start();
    let pid = holder.pid();
    // Control: the process itself is visible, so a denial below is the policy.
    let (level, text) = read(&format!("/proc/{pid}/stat"));
    assert_eq!(level, "OK", "{text}");
    for entry in [
        "environ",
        "mem",
        "task/{pid}/environ",
        "root/etc/hostname",
        "cwd/",
        "exe",
        "fd/",
        "fd/0",
        "map_files/",
    ] {
        assert_blocked(&format!(
            "/proc/{pid}/{}",
            entry.replace("{pid}", &pid.to_string())
        ));
    }
}

#[test]
fn kernel_memory_and_outside_files_are_unreachable() {
    for path in [
        "/proc/kcore",
        "/proc/kmsg",
        "/proc/1/environ",
        "/proc/1/mem",
        "/etc/hostname",
        "/proc/../etc/hostname",
    ] {
        assert_blocked(path);
    }
}

#[test]
fn the_network_table_stays_readable_through_proc_self() {
    let (level, text) = read("/proc/net/dev");
    assert_eq!(level, "OK", "{text}");
}

#[test]
fn sys_is_visible_only_when_granted() {
    let path = "/sys/kernel/uevent_seqnum";
    assert!(std::path::Path::new(path).exists());
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--param",
            "mode=read",
            "--param",
            "path=/sys/kernel/uevent_seqnum",
        ];
        args.extend_from_slice(extra);
        status(&plugin_run(&fixture("misbehave"), &args).0)
    };
    let (level, text) = run(&[]);
    assert!(level == "UNKNOWN" && text.contains("blocked:"), "{text}");
    let (level, text) = run(&["--grant", "sys"]);
    assert_eq!(level, "OK", "{text}");
}
