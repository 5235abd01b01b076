//! The schemes that are not the generic HMAC: a key compared from the
//! query string (Finexer), and the verification-only asymmetric ones —
//! SendGrid (ECDSA P-256), Discord (Ed25519), JWT bodies (RS256/ES256 via
//! JWKS, HS256 via a secret). The crypto is the `p256`, `ed25519-dalek` and
//! `jsonwebtoken` crates'; nothing is computed by hand here.

use base64::Engine as _;
use subtle::ConstantTimeEq;

use super::{Reason, RequestView, Verdict};

type Outcome = (Verdict, Option<Reason>);

fn invalid(reason: Reason) -> Outcome {
    (Verdict::Invalid, Some(reason))
}

fn mismatch(req: &RequestView<'_>) -> Outcome {
    invalid(Reason::SignatureMismatch {
        body_changed: req.body_changed(),
    })
}

/// Finexer: the receiver compares the `param` query value with its key.
pub fn verify_query_key(param: &str, secret: &str, req: &RequestView<'_>) -> Outcome {
    match req.query_param(param) {
        None => (
            Verdict::Unsigned,
            Some(Reason::MissingQueryParam {
                param: param.to_string(),
            }),
        ),
        Some(v) if bool::from(v.as_bytes().ct_eq(secret.as_bytes())) => (Verdict::Valid, None),
        Some(_) => invalid(Reason::MalformedHeader {
            header: format!("query parameter `{param}`"),
            problem: "it does not match the configured key".into(),
        }),
    }
}

/// The signature and timestamp headers of an asymmetric scheme, or the
/// outcome when one is missing.
fn sig_and_ts<'a>(
    req: &RequestView<'a>,
    sig: &str,
    ts: &str,
) -> Result<(&'a str, &'a str), Outcome> {
    let s = req.header(sig).ok_or((
        Verdict::Unsigned,
        Some(Reason::MissingHeader { header: sig.into() }),
    ))?;
    let t = req
        .header(ts)
        .ok_or_else(|| invalid(Reason::MissingHeader { header: ts.into() }))?;
    Ok((s, t))
}

const SENDGRID_SIG: &str = "X-Twilio-Email-Event-Webhook-Signature";
const SENDGRID_TS: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

/// SendGrid: base64 DER ECDSA P-256/SHA-256 signature over timestamp +
/// body; `public_key` is the base64 DER (SPKI) verification key from the
/// SendGrid settings page.
pub fn verify_sendgrid(public_key: &str, req: &RequestView<'_>) -> Outcome {
    use p256::ecdsa::signature::Verifier as _;
    use p256::pkcs8::DecodePublicKey as _;
    let (sig, ts) = match sig_and_ts(req, SENDGRID_SIG, SENDGRID_TS) {
        Ok(v) => v,
        Err(o) => return o,
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = match b64
        .decode(public_key.trim())
        .ok()
        .and_then(|der| p256::ecdsa::VerifyingKey::from_public_key_der(&der).ok())
    {
        Some(k) => k,
        None => {
            return invalid(Reason::BadSecret {
                problem: "not a base64 DER P-256 public key".into(),
            })
        }
    };
    let Some(signature) = b64
        .decode(sig.trim())
        .ok()
        .and_then(|der| p256::ecdsa::Signature::from_der(&der).ok())
    else {
        return invalid(Reason::MalformedHeader {
            header: SENDGRID_SIG.into(),
            problem: "not a base64 DER ECDSA signature".into(),
        });
    };
    let mut signed = ts.as_bytes().to_vec();
    signed.extend_from_slice(req.body);
    // Signatures from other libraries may be high-S; accept them as SendGrid's own verifier does.
    let signature = signature.normalize_s().unwrap_or(signature);
    match key.verify(&signed, &signature) {
        Ok(()) => (Verdict::Valid, None),
        Err(_) => mismatch(req),
    }
}

const DISCORD_SIG: &str = "X-Signature-Ed25519";
const DISCORD_TS: &str = "X-Signature-Timestamp";

/// Discord: hex Ed25519 signature over timestamp + body; `public_key` is
/// the application's hex public key.
pub fn verify_discord(public_key: &str, req: &RequestView<'_>) -> Outcome {
    let (sig, ts) = match sig_and_ts(req, DISCORD_SIG, DISCORD_TS) {
        Ok(v) => v,
        Err(o) => return o,
    };
    let hex = data_encoding::HEXLOWER_PERMISSIVE;
    let key = match hex
        .decode(public_key.trim().as_bytes())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
    {
        Some(k) => k,
        None => {
            return invalid(Reason::BadSecret {
                problem: "not a 32-byte hex Ed25519 public key".into(),
            })
        }
    };
    let Some(signature) = hex
        .decode(sig.trim().as_bytes())
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| ed25519_dalek::Signature::from_bytes(&b))
    else {
        return invalid(Reason::MalformedHeader {
            header: DISCORD_SIG.into(),
            problem: "not a 64-byte hex Ed25519 signature".into(),
        });
    };
    let mut signed = ts.as_bytes().to_vec();
    signed.extend_from_slice(req.body);
    match key.verify_strict(&signed, &signature) {
        Ok(()) => (Verdict::Valid, None),
        Err(_) => mismatch(req),
    }
}

/// The decoded payload (the claims' JSON text) of a compact JWT body, read
/// without verifying it (for recognition and the event type; never for a
/// verdict).
pub fn jwt_payload(body: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?.trim();
    let mut parts = text.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
}

/// A JWT body: HS256 with `secret`, RS256/ES256 with the JWKS key whose
/// `kid` matches (or the only key when the token names none).
pub fn verify_jwt(
    secret: Option<&str>,
    jwks: Option<&jsonwebtoken::jwk::JwkSet>,
    req: &RequestView<'_>,
) -> Outcome {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let Ok(token) = std::str::from_utf8(req.body).map(str::trim) else {
        return invalid(Reason::MalformedBody {
            problem: "a JWT body must be text".into(),
        });
    };
    if !token.contains('.') {
        return (
            Verdict::Unsigned,
            Some(Reason::NotSigned {
                detail: "the body is not a JWT (this sender's JSON format carries no signature)"
                    .into(),
            }),
        );
    }
    let header = match jsonwebtoken::decode_header(token) {
        Ok(h) => h,
        Err(e) => {
            return invalid(Reason::MalformedBody {
                problem: format!("not a JWT: {e}"),
            })
        }
    };
    let key = match header.alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => match secret {
            Some(s) => DecodingKey::from_secret(s.as_bytes()),
            None => {
                return (
                    Verdict::Unchecked,
                    Some(Reason::NoSecret {
                        hint: format!("{:?} token and no secret configured", header.alg),
                    }),
                )
            }
        },
        Algorithm::RS256 | Algorithm::ES256 => {
            let Some(set) = jwks else {
                return (
                    Verdict::Unchecked,
                    Some(Reason::NoSecret {
                        hint: format!("{:?} token and no jwks configured", header.alg),
                    }),
                );
            };
            let jwk = match &header.kid {
                Some(kid) => set.find(kid),
                None if set.keys.len() == 1 => set.keys.first(),
                None => None,
            };
            match jwk.and_then(|j| DecodingKey::from_jwk(j).ok()) {
                Some(k) => k,
                None => {
                    return invalid(Reason::UnknownKey {
                        kid: header.kid.clone(),
                    })
                }
            }
        }
        other => {
            return invalid(Reason::MalformedBody {
                problem: format!("JWT algorithm {other:?} is not supported (RS256, ES256, HS256)"),
            })
        }
    };
    let mut validation = Validation::new(header.alg);
    // Security Event Tokens carry no `exp`; `aud` is the receiver's own business.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    match jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation) {
        Ok(_) => (Verdict::Valid, None),
        Err(e) => match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => mismatch(req),
            _ => invalid(Reason::MalformedBody {
                problem: format!("JWT rejected: {e}"),
            }),
        },
    }
}
