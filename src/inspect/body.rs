//! Turning captured body bytes into display lines: pretty JSON with syntax
//! colouring, decoded JWTs, plain text, and hex dumps for binary data.
//!
//! Everything here is for display only: the bytes themselves are never
//! changed, and the JSON pretty-printer re-indents the original text instead of
//! round-tripping through `serde_json::Value`, so key order and number literals
//! (e.g. ids above 2^53) are shown exactly as sent.

use base64::Engine as _;
use ratatui::text::{Line, Span};

use super::theme::Theme;

/// At most this many bytes of a text or JSON body are formatted; the rest is
/// summarised, so a huge body cannot stall the UI.
pub const TEXT_DISPLAY_LIMIT: usize = 1 << 20;
/// At most this many bytes of a binary body are hex-dumped.
pub const HEX_DISPLAY_LIMIT: usize = 64 << 10;

/// How a body was recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No bytes.
    Empty,
    /// Valid JSON, pretty-printed.
    Json,
    /// A compact JWT, decoded.
    Jwt,
    /// `application/x-www-form-urlencoded`, decoded into fields.
    Form,
    /// UTF-8 text shown as is.
    Text,
    /// Anything else, hex-dumped.
    Binary,
}

impl BodyKind {
    /// Short label for section titles.
    pub fn label(self) -> &'static str {
        match self {
            BodyKind::Empty => "empty",
            BodyKind::Json => "JSON",
            BodyKind::Jwt => "JWT",
            BodyKind::Form => "form",
            BodyKind::Text => "text",
            BodyKind::Binary => "binary",
        }
    }
}

/// True when `bytes` can be shown and edited as text: valid UTF-8 without NUL
/// or other control characters besides tab, CR and LF.
pub fn is_text(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(s) => !s
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')),
        Err(_) => false,
    }
}

/// Formats a body for the detail view. `content_type` is the value of the
/// message's `Content-Type` header, if any.
pub fn body_lines(
    bytes: &[u8],
    content_type: Option<&str>,
    theme: &Theme,
) -> (BodyKind, Vec<Line<'static>>) {
    if bytes.is_empty() {
        return (BodyKind::Empty, vec![Line::styled("(empty)", theme.dim())]);
    }
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    if let Ok(text) = std::str::from_utf8(bytes) {
        if is_text(bytes) {
            let trimmed = text.trim();
            let jwt_hint = ct.contains("jwt");
            if let Some(jwt) = decode_jwt(trimmed) {
                return (BodyKind::Jwt, jwt_lines(&jwt, trimmed, theme));
            }
            if jwt_hint {
                let mut lines = vec![Line::styled(
                    "(declared as a JWT but could not be decoded)",
                    theme.warn(),
                )];
                lines.extend(text_lines(text));
                return (BodyKind::Text, lines);
            }
            if bytes.len() <= TEXT_DISPLAY_LIMIT {
                if let Some(lines) = pretty_json(text, theme) {
                    return (BodyKind::Json, lines);
                }
                if ct.starts_with("application/x-www-form-urlencoded") {
                    let mut lines = pair_lines(&parse_urlencoded(trimmed), theme);
                    lines.push(Line::styled("Raw:", theme.heading()));
                    lines.extend(text_lines(text));
                    return (BodyKind::Form, lines);
                }
            }
            let mut lines = text_lines(cut_str(text, TEXT_DISPLAY_LIMIT));
            if text.len() > TEXT_DISPLAY_LIMIT {
                lines.push(more_line(text.len() - TEXT_DISPLAY_LIMIT, theme));
            }
            return (BodyKind::Text, lines);
        }
    }
    let mut lines = hex_dump(&bytes[..bytes.len().min(HEX_DISPLAY_LIMIT)]);
    if bytes.len() > HEX_DISPLAY_LIMIT {
        lines.push(more_line(bytes.len() - HEX_DISPLAY_LIMIT, theme));
    }
    (BodyKind::Binary, lines)
}

fn more_line(n: usize, theme: &Theme) -> Line<'static> {
    Line::styled(format!("… {n} more bytes not shown"), theme.dim())
}

/// The longest prefix of `s` not longer than `max` bytes that ends on a char
/// boundary.
fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Plain text, one display line per source line; tabs expanded because
/// terminals and ratatui disagree on their width.
pub fn text_lines(text: &str) -> Vec<Line<'static>> {
    text.split('\n')
        .map(|l| {
            let l = l.strip_suffix('\r').unwrap_or(l);
            Line::raw(l.replace('\t', "    "))
        })
        .collect()
}

/// Classic hex dump: offset, 16 bytes in hex (split in two groups of 8), and
/// the printable ASCII rendering.
pub fn hex_dump(bytes: &[u8]) -> Vec<Line<'static>> {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, chunk)| {
            let mut hex = String::with_capacity(50);
            for j in 0..16 {
                if j == 8 {
                    hex.push(' ');
                }
                match chunk.get(j) {
                    Some(b) => hex.push_str(&format!("{b:02x} ")),
                    None => hex.push_str("   "),
                }
            }
            let ascii = crate::capture::export::ascii_column(chunk);
            Line::raw(format!("{:08x}  {hex} |{ascii}|", i * 16))
        })
        .collect()
}

pub use crate::capture::export::percent_decode;

/// Splits `a=1&b=two` into decoded pairs (a name without `=` has an empty
/// value), keeping order and duplicates.
pub fn parse_urlencoded(s: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

/// `name = value` lines for decoded fields; a value that is itself JSON (as
/// in Slack's `payload=`) is pretty-printed below its name.
pub fn pair_lines(pairs: &[(String, String)], theme: &Theme) -> Vec<Line<'static>> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        let trimmed = v.trim_start();
        let json = if trimmed.starts_with('{') || trimmed.starts_with('[') {
            pretty_json(v, theme)
        } else {
            None
        };
        match json {
            Some(lines) => {
                out.push(Line::from(vec![
                    Span::styled(k.clone(), theme.header_name()),
                    Span::raw(" = (JSON)"),
                ]));
                out.extend(lines.into_iter().map(|mut l| {
                    l.spans.insert(0, Span::raw("  "));
                    l
                }));
            }
            None => out.push(Line::from(vec![
                Span::styled(k.clone(), theme.header_name()),
                Span::raw(" = "),
                Span::raw(v.clone()),
            ])),
        }
    }
    out
}

#[derive(Debug, PartialEq)]
enum Tok<'a> {
    Punct(char),
    Str(&'a str),
    Num(&'a str),
    Lit(&'a str),
}

/// Splits already-validated JSON text into tokens (whitespace dropped).
fn tokenize(src: &str) -> Vec<Tok<'_>> {
    let b = src.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'{' | b'}' | b'[' | b']' | b',' | b':' => {
                toks.push(Tok::Punct(c as char));
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(b.len());
                toks.push(Tok::Str(&src[start..i]));
            }
            _ => {
                let start = i;
                while i < b.len() && !b" \t\n\r{}[],:\"".contains(&b[i]) {
                    i += 1;
                }
                let t = &src[start..i];
                if c == b'-' || c.is_ascii_digit() {
                    toks.push(Tok::Num(t));
                } else {
                    toks.push(Tok::Lit(t));
                }
            }
        }
    }
    toks
}

/// Pretty-prints JSON text with two-space indentation and colours keys,
/// strings, numbers and literals. `None` when the text is not valid JSON.
pub fn pretty_json(src: &str, theme: &Theme) -> Option<Vec<Line<'static>>> {
    serde_json::from_str::<serde::de::IgnoredAny>(src).ok()?;
    let toks = tokenize(src);
    let mut lines: Vec<Line<'static>> = Vec::new();
    let mut cur: Vec<Span<'static>> = Vec::new();
    let mut indent = 0usize;
    let newline = |lines: &mut Vec<Line<'static>>, cur: &mut Vec<Span<'static>>, indent: usize| {
        lines.push(Line::from(std::mem::take(cur)));
        if indent > 0 {
            cur.push(Span::raw("  ".repeat(indent)));
        }
    };
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Punct(open @ ('{' | '[')) => {
                let close = if *open == '{' { '}' } else { ']' };
                if toks.get(i + 1) == Some(&Tok::Punct(close)) {
                    cur.push(Span::raw(format!("{open}{close}")));
                    i += 1;
                } else {
                    cur.push(Span::raw(open.to_string()));
                    indent += 1;
                    newline(&mut lines, &mut cur, indent);
                }
            }
            Tok::Punct(close @ ('}' | ']')) => {
                indent = indent.saturating_sub(1);
                newline(&mut lines, &mut cur, indent);
                cur.push(Span::raw(close.to_string()));
            }
            Tok::Punct(',') => {
                cur.push(Span::raw(","));
                newline(&mut lines, &mut cur, indent);
            }
            Tok::Punct(':') => cur.push(Span::raw(": ")),
            Tok::Punct(c) => cur.push(Span::raw(c.to_string())),
            Tok::Str(s) => {
                let style = if toks.get(i + 1) == Some(&Tok::Punct(':')) {
                    theme.json_key()
                } else {
                    theme.json_string()
                };
                cur.push(Span::styled(s.to_string(), style));
            }
            Tok::Num(n) => cur.push(Span::styled(n.to_string(), theme.json_number())),
            Tok::Lit(l) => cur.push(Span::styled(l.to_string(), theme.json_literal())),
        }
        i += 1;
    }
    if !cur.is_empty() {
        lines.push(Line::from(cur));
    }
    Some(lines)
}

/// A decoded compact JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedJwt {
    /// The JOSE header, as JSON text.
    pub header: String,
    /// The claims (payload) as text; JSON for every JWT worth decoding.
    pub claims: String,
    /// Length of the signature in bytes (0 for `alg: none`).
    pub signature_len: usize,
}

fn b64url(seg: &str) -> Option<Vec<u8>> {
    if !seg
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'=')
    {
        return None;
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seg.trim_end_matches('='))
        .ok()
}

/// Decodes a compact JWT (`header.claims.signature`, base64url). Returns
/// `None` unless the header is a JSON object and the claims are JSON, so
/// ordinary dotted text is not mistaken for a token. The signature is not
/// verified.
pub fn decode_jwt(text: &str) -> Option<DecodedJwt> {
    let mut parts = text.split('.');
    let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || h.is_empty() || c.is_empty() {
        return None;
    }
    let header = String::from_utf8(b64url(h)?).ok()?;
    let claims = String::from_utf8(b64url(c)?).ok()?;
    let sig = if s.is_empty() { Vec::new() } else { b64url(s)? };
    let hv: serde_json::Value = serde_json::from_str(&header).ok()?;
    if !hv.is_object() {
        return None;
    }
    serde_json::from_str::<serde::de::IgnoredAny>(&claims).ok()?;
    Some(DecodedJwt {
        header,
        claims,
        signature_len: sig.len(),
    })
}

fn jwt_lines(jwt: &DecodedJwt, raw: &str, theme: &Theme) -> Vec<Line<'static>> {
    let mut lines = vec![Line::styled("JWT header:", theme.heading())];
    lines.extend(pretty_json(&jwt.header, theme).unwrap_or_else(|| text_lines(&jwt.header)));
    lines.push(Line::styled("JWT claims:", theme.heading()));
    lines.extend(pretty_json(&jwt.claims, theme).unwrap_or_else(|| text_lines(&jwt.claims)));
    lines.push(Line::styled(
        format!("JWT signature: {} bytes (not verified)", jwt.signature_len),
        theme.dim(),
    ));
    lines.push(Line::styled("Raw token:", theme.heading()));
    lines.push(Line::raw(raw.to_string()));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(lines: &[Line<'_>]) -> Vec<String> {
        lines.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn pretty_json_keeps_order_and_number_literals() {
        let src = r#"{"z":1,"a":[true,null,12345678901234567890,{}],"s":"x,y"}"#;
        let lines = pretty_json(src, &Theme::PLAIN).unwrap();
        assert_eq!(
            plain(&lines),
            vec![
                "{",
                "  \"z\": 1,",
                "  \"a\": [",
                "    true,",
                "    null,",
                "    12345678901234567890,",
                "    {}",
                "  ],",
                "  \"s\": \"x,y\"",
                "}",
            ]
        );
    }

    #[test]
    fn pretty_json_rejects_invalid_json() {
        assert!(pretty_json("{\"a\":", &Theme::PLAIN).is_none());
        assert!(pretty_json("not json", &Theme::PLAIN).is_none());
    }

    #[test]
    fn pretty_json_escaped_quotes_stay_in_string() {
        let lines = pretty_json(r#"{"k":"a\"b:c"}"#, &Theme::PLAIN).unwrap();
        assert_eq!(plain(&lines)[1], r#"  "k": "a\"b:c""#);
    }

    #[test]
    fn hex_dump_has_offset_hex_and_ascii() {
        let lines = plain(&hex_dump(b"\x00\x01AB\xff"));
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("00000000  00 01 41 42 ff"));
        assert!(lines[0].ends_with("|..AB.|"));
    }

    #[test]
    fn jwt_is_recognised_and_dotted_text_is_not() {
        let jwt =
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjMiLCJldmVudCI6InBpbmcifQ.c2ln";
        let d = decode_jwt(jwt).unwrap();
        assert!(d.header.contains("HS256"));
        assert!(d.claims.contains("\"sub\":\"123\""));
        assert_eq!(d.signature_len, 3);
        assert!(decode_jwt("www.example.com").is_none());
        assert!(decode_jwt("a.b").is_none());
    }

    #[test]
    fn percent_decoding_and_forms() {
        assert_eq!(percent_decode("a%20b+c%2Bd%zz%4"), "a b c+d%zz%4");
        assert_eq!(percent_decode("%é%C3%A9"), "%é\u{e9}");
        assert_eq!(
            parse_urlencoded("a=1&b=x%3Dy&flag&a=2"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x=y".into()),
                ("flag".into(), String::new()),
                ("a".into(), "2".into()),
            ]
        );
        let (kind, lines) = body_lines(
            b"token=abc&payload=%7B%22type%22%3A%22block_actions%22%7D",
            Some("application/x-www-form-urlencoded"),
            &Theme::PLAIN,
        );
        assert_eq!(kind, BodyKind::Form);
        let text = plain(&lines);
        assert_eq!(text[0], "token = abc");
        assert_eq!(text[1], "payload = (JSON)");
        assert_eq!(text[3], "    \"type\": \"block_actions\"");
        assert!(text.contains(&"Raw:".to_string()));
    }

    #[test]
    fn body_kinds() {
        let t = Theme::PLAIN;
        assert_eq!(body_lines(b"", None, &t).0, BodyKind::Empty);
        assert_eq!(body_lines(b"{\"a\":1}", None, &t).0, BodyKind::Json);
        assert_eq!(body_lines(b"hello", None, &t).0, BodyKind::Text);
        assert_eq!(body_lines(b"\x00\x9f", None, &t).0, BodyKind::Binary);
        assert!(!is_text(b"a\x00b"));
        assert!(is_text(b"a\tb\r\n"));
    }
}
