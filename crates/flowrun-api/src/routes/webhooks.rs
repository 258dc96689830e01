//! Outbound webhook endpoints (§3.10): CRUD with the secret shown once, secret rotation, test
//! deliveries, the delivery feed, per-endpoint deliveries with their attempts, stats, and the
//! (always empty) integrations catalog. Delivery itself is the engine's
//! ([`flowrun_engine::webhooks`]).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flowrun_core::validate::{Field, Obj, Req};
use flowrun_core::{FieldErrors, Ts, new_id};
use flowrun_engine::webhooks::{self as hooks, TargetError, WebhookService};
use flowrun_store::webhooks::DELIVERY_STATUSES;
use flowrun_store::{
    AttemptRow, DeliveryFilter, DeliveryRow, EndpointPatch, EndpointRow, StoredResponse,
};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::common::schema::{DataOf, ErrorBody, ListOf};
use super::common::{Caller, Extension, created, data, ok, path_id};
use crate::App;
use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult};
use crate::query::{Query, matches_search, ordered, paginate, pagination};

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(list_deliveries))
        .routes(routes!(delivery_stats))
        .routes(routes!(list_integrations))
        .routes(routes!(list_integration_targets))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
        .routes(routes!(rotate_secret))
        .routes(routes!(test_webhook))
        .routes(routes!(list_endpoint_deliveries))
        .routes(routes!(get_delivery))
}

const LIST_STATUSES: [&str; 4] = ["active", "failing", "blocked", "disabled"];
const KINDS: [&str; 2] = ["http", "integration"];
const STATES: [&str; 2] = ["ACTIVE", "DISABLED"];
const MAX_EVENT_TYPES: usize = 100;

// ---------------------------------------------------------------------------------------
// Wire shapes (§4.9)

/// An outbound endpoint.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub id: uuid::Uuid,
    /// `http` | `integration`
    pub kind: String,
    pub url: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub integration: Option<Value>,
    pub description: Option<String>,
    /// `[]` = every event type.
    pub event_types: Vec<String>,
    /// `ACTIVE` | `DISABLED` | `DELETED`
    pub state: String,
    /// `healthy` | `failing` | `blocked`
    pub health: String,
    pub blocked_at: Option<Ts>,
    pub blocked_reason: Option<String>,
    pub signing_enabled: bool,
    pub created_by: Option<String>,
    pub created_at: Ts,
    pub updated_at: Ts,
}

/// An endpoint with its signing secret (create and rotate-secret only; `null` on replay).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: Webhook,
    pub secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookListCounts {
    pub active: i64,
    pub failing: i64,
    pub blocked: i64,
    pub disabled: i64,
    pub total: i64,
}

/// `{items, pagination, counts}`
#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<Webhook>,
    pub pagination: super::common::schema::Pagination,
    pub counts: WebhookListCounts,
}

/// One delivery of one event to one endpoint.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDelivery {
    pub id: uuid::Uuid,
    pub endpoint_id: uuid::Uuid,
    pub event_id: String,
    pub event_type: String,
    pub source: String,
    pub occurred_at: Ts,
    /// `pending` | `success` | `skipped` | `dead`
    pub status: String,
    pub attempts: i64,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub duration_ms: Option<i64>,
    pub is_test: bool,
    pub created_at: Ts,
    pub completed_at: Option<Ts>,
    pub created_by: Option<String>,
}

/// A delivery in the feed across endpoints.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryFeedItem {
    #[serde(flatten)]
    pub delivery: WebhookDelivery,
    pub endpoint_kind: String,
    pub endpoint_url: Option<String>,
    /// The endpoint's description, else its URL.
    pub endpoint_label: Option<String>,
}

/// One attempt of a delivery.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt_no: i64,
    pub sent_at: Ts,
    pub request_url: String,
    pub request_method: String,
    #[schema(value_type = Option<Object>)]
    pub request_headers: Option<Value>,
    pub request_body: Option<String>,
    pub signed: bool,
    pub response_status: Option<i64>,
    #[schema(value_type = Option<Object>)]
    pub response_headers: Option<Value>,
    /// First 4 KiB of the response body, lossy UTF-8.
    pub response_snippet: Option<String>,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
}

/// A delivery with every attempt (`attempts` is the list here).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryWithAttempts {
    pub id: uuid::Uuid,
    pub endpoint_id: uuid::Uuid,
    pub event_id: String,
    pub event_type: String,
    pub source: String,
    pub occurred_at: Ts,
    pub status: String,
    pub attempts: Vec<Attempt>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub duration_ms: Option<i64>,
    pub is_test: bool,
    pub created_at: Ts,
    pub completed_at: Option<Ts>,
    pub created_by: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryByStatus {
    pub pending: i64,
    pub success: i64,
    pub skipped: i64,
    pub dead: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStats {
    pub total: i64,
    pub by_status: DeliveryByStatus,
    /// `success / (success + dead)`; null when that is 0/0.
    pub success_rate: Option<f64>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookTestResult {
    pub success: bool,
    pub status_code: Option<i64>,
    pub error: Option<String>,
}

/// An integration capability (none exist in this version).
#[derive(Serialize, ToSchema)]
pub struct Integration {
    #[schema(value_type = Object)]
    pub capability: Value,
    pub label: String,
}

fn ts(ms: i64) -> Ts {
    Ts::from_millis(ms).unwrap_or_else(Ts::now)
}

pub fn webhook_view(e: &EndpointRow) -> Webhook {
    Webhook {
        id: e.id,
        kind: e.kind.clone(),
        url: e.url.clone(),
        integration: None,
        description: e.description.clone(),
        event_types: e.event_types.clone(),
        state: e.state.clone(),
        health: e.health.clone(),
        blocked_at: e.blocked_at.map(ts),
        blocked_reason: e.blocked_reason.clone(),
        signing_enabled: e.kind == "http",
        created_by: e.created_by.clone(),
        created_at: ts(e.created_at),
        updated_at: ts(e.updated_at),
    }
}

fn with_secret(e: &EndpointRow, secret: Option<String>) -> WebhookWithSecret {
    WebhookWithSecret {
        webhook: webhook_view(e),
        secret,
    }
}

pub fn delivery_view(d: &DeliveryRow) -> WebhookDelivery {
    WebhookDelivery {
        id: d.id,
        endpoint_id: d.endpoint_id,
        event_id: d.event_id.clone(),
        event_type: d.event_type.clone(),
        source: d.source.clone(),
        occurred_at: ts(d.occurred_at),
        status: d.status.clone(),
        attempts: d.attempts.into(),
        last_status_code: d.last_status_code.map(i64::from),
        last_error: d.last_error.clone(),
        duration_ms: d.duration_ms,
        is_test: d.is_test,
        created_at: ts(d.created_at),
        completed_at: d.completed_at.map(ts),
        created_by: d.created_by.clone(),
    }
}

fn attempt_view(a: &AttemptRow) -> Attempt {
    let obj = |s: &Option<String>| s.as_deref().and_then(|s| serde_json::from_str(s).ok());
    Attempt {
        attempt_no: a.attempt_no.into(),
        sent_at: ts(a.sent_at),
        request_url: a.request_url.clone(),
        request_method: a.request_method.clone(),
        request_headers: obj(&a.request_headers),
        request_body: a.request_body.clone(),
        signed: a.signed,
        response_status: a.response_status.map(i64::from),
        response_headers: obj(&a.response_headers),
        response_snippet: a.response_snippet.clone(),
        duration_ms: a.duration_ms,
        error: a.error.clone(),
    }
}

/// The `status` list filter of an endpoint (§3.10).
fn list_status(e: &EndpointRow) -> Vec<&'static str> {
    let mut s = Vec::new();
    if e.state == "ACTIVE" && e.health == "healthy" {
        s.push("active");
    }
    if e.state == "ACTIVE" && e.health == "failing" {
        s.push("failing");
    }
    if e.health == "blocked" {
        s.push("blocked");
    }
    if e.state == "DISABLED" {
        s.push("disabled");
    }
    s
}

fn service(app: &App) -> ApiResult<std::sync::Arc<dyn WebhookService>> {
    app.engine.webhooks().ok_or_else(ApiError::unavailable)
}

/// The owner's live endpoint, else 404.
async fn endpoint(app: &App, caller: &Caller, raw: &str) -> ApiResult<EndpointRow> {
    let id = path_id("Webhook", raw)?;
    app.store
        .get_endpoint(id)
        .await?
        .filter(|e| e.owner_id == caller.owner_id && !e.is_deleted())
        .ok_or_else(|| ApiError::not_found("Webhook", raw))
}

/// `eventTypes`: at most 100 strings of 1..256 characters.
fn read_event_types(o: &Obj<'_>, errs: &mut FieldErrors) -> Field<Vec<String>> {
    let items = match o.array("eventTypes", Req::Optional, errs) {
        Field::Value(a) => a,
        Field::Absent => return Field::Absent,
        _ => return Field::Invalid,
    };
    let before = errs.len();
    if items.len() > MAX_EVENT_TYPES {
        errs.push(
            "eventTypes",
            "too_long",
            format!("eventTypes must have at most {MAX_EVENT_TYPES} items"),
        );
    }
    let mut out: Vec<String> = Vec::new();
    for (i, v) in items.iter().enumerate() {
        let field = format!("eventTypes[{i}]");
        match v.as_str() {
            Some(s) if (1..=256).contains(&s.chars().count()) => {
                if !out.iter().any(|o| o == s) {
                    out.push(s.to_string());
                }
            }
            Some(_) => errs.push(
                field,
                "invalid_value",
                "event types have 1 to 256 characters",
            ),
            None => errs.push(field, "invalid_type", "event types are strings"),
        }
    }
    if errs.len() > before {
        Field::Invalid
    } else {
        Field::Value(out)
    }
}

// ---------------------------------------------------------------------------------------
// Endpoints

/// List webhook endpoints.
#[utoipa::path(get, path = "/webhooks", tag = "webhooks",
    params(("status" = Option<String>, Query), ("search" = Option<String>, Query),
           ("kind" = Option<String>, Query), ("mine" = Option<bool>, Query),
           ("createdBy" = Option<String>, Query),
           ("page" = Option<i64>, Query), ("pageSize" = Option<i64>, Query)),
    responses((status = 200, body = WebhookList), (status = 422, body = ErrorBody)))]
async fn list_webhooks(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    mut q: Query,
) -> ApiResult<Response> {
    let status = q.enum_many("status", &LIST_STATUSES);
    let kind = q.enum_many("kind", &KINDS);
    let mine = q.bool("mine");
    let created_by = q.str("createdBy");
    if q.has("mine") && created_by.is_some() {
        q.reject("createdBy", "mine and createdBy cannot be combined");
    }
    let search = q.search();
    let page = q.page();
    q.finish()?;
    let all: Vec<EndpointRow> = app
        .store
        .list_endpoints(Some(&caller.owner_id), false)
        .await?
        .into_iter()
        .filter(|e| kind.as_ref().is_none_or(|k| k.contains(&e.kind)))
        .collect();
    let count = |s: &str| all.iter().filter(|e| list_status(e).contains(&s)).count() as i64;
    let counts = WebhookListCounts {
        active: count("active"),
        failing: count("failing"),
        blocked: count("blocked"),
        disabled: count("disabled"),
        total: all.len() as i64,
    };
    let mut items: Vec<&EndpointRow> = all
        .iter()
        .filter(|e| {
            status
                .as_ref()
                .is_none_or(|s| list_status(e).iter().any(|x| s.iter().any(|y| y == x)))
        })
        .filter(|e| mine != Some(true) || e.created_by.as_deref() == Some(&caller.actor_id))
        .filter(|e| {
            created_by
                .as_ref()
                .is_none_or(|c| e.created_by.as_ref() == Some(c))
        })
        .filter(|e| {
            search
                .as_ref()
                .is_none_or(|n| matches_search(n, &[e.url.as_deref(), e.description.as_deref()]))
        })
        .collect();
    items.sort_by(|a, b| ordered(a.created_at.cmp(&b.created_at), &a.id, &b.id, true));
    let views: Vec<Webhook> = items.into_iter().map(webhook_view).collect();
    let mut body = paginate(&views, page);
    body["counts"] = json!(counts);
    Ok(ok(body))
}

/// Create an endpoint; its signing secret is returned only here (and on rotation).
#[utoipa::path(post, path = "/webhooks", tag = "webhooks", request_body = inline(Object),
    responses((status = 201, body = DataOf<WebhookWithSecret>), (status = 422, body = ErrorBody)))]
async fn create_webhook(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(&body, &mut errs) else {
        return Err(ApiError::validation(errs));
    };
    let kind = o.enumeration("kind", Req::Optional, &KINDS, &mut errs);
    let description = o.string("description", Req::Nullable, 0, 500, &mut errs);
    let event_types = read_event_types(&o, &mut errs);
    if kind == Field::Value("integration".to_string()) {
        errs.push(
            "capability",
            "unknown_reference",
            "unknown integration: no integrations are available",
        );
        return Err(ApiError::validation(errs));
    }
    let url = o.string("url", Req::Required, 1, 2048, &mut errs);
    if let Field::Value(u) = &url {
        match service(&app)?.check_target(u).await {
            Ok(()) => {}
            Err(TargetError::InvalidUrl(m)) => errs.push("url", "invalid_value", m),
            Err(e @ TargetError::NotAllowed(_)) => errs.push("url", "not_allowed", e.to_string()),
        }
    }
    errs.into_result().map_err(ApiError::validation)?;
    let Field::Value(url) = url else {
        unreachable!("url is present when there are no errors");
    };
    let now = Ts::now().millis();
    let e = EndpointRow {
        id: new_id(),
        owner_id: caller.owner_id.clone(),
        kind: "http".to_string(),
        url: Some(url),
        description: description.value(),
        event_types: event_types.value().unwrap_or_default(),
        state: "ACTIVE".to_string(),
        health: "healthy".to_string(),
        blocked_at: None,
        blocked_reason: None,
        secret: hooks::new_secret(),
        created_by: Some(caller.actor_id.clone()),
        created_at: now,
        updated_at: now,
        consecutive_dead: 0,
        failing_since: None,
    };
    app.store.insert_endpoint(&e).await?;
    hooks::remember_endpoint(&e.owner_id, e.id);
    Ok(created(with_secret(&e, Some(e.secret.clone()))))
}

/// The §1.9 replay of `POST /webhooks`: the endpoint's current state with `secret: null`, or
/// 404 when it was deleted since.
pub async fn replay_create(app: &App, owner_id: &str, stored: &StoredResponse) -> Response {
    let id = serde_json::from_slice::<Value>(&stored.body)
        .ok()
        .and_then(|v| v["data"]["id"].as_str().map(str::to_string))
        .unwrap_or_default();
    let current = match flowrun_core::ids::parse_path_id(&id) {
        Some(uuid) => match app.store.get_endpoint(uuid).await {
            Ok(e) => e.filter(|e| e.owner_id == owner_id && !e.is_deleted()),
            Err(e) => return ApiError::from(e).into_response(),
        },
        None => None,
    };
    let Some(e) = current else {
        return ApiError::not_found("Webhook", &id).into_response();
    };
    let body = json!({ "data": with_secret(&e, None) }).to_string();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::CREATED);
    resp.headers_mut().insert(header::CONTENT_TYPE, crate::JSON);
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

/// Get an endpoint (never with its secret).
#[utoipa::path(get, path = "/webhooks/{webhookId}", tag = "webhooks",
    params(("webhookId" = String, Path)),
    responses((status = 200, body = DataOf<Webhook>), (status = 404, body = ErrorBody)))]
async fn get_webhook(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let e = endpoint(&app, &caller, &raw).await?;
    Ok(data(webhook_view(&e)))
}

/// Change an endpoint's event types, state or description; `state: ACTIVE` re-enables a
/// blocked endpoint.
#[utoipa::path(patch, path = "/webhooks/{webhookId}", tag = "webhooks",
    params(("webhookId" = String, Path)), request_body = inline(Object),
    responses((status = 200, body = DataOf<Webhook>), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn update_webhook(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let current = endpoint(&app, &caller, &raw).await?;
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(&body, &mut errs) else {
        return Err(ApiError::validation(errs));
    };
    let event_types = read_event_types(&o, &mut errs);
    let state = o.enumeration("state", Req::Optional, &STATES, &mut errs);
    let description = o.string("description", Req::Nullable, 0, 500, &mut errs);
    if errs.is_empty() && !(event_types.is_sent() || state.is_sent() || description.is_sent()) {
        errs.push(
            "body",
            "required",
            "send at least one of eventTypes, state, description",
        );
    }
    errs.into_result().map_err(ApiError::validation)?;
    let state = state.value();
    let patch = EndpointPatch {
        event_types: event_types.value(),
        reenable: state.as_deref() == Some("ACTIVE") && current.health == "blocked",
        state,
        description: description.patch(),
        updated_at: Ts::now().millis(),
    };
    let e = app
        .store
        .patch_endpoint(&caller.owner_id, current.id, &patch)
        .await?
        .ok_or_else(|| ApiError::not_found("Webhook", &raw))?;
    hooks::endpoint_changed(e.id);
    Ok(data(webhook_view(&e)))
}

/// Delete an endpoint: it disappears from reads and its pending deliveries end `skipped`.
#[utoipa::path(delete, path = "/webhooks/{webhookId}", tag = "webhooks",
    params(("webhookId" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
async fn delete_webhook(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let id = path_id("Webhook", &raw)?;
    let deleted = app
        .store
        .delete_endpoint(
            &caller.owner_id,
            id,
            Ts::now().millis(),
            hooks::ENDPOINT_DELETED,
        )
        .await?;
    if !deleted {
        return Err(ApiError::not_found("Webhook", &raw));
    }
    hooks::forget_endpoint(id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Replace the signing secret; the old one stops signing at once.
#[utoipa::path(post, path = "/webhooks/{webhookId}/rotate-secret", tag = "webhooks",
    params(("webhookId" = String, Path)),
    responses((status = 200, body = DataOf<WebhookWithSecret>), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn rotate_secret(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let current = endpoint(&app, &caller, &raw).await?;
    if current.kind != "http" {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_supported_for_integration",
            "Integration webhooks have no signing secret",
        ));
    }
    let secret = hooks::new_secret();
    let e = app
        .store
        .set_endpoint_secret(&caller.owner_id, current.id, &secret, Ts::now().millis())
        .await?
        .ok_or_else(|| ApiError::not_found("Webhook", &raw))?;
    hooks::endpoint_changed(e.id);
    Ok(data(with_secret(&e, Some(secret))))
}

/// Send one signed `webhook.test` event now (one attempt, recorded with `isTest`).
#[utoipa::path(post, path = "/webhooks/{webhookId}/test", tag = "webhooks",
    params(("webhookId" = String, Path)),
    responses((status = 200, body = DataOf<WebhookTestResult>), (status = 404, body = ErrorBody)))]
async fn test_webhook(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let e = endpoint(&app, &caller, &raw).await?;
    let result = service(&app)?
        .send_test(&caller.owner_id, e.id, Some(&caller.actor_id))
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("Webhook", &raw))?;
    Ok(data(WebhookTestResult {
        success: result.success,
        status_code: result.status_code.map(i64::from),
        error: result.error,
    }))
}

// ---------------------------------------------------------------------------------------
// Deliveries

/// The delivery feed across the owner's endpoints, deleted ones included.
#[utoipa::path(get, path = "/webhooks/deliveries", tag = "webhooks",
    params(("status" = Option<String>, Query), ("since" = Option<String>, Query),
           ("eventId" = Option<String>, Query), ("kind" = Option<String>, Query),
           ("page" = Option<i64>, Query), ("pageSize" = Option<i64>, Query)),
    responses((status = 200, body = ListOf<DeliveryFeedItem>), (status = 422, body = ErrorBody)))]
async fn list_deliveries(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    mut q: Query,
) -> ApiResult<Response> {
    let filter = DeliveryFilter {
        statuses: q
            .enum_many("status", &DELIVERY_STATUSES)
            .unwrap_or_default(),
        since: q.datetime("since").map(|t| t.millis()),
        event_id: q.str("eventId"),
        kind: q.enum_one("kind", &KINDS),
        endpoint_id: None,
    };
    let page = q.page();
    q.finish()?;
    let offset = (page.page - 1).saturating_mul(page.page_size);
    let (rows, total) = app
        .store
        .list_deliveries(&caller.owner_id, &filter, offset, page.page_size)
        .await?;
    let endpoints: std::collections::HashMap<uuid::Uuid, EndpointRow> = app
        .store
        .list_endpoints(Some(&caller.owner_id), true)
        .await?
        .into_iter()
        .map(|e| (e.id, e))
        .collect();
    let items: Vec<DeliveryFeedItem> = rows
        .iter()
        .map(|d| {
            let e = endpoints.get(&d.endpoint_id);
            let url = e.and_then(|e| e.url.clone());
            DeliveryFeedItem {
                delivery: delivery_view(d),
                endpoint_kind: e.map_or("http", |e| e.kind.as_str()).to_string(),
                endpoint_label: e
                    .and_then(|e| e.description.clone())
                    .filter(|d| !d.is_empty())
                    .or_else(|| url.clone()),
                endpoint_url: url,
            }
        })
        .collect();
    Ok(ok(json!({
        "items": items,
        "pagination": pagination(page, total.max(0) as u64),
    })))
}

/// Delivery counts by status and the success rate.
#[utoipa::path(get, path = "/webhooks/deliveries/stats", tag = "webhooks",
    params(("kind" = Option<String>, Query), ("since" = Option<String>, Query)),
    responses((status = 200, body = DataOf<DeliveryStats>), (status = 422, body = ErrorBody)))]
async fn delivery_stats(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    mut q: Query,
) -> ApiResult<Response> {
    let filter = DeliveryFilter {
        kind: q.enum_one("kind", &KINDS),
        since: q.datetime("since").map(|t| t.millis()),
        ..Default::default()
    };
    q.finish()?;
    let [pending, success, skipped, dead] =
        app.store.delivery_stats(&caller.owner_id, &filter).await?;
    let finished = success + dead;
    Ok(data(DeliveryStats {
        total: pending + success + skipped + dead,
        by_status: DeliveryByStatus {
            pending,
            success,
            skipped,
            dead,
        },
        success_rate: (finished > 0).then(|| success as f64 / finished as f64),
    }))
}

/// The deliveries of one endpoint.
#[utoipa::path(get, path = "/webhooks/{webhookId}/deliveries", tag = "webhooks",
    params(("webhookId" = String, Path), ("eventId" = Option<String>, Query),
           ("page" = Option<i64>, Query), ("pageSize" = Option<i64>, Query)),
    responses((status = 200, body = ListOf<WebhookDelivery>), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn list_endpoint_deliveries(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    mut q: Query,
) -> ApiResult<Response> {
    let e = endpoint(&app, &caller, &raw).await?;
    let filter = DeliveryFilter {
        endpoint_id: Some(e.id),
        event_id: q.str("eventId"),
        ..Default::default()
    };
    let page = q.page();
    q.finish()?;
    let offset = (page.page - 1).saturating_mul(page.page_size);
    let (rows, total) = app
        .store
        .list_deliveries(&caller.owner_id, &filter, offset, page.page_size)
        .await?;
    let items: Vec<WebhookDelivery> = rows.iter().map(delivery_view).collect();
    Ok(ok(json!({
        "items": items,
        "pagination": pagination(page, total.max(0) as u64),
    })))
}

/// One delivery of an endpoint with every attempt.
#[utoipa::path(get, path = "/webhooks/{webhookId}/deliveries/{deliveryId}", tag = "webhooks",
    params(("webhookId" = String, Path), ("deliveryId" = String, Path)),
    responses((status = 200, body = DataOf<DeliveryWithAttempts>), (status = 404, body = ErrorBody)))]
async fn get_delivery(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path((raw, raw_delivery)): Path<(String, String)>,
) -> ApiResult<Response> {
    let e = endpoint(&app, &caller, &raw).await?;
    let id = path_id("Delivery", &raw_delivery)?;
    let d = app
        .store
        .get_delivery(&caller.owner_id, id)
        .await?
        .filter(|d| d.endpoint_id == e.id)
        .ok_or_else(|| ApiError::not_found("Delivery", &raw_delivery))?;
    let attempts = app.store.list_attempts(d.id).await?;
    let v = delivery_view(&d);
    Ok(data(DeliveryWithAttempts {
        id: v.id,
        endpoint_id: v.endpoint_id,
        event_id: v.event_id,
        event_type: v.event_type,
        source: v.source,
        occurred_at: v.occurred_at,
        status: v.status,
        attempts: attempts.iter().map(attempt_view).collect(),
        last_status_code: v.last_status_code,
        last_error: v.last_error,
        duration_ms: v.duration_ms,
        is_test: v.is_test,
        created_at: v.created_at,
        completed_at: v.completed_at,
        created_by: v.created_by,
    }))
}

// ---------------------------------------------------------------------------------------
// Integrations (none exist in this version)

/// Integration capabilities (always empty).
#[utoipa::path(get, path = "/webhooks/integrations", tag = "webhooks",
    responses((status = 200, body = DataOf<Vec<Integration>>)))]
async fn list_integrations() -> Response {
    data(Vec::<Value>::new())
}

/// Targets of an integration capability (always empty).
#[utoipa::path(get, path = "/webhooks/integrations/{capabilityId}/targets", tag = "webhooks",
    params(("capabilityId" = String, Path), ("revision" = i64, Query)),
    responses((status = 200, body = DataOf<Vec<Object>>), (status = 422, body = ErrorBody)))]
async fn list_integration_targets(
    Path(_capability): Path<String>,
    mut q: Query,
) -> ApiResult<Response> {
    if !q.has("revision") {
        q.reject("revision", "revision is required");
    } else {
        q.int("revision", i64::MIN, i64::MAX);
    }
    q.finish()?;
    Ok(data(Vec::<Value>::new()))
}
