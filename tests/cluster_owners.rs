#![allow(clippy::unwrap_used)]
//! Owned names across the relays of a cluster (`relay --cluster` with
//! `--users-file`): who owns a name lives in the cluster's KV bucket, so a
//! name alice owns through one relay is hers on every relay. Real
//! `nats-server`, in-process relays (each with its own copy of the users
//! file, as on separate machines) and agents, loopback only.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nats::{self, one_nats, SECRET};
use common::*;
use http::{Method, StatusCode};
use whtunnel::agent::ConnectionStatus;
use whtunnel::relay::{RelayConfig, UsersFile, UsersWatch};
use whtunnel::tunnel::protocol::{
    AGENT_PATH, HDR_AGENT_ID, HDR_NAME, HDR_PROTOCOL, HDR_TAKEOVER, PROTOCOL_VERSION,
};

/// The users: alice (`shop`, `alice-*`, `race-*`, `cap-*`) and bob (every
/// name, so only ownership keeps him off alice's). Returns their tokens.
struct Users {
    alice: String,
    bob: String,
    /// The file every relay's copy is made from.
    file: UsersFile,
}

fn users() -> Users {
    let mut file = UsersFile::default();
    let alice = file
        .add(
            "alice",
            &[
                "shop".into(),
                "alice-*".into(),
                "race-*".into(),
                "cap-*".into(),
            ],
            None,
        )
        .unwrap();
    let bob = file.add("bob", &["*".into()], None).unwrap();
    Users { alice, bob, file }
}

/// A relay of the cluster on `nats` with its own copy of the users file
/// at `path` (written from `file` when it does not exist yet).
fn clustered(nats: &[String], path: &Path, file: &UsersFile) -> RelayConfig {
    if !path.exists() {
        file.save(path).unwrap();
    }
    let mut config = nats::clustered(nats);
    config.users = Some(Arc::new(UsersWatch::open(path).unwrap()));
    config
}

fn copy(dir: &Path, relay: &str) -> PathBuf {
    dir.join(format!("users-{relay}.toml"))
}

/// A raw agent upgrade request; the status and the one-line reason.
async fn upgrade(
    base: &str,
    token: &str,
    name: &str,
    extra: &[(&str, &str)],
) -> (StatusCode, String) {
    let auth = format!("Bearer {token}");
    let version = PROTOCOL_VERSION.to_string();
    let mut headers = vec![
        (HDR_PROTOCOL, version.as_str()),
        ("authorization", auth.as_str()),
        (HDR_NAME, name),
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    headers.extend_from_slice(extra);
    let (s, _, b) = send(Method::GET, &format!("{base}{AGENT_PATH}"), &headers, "").await;
    (s, String::from_utf8_lossy(&b).trim().to_string())
}

fn agent_opts(name: &str, token: &str, app: &App) -> AgentOptions {
    let mut o = AgentOptions::new(name, app);
    o.token = token.to_string();
    o
}

fn connected(a: &AgentHandle) -> bool {
    !a.public_url.starts_with("refused:")
}

/// Alice holds `shop` through relay A. Bob, asking relay B for it, gets
/// 403 with or without `--takeover` (and with a forged agent id), while
/// she is connected and after she left; an event held for `shop` meanwhile
/// reaches alice's app when she is back, never bob's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_owned_through_one_relay_is_refused_to_another_user_on_another() {
    let (_nats_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let dir = tempfile::tempdir().unwrap();
    let u = users();
    let a = start_relay(clustered(&urls, &copy(dir.path(), "a"), &u.file)).await;
    let b = start_relay(clustered(&urls, &copy(dir.path(), "b"), &u.file)).await;
    let alice_app = App::start().await;
    let bob_app = App::start().await;

    let alice = start_agent(&a.base, agent_opts("shop", &u.alice, &alice_app)).await;
    assert!(
        alice.public_url.starts_with(&a.base),
        "{}",
        alice.public_url
    );
    for extra in [
        &[][..],
        &[(HDR_TAKEOVER, "1")][..],
        &[(HDR_AGENT_ID, "alices-agent")][..],
    ] {
        let (s, why) = upgrade(&b.base, &u.bob, "shop", extra).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{extra:?}: {why}");
        assert!(why.contains("belongs to another user"), "{why}");
    }
    // The library agent with --takeover: refused, and alice keeps the link.
    let mut opts = agent_opts("shop", &u.bob, &bob_app);
    opts.takeover = true;
    let bob = start_agent(&b.base, opts).await;
    assert!(bob.public_url.contains("403"), "{}", bob.public_url);
    drop(bob);
    let (s, _, _) = send(Method::POST, &format!("{}/t/shop/live", b.base), &[], "x").await;
    assert_eq!(s, StatusCode::OK, "alice still holds shop");
    assert_eq!(alice_app.seen().len(), 1);

    // Alice leaves; an event for shop is held through relay B.
    drop(alice);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, _, _) = send(
        Method::POST,
        &format!("{}/t/shop/pay", b.base),
        &[("content-type", "application/json")],
        r#"{"type":"payment_intent.succeeded"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    // Bob, on either relay, still cannot have the name nor its event.
    for relay in [&a, &b] {
        let (s, why) = upgrade(&relay.base, &u.bob, "shop", &[(HDR_TAKEOVER, "1")]).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{why}");
    }
    let bob = start_agent(&b.base, agent_opts("shop", &u.bob, &bob_app)).await;
    assert!(bob.public_url.contains("403"), "{}", bob.public_url);
    // Alice, back through relay B, gets it.
    let _alice = start_agent(&b.base, agent_opts("shop", &u.alice, &alice_app)).await;
    wait_for_seen(&alice_app, 2, Duration::from_secs(10)).await;
    assert_eq!(alice_app.seen()[1].uri, "/pay");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        bob_app.seen().is_empty(),
        "nothing held for shop reached bob"
    );
}

/// Alice and bob ask two relays for the same new name at the same moment,
/// ten times: each time exactly one of them gets it and the other is
/// refused as not the owner (403), on every relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_users_racing_for_a_new_name_on_two_relays_exactly_one_owns_it() {
    let (_nats_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let dir = tempfile::tempdir().unwrap();
    let u = users();
    let a = start_relay(clustered(&urls, &copy(dir.path(), "a"), &u.file)).await;
    let b = start_relay(clustered(&urls, &copy(dir.path(), "b"), &u.file)).await;
    let c = start_relay(clustered(&urls, &copy(dir.path(), "c"), &u.file)).await;
    let app = App::start().await;
    let (mut alice_won, mut bob_won) = (0, 0);
    for i in 0..10 {
        let name = format!("race-{i}");
        let (x, y) = tokio::join!(
            start_agent(&a.base, agent_opts(&name, &u.alice, &app)),
            start_agent(&b.base, agent_opts(&name, &u.bob, &app)),
        );
        assert!(
            connected(&x) != connected(&y),
            "{name}: alice {}, bob {}",
            x.public_url,
            y.public_url
        );
        let (winner, loser, loser_token) = if connected(&x) {
            alice_won += 1;
            (&x, &y, &u.bob)
        } else {
            bob_won += 1;
            (&y, &x, &u.alice)
        };
        assert!(
            loser.public_url.contains("403"),
            "{name}: {}",
            loser.public_url
        );
        assert!(winner.public_url.ends_with(&format!("/t/{name}")));
        // The loser is not the owner anywhere, --takeover or not.
        for relay in [&a, &b, &c] {
            let (s, why) = upgrade(&relay.base, loser_token, &name, &[(HDR_TAKEOVER, "1")]).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{name}: {why}");
        }
    }
    eprintln!("alice won {alice_won}, bob won {bob_won}");
}

/// `--max-names-per-user 3` on every relay: alice owns two names through
/// A and B, then asks A, B and C for three more at once: one is granted,
/// two refused with the cap; every later new name is refused too, on any
/// relay, while her owned names stay hers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_per_user_cap_holds_across_relays() {
    let (_nats_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let dir = tempfile::tempdir().unwrap();
    let u = users();
    let relay = |name: &str| {
        let mut c = clustered(&urls, &copy(dir.path(), name), &u.file);
        c.max_names_per_user = Some(3);
        start_relay(c)
    };
    let (a, b, c) = (relay("a").await, relay("b").await, relay("c").await);
    let app = App::start().await;
    let one = start_agent(&a.base, agent_opts("cap-1", &u.alice, &app)).await;
    let two = start_agent(&b.base, agent_opts("cap-2", &u.alice, &app)).await;
    assert!(connected(&one) && connected(&two));

    let (x, y, z) = tokio::join!(
        start_agent(&a.base, agent_opts("cap-3", &u.alice, &app)),
        start_agent(&b.base, agent_opts("cap-4", &u.alice, &app)),
        start_agent(&c.base, agent_opts("cap-5", &u.alice, &app)),
    );
    let granted = [&x, &y, &z].iter().filter(|h| connected(h)).count();
    assert_eq!(
        granted, 1,
        "{} / {} / {}",
        x.public_url, y.public_url, z.public_url
    );
    for h in [&x, &y, &z].into_iter().filter(|h| !connected(h)) {
        assert!(h.public_url.contains("already owns 3"), "{}", h.public_url);
    }
    for relay in [&a, &b, &c] {
        let (s, why) = upgrade(&relay.base, &u.alice, "cap-6", &[]).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{why}");
        assert!(why.contains("already owns 3"), "{why}");
    }
    // Her own names are not new: cap-1 moves to relay C (her agent left A).
    drop(one);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = start_agent(&c.base, agent_opts("cap-1", &u.alice, &app)).await;
    assert!(connected(&again), "{}", again.public_url);
    // Bob is not capped by alice's names.
    let bobs = start_agent(&c.base, agent_opts("bob-1", &u.bob, &app)).await;
    assert!(connected(&bobs), "{}", bobs.public_url);
}

/// Revoking alice in every relay's copy of the users file cuts her agent
/// off (it was on relay B, with relay A to fall back to) and keeps it out
/// of both; her names stay hers, so bob still gets 403 for them, also on
/// the relay she never used.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_users_agent_is_cut_off_and_her_names_stay_hers() {
    let (_nats_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let dir = tempfile::tempdir().unwrap();
    let u = users();
    let (pa, pb) = (copy(dir.path(), "a"), copy(dir.path(), "b"));
    let a = start_relay(clustered(&urls, &pa, &u.file)).await;
    let b = start_relay(clustered(&urls, &pb, &u.file)).await;
    let app = App::start().await;
    let alice = start_agent_on(&[&b.base, &a.base], agent_opts("shop", &u.alice, &app)).await;
    assert!(
        alice.public_url.starts_with(&b.base),
        "{}",
        alice.public_url
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = Instant::now();
    for path in [&pa, &pb] {
        let mut f = UsersFile::load(path, false).unwrap();
        f.revoke("alice").unwrap();
        f.save(path).unwrap();
    }
    let mut status = alice.status.clone();
    tokio::time::timeout(
        Duration::from_secs(2),
        status.wait_for(|s| !matches!(s, ConnectionStatus::Connected { .. })),
    )
    .await
    .expect("alice's agent lost its link within 2 s of the revocation")
    .unwrap();
    eprintln!("cut off after {:?}", t0.elapsed());
    // It does not come back through either relay.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !matches!(&*alice.status.borrow(), ConnectionStatus::Connected { .. }),
        "the revoked agent reconnected"
    );
    for relay in [&a, &b] {
        let (s, _) = upgrade(&relay.base, &u.alice, "shop", &[]).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, why) = upgrade(&relay.base, &u.bob, "shop", &[(HDR_TAKEOVER, "1")]).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{why}");
    }
    assert!(app.seen().is_empty());
}

/// `--name-lifetime` across relays: a name whose agent stays connected on
/// relay B is never expired by relay A (the holders bucket says it is in
/// use), while a name nobody uses is forgotten once, cluster-wide, and
/// may then be claimed by another user through another relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unused_names_expire_cluster_wide_and_held_ones_do_not() {
    let (_nats_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let dir = tempfile::tempdir().unwrap();
    let u = users();
    let relay = |name: &str| {
        let mut c = clustered(&urls, &copy(dir.path(), name), &u.file);
        c.name_lifetime = Duration::from_secs(1);
        start_relay(c)
    };
    let (a, b) = (relay("a").await, relay("b").await);
    let app = App::start().await;
    let kept = start_agent(&b.base, agent_opts("alice-kept", &u.alice, &app)).await;
    assert!(connected(&kept));
    let gone = start_agent(&a.base, agent_opts("alice-gone", &u.alice, &app)).await;
    assert!(connected(&gone));
    drop(gone);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // An event held for alice's name before it expires...
    let (s, _, _) = send(
        Method::POST,
        &format!("{}/t/alice-gone/secret", a.base),
        &[],
        "for alice",
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    // Past the lifetime, with both relays' expiry running several times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for relay in [&a, &b] {
        let (s, why) = upgrade(&relay.base, &u.bob, "alice-kept", &[(HDR_TAKEOVER, "1")]).await;
        assert_eq!(
            s,
            StatusCode::FORBIDDEN,
            "the held name stays alice's: {why}"
        );
    }
    let (s, _, _) = send(
        Method::POST,
        &format!("{}/t/alice-kept/x", a.base),
        &[],
        "x",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // The unused one is free: bob takes it through relay B...
    let bob_app = App::start().await;
    let bobs = start_agent(&b.base, agent_opts("alice-gone", &u.bob, &bob_app)).await;
    assert!(connected(&bobs), "{}", bobs.public_url);
    let (s, why) = upgrade(&a.base, &u.alice, "alice-gone", &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "now bob's: {why}");
    // ...without what was held for alice.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        bob_app.seen().is_empty(),
        "alice's held event reached the name's next owner"
    );
}

/// A relay whose users file has other users than the running relays' is
/// refused at start, with one line saying so; the same users in another
/// layout are the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_with_another_users_file_refuses_to_start() {
    let (_nats_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let dir = tempfile::tempdir().unwrap();
    let u = users();
    let a = start_relay(clustered(&urls, &copy(dir.path(), "a"), &u.file)).await;

    // Same users, other order and comments: accepted.
    let mut reordered = u.file.clone();
    reordered.users.reverse();
    let same = copy(dir.path(), "same");
    reordered.save(&same).unwrap();
    std::fs::write(
        &same,
        format!("# a copy\n{}", std::fs::read_to_string(&same).unwrap()),
    )
    .unwrap();
    let b = start_relay(clustered(&urls, &same, &u.file)).await;

    // One more user: refused, in-process...
    let mut other = u.file.clone();
    other.add("carol", &["carol-*".into()], None).unwrap();
    let other_path = copy(dir.path(), "other");
    other.save(&other_path).unwrap();
    let err = whtunnel::relay::Relay::bind(clustered(&urls, &other_path, &other))
        .await
        .err()
        .expect("a relay with another users file must not start");
    assert!(err.to_string().contains("same users file"), "{err}");

    // ...and as a process: non-zero exit, one line on stderr.
    let data = dir.path().join("data");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(bin())
            .args(["relay", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .arg("--users-file")
            .arg(&other_path)
            .args([
                "--cluster",
                &urls[0],
                "--cluster-holder-ttl",
                "3s",
                "--hold-max-total-bytes",
                "256MiB",
            ])
            .env("WHTUNNEL_CLUSTER_SECRET", SECRET)
            .env("RUST_LOG", "off")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the relay exits at once")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("users file"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("differs"), "{stderr}");

    // Once the relays with the old file stopped (not killed), the new file
    // is the cluster's.
    a.stop().await;
    b.stop().await;
    let _c = start_relay(clustered(&urls, &other_path, &other)).await;
}

/// NATS gone: a new claim cannot be decided, so the agent is refused with
/// 503 and the reason, not granted on this relay's word alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_are_refused_with_503_while_nats_is_unreachable() {
    let (_nats_dir, mut node) = one_nats().await;
    let urls = vec![node.url()];
    let dir = tempfile::tempdir().unwrap();
    let u = users();
    let a = start_relay(clustered(&urls, &copy(dir.path(), "a"), &u.file)).await;
    node.kill().await;
    let t0 = Instant::now();
    let (s, why) = upgrade(&a.base, &u.alice, "alice-new", &[]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{why}");
    assert!(
        why.contains("could not record the tunnel name's owner"),
        "{why}"
    );
    assert!(!why.contains('\n'));
    eprintln!("refused after {:?}", t0.elapsed());
}

/// A relay that died between the two writes of a claim leaves a name on
/// the user's list that the user does not own. Such an entry counts
/// against the cap while it may still be a claim in progress, and is
/// dropped by the next claim that meets the cap once it is older than the
/// grace period: the cap never grows, and never stays stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_left_on_a_users_list_by_a_dead_relay_are_dropped_after_the_grace() {
    let (_nats_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let dir = tempfile::tempdir().unwrap();
    let u = users();
    let mut config = clustered(&urls, &copy(dir.path(), "a"), &u.file);
    config.max_names_per_user = Some(2);
    let a = start_relay(config).await;

    // What a dead relay left: two old entries and one in progress.
    let js = async_nats::jetstream::new(async_nats::connect(node.url()).await.unwrap());
    let kv = js
        .get_key_value(whtunnel::cluster::owners::OWNERS_BUCKET)
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let old = now - 2 * whtunnel::cluster::owners::PENDING_GRACE.as_millis() as i64;
    let list =
        format!(r#"{{"names":{{"cap-ghost-1":{old},"cap-ghost-2":{old},"cap-fresh":{now}}}}}"#);
    kv.put(
        format!("u.{}", data_encoding::HEXLOWER.encode(b"alice")),
        list.into(),
    )
    .await
    .unwrap();

    let app = App::start().await;
    let one = start_agent(&a.base, agent_opts("cap-1", &u.alice, &app)).await;
    assert!(
        connected(&one),
        "old entries are dropped: {}",
        one.public_url
    );
    let (s, why) = upgrade(&a.base, &u.alice, "cap-2", &[]).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a recent entry still counts: {why}"
    );
    assert!(why.contains("already owns 2"), "{why}");
}

/// Expiry deletes the owner record first and purges the name's events
/// after; a new owner claiming the name in between (or after a failed
/// purge) must still start empty: the claim itself purges what a previous
/// owner left, held and dead-lettered alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_claimed_afresh_starts_without_the_last_owners_events() {
    let (_nats_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let dir = tempfile::tempdir().unwrap();
    let u = users();
    let a = start_relay(clustered(&urls, &copy(dir.path(), "a"), &u.file)).await;
    let b = start_relay(clustered(&urls, &copy(dir.path(), "b"), &u.file)).await;
    let app = App::start().await;
    let alices = start_agent(&a.base, agent_opts("alice-old", &u.alice, &app)).await;
    assert!(connected(&alices));
    drop(alices);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        let (s, _, _) = send(
            Method::POST,
            &format!("{}/t/alice-old/secret?n={i}", a.base),
            &[],
            "for alice",
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    // The owner record goes, as an expiry's first step does; its purge
    // has not run.
    let js = async_nats::jetstream::new(async_nats::connect(node.url()).await.unwrap());
    let kv = js
        .get_key_value(whtunnel::cluster::owners::OWNERS_BUCKET)
        .await
        .unwrap();
    kv.delete("n.alice-old").await.unwrap();

    let bob_app = App::start().await;
    let bobs = start_agent(&b.base, agent_opts("alice-old", &u.bob, &bob_app)).await;
    assert!(connected(&bobs), "{}", bobs.public_url);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        bob_app.seen().is_empty(),
        "the last owner's held events reached the new one: {:?}",
        bob_app
            .seen()
            .iter()
            .map(|s| s.uri.clone())
            .collect::<Vec<_>>()
    );
}
