//! `agent plugin new NAME`: a new plugin crate from the template kept in
//! `plugin-sdk/template` (the same files work with cargo-generate).

use anyhow::Context;
use std::path::{Path, PathBuf};

/// The template's files, as written into the new crate.
const FILES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../../../plugin-sdk/template/Cargo.toml"),
    ),
    (
        "README.md",
        include_str!("../../../../plugin-sdk/template/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../../../../plugin-sdk/template/.gitignore"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../../plugin-sdk/template/src/lib.rs"),
    ),
    (
        "tests/sandbox.rs",
        include_str!("../../../../plugin-sdk/template/tests/sandbox.rs"),
    ),
    (
        "tests/fixtures/file-nr.txt",
        include_str!("../../../../plugin-sdk/template/tests/fixtures/file-nr.txt"),
    ),
];

/// Where the SDK is when none is named: beside the source tree this agent
/// was built from, or beside a `target/<profile>/agent` binary.
pub fn default_sdk() -> Option<PathBuf> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugin-sdk");
    let beside_binary = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("plugin-sdk")));
    [Some(built_from), beside_binary]
        .into_iter()
        .flatten()
        .find(|dir| is_sdk(dir))
}

fn is_sdk(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .is_ok_and(|text| text.contains("name = \"sandglass-plugin-sdk\""))
}

/// Check a plugin name: it becomes the crate, the file and the plugin name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    anyhow::ensure!(
        ok,
        "plugin name {name:?}: use lower-case letters, digits and '-', starting with a letter (e.g. my-plugin)"
    );
    Ok(())
}

/// Write the plugin crate `name` into `parent/name`, depending on the SDK at
/// `sdk`; its tests run `agent` (this binary). The crate's directory.
pub fn create(name: &str, parent: &Path, sdk: &Path, agent: &Path) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    anyhow::ensure!(
        is_sdk(sdk),
        "no plugin-sdk at {}: pass --sdk DIR, the plugin-sdk directory of a Sandglass source tree",
        sdk.display()
    );
    let sdk = std::fs::canonicalize(sdk)?;
    let dir = parent.join(name);
    anyhow::ensure!(
        !dir.exists(),
        "{} already exists: pick another name or --dir",
        dir.display()
    );
    let crate_name = name.replace('-', "_");
    let fill = |text: &str| {
        text.replace("{{project-name}}", name)
            .replace("{{crate_name}}", &crate_name)
            .replace("{{sdk_path}}", &sdk.to_string_lossy())
    };
    let mut files: Vec<(String, String)> = FILES
        .iter()
        .map(|(path, text)| (path.to_string(), fill(text)))
        .collect();
    files.push((
        ".cargo/config.toml".into(),
        format!(
            "# Written by `agent plugin new`: the agent the sandbox test runs.\n[env]\nSANDGLASS_AGENT = {:?}\n",
            agent.to_string_lossy()
        ),
    ));
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in the crate"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["x", "my-plugin", "disk2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "My", "2x", "a_b", "a-", "a b", "../x"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_placeholder_is_filled_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let sdk = default_sdk().expect("the SDK beside the source tree");
        let made = create("demo-x", dir.path(), &sdk, Path::new("/bin/agent")).unwrap();
        for (path, _) in FILES {
            let text = std::fs::read_to_string(made.join(path)).unwrap();
            assert!(!text.contains("{{"), "{path} still has a placeholder");
        }
        let cargo = std::fs::read_to_string(made.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"demo-x\""));
        let config = std::fs::read_to_string(made.join(".cargo/config.toml")).unwrap();
        assert!(config.contains("SANDGLASS_AGENT = \"/bin/agent\""));
        let err = create("demo-x", dir.path(), &sdk, Path::new("agent")).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        let err = create("demo-y", dir.path(), dir.path(), Path::new("agent")).unwrap_err();
        assert!(err.to_string().contains("pass --sdk DIR"), "{err}");
    }
}
