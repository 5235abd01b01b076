//! RFC 9112 framing checks on public HTTP/1 request heads: what hyper
//! accepts but a careful origin must refuse before anything is forwarded.

use http::{header, Request, Response, StatusCode, Version};

use super::text;
use crate::tunnel::Body;

/// Refuses (with `Some(answer)`) HTTP/1 request heads that hyper accepts but that a careful
/// origin must not: RFC 9112 §3.2 (exactly one Host in HTTP/1.1) and
/// §6.1 (a transfer coding other than `chunked` cannot be decoded here, so
/// forwarding its bytes would hand the app a body it cannot read).
pub(crate) fn check_framing<B>(req: &Request<B>) -> Option<Response<Body>> {
    if req.version() == Version::HTTP_11 || req.version() == Version::HTTP_10 {
        let hosts = req.headers().get_all(header::HOST).iter().count();
        if hosts > 1 || (hosts == 0 && req.version() == Version::HTTP_11) {
            let mut resp = text(
                StatusCode::BAD_REQUEST,
                "whtunnel: an HTTP/1.1 request needs exactly one Host header",
            );
            resp.headers_mut()
                .insert(header::CONNECTION, "close".parse().expect("static"));
            return Some(resp);
        }
    }
    let codings_ok = req
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .all(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .all(|c| c.trim().eq_ignore_ascii_case("chunked"))
            })
        });
    let chunked_count: usize = req
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .count();
    if !codings_ok || chunked_count > 1 {
        let mut resp = text(
            StatusCode::NOT_IMPLEMENTED,
            "whtunnel: the only transfer coding accepted is a single 'chunked'",
        );
        resp.headers_mut()
            .insert(header::CONNECTION, "close".parse().expect("static"));
        return Some(resp);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_checks() {
        let req = |v: Version, headers: &[(&str, &str)]| {
            let mut b = Request::builder().version(v).uri("/t/a/");
            for (k, val) in headers {
                b = b.header(*k, *val);
            }
            b.body(()).unwrap()
        };
        let status = |r: Option<Response<Body>>| r.map(|r| r.status().as_u16());
        assert_eq!(
            status(check_framing(&req(Version::HTTP_11, &[("host", "a")]))),
            None
        );
        assert_eq!(status(check_framing(&req(Version::HTTP_10, &[]))), None);
        assert_eq!(status(check_framing(&req(Version::HTTP_2, &[]))), None);
        assert_eq!(
            status(check_framing(&req(Version::HTTP_11, &[]))),
            Some(400)
        );
        assert_eq!(
            status(check_framing(&req(
                Version::HTTP_11,
                &[("host", "a"), ("host", "b")]
            ))),
            Some(400)
        );
        let te = |v: &str| {
            status(check_framing(&req(
                Version::HTTP_11,
                &[("host", "a"), ("transfer-encoding", v)],
            )))
        };
        assert_eq!(te("chunked"), None);
        assert_eq!(te("Chunked"), None);
        assert_eq!(te("gzip, chunked"), Some(501));
        assert_eq!(te("chunked, chunked"), Some(501));
    }
}
