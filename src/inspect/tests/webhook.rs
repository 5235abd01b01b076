//! Issue #13 in the inspector: the signature column (glyph at 80 columns,
//! provider when wide), the `sig:` and `provider:` filter terms, the
//! verdict's reason and the timeout-budget meter in the details, the `!` and
//! `⌛` marks in the list, and retries grouped under their first attempt.
//! Snapshots at 80×24 and 160×40.

use crossterm::event::KeyCode;

use super::fixtures::*;
use super::render::{connected, render, screen, text};
use crate::capture::{ExchangeSummary, SignatureCheck, WebhookInfo};
use crate::inspect::state::{matches, update, App, Level, Msg, RowKey};
use crate::inspect::Theme;
use crate::verify::Verdict;

fn signed(
    id: i64,
    provider: &str,
    verdict: Option<Verdict>,
    delivery: &str,
    ms: f64,
) -> ExchangeSummary {
    let mut s = summary(id, "POST", &format!("/hooks/{provider}"), Some(200));
    s.provider = Some(provider.into());
    s.signature = verdict;
    s.delivery_id = (!delivery.is_empty()).then(|| delivery.into());
    s.duration_ms = ms;
    s
}

/// Oldest first: every verdict, an unknown sender, a Shopify delivery that
/// used 90 % of its 5 s, one that used 140 % (and was retried twice), and
/// a replay of the first attempt (ours, not a retry).
fn webhooks() -> Vec<ExchangeSummary> {
    let mut v = vec![
        signed(1, "shopify", Some(Verdict::Valid), "d-slow", 7000.0),
        signed(2, "stripe", Some(Verdict::Invalid), "evt_2", 40.0),
        signed(3, "github", Some(Verdict::Unsigned), "", 30.0),
        signed(4, "shopify", Some(Verdict::Valid), "d-slow", 350.0),
        signed(5, "svix", Some(Verdict::Unchecked), "msg_5", 20.0),
        signed(6, "shopify", Some(Verdict::Valid), "d-near", 4500.0),
        summary(7, "POST", "/plain", Some(200)),
        signed(8, "shopify", Some(Verdict::Valid), "d-slow", 90.0),
        signed(9, "shopify", Some(Verdict::Valid), "d-slow", 80.0),
    ];
    v[1].status = Some(401);
    v[8].replay_of = Some(1);
    v
}

fn webhook_app(w: u16, h: u16) -> App {
    let mut app = app_with(Theme::COLOR, w, h);
    connected(&mut app);
    feed(&mut app, webhooks());
    app
}

fn row_of<'a>(s: &'a str, id: &str) -> &'a str {
    s.lines()
        .find(|l| l.split_whitespace().any(|w| w == id))
        .unwrap_or_else(|| panic!("no row {id} in\n{s}"))
}

fn shown_ids(app: &App) -> Vec<RowKey> {
    app.visible.iter().map(|&i| app.rows[i].key).collect()
}

#[test]
fn the_list_shows_verdict_glyphs_budget_marks_and_grouped_retries() {
    for (w, h) in [(80, 24), (160, 40)] {
        let app = webhook_app(w, h);
        let s = screen(&app);
        insta::assert_snapshot!(format!("webhook_list_{w}x{h}"), s);
        assert!(row_of(&s, "#2").contains('✗'), "{s}");
        assert!(row_of(&s, "#3").contains('–'), "{s}");
        assert!(row_of(&s, "#5").contains('?'), "{s}");
        assert!(row_of(&s, "#4").contains('✓'), "{s}");
        let plain = row_of(&s, "#7");
        assert!(!plain.contains(['✓', '✗', '–', '?', '!', '⌛']), "{plain}");
        // 7 s of Shopify's 5 s; 4.5 s of 5 s; 350 ms.
        assert!(row_of(&s, "#1").contains('⌛'), "{s}");
        assert!(row_of(&s, "#6").contains(" ! "), "{s}");
        assert!(!row_of(&s, "#4").contains(['!', '⌛']), "{s}");
        // Retries right below their first attempt, numbered; the replay
        // (#9) is not a retry and stays at the top.
        assert!(row_of(&s, "#4").contains("↳ retry 2"), "{s}");
        assert!(row_of(&s, "#8").contains("↳ retry 3"), "{s}");
        assert!(!row_of(&s, "#9").contains("retry"), "{s}");
        assert_eq!(
            shown_ids(&app),
            [9, 7, 6, 5, 3, 2, 1, 4, 8].map(RowKey::Stored).to_vec()
        );
        if w >= 120 {
            assert!(s.contains("SIGNATURE"), "{s}");
            assert!(row_of(&s, "#2").contains("✗ stripe"), "{s}");
            assert!(row_of(&s, "#5").contains("? svix"), "{s}");
        } else {
            assert!(!s.contains("stripe "), "no provider names at 80: {s}");
        }
    }
}

#[test]
fn colours_follow_the_verdict_and_the_mark() {
    use ratatui::style::Color;
    let app = webhook_app(80, 24);
    let buf = render(&app);
    let s = text(&buf);
    let cell_of = |glyph: &str, id: &str| {
        let y = s.lines().position(|l| l == row_of(&s, id)).unwrap() as u16;
        (0..buf.area.width)
            .map(|x| buf[(x, y)].clone())
            .find(|c| c.symbol() == glyph)
            .unwrap()
    };
    assert_eq!(cell_of("✗", "#2").fg, Color::Red);
    assert_eq!(cell_of("✓", "#4").fg, Color::Green);
    assert_eq!(cell_of("⌛", "#1").fg, Color::Red);
    assert_eq!(cell_of("!", "#6").fg, Color::Yellow);
}

#[test]
fn an_exchange_past_its_senders_timeout_says_the_sender_gave_up() {
    for (w, h) in [(80, 24), (160, 40)] {
        let mut app = webhook_app(w, h);
        let at = app
            .visible
            .iter()
            .position(|&i| app.rows[i].key == RowKey::Stored(1));
        for _ in 0..at.unwrap() {
            update(&mut app, ch('j'));
        }
        assert_eq!(app.selected, Some(RowKey::Stored(1)));
        let s = screen(&app);
        let footer = s.lines().last().unwrap();
        assert!(
            footer.contains("past shopify's 5s timeout: the sender gave up on this one"),
            "{footer}"
        );
        insta::assert_snapshot!(format!("webhook_gave_up_footer_{w}x{h}"), s);
    }
}

#[test]
fn a_new_retry_goes_under_its_first_attempt_and_incremental_agrees_with_full() {
    let mut app = webhook_app(80, 24);
    feed(
        &mut app,
        vec![
            signed(10, "stripe", Some(Verdict::Valid), "evt_2", 12.0),
            signed(11, "klavi", None, "k-1", 12.0),
        ],
    );
    assert_eq!(app.attempts.get(&RowKey::Stored(10)), Some(&2));
    assert_eq!(app.attempts.get(&RowKey::Stored(11)), None);
    let ids = shown_ids(&app);
    let first = ids.iter().position(|&k| k == RowKey::Stored(2)).unwrap();
    assert_eq!(ids[first + 1], RowKey::Stored(10), "{ids:?}");
    assert_eq!(ids[0], RowKey::Stored(11), "a new delivery is on top");
    let incremental = app.visible.clone();
    update(&mut app, ch('/'));
    update(&mut app, key(KeyCode::Enter));
    assert_eq!(app.visible, incremental);
    // A filter that hides the first attempt leaves the retries together.
    update(&mut app, ch('/'));
    type_str(&mut app, "provider:shopify");
    update(&mut app, key(KeyCode::Enter));
    let s = screen(&app);
    assert!(row_of(&s, "#4").contains("↳ retry 2"), "{s}");
}

#[test]
fn sig_and_provider_filter_terms() {
    let mut app = webhook_app(80, 24);
    let only = |app: &App| shown_ids(app);
    update(&mut app, ch('/'));
    type_str(&mut app, "sig:invalid");
    update(&mut app, key(KeyCode::Enter));
    assert_eq!(only(&app), vec![RowKey::Stored(2)]);
    update(&mut app, key(KeyCode::Esc));
    update(&mut app, ch('/'));
    type_str(&mut app, "SIG:Unchecked");
    update(&mut app, key(KeyCode::Enter));
    assert_eq!(only(&app), vec![RowKey::Stored(5)]);
    update(&mut app, key(KeyCode::Esc));
    update(&mut app, ch('/'));
    type_str(&mut app, "provider:stripe");
    update(&mut app, key(KeyCode::Enter));
    assert_eq!(only(&app), vec![RowKey::Stored(2)]);
    update(&mut app, key(KeyCode::Esc));
    update(&mut app, ch('/'));
    type_str(&mut app, "sig:valid provider:shopify");
    update(&mut app, key(KeyCode::Enter));
    assert_eq!(
        only(&app),
        [9, 6, 1, 4, 8].map(RowKey::Stored).to_vec(),
        "all Shopify rows, retries grouped"
    );
    // Plain text also finds the provider.
    let row = app
        .rows
        .iter()
        .find(|r| r.key == RowKey::Stored(5))
        .unwrap();
    assert!(matches("svix", row) && !matches("sig:valid", row));
    // A verdict that does not exist: nothing matches, and the user is told.
    update(&mut app, key(KeyCode::Esc));
    update(&mut app, ch('/'));
    type_str(&mut app, "sig:bogus");
    update(&mut app, key(KeyCode::Enter));
    assert!(app.visible.is_empty());
    let n = app.notice.clone().unwrap();
    assert_eq!(n.level, Level::Warn);
    assert_eq!(
        n.text,
        "sig:bogus matches nothing: verdicts are valid, invalid, unsigned, unchecked"
    );
}

fn detail_app(w: u16, h: u16, reason: &str, provider: &str, ms: f64) -> App {
    let mut app = webhook_app(w, h);
    let mut ex = exchange(2, "application/json", JSON_BODY);
    ex.duration_ms = ms;
    ex.response.as_mut().unwrap().status = 401;
    ex.webhook = WebhookInfo {
        provider: Some(provider.into()),
        delivery_id: Some("evt_2".into()),
        signature: Some(SignatureCheck {
            scheme: "v1".into(),
            verdict: Verdict::Invalid,
            reason: Some(reason.into()),
        }),
        sender_timeout_ms: None,
    };
    update(&mut app, Msg::DetailLoaded(Box::new(ex)));
    let at = app
        .visible
        .iter()
        .position(|&i| app.rows[i].key == RowKey::Stored(2));
    for _ in 0..at.unwrap() {
        update(&mut app, ch('j'));
    }
    update(&mut app, key(KeyCode::Enter));
    app
}

#[test]
fn the_details_give_the_reason_and_the_budget_meter_near_the_top() {
    for (w, h) in [(80, 24), (160, 40)] {
        let app = detail_app(
            w,
            h,
            "timestamp 10m02s old, 5m past the tolerance",
            "shopify",
            4100.0,
        );
        let s = screen(&app);
        insta::assert_snapshot!(format!("webhook_detail_{w}x{h}"), s);
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines[4].contains("401 Unauthorized"), "{s}");
        assert!(
            lines[5].starts_with(
                "signature: invalid (shopify, v1): timestamp 10m02s old, 5m past the tolerance"
            ),
            "{s}"
        );
        assert!(
            s.contains("sender timeout 5s (shopify) ▕████████░░▏ 4.1s used (82%)"),
            "{s}"
        );
        assert!(!s.contains("gave up"), "{s}");
    }
}

#[test]
fn the_details_say_when_the_sender_gave_up_and_sanitise_the_reason() {
    let app = detail_app(
        80,
        24,
        "bad \u{1b}]0;PWNED\u{7} header\u{1b}[2K",
        "github",
        12_500.0,
    );
    let buf = render(&app);
    let s = text(&buf);
    insta::assert_snapshot!("webhook_detail_gave_up_80x24", s);
    assert!(s.contains("␛]0;PWNED␇"), "visible, not executed: {s}");
    for cell in buf.content() {
        assert!(!cell.symbol().chars().any(crate::inspect::text::is_unsafe));
    }
    assert!(s.contains("▕██████████▏ 12.5s used (125%)"), "{s}");
    assert!(
        s.contains("the sender gave up on this one and will not retry it"),
        "GitHub does not redeliver on its own: {s}"
    );
}

#[test]
fn a_sender_without_a_known_timeout_gets_no_meter_and_no_mark() {
    // Stripe publishes no timeout; an unknown sender has none either.
    let app = detail_app(80, 24, "signature mismatch", "stripe", 60_000.0);
    let s = screen(&app);
    assert!(!s.contains("sender timeout"), "{s}");
    let mut app = webhook_app(80, 24);
    feed(
        &mut app,
        vec![signed(12, "stripe", Some(Verdict::Valid), "", 60_000.0)],
    );
    let s = screen(&app);
    assert!(!row_of(&s, "#12").contains(['!', '⌛']), "{s}");
}
