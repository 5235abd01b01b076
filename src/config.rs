//! The project config file, `whtunnel.toml`: where it is found (like git
//! finds `.git`, or `--config` / `WHTUNNEL_CONFIG`), its typed contents
//! (`[listen]`, `[[route]]`, `[[webhook]]`), the longest-prefix rule
//! matching, and errors that name the file, the line and the key. Every key
//! is optional; an unknown key or a bad value is an error. Secrets named by
//! `secret_env` are read once, at load, and never printed.

use std::ffi::OsStr;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::units::parse_duration;
use crate::verify::hmac::{Algorithm, Encoding, HmacSpec, Piece, Template};
use crate::verify::{Provider, Rule, Scheme, Secret};

/// The file name searched for.
pub const FILE_NAME: &str = "whtunnel.toml";
/// The environment variable naming a config file.
pub const ENV_VAR: &str = "WHTUNNEL_CONFIG";

/// A config problem: one line naming the file, the line and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// The key, qualified by its table (`webhook.provider`), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// `[listen]`: defaults for `whtunnel listen`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listen {
    /// Default TARGET (`3000`, `host:port`, a URL).
    pub target: Option<String>,
    /// Default relay base URL.
    pub relay: Option<String>,
    /// Default tunnel name.
    pub name: Option<String>,
}

/// `[[route]]`: requests below `path` go to `target` instead of the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Path prefix below the tunnel.
    pub path: String,
    /// The local target, as TARGET is written.
    pub target: String,
}

/// `[[webhook]]`: how to verify, and re-sign, what arrives below `path`.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Path prefix below the tunnel.
    pub path: String,
    /// The resolved rule (secret included, redacted in `Debug`).
    pub rule: Rule,
    /// A JWKS URL to fetch (the caller does I/O; hand the keys to
    /// [`Rule::with_jwks`]).
    pub jwks_url: Option<String>,
    /// Line of the `[[webhook]]` header, for messages.
    pub line: usize,
}

/// A loaded `whtunnel.toml` (or the empty default when there is none).
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where it was read from; `None` for the default.
    pub path: Option<PathBuf>,
    /// `[listen]`.
    pub listen: Listen,
    /// `[[route]]`s in file order.
    pub routes: Vec<Route>,
    /// `[[webhook]]`s in file order.
    pub webhooks: Vec<Webhook>,
}

/// Where a setting came from (for messages such as "relay from WHTUNNEL_RELAY").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// An environment variable.
    Env,
    /// The config file.
    File,
}

/// The contract's precedence: a flag, then its environment variable, then
/// the file. Returns the value and where it came from.
pub fn layered<T>(flag: Option<T>, env: Option<T>, file: Option<T>) -> Option<(T, Source)> {
    flag.map(|v| (v, Source::Flag))
        .or_else(|| env.map(|v| (v, Source::Env)))
        .or_else(|| file.map(|v| (v, Source::File)))
}

/// Whether `prefix` covers `path` (query ignored), at a segment boundary:
/// `/hooks` covers `/hooks` and `/hooks/a`, not `/hooks2`; `/api/` covers
/// `/api` and everything below it.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if let Some(dir) = prefix.strip_suffix('/') {
        path == dir || path.starts_with(prefix)
    } else {
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

fn longest<'a, T>(items: &'a [T], path: &str, prefix: impl Fn(&T) -> &str) -> Option<&'a T> {
    items
        .iter()
        .filter(|i| prefix_matches(prefix(i), path))
        .max_by_key(|i| prefix(i).trim_end_matches('/').len())
}

impl Config {
    /// The nearest `whtunnel.toml` in `start` or a parent directory.
    pub fn discover(start: &Path) -> Option<PathBuf> {
        start
            .ancestors()
            .map(|dir| dir.join(FILE_NAME))
            .find(|p| p.is_file())
    }

    /// The file to use: `--config`, else `WHTUNNEL_CONFIG`, else the one
    /// discovered from `cwd`.
    pub fn locate(flag: Option<&Path>, env: Option<&OsStr>, cwd: &Path) -> Option<PathBuf> {
        if let Some(p) = flag {
            return Some(p.to_path_buf());
        }
        if let Some(p) = env.filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(p));
        }
        Self::discover(cwd)
    }

    /// Locates and loads the config as the CLI does: a named file must
    /// exist; with none found, the empty default.
    pub fn from_cli(flag: Option<&Path>, cwd: &Path) -> Result<Self, ConfigError> {
        let env = std::env::var_os(ENV_VAR);
        match Self::locate(flag, env.as_deref(), cwd) {
            Some(path) => Self::load(&path),
            None => Ok(Self::default()),
        }
    }

    /// Reads and checks `path`, taking `secret_env` values from the process
    /// environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, &|name| std::env::var(name).ok())
    }

    /// [`Config::load`] with a given environment lookup.
    pub fn load_with(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path, env)
    }

    /// Checks `text` as the contents of `path` (relative `jwks` files are
    /// read from `path`'s directory).
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let ctx = Ctx { text, path };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            match e.span() {
                Some(span) => ctx.error(&span, message),
                None => ctx.bare(message),
            }
        })?;
        let listen = raw.listen.map(|l| Listen {
            target: l.target.map(|t| t.into_inner().0),
            relay: l.relay.map(Spanned::into_inner),
            name: l.name.map(Spanned::into_inner),
        });
        let mut routes = Vec::new();
        for r in raw.route {
            let span = r.span();
            let r = r.into_inner();
            let path = ctx.path_value(r.path, &span, "route")?;
            let target = r.target.map(|t| t.into_inner().0).ok_or_else(|| {
                ctx.error_key(
                    &span,
                    "route.target",
                    "missing: a [[route]] needs a target".into(),
                )
            })?;
            routes.push(Route { path, target });
        }
        let mut webhooks = Vec::new();
        for w in raw.webhook {
            webhooks.push(ctx.webhook(w, env)?);
        }
        Ok(Self {
            path: Some(path.to_path_buf()),
            listen: listen.unwrap_or_default(),
            routes,
            webhooks,
        })
    }

    /// The `[[route]]` with the longest prefix covering `path`; `None`:
    /// the default target.
    pub fn route_for(&self, path: &str) -> Option<&Route> {
        longest(&self.routes, path, |r| &r.path)
    }

    /// The `[[webhook]]` rules as the agent judges and re-signs by them.
    /// A rule's `jwks` URL starts being fetched in the background (see
    /// [`crate::jwks`]) when this is called on a tokio runtime.
    pub fn webhook_rules(&self) -> crate::verify::Rules {
        crate::verify::Rules::new(self.webhooks.iter().map(|w| {
            let mut rule = w.rule.clone();
            if let Some(url) = &w.jwks_url {
                rule.jwks_source = Some(std::sync::Arc::new(crate::jwks::JwksFetcher::start(url)));
            }
            (w.path.clone(), rule)
        }))
    }

    /// The `[[webhook]]` with the longest prefix covering `path`.
    pub fn webhook_for(&self, path: &str) -> Option<&Webhook> {
        longest(&self.webhooks, path, |w| &w.path)
    }
}

/// A string, or a number written without quotes (`target = 3000`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawText {
    Text(String),
    Number(i64),
}

struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Text(match RawText::deserialize(d)? {
            RawText::Text(s) => s,
            RawText::Number(n) => n.to_string(),
        }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    listen: Option<RawListen>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    webhook: Vec<Spanned<RawWebhook>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    target: Option<Spanned<Text>>,
    relay: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: Option<Spanned<String>>,
    target: Option<Spanned<Text>>,
}

type S = Option<Spanned<String>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    path: S,
    provider: S,
    secret: S,
    secret_env: S,
    tolerance: S,
    timeout: S,
    scheme: S,
    header: S,
    prefix: S,
    signed: S,
    timestamp_header: S,
    id_header: S,
    algorithm: S,
    encoding: S,
    jwks: S,
    /// Extension: separator between several signatures in one header.
    separator: S,
    /// Extension: key of a timestamp inside the signature header (`t=`).
    timestamp_key: S,
}

struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Ctx<'_> {
    fn bare(&self, message: String) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: None,
            key: None,
            message,
        }
    }

    /// The 1-based line of byte `at`, and the line's text.
    fn line_at(&self, at: usize) -> (usize, &str) {
        let at = at.min(self.text.len());
        let start = self.text[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = self.text[at..]
            .find('\n')
            .map_or(self.text.len(), |i| at + i);
        (
            self.text[..at].matches('\n').count() + 1,
            &self.text[start..end],
        )
    }

    /// The table a line belongs to: the nearest `[x]` / `[[x]]` above it.
    fn table_of(&self, line: usize) -> Option<String> {
        self.text
            .lines()
            .take(line)
            .filter_map(|l| {
                let l = l.trim();
                l.starts_with('[')
                    .then(|| l.trim_matches(['[', ']', ' ']).to_string())
            })
            .last()
    }

    /// An error at `span`, the key read from the line there.
    fn error(&self, span: &Range<usize>, message: String) -> ConfigError {
        let (line, text) = self.line_at(span.start);
        let text = text.trim();
        let key = if text.starts_with('[') {
            Some(text.trim_matches(['[', ']', ' ']).to_string())
        } else {
            text.split_once('=').map(|(k, _)| {
                let k = k.trim().trim_matches('"');
                match self.table_of(line) {
                    Some(t) => format!("{t}.{k}"),
                    None => k.to_string(),
                }
            })
        };
        ConfigError {
            file: self.path.to_path_buf(),
            line: Some(line),
            key,
            message,
        }
    }

    fn error_key(&self, span: &Range<usize>, key: &str, message: String) -> ConfigError {
        ConfigError {
            key: Some(key.to_string()),
            ..self.error(span, message)
        }
    }

    fn path_value(&self, v: S, table: &Range<usize>, name: &str) -> Result<String, ConfigError> {
        let Some(v) = v else {
            return Err(self.error_key(
                table,
                &format!("{name}.path"),
                format!("missing: every [[{name}]] needs a path prefix"),
            ));
        };
        if !v.get_ref().starts_with('/') {
            return Err(self.error(&v.span(), format!("`{}` must start with `/`", v.get_ref())));
        }
        Ok(v.into_inner())
    }

    fn duration(&self, v: &S) -> Result<Option<Duration>, ConfigError> {
        v.as_ref()
            .map(|v| parse_duration(v.get_ref()).map_err(|e| self.error(&v.span(), e)))
            .transpose()
    }

    fn webhook(
        &self,
        w: Spanned<RawWebhook>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Webhook, ConfigError> {
        let table = w.span();
        let w = w.into_inner();
        let path = self.path_value(w.path.clone(), &table, "webhook")?;
        let provider = w
            .provider
            .as_ref()
            .map(|p| Provider::from_id(p.get_ref()).map_err(|e| self.error(&p.span(), e)))
            .transpose()?;
        let scheme_name = match &w.scheme {
            Some(s) if !["hmac", "jwt"].contains(&s.get_ref().as_str()) => {
                return Err(self.error(
                    &s.span(),
                    format!("unknown scheme `{}` (hmac, jwt)", s.get_ref()),
                ))
            }
            Some(s) => Some(s.get_ref().as_str()),
            None if w.header.is_some() => Some("hmac"),
            None => None,
        };
        if let (Some(p), Some(name), Some(s)) = (provider, scheme_name, &w.scheme) {
            if p.scheme().name() != name {
                return Err(self.error(
                    &s.span(),
                    format!(
                        "provider {} uses scheme {}, not {name}",
                        p.id(),
                        p.scheme().name()
                    ),
                ));
            }
        }
        let tolerance = self.duration(&w.tolerance)?;
        let timeout = self.duration(&w.timeout)?;

        let hmac_keys = [
            &w.header,
            &w.prefix,
            &w.signed,
            &w.timestamp_header,
            &w.id_header,
            &w.algorithm,
            &w.encoding,
            &w.separator,
            &w.timestamp_key,
        ];
        let base = match (provider.map(Provider::scheme), scheme_name) {
            (Some(Scheme::Hmac(spec)), _) => Some(Scheme::Hmac(spec)),
            (Some(other), _) => Some(other),
            (None, Some("hmac")) => {
                let Some(h) = &w.header else {
                    return Err(self.error_key(
                        &table,
                        "webhook.header",
                        "missing: scheme hmac needs the signature's header".into(),
                    ));
                };
                Some(Scheme::Hmac(HmacSpec::body_hex_sha256(h.get_ref(), "")))
            }
            (None, Some(_)) => Some(Scheme::Jwt),
            (None, None) => None,
        };
        let scheme = match base {
            Some(Scheme::Hmac(mut spec)) => {
                self.apply_hmac(&w, &mut spec)?;
                if tolerance.is_some() {
                    spec.tolerance = tolerance;
                }
                Some(Scheme::Hmac(spec))
            }
            other => {
                if let Some(k) = hmac_keys.into_iter().flatten().next() {
                    return Err(self.error(&k.span(), "only applies to scheme hmac".into()));
                }
                other
            }
        };
        if w.jwks.is_some() && !matches!(scheme, Some(Scheme::Jwt)) {
            if let Some(j) = &w.jwks {
                return Err(self.error(&j.span(), "only applies to scheme jwt".into()));
            }
        }

        let (secret, secret_hint) = match (&w.secret, &w.secret_env) {
            (Some(_), Some(e)) => {
                return Err(self.error(&e.span(), "give secret or secret_env, not both".into()))
            }
            (Some(s), None) => (Some(Secret::new(s.get_ref().clone())), None),
            (None, Some(e)) => match env(e.get_ref()).filter(|v| !v.is_empty()) {
                Some(v) => (Some(Secret::new(v)), None),
                None => (
                    None,
                    Some(format!("environment variable {} is not set", e.get_ref())),
                ),
            },
            (None, None) => (None, None),
        };
        let (jwks, jwks_url) = match &w.jwks {
            Some(j) if j.get_ref().contains("://") => {
                crate::jwks::check_url(j.get_ref()).map_err(|e| self.error(&j.span(), e))?;
                (None, Some(j.get_ref().clone()))
            }
            Some(j) => {
                let file = self
                    .path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(j.get_ref());
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    self.error(&j.span(), format!("cannot read {}: {e}", file.display()))
                })?;
                let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text).map_err(|e| {
                    self.error(&j.span(), format!("{} is not a JWKS: {e}", file.display()))
                })?;
                (Some(set), None)
            }
            None => (None, None),
        };
        let (line, _) = self.line_at(table.start);
        Ok(Webhook {
            path,
            rule: Rule {
                provider,
                scheme,
                secret,
                secret_hint,
                tolerance,
                timeout,
                jwks,
                jwks_source: None,
            },
            jwks_url,
            line,
        })
    }

    fn apply_hmac(&self, w: &RawWebhook, spec: &mut HmacSpec) -> Result<(), ConfigError> {
        if let Some(h) = &w.header {
            spec.header = h.get_ref().clone();
        }
        if let Some(p) = &w.prefix {
            spec.prefix = p.get_ref().clone();
        }
        if let Some(s) = &w.signed {
            spec.signed = Template::parse(s.get_ref()).map_err(|e| self.error(&s.span(), e))?;
        }
        if let Some(t) = &w.timestamp_header {
            spec.timestamp_header = Some(t.get_ref().clone());
        }
        if let Some(t) = &w.timestamp_key {
            spec.timestamp_key = Some(t.get_ref().clone());
        }
        if let Some(i) = &w.id_header {
            spec.id_header = Some(i.get_ref().clone());
        }
        if let Some(a) = &w.algorithm {
            spec.algorithm = Algorithm::parse(a.get_ref()).ok_or_else(|| {
                self.error(
                    &a.span(),
                    format!("unknown algorithm `{}` (sha1, sha256, sha512)", a.get_ref()),
                )
            })?;
        }
        if let Some(e) = &w.encoding {
            spec.encoding = Encoding::parse(e.get_ref()).ok_or_else(|| {
                self.error(
                    &e.span(),
                    format!("unknown encoding `{}` (hex, base64)", e.get_ref()),
                )
            })?;
        }
        if let Some(s) = &w.separator {
            let mut chars = s.get_ref().chars();
            spec.separator = match (chars.next(), chars.next()) {
                (Some(c), None) => Some(c),
                _ => return Err(self.error(&s.span(), "must be one character".into())),
            };
        }
        let uses = |p: &Piece| spec.signed.0.contains(p);
        if uses(&Piece::Timestamp)
            && spec.timestamp_header.is_none()
            && spec.timestamp_key.is_none()
        {
            let s = w.signed.as_ref().map_or(0..0, Spanned::span);
            return Err(self.error_key(
                &s,
                "webhook.signed",
                "uses {timestamp} but no timestamp_header is set".into(),
            ));
        }
        if uses(&Piece::Id) && spec.id_header.is_none() {
            let s = w.signed.as_ref().map_or(0..0, Spanned::span);
            return Err(self.error_key(
                &s,
                "webhook.signed",
                "uses {id} but no id_header is set".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/p/whtunnel.toml"), &no_env)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const FULL: &str = r#"
[listen]
target = 3000
relay = "https://hooks.example.com"
name = "alice-shop"

[[route]]
path = "/api/"
target = "http://localhost:4000"

[[route]]
path = "/api/v2"
target = "4002"

[[webhook]]
path = "/webhooks/stripe"
provider = "stripe"
secret = "whsec_abc"
tolerance = "10m"
timeout = "10s"

[[webhook]]
path = "/hooks/acme"
scheme = "hmac"
header = "X-Acme-Signature"
prefix = "sha256="
signed = "{timestamp}.{body}"
timestamp_header = "X-Acme-Timestamp"
id_header = "X-Acme-Id"
algorithm = "sha512"
encoding = "base64"
secret_env = "ACME_SECRET"

[[webhook]]
path = "/hooks"
"#;

    #[test]
    fn the_contract_example_loads_typed() {
        let env = |k: &str| (k == "ACME_SECRET").then(|| "acme-s3cret".to_string());
        let c = Config::parse(FULL, Path::new("/p/whtunnel.toml"), &env).unwrap();
        assert_eq!(c.listen.target.as_deref(), Some("3000"));
        assert_eq!(c.listen.relay.as_deref(), Some("https://hooks.example.com"));
        assert_eq!(c.listen.name.as_deref(), Some("alice-shop"));
        assert_eq!(c.routes.len(), 2);
        let stripe = &c.webhooks[0];
        assert_eq!(stripe.rule.provider, Some(Provider::Stripe));
        assert_eq!(stripe.rule.sender_timeout(), Some(Duration::from_secs(10)));
        let Some(Scheme::Hmac(spec)) = &stripe.rule.scheme else {
            panic!()
        };
        assert_eq!(spec.tolerance, Some(Duration::from_secs(600)));
        assert_eq!(spec.header, "Stripe-Signature");
        let acme = &c.webhooks[1];
        assert_eq!(acme.line, 22);
        assert_eq!(
            acme.rule.secret.as_ref().map(Secret::expose),
            Some("acme-s3cret")
        );
        let Some(Scheme::Hmac(spec)) = &acme.rule.scheme else {
            panic!()
        };
        assert_eq!(
            (spec.algorithm, spec.encoding),
            (Algorithm::Sha512, Encoding::Base64)
        );
        assert_eq!(spec.signed, Template::parse("{timestamp}.{body}").unwrap());
        assert!(
            !format!("{c:?}").contains("acme-s3cret"),
            "secrets redacted in Debug"
        );
        assert!(!format!("{c:?}").contains("whsec_abc"));
        // A rule with neither provider nor scheme: recognised per request.
        assert!(c.webhooks[2].rule.scheme.is_none());
    }

    #[test]
    fn longest_prefix_wins_at_segment_boundaries() {
        let c = parse(FULL).unwrap();
        assert_eq!(c.route_for("/api/v2/x?q=1").unwrap().target, "4002");
        assert_eq!(
            c.route_for("/api/v1").unwrap().target,
            "http://localhost:4000"
        );
        assert_eq!(c.route_for("/api").unwrap().target, "http://localhost:4000");
        assert!(c.route_for("/apix").is_none());
        assert!(c.route_for("/api/v20").unwrap().target.contains("4000"));
        assert_eq!(c.webhook_for("/hooks/acme/x").unwrap().path, "/hooks/acme");
        assert_eq!(c.webhook_for("/hooks/other").unwrap().path, "/hooks");
        assert_eq!(
            c.webhook_for("/webhooks/stripe?x").unwrap().path,
            "/webhooks/stripe"
        );
        assert!(c.webhook_for("/webhooks/stripe2").is_none());
    }

    #[test]
    fn missing_secret_env_leaves_the_rule_unchecked_with_a_hint() {
        let c = parse(FULL).unwrap();
        let acme = &c.webhooks[1];
        assert!(acme.rule.secret.is_none());
        assert_eq!(
            acme.rule.secret_hint.as_deref(),
            Some("environment variable ACME_SECRET is not set")
        );
    }

    #[test]
    fn every_error_names_file_line_and_key() {
        let cases = [
            ("[listen]\ntraget = \"3000\"\n", "/p/whtunnel.toml:2: listen.traget: unknown field `traget`"),
            ("[listen]\nname = 3\n", "/p/whtunnel.toml:2: listen.name: invalid type"),
            ("[[webhook]]\npath = \"/a\"\nprovider = \"strype\"\n", "/p/whtunnel.toml:3: webhook.provider: unknown provider `strype` (known: standard-webhooks, svix, stripe, github, shopify, slack, square, paddle, twilio, zoom, twitch, sendgrid, discord, finexer, bridge, moneyhub, klavi, finaegis)"),
            ("[[webhook]]\npath = \"/a\"\nprovider = \"stripe\"\ntolerance = \"5 parsecs\"\n", "/p/whtunnel.toml:4: webhook.tolerance: "),
            ("\n[[webhook]]\npath = \"/a\"\nscheme = \"hmac\"\nheader = \"X\"\nalgorithm = \"md5\"\n", "/p/whtunnel.toml:6: webhook.algorithm: unknown algorithm `md5` (sha1, sha256, sha512)"),
            ("[[webhook]]\npath = \"/a\"\nheader = \"X\"\nencoding = \"hex64\"\n", "/p/whtunnel.toml:4: webhook.encoding: unknown encoding `hex64` (hex, base64)"),
            ("[[webhook]]\npath = \"/a\"\nheader = \"X\"\nsigned = \"{tmestamp}.{body}\"\n", "/p/whtunnel.toml:4: webhook.signed: unknown placeholder `{tmestamp}`"),
            ("[[webhook]]\npath = \"/a\"\nheader = \"X\"\nsigned = \"{timestamp}.{body}\"\n", "/p/whtunnel.toml:4: webhook.signed: uses {timestamp} but no timestamp_header is set"),
            ("[[webhook]]\npath = \"/a\"\nscheme = \"rsa\"\n", "/p/whtunnel.toml:3: webhook.scheme: unknown scheme `rsa` (hmac, jwt)"),
            ("[[webhook]]\npath = \"/a\"\nscheme = \"hmac\"\n", "/p/whtunnel.toml:1: webhook.header: missing"),
            ("[[webhook]]\nprovider = \"github\"\n", "/p/whtunnel.toml:1: webhook.path: missing"),
            ("[[webhook]]\npath = \"a\"\n", "/p/whtunnel.toml:2: webhook.path: `a` must start with `/`"),
            ("[[webhook]]\npath = \"/a\"\nprovider = \"github\"\nsecret = \"x\"\nsecret_env = \"Y\"\n", "/p/whtunnel.toml:5: webhook.secret_env: give secret or secret_env, not both"),
            ("[[webhook]]\npath = \"/a\"\nprovider = \"sendgrid\"\nprefix = \"v1=\"\n", "/p/whtunnel.toml:4: webhook.prefix: only applies to scheme hmac"),
            ("[[webhook]]\npath = \"/a\"\nprovider = \"github\"\nscheme = \"jwt\"\n", "/p/whtunnel.toml:4: webhook.scheme: provider github uses scheme hmac, not jwt"),
            ("[[webhook]]\npath = \"/a\"\nscheme = \"jwt\"\njwks = \"missing.json\"\n", "/p/whtunnel.toml:4: webhook.jwks: cannot read /p/missing.json"),
            ("[[webhook]]\npath = \"/a\"\nscheme = \"jwt\"\njwks = \"http://id.example/k\"\n", "/p/whtunnel.toml:4: webhook.jwks: http://id.example/k: keys are fetched over https:// (http:// only from a loopback host)"),
            ("[[route]]\npath = \"/a\"\n", "/p/whtunnel.toml:1: route.target: missing"),
            ("[[route]]\npath = \"/a\"\ntarget = \"1\"\nweight = 2\n", "/p/whtunnel.toml:4: route.weight: unknown field `weight`"),
            ("[listen\n", "/p/whtunnel.toml:1"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(
                got.starts_with(want),
                "for {text:?}\n got: {got}\nwant: {want}…"
            );
            assert!(!got.contains('\n'), "one line: {got}");
        }
    }

    #[test]
    fn discovery_walks_up_like_git_and_flag_beats_env_beats_discovery() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let deep = root.join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(Config::discover(&deep), None);
        std::fs::write(root.join("a").join(FILE_NAME), "[listen]\ntarget = \"1\"\n").unwrap();
        assert_eq!(
            Config::discover(&deep),
            Some(root.join("a").join(FILE_NAME))
        );
        std::fs::write(root.join("a/b").join(FILE_NAME), "").unwrap();
        assert_eq!(
            Config::discover(&deep),
            Some(root.join("a/b").join(FILE_NAME))
        );

        let flag = root.join("flag.toml");
        let env = root.join("env.toml");
        assert_eq!(
            Config::locate(Some(&flag), Some(env.as_os_str()), &deep),
            Some(flag.clone())
        );
        assert_eq!(
            Config::locate(None, Some(env.as_os_str()), &deep),
            Some(env.clone())
        );
        assert_eq!(
            Config::locate(None, Some(OsStr::new("")), &deep),
            Some(root.join("a/b").join(FILE_NAME))
        );

        let c = Config::load(&root.join("a").join(FILE_NAME)).unwrap();
        assert_eq!(c.listen.target.as_deref(), Some("1"));
        let e = Config::load(&flag).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: cannot read", flag.display())),
            "{e}"
        );
    }

    #[test]
    fn precedence_is_flag_then_env_then_file() {
        assert_eq!(layered(Some(1), Some(2), Some(3)), Some((1, Source::Flag)));
        assert_eq!(layered(None, Some(2), Some(3)), Some((2, Source::Env)));
        assert_eq!(layered(None, None, Some(3)), Some((3, Source::File)));
        assert_eq!(layered::<u8>(None, None, None), None);
    }

    #[test]
    fn a_jwks_file_is_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::write(
            dir.path().join("keys/jwks.json"),
            r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"AAAA","y":"AAAA"}]}"#,
        )
        .unwrap();
        let file = dir.path().join(FILE_NAME);
        std::fs::write(&file, "[[webhook]]\npath = \"/mh\"\nprovider = \"moneyhub\"\njwks = \"keys/jwks.json\"\n\n[[webhook]]\npath = \"/u\"\nscheme = \"jwt\"\njwks = \"https://id.example/jwks\"\n").unwrap();
        let c = Config::load(&file).unwrap();
        assert_eq!(c.webhooks[0].rule.jwks.as_ref().unwrap().keys.len(), 1);
        assert_eq!(
            c.webhooks[1].jwks_url.as_deref(),
            Some("https://id.example/jwks")
        );
    }
}
