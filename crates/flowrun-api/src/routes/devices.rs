//! Devices registry (§3.11): the phones flows act on, by provider (`adb` serial or Mobilerun
//! cloud device id).

use axum::extract::{Path, State};
use axum::response::Response;
use flowrun_core::model::Device;
use flowrun_core::validate::{Field, Obj, Req};
use flowrun_core::{FieldErrors, Ts, new_id};
use flowrun_store::Change;
use serde_json::json;
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
        .routes(routes!(list_devices, create_device))
        .routes(routes!(get_device, update_device, delete_device))
}

const PROVIDERS: [&str; 2] = ["adb", "mobilerun"];
const STATES: [&str; 4] = ["unknown", "online", "offline", "busy"];

/// List devices.
#[utoipa::path(get, path = "/devices", tag = "devices",
    params(("provider" = Option<String>, Query), ("state" = Option<String>, Query),
           ("search" = Option<String>, Query), ("page" = Option<i64>, Query), ("pageSize" = Option<i64>, Query)),
    responses((status = 200, body = ListOf<Device>), (status = 422, body = ErrorBody)))]
async fn list_devices(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    mut q: Query,
) -> ApiResult<Response> {
    let provider = q.enum_many("provider", &PROVIDERS);
    let state = q.enum_many("state", &STATES);
    let search = q.search();
    let page = q.page();
    q.finish()?;
    let busy = app.engine.busy_devices();
    let defs = app.registry.read();
    let mut items: Vec<&Device> = defs
        .devices
        .values()
        .map(|d| d.as_ref())
        .filter(|d| d.owner_id == caller.owner_id)
        .filter(|d| provider.as_ref().is_none_or(|p| p.contains(&d.provider)))
        .filter(|d| {
            let effective = if busy.contains(&d.id) {
                "busy"
            } else {
                d.state.as_str()
            };
            state
                .as_ref()
                .is_none_or(|s| s.iter().any(|x| x == effective))
        })
        .filter(|d| {
            search
                .as_ref()
                .is_none_or(|n| matches_search(n, &[Some(&d.name), Some(&d.address)]))
        })
        .collect();
    items.sort_by(|a, b| ordered(a.created_at.cmp(&b.created_at), &a.id, &b.id, true));
    let items: Vec<Device> = items.into_iter().map(|d| with_lease(d, &busy)).collect();
    Ok(ok(paginate(&items, page)))
}

/// Register a device.
#[utoipa::path(post, path = "/devices", tag = "devices",
    request_body = inline(Object),
    responses((status = 201, body = DataOf<Device>), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_device(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(&body, &mut errs) else {
        return Err(ApiError::validation(errs));
    };
    let name = o.string("name", Req::Required, 1, 200, &mut errs);
    let provider = o.enumeration("provider", Req::Required, &PROVIDERS, &mut errs);
    let address = o.string("address", Req::Required, 1, 255, &mut errs);
    errs.into_result().map_err(ApiError::validation)?;
    let (Field::Value(name), Field::Value(provider), Field::Value(address)) =
        (name, provider, address)
    else {
        unreachable!("required fields are present when there are no errors");
    };
    let _guard = app.registry.lock().await;
    check_unique(&app, &caller, &provider, &address, None)?;
    let now = Ts::now();
    let device = Device {
        id: new_id(),
        name,
        provider,
        address,
        state: "unknown".to_string(),
        created_at: now,
        updated_at: now,
        owner_id: caller.owner_id.clone(),
    };
    app.registry
        .apply(vec![Change::PutDevice(device.clone())])
        .await?;
    app.engine.probe_device(device.id);
    Ok(created(device))
}

/// A device as read: `busy` while a run holds its lease (§4.10).
fn with_lease(d: &Device, busy: &[uuid::Uuid]) -> Device {
    let mut d = d.clone();
    if busy.contains(&d.id) {
        d.state = "busy".to_string();
    }
    d
}

fn check_unique(
    app: &App,
    caller: &Caller,
    provider: &str,
    address: &str,
    except: Option<uuid::Uuid>,
) -> ApiResult<()> {
    let defs = app.registry.read();
    let clash = defs.devices.values().find(|d| {
        d.owner_id == caller.owner_id
            && d.provider == provider
            && d.address == address
            && Some(d.id) != except
    });
    match clash {
        Some(d) => Err(ApiError::conflict(
            "already_exists",
            format!("A {provider} device with address '{address}' is already registered"),
        )
        .with_details(json!({ "deviceId": d.id }))),
        None => Ok(()),
    }
}

/// Get a device.
#[utoipa::path(get, path = "/devices/{deviceId}", tag = "devices",
    params(("deviceId" = String, Path)),
    responses((status = 200, body = DataOf<Device>), (status = 404, body = ErrorBody)))]
async fn get_device(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let id = path_id("Device", &raw)?;
    let defs = app.registry.read();
    let d = defs
        .device(&caller.owner_id, id)
        .ok_or_else(|| ApiError::not_found("Device", &raw))?;
    Ok(data(with_lease(d, &app.engine.busy_devices())))
}

/// Rename a device or change its address.
#[utoipa::path(patch, path = "/devices/{deviceId}", tag = "devices",
    params(("deviceId" = String, Path)), request_body = inline(Object),
    responses((status = 200, body = DataOf<Device>), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_device(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let id = path_id("Device", &raw)?;
    let _guard = app.registry.lock().await;
    let current = app
        .registry
        .read()
        .device(&caller.owner_id, id)
        .cloned()
        .ok_or_else(|| ApiError::not_found("Device", &raw))?;
    let mut errs = FieldErrors::new();
    let Some(o) = Obj::root(&body, &mut errs) else {
        return Err(ApiError::validation(errs));
    };
    let name = o.string("name", Req::Optional, 1, 200, &mut errs);
    let address = o.string("address", Req::Optional, 1, 255, &mut errs);
    errs.into_result().map_err(ApiError::validation)?;
    let mut d = (*current).clone();
    if let Field::Value(n) = name {
        d.name = n;
    }
    let mut readdressed = false;
    if let Field::Value(a) = address
        && a != d.address
    {
        check_unique(&app, &caller, &d.provider, &a, Some(d.id))?;
        d.address = a;
        d.state = "unknown".to_string();
        readdressed = true;
    }
    d.updated_at = Ts::now();
    app.registry
        .apply(vec![Change::PutDevice(d.clone())])
        .await?;
    if readdressed {
        app.engine.probe_device(d.id);
    }
    Ok(data(with_lease(&d, &app.engine.busy_devices())))
}

/// Delete a device that no flow uses.
#[utoipa::path(delete, path = "/devices/{deviceId}", tag = "devices",
    params(("deviceId" = String, Path)),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_device(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let id = path_id("Device", &raw)?;
    let _guard = app.registry.lock().await;
    {
        let defs = app.registry.read();
        defs.device(&caller.owner_id, id)
            .ok_or_else(|| ApiError::not_found("Device", &raw))?;
        super::common::refuse_if_used(&defs, &caller.owner_id, "Device", id, |f| {
            f.flow.device_ids.contains(&id)
        })?;
    }
    app.registry.apply(vec![Change::DeleteDevice(id)]).await?;
    Ok(message(format!("Device {id} deleted")))
}
