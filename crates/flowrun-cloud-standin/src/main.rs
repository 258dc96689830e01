//! `flowrun-cloud-standin`: a local HTTP server standing in for the Mobilerun cloud REST API
//! in flowrun's tests. flowrun's real `mobilerun` provider talks to it over HTTP exactly as
//! it talks to the cloud (request shapes of the public Tasks and Devices API).
//!
//! It serves, under an optional `/v1` prefix: `POST /tasks` (or `/tasks/`), `GET
//! /tasks/{id}/status`, `GET /tasks/{id}`, `POST /tasks/{id}/cancel`; the same four for agent
//! runs under `/agents/{agentId}/runs`; `GET /devices/{id}`, `POST /devices/{id}/tap|swipe`,
//! `POST|PUT|DELETE /devices/{id}/keyboard`, `PUT|PATCH /devices/{id}/apps/{package}`, `GET
//! /devices/{id}/screenshot` (PNG) and `GET /devices/{id}/ui-state`.
//!
//! Tests drive it through `/_` routes (never recorded):
//! - `GET /_requests` → `{items: [{method, path, query, body, authorization, at}]}` — every
//!   cloud request in arrival order; `at` is Unix time in milliseconds (fractional).
//! - `POST /_scripts` `{durationMs?, statuses?, finalStatus?, succeeded?, output?, steps?,
//!   message?, verdict?}` — queues the behaviour of the next created task or agent run
//!   (FIFO; without one a job completes at once, succeeded). With `statuses`, successive
//!   status polls answer them in order before `finalStatus` (`completed`); otherwise the job
//!   is `running` for `durationMs`.
//! - `PUT /_devices/{id}` `{missing?, texts?}` — a missing device answers 404 everywhere;
//!   `texts` appear as nodes of its UI state.
//!
//! With `--api-key`, any other key is answered 401.
//!
//! Usage: `flowrun-cloud-standin [--listen 127.0.0.1:0] [--api-key KEY]`; prints
//! `cloud stand-in listening on http://<addr>` once it accepts connections.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use serde_json::{Value, json};

/// A 1×1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0,
    0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d, 0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

#[derive(Parser)]
#[command(
    name = "flowrun-cloud-standin",
    about = "Local stand-in of the Mobilerun cloud API"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The only key accepted (`Authorization: Bearer <key>`); any key when unset.
    #[arg(long)]
    api_key: Option<String>,
}

/// The scripted behaviour of one task or agent run.
#[derive(Clone)]
struct Script {
    duration: Duration,
    statuses: Option<Vec<String>>,
    final_status: String,
    succeeded: Value,
    output: Value,
    steps: Value,
    message: Value,
    verdict: Value,
}

impl Script {
    fn from_json(v: &Value) -> Script {
        Script {
            duration: Duration::from_millis(v["durationMs"].as_u64().unwrap_or(0)),
            statuses: v["statuses"].as_array().map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            }),
            final_status: v["finalStatus"].as_str().unwrap_or("completed").to_string(),
            succeeded: v.get("succeeded").cloned().unwrap_or(json!(true)),
            output: v.get("output").cloned().unwrap_or(Value::Null),
            steps: v.get("steps").cloned().unwrap_or(json!(1)),
            message: v.get("message").cloned().unwrap_or(Value::Null),
            verdict: v.get("verdict").cloned().unwrap_or(Value::Null),
        }
    }
}

/// A created task or agent run.
struct Job {
    created: Instant,
    script: Script,
    cancelled: bool,
    polls: usize,
    request: Value,
}

impl Job {
    /// The status a poll sees now (advances a scripted sequence).
    fn poll(&mut self) -> String {
        if self.cancelled {
            return "cancelled".into();
        }
        if let Some(seq) = &self.script.statuses {
            let i = self.polls;
            self.polls += 1;
            return seq
                .get(i)
                .cloned()
                .unwrap_or_else(|| self.script.final_status.clone());
        }
        self.current()
    }

    /// The status without advancing anything.
    fn current(&self) -> String {
        if self.cancelled {
            "cancelled".into()
        } else if let Some(seq) = &self.script.statuses {
            match self.polls {
                0 => "running".into(),
                n => seq
                    .get(n - 1)
                    .cloned()
                    .unwrap_or_else(|| self.script.final_status.clone()),
            }
        } else if self.created.elapsed() < self.script.duration {
            "running".into()
        } else {
            self.script.final_status.clone()
        }
    }

    fn terminal(status: &str) -> bool {
        matches!(status, "completed" | "failed" | "cancelled")
    }

    /// The job's result fields (null while it runs).
    fn result(&self, status: &str) -> Value {
        let done = Job::terminal(status);
        let pick = |v: &Value| if done { v.clone() } else { Value::Null };
        json!({
            "status": status,
            "succeeded": if self.cancelled { json!(false) } else { pick(&self.script.succeeded) },
            "output": pick(&self.script.output),
            "steps": pick(&self.script.steps),
            "message": pick(&self.script.message),
        })
    }
}

#[derive(Default)]
struct DeviceScript {
    missing: bool,
    texts: Vec<String>,
}

#[derive(Default)]
struct Cloud {
    api_key: Option<String>,
    requests: Mutex<Vec<Value>>,
    scripts: Mutex<VecDeque<Script>>,
    jobs: Mutex<HashMap<String, Job>>,
    devices: Mutex<HashMap<String, DeviceScript>>,
}

type Shared = Arc<Cloud>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn not_found(what: &str) -> Response {
    answer(
        StatusCode::NOT_FOUND,
        json!({ "title": "Not Found", "status": 404, "detail": format!("{what} not found") }),
    )
}

async fn handle(
    State(cloud): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let json_body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    if let Some(control) = path.strip_prefix("/_") {
        return control_route(&cloud, &method, control, &json_body);
    }
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    lock(&cloud.requests).push(json!({
        "method": method.as_str(),
        "path": path,
        "query": uri.query(),
        "body": json_body,
        "authorization": auth,
        "at": now_ms(),
    }));
    if let Some(key) = &cloud.api_key
        && auth.as_deref() != Some(&format!("Bearer {key}"))
    {
        return answer(
            StatusCode::UNAUTHORIZED,
            json!({ "title": "Unauthorized", "status": 401, "detail": "invalid API key" }),
        );
    }
    let rest = path.strip_prefix("/v1").unwrap_or(&path);
    let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    cloud_route(&cloud, &method, &segs, &json_body)
}

fn control_route(cloud: &Cloud, method: &Method, path: &str, body: &Value) -> Response {
    let segs: Vec<&str> = path.split('/').collect();
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["requests"]) => {
            let items = lock(&cloud.requests).clone();
            answer(StatusCode::OK, json!({ "items": items }))
        }
        ("DELETE", ["requests"]) => {
            lock(&cloud.requests).clear();
            answer(StatusCode::OK, json!({}))
        }
        ("POST", ["scripts"]) => {
            lock(&cloud.scripts).push_back(Script::from_json(body));
            answer(StatusCode::OK, json!({}))
        }
        ("PUT", ["devices", id]) => {
            let mut devices = lock(&cloud.devices);
            let d = devices.entry(id.to_string()).or_default();
            d.missing = body["missing"].as_bool().unwrap_or(false);
            d.texts = body["texts"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            answer(StatusCode::OK, json!({}))
        }
        _ => not_found("control route"),
    }
}

fn cloud_route(cloud: &Cloud, method: &Method, segs: &[&str], body: &Value) -> Response {
    match (method.as_str(), segs) {
        ("POST", ["tasks"] | ["tasks", ""]) => {
            let device = body["deviceId"].as_str().unwrap_or("");
            if body["task"].as_str().is_none_or(str::is_empty) || device.is_empty() {
                return answer(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({ "status": 422, "detail": "task and deviceId are required" }),
                );
            }
            create_job(cloud, device, body)
        }
        ("POST", ["agents", _agent, "runs"]) => {
            let device = body["deviceId"].as_str().unwrap_or("");
            create_job(cloud, device, body)
        }
        ("GET", ["tasks", id, "status"] | ["agents", _, "runs", id, "status"]) => {
            let mut jobs = lock(&cloud.jobs);
            let Some(job) = jobs.get_mut(*id) else {
                return not_found("task");
            };
            let status = job.poll();
            answer(StatusCode::OK, job.result(&status))
        }
        ("GET", ["tasks", id]) | ("GET", ["agents", _, "runs", id]) => {
            let jobs = lock(&cloud.jobs);
            let Some(job) = jobs.get(*id) else {
                return not_found("task");
            };
            let status = job.current();
            let mut record = job.result(&status);
            record["id"] = json!(id);
            record["deviceId"] = job.request["deviceId"].clone();
            if segs[0] == "tasks" {
                record["task"] = job.request["task"].clone();
                record["llmModel"] = job.request["llmModel"].clone();
                answer(StatusCode::OK, json!({ "task": record }))
            } else {
                record["verdict"] =
                    if job.request["requestVerdict"] == json!(true) && Job::terminal(&status) {
                        job.script.verdict.clone()
                    } else {
                        Value::Null
                    };
                answer(StatusCode::OK, json!({ "run": record }))
            }
        }
        ("POST", ["tasks", id, "cancel"] | ["agents", _, "runs", id, "cancel"]) => {
            let mut jobs = lock(&cloud.jobs);
            let Some(job) = jobs.get_mut(*id) else {
                return not_found("task");
            };
            if Job::terminal(&job.current()) {
                return answer(
                    StatusCode::CONFLICT,
                    json!({ "status": 409, "detail": "task is already terminal" }),
                );
            }
            job.cancelled = true;
            answer(StatusCode::OK, json!({ "cancelled": true }))
        }
        (_, ["devices", id, rest @ ..]) => device_route(cloud, method, id, rest),
        _ => not_found("route"),
    }
}

fn create_job(cloud: &Cloud, device: &str, body: &Value) -> Response {
    if lock(&cloud.devices).get(device).is_some_and(|d| d.missing) {
        return not_found("device");
    }
    let script = lock(&cloud.scripts)
        .pop_front()
        .unwrap_or_else(|| Script::from_json(&json!({})));
    let id = uuid::Uuid::new_v4().to_string();
    lock(&cloud.jobs).insert(
        id.clone(),
        Job {
            created: Instant::now(),
            script,
            cancelled: false,
            polls: 0,
            request: body.clone(),
        },
    );
    answer(
        StatusCode::OK,
        json!({ "id": id, "status": "created", "streamUrl": null }),
    )
}

fn device_route(cloud: &Cloud, method: &Method, id: &str, rest: &[&str]) -> Response {
    let texts = {
        let devices = lock(&cloud.devices);
        let d = devices.get(id);
        if d.is_some_and(|d| d.missing) {
            return not_found("device");
        }
        d.map(|d| d.texts.clone()).unwrap_or_default()
    };
    let empty = || StatusCode::OK.into_response();
    match (method.as_str(), rest) {
        ("GET", []) => answer(
            StatusCode::OK,
            json!({ "id": id, "name": id, "state": "ready", "provider": "limrun",
                    "deviceType": "device_slot", "apps": [], "files": [], "taskCount": 0 }),
        ),
        ("POST", ["tap"] | ["swipe"] | ["keyboard"])
        | ("PUT", ["keyboard"])
        | ("DELETE", ["keyboard"])
        | ("PUT" | "PATCH", ["apps", _]) => empty(),
        ("GET", ["screenshot"]) => ([(header::CONTENT_TYPE, "image/png")], PNG).into_response(),
        ("GET", ["ui-state"]) => {
            let node = |text: &str| {
                json!({ "text": text, "contentDescription": "", "className": "android.widget.TextView",
                        "resourceId": "", "packageName": "com.example", "children": [],
                        "boundsInScreen": {"left": 0, "top": 0, "right": 100, "bottom": 40} })
            };
            let children: Vec<Value> = texts.iter().map(|t| node(t)).collect();
            let mut root = node("");
            root["children"] = json!(children);
            answer(
                StatusCode::OK,
                json!({ "a11y_tree": root, "ime_tree": node(""),
                        "phone_state": {"isEditable": false, "keyboardVisible": false},
                        "device_context": {} }),
            )
        }
        _ => not_found("device route"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let cloud = Arc::new(Cloud {
        api_key: args.api_key,
        ..Cloud::default()
    });
    let app = Router::new().fallback(handle).with_state(cloud);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!(
        "cloud stand-in listening on http://{}",
        listener.local_addr()?
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    axum::serve(listener, app).await
}
