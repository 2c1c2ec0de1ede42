//! Errors as OpenAI returns them: an HTTP status and `{"error": {"message", "type", "param",
//! "code"}}`, the request field at fault in `param`. Handlers return these as values; nothing a
//! client sends makes the server panic.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use thiserror::Error;

/// A request that failed, with the status and body the client gets.
#[derive(Debug, Clone, Error, PartialEq)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong and how to fix it.
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`, `not_found_error`, ...).
    pub kind: &'static str,
    /// The request field at fault (`max_tokens`, `messages[2].content`), if any.
    pub param: Option<String>,
    /// A short machine-readable code (`model_not_found`, `context_length_exceeded`, ...).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: the field `param` is wrong.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: (!param.is_empty()).then_some(param),
            code: None,
        }
    }

    /// 400 with a code.
    pub fn invalid_code(param: &str, message: impl Into<String>, code: &'static str) -> Self {
        Self { code: Some(code), ..Self::invalid(param, message) }
    }

    /// 404: no model of that name is served.
    pub fn unknown_model(name: &str, served: &[String]) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("model {name:?} is not served here; served: {}", served.join(", ")),
            kind: "not_found_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// 429: every slot and the queue are taken.
    pub fn busy(capacity: usize) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("the server is busy: all {capacity} request slots (running and queued) are taken; retry later"),
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
        }
    }

    /// 408: the request ran past the server's per-request timeout.
    pub fn timeout(seconds: f64) -> Self {
        Self {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!("the request ran longer than the server's timeout of {seconds} s"),
            kind: "timeout_error",
            param: None,
            code: Some("timeout"),
        }
    }

    /// 503: the server is shutting down.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, message: message.into(), kind: "server_error", param: None, code: None }
    }

    /// 500: the model failed on a valid request.
    pub fn internal(message: impl Into<String>) -> Self {
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into(), kind: "server_error", param: None, code: None }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// What can stop the server from starting.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A model or adapter could not be loaded.
    #[error("loading {name}: {source}")]
    Load {
        /// The model or adapter name.
        name: String,
        /// Why.
        source: Box<sft_infer::InferError>,
    },
    /// An `--adapter` flag is not `NAME=DIR` or repeats a name.
    #[error("--adapter {0}")]
    Adapter(String),
    /// Binding or serving failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (`binding 127.0.0.1:8000`).
        context: String,
        /// Why.
        source: std::io::Error,
    },
}
