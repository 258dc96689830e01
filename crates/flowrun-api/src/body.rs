//! Request bodies: bytes → JSON value, with the spec's distinction between malformed JSON
//! (400) and well-formed JSON of the wrong shape (422, decided by the handler's validation).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde_json::Value;

use crate::error::ApiError;

/// The request body as a JSON value; an empty body is `{}`.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(mut req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Already parsed by the idempotency layer (from this same body) for its fingerprint.
        if let Some(parsed) = req
            .extensions_mut()
            .remove::<crate::idempotency::ParsedBody>()
        {
            return Ok(JsonBody(parsed.0));
        }
        let limit = req
            .extensions()
            .get::<crate::BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(1 << 20);
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large(limit)
            } else {
                ApiError::invalid_json(e.body_text())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(bytes).map_err(ApiError::invalid_json)
}
