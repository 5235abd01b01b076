//! Host routing: a relay with `--domain hooks.example.com` sends
//! `NAME.hooks.example.com` to tunnel NAME with the path unchanged, keeps
//! `/t/NAME/...` working, serves the apex as before, and turns away hosts
//! that are not its own.

#![allow(clippy::unwrap_used)]

mod common;

use common::process::Spawn;
use common::*;
use http::Method;

const DOMAIN: &str = "hooks.example.com";

#[tokio::test]
async fn host_and_path_routing_reach_the_tunnel() {
    let app = App::start().await;
    let mut config = relay_config("127.0.0.1:0");
    config.domain = Some(DOMAIN.into());
    let relay = start_relay(config).await;
    let port = relay.addr.port();
    let agent = start_agent(&relay.base, AgentOptions::new("alpha", &app)).await;
    assert_eq!(
        agent.public_url,
        format!("http://alpha.{DOMAIN}:{port}"),
        "the relay announces the host-routed URL"
    );
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");

    // NAME.<domain>, any case and port: the app sees the path unchanged.
    let host = format!("Alpha.HOOKS.example.com:{port}");
    let (status, headers, body) =
        send(Method::POST, &url("/a?b=1"), &[("host", &host)], "one").await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(headers["x-app"], "yes");
    assert_eq!(body.as_ref(), b"one");
    // A path that looks like path routing is still the app's path.
    let host = format!("alpha.{DOMAIN}");
    let (status, _, _) = send(Method::GET, &url("/t/alpha/x"), &[("host", &host)], "").await;
    assert_eq!(status, 200);
    // Path routing on the apex and on an IP host.
    let apex = format!("{DOMAIN}:{port}");
    let (status, _, _) = send(Method::POST, &url("/t/alpha/p?q"), &[("host", &apex)], "").await;
    assert_eq!(status, 200);
    let (status, _, _) = send(Method::POST, &url("/t/alpha/ip"), &[], "").await;
    assert_eq!(status, 200);
    let uris: Vec<String> = app.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/a?b=1", "/t/alpha/x", "/p?q", "/ip"]);

    // The apex serves what the relay serves: the help 404 at '/'.
    let (status, _, body) = send(Method::GET, &url("/"), &[("host", &apex)], "").await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("/t/<tunnel-name>"));

    // Hosts that are not the relay's: a clear 404, never the app.
    for foreign in [
        "evil.example.net",
        "a.alpha.hooks.example.com",
        "alphahooks.example.com",
    ] {
        let (status, _, body) = send(Method::POST, &url("/a"), &[("host", foreign)], "x").await;
        assert_eq!(status, 404, "{foreign}");
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.contains("serves hooks.example.com and NAME.hooks.example.com"),
            "{foreign}: {body}"
        );
    }
    // An unknown tunnel reads like any unknown tunnel.
    let (status, _, _) = send(
        Method::POST,
        &url("/a"),
        &[("host", "ghost.hooks.example.com")],
        "x",
    )
    .await;
    assert_eq!(status, 404);
    // A Host that is not a host name: 400.
    let (status, _, body) = send(
        Method::POST,
        &url("/a"),
        &[("host", "alpha.hooks.example.com:http")],
        "x",
    )
    .await;
    assert_eq!(status, 400, "{body:?}");
    assert_eq!(app.seen().len(), 4, "nothing else reached the app");
    relay.stop().await;
}

#[tokio::test]
async fn a_relay_without_domain_ignores_hosts() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let agent = start_agent(&relay.base, AgentOptions::new("alpha", &app)).await;
    assert_eq!(agent.public_url, format!("{}/t/alpha", relay.base));
    let url = format!("http://{}/t/alpha/x", relay.addr);
    let (status, _, _) = send(Method::POST, &url, &[("host", "evil.example.net")], "").await;
    assert_eq!(status, 200);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_prints_the_host_url() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let relay = Spawn::relay(&dir.path().join("relay"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--token",
            "host-routing-token",
            "--domain",
            "Hooks.Example.com",
        ])
        .start()
        .await;
    let port = relay.addr().port();
    assert!(
        relay.first_line.contains("<name>.<domain>"),
        "{}",
        relay.first_line
    );
    let listen = Spawn::listen(&app.addr.to_string(), &dir.path().join("agent"))
        .args(["--name", "beta", "--token", "host-routing-token"])
        .args(["--relay", &relay.public_url])
        .quiet()
        .start()
        .await;
    assert_eq!(
        listen.public_url,
        format!("http://beta.{DOMAIN}:{port}"),
        "{}",
        listen.first_line
    );
    let (status, _, _) = send(
        Method::POST,
        &format!("http://127.0.0.1:{port}/hook?x"),
        &[("host", &format!("beta.{DOMAIN}:{port}"))],
        "{}",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(app.seen()[0].uri, "/hook?x");
    listen.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_bad_domain_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = process::whtunnel(&[
        "relay",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--domain",
        "not a domain",
    ])
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("--domain"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
