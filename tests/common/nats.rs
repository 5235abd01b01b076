//! Real `nats-server` processes with JetStream for the cluster tests: one
//! node, or a three-node cluster with routes, every port free and on
//! loopback, every store in a temporary directory. `test.sh` installs the
//! Debian package; without it these tests fail with a message saying so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::ports::PortReservation;

/// One running `nats-server`.
pub struct NatsNode {
    /// Client address.
    pub addr: SocketAddr,
    child: Option<Child>,
    args: Vec<String>,
    /// Held so a restart gets the same ports.
    _ports: Vec<PortReservation>,
}

impl NatsNode {
    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Kills the node at once (SIGKILL), as a crash would.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }

    /// Starts the node again with the same ports and store.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.child = Some(spawn(&self.args));
        wait_ready(self.addr).await;
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

fn binary() -> PathBuf {
    for p in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    match which("nats-server") {
        Some(p) => p,
        None => panic!("nats-server is not installed: run ./test.sh (it installs the Debian package nats-server)"),
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    })
}

fn spawn(args: &[String]) -> Child {
    Command::new(binary())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server starts")
}

async fn wait_ready(addr: SocketAddr) {
    let started = Instant::now();
    loop {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            drop(s);
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nats-server on {addr} did not listen within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The secret the test relays of one cluster share.
pub const SECRET: &str = "cluster-test-secret-0123456789";

/// A relay on `127.0.0.1:0` joined to the cluster on `nats`, with a short
/// holder TTL (3 s) so the tests see a dead relay's claims expire.
pub fn clustered(nats: &[String]) -> whtunnel::relay::RelayConfig {
    let mut config = super::relay_config("127.0.0.1:0");
    let mut cluster = whtunnel::cluster::ClusterConfig::new(nats.to_vec(), SECRET.into());
    cluster.holder_ttl = Duration::from_secs(3);
    config.cluster = Some(cluster);
    // JetStream reserves the stream's byte cap on disk up front.
    config.hold_caps.max_total_bytes = 256 << 20;
    config
}

/// One JetStream node in a temporary directory, removed when dropped.
pub async fn one_nats() -> (tempfile::TempDir, NatsNode) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let node = single(dir.path()).await;
    (dir, node)
}

/// A single JetStream node storing under `dir`.
pub async fn single(dir: &Path) -> NatsNode {
    let port = PortReservation::new();
    let addr = port.addr;
    let args = vec![
        "-js".to_string(),
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        addr.port().to_string(),
        "-sd".into(),
        dir.to_string_lossy().into_owned(),
    ];
    let child = spawn(&args);
    wait_ready(addr).await;
    NatsNode {
        addr,
        child: Some(child),
        args,
        _ports: vec![port],
    }
}

/// A three-node JetStream cluster (routes between all three), stores
/// under `dir`. Returns once JetStream has a meta leader.
pub async fn cluster3(dir: &Path) -> Vec<NatsNode> {
    let clients: Vec<PortReservation> = (0..3).map(|_| PortReservation::new()).collect();
    let mut routes: Vec<Option<PortReservation>> =
        (0..3).map(|_| Some(PortReservation::new())).collect();
    let route_urls = routes
        .iter()
        .flatten()
        .map(|r| format!("nats-route://{}", r.addr))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let store = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&store).unwrap();
        let args = vec![
            "-js".to_string(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            client.addr.port().to_string(),
            "-sd".into(),
            store.to_string_lossy().into_owned(),
            "-n".into(),
            format!("n{i}"),
            "--cluster_name".into(),
            "whtunnel-test".into(),
            "--cluster".into(),
            format!("nats://{}", routes[i].as_ref().unwrap().addr),
            "--routes".into(),
            route_urls.clone(),
        ];
        let child = spawn(&args);
        nodes.push(NatsNode {
            addr: client.addr,
            child: Some(child),
            args,
            _ports: vec![client, routes[i].take().unwrap()],
        });
    }
    for n in &nodes {
        wait_ready(n.addr).await;
    }
    nodes
}

/// The `nats://` URLs of `nodes`.
pub fn urls(nodes: &[NatsNode]) -> Vec<String> {
    nodes.iter().map(NatsNode::url).collect()
}
