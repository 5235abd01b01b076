//! The admin endpoint, `--admin-listen`: a small HTTP server apart from the
//! public one, for the operator's health checks and Prometheus.
//!
//! - `GET /healthz`: `200 ok` while the relay takes traffic, `503 draining`
//!   once it was told to stop and is finishing what is in flight, so a load
//!   balancer or orchestrator stops sending before the process exits.
//! - `GET /metrics`: Prometheus text (see [`super::metrics`]).
//!
//! It has no authentication: it listens on loopback unless the operator
//! names another address ([`AdminListen`]).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::metrics::{Metrics, Snapshot, CONTENT_TYPE};
use super::Shared;

/// Connections the admin endpoint serves at once; more wait in the
/// kernel's accept queue.
const MAX_CONNECTIONS: usize = 32;

/// Where `--admin-listen` binds: `PORT` or `:PORT` alone means loopback
/// (`127.0.0.1:PORT`); `HOST:PORT` binds there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminListen(pub SocketAddr);

impl AdminListen {
    /// Whether the endpoint is reachable from other machines: worth a
    /// warning, since it has no authentication.
    pub fn is_exposed(&self) -> bool {
        !self.0.ip().is_loopback()
    }
}

impl FromStr for AdminListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let port_only = s.strip_prefix(':').unwrap_or(s);
        if let Ok(port) = port_only.parse::<u16>() {
            return Ok(AdminListen(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                port,
            )));
        }
        if let Some(port) = s.strip_prefix("localhost:") {
            if let Ok(port) = port.parse::<u16>() {
                return Ok(AdminListen(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    port,
                )));
            }
        }
        s.parse::<SocketAddr>()
            .map(AdminListen)
            .map_err(|_| format!("'{s}' is not PORT or HOST:PORT (e.g. 9090 for 127.0.0.1:9090)"))
    }
}

impl std::fmt::Display for AdminListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What the admin endpoint reads from a relay: its metrics, whether it is
/// draining, and the state its gauges mirror. Get it from
/// [`super::Relay::status`] before running the relay.
#[derive(Clone)]
pub struct RelayStatus {
    pub(crate) shared: Arc<Shared>,
}

impl RelayStatus {
    /// The relay's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Whether the relay takes traffic (it is not draining).
    pub fn is_healthy(&self) -> bool {
        !self.shared.metrics.is_draining()
    }

    /// The relay's state now: connected agents, held events and bytes, the
    /// runtime's worker threads.
    pub fn snapshot(&self) -> Snapshot {
        let connected_agents = self.shared.tunnels.lock().len() as u64;
        let (held_events, dead_events, held_bytes) = match &self.shared.held {
            Some(h) => {
                let (pending, dead) = h.event_totals();
                (pending, dead, h.total_bytes())
            }
            None => (0, 0, 0),
        };
        Snapshot {
            connected_agents,
            held_events,
            dead_events,
            held_bytes,
            // Outside a runtime (never, when serving /metrics) there are none.
            worker_threads: tokio::runtime::Handle::try_current()
                .map_or(0, |h| h.metrics().num_workers() as u64),
        }
    }

    /// The Prometheus text of the relay's metrics now.
    pub fn render_metrics(&self) -> String {
        // Certificate expiry is read when scraped, like the gauges.
        if let Some(acme) = &self.shared.config.acme {
            for (host, not_after) in acme.expiries() {
                let secs = not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                self.metrics().set_cert_expiry(&host, secs);
            }
        }
        self.metrics().render(self.snapshot())
    }
}

/// A bound admin endpoint, ready to [`run`](AdminServer::run).
pub struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    status: RelayStatus,
}

impl AdminServer {
    /// Binds the admin socket (port 0 lets the OS pick).
    pub async fn bind(addr: SocketAddr, status: RelayStatus) -> std::io::Result<AdminServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(AdminServer {
            listener,
            local_addr,
            status,
        })
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves. Run it past the relay's own
    /// shutdown, so `/healthz` can say `draining` while the relay drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let AdminServer {
            listener, status, ..
        } = self;
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .max_buf_size(16 * 1024);
        let http = Arc::new(http);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("admin accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let status = status.clone();
            let http = http.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |req| {
                    let answer = answer(&status, &req);
                    async move { Ok::<_, std::convert::Infallible>(answer) }
                });
                let conn = http.serve_connection(TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!("admin connection ended: {e}");
                }
            });
        }
        drop(listener);
        let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
        Ok(())
    }
}

fn answer(status: &RelayStatus, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match req.uri().path() {
        "/healthz" if status.is_healthy() => plain(StatusCode::OK, "ok\n"),
        "/healthz" => plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(status.render_metrics())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(CONTENT_TYPE),
            );
            resp
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "whtunnel admin: GET /healthz or /metrics\n",
        ),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_alone_means_loopback_and_a_host_is_kept() {
        let a: AdminListen = "9090".parse().unwrap();
        assert_eq!(a.0, "127.0.0.1:9090".parse().unwrap());
        assert!(!a.is_exposed());
        let a: AdminListen = ":9091".parse().unwrap();
        assert_eq!(a.0, "127.0.0.1:9091".parse().unwrap());
        let a: AdminListen = "localhost:9092".parse().unwrap();
        assert_eq!(a.0, "127.0.0.1:9092".parse().unwrap());
        let a: AdminListen = "[::1]:9093".parse().unwrap();
        assert!(!a.is_exposed());
        let a: AdminListen = "0.0.0.0:9094".parse().unwrap();
        assert!(a.is_exposed());
        let e = "nonsense".parse::<AdminListen>().unwrap_err();
        assert!(e.contains("PORT or HOST:PORT"), "{e}");
    }
}
