//! Files written so that a crash leaves the old content or the new.

use std::path::Path;

/// Replace `path` with `bytes` so a reader (or a crash) sees the old content
/// or the new, never a mix: write a sibling file, then rename it over.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path))
}
