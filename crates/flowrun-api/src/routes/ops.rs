//! Operational routes without authentication: `/healthz`, `/metrics` and `/openapi.json`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::App;

pub fn router(doc: Arc<utoipa::openapi::OpenApi>) -> Router<App> {
    let doc_json = Arc::new(doc.to_json().unwrap_or_else(|_| "{}".to_string()));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::metrics::scrape))
        .route(
            "/openapi.json",
            get(move || {
                let body = doc_json.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, crate::JSON)],
                        body.as_str().to_string(),
                    )
                }
            }),
        )
}

/// `200 {status: "ok", version, store}`, or 503 when the store does not answer within 1 s.
async fn healthz(State(app): State<App>) -> Response {
    let store = app.store.backend();
    let ok = matches!(
        tokio::time::timeout(Duration::from_secs(1), app.store.ping()).await,
        Ok(Ok(()))
    );
    let status = if ok { "ok" } else { "unavailable" };
    let body = Json(json!({ "status": status, "version": crate::VERSION, "store": store }));
    if ok {
        body.into_response()
    } else {
        let mut r = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(1),
        );
        r
    }
}
