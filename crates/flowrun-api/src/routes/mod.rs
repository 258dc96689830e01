//! Handlers, one module per resource. Each module exposes `router()`; paths are written
//! without `/v1` (the service mounts them at both places).

pub mod actions;
pub mod artifacts;
pub mod catalog;
pub mod common;
pub mod devices;
pub mod dry_runs;
pub mod events;
pub mod executions;
pub mod flow_actions;
pub mod flows;
pub mod ops;
pub mod timezones;
pub mod triggers;
pub mod verification;
pub mod webhooks;

use utoipa_axum::router::OpenApiRouter;

use crate::App;

/// Every authenticated route.
pub fn api_router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .merge(triggers::router())
        .merge(catalog::router())
        .merge(actions::router())
        .merge(flows::router())
        .merge(verification::router())
        .merge(dry_runs::router())
        .merge(flow_actions::router())
        .merge(devices::router())
        .merge(executions::router())
        .merge(events::router())
        .merge(timezones::router())
        .merge(webhooks::router())
        .merge(artifacts::router())
}

/// Routes served without a key (their own token is the authority).
pub fn public_router() -> OpenApiRouter<App> {
    artifacts::public_router()
}
