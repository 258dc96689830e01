//! Checking flows before they go live (§3.5, §5.14): `POST /flows/validate` (a definition,
//! nothing stored), `GET /flows/template-context`, `POST /flows/{flowId}/verify` (one real
//! run of kind `verification`) and `POST /flows/{flowId}/activate` (enables a flow after a
//! successful verification of its unchanged graph).

use std::collections::{HashMap, HashSet};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use flowrun_core::catalog::{self, CatalogEntry, SERVICES};
use flowrun_core::flowtree::{self, ActionRef, NodeSpec, TreeRules};
use flowrun_core::keys::{is_reserved, is_valid_key};
use flowrun_core::model::{Flow, FlowRecord};
use flowrun_core::params::{self, Mode};
use flowrun_core::templates;
use flowrun_core::validate::{Field, Obj, Req, as_integer, join, parse_uuid};
use flowrun_core::{FieldErrors, appevents, conditions, new_id};
use flowrun_engine::snapshot;
use flowrun_store::{Change, Defs, ExecFilter, ExecOrder, ExecOrderBy, ExecutionRow};
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::schema::{DataOf, ErrorBody};
use super::common::{Caller, Extension, accepted, data};
use super::dry_runs::{flow_report, trigger_of};
use super::flows::{action_lookup, check_trigger_payload, live_flow, read_settings, touch};
use crate::App;
use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult};
use crate::query::Query;

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(validate_flow))
        .routes(routes!(template_context))
        .routes(routes!(verify_flow))
        .routes(routes!(activate_flow))
}

// ---------------------------------------------------------------------------------------
// GET /flows/template-context
// ---------------------------------------------------------------------------------------

/// What templates can address, per template resolution version (§5.10).
#[utoipa::path(get, path = "/flows/template-context", tag = "flows",
    params(("templateResolutionVersion" = Option<i64>, Query)),
    responses((status = 200, body = inline(Object)), (status = 422, body = ErrorBody)))]
async fn template_context(mut q: Query) -> ApiResult<Response> {
    let version = q.int("templateResolutionVersion", 1, 3).unwrap_or(3);
    q.finish()?;
    Ok(data(templates::template_context(version)))
}

// ---------------------------------------------------------------------------------------
// POST /flows/{flowId}/verify
// ---------------------------------------------------------------------------------------

/// `VerifyResult` (§4.4).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResult {
    pub execution_id: Uuid,
    pub flow_id: Uuid,
    pub trigger_id: Uuid,
    pub invocation_id: String,
    pub device_id: Option<Uuid>,
    /// Always `verification`.
    pub kind: String,
    pub status: String,
    pub deduplicated: bool,
}

impl VerifyResult {
    fn of(row: &ExecutionRow, deduplicated: bool) -> Self {
        Self {
            execution_id: row.id,
            flow_id: row.flow_id,
            trigger_id: row.trigger_id,
            invocation_id: row.invocation_id.clone().unwrap_or_default(),
            device_id: row.device_id,
            kind: row.kind.clone(),
            status: row.status.clone(),
            deduplicated,
        }
    }
}

/// The verification of this flow with this invocation id, if one was ever enqueued (§5.14:
/// for the row's lifetime).
async fn find_verification(
    app: &App,
    caller: &Caller,
    flow_id: Uuid,
    invocation_id: &str,
) -> ApiResult<Option<ExecutionRow>> {
    let filter = ExecFilter {
        flow_id: Some(flow_id),
        invocation_id: Some(invocation_id.to_string()),
        ..Default::default()
    };
    let order = ExecOrder {
        by: ExecOrderBy::StartedAt,
        desc: false,
    };
    let (rows, _) = app
        .store
        .list_executions(&caller.owner_id, &filter, order, 0, 100)
        .await?;
    Ok(rows.into_iter().find(|r| r.kind == "verification"))
}

/// Run the flow once for real (kind `verification`) on one device.
#[utoipa::path(post, path = "/flows/{flowId}/verify", tag = "flows",
    params(("flowId" = String, Path)), request_body = inline(Object),
    responses((status = 202, body = DataOf<VerifyResult>),
              (status = 200, description = "already verified with this invocationId",
               body = DataOf<VerifyResult>),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn verify_flow(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let flow_id = live_flow(&app.registry.read(), &caller, &raw)?.flow.id;
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(&body, &mut errs) else {
        return Err(ApiError::validation(errs));
    };
    let invocation_id = o.string("invocationId", Req::Required, 1, 255, &mut errs);
    let device_id = o.uuid("deviceId", Req::Nullable, &mut errs).value();
    let payload = match o.object("payload", Req::Optional, &mut errs) {
        Field::Value(p) => Value::Object(p.clone()),
        _ => json!({}),
    };
    errs.into_result().map_err(ApiError::validation)?;
    let invocation_id = invocation_id.value().expect("validated");

    if let Some(row) = find_verification(&app, &caller, flow_id, &invocation_id).await? {
        return Ok(data(VerifyResult::of(&row, true)));
    }

    let (trigger_id, target) = {
        let defs = app.registry.read();
        let rec = live_flow(&defs, &caller, &raw)?;
        let trigger = trigger_of(&defs, &rec)?;
        let target = verify_target(&defs, &caller, &rec, device_id)?;
        check_trigger_payload(&trigger, &payload)?;
        if trigger.activation == "event" {
            let report = flow_report(&app, &defs, &caller, &rec, &trigger, &payload, target)?;
            if report.conditions_passed == Some(false) {
                return Err(ApiError::conflict(
                    "conditions_not_met",
                    format!(
                        "The conditions of trigger {} are not met by this payload",
                        trigger.id
                    ),
                )
                .with_details(json!({ "dryRun": report })));
            }
        }
        (trigger.id, target)
    };

    let firing = |dedupe: bool| flowrun_engine::Firing {
        owner_id: caller.owner_id.clone(),
        actor_id: Some(caller.actor_id.clone()),
        origin: flowrun_engine::Origin::Verify,
        trigger_id,
        only_flow: Some(flow_id),
        payload: payload.clone(),
        invocation_id: Some(invocation_id.clone()),
        dedupe_invocation: dedupe,
        event: None,
        schedule: Value::Null,
        verify_device: target,
        capture_screenshots: false,
        received_at: None,
        suppressed: None,
    };
    // The enqueuer's own per-(flow, invocation) dedupe closes the race between two
    // concurrent verifies with the same invocation id.
    let mut outcome = app.engine.submit(firing(true)).await?;
    if outcome.enqueued.is_empty() && outcome.deduplicated {
        if let Some(row) = find_verification(&app, &caller, flow_id, &invocation_id).await? {
            return Ok(data(VerifyResult::of(&row, true)));
        }
        // Only a live row (a run or fire) carries this invocation id: verify anyway.
        outcome = app.engine.submit(firing(false)).await?;
    }
    let Some(&execution_id) = outcome.enqueued.first() else {
        // The flow was archived in the meantime.
        return Err(ApiError::not_found("Flow", &raw));
    };
    Ok(accepted(VerifyResult {
        execution_id,
        flow_id,
        trigger_id,
        invocation_id,
        device_id: target,
        kind: "verification".to_string(),
        status: "pending".to_string(),
        deduplicated: false,
    }))
}

/// The one device a verification runs on: the given one (bound to the flow), else the only
/// bound one, else none for a device-free flow.
fn verify_target(
    defs: &Defs,
    caller: &Caller,
    rec: &FlowRecord,
    device_id: Option<Uuid>,
) -> ApiResult<Option<Uuid>> {
    let bound = &rec.flow.device_ids;
    if let Some(d) = device_id {
        if bound.contains(&d) {
            return Ok(Some(d));
        }
        return Err(if defs.device(&caller.owner_id, d).is_none() {
            ApiError::field(
                "deviceId",
                "unknown_reference",
                format!("device {d} does not exist"),
            )
        } else {
            ApiError::field(
                "deviceId",
                "invalid_value",
                format!("device {d} is not bound to flow {}", rec.flow.id),
            )
        });
    }
    match bound.as_slice() {
        [] => {
            if snapshot::needs_device(&snapshot::steps_of(defs, rec)) {
                Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "no_device",
                    format!(
                        "Flow {} has no device and one of its steps needs one",
                        rec.flow.id
                    ),
                ))
            } else {
                Ok(None)
            }
        }
        [only] => Ok(Some(*only)),
        _ => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "device_id_required",
            format!(
                "Flow {} has {} devices; deviceId is required",
                rec.flow.id,
                bound.len()
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// POST /flows/{flowId}/activate
// ---------------------------------------------------------------------------------------

/// Enable a flow after a successful verification of its current graph.
#[utoipa::path(post, path = "/flows/{flowId}/activate", tag = "flows",
    params(("flowId" = String, Path)), request_body = inline(Object),
    responses((status = 200, body = DataOf<Flow>), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn activate_flow(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let rec = live_flow(&app.registry.read(), &caller, &raw)?;
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(&body, &mut errs) else {
        return Err(ApiError::validation(errs));
    };
    let execution_id = o.uuid("verificationExecutionId", Req::Required, &mut errs);
    errs.into_result().map_err(ApiError::validation)?;
    let execution_id = execution_id.value().expect("validated");
    if rec.flow.enabled {
        return Ok(data(&rec.flow));
    }
    let row = app
        .store
        .get_execution(&caller.owner_id, execution_id)
        .await?
        .ok_or_else(|| ApiError::not_found("Execution", &execution_id.to_string()))?;
    if row.kind != "verification" || row.flow_id != rec.flow.id {
        return Err(ApiError::conflict(
            "verification_flow_mismatch",
            format!(
                "Execution {execution_id} is not a verification of flow {}",
                rec.flow.id
            ),
        ));
    }
    if row.status != "success" {
        return Err(ApiError::conflict(
            "verification_not_successful",
            format!(
                "Verification {execution_id} has status {}; only a successful verification activates a flow",
                row.status
            ),
        )
        .with_details(json!({ "status": row.status })));
    }

    let _guard = app.registry.lock().await;
    let record = {
        let defs = app.registry.read();
        let mut rec = live_flow(&defs, &caller, &raw)?;
        if rec.flow.enabled {
            // Enabled concurrently: nothing to change.
            return Ok(data(&rec.flow));
        }
        let trigger = trigger_of(&defs, &rec)?;
        let current = snapshot::graph_hash(&defs, &rec, &trigger);
        if row.graph_hash.as_deref() != Some(current.as_str()) {
            return Err(ApiError::conflict(
                "flow_changed_since_verification",
                format!(
                    "Flow {} changed since verification {execution_id}; verify it again",
                    rec.flow.id
                ),
            ));
        }
        rec.flow.enabled = true;
        rec.flow.lifecycle_status = "enabled".to_string();
        touch(&mut rec.flow);
        rec
    };
    app.registry
        .apply(vec![Change::PutFlow(record.clone())])
        .await?;
    Ok(data(&record.flow))
}

// ---------------------------------------------------------------------------------------
// POST /flows/validate
// ---------------------------------------------------------------------------------------

/// One problem of a validated definition.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidateError {
    pub code: String,
    pub field: String,
    pub message: String,
    /// `unknown_step_reference`: the keys of the steps that precede the reference.
    pub known_steps: Option<Vec<String>>,
    /// `unknown_step_reference`: the referenced key.
    pub reference: Option<String>,
}

/// Something that would work but probably not as intended.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidateWarning {
    pub code: String,
    pub message: String,
    pub connect_key: Option<String>,
    pub destination: Option<String>,
}

/// `ValidateResult` (§4.6): `valid` ⇔ `errors` is empty.
#[derive(Serialize, ToSchema)]
pub struct ValidateResult {
    pub valid: bool,
    pub errors: Vec<ValidateError>,
    pub warnings: Vec<ValidateWarning>,
}

/// Check a flow definition as `POST /flows` would, without storing anything.
#[utoipa::path(post, path = "/flows/validate", tag = "flows", request_body = inline(Object),
    responses((status = 200, body = DataOf<ValidateResult>), (status = 400, body = ErrorBody)))]
async fn validate_flow(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let defs = app.registry.read();
    Ok(data(validate_definition(&defs, &caller, &body)))
}

/// The codes of `ValidateResult.errors` (§3.5); anything else maps onto one of them.
const VALIDATE_CODES: [&str; 20] = [
    "required",
    "invalid_type",
    "invalid_value",
    "unknown_trigger",
    "unknown_action",
    "unknown_device",
    "unknown_webhook",
    "unknown_method",
    "invalid_params",
    "duplicate_position",
    "duplicate_key",
    "invalid_key",
    "reserved_key",
    "too_deep",
    "children_not_allowed",
    "invalid_template",
    "forbidden_path",
    "unknown_step_reference",
    "folder_not_allowed",
    "invalid_condition",
];

/// Template roots of version 3 (§5.10); `loop` and the item variable only inside a loop.
const V3_ROOTS: [&str; 13] = [
    "event",
    "trigger",
    "flow",
    "execution",
    "steps",
    "prev",
    "results",
    "schedule",
    "source",
    "now",
    "chainDepth",
    "owner",
    "user",
];

/// Field errors of the create rules, in the vocabulary of validate.
fn validate_code(field: &str, code: &str) -> &'static str {
    match code {
        "unknown_reference" if field == "triggerId" => "unknown_trigger",
        "unknown_reference" if field.starts_with("deviceIds") => "unknown_device",
        "unknown_reference" if field == "notifyWebhookId" => "unknown_webhook",
        "unknown_reference" if field.ends_with("actionId") => "unknown_action",
        "duplicate" if field.ends_with(".position") => "duplicate_position",
        "duplicate" if field.ends_with(".key") => "duplicate_key",
        "not_allowed" if field == "delivery.folder" => "folder_not_allowed",
        "key_required" => "required",
        other => VALIDATE_CODES
            .iter()
            .find(|c| **c == other)
            .copied()
            .unwrap_or("invalid_value"),
    }
}

fn error(code: &str, field: impl Into<String>, message: impl Into<String>) -> ValidateError {
    ValidateError {
        code: code.to_string(),
        field: field.into(),
        message: message.into(),
        known_steps: None,
        reference: None,
    }
}

fn warning(code: &str, message: impl Into<String>) -> ValidateWarning {
    ValidateWarning {
        code: code.to_string(),
        message: message.into(),
        connect_key: None,
        destination: None,
    }
}

/// A draft node's action (validate only).
struct Draft {
    name: String,
    service: String,
    method: String,
    params: Value,
    entry: Option<&'static CatalogEntry>,
}

/// Reads `actions[i].draft`; problems go to `errors` directly.
fn read_draft(v: &Value, path: &str, errors: &mut Vec<ValidateError>) -> Draft {
    let mut errs = FieldErrors::new();
    let mut draft = Draft {
        name: "step".to_string(),
        service: String::new(),
        method: String::new(),
        params: json!({}),
        entry: None,
    };
    let Some(map) = v.as_object() else {
        errors.push(error(
            "invalid_type",
            path,
            format!("{path} must be an object with service, method and name"),
        ));
        return draft;
    };
    let o = Obj::new(map, path);
    let service = o.enumeration("service", Req::Required, &SERVICES, &mut errs);
    let method = o.string("method", Req::Required, 1, 200, &mut errs);
    if let Field::Value(n) = o.string("name", Req::Required, 1, 200, &mut errs) {
        draft.name = n;
    }
    if let Field::Value(p) = o.object("params", Req::Optional, &mut errs) {
        draft.params = Value::Object(p.clone());
    }
    if let (Field::Value(service), Field::Value(method)) = (&service, &method) {
        draft.entry = catalog::by_method(method).filter(|e| e.service == *service);
        if draft.entry.is_none() {
            errs.push(
                o.path("method"),
                "unknown_method",
                format!("the catalog has no method {method} in service {service}"),
            );
        }
    }
    draft.service = service.value().unwrap_or_default();
    draft.method = method.value().unwrap_or_default();
    for e in errs.0 {
        let code = e.code.as_deref().unwrap_or("invalid_value");
        errors.push(error(validate_code(&e.field, code), e.field, e.message));
    }
    draft
}

/// A node of the definition as the template and param checks see it.
struct NodeInfo {
    path: String,
    position: i64,
    key: Option<String>,
    method: Option<String>,
    service: Option<String>,
    /// `action.params` (or the draft's) shallow-merged with `overrides.params`.
    params: Value,
    children: Vec<NodeInfo>,
}

fn node_info(
    defs: &Defs,
    owner: &str,
    drafts: &HashMap<Uuid, Draft>,
    item: &Value,
    path: String,
    spec: Option<&NodeSpec>,
) -> Option<NodeInfo> {
    let map = item.as_object()?;
    let action_id = map
        .get("actionId")
        .and_then(Value::as_str)
        .and_then(parse_uuid);
    let (method, service, base) = match action_id {
        Some(id) if drafts.contains_key(&id) => {
            let d = &drafts[&id];
            (
                Some(d.method.clone()),
                Some(d.service.clone()),
                d.params.clone(),
            )
        }
        Some(id) => match defs.action(owner, id) {
            Some(a) => (
                Some(a.method.clone()),
                Some(a.service.clone()),
                a.params.clone(),
            ),
            None => (None, None, json!({})),
        },
        None => (None, None, json!({})),
    };
    let mut params = match base {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    if let Some(Value::Object(o)) = map.get("overrides").and_then(|o| o.get("params")) {
        for (k, v) in o {
            params.insert(k.clone(), v.clone());
        }
    }
    let key = spec.map(|s| s.key.clone()).or_else(|| {
        map.get("key")
            .and_then(Value::as_str)
            .filter(|k| is_valid_key(k) && !is_reserved(k))
            .map(str::to_string)
    });
    let children = match map.get("children") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(j, c)| {
                node_info(
                    defs,
                    owner,
                    drafts,
                    c,
                    format!("{path}.children[{j}]"),
                    spec.and_then(|s| s.children.get(j)),
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(NodeInfo {
        position: map.get("position").and_then(as_integer).unwrap_or(i64::MAX),
        path,
        key,
        method,
        service,
        params: Value::Object(params),
        children,
    })
}

/// Every string of `v` with its location (`a.b`, `items[0]`), as template errors name it.
fn strings<'v>(v: &'v Value, at: &str, out: &mut Vec<(String, &'v str)>) {
    match v {
        Value::String(s) => out.push((at.to_string(), s)),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings(item, &format!("{at}[{i}]"), out);
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                strings(item, &join(at, k), out);
            }
        }
        _ => {}
    }
}

/// The trimmed insides of the complete `{{ … }}` tokens of a string.
fn tokens(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            break;
        };
        let inner = after[..close].trim();
        if !inner.is_empty() {
            out.push(inner);
        }
        rest = &after[close + 2..];
    }
    out
}

/// Template and param checks of one node (version 3). `known` = keys of the steps that run
/// before it; `item_variable` = the enclosing loop's item variable (children of
/// `flow.for_each`).
fn check_node(
    n: &NodeInfo,
    known: &[String],
    item_variable: Option<&str>,
    errors: &mut Vec<ValidateError>,
) {
    let at = format!("{}.params", n.path);
    let mut flagged: HashSet<String> = HashSet::new();
    let mut broken: HashSet<String> = HashSet::new();
    for e in templates::check(&n.params, 3) {
        flagged.insert(e.field().to_string());
        let field = if e.field().is_empty() {
            at.clone()
        } else {
            join(&at, e.field())
        };
        broken.insert(field.clone());
        errors.push(error(e.code(), field, e.message()));
    }
    let mut found = Vec::new();
    strings(&n.params, "", &mut found);
    for (loc, s) in found {
        if flagged.contains(&loc) {
            continue;
        }
        let field = if loc.is_empty() {
            at.clone()
        } else {
            join(&at, &loc)
        };
        for token in tokens(s) {
            let Some(segs) = conditions::parse_path(token) else {
                continue;
            };
            let first = segs[0].as_str();
            if first == "steps" {
                if let Some(key) = segs.get(1)
                    && !known.contains(key)
                {
                    errors.push(ValidateError {
                        code: "unknown_step_reference".to_string(),
                        field: field.clone(),
                        message: format!(
                            "'{{{{{token}}}}}' references step '{key}', which does not run before this step"
                        ),
                        known_steps: Some(known.to_vec()),
                        reference: Some(key.clone()),
                    });
                }
            } else if first == "loop" || Some(first) == item_variable {
                if item_variable.is_none() {
                    errors.push(error(
                        "invalid_template",
                        field.clone(),
                        format!(
                            "'{{{{{token}}}}}': loop variables exist only inside flow.for_each"
                        ),
                    ));
                }
            } else if !V3_ROOTS.contains(&first) {
                let hint = if first == "payload" {
                    " (use event.payload)"
                } else {
                    ""
                };
                errors.push(error(
                    "invalid_template",
                    field.clone(),
                    format!("'{{{{{token}}}}}' does not start with a template root{hint}"),
                ));
            }
        }
    }
    let entry = n
        .method
        .as_deref()
        .and_then(catalog::by_method)
        .filter(|e| Some(e.service.as_str()) == n.service.as_deref());
    if let Some(entry) = entry {
        for e in params::check(entry, &n.params, Mode::Configured, &at).0 {
            // A broken template is already reported; it is not also a value of a wrong type.
            if broken.contains(&e.field) {
                continue;
            }
            let code = match e.code.as_deref() {
                Some("invalid_condition") => "invalid_condition",
                _ => "invalid_params",
            };
            errors.push(error(code, e.field, e.message));
        }
    }
}

/// Nodes in execution order: by ascending position (stable for clashes).
fn in_order(nodes: &[NodeInfo]) -> Vec<&NodeInfo> {
    let mut v: Vec<&NodeInfo> = nodes.iter().collect();
    v.sort_by_key(|n| n.position);
    v
}

fn validate_definition(defs: &Defs, caller: &Caller, body: &Value) -> ValidateResult {
    let owner = caller.owner_id.as_str();
    let mut errs = FieldErrors::new();
    let mut errors: Vec<ValidateError> = Vec::new();
    let mut warnings: Vec<ValidateWarning> = Vec::new();
    let Some(o) = Obj::root(body, &mut errs) else {
        let e = &errs.0[0];
        return ValidateResult {
            valid: false,
            errors: vec![error("invalid_type", e.field.clone(), e.message.clone())],
            warnings,
        };
    };
    read_settings(&o, true, defs, owner, &mut errs);
    // `triggerId` is optional here.
    errs.0
        .retain(|e| !(e.field == "triggerId" && e.code.as_deref() == Some("required")));

    // Drafts become synthetic actions the tree rules can look up.
    let mut drafts: HashMap<Uuid, Draft> = HashMap::new();
    let mut nodes: Vec<NodeInfo> = Vec::new();
    if let Field::Value(items) = o.array("actions", Req::Required, &mut errs) {
        let mut replaced = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("actions[{i}]");
            let Some(draft_value) = item.as_object().and_then(|m| m.get("draft")) else {
                replaced.push(item.clone());
                continue;
            };
            let mut m = item.as_object().cloned().unwrap_or_default();
            let draft = read_draft(draft_value, &format!("{path}.draft"), &mut errors);
            if m.remove("children")
                .is_some_and(|c| c.as_array().is_none_or(|a| !a.is_empty()))
            {
                errors.push(error(
                    "children_not_allowed",
                    format!("{path}.children"),
                    "draft actions cannot have children",
                ));
            }
            m.remove("draft");
            let id = new_id();
            m.insert("actionId".into(), Value::String(id.to_string()));
            drafts.insert(id, draft);
            replaced.push(Value::Object(m));
        }
        let base = action_lookup(defs, owner);
        let lookup = |id: Uuid| {
            drafts
                .get(&id)
                .map(|d| ActionRef {
                    name: d.name.clone(),
                    method: d.method.clone(),
                })
                .or_else(|| base(id))
        };
        let taken = HashSet::new();
        let rules = TreeRules {
            lookup: &lookup,
            require_keys: false,
            taken_keys: &taken,
            existing_nodes: 0,
        };
        let specs = flowtree::parse_tree(&replaced, "actions", &rules, &mut errs);
        nodes = replaced
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                node_info(
                    defs,
                    owner,
                    &drafts,
                    item,
                    format!("actions[{i}]"),
                    specs.as_ref().and_then(|s| s.get(i)),
                )
            })
            .collect();
    }
    // The create rules' errors come first, in body order.
    let mut all: Vec<ValidateError> = errs
        .0
        .into_iter()
        .map(|e| {
            let code = validate_code(&e.field, e.code.as_deref().unwrap_or("invalid_value"));
            error(code, e.field, e.message)
        })
        .collect();
    all.append(&mut errors);
    let mut errors = all;

    // Templates and params, in execution order (§5.9).
    let mut known: Vec<String> = Vec::new();
    let mut needs_device = false;
    for n in in_order(&nodes) {
        check_node(n, &known, None, &mut errors);
        needs_device |= n
            .method
            .as_deref()
            .is_some_and(|m| catalog::needs_device(m, n.service.as_deref().unwrap_or("")));
        let method = n.method.as_deref().unwrap_or("");
        if catalog::allows_children(method) && n.children.is_empty() {
            warnings.push(warning(
                "empty_body",
                format!("{} ({method}) has no children", n.path),
            ));
        }
        let item_variable = (method == "flow.for_each").then(|| {
            n.params
                .get("itemVariable")
                .and_then(Value::as_str)
                .unwrap_or("item")
                .to_string()
        });
        let mut inner = known.clone();
        for c in in_order(&n.children) {
            check_node(c, &inner, item_variable.as_deref(), &mut errors);
            needs_device |= c
                .method
                .as_deref()
                .is_some_and(|m| catalog::needs_device(m, c.service.as_deref().unwrap_or("")));
            inner.extend(c.key.clone());
        }
        known.extend(n.key.clone());
        for c in in_order(&n.children) {
            known.extend(c.key.clone());
        }
    }

    // Warnings.
    let device_count = match body.get("deviceIds") {
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    };
    if needs_device && device_count == 0 {
        warnings.push(warning(
            "no_devices",
            "a step needs a device and deviceIds is empty",
        ));
    }
    if let Some(t) = body
        .get("triggerId")
        .and_then(Value::as_str)
        .and_then(parse_uuid)
        .and_then(|id| defs.trigger(owner, id))
        && t.activation == "event"
        && let Some(ty) = &t.event_type
        && appevents::entry(ty).is_none()
    {
        warnings.push(warning(
            "unknown_event_type",
            format!(
                "event type '{ty}' is not in the app-event catalog; its payload is not checked"
            ),
        ));
    }
    if let Some(dest) = body
        .get("delivery")
        .and_then(|d| d.get("destination"))
        .and_then(Value::as_str)
        .filter(|d| *d == "one_drive" || *d == "google_drive")
    {
        warnings.push(ValidateWarning {
            code: "destination_not_connected".to_string(),
            message: format!("delivery destination {dest} is not connected"),
            connect_key: Some(dest.to_string()),
            destination: Some(dest.to_string()),
        });
    }
    let notify = ["notifyOnSuccess", "notifyOnFailure"]
        .iter()
        .any(|k| body.get(*k) == Some(&Value::Bool(true)));
    let webhook = body.get("notifyWebhookId").is_some_and(|w| !w.is_null());
    if notify && !webhook {
        warnings.push(warning(
            "notify_without_webhook",
            "notifications are on but notifyWebhookId is not set",
        ));
    }
    ValidateResult {
        valid: errors.is_empty(),
        errors,
        warnings,
    }
}
