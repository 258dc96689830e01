//! flowrun-api: the HTTP surface of flowrun (axum).
//!
//! Every route is served under `/v1` and at the root. Layers, outermost first: trailing-slash
//! normalisation, request ids and tracing, error-body mapping (405/413/404 from the framework
//! become spec error bodies), then per route: bearer auth and `Idempotency-Key` handling.
//! Handlers are grouped by resource in [`routes`]; each reads the in-memory definitions
//! ([`flowrun_store::Registry`]) and writes through it.

pub mod auth;
pub mod body;
pub mod error;
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
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use flowrun_engine::Engine;
use flowrun_store::{Registry, Store};
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

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
    let mut api = api
        .route_layer(from_fn_with_state(app.clone(), idempotency::idempotency))
        .route_layer(from_fn_with_state(app.clone(), auth::require_key));
    let mut public = public;
    if app.config.metrics.is_some() {
        // Outside auth, so refused requests are counted too.
        let series = metrics::HttpSeries::default();
        api = api.route_layer(from_fn_with_state(series.clone(), metrics::record_http));
        public = public.route_layer(from_fn_with_state(series, metrics::record_http));
    }
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
/// trailing-slash normalisation, request ids and tracing, error-body mapping, body limit.
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
    let stack = tower::ServiceBuilder::new()
        .map_response(IntoResponse::into_response)
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(from_fn(map_framework_errors))
        .layer(axum::Extension(BodyLimit(limit)))
        .layer(DefaultBodyLimit::max(limit))
        .service(router(app));
    NormalizePathLayer::trim_trailing_slash().layer(stack)
}

/// Gives framework-generated errors (405 with `Allow`, 413, 404 of nested routers) the spec's
/// error body.
async fn map_framework_errors(req: Request, next: Next) -> Response {
    // The URI's parts are shared buffers: a clone copies no path.
    let uri = req.uri().clone();
    let path = uri.path();
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || resp.status().is_success() || resp.status().is_redirection() {
        return resp;
    }
    let mapped = match resp.status() {
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("Method not allowed on {path}"),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(0),
        StatusCode::NOT_FOUND => ApiError::route_not_found(path),
        _ => return resp,
    };
    let allow = resp.headers().get(header::ALLOW).cloned();
    let mut out = mapped.into_response();
    if let Some(a) = allow {
        out.headers_mut().insert(header::ALLOW, a);
    }
    out
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
