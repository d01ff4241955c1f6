//! What a plugin may see: the directories, read-only, and the policy that
//! judges every open under them. Built once per service, shared by its runs.
//!
//! The WASI sandbox preopens the directories by path for each run
//! (wasmtime-wasi 48 cannot take an open directory). The lean sandbox opens
//! files relative to directory handles opened once: `/proc` and `/sys` once
//! per process, a granted directory once per view.

use super::fs_policy::FsPolicy;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The directories a plugin sees and the policy over them.
#[derive(Debug)]
pub struct View {
    /// (host directory, path the guest sees it at)
    pub(crate) dirs: Vec<(PathBuf, String)>,
    pub(crate) policy: FsPolicy,
    /// The same directories, open, for the lean sandbox.
    pub(crate) roots: Vec<Root>,
}

/// A directory open for path resolution (`O_PATH`): files are opened
/// beneath it.
#[derive(Debug, Clone)]
pub struct Root {
    /// Where it is (the guest sees it at the same absolute path).
    pub path: PathBuf,
    pub fd: Arc<OwnedFd>,
}

impl View {
    /// `/proc` always; `/sys` when `sys` is granted; each of `files` (granted
    /// directories) at its own absolute path.
    pub fn new(sys: bool, files: &[PathBuf]) -> std::io::Result<View> {
        let mut roots = vec![shared_root(&PROC, "/proc")?];
        if sys {
            roots.push(shared_root(&SYS, "/sys")?);
        }
        for dir in files {
            roots.push(open_root(&std::fs::canonicalize(dir)?)?);
        }
        let dirs = roots
            .iter()
            .map(|root| (root.path.clone(), root.path.to_string_lossy().into_owned()))
            .collect();
        let paths = roots.iter().map(|root| root.path.clone()).collect();
        let policy = FsPolicy::new(paths, "/proc".into(), "/sys".into(), std::process::id());
        Ok(View {
            dirs,
            policy,
            roots,
        })
    }

    /// The root `path` lies under, and the rest of it relative to that root
    /// (`.` for the root itself). `None` for a relative path or one outside
    /// every root.
    pub(crate) fn locate<'p>(&self, path: &'p str) -> Option<(&Root, &'p str)> {
        if !path.starts_with('/') {
            return None;
        }
        self.roots.iter().find_map(|root| {
            let root_str = root.path.to_str()?;
            let rest = path.strip_prefix(root_str)?;
            if rest.is_empty() || rest == "/" {
                return Some((root, "."));
            }
            rest.strip_prefix('/').map(|rest| (root, rest))
        })
    }
}

static PROC: OnceLock<Root> = OnceLock::new();
static SYS: OnceLock<Root> = OnceLock::new();

/// `/proc` or `/sys`, opened once for the whole process.
fn shared_root(cell: &'static OnceLock<Root>, path: &str) -> std::io::Result<Root> {
    if let Some(root) = cell.get() {
        return Ok(root.clone());
    }
    let root = open_root(Path::new(path))?;
    Ok(cell.get_or_init(|| root).clone())
}

/// Open `path` as a directory handle for resolution only.
fn open_root(path: &Path) -> std::io::Result<Root> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated path; the descriptor is owned on success.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Root {
        path: path.to_owned(),
        // SAFETY: `fd` was just opened and is owned by nothing else.
        fd: Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_located_under_their_root_by_whole_components() {
        let dir = tempfile::tempdir().unwrap();
        let view = View::new(true, &[dir.path().to_owned()]).unwrap();
        let located = |p: &str| {
            view.locate(p)
                .map(|(root, rest)| (root.path.clone(), rest.to_owned()))
        };
        assert_eq!(
            located("/proc/loadavg"),
            Some(("/proc".into(), "loadavg".into()))
        );
        assert_eq!(located("/proc"), Some(("/proc".into(), ".".into())));
        assert_eq!(located("/proc/"), Some(("/proc".into(), ".".into())));
        assert_eq!(located("/sys/block"), Some(("/sys".into(), "block".into())));
        assert_eq!(located("/procx/stat"), None);
        assert_eq!(located("proc/stat"), None);
        assert_eq!(located("/etc/shadow"), None);
        let real = std::fs::canonicalize(dir.path()).unwrap();
        let inside = format!("{}/a.log", real.display());
        assert_eq!(located(&inside), Some((real, "a.log".into())));
        let without_sys = View::new(false, &[]).unwrap();
        assert!(without_sys.locate("/sys/block").is_none());
    }
}
