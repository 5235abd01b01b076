//! `requests show --curl`: a shell command that sends a captured request
//! again, byte for byte, to its target or another base URL.

use base64::Engine;

use super::{header_text, load, B64};
use crate::capture::model::Exchange;
use crate::tunnel::protocol::is_hop_by_hop;

/// Quotes `s` for a POSIX shell: single quotes, with `'` written as `'\''`.
/// Text with control characters (which would act on the terminal the
/// command is printed to) is written as `$'...'` with escapes instead, which
/// bash and zsh read back to the same bytes.
pub fn shell_quote(s: &str) -> String {
    let acts =
        |c: char| (c.is_control() && c != '\n' && c != '\t') || c == '\u{2028}' || c == '\u{2029}';
    if !s.chars().any(acts) {
        return format!("'{}'", s.replace('\'', r"'\''"));
    }
    let mut out = String::from("$'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c if (c as u32) < 0x80 && acts(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if acts(c) => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The URL a request path goes to below a target base URL. When the recorded
/// path already starts with the base's own path (the app received the full
/// path), it is not added twice.
pub fn target_url(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    // Split "scheme://authority" from the base path.
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let (origin, base_path) = match base[after_scheme..].find('/') {
        Some(i) => base.split_at(after_scheme + i),
        None => (base, ""),
    };
    if !base_path.is_empty() {
        let rest = &path[base_path.len().min(path.len())..];
        if path.starts_with(base_path)
            && (rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
        {
            return format!("{origin}{path}");
        }
    }
    format!("{base}{path}")
}

/// Inline `--data-binary '...'` only for text this size or below; larger or
/// `@`-prefixed bodies go through stdin (argument length limits; `@` would
/// make curl read a file).
const CURL_INLINE_MAX: usize = 64 * 1024;

/// `--curl`: a shell command that sends the captured request again, with the
/// exact body bytes. `base_url` overrides the exchange's target (`--to`).
///
/// Headers are kept in order except hop-by-hop ones, those named by
/// `Connection`, `Host` and `Content-Length` (curl sets them for the new
/// connection). Text bodies are passed inline (or through `printf '%s'` on
/// stdin); binary bodies as base64 decoded on stdin, so NULs and invalid UTF-8
/// survive the shell. When the original had no `Content-Type`, curl's default
/// form type is suppressed.
pub fn curl_command(ex: &Exchange, base_url: Option<&str>) -> String {
    let req = &ex.request;
    let url = target_url(base_url.unwrap_or(&ex.target), &req.path);
    let named_by_connection: Vec<String> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| {
            header_text(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    // -g: `{}` and `[]` in a path are the app's, not curl's URL globbing.
    let mut args: Vec<String> = vec![
        "curl".into(),
        "-sS".into(),
        "-g".into(),
        "-X".into(),
        shell_quote(&req.method),
        shell_quote(&url),
    ];
    for (n, v) in &req.headers {
        let lower = n.to_ascii_lowercase();
        // curl sets Host, Content-Length and Expect itself, for the new connection.
        if is_hop_by_hop(n)
            || lower == "host"
            || lower == "content-length"
            || lower == "expect"
            || named_by_connection.contains(&lower)
        {
            continue;
        }
        let v = header_text(v);
        // `Name;` is curl's way to send a header with an empty value.
        let h = if v.is_empty() {
            format!("{n};")
        } else {
            format!("{n}: {v}")
        };
        args.push("-H".into());
        args.push(shell_quote(&h));
    }
    let mut prefix = String::new();
    let mut note = String::new();
    match load(&req.body) {
        Ok(body) if !body.is_empty() => {
            if req.headers.get("content-type").is_none() {
                args.push("-H".into());
                args.push(shell_quote("Content-Type:"));
            }
            match std::str::from_utf8(&body) {
                Ok(text) if text.len() <= CURL_INLINE_MAX && !text.starts_with('@') => {
                    args.push("--data-binary".into());
                    args.push(shell_quote(text));
                }
                Ok(text) => {
                    prefix = format!("printf '%s' {} | ", shell_quote(text));
                    args.push("--data-binary".into());
                    args.push("@-".into());
                }
                Err(_) => {
                    prefix = format!("printf '%s' '{}' | base64 --decode | ", B64.encode(&body));
                    args.push("--data-binary".into());
                    args.push("@-".into());
                }
            }
            if req.body.truncated {
                note = format!(
                    "# note: body truncated at capture ({} of {} bytes)\n",
                    body.len(),
                    req.body.total_len
                );
            }
        }
        Ok(_) => {}
        Err(e) => note = format!("# note: {e}\n"),
    }
    format!("{note}{prefix}{}", args.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::export::ex_with;
    use std::io::{BufRead, BufReader, Read, Write};

    #[test]
    fn target_urls() {
        assert_eq!(
            target_url("http://localhost:3000", "/a?x=1"),
            "http://localhost:3000/a?x=1"
        );
        assert_eq!(
            target_url("http://localhost:3000/", "/a"),
            "http://localhost:3000/a"
        );
        assert_eq!(target_url("http://h:1/base", "/a/b"), "http://h:1/base/a/b");
        assert_eq!(
            target_url("http://h:1/base", "/base/a"),
            "http://h:1/base/a"
        );
        assert_eq!(
            target_url("http://h:1/base", "/base?q"),
            "http://h:1/base?q"
        );
        assert_eq!(
            target_url("http://h:1/base", "/basement"),
            "http://h:1/base/basement"
        );
    }

    /// What the one-request server saw: request line, headers, body.
    type Seen = (String, Vec<(String, String)>, Vec<u8>);

    /// Accepts one HTTP/1.1 request on 127.0.0.1:0 and returns (request
    /// line, headers, body).
    fn one_request_server() -> (std::net::SocketAddr, std::thread::JoinHandle<Seen>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                let h = h.trim_end_matches(['\r', '\n']);
                if h.is_empty() {
                    break;
                }
                let (n, v) = h.split_once(':').unwrap();
                headers.push((n.to_owned(), v.trim().to_owned()));
            }
            let len: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let mut w = stream;
            w.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .unwrap();
            (line.trim_end().to_owned(), headers, body)
        });
        (addr, h)
    }

    fn run_curl(cmd: &str) {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(cmd)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl failed: {}\n{cmd}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn curl_reproduces_exact_bytes() {
        let binary: Vec<u8> = (0..=255u8).chain([b'\'', 0, b'\n']).collect();
        let tricky_text = "@not-a-file 'quoted' \"dq\" $HOME `x` \\ \n\ttrailing\n\n";
        let inline_text = "{\"type\":\"consent.created\",\"s\":\"it's ✓\"}";
        for body in [
            binary,
            tricky_text.as_bytes().to_vec(),
            inline_text.as_bytes().to_vec(),
        ] {
            let (addr, server) = one_request_server();
            let mut ex = ex_with(&body);
            ex.request.method = "PUT".into();
            ex.request.headers.to_mut().extend([
                ("Connection".into(), b"keep-alive, X-Hop".to_vec()),
                ("X-Hop".into(), b"gone".to_vec()),
                (
                    "HTTP2-Settings".into(),
                    b"AAMAAABkAAQAoAAAAAIAAAAA".to_vec(),
                ),
                ("Transfer-Encoding".into(), b"chunked".to_vec()),
                ("Content-Length".into(), b"999".to_vec()),
                ("X-Signature".into(), b"t=1,v1=ab'cd".to_vec()),
            ]);
            let cmd = curl_command(&ex, Some(&format!("http://{addr}")));
            run_curl(&cmd);
            let (line, headers, got) = server.join().unwrap();
            assert_eq!(line, "PUT /hooks?key=0123 HTTP/1.1");
            assert_eq!(got, body, "body bytes differ for command:\n{cmd}");
            let names: Vec<String> = headers.iter().map(|h| h.0.to_ascii_lowercase()).collect();
            for gone in ["x-hop", "transfer-encoding", "connection", "http2-settings"] {
                assert!(
                    !names.contains(&gone.to_owned()),
                    "{gone} forwarded: {headers:?}"
                );
            }
            let dups: Vec<&str> = headers
                .iter()
                .filter(|h| h.0 == "X-Dup")
                .map(|h| h.1.as_str())
                .collect();
            assert_eq!(dups, ["one", "two"]);
            assert!(headers.contains(&("X-Signature".into(), "t=1,v1=ab'cd".into())));
            assert!(headers.contains(&("Content-Type".into(), "application/json".into())));
            // Host is the new target's, not the captured one.
            assert!(headers.contains(&("Host".into(), addr.to_string())));
        }
    }

    #[test]
    fn curl_sends_brackets_and_braces_once_and_quotes_controls_safely() {
        let (addr, server) = one_request_server();
        let mut ex = ex_with(b"{}");
        ex.request.path = "/a{1,2}[1-3]".into();
        let evil = "ok\u{1b}]0;PWNED\u{7}\u{1b}[32mALL GOOD 'q' \\";
        ex.request
            .headers
            .to_mut()
            .push(("X-Evil".into(), evil.as_bytes().to_vec()));
        let cmd = curl_command(&ex, Some(&format!("http://{addr}")));
        assert!(!cmd.chars().any(|c| c.is_control()), "{cmd:?}");
        run_curl(&cmd);
        // One request (the server takes one), with the path as it was.
        let (line, headers, _) = server.join().unwrap();
        assert_eq!(line, "POST /a{1,2}[1-3] HTTP/1.1");
        assert!(
            headers.contains(&("X-Evil".into(), evil.into())),
            "{headers:?}"
        );
    }

    #[test]
    fn curl_without_content_type_or_body() {
        let (addr, server) = one_request_server();
        let mut ex = ex_with(b"a=1");
        ex.request
            .headers
            .to_mut()
            .retain(|(n, _)| n != "Content-Type");
        let cmd = curl_command(&ex, Some(&format!("http://{addr}/")));
        assert!(cmd.starts_with("curl -sS -g -X 'POST' "), "{cmd}");
        run_curl(&cmd);
        let (_, headers, body) = server.join().unwrap();
        assert_eq!(body, b"a=1");
        assert!(
            !headers
                .iter()
                .any(|h| h.0.eq_ignore_ascii_case("content-type")),
            "curl's default form type must not be added: {headers:?}"
        );

        let mut ex = ex_with(b"");
        ex.request.method = "GET".into();
        let cmd = curl_command(&ex, None);
        assert!(
            cmd.contains("'http://localhost:3000/hooks?key=0123'"),
            "{cmd}"
        );
        assert!(!cmd.contains("--data-binary"));
    }
}
