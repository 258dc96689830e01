//! Triggers (§3.1): what starts a flow — an event type with optional conditions, a schedule,
//! or a custom payload fired through the API.
//!
//! Create and update share one validation path: the body is merged over the stored trigger
//! (nothing for a create) and the result is checked against the activation rules of §5.1,
//! so a PATCH is accepted exactly when the merged trigger would be accepted by a create.

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use flowrun_core::model::{ScheduleRule, Trigger};
use flowrun_core::validate::{Field, Obj, Req, type_name};
use flowrun_core::{FieldErrors, Ts, conditions, new_id, schedule, timezones};
use flowrun_store::Change;
use serde_json::{Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::common::schema::{DataOf, ErrorBody, ListOf, Message};
use super::common::{Caller, Extension, created, data, message, ok, path_id};
use crate::App;
use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult};
use crate::query::{Query, matches_search, ordered, paginate};

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(list_triggers, create_trigger))
        .routes(routes!(get_trigger, update_trigger, delete_trigger))
        .routes(routes!(fire_trigger))
}

const ACTIVATIONS: [&str; 3] = ["event", "schedule", "custom"];
const ORDER_FIELDS: [&str; 3] = ["name", "createdAt", "updatedAt"];

/// List triggers.
#[utoipa::path(get, path = "/triggers", tag = "triggers",
    params(("activation" = Option<String>, Query), ("eventType" = Option<String>, Query),
           ("search" = Option<String>, Query), ("orderBy" = Option<String>, Query),
           ("orderByDirection" = Option<String>, Query),
           ("page" = Option<i64>, Query), ("pageSize" = Option<i64>, Query)),
    responses((status = 200, body = ListOf<Trigger>), (status = 422, body = ErrorBody)))]
async fn list_triggers(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    mut q: Query,
) -> ApiResult<Response> {
    let activation = q.enum_one("activation", &ACTIVATIONS);
    let event_type = q.str("eventType");
    let search = q.search();
    let (order_by, desc) = q.order(&ORDER_FIELDS, "createdAt");
    let page = q.page();
    q.finish()?;
    let defs = app.registry.read();
    let mut items: Vec<&Trigger> = defs
        .triggers
        .values()
        .map(|t| t.as_ref())
        .filter(|t| t.owner_id == caller.owner_id)
        .filter(|t| activation.as_ref().is_none_or(|a| &t.activation == a))
        .filter(|t| {
            event_type
                .as_ref()
                .is_none_or(|e| t.event_type.as_ref() == Some(e))
        })
        .filter(|t| {
            search
                .as_ref()
                .is_none_or(|n| matches_search(n, &[Some(&t.name), t.description.as_deref()]))
        })
        .collect();
    items.sort_by(|a, b| {
        let primary = match order_by.as_str() {
            "name" => a.name.cmp(&b.name),
            "updatedAt" => a.updated_at.cmp(&b.updated_at),
            _ => a.created_at.cmp(&b.created_at),
        };
        ordered(primary, &a.id, &b.id, desc)
    });
    Ok(ok(paginate(&items, page)))
}

/// Create a trigger.
#[utoipa::path(post, path = "/triggers", tag = "triggers",
    request_body = inline(Object),
    responses((status = 201, body = DataOf<Trigger>), (status = 422, body = ErrorBody)))]
async fn create_trigger(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let now = Ts::now();
    let trigger = merge(&body, None, &caller, now).map_err(ApiError::validation)?;
    let _guard = app.registry.lock().await;
    app.registry
        .apply(vec![Change::PutTrigger(trigger.clone())])
        .await?;
    app.engine.schedule_changed(None, &trigger).await?;
    Ok(created(trigger))
}

/// Get a trigger.
#[utoipa::path(get, path = "/triggers/{triggerId}", tag = "triggers",
    params(("triggerId" = String, Path)),
    responses((status = 200, body = DataOf<Trigger>), (status = 404, body = ErrorBody)))]
async fn get_trigger(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let id = path_id("Trigger", &raw)?;
    let defs = app.registry.read();
    let t = defs
        .trigger(&caller.owner_id, id)
        .ok_or_else(|| ApiError::not_found("Trigger", &raw))?;
    Ok(data(t.as_ref()))
}

/// Update a trigger; only sent fields change.
#[utoipa::path(patch, path = "/triggers/{triggerId}", tag = "triggers",
    params(("triggerId" = String, Path)), request_body = inline(Object),
    responses((status = 200, body = DataOf<Trigger>), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn update_trigger(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let id = path_id("Trigger", &raw)?;
    let _guard = app.registry.lock().await;
    let current = app
        .registry
        .read()
        .trigger(&caller.owner_id, id)
        .cloned()
        .ok_or_else(|| ApiError::not_found("Trigger", &raw))?;
    let trigger = merge(&body, Some(&current), &caller, Ts::now()).map_err(ApiError::validation)?;
    app.registry
        .apply(vec![Change::PutTrigger(trigger.clone())])
        .await?;
    // Restarts the schedule only when its rule, zone or activation changed.
    app.engine
        .schedule_changed(Some(&current), &trigger)
        .await?;
    Ok(data(trigger))
}

/// Delete a trigger that no live flow uses.
#[utoipa::path(delete, path = "/triggers/{triggerId}", tag = "triggers",
    params(("triggerId" = String, Path)),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_trigger(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let id = path_id("Trigger", &raw)?;
    let _guard = app.registry.lock().await;
    {
        let defs = app.registry.read();
        defs.trigger(&caller.owner_id, id)
            .ok_or_else(|| ApiError::not_found("Trigger", &raw))?;
        super::common::refuse_if_used(&defs, &caller.owner_id, "Trigger", id, |f| {
            f.flow.trigger_id == id
        })?;
    }
    app.registry.apply(vec![Change::DeleteTrigger(id)]).await?;
    app.engine.schedule_removed(id).await?;
    Ok(message(format!("Trigger {id} deleted")))
}

// ---------------------------------------------------------------------------------------
// Validation and merge
// ---------------------------------------------------------------------------------------

/// The activation-dependent fields, in the order errors are reported.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    EventType,
    Conditions,
    ScheduleRule,
    Timezone,
    CustomPayloadSchema,
}

impl Slot {
    const ALL: [Slot; 5] = [
        Slot::EventType,
        Slot::Conditions,
        Slot::ScheduleRule,
        Slot::Timezone,
        Slot::CustomPayloadSchema,
    ];

    fn name(self) -> &'static str {
        match self {
            Slot::EventType => "eventType",
            Slot::Conditions => "conditions",
            Slot::ScheduleRule => "scheduleRule",
            Slot::Timezone => "timezone",
            Slot::CustomPayloadSchema => "customPayloadSchema",
        }
    }

    /// §5.1: whether a non-null value is accepted for this activation.
    fn allowed(self, activation: &str) -> bool {
        matches!(
            (activation, self),
            ("event", Slot::EventType | Slot::Conditions)
                | ("schedule", Slot::ScheduleRule | Slot::Timezone)
                | ("custom", Slot::CustomPayloadSchema)
        )
    }
}

/// One activation-dependent field after the merge.
enum Merged<T> {
    /// No value (never sent, cleared with null, or dropped by an activation change).
    None,
    Value(T),
    /// A problem was already recorded.
    Invalid,
}

impl<T> Merged<T> {
    fn value(self) -> Option<T> {
        match self {
            Merged::Value(v) => Some(v),
            _ => None,
        }
    }
}

/// Validates `body` merged over `current` (a create when `None`) and returns the trigger to
/// store, or every problem found.
fn merge(
    body: &Value,
    current: Option<&Trigger>,
    caller: &Caller,
    now: Ts,
) -> Result<Trigger, FieldErrors> {
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(body, &mut errs) else {
        return Err(errs);
    };
    let creating = current.is_none();
    let req = if creating {
        Req::Required
    } else {
        Req::Optional
    };
    let activation_sent = o.enumeration("activation", req, &ACTIVATIONS, &mut errs);
    let name = o.string("name", req, 1, 200, &mut errs);
    let description = o.string("description", Req::Nullable, 0, 2000, &mut errs);

    // Type-level reading of every activation-dependent field.
    let event_type = read_event_type(&o, &mut errs);
    let conditions = o.any("conditions", Req::Nullable, &mut errs);
    let schedule_rule = o.any("scheduleRule", Req::Nullable, &mut errs);
    let timezone = o.string("timezone", Req::Nullable, 0, 200, &mut errs);
    let payload_schema = o.object("customPayloadSchema", Req::Nullable, &mut errs);

    let activation: Option<String> = match (&activation_sent, current) {
        (Field::Value(a), _) => Some(a.clone()),
        (Field::Absent, Some(c)) => Some(c.activation.clone()),
        _ => None,
    };
    let changed = match (current, &activation) {
        (Some(c), Some(a)) => &c.activation != a,
        _ => false,
    };
    let sent = |slot: Slot| -> bool {
        match slot {
            Slot::EventType => matches!(event_type, Field::Value(_)),
            Slot::Conditions => matches!(conditions, Field::Value(_)),
            Slot::ScheduleRule => matches!(schedule_rule, Field::Value(_)),
            Slot::Timezone => matches!(timezone, Field::Value(_)),
            Slot::CustomPayloadSchema => matches!(payload_schema, Field::Value(_)),
        }
    };
    // A field the activation forbids: 422 when sent, silently dropped when stored. With an
    // unknown activation nothing is forbidden, so every sent field still gets checked.
    let is_forbidden = |slot: Slot| activation.as_deref().is_some_and(|a| !slot.allowed(a));
    for slot in Slot::ALL {
        if is_forbidden(slot) && sent(slot) {
            errs.push(
                slot.name(),
                "not_allowed",
                format!(
                    "{} is not allowed for {} triggers",
                    slot.name(),
                    activation.as_deref().unwrap_or_default()
                ),
            );
        }
    }
    let keep_stored = |slot: Slot| !is_forbidden(slot);

    // eventType
    let m_event_type: Merged<String> = match event_type {
        Field::Value(v) if !is_forbidden(Slot::EventType) => Merged::Value(v),
        Field::Value(_) | Field::Invalid => Merged::Invalid,
        Field::Null => Merged::None,
        Field::Absent => match current.and_then(|c| c.event_type.clone()) {
            Some(v) if keep_stored(Slot::EventType) => Merged::Value(v),
            _ => Merged::None,
        },
    };

    // conditions: the grammar is checked whenever the activation allows them.
    let m_conditions: Merged<Value> = match conditions {
        Field::Value(v) => {
            if is_forbidden(Slot::Conditions) {
                Merged::Invalid
            } else {
                let before = errs.len();
                conditions::validate(v, "conditions", &mut errs);
                if errs.len() > before {
                    Merged::Invalid
                } else {
                    Merged::Value(v.clone())
                }
            }
        }
        Field::Invalid => Merged::Invalid,
        Field::Null => Merged::None,
        Field::Absent => match current.and_then(|c| c.conditions.clone()) {
            Some(v) if keep_stored(Slot::Conditions) => Merged::Value(v),
            _ => Merged::None,
        },
    };

    // timezone (before the schedule, which depends on it)
    let m_timezone: Merged<String> = match timezone {
        Field::Value(v) => {
            if is_forbidden(Slot::Timezone) {
                Merged::Invalid
            } else if timezones::is_supported(&v) {
                Merged::Value(v)
            } else {
                errs.push(
                    "timezone",
                    "unsupported_zone",
                    format!("'{v}' is not a supported time zone (see GET /timezones)"),
                );
                Merged::Invalid
            }
        }
        Field::Invalid => Merged::Invalid,
        Field::Null => Merged::None,
        Field::Absent => match current.and_then(|c| c.timezone.clone()) {
            Some(v) if keep_stored(Slot::Timezone) => Merged::Value(v),
            _ => Merged::None,
        },
    };
    let zone_for_rule: Option<&str> = match &m_timezone {
        Merged::Value(v) => Some(v.as_str()),
        Merged::None => None,
        // A zone was sent but is unusable: its own error says enough, and an unsupported
        // name makes the rule skip its zone checks.
        Merged::Invalid => Some(""),
    };

    // scheduleRule
    let stored_rule = current.and_then(|c| c.schedule_rule.clone());
    // A stored rule is re-validated too: a changed or cleared timezone can invalidate it.
    let rule_value: Option<Value> = match schedule_rule {
        Field::Value(v) if !is_forbidden(Slot::ScheduleRule) => Some(v.clone()),
        Field::Absent => match &stored_rule {
            Some(r) if keep_stored(Slot::ScheduleRule) => serde_json::to_value(r).ok(),
            _ => None,
        },
        _ => None,
    };
    let m_schedule_rule: Merged<ScheduleRule> = match (&rule_value, &schedule_rule) {
        (Some(v), _) => {
            match schedule::validate(v, "scheduleRule", zone_for_rule, now.0, &mut errs) {
                Some(r) => Merged::Value(r),
                None => Merged::Invalid,
            }
        }
        (None, Field::Null | Field::Absent) => Merged::None,
        (None, _) => Merged::Invalid,
    };

    // customPayloadSchema
    let m_payload_schema: Merged<Value> = match payload_schema {
        Field::Value(m) => {
            if is_forbidden(Slot::CustomPayloadSchema) {
                Merged::Invalid
            } else {
                let v = Value::Object(m.clone());
                match compile_payload_schema(&v) {
                    Ok(_) => Merged::Value(v),
                    Err(e) => {
                        errs.push("customPayloadSchema", "invalid_schema", e);
                        Merged::Invalid
                    }
                }
            }
        }
        Field::Invalid => Merged::Invalid,
        Field::Null => Merged::None,
        Field::Absent => match current.and_then(|c| c.custom_payload_schema.clone()) {
            Some(v) if keep_stored(Slot::CustomPayloadSchema) => Merged::Value(v),
            _ => Merged::None,
        },
    };

    // Required after the merge.
    match activation.as_deref() {
        Some("event") if matches!(m_event_type, Merged::None) => {
            errs.push(
                "eventType",
                "required",
                "eventType is required for event triggers",
            );
        }
        Some("schedule") if matches!(m_schedule_rule, Merged::None) => {
            errs.push(
                "scheduleRule",
                "required",
                "scheduleRule is required for schedule triggers",
            );
        }
        _ => {}
    }

    if !errs.is_empty() {
        return Err(errs);
    }
    let activation = activation.unwrap_or_default();
    let event_type = m_event_type.value();
    let conditions = m_conditions.value();
    let schedule_rule = m_schedule_rule.value();
    let timezone = m_timezone.value();
    let custom_payload_schema = m_payload_schema.value();

    let mut t = match current {
        Some(c) => c.clone(),
        None => Trigger {
            id: new_id(),
            name: String::new(),
            description: None,
            activation: activation.clone(),
            event_type: None,
            conditions: None,
            schedule_rule: None,
            timezone: None,
            custom_payload_schema: None,
            next_fire_time: None,
            owner_id: caller.owner_id.clone(),
            created_by: Some(caller.actor_id.clone()),
            user_id: caller.owner_id.clone(),
            created_at: now,
            updated_at: now,
        },
    };
    let schedule_changed =
        creating || changed || t.schedule_rule != schedule_rule || t.timezone != timezone;
    if let Field::Value(n) = name {
        t.name = n;
    }
    if let Some(d) = description.patch() {
        t.description = d;
    }
    t.activation = activation;
    t.event_type = event_type;
    t.conditions = conditions;
    t.schedule_rule = schedule_rule;
    t.timezone = timezone;
    t.custom_payload_schema = custom_payload_schema;
    t.updated_at = now;
    t.next_fire_time = match &t.schedule_rule {
        Some(rule) if t.activation == "schedule" => {
            if schedule_changed {
                next_fire(&t, rule, now.0)
            } else {
                t.next_fire_time
            }
        }
        _ => None,
    };
    Ok(t)
}

/// `eventType`: 1..200 characters without whitespace; `null` means "no event type".
fn read_event_type(o: &Obj, errs: &mut FieldErrors) -> Field<String> {
    match o.string("eventType", Req::Nullable, 1, 200, errs) {
        Field::Value(s) if s.chars().any(char::is_whitespace) => {
            errs.push(
                "eventType",
                "invalid_value",
                "eventType must not contain whitespace",
            );
            Field::Invalid
        }
        other => other,
    }
}

/// The jittered instant of the trigger's next occurrence after `after`.
fn next_fire(t: &Trigger, rule: &ScheduleRule, after: DateTime<Utc>) -> Option<Ts> {
    schedule::next_fire_time(t.id, rule, t.timezone.as_deref(), t.created_at.0, after)
        .map(|(_, fire)| Ts(fire))
}

/// Fire a custom trigger: fans out to every enabled bound flow and device.
#[utoipa::path(post, path = "/triggers/{triggerId}/fire", tag = "triggers",
    params(("triggerId" = String, Path)),
    request_body = inline(Object),
    responses((status = 202, body = flowrun_core::execution::TriggerFireResult),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn fire_trigger(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    use axum::http::{HeaderValue, StatusCode};
    use axum::response::IntoResponse;
    let id = path_id("Trigger", &raw)?;
    let trigger = app
        .registry
        .read()
        .trigger(&caller.owner_id, id)
        .cloned()
        .ok_or_else(|| ApiError::not_found("Trigger", &raw))?;
    if trigger.activation != "custom" {
        return Err(ApiError::conflict(
            "trigger_not_custom",
            format!(
                "Trigger {id} is a {} trigger; only custom triggers can be fired",
                trigger.activation
            ),
        )
        .with_details(serde_json::json!({ "activation": trigger.activation })));
    }
    let payload = match body.get("payload") {
        None | Some(Value::Null) => {
            return Err(ApiError::field(
                "payload",
                "required",
                "payload is required",
            ));
        }
        Some(p @ Value::Object(_)) => p.clone(),
        Some(other) => {
            return Err(ApiError::field(
                "payload",
                "invalid_type",
                format!("payload must be an object, got {}", type_name(other)),
            ));
        }
    };
    check_custom_payload(&trigger, &payload)?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // A generated id is time-ordered (`new_id`), so the invocation index takes each new row at
    // its end instead of at a random leaf (one page write per run saved under load).
    let invocation_id = key
        .clone()
        .unwrap_or_else(|| flowrun_core::new_id().to_string());
    let outcome = app
        .engine
        .submit(flowrun_engine::Firing {
            owner_id: caller.owner_id.clone(),
            actor_id: Some(caller.actor_id.clone()),
            origin: flowrun_engine::Origin::Fire,
            trigger_id: id,
            only_flow: None,
            payload,
            invocation_id: Some(invocation_id.clone()),
            dedupe_invocation: key.is_some(),
            event: None,
            schedule: Value::Null,
            verify_device: None,
            capture_screenshots: false,
            received_at: None,
            suppressed: None,
        })
        .await?;
    let deduplicated = key.is_some() && outcome.deduplicated;
    let result = flowrun_core::execution::TriggerFireResult {
        deduplicated,
        enqueued_count: outcome.enqueued.len() as i64,
        invocation_id,
    };
    let mut resp = (StatusCode::ACCEPTED, axum::Json(result)).into_response();
    if deduplicated {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// 422 when a payload fails the trigger's `customPayloadSchema` (paths under `payload`).
pub(crate) fn check_custom_payload(trigger: &Trigger, payload: &Value) -> ApiResult<()> {
    let Some(schema) = &trigger.custom_payload_schema else {
        return Ok(());
    };
    let validator = compile_payload_schema(schema).map_err(ApiError::internal)?;
    let mut errs = FieldErrors::new();
    for e in validator.iter_errors(payload) {
        let pointer = e.instance_path.to_string();
        let mut field = String::from("payload");
        for seg in pointer.split('/').skip(1) {
            let seg = seg.replace("~1", "/").replace("~0", "~");
            if seg.parse::<usize>().is_ok() {
                field.push_str(&format!("[{seg}]"));
            } else {
                field.push('.');
                field.push_str(&seg);
            }
        }
        errs.push(field, "invalid_payload", e.to_string());
    }
    errs.into_result().map_err(ApiError::validation)
}

/// Compiles a custom payload schema (§5.1): dialect from `$schema` (2020-12 by default,
/// 2019-09 and draft-07 accepted), formats asserted, remote references never fetched.
pub fn compile_payload_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    use jsonschema::Draft;
    let draft = match schema.get("$schema") {
        None => Draft::Draft202012,
        Some(Value::String(s)) => match s.trim_end_matches('#') {
            "https://json-schema.org/draft/2020-12/schema" => Draft::Draft202012,
            "https://json-schema.org/draft/2019-09/schema" => Draft::Draft201909,
            "http://json-schema.org/draft-07/schema"
            | "https://json-schema.org/draft-07/schema" => Draft::Draft7,
            other => {
                return Err(format!(
                    "unsupported $schema '{other}'; use JSON Schema 2020-12, 2019-09 or draft-07"
                ));
            }
        },
        Some(other) => {
            return Err(format!(
                "$schema must be a string, got {}",
                type_name(other)
            ));
        }
    };
    let mut normalized: Map<String, Value> = schema.as_object().cloned().unwrap_or_default();
    // The `https` spelling of draft-07 is common in the wild but unknown to the validator.
    if draft == Draft::Draft7 {
        normalized.remove("$schema");
    }
    jsonschema::options()
        .with_draft(draft)
        .should_validate_formats(true)
        .with_retriever(NoRemote)
        .build(&Value::Object(normalized))
        .map_err(|e| {
            format!(
                "customPayloadSchema is not a valid JSON Schema: {}",
                e.masked()
            )
        })
}

/// Remote `$ref`s are refused rather than fetched: compiling a schema must not make the
/// server issue requests on a client's behalf.
struct NoRemote;

impl jsonschema::Retrieve for NoRemote {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!("remote references are not supported ({})", uri.as_str()).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caller() -> Caller {
        Caller {
            owner_id: "o".into(),
            actor_id: "a".into(),
        }
    }

    fn fields(body: Value, current: Option<&Trigger>) -> Vec<(String, String)> {
        match merge(&body, current, &caller(), Ts::now()) {
            Ok(_) => vec![],
            Err(e) => {
                e.0.into_iter()
                    .map(|e| (e.field, e.code.unwrap_or_default()))
                    .collect()
            }
        }
    }

    #[test]
    fn payload_schema_dialects() {
        assert!(compile_payload_schema(&json!({"type": "object"})).is_ok());
        for s in [
            "https://json-schema.org/draft/2020-12/schema",
            "https://json-schema.org/draft/2019-09/schema",
            "http://json-schema.org/draft-07/schema#",
        ] {
            assert!(compile_payload_schema(&json!({"$schema": s, "type": "object"})).is_ok());
        }
        assert!(
            compile_payload_schema(&json!({"$schema": "http://json-schema.org/draft-04/schema#"}))
                .is_err()
        );
        assert!(compile_payload_schema(&json!({"type": "nope"})).is_err());
        assert!(compile_payload_schema(&json!({"$ref": "https://example.com/s.json"})).is_err());
        assert!(
            compile_payload_schema(
                &json!({"$defs": {"a": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/a"}}})
            )
            .is_ok()
        );
    }

    #[test]
    fn activation_rules_on_create() {
        assert!(fields(json!({"activation": "custom", "name": "c"}), None).is_empty());
        assert_eq!(
            fields(
                json!({"activation": "custom", "name": "c", "eventType": "x", "timezone": "UTC"}),
                None
            ),
            [
                ("eventType".into(), "not_allowed".into()),
                ("timezone".into(), "not_allowed".into())
            ]
        );
        assert_eq!(
            fields(json!({"activation": "event", "name": "e"}), None),
            [("eventType".into(), "required".into())]
        );
        // Null for a forbidden field is the same as absent.
        assert!(
            fields(
                json!({"activation": "event", "name": "e", "eventType": "a.b", "scheduleRule": null}),
                None
            )
            .is_empty()
        );
    }
}
