//! Agent authentication: bearer tokens compared in constant time. Tokens are
//! hashed first so that comparison time does not depend on their lengths,
//! and they are never logged.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The set of tokens a relay accepts.
#[derive(Clone)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.digests.len())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Accepts exactly these tokens (empty ones are ignored).
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(tokens: I) -> Self {
        Self {
            digests: tokens
                .into_iter()
                .filter(|t| !t.as_ref().is_empty())
                .map(|t| digest(t.as_ref()))
                .collect(),
        }
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// True when no token is configured.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// True when `presented` is one of the tokens. Checks every token so the
    /// time taken does not reveal which one matched.
    pub fn accepts(&self, presented: &str) -> bool {
        let d = digest(presented);
        let mut ok = subtle::Choice::from(0);
        for t in &self.digests {
            ok |= t.ct_eq(&d);
        }
        ok.into()
    }

    /// Extracts the token from an `Authorization: Bearer ...` header value.
    pub fn bearer(header: Option<&http::HeaderValue>) -> Option<&str> {
        let v = header?.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_tokens() {
        let t = Tokens::new(["alpha", "", "beta"]);
        assert_eq!(t.len(), 2);
        assert!(t.accepts("alpha"));
        assert!(t.accepts("beta"));
        assert!(!t.accepts(""));
        assert!(!t.accepts("alph"));
        assert!(!t.accepts("alphaa"));
        assert!(!Tokens::new(Vec::<String>::new()).accepts(""));
        assert_eq!(format!("{t:?}"), "Tokens(2 configured)");
    }

    #[test]
    fn bearer_header() {
        let v = http::HeaderValue::from_static("Bearer s3cret");
        assert_eq!(Tokens::bearer(Some(&v)), Some("s3cret"));
        let v = http::HeaderValue::from_static("bearer s3cret");
        assert_eq!(Tokens::bearer(Some(&v)), Some("s3cret"));
        let v = http::HeaderValue::from_static("Basic abc");
        assert_eq!(Tokens::bearer(Some(&v)), None);
        assert_eq!(Tokens::bearer(None), None);
    }
}
