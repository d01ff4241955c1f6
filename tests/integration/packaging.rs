//! `packaging/install.sh` into a staging root: binaries on PATH, configs
//! with mode 600 and the installed layout's paths, systemd units that
//! `systemd-analyze verify` accepts without a warning; and an upgrade keeps
//! the operator's configuration.

use crate::common::{build_plugins, root};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn install(destdir: &Path) -> String {
    build_plugins();
    let output = Command::new("bash")
        .arg(root().join("packaging/install.sh"))
        .arg("all")
        .env("DESTDIR", destdir)
        .env("PREFIX", "/usr/local")
        .output()
        .expect("run install.sh");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn install_stages_binaries_configs_and_units_that_systemd_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let staged = dir.path();
    install(staged);
    for bin in ["agent", "receiver"] {
        assert_eq!(mode(&staged.join("usr/local/bin").join(bin)), 0o755);
    }
    assert!(
        staged
            .join("usr/local/lib/sandglass/plugins/cpu.wasm")
            .is_file()
    );
    let agent_toml = staged.join("etc/sandglass/agent.toml");
    let receiver_toml = staged.join("etc/sandglass/receiver.toml");
    assert_eq!(mode(&agent_toml), 0o600);
    assert_eq!(mode(&receiver_toml), 0o600);
    let agent = std::fs::read_to_string(&agent_toml).unwrap();
    assert!(
        agent.contains("plugin_dir = \"/usr/local/lib/sandglass/plugins\""),
        "{agent}"
    );
    assert!(
        agent.contains("state_dir = \"/var/lib/sandglass/agent\""),
        "{agent}"
    );
    assert!(
        !agent.contains("host_id ="),
        "the hostname is the default host id"
    );
    let receiver = std::fs::read_to_string(&receiver_toml).unwrap();
    assert!(
        receiver.contains("database = \"/var/lib/sandglass/receiver/sandglass.db\""),
        "{receiver}"
    );

    // systemd-analyze checks an ExecStart binary on the real root: point the
    // staged units at the staged binaries, as PREFIX would have.
    let mut units = Vec::new();
    for part in ["agent", "receiver"] {
        let unit = staged.join(format!("etc/systemd/system/sandglass-{part}.service"));
        let text = std::fs::read_to_string(&unit).unwrap();
        assert!(
            text.contains(&format!("ExecStart=/usr/local/bin/{part} run")),
            "{text}"
        );
        let local = staged.join(format!("sandglass-{part}.service"));
        let prefix = staged.join("usr/local");
        std::fs::write(&local, text.replace("/usr/local", prefix.to_str().unwrap())).unwrap();
        units.push(local);
    }
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze (scripts/setup.sh installs systemd)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "{stderr}"
    );

    // An upgrade replaces binaries and units and keeps the configuration.
    std::fs::write(&agent_toml, "# edited by the operator\n").unwrap();
    let said = install(staged);
    assert!(said.contains("kept"), "{said}");
    assert_eq!(
        std::fs::read_to_string(&agent_toml).unwrap(),
        "# edited by the operator\n"
    );
}
