//! Flow actions (§3.6): reading and editing one flow's action tree — add a node, remove a
//! node (with its children), or replace the whole tree at once.
//!
//! The tree is stored inside its flow's record, so every edit rewrites that record under the
//! registry write lock and bumps the flow's `updatedAt`. Tree rules live in
//! `flowrun_core::flowtree`; this module adds the parts that depend on the existing tree.

use std::collections::HashSet;

use axum::extract::{Path, State};
use axum::response::Response;
use flowrun_core::catalog::allows_children;
use flowrun_core::flowtree::{self, Level, TreeRules};
use flowrun_core::model::{FlowAction, FlowRecord};
use flowrun_core::validate::{Field, Obj, Req};
use flowrun_core::{FieldErrors, Ts};
use flowrun_store::{Change, Defs};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::common::schema::{DataOf, ErrorBody, Message};
use super::common::{Caller, Extension, created, message, ok, path_id};
use super::flows::{action_lookup, live_flow, touch};
use crate::App;
use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult};

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(
            list_flow_actions,
            add_flow_action,
            replace_flow_actions
        ))
        .routes(routes!(remove_flow_action))
}

/// List a flow's action tree (flat, depth-first).
#[utoipa::path(get, path = "/flows/{flowId}/actions", tag = "flow-actions",
    params(("flowId" = String, Path)),
    responses((status = 200, body = DataOf<Vec<FlowAction>>), (status = 404, body = ErrorBody)))]
async fn list_flow_actions(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let rec = live_flow(&app.registry.read(), &caller, &raw)?;
    Ok(ok(json!({ "data": rec.nodes })))
}

/// Add a node (top-level, or a child of a `flow.for_each`/`flow.if` binding).
#[utoipa::path(post, path = "/flows/{flowId}/actions", tag = "flow-actions",
    params(("flowId" = String, Path)), request_body = inline(Object),
    responses((status = 201, body = DataOf<FlowAction>), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn add_flow_action(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let _guard = app.registry.lock().await;
    let (record, added) = {
        let defs = app.registry.read();
        let mut rec = live_flow(&defs, &caller, &raw)?;
        let added = add_node(&defs, &caller, &mut rec, &body)?;
        (rec, added)
    };
    app.registry.apply(vec![Change::PutFlow(record)]).await?;
    Ok(created(added))
}

fn add_node(
    defs: &Defs,
    caller: &Caller,
    rec: &mut FlowRecord,
    body: &Value,
) -> ApiResult<FlowAction> {
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(body, &mut errs) else {
        return Err(ApiError::validation(errs));
    };
    let parent_field = o.uuid("parentFlowActionId", Req::Nullable, &mut errs);
    // A node sent with a parent is a child even when the parent turns out to be unusable, so
    // its own `children` are reported as too deep either way.
    let level = if matches!(parent_field, Field::Value(_)) {
        Level::Child
    } else {
        Level::Top
    };
    let mut parent = None;
    if let Field::Value(pid) = parent_field {
        match rec.nodes.iter().find(|n| n.id == pid) {
            None => errs.push(
                "parentFlowActionId",
                "unknown_reference",
                format!("flow action {pid} is not part of this flow"),
            ),
            Some(p) if p.parent_flow_action_id.is_some() => errs.push(
                "parentFlowActionId",
                "too_deep",
                format!("flow action {pid} is itself a child: nesting is exactly two levels"),
            ),
            Some(p) => {
                let container = defs
                    .action(&caller.owner_id, p.action_id)
                    .is_some_and(|a| allows_children(&a.method));
                if container {
                    parent = Some(pid);
                } else {
                    errs.push(
                        "parentFlowActionId",
                        "children_not_allowed",
                        format!("flow action {pid} is not a flow.for_each or flow.if binding"),
                    );
                }
            }
        }
    }
    let siblings: Vec<i64> = if level == Level::Top || parent.is_some() {
        rec.nodes
            .iter()
            .filter(|n| n.parent_flow_action_id == parent)
            .map(|n| n.position)
            .collect()
    } else {
        Vec::new()
    };
    let lookup = action_lookup(defs, &caller.owner_id);
    let taken: HashSet<String> = rec.nodes.iter().map(|n| n.key.clone()).collect();
    let rules = TreeRules {
        lookup: &lookup,
        // Keys are derived on add for every template version (§3.6).
        require_keys: false,
        taken_keys: &taken,
        existing_nodes: rec.nodes.len(),
    };
    let spec = flowtree::parse_node(body, "", level, &siblings, &rules, &mut errs);
    errs.into_result().map_err(ApiError::validation)?;
    let spec = spec.expect("a node is returned when there are no errors");
    let now = Ts::now();
    let new_nodes = flowtree::materialize(&[spec], rec.flow.id, parent, now);
    let added = new_nodes[0].clone();
    rec.nodes.extend(new_nodes);
    rec.sort_nodes();
    touch(&mut rec.flow);
    Ok(added)
}

/// Replace the whole tree atomically.
#[utoipa::path(put, path = "/flows/{flowId}/actions", tag = "flow-actions",
    params(("flowId" = String, Path)), request_body = inline(Object),
    responses((status = 200, body = DataOf<Vec<FlowAction>>), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn replace_flow_actions(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let _guard = app.registry.lock().await;
    let record = {
        let defs = app.registry.read();
        let mut rec = live_flow(&defs, &caller, &raw)?;
        replace_tree(&defs, &caller, &mut rec, &body)?;
        rec
    };
    let nodes = record.nodes.clone();
    app.registry.apply(vec![Change::PutFlow(record)]).await?;
    Ok(ok(json!({ "data": nodes })))
}

fn replace_tree(defs: &Defs, caller: &Caller, rec: &mut FlowRecord, body: &Value) -> ApiResult<()> {
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(body, &mut errs) else {
        return Err(ApiError::validation(errs));
    };
    let lookup = action_lookup(defs, &caller.owner_id);
    let taken = HashSet::new();
    let rules = TreeRules {
        lookup: &lookup,
        // Version 3 addresses steps by key, so a replace must not silently invent them.
        require_keys: rec.flow.template_resolution_version >= 3,
        taken_keys: &taken,
        existing_nodes: 0,
    };
    let specs = match o.array("actions", Req::Required, &mut errs) {
        Field::Value(items) => flowtree::parse_tree(items, "actions", &rules, &mut errs),
        _ => None,
    };
    errs.into_result().map_err(ApiError::validation)?;
    let specs = specs.expect("a tree is returned when there are no errors");
    let now = Ts::now();
    rec.nodes = flowtree::materialize(&specs, rec.flow.id, None, now);
    touch(&mut rec.flow);
    Ok(())
}

/// Remove a node and its children.
#[utoipa::path(delete, path = "/flows/{flowId}/actions/{flowActionId}", tag = "flow-actions",
    params(("flowId" = String, Path), ("flowActionId" = String, Path)),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn remove_flow_action(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path((raw_flow, raw_node)): Path<(String, String)>,
) -> ApiResult<Response> {
    let _guard = app.registry.lock().await;
    let mut rec = live_flow(&app.registry.read(), &caller, &raw_flow)?;
    let id = path_id("Flow action", &raw_node)?;
    let node = rec
        .nodes
        .iter()
        .find(|n| n.id == id)
        .cloned()
        .ok_or_else(|| ApiError::not_found("Flow action", &raw_node))?;
    if node.parent_flow_action_id.is_none() {
        let top_level = rec
            .nodes
            .iter()
            .filter(|n| n.parent_flow_action_id.is_none())
            .count();
        if top_level == 1 {
            return Err(ApiError::conflict(
                "last_action",
                format!(
                    "Flow action {id} is the flow's only top-level action and cannot be removed"
                ),
            ));
        }
    }
    rec.nodes
        .retain(|n| n.id != id && n.parent_flow_action_id != Some(id));
    touch(&mut rec.flow);
    app.registry.apply(vec![Change::PutFlow(rec)]).await?;
    Ok(message(format!("Flow action {id} removed")))
}
