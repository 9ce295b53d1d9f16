//! Text from adapters, products and fleet files made safe to show a person: the one terminal
//! sanitiser every human renderer uses.
//!
//! An adapter's step title, note, log line, summary or error is data, never terminal commands.
//! [`visible`] writes every character that steers a terminal as a visible escape, so an escape
//! sequence cannot set the window title, erase a line, forge a `✔ all checks passed` line or
//! reorder what the operator reads:
//!
//! | characters | shown as |
//! |---|---|
//! | C0 controls (U+0000–U+001F), including `\n`, `\r`, `\t` | `\x1b`, `\n`, `\r`, `\t`, `\x07`, … |
//! | DEL (U+007F) | `\x7f` |
//! | C1 controls (U+0080–U+009F) | `\u{9b}` |
//! | bidi overrides, embeddings, isolates and marks (U+202A–U+202E, U+2066–U+2069, U+200E, U+200F, U+061C), line and paragraph separators (U+2028, U+2029) | `\u{202e}` |
//!
//! [`visible_lines`] does the same but keeps line feeds, for text shown as several lines.
//! JSON output needs neither: serde escapes what JSON requires and keeps the text exact.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` steers a terminal or reorders text (see the module's table).
pub fn is_steering(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{061c}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// `text` for a one-line field on a terminal: every steering character (line feeds included)
/// written as a visible escape. Borrows when there is nothing to escape.
pub fn visible(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// `text` for a block shown as lines: like [`visible`], but line feeds stay line feeds (a
/// carriage return is still shown as `\r`, so no line can be overwritten).
pub fn visible_lines(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

fn escape(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    let needs = |c: char| is_steering(c) && !(keep_newlines && c == '\n');
    if !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !needs(c) {
            out.push(c);
            continue;
        }
        let _ = match c {
            '\n' => out.write_str("\\n"),
            '\r' => out.write_str("\\r"),
            '\t' => out.write_str("\\t"),
            c if (c as u32) < 0x80 => write!(out, "\\x{:02x}", c as u32),
            c => write!(out, "\\u{{{:x}}}", c as u32),
        };
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_shown_and_plain_text_is_untouched() {
        let forged =
            "a\u{1b}]0;pwned\u{7} \u{1b}[2K\r✔ ok \u{9b}31m \u{202e}x\u{2069}\u{7f}\u{0}\tz";
        assert_eq!(
            visible(forged),
            r"a\x1b]0;pwned\x07 \x1b[2K\r✔ ok \u{9b}31m \u{202e}x\u{2069}\x7f\x00\tz"
        );
        assert!(!visible(forged).chars().any(is_steering));
        assert_eq!(visible("one\ntwo"), r"one\ntwo");
        assert_eq!(visible_lines("one\r\ntwo\u{1b}"), "one\\r\ntwo\\x1b");
        for plain in ["", "Bytebase 3.10.0 → 3.11.1", "naïve 日本語 ✔", r"C:\path"] {
            assert!(matches!(visible(plain), Cow::Borrowed(_)), "{plain}");
        }
        for c in [
            '\u{200e}', '\u{200f}', '\u{61c}', '\u{2028}', '\u{2029}', '\u{85}',
        ] {
            assert!(is_steering(c), "{c:?}");
        }
    }
}
