//! Drawing: [`draw`] renders an [`App`] onto any ratatui backend (the real
//! terminal, or `TestBackend` in tests). It reads state and never changes it.
//!
//! Screen layout, top to bottom: title (URL and target), status (connection
//! state and counts), a column/section header, the body (list, detail or
//! editor), and a footer (filter prompt, notice or key hints).

use std::time::Duration;

use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row as TableRow, Table};
use ratatui::Frame;

use super::detail::{tab_line, wrap_line, wrapped_height, DetailLayout};
use super::state::{App, Editor, Level, Row, RowKey, View};
use super::text::{fit, fit_left, sanitize, sanitize_buffer};
use super::webhook::{fmt_secs, gave_up_text, verdict_glyph, verdict_style, Budget, Mark};
use crate::agent::ConnectionStatus;
use crate::units::{fmt_duration, fmt_size};

/// Renders the whole inspector for `app` into `frame`.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let banner = app.banner_lines();
    let [title, status, notice, head, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(banner.len() as u16),
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_title(frame, app, title);
    draw_status(frame, app, status);
    frame.render_widget(Paragraph::new(banner), notice);
    match app.view {
        View::List => draw_list(frame, app, head, body),
        View::Detail => draw_detail(frame, app, head, body),
        View::Edit => draw_editor(frame, app, head, body),
    }
    draw_footer(frame, app, footer);
    if app.help {
        draw_help(frame, app, area);
    }
    sanitize_buffer(frame.buffer_mut());
}

fn public_url(app: &App) -> &str {
    match &app.status {
        ConnectionStatus::Connected { public_url, .. } if !public_url.is_empty() => public_url,
        _ => &app.public_url,
    }
}

/// The public URL and the target fitted into `width` columns after the
/// title's fixed parts: the target (with its port) is kept whole when at all
/// possible, dropping its `http://` first; the URL is cut with `…`.
pub fn fit_title(url: &str, target: &str, width: usize) -> (String, String) {
    let room = width.saturating_sub(" whtunnel  ".len() + " → ".chars().count());
    let url_w = Span::raw(url).width();
    let mut target = sanitize(target).into_owned();
    if url_w + Span::raw(target.as_str()).width() > room {
        if let Some(rest) = target.strip_prefix("http://") {
            target = rest.to_string();
        }
    }
    // At least a little of the URL stays, so the line still says what it is.
    let target = fit_left(&target, room.saturating_sub(url_w.min(12)));
    let url = fit(url, room.saturating_sub(Span::raw(target.as_str()).width()));
    (url, target)
}

fn draw_title(frame: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let (url, target) = fit_title(public_url(app), &app.target, usize::from(area.width));
    let line = Line::from(vec![
        Span::styled(" whtunnel ", t.heading().add_modifier(Modifier::REVERSED)),
        Span::raw(" "),
        Span::styled(url, Style::new().add_modifier(Modifier::BOLD)),
        Span::styled(" → ", t.dim()),
        Span::raw(target),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

/// The connection state as shown in the header.
pub fn status_text(app: &App) -> (String, Style) {
    let t = &app.theme;
    match &app.status {
        ConnectionStatus::Connecting => ("○ connecting…".into(), t.warn()),
        // The backlog as the agent counts it down, when followed.
        ConnectionStatus::Connected { .. } if app.drain.is_some() => {
            match app.drain.as_ref().and_then(|d| d.text()) {
                Some(text) => (format!("● connected · {text}"), t.ok()),
                None => ("● connected".into(), t.ok()),
            }
        }
        ConnectionStatus::Connected { held: 0, .. } => ("● connected".into(), t.ok()),
        ConnectionStatus::Connected { held, .. } => (
            format!("● connected · {}", crate::agent::status::held_notice(*held)),
            t.ok(),
        ),
        ConnectionStatus::Reconnecting {
            retry_at,
            last_error,
        } => {
            let left = retry_at.saturating_duration_since(app.now);
            let secs = (left + Duration::from_millis(999)).as_secs();
            (format!("◌ reconnecting in {secs}s: {last_error}"), t.warn())
        }
        ConnectionStatus::Refused { reason } => (format!("✕ refused: {reason}"), t.error()),
    }
}

fn draw_status(frame: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let c = app.counts();
    let mut spans = Vec::new();
    let classes = [
        ("2xx", t.status(Some(200), false)),
        ("3xx", t.status(Some(300), false)),
        ("4xx", t.status(Some(400), false)),
        ("5xx", t.status(Some(500), false)),
        ("err", t.status(None, true)),
    ];
    for (i, (label, style)) in classes.iter().enumerate() {
        spans.push(Span::styled(format!(" {label} "), t.dim()));
        spans.push(Span::styled(c[i].to_string(), *style));
    }
    let live = app.in_progress();
    if live > 0 {
        spans.push(Span::styled(format!("  ⋯ {live} in flight"), t.heading()));
    }
    if app.not_stored > 0 {
        spans.push(Span::styled(
            format!("  ! {} not stored", app.not_stored),
            t.warn(),
        ));
    }
    if app.unfinished > 0 {
        spans.push(Span::styled(
            format!("  ! {} never finished", app.unfinished),
            t.warn(),
        ));
    }
    spans.push(Span::raw(" "));
    let counts = Line::from(spans);
    let cw = (counts.width() as u16).min(area.width);
    let [left, right] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(cw)]).areas(area);
    let (text, style) = status_text(app);
    let line = Line::styled(format!(" {text}"), style);
    frame.render_widget(Paragraph::new(line), left);
    frame.render_widget(Paragraph::new(counts), right);
}

struct Col {
    title: &'static str,
    width: Constraint,
    /// Columns are dropped, lowest priority first, on narrow terminals.
    min_term_width: u16,
}

/// Columns of digits the `#` column needs for ids up to `max_id`.
fn id_width(max_id: i64) -> u16 {
    let digits = max_id.max(1).to_string().len() as u16;
    (digits + 1).max(3)
}

/// From this width on, the signature column names the provider.
const WIDE: u16 = 120;
/// Its width then: `✓ standard-webhooks`.
const SIG_WIDE: u16 = 19;
/// Indices of the columns drawn from the sender's side.
const COL_MARK: usize = 6;
const COL_SIG_GLYPH: usize = 8;
const COL_SIG_WIDE: usize = 9;
const COL_PATH: usize = 10;

/// The timeout-budget mark of `row` (rows in progress by their running
/// timer, so a slow handler is flagged before the sender gives up).
fn budget_mark(app: &App, row: &Row) -> Option<Mark> {
    let s = &row.summary;
    Budget::of(s.provider.as_deref(), s.sender_timeout_ms, row_ms(app, row))?.mark()
}

/// The duration shown for `row`: the running timer while in progress.
fn row_ms(app: &App, row: &Row) -> f64 {
    match row.since {
        Some(since) => app.now.saturating_duration_since(since).as_secs_f64() * 1000.0,
        None => row.summary.duration_ms,
    }
}

fn columns(width: u16, id_w: u16) -> Vec<(usize, Col)> {
    let all = [
        Col {
            title: "",
            width: Constraint::Length(5),
            min_term_width: 0,
        },
        Col {
            title: "#",
            width: Constraint::Length(id_w),
            min_term_width: 0,
        },
        Col {
            title: "TIME",
            width: Constraint::Length(8),
            min_term_width: 50,
        },
        Col {
            title: "METHOD",
            width: Constraint::Length(6),
            min_term_width: 0,
        },
        Col {
            title: "STS",
            width: Constraint::Length(3),
            min_term_width: 0,
        },
        Col {
            title: "DUR",
            width: Constraint::Length(6),
            min_term_width: 70,
        },
        Col {
            title: "",
            width: Constraint::Length(2),
            min_term_width: 0,
        },
        // Below 90 columns the signature and budget marks matter more to
        // a webhook developer than the body size (shown in the details).
        Col {
            title: "SIZE",
            width: Constraint::Length(8),
            min_term_width: 90,
        },
        // The signature: a glyph, and the provider when there is room.
        Col {
            title: "",
            width: Constraint::Length(1),
            min_term_width: 0,
        },
        Col {
            title: "SIGNATURE",
            width: Constraint::Length(SIG_WIDE),
            min_term_width: WIDE,
        },
        Col {
            title: "PATH",
            width: Constraint::Fill(3),
            min_term_width: 0,
        },
        Col {
            title: "EVENT",
            width: Constraint::Fill(2),
            min_term_width: 50,
        },
    ];
    all.into_iter()
        .enumerate()
        // One signature column: the glyph alone, or glyph and provider.
        .filter(|(i, c)| width >= c.min_term_width && !(*i == COL_SIG_GLYPH && width >= WIDE))
        .collect()
}

fn row_cells(app: &App, row: &Row, cols: &[(usize, Col)], widths: &[u16]) -> Vec<Cell<'static>> {
    let t = &app.theme;
    let s = &row.summary;
    cols.iter()
        .zip(widths)
        .map(|((i, _), &w)| match *i {
            0 => {
                if row.not_stored.is_some() {
                    Cell::from(Span::styled("!", t.warn()))
                } else if row.dead_lettered(&app.dead) {
                    Cell::from(Span::styled("☠", t.error()))
                } else if let Some(orig) = s.replay_of {
                    Cell::from(Span::styled(
                        format!("↻#{orig}"),
                        t.fg(ratatui::style::Color::Magenta),
                    ))
                } else if row.in_progress() {
                    Cell::from(Span::styled("⋯", t.heading()))
                } else {
                    Cell::from("")
                }
            }
            1 => match row.key {
                RowKey::Stored(id) => {
                    Cell::from(Line::from(format!("#{id}")).alignment(Alignment::Right))
                }
                RowKey::NotStored(_) | RowKey::Live(_) => Cell::from(""),
            },
            2 => Cell::from(
                s.received_at
                    .with_timezone(&app.tz)
                    .format("%H:%M:%S")
                    .to_string(),
            ),
            3 => Cell::from(fit(&s.method, usize::from(w))),
            4 => {
                let failed = s.error.is_some();
                let text = match s.status {
                    Some(st) => st.to_string(),
                    None if row.in_progress() => "…".into(),
                    None if failed => "ERR".into(),
                    None => "---".into(),
                };
                Cell::from(Span::styled(text, t.status(s.status, failed)))
            }
            5 => {
                // Rows in progress show a running timer.
                let text = fmt_duration(row_ms(app, row));
                let style = if row.in_progress() {
                    t.heading()
                } else {
                    Style::new()
                };
                Cell::from(Line::styled(text, style).alignment(Alignment::Right))
            }
            COL_MARK => match budget_mark(app, row) {
                Some(m) => Cell::from(Span::styled(m.glyph(), m.style(t))),
                None => Cell::from(""),
            },
            7 if row.in_progress() => Cell::from(""),
            7 => Cell::from(Line::from(fmt_size(s.request_size)).alignment(Alignment::Right)),
            COL_SIG_GLYPH | COL_SIG_WIDE => {
                let mut spans = Vec::new();
                if let Some(v) = s.signature {
                    spans.push(Span::styled(verdict_glyph(v), verdict_style(t, v)));
                }
                if *i == COL_SIG_WIDE {
                    let p = s.provider.as_deref().unwrap_or_default();
                    let room = usize::from(w).saturating_sub(2);
                    if s.signature.is_none() && !p.is_empty() {
                        spans.push(Span::raw(" "));
                    }
                    if !p.is_empty() {
                        spans.push(Span::styled(format!(" {}", fit(p, room)), t.dim()));
                    }
                }
                Cell::from(Line::from(spans))
            }
            COL_PATH => match app.attempts.get(&row.key) {
                Some(n) => {
                    let mark = format!("↳ retry {n} ");
                    let room = usize::from(w).saturating_sub(Span::raw(mark.as_str()).width());
                    Cell::from(Line::from(vec![
                        Span::styled(mark, t.warn()),
                        Span::raw(fit(&s.path, room)),
                    ]))
                }
                None => Cell::from(fit(&s.path, usize::from(w))),
            },
            _ => Cell::from(Span::styled(
                fit(s.event.as_deref().unwrap_or_default(), usize::from(w)),
                t.json_key(),
            )),
        })
        .collect()
}

fn draw_list(frame: &mut Frame, app: &App, head: Rect, body: Rect) {
    let t = &app.theme;
    let cols = columns(head.width, id_width(app.max_id));
    let widths: Vec<Constraint> = cols.iter().map(|(_, c)| c.width).collect();
    // The same split the table makes, so cut texts can end with `…`.
    let col_w: Vec<u16> = Layout::horizontal(widths.clone())
        .flex(ratatui::layout::Flex::Start)
        .spacing(1)
        .split(Rect::new(0, 0, body.width, 1))
        .iter()
        .map(|r| r.width)
        .collect();
    let header = TableRow::new(cols.iter().map(|(_, c)| Cell::from(c.title)))
        .style(t.dim().add_modifier(Modifier::BOLD));
    frame.render_widget(
        Table::new(Vec::<TableRow>::new(), widths.clone()).header(header),
        head,
    );
    if app.new_above > 0 {
        let marker = format!(" {} new ↑ (g) ", app.new_above);
        let mw = (Span::raw(marker.as_str()).width() as u16).min(head.width);
        let [_, right] =
            Layout::horizontal([Constraint::Fill(1), Constraint::Length(mw)]).areas(head);
        frame.render_widget(
            Paragraph::new(Span::styled(
                marker,
                t.heading().add_modifier(Modifier::REVERSED),
            )),
            right,
        );
    }

    if app.visible.is_empty() {
        let msg = if app.rows.is_empty() {
            format!(
                "Waiting for webhooks… send a request to {}",
                public_url(app)
            )
        } else {
            format!("No exchange matches the filter `{}`.", app.active_filter())
        };
        frame.render_widget(
            Paragraph::new(Line::styled(msg, t.dim())).alignment(Alignment::Center),
            Rect {
                y: body.y + body.height / 2,
                height: 1.min(body.height),
                ..body
            },
        );
        return;
    }
    // The loop keeps `offset` consistent with the body height; clamp anyway
    // so a frame drawn right after a resize still shows the selection.
    let h = usize::from(body.height).max(1);
    let sel = app.selected_index();
    let mut offset = app.offset.min(app.visible.len().saturating_sub(1));
    if let Some(s) = sel {
        if s >= offset + h {
            offset = s + 1 - h;
        }
        offset = offset.min(s);
    }
    let rows: Vec<TableRow> = app
        .visible
        .iter()
        .enumerate()
        .skip(offset)
        .take(h)
        .map(|(i, &ri)| {
            let r = TableRow::new(row_cells(app, &app.rows[ri], &cols, &col_w));
            if Some(i) == sel {
                r.style(t.selected())
            } else {
                r
            }
        })
        .collect();
    frame.render_widget(Table::new(rows, widths), body);
}

fn draw_detail(frame: &mut Frame, app: &App, head: Rect, body: Rect) {
    let t = &app.theme;
    let Some(d) = &app.detail else { return };
    let summary = app
        .rows
        .iter()
        .find(|r| r.key == RowKey::Stored(d.id))
        .map(|r| format!(" {} {}", r.summary.method, sanitize(&r.summary.path)))
        .unwrap_or_default();
    let h = usize::from(body.height);
    let placeholder = match (&d.parts, &d.error) {
        (_, Some(e)) => Some(Line::styled(
            format!("Could not load #{}: {e}", d.id),
            t.error(),
        )),
        (Some(_), None) => None,
        (None, None) => Some(Line::styled(format!("Loading #{}…", d.id), t.dim())),
    };
    let mut pos = String::new();
    match (&d.parts, placeholder) {
        (Some(parts), None) => {
            let lay = DetailLayout::of(parts, body.width, h);
            let [top, pane] = Layout::vertical([
                Constraint::Length(lay.head_rows as u16),
                Constraint::Fill(1),
            ])
            .areas(body);
            let head_top = Rect {
                height: top.height.saturating_sub(1),
                ..top
            };
            let tabs = Rect {
                y: top.y + head_top.height,
                height: top.height - head_top.height,
                ..top
            };
            draw_scrolled(frame, &parts.head, head_top, 0);
            frame.render_widget(
                Paragraph::new(tab_line(d.half, d.raw, lay.side_by_side, t)),
                tabs,
            );
            let total = lay.pane_height(parts, d.half);
            let scroll = d.scroll.min(total.saturating_sub(lay.pane_rows));
            if lay.side_by_side {
                let cw = lay.col_width as u16;
                let [left, bar, right] = Layout::horizontal([
                    Constraint::Length(cw),
                    Constraint::Length(1),
                    Constraint::Fill(1),
                ])
                .areas(pane);
                draw_scrolled(frame, &parts.request, left, scroll);
                let rule = vec![Line::styled("│", t.dim()); usize::from(bar.height)];
                frame.render_widget(Paragraph::new(rule), bar);
                draw_scrolled(frame, &parts.response, right, scroll);
            } else {
                draw_scrolled(frame, parts.half(d.half), pane, scroll);
            }
            if total > lay.pane_rows {
                pos = format!(
                    " {}-{}/{} ",
                    scroll + 1,
                    (scroll + lay.pane_rows).min(total),
                    total
                );
            }
        }
        (_, line) => {
            frame.render_widget(Paragraph::new(line.unwrap_or_default()), body);
        }
    }
    let pw = pos.chars().count() as u16;
    let [hl, hr] = Layout::horizontal([Constraint::Fill(1), Constraint::Length(pw)]).areas(head);
    // Replays arrive after the original was loaded, so they are looked up
    // per frame rather than baked into the detail lines.
    let replays: Vec<String> = app
        .rows
        .iter()
        .filter(|r| r.summary.replay_of == Some(d.id))
        .map(|r| format!("#{}", r.summary.id))
        .collect();
    let mut title = vec![
        Span::styled(format!(" #{}", d.id), t.heading()),
        Span::styled(summary, Style::new().add_modifier(Modifier::BOLD)),
    ];
    if let Some(n) = app.attempts.get(&RowKey::Stored(d.id)) {
        title.push(Span::styled(format!("  ↳ retry {n}"), t.warn()));
    }
    let row = app.rows.iter().find(|r| r.key == RowKey::Stored(d.id));
    if row.is_some_and(|r| r.dead_lettered(&app.dead)) {
        title.push(Span::styled(
            "  ☠ dead-lettered on the relay: whtunnel held list",
            t.error(),
        ));
    }
    if !replays.is_empty() {
        title.push(Span::styled(
            format!("  ↻ replayed as {}", replays.join(" ")),
            t.fg(ratatui::style::Color::Magenta),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(title)), hl);
    frame.render_widget(Paragraph::new(Span::styled(pos, t.dim())), hr);
}

/// `lines` wrapped to `area`'s width, from wrapped row `scroll` on. Wraps
/// only what is on screen: a large body has tens of thousands of lines and
/// this runs on every keypress.
fn draw_scrolled(frame: &mut Frame, lines: &[Line<'static>], area: Rect, scroll: usize) {
    let width = usize::from(area.width);
    let h = usize::from(area.height);
    let mut shown: Vec<Line<'static>> = Vec::with_capacity(h);
    let mut row = 0;
    for line in lines {
        let lh = wrapped_height(std::slice::from_ref(line), width);
        if row + lh > scroll {
            let skip = scroll.saturating_sub(row);
            shown.extend(wrap_line(line, width).into_iter().skip(skip));
            if shown.len() >= h {
                break;
            }
        }
        row += lh;
    }
    shown.truncate(h);
    frame.render_widget(Paragraph::new(shown), area);
}

fn draw_editor(frame: &mut Frame, app: &App, head: Rect, body: Rect) {
    let t = &app.theme;
    match &app.editor {
        Some(Editor::Text {
            id,
            textarea,
            signed,
            reformatted,
            ..
        }) => {
            let mut spans = vec![Span::styled(
                format!(" Edit #{id}, then replay"),
                t.heading(),
            )];
            let used = Span::raw(spans[0].content.clone()).width();
            let room = usize::from(head.width).saturating_sub(used + 2);
            if let Some(h) = signed {
                spans.push(Span::styled(
                    format!(
                        "  {}",
                        fit(
                            &format!(
                                "signed request ({h}): editing the body breaks the signature \
                                 unless replay re-signs it"
                            ),
                            room
                        )
                    ),
                    t.warn(),
                ));
            } else if *reformatted {
                spans.push(Span::styled(
                    format!("  {}", fit("body pretty-printed: its bytes changed", room)),
                    t.warn(),
                ));
            }
            frame.render_widget(Paragraph::new(Line::from(spans)), head);
            frame.render_widget(&**textarea, body);
        }
        Some(Editor::Binary { id, len, .. }) => {
            frame.render_widget(
                Paragraph::new(Span::styled(format!(" Replay #{id}"), t.heading())),
                head,
            );
            let lines = vec![
                Line::raw(""),
                Line::styled(
                    format!(
                        "The request body of #{id} is binary ({}) and can't be edited as text.",
                        fmt_size(*len)
                    ),
                    t.warn(),
                ),
                Line::raw(""),
                Line::raw("Press r or Enter to replay it unchanged, Esc to cancel."),
            ];
            frame.render_widget(
                Paragraph::new(lines).wrap(ratatui::widgets::Wrap { trim: false }),
                body,
            );
        }
        None => {}
    }
}

fn draw_footer(frame: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    if let Some(draft) = &app.filter_draft {
        let line = Line::from(vec![
            Span::styled("/", t.heading()),
            Span::raw(draft.clone()),
            Span::styled("█", t.dim()),
            Span::styled(
                format!("  {} match · Enter apply · Esc cancel", app.visible.len()),
                t.dim(),
            ),
        ]);
        frame.render_widget(Paragraph::new(line), area);
        return;
    }
    let mut spans = Vec::new();
    if !app.filter.is_empty() {
        let searching = if app.body_search.as_ref().is_some_and(|b| b.running) {
            " · searching bodies…"
        } else {
            ""
        };
        spans.push(Span::styled(
            format!(
                "[filter: {} · {}/{}{searching}] ",
                app.filter,
                app.visible.len(),
                app.rows.len()
            ),
            t.heading(),
        ));
    }
    if let Some(Editor::Text {
        error,
        warning,
        find,
        ..
    }) = &app.editor
    {
        if app.view == View::Edit {
            if find.open {
                let found = find.status();
                let style = if find.matches == 0 && !find.query.is_empty() {
                    t.warn()
                } else {
                    t.dim()
                };
                let line = Line::from(vec![
                    Span::styled("Find: ", t.heading()),
                    Span::raw(sanitize(&find.query).into_owned()),
                    Span::styled("█", t.dim()),
                    Span::styled(format!("  {found}"), style),
                    Span::styled("  ⏎/↓ next · ↑ previous · Esc close", t.dim()),
                ]);
                frame.render_widget(Paragraph::new(line), area);
                return;
            }
            if let Some(e) = error {
                spans.push(Span::styled(format!("✕ {e}"), t.error()));
            } else if let Some(w) = warning {
                spans.push(Span::styled(format!("! {w}"), t.warn()));
            } else {
                spans.push(Span::styled(
                    "Ctrl-S/F2 send · Ctrl-F find · F3 pretty-print (changes bytes) · Esc cancel",
                    t.dim(),
                ));
            }
            frame.render_widget(Paragraph::new(Line::from(spans)), area);
            return;
        }
    }
    if let Some(n) = &app.notice {
        let style = match n.level {
            Level::Info => t.ok(),
            Level::Warn => t.warn(),
            Level::Error => t.error(),
        };
        spans.push(Span::styled(n.text.clone(), style));
    } else if let Some(b) = app
        .selected_row()
        .filter(|_| app.view == View::List)
        .and_then(|r| {
            let s = &r.summary;
            Budget::of(s.provider.as_deref(), s.sender_timeout_ms, row_ms(app, r))
        })
        .filter(|b| b.mark() == Some(Mark::Over))
    {
        // The selected exchange outlived its sender's patience: say what
        // that means rather than the key hints.
        spans.push(Span::styled(
            format!(
                "⌛ past {}'s {} timeout: {}",
                b.provider.id(),
                fmt_secs(b.timeout.as_secs_f64() * 1000.0),
                gave_up_text(b.provider)
            ),
            t.error(),
        ));
    } else {
        let hints = match app.view {
            View::List => "↑↓/jk move · ⏎ details · r replay · e edit · / filter · ? help · q quit",
            View::Detail => {
                "↑↓ scroll · Tab req/resp · R raw · n/p next · Esc back · r replay · ? help"
            }
            View::Edit => "r replay · Esc cancel",
        };
        spans.push(Span::styled(hints, t.dim()));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The help overlay's lines.
pub const HELP: &[(&str, &str)] = &[
    ("↑/↓  j/k", "move (list) / scroll (details)"),
    ("PgUp/PgDn", "page up / down"),
    ("g/G Home/End", "first / last"),
    ("Enter", "details of the selected exchange"),
    ("n/p  Tab  R", "details: next/prev · request/response · raw"),
    ("Esc ← Bksp", "back from details; Esc clears the filter"),
    ("r", "replay the selected exchange"),
    ("e", "edit, then replay (Ctrl-S/F2 send)"),
    ("F3  Ctrl-F", "editor: pretty-print JSON · find text"),
    ("/", "filter (Enter apply, Esc cancel)"),
    ("?", "this help"),
    ("q  Ctrl-C", "quit"),
    ("", ""),
    ("Filter terms", "all must match"),
    ("5xx  404", "status class / status"),
    ("err", "failed or not stored"),
    ("#12", "exchange id"),
    ("sig:invalid", "signature valid/invalid/unsigned/unchecked"),
    ("provider:name", "sender (stripe, github, ...)"),
    ("body:text", "request or response body contains text"),
    ("text", "method, path, event, provider, error"),
];

fn draw_help(frame: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let w = 60.min(area.width);
    let h = (HELP.len() as u16 + 2).min(area.height);
    let rect = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!(" {k:<14}"), t.heading()),
                Span::raw(v.to_string()),
            ])
        })
        .collect();
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::bordered()
                .title(" Keys ")
                .title_bottom(Line::from(" any key closes ").right_aligned()),
        ),
        rect,
    );
}
