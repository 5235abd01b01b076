//! `requests export --har`: HAR 1.2 for browser devtools and HAR viewers,
//! streamed from the store one exchange at a time.

use base64::Engine;
use serde_json::{json, Value};

use super::curl::target_url;
use super::json::rfc3339;
use super::{find_header, header_text, load, percent_decode, B64};
use crate::capture::model::{CapturedBody, Exchange, Header};
use crate::capture::store::{ListQuery, Store, StoreError};

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
            .map(|(n, v)| json!({"name": n, "value": header_text(v)}))
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
            .map(header_text)
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
                "redirectURL": find_header(&r.headers, "location").map(header_text).unwrap_or_default(),
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
    use crate::capture::export::ex_with;
    use crate::capture::model::RecordedResponse;
    use chrono::DateTime;

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
