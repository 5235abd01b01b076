//! The relay's metrics, as Prometheus text for `GET /metrics` on the admin
//! endpoint (see [`super::admin`]). Every name starts `whtunnel_`.
//!
//! The hot path only touches atomics: counters are pre-created (one per
//! status class, one per upgrade result), the latency histogram is a fixed
//! array of atomic buckets, so counting a request takes no lock and
//! allocates nothing. Labels are closed sets (status class, upgrade result,
//! the relay's own host names): no per-tunnel series, so cardinality stays
//! bounded however many tunnels come and go. Gauges that mirror relay
//! state (connected agents, held events and bytes) are read when scraped.
//!
//! `prometheus-client` does the encoding (escaping, float format, the
//! 0.0.4 text format); only the histogram is ours, because the crate's
//! takes a mutex per observation.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the latency histogram's buckets: a webhook's
/// round trip, from a few milliseconds to the default 30 s timeout.
const LATENCY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// What became of an agent's upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeResult {
    /// 101: the agent holds its tunnel.
    Accepted,
    /// 401: the token was refused.
    Unauthorized,
    /// 403: the name belongs to someone else.
    Forbidden,
    /// 409: the name is held by another agent.
    Conflict,
    /// 429: too many attempts from this address.
    Limited,
    /// Anything else (bad protocol version, bad name, not a websocket).
    Refused,
}

impl UpgradeResult {
    const ALL: [UpgradeResult; 6] = [
        UpgradeResult::Accepted,
        UpgradeResult::Unauthorized,
        UpgradeResult::Forbidden,
        UpgradeResult::Conflict,
        UpgradeResult::Limited,
        UpgradeResult::Refused,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeResult::Accepted => "accepted",
            UpgradeResult::Unauthorized => "unauthorized",
            UpgradeResult::Forbidden => "forbidden",
            UpgradeResult::Conflict => "conflict",
            UpgradeResult::Limited => "limited",
            UpgradeResult::Refused => "refused",
        }
    }

    /// The result an upgrade answer's status stands for.
    pub fn from_status(status: http::StatusCode) -> Self {
        match status.as_u16() {
            101 => UpgradeResult::Accepted,
            401 => UpgradeResult::Unauthorized,
            403 => UpgradeResult::Forbidden,
            409 => UpgradeResult::Conflict,
            429 => UpgradeResult::Limited,
            _ => UpgradeResult::Refused,
        }
    }
}

/// The relay's state as the scrape sees it: read when `/metrics` is
/// asked for, never kept up to date on the hot path.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Agents holding a tunnel now.
    pub connected_agents: u64,
    /// Held events waiting for their agent (dead letters not included).
    pub held_events: u64,
    /// Dead-lettered events.
    pub dead_events: u64,
    /// Body bytes held, all tunnels together.
    pub held_bytes: u64,
    /// Worker threads of the runtime the relay runs on.
    pub worker_threads: u64,
}

type Labels = [(&'static str, &'static str); 1];

/// The relay's counters, histogram and gauges.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Public requests by status class, `1xx`..`5xx`.
    by_class: [Counter; 5],
    latency: AtomicHistogram,
    request_bytes: Counter,
    response_bytes: Counter,
    upgrades: [Counter; UpgradeResult::ALL.len()],
    connected_agents: Gauge,
    worker_threads: Gauge,
    held_events: Gauge,
    dead_events: Gauge,
    held_bytes: Gauge,
    cert_expiry: Family<[(&'static str, String); 1], Gauge>,
    draining: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under its `whtunnel_` name.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("whtunnel");
        let requests = Family::<Labels, Counter>::default();
        let by_class = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .map(|class| requests.get_or_create(&[("class", class)]).clone());
        registry.register(
            "requests",
            "Webhook requests answered, by status class (the relay's own answers included)",
            requests,
        );
        let latency = AtomicHistogram::default();
        registry.register_with_unit(
            "request_duration",
            "Time from a webhook request's arrival to its response head",
            Unit::Seconds,
            latency.clone(),
        );
        let request_bytes = Counter::default();
        registry.register_with_unit(
            "request_body",
            "Request body bytes received from webhook senders",
            Unit::Bytes,
            request_bytes.clone(),
        );
        let response_bytes = Counter::default();
        registry.register_with_unit(
            "response_body",
            "Response body bytes relayed from apps back to webhook senders",
            Unit::Bytes,
            response_bytes.clone(),
        );
        let upgrade_family = Family::<Labels, Counter>::default();
        let upgrades = UpgradeResult::ALL.map(|r| {
            upgrade_family
                .get_or_create(&[("result", r.as_str())])
                .clone()
        });
        registry.register(
            "agent_upgrades",
            "Agent connection attempts, by result (unauthorized: a refused token)",
            upgrade_family,
        );
        let connected_agents = Gauge::default();
        registry.register(
            "connected_agents",
            "Agents holding a tunnel now",
            connected_agents.clone(),
        );
        let worker_threads = Gauge::default();
        registry.register(
            "worker_threads",
            "Worker threads of the relay's async runtime (--threads)",
            worker_threads.clone(),
        );
        let held_events = Gauge::default();
        registry.register(
            "held_events",
            "Events held for agents that are away, waiting for delivery",
            held_events.clone(),
        );
        let dead_events = Gauge::default();
        registry.register(
            "dead_letter_events",
            "Held events that failed delivery too often, kept until retried or dropped",
            dead_events.clone(),
        );
        let held_bytes = Gauge::default();
        registry.register_with_unit(
            "held",
            "Body bytes of held events, all tunnels together",
            Unit::Bytes,
            held_bytes.clone(),
        );
        let cert_expiry = Family::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the relay's certificate for a host name expires (seconds since the epoch)",
            cert_expiry.clone(),
        );
        Metrics {
            registry,
            by_class,
            latency,
            request_bytes,
            response_bytes,
            upgrades,
            connected_agents,
            worker_threads,
            held_events,
            dead_events,
            held_bytes,
            cert_expiry,
            draining: AtomicBool::new(false),
        }
    }

    /// Counts one answered webhook request: its status class and the time
    /// to its response head.
    pub fn request_done(&self, status: http::StatusCode, elapsed: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
        self.latency.observe(elapsed);
    }

    /// Counts an agent's upgrade request by its answer.
    pub fn upgrade_done(&self, status: http::StatusCode) {
        self.upgrades[UpgradeResult::from_status(status) as usize].inc();
    }

    /// Counts request body bytes as they are read from a sender.
    pub fn count_request<B>(&self, body: B) -> Counted<B> {
        Counted {
            inner: body,
            counter: self.request_bytes.clone(),
        }
    }

    /// Counts response body bytes as they stream back to a sender.
    pub fn count_response<B>(&self, body: B) -> Counted<B> {
        Counted {
            inner: body,
            counter: self.response_bytes.clone(),
        }
    }

    /// Records when the certificate for `host` expires (seconds since the
    /// epoch); the ACME manager calls it after each issue or renewal.
    pub fn set_cert_expiry(&self, host: &str, unix_secs: i64) {
        self.cert_expiry
            .get_or_create(&[("host", host.to_string())])
            .set(unix_secs);
    }

    /// The relay stopped taking traffic and is finishing what is in flight:
    /// `/healthz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether [`set_draining`](Self::set_draining) was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The Prometheus text (format 0.0.4) of every metric, with the gauges
    /// set from `now`.
    pub fn render(&self, now: Snapshot) -> String {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.connected_agents.set(gauge(now.connected_agents));
        self.worker_threads.set(gauge(now.worker_threads));
        self.held_events.set(gauge(now.held_events));
        self.dead_events.set(gauge(now.dead_events));
        self.held_bytes.set(gauge(now.held_bytes));
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// A latency histogram of atomic buckets: observing is a few relaxed
/// atomic adds. Counts per bucket are kept apart and summed when encoded.
#[derive(Debug, Clone, Default)]
struct AtomicHistogram {
    inner: std::sync::Arc<HistogramCells>,
}

#[derive(Debug, Default)]
struct HistogramCells {
    /// One per bound of [`LATENCY_BUCKETS`], then the overflow (`+Inf`).
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.inner.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.inner.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' total, so `_count` and `+Inf` agree
        // even while requests are being counted.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.inner.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A body that adds the size of each data frame to a counter as it passes.
#[derive(Debug)]
pub struct Counted<B> {
    inner: B,
    counter: Counter,
}

impl<B> http_body::Body for Counted<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.counter.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, start: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?} in\n{text}"))
    }

    #[test]
    fn classes_histogram_and_gauges_render_with_their_names() {
        let m = Metrics::new();
        m.request_done(http::StatusCode::OK, Duration::from_millis(3));
        m.request_done(http::StatusCode::ACCEPTED, Duration::from_millis(70));
        m.request_done(http::StatusCode::BAD_GATEWAY, Duration::from_secs(100));
        m.upgrade_done(http::StatusCode::UNAUTHORIZED);
        m.set_cert_expiry("hooks.example.com", 1_800_000_000);
        let text = m.render(Snapshot {
            connected_agents: 2,
            held_events: 7,
            dead_events: 1,
            held_bytes: 900,
            worker_threads: 3,
        });
        assert_eq!(
            line(&text, "whtunnel_requests_total{class=\"2xx\"}"),
            "whtunnel_requests_total{class=\"2xx\"} 2"
        );
        assert!(text.contains("whtunnel_requests_total{class=\"5xx\"} 1\n"));
        assert!(text.contains("whtunnel_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("whtunnel_request_duration_seconds_bucket{le=\"0.1\"} 2\n"));
        assert!(
            text.contains("whtunnel_request_duration_seconds_bucket{le=\"60\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("whtunnel_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("whtunnel_request_duration_seconds_count 3\n"));
        assert!(text.contains("whtunnel_agent_upgrades_total{result=\"unauthorized\"} 1\n"));
        assert!(text.contains("whtunnel_connected_agents 2\n"));
        assert!(text.contains("whtunnel_worker_threads 3\n"));
        assert!(text.contains("whtunnel_held_events 7\n"));
        assert!(text.contains("whtunnel_held_bytes 900\n"));
        assert!(text.contains(
            "whtunnel_certificate_expiry_timestamp_seconds{host=\"hooks.example.com\"} 1800000000\n"
        ));
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.starts_with("whtunnel_"), "{l}");
        }
    }

    #[test]
    fn draining_is_sticky() {
        let m = Metrics::new();
        assert!(!m.is_draining());
        m.set_draining();
        assert!(m.is_draining());
    }
}
