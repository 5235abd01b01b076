//! Naming the sender from the request alone, and reading the event type and
//! delivery id from the sender's own place for them. Each rule needs a mark
//! only that sender leaves (a header of its own, or a body shape its
//! documents show); anything else stays unrecognised rather than guessed.

use serde_json::Value;

use super::asym::jwt_claims;
use super::{Provider, RequestView};

/// A recognised sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recognised {
    /// Who sent it.
    pub provider: Provider,
    /// The event type, from the provider's own place for it.
    pub event: Option<String>,
    /// The provider's delivery/event id: retries of one delivery share it.
    pub delivery_id: Option<String>,
}

/// The sender of `req`, or `None` when no sender's mark is on it.
pub fn recognise(req: &RequestView<'_>) -> Option<Recognised> {
    let provider = provider_of(req)?;
    let body = if req.content_type().as_deref() == Some("application/jwt") {
        jwt_claims(req.body)
    } else {
        serde_json::from_slice::<Value>(req.body).ok()
    };
    Some(Recognised {
        provider,
        event: event_of(provider, req, body.as_ref()),
        delivery_id: delivery_of(provider, req, body.as_ref()),
    })
}

fn provider_of(req: &RequestView<'_>) -> Option<Provider> {
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
