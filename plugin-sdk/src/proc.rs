//! Fast readers and parsers for the `/proc` text formats.
//!
//! Three shapes cover nearly all of `/proc`:
//! - key/value tables (`/proc/meminfo`, `/proc/cpuinfo`, `/proc/<pid>/status`): [`kv_pairs`], [`kv_u64`];
//! - whitespace columns (`/proc/stat`, `/proc/diskstats`, `/proc/net/dev`): [`field`], [`parse`];
//! - single-line files (`/proc/loadavg`, `/proc/uptime`): [`field`].

use crate::error::{Error, Result};

/// Read a whole `/proc` (or other granted) file as text: one host call in a
/// lean collector, one `open` and as few `read`s as the file needs in a WASI
/// one ([`crate::host::read`]).
pub fn read(path: &str) -> Result<String> {
    let buf = crate::host::read(path)?;
    String::from_utf8(buf).map_err(|_| Error::new(format!("{path}: not UTF-8 text")))
}

/// Parse `text` as `T`, naming `what` in the error.
pub fn parse<T: std::str::FromStr>(text: &str, what: &str) -> Result<T> {
    text.trim()
        .parse()
        .map_err(|_| Error::new(format!("cannot parse {what} from {text:?}")))
}

/// The whitespace-separated field `index` (0-based) of `line`, parsed as `T`.
pub fn field<T: std::str::FromStr>(line: &str, index: usize, what: &str) -> Result<T> {
    let text = line
        .split_ascii_whitespace()
        .nth(index)
        .ok_or_else(|| Error::new(format!("{what}: field {index} missing in {line:?}")))?;
    parse(text, what)
}

/// `key: value` pairs of a table such as `/proc/meminfo` or `/proc/cpuinfo`,
/// with both sides trimmed. Lines without a colon are skipped.
pub fn kv_pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let (key, value) = line.split_once(':')?;
        Some((key.trim(), value.trim()))
    })
}

/// A `kv_pairs` value such as `16318888 kB` as a number, scaled to bytes when
/// it carries a `kB` unit (the kernel's `kB` means KiB).
pub fn kv_u64(value: &str) -> Option<u64> {
    let mut parts = value.split_ascii_whitespace();
    let number: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        None => Some(number),
        Some("kB") => Some(number * 1024),
        Some(_) => None,
    }
}

/// A field of `/proc/self/mounts` or `mountinfo` with the kernel's `\ooo`
/// escapes decoded (a space in a mount point is `\040`): a mount point as
/// [`crate::host::fs_usage`] takes it.
pub use sandglass_abi::unescape_mount_field as unescape;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_pairs_splits_on_first_colon_and_trims() {
        let text = "MemTotal:       16318888 kB\nmodel name\t: Intel(R) Xeon: 2GHz\nno colon\n";
        let pairs: Vec<_> = kv_pairs(text).collect();
        assert_eq!(
            pairs,
            [
                ("MemTotal", "16318888 kB"),
                ("model name", "Intel(R) Xeon: 2GHz")
            ]
        );
    }

    #[test]
    fn kv_u64_scales_kb_and_rejects_other_units() {
        assert_eq!(kv_u64("16318888 kB"), Some(16318888 * 1024));
        assert_eq!(kv_u64("42"), Some(42));
        assert_eq!(kv_u64("42 MB"), None);
        assert_eq!(kv_u64("x"), None);
    }

    #[test]
    fn read_takes_a_whole_proc_file_and_names_what_fails() {
        // Many lines, reported with size 0: the text must come whole, up
        // to its last newline.
        let status = read("/proc/self/status").unwrap();
        assert!(
            status.starts_with("Name:") && status.ends_with('\n'),
            "{status:?}"
        );
        assert!(kv_pairs(&status).any(|(k, _)| k == "VmRSS"));
        let err = read("/proc/no-such-file").unwrap_err().to_string();
        assert!(err.starts_with("/proc/no-such-file: "), "{err}");
    }

    #[test]
    fn field_names_what_is_missing() {
        assert_eq!(field::<f64>("0.42 0.30 0.10", 1, "load5").unwrap(), 0.30);
        let err = field::<f64>("0.42", 3, "load15").unwrap_err().to_string();
        assert!(err.contains("load15") && err.contains("field 3"), "{err}");
        let err = field::<u64>("abc", 0, "count").unwrap_err().to_string();
        assert!(err.contains("count") && err.contains("abc"), "{err}");
    }
}
