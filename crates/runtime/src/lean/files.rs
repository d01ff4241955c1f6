//! `read-file`, `read-file-part` and `list-dir`: one host call each, opened beneath the view's
//! directory handles (`openat2` with `RESOLVE_BENEATH` and
//! `RESOLVE_NO_MAGICLINKS`, non-blocking) and judged by the same policy as a
//! WASI plugin's opens ([`crate::fs_policy`]): the path as the kernel will
//! walk it and the type of what is there before the open, the path the
//! kernel resolved after it.

use crate::abi::lean_host::{FilePart, FsError};
use crate::fs_policy::{Denied, check_fd, not_special};
use crate::view::View;
use std::ffi::CString;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The most a `read-file` or `list-dir` hands back, whatever the memory cap.
pub const READ_MAX: u64 = 16 << 20;

/// Why a call failed: a refusal to account for, or an error to hand back.
pub enum Refused {
    Policy(Denied),
    Error(FsError),
}

impl From<FsError> for Refused {
    fn from(error: FsError) -> Self {
        Refused::Error(error)
    }
}

/// The whole regular file at `path`, if it is at most `max` bytes.
pub fn read_file(view: &View, path: &str, max: u64) -> Result<Vec<u8>, Refused> {
    let fd = open_checked(view, path, 0)?;
    if regular_file_size(&fd)?.is_none() {
        return Err(FsError::Unsupported.into());
    }
    let mut data = Vec::with_capacity(8192);
    // `/proc` files report size 0: read until the end, one byte past `max`
    // to tell a file of exactly `max` bytes from a longer one.
    std::fs::File::from(fd)
        .take(max + 1)
        .read_to_end(&mut data)
        .map_err(io_error)?;
    if data.len() as u64 > max {
        return Err(FsError::TooLarge(max).into());
    }
    Ok(data)
}

/// At most `want` bytes (and at most `max`) of the regular file at `path`
/// from `offset` on, and its size.
pub fn read_file_part(
    view: &View,
    path: &str,
    offset: u64,
    want: u64,
    max: u64,
) -> Result<FilePart, Refused> {
    let fd = open_checked(view, path, 0)?;
    let size = regular_file_size(&fd)?.ok_or(FsError::Unsupported)?;
    let mut file = std::fs::File::from(fd);
    file.seek(SeekFrom::Start(offset)).map_err(io_error)?;
    let mut bytes = Vec::new();
    file.take(want.min(max))
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    Ok(FilePart { size, bytes })
}

/// The names in the directory at `path` (not `.` and `..`), at most `max`
/// bytes of them.
pub fn list_dir(view: &View, path: &str, max: u64) -> Result<Vec<String>, Refused> {
    let fd = open_checked(view, path, libc::O_DIRECTORY)?;
    // SAFETY: `fd` is an open directory; `fdopendir` takes it over and
    // `closedir` closes it, on every path out of the loop.
    let dir = unsafe { libc::fdopendir(fd.as_raw_fd()) };
    if dir.is_null() {
        return Err(io_error(std::io::Error::last_os_error()).into());
    }
    std::mem::forget(fd);
    let mut names = Vec::new();
    let mut bytes = 0u64;
    let listed = loop {
        // SAFETY: `dir` is open; the entry is valid until the next readdir.
        let entry = unsafe { libc::readdir64(dir) };
        if entry.is_null() {
            break Ok(names);
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
        let name = name.to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        bytes += name.len() as u64 + 8;
        if bytes > max {
            break Err(FsError::TooLarge(max).into());
        }
        names.push(String::from_utf8_lossy(name).into_owned());
    };
    // SAFETY: `dir` came from fdopendir and is closed once.
    unsafe { libc::closedir(dir) };
    listed
}

/// Open `path` read-only beneath its root, after and before the policy's
/// checks. `flags` adds to `O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC`.
fn open_checked(view: &View, path: &str, flags: i32) -> Result<OwnedFd, Refused> {
    let Some((root, rest)) = view.locate(path) else {
        // Outside every root: the policy names the rule.
        return Err(match view.policy.check(std::path::Path::new(path)) {
            Err(denied) => Refused::Policy(denied),
            Ok(()) => FsError::NotFound.into(),
        });
    };
    let before = view
        .policy
        .proc_path(&root.path, rest, true)
        .map_or(Ok(()), |walked| view.policy.check(&walked))
        .and_then(|()| not_special(root.fd.as_raw_fd(), rest, true));
    before.map_err(Refused::Policy)?;
    let fd = open_beneath(root.fd.as_raw_fd(), rest, flags)?;
    check_fd(&view.policy, fd.as_raw_fd()).map_err(Refused::Policy)?;
    Ok(fd)
}

/// `openat2` beneath `dir`: no absolute paths, no `..` above it, no magic
/// links (`/proc/*/fd/*`, `cwd`, `root`, `exe`); non-blocking, so that a
/// FIFO which appears between the check and the open does not hang the run.
fn open_beneath(dir: i32, rest: &str, flags: i32) -> Result<OwnedFd, FsError> {
    let c_rest = CString::new(rest).map_err(|_| FsError::NotFound)?;
    // SAFETY: open_how is plain data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags =
        (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC | flags) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a valid directory descriptor, a NUL-terminated path and an
    // open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c_rest.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ENOENT) => FsError::NotFound,
            Some(libc::ENOTDIR) => FsError::Unsupported,
            Some(libc::EXDEV | libc::ELOOP) => {
                FsError::Denied("a path out of the directories this plugin may see".into())
            }
            _ => io_error(std::io::Error::last_os_error()),
        });
    }
    // SAFETY: a descriptor just opened, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The size of an open regular file; `None` if it is something else.
fn regular_file_size(fd: &OwnedFd) -> Result<Option<u64>, FsError> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: an open descriptor and a buffer of the right type, read only
    // when the call succeeded.
    let stat = unsafe {
        if libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) != 0 {
            return Err(io_error(std::io::Error::last_os_error()));
        }
        stat.assume_init()
    };
    Ok((stat.st_mode & libc::S_IFMT == libc::S_IFREG).then_some(stat.st_size as u64))
}

pub fn io_error(error: std::io::Error) -> FsError {
    match error.kind() {
        std::io::ErrorKind::NotFound => FsError::NotFound,
        _ => FsError::Io(error.to_string()),
    }
}
