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
