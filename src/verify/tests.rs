//! Published test vectors of each scheme, sign→verify round trips for every
//! signable preset, and one test per failure reason.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sha2::Digest as _;

use super::*;
use crate::capture::model::Header;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn hdrs(list: &[(&str, &str)]) -> Vec<Header> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn run(rule: &Rule, url: &str, headers: &[Header], body: &[u8], now: SystemTime) -> Check {
    let req = RequestView::new("POST", url, headers, body);
    check(rule, &req, now).expect("a scheme applies")
}

fn valid(c: &Check) {
    assert_eq!(c.verdict, Verdict::Valid, "{:?}", c.reason);
    assert_eq!(c.reason, None);
}

// Standard Webhooks' own example, used verbatim in the test suites of its
// reference libraries (standard-webhooks/libraries, python/tests) and in
// Svix's (svix-webhooks, python/tests/test_webhooks.py).
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SW_TS: u64 = 1614265330;
const SW_BODY: &str = r#"{"test": 2432232314}"#;
const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

#[test]
fn standard_webhooks_published_vector() {
    let rule = Rule::for_provider(Provider::StandardWebhooks).with_secret(SW_SECRET);
    let ts = SW_TS.to_string();
    let h = hdrs(&[
        ("webhook-id", SW_ID),
        ("webhook-timestamp", &ts),
        ("webhook-signature", SW_SIG),
    ]);
    valid(&run(
        &rule,
        "https://x/",
        &h,
        SW_BODY.as_bytes(),
        at(SW_TS + 10),
    ));
}

#[test]
fn svix_published_vector_among_several_signatures() {
    let rule = Rule::for_provider(Provider::Svix).with_secret(SW_SECRET);
    let ts = SW_TS.to_string();
    // Svix sends a space-separated list during secret rotation.
    let list = format!("v1,Zm9vYmFy {SW_SIG} v2,whatever");
    let h = hdrs(&[
        ("svix-id", SW_ID),
        ("svix-timestamp", &ts),
        ("svix-signature", &list),
    ]);
    valid(&run(&rule, "https://x/", &h, SW_BODY.as_bytes(), at(SW_TS)));
}

// GitHub's documented example ("Validating webhook deliveries", testing
// the webhook payload validation).
#[test]
fn github_documented_vector() {
    let rule = Rule::for_provider(Provider::Github).with_secret("It's a Secret to Everybody");
    let h = hdrs(&[(
        "X-Hub-Signature-256",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    )]);
    valid(&run(&rule, "https://x/", &h, b"Hello, World!", at(0)));
}

// Slack's documented example ("Verifying requests from Slack").
#[test]
fn slack_documented_vector() {
    let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    let rule = Rule::for_provider(Provider::Slack).with_secret("8f742231b10e8888abcd99yyyzzz85a5");
    let h = hdrs(&[
        ("X-Slack-Request-Timestamp", "1531420618"),
        (
            "X-Slack-Signature",
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
        ),
    ]);
    valid(&run(
        &rule,
        "https://x/",
        &h,
        body.as_bytes(),
        at(1531420618 + 60),
    ));
}

// twilio-python, tests/unit/test_request_validator.py: a form POST and a
// JSON POST whose body hash rides in the URL.
#[test]
fn twilio_library_vectors() {
    let rule = Rule::for_provider(Provider::Twilio).with_secret("12345");
    let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
    let body = "CallSid=CA1234567890ABCDE&Digits=1234&From=%2B14158675309&To=%2B18005551212&Caller=%2B14158675309";
    let h = hdrs(&[
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("X-Twilio-Signature", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
    ]);
    valid(&run(&rule, url, &h, body.as_bytes(), at(0)));

    let json_url = format!(
        "{url}&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
    );
    let h = hdrs(&[
        ("Content-Type", "application/json"),
        ("X-Twilio-Signature", "a9nBmqA0ju/hNViExpshrM61xv4="),
    ]);
    valid(&run(
        &rule,
        &json_url,
        &h,
        br#"{"property": "value", "boolean": true}"#,
        at(0),
    ));
    // The signature covers the URL and the URL the body's hash: another
    // body under the same signed URL is caught (twilio-python's
    // RequestValidator.validate checks both, `bodySHA256` first).
    let c = run(
        &rule,
        &json_url,
        &h,
        br#"{"property": "value", "boolean": false}"#,
        at(0),
    );
    assert_eq!(c.verdict, Verdict::Invalid);
    let why = c.reason.unwrap().to_string();
    assert!(
        why.starts_with(
            "body hash mismatch: the body's SHA-256 is not the `bodySHA256` in the signed URL"
        ),
        "{why}"
    );
    // With the relay's hash: proven changed after the relay, or not.
    let tampered = br#"{"property": "value", "boolean": false}"#;
    let mut req = RequestView::new("POST", &json_url, &h, tampered);
    req.relay_body = Some(BodyDigest::Blake3(
        *blake3::hash(br#"{"property": "value", "boolean": true}"#).as_bytes(),
    ));
    let c = check(&rule, &req, at(0)).unwrap();
    assert!(c
        .reason
        .unwrap()
        .to_string()
        .contains("differs from the bytes the relay received"));
    // A form body carries no hash: nothing more to compare.
    // The local URL is not what Twilio signed.
    let c = run(
        &rule,
        "http://localhost:3000/myapp.php?foo=1&bar=2",
        &h,
        b"{}",
        at(0),
    );
    assert!(matches!(c.reason, Some(Reason::SignatureMismatch { .. })));
}

// Square's published test notification (Square SDKs' webhooks helper tests,
// and "Validate notifications" in Square's docs).
#[test]
fn square_published_vector() {
    let body = r#"{"merchant_id":"MLEFBHHSJGVHD","type":"webhooks.test_notification","event_id":"ac3ac95b-f97d-458c-a6e6-18981597e05f","created_at":"2022-07-13T20:30:59.037339943Z","data":{"type":"webhooks","id":"bc368e64-01aa-407e-b46e-3231809b1129"}}"#;
    let rule = Rule::for_provider(Provider::Square).with_secret("Ibxx_5AKakO-3qeNVR61Dw");
    let h = hdrs(&[(
        "x-square-hmacsha256-signature",
        "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4=",
    )]);
    let url = "https://webhook.site/679a4f3a-dcfa-49ee-bac5-9d0edad886b9";
    valid(&run(&rule, url, &h, body.as_bytes(), at(0)));
    let c = run(&rule, "http://localhost:3000/", &h, body.as_bytes(), at(0));
    assert_eq!(c.verdict, Verdict::Invalid);
}

// sendgrid-nodejs, packages/eventwebhook/src/eventwebhook.spec.js.
const SG_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==";
const SG_SIG: &str = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=";
const SG_BODY: &str =
    r#"{"category":"example_payload","event":"test_event","message_id":"message_id"}"#;

#[test]
fn sendgrid_library_vector_and_tampering() {
    let rule = Rule::for_provider(Provider::Sendgrid).with_secret(SG_KEY);
    let h = hdrs(&[
        ("X-Twilio-Email-Event-Webhook-Signature", SG_SIG),
        ("X-Twilio-Email-Event-Webhook-Timestamp", "1588788367"),
    ]);
    let c = run(&rule, "https://x/", &h, SG_BODY.as_bytes(), at(0));
    valid(&c);
    assert_eq!(c.scheme, "ecdsa");
    let c = run(&rule, "https://x/", &h, b"payload", at(0));
    assert!(matches!(c.reason, Some(Reason::SignatureMismatch { .. })));
    let req = RequestView::new("POST", "https://x/", &h, SG_BODY.as_bytes());
    let err = sign(&rule, &req, at(0)).unwrap_err();
    assert!(err.to_string().contains("cannot be re-signed"), "{err}");
}

#[test]
fn discord_ed25519_verifies_and_refuses_to_resign() {
    use ed25519_dalek::Signer as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let public = data_encoding::HEXLOWER.encode(key.verifying_key().as_bytes());
    let body = br#"{"type":1}"#;
    let mut signed = b"1700000000".to_vec();
    signed.extend_from_slice(body);
    let sig = data_encoding::HEXLOWER.encode(&key.sign(&signed).to_bytes());
    let rule = Rule::for_provider(Provider::Discord).with_secret(public);
    let h = hdrs(&[
        ("X-Signature-Ed25519", &sig),
        ("X-Signature-Timestamp", "1700000000"),
    ]);
    valid(&run(&rule, "https://x/", &h, body, at(0)));
    let c = run(&rule, "https://x/", &h, br#"{"type":2}"#, at(0));
    assert!(matches!(c.reason, Some(Reason::SignatureMismatch { .. })));
    let req = RequestView::new("POST", "https://x/", &h, body);
    assert!(matches!(
        sign(&rule, &req, at(0)),
        Err(SignError::CannotResign(_))
    ));
}

#[test]
fn jwt_bodies_hs256_and_es256_via_jwks() {
    use jsonwebtoken::{encode, EncodingKey, Header as JwtHeader};
    use p256::pkcs8::EncodePrivateKey as _;
    let claims = serde_json::json!({
        "iss": "https://identity.moneyhub.co.uk",
        "jti": "abc",
        "events": {"urn:com:moneyhub:events:payment-completed": {"paymentId": "p1"}}
    });
    let h = hdrs(&[("Content-Type", "application/jwt")]);

    let hs = encode(
        &JwtHeader::default(),
        &claims,
        &EncodingKey::from_secret(b"s3cret"),
    )
    .unwrap();
    let rule = Rule::for_provider(Provider::Moneyhub).with_secret("s3cret");
    valid(&run(&rule, "https://x/", &h, hs.as_bytes(), at(0)));
    let wrong = Rule::for_provider(Provider::Moneyhub).with_secret("other");
    let c = run(&wrong, "https://x/", &h, hs.as_bytes(), at(0));
    assert!(matches!(c.reason, Some(Reason::SignatureMismatch { .. })));

    let sk = p256::SecretKey::from_slice(&[3u8; 32]).unwrap();
    let der = sk.to_pkcs8_der().unwrap();
    let mut header = JwtHeader::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let es = encode(&header, &claims, &EncodingKey::from_ec_der(der.as_bytes())).unwrap();
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    let point = sk.public_key().to_encoded_point(false);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
        "x": b64.encode(point.x().unwrap()), "y": b64.encode(point.y().unwrap())
    }]}))
    .unwrap();
    let rule = Rule::for_provider(Provider::Moneyhub).with_jwks(jwks.clone());
    let c = run(&rule, "https://x/", &h, es.as_bytes(), at(0));
    valid(&c);
    assert_eq!(c.scheme, "jwt");
    let mut other = header.clone();
    other.kid = Some("k2".into());
    let es2 = encode(&other, &claims, &EncodingKey::from_ec_der(der.as_bytes())).unwrap();
    let c = run(&rule, "https://x/", &h, es2.as_bytes(), at(0));
    assert_eq!(
        c.reason,
        Some(Reason::UnknownKey {
            kid: Some("k2".into())
        })
    );

    // Recognised from the body alone, with the `events` key as its type.
    let req = RequestView::new("POST", "https://x/", &h, es.as_bytes());
    let r = recognise(&req).unwrap();
    assert_eq!(r.provider, Provider::Moneyhub);
    assert_eq!(
        r.event.as_deref(),
        Some("urn:com:moneyhub:events:payment-completed")
    );
    let req = RequestView::new("POST", "https://x/", &h, es.as_bytes());
    assert!(matches!(
        sign(&rule, &req, at(0)),
        Err(SignError::CannotResign(_))
    ));
}

/// A request as the sender would send it: `base` headers plus whatever
/// `sign` returns for `body` at `when`.
fn signed_request(
    rule: &Rule,
    base: &[Header],
    url: &str,
    body: &[u8],
    when: SystemTime,
) -> Vec<Header> {
    let req = RequestView::new("POST", url, base, body);
    let mut headers = base.to_vec();
    for (n, v) in sign(rule, &req, when).unwrap().headers {
        headers.retain(|(name, _)| !name.eq_ignore_ascii_case(&n));
        headers.push((n, v.into_bytes()));
    }
    headers
}

fn secret_for(p: Provider) -> &'static str {
    match p {
        Provider::StandardWebhooks | Provider::Svix => SW_SECRET,
        _ => "test-secret-1",
    }
}

#[test]
fn every_signable_preset_round_trips_and_names_each_failure() {
    let now = at(1_700_000_000);
    let url = "https://relay.example/t/abc/hook?key=test-secret-1";
    let body = br#"{"id":"evt_1","type":"demo.event"}"#;
    let base = hdrs(&[
        ("Content-Type", "application/json"),
        ("webhook-id", "msg_1"),
    ]);
    let mut signable = 0;
    for p in Provider::ALL {
        let scheme = p.scheme();
        if !scheme.can_sign() {
            continue;
        }
        signable += 1;
        let rule = Rule::for_provider(p).with_secret(secret_for(p));
        // Twilio signs form fields; its JSON bodies are covered by a hash in the URL instead.
        let base = if p == Provider::Twilio {
            hdrs(&[("Content-Type", "application/x-www-form-urlencoded")])
        } else {
            base.clone()
        };
        let h = signed_request(&rule, &base, url, body, now);
        let c = run(&rule, url, &h, body, now);
        assert_eq!(c.verdict, Verdict::Valid, "{p}: {:?}", c.reason);
        assert_eq!(c.provider, Some(p));
        if matches!(scheme, Scheme::QueryKey { .. }) {
            let c = run(
                &rule,
                "https://relay.example/t/abc/hook?key=nope",
                &h,
                body,
                now,
            );
            assert_eq!(c.verdict, Verdict::Invalid, "{p}");
            continue;
        }
        // Tampered body.
        let c = run(
            &rule,
            url,
            &h,
            br#"{"id":"evt_1","type":"demo.evenT"}"#,
            now,
        );
        assert_eq!(
            c.reason,
            Some(Reason::SignatureMismatch { body_changed: None }),
            "{p}"
        );
        // Wrong secret.
        let other = Rule::for_provider(p).with_secret("whsec_b3RoZXI=");
        let c = run(&other, url, &h, body, now);
        assert_eq!(
            c.reason,
            Some(Reason::SignatureMismatch { body_changed: None }),
            "{p}"
        );
        // Stale: signed fifteen minutes before now (past every preset tolerance).
        let Scheme::Hmac(spec) = &scheme else {
            unreachable!()
        };
        if let Some(tol) = spec.tolerance {
            let stale = signed_request(&rule, &base, url, body, at(1_700_000_000 - 900));
            let c = run(&rule, url, &stale, body, now);
            assert_eq!(
                c.reason,
                Some(Reason::TimestampOutsideTolerance {
                    age_secs: 900,
                    tolerance: tol
                }),
                "{p}"
            );
            // Re-signing the stale event makes it pass again, id kept.
            let again = signed_request(&rule, &stale, url, body, now);
            valid(&run(&rule, url, &again, body, now));
            if let Some(id) = &spec.id_header {
                let find =
                    |h: &[Header]| h.iter().find(|(n, _)| n.eq_ignore_ascii_case(id)).cloned();
                assert_eq!(find(&again), find(&stale), "{p}: event id kept");
            }
        }
    }
    assert_eq!(signable, 15);
}

#[test]
fn reasons_separate_the_checks() {
    let rule = Rule::for_provider(Provider::Stripe).with_secret("whsec_test");
    let body = b"{}";
    let c = run(&rule, "https://x/", &[], body, at(0));
    assert_eq!(c.verdict, Verdict::Unsigned);
    assert_eq!(
        c.reason.unwrap().to_string(),
        "missing header Stripe-Signature"
    );

    let h = hdrs(&[("Stripe-Signature", "v1=abcd")]);
    let c = run(&rule, "https://x/", &h, body, at(0));
    assert_eq!(c.verdict, Verdict::Invalid);
    assert_eq!(
        c.reason.unwrap().to_string(),
        "malformed header Stripe-Signature: no `t=` timestamp in it"
    );
    let h = hdrs(&[("Stripe-Signature", "t=1,v1=zz")]);
    let c = run(&rule, "https://x/", &h, body, at(0));
    assert_eq!(
        c.reason.unwrap().to_string(),
        "malformed header Stripe-Signature: the signature is not hex"
    );

    // Slack: the signature is there, its timestamp header is not.
    let slack = Rule::for_provider(Provider::Slack).with_secret("s");
    let h = hdrs(&[("X-Slack-Signature", "v0=abcd")]);
    let c = run(&slack, "https://x/", &h, body, at(0));
    assert_eq!(c.verdict, Verdict::Invalid);
    assert_eq!(
        c.reason,
        Some(Reason::MissingHeader {
            header: "X-Slack-Request-Timestamp".into()
        })
    );

    // Stale and future timestamps say by how much and which way.
    let h = signed_request(&rule, &[], "https://x/", body, at(10_000));
    let c = run(&rule, "https://x/", &h, body, at(10_000 + 330));
    assert_eq!(
        c.reason.unwrap().to_string(),
        "timestamp outside tolerance: 5m30s old, 30s past the 5m tolerance"
    );
    let c = run(&rule, "https://x/", &h, body, at(10_000 - 400));
    assert_eq!(
        c.reason.unwrap().to_string(),
        "timestamp outside tolerance: 6m40s in the future, 1m40s past the 5m tolerance (clock ahead?)"
    );
}

#[test]
fn body_hash_from_the_relay_tells_wrong_secret_from_changed_body() {
    let rule = Rule::for_provider(Provider::Github).with_secret("right");
    let body = b"payload";
    let h = signed_request(&rule, &[], "https://x/", body, at(0));
    let relay_saw = BodyDigest::Blake3(*blake3::hash(body).as_bytes());
    // An exchange recorded from a protocol-2 relay, which sent SHA-256.
    let older_relay_saw = BodyDigest::Sha256(sha2::Sha256::digest(body).into());
    let wrong = Rule::for_provider(Provider::Github).with_secret("wrong");
    for relay in [relay_saw, older_relay_saw] {
        let mut req = RequestView::new("POST", "https://x/", &h, body);
        req.relay_body = Some(relay);
        let c = check(&wrong, &req, at(0)).unwrap();
        assert_eq!(
            c.reason,
            Some(Reason::SignatureMismatch {
                body_changed: Some(false)
            }),
            "{relay}"
        );
        assert!(c.reason.unwrap().to_string().contains("wrong secret"));
    }

    let mut req = RequestView::new("POST", "https://x/", &h, b"payloaD");
    req.relay_body = Some(relay_saw);
    let c = check(&rule, &req, at(0)).unwrap();
    assert_eq!(
        c.reason,
        Some(Reason::SignatureMismatch {
            body_changed: Some(true)
        })
    );
    assert!(c
        .reason
        .unwrap()
        .to_string()
        .contains("differs from the bytes the relay received"));
}

#[test]
fn stripe_several_v1_and_github_legacy_sha1_and_upper_case_hex() {
    let rule = Rule::for_provider(Provider::Stripe).with_secret("whsec_x");
    let h = signed_request(&rule, &[], "https://x/", b"b", at(100));
    let good = std::str::from_utf8(&h[0].1).unwrap().to_string();
    let (t, v1) = good.split_once(',').unwrap();
    let several = format!("{t},v1={},{v1},v0=deadbeef", "00".repeat(32));
    let h = hdrs(&[("Stripe-Signature", &several)]);
    valid(&run(&rule, "https://x/", &h, b"b", at(100)));

    let gh = Rule::for_provider(Provider::Github).with_secret("s");
    let signed = signed_request(&gh, &[], "https://x/", b"b", at(0));
    let sha1 = signed
        .iter()
        .find(|(n, _)| n == "X-Hub-Signature")
        .unwrap()
        .clone();
    valid(&run(&gh, "https://x/", &[sha1], b"b", at(0)));

    let bridge = Rule::for_provider(Provider::Bridge).with_secret("s");
    let signed = signed_request(&bridge, &[], "https://x/", b"b", at(0));
    let v = std::str::from_utf8(&signed[0].1).unwrap();
    assert_eq!(
        v,
        v.to_uppercase().replace("V1=", "v1="),
        "Bridge writes upper-case hex"
    );
    let lower = hdrs(&[(
        "BridgeApi-Signature",
        &format!("v1=00,{}", v.to_lowercase()),
    )]);
    valid(&run(&bridge, "https://x/", &lower, b"b", at(0)));
}

#[test]
fn no_secret_is_unchecked_and_secrets_never_show_in_debug() {
    let rule = Rule::for_provider(Provider::Stripe);
    let h = hdrs(&[("Stripe-Signature", "t=1,v1=00")]);
    let c = run(&rule, "https://x/", &h, b"{}", at(0));
    assert_eq!(c.verdict, Verdict::Unchecked);
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["verdict"], "unchecked");
    assert_eq!(json["provider"], "stripe");
    assert_eq!(json["scheme"], "hmac");
    assert!(json["reason"]
        .as_str()
        .unwrap()
        .contains("no secret configured for stripe"));

    let rule = rule.with_secret("whsec_TOPSECRET");
    assert!(!format!("{rule:?}").contains("TOPSECRET"));
}

#[test]
fn recognition_names_senders_and_their_event_types_and_never_guesses() {
    let rec = |h: &[(&str, &str)], body: &str| {
        let h = hdrs(h);
        recognise(&RequestView::new("POST", "https://x/", &h, body.as_bytes()))
    };
    let r = rec(
        &[
            ("X-GitHub-Event", "pull_request"),
            ("X-GitHub-Delivery", "d-1"),
            ("X-Hub-Signature-256", "sha256=00"),
        ],
        r#"{"action":"opened"}"#,
    )
    .unwrap();
    assert_eq!(
        (r.provider, r.event.as_deref(), r.delivery_id.as_deref()),
        (Provider::Github, Some("pull_request.opened"), Some("d-1"))
    );
    let r = rec(&[("X-Shopify-Topic", "orders/create")], "{}").unwrap();
    assert_eq!(
        (r.provider, r.event.as_deref()),
        (Provider::Shopify, Some("orders/create"))
    );
    let r = rec(
        &[("Stripe-Signature", "t=1,v1=00")],
        r#"{"id":"evt_9","type":"charge.succeeded"}"#,
    )
    .unwrap();
    assert_eq!(
        (r.provider, r.event.as_deref(), r.delivery_id.as_deref()),
        (Provider::Stripe, Some("charge.succeeded"), Some("evt_9"))
    );
    let r = rec(
        &[("svix-id", "msg_1"), ("svix-signature", "v1,x")],
        r#"{"type":"user.created"}"#,
    )
    .unwrap();
    assert_eq!(
        (r.provider, r.delivery_id.as_deref()),
        (Provider::Svix, Some("msg_1"))
    );
    let r = rec(
        &[("webhook-id", "msg_2"), ("webhook-signature", "v1,x")],
        "{}",
    )
    .unwrap();
    assert_eq!(r.provider, Provider::StandardWebhooks);
    let r = rec(
        &[("X-Slack-Signature", "v0=00")],
        r#"{"type":"event_callback","event":{"type":"app_mention"}}"#,
    )
    .unwrap();
    assert_eq!(r.event.as_deref(), Some("app_mention"));
    let r = rec(
        &[
            ("User-Agent", "FinAegis-Webhook/1.0"),
            ("X-Webhook-Event", "transfer.completed"),
        ],
        "{}",
    )
    .unwrap();
    assert_eq!(
        (r.provider, r.event.as_deref()),
        (Provider::Finaegis, Some("transfer.completed"))
    );
    let r = rec(&[], r#"[{"partnerAppId":"1","eventId":"e1","eventType":"api","eventName":"consent_authorised"}]"#).unwrap();
    assert_eq!(
        (r.provider, r.event.as_deref(), r.delivery_id.as_deref()),
        (Provider::Klavi, Some("consent_authorised"), Some("e1"))
    );
    let r = rec(&[], r#"{"id":"evt_B","object":"event","created_at":"2020-01-30T12:44:55Z","type":"consent.created","data":{}}"#).unwrap();
    assert_eq!(
        (r.provider, r.event.as_deref()),
        (Provider::Finexer, Some("consent.created"))
    );
    let r = rec(
        &[],
        r#"{"id":"a","eventType":"newTransactions","userId":"u","payload":{}}"#,
    )
    .unwrap();
    assert_eq!(
        (r.provider, r.event.as_deref()),
        (Provider::Moneyhub, Some("newTransactions"))
    );

    // Unknown senders stay unknown.
    assert_eq!(rec(&[], r#"{"type":"x","id":"evt_1"}"#), None);
    assert_eq!(
        rec(
            &[],
            r#"{"id":"evt_1","object":"event","created":1,"type":"charge.succeeded"}"#
        ),
        None
    );
    assert_eq!(rec(&[("X-Webhook-Signature", "00")], "{}"), None);
    assert_eq!(rec(&[("Content-Type", "application/jwt")], "a.b.c"), None);
    assert_eq!(rec(&[], "[1,2]"), None);
}

#[test]
fn every_provider_id_round_trips_and_unknown_lists_the_known() {
    for p in Provider::ALL {
        assert_eq!(Provider::from_id(p.id()), Ok(p));
    }
    let err = Provider::from_id("strype").unwrap_err();
    assert!(
        err.starts_with("unknown provider `strype` (known: standard-webhooks, svix, stripe"),
        "{err}"
    );
    assert!(err.ends_with("klavi, finaegis)"), "{err}");
    assert_eq!(Provider::Moneyhub.timeout(), Some(Duration::from_secs(5)));
    assert_eq!(Provider::Moneyhub.retries(), Some(false));
}

#[test]
fn templates_parse_placeholders_and_reject_unknown_ones() {
    use super::hmac::{Piece, Template};
    assert_eq!(
        Template::parse("v0:{timestamp}:{body}").unwrap().0,
        vec![
            Piece::Literal("v0:".into()),
            Piece::Timestamp,
            Piece::Literal(":".into()),
            Piece::Body
        ]
    );
    assert!(Template::parse("{bdy}")
        .unwrap_err()
        .contains("unknown placeholder `{bdy}`"));
    assert!(Template::parse("{body").unwrap_err().contains("unclosed"));
}

/// The recognition this module replaced, which parsed each body into a
/// `serde_json::Value`: the oracle the targeted parse is checked against.
mod value_oracle {
    use serde_json::Value;

    use crate::verify::asym::jwt_payload;
    use crate::verify::{Provider, RequestView};

    /// A JWT body's claims, parsed whole.
    fn jwt_claims(body: &[u8]) -> Option<Value> {
        serde_json::from_slice(&jwt_payload(body)?).ok()
    }

    /// The sender of `req`, or `None` when no sender's mark is on it.
    pub(super) fn recognise(req: &RequestView<'_>) -> Option<crate::verify::Recognised> {
        let provider = provider_of(req)?;
        let body = if req.content_type().as_deref() == Some("application/jwt") {
            jwt_claims(req.body)
        } else {
            serde_json::from_slice::<Value>(req.body).ok()
        };
        Some(crate::verify::Recognised {
            provider,
            event: event_of(provider, req, body.as_ref()),
            delivery_id: delivery_of(provider, req, body.as_ref()),
        })
    }

    pub(super) fn provider_of(req: &RequestView<'_>) -> Option<Provider> {
        let has = |h: &str| req.header(h).is_some();
        let by_header = [
            ("Stripe-Signature", Provider::Stripe),
            ("X-GitHub-Event", Provider::Github),
            ("svix-id", Provider::Svix),
            ("X-Shopify-Topic", Provider::Shopify),
            ("X-Shopify-Hmac-Sha256", Provider::Shopify),
            ("X-Slack-Signature", Provider::Slack),
            ("x-square-hmacsha256-signature", Provider::Square),
            ("Paddle-Signature", Provider::Paddle),
            ("X-Twilio-Email-Event-Webhook-Signature", Provider::Sendgrid),
            ("X-Twilio-Signature", Provider::Twilio),
            ("x-zm-signature", Provider::Zoom),
            ("Twitch-Eventsub-Message-Signature", Provider::Twitch),
            ("X-Signature-Ed25519", Provider::Discord),
            ("BridgeApi-Signature", Provider::Bridge),
            ("X-Klavi-Signature", Provider::Klavi),
        ];
        if let Some((_, p)) = by_header.iter().find(|(h, _)| has(h)) {
            return Some(*p);
        }
        if has("webhook-id") && has("webhook-signature") {
            return Some(Provider::StandardWebhooks);
        }
        if req
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("FinAegis-Webhook"))
        {
            return Some(Provider::Finaegis);
        }
        if req.content_type().as_deref() == Some("application/jwt") {
            let claims = jwt_claims(req.body)?;
            let moneyhub = claims
                .get("events")
                .and_then(Value::as_object)
                .is_some_and(|e| e.keys().any(|k| k.starts_with("urn:com:moneyhub:")))
                || claims
                    .get("iss")
                    .and_then(Value::as_str)
                    .is_some_and(|i| i.contains("moneyhub"));
            return moneyhub.then_some(Provider::Moneyhub);
        }
        let body: Value = serde_json::from_slice(req.body).ok()?;
        body_shape(&body)
    }

    /// Senders that sign nothing in headers, told apart by the body shape their
    /// documents show (`shared/providers/`).
    fn body_shape(body: &Value) -> Option<Provider> {
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        if let Some(first) = body.as_array().and_then(|a| a.first()) {
            let klavi = first.get("partnerAppId").is_some() && first.get("eventName").is_some();
            return klavi.then_some(Provider::Klavi);
        }
        // Finexer: an event object like Stripe's but with `created_at` text
        // and `evt_` ids; Stripe's has a numeric `created` and a signature header.
        if s(body, "object").as_deref() == Some("event")
            && s(body, "id").is_some_and(|i| i.starts_with("evt_"))
            && body.get("created_at").is_some_and(Value::is_string)
            && body.get("type").is_some()
        {
            return Some(Provider::Finexer);
        }
        // Moneyhub's JSON format: exactly its four documented fields.
        if let Some(o) = body.as_object() {
            if o.len() == 4
                && ["id", "eventType", "userId", "payload"]
                    .iter()
                    .all(|k| o.contains_key(*k))
            {
                return Some(Provider::Moneyhub);
            }
        }
        None
    }

    fn event_of(p: Provider, req: &RequestView<'_>, body: Option<&Value>) -> Option<String> {
        let field = |path: &[&str]| {
            let mut v = body?;
            for k in path {
                v = v.get(*k)?;
            }
            v.as_str().map(str::to_string)
        };
        match p {
            Provider::Github => {
                let event = req.header("X-GitHub-Event")?.to_string();
                Some(match field(&["action"]) {
                    Some(action) => format!("{event}.{action}"),
                    None => event,
                })
            }
            Provider::Shopify => req.header("X-Shopify-Topic").map(str::to_string),
            Provider::Twitch => req
                .header("Twitch-Eventsub-Subscription-Type")
                .map(str::to_string),
            Provider::Slack => field(&["event", "type"]).or_else(|| field(&["type"])),
            Provider::Paddle => field(&["event_type"]),
            Provider::Zoom => field(&["event"]),
            Provider::Sendgrid => body?
                .as_array()?
                .first()?
                .get("event")?
                .as_str()
                .map(str::to_string),
            Provider::Klavi => body?
                .as_array()?
                .first()?
                .get("eventName")?
                .as_str()
                .map(str::to_string),
            Provider::Moneyhub => field(&["eventType"])
                .or_else(|| body?.get("events")?.as_object()?.keys().next().cloned()),
            Provider::Finaegis => req
                .header("X-Webhook-Event")
                .map(str::to_string)
                .or_else(|| field(&["event"]))
                .or_else(|| field(&["type"])),
            Provider::Twilio | Provider::Discord => None,
            _ => field(&["type"]),
        }
    }

    fn delivery_of(p: Provider, req: &RequestView<'_>, body: Option<&Value>) -> Option<String> {
        let header = |h: &str| req.header(h).map(str::to_string);
        let field = |k: &str| {
            let v = body?.get(k)?;
            v.as_str()
                .map(str::to_string)
                .or_else(|| v.as_i64().map(|n| n.to_string()))
        };
        match p {
            Provider::Github => header("X-GitHub-Delivery"),
            Provider::Svix => header("svix-id"),
            Provider::StandardWebhooks => header("webhook-id"),
            Provider::Shopify => {
                header("X-Shopify-Event-Id").or_else(|| header("X-Shopify-Webhook-Id"))
            }
            Provider::Twitch => header("Twitch-Eventsub-Message-Id"),
            Provider::Finaegis => header("X-Webhook-ID"),
            Provider::Slack => field("event_id"),
            Provider::Square | Provider::Paddle => field("event_id"),
            Provider::Klavi => body?
                .as_array()?
                .first()?
                .get("eventId")?
                .as_str()
                .map(str::to_string),
            Provider::Moneyhub => field("id").or_else(|| field("jti")),
            Provider::Stripe | Provider::Finexer => field("id"),
            _ => None,
        }
    }
}

#[test]
fn recognition_reads_bodies_as_the_value_parse_did() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwt = |claims: &str| {
        format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims)
        )
    };
    let many_fields: String = {
        let fields: Vec<String> = (0..60).map(|n| format!(r#""k{n}":"value {n}""#)).collect();
        format!(
            r#"{{"id":"evt_1","object":"event","type":"invoice.paid","created":1,"data":{{"object":{{{}}}}}}}"#,
            fields.join(",")
        )
    };
    let mut bodies: Vec<Vec<u8>> = [
        "",
        "{}",
        "[]",
        "null",
        "3",
        r#""text""#,
        "not json",
        r#"{"type":"a"} trailing"#,
        r#"{"type":"a"}  "#,
        r#"{"type":"a","type":"b"}"#,
        r#"{"type":null}"#,
        r#"{"type":7}"#,
        r#"{"type":{"type":"inner"}}"#,
        r#"{"action":"opened","type":"x"}"#,
        r#"{"event":{"type":"message","id":"e"},"type":"event_callback","event_id":"Ev1"}"#,
        r#"{"event":"meeting.started","event_id":42}"#,
        r#"{"event_type":"transaction.completed","event_id":"evt_01"}"#,
        r#"{"event_id":18446744073709551615}"#,
        r#"{"event_id":-5}"#,
        r#"{"event_id":1.5}"#,
        r#"{"id":"evt_1","object":"event","created_at":"2024-01-01T00:00:00Z","type":"payment.succeeded"}"#,
        r#"{"id":"evt_1","object":"event","created_at":1700000000,"type":"payment.succeeded"}"#,
        r#"{"id":"x_1","object":"event","created_at":"t","type":"p"}"#,
        r#"{"id":"evt_1","object":"event","created_at":"t"}"#,
        r#"{"id":"m1","eventType":"payment.completed","userId":"u","payload":{}}"#,
        r#"{"id":"m1","eventType":"payment.completed","userId":"u","payload":{},"extra":1}"#,
        r#"{"id":"m1","eventType":"p","userId":"u","payload":{},"type":"t"}"#,
        r#"{"id":"m","eventType":"p","userId":"u","payload":{"x":"\ud800"}}"#,
        r#"{"id":"evt_1","x":"\ud800"}"#,
        r#"{"id":"evt_1","x":"\ud83d\ude00 \u00e9"}"#,
        r#"{"id":"evt_1","x":1e400}"#,
        r#"{"id":"evt_1","x":-1e-400,"y":1.7976931348623157e308}"#,
        r#"{"id":"m1","eventType":"p","userId":"u","payload":{},"id":"m2"}"#,
        r#"{"id":"m1","eventType":"p","userId":"u"}"#,
        r#"{"id":7,"eventType":"p","userId":"u","payload":null}"#,
        r#"{"jti":"j1","events":{"urn:com:moneyhub:events:b":{},"urn:com:moneyhub:events:a":{}}}"#,
        r#"{"jti":5,"iss":"https://identity.moneyhub.co.uk","events":{"zz":1,"aa":2}}"#,
        r#"{"iss":"other","events":{"urn:other":{}}}"#,
        r#"{"events":[]}"#,
        r#"[{"partnerAppId":"p","eventName":"link created","eventId":"k1"}]"#,
        r#"[{"partnerAppId":null,"eventName":null}]"#,
        r#"[{"eventName":"x"}]"#,
        r#"[{"event":"delivered","sg_event_id":"s"},{"event":"open"}]"#,
        r#"[1,{"partnerAppId":"p","eventName":"n"}]"#,
        r#"[[{"partnerAppId":"p","eventName":"n"}]]"#,
        r#"{"ty\u0070e":"escaped.key","\u0069d":"evt_esc"}"#,
        r#"[{"partner\u0041ppId":"p","eventName":"n"}]"#,
        r#"{"id":"evt_1","object":"event","created\u005fat":"t","type":"p"}"#,
        r#"{"id":"m1","eventType":"p","user\u0049d":"u","payload":{}}"#,
        r#"{"type":"caf\u00e9 \"quoted\""}"#,
        r#"{"data":{"object":{"type":"deep","id":"deep"}},"type":"top"}"#,
        r#"{"type":"a","nested":[{"type":"b"}],"more":{"x":[1,2,{"y":null}]}}"#,
    ]
    .iter()
    .map(|b| b.as_bytes().to_vec())
    .collect();
    bodies.push(many_fields.into_bytes());
    bodies.push(b"{\"type\":\"ok\",\"bad\":\"\xff\xfe\"}".to_vec());
    bodies.push(b"{\"type\":\"ok\",\"ctl\":\"a\x01b\"}".to_vec());
    bodies.push(format!("{}1{}", "[".repeat(200), "]".repeat(200)).into_bytes());
    for depth in [126, 127, 128, 200] {
        let deep = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        bodies.push(format!(r#"{{"id":"evt_1","x":{deep}}}"#).into_bytes());
        bodies.push(format!(r#"{{"id":"evt_1","x":{{"y":{deep}}}}}"#).into_bytes());
        bodies.push(format!(r#"[{{"partnerAppId":"p","eventName":"n","x":{deep}}}]"#).into_bytes());
    }
    bodies.push(
        format!(
            r#"{{"type":"t","x":{}1{}}}"#,
            "[".repeat(126),
            "]".repeat(126)
        )
        .into_bytes(),
    );
    for claims in [
        r#"{"events":{"urn:com:moneyhub:events:payment-completed":{}},"jti":"j"}"#,
        r#"{"events":{"urn:com:moneyhub:events:b":{},"urn:com:moneyhub:events:a":{}},"jti":7}"#,
        r#"{"iss":"moneyhub","eventType":"x","id":3}"#,
        r#"{"iss":"elsewhere","events":{"b":{},"a":{}}}"#,
        "[]",
        "not json",
    ] {
        bodies.push(jwt(claims).into_bytes());
    }

    let marks: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("Content-Type", "application/json")],
        vec![("Content-Type", "application/jwt")],
        vec![("Content-Type", " Application/JWT ; charset=utf-8")],
        vec![("Content-Type", "application/jwt+json")],
        vec![("Stripe-Signature", "t=1,v1=00")],
        vec![("X-GitHub-Event", "issues"), ("X-GitHub-Delivery", "d")],
        vec![("svix-id", "msg_1")],
        vec![
            ("X-Shopify-Topic", "orders/create"),
            ("X-Shopify-Event-Id", "s"),
        ],
        vec![("X-Slack-Signature", "v0=00")],
        vec![("x-square-hmacsha256-signature", "x")],
        vec![("Paddle-Signature", "ts=1;h1=00")],
        vec![("X-Twilio-Email-Event-Webhook-Signature", "x")],
        vec![("X-Twilio-Signature", "x")],
        vec![("x-zm-signature", "v0=00")],
        vec![("Twitch-Eventsub-Message-Signature", "sha256=00")],
        vec![("X-Signature-Ed25519", "00")],
        vec![("BridgeApi-Signature", "v1=00")],
        vec![("X-Klavi-Signature", "00")],
        vec![("webhook-id", "msg_2"), ("webhook-signature", "v1,x")],
        vec![
            ("User-Agent", "FinAegis-Webhook/1.0"),
            ("X-Webhook-ID", "f"),
        ],
    ];
    let mut compared = 0;
    for mark in &marks {
        let h = hdrs(mark);
        for body in &bodies {
            let req = RequestView::new("POST", "https://x/", &h, body);
            assert_eq!(
                recognise(&req),
                value_oracle::recognise(&req),
                "headers {mark:?}, body {}",
                String::from_utf8_lossy(body)
            );
            compared += 1;
        }
    }
    assert_eq!(compared, marks.len() * bodies.len());
}

/// Recognition finds a sender by its headers in one pass; it must name the
/// sender the search for each name did (`value_oracle::provider_of`), kept
/// as received (lower-case names) or as owned pairs in any case, with two
/// senders' headers, repeated names, values that are not UTF-8, and names
/// that only nearly match.
#[test]
fn recognition_by_headers_names_the_sender_a_search_per_name_did() {
    use crate::capture::Headers;
    const NOT_UTF8: &str = "\u{fffd}";
    let sets: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("content-type", "application/json"), ("x-other", "1")],
        vec![("Stripe-Signature", "t=1"), ("X-GitHub-Event", "push")],
        vec![("X-GitHub-Event", "push"), ("Stripe-Signature", "t=1")],
        vec![("x-klavi-signature", "k"), ("svix-id", "m")],
        vec![("X-SHOPIFY-HMAC-SHA256", "h"), ("x-slack-signature", "v0")],
        vec![("Stripe-Signature", NOT_UTF8), ("X-GitHub-Event", "push")],
        vec![("Stripe-Signature", NOT_UTF8), ("stripe-signature", "t=1")],
        vec![("stripe-signature", "t=1"), ("Stripe-Signature", NOT_UTF8)],
        vec![("webhook-id", "msg"), ("webhook-signature", "v1,x")],
        vec![("Webhook-Signature", "v1,x"), ("WEBHOOK-ID", "msg")],
        vec![("webhook-id", "msg")],
        vec![("webhook-id", NOT_UTF8), ("webhook-signature", "v1,x")],
        vec![
            ("webhook-id", "m"),
            ("webhook-signature", "s"),
            ("svix-id", "x"),
        ],
        vec![("User-Agent", "FinAegis-Webhook/2")],
        vec![
            ("user-agent", "curl/8"),
            ("User-Agent", "FinAegis-Webhook/2"),
        ],
        vec![("User-Agent", "FinAegis-Webhook/2"), ("webhook-id", "m")],
        vec![
            ("User-Agent", "FinAegis-Webhook/2"),
            ("webhook-id", "m"),
            ("webhook-signature", "s"),
        ],
        vec![
            ("user-agent", NOT_UTF8),
            ("User-Agent", "FinAegis-Webhook/2"),
        ],
        vec![
            ("stripe-signaturex", "t"),
            ("x-stripe-signature", "t"),
            ("stripe", "t"),
        ],
        vec![("X-Twilio-Email-Event-Webhook-Signature-Long", "x")],
        vec![
            ("X-Twilio-Email-Event-Webhook-Signature", "x"),
            ("X-Twilio-Signature", "y"),
        ],
        vec![
            ("X-Twilio-Signature", "y"),
            ("X-Twilio-Email-Event-Webhook-Signature", "x"),
        ],
        vec![
            ("x-zm-signature", "v0"),
            ("Twitch-Eventsub-Message-Signature", "s"),
        ],
        vec![("X-Signature-Ed25519", "00"), ("BridgeApi-Signature", "v1")],
        vec![
            ("Paddle-Signature", "ts"),
            ("x-square-hmacsha256-signature", "s"),
        ],
        vec![
            ("X-Shopify-Topic", "orders/create"),
            ("X-Shopify-Hmac-Sha256", "h"),
        ],
    ];
    // The marker stands for a value that is not UTF-8 (\xff\xfe).
    let bytes = |v: &str| -> Vec<u8> {
        if v == NOT_UTF8 {
            b"\xff\xfe".to_vec()
        } else {
            v.as_bytes().to_vec()
        }
    };
    // Every ordered pair of two marks' headers: each rank against each.
    const NAMES: [&str; 18] = [
        "Stripe-Signature",
        "X-GitHub-Event",
        "svix-id",
        "X-Shopify-Topic",
        "X-Shopify-Hmac-Sha256",
        "X-Slack-Signature",
        "x-square-hmacsha256-signature",
        "Paddle-Signature",
        "X-Twilio-Email-Event-Webhook-Signature",
        "X-Twilio-Signature",
        "x-zm-signature",
        "Twitch-Eventsub-Message-Signature",
        "X-Signature-Ed25519",
        "BridgeApi-Signature",
        "X-Klavi-Signature",
        "webhook-id",
        "webhook-signature",
        "User-Agent",
    ];
    let mut sets = sets;
    for a in NAMES {
        for b in NAMES.into_iter().filter(|b| *b != a) {
            sets.push(vec![(a, "FinAegis-Webhook/1"), (b, "FinAegis-Webhook/1")]);
        }
    }
    // Not ASCII, so no mark, in any case.
    sets.push(vec![
        ("STRIPE-SIGNATUR\u{c9}", "t"),
        ("stripe-signatur\u{e9}", "t"),
    ]);
    let mut compared = 0;
    for set in &sets {
        let owned: Vec<Header> = set.iter().map(|(n, v)| (n.to_string(), bytes(v))).collect();
        let mut received = Headers::received(set.len(), 64);
        for (n, v) in set {
            // An HTTP header name is ASCII: only owned lists hold others.
            if let Ok(name) = http::HeaderName::from_bytes(n.as_bytes()) {
                received.push(&name, &bytes(v));
            }
        }
        for body in [&b"{}"[..], br#"{"type":"t","id":"evt_1"}"#] {
            for req in [
                RequestView::new("POST", "https://x/", &owned, body),
                RequestView::new("POST", "https://x/", &received, body),
            ] {
                assert_eq!(
                    recognise(&req).map(|r| r.provider),
                    value_oracle::provider_of(&req),
                    "headers {set:?}"
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, sets.len() * 4);
    assert!(sets.len() > 300, "{} sets", sets.len());
}

/// `check_unconfigured` answers as `check` does with the provider's preset
/// rule (which it stands in for on the recorder's path): every provider,
/// with and without a relay body hash, matching or not (the hash must not
/// change what `check` says of a rule with no secret).
#[test]
fn an_unconfigured_sender_is_judged_as_its_preset_rule_would_be() {
    use crate::capture::model::BodyDigest;
    let body = br#"{"id":"evt_1","type":"invoice.paid"}"#;
    let headers = hdrs(&[("content-type", "application/json")]);
    let hashes = [
        None,
        Some(BodyDigest::Blake3(*blake3::hash(body).as_bytes())),
        Some(BodyDigest::Blake3(*blake3::hash(b"other").as_bytes())),
    ];
    for provider in Provider::ALL {
        assert_eq!(
            provider.scheme_name(),
            provider.scheme().name(),
            "{provider}"
        );
        for relay_body in hashes {
            let mut req = RequestView::new("POST", "https://relay/t/x/hook", &headers, body);
            req.relay_body = relay_body;
            let preset = check(&Rule::for_provider(provider), &req, at(1_700_000_000));
            assert_eq!(
                Some(check_unconfigured(provider)),
                preset,
                "{provider} {relay_body:?}"
            );
        }
    }
}
