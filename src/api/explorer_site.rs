//! The explorer in the browser: one page, one script and one style sheet
//! (`explorer_site/`), embedded in the binary and served at `/`, with no
//! build step and nothing fetched from elsewhere at run time. The page is a
//! client like any other: it reads the REST routes and follows `/events`.
//!
//! Every answer carries an `ETag` (a digest of the file) and
//! `Cache-Control: no-cache`, so a browser keeps the files and asks again
//! with `If-None-Match` (304, no body) and never runs a stale script after
//! the node is upgraded. The page's Content-Security-Policy allows only
//! this origin's script, styles and connections: no inline script, no
//! framing, no plugins, so data from strangers (blocks, transactions,
//! peers' user agents) cannot run even if it reached the page as markup,
//! which the script never lets it do (it builds the DOM with
//! `textContent`).

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The page's Content-Security-Policy: this origin only, no inline script
/// or style (the script sets styles through the CSSOM, which CSP allows),
/// the empty `data:` favicon the page names (so the browser asks for no
/// other), no base URL, form target or frame ancestor elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A file of the site.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

pub const INDEX: Asset = Asset {
    path: "/",
    content_type: "text/html; charset=utf-8",
    body: include_str!("explorer_site/index.html"),
};

pub const APP_JS: Asset = Asset {
    path: "/explorer/app.js",
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("explorer_site/app.js"),
};

pub const STYLE_CSS: Asset = Asset {
    path: "/explorer/style.css",
    content_type: "text/css; charset=utf-8",
    body: include_str!("explorer_site/style.css"),
};

/// A strong validator per file: the first 16 bytes of its SHA-256, in hex.
fn etag(asset: &Asset) -> HeaderValue {
    let digest = Sha256::digest(asset.body.as_bytes());
    HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..16])))
        .expect("hex is a valid header value")
}

static ETAGS: LazyLock<[HeaderValue; 3]> =
    LazyLock::new(|| [etag(&INDEX), etag(&APP_JS), etag(&STYLE_CSS)]);

/// Whether `If-None-Match` names `tag` (or is `*`).
fn matches(headers: &HeaderMap, tag: &HeaderValue) -> bool {
    let tag = tag.to_str().expect("ascii etag");
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == tag)
}

fn serve(asset: &Asset, tag: &HeaderValue, request: &HeaderMap) -> Response {
    let mut response = if matches(request, tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, tag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if asset.path == INDEX.path {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    response
}

/// `GET /`: the explorer's page.
pub async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &ETAGS[0], &headers)
}

/// `GET /explorer/app.js`: the explorer's script.
pub async fn app_js(headers: HeaderMap) -> Response {
    serve(&APP_JS, &ETAGS[1], &headers)
}

/// `GET /explorer/style.css`: the explorer's style sheet.
pub async fn style_css(headers: HeaderMap) -> Response {
    serve(&STYLE_CSS, &ETAGS[2], &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page loads nothing but its own two files, and holds no inline
    /// script, style or event handler (the CSP would refuse them).
    #[test]
    fn the_page_names_only_its_own_files_and_nothing_inline() {
        let html = INDEX.body.to_ascii_lowercase();
        assert_eq!(html.matches("<script").count(), 1);
        assert!(html.contains(r#"<script type="module" src="/explorer/app.js"></script>"#));
        assert!(html.contains(r#"<link rel="stylesheet" href="/explorer/style.css">"#));
        assert!(!html.contains("<style"));
        assert!(!html.contains(" style="));
        assert!(!html.contains("javascript:"));
        for attribute in [" onclick", " onload", " onerror", " onsubmit", " oninput"] {
            assert!(!html.contains(attribute), "{attribute}");
        }
        for remote in ["http://", "https://", "//"] {
            for attribute in ["src=\"", "href=\""] {
                assert!(
                    !html.contains(&format!("{attribute}{remote}")),
                    "{attribute}{remote}"
                );
            }
        }
    }

    /// Data from the API reaches the page only as text: the script never
    /// parses markup, evaluates strings or loads from elsewhere.
    #[test]
    fn the_script_never_turns_data_into_markup_or_code() {
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "setAttribute('style'",
            "http://",
            "https://",
        ] {
            assert!(!APP_JS.body.contains(forbidden), "app.js uses {forbidden}");
        }
        for remote in ["http://", "https://", "@import"] {
            assert!(!STYLE_CSS.body.contains(remote), "style.css uses {remote}");
        }
    }

    #[test]
    fn if_none_match_with_the_etag_is_answered_304() {
        let tag = etag(&APP_JS);
        let mut request = HeaderMap::new();
        assert_eq!(serve(&APP_JS, &tag, &request).status(), StatusCode::OK);
        request.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"other\", {}", tag.to_str().unwrap())).unwrap(),
        );
        let response = serve(&APP_JS, &tag, &request);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[header::ETAG], tag);
        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(serve(&APP_JS, &tag, &request).status(), StatusCode::OK);
    }
}
