//! Endpoints that change the node (peers): allowed from loopback, or from
//! anywhere with the operator's token (`--api-admin-token`) as
//! `Authorization: Bearer TOKEN`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::Path;
use super::{ApiError, ApiState};

/// Whether a request may use admin endpoints: it comes from loopback, or it
/// carries the configured token.
pub fn is_admin(peer: &SocketAddr, headers: &HeaderMap, token: Option<&str>) -> bool {
    if peer.ip().is_loopback() {
        return true;
    }
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return false;
    };
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
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
            message: "this endpoint needs a loopback client or the admin token".into(),
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct AddPeer {
    pub addr: String,
}

fn parse_peer(s: &str) -> Result<SocketAddr, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request("invalid-peer", format!("{s:?} is not IP:PORT")))
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

    #[test]
    fn admin_needs_loopback_or_the_token() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let none = HeaderMap::new();
        let mut good = HeaderMap::new();
        good.insert("authorization", "Bearer s3cret".parse().unwrap());
        let mut bad = HeaderMap::new();
        bad.insert("authorization", "Bearer guess".parse().unwrap());
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
}
