//! `GET /metrics`: Prometheus text exposition (§3.12) of this node.
//!
//! Counters and histograms are recorded where things happen (HTTP requests here; ingest,
//! executions, aborts, schedule fires and webhook deliveries in the engine) through the
//! `metrics` facade; the binary installs the Prometheus recorder once per process and hands
//! its handle to the API. Gauges that describe state rather than events (queue depth, device
//! states, runs on this node) are read at scrape time, so they are right after a restart and
//! with several nodes.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::App;

/// Latency buckets in seconds: from 100 µs (the ingest target) to a minute (device steps).
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    15.0, 60.0,
];

/// Installs the process-wide Prometheus recorder; call once, at start.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
}

/// Counts every request and its latency by method, matched route and status.
pub async fn record_http(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("flowrun_http_requests_total",
        "method" => method.clone(), "route" => route.clone(), "status" => status)
    .increment(1);
    metrics::histogram!("flowrun_http_request_duration_seconds",
        "method" => method, "route" => route)
    .record(started.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics` → 200 text exposition, or 404 when metrics are disabled.
pub async fn scrape(State(app): State<App>) -> Response {
    let Some(handle) = &app.config.metrics else {
        return crate::ApiError::route_not_found("/metrics").into_response();
    };
    if let Ok(depth) = app.store.queue_depth().await {
        metrics::gauge!("flowrun_queue_depth").set(depth as f64);
    }
    metrics::gauge!("flowrun_executions_running_on_node").set(app.engine.running_count() as f64);
    let busy = app.engine.busy_devices();
    let mut states: BTreeMap<&str, u64> = ["online", "offline", "unknown", "busy"]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
    for d in app.registry.read().devices.values() {
        let state = if busy.contains(&d.id) {
            "busy"
        } else {
            d.state.as_str()
        };
        if let Some(n) = states.get_mut(state) {
            *n += 1;
        }
    }
    for (state, n) in states {
        metrics::gauge!("flowrun_devices", "state" => state).set(n as f64);
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}
