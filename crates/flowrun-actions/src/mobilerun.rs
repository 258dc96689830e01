//! The `mobilerun` device provider (§5.12): the Mobilerun cloud REST API (Tasks and Devices)
//! at a configurable base URL, authenticated with `Authorization: Bearer <api key>`.
//!
//! Agent tasks (`tasks.run`) and agent runs (`agent.run`) are created, polled to a terminal
//! state and read back. A remote task must never outlive its step: whenever the step's
//! future ends without having seen the task finish — abort, the engine's hard timeout, a
//! failed poll — a guard sends the task's cancel call from a detached task, so the call
//! goes out even though the engine drops the step's future the moment abort fires.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use flowrun_core::catalog;
use flowrun_core::execution::Verdict;
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::{CapturedImage, DeviceProvider, FailureClass, ProbeState, StepFailure, StepOutput};

/// The first bytes of every PNG file.
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Poll failures tolerated in a row while following a long task (a network blip must not
/// fail a 15-minute task).
const MAX_POLL_ERRORS: u32 = 3;

/// Settings of the cloud provider.
#[derive(Clone)]
pub struct MobilerunConfig {
    /// e.g. `https://api.mobilerun.ai/v1`.
    pub base_url: String,
    /// Without a key every step fails `permission_denied`.
    pub api_key: Option<String>,
    /// `llmModel` sent when a `tasks.run` step names none.
    pub default_llm_model: String,
    /// How often a running task or agent run is polled (2 s in production).
    pub poll_interval: Duration,
    /// How often `devices.wait_for_text` reads the UI state (1 s in production).
    pub ui_poll_interval: Duration,
}

impl std::fmt::Debug for MobilerunConfig {
    // The API key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MobilerunConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("default_llm_model", &self.default_llm_model)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl Default for MobilerunConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.mobilerun.ai/v1".to_string(),
            api_key: None,
            default_llm_model: "mobilerun/mobile-agent-fast".to_string(),
            poll_interval: Duration::from_secs(2),
            ui_poll_interval: Duration::from_secs(1),
        }
    }
}

/// The Mobilerun cloud client; clones share one connection pool.
#[derive(Clone, Debug)]
pub struct Mobilerun {
    config: MobilerunConfig,
    base: Url,
    client: reqwest::Client,
}

/// A task-like remote job: `tasks.run` (a task) or `agent.run` (an agent run).
struct RemoteJob {
    /// Path segments of the job collection (`["tasks"]`, `["agents", id, "runs"]`).
    collection: Vec<String>,
    id: String,
}

/// Sends the remote job's cancel call when dropped while armed.
struct CancelOnDrop {
    client: reqwest::Client,
    url: Url,
    api_key: String,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let request = self
            .client
            .post(self.url.clone())
            .bearer_auth(&self.api_key);
        let url = self.url.clone();
        rt.spawn(async move {
            match request.send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!(%url, status = %r.status(), "remote cancel refused"),
                Err(e) => tracing::warn!(%url, error = %e, "remote cancel failed"),
            }
        });
    }
}

impl Mobilerun {
    /// Fails when the base URL is not an absolute http(s) URL.
    pub fn new(config: MobilerunConfig) -> Result<Self, String> {
        let mut base = Url::parse(&config.base_url)
            .map_err(|e| format!("invalid Mobilerun base URL '{}': {e}", config.base_url))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(format!(
                "invalid Mobilerun base URL '{}': not an http(s) URL",
                config.base_url
            ));
        }
        // Path segments are appended to the base path.
        if let Ok(mut segs) = base.path_segments_mut() {
            segs.pop_if_empty();
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            config,
            base,
            client,
        })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut u = self.base.clone();
        if let Ok(mut segs) = u.path_segments_mut() {
            segs.extend(segments);
        }
        u
    }

    fn api_key(&self) -> Result<&str, StepFailure> {
        self.config.api_key.as_deref().ok_or_else(|| {
            StepFailure::new(
                FailureClass::PermissionDenied,
                "no Mobilerun API key is configured (FLOWRUN_MOBILERUN_API_KEY)",
            )
        })
    }

    /// Sends one request; `Ok(None)` when cancelled first. Non-2xx answers are failures
    /// mapped by [`classify_status`] (`device_404` says whether a 404 means the device).
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        device_404: bool,
        cancel: &CancellationToken,
    ) -> Result<Option<reqwest::Response>, StepFailure> {
        let mut req = self
            .client
            .request(method.clone(), url.clone())
            .bearer_auth(self.api_key()?);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = tokio::select! {
            r = req.send() => r.map_err(|e| network_failure(&method, &url, &e))?,
            _ = cancel.cancelled() => return Ok(None),
        };
        if resp.status().is_success() {
            return Ok(Some(resp));
        }
        let status = resp.status();
        let text = tokio::select! {
            t = resp.text() => t.unwrap_or_default(),
            _ = cancel.cancelled() => return Ok(None),
        };
        Err(classify_status(
            status,
            device_404,
            &method,
            url.path(),
            &text,
        ))
    }

    /// A request whose answer is JSON (an empty body reads as `null`).
    async fn send_json(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        device_404: bool,
        cancel: &CancellationToken,
    ) -> Result<Option<Value>, StepFailure> {
        let Some(resp) = self
            .send(method.clone(), url.clone(), body, device_404, cancel)
            .await?
        else {
            return Ok(None);
        };
        let bytes = tokio::select! {
            b = resp.bytes() => b.map_err(|e| network_failure(&method, &url, &e))?,
            _ = cancel.cancelled() => return Ok(None),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Some(Value::Null));
        }
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            StepFailure::new(
                FailureClass::Transient,
                format!("{method} {} answered invalid JSON: {e}", url.path()),
            )
        })
    }

    /// A device action whose answer is only its status.
    async fn device_call(
        &self,
        method: Method,
        address: &str,
        path: &[&str],
        body: Value,
        cancel: &CancellationToken,
    ) -> Result<Option<()>, StepFailure> {
        let mut segs = vec!["devices", address];
        segs.extend_from_slice(path);
        let url = self.url(&segs);
        Ok(self
            .send(method, url, Some(&body), true, cancel)
            .await?
            .map(|_| ()))
    }

    async fn run_device_method(
        &self,
        address: &str,
        method: &str,
        params: &Value,
        cancel: &CancellationToken,
    ) -> Result<Option<StepOutput>, StepFailure> {
        let int = |name: &str| params.get(name).and_then(Value::as_i64).unwrap_or(0);
        let text = |name: &str| params.get(name).and_then(Value::as_str).unwrap_or("");
        let ok = |r: Option<()>| {
            r.map(|()| StepOutput {
                body: json!({ "ok": true }),
                ..Default::default()
            })
        };
        match method {
            "devices.tap" => {
                let body = json!({ "x": int("x"), "y": int("y") });
                let r = self
                    .device_call(Method::POST, address, &["tap"], body, cancel)
                    .await?;
                Ok(ok(r))
            }
            "devices.swipe" => {
                let duration = params
                    .get("durationMs")
                    .and_then(Value::as_i64)
                    .unwrap_or(300);
                let body = json!({
                    "startX": int("startX"), "startY": int("startY"),
                    "endX": int("endX"), "endY": int("endY"), "duration": duration,
                });
                let r = self
                    .device_call(Method::POST, address, &["swipe"], body, cancel)
                    .await?;
                Ok(ok(r))
            }
            "devices.type" => {
                let clear = params.get("clear").and_then(Value::as_bool) == Some(true);
                let body = json!({ "text": text("text"), "clear": clear });
                let r = self
                    .device_call(Method::POST, address, &["keyboard"], body, cancel)
                    .await?;
                Ok(ok(r))
            }
            "devices.key" => {
                let code = match params.get("key") {
                    Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
                    Some(Value::String(s)) => catalog::key_code(s).unwrap_or(0),
                    _ => 0,
                };
                let r = self
                    .device_call(
                        Method::PUT,
                        address,
                        &["keyboard"],
                        json!({ "key": code }),
                        cancel,
                    )
                    .await?;
                Ok(r.map(|()| StepOutput {
                    body: json!({ "ok": true, "keyCode": code }),
                    ..Default::default()
                }))
            }
            "devices.app.start" => {
                let mut body = Map::new();
                if let Some(a) = params.get("activity").and_then(Value::as_str) {
                    body.insert("activity".into(), json!(a));
                }
                let pkg = text("packageName");
                let r = self
                    .device_call(
                        Method::PUT,
                        address,
                        &["apps", pkg],
                        Value::Object(body),
                        cancel,
                    )
                    .await?;
                Ok(ok(r))
            }
            "devices.app.stop" => {
                let pkg = text("packageName");
                let r = self
                    .device_call(Method::PATCH, address, &["apps", pkg], json!({}), cancel)
                    .await?;
                Ok(ok(r))
            }
            "devices.screenshot" => {
                let Some(image) = self.screenshot(address, cancel).await? else {
                    return Ok(None);
                };
                Ok(Some(StepOutput {
                    // The engine adds `screenshotId` once the image is stored.
                    body: json!({ "mimeType": image.mime_type }),
                    images: vec![image],
                    ..Default::default()
                }))
            }
            "devices.wait_for_text" => self.wait_for_text(address, params, cancel).await,
            "tasks.run" => self.run_task(address, params, cancel).await,
            "agent.run" => self.run_agent(address, params, cancel).await,
            other => Err(StepFailure::new(
                FailureClass::InvalidConfig,
                format!("unsupported_provider: {other} is not available on mobilerun devices"),
            )),
        }
    }

    /// `GET /devices/{address}/screenshot`: the PNG bytes. `Ok(None)` when cancelled.
    pub async fn screenshot(
        &self,
        address: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<CapturedImage>, StepFailure> {
        let url = self.url(&["devices", address, "screenshot"]);
        let Some(resp) = self
            .send(Method::GET, url.clone(), None, true, cancel)
            .await?
        else {
            return Ok(None);
        };
        let bytes = tokio::select! {
            b = resp.bytes() => b.map_err(|e| network_failure(&Method::GET, &url, &e))?,
            _ = cancel.cancelled() => return Ok(None),
        };
        match png_of(&bytes) {
            Some(png) => Ok(Some(CapturedImage {
                mime_type: "image/png".to_string(),
                bytes: png,
            })),
            None => Err(StepFailure::new(
                FailureClass::Transient,
                "the device's screenshot is not a PNG image",
            )),
        }
    }

    async fn wait_for_text(
        &self,
        address: &str,
        params: &Value,
        cancel: &CancellationToken,
    ) -> Result<Option<StepOutput>, StepFailure> {
        let wait = crate::text_wait::TextWait::new(params);
        let url = self.url(&["devices", address, "ui-state"]);
        loop {
            let Some(state) = self
                .send_json(Method::GET, url.clone(), None, true, cancel)
                .await?
            else {
                return Ok(None);
            };
            if let Some(done) = wait.after_look(ui_state_contains(&state, wait.wanted, wait.exact))
            {
                return done;
            }
            if !wait.pause(self.config.ui_poll_interval, cancel).await {
                return Ok(None);
            }
        }
    }

    /// `tasks.run`: `POST /tasks/` with the params plus `deviceId`, followed to its end.
    async fn run_task(
        &self,
        address: &str,
        params: &Value,
        cancel: &CancellationToken,
    ) -> Result<Option<StepOutput>, StepFailure> {
        let mut body = params.as_object().cloned().unwrap_or_default();
        body.insert("deviceId".into(), json!(address));
        if !body.contains_key("llmModel") {
            body.insert("llmModel".into(), json!(self.config.default_llm_model));
        }
        let create = self.url(&["tasks", ""]);
        let collection = vec!["tasks".to_string()];
        let Some((record, job)) = self
            .follow(create, Value::Object(body), collection, cancel)
            .await?
        else {
            return Ok(None);
        };
        let status = str_field(&record, "status")
            .unwrap_or("completed")
            .to_string();
        let succeeded = record.get("succeeded").and_then(Value::as_bool);
        check_outcome(&status, succeeded, &record, "task").map_err(|f| f.with_session(&job.id))?;
        Ok(Some(StepOutput {
            body: json!({
                "taskId": job.id,
                "status": status,
                "succeeded": succeeded,
                "output": record.get("output").cloned().unwrap_or(Value::Null),
                "steps": record.get("steps").and_then(Value::as_i64),
            }),
            session_id: Some(job.id),
            ..Default::default()
        }))
    }

    /// `agent.run`: `POST /agents/{agentId}/runs`, followed like a task.
    async fn run_agent(
        &self,
        address: &str,
        params: &Value,
        cancel: &CancellationToken,
    ) -> Result<Option<StepOutput>, StepFailure> {
        let agent_id = params.get("agentId").and_then(Value::as_str).unwrap_or("");
        let request_verdict = params.get("requestVerdict").and_then(Value::as_bool) == Some(true);
        let mut body = Map::new();
        body.insert("deviceId".into(), json!(address));
        if let Some(input) = params.get("input") {
            body.insert("input".into(), input.clone());
        }
        body.insert(
            "timeoutSeconds".into(),
            json!(
                params
                    .get("timeoutSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(900)
            ),
        );
        body.insert("requestVerdict".into(), json!(request_verdict));
        let create = self.url(&["agents", agent_id, "runs"]);
        let collection = vec!["agents".to_string(), agent_id.to_string(), "runs".into()];
        let Some((record, job)) = self
            .follow(create, Value::Object(body), collection, cancel)
            .await?
        else {
            return Ok(None);
        };
        let status = str_field(&record, "status")
            .unwrap_or("completed")
            .to_string();
        let succeeded = record.get("succeeded").and_then(Value::as_bool);
        check_outcome(&status, succeeded, &record, "agent_run")
            .map_err(|f| f.with_session(&job.id))?;
        let verdict_json = if request_verdict {
            record.get("verdict").cloned().filter(|v| v.is_object())
        } else {
            None
        };
        let verdict = verdict_json.as_ref().and_then(parse_verdict);
        Ok(Some(StepOutput {
            body: json!({
                "agentRunId": job.id,
                "status": status,
                "succeeded": succeeded,
                "output": record.get("output").cloned().unwrap_or(Value::Null),
                "verdict": verdict_json,
            }),
            session_id: Some(job.id),
            verdict,
            ..Default::default()
        }))
    }

    /// Creates a remote job, polls `{id}/status` until it is terminal and returns the
    /// job's record (`GET {id}`). While the job runs, a guard cancels it if this future
    /// ends early. `Ok(None)` when cancelled.
    async fn follow(
        &self,
        create: Url,
        body: Value,
        collection: Vec<String>,
        cancel: &CancellationToken,
    ) -> Result<Option<(Value, RemoteJob)>, StepFailure> {
        let Some(created) = self
            .send_json(Method::POST, create.clone(), Some(&body), true, cancel)
            .await?
        else {
            // The create call may have reached the cloud; its id is unknown, so there is
            // nothing to cancel.
            return Ok(None);
        };
        let id = str_field(&created, "id")
            .or_else(|| created.get("task").and_then(|t| str_field(t, "id")))
            .ok_or_else(|| {
                StepFailure::new(
                    FailureClass::Transient,
                    format!("POST {} answered without an id", create.path()),
                )
            })?
            .to_string();
        let job = RemoteJob { collection, id };
        let segs = |tail: &[&str]| {
            let mut v: Vec<&str> = job.collection.iter().map(String::as_str).collect();
            v.push(&job.id);
            v.extend_from_slice(tail);
            self.url(&v)
        };
        let mut guard = CancelOnDrop {
            client: self.client.clone(),
            url: segs(&["cancel"]),
            api_key: self.api_key()?.to_string(),
            armed: true,
        };
        let status_url = segs(&["status"]);
        let mut errors = 0;
        loop {
            match self
                .send_json(Method::GET, status_url.clone(), None, false, cancel)
                .await
            {
                Ok(None) => return Ok(None),
                Ok(Some(s)) => {
                    errors = 0;
                    let status = str_field(&s, "status").unwrap_or("");
                    if matches!(status, "completed" | "failed" | "cancelled") {
                        break;
                    }
                }
                Err(f) if f.class == FailureClass::Transient && errors < MAX_POLL_ERRORS => {
                    errors += 1;
                    tracing::warn!(job = %job.id, error = %f, "polling a remote job failed; retrying");
                }
                Err(f) => return Err(f),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = cancel.cancelled() => return Ok(None),
            }
        }
        // Terminal: nothing left to cancel.
        guard.armed = false;
        let Some(record) = self
            .send_json(Method::GET, segs(&[]), None, false, cancel)
            .await?
        else {
            return Ok(None);
        };
        // `GET /tasks/{id}` wraps the task (`{task: {...}}`); accept a bare record too.
        let record = match record {
            Value::Object(mut m)
                if m.len() == 1 && (m.contains_key("task") || m.contains_key("run")) =>
            {
                m.remove("task")
                    .or_else(|| m.remove("run"))
                    .unwrap_or(Value::Null)
            }
            other => other,
        };
        Ok(Some((record, job)))
    }
}

#[async_trait]
impl DeviceProvider for Mobilerun {
    async fn execute(
        &self,
        address: &str,
        method: &str,
        params: &Value,
        cancel: &CancellationToken,
    ) -> Result<Option<StepOutput>, StepFailure> {
        self.api_key()?;
        self.run_device_method(address, method, params, cancel)
            .await
    }

    async fn screenshot(
        &self,
        address: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<CapturedImage>, StepFailure> {
        Mobilerun::screenshot(self, address, cancel).await
    }

    async fn probe(&self, address: &str) -> ProbeState {
        let Some(key) = self.config.api_key.as_deref() else {
            return ProbeState::Unknown;
        };
        let resp = self
            .client
            .get(self.url(&["devices", address]))
            .bearer_auth(key)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => ProbeState::Online,
            Ok(r) if r.status() == StatusCode::NOT_FOUND => ProbeState::Offline,
            _ => ProbeState::Unknown,
        }
    }
}

/// A terminal job that did not succeed fails the step with class `logic`.
fn check_outcome(
    status: &str,
    succeeded: Option<bool>,
    record: &Value,
    what: &str,
) -> Result<(), StepFailure> {
    if status == "completed" && succeeded != Some(false) {
        return Ok(());
    }
    let reason = str_field(record, "message")
        .map(|m| format!(": {}", m.chars().take(300).collect::<String>()))
        .unwrap_or_default();
    let message = match status {
        "cancelled" => format!("{what}_cancelled{reason}"),
        _ => format!("{what}_failed{reason}"),
    };
    Err(StepFailure::new(FailureClass::Logic, message))
}

fn parse_verdict(v: &Value) -> Option<Verdict> {
    Some(Verdict {
        outcome: str_field(v, "outcome")?.to_string(),
        summary: str_field(v, "summary").unwrap_or_default().to_string(),
        reason: str_field(v, "reason").map(str::to_string),
    })
}

fn str_field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

/// Maps a non-2xx answer to a failure class (§5.12).
pub fn classify_status(
    status: StatusCode,
    device_404: bool,
    method: &Method,
    path: &str,
    body: &str,
) -> StepFailure {
    let class = match status.as_u16() {
        401 | 403 => FailureClass::PermissionDenied,
        404 if device_404 => FailureClass::DeviceNotFound,
        408 | 429 => FailureClass::Transient,
        400..=499 => FailureClass::ClientError,
        _ => FailureClass::Transient,
    };
    let snippet: String = body.trim().chars().take(300).collect();
    StepFailure::new(
        class,
        format!("Mobilerun {method} {path} answered {status}: {snippet}"),
    )
}

fn network_failure(method: &Method, url: &Url, e: &reqwest::Error) -> StepFailure {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    StepFailure::new(
        FailureClass::Transient,
        format!("Mobilerun {method} {} {what}: {e}", url.path()),
    )
}

/// The PNG in a screenshot answer: the raw bytes, or a base64 text / JSON string of them.
fn png_of(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.starts_with(PNG_SIGNATURE) {
        return Some(bytes.to_vec());
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let text = serde_json::from_str::<String>(text).unwrap_or_else(|_| text.to_string());
    let text = text.strip_prefix("data:image/png;base64,").unwrap_or(&text);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    decoded.starts_with(PNG_SIGNATURE).then_some(decoded)
}

/// Whether any node of a UI state holds the text in its `text` or `contentDescription`.
pub fn ui_state_contains(state: &Value, wanted: &str, exact: bool) -> bool {
    let folded = wanted.to_lowercase();
    let hit = |s: &str| {
        if exact {
            s == wanted
        } else {
            s.to_lowercase().contains(&folded)
        }
    };
    let mut stack = vec![state];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("text" | "contentDescription", Value::String(s)) if hit(s) => {
                            return true;
                        }
                        _ => stack.push(x),
                    }
                }
            }
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_failure_classes() {
        let c = |s: u16, dev: bool| {
            classify_status(
                StatusCode::from_u16(s).unwrap(),
                dev,
                &Method::GET,
                "/x",
                "",
            )
            .class
        };
        assert_eq!(c(401, true), FailureClass::PermissionDenied);
        assert_eq!(c(403, false), FailureClass::PermissionDenied);
        assert_eq!(c(404, true), FailureClass::DeviceNotFound);
        assert_eq!(c(404, false), FailureClass::ClientError);
        assert_eq!(c(422, true), FailureClass::ClientError);
        assert_eq!(c(429, true), FailureClass::Transient);
        assert_eq!(c(500, true), FailureClass::Transient);
        assert_eq!(c(503, false), FailureClass::Transient);
    }

    #[test]
    fn ui_state_search_walks_the_tree() {
        let state = json!({"a11y_tree": {"text": "", "contentDescription": "",
            "children": [{"text": "Welcome back", "contentDescription": "", "children": [
                {"text": "", "contentDescription": "Sign in button"}]}]},
            "phone_state": {"currentApp": "Mail"}});
        assert!(ui_state_contains(&state, "welcome", false));
        assert!(!ui_state_contains(&state, "welcome", true));
        assert!(ui_state_contains(&state, "Sign in button", true));
        assert!(!ui_state_contains(&state, "Mail", false));
    }

    #[test]
    fn screenshots_accept_raw_and_base64_png() {
        let png = [PNG_SIGNATURE, b"rest"].concat();
        assert_eq!(png_of(&png), Some(png.clone()));
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        assert_eq!(png_of(b64.as_bytes()), Some(png.clone()));
        assert_eq!(png_of(format!("\"{b64}\"").as_bytes()), Some(png));
        assert_eq!(png_of(b"not an image"), None);
    }

    #[test]
    fn urls_append_escaped_segments_to_the_base_path() {
        let m = Mobilerun::new(MobilerunConfig {
            base_url: "http://127.0.0.1:9/v1/".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            m.url(&["tasks", ""]).as_str(),
            "http://127.0.0.1:9/v1/tasks/"
        );
        assert_eq!(
            m.url(&["devices", "a b/c", "apps", "com.x"]).as_str(),
            "http://127.0.0.1:9/v1/devices/a%20b%2Fc/apps/com.x"
        );
        assert!(
            Mobilerun::new(MobilerunConfig {
                base_url: "ftp://x".into(),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[tokio::test]
    async fn no_key_is_permission_denied() {
        let m = Mobilerun::new(MobilerunConfig::default()).unwrap();
        let err = m
            .execute(
                "dev",
                "devices.tap",
                &json!({"x": 1, "y": 2}),
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.class, FailureClass::PermissionDenied);
        assert_eq!(m.probe("dev").await, ProbeState::Unknown);
    }
}
