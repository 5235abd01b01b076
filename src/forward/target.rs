//! Where forwarded requests go ([`Target`]) and which Host header the
//! app sees ([`HostHeader`]).

use std::str::FromStr;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

/// Where requests go: an `http://` base URL on the developer's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, parsed once: every forwarded request's URI shares it.
    authority: Authority,
    base_path: String,
}

/// A target that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid target '{input}': {reason} (use a port like 3000, host:port, or http://host:port/base)")]
pub struct TargetError {
    input: String,
    reason: &'static str,
}

impl FromStr for Target {
    type Err = TargetError;

    /// Accepts `3000`, `host:port`, or `http://host:port/base`.
    fn from_str(input: &str) -> Result<Self, TargetError> {
        let err = |reason| TargetError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        if let Ok(port) = s.parse::<u16>() {
            if port == 0 {
                return Err(err("port 0 is not a port an app listens on"));
            }
            return Ok(Target {
                authority: Authority::try_from(format!("localhost:{port}"))
                    .expect("localhost:<port> is an authority"),
                base_path: String::new(),
            });
        }
        if !s.contains("://") && looks_like_a_port(s) {
            return Err(err("it looks like a mistyped port"));
        }
        let with_scheme = if s.contains("://") {
            s.to_string()
        } else {
            format!("http://{s}")
        };
        let uri: Uri = with_scheme.parse().map_err(|_| err("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(err("https targets are not supported yet")),
            _ => return Err(err("only http:// targets are supported")),
        }
        let authority = uri.authority().ok_or_else(|| err("no host"))?;
        if authority.as_str().contains('@') {
            return Err(err("credentials in the target URL are not supported"));
        }
        let authority = match authority.port_u16() {
            Some(_) => authority.clone(),
            None => Authority::try_from(format!("{}:80", authority.host()))
                .map_err(|_| err("not a URL"))?,
        };
        if uri.query().is_some() {
            return Err(err("a target cannot have a query string"));
        }
        Ok(Target {
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

/// True for a scheme-less target meant as a port but mistyped: `3000x`,
/// `:3000x`, `70000`, `3000:80`. The host part of a real host name has a
/// dot (`127.0.0.1`, `api.test`), or starts with a letter (`localhost`,
/// `web1`, `[::1]` starts with a bracket): one that starts with a digit
/// and has no dot is a typo, not a host.
fn looks_like_a_port(s: &str) -> bool {
    let host = match s.rsplit_once(':') {
        Some((host, _)) => host,
        None => s,
    };
    host.is_empty() || (host.starts_with(|c: char| c.is_ascii_digit()) && !host.contains('.'))
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.base_path)
    }
}

impl Target {
    /// True when requests go to this machine (`localhost`, 127.0.0.0/8,
    /// `::1`): a replay may go there without the user naming it again.
    pub fn is_loopback(&self) -> bool {
        let authority = self.authority.as_str();
        let host = match authority.rsplit_once(':') {
            Some((h, _)) => h,
            None => authority,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The `host:port` requests are sent to.
    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    /// The `host:port` requests are sent to, parsed.
    pub fn authority_parsed(&self) -> &Authority {
        &self.authority
    }

    /// The URI for a request whose tunnel-relative path is `path_and_query`.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(self.path_for(path_and_query)?);
        Ok(Uri::from_parts(parts)?)
    }

    /// The request line's target for `path_and_query` (origin form: the
    /// base path and the path, no scheme or host), as the agent sends it to
    /// the app.
    pub fn origin_form(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Ok(Uri::from(self.path_for(path_and_query)?))
    }

    fn path_for(&self, path_and_query: &str) -> Result<PathAndQuery, http::Error> {
        // One buffer that becomes the URI's path without a copy (this runs
        // for every forwarded request).
        let slash = if path_and_query.starts_with('/') {
            ""
        } else {
            "/"
        };
        let mut pq =
            String::with_capacity(self.base_path.len() + slash.len() + path_and_query.len());
        pq.push_str(&self.base_path);
        pq.push_str(slash);
        pq.push_str(path_and_query);
        Ok(PathAndQuery::try_from(pq)?)
    }
}

/// What Host header the app sees.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostHeader {
    /// The Host the sender used (the relay's public host).
    #[default]
    Preserve,
    /// The target's `host:port`, for dev servers that check Host.
    Rewrite,
    /// This exact value.
    Value(HeaderValue),
}

impl FromStr for HostHeader {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "preserve" => Ok(HostHeader::Preserve),
            "rewrite" => Ok(HostHeader::Rewrite),
            v => HeaderValue::from_str(v)
                .map(HostHeader::Value)
                .map_err(|_| format!("'{v}' is not a valid Host header value")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t: Target = "3000".parse().unwrap();
        assert_eq!(t.to_string(), "http://localhost:3000");
        assert_eq!(
            t.uri_for("/a?x=1").unwrap().to_string(),
            "http://localhost:3000/a?x=1"
        );
        let t: Target = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(t.to_string(), "http://127.0.0.1:8080");
        let t: Target = "http://localhost:3000/base/".parse().unwrap();
        assert_eq!(t.to_string(), "http://localhost:3000/base");
        assert_eq!(
            t.uri_for("/hooks/x?y=2").unwrap().to_string(),
            "http://localhost:3000/base/hooks/x?y=2"
        );
        assert_eq!(
            t.uri_for("hooks").unwrap().to_string(),
            "http://localhost:3000/base/hooks"
        );
        assert!(t.uri_for("/a b").is_err(), "a space is not a path");
        assert_eq!(
            t.origin_form("hooks/x?y=2").unwrap().to_string(),
            "/base/hooks/x?y=2"
        );
        assert!(t.origin_form("/a b").is_err(), "a space is not a path");
        let t: Target = "http://example.test".parse().unwrap();
        assert_eq!(t.authority(), "example.test:80");
        for bad in [
            "0",
            "https://x:1",
            "ftp://x",
            "http://",
            "http://a:1/?q=1",
            "not a target",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
        let e = "https://x:1".parse::<Target>().unwrap_err().to_string();
        assert!(e.contains("https targets are not supported"), "{e}");
    }

    #[test]
    fn a_mistyped_port_is_refused_and_host_names_are_not() {
        for typo in [
            "3000x", "30000x", ":3000x", ":3000", "70000", "3000:80", "8o8o",
        ] {
            let e = typo.parse::<Target>();
            // `8o8o` starts with a digit and has no dot: refused too.
            let e = e.unwrap_err().to_string();
            assert!(e.contains("mistyped port"), "{typo}: {e}");
        }
        for host in [
            "localhost:3000",
            "web1:3000",
            "app",
            "127.0.0.1:8080",
            "10.0.0.7",
            "api.test:80",
            "[::1]:3000",
            "http://3000x:80",
        ] {
            assert!(host.parse::<Target>().is_ok(), "{host}");
        }
    }

    #[test]
    fn loopback_targets() {
        for t in ["3000", "127.0.0.1:1", "http://[::1]:3000", "LOCALHOST:1"] {
            assert!(t.parse::<Target>().unwrap().is_loopback(), "{t}");
        }
        for t in ["web1:3000", "10.0.0.7:80", "http://example.test"] {
            assert!(!t.parse::<Target>().unwrap().is_loopback(), "{t}");
        }
    }

    #[test]
    fn host_header_policy() {
        assert_eq!(
            "preserve".parse::<HostHeader>().unwrap(),
            HostHeader::Preserve
        );
        assert_eq!(
            "rewrite".parse::<HostHeader>().unwrap(),
            HostHeader::Rewrite
        );
        assert_eq!(
            "api.local".parse::<HostHeader>().unwrap(),
            HostHeader::Value(HeaderValue::from_static("api.local"))
        );
        assert!("bad\nvalue".parse::<HostHeader>().is_err());
    }
}
