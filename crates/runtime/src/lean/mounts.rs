//! `fs-usage`: `statvfs` of a mount point, for mount points only.
//!
//! The policy (docs/security.md): the path must be exactly the mount point
//! of a filesystem in the agent's `/proc/self/mountinfo`, which every plugin
//! may read anyway; nothing else is looked up, so the call cannot probe the
//! host's paths. It needs no grant: sizes of mounted filesystems say no more
//! than `/proc/diskstats` does. A `statvfs` of a dead network mount can
//! block: the run's deadline then abandons it like any blocked host call.

use super::files::io_error;
use crate::abi::lean_host::{FsError, Usage};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

/// The agent's mount points, shared by every run.
pub static AGENT_MOUNTS: LazyLock<MountTable> =
    LazyLock::new(|| MountTable::new("/proc/self/mountinfo"));

/// A mount table read again only when it changed. The kernel generates
/// `mountinfo` text on every read (a filesystem run read it twice: the
/// plugin, then the host for `fs-usage`); `poll` on an open `mountinfo`
/// reports `POLLPRI` once the namespace's mounts changed since the last
/// poll, which costs one system call and no text.
pub struct MountTable {
    path: PathBuf,
    cached: Mutex<Option<Cached>>,
}

struct Cached {
    file: File,
    points: Arc<Vec<String>>,
}

impl MountTable {
    pub fn new(path: impl Into<PathBuf>) -> MountTable {
        MountTable {
            path: path.into(),
            cached: Mutex::new(None),
        }
    }

    /// The mount points now.
    pub fn points(&self) -> std::io::Result<Arc<Vec<String>>> {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cached.as_mut() {
            if !changed(&c.file)? {
                return Ok(c.points.clone());
            }
            c.file.rewind()?;
            c.points = Arc::new(mount_points(&read_all(&mut c.file)?));
            return Ok(c.points.clone());
        }
        // Opened, then polled once: the poll records the namespace's
        // current event, so only changes after this read are reported.
        let mut file = File::open(&self.path)?;
        changed(&file)?;
        let points = Arc::new(mount_points(&read_all(&mut file)?));
        *cached = Some(Cached {
            file,
            points: points.clone(),
        });
        Ok(points)
    }
}

fn read_all(file: &mut File) -> std::io::Result<String> {
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// Whether the mounts changed since the last poll of `file`.
fn changed(file: &File) -> std::io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    if unsafe { libc::poll(&mut poll, 1, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(poll.revents & (libc::POLLPRI | libc::POLLERR) != 0)
}

/// The mount points in `mountinfo` text (field 5, octal escapes decoded).
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(sandglass_abi::unescape_mount_field)
        .collect()
}

/// `statvfs` of `mount_point`, which must be one of `mounts`.
pub fn usage(mounts: &[String], mount_point: &str) -> Result<Usage, FsError> {
    if !mounts.iter().any(|m| m == mount_point) {
        return Err(FsError::Unsupported);
    }
    let c_path = CString::new(mount_point).map_err(|_| FsError::Unsupported)?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a buffer of the right type, read
    // only when the call succeeded.
    let stat = unsafe {
        if libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return Err(io_error(std::io::Error::last_os_error()));
        }
        stat.assume_init()
    };
    let block = stat.f_frsize;
    Ok(Usage {
        size_bytes: stat.f_blocks.saturating_mul(block),
        free_bytes: stat.f_bfree.saturating_mul(block),
        avail_bytes: stat.f_bavail.saturating_mul(block),
        files: stat.f_files,
        files_free: stat.f_ffree,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_come_from_field_five_decoded() {
        let info = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    30 22 0:5 / /mnt/my\\040disk rw - tmpfs tmpfs rw\n";
        assert_eq!(mount_points(info), ["/", "/mnt/my disk"]);
    }

    /// In a mount namespace of its own (this thread's, private), so the
    /// mount is seen by nobody else.
    #[test]
    fn the_table_is_read_again_only_after_a_mount_or_unmount() {
        std::thread::spawn(|| {
            // SAFETY: plain system calls on this thread's own namespace;
            // the paths are NUL-terminated literals or CStrings.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    let error = std::io::Error::last_os_error();
                    // Without CAP_SYS_ADMIN (an unprivileged CI) no mount
                    // can be made; anything else is a failure.
                    assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}");
                    eprintln!("not run: unshare(CLONE_NEWNS) needs CAP_SYS_ADMIN");
                    return;
                }
                let private = libc::MS_REC | libc::MS_PRIVATE;
                assert_eq!(
                    libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        private,
                        std::ptr::null()
                    ),
                    0
                );
            }
            let dir = tempfile::tempdir().unwrap();
            let point = dir.path().to_str().unwrap().to_owned();
            let table = MountTable::new("/proc/thread-self/mountinfo");
            let before = table.points().unwrap();
            assert!(before.iter().any(|p| p == "/") && !before.contains(&point));
            assert!(
                Arc::ptr_eq(&before, &table.points().unwrap()),
                "read again without a change"
            );
            let c_point = CString::new(point.clone()).unwrap();
            // SAFETY: as above.
            let mounted = unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    c_point.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            assert_eq!(mounted, 0, "{}", std::io::Error::last_os_error());
            let after = table.points().unwrap();
            assert!(after.contains(&point), "the new mount is not seen");
            assert!(Arc::ptr_eq(&after, &table.points().unwrap()));
            // SAFETY: as above.
            assert_eq!(unsafe { libc::umount(c_point.as_ptr()) }, 0);
            assert!(
                !table.points().unwrap().contains(&point),
                "the unmount is not seen"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn only_listed_mount_points_are_looked_up() {
        let mounts = mount_points(&std::fs::read_to_string("/proc/self/mountinfo").unwrap());
        let root = usage(&mounts, "/").unwrap();
        assert!(root.size_bytes > 0 && root.avail_bytes <= root.free_bytes);
        assert!(root.free_bytes <= root.size_bytes);
        for path in ["/etc", "/etc/shadow", "relative", ""] {
            assert!(
                matches!(usage(&mounts, path), Err(FsError::Unsupported)),
                "{path}"
            );
        }
    }
}
