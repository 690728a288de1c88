//! A REST client for a ChainCore node, used by the wallet, the external
//! miner, the devnet launcher and the monitor. HTTP/1.1 over hyper, with a
//! timeout on every request and the node's `{"error", "code"}` answers
//! turned into typed errors.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

/// How long one request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest answer the client reads.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Why a request to the node failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("node URL {url:?} is not an http:// URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the node at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the node at {url} did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout { url: String },
    #[error("the node refused {path} ({status}, {code}): {message}")]
    Refused {
        path: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("the node's answer to {path} is not what was expected: {reason}")]
    BadAnswer { path: String, reason: String },
}

impl ClientError {
    /// The node's error code, when it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A node's REST API at one base URL.
#[derive(Clone)]
pub struct NodeClient {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClient")
            .field("base", &self.base)
            .finish()
    }
}

impl NodeClient {
    /// A client for `url` (`http://HOST:PORT`, a trailing slash is fine).
    pub fn new(url: &str) -> Result<NodeClient, ClientError> {
        let base = url.trim_end_matches('/').to_string();
        let uri: hyper::Uri =
            base.parse()
                .map_err(|e: hyper::http::uri::InvalidUri| ClientError::BadUrl {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ClientError::BadUrl {
                url: url.to_string(),
                reason: "expected http://HOST:PORT".into(),
            });
        }
        let http = Client::builder(TokioExecutor::new()).build_http();
        Ok(NodeClient { base, http })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET path`, the answer parsed as JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.request(Method::GET, path, None).await?;
        parse(path, &body)
    }

    /// `GET path`, the answer parsed as JSON, and the response's headers.
    pub async fn get_with_headers<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<(T, hyper::HeaderMap), ClientError> {
        let (body, headers) = self.exchange(Method::GET, path, None).await?;
        Ok((parse(path, &body)?, headers))
    }

    /// `GET path`, the answer as text.
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let body = self.request(Method::GET, path, None).await?;
        String::from_utf8(body.to_vec()).map_err(|e| ClientError::BadAnswer {
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    /// `POST path` with a text body, the answer parsed as JSON.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: String,
    ) -> Result<T, ClientError> {
        let answer = self.request(Method::POST, path, Some(body)).await?;
        parse(path, &answer)
    }

    /// `POST path` with a text body, the answer as text.
    pub async fn post_text(&self, path: &str, body: String) -> Result<String, ClientError> {
        let answer = self.request(Method::POST, path, Some(body)).await?;
        String::from_utf8(answer.to_vec()).map_err(|e| ClientError::BadAnswer {
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Bytes, ClientError> {
        Ok(self.exchange(method, path, body).await?.0)
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(Bytes, hyper::HeaderMap), ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut builder = Request::builder().method(method).uri(&url);
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "text/plain");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::BadUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let exchange = async {
            let response =
                self.http
                    .request(request)
                    .await
                    .map_err(|e| ClientError::Unreachable {
                        url: self.base.clone(),
                        reason: error_chain(&e),
                    })?;
            let status = response.status();
            let headers = response.headers().clone();
            let limited = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES);
            let body = limited
                .collect()
                .await
                .map_err(|e| ClientError::Unreachable {
                    url: self.base.clone(),
                    reason: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok::<_, ClientError>((status, headers, body))
        };
        let (status, headers, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                url: self.base.clone(),
            })??;
        if status.is_success() {
            return Ok((body, headers));
        }
        Err(refusal(path, status, &body))
    }
}

fn parse<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|e| ClientError::BadAnswer {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// The node's error answer, or the status alone when the body is not one.
fn refusal(path: &str, status: StatusCode, body: &[u8]) -> ClientError {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
        code: String,
    }
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => (e.code, e.error),
        Err(_) => (
            "http-error".to_string(),
            String::from_utf8_lossy(body).chars().take(200).collect(),
        ),
    };
    ClientError::Refused {
        path: path.to_string(),
        status: status.as_u16(),
        code,
        message,
    }
}

/// An error and its sources on one line ("connection refused" sits at the
/// bottom of hyper's chain).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        assert!(NodeClient::new("http://127.0.0.1:18444/").is_ok());
        for bad in ["127.0.0.1:18444", "https://127.0.0.1", "http://", "ftp://x"] {
            assert!(
                matches!(NodeClient::new(bad), Err(ClientError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_as_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let client = NodeClient::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let error = client
            .get::<serde_json::Value>("/status")
            .await
            .unwrap_err();
        assert!(matches!(error, ClientError::Unreachable { .. }), "{error}");
        assert!(
            error.to_string().contains("cannot reach the node"),
            "{error}"
        );
    }

    #[test]
    fn error_bodies_become_codes() {
        let e = refusal(
            "/tx",
            StatusCode::BAD_REQUEST,
            br#"{"error":"fee below minimum","code":"fee-too-low"}"#,
        );
        assert_eq!(e.code(), Some("fee-too-low"));
        assert!(e.to_string().contains("fee below minimum"));
        let e = refusal("/x", StatusCode::BAD_GATEWAY, b"<html>");
        assert_eq!(e.code(), Some("http-error"));
    }
}

/// Longest silence on an event stream before the client takes it for
/// dropped: the node sends a keep-alive comment every 15 s.
pub const EVENT_STREAM_IDLE: Duration = Duration::from_secs(60);
/// Largest single event the client reads (the node's are a few KiB).
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEvent {
    pub name: String,
    pub id: Option<String>,
    pub data: String,
}

/// An open `GET /events` stream.
pub struct EventStream {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
    path: String,
}

impl NodeClient {
    /// Opens the node's event stream at `path` (`/events?...`), resuming
    /// after `last_event_id` when given.
    pub async fn events(
        &self,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<EventStream, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .header(hyper::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            builder = builder.header("last-event-id", id);
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::BadUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| ClientError::Timeout {
                url: self.base.clone(),
            })?
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                reason: error_chain(&e),
            })?;
        let status = response.status();
        if !status.is_success() {
            let body = http_body_util::Limited::new(response.into_body(), MAX_EVENT_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(refusal(path, status, &body));
        }
        Ok(EventStream {
            body: response.into_body(),
            buffer: Vec::new(),
            path: path.to_string(),
        })
    }
}

impl EventStream {
    /// The next event, `None` when the node ended the stream; an error
    /// when the connection broke or stayed silent for `EVENT_STREAM_IDLE`.
    pub async fn next(&mut self) -> Result<Option<ServerEvent>, ClientError> {
        loop {
            if let Some(event) = self.take_event()? {
                return Ok(Some(event));
            }
            let frame = tokio::time::timeout(EVENT_STREAM_IDLE, self.body.frame())
                .await
                .map_err(|_| ClientError::BadAnswer {
                    path: self.path.clone(),
                    reason: format!("no data for {EVENT_STREAM_IDLE:?}"),
                })?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(ClientError::Unreachable {
                        url: self.path.clone(),
                        reason: error_chain(&e),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// Parses one complete event off the buffer (comments and events
    /// without data are skipped).
    fn take_event(&mut self) -> Result<Option<ServerEvent>, ClientError> {
        loop {
            let text = String::from_utf8_lossy(&self.buffer);
            let Some(end) = text.find("\n\n") else {
                if self.buffer.len() > MAX_EVENT_BYTES {
                    return Err(ClientError::BadAnswer {
                        path: self.path.clone(),
                        reason: format!("an event over {MAX_EVENT_BYTES} bytes"),
                    });
                }
                return Ok(None);
            };
            let block = text[..end].to_string();
            let consumed = text[..end + 2].len();
            drop(text);
            self.buffer.drain(..consumed);
            if let Some(event) = parse_event(&block) {
                return Ok(Some(event));
            }
        }
    }
}

/// One event's lines (`event:`, `id:`, `data:`; comments start with `:`).
pub fn parse_event(block: &str) -> Option<ServerEvent> {
    let mut name = "message".to_string();
    let mut id = None;
    let mut data: Option<String> = None;
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = value.to_string(),
            "id" => id = Some(value.to_string()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    Some(ServerEvent {
        name,
        id,
        data: data?,
    })
}
