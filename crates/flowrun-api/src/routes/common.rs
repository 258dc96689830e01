//! Small helpers shared by handlers: path ids, envelopes, the caller.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::ApiError;

pub use axum::Extension;
pub use flowrun_core::model::Caller;

/// Parses a path id; a non-UUID is a 404 naming the id, like an unknown one.
pub fn path_id(resource: &str, raw: &str) -> Result<Uuid, ApiError> {
    flowrun_core::ids::parse_path_id(raw).ok_or_else(|| ApiError::not_found(resource, raw))
}

/// `200 {data: …}`
pub fn data<T: Serialize>(v: T) -> Response {
    Json(json!({ "data": v })).into_response()
}

/// `201 {data: …}`
pub fn created<T: Serialize>(v: T) -> Response {
    (StatusCode::CREATED, Json(json!({ "data": v }))).into_response()
}

/// `202 {data: …}`
pub fn accepted<T: Serialize>(v: T) -> Response {
    (StatusCode::ACCEPTED, Json(json!({ "data": v }))).into_response()
}

/// `200 {message}`
pub fn message(m: impl Into<String>) -> Response {
    Json(json!({ "message": m.into() })).into_response()
}

/// 409 `in_use` when non-archived flows of the owner still reference an object
/// (`details.flowIds`, sorted); `Ok` when none does.
pub fn refuse_if_used(
    defs: &flowrun_store::Defs,
    owner: &str,
    resource: &str,
    id: Uuid,
    uses: impl Fn(&flowrun_core::model::FlowRecord) -> bool,
) -> Result<(), ApiError> {
    let mut users: Vec<Uuid> = defs
        .live_flows(owner)
        .filter(|f| uses(f))
        .map(|f| f.flow.id)
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    users.sort();
    Err(ApiError::conflict(
        "in_use",
        format!("{resource} {id} is used by {} flow(s)", users.len()),
    )
    .with_details(json!({ "flowIds": users })))
}

/// `200` with a body built by the caller (lists, bare objects).
pub fn ok(v: Value) -> Response {
    Json(v).into_response()
}

/// OpenAPI shapes of the envelopes (§1.4). Handlers build the JSON directly; these exist so
/// the generated document describes it.
pub mod schema {
    use serde::Serialize;
    use utoipa::ToSchema;

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct Pagination {
        pub page: i64,
        pub page_size: i64,
        pub total: i64,
        pub pages: i64,
        pub has_next: bool,
        pub has_prev: bool,
    }

    /// `{data: T}`
    #[derive(Serialize, ToSchema)]
    pub struct DataOf<T: ToSchema> {
        pub data: T,
    }

    /// `{items: T[], pagination}`
    #[derive(Serialize, ToSchema)]
    pub struct ListOf<T: ToSchema> {
        pub items: Vec<T>,
        pub pagination: Pagination,
    }

    /// `{message}`
    #[derive(Serialize, ToSchema)]
    pub struct Message {
        pub message: String,
    }

    /// `{error, code, details?}`
    #[derive(Serialize, ToSchema)]
    pub struct ErrorBody {
        pub error: String,
        pub code: String,
        #[schema(value_type = Option<Object>)]
        pub details: Option<serde_json::Value>,
    }

    /// A JSON object whose shape is described in the API contract.
    #[derive(Serialize, ToSchema)]
    pub struct AnyObject {}
}
