//! Rendering stored exchanges for people and tools: the contract JSON of
//! `requests list/show --json`, human tables, a `curl` command that reproduces
//! a request byte for byte, and HAR 1.2 for browser devtools.
//!
//! Pure functions over [`Exchange`] / [`ExchangeSummary`]; the only I/O is
//! reading spilled body files (through [`read_body`]). A body file that
//! retention already deleted is reported as unavailable, never a panic.
//!
//! One file per format: `json` (the CLI's contract JSON), `human` (tables
//! and `curl -v`-like text), `curl` (a command that sends a request again)
//! and `har`; this module keeps what they share.

mod curl;
mod har;
mod human;
mod json;

use bytes::Bytes;

use super::model::CapturedBody;
use super::store::read_body;

pub use curl::{curl_command, shell_quote, target_url};
pub use har::{is_secret_header, write_har, write_har_with, HarOptions, REDACTED};
pub use human::{ascii_column, list_human, show_human, terminal_safe};
pub use json::{list_json, rfc3339, show_json, summary_json};

pub(super) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A header value as text, lossily where it is not UTF-8 (what every export
/// shows; the bytes themselves stay in the store).
pub(super) fn header_text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// Body bytes, or why they cannot be shown.
pub(super) fn load(body: &CapturedBody) -> Result<Bytes, String> {
    read_body(body).map_err(|e| format!("body no longer available: {e}"))
}

/// Decodes `%XX` escapes and `+` (as a space), as in query strings and form
/// bodies; invalid escapes are kept literally, invalid UTF-8 shown lossily.
/// One component (a name or a value) of what `form_urlencoded::parse` splits.
pub fn percent_decode(s: &str) -> String {
    // `+` first, as form decoding does: an escaped `%2B` stays a plus.
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// An exchange with id 7 and a recognised event, for the format tests.
#[cfg(test)]
fn ex_with(body: &[u8]) -> super::model::Exchange {
    let mut ex = crate::capture::store::tests::sample(body);
    ex.id = Some(7);
    ex.event = Some("consent.created".into());
    ex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("a%20b+c%2Bd%zz%4"), "a b c+d%zz%4");
        assert_eq!(percent_decode("%é%C3%A9%41"), "%é\u{e9}A");
        assert_eq!(percent_decode("%ff%"), "\u{fffd}%");
    }
}
