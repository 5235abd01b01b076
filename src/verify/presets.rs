//! The provider ids of the contract and what each one means: its scheme
//! (for symmetric senders, an [`HmacSpec`] value: data, not code) and the
//! sender's own timeout. Sources for every timeout and tolerance are in
//! `docs/providers.md`.

use std::fmt;
use std::time::Duration;

use super::hmac::{Algorithm, Encoding, HmacSpec, Piece, SecretFormat, Template, TimestampFormat};
use super::Scheme;

/// A provider id of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    StandardWebhooks,
    /// Svix (`svix-id`, `svix-timestamp`, `svix-signature`).
    Svix,
    /// Stripe (`Stripe-Signature: t=...,v1=...`).
    Stripe,
    /// GitHub (`X-Hub-Signature-256: sha256=...`).
    Github,
    /// Shopify (`X-Shopify-Hmac-Sha256`, base64).
    Shopify,
    /// Slack (`X-Slack-Signature: v0=...`).
    Slack,
    /// Square (`x-square-hmacsha256-signature`, URL + body).
    Square,
    /// Paddle Billing (`Paddle-Signature: ts=...;h1=...`).
    Paddle,
    /// Twilio (`X-Twilio-Signature`, SHA-1 over URL + sorted form).
    Twilio,
    /// Zoom (`x-zm-signature: v0=...`).
    Zoom,
    /// Twitch EventSub (`Twitch-Eventsub-Message-Signature: sha256=...`).
    Twitch,
    /// SendGrid event webhook (ECDSA P-256), verification only.
    Sendgrid,
    /// Discord interactions (Ed25519), verification only.
    Discord,
    /// Finexer: a key in the query string.
    Finexer,
    /// Bridge API (`BridgeApi-Signature: v1=...`).
    Bridge,
    /// Moneyhub: JSON (unsigned) or JWT bodies (RS256 via JWKS).
    Moneyhub,
    /// Klavi (`X-Klavi-Signature`).
    Klavi,
    /// FinAegis (`X-Webhook-Signature`).
    Finaegis,
}

impl Provider {
    /// Every provider, in the contract's order.
    pub const ALL: [Provider; 18] = [
        Self::StandardWebhooks,
        Self::Svix,
        Self::Stripe,
        Self::Github,
        Self::Shopify,
        Self::Slack,
        Self::Square,
        Self::Paddle,
        Self::Twilio,
        Self::Zoom,
        Self::Twitch,
        Self::Sendgrid,
        Self::Discord,
        Self::Finexer,
        Self::Bridge,
        Self::Moneyhub,
        Self::Klavi,
        Self::Finaegis,
    ];

    /// The contract id (`stripe`, `standard-webhooks`, ...).
    pub fn id(self) -> &'static str {
        match self {
            Self::StandardWebhooks => "standard-webhooks",
            Self::Svix => "svix",
            Self::Stripe => "stripe",
            Self::Github => "github",
            Self::Shopify => "shopify",
            Self::Slack => "slack",
            Self::Square => "square",
            Self::Paddle => "paddle",
            Self::Twilio => "twilio",
            Self::Zoom => "zoom",
            Self::Twitch => "twitch",
            Self::Sendgrid => "sendgrid",
            Self::Discord => "discord",
            Self::Finexer => "finexer",
            Self::Bridge => "bridge",
            Self::Moneyhub => "moneyhub",
            Self::Klavi => "klavi",
            Self::Finaegis => "finaegis",
        }
    }

    /// The provider with id `id`, or an error listing the known ones.
    pub fn from_id(id: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|p| p.id() == id).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|p| p.id()).collect();
            format!("unknown provider `{id}` (known: {})", known.join(", "))
        })
    }

    /// How long the sender waits for an answer before it gives up (and
    /// retries or drops the event), when the provider publishes it.
    pub fn timeout(self) -> Option<Duration> {
        let secs = match self {
            Self::Github => 10,
            Self::Shopify => 5,
            Self::Slack => 3,
            Self::Twilio => 15,
            Self::Zoom => 3,
            Self::Discord => 3,
            Self::Paddle => 5,
            Self::Svix => 15,
            Self::Moneyhub => 5,
            _ => return None,
        };
        Some(Duration::from_secs(secs))
    }

    /// Whether the sender tries again after a failure or a timeout.
    pub fn retries(self) -> Option<bool> {
        match self {
            // GitHub redelivers only when asked to.
            Self::Moneyhub | Self::Github => Some(false),
            Self::Stripe
            | Self::Shopify
            | Self::Slack
            | Self::Svix
            | Self::StandardWebhooks
            | Self::Bridge
            | Self::Finaegis
            | Self::Paddle
            | Self::Square
            | Self::Sendgrid => Some(true),
            _ => None,
        }
    }

    /// The preset: the scheme with this sender's values.
    pub fn scheme(self) -> Scheme {
        let minutes = |m: u64| Some(Duration::from_secs(m * 60));
        let spec = match self {
            Self::StandardWebhooks | Self::Svix => {
                let h = if self == Self::Svix {
                    "svix"
                } else {
                    "webhook"
                };
                HmacSpec {
                    header: format!("{h}-signature"),
                    prefix: "v1,".into(),
                    separator: Some(' '),
                    timestamp_key: None,
                    signed: template("{id}.{timestamp}.{body}"),
                    timestamp_header: Some(format!("{h}-timestamp")),
                    timestamp_format: TimestampFormat::UnixSeconds,
                    id_header: Some(format!("{h}-id")),
                    algorithm: Algorithm::Sha256,
                    encoding: Encoding::Base64,
                    secret_format: SecretFormat::WhsecBase64,
                    tolerance: minutes(5),
                    legacy: None,
                    body_hash_param: None,
                }
            }
            Self::Stripe => HmacSpec {
                separator: Some(','),
                timestamp_key: Some("t=".into()),
                signed: template("{timestamp}.{body}"),
                tolerance: minutes(5),
                ..HmacSpec::body_hex_sha256("Stripe-Signature", "v1=")
            },
            Self::Github => HmacSpec {
                legacy: Some(Box::new(HmacSpec {
                    algorithm: Algorithm::Sha1,
                    ..HmacSpec::body_hex_sha256("X-Hub-Signature", "sha1=")
                })),
                ..HmacSpec::body_hex_sha256("X-Hub-Signature-256", "sha256=")
            },
            Self::Shopify => HmacSpec {
                encoding: Encoding::Base64,
                ..HmacSpec::body_hex_sha256("X-Shopify-Hmac-Sha256", "")
            },
            Self::Slack | Self::Zoom => {
                let (sig, ts) = if self == Self::Slack {
                    ("X-Slack-Signature", "X-Slack-Request-Timestamp")
                } else {
                    ("x-zm-signature", "x-zm-request-timestamp")
                };
                HmacSpec {
                    signed: template("v0:{timestamp}:{body}"),
                    timestamp_header: Some(ts.into()),
                    tolerance: if self == Self::Slack {
                        minutes(5)
                    } else {
                        None
                    },
                    ..HmacSpec::body_hex_sha256(sig, "v0=")
                }
            }
            Self::Square => HmacSpec {
                signed: template("{url}{body}"),
                encoding: Encoding::Base64,
                legacy: Some(Box::new(HmacSpec {
                    signed: template("{url}{body}"),
                    encoding: Encoding::Base64,
                    algorithm: Algorithm::Sha1,
                    ..HmacSpec::body_hex_sha256("x-square-signature", "")
                })),
                ..HmacSpec::body_hex_sha256("x-square-hmacsha256-signature", "")
            },
            Self::Paddle => HmacSpec {
                separator: Some(';'),
                timestamp_key: Some("ts=".into()),
                signed: template("{timestamp}:{body}"),
                tolerance: Some(Duration::from_secs(5)),
                ..HmacSpec::body_hex_sha256("Paddle-Signature", "h1=")
            },
            Self::Twilio => HmacSpec {
                signed: template("{url}{form}"),
                body_hash_param: Some("bodySHA256".into()),
                algorithm: Algorithm::Sha1,
                encoding: Encoding::Base64,
                ..HmacSpec::body_hex_sha256("X-Twilio-Signature", "")
            },
            Self::Twitch => HmacSpec {
                signed: template("{id}{timestamp}{body}"),
                timestamp_header: Some("Twitch-Eventsub-Message-Timestamp".into()),
                timestamp_format: TimestampFormat::Rfc3339,
                id_header: Some("Twitch-Eventsub-Message-Id".into()),
                tolerance: minutes(10),
                ..HmacSpec::body_hex_sha256("Twitch-Eventsub-Message-Signature", "sha256=")
            },
            Self::Bridge => HmacSpec {
                separator: Some(','),
                encoding: Encoding::HexUpper,
                ..HmacSpec::body_hex_sha256("BridgeApi-Signature", "v1=")
            },
            Self::Klavi => HmacSpec::body_hex_sha256("X-Klavi-Signature", ""),
            Self::Finaegis => HmacSpec::body_hex_sha256("X-Webhook-Signature", ""),
            Self::Sendgrid => return Scheme::Ecdsa,
            Self::Discord => return Scheme::Ed25519,
            Self::Moneyhub => return Scheme::Jwt,
            Self::Finexer => {
                return Scheme::QueryKey {
                    param: "key".into(),
                }
            }
        };
        Scheme::Hmac(spec)
    }

    /// The contract name of [`Provider::scheme`]'s scheme, without building
    /// the scheme (the recorder names it for every recognised exchange).
    pub fn scheme_name(self) -> &'static str {
        match self {
            Self::Sendgrid => "ecdsa",
            Self::Discord => "ed25519",
            Self::Moneyhub => "jwt",
            Self::Finexer => "query-key",
            Self::StandardWebhooks
            | Self::Svix
            | Self::Stripe
            | Self::Github
            | Self::Shopify
            | Self::Slack
            | Self::Zoom
            | Self::Square
            | Self::Paddle
            | Self::Twilio
            | Self::Twitch
            | Self::Bridge
            | Self::Klavi
            | Self::Finaegis => "hmac",
        }
    }
}

/// Preset templates are literals checked by the tests; a typo would show
/// as a body-only signature, never a panic.
fn template(s: &str) -> Template {
    Template::parse(s).unwrap_or_else(|_| Template(vec![Piece::Body]))
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}
