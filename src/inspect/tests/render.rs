//! Rendering into `TestBackend` at 80×24 and wider, checked with insta
//! snapshots and explicit assertions (so a bad snapshot cannot hide a bug).

use std::time::Duration;

use crossterm::event::KeyCode;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::Color;
use ratatui::Terminal;

use super::fixtures::*;
use crate::agent::ConnectionStatus;
use crate::capture::CaptureEvent;
use crate::inspect::state::{update, App, Msg};
use crate::inspect::{draw, Theme};

/// Renders `app` into a fresh `TestBackend` of the app's size.
pub(super) fn render(app: &App) -> Buffer {
    let (w, h) = app.size;
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| draw(f, app)).unwrap();
    terminal.backend().buffer().clone()
}

/// The buffer as text, one line per row, trailing spaces trimmed.
pub(super) fn text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in 0..area.height {
        let mut line = String::new();
        for x in 0..area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub(super) fn screen(app: &App) -> String {
    text(&render(app))
}

pub(super) fn connected(app: &mut App) {
    update(
        app,
        Msg::Status(ConnectionStatus::Connected {
            public_url: "https://relay.example/t/demo".into(),
            held: 0,
        }),
    );
}

fn list_app(w: u16, h: u16) -> App {
    let mut app = app_with(Theme::COLOR, w, h);
    connected(&mut app);
    feed(&mut app, mixed());
    app
}

#[test]
fn list_80x24() {
    let app = list_app(80, 24);
    let s = screen(&app);
    insta::assert_snapshot!(s);
    assert!(s.contains("https://relay.example/t/demo"));
    assert!(s.contains("http://localhost:3000"));
    assert!(s.contains("connected"));
    assert!(s.contains("2xx 2"), "counts: {s}");
    assert!(s.contains("5xx 1") && s.contains("4xx 1") && s.contains("3xx 1"));
    assert!(s.contains("err 1"));
    // Times in the app's fixed +01:00 offset, not UTC or the machine's zone.
    assert!(s.contains("11:00:07"), "{s}");
    assert!(s.contains("invoice.paid"));
    assert!(s.contains("↻#1"), "replay marker");
    assert!(s.contains("ERR"), "failed exchange without status");
    // Newest first.
    let p6 = s.find("11:00:42").unwrap();
    let p1 = s.find("11:00:07").unwrap();
    assert!(p6 < p1);
}

#[test]
fn list_wide_120x30_shows_all_columns() {
    let app = list_app(120, 30);
    let s = screen(&app);
    insta::assert_snapshot!(s);
    for col in ["TIME", "METHOD", "STS", "DUR", "SIZE", "PATH", "EVENT"] {
        assert!(s.contains(col), "missing column {col}");
    }
    assert!(s.contains("/hooks/github?key=abc"));
    assert!(s.contains("customer.created"));
    assert!(s.contains("1.0 KiB"));
}

/// The SIZE column is 8 cells and DUR 6: a size or a duration as the list
/// prints it always fits, so no digit is cut off the front (400,000 bytes
/// once read "90.6 KiB", 150 s "50.00s").
#[test]
fn list_sizes_and_durations_fit_their_columns_whole() {
    let mut app = app_with(Theme::COLOR, 120, 12);
    connected(&mut app);
    let sizes = [400_000, 102_399, 1_048_575, 5 * 1024 * 1024 * 1024];
    let rows = sizes
        .iter()
        .zip(1..)
        .map(|(&n, id)| {
            let mut s = summary(id, "POST", &format!("/hooks/size{id}"), Some(200));
            s.request_size = n;
            s.duration_ms = 150_000.0 * id as f64;
            s
        })
        .collect();
    feed(&mut app, rows);
    let s = screen(&app);
    for (id, shown) in [
        (1, "391 KiB"),
        (2, "100 KiB"),
        (3, "1024 KiB"),
        (4, "5.0 GiB"),
    ] {
        let row = s
            .lines()
            .find(|l| l.contains(&format!("/hooks/size{id}")))
            .unwrap_or_else(|| panic!("no row {id}: {s}"));
        assert!(
            row.contains(&format!(" {shown} ")),
            "row {id} should show {shown}: {row}"
        );
        let took = format!(" {}s ", 150 * id);
        assert!(row.contains(&took), "row {id} should show{took}: {row}");
    }
}

#[test]
fn list_narrow_collapses_columns_without_panicking() {
    let app = list_app(60, 12);
    let s = screen(&app);
    assert!(!s.contains("SIZE") && !s.contains("DUR"));
    assert!(s.contains("PATH") && s.contains("STS"));
    for (w, h) in [(1, 1), (10, 3), (30, 5)] {
        let app = list_app(w, h);
        render(&app);
    }
}

#[test]
fn empty_list_says_it_is_waiting() {
    let app = app();
    let s = screen(&app);
    assert!(s.contains("Waiting for webhooks"));
    assert!(s.contains("connecting"));
}

#[test]
fn not_stored_row_has_marker_and_notice() {
    let mut app = list_app(80, 24);
    let mut s = summary(0, "POST", "/hooks/burst", Some(200));
    s.received_at = at(100);
    update(
        &mut app,
        Msg::Captured(CaptureEvent::NotStored {
            summary: s,
            reason: "writer queue full".into(),
        }),
    );
    let s = screen(&app);
    insta::assert_snapshot!(s);
    assert!(s.contains("! 1 not stored"));
    assert!(s.contains("could not keep up"));
    let row = s.lines().find(|l| l.contains("/hooks/burst")).unwrap();
    assert!(row.trim_start().starts_with('!'), "{row}");
}

#[test]
fn status_cell_colours_and_no_color() {
    let app = list_app(80, 24);
    let buf = render(&app);
    let s = text(&buf);
    // Find the "200" of the newest row (#6, selected) and of #1.
    let (y, line) = s
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("11:00:07"))
        .unwrap();
    let x = line.find(" 200 ").unwrap() + 1;
    let cell = &buf[(x as u16, y as u16)];
    assert_eq!(cell.symbol(), "2");
    assert_eq!(cell.fg, Color::Green);
    let (y5, line5) = s
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(" 500 "))
        .unwrap();
    let x5 = line5.find(" 500 ").unwrap() + 1;
    assert_eq!(buf[(x5 as u16, y5 as u16)].fg, Color::Red);

    let mut plain = app.clone();
    plain.theme = Theme::PLAIN;
    let pbuf = render(&plain);
    assert_eq!(text(&pbuf), s, "same text without colour");
    for cell in pbuf.content() {
        assert_eq!(cell.fg, Color::Reset, "no foreground colour under NO_COLOR");
        assert_eq!(cell.bg, Color::Reset, "no background colour under NO_COLOR");
    }
}

#[test]
fn header_connected_reconnecting_refused() {
    let mut app = list_app(80, 24);
    let first_two = |app: &App| screen(app).lines().take(2).collect::<Vec<_>>().join("\n");
    let s = first_two(&app);
    assert!(s.contains("● connected"), "{s}");

    let now = app.now;
    update(
        &mut app,
        Msg::Status(ConnectionStatus::Reconnecting {
            retry_at: now + Duration::from_millis(4200),
            last_error: "connection reset".into(),
        }),
    );
    let s = first_two(&app);
    assert!(s.contains("reconnecting in 5s: connection reset"), "{s}");
    assert!(s.contains("5xx 1"), "counts stay visible: {s}");
    update(&mut app, Msg::Tick(now + Duration::from_secs(2)));
    assert!(first_two(&app).contains("reconnecting in 3s"));

    update(
        &mut app,
        Msg::Status(ConnectionStatus::Refused {
            reason: "invalid token".into(),
        }),
    );
    let s = first_two(&app);
    assert!(s.contains("refused: invalid token"), "{s}");
    insta::assert_snapshot!(s);
}

fn detail_app(w: u16, h: u16, ct: &str, body: &[u8]) -> App {
    let mut app = list_app(w, h);
    let fx = update(&mut app, key(KeyCode::Enter));
    assert_eq!(fx.len(), 1);
    update(&mut app, Msg::DetailLoaded(Box::new(exchange(6, ct, body))));
    app
}

#[test]
fn detail_pretty_json() {
    let app = detail_app(80, 40, "application/json", JSON_BODY);
    let s = screen(&app);
    insta::assert_snapshot!(s);
    assert!(s.contains("POST /hooks/stripe?key=abc"));
    assert!(s.contains("Stripe-Signature: t=1700000000,v1=5257a869"));
    assert!(s.contains("Query:\n  key = abc\n"), "decoded query: {s}");
    assert!(s.contains("Body (152 B, JSON)"), "{s}");
    assert!(s.contains("  \"type\": \"invoice.paid\","));
    assert!(
        s.contains("  \"big\": 12345678901234567890,"),
        "exact number literal"
    );
    assert!(s.contains("2026-11-23 11:00:42.000 +01:00"));
    let mut app = app;
    update(&mut app, key(KeyCode::Tab));
    assert!(screen(&app).contains("RESPONSE 200 OK"));
}

#[test]
fn detail_json_syntax_colours() {
    let app = detail_app(80, 40, "application/json", JSON_BODY);
    let buf = render(&app);
    let s = text(&buf);
    let fg_at = |needle: &str| {
        let (y, l) = s
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(needle))
            .unwrap();
        let x = l.find(needle).unwrap();
        buf[(x as u16, y as u16)].fg
    };
    let key = fg_at("\"livemode\"");
    let string = fg_at("\"invoice.paid\",");
    let number = fg_at("4200");
    let boolean = fg_at("false");
    assert_eq!(key, Color::Blue);
    assert_eq!(string, Color::Green);
    assert_eq!(number, Color::Magenta);
    assert_eq!(boolean, Color::Yellow);
}

#[test]
fn detail_scrolls() {
    let mut app = detail_app(80, 24, "application/json", JSON_BODY);
    let top = screen(&app);
    assert!(top.contains("REQUEST"));
    for _ in 0..6 {
        update(&mut app, key(KeyCode::Down));
    }
    let s = screen(&app);
    assert!(!s.contains("REQUEST"), "{s}");
    assert!(
        s.contains("→ 200 OK"),
        "the outcome does not scroll away: {s}"
    );
    // 20 body rows: a head of 4 lines and the tab line, 15 for the request.
    assert!(s.contains(" 7-21/25"), "position indicator: {s}");
    for _ in 0..40 {
        update(&mut app, key(KeyCode::Down));
    }
    assert!(screen(&app).contains(" 11-25/25"), "stops at the end");
}

#[test]
fn detail_binary_hex_dump() {
    let bytes: Vec<u8> = (0u8..40).chain(*b"PNG\r\n").collect();
    let app = detail_app(80, 24, "application/octet-stream", &bytes);
    let s = screen(&app);
    insta::assert_snapshot!(s);
    assert!(s.contains("Body (45 B, binary)"));
    assert!(s.contains("00000000  00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f"));
    assert!(s.contains("00000020  20 21 22 23 24 25 26 27  50 4e 47 0d 0a"));
    assert!(s.contains("| !\"#$%&'PNG..|"), "{s}");
}

#[test]
fn detail_jwt_decoded() {
    let app = detail_app(100, 40, "application/jwt", JWT_BODY);
    let s = screen(&app);
    insta::assert_snapshot!(s);
    assert!(s.contains("JWT header:"));
    assert!(s.contains("\"alg\": \"HS256\""));
    assert!(s.contains("JWT claims:"));
    assert!(s.contains("\"eventType\": \"order.created\""));
    assert!(s.contains("Raw token:"));
    assert!(s.contains("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."));
}

#[test]
fn detail_jwt_recognised_without_content_type() {
    let app = detail_app(100, 40, "text/plain", JWT_BODY);
    let s = screen(&app);
    assert!(s.contains("Body (128 B, JWT)"), "{s}");
    assert!(s.contains("\"sub\": \"123\""));
}

#[test]
fn help_screen() {
    let mut app = list_app(80, 24);
    update(&mut app, ch('?'));
    let s = screen(&app);
    insta::assert_snapshot!(s);
    for k in [
        "Keys",
        "j/k",
        "Enter",
        "replay",
        "edit, then replay",
        "filter",
        "quit",
        "Ctrl-C",
    ] {
        assert!(s.contains(k), "help lacks {k}: {s}");
    }
}

#[test]
fn filter_prompt_and_active_filter() {
    let mut app = list_app(80, 24);
    update(&mut app, ch('/'));
    type_str(&mut app, "stripe");
    let s = screen(&app);
    insta::assert_snapshot!(s);
    let footer = s.lines().last().unwrap();
    assert!(footer.starts_with("/stripe"), "{footer}");
    assert!(footer.contains("3 match"));
    assert!(!s.contains("/hooks/github"));

    update(&mut app, key(KeyCode::Enter));
    let s = screen(&app);
    let footer = s.lines().last().unwrap();
    assert!(footer.contains("[filter: stripe · 3/6]"), "{footer}");

    update(&mut app, ch('/'));
    type_str(&mut app, "zzz");
    update(&mut app, key(KeyCode::Enter));
    assert!(screen(&app).contains("No exchange matches the filter"));
}

#[test]
fn editor_with_inline_parse_error() {
    let mut app = list_app(80, 24);
    update(&mut app, ch('e'));
    update(
        &mut app,
        Msg::DetailLoaded(Box::new(exchange(6, "application/json", br#"{"a":1}"#))),
    );
    let s = screen(&app);
    insta::assert_snapshot!(s);
    assert!(s.contains("Edit #6, then replay"));
    assert!(s.contains("POST /hooks/stripe?key=abc"));
    assert!(s.contains("Ctrl-S/F2 send"));
    // Break line 2 into a body-looking line, as if the blank line were lost.
    update(&mut app, key(KeyCode::Down));
    update(&mut app, key(KeyCode::Home));
    type_str(&mut app, "{");
    update(&mut app, key(KeyCode::F(2)));
    let s = screen(&app);
    let footer = s.lines().last().unwrap();
    assert!(
        footer.contains("line 2: expected `Name: value`"),
        "{footer}"
    );
}

#[test]
fn binary_editor_offers_replay_as_is() {
    let mut app = list_app(80, 24);
    update(&mut app, ch('e'));
    update(
        &mut app,
        Msg::DetailLoaded(Box::new(exchange(
            6,
            "application/octet-stream",
            b"\x00\xff",
        ))),
    );
    let s = screen(&app);
    assert!(
        s.contains("is binary (2 B) and can't be edited as text"),
        "{s}"
    );
    assert!(s.contains("replay it unchanged"));
}

#[test]
fn detail_scrolls_inside_a_wrapped_line() {
    let long = format!("{}{}{}", "A".repeat(80), "B".repeat(80), "C".repeat(40));
    let mut app = detail_app(80, 8, "text/plain", long.as_bytes());
    // 4 body rows: the head gets 2 (a line and the tabs), the body 2.
    let body_top = |app: &App| screen(app).lines().nth(5).unwrap().to_string();
    let mut found = false;
    for _ in 0..40 {
        if body_top(&app).starts_with("BBBB") {
            found = true;
            break;
        }
        update(&mut app, ch('j'));
    }
    assert!(
        found,
        "scrolling reaches the second piece of the wrapped line"
    );
    let s = screen(&app);
    let rows: Vec<&str> = s.lines().skip(5).take(2).collect();
    assert_eq!(rows, vec!["B".repeat(80), "C".repeat(40)]);
}

#[test]
fn detail_of_an_original_lists_its_replays() {
    let mut app = list_app(80, 24);
    // Open #1, the original of #6 (the fixture's replay).
    update(&mut app, ch('G'));
    update(&mut app, key(KeyCode::Enter));
    update(
        &mut app,
        Msg::DetailLoaded(Box::new(exchange(1, "application/json", b"{}"))),
    );
    let title = screen(&app).lines().nth(2).unwrap().to_string();
    assert!(title.contains("↻ replayed as #6"), "{title}");
    let mut replay = summary(7, "POST", "/hooks/stripe", Some(200));
    replay.replay_of = Some(1);
    feed(&mut app, vec![replay]);
    let title = screen(&app).lines().nth(2).unwrap().to_string();
    assert!(title.contains("↻ replayed as #7 #6"), "{title}");
}

/// The inspector shows times in UTC, as the log line and `requests list`
/// do: the details say so with a `Z`; another zone would show its offset.
#[test]
fn detail_times_in_utc_end_with_z() {
    use chrono::Offset;
    let ex = exchange(6, "application/json", b"{}");
    let text = |tz| {
        crate::inspect::detail::detail_lines(&ex, &Theme::PLAIN, tz)
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let utc = text(chrono::Utc.fix());
    assert!(utc.contains("2026-11-23 10:00:42.000Z"), "{utc}");
    let cet = text(tz());
    assert!(cet.contains("2026-11-23 11:00:42.000 +01:00"), "{cet}");
}
