//! Builds the detail view of one exchange as display lines, once per loaded
//! exchange (not per frame), and the character wrapping shared by `update`
//! (scroll bounds) and `render` (drawing) so both agree on line counts.

use chrono::FixedOffset;
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};

use super::body::{body_lines, hex_dump, pair_lines, parse_urlencoded, BodyKind};
use super::text::{is_unsafe, sanitize_line, stand_in};
use super::theme::Theme;
use super::webhook::{signature_line, Budget, Mark};
use crate::capture::{BodyData, CapturedBody, Exchange, Headers};
use crate::units::{fmt_duration, fmt_size};

/// The value of the first header called `name` (HTTP header names are
/// case-insensitive).
fn header_lines(headers: &Headers, theme: &Theme, out: &mut Vec<Line<'static>>) {
    if headers.is_empty() {
        out.push(Line::styled("(no headers)", theme.dim()));
    }
    for (name, value) in headers {
        out.push(Line::from(vec![
            Span::styled(name.to_string(), theme.header_name()),
            Span::raw(": "),
            Span::raw(String::from_utf8_lossy(value).into_owned()),
        ]));
    }
}

fn body_section(
    body: &CapturedBody,
    headers: &Headers,
    theme: &Theme,
    raw: bool,
    out: &mut Vec<Line<'static>>,
) {
    let ct = headers
        .get("content-type")
        .map(|v| String::from_utf8_lossy(v).into_owned());
    let (kind, lines) = match &body.data {
        BodyData::Empty => body_lines(b"", None, theme),
        BodyData::Memory(b) if raw => raw_lines(b, theme),
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
    if raw && kind != BodyKind::Empty {
        title.push_str(", raw bytes");
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

/// One half of an exchange, as the detail view's tabs and columns name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Half {
    /// The request as the sender made it.
    #[default]
    Request,
    /// The app's answer.
    Response,
}

impl Half {
    /// The other half (what `Tab` switches to).
    pub fn other(self) -> Half {
        match self {
            Half::Request => Half::Response,
            Half::Response => Half::Request,
        }
    }
}

/// The detail view of one exchange, in display lines: the summary on top,
/// then each half on its own, so that they can be shown as tabs (narrow
/// terminals) or side by side (wide ones).
#[derive(Debug, Clone, Default)]
pub struct DetailParts {
    /// Outcome, signature, event: what is shown above both halves.
    pub head: Vec<Line<'static>>,
    /// The request: line, query, headers, body.
    pub request: Vec<Line<'static>>,
    /// The response: status, headers, body.
    pub response: Vec<Line<'static>>,
}

impl DetailParts {
    /// The lines of `half`.
    pub fn half(&self, half: Half) -> &[Line<'static>] {
        match half {
            Half::Request => &self.request,
            Half::Response => &self.response,
        }
    }
}

/// The exact bytes of a body: each line end made visible (`␍␊` for CRLF,
/// `␊` for LF, then a line break), tabs as `→`, other control characters
/// as their stand-ins; bytes that are not UTF-8 as a hex dump.
pub fn raw_lines(bytes: &[u8], theme: &Theme) -> (BodyKind, Vec<Line<'static>>) {
    if bytes.is_empty() {
        return (BodyKind::Empty, vec![Line::styled("(empty)", theme.dim())]);
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return (BodyKind::Binary, hex_dump(bytes));
    };
    let mut out = Vec::new();
    for piece in text.split_inclusive('\n') {
        let (content, end) = if let Some(c) = piece.strip_suffix("\r\n") {
            (c, "␍␊")
        } else if let Some(c) = piece.strip_suffix('\n') {
            (c, "␊")
        } else {
            (piece, "")
        };
        let shown: String = content
            .chars()
            .map(|c| match c {
                '\t' => '→',
                c if is_unsafe(c) => stand_in(c),
                c => c,
            })
            .collect();
        let mut spans = vec![Span::raw(shown)];
        if !end.is_empty() {
            spans.push(Span::styled(end, theme.dim()));
        }
        out.push(Line::from(spans));
    }
    (BodyKind::Text, out)
}

/// All lines of the detail view of `ex`, both halves one after the other.
/// Times are shown in `tz`.
pub fn detail_lines(ex: &Exchange, theme: &Theme, tz: FixedOffset) -> Vec<Line<'static>> {
    let DetailParts {
        mut head,
        request,
        response,
    } = detail_parts(ex, theme, tz, None);
    head.push(Line::raw(""));
    head.extend(request);
    head.push(Line::raw(""));
    head.extend(response);
    head
}

/// The detail view of `ex` in parts; the body of the half `raw` (if any) is
/// shown as its exact bytes (see [`raw_lines`]). Times are shown in `tz`.
pub fn detail_parts(
    ex: &Exchange,
    theme: &Theme,
    tz: FixedOffset,
    raw: Option<Half>,
) -> DetailParts {
    let mut out: Vec<Line<'static>> = Vec::new();
    let id = ex
        .id
        .map(|i| format!("#{i}"))
        .unwrap_or_else(|| "#?".into());
    let at = ex.received_at.with_timezone(&tz);
    let when = if tz.local_minus_utc() == 0 {
        at.format("%Y-%m-%d %H:%M:%S%.3fZ")
    } else {
        at.format("%Y-%m-%d %H:%M:%S%.3f %:z")
    };
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
    let w = &ex.webhook;
    if let Some(b) = Budget::of(w.provider.as_deref(), w.sender_timeout_ms, ex.duration_ms) {
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
    let head = std::mem::take(&mut out);
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
    let raw_request = raw == Some(Half::Request);
    body_section(
        &ex.request.body,
        &ex.request.headers,
        theme,
        raw_request,
        &mut out,
    );
    let request = std::mem::take(&mut out);
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
            let raw_response = raw == Some(Half::Response);
            body_section(&resp.body, &resp.headers, theme, raw_response, &mut out);
        }
        None => {
            out.push(Line::styled("RESPONSE", theme.heading()));
            out.push(Line::styled("(no response)", theme.error()));
        }
    }
    let mut parts = DetailParts {
        head,
        request,
        response: out,
    };
    for line in parts
        .head
        .iter_mut()
        .chain(&mut parts.request)
        .chain(&mut parts.response)
    {
        sanitize_line(line);
    }
    parts
}

/// From this terminal width on, the request and the response are shown
/// side by side; below it, as tabs.
pub const SIDE_BY_SIDE: u16 = 140;

/// Where the detail view's parts go in a body area: the head (and the tab
/// line, its last row) on top, fixed so the outcome never scrolls away;
/// below, one half or both side by side, scrolled together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetailLayout {
    /// Rows of the head, tab line included.
    pub head_rows: usize,
    /// Both halves side by side (else only the selected one).
    pub side_by_side: bool,
    /// Columns of each half.
    pub col_width: usize,
    /// Rows left for the halves.
    pub pane_rows: usize,
}

impl DetailLayout {
    /// The layout of `parts` in a body area of `width` × `height`.
    pub fn of(parts: &DetailParts, width: u16, height: usize) -> Self {
        let side_by_side = width >= SIDE_BY_SIDE;
        let w = usize::from(width);
        // The head never takes more than half the area: the halves are
        // what the user scrolls.
        let head_rows = (wrapped_height(&parts.head, w) + 1).min((height / 2).max(1));
        DetailLayout {
            head_rows,
            side_by_side,
            col_width: if side_by_side { (w - 1) / 2 } else { w },
            pane_rows: height.saturating_sub(head_rows).max(1),
        }
    }

    /// Rows the halves shown take, wrapped; the taller one when side by side.
    pub fn pane_height(&self, parts: &DetailParts, half: Half) -> usize {
        if self.side_by_side {
            wrapped_height(&parts.request, self.col_width)
                .max(wrapped_height(&parts.response, self.col_width))
        } else {
            wrapped_height(parts.half(half), self.col_width)
        }
    }

    /// The furthest the halves scroll.
    pub fn max_scroll(&self, parts: &DetailParts, half: Half) -> usize {
        self.pane_height(parts, half).saturating_sub(self.pane_rows)
    }
}

/// The head's last row: which half is selected (the one `Tab` leaves and
/// `R` shows raw) and the keys for both.
pub fn tab_line(half: Half, raw: bool, side_by_side: bool, theme: &Theme) -> Line<'static> {
    let tab = |h: Half, name: &'static str| {
        if h == half {
            Span::styled(format!(" {name} "), theme.selected())
        } else {
            Span::styled(format!(" {name} "), theme.dim())
        }
    };
    let mut spans = vec![
        tab(Half::Request, "Request"),
        Span::raw(" "),
        tab(Half::Response, "Response"),
    ];
    let mode = if raw { "raw bytes" } else { "pretty" };
    let hint = if side_by_side {
        format!("  {mode} · Tab selects · R raw")
    } else {
        format!("  {mode} · Tab switches · R raw")
    };
    spans.push(Span::styled(hint, theme.dim()));
    Line::from(spans)
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
