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

    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %message, "API internal error");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: message.to_string(),
        }
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
        let message = rejection.to_string();
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
