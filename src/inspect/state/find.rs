//! Search inside the body editor (`Ctrl-F`): the text typed is found as
//! typed (case-insensitive for ASCII, no pattern syntax), every match is
//! highlighted by the text area, `Enter`/`↓`/`Ctrl-N` go to the next match
//! and `↑`/`Ctrl-P` to the previous one (both wrap), `Esc` closes the
//! search and leaves the cursor on the match. Searching only moves the
//! cursor: the text, and so the bytes sent, never change.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui_textarea::TextArea;

/// The editor's search state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Find {
    /// The prompt is open (keys go to it).
    pub open: bool,
    /// The text searched for; kept after closing, so `Ctrl-F` again
    /// resumes it.
    pub query: String,
    /// Matches in the whole text.
    pub matches: usize,
    /// The match under the cursor (from 1), when the cursor is on one.
    pub current: Option<usize>,
}

/// The regular expression that finds `query` literally, ignoring ASCII
/// case.
fn pattern(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    format!("(?i){}", regex::escape(query))
}

impl Find {
    /// `Ctrl-F`: opens the prompt with the last query, highlighted again.
    pub fn open(&mut self, textarea: &mut TextArea<'static>) {
        self.open = true;
        self.apply(textarea, true);
    }

    /// Closes the prompt and drops the highlight; the cursor stays.
    pub fn close(&mut self, textarea: &mut TextArea<'static>) {
        self.open = false;
        // An empty pattern cannot fail to compile.
        let _ = textarea.set_search_pattern("");
    }

    /// A key while the prompt is open.
    pub fn key(&mut self, textarea: &mut TextArea<'static>, key: KeyEvent) {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Esc => self.close(textarea),
            KeyCode::Enter | KeyCode::Down | KeyCode::Tab => self.step(textarea, true),
            KeyCode::Char('n') | KeyCode::Char('g') if ctrl => self.step(textarea, true),
            KeyCode::Up | KeyCode::BackTab => self.step(textarea, false),
            KeyCode::Char('p') if ctrl => self.step(textarea, false),
            KeyCode::Char('u') if ctrl => {
                self.query.clear();
                self.apply(textarea, true);
            }
            KeyCode::Backspace => {
                self.query.pop();
                self.apply(textarea, true);
            }
            KeyCode::Char(c) if !ctrl => {
                self.query.push(c);
                self.apply(textarea, true);
            }
            _ => {}
        }
    }

    /// Pasted text goes into the query (one line).
    pub fn paste(&mut self, textarea: &mut TextArea<'static>, text: &str) {
        self.query.push_str(&text.replace(['\r', '\n'], " "));
        self.apply(textarea, true);
    }

    /// Sets the pattern for the query and moves to the first match at or
    /// after the cursor (`match_cursor`: the match under the cursor counts).
    fn apply(&mut self, textarea: &mut TextArea<'static>, match_cursor: bool) {
        // An escaped literal always compiles.
        let _ = textarea.set_search_pattern(pattern(&self.query));
        if !textarea.search_forward(match_cursor) {
            textarea.search_back(false);
        }
        self.count(textarea);
    }

    fn step(&mut self, textarea: &mut TextArea<'static>, forward: bool) {
        if forward {
            textarea.search_forward(false);
        } else {
            textarea.search_back(false);
        }
        self.count(textarea);
    }

    /// Counts the matches and finds which one the cursor is on.
    fn count(&mut self, textarea: &TextArea<'static>) {
        self.matches = 0;
        self.current = None;
        let Some(re) = textarea.search_pattern() else {
            return;
        };
        let ratatui_textarea::DataCursor(row, col) = textarea.cursor();
        for (i, line) in textarea.lines().iter().enumerate() {
            for m in re.find_iter(line) {
                self.matches += 1;
                if i == row && line[..m.start()].chars().count() == col {
                    self.current = Some(self.matches);
                }
            }
        }
    }

    /// The prompt's text for the footer.
    pub fn status(&self) -> String {
        match (self.query.is_empty(), self.matches, self.current) {
            (true, _, _) => String::new(),
            (false, 0, _) => "no match".into(),
            (false, n, Some(i)) => format!("{i} of {n}"),
            (false, n, None) => format!("{n} matches"),
        }
    }
}
