//! The request frame: what every request gets around its route, in one service.
//!
//! - `x-request-id`: the request's own is kept, else a fresh UUID is set on the request; the
//!   response carries it (§1).
//! - Framework-made errors (405 with `Allow`, 413, 404 of nested routers) get the spec's
//!   error body.
//! - An internal error is logged here, with the request id, method and path, and its cause
//!   (which the error body never carries).
//! - At `debug`, one line per request with its status and latency.
//!
//! One boxed future per request does all of it. As a stack of tower-http and `from_fn`
//! layers (request id, its propagation, a trace span, the error mapping) the same work cost
//! about a fifth of the instructions of an ingested event: each layer moved or boxed the
//! future of everything inside it, and the span formatted its fields on every request.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::{ApiError, BodyLimit};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The cause of a 500, carried from [`ApiError::internal`] to the frame, which logs it.
#[derive(Clone, Debug)]
pub(crate) struct InternalCause(pub String);

/// Wraps the router; see the module notes.
#[derive(Clone)]
pub struct Frame<S> {
    inner: S,
    limit: usize,
}

impl<S> Frame<S> {
    pub fn new(inner: S, body_limit: usize) -> Self {
        Self {
            inner,
            limit: body_limit,
        }
    }
}

impl<S> tower::Service<Request> for Frame<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let started = Instant::now();
        let id = match req.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = fresh_request_id();
                req.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        req.extensions_mut().insert(BodyLimit(self.limit));
        let method = req.method().clone();
        // The URI's parts are shared buffers: a clone copies no path.
        let uri = req.uri().clone();
        // The clone that was made ready serves this call; a fresh one waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = inner.call(req);
        Box::pin(async move {
            let Ok(resp) = fut.await;
            let mut resp = map_framework_errors(resp, uri.path());
            if let Some(InternalCause(cause)) = resp.extensions_mut().remove::<InternalCause>() {
                tracing::error!(
                    request_id = id.to_str().unwrap_or("-"),
                    method = %method,
                    path = uri.path(),
                    error = %cause,
                    "internal error"
                );
            }
            tracing::debug!(
                request_id = id.to_str().unwrap_or("-"),
                method = %method,
                path = uri.path(),
                status = resp.status().as_u16(),
                micros = started.elapsed().as_micros() as u64,
                "request"
            );
            resp.headers_mut().insert(REQUEST_ID, id);
            Ok(resp)
        })
    }
}

/// A random (v4) UUID as a header value, formatted on the stack.
fn fresh_request_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).expect("a UUID is a valid header value")
}

/// Gives framework-generated errors (405 with `Allow`, 413, 404 of nested routers) the spec's
/// error body; every other response is returned as it is.
fn map_framework_errors(resp: Response, path: &str) -> Response {
    let status = resp.status();
    if status.is_success() || status.is_redirection() {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return resp;
    }
    let mapped = match status {
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("Method not allowed on {path}"),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(0),
        StatusCode::NOT_FOUND => ApiError::route_not_found(path),
        _ => return resp,
    };
    let allow = resp.headers().get(header::ALLOW).cloned();
    let mut out = mapped.into_response();
    if let Some(a) = allow {
        out.headers_mut().insert(header::ALLOW, a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_request_ids_are_uuids() {
        let a = fresh_request_id();
        let b = fresh_request_id();
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(a.len(), 36);
    }
}
