//! The one generic HMAC scheme: where the signature is, what is signed, how
//! it is encoded. Every symmetric provider preset is an [`HmacSpec`] value
//! (see [`super::presets`]); this module verifies and signs any of them.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

use super::{Reason, RequestView, Verdict};

/// The digest under the HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA1 (Twilio, GitHub's legacy header).
    Sha1,
    /// HMAC-SHA256 (almost everyone).
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

impl Algorithm {
    /// Parses a config value: `sha1`, `sha256` or `sha512`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sha1" => Some(Self::Sha1),
            "sha256" => Some(Self::Sha256),
            "sha512" => Some(Self::Sha512),
            _ => None,
        }
    }

    fn mac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        // Hmac::new_from_slice accepts keys of any length; the error arm is unreachable.
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
            match <M as hmac::digest::KeyInit>::new_from_slice(key) {
                Ok(mut m) => {
                    m.update(message);
                    m.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            }
        }
        match self {
            Self::Sha1 => run::<Hmac<sha1::Sha1>>(key, message),
            Self::Sha256 => run::<Hmac<sha2::Sha256>>(key, message),
            Self::Sha512 => run::<Hmac<sha2::Sha512>>(key, message),
        }
    }
}

/// How the signature bytes are written in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Hexadecimal; either case is accepted, lower case is written.
    Hex,
    /// Standard base64 with padding.
    Base64,
    /// Hexadecimal, either case accepted, upper case written (Bridge's
    /// receivers compare the upper-case form).
    HexUpper,
}

impl Encoding {
    /// Parses a config value: `hex` or `base64`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hex" => Some(Self::Hex),
            "base64" => Some(Self::Base64),
            _ => None,
        }
    }

    fn decode(self, s: &str) -> Option<Vec<u8>> {
        match self {
            Self::Hex | Self::HexUpper => {
                data_encoding::HEXLOWER_PERMISSIVE.decode(s.as_bytes()).ok()
            }
            Self::Base64 => base64::engine::general_purpose::STANDARD.decode(s).ok(),
        }
    }

    fn encode(self, bytes: &[u8]) -> String {
        match self {
            Self::Hex => data_encoding::HEXLOWER.encode(bytes),
            Self::HexUpper => data_encoding::HEXUPPER.encode(bytes),
            Self::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Hex | Self::HexUpper => "hex",
            Self::Base64 => "base64",
        }
    }
}

/// How the configured secret text becomes the HMAC key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFormat {
    /// The secret's bytes as written (Stripe, GitHub, Slack, ...).
    Verbatim,
    /// Standard Webhooks / Svix: an optional `whsec_` prefix, then base64.
    WhsecBase64,
}

impl SecretFormat {
    /// The HMAC key for `secret`, or why it cannot be one.
    pub fn key(self, secret: &str) -> Result<Vec<u8>, String> {
        match self {
            Self::Verbatim => Ok(secret.as_bytes().to_vec()),
            Self::WhsecBase64 => {
                let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| "the secret is not base64 after `whsec_`".to_string())
            }
        }
    }
}

/// How a timestamp is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampFormat {
    /// Seconds since the Unix epoch (`1614265330`).
    UnixSeconds,
    /// RFC 3339 text (Twitch: `2019-11-16T10:11:12.634234626Z`).
    Rfc3339,
}

impl TimestampFormat {
    fn parse(self, s: &str) -> Option<i64> {
        match self {
            Self::UnixSeconds => s.trim().parse().ok(),
            Self::Rfc3339 => chrono::DateTime::parse_from_rfc3339(s.trim())
                .ok()
                .map(|t| t.timestamp()),
        }
    }

    fn format(self, now: SystemTime) -> String {
        let t: chrono::DateTime<chrono::Utc> = now.into();
        match self {
            Self::UnixSeconds => t.timestamp().to_string(),
            Self::Rfc3339 => t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        }
    }
}

/// One piece of a signed-content template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text as written.
    Literal(String),
    /// `{body}`: the raw body bytes.
    Body,
    /// `{timestamp}`: the timestamp exactly as sent.
    Timestamp,
    /// `{id}`: the event/message id header's value.
    Id,
    /// `{url}`: the public URL the sender posted to.
    Url,
    /// `{form}` (Twilio): form parameters sorted by name, each name then
    /// value, concatenated; empty for other bodies.
    Form,
}

/// What is signed, e.g. `{timestamp}.{body}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<Piece>);

impl Template {
    /// Parses a template; placeholders are `{body}` `{timestamp}` `{id}`
    /// `{url}` `{form}`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in `{s}`"))?;
            pieces.push(match &after[..close] {
                "body" => Piece::Body,
                "timestamp" => Piece::Timestamp,
                "id" => Piece::Id,
                "url" => Piece::Url,
                "form" => Piece::Form,
                other => {
                    return Err(format!(
                        "unknown placeholder `{{{other}}}` (use {{body}} {{timestamp}} {{id}} {{url}} {{form}})"
                    ))
                }
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_string()));
        }
        Ok(Self(pieces))
    }

    fn uses(&self, p: &Piece) -> bool {
        self.0.contains(p)
    }

    fn render(&self, req: &RequestView<'_>, ts: &str, id: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(req.body.len() + 64);
        for p in &self.0 {
            match p {
                Piece::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Piece::Body => out.extend_from_slice(req.body),
                Piece::Timestamp => out.extend_from_slice(ts.as_bytes()),
                Piece::Id => out.extend_from_slice(id.as_bytes()),
                Piece::Url => out.extend_from_slice(req.url.as_bytes()),
                Piece::Form => {
                    if req.is_form() {
                        let mut pairs: Vec<(String, String)> =
                            form_urlencoded::parse(req.body).into_owned().collect();
                        pairs.sort();
                        for (k, v) in pairs {
                            out.extend_from_slice(k.as_bytes());
                            out.extend_from_slice(v.as_bytes());
                        }
                    }
                }
            }
        }
        out
    }
}

/// A complete HMAC scheme. The provider presets are values of this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacSpec {
    /// Header holding the signature(s).
    pub header: String,
    /// Text before each signature (`v1=`, `sha256=`, `v1,`); empty for none.
    pub prefix: String,
    /// Separator between several entries in the header (Stripe `,`, Svix
    /// space, Paddle `;`); `None`: the header is one signature.
    pub separator: Option<char>,
    /// Key of a timestamp entry inside the signature header (Stripe `t=`,
    /// Paddle `ts=`).
    pub timestamp_key: Option<String>,
    /// What is signed.
    pub signed: Template,
    /// Header holding the timestamp, when not in the signature header.
    pub timestamp_header: Option<String>,
    /// How the timestamp is written.
    pub timestamp_format: TimestampFormat,
    /// Header holding the event/message id (kept when re-signing).
    pub id_header: Option<String>,
    /// Digest.
    pub algorithm: Algorithm,
    /// Signature encoding.
    pub encoding: Encoding,
    /// How the secret becomes the key.
    pub secret_format: SecretFormat,
    /// Largest accepted distance between the timestamp and now.
    pub tolerance: Option<Duration>,
    /// A second, older header tried when `header` is absent (GitHub's
    /// `X-Hub-Signature: sha1=`); also written when signing.
    pub legacy: Option<Box<HmacSpec>>,
    /// A query parameter of the signed URL that carries the hex SHA-256 of
    /// the body (Twilio's `bodySHA256`, for bodies that are not a form):
    /// the signature covers the URL, so the body must match the hash.
    pub body_hash_param: Option<String>,
}

impl HmacSpec {
    /// A scheme with the common defaults: signature of the body, hex
    /// SHA-256, no timestamp, secret verbatim.
    pub fn body_hex_sha256(header: &str, prefix: &str) -> Self {
        Self {
            header: header.to_string(),
            prefix: prefix.to_string(),
            separator: None,
            timestamp_key: None,
            signed: Template(vec![Piece::Body]),
            timestamp_header: None,
            timestamp_format: TimestampFormat::UnixSeconds,
            id_header: None,
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            secret_format: SecretFormat::Verbatim,
            tolerance: None,
            legacy: None,
            body_hash_param: None,
        }
    }

    fn has_timestamp(&self) -> bool {
        self.timestamp_key.is_some() || self.timestamp_header.is_some()
    }

    /// Verifies `req` against `secret`.
    pub fn verify(
        &self,
        secret: &str,
        req: &RequestView<'_>,
        now: SystemTime,
    ) -> (Verdict, Option<Reason>) {
        let Some(value) = req.header(&self.header) else {
            if let Some(legacy) = &self.legacy {
                if req.header(&legacy.header).is_some() {
                    return legacy.verify(secret, req, now);
                }
            }
            return (
                Verdict::Unsigned,
                Some(Reason::MissingHeader {
                    header: self.header.clone(),
                }),
            );
        };
        let malformed = |problem: String| {
            (
                Verdict::Invalid,
                Some(Reason::MalformedHeader {
                    header: self.header.clone(),
                    problem,
                }),
            )
        };
        let entries: Vec<&str> = match self.separator {
            Some(sep) => value
                .split(sep)
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .collect(),
            None => vec![value.trim()],
        };
        let mut ts_text: Option<String> = None;
        let mut candidates = Vec::new();
        let mut undecodable = 0usize;
        for entry in entries {
            if let Some(key) = &self.timestamp_key {
                if let Some(t) = entry.strip_prefix(key.as_str()) {
                    ts_text = Some(t.to_string());
                    continue;
                }
            }
            if let Some(sig) = entry.strip_prefix(self.prefix.as_str()) {
                match self.encoding.decode(sig.trim()) {
                    Some(bytes) => candidates.push(bytes),
                    None => undecodable += 1,
                }
            }
        }
        if candidates.is_empty() {
            return malformed(if undecodable > 0 {
                format!("the signature is not {}", self.encoding.name())
            } else if self.prefix.is_empty() {
                "it is empty".to_string()
            } else {
                format!("no `{}` signature in it", self.prefix)
            });
        }
        if let Some(h) = &self.timestamp_header {
            match req.header(h) {
                Some(t) => ts_text = Some(t.to_string()),
                None => {
                    return (
                        Verdict::Invalid,
                        Some(Reason::MissingHeader { header: h.clone() }),
                    )
                }
            }
        }
        let ts_text = match (ts_text, &self.timestamp_key) {
            (Some(t), _) => t,
            (None, Some(key)) => return malformed(format!("no `{key}` timestamp in it")),
            (None, None) => String::new(),
        };
        let ts_value = if self.has_timestamp() {
            match self.timestamp_format.parse(&ts_text) {
                Some(v) => Some(v),
                None => {
                    let header = self
                        .timestamp_header
                        .clone()
                        .unwrap_or_else(|| self.header.clone());
                    return (
                        Verdict::Invalid,
                        Some(Reason::MalformedHeader {
                            header,
                            problem: format!("timestamp `{}` is not readable", ts_text.trim()),
                        }),
                    );
                }
            }
        } else {
            None
        };
        let id = match &self.id_header {
            Some(h) if self.signed.uses(&Piece::Id) => match req.header(h) {
                Some(v) => v.to_string(),
                None => {
                    return (
                        Verdict::Invalid,
                        Some(Reason::MissingHeader { header: h.clone() }),
                    )
                }
            },
            _ => String::new(),
        };
        let key = match self.secret_format.key(secret) {
            Ok(k) => k,
            Err(problem) => return (Verdict::Invalid, Some(Reason::BadSecret { problem })),
        };
        let expected = self
            .algorithm
            .mac(&key, &self.signed.render(req, &ts_text, &id));
        let matched = candidates
            .iter()
            .any(|c| bool::from(c.as_slice().ct_eq(expected.as_slice())));
        if !matched {
            return (
                Verdict::Invalid,
                Some(Reason::SignatureMismatch {
                    body_changed: req.body_changed(),
                }),
            );
        }
        // The signed URL vouches for the body through its hash.
        if let Some(param) = &self.body_hash_param {
            if let Some(sent) = req.query_param(param) {
                let here: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(req.body).into();
                let sent = data_encoding::HEXLOWER_PERMISSIVE.decode(sent.trim().as_bytes());
                if !sent.is_ok_and(|s| bool::from(s.as_slice().ct_eq(&here))) {
                    return (
                        Verdict::Invalid,
                        Some(Reason::BodyHashMismatch {
                            param: param.clone(),
                            body_changed: req.body_changed(),
                        }),
                    );
                }
            }
        }
        if let (Some(tol), Some(ts)) = (self.tolerance, ts_value) {
            if let Some(reason) = tolerance_reason(ts, tol, now) {
                return (Verdict::Invalid, Some(reason));
            }
        }
        (Verdict::Valid, None)
    }

    /// What makes `req` verify now: a fresh timestamp, the same id (a new
    /// one only when the request had none), a signature over `req.body`,
    /// and, where the URL carries the body's hash, that hash of this body
    /// (signed with the rest of the URL).
    pub fn sign(
        &self,
        secret: &str,
        req: &RequestView<'_>,
        now: SystemTime,
    ) -> Result<super::Signed, String> {
        let key = self.secret_format.key(secret)?;
        let query = self.body_hash_param.as_ref().and_then(|param| {
            req.query_param(param)?;
            let hash = <sha2::Sha256 as sha2::Digest>::digest(req.body);
            Some((param.clone(), data_encoding::HEXLOWER.encode(&hash)))
        });
        let url;
        let rehashed;
        let req = match &query {
            Some((param, hash)) => {
                url = super::replace_query_param(req.url, param, hash);
                rehashed = RequestView { url: &url, ..*req };
                &rehashed
            }
            None => req,
        };
        let ts = if self.has_timestamp() {
            self.timestamp_format.format(now)
        } else {
            String::new()
        };
        let id = match &self.id_header {
            Some(h) => req
                .header(h)
                .map(str::to_string)
                .unwrap_or_else(|| format!("msg_{:032x}", rand::random::<u128>())),
            None => String::new(),
        };
        let sig = self
            .encoding
            .encode(&self.algorithm.mac(&key, &self.signed.render(req, &ts, &id)));
        let value = match (&self.timestamp_key, self.separator) {
            (Some(k), Some(sep)) => format!("{k}{ts}{sep}{}{sig}", self.prefix),
            _ => format!("{}{sig}", self.prefix),
        };
        let mut headers = vec![(self.header.clone(), value)];
        if let Some(h) = &self.timestamp_header {
            headers.push((h.clone(), ts));
        }
        if let Some(h) = &self.id_header {
            headers.push((h.clone(), id));
        }
        if let Some(legacy) = &self.legacy {
            for (name, value) in legacy.sign(secret, req, now)?.headers {
                if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                    headers.push((name, value));
                }
            }
        }
        Ok(super::Signed { headers, query })
    }
}

/// `Some(reason)` when `ts` (Unix seconds) is further than `tol` from `now`.
pub(crate) fn tolerance_reason(ts: i64, tol: Duration, now: SystemTime) -> Option<Reason> {
    let now_secs = match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let age = now_secs.saturating_sub(ts);
    (age.unsigned_abs() > tol.as_secs()).then_some(Reason::TimestampOutsideTolerance {
        age_secs: age,
        tolerance: tol,
    })
}
