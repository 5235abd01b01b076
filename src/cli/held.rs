//! `whtunnel held list|retry|drop`: the relay's held and dead-lettered
//! events of one tunnel, through the relay's held API (see
//! `relay::held_api`), authenticated with the agent's token.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::args::{HeldArgs, HeldCommand};
use crate::fixture::printable;
use crate::tunnel::tls;

/// Runs one `whtunnel held` subcommand.
pub(crate) async fn held(args: HeldArgs) -> Result<()> {
    let common = &args.common;
    let token = super::users::token_from(common.token.clone(), common.token_file.as_deref())?
        .ok_or_else(|| {
            anyhow!("the relay needs a token: pass --token-file or set WHTUNNEL_TOKEN")
        })?;
    let relay = common
        .relay
        .clone()
        .ok_or_else(|| anyhow!("which relay? pass --relay or set WHTUNNEL_RELAY"))?;
    let name = common
        .name
        .as_deref()
        .ok_or_else(|| anyhow!("which tunnel? pass --name"))?;
    let tls = tls::client_config(common.ca_cert.as_deref())?;
    match &args.command {
        HeldCommand::List { json } => {
            let body = call(&relay, &token, &tls, Method::GET, name).await?;
            if *json {
                println!("{}", String::from_utf8_lossy(&body));
                return Ok(());
            }
            let v: serde_json::Value =
                serde_json::from_slice(&body).context("the relay's answer is not JSON")?;
            print_list(&v);
        }
        HeldCommand::Retry { event_id } => {
            call(
                &relay,
                &token,
                &tls,
                Method::POST,
                &format!("{name}/{event_id}/retry"),
            )
            .await?;
            println!("{} is back in the queue of '{name}'", printable(event_id));
        }
        HeldCommand::Drop { event_id } => {
            call(
                &relay,
                &token,
                &tls,
                Method::DELETE,
                &format!("{name}/{event_id}"),
            )
            .await?;
            println!("{} dropped from '{name}'", printable(event_id));
        }
    }
    Ok(())
}

fn print_list(v: &serde_json::Value) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    println!(
        "{} held, {} dead-lettered",
        v["pending"].as_u64().unwrap_or(0),
        v["dead"].as_u64().unwrap_or(0)
    );
    let empty = Vec::new();
    let events = v["events"].as_array().unwrap_or(&empty);
    if events.is_empty() {
        return;
    }
    println!(
        "{:<30} {:>8} {:>8} {:<5} PATH / LAST ERROR",
        "ID", "AGE", "ATTEMPTS", "STATE"
    );
    for e in events {
        let age_s = (now - e["received_at_ms"].as_i64().unwrap_or(now)).max(0) / 1000;
        let state = if e["dead"].as_bool() == Some(true) {
            "dead"
        } else {
            "held"
        };
        println!(
            "{:<30} {:>7}s {:>8} {:<5} {} {}",
            printable(e["event_id"].as_str().unwrap_or("?")),
            age_s,
            e["attempts"].as_u64().unwrap_or(0),
            state,
            printable(e["method"].as_str().unwrap_or("?")),
            printable(e["path"].as_str().unwrap_or("?")),
        );
        if let Some(err) = e["last_error"].as_str() {
            println!("{:>56} {}", "", printable(err));
        }
    }
}

/// One request to the relay's held API; the body of a 200, or an error
/// with the relay's one-line reason.
async fn call(
    relay: &str,
    token: &str,
    tls: &Arc<rustls::ClientConfig>,
    method: Method,
    path: &str,
) -> Result<Bytes> {
    let base: Uri = relay
        .trim()
        .parse()
        .map_err(|_| anyhow!("invalid relay URL '{relay}'"))?;
    let secure = match base.scheme_str() {
        Some("http" | "ws") => false,
        Some("https" | "wss") => true,
        _ => bail!("invalid relay URL '{relay}': use http(s)://host[:port]"),
    };
    let auth = base
        .authority()
        .ok_or_else(|| anyhow!("invalid relay URL '{relay}'"))?
        .clone();
    let host = auth.host().trim_matches(['[', ']']).to_string();
    let port = auth.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let prefix = base.path().trim_end_matches('/');
    let uri = format!("{prefix}{}{path}", crate::relay::held_api::HELD_API_PATH);
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("cannot connect to the relay at {host}:{port}"))?;
    let mut bearer = header::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| anyhow!("the token contains characters not allowed in a header"))?;
    bearer.set_sensitive(true);
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, auth.as_str())
        .header(header::AUTHORIZATION, bearer)
        .body(Full::new(Bytes::new()))?;
    let resp = if secure {
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| anyhow!("invalid relay host name: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .context("TLS handshake with the relay failed")?;
        send(TokioIo::new(stream), req).await?
    } else {
        send(TokioIo::new(tcp), req).await?
    };
    let status = resp.0;
    if status != StatusCode::OK {
        let reason = String::from_utf8_lossy(&resp.1);
        bail!(
            "the relay answered {}: {}",
            status.as_u16(),
            printable(reason.trim())
        );
    }
    Ok(resp.1)
}

async fn send<T>(io: T, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), 16 << 20)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the relay's answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}
