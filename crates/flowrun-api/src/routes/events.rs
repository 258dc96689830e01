//! Events (§3.7): durable ingest, and the app-event catalog.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use flowrun_core::FieldErrors;
use flowrun_core::appevents::{self, AppEventType};
use flowrun_core::validate::{Field, Obj, Req};
use flowrun_engine::Ingested;
use flowrun_store::StoredResponse;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::schema::{DataOf, ErrorBody};
use super::common::{Caller, Extension, data};
use crate::App;
use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult};

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(ingest_event))
        .routes(routes!(list_app_events))
        .routes(routes!(get_app_event))
}

/// `EventIngestResult` (bare).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventIngestResult {
    pub event_id: String,
}

/// A validated event body.
pub(crate) struct EventBody {
    pub event_type: String,
    pub device_id: Option<Uuid>,
    pub payload: Map<String, Value>,
}

/// Reads `{eventType, deviceId?, payload?}` (§3.7) and checks the payload against the
/// catalog entry of known types. The payload is moved out of the body, not copied.
pub(crate) fn read_event_body(body: Value) -> Result<EventBody, FieldErrors> {
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(&body, &mut errs) else {
        return Err(errs);
    };
    let event_type = o.string("eventType", Req::Required, 1, 200, &mut errs);
    let device_id = o.uuid("deviceId", Req::Nullable, &mut errs);
    let empty = Map::new();
    let payload = match o.object("payload", Req::Nullable, &mut errs) {
        Field::Value(p) => p,
        _ => &empty,
    };
    let event_type = match event_type {
        Field::Value(t) if t.chars().any(char::is_whitespace) => {
            errs.push(
                "eventType",
                "invalid_value",
                "eventType must not contain whitespace",
            );
            String::new()
        }
        Field::Value(t) => t,
        _ => String::new(),
    };
    if !event_type.is_empty() {
        errs.extend(appevents::check_payload(&event_type, payload, "payload"));
    }
    errs.into_result()?;
    let payload = match body {
        Value::Object(mut m) => match m.swap_remove("payload") {
            Some(Value::Object(p)) => p,
            _ => Map::new(),
        },
        _ => Map::new(),
    };
    Ok(EventBody {
        event_type,
        device_id: match device_id {
            Field::Value(d) => Some(d),
            _ => None,
        },
        payload,
    })
}

/// Ingest an event: stored durably before the 202; matching and fan-out run afterwards.
#[utoipa::path(post, path = "/events/ingest", tag = "events",
    request_body = inline(Object),
    responses((status = 202, body = EventIngestResult), (status = 422, body = ErrorBody)))]
async fn ingest_event(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    key: Option<Extension<flowrun_engine::IngestKey>>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let ev = read_event_body(body).map_err(ApiError::validation)?;
    let ingested = app
        .engine
        .ingest(
            flowrun_engine::NewEvent {
                owner_id: caller.owner_id,
                actor_id: Some(caller.actor_id),
                event_type: ev.event_type,
                device_id: ev.device_id,
                payload: ev.payload,
            },
            key.map(|Extension(k)| k),
        )
        .await?;
    Ok(match ingested {
        Ingested::Stored(event_id) => {
            let reply = ingest_reply(&event_id);
            let mut resp = Response::new(Body::from(reply.body));
            *resp.status_mut() = StatusCode::ACCEPTED;
            resp.headers_mut().insert(header::CONTENT_TYPE, crate::JSON);
            resp
        }
        Ingested::KeyTaken(taken) => crate::idempotency::answer_taken(taken),
    })
}

/// The 202 of an ingest, also stored as the replay of its `Idempotency-Key`.
pub(crate) fn ingest_reply(event_id: &str) -> StoredResponse {
    StoredResponse {
        status: StatusCode::ACCEPTED.as_u16(),
        body: serde_json::to_vec(&EventIngestResult {
            event_id: event_id.to_string(),
        })
        .unwrap_or_default(),
        location: None,
    }
}

/// The device and app event types flowrun knows, with their payload fields.
#[utoipa::path(get, path = "/app-events/catalog", tag = "events",
    responses((status = 200, body = DataOf<Vec<AppEventType>>)))]
async fn list_app_events() -> ApiResult<Response> {
    Ok(data(appevents::catalog()))
}

/// One app event type.
#[utoipa::path(get, path = "/app-events/catalog/{appEventType}", tag = "events",
    params(("appEventType" = String, Path)),
    responses((status = 200, body = DataOf<AppEventType>), (status = 404, body = ErrorBody)))]
async fn get_app_event(Path(ty): Path<String>) -> ApiResult<Response> {
    appevents::entry(&ty)
        .map(data)
        .ok_or_else(|| ApiError::not_found("AppEventType", &ty))
}
