//! `--api-cors ORIGIN`: which other origins' web pages may read the API.
//!
//! Without the flag the node sends no `Access-Control-Allow-Origin`, so a
//! browser refuses every cross-origin read (the explorer at `/` is the
//! node's own origin and needs none). With it, requests from the listed
//! origins (or from any, with an explicit `*`) get the header, and
//! preflights (`OPTIONS`) for GET and POST are answered for them alone.
//! CORS only tells browsers what they may show a page: the admin
//! endpoints keep their own rule (`admin`), whatever origins are allowed.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The origins allowed to read the API from a browser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// None (the default): no CORS headers at all.
    #[default]
    None,
    /// Any origin (`--api-cors '*'`).
    Any,
    /// These origins, as browsers send them (`scheme://host[:port]`).
    List(Vec<String>),
}

impl CorsOrigins {
    /// Parses the `--api-cors` values: each an origin or a comma-separated
    /// list of them, or `*` alone. An origin is `http://` or `https://`, a
    /// host and an optional port, with no path; it is kept the way browsers
    /// send it (lower case, without the scheme's default port).
    pub fn parse(values: &[String]) -> Result<CorsOrigins, String> {
        let mut origins: Vec<String> = Vec::new();
        let mut any = false;
        for value in values {
            for item in value.split(',') {
                let item = item.trim();
                if item == "*" {
                    any = true;
                } else {
                    let origin = normalize_origin(item)?;
                    if !origins.contains(&origin) {
                        origins.push(origin);
                    }
                }
            }
        }
        match (any, origins.is_empty()) {
            (false, true) => Ok(CorsOrigins::None),
            (true, true) => Ok(CorsOrigins::Any),
            (true, false) => Err(format!(
                "--api-cors '*' allows every origin: give it alone, not with {}",
                origins.join(", ")
            )),
            (false, false) => Ok(CorsOrigins::List(origins)),
        }
    }

    /// The middleware that answers for these origins, if any are allowed.
    pub fn layer(&self) -> Option<CorsLayer> {
        let allow_origin = match self {
            CorsOrigins::None => return None,
            CorsOrigins::Any => AllowOrigin::any(),
            CorsOrigins::List(origins) => AllowOrigin::list(
                origins
                    .iter()
                    .map(|o| HeaderValue::from_str(o).expect("validated origin")),
            ),
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow_origin)
                .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                // JSON bodies, and the event stream's resume header (a
                // browser's EventSource sends it when it reconnects).
                .allow_headers([
                    header::CONTENT_TYPE,
                    HeaderName::from_static("last-event-id"),
                ])
                // What a page may read of an answer beyond the safelisted
                // headers: the next page of a list, and the tip it was read at.
                .expose_headers([
                    header::LINK,
                    header::ETAG,
                    HeaderName::from_static(super::explorer::TIP_HEADER),
                ])
                .max_age(PREFLIGHT_MAX_AGE),
        )
    }
}

/// `scheme://host[:port]` as a browser's `Origin` header spells it.
fn normalize_origin(text: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!("--api-cors {text:?} is not an origin ({why}); expected e.g. https://explorer.example or http://127.0.0.1:8080, or '*'")
    };
    if text.is_empty() {
        return Err(bad("empty"));
    }
    let lower = text.to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return Err(bad("the scheme must be http or https")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad("an origin has no path, query, fragment or user"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (ip, tail) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            if ip.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address in brackets"));
            }
            let port = match tail {
                "" => None,
                t => Some(t.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            };
            (format!("[{ip}]"), port)
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        },
    };
    if !host.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(bad("the host has characters no host name has"));
    }
    match port {
        None => Ok(format!("{scheme}://{host}")),
        Some(port) if port.parse::<u16>().is_err() => Err(bad("the port is not a number")),
        Some(port) if port == default_port => Ok(format!("{scheme}://{host}")),
        Some(port) => Ok(format!("{scheme}://{host}:{port}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> Result<CorsOrigins, String> {
        CorsOrigins::parse(&values.iter().map(|v| v.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn origins_are_kept_as_browsers_send_them() {
        assert_eq!(parse(&[]), Ok(CorsOrigins::None));
        assert_eq!(parse(&["*"]), Ok(CorsOrigins::Any));
        assert_eq!(
            parse(&[
                "https://Explorer.Example/",
                "http://127.0.0.1:8080,http://localhost:80",
                "https://explorer.example:443",
                "http://[::1]:3000",
            ]),
            Ok(CorsOrigins::List(vec![
                "https://explorer.example".into(),
                "http://127.0.0.1:8080".into(),
                "http://localhost".into(),
                "http://[::1]:3000".into(),
            ]))
        );
    }

    #[test]
    fn what_is_not_an_origin_is_refused() {
        for bad in [
            "explorer.example",
            "ftp://explorer.example",
            "https://",
            "https://explorer.example/path",
            "https://explorer.example?x=1",
            "https://user@explorer.example",
            "https://explorer.example:port",
            "https://explorer.example:99999",
            "https://exa mple.com",
            "https://[::1",
            "https://[nope]",
            "null",
            "",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad:?}");
        }
        let mixed = parse(&["*", "https://a.example"]).unwrap_err();
        assert!(mixed.contains("give it alone"), "{mixed}");
    }
}
