//! End to end through the capture module with a real hyper server: the tee
//! wraps hyper's `Incoming` body (content-length and chunked), the recorder
//! stores the exchange, and the export renders it byte-exact.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use whtunnel::capture::{
    export, read_body, tee, BodyData, BodyLimits, CaptureEvent, Exchange, ListQuery,
    RecordedRequest, RecordedResponse, Recorder, Store, StoreConfig,
};

/// Serves one connection: tees the request body, drains it like a forwarder
/// would, answers 200, and records the exchange.
async fn serve(listener: TcpListener, rec: Recorder, limits: Arc<BodyLimits>) {
    let (stream, _) = listener.accept().await.unwrap();
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let rec = rec.clone();
        let limits = limits.clone();
        async move {
            let (parts, body) = req.into_parts();
            let (body, captured) = tee(body, &limits);
            let forwarded = body.collect().await.unwrap().to_bytes();
            let captured = captured.await.unwrap();
            let ex = Exchange {
                received_at: chrono::Utc::now(),
                target: "http://app.test".into(),
                request: RecordedRequest {
                    method: parts.method.to_string(),
                    path: parts.uri.to_string(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                        .collect(),
                    body: captured,
                },
                response: Some(RecordedResponse {
                    status: 200,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let id = rec.record(ex).await.unwrap().unwrap();
            let answer = format!("{id} {}", forwarded.len());
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(answer))))
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tee_over_hyper_incoming_records_exact_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig::new(tmp.path().to_path_buf())).unwrap();
    let limits = Arc::new(BodyLimits {
        in_memory: 64 * 1024,
        max_capture: 1 << 30,
        spill_dir: store.spill_dir(),
    });
    let rec = Recorder::spawn(store);
    let mut events = rec.subscribe();

    // 1. Content-Length JSON body, small: kept in memory.
    // 2. Chunked binary body of 1 MiB: spilled to a file.
    let json = br#"{"type":"consent.created","data":{"id":"cst_1"}}"#.to_vec();
    let binary: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, rec.clone(), limits));

    let mut conn = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /hooks?key=0123 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Dup: 1\r\nX-Dup: 2\r\nContent-Length: {}\r\n\r\n",
        json.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&json).await.unwrap();
    let mut chunked =
        b"PUT /bin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for c in binary.chunks(10_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    conn.write_all(&chunked).await.unwrap();
    let mut answers = Vec::new();
    conn.read_to_end(&mut answers).await.unwrap();
    server.await.unwrap();
    let answers = String::from_utf8_lossy(&answers);
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 2, "{answers}");
    assert!(
        answers.contains(&format!(" {}", binary.len())),
        "forwarded in full"
    );

    for _ in 0..2 {
        assert!(matches!(
            events.recv().await.unwrap(),
            CaptureEvent::Stored(_)
        ));
    }
    rec.close().await;

    let reader = Store::open_reader(tmp.path()).unwrap();
    let rows = reader.list(&ListQuery::default()).unwrap();
    assert_eq!(rows.len(), 2);
    let (bin_row, json_row) = (&rows[0], &rows[1]);
    assert_eq!(json_row.event.as_deref(), Some("consent.created"));
    assert_eq!(bin_row.request_size, binary.len() as u64);

    let ex = reader.get(json_row.id).unwrap().unwrap();
    assert!(!ex.request.body.truncated);
    assert_eq!(read_body(&ex.request.body).unwrap(), &json[..]);
    let shown = export::show_json(&ex);
    assert_eq!(
        shown["request"]["body"],
        String::from_utf8(json.clone()).unwrap()
    );
    let dups: Vec<_> = ex
        .request
        .headers
        .iter()
        .filter(|h| h.0 == "x-dup")
        .map(|h| h.1.to_vec())
        .collect();
    assert_eq!(dups, [b"1".to_vec(), b"2".to_vec()]);

    let ex = reader.get(bin_row.id).unwrap().unwrap();
    assert!(!ex.request.body.truncated, "1 MiB fits the spill budget");
    assert!(matches!(ex.request.body.data, BodyData::File(_)));
    assert_eq!(read_body(&ex.request.body).unwrap(), &binary[..]);
    let shown = export::show_json(&ex);
    assert_eq!(shown["request"]["body"], serde_json::Value::Null);
    assert!(shown["request"]["body_base64"].is_string());
    // The spill dir is empty: the store adopted the file.
    assert_eq!(std::fs::read_dir(reader.spill_dir()).unwrap().count(), 0);
}
