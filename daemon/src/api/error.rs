//! One mapping from everything that can go wrong while answering a request to an HTTP status and a
//! stable, machine-readable reason string, rendered as `{"error": reason, "message": text, ...}`.
//!
//! Reason strings are a contract (clients branch on them); messages are for people and never contain
//! secrets or unbounded echoes of the input.

use super::auth::AuthError;
use crate::cluster::attempts::Refusal;
use crate::service::ServiceError;
use hyper::StatusCode;
use serde::Serialize;

/// One rejected item of an `/update` batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemProblem {
    /// Index in the submitted array.
    pub index: usize,
    /// The offending field, or `(item)` for the item as a whole.
    pub field: &'static str,
    /// Why it was refused.
    pub reason: String,
}

/// An error answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Authentication failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The body is not JSON of the expected shape.
    #[error("{0}")]
    MalformedBody(String),
    /// Some items of a batch are invalid; nothing was stored.
    #[error("{} of the submitted items are invalid; nothing was stored", .0.len())]
    InvalidItems(Vec<ItemProblem>),
    /// More items than `http.max_batch`.
    #[error("batch of {got} submissions exceeds http.max_batch = {limit}")]
    BatchTooLarge {
        /// Items received.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// Body larger than `http.max_body_bytes`.
    #[error("request body exceeds http.max_body_bytes = {limit}")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// `Content-Type` is not JSON.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// No such route.
    #[error("no route for {0}")]
    NotFound(String),
    /// Route exists, method does not.
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed {
        /// Value of the `Allow` header.
        allow: &'static str,
    },
    /// The request took longer than `http.request_timeout_secs`.
    #[error("request not completed within http.request_timeout_secs")]
    Timeout,
    /// The body could not be read off the connection.
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    /// The operation failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The cluster listener refused a worker's request.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// This host could not read or write what the request needed (the coordinator's failure).
    #[error("storage failed: {0}")]
    Storage(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    items: Option<&'a [ItemProblem]>,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Auth(e) => e.status(),
            ApiError::MalformedBody(_) | ApiError::InvalidItems(_) | ApiError::BodyRead(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::BatchTooLarge { .. } | ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Service(e) => e.status(),
            ApiError::Refused(r) => StatusCode::from_u16(r.status()).unwrap_or(StatusCode::CONFLICT),
            ApiError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable reason string.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::Auth(e) => e.reason(),
            ApiError::MalformedBody(_) => "malformed_body",
            ApiError::InvalidItems(_) => "invalid_submissions",
            ApiError::BatchTooLarge { .. } => "batch_too_large",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Timeout => "request_timeout",
            ApiError::BodyRead(_) => "body_read_failed",
            ApiError::Service(e) => e.reason(),
            ApiError::Refused(r) => r.reason(),
            ApiError::Storage(_) => "storage_failed",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        let items = match self {
            ApiError::InvalidItems(items) => Some(items.as_slice()),
            _ => None,
        };
        let body = ErrorBody {
            error: self.reason(),
            message: self.to_string(),
            items,
        };
        serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"error":"internal"}"#.to_vec())
    }
}
