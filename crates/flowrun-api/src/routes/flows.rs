//! Flows (§3.5): a trigger bound to an action tree and a set of devices, plus the settings
//! that govern firing, health, recording and delivery.
//!
//! Create, clone and archive change the routine count, so they run under the registry write
//! lock together with their capacity check (§5.19). Archived flows are invisible to every
//! read here; only a repeated DELETE still sees them.

use std::collections::HashSet;

use axum::extract::{Path, State};
use axum::response::Response;
use flowrun_core::execution::Repair;
use flowrun_core::flowtree::{self, ActionRef, TreeRules};
use flowrun_core::model::{DeliveryConfig, DeliveryRecording, Flow, FlowRecord, RecordingPolicy};
use flowrun_core::validate::{Field, Obj, Req, parse_uuid};
use flowrun_core::{FieldErrors, Ts, new_id};
use flowrun_store::{Change, Defs};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::schema::{DataOf, ErrorBody, ListOf, Message};
use super::common::{Caller, Extension, accepted, created, data, message, ok, path_id};
use crate::App;
use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult};
use crate::query::{Query, matches_search, ordered, paginate};

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(list_flows, create_flow))
        .routes(routes!(get_capacity))
        .routes(routes!(get_flow, update_flow, archive_flow))
        .routes(routes!(clone_flow))
        .routes(routes!(unblock_flow))
        .routes(routes!(run_flow))
        .routes(routes!(list_repairs))
        .routes(routes!(delivery_options))
}

const STATUSES: [&str; 3] = ["healthy", "failing", "blocked"];
const COOLDOWN_SCOPES: [&str; 2] = ["flow", "device"];
const RECORDING_MODES: [&str; 3] = ["off", "flow", "selected_steps"];
const DESTINATIONS: [&str; 3] = ["mobilerun", "one_drive", "google_drive"];
const MAX_COOLDOWN_SECONDS: i64 = 31_536_000;
/// `included` when no routine limit is configured (§5.19).
const UNLIMITED: i64 = 2_147_483_647;
/// Template resolution version of every new flow (§5.10).
const CURRENT_TEMPLATE_VERSION: i64 = 3;

/// Flow capacity of one agent bucket.
#[derive(Serialize, ToSchema)]
pub struct Capacity {
    pub included: i64,
    pub remaining: i64,
    /// `available` | `exhausted`
    pub status: String,
}

/// What a flow can deliver and where (§5.18).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryOptions {
    pub recording_mode: String,
    pub can_deliver_recording: bool,
    pub has_files_upload: bool,
    #[schema(value_type = Option<Object>)]
    pub direct_upload_step: Option<Value>,
    pub destinations: Vec<Destination>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub key: String,
    pub label: String,
    pub connection: String,
    pub connect_key: String,
    pub icon_url: Option<String>,
}

/// The caller's actions as the tree rules see them.
pub(crate) fn action_lookup<'a>(
    defs: &'a Defs,
    owner: &'a str,
) -> impl Fn(Uuid) -> Option<ActionRef> + 'a {
    move |id| {
        defs.action(owner, id).map(|a| ActionRef {
            name: a.name.clone(),
            method: a.method.clone(),
        })
    }
}

/// A non-archived flow of the caller, else 404 naming the raw path id.
pub(crate) fn live_flow(defs: &Defs, caller: &Caller, raw: &str) -> ApiResult<FlowRecord> {
    let id = path_id("Flow", raw)?;
    defs.flow(&caller.owner_id, id)
        .map(|f| (**f).clone())
        .ok_or_else(|| ApiError::not_found("Flow", raw))
}

fn capacity(app: &App, defs: &Defs, owner: &str, agent: Option<Uuid>) -> Capacity {
    let used = i64::try_from(defs.live_flow_count(owner, agent)).unwrap_or(i64::MAX);
    match app.config.routine_limit {
        None => Capacity {
            included: UNLIMITED,
            remaining: UNLIMITED - used,
            status: "available".to_string(),
        },
        Some(limit) => {
            let included = i64::try_from(limit).unwrap_or(i64::MAX);
            let remaining = (included - used).max(0);
            Capacity {
                included,
                remaining,
                status: if remaining == 0 {
                    "exhausted"
                } else {
                    "available"
                }
                .to_string(),
            }
        }
    }
}

/// 409 `capacity_exhausted` when one more flow would exceed the caller's routine limit.
/// New flows always land in the unassigned bucket (agentId cannot be set through the API).
fn ensure_capacity(app: &App, defs: &Defs, owner: &str) -> ApiResult<()> {
    let c = capacity(app, defs, owner, None);
    if app.config.routine_limit.is_some() && c.remaining == 0 {
        return Err(ApiError::conflict(
            "capacity_exhausted",
            format!(
                "Flow capacity exhausted: all {} routines are in use",
                c.included
            ),
        )
        .with_details(json!({ "included": c.included, "remaining": c.remaining })));
    }
    Ok(())
}

/// Marks a flow changed. `updatedAt` strictly increases at millisecond precision, so two
/// quick edits never look simultaneous to `orderBy=updatedAt` or to clients polling it.
pub(crate) fn touch(f: &mut Flow) {
    let now = Ts::now();
    let prev = f.updated_at.millis();
    f.updated_at = if now.millis() > prev {
        now
    } else {
        Ts::from_millis(prev + 1).unwrap_or(now)
    };
}

fn set_enabled(f: &mut Flow, on: bool) {
    f.enabled = on;
    f.lifecycle_status = if on { "enabled" } else { "disabled" }.to_string();
}

/// Every setting of `FlowCreate`/`FlowUpdate` as sent; references already checked.
pub(crate) struct Settings {
    name: Field<String>,
    description: Field<String>,
    trigger_id: Field<Uuid>,
    device_ids: Field<Vec<Uuid>>,
    enabled: Field<bool>,
    cooldown_seconds: Field<i64>,
    cooldown_scope: Field<String>,
    notify_on_success: Field<bool>,
    notify_on_failure: Field<bool>,
    notify_webhook_id: Field<Uuid>,
    health_monitoring_enabled: Field<bool>,
    self_healing_enabled: Field<bool>,
    self_healing_max_attempts: Field<i64>,
    recording_mode: Field<String>,
    recording_enabled: Field<bool>,
    delivery: Field<DeliveryConfig>,
}

pub(crate) fn read_settings(
    o: &Obj<'_>,
    create: bool,
    defs: &Defs,
    owner: &str,
    errs: &mut FieldErrors,
) -> Settings {
    let required = if create { Req::Required } else { Req::Optional };
    let name = o.string("name", required, 1, 200, errs);
    let description = o.string("description", Req::Nullable, 0, 2000, errs);
    let trigger_id = o.uuid("triggerId", required, errs);
    if let Field::Value(id) = trigger_id
        && defs.trigger(owner, id).is_none()
    {
        errs.push(
            "triggerId",
            "unknown_reference",
            format!("trigger {id} does not exist"),
        );
    }
    let device_ids = o.uuid_list("deviceIds", Req::Optional, errs);
    if let Field::Value(ids) = &device_ids {
        check_devices(defs, owner, ids, errs);
    }
    let enabled = o.boolean("enabled", Req::Optional, errs);
    let cooldown_seconds = o.integer(
        "cooldownSeconds",
        Req::Nullable,
        0,
        MAX_COOLDOWN_SECONDS,
        errs,
    );
    let cooldown_scope = o.enumeration("cooldownScope", Req::Optional, &COOLDOWN_SCOPES, errs);
    let notify_on_success = o.boolean("notifyOnSuccess", Req::Optional, errs);
    let notify_on_failure = o.boolean("notifyOnFailure", Req::Optional, errs);
    let notify_webhook_id = o.uuid("notifyWebhookId", Req::Nullable, errs);
    if let Field::Value(id) = notify_webhook_id
        && !webhook_exists(owner, id)
    {
        errs.push(
            "notifyWebhookId",
            "unknown_reference",
            format!("webhook {id} does not exist"),
        );
    }
    let health_monitoring_enabled = o.boolean("healthMonitoringEnabled", Req::Optional, errs);
    let self_healing_enabled = o.boolean("selfHealingEnabled", Req::Optional, errs);
    let self_healing_max_attempts = o.integer("selfHealingMaxAttempts", Req::Optional, 1, 10, errs);
    let recording_mode = match o.nested("recordingPolicy", Req::Optional, errs) {
        Field::Value(p) => p.enumeration("mode", Req::Required, &RECORDING_MODES, errs),
        Field::Absent => Field::Absent,
        _ => Field::Invalid,
    };
    let recording_enabled = o.boolean("recordingEnabled", Req::Optional, errs);
    let delivery = read_delivery(o, errs);
    Settings {
        name,
        description,
        trigger_id,
        device_ids,
        enabled,
        cooldown_seconds,
        cooldown_scope,
        notify_on_success,
        notify_on_failure,
        notify_webhook_id,
        health_monitoring_enabled,
        self_healing_enabled,
        self_healing_max_attempts,
        recording_mode,
        recording_enabled,
        delivery,
    }
}

/// Whether the owner has a live (not deleted) webhook endpoint with this id.
fn webhook_exists(owner: &str, id: Uuid) -> bool {
    flowrun_engine::webhooks::endpoint_exists(owner, id)
}

fn check_devices(defs: &Defs, owner: &str, ids: &[Uuid], errs: &mut FieldErrors) {
    for (i, id) in ids.iter().enumerate() {
        if defs.device(owner, *id).is_none() {
            errs.push(
                format!("deviceIds[{i}]"),
                "unknown_reference",
                format!("device {id} does not exist"),
            );
        }
    }
}

fn read_delivery(o: &Obj<'_>, errs: &mut FieldErrors) -> Field<DeliveryConfig> {
    let d = match o.nested("delivery", Req::Nullable, errs) {
        Field::Value(d) => d,
        Field::Absent => return Field::Absent,
        Field::Null => return Field::Null,
        Field::Invalid => return Field::Invalid,
    };
    let before = errs.len();
    let destination = d.enumeration("destination", Req::Required, &DESTINATIONS, errs);
    let folder = d.string("folder", Req::Nullable, 1, 1024, errs);
    if let (Field::Value(dest), Field::Value(_)) = (&destination, &folder)
        && dest == "mobilerun"
    {
        errs.push(
            d.path("folder"),
            "not_allowed",
            "folder is not allowed with destination mobilerun",
        );
    }
    let recording = match d.nested("recording", Req::Nullable, errs) {
        Field::Value(r) => r
            .string("filename", Req::Required, 1, 255, errs)
            .value()
            .map(|filename| DeliveryRecording { filename }),
        _ => None,
    };
    let screenshots = d.any("screenshots", Req::Nullable, errs).value().cloned();
    if errs.len() > before {
        return Field::Invalid;
    }
    Field::Value(DeliveryConfig {
        destination: destination.value().expect("validated"),
        folder: folder.value(),
        recording,
        screenshots,
    })
}

/// Applies sent settings onto a flow. `recordingPolicy` wins over the deprecated
/// `recordingEnabled`; alone, `recordingEnabled: true` keeps a mode that already records and
/// otherwise means `flow`.
fn apply_settings(f: &mut Flow, s: Settings) {
    if let Field::Value(v) = s.name {
        f.name = v;
    }
    if let Some(v) = s.description.patch() {
        f.description = v;
    }
    if let Field::Value(v) = s.trigger_id {
        f.trigger_id = v;
    }
    if let Field::Value(v) = s.device_ids {
        f.device_ids = v;
    }
    if let Field::Value(v) = s.enabled {
        set_enabled(f, v);
    }
    if let Some(v) = s.cooldown_seconds.patch() {
        f.cooldown_seconds = v;
    }
    if let Field::Value(v) = s.cooldown_scope {
        f.cooldown_scope = v;
    }
    if let Field::Value(v) = s.notify_on_success {
        f.notify_on_success = v;
    }
    if let Field::Value(v) = s.notify_on_failure {
        f.notify_on_failure = v;
    }
    if let Some(v) = s.notify_webhook_id.patch() {
        f.notify_webhook_id = v;
    }
    if let Field::Value(v) = s.health_monitoring_enabled {
        f.health_monitoring_enabled = v;
    }
    if let Field::Value(v) = s.self_healing_enabled {
        f.self_healing_enabled = v;
    }
    if let Field::Value(v) = s.self_healing_max_attempts {
        f.self_healing_max_attempts = v;
    }
    let mode = match (s.recording_mode, s.recording_enabled) {
        (Field::Value(m), _) => Some(m),
        (_, Field::Value(true)) if f.recording_policy.mode != "off" => None,
        (_, Field::Value(true)) => Some("flow".to_string()),
        (_, Field::Value(false)) => Some("off".to_string()),
        _ => None,
    };
    if let Some(mode) = mode {
        f.recording_policy = RecordingPolicy { mode };
    }
    f.recording_enabled = f.recording_policy.mode != "off";
    if let Some(v) = s.delivery.patch() {
        f.delivery = v;
    }
}

/// List flows.
#[utoipa::path(get, path = "/flows", tag = "flows",
    params(("agentId" = Option<String>, Query), ("triggerId" = Option<String>, Query),
           ("enabled" = Option<bool>, Query), ("status" = Option<Vec<String>>, Query),
           ("mine" = Option<bool>, Query), ("createdBy" = Option<String>, Query),
           ("search" = Option<String>, Query), ("orderBy" = Option<String>, Query),
           ("orderByDirection" = Option<String>, Query),
           ("page" = Option<i64>, Query), ("pageSize" = Option<i64>, Query)),
    responses((status = 200, body = ListOf<Flow>), (status = 422, body = ErrorBody)))]
async fn list_flows(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    mut q: Query,
) -> ApiResult<Response> {
    let agent = agent_bucket(&mut q);
    let trigger = q.uuid("triggerId");
    let enabled = q.bool("enabled");
    let status = q.enum_many("status", &STATUSES);
    let mine = q.bool("mine");
    let created_by = q.str("createdBy");
    if q.has("mine") && created_by.is_some() {
        q.reject("createdBy", "mine and createdBy cannot be combined");
    }
    let search = q.search();
    let (order_by, desc) = q.order(&["name", "createdAt", "updatedAt"], "createdAt");
    let page = q.page();
    q.finish()?;
    let defs = app.registry.read();
    let mut items: Vec<&Flow> = defs
        .live_flows(&caller.owner_id)
        .map(|r| &r.flow)
        .filter(|f| agent.is_none_or(|a| f.agent_id == a))
        .filter(|f| trigger.is_none_or(|t| f.trigger_id == t))
        .filter(|f| enabled.is_none_or(|e| f.enabled == e))
        .filter(|f| status.as_ref().is_none_or(|s| s.contains(&f.status)))
        .filter(|f| mine != Some(true) || f.created_by.as_deref() == Some(&caller.actor_id))
        .filter(|f| {
            created_by
                .as_ref()
                .is_none_or(|c| f.created_by.as_ref() == Some(c))
        })
        .filter(|f| {
            search
                .as_ref()
                .is_none_or(|n| matches_search(n, &[Some(&f.name), f.description.as_deref()]))
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

/// `agentId`: a UUID or `unassigned` (= no agent). `None` = every bucket.
fn agent_bucket(q: &mut Query) -> Option<Option<Uuid>> {
    let raw = q.str("agentId")?;
    if raw == "unassigned" {
        return Some(None);
    }
    match parse_uuid(&raw) {
        Some(u) => Some(Some(u)),
        None => {
            q.reject("agentId", "agentId must be a UUID or \"unassigned\"");
            None
        }
    }
}

/// Create a flow.
#[utoipa::path(post, path = "/flows", tag = "flows", request_body = inline(Object),
    responses((status = 201, body = DataOf<Flow>), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn create_flow(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let _guard = app.registry.lock().await;
    let record = {
        let defs = app.registry.read();
        let record = build_flow(&defs, &caller, &body)?;
        ensure_capacity(&app, &defs, &caller.owner_id)?;
        record
    };
    app.registry
        .apply(vec![Change::PutFlow(record.clone())])
        .await?;
    Ok(created(&record.flow))
}

fn build_flow(defs: &Defs, caller: &Caller, body: &Value) -> ApiResult<FlowRecord> {
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(body, &mut errs) else {
        return Err(ApiError::validation(errs));
    };
    let owner = caller.owner_id.as_str();
    let settings = read_settings(&o, true, defs, owner, &mut errs);
    let lookup = action_lookup(defs, owner);
    let taken = HashSet::new();
    let rules = TreeRules {
        lookup: &lookup,
        require_keys: false,
        taken_keys: &taken,
        existing_nodes: 0,
    };
    let specs = match o.array("actions", Req::Required, &mut errs) {
        Field::Value(items) => flowtree::parse_tree(items, "actions", &rules, &mut errs),
        _ => None,
    };
    errs.into_result().map_err(ApiError::validation)?;
    let (Field::Value(name), Field::Value(trigger_id), Some(specs)) =
        (settings.name.clone(), settings.trigger_id.clone(), specs)
    else {
        unreachable!("required fields are present when there are no errors");
    };
    let now = Ts::now();
    let mut flow = Flow {
        id: new_id(),
        name,
        description: None,
        trigger_id,
        device_ids: Vec::new(),
        agent_id: None,
        lifecycle_status: "enabled".to_string(),
        enabled: true,
        archived_at: None,
        status: "healthy".to_string(),
        consecutive_failures: 0,
        last_failure_at: None,
        last_failure_code: None,
        blocked_at: None,
        last_triggered_at: None,
        health_monitoring_enabled: true,
        self_healing_enabled: false,
        self_healing_max_attempts: 3,
        cooldown_seconds: None,
        cooldown_scope: "flow".to_string(),
        notify_on_success: false,
        notify_on_failure: false,
        notify_webhook_id: None,
        recording_policy: RecordingPolicy {
            mode: "off".to_string(),
        },
        recording_enabled: false,
        delivery: None,
        template_resolution_version: CURRENT_TEMPLATE_VERSION,
        owner_id: caller.owner_id.clone(),
        created_by: Some(caller.actor_id.clone()),
        user_id: caller.owner_id.clone(),
        created_at: now,
        updated_at: now,
    };
    apply_settings(&mut flow, settings);
    let nodes = flowtree::materialize(&specs, flow.id, None, now);
    Ok(FlowRecord {
        flow,
        nodes,
        gates: Default::default(),
    })
}

/// Routine capacity of an agent bucket.
#[utoipa::path(get, path = "/flows/capacity", tag = "flows",
    params(("agentId" = Option<String>, Query)),
    responses((status = 200, body = DataOf<Capacity>), (status = 422, body = ErrorBody)))]
async fn get_capacity(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    mut q: Query,
) -> ApiResult<Response> {
    let agent = agent_bucket(&mut q).unwrap_or(None);
    q.finish()?;
    let defs = app.registry.read();
    Ok(data(capacity(&app, &defs, &caller.owner_id, agent)))
}

/// Get a flow.
#[utoipa::path(get, path = "/flows/{flowId}", tag = "flows",
    params(("flowId" = String, Path)),
    responses((status = 200, body = DataOf<Flow>), (status = 404, body = ErrorBody)))]
async fn get_flow(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let defs = app.registry.read();
    let rec = live_flow(&defs, &caller, &raw)?;
    Ok(data(&rec.flow))
}

/// Change a flow's settings.
#[utoipa::path(patch, path = "/flows/{flowId}", tag = "flows",
    params(("flowId" = String, Path)), request_body = inline(Object),
    responses((status = 200, body = DataOf<Flow>), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn update_flow(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let _guard = app.registry.lock().await;
    let record = {
        let defs = app.registry.read();
        let mut rec = live_flow(&defs, &caller, &raw)?;
        patch_flow(&defs, &caller, &mut rec.flow, &body)?;
        rec
    };
    app.registry
        .apply(vec![Change::PutFlow(record.clone())])
        .await?;
    Ok(data(&record.flow))
}

fn patch_flow(defs: &Defs, caller: &Caller, flow: &mut Flow, body: &Value) -> ApiResult<()> {
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(body, &mut errs) else {
        return Err(ApiError::validation(errs));
    };
    let settings = read_settings(&o, false, defs, &caller.owner_id, &mut errs);
    let lifecycle = o.enumeration(
        "lifecycleStatus",
        Req::Optional,
        &["enabled", "disabled", "archived"],
        &mut errs,
    );
    let lifecycle = match lifecycle {
        Field::Value(l) if l == "archived" => {
            errs.push(
                "lifecycleStatus",
                "not_allowed",
                "lifecycleStatus cannot be set to archived; archive with DELETE /flows/{flowId}",
            );
            None
        }
        Field::Value(l) => Some(l == "enabled"),
        _ => None,
    };
    if let (Some(l), Field::Value(e)) = (lifecycle, &settings.enabled)
        && l != *e
    {
        errs.push(
            "lifecycleStatus",
            "invalid_value",
            "enabled and lifecycleStatus disagree",
        );
    }
    errs.into_result().map_err(ApiError::validation)?;
    apply_settings(flow, settings);
    if let Some(on) = lifecycle {
        set_enabled(flow, on);
    }
    touch(flow);
    Ok(())
}

/// Archive a flow (terminal).
#[utoipa::path(delete, path = "/flows/{flowId}", tag = "flows",
    params(("flowId" = String, Path)),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody)))]
async fn archive_flow(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let id = path_id("Flow", &raw)?;
    let _guard = app.registry.lock().await;
    let current = app
        .registry
        .read()
        .flow_any(&caller.owner_id, id)
        .cloned()
        .ok_or_else(|| ApiError::not_found("Flow", &raw))?;
    if !current.flow.is_archived() {
        let mut rec = (*current).clone();
        let now = Ts::now();
        rec.flow.lifecycle_status = "archived".to_string();
        rec.flow.enabled = false;
        rec.flow.archived_at = Some(now);
        touch(&mut rec.flow);
        app.registry.apply(vec![Change::PutFlow(rec)]).await?;
        // Pending runs never start (running ones finish normally).
        app.store
            .skip_pending_of_flow(id, "archived", now.millis())
            .await?;
    }
    Ok(message(format!("Flow {id} archived")))
}

/// Copy a flow (settings, trigger binding and action tree); the copy starts disabled.
#[utoipa::path(post, path = "/flows/{flowId}/clone", tag = "flows",
    params(("flowId" = String, Path)), request_body = inline(Object),
    responses((status = 201, body = DataOf<Flow>), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn clone_flow(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let _guard = app.registry.lock().await;
    let record = {
        let defs = app.registry.read();
        let source = live_flow(&defs, &caller, &raw)?;
        let record = clone_record(&defs, &caller, &source, &body)?;
        ensure_capacity(&app, &defs, &caller.owner_id)?;
        record
    };
    app.registry
        .apply(vec![Change::PutFlow(record.clone())])
        .await?;
    Ok(created(&record.flow))
}

fn clone_record(
    defs: &Defs,
    caller: &Caller,
    source: &FlowRecord,
    body: &Value,
) -> ApiResult<FlowRecord> {
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(body, &mut errs) else {
        return Err(ApiError::validation(errs));
    };
    let name = o.string("name", Req::Optional, 1, 200, &mut errs);
    let device_ids = o.uuid_list("deviceIds", Req::Optional, &mut errs);
    if let Field::Value(ids) = &device_ids {
        check_devices(defs, &caller.owner_id, ids, &mut errs);
    }
    errs.into_result().map_err(ApiError::validation)?;
    let now = Ts::now();
    let mut flow = source.flow.clone();
    flow.id = new_id();
    flow.name = name
        .value()
        .unwrap_or_else(|| format!("{} (copy)", source.flow.name));
    if let Field::Value(ids) = device_ids {
        flow.device_ids = ids;
    }
    set_enabled(&mut flow, false);
    flow.archived_at = None;
    flow.status = "healthy".to_string();
    flow.consecutive_failures = 0;
    flow.last_failure_at = None;
    flow.last_failure_code = None;
    flow.blocked_at = None;
    flow.last_triggered_at = None;
    flow.owner_id = caller.owner_id.clone();
    flow.user_id = caller.owner_id.clone();
    flow.created_by = Some(caller.actor_id.clone());
    flow.created_at = now;
    flow.updated_at = now;
    let nodes = flowtree::clone_nodes(&source.nodes, flow.id, now);
    Ok(FlowRecord {
        flow,
        nodes,
        gates: Default::default(),
    })
}

/// Clear a flow's blocked state.
#[utoipa::path(post, path = "/flows/{flowId}/unblock", tag = "flows",
    params(("flowId" = String, Path)),
    responses((status = 200, body = DataOf<Flow>), (status = 404, body = ErrorBody)))]
async fn unblock_flow(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let _guard = app.registry.lock().await;
    let mut rec = live_flow(&app.registry.read(), &caller, &raw)?;
    let f = &mut rec.flow;
    // Unblocking a healthy flow is a no-op, so it does not count as a change.
    if f.status != "healthy" || f.consecutive_failures != 0 || f.blocked_at.is_some() {
        f.status = "healthy".to_string();
        f.consecutive_failures = 0;
        f.blocked_at = None;
        touch(f);
        app.registry
            .apply(vec![Change::PutFlow(rec.clone())])
            .await?;
    }
    Ok(data(&rec.flow))
}

/// Self-healing repair records of a flow.
#[utoipa::path(get, path = "/flows/{flowId}/repairs", tag = "flows",
    params(("flowId" = String, Path)),
    responses((status = 200, body = DataOf<Vec<Repair>>), (status = 404, body = ErrorBody)))]
async fn list_repairs(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let flow_id = live_flow(&app.registry.read(), &caller, &raw)?.flow.id;
    let rows = app.store.list_repairs(&caller.owner_id, flow_id).await?;
    let repairs: Vec<Repair> = rows.into_iter().map(repair_view).collect();
    Ok(data(repairs))
}

fn repair_view(r: flowrun_store::RepairRow) -> Repair {
    let ts = |ms: Option<i64>| ms.and_then(Ts::from_millis);
    Repair {
        id: r.id,
        flow_id: r.flow_id,
        episode: r.episode,
        attempt: r.attempt,
        max_attempts: r.max_attempts,
        status: r.status,
        source_execution_id: r.source_execution_id,
        failed_step_index: r.failed_step_index,
        original_slug: r.original_slug,
        candidate_slug: r.candidate_slug,
        device_id: r.device_id,
        agent_run_id: r.agent_run_id,
        chat_session_id: r.chat_session_id,
        verdict: r.verdict.and_then(|v| serde_json::from_str(&v).ok()),
        error: r.error,
        started_at: ts(r.started_at),
        finished_at: ts(r.finished_at),
        created_at: ts(Some(r.created_at)),
        updated_at: ts(Some(r.updated_at)),
    }
}

/// Recording and delivery capabilities of a flow.
#[utoipa::path(get, path = "/flows/{flowId}/delivery-options", tag = "flows",
    params(("flowId" = String, Path)),
    responses((status = 200, body = DataOf<DeliveryOptions>), (status = 404, body = ErrorBody)))]
async fn delivery_options(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let rec = live_flow(&app.registry.read(), &caller, &raw)?;
    let f = &rec.flow;
    let mode = f.recording_policy.mode.clone();
    let can_deliver = mode != "off"
        && f.delivery
            .as_ref()
            .is_none_or(|d| d.destination == "mobilerun");
    let destination = |key: &str, label: &str, connection: &str| Destination {
        key: key.to_string(),
        label: label.to_string(),
        connection: connection.to_string(),
        connect_key: key.to_string(),
        icon_url: None,
    };
    Ok(data(DeliveryOptions {
        recording_mode: mode,
        can_deliver_recording: can_deliver,
        has_files_upload: false,
        direct_upload_step: None,
        destinations: vec![
            destination("mobilerun", "Mobilerun", "connected"),
            destination("one_drive", "OneDrive", "not_connected"),
            destination("google_drive", "Google Drive", "not_connected"),
        ],
    }))
}

/// Run a flow now on every bound device, whatever its trigger (conditions are not evaluated).
#[utoipa::path(post, path = "/flows/{flowId}/run", tag = "flows",
    params(("flowId" = String, Path)),
    request_body = inline(Object),
    responses((status = 202, body = DataOf<flowrun_core::execution::FlowRunResult>),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn run_flow(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let (rec, trigger) = {
        let defs = app.registry.read();
        let rec = live_flow(&defs, &caller, &raw)?;
        let trigger = defs.trigger(&caller.owner_id, rec.flow.trigger_id).cloned();
        (rec, trigger)
    };
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(&body, &mut errs) else {
        return Err(ApiError::validation(errs));
    };
    let payload = match o.object("payload", Req::Optional, &mut errs) {
        Field::Value(p) => Value::Object(p.clone()),
        _ => json!({}),
    };
    let capture = match o.boolean("captureScreenshots", Req::Optional, &mut errs) {
        Field::Value(b) => b,
        _ => false,
    };
    errs.into_result().map_err(ApiError::validation)?;
    let Some(trigger) = trigger else {
        return Err(ApiError::conflict(
            "trigger_missing",
            format!(
                "Flow {} is bound to a trigger that no longer exists",
                rec.flow.id
            ),
        ));
    };
    check_trigger_payload(&trigger, &payload)?;
    let invocation_id = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| flowrun_core::new_id().to_string());
    let outcome = app
        .engine
        .submit(flowrun_engine::Firing {
            owner_id: caller.owner_id.clone(),
            actor_id: Some(caller.actor_id.clone()),
            origin: flowrun_engine::Origin::Run,
            trigger_id: trigger.id,
            only_flow: Some(rec.flow.id),
            payload,
            invocation_id: Some(invocation_id),
            dedupe_invocation: false,
            event: None,
            schedule: Value::Null,
            verify_device: None,
            capture_screenshots: capture,
            received_at: None,
            suppressed: None,
        })
        .await?;
    Ok(accepted(flowrun_core::execution::FlowRunResult {
        enqueued_count: outcome.enqueued.len() as i64,
        execution_ids: outcome.enqueued,
    }))
}

/// 422 when a payload fails the trigger's `customPayloadSchema` (custom triggers) or the
/// event type's catalog field types (event triggers), as `run` and `verify` require.
pub(crate) fn check_trigger_payload(
    trigger: &flowrun_core::model::Trigger,
    payload: &Value,
) -> ApiResult<()> {
    match trigger.activation.as_str() {
        "custom" => super::triggers::check_custom_payload(trigger, payload),
        "event" => {
            let (Some(ty), Some(p)) = (&trigger.event_type, payload.as_object()) else {
                return Ok(());
            };
            flowrun_core::appevents::check_payload(ty, p, "payload")
                .into_result()
                .map_err(ApiError::validation)
        }
        _ => Ok(()),
    }
}
