//! The action catalog and services (§3.2, §3.3): global, read-only data describing every
//! method a step can run. Same content for every owner, still behind a valid key.

use axum::extract::Path;
use axum::response::Response;
use flowrun_core::catalog::{self, CatalogEntry, SERVICES, ServiceMethod};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::common::schema::{DataOf, ErrorBody, ListOf};
use super::common::{data, ok, path_id};
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::query::{Query, paginate};

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(list_catalog))
        .routes(routes!(get_catalog_entry))
        .routes(routes!(list_services))
        .routes(routes!(list_service_methods))
}

/// List the action catalog, ordered by service then method.
#[utoipa::path(get, path = "/action-catalog", tag = "action-catalog",
    params(("service" = Option<String>, Query), ("page" = Option<i64>, Query), ("pageSize" = Option<i64>, Query)),
    responses((status = 200, body = ListOf<CatalogEntry>), (status = 422, body = ErrorBody)))]
async fn list_catalog(mut q: Query) -> ApiResult<Response> {
    let service = q.enum_many("service", &SERVICES);
    let page = q.page();
    q.finish()?;
    // `entries()` is already in the fixed (service, method) order.
    let items: Vec<&CatalogEntry> = catalog::entries()
        .iter()
        .filter(|e| service.as_ref().is_none_or(|s| s.contains(&e.service)))
        .collect();
    Ok(ok(paginate(&items, page)))
}

/// Get one catalog entry.
#[utoipa::path(get, path = "/action-catalog/{catalogEntryId}", tag = "action-catalog",
    params(("catalogEntryId" = String, Path)),
    responses((status = 200, body = DataOf<CatalogEntry>), (status = 404, body = ErrorBody)))]
async fn get_catalog_entry(Path(raw): Path<String>) -> ApiResult<Response> {
    let id = path_id("Catalog entry", &raw)?;
    let entry = catalog::by_id(id).ok_or_else(|| ApiError::not_found("Catalog entry", &raw))?;
    Ok(data(entry))
}

/// List the services, in their fixed order.
#[utoipa::path(get, path = "/actions/services", tag = "actions",
    responses((status = 200, body = DataOf<Vec<String>>)))]
async fn list_services() -> ApiResult<Response> {
    Ok(data(SERVICES))
}

/// List a service's methods and their params.
#[utoipa::path(get, path = "/actions/services/{service}/methods", tag = "actions",
    params(("service" = String, Path)),
    responses((status = 200, body = DataOf<Vec<ServiceMethod>>), (status = 404, body = ErrorBody)))]
async fn list_service_methods(Path(service): Path<String>) -> ApiResult<Response> {
    let methods = catalog::service_methods(&service)
        .ok_or_else(|| ApiError::not_found("Service", &service))?;
    Ok(data(methods))
}
