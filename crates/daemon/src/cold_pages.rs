//! Code and read-only data that start-up touched and steady running does
//! not: handed back to the kernel.
//!
//! Most of a running agent's resident pages are file-backed: its own
//! executable's code and read-only data, and the compiled plugins it maps.
//! Start-up (argument parsing, configuration, TLS set-up, loading plugins)
//! touches far more of them than a collection cycle, and the kernel keeps
//! them all mapped until memory runs short. [`page_out`] asks it to take
//! every read-only file-backed page back now (`MADV_PAGEOUT`); what a cycle
//! uses faults in again once, from the file, and stays. `MADV_RANDOM` first,
//! so that such a fault reads the one page it needs, not the readahead
//! window around it (without it, one cycle brought 6.8 of the 11.6 MiB
//! paged out back: docs/performance.md, "Agent memory with the core
//! plugins"). Pages shared with another process (libc) are left alone by
//! the kernel.

use std::time::Duration;

/// One `start-end perms offset dev inode path` line of `/proc/self/maps`:
/// the address range of a read-only mapping of a file, if it is one.
fn read_only_file_mapping(line: &str) -> Option<(usize, usize)> {
    let mut fields = line.split_whitespace();
    let (range, perms) = (fields.next()?, fields.next()?);
    let path = fields.nth(3)?;
    if !path.starts_with('/') || perms.as_bytes().get(1) != Some(&b'-') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    Some((start, end - start))
}

/// Page out every read-only file-backed mapping of this process; returns
/// the bytes advised. An error means the kernel has no `MADV_PAGEOUT`
/// (before Linux 5.4) or `/proc` is missing.
pub fn page_out() -> std::io::Result<usize> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for (start, len) in maps.lines().filter_map(read_only_file_mapping) {
        let addr = start as *mut libc::c_void;
        // SAFETY: the range was a mapping of this process a moment ago. If
        // another thread unmapped it since, madvise fails with ENOMEM; if
        // something else was mapped there, these advices still change no
        // content: MADV_RANDOM only turns readahead off, MADV_PAGEOUT
        // drops clean pages (which fault back in) and swaps anonymous ones.
        let outcome = unsafe {
            libc::madvise(addr, len, libc::MADV_RANDOM);
            libc::madvise(addr, len, libc::MADV_PAGEOUT)
        };
        if outcome == 0 {
            advised += len;
        } else {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EINVAL) {
                return Err(error);
            }
        }
    }
    Ok(advised)
}

/// Page out `first` after start (start-up is over: plugins loaded and run
/// once) and then every `every`, which also returns what a reload, a
/// reconnection or a newly loaded plugin touched once.
pub async fn page_out_now_and_then(first: Duration, every: Duration) {
    tokio::time::sleep(first).await;
    loop {
        match tokio::task::spawn_blocking(page_out).await {
            Ok(Ok(bytes)) => tracing::debug!(bytes, "paged out code and read-only data"),
            Ok(Err(e)) => {
                tracing::info!("cannot page out code not in use ({e}); RSS stays higher");
                return;
            }
            Err(_) => return,
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_file_mappings_are_taken() {
        let exe = "55d0c0a00000-55d0c1b00000 r-xp 00400000 fe:01 1234 /usr/bin/agent";
        assert_eq!(
            read_only_file_mapping(exe),
            Some((0x55d0c0a00000, 0x1100000))
        );
        for other in [
            "55d0c1b00000-55d0c1c00000 rw-p 01500000 fe:01 1234 /usr/bin/agent",
            "7f0000000000-7f0000021000 rw-p 00000000 00:00 0 ",
            "7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0 [stack]",
            "7ffd1c100000-7ffd1c102000 r-xp 00000000 00:00 0 [vdso]",
        ] {
            assert_eq!(read_only_file_mapping(other), None, "{other}");
        }
    }

    /// `start-end perms ...` (the other lines of smaps are `Field: value`).
    fn is_mapping_header(line: &str) -> bool {
        line.split_once('-')
            .is_some_and(|(start, _)| usize::from_str_radix(start, 16).is_ok())
    }

    /// Resident KiB of this test executable's code mapping.
    fn exe_code_resident_kib() -> u64 {
        let exe = std::env::current_exe().unwrap();
        let exe = exe.to_str().unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_exe_code = false;
        let mut kib = 0;
        for line in smaps.lines() {
            if let Some(rss) = line.strip_prefix("Rss:") {
                if in_exe_code {
                    kib += rss.trim().trim_end_matches(" kB").parse::<u64>().unwrap();
                }
            } else if is_mapping_header(line) {
                in_exe_code = line.contains(" r-xp ") && line.ends_with(exe);
            }
        }
        kib
    }

    #[test]
    fn paging_out_takes_the_executables_code_out_of_memory() {
        let before = exe_code_resident_kib();
        let advised = page_out().expect("MADV_PAGEOUT (Linux 5.4 or later)");
        let after = exe_code_resident_kib();
        assert!(advised > 0);
        assert!(
            after < before,
            "the test's code stayed resident: {before} KiB before, {after} KiB after"
        );
    }
}
