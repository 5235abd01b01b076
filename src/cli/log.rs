//! What `listen` and `relay` print: tracing set-up, and with `--no-tui`
//! one line per exchange on stdout and link changes on stderr.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{AgentTask, Ended};
use crate::agent::ConnectionStatus;
use crate::capture::{self, CaptureEvent, Recorder};
use crate::forward::Target;

/// Opens (appending) a log file readable by its owner alone: a log holds
/// tunnel names, addresses and error text. A log made 0644 by an older
/// version is tightened too.
fn open_private_log(path: &Path) -> Option<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let f = opts.open(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
    }
    Some(f)
}

/// Libraries whose trace output includes request headers (tokens).
const SECRET_TRACING_TARGETS: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "h2",
    "hyper",
    "hyper_util",
];

/// `WHTUNNEL_LOG` (else `default_level`), with the libraries that log
/// secrets capped.
fn log_filter(default_level: &str) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    let asked = std::env::var("WHTUNNEL_LOG").ok();
    let directives = log_directives(asked.as_deref(), default_level);
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new(default_level))
}

/// The filter directives for `asked` (`WHTUNNEL_LOG`). The websocket and
/// HTTP libraries log whole request heads at trace level, the agent's
/// `authorization: Bearer` included: when trace is asked for anywhere, they
/// are held at debug. Only then: a directive for them would otherwise turn
/// their debug output on under a quieter level.
fn log_directives(asked: Option<&str>, default_level: &str) -> String {
    let base = asked
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .unwrap_or(default_level);
    if !base.to_ascii_lowercase().contains("trace") {
        return base.to_string();
    }
    SECRET_TRACING_TARGETS
        .iter()
        .fold(base.to_string(), |d, target| format!("{d},{target}=debug"))
}

pub(crate) fn init_logging(to_file: Option<&Path>, default_level: &str) {
    let filter = log_filter(default_level);
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let file = to_file.and_then(open_private_log);
    let _ = match file {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        None => builder
            .with_ansi(stderr_is_terminal())
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

/// Colour codes only for a terminal: a pipe, a file or systemd's journal
/// would keep them as `\x1b[2m` litter.
fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal()
}

/// The relay's logging: text lines, or with `--log-format json` one JSON
/// object per line, on stderr.
pub(crate) fn init_relay_logging(format: super::args::LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter("info"))
        .with_ansi(stderr_is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        super::args::LogFormat::Text => builder.try_init(),
        super::args::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// An error already logged (as a JSON line): `main` exits non-zero
/// without printing it again.
#[derive(Debug, thiserror::Error)]
#[error("already reported")]
pub(crate) struct Reported;

/// A warning for the relay's operator, like [`relay_says`] but at warning
/// level when logs are JSON.
pub(crate) fn relay_warns(format: super::args::LogFormat, line: &str) {
    match format {
        super::args::LogFormat::Text => eprintln!("{line}"),
        super::args::LogFormat::Json => tracing::warn!("{line}"),
    }
}

/// A line the relay says to its operator: as is on stderr, or, when logs
/// are JSON, as a log event so every stderr line stays one JSON object.
pub(crate) fn relay_says(format: super::args::LogFormat, line: &str) {
    match format {
        super::args::LogFormat::Text => eprintln!("{line}"),
        super::args::LogFormat::Json => tracing::info!("{line}"),
    }
}

/// `--no-tui`: one line per exchange on stdout, link changes on stderr.
pub(crate) async fn run_log(
    recorder: Option<&Recorder>,
    mut status: watch::Receiver<ConnectionStatus>,
    target: &Target,
    stop: &CancellationToken,
    agent: &mut AgentTask,
    in_flight: &watch::Receiver<usize>,
    mut backlog: watch::Receiver<u64>,
) -> Ended {
    let mut events = recorder.map(Recorder::subscribe_finished);
    let mut drain = DrainReport::default();
    let mut announced = false;
    let mut stopping = false;
    let report = |s: &ConnectionStatus, announced: &mut bool| match s {
        ConnectionStatus::Connected { public_url, held } => {
            if *announced {
                eprintln!("reconnected: {public_url}");
            } else {
                println!("Forwarding {public_url} -> {target}");
                *announced = true;
            }
            if *held > 0 {
                eprintln!("{}", crate::agent::status::held_notice(*held));
            }
        }
        ConnectionStatus::Reconnecting {
            retry_at,
            last_error,
        } => {
            let wait = retry_at.saturating_duration_since(Instant::now());
            eprintln!("{last_error}; reconnecting in {:.1}s", wait.as_secs_f64());
        }
        ConnectionStatus::Refused { reason } => eprintln!("{reason}"),
        ConnectionStatus::Connecting => {}
    };
    let current = status.borrow_and_update().clone();
    report(&current, &mut announced);
    loop {
        tokio::select! {
            changed = status.changed() => {
                // The agent ended: its result says why (a refusal is an error).
                if changed.is_err() {
                    let joined = (&mut *agent).await;
                    print_left_over(events.as_mut());
                    return Ended::Agent(joined);
                }
                let s = status.borrow_and_update().clone();
                report(&s, &mut announced);
            }
            event = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(rx) = events.as_mut() {
                    if !print_log_lines(event, rx) {
                        events = None;
                    }
                }
            }
            joined = &mut *agent => {
                print_left_over(events.as_mut());
                return Ended::Agent(joined);
            }
            Ok(()) = backlog.changed() => {
                let left = *backlog.borrow_and_update();
                if let Some(line) = drain.update(left, Instant::now()) {
                    eprintln!("{line}");
                }
            }
            // Stopping: the exchanges in flight finish (and are printed)
            // before the listener's task ends.
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                super::say_waiting(*in_flight.borrow());
            }
        }
    }
}

/// The `held: N left, R/s` lines while a backlog drains: at most one a
/// second, and one when it is done.
#[derive(Debug, Default)]
struct DrainReport {
    /// The count and time of the last line printed.
    last: Option<(u64, Instant)>,
}

impl DrainReport {
    /// The line to print for the backlog now at `left`, if one is due.
    fn update(&mut self, left: u64, now: Instant) -> Option<String> {
        match self.last {
            None if left == 0 => None,
            None => {
                self.last = Some((left, now));
                Some(format!("held: {left} left"))
            }
            Some(_) if left == 0 => {
                self.last = None;
                Some("held: all delivered".to_string())
            }
            Some((before, at)) => {
                let secs = now.duration_since(at).as_secs_f64();
                if secs < 1.0 {
                    return None;
                }
                self.last = Some((left, now));
                let rate = before.saturating_sub(left) as f64 / secs;
                Some(format!("held: {left} left, {rate:.0}/s"))
            }
        }
    }
}

/// Prints the capture events still queued once the listener has ended
/// (the exchanges that finished while it stopped).
fn print_left_over(events: Option<&mut tokio::sync::broadcast::Receiver<CaptureEvent>>) {
    let Some(rx) = events else { return };
    while let Ok(first) = rx.try_recv() {
        if !print_log_lines(Ok(first), rx) {
            break;
        }
    }
}

/// Prints `first` and every capture event already waiting behind it with one
/// write: under load the recorder publishes a whole batch at once, and a
/// write per line would cost a syscall per exchange. Returns false once the
/// recorder is gone.
fn print_log_lines(
    first: Result<CaptureEvent, tokio::sync::broadcast::error::RecvError>,
    rx: &mut tokio::sync::broadcast::Receiver<CaptureEvent>,
) -> bool {
    use std::io::Write as _;
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    // Room for a batch of lines without growing on the way.
    let mut out = String::with_capacity(8 * 1024);
    let mut open = true;
    let mut next = Some(first);
    while let Some(event) = next.take() {
        match event {
            // One line per finished exchange: its start is not logged.
            Ok(CaptureEvent::Started(_)) => {}
            Ok(CaptureEvent::Stored(s)) => write_log_line(&mut out, &s, None),
            Ok(CaptureEvent::NotStored { summary, reason }) => {
                write_log_line(&mut out, &summary, Some(&reason))
            }
            Err(RecvError::Lagged(n)) => {
                eprintln!("({n} exchanges not shown: output could not keep up)")
            }
            Err(RecvError::Closed) => {
                open = false;
                break;
            }
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        if out.len() > 64 * 1024 {
            break;
        }
        next = match rx.try_recv() {
            Ok(e) => Some(Ok(e)),
            Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
            Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
            Err(TryRecvError::Empty) => None,
        };
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    open
}

/// One exchange as a log line: time (UTC, like `requests list`), method,
/// path, status, duration, event. What a sender controls (method, path,
/// event type, error text) is escaped: it never reaches the terminal as
/// control characters.
pub fn log_line(s: &capture::ExchangeSummary, not_stored: Option<&str>) -> String {
    let mut out = String::new();
    write_log_line(&mut out, s, not_stored);
    out
}

/// Appends the decimal digits of `n` to `out` (what `write!("{n}")`
/// prints, without the formatting machinery: this runs once per exchange).
fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

/// Appends `n` (below 1000) zero-padded to `width` digits.
fn push_padded(out: &mut String, n: u32, width: u32) {
    for place in (0..width).rev() {
        out.push(char::from(b'0' + (n / 10u32.pow(place) % 10) as u8));
    }
}

/// Appends `ms` with one decimal, exactly as `{:.1}` prints it. Values
/// whose rounding is not plain (a tie, a huge or odd value) take the
/// formatter; the others are two integers.
fn push_tenths(out: &mut String, ms: f64) {
    use std::fmt::Write as _;
    let x = ms * 10.0;
    let frac = x - x.floor();
    // Below 1e9 the product is off by at most ~1e-7: outside the band
    // around a tie it rounds the way the exact decimal value does.
    if !(0.0..1e9).contains(&x) || x.is_sign_negative() || (frac - 0.5).abs() < 1e-6 {
        let _ = write!(out, "{ms:.1}");
        return;
    }
    let tenths = x.round() as u64;
    push_u64(out, tenths / 10);
    out.push('.');
    out.push(char::from(b'0' + (tenths % 10) as u8));
}

/// Appends [`log_line`] to `out`, written in place: one line per exchange
/// under load, so no formatting machinery or allocation per field.
fn write_log_line(out: &mut String, s: &capture::ExchangeSummary, not_stored: Option<&str>) {
    use crate::capture::export::terminal_safe;
    use chrono::Timelike;
    let safe = |out: &mut String, t: &str| out.push_str(&terminal_safe(t, false));
    let t = s.received_at;
    push_padded(out, t.hour(), 2);
    out.push(':');
    push_padded(out, t.minute(), 2);
    out.push(':');
    push_padded(out, t.second(), 2);
    out.push('.');
    push_padded(out, t.nanosecond() % 1_000_000_000 / 1_000_000, 3);
    out.push_str("Z ");
    let method_at = out.len();
    safe(out, &s.method);
    let width = out[method_at..].chars().count();
    out.extend(std::iter::repeat_n(' ', 6usize.saturating_sub(width)));
    out.push(' ');
    safe(out, &s.path);
    match s.status {
        Some(c) => {
            out.push(' ');
            push_u64(out, c.into());
        }
        None => out.push_str(" ---"),
    }
    out.push(' ');
    push_tenths(out, s.duration_ms);
    out.push_str("ms");
    if let Some(e) = &s.event {
        out.push(' ');
        safe(out, e);
    }
    if let Some(v) = signature_mark(s) {
        out.push(' ');
        safe(out, &v);
    }
    if let Some(id) = s.replay_of {
        out.push_str(" (replay of #");
        match u64::try_from(id) {
            Ok(id) => push_u64(out, id),
            Err(_) => out.push_str(&id.to_string()),
        }
        out.push(')');
    }
    if let Ok(id @ 1..) = u64::try_from(s.id) {
        out.push_str(" #");
        push_u64(out, id);
    }
    if let Some(err) = &s.error {
        out.push_str(" [");
        safe(out, err.trim());
        out.push(']');
    }
    if let Some(reason) = not_stored {
        out.push_str(" [not stored: ");
        safe(out, reason);
        out.push(']');
    }
}

/// Most characters of a signature reason on the log line; the rest is
/// in `requests show`.
const LOG_REASON_MAX: usize = 100;

/// The signature verdict for the log line: `✓ stripe`, `✗ stripe (signature
/// mismatch: …)`, `unsigned stripe (missing header Stripe-Signature)`,
/// `unchecked stripe (not checked: …)`; `None` when nothing was checked.
fn signature_mark(s: &capture::ExchangeSummary) -> Option<String> {
    use crate::verify::Verdict;
    let mark = match s.signature? {
        Verdict::Valid => "\u{2713}",
        Verdict::Invalid => "\u{2717}",
        Verdict::Unsigned => "unsigned",
        Verdict::Unchecked => "unchecked",
    };
    let mut out = match &s.provider {
        Some(p) => format!("{mark} {p}"),
        None => mark.to_string(),
    };
    if let Some(reason) = s.signature_reason.as_deref().map(str::trim) {
        if !reason.is_empty() {
            out.push_str(" (");
            if reason.chars().count() > LOG_REASON_MAX {
                out.extend(reason.chars().take(LOG_REASON_MAX - 1));
                out.push('\u{2026}');
            } else {
                out.push_str(reason);
            }
            out.push(')');
        }
    }
    Some(out)
}

#[cfg(test)]
mod drain_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_draining_backlog_is_reported_at_most_once_a_second_and_when_done() {
        let t0 = Instant::now();
        let mut d = DrainReport::default();
        assert_eq!(d.update(0, t0), None, "nothing held: nothing said");
        assert_eq!(d.update(1000, t0).as_deref(), Some("held: 1000 left"));
        assert_eq!(d.update(900, t0 + Duration::from_millis(500)), None);
        assert_eq!(
            d.update(700, t0 + Duration::from_secs(2)).as_deref(),
            Some("held: 700 left, 150/s")
        );
        assert_eq!(
            d.update(0, t0 + Duration::from_millis(2100)).as_deref(),
            Some("held: all delivered")
        );
        assert_eq!(d.update(0, t0 + Duration::from_secs(3)), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Verdict;

    /// The line as it was built before it was written in place: the
    /// format stays the same, field for field.
    fn formatted(s: &capture::ExchangeSummary, not_stored: Option<&str>) -> String {
        use crate::capture::export::terminal_safe;
        let line = |t: &str| terminal_safe(t, false).into_owned();
        let status = s.status.map_or_else(|| "---".into(), |c| c.to_string());
        let mut out = format!(
            "{} {:<6} {} {status} {:.1}ms",
            s.received_at.format("%H:%M:%S%.3fZ"),
            line(&s.method),
            line(&s.path),
            s.duration_ms
        );
        for (on, text) in [
            (
                s.event.is_some(),
                format!(" {}", line(s.event.as_deref().unwrap_or(""))),
            ),
            (
                s.replay_of.is_some(),
                format!(" (replay of #{})", s.replay_of.unwrap_or(0)),
            ),
            (s.id > 0, format!(" #{}", s.id)),
            (
                s.error.is_some(),
                format!(" [{}]", line(s.error.as_deref().unwrap_or("").trim())),
            ),
            (
                not_stored.is_some(),
                format!(" [not stored: {}]", line(not_stored.unwrap_or(""))),
            ),
        ] {
            if on {
                out.push_str(&text);
            }
        }
        out
    }

    #[test]
    fn the_log_line_keeps_its_format() {
        use chrono::TimeZone;
        let mut ex = crate::capture::Exchange::default();
        ex.request.method = "DELETE\x1b".into();
        ex.request.path = "/a\nb?x=1".into();
        ex.received_at = chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
            + chrono::Duration::microseconds(678_901);
        let mut s = ex.summary();
        s.duration_ms = 12.345;
        assert_eq!(log_line(&s, None), formatted(&s, None));
        assert!(
            log_line(&s, None).starts_with("03:04:05.678Z "),
            "{}",
            log_line(&s, None)
        );
        s.method = "GET".into();
        s.status = Some(204);
        s.event = Some("push\x07".into());
        s.replay_of = Some(3);
        s.id = 42;
        s.error = Some(" cancelled\r\n ".into());
        assert_eq!(
            log_line(&s, Some("queue full")),
            formatted(&s, Some("queue full"))
        );
        let mut out = String::from("before\n");
        write_log_line(&mut out, &s, None);
        assert_eq!(out, format!("before\n{}", formatted(&s, None)));
    }

    #[test]
    fn numbers_on_the_log_line_print_as_the_formatter_prints_them() {
        let mut ms = vec![
            0.0,
            0.04,
            0.05,
            0.25,
            0.35,
            0.95,
            1.0,
            9.96,
            12.345,
            99.95,
            1e6 + 0.05,
        ];
        ms.extend([f64::NAN, f64::INFINITY, -1.5, -0.0, 1e300, 99_999_999.96]);
        // A spread of ordinary durations, ties included (n / 20 hits .x5).
        ms.extend((0..5000).map(|n| f64::from(n) / 20.0));
        ms.extend((0..5000).map(|n| f64::from(n) * 0.0137));
        for m in ms {
            let mut out = String::new();
            push_tenths(&mut out, m);
            assert_eq!(out, format!("{m:.1}"), "{m:?}");
        }
        for n in [0, 7, 10, 99, 100, 12345, u64::MAX] {
            let mut out = String::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn secret_logging_libraries_are_capped_only_when_trace_is_asked_for() {
        // Quiet by default: no directive turns the libraries' debug on.
        assert_eq!(log_directives(None, "warn"), "warn");
        assert_eq!(log_directives(Some("info"), "warn"), "info");
        assert_eq!(log_directives(Some(" "), "warn"), "warn");
        for asked in ["trace", "whtunnel=TRACE,info"] {
            let d = log_directives(Some(asked), "warn");
            for target in SECRET_TRACING_TARGETS {
                assert!(d.contains(&format!(",{target}=debug")), "{asked}: {d}");
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_log_file_is_private_even_if_it_was_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whtunnel.log");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        drop(open_private_log(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(open_private_log(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn the_log_line_carries_the_verdict_escaped() {
        let mut ex = crate::capture::Exchange::default();
        ex.request.method = "POST".into();
        ex.request.path = "/webhooks/stripe".into();
        let mut s = ex.summary();
        assert!(!log_line(&s, None).contains('\u{2713}'));
        s.provider = Some("stripe".into());
        s.signature = Some(Verdict::Valid);
        assert!(
            log_line(&s, None).contains(" \u{2713} stripe"),
            "{}",
            log_line(&s, None)
        );
        s.signature = Some(Verdict::Invalid);
        assert!(log_line(&s, None).contains(" \u{2717} stripe"));
        s.signature = Some(Verdict::Unsigned);
        assert!(log_line(&s, None).contains(" unsigned stripe"));
        // A provider id comes from the store: escaped like the rest.
        s.provider = Some("evil\x1b[2J".into());
        assert!(!log_line(&s, None).contains('\x1b'));
    }

    #[test]
    fn the_log_line_gives_the_reason_short_and_escaped() {
        let mut ex = crate::capture::Exchange::default();
        ex.request.method = "POST".into();
        ex.request.path = "/webhooks/stripe".into();
        let mut s = ex.summary();
        s.provider = Some("stripe".into());
        s.signature = Some(Verdict::Invalid);
        s.signature_reason = Some("signature mismatch: wrong secret, or the body changed".into());
        s.id = 4;
        let line = log_line(&s, None);
        assert!(
            line.contains(
                " \u{2717} stripe (signature mismatch: wrong secret, or the body changed) #4"
            ),
            "{line}"
        );
        s.signature = Some(Verdict::Valid);
        s.signature_reason = None;
        assert!(log_line(&s, None).contains(" \u{2713} stripe #4"));
        // A reason can quote what the sender sent (a malformed header):
        // escaped, one line, and cut short.
        s.signature = Some(Verdict::Invalid);
        s.signature_reason = Some(format!(
            "malformed header X: \x1b[2J\nfake line {}",
            "y".repeat(300)
        ));
        let line = log_line(&s, None);
        assert!(!line.contains('\x1b') && !line.contains('\n'), "{line}");
        assert!(line.contains("\u{2026})"), "{line}");
        assert!(line.chars().count() < 200, "{line}");
        // From a full exchange too (what `Stored` carries).
        ex.webhook.provider = Some("github".into());
        ex.webhook.signature = Some(crate::capture::SignatureCheck {
            scheme: "hmac".into(),
            verdict: Verdict::Unsigned,
            reason: Some("missing header X-Hub-Signature-256".into()),
        });
        assert!(log_line(&ex.summary(), None)
            .contains("unsigned github (missing header X-Hub-Signature-256)"));
    }
}
