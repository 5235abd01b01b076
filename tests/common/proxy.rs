//! A loopback TCP proxy that a test can break on purpose, to play a network
//! that fails under the agent's link: it can go silent (a laptop lid
//! closing, a NAT dropping the flow) or drop every connection at once (a
//! link that comes straight back).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long a silenced connection is kept open: longer than any test waits,
/// so the peer sees silence rather than a close.
const SILENCE: Duration = Duration::from_secs(60);

/// A TCP proxy on 127.0.0.1 port 0 in front of one upstream address.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Cancelled by [`Proxy::black_hole`]; never reset.
    silenced: CancellationToken,
    /// Cancelled by [`Proxy::sever`] for the connections open at that time;
    /// replaced so later connections pass again.
    open: Arc<Mutex<CancellationToken>>,
}

impl Proxy {
    /// Starts a proxy to `upstream`; it runs until the test's runtime ends.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silenced = CancellationToken::new();
        let open = Arc::new(Mutex::new(CancellationToken::new()));
        let (s, o) = (silenced.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let severed = o.lock().unwrap().clone();
                tokio::spawn(pass(inbound, upstream, s.clone(), severed));
            }
        });
        Proxy {
            addr,
            silenced,
            open,
        }
    }

    /// `http://` and the proxy's address, for an agent's relay URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops passing bytes for good, in both directions, while keeping every
    /// socket open: silence, not a reset. New connections go nowhere either.
    pub fn black_hole(&self) {
        self.silenced.cancel();
    }

    /// Closes every connection open through the proxy now; new ones still
    /// pass.
    pub fn sever(&self) {
        let old = std::mem::take(&mut *self.open.lock().unwrap());
        old.cancel();
    }
}

/// Copies one connection both ways until it ends, is severed (both sockets
/// closed) or silenced (both kept open, nothing copied).
async fn pass(
    mut inbound: TcpStream,
    upstream: SocketAddr,
    silenced: CancellationToken,
    severed: CancellationToken,
) {
    if silenced.is_cancelled() {
        tokio::time::sleep(SILENCE).await;
        return;
    }
    let mut outbound = TcpStream::connect(upstream).await.unwrap();
    tokio::select! {
        biased;
        () = silenced.cancelled() => tokio::time::sleep(SILENCE).await,
        () = severed.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
    }
}
