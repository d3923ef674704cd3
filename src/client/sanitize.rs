//! Makes peer-controlled text safe to print on a terminal.
//!
//! Anything the server relays (message text, nicknames, room names, leave
//! reasons) could carry bytes a terminal interprets: ESC starts escape
//! sequences that move the cursor, recolour, retitle the window or clear the
//! screen; CR and BS let a line overwrite what came before it; C1 controls
//! such as U+009B (a one-character CSI) do the same on terminals that honour
//! them; and the bidirectional overrides reorder what the reader sees. The
//! server refuses most of these, but the client does not rely on that: every
//! peer-controlled string passes through [`sanitize`] before it is printed.
//!
//! The escapes are visible and unambiguous about what was there:
//! - C0 controls and DEL in caret notation, as `cat -v` shows them: ESC is
//!   `^[`, CR is `^M`, DEL is `^?`;
//! - tab becomes one space (harmless, and the server allows tabs in chat);
//! - C1 controls, bidi controls and line/paragraph separators as `<U+009B>`.

use std::borrow::Cow;

/// Whether `c` must not reach the terminal as itself.
pub fn is_dangerous(c: char) -> bool {
    // C0, DEL and C1 are exactly `char::is_control`.
    c.is_control()
        || matches!(c,
            // Bidi embeddings and overrides (LRE, RLE, PDF, LRO, RLO).
            '\u{202A}'..='\u{202E}'
            // Bidi isolates (LRI, RLI, FSI, PDI).
            | '\u{2066}'..='\u{2069}'
            // Bidi marks: they reorder neighbouring text too.
            | '\u{200E}' | '\u{200F}' | '\u{061C}'
            // Line and paragraph separators: some terminals break lines.
            | '\u{2028}' | '\u{2029}')
}

/// `text` with every dangerous character replaced by a visible escape.
/// Borrows when there is nothing to replace, which is the common case.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_dangerous) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push(' '),
            '\u{7f}' => out.push_str("^?"),
            // Caret notation: the control's code plus 0x40 is a printable
            // ASCII character (ESC 0x1b -> '[').
            c if (c as u32) < 0x20 => {
                out.push('^');
                out.push(char::from(c as u8 + 0x40));
            }
            c if is_dangerous(c) => {
                out.push_str(&format!("<U+{:04X}>", c as u32));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Raw JSON made safe to print while staying valid JSON: dangerous
/// characters can only sit inside strings (anywhere else the JSON would be
/// invalid already), where `\uXXXX` means the same thing; tab, CR and LF
/// become spaces, which is what they may stand for between tokens.
pub fn sanitize_json(raw: &str) -> Cow<'_, str> {
    if !raw.chars().any(is_dangerous) {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len() + 8);
    for c in raw.chars() {
        match c {
            '\t' | '\n' | '\r' => out.push(' '),
            c if is_dangerous(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_is_untouched_and_borrowed() {
        for s in ["hello", "héllo wörld ✓ 名前 🎉", "a * b (c) -> d: e", ""] {
            assert!(matches!(sanitize(s), Cow::Borrowed(t) if t == s));
        }
    }

    #[test]
    fn hostile_strings_are_made_visible() {
        let cases = [
            ("\u{1b}[2J", "^[[2J"),                               // clear screen
            ("\u{1b}]0;pwned\u{7}", "^[]0;pwned^G"),              // OSC window title
            ("\u{1b}]8;;http://x\u{1b}\\", "^[]8;;http://x^[\\"), // OSC 8 link
            ("safe\rEVIL", "safe^MEVIL"),                         // CR overwrite
            ("a\u{8}\u{8}b", "a^H^Hb"),                           // backspaces
            ("two\nlines", "two^Jlines"),
            ("\u{9b}31m", "<U+009B>31m"),                 // C1 CSI
            ("\u{85}", "<U+0085>"),                       // C1 NEL
            ("abc\u{202E}txt.exe", "abc<U+202E>txt.exe"), // RLO
            ("\u{2066}x\u{2069}", "<U+2066>x<U+2069>"),   // isolates
            ("del\u{7f}", "del^?"),
            ("tab\there", "tab here"),
            ("nul\0", "nul^@"),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize(input), want, "{input:?}");
        }
    }

    #[test]
    fn json_keeps_its_meaning() {
        let raw = "{\"text\":\"a\u{9b}b\u{202e}c\"}";
        let safe = sanitize_json(raw);
        assert_eq!(safe, "{\"text\":\"a\\u009bb\\u202ec\"}");
        let before: serde_json::Value = serde_json::from_str(raw).unwrap();
        let after: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(before, after);
    }
}
