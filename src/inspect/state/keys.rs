//! What each key does: routes a key press to the open prompt or screen
//! (filter prompt, list, detail, editor) and turns it into state changes
//! and effects.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::{App, Editor, Level, View};
use super::filter::{bad_sig_term, body_term};
use super::update::Effect;
use crate::capture::ReplayRequest;
use crate::inspect::body::pretty_json;
use crate::inspect::edit::{fix_content_length, parse_request_text};
use crate::inspect::theme::Theme;

pub(super) fn is_press(k: &KeyEvent) -> bool {
    k.kind != KeyEventKind::Release
}

pub(super) fn on_key(app: &mut App, key: KeyEvent) -> Vec<Effect> {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    // Raw mode delivers Ctrl-C as a key: it always quits, even mid-edit.
    if ctrl && key.code == KeyCode::Char('c') {
        return vec![Effect::Quit];
    }
    if app.help {
        if key.code == KeyCode::Char('q') {
            return vec![Effect::Quit];
        }
        app.help = false;
        return vec![];
    }
    if app.filter_draft.is_some() {
        return on_filter_key(app, key);
    }
    match app.view {
        View::Edit => on_edit_key(app, key),
        View::Detail => on_detail_key(app, key),
        View::List => on_list_key(app, key),
    }
}

fn on_filter_key(app: &mut App, key: KeyEvent) -> Vec<Effect> {
    let Some(draft) = app.filter_draft.as_mut() else {
        return vec![];
    };
    match key.code {
        KeyCode::Enter => {
            let new = app.filter_draft.take().unwrap_or_default();
            let new = new.trim().to_string();
            let search_again =
                app.body_search.is_none() || body_term(&new) != body_term(&app.filter);
            app.filter = new;
            let fx = if search_again {
                app.start_body_search()
            } else {
                vec![]
            };
            app.refilter();
            if let Some(v) = bad_sig_term(&app.filter) {
                let v = crate::inspect::text::sanitize(v).into_owned();
                app.notify(
                    Level::Warn,
                    format!(
                        "sig:{v} matches nothing: verdicts are valid, invalid, unsigned, unchecked"
                    ),
                );
            }
            return fx;
        }
        KeyCode::Esc => {
            app.filter_draft = None;
        }
        KeyCode::Backspace => {
            draft.pop();
        }
        KeyCode::Char('u') if key.modifiers.contains(KeyModifiers::CONTROL) => draft.clear(),
        KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => draft.push(c),
        // Moving while typing lets the user check the preview.
        KeyCode::Down => app.move_by(1),
        KeyCode::Up => app.move_by(-1),
        _ => return vec![],
    }
    app.refilter();
    vec![]
}

fn on_list_key(app: &mut App, key: KeyEvent) -> Vec<Effect> {
    let page = app.body_rows() as isize;
    match key.code {
        KeyCode::Char('q') => return vec![Effect::Quit],
        KeyCode::Char('j') | KeyCode::Down => app.move_by(1),
        KeyCode::Char('k') | KeyCode::Up => app.move_by(-1),
        KeyCode::PageDown => app.move_by(page),
        KeyCode::PageUp => app.move_by(-page),
        KeyCode::Char('g') | KeyCode::Home => app.select_index(0),
        KeyCode::Char('G') | KeyCode::End => app.select_index(usize::MAX),
        KeyCode::Enter => {
            if let Some(id) = app.target_id() {
                return app.open_detail(id);
            }
        }
        KeyCode::Char('r') => {
            if let Some(id) = app.target_id() {
                return app.replay(id);
            }
        }
        KeyCode::Char('e') => {
            if let Some(id) = app.target_id() {
                return app.start_edit(id);
            }
        }
        KeyCode::Char('/') => {
            app.filter_draft = Some(app.filter.clone());
        }
        KeyCode::Char('?') => app.help = true,
        KeyCode::Esc if !app.filter.is_empty() => {
            app.filter.clear();
            app.body_search = None;
            app.refilter();
        }
        _ => {}
    }
    vec![]
}

fn on_detail_key(app: &mut App, key: KeyEvent) -> Vec<Effect> {
    let page = app.body_rows() as isize;
    match key.code {
        KeyCode::Char('q') => return vec![Effect::Quit],
        KeyCode::Esc | KeyCode::Backspace | KeyCode::Left | KeyCode::Char('h') => {
            app.view = View::List;
        }
        KeyCode::Char('j') | KeyCode::Down => app.scroll_detail(1),
        KeyCode::Char('k') | KeyCode::Up => app.scroll_detail(-1),
        KeyCode::PageDown | KeyCode::Char(' ') => app.scroll_detail(page),
        KeyCode::Char('n') => return app.step_detail(1),
        KeyCode::Char('p') => return app.step_detail(-1),
        KeyCode::Tab | KeyCode::BackTab => return app.switch_half(),
        KeyCode::Char('R') => return app.toggle_raw(),
        KeyCode::PageUp => app.scroll_detail(-page),
        KeyCode::Char('g') | KeyCode::Home => app.scroll_detail(isize::MIN),
        KeyCode::Char('G') | KeyCode::End => app.scroll_detail(isize::MAX),
        KeyCode::Char('r') => {
            if let Some(id) = app.target_id() {
                return app.replay(id);
            }
        }
        KeyCode::Char('e') => {
            if let Some(id) = app.target_id() {
                return app.start_edit(id);
            }
        }
        KeyCode::Char('?') => app.help = true,
        _ => {}
    }
    vec![]
}

fn on_edit_key(app: &mut App, key: KeyEvent) -> Vec<Effect> {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    let send = (ctrl && key.code == KeyCode::Char('s')) || key.code == KeyCode::F(2);
    match app.editor.as_mut() {
        None => {
            app.view = View::List;
            vec![]
        }
        Some(Editor::Binary { id, .. }) => {
            let id = *id;
            match key.code {
                KeyCode::Esc => app.close_editor(),
                KeyCode::Char('q') => return vec![Effect::Quit],
                KeyCode::Char('r') | KeyCode::Enter => {
                    app.close_editor();
                    return app.replay(id);
                }
                _ if send => {
                    app.close_editor();
                    return app.replay(id);
                }
                _ => {}
            }
            vec![]
        }
        Some(Editor::Text {
            id,
            textarea,
            error,
            body,
            reformatted,
            find,
            ..
        }) => {
            // The search prompt takes every key but send.
            if find.open && !send {
                find.key(textarea, key);
                return vec![];
            }
            if ctrl && key.code == KeyCode::Char('f') {
                find.open(textarea);
                return vec![];
            }
            if key.code == KeyCode::Esc {
                app.close_editor();
                return vec![];
            }
            if key.code == KeyCode::F(3) {
                let id = *id;
                return match pretty_print_body(textarea) {
                    Some((before, after)) => {
                        *reformatted = true;
                        app.notify(
                            Level::Warn,
                            format!(
                                "#{id}'s body pretty-printed for editing: its bytes change \
                                 ({before} → {after} B)"
                            ),
                        );
                        vec![]
                    }
                    None => {
                        app.notify(Level::Warn, "the body is not JSON: nothing to pretty-print");
                        vec![]
                    }
                };
            }
            if send {
                let id = *id;
                match parse_request_text(textarea.lines()) {
                    Ok(mut edit) => {
                        // Lines the user did not change keep their own ends.
                        let text = String::from_utf8_lossy(&edit.body).into_owned();
                        let edited: Vec<String> = text.split('\n').map(str::to_string).collect();
                        edit.body = body.join(&edited).into_bytes().into();
                        fix_content_length(&mut edit);
                        app.close_editor();
                        app.notify(Level::Info, format!("edited replay of #{id} requested"));
                        app.await_replay(id);
                        return vec![Effect::Replay(ReplayRequest {
                            id,
                            edit: Some(edit),
                        })];
                    }
                    Err(e) => *error = Some(e.to_string()),
                }
                return vec![];
            }
            if textarea.input(key) {
                *error = None;
            }
            vec![]
        }
    }
}

/// Replaces the editor's body (the lines after the first blank line) with
/// its pretty-printed JSON; returns the body's length before and after, or
/// `None` when the body is not JSON.
fn pretty_print_body(textarea: &mut ratatui_textarea::TextArea<'static>) -> Option<(usize, usize)> {
    let lines = textarea.lines();
    let start = lines.iter().position(|l| l.trim().is_empty())? + 1;
    let body = lines[start..].join("\n");
    let pretty: Vec<String> = pretty_json(&body, &Theme::PLAIN)?
        .iter()
        .map(|l| l.to_string())
        .collect();
    let after = pretty.join("\n").len();
    let mut all: Vec<String> = lines[..start].to_vec();
    all.extend(pretty);
    let mut fresh = ratatui_textarea::TextArea::new(all);
    fresh.set_cursor_line_style(ratatui::style::Style::new());
    fresh.set_selection_style(textarea.selection_style());
    fresh.set_search_style(textarea.search_style());
    fresh.move_cursor(ratatui_textarea::CursorMove::Jump(start as u16, 0));
    *textarea = fresh;
    Some((body.len(), after))
}
