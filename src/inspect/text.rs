//! Text as it may reach the screen: [`sanitize`] turns every character a
//! sender could use to move the cursor, clear lines or reorder text (C0 and
//! C1 controls, DEL, U+2028/U+2029, bidi overrides) into a visible stand-in
//! of one column; [`fit`] cuts text to a width with a trailing `…`; and
//! [`sanitize_buffer`] is the last pass over every drawn cell, so that text
//! drawn by widgets we do not control (the editor) is safe too.

use std::borrow::Cow;

use ratatui::buffer::Buffer;
use ratatui::text::{Line, Span};

/// Whether `c` must never reach the terminal as is.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// The visible, one-column stand-in for an unsafe character: the Unicode
/// control pictures for C0 (`␛`, `␍`, `␊`...) and DEL (`␡`), `␤` and `¶`
/// for the line and paragraph separators, `�` for the rest.
pub fn stand_in(c: char) -> char {
    match c {
        '\0'..='\u{1f}' => char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}'),
        '\u{7f}' => '\u{2421}',
        '\u{2028}' => '\u{2424}',
        '\u{2029}' => '¶',
        _ => '\u{fffd}',
    }
}

/// `s` with every unsafe character replaced by its [`stand_in`]; borrowed
/// when there is none (the usual case).
pub fn sanitize(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| if is_unsafe(c) { stand_in(c) } else { c })
            .collect(),
    )
}

/// [`sanitize`] applied to every span of `line`.
pub fn sanitize_line(line: &mut Line<'static>) {
    for span in &mut line.spans {
        if let Cow::Owned(s) = sanitize(&span.content) {
            span.content = Cow::Owned(s);
        }
    }
}

fn str_width(s: &str) -> usize {
    Span::raw(s).width()
}

fn char_width(c: char) -> usize {
    str_width(c.encode_utf8(&mut [0; 4]))
}

/// `s` (sanitised) cut to at most `width` columns; a cut ends with `…`.
pub fn fit(s: &str, width: usize) -> String {
    let s = sanitize(s);
    if str_width(&s) <= width {
        return s.into_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut w = 0;
    for c in s.chars() {
        let cw = char_width(c);
        if w + cw + 1 > width {
            break;
        }
        out.push(c);
        w += cw;
    }
    out.push('…');
    out
}

/// `s` cut from the left to at most `width` columns, starting with `…`:
/// for text whose end matters most (a target's port).
pub fn fit_left(s: &str, width: usize) -> String {
    let s = sanitize(s);
    if str_width(&s) <= width {
        return s.into_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut tail: Vec<char> = Vec::new();
    let mut w = 0;
    for c in s.chars().rev() {
        let cw = char_width(c);
        if w + cw + 1 > width {
            break;
        }
        tail.push(c);
        w += cw;
    }
    std::iter::once('…').chain(tail.into_iter().rev()).collect()
}

/// Replaces any unsafe character left in a drawn cell. Widgets drop most
/// controls themselves; this catches the rest (separators, C1, text a
/// widget such as the editor draws from its own copy).
pub fn sanitize_buffer(buf: &mut Buffer) {
    let area = buf.area;
    for y in area.top()..area.bottom() {
        for x in area.left()..area.right() {
            let cell = &mut buf[(x, y)];
            let sym = cell.symbol();
            if let Some(bad) = sym.chars().find(|&c| is_unsafe(c)) {
                let kept: String = sym.chars().filter(|&c| !is_unsafe(c)).collect();
                if kept.is_empty() {
                    cell.set_char(stand_in(bad));
                } else {
                    cell.set_symbol(&kept);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_control_and_separator_becomes_visible() {
        let s = "a\u{1b}]0;PWNED\u{7}\u{1b}[2K\r\u{85}\u{9b}\u{7f}\u{2028}\u{2029}\u{202e}b\tc";
        let clean = sanitize(s);
        assert!(!clean.chars().any(is_unsafe), "{clean}");
        assert_eq!(clean, "a␛]0;PWNED␇␛[2K␍��␡␤¶�b␉c");
        assert!(matches!(sanitize("plain ü"), Cow::Borrowed(_)));
    }

    #[test]
    fn fit_cuts_with_an_ellipsis() {
        assert_eq!(fit("charge.succeeded", 15), "charge.succeed…");
        assert_eq!(fit("charge.succeeded", 16), "charge.succeeded");
        assert_eq!(fit("日本語テキスト", 7), "日本語…");
        assert_eq!(fit_left("http://localhost:3000", 10), "…host:3000");
        assert_eq!(fit("", 0), "");
    }
}
