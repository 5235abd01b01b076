//! What the inspector shows about the sender of a webhook: the signature
//! verdict's glyph and colour, and the timeout budget (how much of the
//! sender's own timeout the handler used), as a list mark and a meter in the
//! details. Pure functions over summaries and exchanges; `render` and
//! `detail` draw them.

use std::time::Duration;

use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};

use super::theme::Theme;
use crate::capture::WebhookInfo;
use crate::verify::{Provider, Verdict};

/// Past this share of the sender's timeout a row gets the `!` mark.
pub const NEAR_BUDGET: f64 = 0.8;
/// Cells of the meter's bar.
const METER_CELLS: usize = 10;

/// The one-column glyph of a verdict in the list.
pub fn verdict_glyph(v: Verdict) -> &'static str {
    match v {
        Verdict::Valid => "✓",
        Verdict::Invalid => "✗",
        Verdict::Unsigned => "–",
        Verdict::Unchecked => "?",
    }
}

/// The colour of a verdict: valid green, invalid red, unsigned yellow,
/// unchecked dim.
pub fn verdict_style(theme: &Theme, v: Verdict) -> Style {
    match v {
        Verdict::Valid => theme.ok(),
        Verdict::Invalid => theme.error(),
        Verdict::Unsigned => theme.warn(),
        Verdict::Unchecked => theme.dim(),
    }
}

/// How much of the sender's timeout the handler used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// The sender's known timeout.
    pub timeout: Duration,
    /// How long the exchange took, in milliseconds.
    pub used_ms: f64,
    /// The provider, for what it does after a timeout.
    pub provider: Provider,
}

/// Where an exchange stands against its sender's timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Past [`NEAR_BUDGET`] of it: `!`.
    Near,
    /// Past all of it: `⌛` (the sender gave up).
    Over,
}

impl Mark {
    /// The list's mark.
    pub fn glyph(self) -> &'static str {
        match self {
            Mark::Near => "!",
            Mark::Over => "⌛",
        }
    }

    /// Its colour.
    pub fn style(self, theme: &Theme) -> Style {
        match self {
            Mark::Near => theme.warn(),
            Mark::Over => theme.error(),
        }
    }
}

impl Budget {
    /// The budget of an exchange of `provider` (an id) that took `used_ms`,
    /// when the provider is known: against `timeout_ms`, the timeout stored
    /// with the exchange (a rule's `timeout =` override, else the
    /// provider's), or for exchanges stored before it was, the provider's.
    pub fn of(provider: Option<&str>, timeout_ms: Option<u64>, used_ms: f64) -> Option<Budget> {
        let provider = Provider::from_id(provider?).ok()?;
        let timeout = timeout_ms
            .map(std::time::Duration::from_millis)
            .or_else(|| provider.timeout())
            .filter(|t| !t.is_zero())?;
        used_ms.is_finite().then_some(Budget {
            timeout,
            used_ms: used_ms.max(0.0),
            provider,
        })
    }

    /// The share of the timeout used (1.0 = all of it).
    pub fn fraction(&self) -> f64 {
        self.used_ms / (self.timeout.as_secs_f64() * 1000.0)
    }

    /// The list mark, if the exchange came close to or past the timeout.
    pub fn mark(&self) -> Option<Mark> {
        let f = self.fraction();
        if f > 1.0 {
            Some(Mark::Over)
        } else if f > NEAR_BUDGET {
            Some(Mark::Near)
        } else {
            None
        }
    }

    /// The meter line: `sender timeout 5s ▕████████░░▏ 4.1s used (82%)`.
    pub fn meter(&self, theme: &Theme) -> Line<'static> {
        let f = self.fraction();
        let filled = ((f * METER_CELLS as f64).round() as usize).min(METER_CELLS);
        let style = match self.mark() {
            Some(m) => m.style(theme),
            None => theme.ok(),
        };
        Line::from(vec![
            Span::styled(
                format!(
                    "sender timeout {} ({}) ",
                    fmt_secs(self.timeout.as_secs_f64() * 1000.0),
                    self.provider.id()
                ),
                theme.dim(),
            ),
            Span::styled("▕", theme.dim()),
            Span::styled("█".repeat(filled), style),
            Span::styled("░".repeat(METER_CELLS - filled), theme.dim()),
            Span::styled("▏", theme.dim()),
            Span::styled(
                format!(
                    " {} used ({:.0}%)",
                    fmt_secs(self.used_ms),
                    (f * 100.0).min(9999.0)
                ),
                style.remove_modifier(Modifier::BOLD),
            ),
        ])
    }

    /// What happened to an exchange past the timeout, for the footer and
    /// the details.
    pub fn gave_up(&self) -> &'static str {
        gave_up_text(self.provider)
    }
}

/// "The sender gave up": and what it does next, as far as it is known.
pub fn gave_up_text(provider: Provider) -> &'static str {
    match provider.retries() {
        Some(true) => "the sender gave up on this one and will retry it",
        Some(false) => "the sender gave up on this one and will not retry it",
        None => "the sender gave up on this one and will retry or drop it",
    }
}

/// `5s`, `4.1s`, `830ms`: one decimal is enough next to a timeout.
pub fn fmt_secs(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else if (ms % 1000.0).abs() < f64::EPSILON {
        format!("{:.0}s", ms / 1000.0)
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

/// The details' sender line: `signature: invalid (stripe, v1): reason`
/// (provider and scheme once when they are the same word), or
/// `sender: stripe` when nothing was checked; plus the delivery id. `None`
/// for senders nobody recognised. Sanitised by the caller with every other
/// detail line.
pub fn signature_line(w: &WebhookInfo, theme: &Theme) -> Option<Line<'static>> {
    let mut spans = Vec::new();
    match (&w.signature, &w.provider) {
        (Some(sig), provider) => {
            spans.push(Span::styled("signature: ", theme.dim()));
            spans.push(Span::styled(
                sig.verdict.as_str(),
                verdict_style(theme, sig.verdict),
            ));
            let mut what: Vec<&str> = provider.iter().map(String::as_str).collect();
            if !what.contains(&sig.scheme.as_str()) && !sig.scheme.is_empty() {
                what.push(&sig.scheme);
            }
            if !what.is_empty() {
                spans.push(Span::raw(format!(" ({})", what.join(", "))));
            }
            if let Some(reason) = sig.reason.as_deref().filter(|r| !r.trim().is_empty()) {
                spans.push(Span::raw(format!(": {}", reason.trim())));
            }
        }
        (None, Some(provider)) => {
            spans.push(Span::styled("sender: ", theme.dim()));
            spans.push(Span::raw(provider.clone()));
        }
        (None, None) => {
            w.delivery_id.as_ref()?;
        }
    }
    if let Some(id) = &w.delivery_id {
        let sep = if spans.is_empty() { "" } else { " · " };
        spans.push(Span::styled(format!("{sep}delivery {id}"), theme.dim()));
    }
    Some(Line::from(spans))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_marks_past_80_and_100_percent_and_unknown_providers_have_none() {
        // Shopify gives up after 5 s.
        let b = |ms| Budget::of(Some("shopify"), None, ms).unwrap();
        assert_eq!(b(4000.0).mark(), None);
        assert_eq!(b(4100.0).mark(), Some(Mark::Near));
        assert_eq!(b(5000.0).mark(), Some(Mark::Near));
        assert_eq!(b(5001.0).mark(), Some(Mark::Over));
        assert_eq!(Budget::of(Some("nobody"), None, 9e9), None);
        assert_eq!(Budget::of(None, None, 9e9), None);
        assert_eq!(Budget::of(Some("shopify"), None, f64::NAN), None);
        let m = b(4100.0).meter(&Theme::PLAIN).to_string();
        assert_eq!(
            m,
            "sender timeout 5s (shopify) ▕████████░░▏ 4.1s used (82%)"
        );
        let m = b(12_000.0).meter(&Theme::PLAIN).to_string();
        assert!(m.contains("▕██████████▏ 12s used (240%)"), "{m}");
    }

    #[test]
    fn a_rule_timeout_stored_with_the_exchange_is_the_budget() {
        // A rule's `timeout = "10s"` for Shopify (5 s by default): 7 s is
        // fine, 8.5 s is near, 10.5 s over.
        let b = |ms| Budget::of(Some("shopify"), Some(10_000), ms).unwrap();
        assert_eq!(b(7_000.0).mark(), None);
        assert_eq!(b(8_500.0).mark(), Some(Mark::Near));
        assert_eq!(b(10_500.0).mark(), Some(Mark::Over));
        assert!(b(7_000.0)
            .meter(&Theme::PLAIN)
            .to_string()
            .starts_with("sender timeout 10s (shopify)"));
        // Stripe publishes none, so only a rule gives it a budget.
        assert_eq!(Budget::of(Some("stripe"), None, 9e9), None);
        let s = Budget::of(Some("stripe"), Some(2_000), 2_500.0).unwrap();
        assert_eq!(s.mark(), Some(Mark::Over));
    }
}
