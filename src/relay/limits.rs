//! Abuse limits on the relay's public side.
//!
//! Everything here defends the relay against senders that are slow, noisy or
//! hostile, with defaults no real webhook sender ever meets:
//!
//! | limit | default | answer |
//! |---|---|---|
//! | first bytes of a connection (before hyper picks HTTP/1 or HTTP/2) | 10 s | close |
//! | request head (HTTP/1, hyper's `header_read_timeout`) | 10 s | 408, then close |
//! | header count / head size (hyper) | 100 / 64 KiB | 431, then close |
//! | body rate, after a 10 s grace, per 10 s window | 1 KiB/s | 408 |
//! | concurrent connections per IP | 256 | accepted, then closed at once |
//! | requests per tunnel (token bucket), shared fairly by sender IPs | 1000/s, burst 2000 | 429 + `Retry-After` |
//! | requests in flight per tunnel per IP | 64 (of 256 streams) | 429 + `Retry-After` |
//! | unknown-tunnel misses per IP (token bucket) | 30/min | 429 + `Retry-After` to *every* tunnel request of that IP |
//! | failed agent/held-API authentications per IP | 10/min | 429 + `Retry-After` to every upgrade of that IP |
//!
//! Fair share: each sender IP (IPv6: its /64) seen on a tunnel in the last
//! [`SHARE_WINDOW`] gets an equal part of the tunnel's rate and burst, so one
//! flooding sender meets its own 429s and leaves the others theirs.
//!
//! State is bounded: per-IP and per-tunnel tables have a fixed capacity and
//! drop idle entries before growing past it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body::{Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::text;
use crate::tunnel::{Body, BoxError};

/// The one body every unknown-tunnel answer carries, so a sender cannot tell
/// a malformed name from a well-formed one nobody holds.
pub const UNKNOWN_TUNNEL: &str = "whtunnel: no agent is connected for this tunnel";

/// Most entries a per-IP or per-tunnel table keeps; idle ones are dropped
/// first, and past this new keys go untracked rather than grow memory.
const MAX_TABLE_ENTRIES: usize = 65_536;

/// The relay's abuse limits. Zero disables a count or rate limit.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// A sender must finish a request head within this (HTTP/1), and must
    /// send the first bytes of a new connection within it.
    pub header_read_timeout: Duration,
    /// Most header fields in one HTTP/1 request head; more get 431.
    pub max_headers: usize,
    /// Largest HTTP/1 request head in bytes (hyper's read buffer, at least
    /// 8 KiB); larger gets 431.
    pub max_header_bytes: usize,
    /// Slowest body accepted, bytes per second averaged over
    /// [`body_rate_window`](Self::body_rate_window); slower gets 408.
    pub min_body_rate: u64,
    /// Time a body may take before its rate is judged.
    pub body_rate_grace: Duration,
    /// Window over which the body rate is averaged.
    pub body_rate_window: Duration,
    /// Concurrent connections from one IP address; more are closed at once.
    pub max_conns_per_ip: usize,
    /// Requests per second per tunnel (token bucket refill rate).
    pub rate_limit: f64,
    /// Requests a tunnel may take at once above the steady rate.
    pub rate_burst: u32,
    /// Requests one IP may have in flight on one tunnel. A tunnel carries
    /// at most 256 exchanges at once (HTTP/2 streams), so without this a
    /// single slow-body sender could hold them all.
    pub max_inflight_per_ip: usize,
    /// Unknown-tunnel answers per IP per minute before 429.
    pub unknown_tunnel_per_min: u32,
    /// Failed token checks (agent upgrades, held API) per IP per minute
    /// before every further attempt of that IP gets 429.
    pub auth_failures_per_min: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: super::HEADER_READ_TIMEOUT,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            min_body_rate: 1024,
            body_rate_grace: Duration::from_secs(10),
            body_rate_window: Duration::from_secs(10),
            max_conns_per_ip: 256,
            rate_limit: 1000.0,
            rate_burst: 2000,
            max_inflight_per_ip: 64,
            unknown_tunnel_per_min: 30,
            auth_failures_per_min: 10,
        }
    }
}

/// A token bucket: `capacity` tokens, refilled at `rate` per second.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(capacity: f64, now: Instant) -> Self {
        Bucket {
            tokens: capacity,
            at: now,
        }
    }

    fn refill(&mut self, rate: f64, capacity: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(capacity);
        self.at = now;
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, rate: f64, capacity: f64, now: Instant) -> Result<(), Duration> {
        self.refill(rate, capacity, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// Sender IPs seen on a tunnel within this share its rate equally.
pub const SHARE_WINDOW: Duration = Duration::from_secs(10);

/// Most sender IPs one tunnel's fair share tracks; beyond it, new senders
/// share one bucket.
const MAX_SHARERS: usize = 1024;

/// A tunnel's rate, split among the IPs sending to it.
struct Share {
    senders: HashMap<IpAddr, (Bucket, Instant)>,
    overflow: Option<(Bucket, Instant)>,
    last_prune: Instant,
}

impl Share {
    fn new(now: Instant) -> Self {
        Share {
            senders: HashMap::new(),
            overflow: None,
            last_prune: now,
        }
    }

    fn take(&mut self, ip: IpAddr, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        if now.saturating_duration_since(self.last_prune) >= Duration::from_secs(1) {
            self.last_prune = now;
            self.senders
                .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < SHARE_WINDOW);
            if self
                .overflow
                .is_some_and(|(_, seen)| now.saturating_duration_since(seen) >= SHARE_WINDOW)
            {
                self.overflow = None;
            }
        }
        let known = self.senders.contains_key(&ip);
        let n = (self.senders.len() + usize::from(!known) + usize::from(self.overflow.is_some()))
            .max(1) as f64;
        let (rate, cap) = (rate / n, (burst / n).max(1.0));
        let slot = if known || self.senders.len() < MAX_SHARERS {
            self.senders
                .entry(ip)
                .or_insert_with(|| (Bucket::full(cap, now), now))
        } else {
            self.overflow
                .get_or_insert_with(|| (Bucket::full(cap, now), now))
        };
        slot.1 = now;
        // A bucket filled while the share was larger keeps at most the
        // current share.
        slot.0.tokens = slot.0.tokens.min(cap);
        slot.0.take(rate, cap, now)
    }

    fn idle(&self, now: Instant) -> bool {
        self.overflow.is_none()
            && self
                .senders
                .values()
                .all(|(_, seen)| now.saturating_duration_since(*seen) >= SHARE_WINDOW)
    }
}

/// Token buckets keyed by `K`, bounded in number.
struct Buckets<K> {
    map: HashMap<K, Bucket>,
    last_prune: Instant,
}

impl<K: std::hash::Hash + Eq> Buckets<K> {
    fn new() -> Self {
        Buckets {
            map: HashMap::new(),
            last_prune: Instant::now(),
        }
    }

    fn take(&mut self, key: K, rate: f64, capacity: f64) -> Result<(), Duration> {
        let now = Instant::now();
        if !self.map.contains_key(&key) && self.map.len() >= MAX_TABLE_ENTRIES {
            // Full buckets carry no information: dropping them is lossless.
            // At most once a second, so a flood of new keys stays O(1).
            if now.duration_since(self.last_prune) >= Duration::from_secs(1) {
                self.last_prune = now;
                self.map.retain(|_, b| {
                    b.refill(rate, capacity, now);
                    b.tokens < capacity
                });
            }
            if self.map.len() >= MAX_TABLE_ENTRIES {
                // Still full of active keys: do not grow; let this one pass.
                return Ok(());
            }
        }
        self.map
            .entry(key)
            .or_insert_with(|| Bucket::full(capacity, now))
            .take(rate, capacity, now)
    }

    /// Whether `key` has a token left, without taking one.
    fn peek(&mut self, key: &K, rate: f64, capacity: f64) -> Result<(), Duration> {
        let now = Instant::now();
        match self.map.get_mut(key) {
            None => Ok(()),
            Some(b) => {
                b.refill(rate, capacity, now);
                if b.tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
                }
            }
        }
    }
}

/// Runtime state of the limits, shared by every connection.
pub(crate) struct Limiter {
    limits: Limits,
    conns: Arc<Mutex<HashMap<IpAddr, usize>>>,
    inflight: Arc<Mutex<HashMap<(String, IpAddr), usize>>>,
    tunnels: Mutex<HashMap<String, Share>>,
    misses: Mutex<Buckets<IpAddr>>,
    auth_failures: Mutex<Buckets<IpAddr>>,
    auth_log: Mutex<RateLog>,
}

/// Logs failed authentications at most once a second, with how many were
/// left out, so a guessing flood cannot flood the log too.
struct RateLog {
    last: Option<Instant>,
    suppressed: u64,
}

/// Holds one connection slot of an IP; the slot frees when this drops.
pub(crate) struct ConnSlot {
    conns: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut conns = self.conns.lock();
        if let Some(n) = conns.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                conns.remove(&self.ip);
            }
        }
    }
}

/// One request in flight on a tunnel from one IP; frees when dropped.
pub(crate) struct InflightSlot {
    table: Arc<Mutex<HashMap<(String, IpAddr), usize>>>,
    key: (String, IpAddr),
}

impl Drop for InflightSlot {
    fn drop(&mut self) {
        let mut table = self.table.lock();
        if let Some(n) = table.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                table.remove(&self.key);
            }
        }
    }
}

/// IPv6 senders usually hold a whole /64, so misses are counted per /64.
pub(crate) fn miss_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

fn too_many(reason: &str, retry_after: Duration) -> Response<Body> {
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let mut resp = text(StatusCode::TOO_MANY_REQUESTS, reason);
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        secs.to_string().parse().expect("digits"),
    );
    resp
}

impl Limiter {
    pub(crate) fn new(limits: Limits) -> Self {
        Limiter {
            limits,
            conns: Arc::new(Mutex::new(HashMap::new())),
            inflight: Arc::new(Mutex::new(HashMap::new())),
            tunnels: Mutex::new(HashMap::new()),
            misses: Mutex::new(Buckets::new()),
            auth_failures: Mutex::new(Buckets::new()),
            auth_log: Mutex::new(RateLog {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// 429 when `ip` failed authentication too often lately; every attempt
    /// of that IP waits, right token or not, so guessing costs time.
    pub(crate) fn auth_blocked(&self, ip: IpAddr) -> Option<Box<Response<Body>>> {
        let per_min = self.limits.auth_failures_per_min;
        if per_min == 0 {
            return None;
        }
        let verdict = self.auth_failures.lock().peek(
            &miss_key(ip),
            f64::from(per_min) / 60.0,
            f64::from(per_min),
        );
        verdict.err().map(|wait| {
            Box::new(too_many(
                "whtunnel: too many refused tokens from this address; wait and check the token",
                wait,
            ))
        })
    }

    /// Counts and logs (rate-limited) a refused token from `ip`. The token
    /// itself is never logged.
    pub(crate) fn auth_failed(&self, ip: IpAddr, what: &str) {
        let per_min = self.limits.auth_failures_per_min;
        if per_min > 0 {
            let _ = self.auth_failures.lock().take(
                miss_key(ip),
                f64::from(per_min) / 60.0,
                f64::from(per_min),
            );
        }
        let now = Instant::now();
        let mut log = self.auth_log.lock();
        if log
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            log.suppressed += 1;
            return;
        }
        let more = std::mem::take(&mut log.suppressed);
        log.last = Some(now);
        drop(log);
        if more > 0 {
            tracing::warn!(from = %ip, "{what}: token refused ({more} more refused in the second before, not logged one by one)");
        } else {
            tracing::warn!(from = %ip, "{what}: token refused");
        }
    }

    /// 429 when `ip` is over its unknown-tunnel limit: then every tunnel
    /// request it makes is refused, hits too, so probing cannot tell a
    /// name that exists from one that does not.
    pub(crate) fn over_miss_limit(&self, ip: IpAddr) -> Option<Response<Body>> {
        let per_min = self.limits.unknown_tunnel_per_min;
        if per_min == 0 {
            return None;
        }
        let verdict =
            self.misses
                .lock()
                .peek(&miss_key(ip), f64::from(per_min) / 60.0, f64::from(per_min));
        verdict.err().map(|wait| {
            too_many(
                "whtunnel: too many requests for unknown tunnels from this address; slow down",
                wait,
            )
        })
    }

    /// Takes a connection slot for `ip`, or `None` when the IP already holds
    /// its share and the connection should be closed.
    pub(crate) fn admit(&self, ip: IpAddr) -> Option<ConnSlot> {
        let max = self.limits.max_conns_per_ip;
        let mut conns = self.conns.lock();
        let n = conns.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(ConnSlot {
            conns: self.conns.clone(),
            ip,
        })
    }

    /// The answer for a request to a tunnel nobody holds: always the same
    /// 404, or 429 once `ip` has missed too often.
    pub(crate) fn unknown_tunnel(&self, ip: IpAddr) -> Response<Body> {
        let per_min = self.limits.unknown_tunnel_per_min;
        if per_min > 0 {
            let verdict = self.misses.lock().take(
                miss_key(ip),
                f64::from(per_min) / 60.0,
                f64::from(per_min),
            );
            if let Err(wait) = verdict {
                return too_many(
                    "whtunnel: too many requests for unknown tunnels from this address; slow down",
                    wait,
                );
            }
        }
        text(StatusCode::NOT_FOUND, UNKNOWN_TUNNEL)
    }

    /// Admits one request to tunnel `name` from `ip`, or answers 429 when
    /// the tunnel is over its request rate or `ip` already has its share of
    /// the tunnel's exchanges in flight. Keep the slot until the answer's
    /// head is back.
    pub(crate) fn check_tunnel(
        &self,
        name: &str,
        ip: IpAddr,
    ) -> Result<InflightSlot, Box<Response<Body>>> {
        let rate = self.limits.rate_limit;
        if rate > 0.0 {
            let capacity = f64::from(self.limits.rate_burst.max(1));
            let now = Instant::now();
            let verdict = {
                let mut tunnels = self.tunnels.lock();
                if !tunnels.contains_key(name) && tunnels.len() >= MAX_TABLE_ENTRIES {
                    tunnels.retain(|_, s| !s.idle(now));
                }
                if !tunnels.contains_key(name) && tunnels.len() >= MAX_TABLE_ENTRIES {
                    // Full of active tunnels: do not grow; let this pass.
                    Ok(())
                } else {
                    tunnels
                        .entry(name.to_string())
                        .or_insert_with(|| Share::new(now))
                        .take(miss_key(ip), rate, capacity, now)
                }
            };
            if let Err(wait) = verdict {
                return Err(Box::new(too_many(
                    &format!("whtunnel: this tunnel is over its limit of {rate} requests per second; retry later"),
                    wait,
                )));
            }
        }
        let key = (name.to_string(), ip);
        let max = self.limits.max_inflight_per_ip;
        let mut inflight = self.inflight.lock();
        // The key is copied only for the first request of its kind in flight.
        let n = match inflight.get_mut(&key) {
            Some(n) => n,
            None => inflight.entry(key.clone()).or_insert(0),
        };
        if max > 0 && *n >= max {
            return Err(Box::new(too_many(
                &format!(
                    "whtunnel: this address already has {max} requests in flight on this tunnel"
                ),
                Duration::from_secs(1),
            )));
        }
        *n += 1;
        Ok(InflightSlot {
            table: self.inflight.clone(),
            key,
        })
    }

    /// Wraps a request body so a sender trickling it slower than
    /// [`Limits::min_body_rate`] is cut off, and so a body that fails on the
    /// sender's side (bad chunked framing, early close) is noticed. Ask
    /// [`body_answer`](Self::body_answer) with the returned verdict once the
    /// exchange is over.
    pub(crate) fn watch_body<B>(&self, inner: B) -> (MinRateBody<B>, BodyVerdict) {
        let verdict = BodyVerdict(Arc::new(AtomicU8::new(BODY_OK)));
        let body = MinRateBody::new(
            inner,
            self.limits.min_body_rate,
            self.limits.body_rate_grace,
            self.limits.body_rate_window,
            verdict.clone(),
        );
        (body, verdict)
    }

    /// The relay's own answer when the sender's body failed: 408 when it
    /// was too slow, 400 when it broke off or was malformed. `None` when
    /// the body was fine and the exchange's answer stands.
    pub(crate) fn body_answer(&self, verdict: &BodyVerdict) -> Option<Response<Body>> {
        let (status, reason) = match verdict.0.load(Ordering::Acquire) {
            BODY_TOO_SLOW => (
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "whtunnel: request body arrived slower than {} bytes per second",
                    self.limits.min_body_rate
                ),
            ),
            BODY_FAILED => (
                StatusCode::BAD_REQUEST,
                "whtunnel: the request body was malformed or cut short".to_string(),
            ),
            _ => return None,
        };
        let mut resp = text(status, &reason);
        // The rest of the body is unread: the connection cannot be reused.
        resp.headers_mut()
            .insert(header::CONNECTION, "close".parse().expect("static"));
        Some(resp)
    }
}

const BODY_OK: u8 = 0;
const BODY_TOO_SLOW: u8 = 1;
const BODY_FAILED: u8 = 2;

/// What became of a watched request body (see [`Limiter::watch_body`]).
#[derive(Clone, Debug)]
pub(crate) struct BodyVerdict(Arc<AtomicU8>);

impl BodyVerdict {
    fn set(&self, v: u8) {
        // The first verdict sticks: a slow body's own error is not "failed".
        let _ = self
            .0
            .compare_exchange(BODY_OK, v, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// A request body that fails when its sender is too slow.
///
/// Only time spent *waiting for the sender* counts: while the tunnel is not
/// reading (HTTP/2 flow control because the app is slow), no poll is
/// pending and the clock stands still, so a slow app never gets a fast
/// sender cut off.
pub(crate) struct MinRateBody<B> {
    inner: B,
    min_rate: u64,
    window: Duration,
    /// Sender-waiting time accrued before the current wait.
    waited: Duration,
    /// When the current wait began, if a poll is pending.
    wait_start: Option<Instant>,
    /// Waiting time at which the current window closes.
    next_check: Duration,
    bytes: u64,
    bytes_at_window_start: u64,
    timer: Option<Pin<Box<Sleep>>>,
    verdict: BodyVerdict,
}

impl<B> MinRateBody<B> {
    fn new(
        inner: B,
        min_rate: u64,
        grace: Duration,
        window: Duration,
        verdict: BodyVerdict,
    ) -> Self {
        MinRateBody {
            inner,
            min_rate,
            window: window.max(Duration::from_millis(1)),
            waited: Duration::ZERO,
            wait_start: None,
            next_check: grace + window,
            bytes: 0,
            bytes_at_window_start: 0,
            timer: None,
            verdict,
        }
    }

    /// Closes every window that ended by waiting time `waited`; false when
    /// one of them fell short of the minimum rate.
    fn windows_ok(&mut self, waited: Duration) -> bool {
        let need = (self.min_rate as f64 * self.window.as_secs_f64()) as u64;
        while waited >= self.next_check {
            if self.bytes - self.bytes_at_window_start < need {
                return false;
            }
            self.bytes_at_window_start = self.bytes;
            self.next_check += self.window;
        }
        true
    }

    fn fail(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.verdict.set(BODY_TOO_SLOW);
        self.timer = None;
        Poll::Ready(Some(Err("request body arrived too slowly".into())))
    }
}

impl<B> http_body::Body for MinRateBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.min_rate == 0 {
            let polled = Pin::new(&mut this.inner).poll_frame(cx);
            if let Poll::Ready(Some(Err(_))) = &polled {
                this.verdict.set(BODY_FAILED);
            }
            return polled.map(|o| o.map(|r| r.map_err(Into::into)));
        }
        loop {
            let now = Instant::now();
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(start) = this.wait_start.take() {
                        this.waited += now.saturating_duration_since(start);
                    }
                    if let Some(d) = frame.data_ref() {
                        this.bytes += d.len() as u64;
                    }
                    let waited = this.waited;
                    if !this.windows_ok(waited) {
                        return this.fail();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.verdict.set(BODY_FAILED);
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    this.timer = None;
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    let start = *this.wait_start.get_or_insert(now);
                    let waited = this.waited + now.saturating_duration_since(start);
                    if !this.windows_ok(waited) {
                        return this.fail();
                    }
                    // Wake up when the current window closes, in case the
                    // sender sends nothing at all until then.
                    let deadline = now + this.next_check.saturating_sub(waited);
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The HTTP/2 client preface; hyper reads up to these bytes to choose
/// between HTTP/1 and HTTP/2, with no deadline of its own.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection's IO that must show which protocol it speaks in time.
///
/// hyper-util's auto server reads the first bytes to tell HTTP/1 from
/// HTTP/2 without any timeout, and hyper's `header_read_timeout` only starts
/// after that, so a connection that sends nothing (or a slow prefix of the
/// HTTP/2 preface) would be held forever. This wrapper fails reads once the
/// deadline passes while the bytes so far are still a prefix of the preface;
/// after the first differing byte or the full preface it is transparent.
pub(crate) struct FirstBytesDeadline<S> {
    inner: S,
    matched: usize,
    decided: bool,
    deadline: Pin<Box<Sleep>>,
}

impl<S> FirstBytesDeadline<S> {
    /// Wraps `inner`; the protocol must be evident within `timeout`.
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        FirstBytesDeadline {
            inner,
            matched: 0,
            decided: false,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn observe(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.matched < H2_PREFACE.len() && H2_PREFACE[self.matched] == b {
                self.matched += 1;
                if self.matched == H2_PREFACE.len() {
                    self.decided = true;
                    return;
                }
            } else {
                self.decided = true;
                return;
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstBytesDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.decided {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled();
                let new = filled[before..].to_vec();
                this.observe(&new);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request started within the header timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstBytesDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_burst_then_refills() {
        // 4 tokens a second (one per 250 ms, exact in binary), burst of 5.
        let mut b: Buckets<u8> = Buckets::new();
        for _ in 0..5 {
            assert!(b.take(1, 4.0, 5.0).is_ok());
        }
        let wait = b.take(1, 4.0, 5.0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(250));
        assert!(b.take(2, 4.0, 5.0).is_ok(), "keys are independent");
        tokio::time::advance(Duration::from_millis(125)).await;
        let wait = b.take(1, 4.0, 5.0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(125), "half a token back");
        tokio::time::advance(Duration::from_millis(125)).await;
        assert!(b.take(1, 4.0, 5.0).is_ok(), "a whole token back");
        assert!(b.take(1, 4.0, 5.0).is_err(), "and only one");
    }

    #[test]
    fn conn_slots_are_counted_and_freed() {
        let l = Limiter::new(Limits {
            max_conns_per_ip: 2,
            ..Limits::default()
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = l.admit(ip).unwrap();
        let _b = l.admit(ip).unwrap();
        assert!(l.admit(ip).is_none());
        assert!(l.admit("127.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(l.admit(ip).is_some());
    }

    #[test]
    fn misses_share_one_body_then_429() {
        let l = Limiter::new(Limits {
            unknown_tunnel_per_min: 3,
            ..Limits::default()
        });
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(l.unknown_tunnel(ip).status(), StatusCode::NOT_FOUND);
        }
        // Same /64, different address: same budget.
        let r = l.unknown_tunnel("2001:db8::2".parse().unwrap());
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let secs: u64 = r.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=20).contains(&secs), "{secs}");
    }

    fn watched<S>(stream: S) -> (MinRateBody<http_body_util::StreamBody<S>>, BodyVerdict) {
        // 10 kB/s minimum, judged over 200 ms windows after 200 ms grace.
        let verdict = BodyVerdict(Arc::new(AtomicU8::new(BODY_OK)));
        let body = MinRateBody::new(
            http_body_util::StreamBody::new(stream),
            10_000,
            Duration::from_millis(200),
            Duration::from_millis(200),
            verdict.clone(),
        );
        (body, verdict)
    }

    fn every(
        ms: u64,
        chunk: usize,
        n: u32,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Unpin {
        use futures_util::StreamExt;
        futures_util::stream::unfold(0u32, move |i| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (i < n).then(|| {
                (
                    Ok::<_, BoxError>(Frame::data(Bytes::from(vec![0u8; chunk]))),
                    i + 1,
                )
            })
        })
        .boxed()
    }

    // Paused clock: the senders' sleeps and the body's timer run on virtual
    // time, so the windows are judged exactly and the test does not wait.
    #[tokio::test(start_paused = true)]
    async fn trickling_body_is_cut_but_steady_one_passes() {
        // 100 B every 50 ms = 2 kB/s: a fifth of the minimum.
        let (body, verdict) = watched(every(50, 100, 1000));
        let start = Instant::now();
        assert!(body.collect().await.is_err());
        assert_eq!(verdict.0.load(Ordering::Acquire), BODY_TOO_SLOW);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_millis(450),
            "cut at grace + window, took {took:?}"
        );

        // A sender that sends nothing at all is cut by the timer, at grace +
        // window; without the timer nothing would wake the body before the
        // outer timeout.
        let silent = futures_util::stream::pending::<Result<Frame<Bytes>, BoxError>>();
        let (body, verdict) = watched(silent);
        let start = Instant::now();
        let cut = tokio::time::timeout(Duration::from_secs(60), body.collect()).await;
        assert!(matches!(cut, Ok(Err(_))), "the timer cuts a silent sender");
        assert_eq!(verdict.0.load(Ordering::Acquire), BODY_TOO_SLOW);
        assert_eq!(start.elapsed(), Duration::from_millis(400));

        // 4 KiB every 50 ms = 80 kB/s for 1 s: passes.
        let (body, verdict) = watched(every(50, 4096, 20));
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 20 * 4096);
        assert_eq!(verdict.0.load(Ordering::Acquire), BODY_OK);

        // A failing sender is reported as such, not as slow.
        let broken =
            futures_util::stream::iter([Err::<Frame<Bytes>, BoxError>("bad chunk".into())]);
        let (body, verdict) = watched(broken);
        assert!(body.collect().await.is_err());
        assert_eq!(verdict.0.load(Ordering::Acquire), BODY_FAILED);
    }
}
