//! Actions (§3.4): an owner's configured instance of a catalog method — the method plus the
//! params (possibly templated) that flows bind to. Params failing the entry's schema are the
//! API's one 400 for invalid input (`invalid_params`).

use axum::extract::{Path, State};
use axum::response::Response;
use flowrun_core::catalog::{self, CatalogEntry};
use flowrun_core::model::Action;
use flowrun_core::params::{self, Mode};
use flowrun_core::validate::{Field, Obj, Req};
use flowrun_core::{FieldErrors, Ts, new_id};
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
        .routes(routes!(list_actions, create_action))
        .routes(routes!(get_action, update_action, delete_action))
}

const ORDER_BY: [&str; 3] = ["name", "createdAt", "updatedAt"];

/// List actions.
#[utoipa::path(get, path = "/actions", tag = "actions",
    params(("service" = Option<String>, Query), ("search" = Option<String>, Query),
           ("orderBy" = Option<String>, Query), ("orderByDirection" = Option<String>, Query),
           ("page" = Option<i64>, Query), ("pageSize" = Option<i64>, Query)),
    responses((status = 200, body = ListOf<Action>), (status = 422, body = ErrorBody)))]
async fn list_actions(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    mut q: Query,
) -> ApiResult<Response> {
    let service = q.enum_many("service", &catalog::SERVICES);
    let search = q.search();
    let (order_by, desc) = q.order(&ORDER_BY, "createdAt");
    let page = q.page();
    q.finish()?;
    let defs = app.registry.read();
    let mut items: Vec<&Action> = defs
        .actions
        .values()
        .map(|a| a.as_ref())
        .filter(|a| a.owner_id == caller.owner_id)
        .filter(|a| service.as_ref().is_none_or(|s| s.contains(&a.service)))
        .filter(|a| {
            search
                .as_ref()
                .is_none_or(|n| matches_search(n, &[Some(&a.name), a.description.as_deref()]))
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

/// Reads `params` (optional object, default `{}`) without judging its content yet: that is
/// the schema's job and answers 400, not 422.
fn read_params(o: &Obj<'_>, errs: &mut FieldErrors) -> Field<Map<String, Value>> {
    match o.object("params", Req::Optional, errs) {
        Field::Value(m) => Field::Value(m.clone()),
        Field::Absent => Field::Absent,
        Field::Null => Field::Null,
        Field::Invalid => Field::Invalid,
    }
}

/// 400 `invalid_params` unless the params satisfy the entry (templates relaxed).
fn check_params(entry: &CatalogEntry, params: &Value) -> ApiResult<()> {
    params::check(entry, params, Mode::Configured, "params")
        .into_result()
        .map_err(ApiError::invalid_params)
}

/// Create an action from a catalog entry.
#[utoipa::path(post, path = "/actions", tag = "actions",
    request_body = inline(Object),
    responses((status = 201, body = DataOf<Action>), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_action(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(&body, &mut errs) else {
        return Err(ApiError::validation(errs));
    };
    let entry = match o.uuid("catalogEntryId", Req::Required, &mut errs) {
        Field::Value(id) => {
            let e = catalog::by_id(id);
            if e.is_none() {
                errs.push(
                    "catalogEntryId",
                    "unknown_reference",
                    format!("Catalog entry {id} does not exist"),
                );
            }
            e
        }
        _ => None,
    };
    let name = o.string("name", Req::Required, 1, 200, &mut errs);
    let description = o.string("description", Req::Nullable, 0, 2000, &mut errs);
    let params = read_params(&o, &mut errs);
    errs.into_result().map_err(ApiError::validation)?;
    let (Some(entry), Field::Value(name)) = (entry, name) else {
        unreachable!("required fields are present when there are no errors");
    };
    let params = Value::Object(params.value().unwrap_or_default());
    check_params(entry, &params)?;
    let now = Ts::now();
    let action = Action {
        id: new_id(),
        catalog_entry_id: entry.id,
        name,
        description: description.value(),
        service: entry.service.clone(),
        method: entry.method.clone(),
        params,
        params_schema: entry.params_schema.clone(),
        owner_id: caller.owner_id.clone(),
        created_by: Some(caller.actor_id.clone()),
        user_id: caller.owner_id.clone(),
        created_at: now,
        updated_at: now,
    };
    let _guard = app.registry.lock().await;
    app.registry
        .apply(vec![Change::PutAction(action.clone())])
        .await?;
    Ok(created(action))
}

/// Get an action.
#[utoipa::path(get, path = "/actions/{actionId}", tag = "actions",
    params(("actionId" = String, Path)),
    responses((status = 200, body = DataOf<Action>), (status = 404, body = ErrorBody)))]
async fn get_action(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let id = path_id("Action", &raw)?;
    let defs = app.registry.read();
    let a = defs
        .action(&caller.owner_id, id)
        .ok_or_else(|| ApiError::not_found("Action", &raw))?;
    Ok(data(a.as_ref()))
}

/// Rename an action, change its description or replace its params.
#[utoipa::path(patch, path = "/actions/{actionId}", tag = "actions",
    params(("actionId" = String, Path)), request_body = inline(Object),
    responses((status = 200, body = DataOf<Action>), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_action(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let id = path_id("Action", &raw)?;
    let _guard = app.registry.lock().await;
    let current = app
        .registry
        .read()
        .action(&caller.owner_id, id)
        .cloned()
        .ok_or_else(|| ApiError::not_found("Action", &raw))?;
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(&body, &mut errs) else {
        return Err(ApiError::validation(errs));
    };
    // `catalogEntryId` is immutable and, like any unknown field, ignored.
    let name = o.string("name", Req::Optional, 1, 200, &mut errs);
    let description = o.string("description", Req::Nullable, 0, 2000, &mut errs);
    let params = read_params(&o, &mut errs);
    errs.into_result().map_err(ApiError::validation)?;
    let mut a = (*current).clone();
    if let Field::Value(n) = name {
        a.name = n;
    }
    if let Some(d) = description.patch() {
        a.description = d;
    }
    if let Field::Value(p) = params {
        let p = Value::Object(p);
        match catalog::by_id(a.catalog_entry_id) {
            Some(entry) => check_params(entry, &p)?,
            // An entry a later server version dropped: judge by the schema the action
            // was created with.
            None => params::check_schema(
                a.params_schema.as_ref(),
                &a.method,
                &a.service,
                &p,
                Mode::Configured,
                "params",
            )
            .into_result()
            .map_err(ApiError::invalid_params)?,
        }
        a.params = p;
    }
    a.updated_at = Ts::now();
    app.registry
        .apply(vec![Change::PutAction(a.clone())])
        .await?;
    Ok(data(a))
}

/// Delete an action no flow uses.
#[utoipa::path(delete, path = "/actions/{actionId}", tag = "actions",
    params(("actionId" = String, Path)),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_action(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let id = path_id("Action", &raw)?;
    let _guard = app.registry.lock().await;
    {
        let defs = app.registry.read();
        defs.action(&caller.owner_id, id)
            .ok_or_else(|| ApiError::not_found("Action", &raw))?;
        super::common::refuse_if_used(&defs, &caller.owner_id, "Action", id, |f| {
            f.nodes.iter().any(|n| n.action_id == id)
        })?;
    }
    app.registry.apply(vec![Change::DeleteAction(id)]).await?;
    Ok(message(format!("Action {id} deleted")))
}
