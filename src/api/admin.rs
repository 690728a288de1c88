//! Endpoints that change the node (peers): allowed from loopback when the
//! request names a loopback host and did not come through a proxy, or from
//! anywhere with the operator's token (`--api-admin-token`) as
//! `Authorization: Bearer TOKEN`.
//!
//! A loopback connection alone proves little: a web page can reach the API
//! through DNS rebinding (the browser connects to 127.0.0.1 but sends
//! `Host: attacker.example`), a page of another site can send a request
//! to 127.0.0.1 itself (its browser names that site in `Origin`; with
//! `--api-cors` the preflight may even succeed), and a local reverse proxy
//! makes every remote client look local. All are refused without the token.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::Path;
use super::{ApiError, ApiState};

/// Whether `host` (a `Host` header: name or IP, optional port) names this
/// machine's loopback interface.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [IPv6]:port
        match rest.split_once(']') {
            Some((ip, tail)) if tail.is_empty() || tail.starts_with(':') => ip,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port))
                if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name
            }
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Headers a reverse proxy adds: a request carrying one was relayed.
const PROXY_HEADERS: [&str; 6] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "via",
];

/// Whether a request may use admin endpoints: it carries the configured
/// token, or it comes from loopback, names a loopback host, was not sent by
/// a page of another site (an `Origin` header, if any, names loopback too)
/// and carries no proxy header.
pub fn is_admin(peer: &SocketAddr, headers: &HeaderMap, token: Option<&str>) -> bool {
    let has_token = token.filter(|t| !t.is_empty()).is_some_and(|token| {
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
    });
    if has_token {
        return true;
    }
    let host_is_loopback = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_loopback_host);
    peer.ip().is_loopback()
        && host_is_loopback
        && origin_is_loopback(headers)
        && !PROXY_HEADERS.iter().any(|h| headers.contains_key(*h))
}

/// Whether the request's `Origin` (sent by browsers) is absent or names a
/// loopback host: a web page of any other origin is not the local operator.
fn origin_is_loopback(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return true;
    };
    origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .is_some_and(|(_, authority)| is_loopback_host(authority))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn require_admin(state: &ApiState, peer: &SocketAddr, headers: &HeaderMap) -> Result<(), ApiError> {
    if is_admin(peer, headers, state.admin_token.as_deref()) {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: "admin-only",
            message: "this endpoint needs the admin token, or a loopback client naming a loopback host (Host: 127.0.0.1, [::1] or localhost) without a proxy, not sent by a web page of another origin".into(),
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct AddPeer {
    pub addr: String,
}

fn parse_peer(s: &str) -> Result<SocketAddr, ApiError> {
    s.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid-peer",
            format!("{} is not IP:PORT", super::error::quoted(s)),
        )
    })
}

/// `POST /peers` with `{"addr": "IP:PORT"}`: connect and stay connected.
pub async fn add_peer(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<AddPeer>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &peer, &headers)?;
    let Json(request) = body.map_err(ApiError::from_rejection)?;
    let addr = parse_peer(&request.addr)?;
    state.network.add_peer(addr).await;
    Ok(Json(json!({ "added": addr })))
}

/// `DELETE /peers/{addr}`: disconnect and forget a manual peer.
pub async fn remove_peer(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(addr): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &peer, &headers)?;
    let addr = parse_peer(&addr)?;
    state.network.remove_peer(addr).await;
    Ok(Json(json!({ "removed": addr })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn admin_needs_loopback_or_the_token() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let none = headers(&[("host", "127.0.0.1:18444")]);
        let good = headers(&[("authorization", "Bearer s3cret")]);
        let bad = headers(&[("authorization", "Bearer guess")]);
        assert!(is_admin(&local, &none, None));
        assert!(!is_admin(&remote, &none, None));
        assert!(
            !is_admin(&remote, &good, None),
            "no token configured: remote never admin"
        );
        assert!(is_admin(&remote, &good, Some("s3cret")));
        assert!(!is_admin(&remote, &bad, Some("s3cret")));
        assert!(!is_admin(&remote, &none, Some("s3cret")));
        assert!(!is_admin(&remote, &good, Some("")));
    }

    /// DNS rebinding and local proxies: loopback connections whose `Host`
    /// is not a loopback name, or that were relayed, need the token.
    #[test]
    fn loopback_with_a_foreign_host_or_through_a_proxy_needs_the_token() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        for host in [
            "localhost",
            "LOCALHOST:80",
            "127.0.0.1",
            "127.0.0.1:18444",
            "[::1]:18444",
            "[::1]",
            "127.1.2.3:1",
        ] {
            assert!(
                is_admin(&local, &headers(&[("host", host)]), None),
                "{host}"
            );
        }
        for host in [
            "attacker.example",
            "attacker.example:18444",
            "localhost.attacker.example",
            "127.0.0.1.nip.io:18444",
            "[::1]x",
            "0.0.0.0:18444",
            "",
        ] {
            assert!(
                !is_admin(&local, &headers(&[("host", host)]), None),
                "{host:?}"
            );
        }
        assert!(!is_admin(&local, &HeaderMap::new(), None), "no Host at all");
        let proxied = headers(&[
            ("host", "127.0.0.1:18444"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert!(!is_admin(&local, &proxied, None));
        let proxied_with_token = headers(&[
            ("host", "node.example"),
            ("forwarded", "for=198.51.100.7"),
            ("authorization", "Bearer s3cret"),
        ]);
        assert!(is_admin(&local, &proxied_with_token, Some("s3cret")));
    }

    /// A page of another site (allowed to read by `--api-cors` or not)
    /// sending a request to the node on loopback needs the token.
    #[test]
    fn a_page_of_another_origin_needs_the_token() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        for origin in [
            "http://127.0.0.1:18444",
            "http://localhost:8080",
            "http://[::1]:1",
        ] {
            let same = headers(&[("host", "127.0.0.1:18444"), ("origin", origin)]);
            assert!(is_admin(&local, &same, None), "{origin}");
        }
        for origin in [
            "https://explorer.example",
            "null",
            "http://127.0.0.1.nip.io",
            "",
        ] {
            let foreign = headers(&[("host", "127.0.0.1:18444"), ("origin", origin)]);
            assert!(!is_admin(&local, &foreign, None), "{origin:?}");
            let with_token = headers(&[
                ("host", "127.0.0.1:18444"),
                ("origin", origin),
                ("authorization", "Bearer s3cret"),
            ]);
            assert!(is_admin(&local, &with_token, Some("s3cret")), "{origin:?}");
        }
    }
}
