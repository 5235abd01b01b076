//! Host routing for a relay with a domain (`--domain hooks.example.com`):
//! which Host names mean "the relay itself" and which mean "tunnel NAME"
//! (`NAME.hooks.example.com`), and the public URL a tunnel gets. Pure
//! functions, no I/O.

use crate::tunnel::protocol::is_valid_name;

/// Where a request goes, judged by its Host alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRoute {
    /// The relay's own name, an IP address, `localhost` or no Host at all:
    /// served as a relay without a domain serves everything (`/t/NAME/...`,
    /// the agent endpoint, the held-event API).
    Relay,
    /// `NAME.<domain>`: every path goes to tunnel NAME unchanged.
    Tunnel(String),
    /// A well-formed name that is not this relay's: not served.
    Foreign,
    /// Not a host name at all (bad characters, empty labels, a bad port).
    Invalid,
}

/// Normalises a `--domain` value: lower case, no trailing dot. `None` when
/// it is not a plausible DNS name of at least two labels.
pub fn normalize_domain(domain: &str) -> Option<String> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels_ok = d.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    (labels_ok && d.contains('.') && d.len() <= 253).then_some(d)
}

/// Routes a request by its Host (`host` as sent, with or without a port;
/// `domain` as [`normalize_domain`] made it). Case does not matter, a
/// trailing dot is allowed, and exactly one label may precede the domain.
pub fn route_host(host: Option<&str>, domain: &str) -> HostRoute {
    let Some(host) = host else {
        return HostRoute::Relay;
    };
    let Some(name) = strip_port(host.trim()) else {
        return HostRoute::Invalid;
    };
    if name.starts_with('[') {
        // An IPv6 literal, checked by strip_port.
        return HostRoute::Relay;
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return HostRoute::Relay;
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty()
        || name.len() > 253
        || name.split('.').any(str::is_empty)
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return HostRoute::Invalid;
    }
    if name == domain || name == "localhost" {
        return HostRoute::Relay;
    }
    match name
        .strip_suffix(domain)
        .and_then(|rest| rest.strip_suffix('.'))
    {
        Some(label) if !label.contains('.') && is_valid_name(label) => {
            HostRoute::Tunnel(label.to_string())
        }
        _ => HostRoute::Foreign,
    }
}

/// The host part of a Host value, or `None` when the port is not a number
/// or an IPv6 literal is malformed.
fn strip_port(host: &str) -> Option<&str> {
    if let Some(rest) = host.strip_prefix('[') {
        let end = rest.find(']')?;
        rest[..end].parse::<std::net::Ipv6Addr>().ok()?;
        let after = &rest[end + 1..];
        return match after.strip_prefix(':') {
            None if after.is_empty() => Some(&host[..end + 2]),
            Some(p) if p.parse::<u16>().is_ok() => Some(&host[..end + 2]),
            _ => None,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => Some(name),
        Some(_) => None,
        None => Some(host),
    }
}

/// The public URL of tunnel `name`. `base` is the relay's base URL
/// (`https://hooks.example.com`, or `http://127.0.0.1:8787` as an agent
/// reached it). With a domain it is `scheme://NAME.<domain>[:port]`, the
/// port kept only when `base` names one; without, `base/t/NAME`.
pub fn tunnel_url(base: &str, domain: Option<&str>, name: &str) -> String {
    let base = base.trim_end_matches('/');
    let Some(domain) = domain else {
        return format!("{base}/t/{name}");
    };
    let (scheme, port) = match base.parse::<http::Uri>() {
        Ok(uri) => (
            uri.scheme_str().unwrap_or("https").to_string(),
            uri.port_u16(),
        ),
        Err(_) => ("https".to_string(), None),
    };
    let default_port = if scheme == "http" { 80 } else { 443 };
    match port {
        Some(p) if p != default_port => format!("{scheme}://{name}.{domain}:{p}"),
        _ => format!("{scheme}://{name}.{domain}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "hooks.example.com";

    fn tunnel(n: &str) -> HostRoute {
        HostRoute::Tunnel(n.into())
    }

    #[test]
    fn tunnel_hosts() {
        assert_eq!(
            route_host(Some("alpha.hooks.example.com"), D),
            tunnel("alpha")
        );
        assert_eq!(
            route_host(Some("Alpha.HOOKS.example.com:8443"), D),
            tunnel("alpha")
        );
        assert_eq!(
            route_host(Some("alpha.hooks.example.com."), D),
            tunnel("alpha")
        );
        assert_eq!(
            route_host(Some("a-1.hooks.example.com:443"), D),
            tunnel("a-1")
        );
    }

    #[test]
    fn relay_hosts() {
        for h in [
            "hooks.example.com",
            "HOOKS.example.com:8787",
            "127.0.0.1:8787",
            "127.0.0.1",
            "[::1]:8787",
            "[::1]",
            "localhost:9",
        ] {
            assert_eq!(route_host(Some(h), D), HostRoute::Relay, "{h}");
        }
        assert_eq!(route_host(None, D), HostRoute::Relay);
    }

    #[test]
    fn foreign_and_invalid_hosts() {
        for h in [
            "a.b.hooks.example.com",
            "evil.com",
            "alphahooks.example.com",
            "hooks.example.com.evil.com",
            "-x.hooks.example.com",
            "x_y.hooks.example.com",
            "example.com",
        ] {
            assert_eq!(route_host(Some(h), D), HostRoute::Foreign, "{h}");
        }
        for h in [
            "",
            ":80",
            "alpha.hooks.example.com:http",
            "alpha..hooks.example.com",
            "a/b.hooks.example.com",
            "[::1",
            "[zz]:1",
            "a b.hooks.example.com",
            "alpha.hooks.example.com:99999",
        ] {
            assert_eq!(route_host(Some(h), D), HostRoute::Invalid, "{h:?}");
        }
    }

    #[test]
    fn domains() {
        assert_eq!(normalize_domain("Hooks.Example.com."), Some(D.into()));
        for bad in ["", "com", "a..b", "-a.b", "a b.c", "a/b.c"] {
            assert_eq!(normalize_domain(bad), None, "{bad}");
        }
    }

    #[test]
    fn tunnel_urls() {
        assert_eq!(
            tunnel_url("https://hooks.example.com/", Some(D), "alpha"),
            "https://alpha.hooks.example.com"
        );
        assert_eq!(
            tunnel_url("https://hooks.example.com:443", Some(D), "alpha"),
            "https://alpha.hooks.example.com"
        );
        assert_eq!(
            tunnel_url("http://127.0.0.1:8787", Some(D), "alpha"),
            "http://alpha.hooks.example.com:8787"
        );
        assert_eq!(
            tunnel_url("http://127.0.0.1:8787/", None, "alpha"),
            "http://127.0.0.1:8787/t/alpha"
        );
    }
}
