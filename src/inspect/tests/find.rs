//! Issue #12 item 5: search inside the body editor (`Ctrl-F`). Matches are
//! found case-insensitively and literally, highlighted, stepped through in
//! both directions with wrap-around, `Esc` closes the search (and only the
//! search), and the bytes sent afterwards are exactly the captured ones.

use crossterm::event::KeyCode;
use ratatui::style::Color;

use super::fixtures::*;
use super::render::{render, text};
use crate::capture::ReplayRequest;
use crate::inspect::state::{update, App, Editor, Effect, Find, Msg, View};
use crate::inspect::Theme;

/// LF and CRLF lines mixed, "amount" three times (one in capitals, one
/// regex-looking `a.ount` that a pattern search would also match).
const BODY: &[u8] = b"{\n  \"id\": \"evt_1\",\r\n  \"amount\": 4200,\n  \"data\": {\"AMOUNT_due\": 1,\r\n    \"note\": \"a.ount amount\"},\r\n  \"livemode\": false\n}\n";

fn editing(w: u16, h: u16) -> App {
    let mut app = app_with(Theme::COLOR, w, h);
    feed(&mut app, mixed());
    update(&mut app, ch('e'));
    update(
        &mut app,
        Msg::DetailLoaded(Box::new(exchange(6, "application/json", BODY))),
    );
    assert_eq!(app.view, View::Edit);
    app
}

fn find(app: &App) -> (&Find, (usize, usize), Vec<String>) {
    let Some(Editor::Text { find, textarea, .. }) = &app.editor else {
        panic!("text editor expected");
    };
    let c = textarea.cursor();
    (find, (c.0, c.1), textarea.lines().to_vec())
}

#[test]
fn ctrl_f_finds_steps_both_ways_and_wraps() {
    let mut app = editing(80, 24);
    let (_, _, before) = find(&app);
    update(&mut app, ctrl('f'));
    assert!(find(&app).0.open);
    type_str(&mut app, "amount");
    let (f, cursor, lines) = find(&app);
    assert_eq!((f.matches, f.current), (3, Some(1)), "{f:?}");
    // Line 6 of the text: the body's `"amount": 4200` (headers first).
    assert_eq!(lines[cursor.0].find("amount"), Some(cursor.1));
    let first = cursor;
    update(&mut app, key(KeyCode::Enter));
    assert_eq!(
        find(&app).0.current,
        Some(2),
        "case-insensitive: AMOUNT_due"
    );
    update(&mut app, key(KeyCode::Down));
    assert_eq!(find(&app).0.current, Some(3), "literal: not a.ount");
    update(&mut app, key(KeyCode::Enter));
    assert_eq!(find(&app).0.current, Some(1), "wraps to the first");
    assert_eq!(find(&app).1, first);
    update(&mut app, key(KeyCode::Up));
    assert_eq!(find(&app).0.current, Some(3), "and back to the last");
    update(&mut app, ctrl('p'));
    assert_eq!(find(&app).0.current, Some(2));
    update(&mut app, ctrl('n'));
    assert_eq!(find(&app).0.current, Some(3));
    // Typing in the prompt never touches the text.
    assert_eq!(find(&app).2, before);
    type_str(&mut app, "zzz");
    let (f, _, lines) = find(&app);
    assert_eq!((f.matches, f.current), (0, None));
    assert_eq!(lines, before);
    assert!(text(&render(&app)).contains("no match"));
}

#[test]
fn esc_closes_the_search_only_and_the_bytes_sent_are_unchanged() {
    let mut app = editing(80, 24);
    update(&mut app, ctrl('f'));
    type_str(&mut app, "livemode");
    let at = find(&app).1;
    update(&mut app, key(KeyCode::Esc));
    assert_eq!(
        app.view,
        View::Edit,
        "Esc closed the search, not the editor"
    );
    let Some(Editor::Text {
        find: f, textarea, ..
    }) = &app.editor
    else {
        panic!()
    };
    assert!(!f.open);
    assert!(textarea.search_pattern().is_none(), "highlight dropped");
    // The cursor stayed on the match: typing edits there.
    assert_eq!((textarea.cursor().0, textarea.cursor().1), at);
    // Ctrl-F again resumes the last query.
    update(&mut app, ctrl('f'));
    let (f, _, _) = find(&app);
    assert_eq!((f.query.as_str(), f.matches), ("livemode", 1));
    update(&mut app, key(KeyCode::Esc));
    // Sent untouched: the exact captured bytes, CRLFs and all.
    let fx = update(&mut app, ctrl('s'));
    let [Effect::Replay(ReplayRequest {
        id: 6,
        edit: Some(edit),
    })] = fx.as_slice()
    else {
        panic!("expected an edited replay, got {fx:?}");
    };
    assert_eq!(&edit.body[..], BODY);
}

#[test]
fn ctrl_s_sends_while_searching_and_pastes_go_to_the_query() {
    let mut app = editing(80, 24);
    update(&mut app, ctrl('f'));
    update(&mut app, Msg::Paste("evt\r\n".into()));
    let (f, _, _) = find(&app);
    assert_eq!(f.query, "evt  ");
    update(&mut app, key(KeyCode::Backspace));
    update(&mut app, key(KeyCode::Backspace));
    assert_eq!(find(&app).0.matches, 1);
    let fx = update(&mut app, ctrl('s'));
    assert!(matches!(fx.as_slice(), [Effect::Replay(_)]), "{fx:?}");
}

#[test]
fn matches_are_highlighted_and_the_prompt_is_in_the_footer() {
    for (w, h) in [(80u16, 24u16), (160, 40)] {
        let mut app = editing(w, h);
        update(&mut app, ctrl('f'));
        type_str(&mut app, "amount");
        update(&mut app, key(KeyCode::Enter));
        let buf = render(&app);
        let s = text(&buf);
        let footer = s.lines().last().unwrap();
        assert!(footer.starts_with("Find: amount█  2 of 3"), "{footer}");
        // Every character of every match has the search style.
        let lit = (0..buf.area.height)
            .flat_map(|y| (0..buf.area.width).map(move |x| (x, y)))
            .filter(|&(x, y)| buf[(x, y)].bg == Color::Yellow)
            .count();
        // 3 matches × 6 characters, less the one under the cursor (reversed).
        assert!(lit >= 2 * 6, "{lit} highlighted cells\n{s}");
        insta::assert_snapshot!(format!("editor_search_{w}x{h}"), s);
    }
}

#[test]
fn without_colour_matches_are_underlined() {
    let mut app = editing(80, 24);
    app.theme = Theme::PLAIN;
    // The style is set when the editor opens.
    update(&mut app, key(KeyCode::Esc));
    update(&mut app, ch('e'));
    update(&mut app, ctrl('f'));
    type_str(&mut app, "livemode");
    update(&mut app, key(KeyCode::Up));
    let buf = render(&app);
    let underlined = (0..buf.area.height)
        .flat_map(|y| (0..buf.area.width).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            buf[(x, y)]
                .modifier
                .contains(ratatui::style::Modifier::UNDERLINED)
        })
        .count();
    assert!(underlined >= 7, "{underlined}");
    assert!(
        (0..buf.area.height)
            .flat_map(|y| (0..buf.area.width).map(move |x| (x, y)))
            .all(|(x, y)| buf[(x, y)].bg == Color::Reset),
        "NO_COLOR: no background colours"
    );
}
