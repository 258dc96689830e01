//! The per-route gate: what a matched route runs before its handler, in one middleware.
//!
//! Authenticated routes: the request counters and latency histogram (outside auth, so
//! refused requests are counted too), then bearer auth ([`crate::auth`]), then the
//! `Idempotency-Key` ([`crate::idempotency`]). Public routes: the counters only.
//!
//! One `from_fn` layer instead of three: each such layer boxes the future of everything
//! inside it and clones a boxed copy of the route's service per request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::App;
use crate::metrics::HttpSeries;

/// The state of the authenticated routes' gate.
#[derive(Clone)]
pub struct Gate {
    app: App,
    /// `None` = metrics disabled.
    series: Option<HttpSeries>,
}

impl Gate {
    pub fn new(app: App, series: Option<HttpSeries>) -> Self {
        Self { app, series }
    }
}

/// Authenticated routes: metrics, auth, idempotency.
pub async fn api(State(gate): State<Gate>, req: Request, next: Next) -> Response {
    match &gate.series {
        Some(series) => counted(series, req, |req| guarded(&gate.app, req, next)).await,
        None => guarded(&gate.app, req, next).await,
    }
}

/// Public routes: metrics.
pub async fn public(State(series): State<HttpSeries>, req: Request, next: Next) -> Response {
    counted(&series, req, |req| next.run(req)).await
}

async fn guarded(app: &App, req: Request, next: Next) -> Response {
    match crate::auth::authenticate(app, req).await {
        Ok(req) => crate::idempotency::idempotency(app, req, next).await,
        Err(refused) => refused,
    }
}

async fn counted<F: Future<Output = Response>>(
    series: &HttpSeries,
    req: Request,
    run: impl FnOnce(Request) -> F,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let resp = run(req).await;
    series.record(
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        &method,
        resp.status(),
        started.elapsed().as_secs_f64(),
    );
    resp
}
