//! The list filter's language: which rows a filter's terms match, and its
//! `body:` term (answered by a store search, not here). Shared by the
//! inspector's `/` and `whtunnel requests list --filter`.

use super::app::{Row, RowKey};
use crate::capture::{ExchangeId, ExchangeSummary};
use crate::verify::Verdict;

/// Does `row` match the filter `filter`? See [`matches_summary`] for the
/// language; a row adds what only the inspector knows: rows in progress are
/// not failures, rows the store could not keep are, and `#12` matches only
/// stored rows.
///
/// Allocation-free: it runs for every row on each filter keystroke.
pub fn matches(filter: &str, row: &Row) -> bool {
    let id = match row.key {
        RowKey::Stored(id) => Some(id),
        RowKey::NotStored(_) | RowKey::Live(_) => None,
    };
    matches_with(
        filter,
        &row.summary,
        id,
        row.in_progress(),
        row.not_stored.is_some(),
    )
}

/// Does the stored exchange `s` match the filter `filter`? Whitespace-separated
/// terms must all match (case-insensitive). A term matches:
/// - `5xx` / `2xx`...: the status class; a three-digit number: the status;
/// - `err` / `error`: failed exchanges (no status once finished, an error,
///   or not stored);
/// - `#12`: the exchange id;
/// - `sig:invalid` (`valid`, `unsigned`, `unchecked`): the signature verdict;
/// - `provider:stripe`: the provider id (exactly, any case);
/// - `body:text`: not decided here (the bodies are searched by the caller,
///   see [`body_term`]); counts as a match;
/// - anything else: a substring of the method, path, event type, provider
///   or error.
///
/// `whtunnel requests list --filter` and the inspector's `/` both use it, so
/// one expression means the same in both.
pub fn matches_summary(filter: &str, s: &ExchangeSummary) -> bool {
    matches_with(filter, s, Some(s.id), false, false)
}

/// The filter language over a summary plus what the caller knows about it:
/// its stored id (none for rows not stored), whether it is still in
/// progress, and whether the store failed to keep it.
fn matches_with(
    filter: &str,
    s: &ExchangeSummary,
    id: Option<ExchangeId>,
    in_progress: bool,
    not_stored: bool,
) -> bool {
    filter.split_whitespace().all(|t| {
        if t.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("body:")) {
            return true;
        }
        let tb = t.as_bytes();
        if tb.len() == 3 && tb[0].is_ascii_digit() && tb[1..].eq_ignore_ascii_case(b"xx") {
            let class = u16::from(tb[0] - b'0');
            return s.status.is_some_and(|st| st / 100 == class);
        }
        if tb.len() == 3 && tb.iter().all(u8::is_ascii_digit) {
            return s.status.map(u32::from) == t.parse::<u32>().ok();
        }
        if t.eq_ignore_ascii_case("err") || t.eq_ignore_ascii_case("error") {
            return (s.status.is_none() && !in_progress) || s.error.is_some() || not_stored;
        }
        if let Some(v) = prefixed(t, "sig:") {
            return s
                .signature
                .is_some_and(|x| x.as_str().eq_ignore_ascii_case(v));
        }
        if let Some(p) = prefixed(t, "provider:") {
            return s
                .provider
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(p));
        }
        if let Some(n) = t.strip_prefix('#') {
            if let Ok(want) = n.parse::<ExchangeId>() {
                return id == Some(want);
            }
        }
        let contains = |f: &str| contains_ci(f, t);
        contains(&s.method)
            || contains(&s.path)
            || s.event.as_deref().is_some_and(contains)
            || s.provider.as_deref().is_some_and(contains)
            || s.error.as_deref().is_some_and(contains)
    })
}

/// The rest of `term` after `prefix` (ASCII case-insensitive).
fn prefixed<'a>(term: &'a str, prefix: &str) -> Option<&'a str> {
    term.get(..prefix.len())
        .filter(|p| p.eq_ignore_ascii_case(prefix))
        .map(|_| &term[prefix.len()..])
}

/// A `sig:` term whose value is not a verdict, for a one-line warning
/// (such a term matches nothing).
pub fn bad_sig_term(filter: &str) -> Option<&str> {
    filter.split_whitespace().find_map(|t| {
        let v = prefixed(t, "sig:")?;
        let known = [
            Verdict::Valid,
            Verdict::Invalid,
            Verdict::Unsigned,
            Verdict::Unchecked,
        ];
        (!known.iter().any(|k| k.as_str().eq_ignore_ascii_case(v))).then_some(v)
    })
}

/// ASCII case-insensitive substring test without allocating.
fn contains_ci(hay: &str, needle: &str) -> bool {
    let n = needle.as_bytes();
    n.is_empty()
        || hay
            .as_bytes()
            .windows(n.len())
            .any(|w| w.eq_ignore_ascii_case(n))
}

/// The text of the filter's `body:` term (the first, if several).
pub fn body_term(filter: &str) -> Option<&str> {
    filter
        .split_whitespace()
        .find_map(|t| {
            t.get(..5)
                .filter(|p| p.eq_ignore_ascii_case("body:"))
                .map(|_| &t[5..])
        })
        .filter(|n| !n.is_empty())
}
