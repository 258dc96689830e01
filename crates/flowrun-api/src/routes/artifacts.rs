//! Screenshots and artifacts (§3.8, §3.13): the authenticated screenshot route answers a 302
//! to a short-lived signed URL, and `GET /artifacts/{token}` serves the bytes to whoever holds
//! that URL (no bearer key: the signature is the authority).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flowrun_core::execution::ExecState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::common::schema::ErrorBody;
use super::common::{Caller, Extension, path_id};
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::signing::TOKEN_TTL_SECONDS;

/// Routes that need a key.
pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(get_screenshot))
}

/// Routes without a key.
pub fn public_router() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(get_artifact))
}

/// Redirect to a screenshot's bytes: `302` with `Location` = a signed URL valid 5 minutes.
#[utoipa::path(get, path = "/executions/{executionId}/screenshots/{screenshotId}",
    tag = "executions",
    params(("executionId" = String, Path), ("screenshotId" = String, Path)),
    responses(
        (status = 302, description = "Redirect to the signed artifact URL",
         headers(("Location" = String, description = "Absolute URL of GET /artifacts/{token}"))),
        (status = 404, body = ErrorBody)))]
async fn get_screenshot(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path((raw_execution, screenshot_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = path_id("Execution", &raw_execution)?;
    let row = app
        .store
        .get_execution(&caller.owner_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("Execution", &raw_execution))?;
    let state = ExecState::parse(&row.state);
    let shot = state
        .screenshots
        .iter()
        .find(|s| s.id == screenshot_id)
        .ok_or_else(|| ApiError::not_found("Screenshot", &screenshot_id))?;
    let exp = flowrun_core::Ts::now().millis() / 1000 + TOKEN_TTL_SECONDS;
    let token = app.config.signing_key.sign(&caller.owner_id, &shot.id, exp);
    let location = format!("{}/v1/artifacts/{token}", origin(&app, &headers));
    let location = HeaderValue::from_str(&location).map_err(ApiError::internal)?;
    Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response())
}

/// The configured public base URL, else `http://` + the request's `Host`.
fn origin(app: &App, headers: &HeaderMap) -> String {
    if let Some(url) = &app.config.public_url {
        return url.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or("localhost");
    // The server speaks plain HTTP; behind a TLS proxy, configure the public URL.
    format!("http://{host}")
}

/// The bytes behind a signed URL (no bearer key); invalid, expired or tampered → 404.
#[utoipa::path(get, path = "/artifacts/{token}", tag = "artifacts",
    params(("token" = String, Path)),
    security(()),
    responses(
        (status = 200, description = "The artifact's bytes with their media type",
         content_type = "application/octet-stream",
         headers(("Cache-Control" = String, description = "private, max-age=300"))),
        (status = 404, body = ErrorBody)))]
async fn get_artifact(State(app): State<App>, Path(token): Path<String>) -> ApiResult<Response> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "Artifact not found");
    let now = flowrun_core::Ts::now().millis() / 1000;
    let claims = app
        .config
        .signing_key
        .verify(&token, now)
        .ok_or_else(not_found)?;
    let artifact = app
        .store
        .get_artifact(&claims.owner_id, &claims.artifact_id)
        .await?
        .ok_or_else(not_found)?;
    let content_type = HeaderValue::from_str(&artifact.mime_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=300"),
            ),
        ],
        artifact.bytes,
    )
        .into_response())
}
