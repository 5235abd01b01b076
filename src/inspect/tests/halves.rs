//! Issue #12 item 6 in the details: request and response as tabs when
//! narrow and side by side from 140 columns, the outcome fixed on top, and
//! `R` showing the selected half's exact bytes. Snapshots at 80×24 and
//! 160×40.

use crossterm::event::KeyCode;

use super::fixtures::*;
use super::render::{connected, screen};
use crate::inspect::detail::{raw_lines, Half};
use crate::inspect::state::{update, App, Effect, Msg};
use crate::inspect::Theme;

/// A form body with a CRLF, an LF alone, a tab, an escape and a DEL.
const MIXED: &[u8] = b"a=1\r\nb=\t2\ncolour=\x1b[31mred\x7f\r\n";

fn opened(w: u16, h: u16, ct: &str, req_body: &[u8]) -> App {
    let mut app = app_with(Theme::COLOR, w, h);
    connected(&mut app);
    feed(&mut app, mixed());
    assert_eq!(
        update(&mut app, key(KeyCode::Enter)),
        vec![Effect::LoadDetail(6)]
    );
    update(
        &mut app,
        Msg::DetailLoaded(Box::new(exchange(6, ct, req_body))),
    );
    app
}

#[test]
fn raw_lines_show_every_line_end_tab_and_control() {
    let t = Theme::COLOR;
    let (_, lines) = raw_lines(MIXED, &t);
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    assert_eq!(text, ["a=1␍␊", "b=→2␊", "colour=␛[31mred␡␍␊"]);
    let (_, lines) = raw_lines(b"no end", &t);
    assert_eq!(lines[0].to_string(), "no end");
    let (_, lines) = raw_lines(b"\xff\xfe\r\n", &t);
    assert!(
        lines[0].to_string().starts_with("00000000  ff fe 0d 0a"),
        "{lines:?}"
    );
}

#[test]
fn narrow_shows_tabs_and_tab_switches() {
    let mut app = opened(80, 24, "application/json", JSON_BODY);
    let s = screen(&app);
    insta::assert_snapshot!("tabs_request_80x24", s);
    assert!(s.contains("→ 200 OK"), "outcome on top: {s}");
    assert!(s.contains(" Request   Response "), "{s}");
    assert!(s.contains("REQUEST") && !s.contains("RESPONSE"), "{s}");

    update(&mut app, key(KeyCode::Tab));
    assert_eq!(app.detail.as_ref().unwrap().half, Half::Response);
    let s = screen(&app);
    insta::assert_snapshot!("tabs_response_80x24", s);
    assert!(
        s.contains("RESPONSE 200 OK") && !s.contains("REQUEST"),
        "{s}"
    );
    assert!(s.contains("→ 200 OK"), "the outcome stays: {s}");
    update(&mut app, key(KeyCode::BackTab));
    assert_eq!(app.detail.as_ref().unwrap().half, Half::Request);
}

#[test]
fn wide_shows_both_halves_side_by_side() {
    let app = opened(160, 40, "application/json", JSON_BODY);
    let s = screen(&app);
    insta::assert_snapshot!("side_by_side_160x40", s);
    let both = s
        .lines()
        .find(|l| l.contains("REQUEST"))
        .unwrap_or_default();
    assert!(
        both.contains("RESPONSE 200 OK"),
        "one row, both halves: {s}"
    );
    assert!(s.contains("  \"type\": \"invoice.paid\","), "{s}");
    // 139 columns is still narrow.
    let s = screen(&opened(139, 40, "application/json", JSON_BODY));
    assert!(!s.contains("RESPONSE"), "{s}");
}

#[test]
fn raw_view_shows_exact_bytes_80x24() {
    let mut app = opened(80, 24, "application/x-www-form-urlencoded", MIXED);
    let pretty = screen(&app);
    assert!(!pretty.contains("␍␊"), "{pretty}");
    let fx = update(&mut app, ch('R'));
    assert!(fx.is_empty(), "rebuilt from the cache");
    let s = screen(&app);
    insta::assert_snapshot!("raw_request_80x24", s);
    assert!(s.contains("a=1␍␊\n"), "{s}");
    assert!(s.contains("b=→2␊\n"), "{s}");
    assert!(s.contains("colour=␛[31mred␡␍␊"), "{s}");
    assert!(s.contains("raw bytes"), "{s}");
    // Back to pretty; the raw setting follows `n`/`p` and `Tab`.
    update(&mut app, ch('R'));
    assert_eq!(screen(&app), pretty);
}

#[test]
fn raw_view_beside_the_pretty_one_160x40() {
    let mut app = opened(160, 40, "application/x-www-form-urlencoded", MIXED);
    update(&mut app, key(KeyCode::Tab));
    update(&mut app, ch('R'));
    let s = screen(&app);
    insta::assert_snapshot!("raw_response_160x40", s);
    // The response ("ok", no line end) raw on the right; the request
    // decoded on the left.
    assert!(s.contains("Body (2 B, text, raw bytes)"), "{s}");
    assert!(s.contains("Body (28 B, binary)"), "{s}");
    assert!(!s.contains("a=1␍␊"), "only the selected half is raw: {s}");
}

#[test]
fn raw_view_of_binary_is_a_hex_dump() {
    let mut app = opened(80, 24, "application/json", b"{\"a\":\"\xff\"}\r\n");
    update(&mut app, ch('R'));
    let s = screen(&app);
    assert!(
        s.contains("00000000  7b 22 61 22 3a 22 ff 22  7d 0d 0a"),
        "{s}"
    );
}
