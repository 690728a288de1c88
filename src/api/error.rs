//! The API's error body: `{"error": "...", "code": "..."}` with a fitting
//! status code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not-found",
            message: message.into(),
        }
    }

    /// The node cannot answer this now; the same request may succeed later.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code,
            message: message.into(),
        }
    }

    /// The chain task has stopped: the node is shutting down.
    pub fn stopped(e: crate::chain::ChainStopped) -> ApiError {
        ApiError::unavailable("shutting-down", e.to_string())
    }

    /// A failure of the node's own (the store, a task): logged in full
    /// under a number, and answered with that number alone, so that a
    /// client learns nothing of the node's files or code from it.
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        let incident = INCIDENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        tracing::error!(incident, error = %message, "API internal error");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: format!("internal error: the node's log has it as incident {incident}"),
        }
    }
}

/// Internal errors answered since the start, numbering them in the log.
static INCIDENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Most characters of a client's input an error message quotes back.
pub const MAX_QUOTED_CHARS: usize = 80;

/// Most characters of an extractor's rejection message answered (see
/// `ApiError::from_rejection`): room for serde's explanation and a quoted
/// value of `MAX_QUOTED_CHARS`.
const MAX_REJECTION_CHARS: usize = 200;

/// `input` quoted for an error message, cut to `MAX_QUOTED_CHARS`
/// characters (a path segment may be 64 KB).
pub fn quoted(input: &str) -> String {
    match input.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{:?}...", &input[..cut]),
        None => format!("{input:?}"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message, "code": self.code })),
        )
            .into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::internal(e)
    }
}

impl From<crate::chain::ChainError> for ApiError {
    fn from(e: crate::chain::ChainError) -> Self {
        ApiError::internal(e)
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::internal(e)
    }
}

impl ApiError {
    /// An axum extractor's rejection (bad JSON, body too large, ...) as our
    /// JSON error, keeping its status.
    pub fn from_rejection(rejection: impl IntoResponse + std::fmt::Display) -> ApiError {
        // Serde's text may quote the client's input whole (a 200 kB string
        // where a list was expected): cut as `quoted` cuts.
        let text = rejection.to_string();
        let message = match text.char_indices().nth(MAX_REJECTION_CHARS) {
            Some((cut, _)) => format!("{}...", &text[..cut]),
            None => text,
        };
        let status = rejection.into_response().status();
        ApiError {
            status,
            code: if status == StatusCode::PAYLOAD_TOO_LARGE {
                "body-too-large"
            } else {
                "invalid-body"
            },
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_input_is_cut_to_its_limit() {
        assert_eq!(quoted("abc"), "\"abc\"");
        let long = "é".repeat(10_000);
        let q = quoted(&long);
        assert_eq!(q, format!("{:?}...", "é".repeat(MAX_QUOTED_CHARS)));
    }

    #[test]
    fn a_rejection_quoting_a_long_input_is_cut() {
        let long = format!(
            "invalid type: string {:?}, expected a sequence",
            "a".repeat(200_000)
        );
        let error = ApiError::from_rejection(Rejection(long));
        assert_eq!(error.code, "invalid-body");
        assert_eq!(error.message.chars().count(), MAX_REJECTION_CHARS + 3);
        assert!(error.message.starts_with("invalid type: string \"aaa"));
        let short = ApiError::from_rejection(Rejection("missing field `x`".into()));
        assert_eq!(short.message, "missing field `x`");
    }

    /// A rejection as axum's: a status and a text.
    struct Rejection(String);

    impl std::fmt::Display for Rejection {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl IntoResponse for Rejection {
        fn into_response(self) -> Response {
            (StatusCode::UNPROCESSABLE_ENTITY, self.0).into_response()
        }
    }

    #[test]
    fn an_internal_error_answers_a_number_not_its_cause() {
        let e = ApiError::internal("IO error: /home/op/.chaincore/000123.sst: No such file");
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("sst") && e.message.contains("incident"));
    }
}
