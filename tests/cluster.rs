#![allow(clippy::unwrap_used)]
//! Several relays as one on NATS JetStream (`relay --cluster`): real
//! `nats-server` processes, in-process relays and agents, loopback only.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::nats::{self, clustered, one_nats, SECRET};
use common::*;
use http::{Method, StatusCode};
use whtunnel::cluster::ClusterConfig;

/// Three relays on one NATS: an agent on B answers senders on A, B and C;
/// the hop carries the app's status, headers and body back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_reach_an_agent_on_another_relay() {
    let (_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let a = start_relay(clustered(&urls)).await;
    let b = start_relay(clustered(&urls)).await;
    let c = start_relay(clustered(&urls)).await;
    let app = App::start().await;
    let agent = start_agent(&b.base, AgentOptions::new("shop", &app)).await;
    assert!(
        agent.public_url.starts_with(&b.base),
        "{}",
        agent.public_url
    );

    for (i, relay) in [&a, &b, &c].into_iter().enumerate() {
        let body = format!("{{\"n\":{i}}}");
        let (s, h, got) = send(
            Method::POST,
            &format!("{}/t/shop/hooks/x?i={i}", relay.base),
            &[
                ("content-type", "application/json"),
                ("x-test-status", "201"),
            ],
            body.clone(),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "via relay {i}: {got:?}");
        assert_eq!(h.get("x-app").unwrap(), "yes");
        assert_eq!(got, Bytes::from(body));
    }
    let seen = app.seen();
    assert_eq!(seen.len(), 3);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.uri, format!("/hooks/x?i={i}"));
        // The hop's own headers never reach the app.
        assert!(s.headers.get("whtunnel-cluster-secret").is_none());
        assert!(s.headers.get("whtunnel-cluster-from").is_none());
        assert_eq!(s.headers.get("x-forwarded-for").unwrap(), "127.0.0.1");
    }
    // An unknown tunnel is still 404 on every relay.
    let (s, _, _) = send(Method::POST, &format!("{}/t/nobody/x", a.base), &[], "x").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// A host-routed webhook (`NAME.<domain>`) reaching relay A for an agent
/// on relay B arrives with its path unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_routed_webhook_crosses_the_hop() {
    let (_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let with_domain = || {
        let mut c = clustered(&urls);
        c.domain = Some("hooks.test".into());
        c
    };
    let a = start_relay(with_domain()).await;
    let b = start_relay(with_domain()).await;
    let app = App::start().await;
    let _agent = start_agent(&b.base, AgentOptions::new("shop", &app)).await;
    let (s, _, got) = send(
        Method::POST,
        &format!("{}/hooks/y?z=1", a.base),
        &[("host", "shop.hooks.test"), ("x-test-status", "201")],
        "hi",
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{got:?}");
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/hooks/y?z=1");
}

/// A 25 MiB body crosses A -> B -> agent -> app byte-exact; a 12 MiB
/// answer (the app's echo) comes back the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_five_mib_cross_the_hop_byte_exact() {
    let (_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let a = start_relay(clustered(&urls)).await;
    let b = start_relay(clustered(&urls)).await;
    let app = App::start().await;
    let _agent = start_agent(&b.base, AgentOptions::new("big", &app)).await;

    let body: Vec<u8> = (0..25 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let want = sha256(&body);
    let (s, _, got) = send(Method::POST, &format!("{}/t/big/upload", a.base), &[], body).await;
    assert_eq!(s, StatusCode::OK);
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, 25 * 1024 * 1024);
    assert_eq!(seen[0].body_sha256, want);
    // The test app answers a body this large with its length.
    assert_eq!(got, Bytes::from((25 * 1024 * 1024).to_string()));

    let body: Vec<u8> = (0..12 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(40_503) >> 7) as u8)
        .collect();
    let want = sha256(&body);
    let (s, _, got) = send(Method::PUT, &format!("{}/t/big/echo", a.base), &[], body).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got.len(), 12 * 1024 * 1024);
    assert_eq!(sha256(&got), want);
}

/// The holding relay's own answers pass back through the hop: 413 for a
/// body over its limit (found while streaming), 502 when the app is down,
/// 504 when the app is too slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_of_the_holding_relay_pass_back() {
    use futures_util::stream;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    let (_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let a = start_relay(clustered(&urls)).await;
    let mut config_b = clustered(&urls);
    config_b.max_body = 64 * 1024;
    config_b.response_timeout = Duration::from_secs(2);
    let b = start_relay(config_b).await;
    let app = App::start().await;
    let _agent = start_agent(&b.base, AgentOptions::new("errs", &app)).await;

    // 413: A's own limit is larger; B's is found while streaming.
    let chunks =
        (0..20).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'a'; 8192]))));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let req = http::Request::post(format!("{}/t/errs/x", a.base))
        .body(StreamBody::new(stream::iter(chunks)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(app.seen().iter().all(|s| s.body_len < 160 * 1024));

    // 504: B's response timeout (2 s) passes; A waits for B's answer.
    let (s, _, body) = send(
        Method::POST,
        &format!("{}/t/errs/slow", a.base),
        &[("x-test-delay-ms", "4000")],
        "x",
    )
    .await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{body:?}");

    // 502: an agent whose app is down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let mut opts = AgentOptions::new("down", &app);
    opts.target = dead_addr.to_string();
    let _down = start_agent(&b.base, opts).await;
    let (s, _, body) = send(Method::POST, &format!("{}/t/down/x", a.base), &[], "x").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{body:?}");
}

/// Two agents for one name on different relays: the second is refused
/// with 409, decided by the KV bucket; with --takeover it wins, and the
/// first agent's link on the other relay is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_name_two_relays_is_a_conflict() {
    let (_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let b = start_relay(clustered(&urls)).await;
    let c = start_relay(clustered(&urls)).await;
    let app1 = App::start().await;
    let app2 = App::start().await;
    let mut first = AgentOptions::new("dup", &app1);
    first.agent_id = Some("agent-one".into());
    let first = start_agent(&b.base, first).await;
    assert!(!first.public_url.starts_with("refused"));

    let mut second = AgentOptions::new("dup", &app2);
    second.agent_id = Some("agent-two".into());
    let refused = start_agent(&c.base, second).await;
    assert!(
        refused.public_url.starts_with("refused") && refused.public_url.contains("409"),
        "{}",
        refused.public_url
    );
    // The first one still serves, from either relay.
    let (s, _, _) = send(Method::POST, &format!("{}/t/dup/x", c.base), &[], "x").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(app1.seen().len(), 1);

    // Both at once on two relays: exactly one wins.
    let app3 = App::start().await;
    let mut x = AgentOptions::new("race", &app3);
    x.agent_id = Some("race-x".into());
    let mut y = AgentOptions::new("race", &app3);
    y.agent_id = Some("race-y".into());
    let (x, y) = tokio::join!(start_agent(&b.base, x), start_agent(&c.base, y));
    let refused = [&x, &y]
        .iter()
        .filter(|a| a.public_url.starts_with("refused"))
        .count();
    assert_eq!(refused, 1, "{} / {}", x.public_url, y.public_url);

    // Takeover from the other relay: the new agent gets the traffic.
    let mut taker = AgentOptions::new("dup", &app2);
    taker.agent_id = Some("agent-two".into());
    taker.takeover = true;
    let taker = start_agent(&c.base, taker).await;
    assert!(
        !taker.public_url.starts_with("refused"),
        "{}",
        taker.public_url
    );
    // Relay B notices (its refresh fails) and closes the old link; the old
    // agent, back at B, is refused: the name is the taker's.
    let mut st = first.status.clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if matches!(
                &*st.borrow_and_update(),
                whtunnel::agent::ConnectionStatus::Refused { .. }
            ) {
                return;
            }
            st.changed().await.unwrap();
        }
    })
    .await
    .expect("the replaced agent is refused within 10 s");
    let (s, _, _) = send(Method::POST, &format!("{}/t/dup/y", b.base), &[], "y").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(app2.seen().len(), 1, "the taker's app got it");
    assert_eq!(app1.seen().len(), 1, "the old agent's app did not");
}

/// A relay that cannot reach NATS does not start, with a clear error.
#[tokio::test]
async fn no_nats_is_a_clear_error() {
    let port = common::ports::PortReservation::new();
    let mut config = relay_config("127.0.0.1:0");
    let mut cluster = ClusterConfig::new(vec![format!("nats://{}", port.addr)], SECRET.into());
    cluster.holder_ttl = Duration::from_secs(3);
    config.cluster = Some(cluster);
    let err = match tokio::time::timeout(
        Duration::from_secs(30),
        whtunnel::relay::Relay::bind(config),
    )
    .await
    .unwrap()
    {
        Ok(_) => panic!("bound without NATS"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("NATS"), "{err}");
}

/// No agent anywhere: any relay holds the webhook in JetStream (202); the
/// agent connecting to yet another relay gets every event once, byte-exact
/// (a 2 MiB body through the object store), and each is acknowledged
/// (gone from the stream) after its delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_on_any_relay_delivered_by_another() {
    let (_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let a = start_relay(clustered(&urls)).await;
    let b = start_relay(clustered(&urls)).await;
    let c = start_relay(clustered(&urls)).await;
    let app = App::start().await;
    let mut opts = AgentOptions::new("away", &app);
    opts.agent_id = Some("away-agent".into());
    let first = start_agent(&b.base, opts).await;
    assert!(first.public_url.starts_with(&b.base));
    first.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        let mut first = first;
        (&mut first.task).await
    })
    .await;

    let big: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut sent = Vec::new();
    for i in 0..6usize {
        let relay = [&a, &b, &c][i % 3];
        let body = if i == 3 {
            big.clone()
        } else {
            format!("event {i}").into_bytes()
        };
        let n = i.to_string();
        let (s, h, reason) = send(
            Method::POST,
            &format!("{}/t/away/ev/{i}", relay.base),
            &[("x-n", n.as_str())],
            body.clone(),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "event {i}: {reason:?}");
        assert!(h.get("whtunnel-event-id").is_some());
        sent.push((format!("/ev/{i}"), sha256(&body), body.len() as u64));
    }
    assert!(app.seen().is_empty());

    let mut opts = AgentOptions::new("away", &app);
    opts.agent_id = Some("away-agent".into());
    let back = start_agent(&c.base, opts).await;
    assert!(back.public_url.starts_with(&c.base), "{}", back.public_url);
    wait_for_seen(&app, 6, Duration::from_secs(20)).await;
    // Nothing more arrives: each was acknowledged once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = app.seen();
    assert_eq!(seen.len(), 6, "delivered exactly once each");
    for (path, sum, len) in &sent {
        let got: Vec<_> = seen.iter().filter(|s| &s.uri == path).collect();
        assert_eq!(got.len(), 1, "{path}");
        assert_eq!(got[0].body_len, *len, "{path}");
        assert_eq!(&got[0].body_sha256, sum, "{path}");
    }
    let js = async_nats::jetstream::new(async_nats::connect(node.url()).await.unwrap());
    let mut stream = js.get_stream("whtunnel_held").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(
        info.state.messages, 0,
        "every delivered event was acknowledged"
    );

    // And live again, through a relay without the agent.
    let (s, _, _) = send(Method::POST, &format!("{}/t/away/live", a.base), &[], "l").await;
    assert_eq!(s, StatusCode::OK);
}

/// What senders were told, per event path.
type Answers = std::sync::Arc<std::sync::Mutex<Vec<(String, u16)>>>;

/// Sends `count` small events to `base`, `every` apart, four in flight at
/// most; records each answer's status (0 for no answer).
async fn load(base: String, tunnel: &str, count: usize, every: Duration, answers: Answers) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = Vec::new();
    for i in 0..count {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let url = format!("{base}/t/{tunnel}/ev/{i}");
        let answers = answers.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let req = http::Request::post(url)
                .body(http_body_util::Full::new(Bytes::from(format!("event {i}"))))
                .unwrap();
            let status =
                match tokio::time::timeout(Duration::from_secs(40), client().request(req)).await {
                    Ok(Ok(resp)) => resp.status().as_u16(),
                    _ => 0,
                };
            answers.lock().unwrap().push((format!("/ev/{i}"), status));
        }));
        tokio::time::sleep(every).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Every event a sender got 200 or 202 for reached the app (within
/// `within`); returns (acknowledged, refused) counts.
async fn check_nothing_acknowledged_lost(
    app: &App,
    answers: &Answers,
    within: Duration,
) -> (usize, usize) {
    let answers = answers.lock().unwrap().clone();
    let acked: Vec<&String> = answers
        .iter()
        .filter(|(_, s)| *s == 200 || *s == 202)
        .map(|(p, _)| p)
        .collect();
    let started = std::time::Instant::now();
    loop {
        let seen: std::collections::HashSet<String> =
            app.seen().into_iter().map(|s| s.uri).collect();
        let missing: Vec<_> = acked.iter().filter(|p| !seen.contains(**p)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < within,
            "{} acknowledged events never reached the app, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (acked.len(), answers.len() - acked.len())
}

fn relay_process(dir: &std::path::Path, nats: &[String]) -> common::process::Spawn {
    common::process::Spawn::relay(dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--token",
            TOKEN,
            "--cluster",
            &nats.join(","),
            "--cluster-holder-ttl",
            "3s",
            "--hold-max-total-bytes",
            "256MiB",
        ])
        .env("WHTUNNEL_CLUSTER_SECRET", SECRET)
}

/// A relay process killed with SIGKILL under a steady load: its agent moves
/// to the next relay of its `--relay` list, events sent meanwhile through
/// another relay are held or delivered, and every event a sender got 2xx
/// for reaches the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_killed_agent_moves_nothing_acknowledged_lost() {
    let (_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let dirs = tempfile::tempdir().unwrap();
    let (da, db) = (dirs.path().join("a"), dirs.path().join("b"));
    let relay_a = relay_process(&da, &urls).start().await;
    let relay_b = relay_process(&db, &urls).start().await;
    let c = start_relay(clustered(&urls)).await;
    let app = App::start().await;
    let mut opts = AgentOptions::new("moving", &app);
    opts.agent_id = Some("moving-agent".into());
    let agent = start_agent_on(&[&relay_a.public_url, &relay_b.public_url], opts).await;
    assert!(
        agent.public_url.starts_with(&relay_a.public_url),
        "{}",
        agent.public_url
    );

    let answers: Answers = Default::default();
    let sending = tokio::spawn(load(
        c.base.clone(),
        "moving",
        150,
        Duration::from_millis(20),
        answers.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    relay_a.signal(common::process::Signal::Kill);
    let killed_at = std::time::Instant::now();
    // The agent is on B within a few seconds (its first retry within 0.25 s,
    // A refuses, B at once).
    let mut st = agent.status.clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let whtunnel::agent::ConnectionStatus::Connected { public_url, .. } =
                &*st.borrow_and_update()
            {
                if public_url.starts_with(&relay_b.public_url) {
                    return;
                }
            }
            st.changed().await.unwrap();
        }
    })
    .await
    .expect("the agent moved to relay B");
    let moved_in = killed_at.elapsed();
    sending.await.unwrap();
    let held = answers
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| *s == 202)
        .count();
    let (acked, refused) =
        check_nothing_acknowledged_lost(&app, &answers, Duration::from_secs(30)).await;
    eprintln!(
        "relay kill: agent on B after {moved_in:?}; {acked} events acknowledged ({held} of them held), {refused} refused (sender retries), app saw {}",
        app.seen().len()
    );
    assert!(acked >= 120, "most events are acknowledged: {acked} of 150");
    drop(relay_b);
}

/// One NATS node of three killed under load: held events stay (replicated),
/// delivery continues, nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_node_killed_nothing_acknowledged_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = nats::cluster3(dir.path()).await;
    let urls = nats::urls(&nodes);
    // JetStream needs a meta leader before streams can be made.
    let mut config = None;
    for _ in 0..100 {
        match whtunnel::relay::Relay::bind(clustered(&urls)).await {
            Ok(_) => {
                config = Some(());
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    config.expect("the NATS cluster came up");
    let a = start_relay(clustered(&urls)).await;
    let b = start_relay(clustered(&urls)).await;
    let app = App::start().await;
    let mut opts = AgentOptions::new("steady", &app);
    opts.agent_id = Some("steady-agent".into());
    let agent = start_agent(&b.base, opts).await;
    // Some events held first (agent away), the rest live through A -> B.
    agent.stop.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answers: Answers = Default::default();
    load(
        a.base.clone(),
        "steady",
        30,
        Duration::from_millis(10),
        answers.clone(),
    )
    .await;
    assert!(answers.lock().unwrap().iter().all(|(_, s)| *s == 202));
    // The agent returns and drains while live traffic flows through A,
    // and a NATS node dies in the middle of it.
    let mut opts = AgentOptions::new("steady", &app);
    opts.agent_id = Some("steady-agent".into());
    let _agent = start_agent(&b.base, opts).await;
    let live = tokio::spawn(load(
        a.base.clone(),
        "steady",
        60,
        Duration::from_millis(20),
        answers.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes[0].kill().await;
    live.await.unwrap();
    let (acked, refused) =
        check_nothing_acknowledged_lost(&app, &answers, Duration::from_secs(30)).await;
    eprintln!(
        "NATS node kill: {acked} acknowledged, {refused} refused, app saw {}",
        app.seen().len()
    );
    assert!(acked >= 60, "{acked} of 90");
}

/// A relay serving TLS takes hops on a second, cleartext listener
/// (`--cluster-listen`): a sender on A (cleartext) reaches the agent on B
/// (TLS, `wss://`) through it; that listener refuses anything but a hop;
/// and B without it refuses to start, saying what to pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_relay_takes_hops_on_its_cluster_listener() {
    use common::pki::{ca_signed, LOCAL};
    let (_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let pki = tempfile::tempdir().unwrap();
    ca_signed(pki.path(), "b", &LOCAL, false);
    let tls = || {
        whtunnel::tunnel::tls::server_config(
            &pki.path().join("b.pem"),
            &pki.path().join("b-key.pem"),
        )
        .unwrap()
    };

    let mut without = clustered(&urls);
    without.tls = Some(tls());
    let err = match whtunnel::relay::Relay::bind(without).await {
        Ok(_) => panic!("a TLS relay joined without a hop listener"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("--cluster-listen"), "{err}");

    let a = start_relay(clustered(&urls)).await;
    let mut config = clustered(&urls);
    config.tls = Some(tls());
    config.cluster.as_mut().unwrap().listen = Some("127.0.0.1:0".parse().unwrap());
    let bound = whtunnel::relay::Relay::bind(config).await.unwrap();
    let hop_addr = bound.hop_addr().expect("a hop listener");
    let b_addr = bound.local_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    let b_run = tokio::spawn(bound.run(stop.clone().cancelled_owned()));

    let app = App::start().await;
    let mut opts = AgentOptions::new("secure", &app);
    opts.ca = Some(pki.path().join("ca.pem"));
    let agent = start_agent(&format!("https://localhost:{}", b_addr.port()), opts).await;
    assert!(
        agent.public_url.starts_with("https://"),
        "{}",
        agent.public_url
    );

    let (status, _, body) = send(
        Method::POST,
        &format!("{}/t/secure/paid", a.base),
        &[],
        "{\"via\":\"a\"}",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body.as_ref(), b"{\"via\":\"a\"}");
    assert_eq!(app.seen()[0].uri, "/paid");

    // Not a hop: refused on the hop listener, whatever the path.
    let (status, _, body) = send(
        Method::POST,
        &format!("http://{hop_addr}/t/secure/paid"),
        &[],
        "x",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("hops"), "{body:?}");
    assert_eq!(app.seen().len(), 1);

    drop(agent);
    stop.cancel();
    b_run.await.unwrap().unwrap();
    a.stop().await;
}
