//! Executions (§3.8): the run history, its metrics, and abort — the core cancellation call.

use axum::extract::{Path, State};
use axum::response::Response;
use flowrun_core::execution::{Execution, ExecutionListItem, ExecutionSummary, Metrics};
use flowrun_engine::view;
use flowrun_store::{AbortOutcome, ExecFilter, ExecOrder, ExecOrderBy};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::common::schema::{DataOf, ErrorBody, ListOf};
use super::common::{Caller, Extension, data, ok, path_id};
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::query::{Query, pagination};

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(list_executions))
        .routes(routes!(execution_metrics))
        .routes(routes!(get_execution))
        .routes(routes!(abort_execution))
}

const STATUSES: [&str; 7] = flowrun_store::executions::STATUSES;

/// Reads the filters shared by the list and metrics.
fn filter(q: &mut Query, with_list_filters: bool) -> ExecFilter {
    let mut f = ExecFilter {
        flow_id: q.uuid("flowId"),
        trigger_id: q.uuid("triggerId"),
        from: q.datetime("from").map(|t| t.millis()),
        to: q.datetime("to").map(|t| t.millis()),
        ..Default::default()
    };
    if with_list_filters {
        f.invocation_id = q.str("invocationId");
        f.statuses = q.enum_many("status", &STATUSES).unwrap_or_default();
        f.search = q.search();
    }
    f
}

/// List executions.
#[utoipa::path(get, path = "/executions", tag = "executions",
    params(("flowId" = Option<String>, Query), ("triggerId" = Option<String>, Query),
           ("invocationId" = Option<String>, Query), ("status" = Option<String>, Query),
           ("from" = Option<String>, Query), ("to" = Option<String>, Query),
           ("search" = Option<String>, Query), ("orderBy" = Option<String>, Query),
           ("orderByDirection" = Option<String>, Query),
           ("page" = Option<i64>, Query), ("pageSize" = Option<i64>, Query)),
    responses((status = 200, body = ListOf<ExecutionListItem>), (status = 422, body = ErrorBody)))]
async fn list_executions(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    mut q: Query,
) -> ApiResult<Response> {
    let f = filter(&mut q, true);
    let (by, desc) = q.order(&["startedAt", "finishedAt", "status"], "startedAt");
    let page = q.page();
    q.finish()?;
    let by = match by.as_str() {
        "finishedAt" => ExecOrderBy::FinishedAt,
        "status" => ExecOrderBy::Status,
        _ => ExecOrderBy::StartedAt,
    };
    let offset = (page.page - 1).saturating_mul(page.page_size);
    let (rows, total) = app
        .store
        .list_executions(
            &caller.owner_id,
            &f,
            ExecOrder { by, desc },
            offset,
            page.page_size,
        )
        .await?;
    let items: Vec<ExecutionListItem> = rows.iter().map(view::execution_list_item).collect();
    Ok(ok(json!({
        "items": items,
        "pagination": pagination(page, total.max(0) as u64),
    })))
}

/// Aggregates over the executions a list with the same filters would return.
#[utoipa::path(get, path = "/executions/metrics", tag = "executions",
    params(("flowId" = Option<String>, Query), ("triggerId" = Option<String>, Query),
           ("from" = Option<String>, Query), ("to" = Option<String>, Query)),
    responses((status = 200, body = DataOf<Metrics>), (status = 422, body = ErrorBody)))]
async fn execution_metrics(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    mut q: Query,
) -> ApiResult<Response> {
    let f = filter(&mut q, false);
    q.finish()?;
    let m = app.store.execution_metrics(&caller.owner_id, &f).await?;
    Ok(data(view::metrics(&m)))
}

/// Get one execution with its progress and step results.
#[utoipa::path(get, path = "/executions/{executionId}", tag = "executions",
    params(("executionId" = String, Path)),
    responses((status = 200, body = DataOf<Execution>), (status = 404, body = ErrorBody)))]
async fn get_execution(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let id = path_id("Execution", &raw)?;
    let row = app
        .store
        .get_execution(&caller.owner_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("Execution", &raw))?;
    Ok(data(view::execution(&row)))
}

/// Abort an execution: a pending one never starts; a running one stops at once (the
/// in-flight step is cancelled and no further step starts).
#[utoipa::path(post, path = "/executions/{executionId}/abort", tag = "executions",
    params(("executionId" = String, Path)),
    responses((status = 200, body = DataOf<ExecutionSummary>), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn abort_execution(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let id = path_id("Execution", &raw)?;
    match app.engine.abort(&caller.owner_id, id).await? {
        AbortOutcome::Cancelled(row) => Ok(data(view::execution_summary(&row))),
        AbortOutcome::Terminal(row) => Err(ApiError::conflict(
            "execution_terminal",
            format!("Execution {id} is already {}", row.status),
        )
        .with_details(json!({ "status": row.status }))),
        AbortOutcome::NotFound => Err(ApiError::not_found("Execution", &raw)),
    }
}
