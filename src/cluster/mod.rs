//! Several relays as one, on NATS JetStream (`whtunnel relay --cluster`).
//!
//! | part | job |
//! |---|---|
//! | [`registry`] | which relay holds which tunnel: a JetStream KV bucket, compare-and-set claims with a TTL refreshed while the agent is connected |
//! | [`held`] | held events in a JetStream stream: any relay holds, the agent's relay delivers and acknowledges |
//! | [`hop`] | a webhook for a tunnel held on another relay, carried there over HTTP/2 and answered back |
//! | [`owners`] | with users, who owns each name: a KV bucket without TTL, compare-and-set claims, the per-user cap across relays |
//!
//! The relay meets this module at two seams only: [`Cluster::claim`] /
//! [`Cluster::keep`] when an agent connects (who holds tunnel NAME: the
//! local session map answers for this relay, the bucket for all of them),
//! and [`Cluster::holder`] + [`Hop::send`] when a webhook arrives for a
//! tunnel with no local agent. Without `--cluster` neither is reached and
//! no NATS is needed. Why this design and what each part guarantees when
//! it fails: `docs/cluster.md`.

pub mod held;
pub mod hop;
pub mod owners;
pub mod registry;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use held::{HeldStream, HoldError};
pub use hop::{Hop, HopBody, HopError};
pub use owners::KvOwners;
pub use registry::{Claim, ClaimError, Holder, Registry};

/// Default time a holder entry outlives its relay: the longest a dead
/// relay's tunnels stay unroutable (senders get held or 503 meanwhile).
pub const DEFAULT_HOLDER_TTL: Duration = Duration::from_secs(15);

/// How a relay joins a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// NATS servers, `nats://host:port` (any number of one NATS cluster).
    pub nats: Vec<String>,
    /// Base URL other relays reach this one at for hops (`http://host:port`);
    /// `None`: the hop listener's address, or this relay's listening
    /// address, when that is not a wildcard.
    pub advertise: Option<String>,
    /// A second, cleartext listener that takes hops from the other relays
    /// only. A relay serving TLS needs it (hops speak HTTP/2 without TLS,
    /// on the cluster's private network); `None`: hops arrive on the
    /// relay's own listener.
    pub listen: Option<std::net::SocketAddr>,
    /// Shared by every relay of the cluster; authenticates hops.
    pub secret: String,
    /// How long a holder entry lives without a refresh.
    pub holder_ttl: Duration,
}

impl ClusterConfig {
    /// A config with the default TTL.
    pub fn new(nats: Vec<String>, secret: String) -> Self {
        ClusterConfig {
            nats,
            advertise: None,
            listen: None,
            secret,
            holder_ttl: DEFAULT_HOLDER_TTL,
        }
    }

    /// Replicas for the cluster's buckets and streams: one per NATS server
    /// named, at most three (JetStream's usual quorum size).
    pub fn replicas(&self) -> usize {
        self.nats.len().clamp(1, 3)
    }
}

/// Why joining the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The config cannot work.
    #[error("cluster config: {0}")]
    Config(String),
    /// This relay's users file is not the one the cluster's relays use.
    #[error("cannot join the cluster: {0}")]
    UsersFile(String),
    /// NATS or JetStream could not be reached or set up.
    #[error("cannot join the cluster through NATS ({servers}): {reason}")]
    Nats {
        /// The servers tried.
        servers: String,
        /// What failed.
        reason: String,
    },
}

/// `--cluster-advertise` as the base URL hops are sent to: `http://HOST:PORT`
/// and nothing else (hops are cleartext HTTP/2 on the cluster's private
/// network; an `https://` or port-less address would fail every hop).
fn check_advertise(advertise: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!("--cluster-advertise {advertise:?} {why}: give http://HOST:PORT, the address other relays reach this one at")
    };
    let uri: http::Uri = advertise.parse().map_err(|_| bad("is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad(
            "is not an http:// URL (hops are cleartext, on a private network)",
        ));
    }
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if authority.port_u16().is_none() {
        return Err(bad("has no port"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("has a path"));
    }
    Ok(format!("http://{authority}"))
}

/// A relay's membership in the cluster.
pub struct Cluster {
    id: String,
    addr: String,
    ttl: Duration,
    registry: Registry,
    hop: Hop,
    held: std::sync::Arc<HeldStream>,
    js: async_nats::jetstream::Context,
    servers: String,
    replicas: usize,
    /// Set by [`Cluster::open_owners`]: this relay's users-file entry.
    beacon: std::sync::OnceLock<owners::UsersBeacon>,
}

impl Cluster {
    /// Connects to NATS and opens the cluster's bucket. `listening`: where
    /// this relay takes hops (its hop listener, else its own address), the
    /// default hop address.
    pub async fn join(
        config: &ClusterConfig,
        listening: std::net::SocketAddr,
        caps: crate::relay::Caps,
    ) -> Result<Cluster, ClusterError> {
        let addr = match &config.advertise {
            Some(a) => {
                let addr = check_advertise(a).map_err(ClusterError::Config)?;
                let port = addr.parse::<http::Uri>().ok().and_then(|u| u.port_u16());
                if config.listen.is_some() && port != Some(listening.port()) {
                    tracing::warn!(
                        "--cluster-advertise {addr} names another port than --cluster-listen {listening}: \
                         hops reach this relay only if something forwards that port to it"
                    );
                }
                addr
            }
            None if listening.ip().is_unspecified() => {
                return Err(ClusterError::Config(format!(
                    "the relay listens on {listening}, which other relays cannot dial: \
                     pass --cluster-advertise http://HOST:PORT"
                )))
            }
            None => format!("http://{listening}"),
        };
        if config.holder_ttl < Duration::from_secs(1) {
            return Err(ClusterError::Config(
                "the holder TTL must be at least 1s".into(),
            ));
        }
        let hop = Hop::new(&config.secret).map_err(ClusterError::Config)?;
        if config.secret.len() < 16 {
            return Err(ClusterError::Config(
                "the cluster secret must be at least 16 characters".into(),
            ));
        }
        let servers = config.nats.join(",");
        let nats_err = |reason: String| ClusterError::Nats {
            servers: servers.clone(),
            reason,
        };
        let client = async_nats::ConnectOptions::new()
            .name("whtunnel-relay")
            .connection_timeout(Duration::from_secs(5))
            .connect(config.nats.as_slice());
        let client = tokio::time::timeout(Duration::from_secs(15), client)
            .await
            .map_err(|_| nats_err("no NATS server answered within 15s".into()))?
            .map_err(|e| nats_err(e.to_string()))?;
        let js = async_nats::jetstream::new(client);
        let id = crate::tunnel::protocol::generate_token()
            .chars()
            .take(12)
            .collect::<String>();
        let registry = Registry::open(&js, config.holder_ttl, config.replicas())
            .await
            .map_err(&nats_err)?;
        let held = HeldStream::open(&js, caps, config.replicas())
            .await
            .map_err(&nats_err)?;
        tracing::info!(relay = %id, hops = %addr, "joined the cluster through NATS ({servers})");
        Ok(Cluster {
            id,
            addr,
            ttl: config.holder_ttl,
            registry,
            hop,
            held: std::sync::Arc::new(held),
            js,
            servers,
            replicas: config.replicas(),
            beacon: std::sync::OnceLock::new(),
        })
    }

    /// The cluster's owned names, for a relay with users whose users file
    /// has `users_fingerprint` ([`crate::relay::UsersWatch::fingerprint`]).
    /// Refused when a live relay of the cluster uses another users file:
    /// the owners and caps are shared, so the users must be too.
    pub async fn open_owners(&self, users_fingerprint: &str) -> Result<KvOwners, ClusterError> {
        let nats_err = |reason: String| ClusterError::Nats {
            servers: self.servers.clone(),
            reason,
        };
        let beacon = owners::UsersBeacon::open(
            &self.js,
            &self.id,
            users_fingerprint,
            self.ttl,
            self.replicas,
        )
        .await
        .map_err(|e| match e {
            owners::BeaconError::Differs(why) => ClusterError::UsersFile(why),
            owners::BeaconError::Store(why) => nats_err(why),
        })?;
        let _ = self.beacon.set(beacon);
        KvOwners::open(&self.js, self.registry.clone(), self.replicas)
            .await
            .map_err(nats_err)
    }

    /// Takes this relay's users-file entry away: it is stopping.
    pub async fn leave_users(&self) {
        if let Some(beacon) = self.beacon.get() {
            beacon.leave().await;
        }
    }

    /// Drops what the cluster holds for `name`, whose owner forgot it (the
    /// name expired cluster-wide): its held and dead-lettered events and
    /// its known-name entry, so a next owner of the name never receives
    /// them (a new claim purges them too, see [`owners::KvOwners`]). Large
    /// bodies in the object store are left to its age cap.
    pub async fn forget_held(&self, name: &str) -> Result<(), String> {
        held::purge_name(&self.js, name).await?;
        let names = self
            .js
            .get_key_value(held::NAMES_BUCKET)
            .await
            .map_err(|e| e.to_string())?;
        names.delete(name).await.map_err(|e| e.to_string())
    }

    /// Keeps saying which users file this relay uses (`fingerprint`, asked
    /// each time: the file may be edited), every TTL/3, so relays that
    /// start later can compare theirs. Runs until dropped.
    pub async fn announce_users(&self, fingerprint: impl Fn() -> String) {
        let Some(beacon) = self.beacon.get() else {
            return;
        };
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = beacon.announce(&fingerprint()).await {
                tracing::debug!("cannot refresh this relay's users-file entry: {e}");
            }
        }
    }

    /// This relay's id in the bucket.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The address other relays hop to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The hop client (and recogniser of incoming hops).
    pub fn hop(&self) -> &Hop {
        &self.hop
    }

    /// The cluster's held events.
    pub fn held(&self) -> &std::sync::Arc<HeldStream> {
        &self.held
    }

    /// Claims `name` for an agent connecting here (see [`Registry::claim`]).
    pub async fn claim(
        &self,
        name: &str,
        agent_id: Option<String>,
        takeover: bool,
    ) -> Result<Claim, ClaimError> {
        let holder = Holder {
            relay: self.id.clone(),
            addr: self.addr.clone(),
            agent_id,
            claim: crate::tunnel::protocol::generate_token(),
        };
        self.registry.claim(name, holder, takeover).await
    }

    /// Keeps `claim` alive (a refresh every TTL/3) until `session` is
    /// cancelled, then releases it. If another relay takes the name over,
    /// cancels `session`: that agent's link is closed, as on one relay.
    pub async fn keep(&self, mut claim: Claim, session: CancellationToken) {
        let every = self.ttl / 3;
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = session.cancelled() => break,
            }
            if self.registry.refresh(&mut claim).await.is_err() {
                tracing::info!(tunnel = %claim.name, "tunnel taken over on another relay; closing this agent's link");
                session.cancel();
                return;
            }
        }
        self.registry.release(&claim).await;
    }

    /// Gives up a claim whose session never started.
    pub async fn release(&self, claim: &Claim) {
        self.registry.release(claim).await;
    }

    /// The relay holding `name` when it is another one; `None` when nobody
    /// (or this relay) holds it, or the bucket cannot be read.
    pub async fn holder(&self, name: &str) -> Option<Holder> {
        match self.registry.lookup(name).await {
            Ok(Some(h)) if h.relay != self.id => Some(h),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(tunnel = %name, "cannot read the cluster's holder bucket: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_advertise;

    #[test]
    fn the_advertised_hop_address_is_http_host_and_port() {
        assert_eq!(
            check_advertise("http://10.0.1.1:8788/").as_deref(),
            Ok("http://10.0.1.1:8788")
        );
        assert_eq!(
            check_advertise("http://relay-b.internal:8788").as_deref(),
            Ok("http://relay-b.internal:8788")
        );
        for (bad, why) in [
            ("https://10.0.1.1:8788", "not an http:// URL"),
            ("10.0.1.1:8788", "not an http:// URL"),
            ("http://10.0.1.1", "no port"),
            ("http://10.0.1.1:8788/relay", "has a path"),
            ("http://10.0.1.1:8788/?x=1", "has a path"),
            ("http://", "is not a URL"),
        ] {
            let err = check_advertise(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains("http://HOST:PORT"), "{err}");
        }
    }
}
