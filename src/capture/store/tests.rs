//! Tests of the capture store as a whole: round trips, retention, the file
//! pool, crash safety, migrations and readers.

use std::collections::HashSet;

use super::bodies::{FREE_DIR, FREE_POOL_MAX};
use super::schema::MIGRATIONS;
use super::*;
use crate::capture::model::{BodyData, CapturedBody, Header, Outcome};
use chrono::TimeZone;

/// The stored header format is what `sqlite3` users and older
/// versions read: `[[name, value], ...]`, `{"base64": ..}` for bytes that
/// are not UTF-8.
#[test]
fn headers_are_stored_in_the_documented_json_shape() {
    let headers: Vec<Header> = vec![
        ("content-type".into(), b"application/json".to_vec()),
        ("x-quote".into(), br#"a "b" \ c"#.to_vec()),
        ("x-raw".into(), vec![0xff, 0x00, 0x41]),
    ];
    let json = headers_to_json(&headers);
    assert_eq!(
        json,
        r#"[["content-type","application/json"],["x-quote","a \"b\" \\ c"],["x-raw",{"base64":"/wBB"}]]"#
    );
    assert_eq!(headers_from_json(&json), headers);
    assert_eq!(headers_to_json(&[]), "[]");
}

/// The stored JSON, shape and escaping, is byte for byte what serde_json
/// writes for the same list built as values: control characters, quotes
/// and backslashes, non-ASCII text, bytes that are not UTF-8. It pins the
/// format for any writer that replaces `serde_json::to_string` here.
#[test]
fn stored_header_json_is_serde_jsons_own() {
    let headers: Vec<Header> = vec![
        ("x-ctl".into(), b"a\x01\tb\n\x1f\x7f".to_vec()),
        (
            "x-utf8".into(),
            "caf\u{e9} \u{2028} \u{1f600}".as_bytes().to_vec(),
        ),
        ("x-empty".into(), Vec::new()),
        ("x-half".into(), vec![b'o', b'k', 0xc3]),
        ("x-esc".into(), b"\x1b[31mred\x1b]8;;".to_vec()),
        ("x-quote".into(), br#"say "hi" \ \\n"#.to_vec()),
        // Names read back from a file or typed by a person may be any text.
        ("x-\"name\"\\\u{7}".into(), b"plain".to_vec()),
        ("x-caf\u{e9}".into(), b"".to_vec()),
    ];
    let json = headers_to_json(&headers);
    assert_eq!(json, serde_json_headers(&headers));
    assert_eq!(headers_from_json(&json), headers);
}

/// serde_json's text for a header list built as values: the oracle the
/// stored JSON is held to.
fn serde_json_headers(headers: &[Header]) -> String {
    use base64::Engine;
    let values: Vec<(&str, serde_json::Value)> = headers
        .iter()
        .map(|(n, v)| {
            let v = match std::str::from_utf8(v) {
                Ok(s) => serde_json::Value::from(s),
                Err(_) => serde_json::json!({
                    "base64": base64::engine::general_purpose::STANDARD.encode(v)
                }),
            };
            (n.as_str(), v)
        })
        .collect();
    serde_json::to_string(&values).unwrap()
}

/// Thousands of header lists of random bytes drawn mostly from what needs
/// care (control bytes, quotes, backslashes, multi-byte and broken UTF-8),
/// each stored and compared with serde_json's text, as received headers
/// and as owned pairs.
#[test]
fn stored_header_json_matches_serde_json_on_random_headers() {
    use rand::{Rng, SeedableRng};
    let alphabet: &[&[u8]] = &[
        b"a",
        b"Z",
        b"0",
        b" ",
        b"-",
        b"\"",
        b"\\",
        b"\n",
        b"\x00",
        b"\x1f",
        b"\x7f",
        "\u{e9}".as_bytes(),
        "\u{2028}".as_bytes(),
        "\u{1f600}".as_bytes(),
        b"\xc3",
        b"\xff",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let mut escaped = 0;
    for _ in 0..3000 {
        let n = rng.random_range(0..6);
        let headers: Vec<Header> = (0..n)
            .map(|i| {
                let len = rng.random_range(0..12);
                let mut value = Vec::new();
                for _ in 0..len {
                    value.extend_from_slice(alphabet[rng.random_range(0..alphabet.len())]);
                }
                (format!("x-h{i}"), value)
            })
            .collect();
        let json = headers_to_json(&headers);
        escaped += usize::from(json.contains('\\'));
        assert_eq!(json, serde_json_headers(&headers), "{headers:?}");
        assert_eq!(headers_from_json(&json), headers);
        // As received: the values a header map takes (no control bytes but tab).
        let mut map = http::HeaderMap::new();
        for (n, v) in &headers {
            if let Ok(v) = http::HeaderValue::from_bytes(v) {
                map.append(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), v);
            }
        }
        let received = crate::capture::headers::Headers::from_map(&map);
        assert!(received.is_received());
        assert_eq!(
            headers_to_json(&received),
            serde_json_headers(&received.clone().into_owned())
        );
    }
    assert!(escaped > 1000, "too few lists needed escaping: {escaped}");
}

/// A representative exchange with a body of `req` bytes.
pub(crate) fn sample(req: &[u8]) -> Exchange {
    Exchange {
        id: None,
        received_at: Utc::now(),
        target: "http://localhost:3000".into(),
        remote_addr: Some("203.0.113.7:5555".into()),
        request: RecordedRequest {
            method: "POST".into(),
            path: "/hooks?key=0123".into(),
            headers: vec![
                ("Content-Type".into(), b"application/json".to_vec()),
                ("X-Dup".into(), b"one".to_vec()),
                ("Host".into(), b"example.test".to_vec()),
                ("X-Dup".into(), b"two".to_vec()),
            ]
            .into(),
            body: CapturedBody::from_bytes(req.to_vec()),
        },
        response: Some(RecordedResponse {
            status: 200,
            headers: vec![("content-type".into(), b"text/plain".to_vec())].into(),
            body: CapturedBody::from_bytes(&b"ok"[..]),
        }),
        duration_ms: 12.5,
        outcome: Some(Outcome::Answered),
        error: None,
        event: None,
        replay_of: None,
        relay_event_id: None,
        live: 0,
        webhook: Default::default(),
        body_proof: Default::default(),
    }
}

/// [`sample`] with every optional field set: an error, an event, a
/// replay, a relay event, a checked Stripe signature, a sender timeout and
/// the body proof.
pub(crate) fn sample_full(req: &[u8]) -> Exchange {
    use crate::capture::model::{BodyDigest, BodyProof, SignatureCheck, WebhookInfo};
    let mut ex = sample(req);
    ex.remote_addr = Some("198.51.100.9:443".into());
    ex.error = Some("reset after the head".into());
    ex.event = Some("invoice.paid".into());
    ex.replay_of = Some(3);
    ex.relay_event_id = Some("ev_full".into());
    ex.webhook = WebhookInfo {
        provider: Some("stripe".into()),
        delivery_id: Some("evt_1".into()),
        signature: Some(SignatureCheck {
            scheme: "stripe".into(),
            verdict: crate::verify::Verdict::Invalid,
            reason: Some("signature mismatch".into()),
        }),
        sender_timeout_ms: Some(20_000),
    };
    ex.body_proof = BodyProof {
        relay: Some(BodyDigest::Blake3([7; 32])),
        intact: Some(true),
    };
    ex
}

fn open(dir: &Path) -> Store {
    Store::open(&StoreConfig::new(dir.to_path_buf())).unwrap()
}

#[test]
fn round_trip_binary_and_utf8_bodies_and_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path());
    let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let mut ex = sample(&binary);
    ex.received_at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
        + chrono::Duration::microseconds(123_456);
    ex.request
        .headers
        .to_mut()
        .push(("X-Raw".into(), vec![0xff, 0x00, b'a', 0x80]));
    ex.replay_of = Some(41);
    ex.relay_event_id = Some("evt-1".into());
    ex.error = Some("boom".into());
    ex.event = Some("consent.created".into());
    let id = s.insert(&ex).unwrap();
    let got = s.get(id).unwrap().unwrap();
    let mut want = ex.clone();
    want.id = Some(id);
    assert_eq!(got, want);
    assert_eq!(read_body(&got.request.body).unwrap(), &binary[..]);

    // UTF-8 (with multi-byte characters and a trailing newline) exact too.
    let text = "{\"type\":\"ünïcödé ✓\"}\n".as_bytes();
    let id2 = s.insert(&sample(text)).unwrap();
    let got2 = s.get(id2).unwrap().unwrap();
    assert_eq!(read_body(&got2.request.body).unwrap(), text);
    let headers: Vec<_> = got2.request.headers.iter().collect();
    let names: Vec<_> = headers.iter().map(|h| h.0).collect();
    assert_eq!(names, ["Content-Type", "X-Dup", "Host", "X-Dup"]);
    assert_eq!(headers[1].1, b"one");
    assert_eq!(headers[3].1, b"two");
    assert!(s.get(9999).unwrap().is_none());
}

/// Rows of one batch share the INSERT, whose parameters keep their values
/// from row to row: each row reads back as it was, whatever the row before
/// it set, with every optional column set and with none.
#[test]
fn a_batch_of_full_and_bare_rows_reads_back_row_by_row() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path());
    // Stored to the microsecond.
    let at = Utc.with_ymd_and_hms(2026, 12, 3, 4, 5, 6).unwrap();
    let mut full = sample_full(b"{\"type\":\"invoice.paid\"}");
    full.received_at = at + chrono::Duration::microseconds(7);
    let mut bare = sample(b"");
    bare.received_at = at;
    bare.remote_addr = None;
    bare.response = None;
    bare.outcome = None;
    // Bodies in files: the inline body columns NULL, the file ones set.
    let big: Vec<u8> = (0..INLINE_BODY_MAX as u32 + 10)
        .map(|i| (i % 251) as u8)
        .collect();
    let mut files = sample(&big);
    files.received_at = at;
    if let Some(r) = files.response.as_mut() {
        r.body = CapturedBody::from_bytes(big.clone());
    }
    // An answer with an empty body: no inline response body.
    let mut empty = full.clone();
    if let Some(r) = empty.response.as_mut() {
        r.body = CapturedBody::default();
    }
    let rows = [
        &full, &bare, &files, &full, &bare, &bare, &empty, &files, &full, &full, &bare, &files,
        &empty,
    ];
    let batch: Vec<Exchange> = rows.iter().map(|ex| (*ex).clone()).collect();
    let ids: Vec<ExchangeId> = s
        .insert_batch(&batch)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ids.len(), rows.len());
    // Which nullable columns hold NULL, in the INSERT's order.
    let nulls = |id: ExchangeId| -> String {
        s.conn
            .query_row(
                "SELECT (remote_addr IS NULL) || (status IS NULL) || (error IS NULL)
                     || (event IS NULL) || (replay_of IS NULL) || (relay_event_id IS NULL)
                     || (req_body_file IS NULL) || (resp_body_file IS NULL)
                     || (outcome IS NULL) || (provider IS NULL) || (delivery_id IS NULL)
                     || (sig_scheme IS NULL) || (sig_verdict IS NULL) || (sig_reason IS NULL)
                     || (relay_body_digest IS NULL) || (body_intact IS NULL)
                     || (sender_timeout_ms IS NULL) || (resp_headers IS NULL)
                     || (req_body IS NULL) || (resp_body IS NULL)
                 FROM exchanges WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
    };
    for (id, ex) in ids.into_iter().zip(rows) {
        let mut want = ex.clone();
        want.id = Some(id);
        let got = s.get(id).unwrap().unwrap();
        let expected_nulls = if std::ptr::eq(ex, &bare) {
            "11111111111111111111"
        } else if std::ptr::eq(ex, &files) {
            "00111100011111111011"
        } else if std::ptr::eq(ex, &empty) {
            "00000011000000000001"
        } else {
            "00000011000000000000"
        };
        assert_eq!(nulls(id), expected_nulls, "row {id}");
        if std::ptr::eq(ex, &files) {
            assert_eq!(read_body(&got.request.body).unwrap(), &big[..]);
            let resp = got.response.as_ref().unwrap();
            assert_eq!(read_body(&resp.body).unwrap(), &big[..]);
        } else {
            assert_eq!(got, want, "row {id}");
        }
        assert_eq!(s.summary(id).unwrap().unwrap(), want.summary(), "row {id}");
    }
}

#[test]
fn exchange_without_response_and_empty_body() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path());
    let mut ex = sample(b"");
    ex.response = None;
    ex.error = Some("connection refused".into());
    let id = s.insert(&ex).unwrap();
    let got = s.get(id).unwrap().unwrap();
    assert!(got.response.is_none());
    assert_eq!(got.request.body, CapturedBody::default());
    let row = &s.list(&ListQuery::default()).unwrap()[0];
    assert_eq!(row.status, None);
    assert_eq!(row.error.as_deref(), Some("connection refused"));
}

#[test]
fn large_bodies_go_to_files_and_tee_files_are_adopted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path());
    let big: Vec<u8> = (0..INLINE_BODY_MAX as u32 + 10)
        .map(|i| (i % 251) as u8)
        .collect();
    let id = s.insert(&sample(&big)).unwrap();
    let got = s.get(id).unwrap().unwrap();
    let BodyData::File(p) = &got.request.body.data else {
        panic!("expected a file body, got {:?}", got.request.body.data);
    };
    assert!(p.starts_with(s.bodies_dir()));
    assert_eq!(fs::read(p).unwrap(), big);

    // A spilled tee file is moved (not copied) into bodies/.
    fs::create_dir_all(s.spill_dir()).unwrap();
    let spilled = s.spill_dir().join("x.spill");
    fs::write(&spilled, &big).unwrap();
    let mut ex = sample(b"");
    ex.request.body = CapturedBody {
        data: BodyData::File(spilled.clone()),
        total_len: big.len() as u64 + 100,
        truncated: true,
    };
    let id = s.insert(&ex).unwrap();
    assert!(!spilled.exists());
    let got = s.get(id).unwrap().unwrap();
    assert_eq!(read_body(&got.request.body).unwrap(), &big[..]);
    assert_eq!(got.request.body.total_len, big.len() as u64 + 100);
    assert!(got.request.body.truncated);
    assert_eq!(
        s.total_body_bytes().unwrap(),
        2 * big.len() as u64 + 2 * 2 // + the two "ok" responses
    );
}

#[test]
fn list_is_newest_first_and_reads_no_payload_column() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path());
    let t0 = Utc::now();
    // Stored out of order: listing follows received time, not id.
    for (i, secs) in [(0, 10), (1, 30), (2, 20)] {
        let mut ex = sample(format!("body {i}").as_bytes());
        ex.received_at = t0 + chrono::Duration::seconds(secs);
        ex.request.path = format!("/{i}");
        s.insert(&ex).unwrap();
    }
    // list() stops decoding a row before its headers and bodies: every
    // summary column comes before every payload column.
    let position = |col: &str| -> i64 {
        s.conn
            .query_row(
                "SELECT cid FROM pragma_table_info('exchanges') WHERE name = ?1",
                [col],
                |r| r.get(0),
            )
            .unwrap()
    };
    let last_summary = Store::SUMMARY_COLS
        .split(',')
        .map(|c| position(c.trim()))
        .max()
        .unwrap();
    for payload in ["req_headers", "resp_headers", "req_body", "resp_body"] {
        assert!(
            position(payload) > last_summary,
            "{payload} comes too early"
        );
    }
    let rows = s.list(&ListQuery::default()).unwrap();
    let paths: Vec<_> = rows.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/1", "/2", "/0"]);
    assert_eq!(rows[0].request_size, 6);
    assert_eq!(rows[0].response_size, 2);
    assert_eq!(rows[0].status, Some(200));
    let two = s.list(&ListQuery { limit: Some(2) }).unwrap();
    assert_eq!(two.len(), 2);
    assert_eq!(two[0].path, "/1");
}

#[test]
fn retention_by_count() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
    cfg.max_exchanges = 5;
    let mut s = Store::open(&cfg).unwrap();
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(s.insert(&sample(format!("{i}").as_bytes())).unwrap());
    }
    assert_eq!(s.count().unwrap(), 5);
    let kept: Vec<_> = s
        .list(&ListQuery::default())
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    let mut want = ids[7..].to_vec();
    want.reverse();
    assert_eq!(kept, want);
    assert!(s.get(ids[0]).unwrap().is_none());
    // The kept ones keep their headers and bodies.
    for (i, id) in ids.iter().enumerate().skip(7) {
        let ex = s.get(*id).unwrap().unwrap();
        assert_eq!(
            ex.request.body,
            CapturedBody::from_bytes(format!("{i}").into_bytes())
        );
        assert_eq!(ex.request.headers, sample(b"").request.headers);
    }
}

#[test]
fn retention_counts_what_another_writer_added() {
    // The writer caches its totals between batches; a second writer (what
    // `whtunnel replay` opens) and a manual delete must not fool it.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
    cfg.max_exchanges = 4;
    let mut s = Store::open(&cfg).unwrap();
    let mut other = Store::open_secondary(&cfg).unwrap();
    for i in 0..3 {
        s.insert(&sample(format!("{i}").as_bytes())).unwrap();
    }
    for i in 0..3 {
        other.insert(&sample(format!("o{i}").as_bytes())).unwrap();
    }
    // A secondary writer leaves retention to the primary.
    assert_eq!(other.count().unwrap(), 6);
    s.insert(&sample(b"x")).unwrap();
    assert_eq!(s.count().unwrap(), 4, "the cache missed the other writer");
    for n in 0..retention::PARTITIONS {
        let t = retention::partition_table(n);
        other
            .conn
            .execute_batch(&format!("DELETE FROM {t}"))
            .unwrap();
    }
    for i in 0..4 {
        s.insert(&sample(format!("y{i}").as_bytes())).unwrap();
    }
    assert_eq!(s.count().unwrap(), 4, "the cache missed the delete");
    assert_eq!(s.parts.as_ref().unwrap().count(), 4);
    assert_eq!(
        s.parts.as_ref().unwrap().bytes(),
        s.total_body_bytes().unwrap()
    );
}

#[test]
fn retention_by_bytes_removes_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
    let body = vec![7u8; INLINE_BODY_MAX + 1]; // spilled to a file each
    cfg.max_bytes = 3 * (body.len() as u64 + 2) + 10; // room for three
    let mut s = Store::open(&cfg).unwrap();
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(s.insert(&sample(&body)).unwrap());
    }
    assert_eq!(s.count().unwrap(), 3);
    assert!(s.total_body_bytes().unwrap() <= cfg.max_bytes);
    let files = fs::read_dir(s.bodies_dir()).unwrap().count();
    assert_eq!(files, 3, "files of deleted exchanges must be removed");
    for id in &ids[3..] {
        let ex = s.get(*id).unwrap().unwrap();
        assert_eq!(read_body(&ex.request.body).unwrap().len(), body.len());
    }
    assert!(s.get(ids[2]).unwrap().is_none());
}

#[test]
fn a_body_shared_with_a_replay_is_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
    let big = INLINE_BODY_MAX + 100;
    cfg.max_bytes = 3 * (big as u64 + 2) + 10; // room for three
    let mut s = Store::open(&cfg).unwrap();
    let original = vec![b'o'; big];
    let first = s.insert(&sample(&original)).unwrap();
    // A replay stores the original's body file again: a hard link.
    let mut replay = s.get(first).unwrap().unwrap();
    replay.id = None;
    replay.replay_of = Some(first);
    let replay_id = s.insert(&replay).unwrap();
    // Two more bodies evict the original (the oldest); its file goes to
    // the pool of freed files.
    for i in 0..2u8 {
        s.insert(&sample(&vec![i; big])).unwrap();
    }
    assert!(s.get(first).unwrap().is_none(), "the original was evicted");
    // Room for everything from now on: new bodies reuse every freed file
    // while the replay stays.
    s.config.max_bytes = u64::MAX;
    for i in 2..8u8 {
        s.insert(&sample(&vec![i; big])).unwrap();
        let ex = s.get(replay_id).unwrap().expect("the replay is kept");
        assert_eq!(
            read_body(&ex.request.body).unwrap(),
            original,
            "after {i} more bodies"
        );
    }
}

#[cfg(unix)]
#[test]
fn freed_body_files_are_reused_and_cut_to_length() {
    use std::os::unix::fs::MetadataExt;
    let inodes = |dir: &Path| -> HashSet<u64> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().ino())
            .collect()
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
    let big = INLINE_BODY_MAX + 500;
    cfg.max_bytes = 2 * (big as u64 + 2) + 10; // room for two
    let mut s = Store::open(&cfg).unwrap();
    let free_dir = tmp.path().join(FREE_DIR);
    // Two large bodies, then smaller ones that evict and reuse them.
    s.insert(&sample(&vec![1u8; big])).unwrap();
    s.insert(&sample(&vec![2u8; big])).unwrap();
    let mut ids = Vec::new();
    let mut reused = 0;
    for i in 3..9u8 {
        let pooled = inodes(&free_dir);
        let body = vec![i; INLINE_BODY_MAX + 1 + i as usize];
        ids.push((s.insert(&sample(&body)).unwrap(), body));
        reused += inodes(s.bodies_dir()).intersection(&pooled).count();
        assert!(fs::read_dir(&free_dir).unwrap().count() <= FREE_POOL_MAX);
    }
    assert!(reused >= 4, "freed files were not reused ({reused})");
    // Every reused file was longer than its new body: cut to length.
    for (id, body) in &ids[ids.len() - 2..] {
        let ex = s.get(*id).unwrap().unwrap();
        assert_eq!(&read_body(&ex.request.body).unwrap()[..], &body[..]);
    }
    assert_eq!(fs::read_dir(s.bodies_dir()).unwrap().count(), 2);
    // Pooled files belong to no exchange: gone when the store closes.
    assert!(!inodes(&free_dir).is_empty());
    drop(s);
    assert_eq!(fs::read_dir(&free_dir).unwrap().count(), 0);
    let s = Store::open(&cfg).unwrap();
    assert_eq!(s.count().unwrap(), 2);
}

#[test]
fn a_secondary_writer_leaves_retention_to_the_agent() {
    // `whtunnel replay` opens the store with the default limits; an agent
    // may keep more. The replay must not trim the agent's store.
    let tmp = tempfile::tempdir().unwrap();
    let mut agent_cfg = StoreConfig::new(tmp.path().to_path_buf());
    agent_cfg.max_exchanges = 50;
    let mut agent = Store::open(&agent_cfg).unwrap();
    for i in 0..20 {
        agent.insert(&sample(format!("{i}").as_bytes())).unwrap();
    }
    let mut replay_cfg = StoreConfig::new(tmp.path().to_path_buf());
    replay_cfg.max_exchanges = 10;
    let mut replay = Store::open_secondary(&replay_cfg).unwrap();
    replay.insert(&sample(b"replayed")).unwrap();
    assert_eq!(replay.count().unwrap(), 21);
    assert_eq!(fs::read_dir(tmp.path().join(FREE_DIR)).unwrap().count(), 0);
    // The agent's own limit still holds on its next commit.
    for i in 0..40 {
        agent.insert(&sample(format!("a{i}").as_bytes())).unwrap();
    }
    assert!(agent.count().unwrap() <= 50);
}

#[cfg(unix)]
#[test]
fn wal_mode_and_private_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new/data");
    let mut s = open(&dir);
    s.insert(&sample(b"x")).unwrap();
    let mode: String = s
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = s
        .conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 1, "synchronous=NORMAL");
    let m = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(m(&dir.join(DB_FILE)), 0o600);
    assert_eq!(m(&dir.join("capture.db-wal")), 0o600);
    assert_eq!(m(&dir.join("capture.db-shm")), 0o600);
    assert_eq!(m(&dir), 0o700);
    assert_eq!(m(&dir.join("bodies")), 0o700);
    // Body files too.
    s.insert(&sample(&vec![1u8; INLINE_BODY_MAX + 1])).unwrap();
    for e in fs::read_dir(s.bodies_dir()).unwrap() {
        assert_eq!(m(&e.unwrap().path()), 0o600);
    }
}

#[test]
fn migrations_are_versioned_and_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let id = {
        let mut s = open(tmp.path());
        assert_eq!(s.schema_version().unwrap(), Store::latest_schema_version());
        s.insert(&sample(b"keep me")).unwrap()
    };
    // Reopen: no migration re-run (would fail on CREATE TABLE), data kept.
    let s = open(tmp.path());
    assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
    assert!(s.get(id).unwrap().is_some());
    // A newer schema is refused with a clear error instead of misread.
    s.conn.pragma_update(None, "user_version", 99).unwrap();
    drop(s);
    let err = Store::open(&StoreConfig::new(tmp.path().to_path_buf()))
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
}

#[test]
fn reader_sees_writer_and_refuses_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = open(tmp.path());
    let mut r = Store::open_reader(tmp.path()).unwrap();
    assert!(r.list(&ListQuery::default()).unwrap().is_empty());
    let mut ex = sample(b"{}");
    ex.relay_event_id = Some("held-42".into());
    let id = w.insert(&ex).unwrap();
    let found = r.find_by_relay_event("held-42").unwrap().unwrap();
    assert_eq!(found.id, id);
    assert!(r.find_by_relay_event("nope").unwrap().is_none());
    assert_eq!(
        r.get(id).unwrap().unwrap().relay_event_id.as_deref(),
        Some("held-42")
    );
    assert!(matches!(r.insert(&ex), Err(StoreError::ReadOnly)));
    // Each partition's partial index is there for dedup lookups.
    let mut stmt = r
        .conn
        .prepare("EXPLAIN QUERY PLAN SELECT id FROM exchanges WHERE relay_event_id = 'x'")
        .unwrap();
    let plan: Vec<String> = stmt
        .query_map([], |row| row.get(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for n in 0..retention::PARTITIONS {
        let index = format!("USING COVERING INDEX exchanges_p{n}_relay_event ");
        assert!(plan.iter().any(|p| p.contains(&index)), "{plan:?}");
    }
}

#[test]
fn orphan_files_are_cleaned_on_open_only_by_the_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let kept = {
        let mut s = open(tmp.path());
        s.insert(&sample(&vec![3u8; INLINE_BODY_MAX + 1])).unwrap()
    };
    let orphan = tmp.path().join("bodies/deadbeef.body");
    let tmp_file = tmp.path().join("bodies/x.body.tmp");
    fs::write(&orphan, b"lost").unwrap();
    fs::write(&tmp_file, b"half").unwrap();
    fs::create_dir_all(tmp.path().join("spill")).unwrap();
    let spill = tmp.path().join("spill/1-1.spill");
    fs::write(&spill, b"partial").unwrap();
    drop(Store::open_reader(tmp.path()).unwrap());
    assert!(orphan.exists(), "readers must not delete files");
    let s = open(tmp.path());
    assert!(!orphan.exists() && !tmp_file.exists() && !spill.exists());
    let ex = s.get(kept).unwrap().unwrap();
    assert_eq!(
        read_body(&ex.request.body).unwrap().len(),
        INLINE_BODY_MAX + 1
    );
}

#[test]
fn batch_with_a_bad_exchange_keeps_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path());
    let mut bad = sample(b"");
    bad.request.body = CapturedBody {
        data: BodyData::File(tmp.path().join("missing.spill")),
        total_len: 10,
        truncated: false,
    };
    let res = s.insert_batch(&[sample(b"a"), bad, sample(b"c")]).unwrap();
    assert!(res[0].is_ok() && res[1].is_err() && res[2].is_ok());
    assert_eq!(s.count().unwrap(), 2);
}

#[test]
fn a_row_that_fails_mid_batch_rolls_the_batch_back_and_the_others_are_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path());
    // SQLite refuses this one row only once the rows before it are written
    // in the batch's transaction: the batch must roll back whole before
    // the rows are stored one by one.
    for n in 0..PARTITIONS {
        s.conn
            .execute_batch(&format!(
                "CREATE TRIGGER refuse_{n} BEFORE INSERT ON {t} WHEN NEW.path = '/refused'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
                t = partition_table(n)
            ))
            .unwrap();
    }
    let mut refused = sample(b"b");
    refused.request.path = "/refused".into();
    let res = s
        .insert_batch(&[sample(b"a"), refused, sample(b"c")])
        .unwrap();
    assert!(res[0].is_ok() && res[2].is_ok(), "{res:?}");
    let err = res[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("refused"), "{err}");
    assert!(s.conn.is_autocommit(), "no transaction is left open");
    // Each stored once: the rolled-back batch left nothing behind.
    assert_eq!(s.count().unwrap(), 2);
    let bodies: Vec<Vec<u8>> = s
        .list(&ListQuery::default())
        .unwrap()
        .iter()
        .map(|e| match s.get(e.id).unwrap().unwrap().request.body.data {
            BodyData::Memory(b) => b.to_vec(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(bodies, [b"c".to_vec(), b"a".to_vec()]);
    // And the next batch goes through as one.
    let res = s.insert_batch(&[sample(b"d"), sample(b"e")]).unwrap();
    assert!(res.iter().all(Result::is_ok), "{res:?}");
    assert_eq!(s.count().unwrap(), 4);
}

/// Helper for the kill -9 test: writes until killed. Run only when
/// re-invoked by `survives_kill_9`.
#[test]
#[ignore]
fn crash_writer_helper() {
    let Ok(dir) = std::env::var("WHTUNNEL_CRASH_DIR") else {
        return;
    };
    let mut cfg = StoreConfig::new(PathBuf::from(dir));
    cfg.max_exchanges = 300; // retention deletes run too
    let mut s = Store::open(&cfg).unwrap();
    let big = vec![9u8; INLINE_BODY_MAX + 1];
    let mut i = 0u64;
    loop {
        let batch: Vec<Exchange> = (0..20)
            .map(|j| {
                sample(if (i + j).is_multiple_of(7) {
                    &big
                } else {
                    b"{\"type\":\"t\"}"
                })
            })
            .collect();
        s.insert_batch(&batch).unwrap();
        i += 1;
        if i == 5 {
            fs::write(s.dir().join("started"), b"1").unwrap();
        }
    }
}

#[cfg(unix)]
#[test]
fn survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let _ = fs::remove_file(tmp.path().join("started"));
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "capture::store::tests::crash_writer_helper",
                "--ignored",
                "--nocapture",
            ])
            .env("WHTUNNEL_CRASH_DIR", tmp.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !tmp.path().join("started").exists() {
            assert!(std::time::Instant::now() < deadline, "helper never started");
            assert!(child.try_wait().unwrap().is_none(), "helper exited early");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(50 + 37 * round));
        child.kill().unwrap(); // SIGKILL on unix
        child.wait().unwrap();

        let s = open(tmp.path());
        assert_eq!(s.integrity_check().unwrap(), "ok");
        let n = s.count().unwrap();
        assert!(n > 0 && n <= 300 + 20, "count {n}");
        // Every referenced file exists; no unreferenced file is left.
        let mut referenced = 0;
        for row in s.list(&ListQuery::default()).unwrap() {
            let ex = s.get(row.id).unwrap().unwrap();
            if let BodyData::File(p) = &ex.request.body.data {
                assert_eq!(fs::read(p).unwrap().len(), INLINE_BODY_MAX + 1);
                referenced += 1;
            }
        }
        assert_eq!(fs::read_dir(s.bodies_dir()).unwrap().count(), referenced);
    }
}

#[test]
fn reinserting_a_stored_file_body_shares_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path());
    let big = vec![5u8; INLINE_BODY_MAX + 1];
    let orig = s.insert(&sample(&big)).unwrap();
    // A replay built from the stored exchange reuses its body as is.
    let mut replay = s.get(orig).unwrap().unwrap();
    replay.id = None;
    replay.replay_of = Some(orig);
    let rid = s.insert(&replay).unwrap();
    for id in [orig, rid] {
        let ex = s.get(id).unwrap().unwrap();
        assert_eq!(read_body(&ex.request.body).unwrap(), &big[..], "id {id}");
    }
    // Each row owns its own name: retention of one keeps the other's.
    let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
    cfg.max_exchanges = 1;
    drop(s);
    let mut s = Store::open(&cfg).unwrap();
    s.insert(&sample(b"small")).unwrap();
    assert_eq!(fs::read_dir(s.bodies_dir()).unwrap().count(), 0);
}

#[test]
fn a_broken_database_fails_the_whole_batch_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path());
    s.conn
        .busy_timeout(std::time::Duration::from_secs(1))
        .unwrap();
    let blocker = Connection::open(tmp.path().join(DB_FILE)).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let big = vec![1u8; INLINE_BODY_MAX + 1];
    let start = std::time::Instant::now();
    let res = s
        .insert_batch(&[sample(b"a"), sample(&big), sample(b"c")])
        .unwrap();
    // One busy wait for the batch (1 s), not one per exchange (4 s); the
    // margin is wide because a loaded CI machine stretches every wait.
    assert!(start.elapsed() < std::time::Duration::from_secs(3));
    assert!(res.iter().all(|r| r.is_err()));
    assert_eq!(
        fs::read_dir(s.bodies_dir()).unwrap().count(),
        0,
        "no orphans left"
    );
    blocker.execute_batch("ROLLBACK").unwrap();
    assert!(s.insert(&sample(b"d")).is_ok());
}

#[test]
fn the_sender_and_its_signature_check_are_stored_and_listed() {
    use crate::capture::model::{SignatureCheck, Verdict, WebhookInfo};
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Store::open(&StoreConfig::new(tmp.path().to_path_buf())).unwrap();
    let mut ex = sample(b"{}");
    ex.webhook = WebhookInfo {
        provider: Some("stripe".into()),
        delivery_id: Some("evt_1".into()),
        signature: Some(SignatureCheck {
            scheme: "stripe".into(),
            verdict: Verdict::Invalid,
            reason: Some("signature mismatch".into()),
        }),
        sender_timeout_ms: Some(10_000),
    };
    ex.body_proof = crate::capture::BodyProof {
        relay: Some(crate::capture::BodyDigest::Blake3([7; 32])),
        intact: Some(false),
    };
    let id = s.insert(&ex).unwrap();
    let got = s.get(id).unwrap().unwrap();
    assert_eq!(got.webhook, ex.webhook);
    assert_eq!(got.body_proof, ex.body_proof);
    let row = &s.list(&ListQuery::default()).unwrap()[0];
    assert_eq!(row.provider.as_deref(), Some("stripe"));
    assert_eq!(row.sender_timeout_ms, Some(10_000));
    assert_eq!(row.signature_reason.as_deref(), Some("signature mismatch"));
    assert_eq!(row.signature, Some(Verdict::Invalid));
    assert_eq!(row.delivery_id.as_deref(), Some("evt_1"));
    let plain = s.insert(&sample(b"x")).unwrap();
    assert_eq!(
        s.get(plain).unwrap().unwrap().webhook,
        WebhookInfo::default()
    );
}

#[test]
fn a_body_left_to_the_store_is_proven_against_the_stored_bytes_when_asked() {
    use crate::capture::{body_intact, BodyDigest, BodyProof};
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path());
    let left_to_store = |body: &[u8], relay_saw: &[u8]| {
        let mut ex = sample(body);
        ex.body_proof = BodyProof {
            relay: Some(BodyDigest::Blake3(*blake3::hash(relay_saw).as_bytes())),
            intact: None,
        };
        ex
    };
    let intact = |s: &Store, id| body_intact(&s.get(id).unwrap().unwrap());
    let small = br#"{"amount":100}"#;
    let same = s.insert(&left_to_store(small, small)).unwrap();
    assert_eq!(intact(&s, same), Some(true));
    let changed = s
        .insert(&left_to_store(br#"{"amount":900}"#, small))
        .unwrap();
    assert_eq!(intact(&s, changed), Some(false));
    // Reading the exchange does not make the proof (a body search reads
    // every exchange); the column stays empty and the proof is made from
    // the bytes each time it is asked for.
    assert_eq!(s.get(same).unwrap().unwrap().body_proof.intact, None);
    let stored: Option<bool> = s
        .conn
        .query_row(
            "SELECT body_intact FROM exchanges WHERE id = ?1",
            [same],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, None);

    // A body in a file, read in pieces.
    let big: Vec<u8> = (0..INLINE_BODY_MAX as u32 * 3)
        .map(|i| (i % 251) as u8)
        .collect();
    let in_file = s.insert(&left_to_store(&big, &big)).unwrap();
    assert!(matches!(
        s.get(in_file).unwrap().unwrap().request.body.data,
        BodyData::File(_)
    ));
    assert_eq!(intact(&s, in_file), Some(true));
    let mut other = big.clone();
    other[100_000] ^= 1;
    let file_changed = s.insert(&left_to_store(&other, &big)).unwrap();
    assert_eq!(intact(&s, file_changed), Some(false));

    // A copy cut short proves nothing either way.
    let mut cut = left_to_store(&big[..1000], &big);
    cut.request.body.total_len = big.len() as u64;
    cut.request.body.truncated = true;
    let cut = s.insert(&cut).unwrap();
    assert_eq!(intact(&s, cut), None);
    // Neither does a stored file that lost its end.
    let BodyData::File(path) = s.get(in_file).unwrap().unwrap().request.body.data else {
        unreachable!()
    };
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1000)
        .unwrap();
    assert_eq!(intact(&s, in_file), None);

    // What the agent checked itself is read as recorded.
    let mut checked = left_to_store(small, b"something else");
    checked.body_proof.intact = Some(true);
    let checked = s.insert(&checked).unwrap();
    assert_eq!(intact(&s, checked), Some(true));
}

#[test]
fn a_body_file_retention_takes_while_it_is_proven_proves_nothing() {
    // `requests show` proves a body from its file while the agent's
    // retention may move that file to the pool and refill it with another
    // body of the same length: what was read then is not this body.
    use crate::capture::BodyDigest;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("body");
    let body = vec![7u8; 100_000];
    let relay = BodyDigest::Blake3(*blake3::hash(&body).as_bytes());
    let len = body.len() as u64;
    fs::write(&path, &body).unwrap();
    let file = fs::File::open(&path).unwrap();
    assert_eq!(
        super::bodies::prove_file(relay, &file, &path, len),
        Some(true)
    );

    let file = fs::File::open(&path).unwrap();
    let pooled = tmp.path().join("pooled");
    fs::rename(&path, &pooled).unwrap();
    fs::write(&pooled, vec![9u8; body.len()]).unwrap();
    assert_eq!(super::bodies::prove_file(relay, &file, &path, len), None);
}

/// The ids kept, oldest first.
fn kept_ids(s: &Store) -> Vec<ExchangeId> {
    let mut ids: Vec<_> = s
        .list(&ListQuery::default())
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    ids.reverse();
    ids
}

/// Rows in each partition table, partition 0 first.
fn partition_sizes(s: &Store) -> Vec<i64> {
    (0..retention::PARTITIONS)
        .map(|n| {
            let t = retention::partition_table(n);
            s.conn
                .query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
                .unwrap()
        })
        .collect()
}

#[test]
fn retention_drops_the_oldest_partition_whole_once_the_count_limit_is_passed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
    cfg.max_exchanges = 160; // partitions of 160 / 16 = 10
    let mut s = Store::open(&cfg).unwrap();
    let mut ids = Vec::new();
    for i in 0..160 {
        ids.push(s.insert(&sample(format!("{i}").as_bytes())).unwrap());
    }
    assert_eq!(s.count().unwrap(), 160, "at the limit: nothing dropped");
    // One over: the oldest partition, ten exchanges, goes at once.
    ids.push(s.insert(&sample(b"161")).unwrap());
    assert_eq!(kept_ids(&s), ids[10..]);
    // Then nothing is deleted until the limit is passed again.
    for i in 0..9 {
        ids.push(s.insert(&sample(format!("more {i}").as_bytes())).unwrap());
        assert_eq!(s.count().unwrap(), 152 + i);
    }
    ids.push(s.insert(&sample(b"over again")).unwrap());
    assert_eq!(kept_ids(&s), ids[ids.len() - 151..]);
    assert!(s.get(ids[19]).unwrap().is_none());
    // Whole partitions: emptied without a WHERE, so SQLite visits no row.
    let sizes = partition_sizes(&s);
    assert_eq!(sizes.iter().filter(|&&n| n == 10).count(), 15, "{sizes:?}");
    assert_eq!(sizes.iter().sum::<i64>(), 151, "{sizes:?}");
    // Every kept exchange has its headers and bodies.
    let with_payload: i64 = s
        .conn
        .query_row(
            "SELECT COUNT(*) FROM exchanges WHERE req_headers IS NOT NULL
                AND req_body IS NOT NULL AND resp_body = CAST('ok' AS BLOB)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(with_payload, 151);
    assert_eq!(s.parts.as_ref().unwrap().count(), 151);
    assert_eq!(
        s.parts.as_ref().unwrap().bytes(),
        s.total_body_bytes().unwrap()
    );
    // Ids keep counting up across partitions and are never reused.
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
}

#[test]
fn a_batch_that_fills_its_partition_goes_on_in_the_next() {
    // The writer holds one partition's INSERT across a batch; a batch
    // longer than a partition's share must move on to the next table.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
    cfg.max_exchanges = 160; // partitions of 160 / 16 = 10
    let mut s = Store::open(&cfg).unwrap();
    let ids = store_numbered_batch(&mut s, "", 25);
    let mut sizes = partition_sizes(&s);
    sizes.retain(|&n| n > 0);
    assert_eq!(sizes, [10, 10, 5], "{:?}", partition_sizes(&s));
    assert_eq!(kept_ids(&s), ids);
    assert_numbered_bodies(&s, "", &ids);
}

#[test]
fn a_full_store_empties_partitions_while_a_batch_goes_through_them() {
    // The same, in a full store: each step into the next partition first
    // empties it (a DELETE while the batch holds its INSERT).
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
    cfg.max_exchanges = 160; // partitions of 10
    let mut s = Store::open(&cfg).unwrap();
    let old: Vec<_> = (0..160)
        .map(|i| s.insert(&sample(format!("old {i}").as_bytes())).unwrap())
        .collect();
    let new = store_numbered_batch(&mut s, "new ", 25);
    // The three oldest partitions were emptied and refilled: 10, 10, 5.
    let mut sizes = partition_sizes(&s);
    sizes.sort_unstable();
    assert_eq!(sizes[0], 5, "{:?}", partition_sizes(&s));
    assert!(sizes[1..].iter().all(|&n| n == 10), "{sizes:?}");
    let mut want = old[30..].to_vec();
    want.extend(&new);
    assert_eq!(kept_ids(&s), want);
    assert_numbered_bodies(&s, "new ", &new);
}

/// Stores `n` exchanges in one batch, request bodies `{prefix}0`,
/// `{prefix}1`, …; their ids in order.
fn store_numbered_batch(s: &mut Store, prefix: &str, n: usize) -> Vec<ExchangeId> {
    let batch: Vec<_> = (0..n)
        .map(|i| sample(format!("{prefix}{i}").as_bytes()))
        .collect();
    s.insert_batch(&batch)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// Each of `ids` is stored with the body [`store_numbered_batch`] gave it.
fn assert_numbered_bodies(s: &Store, prefix: &str, ids: &[ExchangeId]) {
    for (i, id) in ids.iter().enumerate() {
        let got = s.get(*id).unwrap().unwrap();
        assert_eq!(
            read_body(&got.request.body).unwrap(),
            format!("{prefix}{i}").as_bytes()
        );
    }
}

#[test]
fn a_partition_a_secondary_writer_overfilled_is_trimmed_not_emptied_whole() {
    // A `whtunnel replay` adds to the current partition without making
    // room; emptying that partition whole would drop far below the limit.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
    cfg.max_exchanges = 32; // partitions of 2
    let mut s = Store::open(&cfg).unwrap();
    let mut other = Store::open_secondary(&cfg).unwrap();
    let mut ids: Vec<_> = (0..2).map(|_| s.insert(&sample(b"a")).unwrap()).collect();
    ids.extend((0..20).map(|_| other.insert(&sample(b"replay")).unwrap()));
    ids.extend((0..40).map(|_| s.insert(&sample(b"b")).unwrap()));
    assert_eq!(s.count().unwrap(), 32);
    assert_eq!(kept_ids(&s), ids[ids.len() - 32..]);
    for _ in 0..100 {
        ids.push(s.insert(&sample(b"c")).unwrap());
        let n = s.count().unwrap();
        assert!((30..=32).contains(&n), "{n} kept");
        assert_eq!(kept_ids(&s), ids[ids.len() - n as usize..]);
    }
}

#[test]
fn retention_follows_storing_order() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
    cfg.max_exchanges = 3;
    let mut s = Store::open(&cfg).unwrap();
    let t0 = Utc::now();
    let mut at = |secs: i64| {
        let mut ex = sample(b"x");
        ex.received_at = t0 + chrono::Duration::seconds(secs);
        s.insert(&ex).unwrap()
    };
    // Stored in this order, received in another: a held event delivered
    // late is kept as long as the exchanges stored around it.
    let (late, early, middle) = (at(30), at(10), at(20));
    let newest = at(40);
    let mut kept = s.list(&ListQuery::default()).unwrap();
    kept.sort_by_key(|r| r.id);
    let kept: Vec<_> = kept.iter().map(|r| r.id).collect();
    assert_eq!(kept, [early, middle, newest], "{late} went first");
}

#[test]
fn retention_by_bytes_drops_the_oldest_until_the_rest_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
    // Inline bodies of 100 bytes plus a 2-byte answer: room for ten.
    cfg.max_bytes = 10 * 102;
    cfg.max_exchanges = 1000;
    let mut s = Store::open(&cfg).unwrap();
    let mut ids = Vec::new();
    for i in 0..25u8 {
        ids.push(s.insert(&sample(&[i; 100])).unwrap());
        assert!(s.total_body_bytes().unwrap() <= cfg.max_bytes);
    }
    assert_eq!(
        kept_ids(&s),
        ids[15..],
        "the newest ten, oldest dropped first"
    );
    assert_eq!(
        s.parts.as_ref().unwrap().bytes(),
        s.total_body_bytes().unwrap()
    );
}

#[test]
fn a_commit_never_drops_its_own_exchanges() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
    cfg.max_exchanges = 4;
    let mut s = Store::open(&cfg).unwrap();
    let old: Vec<_> = (0..3).map(|_| s.insert(&sample(b"old")).unwrap()).collect();
    // A batch bigger than the limit: the old go, the batch stays whole.
    let batch: Vec<_> = (0..6).map(|_| sample(b"new")).collect();
    let new: Vec<_> = s
        .insert_batch(&batch)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(kept_ids(&s), new);
    assert!(old.iter().all(|id| s.get(*id).unwrap().is_none()));
    // The next commit brings the store back under the limit.
    let last = s.insert(&sample(b"next")).unwrap();
    assert!(s.count().unwrap() <= 4);
    assert_eq!(kept_ids(&s).last(), Some(&last));
}

/// A store at `version` made the way that whtunnel made it: its migrations
/// only, none of the later ones.
fn store_at_version(dir: &Path, version: usize) -> rusqlite::Connection {
    fs::create_dir_all(dir.join("bodies")).unwrap();
    let mut conn = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    conn.pragma_update(None, "foreign_keys", "OFF").unwrap();
    let tx = conn.transaction().unwrap();
    for m in &MIGRATIONS[..version] {
        match m {
            schema::Migration::Sql(sql) => tx.execute_batch(sql).unwrap(),
            schema::Migration::Code(step) => step(&tx).unwrap(),
        }
    }
    tx.pragma_update(None, "user_version", version as i64)
        .unwrap();
    tx.commit().unwrap();
    conn
}

#[test]
fn a_schema_5_store_with_payloads_reads_the_same_after_migration_6() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    {
        let db = store_at_version(tmp.path(), 5);
        // Rows as schema 5 wrote them: the exchange, then its payload; #2
        // had no answer; #3's payload was lost (a manual delete).
        for (id, has_response) in [(1, true), (2, false), (3, true)] {
            db.execute(
                "INSERT INTO exchanges (id, received_us, method, path, target, status,
                    duration_ms, has_response, req_body_len, req_body_kept, req_truncated,
                    resp_body_len, resp_body_kept, resp_truncated, body_bytes, outcome,
                    provider, delivery_id)
                 VALUES (?1, ?2, 'POST', ?3, 'http://localhost:3000', ?4, 1.5, ?5, 5, 5, 0,
                    2, 2, 0, 7, 'answered', 'stripe', 'evt_1')",
                rusqlite::params![
                    id,
                    t0.timestamp_micros() + id,
                    format!("/{id}"),
                    has_response.then_some(201),
                    has_response,
                ],
            )
            .unwrap();
        }
        for (id, resp_headers) in [(1, Some(r#"[["x-b",{"base64":"/w=="}]]"#)), (2, None)] {
            db.execute(
                "INSERT INTO payloads (exchange_id, req_headers, resp_headers, req_body, resp_body)
                 VALUES (?1, '[[\"x-a\",\"1\"]]', ?2, CAST('hello' AS BLOB), ?3)",
                rusqlite::params![id, resp_headers, resp_headers.map(|_| b"ok".to_vec())],
            )
            .unwrap();
        }
    }
    let mut s = open(tmp.path());
    assert_eq!(s.schema_version().unwrap(), Store::latest_schema_version());
    let tables: i64 = s
        .conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'payloads'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0, "the payloads table is gone");
    let one = s.get(1).unwrap().unwrap();
    assert_eq!(
        one.received_at.timestamp_micros(),
        t0.timestamp_micros() + 1
    );
    assert_eq!(
        one.request.headers,
        vec![("x-a".to_string(), b"1".to_vec())]
    );
    assert_eq!(one.request.body, CapturedBody::from_bytes(&b"hello"[..]));
    let resp = one.response.unwrap();
    assert_eq!(resp.status, 201);
    assert_eq!(resp.headers, vec![("x-b".to_string(), vec![0xff])]);
    assert_eq!(resp.body, CapturedBody::from_bytes(&b"ok"[..]));
    assert_eq!(one.webhook.provider.as_deref(), Some("stripe"));
    let two = s.get(2).unwrap().unwrap();
    assert!(two.response.is_none());
    assert_eq!(two.request.body, CapturedBody::from_bytes(&b"hello"[..]));
    // Without its payload row an exchange still lists and shows.
    let three = s.get(3).unwrap().unwrap();
    assert!(three.request.headers.is_empty());
    assert_eq!(s.list(&ListQuery::default()).unwrap().len(), 3);
    // Ids go on from the old sequence, and new exchanges round-trip.
    let new = s.insert(&sample(b"after")).unwrap();
    assert_eq!(new, 4);
    let got = s.get(new).unwrap().unwrap();
    assert_eq!(got.request.body, CapturedBody::from_bytes(&b"after"[..]));
    assert_eq!(got.request.headers, sample(b"").request.headers);
}

#[test]
fn a_schema_6_body_hash_reads_as_sha256_after_migration_7() {
    let tmp = tempfile::tempdir().unwrap();
    let sha = [0xab_u8; 32];
    {
        let db = store_at_version(tmp.path(), 6);
        // As schema 6 wrote it: the protocol-2 relay's SHA-256, bare hex.
        db.execute(
            "INSERT INTO exchanges (id, received_us, method, path, target, duration_ms,
                has_response, req_body_len, req_body_kept, req_truncated, resp_body_len,
                resp_body_kept, resp_truncated, body_bytes, relay_body_sha256, body_intact,
                req_headers, req_body)
             VALUES (1, 0, 'POST', '/', 'http://localhost:3000', 1.0, 0, 5, 5, 0, 0, 0, 0, 5,
                ?1, 1, '[]', CAST('hello' AS BLOB))",
            [crate::tunnel::body_hash::to_hex(&sha)],
        )
        .unwrap();
    }
    let mut s = open(tmp.path());
    assert_eq!(s.schema_version().unwrap(), Store::latest_schema_version());
    let old = s.get(1).unwrap().unwrap();
    assert_eq!(old.body_proof.relay, Some(BodyDigest::Sha256(sha)));
    assert_eq!(old.body_proof.intact, Some(true));
    // New rows keep the algorithm with the hash.
    let mut ex = sample(b"new");
    ex.body_proof.relay = Some(BodyDigest::Blake3([7; 32]));
    let id = s.insert(&ex).unwrap();
    let text: String = s
        .conn
        .query_row(
            "SELECT relay_body_digest FROM exchanges WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(text, format!("blake3:{}", "07".repeat(32)));
    assert_eq!(
        s.get(id).unwrap().unwrap().body_proof.relay,
        ex.body_proof.relay
    );
}

#[test]
fn a_schema_7_store_is_split_into_partitions_by_migration_8() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let db = store_at_version(tmp.path(), 7);
        // 40 rows with ids 11..=50 (AUTOINCREMENT had reached 60: the
        // newest rows were deleted), every column a schema-7 row has.
        for id in 11..=60i64 {
            db.execute(
                "INSERT INTO exchanges (id, received_us, method, path, target, remote_addr,
                    status, duration_ms, error, event, replay_of, relay_event_id, has_response,
                    req_body_len, req_body_kept, req_truncated, req_body_file, resp_body_len,
                    resp_body_kept, resp_truncated, resp_body_file, body_bytes, outcome,
                    provider, delivery_id, sig_scheme, sig_verdict, sig_reason,
                    relay_body_digest, body_intact, sender_timeout_ms, req_headers,
                    resp_headers, req_body, resp_body)
                 VALUES (?1, ?1 * 1000, 'POST', '/h', 'http://localhost:3000', '127.0.0.1:9',
                    200, 1.5, NULL, 'evt', NULL, 'ev_' || ?1, 1, 5, 5, 0, NULL, 2, 2, 0, NULL, 7,
                    'answered', 'stripe', 'd' || ?1, 'stripe', 'valid', NULL,
                    'blake3:' || hex(zeroblob(32)), 1, 10000, '[[\"a\",\"b\"]]', '[]',
                    CAST('hello' AS BLOB), CAST('ok' AS BLOB))",
                [id],
            )
            .unwrap();
        }
        db.execute("DELETE FROM exchanges WHERE id > 50", [])
            .unwrap();
    }
    let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
    cfg.max_exchanges = 40;
    let mut s = Store::open(&cfg).unwrap();
    assert_eq!(s.schema_version().unwrap(), Store::latest_schema_version());
    assert_eq!(kept_ids(&s), (11..=50).collect::<Vec<_>>());
    let ex = s.get(30).unwrap().unwrap();
    assert_eq!(ex.relay_event_id.as_deref(), Some("ev_30"));
    assert_eq!(ex.request.headers, vec![("a".to_string(), b"b".to_vec())]);
    assert_eq!(ex.request.body, CapturedBody::from_bytes(b"hello".to_vec()));
    assert_eq!(ex.webhook.delivery_id.as_deref(), Some("d30"));
    assert_eq!(s.find_by_relay_event("ev_12").unwrap().unwrap().id, 12);
    // Split in storing order, 3 a partition (40 / 16 rounded up).
    let sizes = partition_sizes(&s);
    assert_eq!(sizes, [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1, 0, 0]);
    // Ids are never reused, and at the limit the first drop after the
    // upgrade takes only the oldest partition.
    let id = s.insert(&sample(b"new")).unwrap();
    assert_eq!(id, 61);
    let mut want: Vec<_> = (14..=50).collect();
    want.push(61);
    assert_eq!(kept_ids(&s), want);
}

/// Migration 9 drops the received-time index of every partition; listing,
/// which never used it (SQLite sorts the view's rows), still gives the
/// newest received first, also for a row stored after a later-received one.
#[test]
fn migration_9_drops_the_received_index_and_listing_keeps_its_order() {
    let tmp = tempfile::tempdir().unwrap();
    let received = |s: &Store| -> i64 {
        s.conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name LIKE '%_received'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    {
        let db = store_at_version(tmp.path(), 8);
        let n: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name LIKE '%_received'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 16, "schema 8 has one per partition");
    }
    let mut s = Store::open(&StoreConfig::new(tmp.path().to_path_buf())).unwrap();
    assert_eq!(s.schema_version().unwrap(), Store::latest_schema_version());
    assert_eq!(received(&s), 0);
    // A held event is stored after a later-received live one.
    let mut live = sample(b"live");
    live.received_at = Utc.timestamp_opt(1_800_000_100, 0).unwrap();
    let mut held = sample(b"held");
    held.received_at = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
    let live = s.insert(&live).unwrap();
    let held = s.insert(&held).unwrap();
    let ids: Vec<_> = s
        .list(&ListQuery::default())
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, vec![live, held]);
}
