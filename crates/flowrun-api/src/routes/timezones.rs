//! Time zones (§3.9): the IANA names every `timezone` field accepts.

use axum::response::Response;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::common::ok;
use super::common::schema::ErrorBody;
use crate::App;
use crate::error::ApiResult;

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(list_timezones))
}

/// `{data: string[]}`
#[derive(serde::Serialize, utoipa::ToSchema)]
struct TimezoneList {
    data: Vec<String>,
}

/// List supported time zones (sorted; zones and links, `UTC` included).
#[utoipa::path(get, path = "/timezones", tag = "timezones",
    responses((status = 200, body = TimezoneList), (status = 401, body = ErrorBody)))]
async fn list_timezones() -> ApiResult<Response> {
    Ok(ok(json!({ "data": flowrun_core::timezones::all() })))
}
