//! A loopback TCP proxy that a test can break on purpose, to play a network
//! that fails under the agent's link: it can go silent (a laptop lid
//! closing, a NAT dropping the flow), drop every connection at once (a
//! link that comes straight back), or refuse new connections for a while
//! (a network that is gone).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long a silenced connection is kept open: longer than any test waits,
/// so the peer sees silence rather than a close.
const SILENCE: Duration = Duration::from_secs(60);

/// The connections open between two calls to [`Proxy::sever`].
#[derive(Clone, Default)]
struct Generation {
    /// Cancelled by [`Proxy::sever`]: the connections close.
    severed: CancellationToken,
    /// Cancelled by [`Proxy::silence_open`]: the connections stop passing
    /// bytes but stay open.
    muted: CancellationToken,
}

/// A TCP proxy on 127.0.0.1 port 0 in front of one upstream address.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Cancelled by [`Proxy::black_hole`]; never reset.
    silenced: CancellationToken,
    /// The connections open now; replaced by [`Proxy::sever`] so later
    /// connections pass again.
    open: Arc<Mutex<Generation>>,
    /// Set by [`Proxy::set_down`]: new connections are closed at once.
    down: Arc<AtomicBool>,
}

impl Proxy {
    /// Starts a proxy to `upstream`; it runs until the test's runtime ends.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silenced = CancellationToken::new();
        let open = Arc::new(Mutex::new(Generation::default()));
        let down = Arc::new(AtomicBool::new(false));
        let (s, o, d) = (silenced.clone(), open.clone(), down.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let generation = o.lock().unwrap().clone();
                tokio::spawn(pass(inbound, upstream, s.clone(), generation));
            }
        });
        Proxy {
            addr,
            silenced,
            open,
            down,
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
        old.severed.cancel();
    }

    /// Stops passing bytes on the connections open now, keeping their
    /// sockets open until [`Proxy::sever`]; new connections still pass.
    pub fn silence_open(&self) {
        self.open.lock().unwrap().muted.cancel();
    }

    /// While `down`, new connections are accepted and closed at once, as a
    /// network that is gone; open ones are left alone (see [`Proxy::sever`]).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

/// Copies one connection both ways until it ends, is severed (both sockets
/// closed) or silenced (both kept open, nothing copied). An upstream that
/// refuses (a relay being restarted) closes the inbound connection.
async fn pass(
    mut inbound: TcpStream,
    upstream: SocketAddr,
    silenced: CancellationToken,
    generation: Generation,
) {
    if silenced.is_cancelled() {
        tokio::time::sleep(SILENCE).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        biased;
        () = silenced.cancelled() => tokio::time::sleep(SILENCE).await,
        () = generation.severed.cancelled() => {}
        () = generation.muted.cancelled() => {
            tokio::select! {
                () = generation.severed.cancelled() => {}
                () = tokio::time::sleep(SILENCE) => {}
            }
        }
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
    }
}
