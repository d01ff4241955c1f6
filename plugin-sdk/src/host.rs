//! What a plugin reads from the host: whole files, directory listings,
//! filesystem usage and the time.
//!
//! Built for `wasm32-unknown-unknown`, a plugin is a lean collector (ABI
//! 1.1): each of these is one call into the agent (`sandglass:collector/host`)
//! and the plugin imports no WASI at all. Built for `wasm32-wasip2` (or
//! natively, for tests) the same functions use the standard library, except
//! [`fs_usage`], which only the lean world has (WASI has no `statvfs`).

use crate::error::{Error, Result};
use std::time::Duration;

/// Whether this build is a lean collector.
pub const LEAN: bool = cfg!(all(target_arch = "wasm32", target_os = "unknown"));

/// Part of a file ([`read_part`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePart {
    /// The file's size when it was opened.
    pub size: u64,
    /// What it holds from the offset asked for on.
    pub bytes: Vec<u8>,
}

/// Space and inodes of a mounted filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsUsage {
    pub size_bytes: u64,
    pub free_bytes: u64,
    pub avail_bytes: u64,
    pub files: u64,
    pub files_free: u64,
}

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
mod imp {
    use super::*;
    use crate::bindings::sandglass::collector::host::{self, FsError};

    fn error(path: &str, e: FsError) -> Error {
        let why = match e {
            FsError::NotFound => "No such file or directory".to_owned(),
            FsError::Denied(rule) => format!("Permission denied ({rule})"),
            FsError::Unsupported => "not a regular file, directory or mount point".to_owned(),
            FsError::TooLarge(max) => format!("larger than the {max} bytes the host reads"),
            FsError::Io(text) => text,
        };
        Error::new(format!("{path}: {why}"))
    }

    pub fn read_if_exists(path: &str) -> Result<Option<Vec<u8>>> {
        found(path, host::read_file(path))
    }

    pub fn read_part(path: &str, offset: u64, max: u64) -> Result<Option<FilePart>> {
        let part = found(path, host::read_file_part(path, offset, max))?;
        Ok(part.map(|p| FilePart {
            size: p.size,
            bytes: p.bytes,
        }))
    }

    /// `None` for a path that does not exist, the error naming it otherwise.
    fn found<T>(path: &str, result: std::result::Result<T, FsError>) -> Result<Option<T>> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(FsError::NotFound) => Ok(None),
            Err(e) => Err(error(path, e)),
        }
    }

    pub fn list_dir(path: &str) -> Result<Vec<String>> {
        host::list_dir(path).map_err(|e| error(path, e))
    }

    pub fn fs_usage(mount_point: &str) -> Result<FsUsage> {
        let u = host::fs_usage(mount_point).map_err(|e| error(mount_point, e))?;
        Ok(FsUsage {
            size_bytes: u.size_bytes,
            free_bytes: u.free_bytes,
            avail_bytes: u.avail_bytes,
            files: u.files,
            files_free: u.files_free,
        })
    }

    pub fn now() -> Duration {
        let t = host::now();
        Duration::new(t.seconds, t.nanoseconds)
    }
}

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
mod imp {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};

    fn error(path: &str, e: std::io::Error) -> Error {
        Error::new(format!("{path}: {e}"))
    }

    /// `None` for a path that does not exist, the error naming it otherwise.
    fn found<T>(path: &str, result: std::io::Result<T>) -> Result<Option<T>> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(error(path, e)),
        }
    }

    pub fn read_if_exists(path: &str) -> Result<Option<Vec<u8>>> {
        // `/proc` files report size 0, so asking the size first only costs a
        // call through the sandbox (a `stat`, then a `statx` on the host).
        // `fs::read` asks it; `Read::take` does not.
        let mut buf = Vec::with_capacity(8192);
        let read = std::fs::File::open(path).and_then(|f| f.take(u64::MAX).read_to_end(&mut buf));
        Ok(found(path, read)?.map(|_| buf))
    }

    pub fn read_part(path: &str, offset: u64, max: u64) -> Result<Option<FilePart>> {
        let part = std::fs::File::open(path).and_then(|mut file| {
            let size = file.metadata()?.len();
            let mut bytes = Vec::new();
            file.seek(SeekFrom::Start(offset))?;
            file.take(max).read_to_end(&mut bytes)?;
            Ok(FilePart { size, bytes })
        });
        found(path, part)
    }

    pub fn list_dir(path: &str) -> Result<Vec<String>> {
        std::fs::read_dir(path)
            .and_then(|entries| {
                entries
                    .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .map_err(|e| error(path, e))
    }

    pub fn fs_usage(mount_point: &str) -> Result<FsUsage> {
        Err(Error::new(format!(
            "{mount_point}: filesystem usage needs the lean world: build the plugin for wasm32-unknown-unknown"
        )))
    }

    pub fn now() -> Duration {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A whole file (`/proc/...`, `/sys/...` with grant `sys`, granted
/// directories), in one call.
pub fn read(path: &str) -> Result<Vec<u8>> {
    read_if_exists(path)?.ok_or_else(|| Error::new(format!("{path}: No such file or directory")))
}

/// [`read`], with `None` for a file that does not exist (e.g.
/// `/proc/net/ip_vs` without the kernel module).
pub fn read_if_exists(path: &str) -> Result<Option<Vec<u8>>> {
    imp::read_if_exists(path)
}

/// At most `max` bytes of the regular file at `path` from `offset` on, and
/// its size; `None` if it does not exist. For files that grow, such as logs:
/// each run reads on from where the last one stopped.
pub fn read_part(path: &str, offset: u64, max: u64) -> Result<Option<FilePart>> {
    imp::read_part(path, offset, max)
}

/// The names in a directory (not `.` and `..`), e.g. the pids in `/proc`.
pub fn list_dir(path: &str) -> Result<Vec<String>> {
    imp::list_dir(path)
}

/// `statvfs` of a mount point listed in `/proc/self/mountinfo` (lean
/// collectors only).
pub fn fs_usage(mount_point: &str) -> Result<FsUsage> {
    imp::fs_usage(mount_point)
}

/// Wall-clock time since the Unix epoch. (`std::time::SystemTime::now`
/// panics in a lean collector: use this.)
pub fn now() -> Duration {
    imp::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_lists_name_the_path_on_failure() {
        assert!(read("/proc/self/status").unwrap().starts_with(b"Name:"));
        let err = read("/proc/no-such-file").unwrap_err().to_string();
        assert!(err.starts_with("/proc/no-such-file: "), "{err}");
        assert!(
            list_dir("/proc/self")
                .unwrap()
                .iter()
                .any(|n| n == "status")
        );
        assert_eq!(read_if_exists("/proc/no-such-file").unwrap(), None);
        let part = read_part("/proc/self/status", 5, 3).unwrap().unwrap();
        assert_eq!(part.bytes, read("/proc/self/status").unwrap()[5..8]);
        assert_eq!(read_part("/proc/no-such-file", 0, 1).unwrap(), None);
        assert!(now() > Duration::from_secs(1_700_000_000));
        let err = fs_usage("/").unwrap_err().to_string();
        assert!(err.contains("wasm32-unknown-unknown"), "{err}");
    }
}
