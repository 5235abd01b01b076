//! Text for people: the `requests list` table and the `requests show`
//! view (request and response like `curl -v`, binary bodies as a hex dump).

use std::borrow::Cow;
use std::fmt::Write as _;

use super::json::rfc3339;
use super::{header_text, load};
use crate::capture::model::{CapturedBody, Exchange, ExchangeSummary};

/// True for characters a terminal may act on rather than show: C0 and C1
/// controls, DEL, and the Unicode line and paragraph separators.
fn is_terminal_control(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// Text a sender controls, made safe to print to a terminal: every control
/// character (C0, C1, DEL, U+2028/U+2029) is written as an escape (`\x1b`,
/// `\u{9b}`, `\u{2028}`, `\t`, `\r`, `\n`), so an escape sequence in a
/// webhook cannot retitle, rewrite or read the user's terminal. With
/// `multiline`, line feeds, tabs and the CR of a CRLF stay as they are (a
/// body keeps its shape); without, the result is one line.
pub fn terminal_safe(s: &str, multiline: bool) -> Cow<'_, str> {
    if !s.chars().any(is_terminal_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' if multiline => out.push(c),
            '\r' if multiline && chars.peek() == Some(&'\n') => out.push(c),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && is_terminal_control(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_terminal_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Cuts `s` to at most `max` characters, marking the cut with `…`.
fn ellipsize(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The ASCII column of a hex dump: printable bytes as themselves, others
/// as `.`.
pub fn ascii_column(chunk: &[u8]) -> String {
    chunk
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}

/// `requests list`: an aligned table (ID, TIME, METHOD, PATH, STATUS,
/// DURATION, EVENT). Status shows `ERR` for failed exchanges without a
/// response; replays are marked `↻<id>` after the event.
pub fn list_human(items: &[ExchangeSummary]) -> String {
    if items.is_empty() {
        return "No requests captured yet.\n".to_owned();
    }
    let header = [
        "ID",
        "TIME (UTC)",
        "METHOD",
        "PATH",
        "STATUS",
        "DURATION",
        "EVENT",
    ];
    let rows: Vec<[String; 7]> = items
        .iter()
        .map(|s| {
            let status = match (s.status, &s.error) {
                (Some(st), _) => st.to_string(),
                (None, Some(_)) => "ERR".into(),
                (None, None) => "-".into(),
            };
            let mut event = s
                .event
                .as_deref()
                .map(|e| terminal_safe(e, false).into_owned())
                .unwrap_or_else(|| "-".into());
            if let Some(r) = s.replay_of {
                let _ = write!(event, " ↻{r}");
            }
            [
                s.id.to_string(),
                s.received_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                terminal_safe(&s.method, false).into_owned(),
                ellipsize(&terminal_safe(&s.path, false), 60),
                status,
                crate::units::fmt_duration(s.duration_ms),
                event,
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths.iter()).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let pad = w - c.chars().count();
                l.push_str(c);
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

/// A body for the terminal: UTF-8 text as is, binary as a short hex dump.
fn body_human(out: &mut String, body: &CapturedBody) {
    let bytes = match load(body) {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(out, "[{e}]");
            return;
        }
    };
    if bytes.is_empty() && body.total_len == 0 {
        return;
    }
    match std::str::from_utf8(&bytes) {
        Ok(s) => {
            let s = terminal_safe(s, true);
            out.push_str(&s);
            if !s.ends_with('\n') {
                out.push('\n');
            }
        }
        Err(_) => {
            let _ = writeln!(
                out,
                "[binary body, {} bytes; use --json for base64]",
                bytes.len()
            );
            for (i, chunk) in bytes.chunks(16).take(32).enumerate() {
                let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
                let ascii = ascii_column(chunk);
                let _ = writeln!(out, "{:08x}  {:<47}  {ascii}", i * 16, hex.join(" "));
            }
            if bytes.len() > 512 {
                out.push_str("…\n");
            }
        }
    }
    if body.truncated {
        let _ = writeln!(
            out,
            "[truncated: kept {} of {} bytes]",
            bytes.len(),
            body.total_len
        );
    }
}

/// `requests show <ID>`: a summary line, then the request (line, headers,
/// body) and the response, like `curl -v` but with nothing left out.
pub fn show_human(ex: &Exchange) -> String {
    let mut out = String::new();
    let s = ex.summary();
    let line = |t: &str| terminal_safe(t, false).into_owned();
    let _ = writeln!(
        out,
        "#{}  {}  {} {}  ({})",
        s.id,
        rfc3339(&s.received_at),
        line(&s.method),
        line(&s.path),
        crate::units::fmt_duration(s.duration_ms)
    );
    if let Some(e) = &ex.event {
        let _ = writeln!(out, "event:     {}", line(e));
    }
    if let Some(r) = ex.replay_of {
        let _ = writeln!(out, "replay of: #{r}");
    }
    let _ = writeln!(out, "target:    {}", line(&ex.target));
    if let Some(a) = &ex.remote_addr {
        let _ = writeln!(out, "from:      {}", line(a));
    }
    if let Some(id) = &ex.relay_event_id {
        let _ = writeln!(out, "held as:   {}", line(id));
    }
    if let Some(e) = &ex.error {
        let _ = writeln!(out, "error:     {}", line(e));
    }
    let _ = writeln!(
        out,
        "\n> {} {}",
        line(&ex.request.method),
        line(&ex.request.path)
    );
    for (n, v) in &ex.request.headers {
        let _ = writeln!(out, "> {}: {}", line(n), line(&header_text(v)));
    }
    out.push_str(">\n");
    body_human(&mut out, &ex.request.body);
    match &ex.response {
        Some(r) => {
            let reason = http::StatusCode::from_u16(r.status)
                .ok()
                .and_then(|c| c.canonical_reason())
                .unwrap_or("");
            let _ = writeln!(out, "\n< {} {reason}", r.status);
            for (n, v) in &r.headers {
                let _ = writeln!(out, "< {}: {}", line(n), line(&header_text(v)));
            }
            out.push_str("<\n");
            body_human(&mut out, &r.body);
        }
        None => out.push_str("\n< (no response)\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::export::ex_with;

    #[test]
    fn human_list_and_show() {
        let mut s = ex_with(b"{}").summary();
        s.replay_of = Some(2);
        let mut failed = ex_with(b"").summary();
        failed.status = None;
        failed.error = Some("refused".into());
        let out = list_human(&[s, failed]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID"));
        assert!(lines[1].contains("POST") && lines[1].contains("/hooks?key=0123"));
        assert!(lines[1].contains("200") && lines[1].contains("consent.created ↻2"));
        assert!(lines[2].contains("ERR"));
        // Columns line up: PATH starts at the same offset on every line.
        let col = lines[0].find("PATH").unwrap();
        assert_eq!(lines[1].find("/hooks").unwrap(), col);
        assert_eq!(list_human(&[]), "No requests captured yet.\n");

        let out = show_human(&ex_with(b"{\"type\":\"x\"}"));
        assert!(out.contains("> POST /hooks?key=0123\n"));
        assert!(out.contains("> X-Dup: one\n"));
        assert!(out.contains("{\"type\":\"x\"}\n"));
        assert!(out.contains("< 200 OK\n"));
        let bin = show_human(&ex_with(&[0, 1, 2, 255]));
        assert!(bin.contains("binary body, 4 bytes"));
        assert!(bin.contains("00 01 02 ff"));
    }

    /// The body of issue #12: an OSC title change, a line erase, a carriage
    /// return and colours, and OSC 52 (clipboard) behind it.
    const HOSTILE: &str = "payment.ok\u{1b}]0;PWNED\u{7}\u{1b}[2K\r\u{1b}[32mALL GOOD\u{1b}[0m\u{1b}]52;c;cHduZWQ=\u{7}";

    fn no_controls(out: &str) {
        for c in out.chars() {
            assert!(
                c == '\n' || !is_terminal_control(c),
                "{c:?} reaches the terminal in {out:?}"
            );
        }
    }

    #[test]
    fn what_a_sender_controls_is_escaped_for_the_terminal() {
        assert_eq!(
            terminal_safe("a\u{1b}[2K\rb\u{7f}\u{9b}\u{2028}", false),
            "a\\x1b[2K\\rb\\x7f\\u{9b}\\u{2028}"
        );
        assert_eq!(terminal_safe("a\r\n\tb\rc", true), "a\r\n\tb\\rc");
        assert!(matches!(terminal_safe("plain ü", false), Cow::Borrowed(_)));

        let body = format!("{{\"type\":\"{HOSTILE}\"}}");
        let mut ex = ex_with(body.as_bytes());
        ex.event = Some(HOSTILE.into());
        ex.request.path = format!("/hooks/{HOSTILE}");
        ex.request
            .headers
            .to_mut()
            .push(("x-evil".into(), HOSTILE.as_bytes().to_vec()));
        ex.error = Some(HOSTILE.into());
        let shown = show_human(&ex);
        no_controls(&shown);
        assert!(shown.contains("payment.ok\\x1b]0;PWNED\\x07"), "{shown}");
        let mut s = ex.summary();
        s.event = Some(HOSTILE.into());
        let listed = list_human(&[s]);
        no_controls(&listed);
        assert!(listed.contains("\\x1b[32mALL GOOD"), "{listed}");
    }
}
