//! `agent check --config FILE`: everything `agent run` would trip over at
//! start, found before it starts — the file itself (strict TOML, every key
//! known), the receiver and token `run` needs, the TLS files, the plugin
//! directory and the plugins local services name, and whether the state
//! directory can be written. Every problem is listed, not only the first.

use crate::config::Agent;
use std::path::Path;

/// What a check found: problems stop `agent run`; warnings do not. (A
/// token file others can read is warned about by loading it, as `run` does.)
#[derive(Debug, Default)]
pub struct Checked {
    pub summary: Vec<String>,
    pub warnings: Vec<String>,
    pub problems: Vec<String>,
}

/// Check the configuration at `path`. A file that does not parse is the one
/// problem reported (nothing else can be judged without it).
pub fn check(path: &Path) -> Checked {
    let mut checked = Checked::default();
    let agent = match Agent::load(path) {
        Ok(agent) => agent,
        Err(e) => {
            checked.problems.push(format!("{e:#}"));
            return checked;
        }
    };
    checked.summary.push(format!(
        "host_id {}, receivers [{}], {} local services",
        agent.host_id,
        agent.receivers.join(", "),
        agent.services.len()
    ));
    if let Err(e) = crate::daemon::link_config(&agent, path) {
        checked.problems.push(format!("{e:#}"));
    }
    plugins(&agent, &mut checked);
    state_dir(&agent.state_dir, &mut checked);
    checked
}

fn plugins(agent: &Agent, checked: &mut Checked) {
    let found = std::fs::read_dir(&agent.plugin_dir).map(|entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
            .count()
    });
    match found {
        Ok(count) => checked.summary.push(format!(
            "{count} plugins in plugin_dir {}",
            agent.plugin_dir.display()
        )),
        Err(e) => checked.problems.push(format!(
            "plugin_dir {} cannot be read ({e}): create it and put the plugins there",
            agent.plugin_dir.display()
        )),
    }
    for s in &agent.services {
        if !s.plugin_path.is_file() {
            checked.problems.push(format!(
                "[services.{}]: plugin {} does not exist (`agent plugin check FILE` checks a plugin)",
                s.name,
                s.plugin_path.display()
            ));
        }
        if let Some(refused) = &s.refused {
            checked
                .warnings
                .push(format!("[services.{}]: will not run: {refused}", s.name));
        }
    }
}

/// The state directory, or the nearest directory above it that exists (the
/// agent creates what is missing), must be writable by this user.
fn state_dir(dir: &Path, checked: &mut Checked) {
    let existing = dir.ancestors().find(|d| d.exists());
    let writable = existing.is_some_and(|d| {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c_path) = std::ffi::CString::new(d.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: a valid NUL-terminated path; access(2) only reads it.
        unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
    });
    if !writable {
        checked.problems.push(format!(
            "state_dir {} cannot be written by this user{}: run the agent as the user that owns it",
            dir.display(),
            existing.map_or(String::new(), |d| format!(
                " ({} is not writable)",
                d.display()
            ))
        ));
    }
}
