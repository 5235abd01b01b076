//! Smoke test of the real terminal loop (raw mode, alternate screen, input,
//! restore on quit and on panic). It needs a terminal, so it is ignored by
//! default; run it under a pty and press keys, e.g.:
//!
//! ```text
//! cargo test --test inspect_tty -- --ignored --nocapture
//! ```
//!
//! With `WHTUNNEL_SMOKE_PANIC=1`, opening details panics inside the loop, to
//! check that the panic hook restores the terminal before the message prints.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{FixedOffset, TimeZone, Utc};
use tokio::sync::{broadcast, mpsc, watch};
use whtunnel::agent::ConnectionStatus;
use whtunnel::capture::{
    BodyData, CaptureEvent, CapturedBody, Exchange, ExchangeId, ExchangeSummary, RecordedRequest,
    RecordedResponse,
};
use whtunnel::inspect::terminal::run_session;
use whtunnel::inspect::{App, Session, Source, Theme};

struct Demo {
    full: Arc<Mutex<HashMap<ExchangeId, Exchange>>>,
}

impl Source for Demo {
    fn list(&self, limit: usize) -> Result<Vec<ExchangeSummary>, String> {
        let mut v: Vec<ExchangeSummary> = self.full.lock().unwrap().values().map(summary).collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.id));
        v.truncate(limit);
        Ok(v)
    }

    fn get(&self, id: ExchangeId) -> Result<Option<Exchange>, String> {
        if std::env::var_os("WHTUNNEL_SMOKE_PANIC").is_some() {
            panic!("smoke: panic inside the inspector loop");
        }
        Ok(self.full.lock().unwrap().get(&id).cloned())
    }
}

fn summary(e: &Exchange) -> ExchangeSummary {
    ExchangeSummary {
        id: e.id.unwrap(),
        received_at: e.received_at,
        method: e.request.method.clone(),
        path: e.request.path.clone(),
        status: e.response.as_ref().map(|r| r.status),
        duration_ms: e.duration_ms,
        event: e.event.clone(),
        replay_of: e.replay_of,
        request_size: e.request.body.total_len,
        response_size: 2,
        error: e.error.clone(),
    }
}

fn exchange(id: ExchangeId, status: u16, body: &'static [u8]) -> Exchange {
    Exchange {
        id: Some(id),
        received_at: Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap()
            + chrono::Duration::seconds(id),
        target: "http://localhost:3000".into(),
        request: RecordedRequest {
            method: "POST".into(),
            path: format!("/hooks/{id}"),
            headers: vec![("Content-Type".into(), b"application/json".to_vec())],
            body: CapturedBody {
                data: BodyData::Memory(body.into()),
                total_len: body.len() as u64,
                truncated: false,
            },
        },
        response: Some(RecordedResponse {
            status,
            headers: vec![],
            body: CapturedBody::default(),
        }),
        duration_ms: 3.0,
        event: Some("invoice.paid".into()),
        ..Default::default()
    }
}

#[test]
#[ignore = "needs a terminal: run under a pty"]
fn tui_smoke() {
    let full: HashMap<_, _> = (1..=30)
        .map(|i| {
            let status = [200, 404, 500, 301][i as usize % 4];
            (i, exchange(i, status, br#"{"type":"invoice.paid","n":1}"#))
        })
        .collect();
    let full = Arc::new(Mutex::new(full));
    let live = full.clone();
    let (etx, erx) = broadcast::channel(64);
    let (_stx, srx) = watch::channel(ConnectionStatus::Connected {
        public_url: "http://127.0.0.1:8787/t/demo".into(),
    });
    let (rtx, mut rrx) = mpsc::channel(8);
    // A live arrival every 700 ms.
    let feeder = std::thread::spawn(move || {
        for i in 31..=40 {
            std::thread::sleep(std::time::Duration::from_millis(700));
            let e = exchange(i, 200, b"{}");
            live.lock().unwrap().insert(i, e.clone());
            if etx.send(CaptureEvent::Stored(summary(&e))).is_err() {
                break;
            }
        }
    });
    let app = App::new(
        "http://127.0.0.1:8787/t/demo".into(),
        "http://localhost:3000".into(),
        Theme::from_env(),
        FixedOffset::east_opt(0).unwrap(),
    );
    let result = run_session(Session::new(app, Demo { full }, erx, srx, rtx));
    let mut replays = 0;
    while rrx.try_recv().is_ok() {
        replays += 1;
    }
    println!("inspector exited: {result:?}; {replays} replay request(s)");
    result.unwrap();
    drop(feeder);
}
