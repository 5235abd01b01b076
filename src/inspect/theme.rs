//! Colours of the inspector, decided once at start-up (`NO_COLOR`) and kept in
//! the [`App`](super::state::App) so tests can render both variants.

use ratatui::style::{Color, Modifier, Style};

/// The inspector's palette. With `color == false` every style it hands out
/// carries no colour at all (modifiers such as bold or reversed remain, as the
/// `NO_COLOR` convention allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    /// Whether colours may be used.
    pub color: bool,
}

impl Theme {
    /// A theme that uses colours.
    pub const COLOR: Theme = Theme { color: true };
    /// A theme without any colour (`NO_COLOR`).
    pub const PLAIN: Theme = Theme { color: false };

    /// Reads `NO_COLOR` (set and non-empty disables colour, per no-color.org).
    pub fn from_env() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Theme { color: !no_color }
    }

    /// A foreground colour, or nothing under `NO_COLOR`.
    pub fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }

    /// Style of a status code cell: 2xx green, 3xx cyan, 4xx yellow, 5xx and
    /// failures red.
    pub fn status(&self, status: Option<u16>, failed: bool) -> Style {
        match status {
            Some(200..=299) => self.fg(Color::Green),
            Some(300..=399) => self.fg(Color::Cyan),
            Some(400..=499) => self.fg(Color::Yellow),
            Some(_) => self.fg(Color::Red),
            None if failed => self.fg(Color::Red),
            None => self.dim(),
        }
    }

    /// De-emphasised text (secondary columns, hints).
    pub fn dim(&self) -> Style {
        if self.color {
            Style::new().fg(Color::DarkGray)
        } else {
            Style::new()
        }
    }

    /// Section titles and headings.
    pub fn heading(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    /// The selected list row.
    pub fn selected(&self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }

    /// Search matches in the editor: a background in colour, underlined
    /// without (the cursor and selection are reversed).
    pub fn found(&self) -> Style {
        if self.color {
            Style::new().bg(Color::Yellow).fg(Color::Black)
        } else {
            Style::new().add_modifier(Modifier::UNDERLINED | Modifier::BOLD)
        }
    }

    /// Warnings (not stored, truncated bodies, parse errors).
    pub fn warn(&self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }

    /// Errors (refused, failed replays).
    pub fn error(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    /// Good news (connected).
    pub fn ok(&self) -> Style {
        self.fg(Color::Green).add_modifier(Modifier::BOLD)
    }

    /// JSON object keys.
    pub fn json_key(&self) -> Style {
        self.fg(Color::Blue)
    }

    /// JSON string values.
    pub fn json_string(&self) -> Style {
        self.fg(Color::Green)
    }

    /// JSON numbers.
    pub fn json_number(&self) -> Style {
        self.fg(Color::Magenta)
    }

    /// JSON `true`, `false` and `null`.
    pub fn json_literal(&self) -> Style {
        self.fg(Color::Yellow)
    }

    /// Header names in the detail view.
    pub fn header_name(&self) -> Style {
        self.fg(Color::Cyan)
    }
}
