//! The collector ABI version.
//!
//! `wit/collector.wit` is the contract between host and plugins, and its
//! package version (`package sandglass:collector@X.Y.Z;`) is the ABI
//! version. The host checks plugins against it and the SDK reports it; both
//! take it from here, and this crate reads it from the WIT file at compile
//! time, so the version is written in exactly one place. It also holds the
//! one other fact both sides must read alike: how a mount point is written
//! in the kernel's mount tables (`fs-usage`), and the layout of samples packed
//! in one buffer (`put-samples`, [`packed`]).

pub mod packed;

/// The ABI version: the version of the `sandglass:collector` WIT package.
pub const ABI_VERSION: &str = package_version(include_str!("../../../wit/collector.wit"));

/// The version in `package sandglass:collector@VERSION;` (a compile error if
/// the file declares none).
const fn package_version(wit: &'static str) -> &'static str {
    const PACKAGE: &[u8] = b"package sandglass:collector@";
    let bytes = wit.as_bytes();
    let mut start = 0;
    while start + PACKAGE.len() <= bytes.len() {
        let mut matched = 0;
        while matched < PACKAGE.len() && bytes[start + matched] == PACKAGE[matched] {
            matched += 1;
        }
        if matched == PACKAGE.len() {
            let (_, rest) = bytes.split_at(start + PACKAGE.len());
            let mut end = 0;
            while end < rest.len() && rest[end] != b';' && rest[end] != b'\n' {
                end += 1;
            }
            assert!(
                end < rest.len() && rest[end] == b';',
                "wit/collector.wit: the package line must end with ';'"
            );
            let (version, _) = rest.split_at(end);
            match std::str::from_utf8(version) {
                Ok(version) => return version,
                Err(_) => panic!("wit/collector.wit: the package version is not UTF-8"),
            }
        }
        start += 1;
    }
    panic!("wit/collector.wit declares no `package sandglass:collector@VERSION;`")
}

/// A field of `/proc/self/mounts` or `mountinfo` with the kernel's `\ooo`
/// escapes decoded (a space in a mount point is `\040`). A lean plugin
/// reads mount points this way and the host's `fs-usage` compares them this
/// way: one definition for both sides.
pub fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_the_wit_package_line() {
        let wit = "// header\npackage sandglass:collector@2.3.4;\n\nworld collector {}\n";
        assert_eq!(package_version(wit), "2.3.4");
        let declared = include_str!("../../../wit/collector.wit")
            .lines()
            .find_map(|l| l.trim().strip_prefix("package sandglass:collector@"))
            .and_then(|rest| rest.strip_suffix(';'));
        assert_eq!(declared, Some(ABI_VERSION));
        assert_eq!(ABI_VERSION.split('.').count(), 3, "{ABI_VERSION}");
    }

    #[test]
    fn mount_fields_decode_octal_escapes_only() {
        assert_eq!(unescape_mount_field("/mnt/my\\040disk"), "/mnt/my disk");
        assert_eq!(unescape_mount_field("a\\134b\\011c"), "a\\b\tc");
        assert_eq!(unescape_mount_field("trailing\\04"), "trailing\\04");
    }
}
