//! Who owns which tunnel name, for every relay of a cluster: the
//! [`NameOwners`] of a relay with `--cluster` and `--users-file`, in the
//! JetStream KV bucket [`OWNERS_BUCKET`].
//!
//! The bucket has no TTL (an owned name is durable, like the one-relay
//! SQLite table) and two kinds of keys:
//!
//! - `n.<name>`: the name's owner and when the name was last used
//!   ([`NameRecord`], JSON). This key alone decides who owns a name: it is
//!   made with `create` (create-if-absent), so of two users racing for a
//!   new name on two relays exactly one gets it, and every later change is
//!   an `update` on the revision read, never a blind write.
//! - `u.<hex(user)>`: the names the user owns or is claiming
//!   ([`UserNames`]), for the per-user cap. A claim of a new name first
//!   adds it to this list, by compare-and-set and only while the list is
//!   shorter than the cap, and only then creates `n.<name>`; a name leaves
//!   the list only after its `n.` key is gone or was never ours. So the
//!   names a user owns are always a subset of the list, and the list never
//!   grows past the cap: two relays claiming two new names for one user at
//!   once both write the list, one write loses on the revision, re-reads,
//!   and finds the cap reached. A relay dying between the two steps leaves
//!   a name in the list that the user does not own; that only makes the
//!   cap stricter, and a claim that meets the cap drops such entries once
//!   they are older than [`PENDING_GRACE`] (and re-checks its own entry
//!   after creating the name, should a slow claim have been pruned).
//!
//! Expiry runs on every relay and cannot fight: a name is deleted only
//! with `delete_expect_revision` on the revision that was read stale, so
//! a claim or touch of the name in between (on any relay) makes the
//! delete fail, and of two relays expiring the same name only one
//! succeeds. A name held by an agent on any relay is in use: the holders
//! bucket ([`Registry`]) is asked before deleting.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};

use super::registry::{ensure_kv, Registry};
use crate::relay::owners::{now_ms, Claimed, InUse, NameOwners, OwnersError, Refused};

/// The bucket of name owners.
pub const OWNERS_BUCKET: &str = "whtunnel_owners";

/// The bucket where each live relay says which users file it uses (with
/// the holder TTL: a stopped relay's entry vanishes by itself).
pub const RELAYS_BUCKET: &str = "whtunnel_relays";

/// How old an entry of a user's list must be, with no name key of the
/// user's behind it, before a claim meeting the cap drops it: far longer
/// than a claim takes between its two writes.
pub const PENDING_GRACE: Duration = Duration::from_secs(60);

/// Compare-and-set attempts before a busy key is reported as a store error.
const CAS_TRIES: usize = 8;

/// The value of `n.<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRecord {
    /// The owning user.
    pub user: String,
    /// When it was first claimed (ms since the epoch).
    pub claimed_ms: i64,
    /// When an agent last connected or left (ms since the epoch).
    pub used_ms: i64,
}

/// The value of `u.<hex(user)>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNames {
    /// Name -> when it was added to the list (ms since the epoch).
    pub names: BTreeMap<String, i64>,
}

/// What a relay says about itself in [`RELAYS_BUCKET`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RelayEntry {
    /// [`crate::relay::UsersWatch::fingerprint`] of its users file.
    users_sha256: String,
}

fn name_key(name: &str) -> String {
    format!("n.{name}")
}

/// User names may hold characters a KV key may not ('..'), so they are
/// hex-encoded.
fn user_key(user: &str) -> String {
    format!("u.{}", data_encoding::HEXLOWER.encode(user.as_bytes()))
}

fn json<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("plain structs serialise"))
}

/// Owned names in the cluster's KV bucket (see the module comment).
pub struct KvOwners {
    kv: kv::Store,
    holders: Registry,
    /// To purge a newly claimed name's leftover events.
    js: jetstream::Context,
}

impl KvOwners {
    /// Opens (or creates) the owners bucket; `holders` tells which names an
    /// agent holds anywhere in the cluster.
    pub async fn open(
        js: &jetstream::Context,
        holders: Registry,
        replicas: usize,
    ) -> Result<KvOwners, String> {
        let kv = ensure_kv(
            js,
            OWNERS_BUCKET,
            "whtunnel: who owns each tunnel name",
            Duration::ZERO,
            replicas,
        )
        .await?;
        Ok(KvOwners {
            kv,
            holders,
            js: js.clone(),
        })
    }

    /// `name`'s record and its revision; `None` when nobody owns it.
    async fn name_entry(&self, name: &str) -> Result<Option<(NameRecord, u64)>, String> {
        match self.kv.entry(name_key(name)).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                match serde_json::from_slice(&e.value) {
                    Ok(r) => Ok(Some((r, e.revision))),
                    Err(err) => Err(format!("unreadable owner record of '{name}': {err}")),
                }
            }
            Ok(_) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The user's list and the revision to update it at (`None`: absent,
    /// create it).
    async fn user_entry(&self, user: &str) -> Result<(UserNames, Option<u64>), String> {
        match self.kv.entry(user_key(user)).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                match serde_json::from_slice(&e.value) {
                    Ok(l) => Ok((l, Some(e.revision))),
                    Err(err) => Err(format!("unreadable name list of user '{user}': {err}")),
                }
            }
            Ok(Some(e)) => Ok((UserNames::default(), Some(e.revision))),
            Ok(None) => Ok((UserNames::default(), None)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Writes the user's list if it is still at `revision`; `Ok(false)`
    /// when another write came first.
    async fn write_user(
        &self,
        user: &str,
        list: &UserNames,
        revision: Option<u64>,
    ) -> Result<bool, String> {
        let (key, value) = (user_key(user), json(list));
        match revision {
            None => match self.kv.create(&key, value).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e.to_string()),
            },
            Some(r) => match self.kv.update(&key, value, r).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    /// Puts `name` on `user`'s list unless the list holds `max_names`
    /// names already (0: no cap). `Ok(true)` when this call added it.
    async fn reserve(&self, name: &str, user: &str, max_names: u64) -> Result<bool, Refused> {
        let store = Refused::Store;
        for _ in 0..CAS_TRIES {
            let (mut list, revision) = self.user_entry(user).await.map_err(store)?;
            if list.names.contains_key(name) {
                return Ok(false);
            }
            if max_names > 0 && list.names.len() as u64 >= max_names {
                self.prune(user, &mut list).await.map_err(store)?;
                if list.names.len() as u64 >= max_names {
                    return Err(Refused::TooManyNames {
                        user: user.to_string(),
                        max: max_names,
                    });
                }
            }
            list.names.insert(name.to_string(), now_ms());
            if self
                .write_user(user, &list, revision)
                .await
                .map_err(store)?
            {
                return Ok(true);
            }
        }
        Err(Refused::Store(format!(
            "the name list of user '{user}' changed too often to update; try again"
        )))
    }

    /// Drops from `list` (in memory) the entries older than
    /// [`PENDING_GRACE`] whose name the user does not own.
    async fn prune(&self, user: &str, list: &mut UserNames) -> Result<(), String> {
        let old = now_ms() - PENDING_GRACE.as_millis() as i64;
        let candidates: Vec<String> = list
            .names
            .iter()
            .filter(|(_, added)| **added < old)
            .map(|(n, _)| n.clone())
            .collect();
        for n in candidates {
            let owned = self
                .name_entry(&n)
                .await?
                .is_some_and(|(r, _)| r.user == user);
            if !owned {
                list.names.remove(&n);
            }
        }
        Ok(())
    }

    /// Takes `name` off `user`'s list; puts it back should the user own the
    /// name after all (a claim of the same user on another relay won it
    /// meanwhile), so an owned name is never missing from its owner's list.
    async fn unreserve(&self, name: &str, user: &str) -> Result<(), String> {
        let mut removed = false;
        for _ in 0..CAS_TRIES {
            let (mut list, revision) = self.user_entry(user).await?;
            if list.names.remove(name).is_none() {
                return Ok(());
            }
            if self.write_user(user, &list, revision).await? {
                removed = true;
                break;
            }
        }
        if !removed {
            // Left on the list, it counts against the cap until a prune.
            return Err(format!(
                "the name list of user '{user}' changed too often to take '{name}' off it"
            ));
        }
        if self
            .name_entry(name)
            .await?
            .is_some_and(|(r, _)| r.user == user)
        {
            self.reserve(name, user, 0)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// After creating `name` (at `revision`): makes sure it is still on the
    /// user's list, which a claim meeting the cap may have pruned if this
    /// claim was very slow. Over the cap by then: the name is given up.
    async fn confirm(
        &self,
        name: &str,
        user: &str,
        max_names: u64,
        revision: u64,
    ) -> Result<(), Refused> {
        let (list, _) = self.user_entry(user).await.map_err(Refused::Store)?;
        if list.names.contains_key(name) {
            return Ok(());
        }
        match self.reserve(name, user, max_names).await {
            Ok(_) => Ok(()),
            // Over the cap, or the list cannot be written: the name is not
            // kept (a name off the list would escape the cap).
            Err(refused) => {
                let _ = self
                    .kv
                    .delete_expect_revision(name_key(name), Some(revision))
                    .await;
                Err(refused)
            }
        }
    }

    /// Undoes a claim that created `name` at `revision`.
    async fn give_up(&self, name: &str, user: &str, revision: u64) {
        let _ = self
            .kv
            .delete_expect_revision(name_key(name), Some(revision))
            .await;
        if let Err(e) = self.unreserve(name, user).await {
            tracing::warn!(tunnel = %name, %user, "could not take the name off the user's list: {e}");
        }
    }
}

/// Why [`UsersBeacon::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BeaconError {
    /// A live relay uses another users file.
    #[error("{0}")]
    Differs(String),
    /// The bucket could not be used.
    #[error("{0}")]
    Store(String),
}

/// The users-file check of a cluster: every live relay's fingerprint in
/// [`RELAYS_BUCKET`].
pub struct UsersBeacon {
    relays: kv::Store,
    relay: String,
}

impl UsersBeacon {
    /// Opens the relays bucket (entries live `ttl`) and refuses when a live
    /// relay uses another users file than `fingerprint`; otherwise says
    /// this relay's.
    pub async fn open(
        js: &jetstream::Context,
        relay: &str,
        fingerprint: &str,
        ttl: Duration,
        replicas: usize,
    ) -> Result<UsersBeacon, BeaconError> {
        let relays = ensure_kv(
            js,
            RELAYS_BUCKET,
            "whtunnel: the live relays and their users files",
            ttl,
            replicas,
        )
        .await
        .map_err(BeaconError::Store)?;
        let store = |e: &dyn std::fmt::Display| BeaconError::Store(e.to_string());
        let keys: Vec<String> = relays
            .keys()
            .await
            .map_err(|e| store(&e))?
            .try_collect()
            .await
            .map_err(|e| store(&e))?;
        for other in keys {
            let Ok(Some(value)) = relays.get(&other).await else {
                continue;
            };
            let Ok(entry) = serde_json::from_slice::<RelayEntry>(&value) else {
                continue;
            };
            if entry.users_sha256 != fingerprint {
                return Err(BeaconError::Differs(format!(
                    "this relay's users file (fingerprint {}) differs from the one relay {other} of the cluster uses ({}): every relay of a cluster must use the same users file; copy it from a running relay (a relay killed less than the holder TTL ago still counts)",
                    short(fingerprint),
                    short(&entry.users_sha256)
                )));
            }
        }
        let beacon = UsersBeacon {
            relays,
            relay: relay.to_string(),
        };
        beacon
            .announce(fingerprint)
            .await
            .map_err(BeaconError::Store)?;
        Ok(beacon)
    }

    /// Takes this relay's entry away (it is stopping), so a relay started
    /// right after it with an edited users file is not refused.
    pub async fn leave(&self) {
        let _ = self.relays.delete(&self.relay).await;
    }

    /// Says (again) which users file this relay uses.
    pub async fn announce(&self, fingerprint: &str) -> Result<(), String> {
        let entry = RelayEntry {
            users_sha256: fingerprint.to_string(),
        };
        self.relays
            .put(&self.relay, json(&entry))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

#[async_trait::async_trait]
impl NameOwners for KvOwners {
    async fn claim(&self, name: &str, user: &str, max_names: u64) -> Result<Claimed, Refused> {
        let store = Refused::Store;
        let mut reserved = false;
        for _ in 0..CAS_TRIES {
            match self.name_entry(name).await.map_err(store)? {
                Some((record, revision)) if record.user == user => {
                    let used = NameRecord {
                        used_ms: now_ms(),
                        ..record
                    };
                    match self.kv.update(name_key(name), json(&used), revision).await {
                        Ok(_) => return Ok(Claimed::Kept),
                        // Touched or expired meanwhile: read again.
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                        Err(e) => return Err(Refused::Store(e.to_string())),
                    }
                }
                Some(_) => {
                    if reserved {
                        if let Err(e) = self.unreserve(name, user).await {
                            tracing::warn!(tunnel = %name, %user, "could not take the name off the user's list: {e}");
                        }
                    }
                    return Err(Refused::Owned {
                        name: name.to_string(),
                    });
                }
                None => {
                    reserved |= self.reserve(name, user, max_names).await?;
                    let now = now_ms();
                    let record = NameRecord {
                        user: user.to_string(),
                        claimed_ms: now,
                        used_ms: now,
                    };
                    match self.kv.create(name_key(name), json(&record)).await {
                        Ok(revision) => {
                            // A name changing hands starts empty: events a
                            // previous owner left (its expiry's purge not
                            // done yet, or failed) are never this user's.
                            if let Err(e) = super::held::purge_name(&self.js, name).await {
                                self.give_up(name, user, revision).await;
                                return Err(Refused::Store(e));
                            }
                            self.confirm(name, user, max_names, revision).await?;
                            return Ok(Claimed::New);
                        }
                        // Someone created it first: read who.
                        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                        Err(e) => {
                            if reserved {
                                let _ = self.unreserve(name, user).await;
                            }
                            return Err(Refused::Store(e.to_string()));
                        }
                    }
                }
            }
        }
        Err(Refused::Store(format!(
            "the owner record of '{name}' changed too often to claim it; try again"
        )))
    }

    async fn release(&self, name: &str, user: &str) -> Result<(), OwnersError> {
        match self.name_entry(name).await.map_err(OwnersError)? {
            Some((record, revision)) if record.user == user => {
                self.give_up(name, user, revision).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn owner(&self, name: &str) -> Result<Option<String>, OwnersError> {
        Ok(self
            .name_entry(name)
            .await
            .map_err(OwnersError)?
            .map(|(r, _)| r.user))
    }

    async fn touch(&self, name: &str) -> Result<(), OwnersError> {
        for _ in 0..CAS_TRIES {
            let Some((record, revision)) = self.name_entry(name).await.map_err(OwnersError)? else {
                return Ok(());
            };
            let used = NameRecord {
                used_ms: now_ms(),
                ..record
            };
            match self.kv.update(name_key(name), json(&used), revision).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(OwnersError(e.to_string())),
            }
        }
        Err(OwnersError(format!(
            "the record of '{name}' changed too often to mark it used; try again"
        )))
    }

    async fn expire(
        &self,
        unused_for: Duration,
        in_use: InUse<'_>,
    ) -> Result<Vec<String>, OwnersError> {
        let err = |e: &dyn std::fmt::Display| OwnersError(e.to_string());
        let cutoff = now_ms() - unused_for.as_millis() as i64;
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|e| err(&e))?
            .try_collect()
            .await
            .map_err(|e| err(&e))?;
        let mut gone = Vec::new();
        for name in keys.iter().filter_map(|k| k.strip_prefix("n.")) {
            // Unreadable (or gone meanwhile): not this pass's to expire.
            let Ok(Some((record, revision))) = self.name_entry(name).await else {
                continue;
            };
            if record.used_ms >= cutoff || in_use(name) {
                continue;
            }
            // Held on another relay (or the bucket cannot tell): in use.
            if !matches!(self.holders.lookup(name).await, Ok(None)) {
                continue;
            }
            // Only at the revision read: a claim or touch since, or another
            // relay's expiry, wins over this one.
            if self
                .kv
                .delete_expect_revision(name_key(name), Some(revision))
                .await
                .is_err()
            {
                continue;
            }
            if let Err(e) = self.unreserve(name, &record.user).await {
                tracing::warn!(tunnel = %name, user = %record.user, "could not take the expired name off the user's list: {e}");
            }
            gone.push(name.to_string());
        }
        Ok(gone)
    }
}
