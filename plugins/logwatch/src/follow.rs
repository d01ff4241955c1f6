//! Following one log file across runs: read only what was appended since the
//! last run, notice rotation and truncation, never start over from the top
//! of a file already read.

use crate::state::FileState;
use sandglass_plugin_sdk::{Error, host};

/// Bytes at the start of a file that identify it (its first lines).
pub const HEAD: u64 = 256;

/// Read block size: one host call each.
const BLOCK: u64 = 64 << 10;

/// What one run did with one file.
#[derive(Debug, Default, PartialEq)]
pub struct Followed {
    /// The file's size now.
    pub size: u64,
    /// Bytes read this run (including the rest of a rotated file).
    pub read: u64,
    /// The file was replaced (rotated) or truncated since the last run.
    pub restarted: bool,
}

/// Why a file could not be followed.
#[derive(Debug)]
pub enum Unreadable {
    /// It does not exist, or lies outside what the plugin may see.
    Missing,
    /// Any other failure; the error names the file.
    Failed(Error),
}

/// Read the lines appended to `path` since `state` was saved and hand each
/// complete line to `on_line` with its byte offset; advance `state`.
///
/// - `state` `None` (first run): start at the end, or at the top when
///   `from_start`; nothing before is counted.
/// - Rotated (`path` now starts with other bytes): the unread rest of the
///   old file is read from `<path>.1` when that is the old file, then the new
///   file from its start.
/// - Truncated (shorter than what was read): read again from its start.
/// - At most `max_read` bytes of each file per run; the rest waits for the
///   next run, so a huge backlog costs bounded time per run.
///
/// Each read is one host call ([`host::read_part`]) that opens the file
/// anew: a file replaced between two of them is noticed at the next run.
pub fn follow(
    path: &str,
    state: Option<FileState>,
    from_start: bool,
    max_read: u64,
    on_line: &mut dyn FnMut(u64, &[u8]),
) -> Result<(FileState, Followed), Unreadable> {
    let head = part(path, 0, HEAD)?;
    let size = head.size;
    let mut followed = Followed {
        size,
        ..Default::default()
    };
    let (mut state, seen_before) = match state {
        Some(state) => (state, true),
        None => (
            FileState {
                offset: if from_start { 0 } else { size },
                ..Default::default()
            },
            false,
        ),
    };
    if seen_before {
        // An empty file had no head to recognise it by.
        let same_file = state.head_len == 0
            || (size >= state.head_len
                && hash(&head.bytes, state.head_len) == Some(state.head_hash));
        if !same_file {
            followed.read += drain_rotated(path, &state, max_read, on_line)?;
            followed.restarted = true;
        } else if size < state.offset {
            followed.restarted = true;
        }
        if followed.restarted {
            state.rotations += 1;
            state.offset = 0;
            state.head_len = 0;
        }
    }
    let consumed = read_lines(path, state.offset, max_read, on_line)?;
    state.offset += consumed;
    followed.read += consumed;
    let known = HEAD.min(head.bytes.len() as u64);
    if state.head_len < known {
        // The file grew past the part that identified it: identify it by more.
        state.head_len = known;
        state.head_hash = hash(&head.bytes, known).unwrap_or_default();
    }
    Ok((state, followed))
}

/// At most `max` bytes of `path` from `offset` on, and its size.
fn part(path: &str, offset: u64, max: u64) -> Result<host::FilePart, Unreadable> {
    host::read_part(path, offset, max)
        .map_err(Unreadable::Failed)?
        .ok_or(Unreadable::Missing)
}

/// The unread rest of the previous file, if `<path>.1` is it.
fn drain_rotated(
    path: &str,
    state: &FileState,
    max_read: u64,
    on_line: &mut dyn FnMut(u64, &[u8]),
) -> Result<u64, Unreadable> {
    let old_path = format!("{path}.1");
    let Ok(old) = part(&old_path, 0, HEAD) else {
        return Ok(0);
    };
    if old.size < state.offset.max(state.head_len)
        || hash(&old.bytes, state.head_len) != Some(state.head_hash)
    {
        return Ok(0);
    }
    read_lines(&old_path, state.offset, max_read, on_line)
}

/// FNV-1a of the first `len` bytes, if there are that many.
fn hash(bytes: &[u8], len: u64) -> Option<u64> {
    let head = bytes.get(..usize::try_from(len).ok()?)?;
    Some(head.iter().fold(0xcbf29ce484222325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x100000001b3)
    }))
}

/// Hand every complete line of `path` from `from` on to `on_line`, reading
/// at most `max_read` bytes; the bytes consumed (up to the last newline). A
/// partial last line waits for the next run, unless one line fills all of
/// `max_read`.
fn read_lines(
    path: &str,
    from: u64,
    max_read: u64,
    on_line: &mut dyn FnMut(u64, &[u8]),
) -> Result<u64, Unreadable> {
    let mut pending: Vec<u8> = Vec::new();
    let mut consumed = 0u64;
    let mut left = max_read;
    let mut at = from;
    while left > 0 {
        let block = part(path, at, BLOCK.min(left))?.bytes;
        if block.is_empty() {
            break;
        }
        let n = block.len() as u64;
        left = left.saturating_sub(n);
        at += n;
        pending.extend_from_slice(&block);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            on_line(from + consumed, &pending[start..start + end]);
            consumed += end as u64 + 1;
            start += end + 1;
        }
        pending.drain(..start);
    }
    if left == 0 && consumed == 0 && !pending.is_empty() {
        // One line longer than a whole run's budget: take it as it is.
        on_line(from, &pending);
        consumed = pending.len() as u64;
    }
    Ok(consumed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &std::path::Path, text: &str) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    /// Follow once; the lines read and the new state.
    fn run(
        path: &std::path::Path,
        state: Option<FileState>,
        max: u64,
    ) -> (Vec<String>, FileState, Followed) {
        let mut lines = Vec::new();
        let (state, followed) = follow(path.to_str().unwrap(), state, false, max, &mut |_, l| {
            lines.push(String::from_utf8_lossy(l).into_owned())
        })
        .unwrap();
        (lines, state, followed)
    }

    #[test]
    fn first_run_starts_at_the_end_then_reads_only_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        append(&log, "old 1\nold 2\n");
        let (lines, state, _) = run(&log, None, u64::MAX);
        assert!(lines.is_empty());
        assert_eq!(state.offset, 12);
        append(&log, "new 1\nnew 2\npartial");
        let (lines, state, followed) = run(&log, Some(state), u64::MAX);
        assert_eq!(lines, ["new 1", "new 2"]);
        assert_eq!((state.offset, followed.read), (24, 12));
        append(&log, " line\n");
        let (lines, _, _) = run(&log, Some(state), u64::MAX);
        assert_eq!(lines, ["partial line"]);
    }

    #[test]
    fn rotation_reads_the_rest_of_the_old_file_then_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        append(&log, "first file line 1\n");
        let (_, state, _) = run(&log, None, u64::MAX);
        append(&log, "written before the rotation\n");
        std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
        append(&log, "second file line 1\n");
        let (lines, state, followed) = run(&log, Some(state), u64::MAX);
        assert_eq!(lines, ["written before the rotation", "second file line 1"]);
        assert!(followed.restarted);
        assert_eq!((state.rotations, state.offset), (1, 19));
    }

    #[test]
    fn truncation_reads_from_the_start_again() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        append(&log, "a long first line that will be gone\n");
        let (_, state, _) = run(&log, None, u64::MAX);
        std::fs::write(&log, "").unwrap();
        append(&log, "after\n");
        let (lines, state, followed) = run(&log, Some(state), u64::MAX);
        assert_eq!(lines, ["after"]);
        assert!(followed.restarted);
        assert_eq!(state.rotations, 1);
    }

    #[test]
    fn a_backlog_is_read_in_bounded_steps() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        append(&log, "");
        let (_, mut state, _) = run(&log, None, u64::MAX);
        append(&log, &"0123456789\n".repeat(10));
        let mut all = Vec::new();
        // 32 bytes hold two whole 11-byte lines: five runs for ten lines.
        for _ in 0..5 {
            let (lines, next, followed) = run(&log, Some(state), 32);
            assert!(followed.read <= 32);
            all.extend(lines);
            state = next;
        }
        assert_eq!(all.len(), 10);
        assert_eq!(state.offset, 110);
    }
}
