//! Behaviour of `update`: navigation, follow-newest, detail loading, replay,
//! filter, help, quit and edit-then-replay.

use crossterm::event::KeyCode;

use super::fixtures::*;
use crate::agent::ConnectionStatus;
use crate::capture::{CaptureEvent, ReplayRequest};
use crate::inspect::state::{matches, update, Editor, Effect, Level, Msg, RowKey, View};

fn selected_id(app: &crate::inspect::App) -> Option<i64> {
    match app.selected? {
        RowKey::Stored(id) => Some(id),
        RowKey::NotStored(_) | RowKey::Live(_) => None,
    }
}

#[test]
fn list_is_newest_first_and_selection_starts_on_newest() {
    let mut app = app();
    feed(&mut app, mixed());
    let ids: Vec<i64> = app
        .visible
        .iter()
        .map(|&i| app.rows[i].summary.id)
        .collect();
    assert_eq!(ids, vec![6, 5, 4, 3, 2, 1]);
    assert_eq!(selected_id(&app), Some(6));
    assert!(app.follow);
}

#[test]
fn navigation_with_jk_and_arrows_stays_in_bounds() {
    let mut app = app();
    feed(&mut app, mixed());
    update(&mut app, ch('k'));
    update(&mut app, key(KeyCode::Up));
    assert_eq!(selected_id(&app), Some(6), "k at the top stays on top");
    update(&mut app, ch('j'));
    assert_eq!(selected_id(&app), Some(5));
    update(&mut app, key(KeyCode::Down));
    assert_eq!(selected_id(&app), Some(4));
    for _ in 0..10 {
        update(&mut app, ch('j'));
    }
    assert_eq!(
        selected_id(&app),
        Some(1),
        "j at the bottom stays on the last row"
    );
    update(&mut app, key(KeyCode::Up));
    assert_eq!(selected_id(&app), Some(2));
    update(&mut app, ch('g'));
    assert_eq!(selected_id(&app), Some(6));
    update(&mut app, ch('G'));
    assert_eq!(selected_id(&app), Some(1));
}

#[test]
fn navigation_on_empty_list_is_harmless() {
    let mut app = app();
    for m in [ch('j'), ch('k'), ch('G'), key(KeyCode::PageDown)] {
        assert!(update(&mut app, m).is_empty());
    }
    assert_eq!(app.selected, None);
    assert!(update(&mut app, key(KeyCode::Enter)).is_empty());
    assert!(update(&mut app, ch('r')).is_empty());
}

#[test]
fn follows_new_arrivals_while_on_top() {
    let mut app = app();
    feed(&mut app, mixed());
    feed(&mut app, vec![summary(7, "POST", "/new", Some(201))]);
    assert_eq!(selected_id(&app), Some(7));
    assert!(app.follow);
}

#[test]
fn keeps_the_same_exchange_selected_after_moving_off_top() {
    let mut app = app();
    feed(&mut app, mixed());
    update(&mut app, ch('j'));
    update(&mut app, ch('j'));
    assert_eq!(selected_id(&app), Some(4));
    feed(
        &mut app,
        vec![
            summary(7, "POST", "/new", Some(201)),
            summary(8, "POST", "/new", Some(201)),
        ],
    );
    assert_eq!(selected_id(&app), Some(4));
    assert!(!app.follow);
    assert_eq!(app.selected_index(), Some(4));
    // Back on top, following resumes.
    update(&mut app, ch('g'));
    feed(&mut app, vec![summary(9, "POST", "/new", Some(201))]);
    assert_eq!(selected_id(&app), Some(9));
}

#[test]
fn scroll_offset_keeps_selection_visible() {
    let mut app = app_with(crate::inspect::Theme::COLOR, 80, 10); // 6 body rows
    feed(
        &mut app,
        (1..=20)
            .map(|i| summary(i, "POST", "/x", Some(200)))
            .collect(),
    );
    for _ in 0..8 {
        update(&mut app, ch('j'));
    }
    assert_eq!(app.selected_index(), Some(8));
    assert_eq!(app.offset, 3);
    update(&mut app, key(KeyCode::PageDown));
    assert_eq!(app.selected_index(), Some(14));
    assert!(app.offset <= 14 && 14 < app.offset + 6);
}

#[test]
fn enter_loads_detail_once_and_esc_goes_back() {
    let mut app = app();
    feed(&mut app, mixed());
    update(&mut app, ch('j'));
    let fx = update(&mut app, key(KeyCode::Enter));
    assert_eq!(fx, vec![Effect::LoadDetail(5)]);
    assert_eq!(app.view, View::Detail);
    assert!(app.detail.as_ref().unwrap().parts.is_none());

    let fx = update(
        &mut app,
        Msg::DetailLoaded(Box::new(exchange(5, "application/json", JSON_BODY))),
    );
    assert!(fx.is_empty());
    let parts = app.detail.as_ref().unwrap().parts.as_ref().unwrap();
    assert!(parts
        .request
        .iter()
        .any(|l| l.to_string().contains("\"livemode\": false")));

    update(&mut app, key(KeyCode::Esc));
    assert_eq!(app.view, View::List);
    // Cached: no second store read.
    assert!(update(&mut app, key(KeyCode::Enter)).is_empty());
    assert_eq!(app.view, View::Detail);
    update(&mut app, key(KeyCode::Backspace));
    assert_eq!(app.view, View::List);
    update(&mut app, key(KeyCode::Enter));
    update(&mut app, key(KeyCode::Left));
    assert_eq!(app.view, View::List);
}

#[test]
fn detail_load_failure_is_shown() {
    let mut app = app();
    feed(&mut app, mixed());
    update(&mut app, key(KeyCode::Enter));
    update(
        &mut app,
        Msg::DetailFailed {
            id: 6,
            error: "gone".into(),
        },
    );
    assert_eq!(app.detail.as_ref().unwrap().error.as_deref(), Some("gone"));
}

#[test]
fn detail_scroll_is_bounded() {
    let mut app = app();
    feed(&mut app, mixed());
    update(&mut app, key(KeyCode::Enter));
    update(
        &mut app,
        Msg::DetailLoaded(Box::new(exchange(6, "application/json", JSON_BODY))),
    );
    update(&mut app, ch('k'));
    assert_eq!(app.detail.as_ref().unwrap().scroll, 0);
    update(&mut app, ch('j'));
    assert_eq!(app.detail.as_ref().unwrap().scroll, 1);
    for _ in 0..200 {
        update(&mut app, ch('j'));
    }
    let max = app.detail.as_ref().unwrap().scroll;
    assert!(max > 1 && max < 200, "scroll stops at the end, got {max}");
    update(&mut app, key(KeyCode::PageUp));
    assert_eq!(app.detail.as_ref().unwrap().scroll, max.saturating_sub(20));
    update(&mut app, ch('g'));
    assert_eq!(app.detail.as_ref().unwrap().scroll, 0);
}

#[test]
fn r_replays_the_selected_exchange() {
    let mut app = app();
    feed(&mut app, mixed());
    update(&mut app, ch('j'));
    update(&mut app, ch('j'));
    let fx = update(&mut app, ch('r'));
    assert_eq!(
        fx,
        vec![Effect::Replay(ReplayRequest { id: 4, edit: None })]
    );
    assert!(app.notice.as_ref().unwrap().text.contains("#4"));
    // From the detail view, the shown exchange is replayed.
    update(&mut app, key(KeyCode::Enter));
    let fx = update(&mut app, ch('r'));
    assert_eq!(
        fx,
        vec![Effect::Replay(ReplayRequest { id: 4, edit: None })]
    );
}

#[test]
fn replay_failure_becomes_an_error_notice() {
    let mut app = app();
    update(
        &mut app,
        Msg::ReplayFailed {
            id: 3,
            error: "queue full".into(),
        },
    );
    let n = app.notice.as_ref().unwrap();
    assert_eq!(n.level, Level::Error);
    assert!(n.text.contains("#3") && n.text.contains("queue full"));
}

#[test]
fn q_quits_from_list_and_detail_and_ctrl_c_always() {
    let mut app = app();
    feed(&mut app, mixed());
    assert_eq!(update(&mut app, ch('q')), vec![Effect::Quit]);
    update(&mut app, key(KeyCode::Enter));
    assert_eq!(update(&mut app, ch('q')), vec![Effect::Quit]);
    update(&mut app, key(KeyCode::Esc));
    update(&mut app, ch('/'));
    assert_eq!(update(&mut app, ctrl('c')), vec![Effect::Quit]);
}

#[test]
fn q_typed_in_filter_prompt_is_text() {
    let mut app = app();
    feed(&mut app, mixed());
    update(&mut app, ch('/'));
    let fx = type_str(&mut app, "q");
    assert!(fx.is_empty());
    assert_eq!(app.filter_draft.as_deref(), Some("q"));
}

#[test]
fn filter_typing_previews_enter_applies_esc_cancels() {
    let mut app = app();
    feed(&mut app, mixed());
    update(&mut app, ch('/'));
    type_str(&mut app, "5xx");
    assert_eq!(app.visible.len(), 1, "preview while typing");
    update(&mut app, key(KeyCode::Enter));
    assert_eq!(app.filter, "5xx");
    assert_eq!(app.filter_draft, None);
    assert_eq!(selected_id(&app), Some(4));

    // A cancelled edit keeps the applied filter.
    update(&mut app, ch('/'));
    update(&mut app, key(KeyCode::Backspace));
    type_str(&mut app, "zz");
    update(&mut app, key(KeyCode::Esc));
    assert_eq!(app.filter, "5xx");
    assert_eq!(app.visible.len(), 1);

    // Esc in the list clears it.
    update(&mut app, key(KeyCode::Esc));
    assert_eq!(app.filter, "");
    assert_eq!(app.visible.len(), 6);
}

#[test]
fn filter_applies_to_new_arrivals() {
    let mut app = app();
    feed(&mut app, mixed());
    update(&mut app, ch('/'));
    type_str(&mut app, "stripe");
    update(&mut app, key(KeyCode::Enter));
    assert_eq!(app.visible.len(), 3);
    feed(
        &mut app,
        vec![summary(7, "POST", "/hooks/github", Some(200))],
    );
    assert_eq!(app.visible.len(), 3);
    feed(
        &mut app,
        vec![summary(8, "POST", "/hooks/stripe", Some(200))],
    );
    assert_eq!(app.visible.len(), 4);
    assert_eq!(selected_id(&app), Some(8));
}

#[test]
fn filter_terms_match_path_method_status_event_id_and_errors() {
    let rows = {
        let mut app = app();
        feed(&mut app, mixed());
        app.rows
    };
    let ids = |f: &str| -> Vec<i64> {
        rows.iter()
            .filter(|r| matches(f, r))
            .map(|r| r.summary.id)
            .collect()
    };
    assert_eq!(ids("github"), vec![2]);
    assert_eq!(ids("GET"), vec![3]);
    assert_eq!(ids("404"), vec![2]);
    assert_eq!(ids("2xx"), vec![6, 1]);
    assert_eq!(ids("3XX"), vec![3]);
    assert_eq!(ids("invoice"), vec![6, 1]);
    assert_eq!(ids("customer.created"), vec![4]);
    assert_eq!(ids("err"), vec![5]);
    assert_eq!(ids("#3"), vec![3]);
    assert_eq!(ids("post stripe 5xx"), vec![4], "terms are ANDed");
    assert_eq!(ids("key=abc"), vec![2], "query string is searchable");
    assert_eq!(ids(""), vec![6, 5, 4, 3, 2, 1]);
    assert!(ids("nothing-like-this").is_empty());
}

#[test]
fn help_toggles_and_any_key_closes_it() {
    let mut app = app();
    feed(&mut app, mixed());
    update(&mut app, ch('?'));
    assert!(app.help);
    update(&mut app, ch('j'));
    assert!(!app.help);
    assert_eq!(
        selected_id(&app),
        Some(6),
        "the closing key is not also a move"
    );
    update(&mut app, ch('?'));
    update(&mut app, ch('?'));
    assert!(!app.help);
    update(&mut app, ch('?'));
    assert_eq!(update(&mut app, ch('q')), vec![Effect::Quit]);
}

#[test]
fn not_stored_exchange_shows_marker_and_notice_but_cannot_be_replayed() {
    let mut app = app();
    feed(&mut app, mixed());
    let mut s = summary(0, "POST", "/hooks/burst", Some(200));
    s.received_at = at(100);
    update(
        &mut app,
        Msg::Captured(CaptureEvent::NotStored {
            summary: s,
            reason: "queue full".into(),
        }),
    );
    assert_eq!(app.not_stored, 1);
    assert!(app.rows[0].not_stored.is_some());
    assert!(matches!(app.selected, Some(RowKey::NotStored(_))));
    let n = app.notice.as_ref().unwrap();
    assert_eq!(n.level, Level::Warn);
    assert!(n.text.contains("could not keep up"));
    assert!(update(&mut app, ch('r')).is_empty());
    assert!(update(&mut app, key(KeyCode::Enter)).is_empty());
    assert_eq!(app.view, View::List);
    assert!(app.notice.as_ref().unwrap().text.contains("not stored"));
}

#[test]
fn lagged_reloads_and_reload_keeps_selection_and_unstored_rows() {
    let mut app = app();
    feed(&mut app, mixed());
    update(
        &mut app,
        Msg::Captured(CaptureEvent::NotStored {
            summary: {
                let mut s = summary(0, "POST", "/x", Some(200));
                s.received_at = at(30);
                s
            },
            reason: "full".into(),
        }),
    );
    update(&mut app, ch('j'));
    update(&mut app, ch('j'));
    assert_eq!(selected_id(&app), Some(5));
    assert_eq!(update(&mut app, Msg::Lagged(12)), vec![Effect::Reload]);
    let mut list: Vec<_> = mixed();
    list.push(summary(7, "POST", "/missed", Some(200)));
    list.reverse();
    update(&mut app, Msg::Reloaded(list));
    assert_eq!(app.rows.len(), 8);
    assert_eq!(selected_id(&app), Some(5));
    // The unstored row (received at +30s) sits between #4 (+28s) and #5 (+35s).
    let order: Vec<String> = app
        .rows
        .iter()
        .map(|r| match r.key {
            RowKey::Stored(id) => id.to_string(),
            RowKey::NotStored(_) => "!".into(),
            RowKey::Live(n) => format!("~{n}"),
        })
        .collect();
    assert_eq!(order, vec!["7", "6", "5", "!", "4", "3", "2", "1"]);
}

#[test]
fn status_and_tick_update_state_and_expire_notices() {
    let mut app = app();
    update(
        &mut app,
        Msg::Status(ConnectionStatus::Refused {
            reason: "bad token".into(),
        }),
    );
    assert!(matches!(app.status, ConnectionStatus::Refused { .. }));
    update(&mut app, ch('r')); // nothing selected: no notice
    update(&mut app, Msg::Lagged(1));
    assert!(app.notice.is_some());
    let later = app.now + std::time::Duration::from_secs(60);
    update(&mut app, Msg::Tick(later));
    assert!(app.notice.is_none());
}

fn open_editor_for(app: &mut crate::inspect::App, body: &[u8]) {
    feed(app, mixed());
    let fx = update(app, ch('e'));
    assert_eq!(
        fx,
        vec![Effect::LoadDetail(6)],
        "needs the full request first"
    );
    assert_eq!(app.view, View::List);
    update(
        app,
        Msg::DetailLoaded(Box::new(exchange(6, "application/json", body))),
    );
    assert_eq!(app.view, View::Edit);
}

#[test]
fn edit_prefills_request_text_and_ctrl_s_replays_edit() {
    let mut app = app();
    open_editor_for(&mut app, br#"{"a":1}"#);
    let Some(Editor::Text { textarea, .. }) = &app.editor else {
        panic!("text editor expected");
    };
    assert_eq!(
        textarea.lines(),
        [
            "POST /hooks/stripe?key=abc",
            "Content-Type: application/json",
            "Stripe-Signature: t=1700000000,v1=5257a869",
            "",
            r#"{"a":1}"#,
        ]
    );
    // q is text in the editor.
    for _ in 0..10 {
        update(&mut app, key(KeyCode::Down));
    }
    update(&mut app, key(KeyCode::End));
    assert!(type_str(&mut app, "q").is_empty());
    let fx = update(&mut app, ctrl('s'));
    assert_eq!(app.view, View::List);
    let [Effect::Replay(ReplayRequest {
        id: 6,
        edit: Some(edit),
    })] = fx.as_slice()
    else {
        panic!("expected an edited replay, got {fx:?}");
    };
    assert_eq!(edit.method, "POST");
    assert_eq!(edit.path, "/hooks/stripe?key=abc");
    assert_eq!(edit.headers.len(), 2);
    assert_eq!(&edit.body[..], br#"{"a":1}q"#);
}

#[test]
fn edit_parse_error_is_shown_inline_and_nothing_is_sent() {
    let mut app = app();
    open_editor_for(&mut app, b"hello");
    assert_eq!(update(&mut app, ctrl('s')).len(), 1, "valid as is: sends");
    assert!(
        update(&mut app, ch('e')).is_empty(),
        "cached now: opens at once"
    );
    assert_eq!(app.view, View::Edit);
    // Delete the method and the slash of the path on line 1.
    for _ in 0..5 {
        update(&mut app, key(KeyCode::Delete));
    }
    let fx = update(&mut app, key(KeyCode::F(2)));
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(app.view, View::Edit);
    let Some(Editor::Text { error, .. }) = &app.editor else {
        panic!("text editor expected");
    };
    assert!(error.as_deref().unwrap().contains("line 1"), "{error:?}");
    // Esc cancels without sending.
    assert!(update(&mut app, key(KeyCode::Esc)).is_empty());
    assert_eq!(app.view, View::List);
    assert!(app.editor.is_none());
}

#[test]
fn binary_body_cannot_be_edited_but_can_be_replayed_as_is() {
    let mut app = app();
    open_editor_for(&mut app, b"\x00\x01\x02\xff");
    assert!(matches!(
        app.editor,
        Some(Editor::Binary { id: 6, len: 4, .. })
    ));
    let fx = update(&mut app, ch('r'));
    assert_eq!(
        fx,
        vec![Effect::Replay(ReplayRequest { id: 6, edit: None })]
    );
    assert_eq!(app.view, View::List);
}

#[test]
fn edit_from_detail_returns_to_detail() {
    let mut app = app();
    feed(&mut app, mixed());
    update(&mut app, key(KeyCode::Enter));
    update(
        &mut app,
        Msg::DetailLoaded(Box::new(exchange(6, "application/json", b"{}"))),
    );
    assert!(update(&mut app, ch('e')).is_empty());
    assert_eq!(app.view, View::Edit);
    update(&mut app, key(KeyCode::Esc));
    assert_eq!(app.view, View::Detail);
}

#[test]
fn incremental_arrivals_agree_with_a_full_refilter() {
    let mut app = app();
    update(&mut app, ch('/'));
    type_str(&mut app, "5xx");
    update(&mut app, key(KeyCode::Enter));
    update(&mut app, ch('j'));
    for i in 1..=60 {
        let status = [200, 500, 404, 503][i as usize % 4];
        feed(&mut app, vec![summary(i, "POST", "/x", Some(status))]);
    }
    let full: Vec<usize> = (0..app.rows.len())
        .filter(|&i| matches(&app.filter, &app.rows[i]))
        .collect();
    assert_eq!(app.visible, full);
    assert_eq!(app.visible.len(), 30);
}

#[test]
fn list_is_bounded_and_selection_survives_truncation() {
    use crate::inspect::state::MAX_ROWS;
    let mut app = app();
    let n = MAX_ROWS as i64 + 5;
    feed(
        &mut app,
        (1..=n)
            .map(|i| summary(i, "POST", "/x", Some(200)))
            .collect(),
    );
    assert_eq!(app.rows.len(), MAX_ROWS);
    assert_eq!(app.visible.len(), MAX_ROWS);
    assert_eq!(
        app.rows.back().unwrap().summary.id,
        6,
        "oldest dropped first"
    );
    assert!(app.visible.iter().all(|&i| i < MAX_ROWS));
    // Selecting the oldest row, then pushing it out: selection falls back to
    // the newest and following resumes.
    update(&mut app, ch('G'));
    assert_eq!(selected_id(&app), Some(6));
    assert!(!app.follow);
    feed(&mut app, vec![summary(n + 1, "POST", "/x", Some(200))]);
    assert_eq!(selected_id(&app), Some(n + 1));
    assert!(app.follow);
}

#[test]
fn n_and_p_step_through_exchanges_in_detail() {
    let mut app = app();
    feed(&mut app, mixed());
    update(&mut app, ch('j')); // #5
    update(&mut app, key(KeyCode::Enter));
    // A new arrival while reading does not change what n/p step from.
    feed(&mut app, vec![summary(7, "POST", "/new", Some(200))]);
    assert_eq!(update(&mut app, ch('n')), vec![Effect::LoadDetail(4)]);
    assert_eq!(app.detail.as_ref().unwrap().id, 4);
    assert_eq!(selected_id(&app), Some(4), "the list selection follows");
    assert_eq!(update(&mut app, ch('p')), vec![Effect::LoadDetail(5)]);
    update(&mut app, ch('p'));
    update(&mut app, ch('p'));
    assert_eq!(app.detail.as_ref().unwrap().id, 7);
    assert!(
        update(&mut app, ch('p')).is_empty(),
        "no row before the newest"
    );
    assert_eq!(app.detail.as_ref().unwrap().id, 7);
    assert_eq!(app.view, View::Detail);
}

#[test]
fn crlf_bodies_are_edited_as_lines_and_sent_with_crlf() {
    let mut app = app();
    let body = b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--b--\r\n";
    open_editor_for(&mut app, body);
    let Some(Editor::Text { textarea, .. }) = &app.editor else {
        panic!("text editor expected");
    };
    assert!(textarea.lines().iter().all(|l| !l.contains('\r')));
    let fx = update(&mut app, ctrl('s'));
    let [Effect::Replay(ReplayRequest {
        edit: Some(edit), ..
    })] = fx.as_slice()
    else {
        panic!("expected an edited replay, got {fx:?}");
    };
    assert_eq!(
        &edit.body[..],
        &body[..],
        "unchanged text round-trips byte for byte"
    );
}

#[test]
fn ctrl_s_on_an_unchanged_body_with_mixed_line_ends_sends_the_identical_bytes() {
    let mut app = app();
    // LF and CRLF lines mixed, as in the report (191 bytes, not 198).
    let body: &[u8] = b"{\n  \"id\": \"evt_1\",\r\n  \"type\": \"charge.succeeded\",\n  \"data\": {\r\n    \"object\": {\"amount\": 4200, \"currency\": \"eur\"},\n    \"note\": \"line one\\nline two\"\r\n  },\n  \"livemode\": false\r\n}\n";
    open_editor_for(&mut app, body);
    let fx = update(&mut app, ctrl('s'));
    let [Effect::Replay(ReplayRequest {
        edit: Some(edit), ..
    })] = fx.as_slice()
    else {
        panic!("expected an edited replay, got {fx:?}");
    };
    assert_eq!(edit.body.len(), body.len());
    assert_eq!(&edit.body[..], body, "identical bytes");

    // One changed value: only its bytes change, every line end stays.
    update(&mut app, ch('e'));
    if let Some(Editor::Text { textarea, .. }) = app.editor.as_mut() {
        let mut lines = textarea.lines().to_vec();
        let i = lines.iter().position(|l| l.contains("4200")).unwrap();
        lines[i] = lines[i].replace("4200", "4300");
        **textarea = ratatui_textarea::TextArea::new(lines);
    }
    let fx = update(&mut app, ctrl('s'));
    let [Effect::Replay(ReplayRequest {
        edit: Some(edit), ..
    })] = fx.as_slice()
    else {
        panic!("expected an edited replay, got {fx:?}");
    };
    let want = String::from_utf8(body.to_vec())
        .unwrap()
        .replace("4200", "4300");
    assert_eq!(String::from_utf8_lossy(&edit.body), want);
}

#[test]
fn pretty_print_for_editing_is_explicit_and_signed_requests_say_so() {
    let mut app = app();
    open_editor_for(
        &mut app,
        br#"{"type":"invoice.paid","data":{"amount":4200}}"#,
    );
    let Some(Editor::Text { signed, .. }) = &app.editor else {
        panic!("text editor expected");
    };
    assert_eq!(signed.as_deref(), Some("Stripe-Signature"));
    update(&mut app, key(KeyCode::F(3)));
    let n = app.notice.clone().unwrap();
    assert!(
        n.text
            .contains("pretty-printed for editing: its bytes change"),
        "{}",
        n.text
    );
    let Some(Editor::Text { textarea, .. }) = &app.editor else {
        panic!("text editor expected");
    };
    assert!(textarea
        .lines()
        .contains(&"  \"type\": \"invoice.paid\",".to_string()));
    let fx = update(&mut app, ctrl('s'));
    let [Effect::Replay(ReplayRequest {
        edit: Some(edit), ..
    })] = fx.as_slice()
    else {
        panic!("expected an edited replay, got {fx:?}");
    };
    assert!(edit.body.starts_with(b"{\n  \"type\""));
}

#[test]
fn detail_cache_is_bounded_by_count_and_bytes() {
    let mut app = app();
    for id in 1..=40 {
        update(
            &mut app,
            Msg::DetailLoaded(Box::new(exchange(id, "text/plain", b"x"))),
        );
    }
    assert_eq!(app.cache.len(), 32);
    assert!(!app.cache.contains_key(&1) && app.cache.contains_key(&40));
    let big = vec![b'a'; 20 << 20];
    update(
        &mut app,
        Msg::DetailLoaded(Box::new(exchange(41, "text/plain", &big))),
    );
    update(
        &mut app,
        Msg::DetailLoaded(Box::new(exchange(42, "text/plain", &big))),
    );
    assert!(app.cache.contains_key(&42));
    assert!(
        !app.cache.contains_key(&41),
        "over the byte budget: oldest evicted"
    );
}
