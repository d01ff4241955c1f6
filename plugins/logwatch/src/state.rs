//! What the collector remembers per file between runs, as a small text blob:
//!
//! ```text
//! logwatch1
//! file <offset> <head length> <head hash> <rotations> <path>
//! count <total> <pattern> <path>
//! ```
//!
//! Paths come last on their line, so spaces in them need no escaping; pattern
//! names are single words (they come from parameter keys `match.<name>`).

use std::collections::BTreeMap;

const MAGIC: &str = "logwatch1";

/// Where reading stopped in one file, and how to recognise that file again.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileState {
    /// Bytes of the file already read (always at a line boundary).
    pub offset: u64,
    /// The first `head_len` bytes hash to `head_hash`: the file's identity
    /// (WASI gives no inode numbers). A rotated file starts with other lines.
    pub head_len: u64,
    pub head_hash: u64,
    pub rotations: u64,
    /// Matches per pattern name since the collector first saw the file.
    pub totals: BTreeMap<String, u64>,
}

/// Per file path.
pub type State = BTreeMap<String, FileState>;

pub fn encode(state: &State) -> Vec<u8> {
    let mut out = format!("{MAGIC}\n");
    for (path, file) in state {
        out.push_str(&format!(
            "file {} {} {:016x} {} {path}\n",
            file.offset, file.head_len, file.head_hash, file.rotations
        ));
        for (pattern, total) in &file.totals {
            out.push_str(&format!("count {total} {pattern} {path}\n"));
        }
    }
    out.into_bytes()
}

/// Decode [`encode`]'s output; anything else is no state (a first run).
pub fn decode(bytes: &[u8]) -> Option<State> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let mut state = State::new();
    for line in lines {
        let (kind, rest) = line.split_once(' ')?;
        match kind {
            "file" => {
                let mut parts = rest.splitn(5, ' ');
                let offset = parts.next()?.parse().ok()?;
                let head_len = parts.next()?.parse().ok()?;
                let head_hash = u64::from_str_radix(parts.next()?, 16).ok()?;
                let rotations = parts.next()?.parse().ok()?;
                let path = parts.next()?.to_owned();
                state.insert(
                    path,
                    FileState {
                        offset,
                        head_len,
                        head_hash,
                        rotations,
                        totals: BTreeMap::new(),
                    },
                );
            }
            "count" => {
                let mut parts = rest.splitn(3, ' ');
                let total = parts.next()?.parse().ok()?;
                let pattern = parts.next()?.to_owned();
                let path = parts.next()?;
                state.get_mut(path)?.totals.insert(pattern, total);
            }
            _ => return None,
        }
    }
    Some(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_spaces_in_paths() {
        let mut state = State::new();
        let mut file = FileState {
            offset: 1 << 40,
            head_len: 256,
            head_hash: u64::MAX,
            rotations: 3,
            ..Default::default()
        };
        file.totals.insert("error".into(), 17);
        file.totals.insert("oom".into(), 0);
        state.insert("/var/log/my app/x.log".into(), file);
        state.insert("/var/log/b.log".into(), FileState::default());
        assert_eq!(decode(&encode(&state)), Some(state));
        assert_eq!(decode(b"something else"), None);
        assert_eq!(decode(b"logwatch1\nfile 1 2 zz 0 /x\n"), None);
    }
}
