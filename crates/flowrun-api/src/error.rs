//! The one API error type. Every non-2xx body is `{error, code, details?}` (§2); the status,
//! the `code` string and the retry hints are decided here and nowhere else.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flowrun_core::FieldErrors;
use serde_json::{Value, json};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Box<Value>>,
    pub retry_after: Option<u64>,
    /// What went wrong, for the log only (see [`crate::frame`]); never in the body.
    pub cause: Option<String>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
            cause: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    pub fn invalid_json(msg: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("Request body is not valid JSON: {msg}"),
        )
    }

    /// 422 `validation_failed` listing every field problem.
    pub fn validation(errs: FieldErrors) -> Self {
        let n = errs.len();
        let first = errs
            .0
            .first()
            .map(|e| format!("{}: {}", e.field, e.message));
        let message = match (n, first) {
            (1, Some(f)) => format!("Validation failed: {f}"),
            (_, Some(f)) => format!("Validation failed: {f} (and {} more)", n - 1),
            _ => "Validation failed".to_string(),
        };
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
        .with_details(json!({ "errors": errs.0 }))
    }

    /// 422 for one field.
    pub fn field(field: &str, code: &str, message: impl Into<String>) -> Self {
        let mut e = FieldErrors::new();
        e.push(field, code, message);
        Self::validation(e)
    }

    /// 400 `invalid_params`: action params do not satisfy the catalog entry's schema.
    pub fn invalid_params(errs: FieldErrors) -> Self {
        let message = match errs.0.first() {
            Some(f) if errs.len() > 1 => format!(
                "params do not satisfy the action's paramsSchema: {}: {} (and {} more)",
                f.field,
                f.message,
                errs.len() - 1
            ),
            Some(f) => format!(
                "params do not satisfy the action's paramsSchema: {}: {}",
                f.field, f.message
            ),
            None => "params do not satisfy the action's paramsSchema".to_string(),
        };
        Self::new(StatusCode::BAD_REQUEST, "invalid_params", message)
            .with_details(json!({ "errors": errs.0 }))
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "A valid API key is required (Authorization: Bearer <key>)",
        )
    }

    /// 404 for a path id: `Flow 'abc' not found`.
    pub fn not_found(resource: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{resource} '{id}' not found"),
        )
        .with_details(json!({ "resource": resource.to_lowercase(), "id": id }))
    }

    pub fn route_not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("No route for {path}"),
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("Request body exceeds the limit of {limit} bytes"),
        )
    }

    /// A 500. The cause is logged with the request id by the request frame, never sent to
    /// the client.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        let mut e = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal server error",
        );
        e.cause = Some(err.to_string());
        e
    }

    pub fn unavailable() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable, retry later",
        );
        e.retry_after = Some(1);
        e
    }
}

impl From<flowrun_store::StoreError> for ApiError {
    fn from(e: flowrun_store::StoreError) -> Self {
        ApiError::internal(e)
    }
}

impl From<flowrun_engine::EngineError> for ApiError {
    fn from(e: flowrun_engine::EngineError) -> Self {
        match e {
            flowrun_engine::EngineError::ShuttingDown => ApiError::unavailable(),
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message, "code": self.code });
        if let Some(d) = self.details {
            body["details"] = *d;
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(cause) = self.cause {
            resp.extensions_mut()
                .insert(crate::frame::InternalCause(cause));
        }
        let h = resp.headers_mut();
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        // Deterministic 4xx: tell official clients not to retry (they retry every 409 otherwise).
        let deterministic = matches!(
            self.status.as_u16(),
            400 | 401 | 404 | 405 | 409 | 413 | 422
        ) && self.code != "idempotency_request_in_progress";
        if deterministic {
            h.insert("x-should-retry", HeaderValue::from_static("false"));
        } else if self.code == "idempotency_request_in_progress" {
            h.insert("x-should-retry", HeaderValue::from_static("true"));
        }
        resp
    }
}
