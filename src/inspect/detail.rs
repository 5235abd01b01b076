//! Builds the detail view of one exchange as display lines, once per loaded
//! exchange (not per frame), and the character wrapping shared by `update`
//! (scroll bounds) and `render` (drawing) so both agree on line counts.

use chrono::FixedOffset;
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};

use super::body::{body_lines, pair_lines, parse_urlencoded, BodyKind};
use super::text::sanitize_line;
use super::theme::Theme;
use super::webhook::{signature_line, Budget, Mark};
use crate::capture::{BodyData, CapturedBody, Exchange, Header};
use crate::units::{fmt_duration, fmt_size};

/// The value of the first header called `name` (HTTP header names are
/// case-insensitive).
fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

fn header_lines(headers: &[Header], theme: &Theme, out: &mut Vec<Line<'static>>) {
    if headers.is_empty() {
        out.push(Line::styled("(no headers)", theme.dim()));
    }
    for (name, value) in headers {
        out.push(Line::from(vec![
            Span::styled(name.clone(), theme.header_name()),
            Span::raw(": "),
            Span::raw(String::from_utf8_lossy(value).into_owned()),
        ]));
    }
}

fn body_section(
    body: &CapturedBody,
    headers: &[Header],
    theme: &Theme,
    out: &mut Vec<Line<'static>>,
) {
    let ct = find_header(headers, "content-type").map(|v| String::from_utf8_lossy(v).into_owned());
    let (kind, lines) = match &body.data {
        BodyData::Empty => body_lines(b"", None, theme),
        BodyData::Memory(b) => body_lines(b, ct.as_deref(), theme),
        BodyData::File(p) => (
            BodyKind::Binary,
            vec![Line::styled(
                format!("(body kept in {}, not loaded)", p.display()),
                theme.dim(),
            )],
        ),
    };
    let mut title = format!("Body ({}", fmt_size(body.total_len));
    if kind != BodyKind::Empty {
        title.push_str(", ");
        title.push_str(kind.label());
    }
    title.push(')');
    out.push(Line::styled(title, theme.heading()));
    if body.truncated {
        let kept = match &body.data {
            BodyData::Memory(b) => b.len() as u64,
            _ => 0,
        };
        out.push(Line::styled(
            format!(
                "! truncated: kept {} of {}",
                fmt_size(kept),
                fmt_size(body.total_len)
            ),
            theme.warn(),
        ));
    }
    out.extend(lines);
}

/// All lines of the detail view of `ex`. Times are shown in `tz`.
pub fn detail_lines(ex: &Exchange, theme: &Theme, tz: FixedOffset) -> Vec<Line<'static>> {
    let mut out: Vec<Line<'static>> = Vec::new();
    let id = ex
        .id
        .map(|i| format!("#{i}"))
        .unwrap_or_else(|| "#?".into());
    let when = ex
        .received_at
        .with_timezone(&tz)
        .format("%Y-%m-%d %H:%M:%S%.3f %:z");
    out.push(Line::styled(
        format!(
            "{id}  {when}  {}  -> {}",
            fmt_duration(ex.duration_ms),
            ex.target
        ),
        theme.dim(),
    ));
    // The outcome first: a 1 MiB request body must not push it out of sight.
    let dur = fmt_duration(ex.duration_ms);
    let mut outcome = match &ex.response {
        Some(resp) => {
            let reason = http::StatusCode::from_u16(resp.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            vec![
                Span::styled("→ ", theme.dim()),
                Span::styled(
                    format!("{} {reason}", resp.status).trim_end().to_string(),
                    theme
                        .status(Some(resp.status), ex.error.is_some())
                        .add_modifier(Modifier::BOLD),
                ),
                Span::raw(format!(
                    " in {dur} · response {}",
                    fmt_size(resp.body.total_len)
                )),
            ]
        }
        None => vec![Span::styled(
            format!("✕ no response after {dur}"),
            theme.error(),
        )],
    };
    if let Some(err) = &ex.error {
        outcome.push(Span::styled(format!(" · {}", err.trim()), theme.error()));
    }
    out.push(Line::from(outcome));
    // Why a signature check failed is the question asked most: next to the
    // outcome, before any header.
    if let Some(line) = signature_line(&ex.webhook, theme) {
        out.push(line);
    }
    if let Some(b) = Budget::of(ex.webhook.provider.as_deref(), ex.duration_ms) {
        out.push(b.meter(theme));
        if b.mark() == Some(Mark::Over) {
            out.push(Line::styled(format!("⌛ {}", b.gave_up()), theme.error()));
        }
    }
    if let Some(ev) = &ex.event {
        out.push(Line::from(vec![
            Span::styled("event: ", theme.dim()),
            Span::styled(ev.clone(), theme.json_key()),
        ]));
    }
    if let Some(orig) = ex.replay_of {
        out.push(Line::styled(format!("replay of #{orig}"), theme.dim()));
    }
    if let Some(addr) = &ex.remote_addr {
        out.push(Line::styled(format!("from {addr}"), theme.dim()));
    }
    out.push(Line::raw(""));
    out.push(Line::styled("REQUEST", theme.heading()));
    out.push(Line::styled(
        format!("{} {}", ex.request.method, ex.request.path),
        Style::new().add_modifier(Modifier::BOLD),
    ));
    // Decoded, because providers put auth keys and event hints there.
    if let Some((_, query)) = ex.request.path.split_once('?') {
        let pairs = parse_urlencoded(query);
        if !pairs.is_empty() {
            out.push(Line::styled("Query:", theme.dim()));
            out.extend(pair_lines(&pairs, theme).into_iter().map(|mut l| {
                l.spans.insert(0, Span::raw("  "));
                l
            }));
        }
    }
    header_lines(&ex.request.headers, theme, &mut out);
    out.push(Line::raw(""));
    body_section(&ex.request.body, &ex.request.headers, theme, &mut out);
    out.push(Line::raw(""));
    match &ex.response {
        Some(resp) => {
            let reason = http::StatusCode::from_u16(resp.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            out.push(Line::from(vec![
                Span::styled("RESPONSE ", theme.heading()),
                Span::styled(
                    format!("{} {reason}", resp.status).trim_end().to_string(),
                    theme
                        .status(Some(resp.status), false)
                        .add_modifier(Modifier::BOLD),
                ),
            ]));
            header_lines(&resp.headers, theme, &mut out);
            out.push(Line::raw(""));
            body_section(&resp.body, &resp.headers, theme, &mut out);
        }
        None => {
            out.push(Line::styled("RESPONSE", theme.heading()));
            out.push(Line::styled("(no response)", theme.error()));
        }
    }
    for line in &mut out {
        sanitize_line(line);
    }
    out
}

/// Splits `line` into pieces no wider than `width` columns (character
/// wrapping, styles kept). An empty line stays one empty line.
pub fn wrap_line(line: &Line<'static>, width: usize) -> Vec<Line<'static>> {
    let width = width.max(1);
    if line.width() <= width {
        return vec![line.clone()];
    }
    let mut out = Vec::new();
    let mut cur: Vec<Span<'static>> = Vec::new();
    let mut cur_w = 0;
    for span in &line.spans {
        let mut buf = String::new();
        for ch in span.content.chars() {
            let cw = Span::raw(&*ch.encode_utf8(&mut [0; 4])).width();
            if cur_w + cw > width && cur_w > 0 {
                if !buf.is_empty() {
                    cur.push(Span::styled(std::mem::take(&mut buf), span.style));
                }
                out.push(Line::from(std::mem::take(&mut cur)).style(line.style));
                cur_w = 0;
            }
            buf.push(ch);
            cur_w += cw;
        }
        if !buf.is_empty() {
            cur.push(Span::styled(buf, span.style));
        }
    }
    if !cur.is_empty() {
        out.push(Line::from(cur).style(line.style));
    }
    out
}

/// How many screen rows `lines` take at `width` columns with [`wrap_line`].
pub fn wrapped_height(lines: &[Line<'static>], width: usize) -> usize {
    let width = width.max(1);
    lines.iter().map(|l| l.width().div_ceil(width).max(1)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_agrees_with_height() {
        let lines = vec![
            Line::raw("x".repeat(25)),
            Line::raw(""),
            Line::from(vec![Span::raw("abc"), Span::raw("defgh")]),
        ];
        let wrapped: usize = lines.iter().map(|l| wrap_line(l, 10).len()).sum();
        assert_eq!(wrapped, 3 + 1 + 1);
        assert_eq!(wrapped_height(&lines, 10), wrapped);
        assert_eq!(wrap_line(&lines[0], 10)[2].to_string(), "xxxxx");
    }
}
