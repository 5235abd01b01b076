//! Where forwarded requests go ([`Target`]) and which Host header the
//! app sees ([`HostHeader`]).

use std::str::FromStr;

use http::{HeaderValue, Uri};

/// Where requests go: an `http://` base URL on the developer's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    authority: String,
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
                authority: format!("localhost:{port}"),
                base_path: String::new(),
            });
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
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
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

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.base_path)
    }
}

impl Target {
    /// The `host:port` requests are sent to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The URI for a request whose tunnel-relative path is `path_and_query`.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let pq = if path_and_query.starts_with('/') {
            path_and_query.to_string()
        } else {
            format!("/{path_and_query}")
        };
        Uri::builder()
            .scheme("http")
            .authority(self.authority.as_str())
            .path_and_query(format!("{}{pq}", self.base_path))
            .build()
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
