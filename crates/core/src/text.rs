//! Text from plugins and peers, made safe for terminals and log lines.
//!
//! A status text, a label value, a plugin's log message or a refused
//! `host_id` is chosen by whoever wrote the plugin or the peer. Printed raw,
//! an ESC sequence can clear the operator's terminal and a newline can forge
//! a whole line (a fake `OK`, a log line with any timestamp). Every such
//! string goes through [`escape`] before it reaches a terminal or a log; JSON
//! output keeps the exact text (serde escapes it there).

use std::borrow::Cow;
use std::fmt;

/// `text` with every control character (C0, DEL, C1 — ESC, CR and LF among
/// them) written as a visible escape: `\n`, `\r`, `\t`, `\e`, or `\u{9b}`.
/// Text without control characters is returned as is, without a copy.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{1b}' => out.push_str("\\e"),
            '\\' => out.push('\\'),
            c if c.is_control() => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`escape`] as a `Display` wrapper, for format strings and tracing fields.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A peer's text quoted for an error or a log line: escaped, and cut to
/// about `max` bytes (a `…` says so), so that a megabyte of it neither
/// floods the log nor outgrows the frame an error goes back in.
pub fn excerpt(text: &str, max: usize) -> String {
    let cut = truncate(text, max);
    let more = if cut.len() < text.len() { "…" } else { "" };
    format!("\"{}{more}\"", escape(cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_not_copied() {
        assert!(matches!(escape("cpu 42% é"), Cow::Borrowed(_)));
    }

    #[test]
    fn control_characters_become_visible_and_cannot_forge_a_line() {
        let forged = "fine\r\n2026-01-01T00:00:00Z  INFO demo OK\u{1b}[2J\u{9b}x\u{7f}";
        let escaped = escape(forged);
        assert!(!escaped.chars().any(char::is_control), "{escaped}");
        assert_eq!(
            escaped,
            "fine\\r\\n2026-01-01T00:00:00Z  INFO demo OK\\e[2J\\u{9b}x\\u{7f}"
        );
        assert_eq!(Escaped("a\nb").to_string(), "a\\nb");
    }

    #[test]
    fn an_excerpt_is_escaped_and_cut_on_a_character() {
        assert_eq!(excerpt("a\nb", 10), "\"a\\nb\"");
        assert_eq!(excerpt(&"é".repeat(100), 5), "\"éé…\"");
    }
}
