//! The text form of a request for edit-then-replay, and its parser.
//!
//! The format is deliberately HTTP-like so it reads naturally:
//!
//! ```text
//! POST /hooks/stripe?x=1
//! Content-Type: application/json
//!
//! {"type":"invoice.paid"}
//! ```
//!
//! First line `METHOD PATH` (a trailing `HTTP/x.y` is accepted and ignored),
//! then `Name: value` header lines, a blank line, and the body verbatim.

use bytes::Bytes;

use crate::capture::{Header, HeadersRef, RequestEdit};

/// Why an edited request could not be parsed; shown inline in the editor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The first line is not `METHOD PATH`.
    #[error("line 1: expected `METHOD /path`, e.g. `POST /hooks`")]
    BadRequestLine,
    /// The method contains characters not allowed in an HTTP token.
    #[error("line 1: `{0}` is not a valid HTTP method")]
    BadMethod(String),
    /// The path does not start with `/`.
    #[error("line 1: the path must start with `/`")]
    BadPath,
    /// A header line is not `Name: value` (often: the blank line before the
    /// body is missing).
    #[error("line {line}: expected `Name: value` or a blank line before the body")]
    BadHeader {
        /// 1-based line number in the editor.
        line: usize,
    },
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Renders a request as editable text. `body` must be text (see
/// [`super::body::is_text`]); header values that are not UTF-8 are shown
/// lossily.
pub fn request_to_text<'a>(
    method: &str,
    path: &str,
    headers: impl Into<HeadersRef<'a>>,
    body: &str,
) -> String {
    let mut out = format!("{method} {path}\n");
    for (name, value) in headers.into() {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(&String::from_utf8_lossy(value));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(body);
    out
}

/// Parses the editor's lines back into a [`RequestEdit`].
///
/// A `Content-Length` header, if present, is rewritten to the edited body's
/// length: a stale length would make the replay fail or hang in a way that has
/// nothing to do with what the user meant to test.
pub fn parse_request_text(lines: &[String]) -> Result<RequestEdit, EditError> {
    let first = lines.first().map(|l| l.trim()).unwrap_or("");
    let mut parts = first.split_whitespace();
    let (method, path) = match (parts.next(), parts.next()) {
        (Some(m), Some(p)) => (m, p),
        _ => return Err(EditError::BadRequestLine),
    };
    match parts.next() {
        None => {}
        Some(v) if v.starts_with("HTTP/") && parts.next().is_none() => {}
        Some(_) => return Err(EditError::BadRequestLine),
    }
    if !is_token(method) {
        return Err(EditError::BadMethod(method.to_string()));
    }
    if !path.starts_with('/') {
        return Err(EditError::BadPath);
    }

    let mut headers: Vec<Header> = Vec::new();
    let mut body_start = None;
    for (i, line) in lines.iter().enumerate().skip(1) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            body_start = Some(i + 1);
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(EditError::BadHeader { line: i + 1 })?;
        if !is_token(name) {
            return Err(EditError::BadHeader { line: i + 1 });
        }
        headers.push((name.to_string(), value.trim().as_bytes().to_vec()));
    }
    let body = match body_start {
        Some(start) if start <= lines.len() => lines[start..].join("\n"),
        _ => String::new(),
    };
    let mut edit = RequestEdit {
        method: method.to_string(),
        path: path.to_string(),
        headers,
        body: Bytes::from(body),
    };
    fix_content_length(&mut edit);
    Ok(edit)
}

/// A text body as the editor holds it: its lines without their ends, and
/// each line's own end (`"\r\n"`, `"\n"`, or `""` for the last line), so
/// that lines the user did not touch go back byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyLines {
    /// The lines, without ends.
    pub lines: Vec<String>,
    /// The end of each line.
    pub ends: Vec<&'static str>,
}

impl BodyLines {
    /// Splits `body` at LF, remembering which lines ended with CRLF.
    pub fn split(body: &str) -> Self {
        let mut lines = Vec::new();
        let mut ends = Vec::new();
        let mut rest = body;
        loop {
            match rest.find('\n') {
                Some(i) => {
                    let line = &rest[..i];
                    match line.strip_suffix('\r') {
                        Some(l) => {
                            lines.push(l.to_string());
                            ends.push("\r\n");
                        }
                        None => {
                            lines.push(line.to_string());
                            ends.push("\n");
                        }
                    }
                    rest = &rest[i + 1..];
                }
                None => {
                    lines.push(rest.to_string());
                    ends.push("");
                    break;
                }
            }
        }
        BodyLines { lines, ends }
    }

    /// The end a new or changed line gets: the body's usual one.
    fn usual_end(&self) -> &'static str {
        let crlf = self.ends.iter().filter(|e| **e == "\r\n").count();
        let lf = self.ends.iter().filter(|e| **e == "\n").count();
        if crlf > lf {
            "\r\n"
        } else {
            "\n"
        }
    }

    /// Joins `edited` lines back into a body. Lines equal to the original
    /// ones at the start and at the end keep their own ends, and so do lines
    /// changed in place (as many lines as before); added lines get the
    /// body's usual end. An unchanged body comes back byte for byte.
    pub fn join(&self, edited: &[String]) -> String {
        let (m, n) = (self.lines.len(), edited.len());
        let prefix = self
            .lines
            .iter()
            .zip(edited)
            .take_while(|(a, b)| a == b)
            .count();
        let max_suffix = m.min(n) - prefix;
        let suffix = self
            .lines
            .iter()
            .rev()
            .zip(edited.iter().rev())
            .take(max_suffix)
            .take_while(|(a, b)| a == b)
            .count();
        let usual = self.usual_end();
        let mut out = String::new();
        for (i, line) in edited.iter().enumerate() {
            out.push_str(line);
            let end = if i < prefix {
                self.ends[i]
            } else if i >= n - suffix {
                self.ends[m - (n - i)]
            } else if m == n {
                // Lines changed in place keep their own ends.
                self.ends[i]
            } else if i + 1 == n {
                self.ends[m - 1]
            } else {
                usual
            };
            out.push_str(end);
        }
        out
    }
}

/// Sets any `Content-Length` header of `edit` to its body's length.
pub fn fix_content_length(edit: &mut RequestEdit) {
    let len = edit.body.len().to_string().into_bytes();
    for (name, value) in edit.headers.iter_mut() {
        if name.eq_ignore_ascii_case("content-length") {
            value.clone_from(&len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.split('\n').map(str::to_string).collect()
    }

    #[test]
    fn parses_valid_request() {
        let e = parse_request_text(&lines(
            "POST /hooks?x=1\nContent-Type: application/json\nX-Sig:  abc \n\n{\"a\":1}\nline2",
        ))
        .unwrap();
        assert_eq!(e.method, "POST");
        assert_eq!(e.path, "/hooks?x=1");
        assert_eq!(
            e.headers,
            vec![
                ("Content-Type".to_string(), b"application/json".to_vec()),
                ("X-Sig".to_string(), b"abc".to_vec()),
            ]
        );
        assert_eq!(&e.body[..], b"{\"a\":1}\nline2");
    }

    #[test]
    fn round_trips_text_form() {
        let headers = vec![("A".to_string(), b"1".to_vec())];
        let text = request_to_text("PUT", "/p", &headers, "body\n");
        let e = parse_request_text(&lines(&text)).unwrap();
        assert_eq!(e.method, "PUT");
        assert_eq!(e.headers, headers);
        assert_eq!(&e.body[..], b"body\n");
    }

    #[test]
    fn headers_only_without_blank_line_means_empty_body() {
        let e = parse_request_text(&lines("GET / HTTP/1.1\nA: b")).unwrap();
        assert_eq!(e.path, "/");
        assert!(e.body.is_empty());
    }

    #[test]
    fn missing_blank_line_before_body_is_an_error_on_that_line() {
        let err = parse_request_text(&lines("POST /h\nA: b\n{\"a\":1}")).unwrap_err();
        assert_eq!(err, EditError::BadHeader { line: 3 });
        assert!(err.to_string().contains("line 3"));
    }

    #[test]
    fn bad_header_line() {
        assert_eq!(
            parse_request_text(&lines("POST /h\nno colon here\n\n")).unwrap_err(),
            EditError::BadHeader { line: 2 }
        );
        assert_eq!(
            parse_request_text(&lines("POST /h\nbad name: v\n\n")).unwrap_err(),
            EditError::BadHeader { line: 2 }
        );
    }

    #[test]
    fn bad_request_line() {
        assert_eq!(
            parse_request_text(&lines("POST")).unwrap_err(),
            EditError::BadRequestLine
        );
        assert_eq!(
            parse_request_text(&lines("POST hooks")).unwrap_err(),
            EditError::BadPath
        );
        assert!(matches!(
            parse_request_text(&lines("PO(ST /h")).unwrap_err(),
            EditError::BadMethod(_)
        ));
        assert_eq!(
            parse_request_text(&[]).unwrap_err(),
            EditError::BadRequestLine
        );
    }

    #[test]
    fn line_ends_are_kept_for_unchanged_lines() {
        let body = "{\r\n  \"a\": 1,\n  \"b\": 2\r\n}\n";
        let bl = BodyLines::split(body);
        assert_eq!(bl.lines, vec!["{", "  \"a\": 1,", "  \"b\": 2", "}", ""]);
        assert_eq!(bl.join(&bl.lines), body, "unchanged: identical bytes");
        let mut edited = bl.lines.clone();
        edited[1] = "  \"a\": 5,".into();
        assert_eq!(bl.join(&edited), "{\r\n  \"a\": 5,\n  \"b\": 2\r\n}\n");
        edited.insert(2, "  \"c\": 3,".into());
        assert_eq!(
            bl.join(&edited),
            "{\r\n  \"a\": 5,\n  \"c\": 3,\n  \"b\": 2\r\n}\n"
        );
        let one = BodyLines::split("x");
        assert_eq!(one.join(&["y".to_string()]), "y");
        assert_eq!(one.join(&["y".to_string(), "z".to_string()]), "y\nz");
    }

    #[test]
    fn content_length_follows_edited_body() {
        let e = parse_request_text(&lines("POST /h\nContent-Length: 2\n\nhello")).unwrap();
        assert_eq!(e.headers[0].1, b"5".to_vec());
    }
}
