//! Which relay holds which tunnel: one JetStream key-value bucket,
//! [`HOLDERS_BUCKET`], key = tunnel name, value = a [`Holder`] (JSON).
//!
//! Every change is a compare-and-set on the key's revision
//! (`create` when the key is absent, `update(key, value, revision)`
//! otherwise), so when two agents ask for one name on two relays at once,
//! JetStream orders the two writes and exactly one of them wins; the other
//! relay reads the winner back and answers 409. The bucket's `max_age` is
//! the holder TTL: a relay refreshes its entries every TTL/3 while the
//! agent is connected, so the entries of a relay that died vanish by
//! themselves within one TTL.
//!
//! Who owns a name (users) is not here but in its own bucket without TTL
//! ([`super::owners`]): ownership is durable, a holder entry is not, and a
//! bucket has one `max_age`. The relay checks the owner first; the owner
//! of a held name never changes, so the two checks cannot interleave badly.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The bucket of tunnel holders.
pub const HOLDERS_BUCKET: &str = "whtunnel_tunnels";

/// Who holds a tunnel right now: the value stored under its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The holding relay's id (random per relay process).
    pub relay: String,
    /// Base URL other relays forward this tunnel's webhooks to.
    pub addr: String,
    /// The agent's own id, so the same agent can move between relays.
    pub agent_id: Option<String>,
    /// Tells this claim from any later one, even on the same relay.
    pub claim: String,
}

/// A name this relay holds in the bucket, at a known revision.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The tunnel name (the key).
    pub name: String,
    /// What was written.
    pub holder: Holder,
    /// The key's revision after our last write.
    pub revision: u64,
}

/// Why a claim was not granted.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another agent holds the name (on this or another relay).
    #[error("tunnel name is held by another agent on relay {}", .0.relay)]
    Held(Holder),
    /// JetStream could not be asked.
    #[error("the cluster store is unavailable: {0}")]
    Unavailable(String),
}

/// The name was claimed by someone else meanwhile.
#[derive(Debug, thiserror::Error)]
#[error("the tunnel was claimed by another relay")]
pub struct Lost;

/// The holders bucket.
#[derive(Clone)]
pub struct Registry {
    kv: kv::Store,
}

/// Compare-and-set attempts before a busy key is reported unavailable.
const CAS_TRIES: usize = 5;

impl Registry {
    /// Opens (or creates) the bucket with `ttl` as its `max_age`.
    pub async fn open(
        js: &jetstream::Context,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Registry, String> {
        let kv = ensure_kv(
            js,
            HOLDERS_BUCKET,
            "whtunnel: which relay holds each tunnel",
            ttl,
            replicas,
        )
        .await?;
        Ok(Registry { kv })
    }

    /// Who holds `name`, if anyone.
    pub async fn lookup(&self, name: &str) -> Result<Option<Holder>, String> {
        match self.kv.entry(name).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                Ok(serde_json::from_slice(&e.value).ok())
            }
            Ok(_) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Claims `name` for `holder`. An existing holder is replaced only on
    /// `takeover` or when it is the same agent (by id), as on one relay.
    /// (A stale entry of a relay that died, or of an agent whose release
    /// was lost, expires within the TTL.)
    pub async fn claim(
        &self,
        name: &str,
        holder: Holder,
        takeover: bool,
    ) -> Result<Claim, ClaimError> {
        let value = encode(&holder);
        let unavailable = |e: &dyn std::fmt::Display| ClaimError::Unavailable(e.to_string());
        for _ in 0..CAS_TRIES {
            match self.kv.create(name, value.clone()).await {
                Ok(revision) => {
                    return Ok(Claim {
                        name: name.to_string(),
                        holder,
                        revision,
                    })
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(unavailable(&e)),
            }
            let Some(entry) = self.kv.entry(name).await.map_err(|e| unavailable(&e))? else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let current: Option<Holder> = serde_json::from_slice(&entry.value).ok();
            let replace = match &current {
                None => true,
                Some(cur) => {
                    takeover || (holder.agent_id.is_some() && cur.agent_id == holder.agent_id)
                }
            };
            if !replace {
                return Err(ClaimError::Held(current.expect("checked above")));
            }
            match self.kv.update(name, value.clone(), entry.revision).await {
                Ok(revision) => {
                    return Ok(Claim {
                        name: name.to_string(),
                        holder,
                        revision,
                    })
                }
                // Someone wrote in between: read again and decide again.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(unavailable(&e)),
            }
        }
        Err(ClaimError::Unavailable(
            "the name changed hands too often to claim it; try again".into(),
        ))
    }

    /// Rewrites the claim, which restarts its TTL. `Err(Lost)` when another
    /// claim replaced it; a JetStream hiccup is not a loss (`Ok(false)`).
    pub async fn refresh(&self, claim: &mut Claim) -> Result<bool, Lost> {
        let value = encode(&claim.holder);
        match self
            .kv
            .update(&claim.name, value.clone(), claim.revision)
            .await
        {
            Ok(revision) => {
                claim.revision = revision;
                return Ok(true);
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Err(_) => return Ok(false),
        }
        // The revision moved: our own write whose answer was lost, an
        // expiry, or another claim.
        match self.kv.entry(&claim.name).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                match serde_json::from_slice::<Holder>(&e.value) {
                    Ok(h) if h == claim.holder => {
                        claim.revision = e.revision;
                        Ok(true)
                    }
                    _ => Err(Lost),
                }
            }
            Ok(_) => match self.kv.create(&claim.name, value).await {
                Ok(revision) => {
                    claim.revision = revision;
                    Ok(true)
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(Lost),
                Err(_) => Ok(false),
            },
            Err(_) => Ok(false),
        }
    }

    /// Gives the name up, unless another claim replaced ours already.
    pub async fn release(&self, claim: &Claim) {
        let _ = self
            .kv
            .delete_expect_revision(&claim.name, Some(claim.revision))
            .await;
    }
}

/// Opens the KV bucket `bucket`, creating its stream first if needed.
///
/// The stream is made here rather than by `create_key_value`, which asks
/// for the account's info in a shape servers before 2.10 do not answer,
/// and leaves the duplicate window at two minutes, which those servers
/// refuse when it is longer than `max_age` (a holder TTL is seconds).
/// The settings are the ones `create_key_value` would use.
pub(crate) async fn ensure_kv(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, String> {
    let name = format!("KV_{bucket}");
    if js.get_stream(&name).await.is_err() {
        let window = if max_age.is_zero() {
            Duration::from_secs(120)
        } else {
            max_age.min(Duration::from_secs(120))
        };
        let stream = jetstream::stream::Config {
            name: name.clone(),
            description: Some(description.to_string()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            duplicate_window: window,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        };
        if let Err(e) = js.create_stream(stream).await {
            // Another relay may have made it meanwhile.
            if js.get_stream(&name).await.is_err() {
                return Err(format!("cannot create the {bucket} bucket: {e}"));
            }
        }
    }
    js.get_key_value(bucket)
        .await
        .map_err(|e| format!("cannot open the {bucket} bucket: {e}"))
}

fn encode(holder: &Holder) -> Bytes {
    Bytes::from(serde_json::to_vec(holder).expect("a holder serialises"))
}
