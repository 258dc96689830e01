//! Dry runs (§3.5 `POST /flows/{flowId}/dry-run`, §3.7 `POST /events/dry-run`): the whole
//! decision of a firing — payload validation, conditions, fan-out targets, gates and the
//! resolved action tree — computed against the in-memory definitions without storing,
//! enqueuing, stamping a cooldown or taking a rate-limit token.
//!
//! Templates resolve as at claim time (§5.10 pre-resolution) against a simulated event:
//! the payload as given, `deviceId` = the event's own or the first target, `receivedAt` =
//! now. Tokens that reference step outputs or loop variables stay literal. Resolution and
//! param errors are reported in `validation.errors` with field `actions.<key>.params.<name>`
//! (event dry-runs prefix it with `matchedFlows[<i>].`), which makes `wouldFire` false.

use axum::extract::{Path, State};
use axum::response::Response;
use flowrun_core::execution::SnapStep;
use flowrun_core::model::{Flow, FlowRecord, Trigger};
use flowrun_core::templates::{self, TemplateScope};
use flowrun_core::validate::{Field, Obj, Req, join};
use flowrun_core::{FieldErrors, Ts, appevents, catalog, conditions, params, schedule};
use flowrun_engine::{GatesReport, gates_report, snapshot};
use flowrun_store::Defs;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::schema::{DataOf, ErrorBody};
use super::common::{Caller, Extension, data};
use super::flows::{check_trigger_payload, live_flow};
use crate::App;
use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult};

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(flow_dry_run))
        .routes(routes!(event_dry_run))
}

// ---------------------------------------------------------------------------------------
// Wire shapes (§4.5, §4.6)
// ---------------------------------------------------------------------------------------

/// One problem of a simulated firing.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

/// `Validation { valid, errors }` (`errors` is `[]` when valid).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Validation {
    pub valid: bool,
    pub errors: Vec<ValidationError>,
}

impl Validation {
    fn of(errors: Vec<ValidationError>) -> Self {
        Self {
            valid: errors.is_empty(),
            errors,
        }
    }
}

/// A step of the flow with its params merged and resolved (§5.9, §5.10).
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedAction {
    pub flow_action_id: Uuid,
    pub key: String,
    /// `nameOverride`, else the action's name.
    pub name: String,
    pub service: String,
    pub method: String,
    #[schema(value_type = Object)]
    pub params: Value,
    pub continue_on_error: bool,
    pub recording_enabled: bool,
    #[schema(value_type = Vec<Object>)]
    pub children: Vec<ResolvedAction>,
}

/// The gates of a simulated firing (§5.6).
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gates {
    pub enabled: bool,
    pub device_attached: bool,
    pub device_ids: Vec<Uuid>,
    pub blocked: bool,
    pub cooldown_active: Option<bool>,
}

impl From<&GatesReport> for Gates {
    fn from(g: &GatesReport) -> Self {
        Self {
            enabled: g.enabled,
            device_attached: g.device_attached,
            device_ids: g.device_ids.clone(),
            blocked: g.blocked,
            cooldown_active: g.cooldown_active,
        }
    }
}

impl Gates {
    /// Every gate of §3.5's `wouldFire` except validation and conditions.
    fn pass(&self) -> bool {
        self.enabled && self.device_attached && !self.blocked && self.cooldown_active != Some(true)
    }
}

/// `FlowDryRun` (§4.6).
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowDryRun {
    /// `event` | `schedule` | `custom`
    pub activation: String,
    pub validation: Validation,
    /// Event triggers; null otherwise.
    pub conditions_passed: Option<bool>,
    /// Schedule triggers; null otherwise.
    #[schema(value_type = Option<String>)]
    pub next_fire_time: Option<Ts>,
    pub gates: Gates,
    /// Informational: no whole rate-limit token is left.
    pub rate_limited: bool,
    pub would_fire: bool,
    pub actions: Vec<ResolvedAction>,
}

/// One flow an event would reach.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MatchedFlow {
    pub flow: Flow,
    pub trigger: Trigger,
    pub actions: Vec<ResolvedAction>,
    pub gates: Gates,
    pub would_fire: bool,
}

/// `EventDryRun` (§4.6).
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventDryRun {
    pub matched_flows: Vec<MatchedFlow>,
    pub validation: Validation,
}

// ---------------------------------------------------------------------------------------
// The simulation
// ---------------------------------------------------------------------------------------

/// The simulated event of a dry run.
pub(crate) struct Sim<'a> {
    /// The event's type (event triggers; `None` for custom and schedule triggers).
    pub event_type: Option<&'a str>,
    /// The event's own device, if it names one.
    pub device: Option<Uuid>,
    pub payload: &'a Value,
    pub received_at: Ts,
}

impl Sim<'_> {
    /// The event object conditions are evaluated against (§5.2).
    fn event_object(&self, first_target: Option<Uuid>) -> Value {
        json!({
            "eventType": self.event_type,
            "deviceId": self.device.or(first_target),
            "payload": self.payload,
            "receivedAt": self.received_at,
        })
    }
}

/// The template source of a trigger's activation.
fn source_of(activation: &str) -> &'static str {
    match activation {
        "event" => "event",
        "schedule" => "schedule",
        _ => "custom",
    }
}

/// The template roots of a simulated execution (as the worker builds them at claim time).
#[allow(clippy::too_many_arguments)]
fn roots(
    defs: &Defs,
    caller: &Caller,
    rec: &FlowRecord,
    trigger: &Trigger,
    sim: &Sim<'_>,
    first_target: Option<Uuid>,
    schedule_root: Value,
) -> Map<String, Value> {
    let f = &rec.flow;
    let device = first_target.and_then(|d| defs.device(&f.owner_id, d));
    let mut roots = Map::new();
    roots.insert("event".into(), {
        let mut e = sim.event_object(first_target);
        e["id"] = Value::Null;
        e
    });
    roots.insert(
        "trigger".into(),
        json!({
            "id": trigger.id,
            "name": trigger.name,
            "activation": trigger.activation,
            "eventType": trigger.event_type,
        }),
    );
    roots.insert(
        "flow".into(),
        json!({
            "id": f.id,
            "name": f.name,
            "description": f.description,
            "deviceIds": f.device_ids,
            "templateResolutionVersion": f.template_resolution_version,
        }),
    );
    roots.insert(
        "execution".into(),
        json!({
            "id": null,
            "kind": "dry_run",
            "deviceId": first_target,
            "invocationId": null,
            "eventId": null,
            "startedAt": null,
            "attempt": 0,
            "device": device.map(|d| json!({
                "id": d.id, "name": d.name, "provider": d.provider, "address": d.address,
            })),
        }),
    );
    roots.insert("schedule".into(), schedule_root);
    roots.insert(
        "source".into(),
        Value::String(source_of(&trigger.activation).to_string()),
    );
    roots.insert("chainDepth".into(), json!(0));
    roots.insert("owner".into(), json!({ "id": caller.owner_id }));
    roots.insert("user".into(), json!({ "id": caller.actor_id }));
    roots.insert("now".into(), Value::String(Ts::now().to_rfc3339()));
    roots
}

/// Resolves a step tree with pre-resolution rules; problems go to `errors` under
/// `<prefix>actions.<key>.params`.
fn resolve_steps(
    steps: &[SnapStep],
    scope: &TemplateScope<'_>,
    prefix: &str,
    errors: &mut Vec<ValidationError>,
) -> Vec<ResolvedAction> {
    steps
        .iter()
        .map(|s| {
            let merged = s.merged_params();
            let at = format!("{prefix}actions.{}.params", s.key);
            let params = match templates::resolve(&merged, scope) {
                Ok(resolved) => {
                    // Steps whose params still hold step/loop tokens are validated at step
                    // start, as in a real run.
                    if !templates::has_late_refs(&merged, scope.version)
                        && let Some(entry) = catalog::by_method(&s.method)
                        && let Err(errs) = params::validate_resolved(entry, &resolved, &at)
                    {
                        errors.extend(errs.0.into_iter().map(|e| ValidationError {
                            field: e.field,
                            message: format!("invalid_params: {}", e.message),
                        }));
                    }
                    resolved
                }
                Err(e) => {
                    errors.push(ValidationError {
                        field: if e.field().is_empty() {
                            at.clone()
                        } else {
                            join(&at, e.field())
                        },
                        message: format!("{}: {}", e.code(), e.message()),
                    });
                    merged
                }
            };
            ResolvedAction {
                flow_action_id: s.flow_action_id,
                key: s.key.clone(),
                name: s.name.clone(),
                service: s.service.clone(),
                method: s.method.clone(),
                params,
                continue_on_error: s.continue_on_error,
                recording_enabled: s.recording_enabled,
                children: resolve_steps(&s.children, scope, prefix, errors),
            }
        })
        .collect()
}

/// The flow's resolved action tree for a simulated firing.
#[allow(clippy::too_many_arguments)]
fn resolve_flow(
    defs: &Defs,
    caller: &Caller,
    rec: &FlowRecord,
    trigger: &Trigger,
    sim: &Sim<'_>,
    first_target: Option<Uuid>,
    schedule_root: Value,
    prefix: &str,
    errors: &mut Vec<ValidationError>,
) -> Vec<ResolvedAction> {
    let roots = roots(defs, caller, rec, trigger, sim, first_target, schedule_root);
    let scope = TemplateScope {
        version: rec.flow.template_resolution_version,
        roots: &roots,
        steps: &[],
        prev: None,
        results: &[],
        loop_ctx: None,
        late: false,
    };
    resolve_steps(&snapshot::steps_of(defs, rec), &scope, prefix, errors)
}

/// The payload check of a trigger as `run`/`verify` make it, as report entries (a broken
/// stored schema is still a server error).
fn payload_errors(trigger: &Trigger, payload: &Value) -> ApiResult<Vec<ValidationError>> {
    match check_trigger_payload(trigger, payload) {
        Ok(()) => Ok(Vec::new()),
        Err(e) if e.code == "validation_failed" => Ok(e
            .details
            .as_ref()
            .and_then(|d| d["errors"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|e| ValidationError {
                field: e["field"].as_str().unwrap_or("payload").to_string(),
                message: e["message"].as_str().unwrap_or_default().to_string(),
            })
            .collect()),
        Err(e) => Err(e),
    }
}

/// `nextFireTime` and the `schedule` template root of a schedule trigger firing next.
fn schedule_of(trigger: &Trigger, now: Ts) -> (Option<Ts>, Value) {
    if trigger.activation != "schedule" {
        return (None, Value::Null);
    }
    let next = trigger.schedule_rule.as_ref().and_then(|rule| {
        schedule::next_fire_time(
            trigger.id,
            rule,
            trigger.timezone.as_deref(),
            trigger.created_at.0,
            now.0,
        )
    });
    let (nominal, fire) = next.map(|(n, f)| (Ts(n), Ts(f))).unwrap_or((now, now));
    let root = json!({ "triggerId": trigger.id, "nominalTime": nominal, "fireTime": fire });
    // The stored value is the next unfired occurrence (possibly due but not yet handled).
    (trigger.next_fire_time.or(next.map(|(_, f)| Ts(f))), root)
}

/// The flow trigger's dry run (§3.5). `device` is the simulated event's device (verify:
/// its target); `None` fans out as a firing without a device would.
pub(crate) fn flow_report(
    app: &App,
    defs: &Defs,
    caller: &Caller,
    rec: &FlowRecord,
    trigger: &Trigger,
    payload: &Value,
    device: Option<Uuid>,
) -> ApiResult<FlowDryRun> {
    let now = Ts::now();
    let is_event = trigger.activation == "event";
    // Schedules always fire with an empty payload (§5.1).
    let empty = json!({});
    let payload = if trigger.activation == "schedule" {
        &empty
    } else {
        payload
    };
    let mut errors = payload_errors(trigger, payload)?;
    let report = gates_report(defs, rec, device.filter(|_| is_event), now.millis());
    let first_target = device.or(report.targets.first().copied().flatten());
    let sim = Sim {
        event_type: if is_event {
            trigger.event_type.as_deref()
        } else {
            None
        },
        device,
        payload,
        received_at: now,
    };
    let conditions_passed = is_event.then(|| {
        trigger
            .conditions
            .as_ref()
            .is_none_or(|c| conditions::evaluate_event(c, &sim.event_object(first_target)))
    });
    let (next_fire_time, schedule_root) = schedule_of(trigger, now);
    let actions = resolve_flow(
        defs,
        caller,
        rec,
        trigger,
        &sim,
        first_target,
        schedule_root,
        "",
        &mut errors,
    );
    let validation = Validation::of(errors);
    let gates = Gates::from(&report);
    let would_fire = validation.valid && conditions_passed != Some(false) && gates.pass();
    Ok(FlowDryRun {
        activation: trigger.activation.clone(),
        validation,
        conditions_passed,
        next_fire_time,
        gates,
        rate_limited: app.engine.rate_limited(rec.flow.id),
        would_fire,
        actions,
    })
}

/// The trigger a flow is bound to (deletes are refused while bound, so this only fails for
/// a definition caught mid-change).
pub(crate) fn trigger_of(defs: &Defs, rec: &FlowRecord) -> ApiResult<Trigger> {
    defs.trigger(&rec.flow.owner_id, rec.flow.trigger_id)
        .map(|t| (**t).clone())
        .ok_or_else(|| {
            ApiError::conflict(
                "trigger_missing",
                format!(
                    "Flow {} is bound to a trigger that no longer exists",
                    rec.flow.id
                ),
            )
        })
}

// ---------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------

/// Simulate the flow's trigger firing now, without side effects.
#[utoipa::path(post, path = "/flows/{flowId}/dry-run", tag = "flows",
    params(("flowId" = String, Path)), request_body = inline(Object),
    responses((status = 200, body = DataOf<FlowDryRun>), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn flow_dry_run(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let defs = app.registry.read();
    let rec = live_flow(&defs, &caller, &raw)?;
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(&body, &mut errs) else {
        return Err(ApiError::validation(errs));
    };
    let payload = match o.object("payload", Req::Optional, &mut errs) {
        Field::Value(p) => Value::Object(p.clone()),
        _ => json!({}),
    };
    errs.into_result().map_err(ApiError::validation)?;
    let trigger = trigger_of(&defs, &rec)?;
    let report = flow_report(&app, &defs, &caller, &rec, &trigger, &payload, None)?;
    Ok(data(report))
}

/// An event dry-run body: the ingest shape; the catalog check is reported, not refused.
struct DryEvent {
    event_type: String,
    device_id: Option<Uuid>,
    payload: Map<String, Value>,
}

fn read_dry_event(body: &Value) -> Result<DryEvent, FieldErrors> {
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(body, &mut errs) else {
        return Err(errs);
    };
    let event_type = match o.string("eventType", Req::Required, 1, 200, &mut errs) {
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
    let device_id = o.uuid("deviceId", Req::Nullable, &mut errs).value();
    let payload = match o.object("payload", Req::Nullable, &mut errs) {
        Field::Value(p) => p.clone(),
        _ => Map::new(),
    };
    errs.into_result()?;
    Ok(DryEvent {
        event_type,
        device_id,
        payload,
    })
}

/// Run the event pipeline against every flow of the owner, without side effects.
#[utoipa::path(post, path = "/events/dry-run", tag = "events",
    request_body = inline(Object),
    responses((status = 200, body = DataOf<EventDryRun>), (status = 422, body = ErrorBody)))]
async fn event_dry_run(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let ev = read_dry_event(&body).map_err(ApiError::validation)?;
    let payload_errors: Vec<ValidationError> =
        appevents::check_payload(&ev.event_type, &ev.payload, "payload")
            .0
            .into_iter()
            .map(|e| ValidationError {
                field: e.field,
                message: e.message,
            })
            .collect();
    let payload_valid = payload_errors.is_empty();
    let now = Ts::now();
    // The event itself, plus the event ingest would derive from it (§5.4).
    let mut events: Vec<(String, Value)> =
        vec![(ev.event_type.clone(), Value::Object(ev.payload.clone()))];
    if let Some(p) = appevents::derive_whatsapp(&ev.event_type, &ev.payload) {
        events.push(("app.whatsapp.message_received".to_string(), p));
    }

    let defs = app.registry.read();
    let mut matched: Vec<(MatchedFlow, Vec<ValidationError>)> = Vec::new();
    for (event_type, payload) in &events {
        let sim = Sim {
            event_type: Some(event_type),
            device: ev.device_id,
            payload,
            received_at: now,
        };
        let event_obj = sim.event_object(None);
        for trigger in defs.event_triggers(&caller.owner_id, event_type) {
            let passes = trigger
                .conditions
                .as_ref()
                .is_none_or(|c| conditions::evaluate_event(c, &event_obj));
            if !passes {
                continue;
            }
            for rec in defs.flows_of_trigger(&caller.owner_id, trigger.id) {
                let report = gates_report(&defs, rec, ev.device_id, now.millis());
                let first_target = ev.device_id.or(report.targets.first().copied().flatten());
                // Prefixed with the flow's index once the list is sorted.
                let mut errors = Vec::new();
                let actions = resolve_flow(
                    &defs,
                    &caller,
                    rec,
                    trigger,
                    &sim,
                    first_target,
                    Value::Null,
                    "",
                    &mut errors,
                );
                let gates = Gates::from(&report);
                let would_fire = payload_valid && errors.is_empty() && gates.pass();
                matched.push((
                    MatchedFlow {
                        flow: rec.flow.clone(),
                        trigger: (**trigger).clone(),
                        actions,
                        gates,
                        would_fire,
                    },
                    errors,
                ));
            }
        }
    }
    drop(defs);
    matched.sort_by(|(a, _), (b, _)| {
        (
            a.flow.created_at,
            a.flow.id,
            a.trigger.event_type.as_deref(),
        )
            .cmp(&(
                b.flow.created_at,
                b.flow.id,
                b.trigger.event_type.as_deref(),
            ))
    });
    let mut errors = payload_errors;
    let mut matched_flows = Vec::with_capacity(matched.len());
    for (i, (m, errs)) in matched.into_iter().enumerate() {
        errors.extend(errs.into_iter().map(|e| ValidationError {
            field: format!("matchedFlows[{i}].{}", e.field),
            message: e.message,
        }));
        matched_flows.push(m);
    }
    Ok(data(EventDryRun {
        matched_flows,
        validation: Validation::of(errors),
    }))
}
