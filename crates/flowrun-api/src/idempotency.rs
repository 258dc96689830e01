//! `Idempotency-Key` on every write (§1.9).
//!
//! Scope = (owner, method, route without `/v1`, key); fingerprint = SHA-256 of the canonical
//! JSON body plus the sorted query. A 2xx outcome is stored and replayed byte for byte; any
//! other outcome releases the key. `POST /triggers/{id}/fire` only keeps the fingerprint:
//! the key becomes the invocation id and the handler dedupes per flow. A replay of
//! `POST /webhooks` answers the endpoint's current state without its secret.

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flowrun_core::model::Caller;
use flowrun_store::{IdemBegin, IdemScope, StoredResponse, write_canonical};
use sha2::{Digest, Sha256};

use crate::App;
use crate::error::ApiError;

pub const HEADER: &str = "idempotency-key";

/// The key of a request, if it carries a valid one. Invalid keys are rejected by the middleware
/// before handlers run.
pub fn key_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|k| valid_key(k))
        .map(str::to_string)
}

fn valid_key(k: &str) -> bool {
    (1..=255).contains(&k.len()) && k.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// The route part of the scope: the path without `/v1` and without a trailing slash.
pub fn route_of(path: &str) -> String {
    let p = path
        .strip_prefix("/v1")
        .filter(|r| r.is_empty() || r.starts_with('/'))
        .unwrap_or(path);
    let p = if p.len() > 1 {
        p.trim_end_matches('/')
    } else {
        p
    };
    if p.is_empty() {
        "/".to_string()
    } else {
        p.to_lowercase()
    }
}

/// `POST /webhooks`, whose replay answers the endpoint's current state (§1.9).
fn is_webhook_create(method: &Method, route: &str) -> bool {
    method == Method::POST && route == "/webhooks"
}

fn is_fire(method: &Method, route: &str) -> bool {
    let segs: Vec<&str> = route.trim_start_matches('/').split('/').collect();
    method == Method::POST && segs.len() == 3 && segs[0] == "triggers" && segs[2] == "fire"
}

/// `POST /events/ingest`, whose key record joins the event's group commit.
fn is_ingest(method: &Method, route: &str) -> bool {
    method == Method::POST && route == "/events/ingest"
}

/// The request body parsed once, by the idempotency layer for the fingerprint, and handed to
/// the body extractor so it does not parse the same bytes again.
#[derive(Clone)]
pub(crate) struct ParsedBody(pub serde_json::Value);

/// The body as JSON: `{}` for an empty body, `None` when it is not JSON.
fn parse_body(body: &[u8]) -> Option<serde_json::Value> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        Some(serde_json::Value::Object(Default::default()))
    } else {
        serde_json::from_slice(body).ok()
    }
}

/// SHA-256 of the canonical JSON body (`parsed`, or the raw bytes when they are not JSON) and
/// the sorted query.
fn fingerprint(body: &[u8], parsed: Option<&serde_json::Value>, query: Option<&str>) -> String {
    let mut canonical = Vec::with_capacity(body.len());
    match parsed {
        Some(v) => write_canonical(v, &mut canonical),
        None => canonical.extend_from_slice(String::from_utf8_lossy(body).as_bytes()),
    }
    let mut h = Sha256::new();
    h.update(&canonical);
    h.update(b"\n");
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        pairs.sort();
        let q = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        h.update(q.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Applies the request's `Idempotency-Key`, if it has one (see [`crate::gate`]).
pub(crate) async fn idempotency(app: &App, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    if !matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return next.run(req).await;
    }
    let Some(raw) = req.headers().get(HEADER) else {
        return next.run(req).await;
    };
    let key = match raw.to_str() {
        Ok(k) if valid_key(k) => k.to_string(),
        _ => {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1-255 printable ASCII characters",
            )
            .into_response();
        }
    };
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return next.run(req).await;
    };
    let route = route_of(req.uri().path());
    let query = req.uri().query().map(str::to_string);
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, app.config.body_limit).await {
        Ok(b) => b,
        Err(_) => return ApiError::payload_too_large(app.config.body_limit).into_response(),
    };
    let parsed = parse_body(&bytes);
    let fp = fingerprint(&bytes, parsed.as_ref(), query.as_deref());
    let scope = IdemScope {
        owner_id: caller.owner_id,
        method: method.to_string(),
        route: route.clone(),
        key,
    };
    if is_ingest(&method, &scope.route) {
        // The key record is written with the event, in its group commit.
        let mut req = Request::from_parts(parts, Body::from(bytes));
        if let Some(v) = parsed {
            req.extensions_mut().insert(ParsedBody(v));
        }
        req.extensions_mut().insert(flowrun_engine::IngestKey {
            scope,
            fingerprint: fp,
            reply: crate::routes::events::ingest_reply,
        });
        return next.run(req).await;
    }
    let now = chrono::Utc::now().timestamp_millis();
    let begin = match app.store.idem_begin(&scope, &fp, now).await {
        Ok(b) => b,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let fire = is_fire(&method, &route);
    let mut req = Request::from_parts(parts, Body::from(bytes));
    if let Some(v) = parsed {
        req.extensions_mut().insert(ParsedBody(v));
    }
    match begin {
        IdemBegin::Mismatch => key_reused(),
        IdemBegin::InProgress if !fire => in_progress(),
        IdemBegin::Replay(stored) if is_webhook_create(&method, &route) => {
            crate::routes::webhooks::replay_create(app, &scope.owner_id, &stored).await
        }
        IdemBegin::Replay(stored) if !fire => replay(stored),
        IdemBegin::New => {
            let resp = next.run(req).await;
            finish(app, &scope, resp, fire).await
        }
        // fire: the fingerprint matched; the handler dedupes per flow.
        _ => next.run(req).await,
    }
}

/// The reply to a request whose key is already recorded (no handler ran).
pub(crate) fn answer_taken(begin: IdemBegin) -> Response {
    match begin {
        IdemBegin::Mismatch => key_reused(),
        IdemBegin::Replay(stored) => replay(stored),
        _ => in_progress(),
    }
}

fn key_reused() -> Response {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "Idempotency-Key was already used with a different request",
    )
    .into_response()
}

fn in_progress() -> Response {
    let mut e = ApiError::conflict(
        "idempotency_request_in_progress",
        "A request with this Idempotency-Key is still being processed",
    );
    e.retry_after = Some(1);
    e.into_response()
}

async fn finish(app: &App, scope: &IdemScope, resp: Response, fire: bool) -> Response {
    if !resp.status().is_success() {
        if let Err(e) = app.store.idem_release(scope).await {
            tracing::error!(error = %e, "releasing idempotency key");
        }
        return resp;
    }
    if fire {
        if let Err(e) = app.store.idem_complete(scope, None).await {
            tracing::error!(error = %e, "recording idempotency fingerprint");
        }
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = match to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let stored = StoredResponse {
        status: parts.status.as_u16(),
        body: bytes.to_vec(),
        location: parts
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    if let Err(e) = app.store.idem_complete(scope, Some(&stored)).await {
        tracing::error!(error = %e, "storing idempotent response");
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut resp = Response::new(Body::from(stored.body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    if let Some(loc) = stored.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LOCATION, loc);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_drop_the_v1_prefix() {
        assert_eq!(route_of("/v1/flows"), "/flows");
        assert_eq!(route_of("/flows/"), "/flows");
        assert_eq!(route_of("/v1x/flows"), "/v1x/flows");
        assert!(is_fire(&Method::POST, &route_of("/v1/triggers/abc/fire")));
    }

    #[test]
    fn fingerprint_ignores_key_order_and_whitespace() {
        let fp = |body: &[u8], query| fingerprint(body, parse_body(body).as_ref(), query);
        let a = fp(br#"{"a":1,"b":[1,2]}"#, Some("y=2&x=1"));
        let b = fp(b"{ \"b\": [1, 2], \"a\": 1 }", Some("x=1&y=2"));
        assert_eq!(a, b);
        assert_eq!(fp(b"", None), fp(b"{}", None));
        assert_eq!(fp(b"{}", None), fp(b"{}", Some("")));
        assert_ne!(a, fp(br#"{"a":2}"#, None));
        assert_ne!(fp(b"{", None), fp(b"{}", None));
        // Stored fingerprints stay valid: SHA-256 of canonical body, newline, sorted query.
        assert_eq!(
            fp(br#"{"b":1,"a":"x"}"#, Some("z=1&y=2")),
            hex::encode(Sha256::digest(b"{\"a\":\"x\",\"b\":1}\ny=2&z=1"))
        );
    }
}
