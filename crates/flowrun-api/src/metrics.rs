//! `GET /metrics`: Prometheus text exposition (§3.12) of this node.
//!
//! Counters and histograms are recorded where things happen (HTTP requests here; ingest,
//! executions, aborts, schedule fires and webhook deliveries in the engine) through the
//! `metrics` facade; the binary installs the Prometheus recorder once per process and hands
//! its handle to the API. Gauges that describe state rather than events (queue depth, device
//! states, runs on this node) are read at scrape time, so they are right after a restart and
//! with several nodes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
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

/// The HTTP series of this router, registered once per (route, method, status) and then
/// reused: registering builds and hashes a labelled key and looks it up in the recorder's
/// shared map, a cost every request would otherwise pay twice.
#[derive(Clone, Default)]
pub struct HttpSeries(Arc<RwLock<HashMap<String, Vec<RouteSeries>>>>);

struct RouteSeries {
    method: Method,
    status: StatusCode,
    requests: Counter,
    duration: Histogram,
}

impl HttpSeries {
    /// Counts one request and its latency by matched route, method and status.
    pub(crate) fn record(&self, route: &str, method: &Method, status: StatusCode, seconds: f64) {
        let find = |all: &Vec<RouteSeries>| {
            all.iter()
                .position(|s| s.status == status && s.method == *method)
        };
        {
            let known = self.0.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = known.get(route).and_then(|all| find(all).map(|i| &all[i])) {
                s.requests.increment(1);
                s.duration.record(seconds);
                return;
            }
        }
        let mut known = self.0.write().unwrap_or_else(|e| e.into_inner());
        let all = known.entry(route.to_owned()).or_default();
        let i = find(all).unwrap_or_else(|| {
            all.push(RouteSeries {
                method: method.clone(),
                status,
                requests: metrics::counter!("flowrun_http_requests_total",
                    "method" => method.as_str().to_owned(), "route" => route.to_owned(),
                    "status" => status.as_u16().to_string()),
                duration: metrics::histogram!("flowrun_http_request_duration_seconds",
                    "method" => method.as_str().to_owned(), "route" => route.to_owned()),
            });
            all.len() - 1
        });
        all[i].requests.increment(1);
        all[i].duration.record(seconds);
    }
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
