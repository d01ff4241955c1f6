//! What a service, plugin or host may be called.

/// Service, plugin and host names become file names and log fields: letters,
/// digits, `_`, `-` and `.`, not starting with `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if fine {
        Ok(())
    } else {
        Err(format!(
            "name {name:?} may only hold letters, digits, '_', '-' and '.' (at most 128, not starting with '.')"
        ))
    }
}
