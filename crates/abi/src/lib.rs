//! The collector ABI version.
//!
//! `wit/collector.wit` is the contract between host and plugins, and its
//! package version (`package sandglass:collector@X.Y.Z;`) is the ABI
//! version. The host checks plugins against it and the SDK reports it; both
//! take it from here, and this crate reads it from the WIT file at compile
//! time, so the version is written in exactly one place.

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
}
