//! Raw-bytes tools for the abuse tests: an app that records exactly the
//! bytes the agent sends it (so framing headers can be counted, which a
//! hyper server would normalise away), and a client that writes arbitrary
//! bytes to the relay and splits what comes back into responses.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// One request as the raw app read it off the wire.
#[derive(Debug, Clone)]
pub struct RawSeen {
    pub request_line: String,
    /// Header names lowercased, values as raw bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// False when the connection ended before the request was complete: the
    /// app would have thrown it away.
    pub complete: bool,
}

impl RawSeen {
    /// The request target (path and query) the app saw.
    pub fn target(&self) -> &str {
        self.request_line.split(' ').nth(1).unwrap_or("")
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }

    /// Checks the app got a well-framed request: at most one framing header
    /// (exactly one when there is a body), which agrees with the body read,
    /// and no hop-by-hop or tunnel-internal header. Returns what is wrong.
    pub fn framing_problem(&self) -> Option<String> {
        let cl = self.header_count("content-length");
        let te = self.header_count("transfer-encoding");
        if cl + te > 1 {
            return Some(format!(
                "{cl} content-length and {te} transfer-encoding headers"
            ));
        }
        if !self.body.is_empty() && cl + te != 1 {
            return Some("a body without a framing header".into());
        }
        for (n, v) in &self.headers {
            if n == "transfer-encoding" && v.as_slice() != b"chunked" {
                return Some(format!(
                    "transfer-encoding {:?}",
                    String::from_utf8_lossy(v)
                ));
            }
            if n == "content-length" && v.as_slice() != self.body.len().to_string().as_bytes() {
                return Some(format!(
                    "content-length {:?} but {} body bytes",
                    String::from_utf8_lossy(v),
                    self.body.len()
                ));
            }
            let hop = [
                "connection",
                "keep-alive",
                "te",
                "trailer",
                "upgrade",
                "http2-settings",
                "whtunnel-meta",
                "whtunnel-req",
                "whtunnel-host",
                "whtunnel-hop",
                "whtunnel-scheme",
                "whtunnel-timeout-ms",
                "whtunnel-attempt",
                "whtunnel-held-left",
                "whtunnel-control",
            ];
            if hop.contains(&n.as_str()) || n.starts_with("proxy-") {
                return Some(format!("header {n} reached the app"));
            }
        }
        None
    }
}

/// A local app speaking HTTP/1.1 by hand. Answers every complete request
/// `200 ok` and keeps the connection for the next one.
pub struct RawApp {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<RawSeen>>>,
    stop: CancellationToken,
}

impl Drop for RawApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a chunked body at the start of `buf`: `Ok(Some((body, used)))`
/// when complete, `Ok(None)` when more bytes are needed, `Err` when invalid.
pub fn decode_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(eol) = find(&buf[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[pos..pos + eol]).map_err(|e| e.to_string())?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|e| format!("{line:?}: {e}"))?;
        pos += eol + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = find(&buf[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        pos += size + 2;
    }
}

async fn serve_raw(mut stream: TcpStream, seen: Arc<Mutex<Vec<RawSeen>>>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Head.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    if !buf.is_empty() {
                        seen.lock().unwrap().push(RawSeen {
                            request_line: String::from_utf8_lossy(&buf).into_owned(),
                            headers: vec![],
                            body: vec![],
                            complete: false,
                        });
                    }
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("").to_string();
        let headers: Vec<(String, Vec<u8>)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().as_bytes().to_vec()))
            .collect();
        // Header values may hold non-UTF-8 bytes: take them from the raw head.
        let headers = raw_header_values(&buf[..head_end], headers);
        buf.drain(..head_end + 4);
        let mut req = RawSeen {
            request_line,
            headers,
            body: vec![],
            complete: false,
        };
        let chunked = req
            .headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case(b"chunked"));
        let len: Option<usize> = req
            .headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok());
        // Body.
        let complete = loop {
            if chunked {
                match decode_chunked(&buf) {
                    Ok(Some((body, used))) => {
                        req.body = body;
                        buf.drain(..used);
                        break true;
                    }
                    Ok(None) => {}
                    Err(_) => break false,
                }
            } else {
                let want = len.unwrap_or(0);
                if buf.len() >= want {
                    req.body = buf.drain(..want).collect();
                    break true;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        req.complete = complete;
        seen.lock().unwrap().push(req);
        if !complete {
            return;
        }
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-app: raw\r\n\r\nok";
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}

fn raw_header_values(head: &[u8], parsed: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    let lines: Vec<&[u8]> = head.split(|&b| b == b'\n').skip(1).collect();
    if lines.len() != parsed.len() {
        return parsed;
    }
    parsed
        .into_iter()
        .zip(lines)
        .map(|((n, v), line)| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match line.iter().position(|&b| b == b':') {
                Some(i) => (n, line[i + 1..].trim_ascii().to_vec()),
                None => (n, v),
            }
        })
        .collect()
}

impl RawApp {
    pub async fn start() -> RawApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (s, st) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => r.unwrap(),
                    () = st.cancelled() => return,
                };
                let s = s.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = serve_raw(stream, s) => {}
                        () = st.cancelled() => {}
                    }
                });
            }
        });
        RawApp { addr, seen, stop }
    }

    pub fn seen(&self) -> Vec<RawSeen> {
        self.seen.lock().unwrap().clone()
    }
}

/// One response read back from the relay.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What came back on one connection.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Final responses in order (1xx interim responses are skipped).
    pub responses: Vec<RawResponse>,
    /// True when the relay closed the connection.
    pub closed: bool,
    /// Bytes after the last whole response (should be none).
    pub trailing: Vec<u8>,
}

impl Outcome {
    pub fn statuses(&self) -> Vec<u16> {
        self.responses.iter().map(|r| r.status).collect()
    }
}

/// Splits `raw` into responses; returns them and the unparsed rest.
pub fn parse_responses(mut raw: &[u8]) -> (Vec<RawResponse>, Vec<u8>) {
    let mut out = Vec::new();
    loop {
        let Some(end) = find(raw, b"\r\n\r\n") else {
            return (out, raw.to_vec());
        };
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let rest = &raw[end + 4..];
        if (100..200).contains(&status) {
            raw = rest;
            continue;
        }
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let (body, used) = if get("transfer-encoding").is_some_and(|v| v == "chunked") {
            match decode_chunked(rest) {
                Ok(Some(pair)) => pair,
                _ => return (out, raw.to_vec()),
            }
        } else {
            let len: usize = get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if rest.len() < len {
                return (out, raw.to_vec());
            }
            (rest[..len].to_vec(), len)
        };
        out.push(RawResponse {
            status,
            headers,
            body,
        });
        raw = &rest[used..];
    }
}

/// Connects from `from` (any 127.0.0.0/8 address), writes `bytes`, and
/// reads until the relay closes the connection, or until it has been quiet
/// for `idle` after at least one whole response, or `deadline` passes.
pub async fn exchange(
    relay: SocketAddr,
    from: std::net::IpAddr,
    bytes: &[u8],
    idle: Duration,
    deadline: Duration,
) -> Outcome {
    exchange_expecting(relay, from, bytes, 1, idle, deadline).await
}

/// Like [`exchange`], but waits (up to `deadline`) for `want` whole
/// responses before the `idle` wait applies, so a loaded machine cannot cut
/// a slow second answer short.
pub async fn exchange_expecting(
    relay: SocketAddr,
    from: std::net::IpAddr,
    bytes: &[u8],
    want: usize,
    idle: Duration,
    deadline: Duration,
) -> Outcome {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(relay).await.unwrap();
    // The relay may answer and close before reading everything: a failed
    // write is part of the outcome, not a test error.
    let _ = stream.write_all(bytes).await;
    let start = Instant::now();
    let mut raw = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut closed = false;
    loop {
        let (whole, _) = parse_responses(&raw);
        let wait = if whole.len() < want.max(1) {
            deadline.saturating_sub(start.elapsed())
        } else {
            idle.min(deadline.saturating_sub(start.elapsed()))
        };
        if wait.is_zero() {
            break;
        }
        match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => raw.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let (responses, trailing) = parse_responses(&raw);
    Outcome {
        responses,
        closed,
        trailing,
    }
}
