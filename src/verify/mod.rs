//! Webhook signatures: verified and explained, re-signed for replays, and
//! senders recognised without configuration. Pure code: no I/O here (a JWKS
//! file is read by [`crate::config`], a JWKS URL is fetched by the caller and
//! handed in with [`Rule::with_jwks`]).
//!
//! One generic HMAC scheme ([`hmac::HmacSpec`]) covers every symmetric
//! sender; the provider presets in [`presets`] are data over it. The
//! asymmetric schemes (SendGrid ECDSA, Discord Ed25519, JWT bodies) are
//! verification-only, in [`asym`].
//!
//! Entry points: [`check`] judges one request against a [`Rule`], [`sign`]
//! gives the headers that make an (edited) request verify again, and
//! [`recognise`] names the sender and its event type from the request alone.

pub mod asym;
pub mod hmac;
pub mod presets;
pub mod recognise;
pub mod rules;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

pub use presets::Provider;
pub use recognise::{recognise, Recognised};
pub use rules::{Judgement, Rules};

use crate::capture::model::BodyDigest;
use crate::capture::HeadersRef;

/// What [`check`] and [`sign`] read of a request. Nothing is copied or
/// rewritten: verification reads the bytes exactly as they arrived.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// The public URL the sender posted to (scheme, host, path, query).
    /// Square and Twilio sign it, so it must be the relay's public URL,
    /// never the local one.
    pub url: &'a str,
    /// Request headers in order.
    pub headers: HeadersRef<'a>,
    /// The body bytes the app got.
    pub body: &'a [u8],
    /// The relay's hash of the bytes it received, when it sent one: tells
    /// "the tunnel changed your body" apart from "wrong secret".
    pub relay_body: Option<BodyDigest>,
}

impl<'a> RequestView<'a> {
    /// A view with no relay body hash.
    pub fn new(
        method: &'a str,
        url: &'a str,
        headers: impl Into<HeadersRef<'a>>,
        body: &'a [u8],
    ) -> Self {
        Self {
            method,
            url,
            headers: headers.into(),
            body,
            relay_body: None,
        }
    }

    /// First value of header `name` (any case), when it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The media type of the body, lower case, without parameters.
    pub fn content_type(&self) -> Option<String> {
        self.header("content-type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
    }

    fn is_form(&self) -> bool {
        self.content_type().as_deref() == Some("application/x-www-form-urlencoded")
    }

    /// Value of query parameter `name` in [`Self::url`].
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.url.split_once('?')?.1;
        let query = query.split('#').next().unwrap_or_default();
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// `Some(true)` when the relay's body hash differs from the body here.
    /// Hashes the whole body (7.4k instructions for 1 KiB), so it is asked
    /// only to explain a signature that does not match.
    pub fn body_changed(&self) -> Option<bool> {
        Some(!self.relay_body?.matches(self.body))
    }
}

/// The contract's verdict strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The signature verifies (and its timestamp is within tolerance).
    Valid,
    /// A check failed; the [`Reason`] says which.
    Invalid,
    /// A rule expects a signature and none was sent.
    Unsigned,
    /// Recognised, but there is no secret or key to check with.
    Unchecked,
}

impl Verdict {
    /// The contract string: `valid`, `invalid`, `unsigned`, `unchecked`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Invalid => "invalid",
            Self::Unsigned => "unsigned",
            Self::Unchecked => "unchecked",
        }
    }
}

impl std::str::FromStr for Verdict {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Valid, Self::Invalid, Self::Unsigned, Self::Unchecked]
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("'{s}' is not a verdict (valid, invalid, unsigned, unchecked)"))
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which check failed (or why nothing was checked). Each variant is one
/// distinct check, so the reason tells the user what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A header the scheme needs is absent.
    MissingHeader {
        /// Its name.
        header: String,
    },
    /// The query parameter that carries the key is absent (Finexer).
    MissingQueryParam {
        /// Its name.
        param: String,
    },
    /// A header is there but cannot be read.
    MalformedHeader {
        /// Its name.
        header: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The body cannot be read as the scheme needs (a JWT body).
    MalformedBody {
        /// What is wrong with it.
        problem: String,
    },
    /// The signature verifies but its timestamp is too far from now.
    TimestampOutsideTolerance {
        /// Now minus the timestamp, in seconds: positive when the
        /// timestamp is in the past (a stale event or a late replay),
        /// negative when it is in the future (a clock ahead).
        age_secs: i64,
        /// The tolerance it exceeds.
        tolerance: Duration,
    },
    /// The signature does not match the bytes: a wrong secret, or the
    /// body changed.
    SignatureMismatch {
        /// Whether the bytes the relay received differ from the bytes the
        /// app got; `None` when the relay sent no body hash.
        body_changed: Option<bool>,
    },
    /// The signature over the URL verifies, but the body does not match the
    /// SHA-256 the signed URL carries for it (Twilio's `bodySHA256`).
    BodyHashMismatch {
        /// The query parameter with the hash.
        param: String,
        /// As in [`Reason::SignatureMismatch`].
        body_changed: Option<bool>,
    },
    /// No JWKS key has the token's `kid`.
    UnknownKey {
        /// The token's `kid`, if any.
        kid: Option<String>,
    },
    /// The configured secret or key cannot be used.
    BadSecret {
        /// What is wrong with it.
        problem: String,
    },
    /// Nothing to check with (verdict `unchecked`).
    NoSecret {
        /// What to configure.
        hint: String,
    },
    /// The sender's format carries no signature (verdict `unsigned`).
    NotSigned {
        /// Why.
        detail: String,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingHeader { header } => write!(f, "missing header {header}"),
            Self::MissingQueryParam { param } => {
                write!(f, "missing query parameter `{param}`")
            }
            Self::MalformedHeader { header, problem } => {
                write!(f, "malformed header {header}: {problem}")
            }
            Self::MalformedBody { problem } => write!(f, "malformed body: {problem}"),
            Self::TimestampOutsideTolerance {
                age_secs,
                tolerance,
            } => {
                let tol = short_duration(tolerance.as_secs());
                let beyond = short_duration(age_secs.unsigned_abs().saturating_sub(tolerance.as_secs()));
                let age = short_duration(age_secs.unsigned_abs());
                if *age_secs >= 0 {
                    write!(f, "timestamp outside tolerance: {age} old, {beyond} past the {tol} tolerance")
                } else {
                    write!(f, "timestamp outside tolerance: {age} in the future, {beyond} past the {tol} tolerance (clock ahead?)")
                }
            }
            Self::SignatureMismatch { body_changed } => match body_changed {
                Some(true) => write!(
                    f,
                    "signature mismatch: the body the app got differs from the bytes the relay received"
                ),
                Some(false) => write!(
                    f,
                    "signature mismatch: wrong secret, or the sender signed other bytes (the tunnel delivered the body unchanged)"
                ),
                None => write!(f, "signature mismatch: wrong secret, or the body changed"),
            },
            Self::BodyHashMismatch { param, body_changed } => {
                write!(f, "body hash mismatch: the body's SHA-256 is not the `{param}` in the signed URL")?;
                match body_changed {
                    Some(true) => write!(f, "; the body the app got differs from the bytes the relay received"),
                    Some(false) => write!(f, " (the tunnel delivered the body unchanged: the sender hashed other bytes)"),
                    None => write!(f, " (the body changed)"),
                }
            }
            Self::UnknownKey { kid: Some(kid) } => write!(f, "no JWKS key with kid `{kid}`"),
            Self::UnknownKey { kid: None } => write!(f, "no JWKS key fits the token"),
            Self::BadSecret { problem } => write!(f, "unusable secret: {problem}"),
            Self::NoSecret { hint } => write!(f, "not checked: {hint}"),
            Self::NotSigned { detail } => write!(f, "{detail}"),
        }
    }
}

/// `330` → `5m30s`.
fn short_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if s > 0 || out.is_empty() {
        out += &format!("{s}s");
    }
    out
}

/// How a provider authenticates, as the contract's `scheme` field says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// The generic HMAC scheme (every symmetric preset).
    Hmac(hmac::HmacSpec),
    /// A shared key in a query parameter, compared (Finexer).
    QueryKey {
        /// The parameter's name.
        param: String,
    },
    /// SendGrid: ECDSA P-256 over timestamp + body.
    Ecdsa,
    /// Discord: Ed25519 over timestamp + body.
    Ed25519,
    /// A JWT body: RS256/ES256 via JWKS, HS256 via the secret.
    Jwt,
}

impl Scheme {
    /// The contract's `scheme` string.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hmac(_) => "hmac",
            Self::QueryKey { .. } => "query-key",
            Self::Ecdsa => "ecdsa",
            Self::Ed25519 => "ed25519",
            Self::Jwt => "jwt",
        }
    }

    /// Whether [`sign`] can produce fresh credentials for this scheme.
    pub fn can_sign(&self) -> bool {
        matches!(self, Self::Hmac(_) | Self::QueryKey { .. })
    }
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself: for computing signatures, never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What to check a request against: a `[[webhook]]` rule resolved from the
/// config, or a recognised provider's preset.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The provider, when named or recognised.
    pub provider: Option<Provider>,
    /// The scheme; `None`: taken from the provider recognised per request.
    pub scheme: Option<Scheme>,
    /// The secret (HMAC key, query key, or the public key of an asymmetric
    /// scheme).
    pub secret: Option<Secret>,
    /// Why there is no secret (e.g. an environment variable not set).
    pub secret_hint: Option<String>,
    /// Overrides the preset's tolerance.
    pub tolerance: Option<Duration>,
    /// The sender's own timeout; the preset's when `None`.
    pub timeout: Option<Duration>,
    /// Keys for a JWT scheme.
    pub jwks: Option<jsonwebtoken::jwk::JwkSet>,
    /// Keys for a JWT scheme fetched from a `jwks` URL (by
    /// [`crate::jwks`]); used when [`Self::jwks`] is `None`.
    pub jwks_source: Option<Arc<dyn KeySource>>,
}

/// A JWKS that is fetched, not configured: the fetcher does the I/O, this
/// module only asks. Neither call may block.
pub trait KeySource: fmt::Debug + Send + Sync {
    /// The keys as last fetched, or a one-line reason why there are none
    /// yet (`jwks not fetched yet from …`, or the fetch error).
    fn keys(&self) -> Result<Arc<jsonwebtoken::jwk::JwkSet>, String>;
    /// A token named a key the JWKS lacks (keys rotate): fetch again in
    /// the background unless that was just done. True when a fetch started.
    fn unknown_kid(&self) -> bool;
}

impl Rule {
    /// A provider's preset with no secret: verdict `unchecked` until one is set.
    pub fn for_provider(provider: Provider) -> Self {
        Self {
            provider: Some(provider),
            scheme: Some(provider.scheme()),
            secret: None,
            secret_hint: None,
            tolerance: None,
            timeout: None,
            jwks: None,
            jwks_source: None,
        }
    }

    /// The same rule with a secret.
    pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(Secret::new(secret));
        self
    }

    /// The same rule with JWKS keys (fetched by the caller for a URL).
    pub fn with_jwks(mut self, jwks: jsonwebtoken::jwk::JwkSet) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// The sender's timeout for the budget meter: the rule's, else the preset's.
    pub fn sender_timeout(&self) -> Option<Duration> {
        self.timeout.or(self.provider.and_then(Provider::timeout))
    }

    /// The provider and scheme that apply to `req`.
    fn resolve(&self, req: &RequestView<'_>) -> Option<(Option<Provider>, Scheme)> {
        let provider = self.provider.or_else(|| recognise(req).map(|r| r.provider));
        let mut scheme = match &self.scheme {
            Some(s) => s.clone(),
            None => provider?.scheme(),
        };
        if let (Scheme::Hmac(spec), Some(tol)) = (&mut scheme, self.tolerance) {
            spec.tolerance = Some(tol);
        }
        Some((provider, scheme))
    }
}

/// The result of [`check`]; serialises to the contract's
/// `{"provider", "scheme", "verdict", "reason"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The provider, when named or recognised.
    pub provider: Option<Provider>,
    /// The scheme's contract name (`hmac`, `jwt`, ...).
    pub scheme: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, for every verdict but `valid`.
    pub reason: Option<Reason>,
}

impl Serialize for Check {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Check", 4)?;
        st.serialize_field("provider", &self.provider.map(Provider::id))?;
        st.serialize_field("scheme", self.scheme)?;
        st.serialize_field("verdict", &self.verdict)?;
        st.serialize_field("reason", &self.reason.as_ref().map(ToString::to_string))?;
        st.end()
    }
}

/// Judges `req` by `rule` at time `now`. `None` when the rule names no
/// provider or scheme and the sender is not recognised.
pub fn check(rule: &Rule, req: &RequestView<'_>, now: SystemTime) -> Option<Check> {
    let (provider, scheme) = rule.resolve(req)?;
    // A `jwks` URL: the keys as last fetched, or why there are none yet.
    let fetched = match (&scheme, &rule.jwks, &rule.jwks_source) {
        (Scheme::Jwt, None, Some(source)) => Some(source.keys()),
        _ => None,
    };
    let jwks = rule
        .jwks
        .as_ref()
        .or_else(|| fetched.as_ref()?.as_ref().ok().map(|k| &**k));
    let (verdict, reason) = match &rule.secret {
        None if !matches!(scheme, Scheme::Jwt) || (jwks.is_none() && fetched.is_none()) => (
            Verdict::Unchecked,
            Some(Reason::NoSecret {
                hint: rule
                    .secret_hint
                    .clone()
                    .unwrap_or_else(|| no_secret_hint(provider)),
            }),
        ),
        secret => {
            let secret = secret.as_ref().map(Secret::expose);
            match &scheme {
                Scheme::Hmac(spec) => spec.verify(secret.unwrap_or_default(), req, now),
                Scheme::QueryKey { param } => {
                    asym::verify_query_key(param, secret.unwrap_or_default(), req)
                }
                Scheme::Ecdsa => asym::verify_sendgrid(secret.unwrap_or_default(), req),
                Scheme::Ed25519 => asym::verify_discord(secret.unwrap_or_default(), req),
                Scheme::Jwt => match (asym::verify_jwt(secret, jwks, req), &fetched) {
                    // No keys yet: say why (not fetched yet, or the error).
                    ((Verdict::Unchecked, Some(Reason::NoSecret { .. })), Some(Err(why))) => (
                        Verdict::Unchecked,
                        Some(Reason::NoSecret { hint: why.clone() }),
                    ),
                    // A key the fetched set lacks may be a rotation: fetch
                    // again, and judge the next one by the new keys.
                    ((Verdict::Invalid, Some(Reason::UnknownKey { kid })), Some(Ok(_)))
                        if rule.jwks_source.as_ref().is_some_and(|s| s.unknown_kid()) =>
                    {
                        let kid = kid.as_deref().unwrap_or("(none)");
                        (
                            Verdict::Unchecked,
                            Some(Reason::NoSecret {
                                hint: format!(
                                    "no key with kid `{kid}` in the JWKS as fetched; fetching it again"
                                ),
                            }),
                        )
                    }
                    (outcome, _) => outcome,
                },
            }
        }
    };
    Some(Check {
        provider,
        scheme: scheme.name(),
        verdict,
        reason,
    })
}

/// What [`check`] says of `provider`'s preset rule
/// ([`Rule::for_provider`]: no secret): `unchecked`, and what to configure.
/// The same answer without building and cloning the preset's scheme: the
/// recorder asks for every exchange from a recognised sender that no
/// `[[webhook]]` rule covers, so for every webhook of a first run.
pub fn check_unconfigured(provider: Provider) -> Check {
    Check {
        provider: Some(provider),
        scheme: provider.scheme_name(),
        verdict: Verdict::Unchecked,
        reason: Some(Reason::NoSecret {
            hint: no_secret_hint(Some(provider)),
        }),
    }
}

/// What to configure when a rule has no secret.
fn no_secret_hint(provider: Option<Provider>) -> String {
    match provider {
        Some(p) => format!(
            "no secret configured for {} (a [[webhook]] rule with secret or secret_env)",
            p.id()
        ),
        None => "no secret configured".to_string(),
    }
}

/// Why [`sign`] cannot re-sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// Asymmetric and JWT schemes are signed with the sender's private key.
    #[error("{0} cannot be re-signed: only the sender holds its private key; replay with --as-is")]
    CannotResign(String),
    /// No secret configured.
    #[error("no secret to sign with for {0}: add secret or secret_env to its [[webhook]] rule")]
    NoSecret(String),
    /// No provider or scheme applies.
    #[error("no signature scheme applies to this request")]
    NoScheme,
    /// The secret cannot be used as the scheme's key.
    #[error("unusable secret: {0}")]
    BadSecret(String),
}

/// `path` with the value of query parameter `param` replaced by `with`
/// (any other parameter kept byte for byte).
pub fn replace_query_param(path: &str, param: &str, with: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_string();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            let decoded: String = form_urlencoded::parse(name.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if decoded == param {
                let value: String = form_urlencoded::byte_serialize(with.as_bytes()).collect();
                format!("{name}={value}")
            } else {
                pair.to_string()
            }
        })
        .collect();
    format!("{base}?{}", parts.join("&"))
}

/// What signing a request afresh changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Signed {
    /// Headers to set, replacing same-named ones.
    pub headers: Vec<(String, String)>,
    /// A query parameter to give a new value: the hash of the body that a
    /// sender signs inside its URL (Twilio's `bodySHA256` on JSON bodies),
    /// when the request carries one.
    pub query: Option<(String, String)>,
}

impl Signed {
    /// `path` (or a URL) with [`Self::query`] set.
    pub fn apply_query(&self, path: &str) -> String {
        match &self.query {
            Some((name, value)) => replace_query_param(path, name, value),
            None => path.to_string(),
        }
    }
}

/// What to change so that `req` (its body possibly edited) verifies at
/// `now`: a fresh timestamp, the same event id, a signature over
/// `req.body`, and a body hash in the URL where the sender signs one.
pub fn sign(rule: &Rule, req: &RequestView<'_>, now: SystemTime) -> Result<Signed, SignError> {
    let (provider, scheme) = rule.resolve(req).ok_or(SignError::NoScheme)?;
    let who = provider.map_or_else(|| scheme.name().to_string(), |p| p.id().to_string());
    if !scheme.can_sign() {
        return Err(SignError::CannotResign(format!(
            "{who} ({})",
            scheme.name()
        )));
    }
    let secret = rule.secret.as_ref().ok_or(SignError::NoSecret(who))?;
    match &scheme {
        Scheme::Hmac(spec) => spec
            .sign(secret.expose(), req, now)
            .map_err(SignError::BadSecret),
        // The key travels in the recorded URL; nothing to add.
        _ => Ok(Signed::default()),
    }
}

#[cfg(test)]
mod tests;
