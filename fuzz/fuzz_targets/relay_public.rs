//! Arbitrary bytes to a running relay's public port (relay + agent + a
//! local app, all in this process, on loopback). The relay must never
//! panic (a panic in any task aborts the process), must answer with
//! well-formed HTTP/1 or close, and must keep serving.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use whtunnel::agent::{Capture, ConnectionStatus, ListenConfig, Listener, RelayChoice};
use whtunnel::relay::{Relay, RelayConfig, Tokens};
use whtunnel::tunnel::tls;

struct World {
    rt: tokio::runtime::Runtime,
    relay: SocketAddr,
}

/// An app that reads whatever comes and answers 200 to each head.
async fn app(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            }
        });
    }
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        // A panic anywhere (also in a spawned task) is a finding.
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            std::process::abort();
        }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let relay = rt.block_on(async {
            let app_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let app_addr = app_listener.local_addr().unwrap();
            tokio::spawn(app(app_listener));
            let mut config =
                RelayConfig::new("127.0.0.1:0".parse().unwrap(), Tokens::new(["fuzz"]));
            config.max_body = 64 * 1024;
            config.response_timeout = Duration::from_secs(2);
            config.limits.header_read_timeout = Duration::from_millis(200);
            config.limits.unknown_tunnel_per_min = 0;
            config.limits.rate_limit = 0.0;
            config.limits.max_conns_per_ip = 0;
            config.limits.body_rate_grace = Duration::from_millis(200);
            config.limits.body_rate_window = Duration::from_millis(200);
            let relay = Relay::bind(config).await.unwrap();
            let addr = relay.local_addr();
            let base = relay.base_url();
            tokio::spawn(relay.run(std::future::pending()));
            let dir = std::env::temp_dir().join("whtunnel-fuzz-agent");
            let mut config = ListenConfig::new(app_addr.to_string().parse().unwrap(), "f", dir);
            config.relay = RelayChoice::Remote {
                url: base.parse().unwrap(),
                token: "fuzz".into(),
                tls: tls::client_config(None).unwrap(),
            };
            config.capture = Capture::Off;
            let listener = Listener::bind(config).await.unwrap();
            let mut rx = listener.status();
            tokio::spawn(listener.run(CancellationToken::new()));
            while !matches!(*rx.borrow_and_update(), ConnectionStatus::Connected { .. }) {
                rx.changed().await.unwrap();
            }
            addr
        });
        World { rt, relay }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    w.rt.block_on(async {
        let mut s = TcpStream::connect(w.relay).await.unwrap();
        // Steer most inputs at the tunnel: a valid request line first,
        // unless the input brings its own.
        if !data.first().is_some_and(|b| b.is_ascii_uppercase()) {
            let _ = s.write_all(b"POST /t/f/x HTTP/1.1\r\nHost: r\r\n").await;
        }
        let _ = s.write_all(data).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
        // Whatever came back is HTTP/1 responses (unless the input spoke
        // HTTP/2, whose answer is binary frames).
        if !out.is_empty() && !data.starts_with(b"PRI") {
            assert!(
                out.starts_with(b"HTTP/1."),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
        }
        // And the relay still serves.
        let mut h = TcpStream::connect(w.relay).await.unwrap();
        h.write_all(b"GET /_whtunnel/health HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), h.read_to_end(&mut out))
            .await
            .expect("relay answers health within 5 s")
            .unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
    });
});
