//! The webhook rules in force for one agent (the `[[webhook]]` rules by path
//! prefix, and recognition when none matches), and judging one recorded
//! request by them: provider, delivery id, event type and signature verdict.
//! Pure: the caller hands in the body bytes and the public URL.

use std::time::SystemTime;

use super::{check, check_unconfigured, recognise, Recognised, RequestView, Rule};
use crate::capture::model::{SignatureCheck, WebhookInfo};

/// `[[webhook]]` rules, each for a path prefix below the tunnel.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<(String, Rule)>,
}

/// What [`Rules::judge`] found out about one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judgement {
    /// Provider, delivery id and signature check, as stored.
    pub webhook: WebhookInfo,
    /// The event type from the provider's own place for it, when recognised.
    pub event: Option<String>,
}

impl Rules {
    /// Rules from `(path prefix, rule)` pairs; the longest matching prefix wins.
    pub fn new(rules: impl IntoIterator<Item = (String, Rule)>) -> Self {
        Self {
            rules: rules.into_iter().collect(),
        }
    }

    /// Whether there are no rules (recognition still applies).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule with the longest prefix covering `path` (query ignored).
    pub fn for_path(&self, path: &str) -> Option<&Rule> {
        self.rules
            .iter()
            .filter(|(prefix, _)| crate::config::prefix_matches(prefix, path))
            .max_by_key(|(prefix, _)| prefix.trim_end_matches('/').len())
            .map(|(_, rule)| rule)
    }

    /// The rule that applies to a request to `path`: the configured one,
    /// else the recognised sender's preset (no secret: `unchecked`).
    pub fn rule_for(&self, path: &str, req: &RequestView<'_>) -> Option<Rule> {
        match self.for_path(path) {
            Some(rule) => Some(rule.clone()),
            None => recognise(req).map(|r| Rule::for_provider(r.provider)),
        }
    }

    /// Judges `req` (sent to `path` below the tunnel) as of `now` (when it
    /// arrived). Reads the bytes; never rewrites them.
    pub fn judge(&self, path: &str, req: &RequestView<'_>, now: SystemTime) -> Judgement {
        let recognised: Option<Recognised> = recognise(req);
        let rule = self.for_path(path);
        let checked = match (rule, &recognised) {
            (Some(rule), _) => check(rule, req, now),
            (None, Some(r)) => Some(check_unconfigured(r.provider)),
            (None, None) => None,
        };
        // The provider a rule names wins over a guess; ids and event types
        // are read only from a sender that was recognised as that provider.
        let provider = checked
            .as_ref()
            .and_then(|c| c.provider)
            .or(recognised.as_ref().map(|r| r.provider));
        let same_sender = recognised.filter(|r| Some(r.provider) == provider);
        Judgement {
            webhook: WebhookInfo {
                provider: provider.map(|p| p.id().to_string()),
                delivery_id: same_sender.as_ref().and_then(|r| r.delivery_id.clone()),
                signature: checked.map(|c| SignatureCheck {
                    scheme: c.scheme.to_string(),
                    verdict: c.verdict,
                    reason: c.reason.map(|r| r.to_string()),
                }),
                // The rule's own `timeout =` wins over the provider's.
                sender_timeout_ms: rule
                    .and_then(|r| r.timeout)
                    .or(provider.and_then(super::Provider::timeout))
                    .map(|t| t.as_millis() as u64),
            },
            event: same_sender.and_then(|r| r.event),
        }
    }
}

/// The URL a sender posted to for `path` below the tunnel: the tunnel's
/// public URL when known, else rebuilt from the recorded `Host` and
/// `X-Forwarded-Proto` headers.
///
/// Built by concatenation, not `format!`: the recorder calls this for every
/// exchange, and the formatting machinery cost ~0.9k instructions a call
/// (0.17k now).
pub fn public_url_for(public_base: Option<&str>, req: &RequestView<'_>, path: &str) -> String {
    let parts: [&str; 3] = match public_base {
        Some(base) => [base.trim_end_matches('/'), "", ""],
        None => [
            req.header("x-forwarded-proto").unwrap_or("http"),
            "://",
            req.header("host").unwrap_or("localhost"),
        ],
    };
    let mut url = String::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + path.len());
    for p in parts {
        url.push_str(p);
    }
    url.push_str(path);
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{Provider, Verdict};
    use std::time::{Duration, UNIX_EPOCH};

    fn stripe_headers(sig: &str) -> Vec<(String, Vec<u8>)> {
        vec![
            ("content-type".into(), b"application/json".to_vec()),
            ("stripe-signature".into(), sig.as_bytes().to_vec()),
        ]
    }

    #[test]
    fn longest_prefix_wins_and_recognition_fills_in() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let body = br#"{"id":"evt_1","type":"charge.succeeded"}"#;
        let url = "http://relay/t/x/webhooks/stripe";
        let unsigned_view = RequestView::new("POST", url, &[], body);
        let rule = Rule::for_provider(Provider::Stripe).with_secret("whsec_test");
        let signed = crate::verify::sign(&rule, &unsigned_view, now).unwrap();
        let sig = &signed
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("stripe-signature"))
            .unwrap()
            .1;
        let headers = stripe_headers(sig);
        let view = RequestView::new("POST", url, &headers, body);
        let rules = Rules::new([
            ("/webhooks".into(), Rule::for_provider(Provider::Github)),
            ("/webhooks/stripe".into(), rule),
        ]);
        let j = rules.judge("/webhooks/stripe?x=1", &view, now);
        assert_eq!(j.webhook.provider.as_deref(), Some("stripe"));
        assert_eq!(j.webhook.delivery_id.as_deref(), Some("evt_1"));
        assert_eq!(j.event.as_deref(), Some("charge.succeeded"));
        let sig = j.webhook.signature.unwrap();
        assert_eq!(sig.verdict, Verdict::Valid, "{:?}", sig.reason);

        // No rule for the path: recognised, nothing to check with.
        let j = Rules::default().judge("/other", &view, now);
        let sig = j.webhook.signature.unwrap();
        assert_eq!(sig.verdict, Verdict::Unchecked);
        assert_eq!(j.webhook.provider.as_deref(), Some("stripe"));

        // Nobody's mark: nothing guessed.
        let plain = RequestView::new("POST", url, &[], b"{\"type\":\"x\"}");
        assert_eq!(
            Rules::default().judge("/other", &plain, now),
            Judgement::default()
        );
    }

    #[test]
    fn public_url_prefers_the_tunnel_url() {
        let h = vec![
            ("host".to_string(), b"hooks.example.com".to_vec()),
            ("x-forwarded-proto".to_string(), b"https".to_vec()),
        ];
        let v = RequestView::new("POST", "", &h, b"");
        assert_eq!(
            public_url_for(Some("http://127.0.0.1:8787/t/a/"), &v, "/p?q=1"),
            "http://127.0.0.1:8787/t/a/p?q=1"
        );
        assert_eq!(
            public_url_for(None, &v, "/p"),
            "https://hooks.example.com/p"
        );
    }
}
