//! Rendering stored exchanges for people and tools: the contract JSON of
//! `requests list/show --json`, human tables, a `curl` command that reproduces
//! a request byte for byte, and HAR 1.2 for browser devtools.
//!
//! Pure functions over [`Exchange`] / [`ExchangeSummary`]; the only I/O is
//! reading spilled body files (through [`read_body`]). A body file that
//! retention already deleted is reported as unavailable, never a panic.

use std::fmt::Write as _;

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use super::model::{CapturedBody, Exchange, ExchangeSummary, Header};
use super::store::{read_body, ListQuery, Store, StoreError};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the usual proxy ones): never
/// replayed by `curl`, since they describe one connection, not the request.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
];

/// RFC 3339 with milliseconds, as in the JSON contract and HAR.
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One list row in the contract shape: `id`, `received_at`, `method`, `path`,
/// `status`, `duration_ms`, `event`, `replay_of`.
pub fn summary_json(s: &ExchangeSummary) -> Value {
    json!({
        "id": s.id,
        "received_at": rfc3339(&s.received_at),
        "method": s.method,
        "path": s.path,
        "status": s.status,
        "duration_ms": s.duration_ms,
        "event": s.event,
        "replay_of": s.replay_of,
    })
}

/// `requests list --json`: a JSON array of [`summary_json`] rows, in the
/// order given (the store lists newest first).
pub fn list_json(items: &[ExchangeSummary]) -> Value {
    Value::Array(items.iter().map(summary_json).collect())
}

fn header_value(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Body bytes, or why they cannot be shown.
fn load(body: &CapturedBody) -> Result<Bytes, String> {
    read_body(body).map_err(|e| format!("body no longer available: {e}"))
}

/// The `{"headers", "body", "body_base64"}` object of `show --json`, plus
/// extra fields `body_size` (bytes that streamed through), `truncated`, and
/// `body_error` when the bytes could not be read.
fn half_json(headers: &[Header], body: &CapturedBody) -> Map<String, Value> {
    let mut m = Map::new();
    let hs: Vec<Value> = headers
        .iter()
        .map(|(n, v)| json!([n, header_value(v)]))
        .collect();
    m.insert("headers".into(), Value::Array(hs));
    let (mut text, mut b64, mut err) = (Value::Null, Value::Null, Value::Null);
    match load(body) {
        Ok(b) if b.is_empty() => {}
        Ok(b) => match std::str::from_utf8(&b) {
            Ok(s) => text = Value::String(s.to_owned()),
            Err(_) => b64 = Value::String(B64.encode(&b)),
        },
        Err(e) => err = Value::String(e),
    }
    m.insert("body".into(), text);
    m.insert("body_base64".into(), b64);
    m.insert("body_size".into(), json!(body.total_len));
    m.insert("truncated".into(), json!(body.truncated));
    if !err.is_null() {
        m.insert("body_error".into(), err);
    }
    m
}

/// `requests show <ID> --json`: the list fields plus `request`, `response`
/// (with `status`, or null when there was no response) and `error`. Extra
/// fields: `target`, `remote_addr`, `relay_event_id`, and per half
/// `body_size`, `truncated` (and `body_error` if a spilled file is gone).
pub fn show_json(ex: &Exchange) -> Value {
    let mut v = summary_json(&ex.summary());
    let o = v.as_object_mut().expect("summary is an object");
    o.insert(
        "request".into(),
        Value::Object(half_json(&ex.request.headers, &ex.request.body)),
    );
    let resp = ex.response.as_ref().map_or(Value::Null, |r| {
        let mut m = Map::new();
        m.insert("status".into(), json!(r.status));
        m.extend(half_json(&r.headers, &r.body));
        Value::Object(m)
    });
    o.insert("response".into(), resp);
    o.insert("error".into(), json!(ex.error));
    o.insert("target".into(), json!(ex.target));
    o.insert("remote_addr".into(), json!(ex.remote_addr));
    o.insert("relay_event_id".into(), json!(ex.relay_event_id));
    v
}

/// Cuts `s` to at most `max` characters, marking the cut with `…`.
fn ellipsize(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The ASCII column of a hex dump: printable bytes as themselves, others
/// as `.`.
pub fn ascii_column(chunk: &[u8]) -> String {
    chunk
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}

/// `requests list`: an aligned table (ID, TIME, METHOD, PATH, STATUS,
/// DURATION, EVENT). Status shows `ERR` for failed exchanges without a
/// response; replays are marked `↻<id>` after the event.
pub fn list_human(items: &[ExchangeSummary]) -> String {
    if items.is_empty() {
        return "No requests captured yet.\n".to_owned();
    }
    let header = [
        "ID",
        "TIME (UTC)",
        "METHOD",
        "PATH",
        "STATUS",
        "DURATION",
        "EVENT",
    ];
    let rows: Vec<[String; 7]> = items
        .iter()
        .map(|s| {
            let status = match (s.status, &s.error) {
                (Some(st), _) => st.to_string(),
                (None, Some(_)) => "ERR".into(),
                (None, None) => "-".into(),
            };
            let mut event = s.event.clone().unwrap_or_else(|| "-".into());
            if let Some(r) = s.replay_of {
                let _ = write!(event, " ↻{r}");
            }
            [
                s.id.to_string(),
                s.received_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                s.method.clone(),
                ellipsize(&s.path, 60),
                status,
                crate::units::fmt_duration(s.duration_ms),
                event,
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths.iter()).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let pad = w - c.chars().count();
                l.push_str(c);
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

/// A body for the terminal: UTF-8 text as is, binary as a short hex dump.
fn body_human(out: &mut String, body: &CapturedBody) {
    let bytes = match load(body) {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(out, "[{e}]");
            return;
        }
    };
    if bytes.is_empty() && body.total_len == 0 {
        return;
    }
    match std::str::from_utf8(&bytes) {
        Ok(s) => {
            out.push_str(s);
            if !s.ends_with('\n') {
                out.push('\n');
            }
        }
        Err(_) => {
            let _ = writeln!(
                out,
                "[binary body, {} bytes; use --json for base64]",
                bytes.len()
            );
            for (i, chunk) in bytes.chunks(16).take(32).enumerate() {
                let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
                let ascii = ascii_column(chunk);
                let _ = writeln!(out, "{:08x}  {:<47}  {ascii}", i * 16, hex.join(" "));
            }
            if bytes.len() > 512 {
                out.push_str("…\n");
            }
        }
    }
    if body.truncated {
        let _ = writeln!(
            out,
            "[truncated: kept {} of {} bytes]",
            bytes.len(),
            body.total_len
        );
    }
}

/// `requests show <ID>`: a summary line, then the request (line, headers,
/// body) and the response, like `curl -v` but with nothing left out.
pub fn show_human(ex: &Exchange) -> String {
    let mut out = String::new();
    let s = ex.summary();
    let _ = writeln!(
        out,
        "#{}  {}  {} {}  ({})",
        s.id,
        rfc3339(&s.received_at),
        s.method,
        s.path,
        crate::units::fmt_duration(s.duration_ms)
    );
    if let Some(e) = &ex.event {
        let _ = writeln!(out, "event:     {e}");
    }
    if let Some(r) = ex.replay_of {
        let _ = writeln!(out, "replay of: #{r}");
    }
    let _ = writeln!(out, "target:    {}", ex.target);
    if let Some(a) = &ex.remote_addr {
        let _ = writeln!(out, "from:      {a}");
    }
    if let Some(id) = &ex.relay_event_id {
        let _ = writeln!(out, "held as:   {id}");
    }
    if let Some(e) = &ex.error {
        let _ = writeln!(out, "error:     {e}");
    }
    let _ = writeln!(out, "\n> {} {}", ex.request.method, ex.request.path);
    for (n, v) in &ex.request.headers {
        let _ = writeln!(out, "> {n}: {}", header_value(v));
    }
    out.push_str(">\n");
    body_human(&mut out, &ex.request.body);
    match &ex.response {
        Some(r) => {
            let reason = http::StatusCode::from_u16(r.status)
                .ok()
                .and_then(|c| c.canonical_reason())
                .unwrap_or("");
            let _ = writeln!(out, "\n< {} {reason}", r.status);
            for (n, v) in &r.headers {
                let _ = writeln!(out, "< {n}: {}", header_value(v));
            }
            out.push_str("<\n");
            body_human(&mut out, &r.body);
        }
        None => out.push_str("\n< (no response)\n"),
    }
    out
}

/// Quotes `s` for a POSIX shell: single quotes, with `'` written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The URL a request path goes to below a target base URL. When the recorded
/// path already starts with the base's own path (the app received the full
/// path), it is not added twice.
pub fn target_url(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    // Split "scheme://authority" from the base path.
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let (origin, base_path) = match base[after_scheme..].find('/') {
        Some(i) => base.split_at(after_scheme + i),
        None => (base, ""),
    };
    if !base_path.is_empty() {
        let rest = &path[base_path.len().min(path.len())..];
        if path.starts_with(base_path)
            && (rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
        {
            return format!("{origin}{path}");
        }
    }
    format!("{base}{path}")
}

/// Inline `--data-binary '...'` only for text this size or below; larger or
/// `@`-prefixed bodies go through stdin (argument length limits; `@` would
/// make curl read a file).
const CURL_INLINE_MAX: usize = 64 * 1024;

/// `--curl`: a shell command that sends the captured request again, with the
/// exact body bytes. `base_url` overrides the exchange's target (`--to`).
///
/// Headers are kept in order except hop-by-hop ones, those named by
/// `Connection`, `Host` and `Content-Length` (curl sets them for the new
/// connection). Text bodies are passed inline (or through `printf '%s'` on
/// stdin); binary bodies as base64 decoded on stdin, so NULs and invalid UTF-8
/// survive the shell. When the original had no `Content-Type`, curl's default
/// form type is suppressed.
pub fn curl_command(ex: &Exchange, base_url: Option<&str>) -> String {
    let req = &ex.request;
    let url = target_url(base_url.unwrap_or(&ex.target), &req.path);
    let named_by_connection: Vec<String> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| {
            header_value(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut args: Vec<String> = vec![
        "curl".into(),
        "-sS".into(),
        "-X".into(),
        shell_quote(&req.method),
        shell_quote(&url),
    ];
    for (n, v) in &req.headers {
        let lower = n.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_str())
            || lower.starts_with("proxy-")
            || lower == "host"
            || lower == "content-length"
            || lower == "expect"
            || named_by_connection.contains(&lower)
        {
            continue;
        }
        let v = header_value(v);
        // `Name;` is curl's way to send a header with an empty value.
        let h = if v.is_empty() {
            format!("{n};")
        } else {
            format!("{n}: {v}")
        };
        args.push("-H".into());
        args.push(shell_quote(&h));
    }
    let mut prefix = String::new();
    let mut note = String::new();
    match load(&req.body) {
        Ok(body) if !body.is_empty() => {
            if find_header(&req.headers, "content-type").is_none() {
                args.push("-H".into());
                args.push(shell_quote("Content-Type:"));
            }
            match std::str::from_utf8(&body) {
                Ok(text) if text.len() <= CURL_INLINE_MAX && !text.starts_with('@') => {
                    args.push("--data-binary".into());
                    args.push(shell_quote(text));
                }
                Ok(text) => {
                    prefix = format!("printf '%s' {} | ", shell_quote(text));
                    args.push("--data-binary".into());
                    args.push("@-".into());
                }
                Err(_) => {
                    prefix = format!("printf '%s' '{}' | base64 --decode | ", B64.encode(&body));
                    args.push("--data-binary".into());
                    args.push("@-".into());
                }
            }
            if req.body.truncated {
                note = format!(
                    "# note: body truncated at capture ({} of {} bytes)\n",
                    body.len(),
                    req.body.total_len
                );
            }
        }
        Ok(_) => {}
        Err(e) => note = format!("# note: {e}\n"),
    }
    format!("{note}{prefix}{}", args.join(" "))
}

/// Percent-decodes a query component (`+` is a space in forms). Invalid
/// escapes are kept literally.
/// Decodes `%XX` escapes and `+` (as a space), as in query strings and form
/// bodies; invalid escapes are kept literally, invalid UTF-8 shown lossily.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_string(path: &str) -> Vec<Value> {
    let Some((_, q)) = path.split_once('?') else {
        return Vec::new();
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            json!({"name": percent_decode(n), "value": percent_decode(v)})
        })
        .collect()
}

fn har_headers(h: &[Header]) -> Value {
    Value::Array(
        h.iter()
            .map(|(n, v)| json!({"name": n, "value": header_value(v)}))
            .collect(),
    )
}

/// HAR body fields: `text` and, for binary bodies, `encoding: "base64"`.
fn har_text(body: &CapturedBody) -> (Option<String>, Option<&'static str>, usize) {
    match load(body) {
        Ok(b) if b.is_empty() => (None, None, 0),
        Ok(b) => match std::str::from_utf8(&b) {
            Ok(s) => (Some(s.to_owned()), None, b.len()),
            Err(_) => (Some(B64.encode(&b)), Some("base64"), b.len()),
        },
        Err(_) => (None, None, 0),
    }
}

fn har_entry(ex: &Exchange) -> Value {
    let req = &ex.request;
    let mime = |h: &[Header]| {
        find_header(h, "content-type")
            .map(header_value)
            .unwrap_or_default()
    };
    let mut request = json!({
        "method": req.method,
        "url": target_url(&ex.target, &req.path),
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": har_headers(&req.headers),
        "queryString": query_string(&req.path),
        "headersSize": -1,
        "bodySize": 0,
    });
    let (text, enc, size) = har_text(&req.body);
    if let Some(text) = text {
        let mut pd = json!({"mimeType": mime(&req.headers), "text": text});
        if let Some(enc) = enc {
            pd["encoding"] = json!(enc);
        }
        request["postData"] = pd;
        request["bodySize"] = json!(size);
    }
    let response = match &ex.response {
        Some(r) => {
            let (text, enc, size) = har_text(&r.body);
            let mut content = json!({"size": size, "mimeType": mime(&r.headers)});
            if let Some(text) = text {
                content["text"] = json!(text);
            }
            if let Some(enc) = enc {
                content["encoding"] = json!(enc);
            }
            json!({
                "status": r.status,
                "statusText": http::StatusCode::from_u16(r.status).ok()
                    .and_then(|c| c.canonical_reason()).unwrap_or(""),
                "httpVersion": "HTTP/1.1",
                "cookies": [],
                "headers": har_headers(&r.headers),
                "content": content,
                "redirectURL": find_header(&r.headers, "location").map(header_value).unwrap_or_default(),
                "headersSize": -1,
                "bodySize": size,
            })
        }
        // No response (app down, cancelled): status 0, as browsers record it.
        None => json!({
            "status": 0,
            "statusText": "",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [],
            "content": {"size": 0, "mimeType": ""},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": -1,
        }),
    };
    let time = ex.duration_ms.max(0.0);
    let mut entry = json!({
        "startedDateTime": rfc3339(&ex.received_at),
        "time": time,
        "request": request,
        "response": response,
        "cache": {},
        "timings": {"send": 0, "wait": time, "receive": 0},
        "_id": ex.id,
        "_event": ex.event,
        "_replayOf": ex.replay_of,
    });
    if let Some(e) = &ex.error {
        entry["_error"] = json!(e);
    }
    entry
}

/// `requests export --har FILE`: a HAR 1.2 log (entries oldest first) that
/// browser devtools and HAR viewers import. Binary bodies are base64 with
/// `encoding: "base64"`; whtunnel-specific fields start with `_`.
pub fn har(exchanges: &[Exchange]) -> Value {
    let mut sorted: Vec<&Exchange> = exchanges.iter().collect();
    sorted.sort_by_key(|e| (e.received_at, e.id));
    json!({
        "log": {
            "version": "1.2",
            "creator": {"name": "whtunnel", "version": env!("CARGO_PKG_VERSION")},
            "pages": [],
            "entries": sorted.into_iter().map(har_entry).collect::<Vec<_>>(),
        }
    })
}

/// `requests export --har FILE`, streaming: writes a HAR 1.2 log of the
/// stored exchanges (oldest first; the newest `limit` when given) to `out`,
/// one exchange in memory at a time, so exporting a full store stays
/// bounded. Returns how many entries were written. Same shape as [`har`].
pub fn write_har<W: std::io::Write>(
    store: &Store,
    limit: Option<usize>,
    mut out: W,
) -> Result<usize, StoreError> {
    let mut rows = store.list(&ListQuery { limit })?;
    rows.reverse();
    let creator = json!({"name": "whtunnel", "version": env!("CARGO_PKG_VERSION")});
    write!(
        out,
        "{{\"log\":{{\"version\":\"1.2\",\"creator\":{creator},\"pages\":[],\"entries\":["
    )?;
    let mut n = 0;
    for row in rows {
        // Deleted by retention since the listing: skip.
        let Some(ex) = store.get(row.id)? else {
            continue;
        };
        if n > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut out, &har_entry(&ex)).map_err(std::io::Error::from)?;
        n += 1;
    }
    out.write_all(b"]}}\n")?;
    out.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::model::{BodyData, RecordedResponse};
    use crate::capture::store::tests::sample;
    use std::io::{BufRead, BufReader, Read, Write};

    fn ex_with(body: &[u8]) -> Exchange {
        let mut ex = sample(body);
        ex.id = Some(7);
        ex.event = Some("consent.created".into());
        ex
    }

    #[test]
    fn list_json_has_exactly_the_contract_fields() {
        let mut a = ex_with(b"{}").summary();
        a.replay_of = Some(3);
        let mut b = ex_with(b"").summary();
        b.id = 8;
        b.status = None;
        b.event = None;
        let v = list_json(&[b.clone(), a.clone()]);
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        for row in arr {
            let mut keys: Vec<_> = row.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            assert_eq!(
                keys,
                [
                    "duration_ms",
                    "event",
                    "id",
                    "method",
                    "path",
                    "received_at",
                    "replay_of",
                    "status"
                ]
            );
            let t = row["received_at"].as_str().unwrap();
            assert!(DateTime::parse_from_rfc3339(t).is_ok(), "{t}");
        }
        assert_eq!(arr[0]["id"], 8);
        assert_eq!(arr[0]["status"], Value::Null);
        assert_eq!(arr[0]["event"], Value::Null);
        assert_eq!(arr[0]["replay_of"], Value::Null);
        assert_eq!(arr[1]["status"], 200);
        assert_eq!(arr[1]["path"], "/hooks?key=0123");
        assert_eq!(arr[1]["method"], "POST");
        assert_eq!(arr[1]["duration_ms"], 12.5);
        assert_eq!(arr[1]["event"], "consent.created");
        assert_eq!(arr[1]["replay_of"], 3);
    }

    #[test]
    fn show_json_text_vs_base64_bodies() {
        let v = show_json(&ex_with("{\"a\":\"é\"}".as_bytes()));
        assert_eq!(v["id"], 7);
        assert_eq!(v["request"]["body"], "{\"a\":\"é\"}");
        assert_eq!(v["request"]["body_base64"], Value::Null);
        assert_eq!(
            v["request"]["headers"],
            json!([
                ["Content-Type", "application/json"],
                ["X-Dup", "one"],
                ["Host", "example.test"],
                ["X-Dup", "two"]
            ])
        );
        assert_eq!(v["response"]["status"], 200);
        assert_eq!(v["response"]["body"], "ok");
        assert_eq!(v["response"]["body_base64"], Value::Null);
        assert_eq!(v["error"], Value::Null);
        for k in [
            "id",
            "received_at",
            "method",
            "path",
            "status",
            "duration_ms",
            "event",
            "replay_of",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }

        let binary = [0u8, 159, 146, 150, 255, b'\n'];
        let mut ex = ex_with(&binary);
        ex.response = None;
        ex.error = Some("app down: connection refused".into());
        let v = show_json(&ex);
        assert_eq!(v["request"]["body"], Value::Null);
        let b64 = v["request"]["body_base64"].as_str().unwrap();
        assert_eq!(B64.decode(b64).unwrap(), binary);
        assert_eq!(v["response"], Value::Null);
        assert_eq!(v["status"], Value::Null);
        assert_eq!(v["error"], "app down: connection refused");

        // No body: both null.
        let v = show_json(&ex_with(b""));
        assert_eq!(v["request"]["body"], Value::Null);
        assert_eq!(v["request"]["body_base64"], Value::Null);

        // A spilled body file that retention deleted: reported, not a panic.
        let mut ex = ex_with(b"");
        ex.request.body = CapturedBody {
            data: BodyData::File("/nonexistent/whtunnel/x.body".into()),
            total_len: 10,
            truncated: false,
        };
        let v = show_json(&ex);
        assert_eq!(v["request"]["body"], Value::Null);
        assert!(v["request"]["body_error"]
            .as_str()
            .unwrap()
            .contains("no longer available"));
    }

    #[test]
    fn human_list_and_show() {
        let mut s = ex_with(b"{}").summary();
        s.replay_of = Some(2);
        let mut failed = ex_with(b"").summary();
        failed.status = None;
        failed.error = Some("refused".into());
        let out = list_human(&[s, failed]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID"));
        assert!(lines[1].contains("POST") && lines[1].contains("/hooks?key=0123"));
        assert!(lines[1].contains("200") && lines[1].contains("consent.created ↻2"));
        assert!(lines[2].contains("ERR"));
        // Columns line up: PATH starts at the same offset on every line.
        let col = lines[0].find("PATH").unwrap();
        assert_eq!(lines[1].find("/hooks").unwrap(), col);
        assert_eq!(list_human(&[]), "No requests captured yet.\n");

        let out = show_human(&ex_with(b"{\"type\":\"x\"}"));
        assert!(out.contains("> POST /hooks?key=0123\n"));
        assert!(out.contains("> X-Dup: one\n"));
        assert!(out.contains("{\"type\":\"x\"}\n"));
        assert!(out.contains("< 200 OK\n"));
        let bin = show_human(&ex_with(&[0, 1, 2, 255]));
        assert!(bin.contains("binary body, 4 bytes"));
        assert!(bin.contains("00 01 02 ff"));
    }

    #[test]
    fn target_urls() {
        assert_eq!(
            target_url("http://localhost:3000", "/a?x=1"),
            "http://localhost:3000/a?x=1"
        );
        assert_eq!(
            target_url("http://localhost:3000/", "/a"),
            "http://localhost:3000/a"
        );
        assert_eq!(target_url("http://h:1/base", "/a/b"), "http://h:1/base/a/b");
        assert_eq!(
            target_url("http://h:1/base", "/base/a"),
            "http://h:1/base/a"
        );
        assert_eq!(
            target_url("http://h:1/base", "/base?q"),
            "http://h:1/base?q"
        );
        assert_eq!(
            target_url("http://h:1/base", "/basement"),
            "http://h:1/base/basement"
        );
    }

    #[test]
    fn query_strings_decode() {
        let q = query_string("/p?a=1&b=x%20y+z&c&d=%E2%9C%93&e=%zz&é=%");
        assert_eq!(
            Value::Array(q),
            json!([
                {"name": "a", "value": "1"},
                {"name": "b", "value": "x y z"},
                {"name": "c", "value": ""},
                {"name": "d", "value": "✓"},
                {"name": "e", "value": "%zz"},
                {"name": "é", "value": "%"}
            ])
        );
    }

    /// Accepts one HTTP/1.1 request on 127.0.0.1:0 and returns (request
    /// line, headers, body).
    /// What the one-request server saw: request line, headers, body.
    type Seen = (String, Vec<(String, String)>, Vec<u8>);

    fn one_request_server() -> (std::net::SocketAddr, std::thread::JoinHandle<Seen>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                let h = h.trim_end_matches(['\r', '\n']);
                if h.is_empty() {
                    break;
                }
                let (n, v) = h.split_once(':').unwrap();
                headers.push((n.to_owned(), v.trim().to_owned()));
            }
            let len: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let mut w = stream;
            w.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .unwrap();
            (line.trim_end().to_owned(), headers, body)
        });
        (addr, h)
    }

    fn run_curl(cmd: &str) {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(cmd)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl failed: {}\n{cmd}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn curl_reproduces_exact_bytes() {
        let binary: Vec<u8> = (0..=255u8).chain([b'\'', 0, b'\n']).collect();
        let tricky_text = "@not-a-file 'quoted' \"dq\" $HOME `x` \\ \n\ttrailing\n\n";
        let inline_text = "{\"type\":\"consent.created\",\"s\":\"it's ✓\"}";
        for body in [
            binary,
            tricky_text.as_bytes().to_vec(),
            inline_text.as_bytes().to_vec(),
        ] {
            let (addr, server) = one_request_server();
            let mut ex = ex_with(&body);
            ex.request.method = "PUT".into();
            ex.request.headers.extend([
                ("Connection".into(), b"keep-alive, X-Hop".to_vec()),
                ("X-Hop".into(), b"gone".to_vec()),
                ("Transfer-Encoding".into(), b"chunked".to_vec()),
                ("Content-Length".into(), b"999".to_vec()),
                ("X-Signature".into(), b"t=1,v1=ab'cd".to_vec()),
            ]);
            let cmd = curl_command(&ex, Some(&format!("http://{addr}")));
            run_curl(&cmd);
            let (line, headers, got) = server.join().unwrap();
            assert_eq!(line, "PUT /hooks?key=0123 HTTP/1.1");
            assert_eq!(got, body, "body bytes differ for command:\n{cmd}");
            let names: Vec<String> = headers.iter().map(|h| h.0.to_ascii_lowercase()).collect();
            for gone in ["x-hop", "transfer-encoding", "connection"] {
                assert!(
                    !names.contains(&gone.to_owned()),
                    "{gone} forwarded: {headers:?}"
                );
            }
            let dups: Vec<&str> = headers
                .iter()
                .filter(|h| h.0 == "X-Dup")
                .map(|h| h.1.as_str())
                .collect();
            assert_eq!(dups, ["one", "two"]);
            assert!(headers.contains(&("X-Signature".into(), "t=1,v1=ab'cd".into())));
            assert!(headers.contains(&("Content-Type".into(), "application/json".into())));
            // Host is the new target's, not the captured one.
            assert!(headers.contains(&("Host".into(), addr.to_string())));
        }
    }

    #[test]
    fn curl_without_content_type_or_body() {
        let (addr, server) = one_request_server();
        let mut ex = ex_with(b"a=1");
        ex.request.headers.retain(|(n, _)| n != "Content-Type");
        let cmd = curl_command(&ex, Some(&format!("http://{addr}/")));
        assert!(cmd.starts_with("curl -sS -X 'POST' "), "{cmd}");
        run_curl(&cmd);
        let (_, headers, body) = server.join().unwrap();
        assert_eq!(body, b"a=1");
        assert!(
            !headers
                .iter()
                .any(|h| h.0.eq_ignore_ascii_case("content-type")),
            "curl's default form type must not be added: {headers:?}"
        );

        let mut ex = ex_with(b"");
        ex.request.method = "GET".into();
        let cmd = curl_command(&ex, None);
        assert!(
            cmd.contains("'http://localhost:3000/hooks?key=0123'"),
            "{cmd}"
        );
        assert!(!cmd.contains("--data-binary"));
    }

    #[test]
    fn har_is_structurally_valid() {
        let mut a = ex_with(b"{\"type\":\"a\"}");
        a.received_at += chrono::Duration::seconds(5);
        let mut b = ex_with(&[0, 255, 1]);
        b.id = Some(8);
        b.response = Some(RecordedResponse {
            status: 302,
            headers: vec![("Location".into(), b"/next".to_vec())],
            body: CapturedBody::default(),
        });
        let mut c = ex_with(b"");
        c.id = Some(9);
        c.response = None;
        c.error = Some("timeout".into());
        let v = har(&[a, b, c]);
        // Round-trips through text, as a file would.
        let v: Value = serde_json::from_str(&serde_json::to_string_pretty(&v).unwrap()).unwrap();
        let log = &v["log"];
        assert_eq!(log["version"], "1.2");
        assert_eq!(log["creator"]["name"], "whtunnel");
        assert!(log["creator"]["version"].is_string());
        let entries = log["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        // Oldest first.
        assert_eq!(entries[2]["_id"], 7);
        for e in entries {
            assert!(DateTime::parse_from_rfc3339(e["startedDateTime"].as_str().unwrap()).is_ok());
            let t = &e["timings"];
            let sum = t["send"].as_f64().unwrap()
                + t["wait"].as_f64().unwrap()
                + t["receive"].as_f64().unwrap();
            assert!((sum - e["time"].as_f64().unwrap()).abs() < 1e-9);
            assert!(e["cache"].is_object());
            let rq = &e["request"];
            for k in ["method", "url", "httpVersion"] {
                assert!(rq[k].is_string(), "request.{k}");
            }
            for k in ["cookies", "headers", "queryString"] {
                assert!(rq[k].is_array(), "request.{k}");
            }
            assert_eq!(rq["headersSize"], -1);
            assert!(rq["bodySize"].is_i64());
            let rs = &e["response"];
            assert!(rs["status"].is_u64() && rs["statusText"].is_string());
            assert!(rs["httpVersion"].is_string() && rs["redirectURL"].is_string());
            assert!(rs["cookies"].is_array() && rs["headers"].is_array());
            assert!(rs["content"]["size"].is_i64() && rs["content"]["mimeType"].is_string());
            assert_eq!(rs["headersSize"], -1);
            for h in rq["headers"].as_array().unwrap() {
                assert!(h["name"].is_string() && h["value"].is_string());
            }
        }
        let bin = &entries[0];
        assert_eq!(bin["request"]["postData"]["encoding"], "base64");
        assert_eq!(
            B64.decode(bin["request"]["postData"]["text"].as_str().unwrap())
                .unwrap(),
            [0, 255, 1]
        );
        assert_eq!(bin["request"]["postData"]["mimeType"], "application/json");
        assert_eq!(bin["response"]["redirectURL"], "/next");
        assert_eq!(bin["response"]["statusText"], "Found");
        assert_eq!(
            bin["request"]["queryString"],
            json!([{"name": "key", "value": "0123"}])
        );
        assert_eq!(entries[1]["response"]["status"], 0);
        assert_eq!(entries[1]["_error"], "timeout");
        let text = &entries[2];
        assert_eq!(
            text["request"]["url"],
            "http://localhost:3000/hooks?key=0123"
        );
        assert_eq!(text["request"]["postData"]["text"], "{\"type\":\"a\"}");
        assert!(text["request"]["postData"].get("encoding").is_none());
        assert_eq!(text["response"]["content"]["text"], "ok");
        assert_eq!(text["response"]["content"]["size"], 2);
    }

    #[test]
    fn write_har_streams_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store =
            Store::open(&crate::capture::StoreConfig::new(tmp.path().to_path_buf())).unwrap();
        let big = vec![b'z'; crate::capture::store::INLINE_BODY_MAX + 5];
        let ids: Vec<_> = [ex_with(b"first"), ex_with(&big), ex_with(b"third")]
            .iter()
            .map(|e| store.insert(e).unwrap())
            .collect();
        let mut buf = Vec::new();
        assert_eq!(write_har(&store, None, &mut buf).unwrap(), 3);
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["log"]["version"], "1.2");
        let entries = v["log"]["entries"].as_array().unwrap();
        let got: Vec<_> = entries.iter().map(|e| e["_id"].as_i64().unwrap()).collect();
        assert_eq!(got, ids);
        assert_eq!(
            entries[1]["request"]["postData"]["text"]
                .as_str()
                .unwrap()
                .len(),
            big.len()
        );
        // Same entry shape as the in-memory export.
        let one = har(&[store.get(ids[0]).unwrap().unwrap()]);
        assert_eq!(one["log"]["entries"][0], entries[0]);
        let mut buf = Vec::new();
        assert_eq!(write_har(&store, Some(1), &mut buf).unwrap(), 1);
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["log"]["entries"][0]["_id"], ids[2]);
    }
}
