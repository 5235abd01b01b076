//! `requests export --har`: HAR 1.2 for browser devtools and HAR viewers,
//! streamed from the store one exchange at a time.

use std::borrow::Cow;

use base64::Engine;
use serde::Serialize;

use super::curl::target_url;
use super::json::rfc3339;
use super::{header_text, load, B64};
use crate::capture::model::{CapturedBody, Exchange, ExchangeId};
use crate::capture::store::{ListQuery, Store, StoreError};
use crate::capture::Headers;

/// The HTTP version every entry states.
const HTTP_VERSION: &str = "HTTP/1.1";

/// `log.creator`: the application that wrote the log.
#[derive(Serialize)]
struct Creator {
    name: &'static str,
    version: &'static str,
}

impl Creator {
    /// This build of whtunnel.
    const WHTUNNEL: Creator = Creator {
        name: "whtunnel",
        version: env!("CARGO_PKG_VERSION"),
    };
}

/// A name and a value: a header, a query parameter or a cookie.
#[derive(Serialize)]
struct NameValue<'a> {
    name: Cow<'a, str>,
    value: Cow<'a, str>,
}

/// One exchange, `log.entries[]`. Fields of whtunnel's own start with `_`,
/// as HAR allows.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a> {
    started_date_time: String,
    time: f64,
    request: Request<'a>,
    response: Response<'a>,
    cache: Cache,
    timings: Timings,
    #[serde(rename = "_id")]
    id: Option<ExchangeId>,
    #[serde(rename = "_event")]
    event: Option<&'a str>,
    #[serde(rename = "_replayOf")]
    replay_of: Option<ExchangeId>,
    #[serde(rename = "_error", skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    /// Where whtunnel forwarded it (the request's `url` is the public one
    /// the sender used).
    #[serde(rename = "_target")]
    target: &'a str,
}

/// How [`write_har_with`] writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct HarOptions {
    /// Replace the values of credential headers (authorization, cookies,
    /// signatures, tokens) with `[redacted]`: see [`is_secret_header`].
    pub redact: bool,
}

/// The value a redacted header gets.
pub const REDACTED: &str = "[redacted]";

/// True for headers whose values are credentials: `Authorization`,
/// `Proxy-Authorization`, `Cookie`, `Set-Cookie`, and any whose name says
/// signature, HMAC, token, secret or API key (`Stripe-Signature`,
/// `X-Hub-Signature-256`, `X-Shopify-Hmac-Sha256`, `X-Api-Key`, ...).
pub fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || ["signature", "hmac", "token", "secret", "api-key", "apikey"]
        .iter()
        .any(|w| n.contains(w))
}

/// The URL the sender used: the scheme it came in on (`X-Forwarded-Proto`
/// when a proxy in front said so; `http` for a loopback host, else
/// `https`), its `Host` header and the path. `None` without a Host header
/// or for a replay (whtunnel itself sent it to the target).
fn public_url(ex: &Exchange) -> Option<String> {
    if ex.replay_of.is_some() {
        return None;
    }
    let req = &ex.request;
    let host = header_text(req.headers.get("host")?);
    let host = host.trim();
    if host.is_empty() || host.contains(['/', ' ']) {
        return None;
    }
    let scheme = match req.headers.get("x-forwarded-proto").map(header_text) {
        Some(p) if p.eq_ignore_ascii_case("http") || p.eq_ignore_ascii_case("https") => {
            p.to_ascii_lowercase()
        }
        _ => {
            let bare = host.rsplit_once(':').map_or(host, |(h, _)| h);
            let local = bare == "localhost" || bare.starts_with("127.") || bare == "[::1]";
            if local { "http" } else { "https" }.to_string()
        }
    };
    let path = if req.path.starts_with('/') {
        req.path.clone()
    } else {
        format!("/{}", req.path)
    };
    Some(format!("{scheme}://{host}{path}"))
}

/// `entry.cache`: always empty (nothing passes through a cache).
#[derive(Serialize)]
struct Cache {}

/// `entry.timings`: only the whole duration is measured, so it is all `wait`.
#[derive(Serialize)]
struct Timings {
    send: u8,
    wait: f64,
    receive: u8,
}

/// `entry.request`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    method: &'a str,
    url: String,
    http_version: &'static str,
    cookies: Vec<NameValue<'a>>,
    headers: Vec<NameValue<'a>>,
    query_string: Vec<NameValue<'a>>,
    headers_size: i64,
    body_size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    post_data: Option<PostData>,
}

/// `request.postData`: the body, when there is one.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PostData {
    mime_type: String,
    text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
}

/// `entry.response`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    status: u16,
    status_text: &'static str,
    http_version: &'static str,
    cookies: Vec<NameValue<'a>>,
    headers: Vec<NameValue<'a>>,
    content: Content,
    #[serde(rename = "redirectURL")]
    redirect_url: String,
    headers_size: i64,
    body_size: i64,
}

/// `response.content`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Content {
    size: usize,
    mime_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
}

/// HAR's value for "not known" (`headersSize`, a missing response's
/// `bodySize`).
const UNKNOWN: i64 = -1;

/// `request.queryString`: the decoded pairs of the URL's query, in order.
fn query_string(path: &str) -> Vec<NameValue<'_>> {
    let Some((_, q)) = path.split_once('?') else {
        return Vec::new();
    };
    form_urlencoded::parse(q.as_bytes())
        .map(|(name, value)| NameValue { name, value })
        .collect()
}

fn har_headers(h: &Headers, redact: bool) -> Vec<NameValue<'_>> {
    h.iter()
        .map(|(n, v)| NameValue {
            name: Cow::Borrowed(n),
            value: if redact && is_secret_header(n) {
                Cow::Borrowed(REDACTED)
            } else {
                Cow::Owned(header_text(v))
            },
        })
        .collect()
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

/// The `content-type` header as text, empty when there is none.
fn mime_type(h: &Headers) -> String {
    h.get("content-type").map(header_text).unwrap_or_default()
}

fn har_entry(ex: &Exchange, options: HarOptions) -> Entry<'_> {
    let req = &ex.request;
    let (text, encoding, size) = har_text(&req.body);
    let request = Request {
        method: &req.method,
        url: public_url(ex).unwrap_or_else(|| target_url(&ex.target, &req.path)),
        http_version: HTTP_VERSION,
        cookies: Vec::new(),
        headers: har_headers(&req.headers, options.redact),
        query_string: query_string(&req.path),
        headers_size: UNKNOWN,
        body_size: if text.is_some() { size } else { 0 },
        post_data: text.map(|text| PostData {
            mime_type: mime_type(&req.headers),
            text,
            encoding,
        }),
    };
    let response = match &ex.response {
        Some(r) => {
            let (text, encoding, size) = har_text(&r.body);
            Response {
                status: r.status,
                status_text: http::StatusCode::from_u16(r.status)
                    .ok()
                    .and_then(|c| c.canonical_reason())
                    .unwrap_or(""),
                http_version: HTTP_VERSION,
                cookies: Vec::new(),
                headers: har_headers(&r.headers, options.redact),
                content: Content {
                    size,
                    mime_type: mime_type(&r.headers),
                    text,
                    encoding,
                },
                redirect_url: r
                    .headers
                    .get("location")
                    .map(header_text)
                    .unwrap_or_default(),
                headers_size: UNKNOWN,
                body_size: size as i64,
            }
        }
        // No response (app down, cancelled): status 0, as browsers record it.
        None => Response {
            status: 0,
            status_text: "",
            http_version: HTTP_VERSION,
            cookies: Vec::new(),
            headers: Vec::new(),
            content: Content {
                size: 0,
                mime_type: String::new(),
                text: None,
                encoding: None,
            },
            redirect_url: String::new(),
            headers_size: UNKNOWN,
            body_size: UNKNOWN,
        },
    };
    let time = ex.duration_ms.max(0.0);
    Entry {
        started_date_time: rfc3339(&ex.received_at),
        time,
        request,
        response,
        cache: Cache {},
        timings: Timings {
            send: 0,
            wait: time,
            receive: 0,
        },
        id: ex.id,
        event: ex.event.as_deref(),
        replay_of: ex.replay_of,
        error: ex.error.as_deref(),
        target: &ex.target,
    }
}

/// `requests export --har FILE`: writes a HAR 1.2 log of the stored
/// exchanges (oldest first; the newest `limit` when given) to `out`, for
/// browser devtools and HAR viewers. Binary bodies are base64 with
/// `encoding: "base64"`; whtunnel-specific fields start with `_`. Streamed,
/// one exchange in memory at a time, so exporting a full store stays
/// bounded. Returns how many entries were written.
pub fn write_har<W: std::io::Write>(
    store: &Store,
    limit: Option<usize>,
    out: W,
) -> Result<usize, StoreError> {
    write_har_with(store, limit, HarOptions::default(), out)
}

/// [`write_har`] with [`HarOptions`] (`--redact`).
pub fn write_har_with<W: std::io::Write>(
    store: &Store,
    limit: Option<usize>,
    options: HarOptions,
    mut out: W,
) -> Result<usize, StoreError> {
    let mut rows = store.list(&ListQuery { limit })?;
    rows.reverse();
    let creator = serde_json::to_string(&Creator::WHTUNNEL).map_err(std::io::Error::from)?;
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
        serde_json::to_writer(&mut out, &har_entry(&ex, options)).map_err(std::io::Error::from)?;
        n += 1;
    }
    out.write_all(b"]}}\n")?;
    out.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::export::ex_with;
    use crate::capture::model::RecordedResponse;
    use crate::capture::StoreConfig;
    use chrono::DateTime;
    use serde_json::{json, Value};

    /// The HAR [`write_har`] makes of `exchanges` once stored, parsed back,
    /// and the ids the store gave them (in the order given).
    fn stored_har(exchanges: &[Exchange]) -> (Value, Vec<ExchangeId>) {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(&StoreConfig::new(tmp.path().to_path_buf())).unwrap();
        let ids = exchanges.iter().map(|e| store.insert(e).unwrap()).collect();
        let mut buf = Vec::new();
        let n = write_har(&store, None, &mut buf).unwrap();
        assert_eq!(n, exchanges.len());
        (serde_json::from_slice(&buf).unwrap(), ids)
    }

    #[test]
    fn query_strings_decode() {
        let q = query_string("/p?a=1&b=x%20y+z&c&d=%E2%9C%93&e=%zz&é=%");
        assert_eq!(
            serde_json::to_value(q).unwrap(),
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

    #[test]
    fn har_is_structurally_valid() {
        let mut a = ex_with(b"{\"type\":\"a\"}");
        a.received_at += chrono::Duration::seconds(5);
        let mut b = ex_with(&[0, 255, 1]);
        b.id = Some(8);
        b.response = Some(RecordedResponse {
            status: 302,
            headers: vec![("Location".into(), b"/next".to_vec())].into(),
            body: CapturedBody::default(),
        });
        let mut c = ex_with(b"");
        c.id = Some(9);
        c.response = None;
        c.error = Some("timeout".into());
        let (v, ids) = stored_har(&[a, b, c]);
        let log = &v["log"];
        assert_eq!(log["version"], "1.2");
        assert_eq!(log["creator"]["name"], "whtunnel");
        assert!(log["creator"]["version"].is_string());
        let entries = log["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        // Oldest first.
        assert_eq!(entries[2]["_id"], ids[0]);
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
        // The URL the sender used, not where whtunnel forwarded it.
        assert_eq!(
            text["request"]["url"],
            "https://example.test/hooks?key=0123"
        );
        assert_eq!(text["_target"], "http://localhost:3000");
        assert_eq!(text["request"]["postData"]["text"], "{\"type\":\"a\"}");
        assert!(text["request"]["postData"].get("encoding").is_none());
        assert_eq!(text["response"]["content"]["text"], "ok");
        assert_eq!(text["response"]["content"]["size"], 2);
    }

    #[test]
    fn public_urls_and_redaction() {
        let mut ex = ex_with(b"{}");
        ex.request.headers.to_mut().extend([
            ("Host".into(), b"127.0.0.1:8787".to_vec()),
            ("Authorization".into(), b"Bearer sk_live_1".to_vec()),
            ("Stripe-Signature".into(), b"t=1,v1=ab".to_vec()),
            ("Cookie".into(), b"s=1".to_vec()),
        ]);
        // The sample's own Host goes; the one added above stays.
        let sample_host = ex.request.headers.iter().position(|(n, _)| n == "Host");
        ex.request.headers.to_mut().remove(sample_host.unwrap());
        let entry = serde_json::to_value(har_entry(&ex, HarOptions::default())).unwrap();
        assert_eq!(
            entry["request"]["url"],
            "http://127.0.0.1:8787/hooks?key=0123"
        );
        let clear = entry["request"]["headers"].to_string();
        assert!(
            clear.contains("sk_live_1") && clear.contains("v1=ab"),
            "{clear}"
        );

        let entry = serde_json::to_value(har_entry(&ex, HarOptions { redact: true })).unwrap();
        let headers = entry["request"]["headers"].to_string();
        for secret in ["sk_live_1", "v1=ab", "s=1"] {
            assert!(!headers.contains(secret), "{secret} in {headers}");
        }
        assert_eq!(headers.matches(REDACTED).count(), 3, "{headers}");
        assert!(headers.contains("application/json"), "{headers}");

        ex.replay_of = Some(1);
        let entry = serde_json::to_value(har_entry(&ex, HarOptions::default())).unwrap();
        assert_eq!(
            entry["request"]["url"],
            "http://localhost:3000/hooks?key=0123"
        );
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
        let mut buf = Vec::new();
        assert_eq!(write_har(&store, Some(1), &mut buf).unwrap(), 1);
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["log"]["entries"][0]["_id"], ids[2]);
    }
}
