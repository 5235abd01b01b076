//! Units and the defaults expressed in them: byte sizes and durations as
//! users type them (`25MiB`, `30s`) and as whtunnel prints them, plus the
//! limits that several parts must agree on. Each default lives here once;
//! clap takes its defaults from these values, never from a second literal.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// One kibibyte.
pub const KIB: u64 = 1 << 10;
/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// Largest request body the relay accepts (413 past it), and so the most
/// of one body the capture keeps and the most of an answer to a held event
/// the agent reads back.
pub const DEFAULT_MAX_BODY: u64 = 25 * MIB;

/// How long the app has to answer: the relay's response timeout (504 past
/// it), and the replay's when no relay deadline applies.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// While the app is down, how often the inspector probes it again, so that
/// its "nothing listening" notice goes away soon after the app starts.
pub const APP_REPROBE_INTERVAL: Duration = Duration::from_secs(2);

/// How long a JWKS fetched from a `jwks` URL is used before it is fetched
/// again (in the background; the old keys serve meanwhile).
pub const JWKS_TTL: Duration = Duration::from_secs(10 * 60);
/// The soonest a JWKS is fetched again after a fetch (on a token whose
/// `kid` it lacks, or after an error): a sender cannot make whtunnel hammer
/// the key server.
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);
/// A JWKS fetch (connect, TLS, answer) gives up after this.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS document accepted.
pub const JWKS_MAX_BYTES: usize = 256 * KIB as usize;

/// A byte count as users write it (`25MiB`, `512KiB`, `10MB`, `1024`) and
/// as whtunnel shows it in `--help` (`25MiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_size(s).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the count exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
            if n >= unit && n.is_multiple_of(unit) {
                return write!(f, "{}{name}", n / unit);
            }
        }
        write!(f, "{n}")
    }
}

/// A duration as users write it (`30s`, `500ms`, `2m`, `72h`) and as
/// whtunnel shows it in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    /// The largest unit that divides the duration exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, name) in [(3_600_000, "h"), (60_000, "m"), (1000, "s")] {
            if ms >= unit && ms.is_multiple_of(unit) {
                return write!(f, "{}{name}", ms / unit);
            }
        }
        write!(f, "{ms}ms")
    }
}

/// Parses `30s`, `500ms`, `2m`, `1h`, `30d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 30s, 500ms)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(format!("'{s}' is not a duration (e.g. 30s, 500ms)")),
    };
    if !(secs > 0.0 && secs < 1e9) {
        return Err(format!("'{s}' must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `25MiB`, `512KiB`, `1GiB`, `10MB`, or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 25MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => KIB,
        "m" | "mb" => 1_000_000,
        "mib" => MIB,
        "g" | "gb" => 1_000_000_000,
        "gib" => GIB,
        _ => return Err(format!("'{s}' is not a size (e.g. 25MiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// A measured duration for people, from milliseconds: `850µs`, `12ms`,
/// `1.52s`, `150s`. The CLI, the log line and the inspector all print this
/// way. Never more than 6 characters below 99,999 s, the width of the
/// inspector's DUR column: two decimals below 100 s, none from there.
pub fn fmt_duration(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0}µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else if ms < 99_995.0 {
        // Decided on the value as it would print: 99.996 s prints as "100.00s".
        format!("{:.2}s", ms / 1000.0)
    } else {
        format!("{:.0}s", ms / 1000.0)
    }
}

/// A byte count for people: `512 B`, `1.2 KiB`, `391 KiB`, `3.4 MiB`.
/// Never more than 8 characters below 10,000 GiB, the width of the
/// inspector's SIZE column: one decimal below 100 of a unit, none from
/// there.
pub fn fmt_size(n: u64) -> String {
    if n < KIB {
        return format!("{n} B");
    }
    let (value, unit) = if n < MIB {
        (n as f64 / KIB as f64, "KiB")
    } else if n < GIB {
        (n as f64 / MIB as f64, "MiB")
    } else {
        (n as f64 / GIB as f64, "GiB")
    };
    // Decided on the value as it would print: 99.96 prints as "100.0".
    if value < 99.95 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.0} {unit}")
    }
}

/// An ACME certificate is renewed when it has less than this left (or a
/// third of its lifetime, whichever comes first).
pub const ACME_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// How often the relay checks its ACME certificates for renewal and retries
/// failed orders (four tries an hour stay under Let's Encrypt's five failed
/// validations per host per hour).
pub const ACME_CHECK_EVERY: Duration = Duration::from_secs(15 * 60);

/// The ACME directory used when only `--acme-email` is given.
pub const ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "10x", "-1s", "0"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("25MiB").unwrap(), 25 << 20);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("10mb").unwrap(), 10_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        for bad in ["", "MiB", "1 TiB", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_print_as_users_type_them_and_parse_back() {
        for (size, text) in [
            (DEFAULT_MAX_BODY, "25MiB"),
            (GIB, "1GiB"),
            (KIB, "1KiB"),
            (1500, "1500"),
        ] {
            assert_eq!(ByteSize(size).to_string(), text);
            assert_eq!(text.parse::<ByteSize>().unwrap(), ByteSize(size));
        }
        for (d, text) in [
            (DEFAULT_RESPONSE_TIMEOUT, "30s"),
            (Duration::from_secs(72 * 3600), "72h"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_millis(1500), "1500ms"),
        ] {
            assert_eq!(HumanDuration(d).to_string(), text);
            assert_eq!(text.parse::<HumanDuration>().unwrap(), HumanDuration(d));
        }
    }

    #[test]
    fn printed_durations_and_sizes() {
        assert_eq!(fmt_duration(0.25), "250µs");
        assert_eq!(fmt_duration(12.4), "12ms");
        assert_eq!(fmt_duration(1520.0), "1.52s");
        assert_eq!(fmt_duration(99_994.0), "99.99s");
        assert_eq!(fmt_duration(99_996.0), "100s");
        assert_eq!(fmt_duration(150_000.0), "150s");
        for ms in [
            0.9996,
            999.6,
            9_999.0,
            99_994.9,
            99_995.0,
            3_600_000.0,
            99_999_000.0,
        ] {
            let shown = fmt_duration(ms);
            assert!(shown.chars().count() <= 6, "{ms}: {shown}");
        }
        assert_eq!(fmt_size(512), "512 B");
        assert_eq!(fmt_size(1230), "1.2 KiB");
        assert_eq!(fmt_size(3 * MIB + MIB / 2), "3.5 MiB");
        assert_eq!(fmt_size(102_348), "99.9 KiB");
        assert_eq!(fmt_size(102_349), "100 KiB");
        assert_eq!(fmt_size(400_000), "391 KiB");
        assert_eq!(fmt_size(MIB - 1), "1024 KiB");
        assert_eq!(fmt_size(5 * GIB), "5.0 GiB");
        for n in [
            1,
            KIB - 1,
            100 * KIB - 1,
            MIB - 1,
            100 * MIB,
            GIB - 1,
            9_999 * GIB,
        ] {
            assert!(fmt_size(n).chars().count() <= 8, "{n}: {}", fmt_size(n));
        }
    }
}
