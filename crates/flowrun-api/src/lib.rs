//! flowrun-api: the HTTP surface of flowrun (axum).
//!
//! Every route is served under `/v1` and at the root. Layers, outermost first: trailing-slash
//! normalisation, the request frame (request ids, error-body mapping of 405/413/404 from the
//! framework, logging: [`frame`]), then per route one gate: metrics, bearer auth and
//! `Idempotency-Key` handling ([`gate`]).
//! Handlers are grouped by resource in [`routes`]; each reads the in-memory definitions
//! ([`flowrun_store::Registry`]) and writes through it.

pub mod auth;
pub mod body;
pub mod error;
pub mod frame;
pub mod gate;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod query;
pub mod routes;
pub mod signing;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use flowrun_engine::Engine;
use flowrun_store::{Registry, Store};
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;

pub use error::{ApiError, ApiResult};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Settings of the HTTP layer.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Request body limit in bytes (default 1 MiB).
    pub body_limit: usize,
    /// Routine limit per (owner, agent bucket); `None` = unlimited.
    pub routine_limit: Option<u64>,
    /// The process's Prometheus recorder; `None` = `/metrics` disabled (404).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Origin of signed artifact URLs (`https://flowrun.example.com`, no trailing slash);
    /// `None` = the request's scheme and `Host`.
    pub public_url: Option<String>,
    /// Signs artifact URLs; shared by every node on one database.
    pub signing_key: signing::SigningKey,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit: 1 << 20,
            routine_limit: None,
            metrics: None,
            public_url: None,
            signing_key: signing::SigningKey::random(),
        }
    }
}

pub struct AppInner {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub engine: Arc<Engine>,
    pub keys: auth::KeyCache,
    pub config: ApiConfig,
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct App(pub Arc<AppInner>);

impl Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl App {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        engine: Arc<Engine>,
        config: ApiConfig,
    ) -> Self {
        App(Arc::new(AppInner {
            store,
            registry,
            engine,
            keys: auth::KeyCache::default(),
            config,
        }))
    }
}

/// The request body limit, visible to body extractors.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Every route under `/v1` and at the root, with per-route auth and idempotency.
pub fn router(app: App) -> Router {
    let (api, mut doc) = routes::api_router().split_for_parts();
    let (public, public_doc) = routes::public_router().split_for_parts();
    doc.merge(public_doc);
    let doc = Arc::new(openapi::finish(doc));
    // One series for both, so a route has one set of counters whichever router serves it.
    let series = app
        .config
        .metrics
        .is_some()
        .then(metrics::HttpSeries::default);
    let api = api.route_layer(from_fn_with_state(
        gate::Gate::new(app.clone(), series.clone()),
        gate::api,
    ));
    let public = match series {
        Some(series) => public.route_layer(from_fn_with_state(series, gate::public)),
        None => public,
    };
    let inner: Router<App> = Router::new()
        .merge(routes::ops::router(doc))
        .merge(public)
        .merge(api);
    Router::new()
        .nest("/v1", inner.clone())
        .merge(inner)
        .fallback(|req: Request| async move {
            ApiError::route_not_found(req.uri().path()).into_response()
        })
        .with_state(app)
}

/// The complete service: the router inside the request-wide layers, outermost first:
/// trailing-slash normalisation, the request frame ([`frame`]), the body limit.
///
/// The layers wrap the router once rather than each route (`Router::layer`), so a request
/// does not clone a boxed copy of the whole stack for its route.
pub fn service(
    app: App,
) -> impl tower::Service<
    Request,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let limit = app.config.body_limit;
    let router = DefaultBodyLimit::max(limit).layer(router(app));
    NormalizePathLayer::trim_trailing_slash().layer(frame::Frame::new(router, limit))
}

/// Serves until SIGINT/SIGTERM, then drains in-flight requests.
pub async fn serve(listener: tokio::net::TcpListener, app: App) -> std::io::Result<()> {
    axum::serve(
        listener,
        axum::ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(service(
            app,
        )),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// `application/json` header value, shared by handlers that build responses by hand.
pub const JSON: HeaderValue = HeaderValue::from_static("application/json");
