//! The execution engine through the API: fire (§3.1), run (§3.5), fan-out and gates (§5.5,
//! §5.6), the step loop and templates (§5.7, §5.9, §5.10), abort (§5.8), health (§5.13),
//! crash recovery, and the execution list and metrics (§3.8, §4.7).
//!
//! Nothing here sleeps to synchronise: [`wait_for`] polls an execution until a predicate
//! holds or a deadline passes.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::adb::fake_adb;
use common::{Resp, Server, assert_keys};
use reqwest::Method;
use serde_json::{Value, json};

const GET: &str = "workflows.execution_retrieve_response.ExecutionRetrieveResponse";
const LIST: &str = "workflows.execution_list_response.ExecutionListResponse";
const ABORT: &str = "workflows.execution_abort_response.ExecutionAbortResponse";
const METRICS: &str = "workflows.execution_get_metrics_response.ExecutionGetMetricsResponse";
const FIRE: &str = "workflows.trigger_fire_response.TriggerFireResponse";
const RUN: &str = "workflows.flow_run_response.FlowRunResponse";
const UNBLOCK: &str = "workflows.flow_unblock_response.FlowUnblockResponse";

const SUMMARY_KEYS: [&str; 16] = [
    "id",
    "flowId",
    "flowName",
    "triggerId",
    "triggerName",
    "eventId",
    "invocationId",
    "kind",
    "status",
    "deviceId",
    "error",
    "startedAt",
    "finishedAt",
    "recordingId",
    "recordingDeviceId",
    "result",
];
const ITEM_EXTRA: [&str; 2] = ["createdBy", "recordings"];
const EXECUTION_EXTRA: [&str; 5] = ["agentId", "progress", "files", "screenshots", "deliveries"];
const STEP_KEYS: [&str; 16] = [
    "index",
    "key",
    "name",
    "service",
    "method",
    "status",
    "startedAt",
    "finishedAt",
    "attempt",
    "params",
    "body",
    "error",
    "verdict",
    "sessionId",
    "children",
    "iterations",
];
const PROGRESS_STEP_KEYS: [&str; 9] = [
    "index",
    "name",
    "service",
    "method",
    "status",
    "startedAt",
    "finishedAt",
    "sessionId",
    "attempt",
];
const TERMINAL: [&str; 5] = ["success", "failed", "cancelled", "skipped", "invalid"];
const STATUSES: [&str; 7] = [
    "pending",
    "running",
    "success",
    "failed",
    "cancelled",
    "skipped",
    "invalid",
];

// ---------------------------------------------------------------------------------------------
// Helpers

/// A server plus the built-in catalog ids (method → catalog entry id).
struct Kit {
    s: Server,
    cat: HashMap<String, String>,
}

impl Kit {
    async fn start(args: &[&str]) -> Kit {
        Self::with(Server::start_with(args).await).await
    }

    async fn with(s: Server) -> Kit {
        let cat = s.catalog_ids().await;
        Kit { s, cat }
    }

    async fn action(&self, method: &str, name: &str, params: Value) -> String {
        let entry = self
            .cat
            .get(method)
            .unwrap_or_else(|| panic!("catalog has {method}"));
        let r = self
            .s
            .post(
                "/v1/actions",
                json!({"catalogEntryId": entry, "name": name, "params": params}),
            )
            .await;
        r.expect(201);
        r.id()
    }

    /// A custom trigger.
    async fn trigger(&self, name: &str) -> String {
        self.trigger_with(json!({"activation": "custom", "name": name}))
            .await
    }

    async fn trigger_with(&self, body: Value) -> String {
        let r = self.s.post("/v1/triggers", body).await;
        r.expect(201);
        r.id()
    }

    async fn device(&self, address: &str) -> String {
        let r = self
            .s
            .post(
                "/v1/devices",
                json!({"name": address, "provider": "adb", "address": address}),
            )
            .await;
        r.expect(201);
        r.id()
    }

    async fn flow(&self, body: Value) -> String {
        let r = self.s.post("/v1/flows", body).await;
        r.expect(201);
        assert_eq!(r.data()["templateResolutionVersion"], 3);
        r.id()
    }

    async fn get_flow(&self, id: &str) -> Value {
        let r = self.s.get(&format!("/v1/flows/{id}")).await;
        r.expect(200);
        r.data().clone()
    }

    /// Polls the flow until `pred` holds (health is recorded just after the terminal write).
    async fn wait_flow(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let f = self.get_flow(id).await;
            if pred(&f) {
                return f;
            }
            assert!(
                Instant::now() < deadline,
                "flow {id} did not reach the expected state; last: {f}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn run_resp(&self, flow: &str, body: Value, key: Option<&str>) -> Resp {
        let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
        self.s
            .call_as(
                &self.s.key,
                Method::POST,
                &format!("/v1/flows/{flow}/run"),
                Some(&body),
                &headers,
            )
            .await
    }

    /// Runs a flow; returns the enqueued execution ids.
    async fn run(&self, flow: &str, payload: Value) -> Vec<String> {
        let r = self.run_resp(flow, json!({"payload": payload}), None).await;
        r.expect(202).schema(RUN);
        ids(&r.data()["executionIds"])
    }

    /// Runs a flow that has exactly one target.
    async fn run_one(&self, flow: &str, payload: Value) -> String {
        let ids = self.run(flow, payload).await;
        assert_eq!(ids.len(), 1, "one execution enqueued");
        ids[0].clone()
    }

    async fn fire(&self, trigger: &str, body: Value, key: Option<&str>) -> Resp {
        let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
        self.s
            .call_as(
                &self.s.key,
                Method::POST,
                &format!("/v1/triggers/{trigger}/fire"),
                Some(&body),
                &headers,
            )
            .await
    }

    /// GET /executions/{id}, checked against the wire schema and the documented keys.
    async fn exec(&self, id: &str) -> Value {
        let r = self.s.get(&format!("/v1/executions/{id}")).await;
        r.expect(200).schema(GET);
        let want: Vec<&str> = SUMMARY_KEYS
            .iter()
            .chain(&ITEM_EXTRA)
            .chain(&EXECUTION_EXTRA)
            .copied()
            .collect();
        assert_keys(r.data(), &want);
        r.data().clone()
    }

    async fn wait_for(&self, id: &str, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        wait_for(&self.s, id, pred, timeout).await
    }

    /// Waits until the execution is terminal.
    async fn done(&self, id: &str) -> Value {
        let e = self
            .wait_for(id, is_terminal, Duration::from_secs(10))
            .await;
        self.exec(id).await;
        e
    }

    /// GET /executions with a query; returns the items (schema-checked).
    async fn list(&self, query: &str) -> Vec<Value> {
        let r = self.list_resp(query).await;
        r.body["items"].as_array().unwrap().clone()
    }

    async fn list_resp(&self, query: &str) -> Resp {
        let r = self.s.get(&format!("/v1/executions?{query}")).await;
        r.expect(200).schema(LIST);
        let want: Vec<&str> = SUMMARY_KEYS.iter().chain(&ITEM_EXTRA).copied().collect();
        for item in r.body["items"].as_array().unwrap() {
            assert_keys(item, &want);
        }
        r
    }

    async fn metrics(&self, query: &str) -> Value {
        let r = self.s.get(&format!("/v1/executions/metrics?{query}")).await;
        r.expect(200).schema(METRICS);
        assert_keys(
            r.data(),
            &["total", "avgDurationMs", "lastExecutionAt", "byStatus"],
        );
        assert_keys(&r.data()["byStatus"], &STATUSES);
        r.data().clone()
    }

    async fn abort(&self, id: &str) -> Resp {
        self.s
            .call(Method::POST, &format!("/v1/executions/{id}/abort"), None)
            .await
    }
}

/// Polls `GET /executions/{id}` every ~20 ms until `pred` holds; panics with the last body
/// after `timeout`.
async fn wait_for(s: &Server, id: &str, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let r = s.get(&format!("/v1/executions/{id}")).await;
        r.expect(200);
        if pred(r.data()) {
            r.schema(GET);
            return r.data().clone();
        }
        assert!(
            Instant::now() < deadline,
            "execution {id} did not reach the expected state within {timeout:?}; last: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_terminal(e: &Value) -> bool {
    TERMINAL.iter().any(|t| e["status"] == *t)
}

/// A flow-action node.
fn node(action: &str, position: i64, key: &str) -> Value {
    json!({"actionId": action, "position": position, "key": key})
}

/// `node` with extra fields merged in.
fn node_with(action: &str, position: i64, key: &str, extra: Value) -> Value {
    let mut n = node(action, position, key);
    for (k, v) in extra.as_object().unwrap() {
        n[k] = v.clone();
    }
    n
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect()
}

fn steps(e: &Value) -> &Vec<Value> {
    e["result"]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no result.steps: {e}"))
}

fn progress(e: &Value) -> &Vec<Value> {
    e["progress"]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no progress.steps: {e}"))
}

/// Status of top-level step `i` in `progress` ("" when there is no progress yet).
fn pstatus(e: &Value, i: usize) -> String {
    e["progress"]["steps"][i]["status"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn statuses(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|s| s["status"].as_str().unwrap().to_string())
        .collect()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// Milliseconds since the epoch of an output timestamp (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
fn ms(v: &Value) -> i64 {
    let s = str_of(v);
    assert!(
        s.len() == 24 && s.ends_with('Z') && &s[19..20] == ".",
        "timestamp format: {s}"
    );
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    days_from_civil(n(0, 4), n(5, 7), n(8, 10)) * 86_400_000
        + n(11, 13) * 3_600_000
        + n(14, 16) * 60_000
        + n(17, 19) * 1000
        + n(20, 23)
}

/// The local clock in ms since the epoch (the server runs on the same host).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The instant `ms` written as local time at `+hh:mm` (`offset_min` minutes east of UTC).
fn with_offset(ms: i64, offset_min: i64) -> String {
    let local = ms + offset_min * 60_000;
    let (days, rest) = (local.div_euclid(86_400_000), local.rem_euclid(86_400_000));
    let (y, mo, d) = civil_from_days(days);
    let sign = if offset_min >= 0 { '+' } else { '-' };
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}{sign}{:02}:{:02}",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000,
        offset_min.abs() / 60,
        offset_min.abs() % 60
    )
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Fire

#[tokio::test]
async fn fire_fans_out_to_enabled_flows_and_devices_and_dedupes_by_key() {
    let k = Kit::start(&[]).await;
    let t = k.trigger("Fan trigger").await;
    let other_t = k.trigger("Unrelated trigger").await;
    let d1 = k.device("fan-1").await;
    let d2 = k.device("fan-2").await;
    let zero = k
        .action("flow.wait", "Wait zero", json!({"seconds": 0}))
        .await;
    let tap = k
        .action("devices.tap", "Tap", json!({"x": 1, "y": 2}))
        .await;
    let fa = k
        .flow(
            json!({"name": "Fan devices", "triggerId": t, "deviceIds": [d1, d2],
                     "actions": [node(&zero, 0, "w")]}),
        )
        .await;
    let fb = k
        .flow(json!({"name": "Fan free", "triggerId": t, "actions": [node(&zero, 0, "w")]}))
        .await;
    let fc = k
        .flow(
            json!({"name": "Fan disabled", "triggerId": t, "enabled": false,
                     "actions": [node(&zero, 0, "w")]}),
        )
        .await;
    let fd = k
        .flow(json!({"name": "Fan needs device", "triggerId": t,
                     "actions": [node(&tap, 0, "tap")]}))
        .await;
    let fe = k
        .flow(json!({"name": "Other", "triggerId": other_t, "actions": [node(&zero, 0, "w")]}))
        .await;

    let body = json!({"payload": {"n": 1}});
    let r = k.fire(&t, body.clone(), Some("fire-key-1")).await;
    r.expect(202).schema(FIRE);
    assert_keys(&r.body, &["deduplicated", "enqueuedCount", "invocationId"]);
    assert_eq!(
        r.body,
        json!({"deduplicated": false, "enqueuedCount": 3, "invocationId": "fire-key-1"})
    );
    assert!(r.headers.get("idempotent-replayed").is_none());

    let rows = k.list("invocationId=fire-key-1&pageSize=100").await;
    assert_eq!(
        rows.len(),
        4,
        "2 device rows + 1 device-free + 1 skipped: {rows:?}"
    );
    let of =
        |f: &str| -> Vec<Value> { rows.iter().filter(|r| r["flowId"] == f).cloned().collect() };
    let a = of(&fa);
    assert_eq!(a.len(), 2);
    let mut devices: Vec<&str> = a.iter().map(|r| str_of(&r["deviceId"])).collect();
    devices.sort();
    let mut want = vec![d1.as_str(), d2.as_str()];
    want.sort();
    assert_eq!(devices, want, "one row per bound device");
    let b = of(&fb);
    assert_eq!(b.len(), 1);
    assert!(b[0]["deviceId"].is_null());
    assert!(of(&fc).is_empty(), "disabled flows produce no row");
    assert!(of(&fe).is_empty(), "flows of other triggers are untouched");
    let d = of(&fd);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["status"], "skipped");
    assert_eq!(d[0]["error"], "no_device");
    assert!(d[0]["deviceId"].is_null());
    assert!(d[0]["startedAt"].is_null());
    ms(&d[0]["finishedAt"]);
    assert!(d[0]["result"].is_null());
    let skipped = k.exec(str_of(&d[0]["id"])).await;
    assert!(skipped["progress"].is_null());
    for row in a.iter().chain(&b) {
        assert_eq!(row["kind"], "live");
        assert_eq!(row["invocationId"], "fire-key-1");
        assert!(row["eventId"].is_null());
        assert_eq!(row["triggerId"], t.as_str());
        assert_eq!(row["triggerName"], "Fan trigger");
        assert_eq!(row["createdBy"], "default");
        assert!(row["status"] != "skipped");
        let done = k.done(str_of(&row["id"])).await;
        assert_eq!(done["status"], "success", "{done}");
    }
    assert_eq!(a[0]["flowName"], "Fan devices");

    // lastTriggeredAt: only flows with an enqueued row.
    ms(&k.get_flow(&fa).await["lastTriggeredAt"]);
    ms(&k.get_flow(&fb).await["lastTriggeredAt"]);
    assert!(k.get_flow(&fc).await["lastTriggeredAt"].is_null());
    assert!(k.get_flow(&fd).await["lastTriggeredAt"].is_null());

    // Same key, same body: every flow already has the invocation → nothing new.
    let r = k.fire(&t, body.clone(), Some("fire-key-1")).await;
    r.expect(202).schema(FIRE);
    assert_eq!(
        r.body,
        json!({"deduplicated": true, "enqueuedCount": 0, "invocationId": "fire-key-1"})
    );
    assert_eq!(
        r.headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(
        k.list("invocationId=fire-key-1&pageSize=100").await.len(),
        4
    );

    // A flow bound since then has no row with this invocation: only it fans out.
    let ff = k
        .flow(json!({"name": "Fan late", "triggerId": t, "actions": [node(&zero, 0, "w")]}))
        .await;
    let r = k.fire(&t, body.clone(), Some("fire-key-1")).await;
    r.expect(202).schema(FIRE);
    assert_eq!(
        r.body,
        json!({"deduplicated": true, "enqueuedCount": 1, "invocationId": "fire-key-1"})
    );
    let rows = k.list("invocationId=fire-key-1&pageSize=100").await;
    assert_eq!(rows.len(), 5);
    assert_eq!(
        rows.iter().filter(|e| e["flowId"] == ff.as_str()).count(),
        1
    );

    // Same key, different body.
    k.fire(&t, json!({"payload": {"n": 2}}), Some("fire-key-1"))
        .await
        .expect_error(422, "idempotency_key_reused");
    assert_eq!(
        k.list("invocationId=fire-key-1&pageSize=100").await.len(),
        5
    );

    // Without a key: a fresh UUID every time, no dedupe.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = k.fire(&t, body.clone(), None).await;
        r.expect(202).schema(FIRE);
        assert_eq!(r.body["deduplicated"], false);
        assert_eq!(r.body["enqueuedCount"], 4);
        assert!(r.headers.get("idempotent-replayed").is_none());
        let inv = str_of(&r.body["invocationId"]).to_string();
        uuid::Uuid::parse_str(&inv).expect("invocationId is a UUID");
        let rows = k.list(&format!("invocationId={inv}&pageSize=100")).await;
        assert_eq!(rows.len(), 5);
        seen.push(inv);
    }
    assert_ne!(seen[0], seen[1]);
}

#[tokio::test]
async fn fire_rejects_non_custom_triggers_and_bad_payloads() {
    let k = Kit::start(&[]).await;
    let s = &k.s;
    let zero = k
        .action("flow.wait", "Wait zero", json!({"seconds": 0}))
        .await;
    let ev = k
        .trigger_with(json!({"activation": "event", "name": "ev", "eventType": "app.opened"}))
        .await;
    let sc = k
        .trigger_with(
            json!({"activation": "schedule", "name": "sc", "timezone": "UTC",
                             "scheduleRule": {"type": "cron", "expression": "0 0 * * *"}}),
        )
        .await;
    let typed = k
        .trigger_with(json!({"activation": "custom", "name": "typed",
            "customPayloadSchema": {"type": "object",
                "properties": {"amount": {"type": "number"}}, "required": ["amount"]}}))
        .await;
    for t in [&ev, &sc, &typed] {
        k.flow(json!({"name": "bound", "triggerId": t, "actions": [node(&zero, 0, "w")]}))
            .await;
    }

    for (t, activation) in [(&ev, "event"), (&sc, "schedule")] {
        let r = k.fire(t, json!({"payload": {}}), None).await;
        r.expect_error(409, "trigger_not_custom");
        assert_eq!(
            r.body["details"]["activation"], activation,
            "details.activation (§2): {}",
            r.text
        );
    }

    for (body, field) in [
        (json!({}), "payload"),
        (json!({"payload": null}), "payload"),
        (json!({"payload": 5}), "payload"),
        (json!({"payload": [1]}), "payload"),
        (json!({"payload": "x"}), "payload"),
        (json!({"payload": {"amount": "x"}}), "payload.amount"),
    ] {
        let r = k.fire(&typed, body.clone(), None).await;
        r.expect_error(422, "validation_failed");
        assert_eq!(r.error_fields(), [field], "{body}: {}", r.text);
    }
    let r = k.fire(&typed, json!({"payload": {}}), None).await;
    r.expect_error(422, "validation_failed");
    assert!(
        !r.error_fields().is_empty() && r.error_fields().iter().all(|f| f.starts_with("payload")),
        "{}",
        r.text
    );
    let r = s
        .raw(
            Method::POST,
            &format!("/v1/triggers/{typed}/fire"),
            b"{\"payload\":".to_vec(),
        )
        .await;
    r.expect_error(400, "invalid_json");

    // Unknown, malformed and foreign ids.
    k.fire(
        &uuid::Uuid::new_v4().to_string(),
        json!({"payload": {}}),
        None,
    )
    .await
    .expect_error(404, "not_found");
    k.fire("nope", json!({"payload": {}}), None)
        .await
        .expect_error(404, "not_found");
    s.call_as(
        &s.other_key,
        Method::POST,
        &format!("/v1/triggers/{typed}/fire"),
        Some(&json!({"payload": {"amount": 1}})),
        &[],
    )
    .await
    .expect_error(404, "not_found");

    assert!(
        k.list("pageSize=100").await.is_empty(),
        "rejected fires store nothing"
    );
    let r = k
        .fire(&typed, json!({"payload": {"amount": 3}}), None)
        .await;
    r.expect(202);
    assert_eq!(r.body["enqueuedCount"], 1);
    assert_eq!(k.list("pageSize=100").await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 2. Run

#[tokio::test]
async fn run_enqueues_per_device_on_disabled_flows_and_replays_by_key() {
    let k = Kit::start(&[]).await;
    let s = &k.s;
    let t = k
        .trigger_with(json!({"activation": "custom", "name": "typed",
            "customPayloadSchema": {"type": "object", "properties": {"s": {"type": "number"}}}}))
        .await;
    let zero = k
        .action("flow.wait", "Wait zero", json!({"seconds": 0}))
        .await;
    let tap = k
        .action("devices.tap", "Tap", json!({"x": 1, "y": 2}))
        .await;
    let f = k
        .flow(json!({"name": "Disabled", "triggerId": t, "enabled": false,
                     "actions": [node(&zero, 0, "w")]}))
        .await;

    let body = json!({"payload": {"s": 1}});
    let r = k.run_resp(&f, body.clone(), Some("run-key-1")).await;
    r.expect(202).schema(RUN);
    assert_keys(&r.body, &["data"]);
    assert_keys(r.data(), &["enqueuedCount", "executionIds"]);
    assert_eq!(r.data()["enqueuedCount"], 1);
    let id = ids(&r.data()["executionIds"]).remove(0);
    let replay = k.run_resp(&f, body.clone(), Some("run-key-1")).await;
    replay.expect(202);
    assert_eq!(replay.text, r.text, "replay returns the original body");
    assert_eq!(
        replay
            .headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(
        k.list(&format!("flowId={f}")).await.len(),
        1,
        "a replay never starts a second run"
    );
    k.run_resp(&f, json!({"payload": {"s": 2}}), Some("run-key-1"))
        .await
        .expect_error(422, "idempotency_key_reused");

    let e = k.done(&id).await;
    assert_eq!(e["status"], "success", "{e}");
    assert_eq!(e["invocationId"], "run-key-1");
    assert_eq!(e["kind"], "live");
    assert_eq!(e["createdBy"], "default");
    assert!(e["eventId"].is_null());
    let flow = k.get_flow(&f).await;
    assert_eq!(flow["enabled"], false, "run does not enable the flow");
    ms(&flow["lastTriggeredAt"]);

    // Payload checks.
    let r = k
        .run_resp(&f, json!({"payload": {"s": "soon"}}), None)
        .await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), ["payload.s"]);
    let r = k.run_resp(&f, json!({"payload": 3}), None).await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), ["payload"]);

    // An empty body is `{}`; the invocation id is then a fresh UUID.
    let r = s
        .raw(Method::POST, &format!("/v1/flows/{f}/run"), Vec::new())
        .await;
    r.expect(202);
    let id = ids(&r.data()["executionIds"]).remove(0);
    let e = k.done(&id).await;
    uuid::Uuid::parse_str(str_of(&e["invocationId"])).expect("invocationId is a UUID");

    // One row per bound device, in deviceIds order.
    let d1 = k.device("run-1").await;
    let d2 = k.device("run-2").await;
    let fd = k
        .flow(
            json!({"name": "Two devices", "triggerId": t, "deviceIds": [d2, d1],
                     "actions": [node(&zero, 0, "w")]}),
        )
        .await;
    let r = k.run_resp(&fd, json!({}), None).await;
    r.expect(202).schema(RUN);
    assert_eq!(r.data()["enqueuedCount"], 2);
    let run_ids = ids(&r.data()["executionIds"]);
    let mut devices = Vec::new();
    for id in &run_ids {
        let e = k.done(id).await;
        assert_eq!(e["status"], "success");
        devices.push(str_of(&e["deviceId"]).to_string());
    }
    assert_eq!(devices, [d2.clone(), d1.clone()]);

    // A flow that needs a device and has none: a skipped row, nothing enqueued.
    let fnd = k
        .flow(json!({"name": "No device", "triggerId": t, "actions": [node(&tap, 0, "tap")]}))
        .await;
    let r = k.run_resp(&fnd, json!({}), None).await;
    r.expect(202);
    assert_eq!(r.data(), &json!({"enqueuedCount": 0, "executionIds": []}));
    let rows = k.list(&format!("flowId={fnd}")).await;
    assert_eq!(statuses(&rows), ["skipped"]);
    assert_eq!(rows[0]["error"], "no_device");

    // Archived, unknown and foreign flows.
    s.delete(&format!("/v1/flows/{fd}")).await.expect(200);
    k.run_resp(&fd, json!({}), None)
        .await
        .expect_error(404, "not_found");
    k.run_resp(&uuid::Uuid::new_v4().to_string(), json!({}), None)
        .await
        .expect_error(404, "not_found");
    s.call_as(
        &s.other_key,
        Method::POST,
        &format!("/v1/flows/{f}/run"),
        Some(&json!({})),
        &[],
    )
    .await
    .expect_error(404, "not_found");
}

// ---------------------------------------------------------------------------------------------
// 3. Step loop

#[tokio::test]
async fn steps_run_by_position_with_resolved_templates_and_progress() {
    let k = Kit::start(&[]).await;
    let t = k.trigger("Steps").await;
    let from_payload = k
        .action(
            "flow.wait",
            "Wait for s",
            json!({"seconds": "{{event.payload.s}}"}),
        )
        .await;
    let half = k
        .action("flow.wait", "Wait a bit", json!({"seconds": 5}))
        .await;
    let from_step = k
        .action(
            "flow.wait",
            "Wait as before",
            json!({"seconds": "{{ steps.first.body.waitedSeconds }}"}),
        )
        .await;
    // Positions with gaps, sent out of order.
    let f = k
        .flow(json!({"name": "Ordered", "triggerId": t, "actions": [
            node_with(&half, 17, "middle", json!({"overrides": {"params": {"seconds": 0.3}}})),
            node(&from_step, 30, "last"),
            node(&from_payload, 5, "first"),
        ]}))
        .await;
    let nodes = k.s.get(&format!("/v1/flows/{f}/actions")).await;
    let positions: Vec<i64> = nodes
        .data()
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["position"].as_i64().unwrap())
        .collect();
    assert_eq!(positions, [5, 17, 30]);

    let id = k.run_one(&f, json!({"s": 0.05})).await;
    // While the middle step runs.
    let e = k
        .wait_for(&id, |e| pstatus(e, 1) == "running", Duration::from_secs(5))
        .await;
    assert_eq!(e["status"], "running");
    ms(&e["startedAt"]);
    assert!(e["finishedAt"].is_null());
    assert_eq!(e["progress"]["total"], 3);
    assert_eq!(e["progress"]["currentIndex"], 1);
    let p = progress(&e);
    assert_eq!(p[0]["status"], "success");
    ms(&p[0]["startedAt"]);
    ms(&p[0]["finishedAt"]);
    ms(&p[1]["startedAt"]);
    assert!(p[1]["finishedAt"].is_null());
    assert_eq!(p[2]["status"], "pending");
    assert!(p[2]["startedAt"].is_null());
    assert!(p[2]["finishedAt"].is_null());
    assert_eq!(steps(&e)[0]["params"], json!({"seconds": 0.05}));

    let e = k.done(&id).await;
    assert_eq!(e["status"], "success", "{e}");
    assert!(e["error"].is_null());
    assert!(e["progress"]["currentIndex"].is_null());
    let st = steps(&e);
    let keys: Vec<&str> = st.iter().map(|s| str_of(&s["key"])).collect();
    assert_eq!(
        keys,
        ["first", "middle", "last"],
        "siblings run by position"
    );
    let names: Vec<&str> = st.iter().map(|s| str_of(&s["name"])).collect();
    assert_eq!(names, ["Wait for s", "Wait a bit", "Wait as before"]);
    for (i, s) in st.iter().enumerate() {
        assert_keys(s, &STEP_KEYS);
        assert_eq!(s["index"], i);
        assert_eq!(s["status"], "success");
        assert_eq!(s["service"], "tasks_api");
        assert_eq!(s["method"], "flow.wait");
        assert_eq!(s["attempt"], 0);
        assert!(s["error"].is_null());
        assert!(ms(&s["startedAt"]) <= ms(&s["finishedAt"]));
    }
    // A whole token keeps the JSON type of its value; overrides replace the action's params.
    assert!(st[0]["params"]["seconds"].is_f64());
    assert_eq!(st[0]["params"], json!({"seconds": 0.05}));
    assert_eq!(st[0]["body"], json!({"waitedSeconds": 0.05}));
    assert_eq!(st[1]["params"], json!({"seconds": 0.3}));
    assert_eq!(
        st[2]["params"],
        json!({"seconds": 0.05}),
        "from steps.first.body"
    );
    for w in st.windows(2) {
        assert!(
            ms(&w[0]["finishedAt"]) <= ms(&w[1]["startedAt"]),
            "sequential: {w:?}"
        );
    }
    let p = progress(&e);
    assert_eq!(p.len(), 3);
    for (i, s) in p.iter().enumerate() {
        assert_keys(s, &PROGRESS_STEP_KEYS);
        assert_eq!(s["index"], i);
        assert_eq!(s["status"], "success");
        assert_eq!(s["name"], st[i]["name"]);
        assert_eq!(s["startedAt"], st[i]["startedAt"]);
        assert_eq!(s["finishedAt"], st[i]["finishedAt"]);
        assert_eq!(s["attempt"], 0);
    }
    assert!(ms(&e["startedAt"]) <= ms(&st[0]["startedAt"]));
    assert!(ms(&e["finishedAt"]) >= ms(&st[2]["finishedAt"]));

    // Flows are created with template version 3, and clones keep it: no API yields 1 or 2.
    let r = k.s.post(&format!("/v1/flows/{f}/clone"), json!({})).await;
    r.expect(201);
    assert_eq!(r.data()["templateResolutionVersion"], 3);
}

#[tokio::test]
async fn if_and_for_each_run_their_bodies() {
    let k = Kit::start(&[]).await;
    let t = k.trigger("Bodies").await;
    let gate = k
        .action(
            "flow.if",
            "Flag set",
            json!({"condition": {"field": "event.payload.flag", "op": "eq", "value": true}}),
        )
        .await;
    let zero = k
        .action("flow.wait", "Wait zero", json!({"seconds": 0}))
        .await;
    let each = k
        .action(
            "flow.for_each",
            "Each item",
            json!({"items": "{{event.payload.items}}", "itemVariable": "x"}),
        )
        .await;
    let wait_item = k
        .action("flow.wait", "Wait item", json!({"seconds": "{{x}}"}))
        .await;
    let check = k
        .action(
            "flow.if",
            "Index check",
            json!({"condition": {"any": [
                {"field": "loop.index", "op": "eq", "value": "{{loop.index}}"},
                {"field": "loop.first", "op": "eq", "value": "{{loop.first}}"}]}}),
        )
        .await;
    let capped = k
        .action(
            "flow.for_each",
            "Capped",
            json!({"items": [0, 0, 0, 0], "maxIterations": 2}),
        )
        .await;
    let f = k
        .flow(json!({"name": "Bodies", "triggerId": t, "actions": [
            node_with(&gate, 0, "gate", json!({"children": [node(&zero, 0, "inner")]})),
            node_with(&each, 10, "each", json!({"children": [
                node(&wait_item, 0, "w_item"), node(&check, 5, "chk")]})),
            node_with(&capped, 20, "capped", json!({"children": [
                node(&zero, 0, "capped_w")]})),
        ]}))
        .await;

    let id = k
        .run_one(&f, json!({"flag": true, "items": [0, 0.01, 0.02]}))
        .await;
    let e = k.done(&id).await;
    assert_eq!(e["status"], "success", "{e}");
    let st = steps(&e);
    // flow.if, true: the child ran.
    assert_eq!(st[0]["status"], "success");
    assert_eq!(st[0]["body"], json!({"result": true}));
    let children = st[0]["children"].as_array().expect("flow.if children");
    assert_eq!(children.len(), 1);
    assert_keys(&children[0], &STEP_KEYS);
    assert_eq!(children[0]["key"], "inner");
    assert_eq!(children[0]["status"], "success");
    assert_eq!(children[0]["params"], json!({"seconds": 0}));
    ms(&children[0]["startedAt"]);
    // flow.for_each: one body per item with loop variables resolved per iteration.
    assert_eq!(st[1]["status"], "success");
    let iterations = st[1]["iterations"].as_array().expect("iterations");
    assert_eq!(iterations.len(), 3);
    let items = [0.0, 0.01, 0.02];
    for (i, it) in iterations.iter().enumerate() {
        let it = it.as_array().unwrap();
        assert_eq!(it.len(), 2);
        assert_eq!(it[0]["key"], "w_item");
        assert_eq!(it[0]["status"], "success");
        assert_eq!(it[0]["params"]["seconds"].as_f64(), Some(items[i]));
        assert_eq!(it[1]["key"], "chk");
        assert_eq!(it[1]["status"], "success");
        let leaves = &it[1]["params"]["condition"]["any"];
        assert_eq!(leaves[0]["value"], i, "{{{{loop.index}}}} in iteration {i}");
        assert_eq!(
            leaves[1]["value"],
            i == 0,
            "{{{{loop.first}}}} in iteration {i}"
        );
        assert_eq!(it[1]["body"], json!({"result": true}));
    }
    assert_eq!(st[1]["body"]["count"], 3);
    assert_eq!(st[1]["body"]["truncated"], false);
    assert_eq!(
        st[1]["body"]["iterations"][2],
        json!({"w_item": {"waitedSeconds": 0.02}, "chk": {"result": true}})
    );
    // maxIterations truncates.
    assert_eq!(st[2]["body"]["count"], 2);
    assert_eq!(st[2]["body"]["truncated"], true);
    assert_eq!(st[2]["iterations"].as_array().unwrap().len(), 2);

    // flow.if false: children skipped, the step itself succeeds; no items: no iterations.
    let id = k.run_one(&f, json!({"flag": false, "items": []})).await;
    let e = k.done(&id).await;
    assert_eq!(e["status"], "success", "{e}");
    let st = steps(&e);
    assert_eq!(st[0]["status"], "success");
    assert_eq!(st[0]["body"], json!({"result": false}));
    assert_eq!(st[0]["children"][0]["status"], "skipped");
    assert!(st[0]["children"][0]["startedAt"].is_null());
    assert_eq!(st[1]["status"], "success");
    assert_eq!(st[1]["iterations"], json!([]));
    assert_eq!(st[1]["body"]["count"], 0);
}

#[tokio::test]
async fn continue_on_error_failures_and_template_errors() {
    let k = Kit::start(&[]).await;
    let t = k.trigger("Failures").await;
    let zero = k
        .action("flow.wait", "Wait zero", json!({"seconds": 0}))
        .await;
    let hook = k
        .action(
            "webhooks.send",
            "Hook",
            json!({"webhookId": uuid::Uuid::new_v4().to_string()}),
        )
        .await;
    let each = k
        .action("flow.for_each", "Each", json!({"items": [1, 2]}))
        .await;
    let coe = json!({"continueOnError": true});

    // Tolerated failures, top level and in a loop body.
    let tolerant = k
        .flow(json!({"name": "Tolerant", "triggerId": t, "actions": [
            node_with(&hook, 0, "hook", coe.clone()),
            node(&zero, 1, "after"),
            node_with(&each, 2, "each", json!({"children": [
                node_with(&hook, 0, "child_hook", coe.clone()), node(&zero, 1, "child_after")]})),
        ]}))
        .await;
    // An untolerated failure in the middle.
    let failing = k
        .flow(json!({"name": "Failing", "triggerId": t, "actions": [
            node(&zero, 0, "before"), node(&hook, 1, "hook"), node(&zero, 2, "after")]}))
        .await;
    // An untolerated failure inside a loop body.
    let body_fail = k
        .flow(json!({"name": "Body failure", "triggerId": t, "actions": [
            node_with(&each, 0, "each", json!({"children": [
                node(&hook, 0, "c_hook"), node(&zero, 1, "c_after")]})),
            node(&zero, 1, "after")]}))
        .await;

    let e = k.done(&k.run_one(&tolerant, json!({})).await).await;
    assert_eq!(e["status"], "success", "{e}");
    assert!(e["error"].is_null());
    let st = steps(&e);
    assert_eq!(st[0]["status"], "failed");
    assert!(
        str_of(&st[0]["error"]).starts_with("invalid_config: "),
        "StepResult.error is '<class>: <message>': {}",
        st[0]["error"]
    );
    ms(&st[0]["finishedAt"]);
    assert_eq!(st[1]["status"], "success");
    assert_eq!(st[2]["status"], "success");
    for it in st[2]["iterations"].as_array().unwrap() {
        assert_eq!(statuses(it.as_array().unwrap()), ["failed", "success"]);
    }
    assert_eq!(statuses(progress(&e)), ["failed", "success", "success"]);
    let flow = k.get_flow(&tolerant).await;
    assert_eq!(flow["status"], "healthy");
    assert_eq!(flow["consecutiveFailures"], 0);

    let e = k.done(&k.run_one(&failing, json!({})).await).await;
    assert_eq!(e["status"], "failed", "{e}");
    let st = steps(&e);
    assert_eq!(statuses(st), ["success", "failed", "skipped"]);
    let step_error = str_of(&st[1]["error"]);
    assert!(step_error.starts_with("invalid_config: "), "{step_error}");
    assert_eq!(
        e["error"],
        format!("hook: {step_error}"),
        "error is '<stepKey>: <class>: <message>'"
    );
    ms(&st[1]["finishedAt"]);
    assert!(st[2]["startedAt"].is_null());
    assert_eq!(statuses(progress(&e)), ["success", "failed", "skipped"]);
    assert!(progress(&e)[2]["startedAt"].is_null());
    let flow = k
        .wait_flow(&failing, |f| f["consecutiveFailures"] == 1)
        .await;
    assert_eq!(flow["lastFailureCode"], "invalid_config");
    assert_eq!(flow["status"], "blocked", "invalid_config blocks at once");
    ms(&flow["lastFailureAt"]);
    ms(&flow["blockedAt"]);

    let e = k.done(&k.run_one(&body_fail, json!({})).await).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(
        str_of(&e["error"]).starts_with("c_hook: invalid_config: "),
        "{}",
        e["error"]
    );
    let st = steps(&e);
    assert_eq!(statuses(st), ["failed", "skipped"]);
    let first = st[0]["iterations"][0].as_array().unwrap();
    assert_eq!(statuses(first), ["failed", "skipped"]);
    for it in st[0]["iterations"].as_array().unwrap().iter().skip(1) {
        assert!(
            it.as_array()
                .unwrap()
                .iter()
                .all(|c| c["status"] != "success"),
            "no body runs after the failure: {it}"
        );
    }
}

#[tokio::test]
async fn template_and_param_errors_before_the_first_step_make_the_run_invalid() {
    let k = Kit::start(&[]).await;
    let t = k.trigger("Templates").await;
    let zero = k
        .action("flow.wait", "Wait zero", json!({"seconds": 0}))
        .await;
    let missing = k
        .action(
            "flow.wait",
            "Missing",
            json!({"seconds": "{{event.payload.missing}}"}),
        )
        .await;
    let typed = k
        .action(
            "flow.wait",
            "Typed",
            json!({"seconds": "{{event.payload.s}}"}),
        )
        .await;
    let late = k
        .action(
            "flow.wait",
            "Late",
            json!({"seconds": "{{steps.a.body.nothing}}"}),
        )
        .await;

    // A template error in the first step.
    let f1 = k
        .flow(json!({"name": "Missing first", "triggerId": t,
                     "actions": [node(&missing, 0, "w")]}))
        .await;
    let e = k.done(&k.run_one(&f1, json!({})).await).await;
    assert_eq!(e["status"], "invalid", "{e}");
    assert!(
        str_of(&e["error"]).starts_with("template_error:"),
        "{}",
        e["error"]
    );
    ms(&e["finishedAt"]);
    assert!(e["result"].is_null(), "no step started: {e}");
    assert!(progress(&e).iter().all(|s| s["startedAt"].is_null()));
    let flow = k.wait_flow(&f1, |f| f["consecutiveFailures"] == 1).await;
    assert_eq!(flow["lastFailureCode"], "invalid_config");
    assert_eq!(flow["status"], "blocked");

    // A template error in a later step is still found before the first step runs.
    let f2 = k
        .flow(json!({"name": "Missing later", "triggerId": t,
                     "actions": [node(&zero, 0, "ok"), node(&missing, 1, "w")]}))
        .await;
    let e = k.done(&k.run_one(&f2, json!({})).await).await;
    assert_eq!(e["status"], "invalid", "{e}");
    assert!(str_of(&e["error"]).starts_with("template_error:"));
    assert!(progress(&e)[0]["startedAt"].is_null(), "no step ran: {e}");

    // A resolved value that fails the params schema.
    let f3 = k
        .flow(json!({"name": "Bad type", "triggerId": t, "actions": [node(&typed, 0, "w")]}))
        .await;
    let e = k.done(&k.run_one(&f3, json!({"s": "soon"})).await).await;
    assert_eq!(e["status"], "invalid", "{e}");
    assert!(
        str_of(&e["error"]).starts_with("invalid_params:"),
        "{}",
        e["error"]
    );

    // A reference to a step output is resolved when the step starts: the step fails.
    let f4 = k
        .flow(json!({"name": "Late failure", "triggerId": t,
                     "actions": [node(&zero, 0, "a"), node(&late, 1, "b")]}))
        .await;
    let e = k.done(&k.run_one(&f4, json!({})).await).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(
        str_of(&e["error"]).starts_with("b: invalid_config: template_error"),
        "{}",
        e["error"]
    );
    assert_eq!(statuses(steps(&e)), ["success", "failed"]);
}

// ---------------------------------------------------------------------------------------------
// 4. Abort

#[tokio::test]
async fn abort_pending_and_running_executions() {
    let k = Kit::start(&[]).await;
    let s = &k.s;
    let t = k.trigger("Abort").await;
    let d = k.device("abort-dev").await;
    let long = k
        .action("flow.wait", "Long wait", json!({"seconds": 30}))
        .await;
    let zero = k
        .action("flow.wait", "Wait zero", json!({"seconds": 0}))
        .await;
    let f = k
        .flow(
            json!({"name": "Abortable", "triggerId": t, "deviceIds": [d],
                     "actions": [node(&long, 0, "long"), node(&zero, 1, "after")]}),
        )
        .await;

    let e1 = k.run_one(&f, json!({})).await;
    k.wait_for(&e1, |e| pstatus(e, 0) == "running", Duration::from_secs(5))
        .await;
    let dev = s.get(&format!("/v1/devices/{d}")).await;
    assert_eq!(dev.data()["state"], "busy");
    let e2 = k.run_one(&f, json!({})).await;
    let e3 = k.run_one(&f, json!({})).await;
    for id in [&e2, &e3] {
        let e = k.exec(id).await;
        assert_eq!(e["status"], "pending", "behind a busy device: {e}");
        assert!(e["startedAt"].is_null());
        assert!(e["result"].is_null());
        assert_eq!(statuses(progress(&e)), ["pending", "pending"]);
    }

    // Pending → cancelled at once; a same-key retry replays the 200.
    let path = format!("/v1/executions/{e2}/abort");
    let r = s
        .call_as(
            &s.key,
            Method::POST,
            &path,
            None,
            &[("Idempotency-Key", "abort-e2")],
        )
        .await;
    r.expect(200).schema(ABORT);
    assert_keys(r.data(), &SUMMARY_KEYS);
    assert_eq!(r.data()["id"], e2.as_str());
    assert_eq!(r.data()["status"], "cancelled");
    assert!(r.data()["startedAt"].is_null());
    assert!(r.data()["error"].is_null());
    ms(&r.data()["finishedAt"]);
    let replay = s
        .call_as(
            &s.key,
            Method::POST,
            &path,
            None,
            &[("Idempotency-Key", "abort-e2")],
        )
        .await;
    replay.expect(200);
    assert_eq!(replay.text, r.text);
    assert_eq!(
        replay
            .headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    let e = k.exec(&e2).await;
    assert_eq!(e["status"], "cancelled");
    assert_eq!(statuses(progress(&e)), ["cancelled", "cancelled"]);
    let r = k.abort(&e2).await;
    r.expect_error(409, "execution_terminal");
    assert_eq!(r.body["details"]["status"], "cancelled");

    // Running → cancelled at once; the 30 s wait ends, the next step never starts.
    let t0 = Instant::now();
    let r = s
        .call(Method::POST, &format!("/executions/{e1}/abort"), None)
        .await;
    let call = t0.elapsed();
    r.expect(200).schema(ABORT);
    assert_eq!(r.data()["status"], "cancelled");
    ms(&r.data()["startedAt"]);
    let finished = ms(&r.data()["finishedAt"]);
    assert!(call < Duration::from_secs(1), "abort took {call:?}");
    let e = k.wait_for(&e1, is_terminal, Duration::from_secs(1)).await;
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "terminal after {:?}",
        t0.elapsed()
    );
    assert_eq!(e["status"], "cancelled");
    assert_eq!(ms(&e["finishedAt"]), finished);
    let st = steps(&e);
    assert_eq!(statuses(st), ["cancelled", "cancelled"]);
    assert!(ms(&st[0]["finishedAt"]) <= finished + 1000);
    ms(&st[0]["startedAt"]);
    assert!(st[1]["startedAt"].is_null());
    let p = progress(&e);
    assert_eq!(statuses(p), ["cancelled", "cancelled"]);
    ms(&p[0]["finishedAt"]);
    assert!(p[1]["startedAt"].is_null());

    // The device is free again: the pending run behind it starts; the aborted ones do not.
    k.wait_for(&e3, |e| pstatus(e, 0) == "running", Duration::from_secs(5))
        .await;
    assert_eq!(
        k.exec(&e1).await,
        e,
        "an aborted run never changes afterwards"
    );
    let later = k.exec(&e2).await;
    assert_eq!(later["status"], "cancelled");
    assert!(
        later["startedAt"].is_null(),
        "a cancelled pending row never starts"
    );
    let r = k.abort(&e1).await;
    r.expect_error(409, "execution_terminal");
    assert_eq!(r.body["details"]["status"], "cancelled");

    // Unknown, malformed and foreign ids.
    for id in [uuid::Uuid::new_v4().to_string(), "not-a-uuid".to_string()] {
        let r = k.abort(&id).await;
        r.expect_error(404, "not_found");
        assert!(r.body["error"].is_string());
    }
    s.call_as(
        &s.other_key,
        Method::POST,
        &format!("/v1/executions/{e3}/abort"),
        None,
        &[],
    )
    .await
    .expect_error(404, "not_found");
    s.call_as(
        &s.other_key,
        Method::GET,
        &format!("/v1/executions/{e3}"),
        None,
        &[],
    )
    .await
    .expect_error(404, "not_found");
    assert_eq!(
        k.exec(&e3).await["status"],
        "running",
        "a foreign abort changes nothing"
    );
    let r = k.abort(&e3).await;
    r.expect(200);

    // Terminal success → 409 with its status.
    let quick = k
        .flow(json!({"name": "Quick", "triggerId": t, "actions": [node(&zero, 0, "w")]}))
        .await;
    let q = k.run_one(&quick, json!({})).await;
    assert_eq!(k.done(&q).await["status"], "success");
    let r = k.abort(&q).await;
    r.expect_error(409, "execution_terminal");
    assert_eq!(r.body["details"]["status"], "success");

    // Abort never counts for health.
    let flow = k.get_flow(&f).await;
    assert_eq!(flow["status"], "healthy");
    assert_eq!(flow["consecutiveFailures"], 0);
    assert!(flow["lastFailureAt"].is_null());
}

#[tokio::test]
async fn concurrent_aborts_have_exactly_one_winner() {
    let k = Kit::start(&[]).await;
    let s = &k.s;
    let t = k.trigger("Race").await;
    let long = k
        .action("flow.wait", "Long wait", json!({"seconds": 30}))
        .await;
    let f = k
        .flow(json!({"name": "Race", "triggerId": t, "actions": [node(&long, 0, "long")]}))
        .await;
    let id = k.run_one(&f, json!({})).await;
    k.wait_for(&id, |e| pstatus(e, 0) == "running", Duration::from_secs(5))
        .await;
    let path = format!("/v1/executions/{id}/abort");
    let results =
        futures::future::join_all((0..50).map(|_| s.call(Method::POST, &path, None))).await;
    let ok = results.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 1, "exactly one abort wins");
    for r in results.iter().filter(|r| r.status != 200) {
        r.expect_error(409, "execution_terminal");
        assert_eq!(r.body["details"]["status"], "cancelled");
    }
    let e = k.wait_for(&id, is_terminal, Duration::from_secs(1)).await;
    assert_eq!(e["status"], "cancelled");
    assert_eq!(statuses(steps(&e)), ["cancelled"]);
}

// ---------------------------------------------------------------------------------------------
// 5. Lists and metrics

#[tokio::test]
async fn execution_list_filters_ordering_pagination_and_metrics() {
    let k = Kit::start(&[]).await;
    let s = &k.s;
    let ta = k.trigger("Alpha Trigger").await;
    let tb = k.trigger("Beta 100% Trigger").await;
    let d = k.device("metrics-dev").await;
    let zero = k
        .action("flow.wait", "Wait zero", json!({"seconds": 0}))
        .await;
    let long = k
        .action("flow.wait", "Long wait", json!({"seconds": 30}))
        .await;
    let hook = k
        .action(
            "webhooks.send",
            "Hook",
            json!({"webhookId": uuid::Uuid::new_v4().to_string()}),
        )
        .await;
    let tap = k
        .action("devices.tap", "Tap", json!({"x": 1, "y": 2}))
        .await;
    let missing = k
        .action(
            "flow.wait",
            "Missing",
            json!({"seconds": "{{event.payload.missing}}"}),
        )
        .await;
    let flow = |name: &str, t: &str, devices: Vec<&str>, action: &str| {
        json!({"name": name, "triggerId": t, "deviceIds": devices,
               "actions": [node(action, 0, "step")]})
    };
    let f_night = k.flow(flow("Nightly Report", &ta, vec![], &zero)).await;
    let f_clean = k.flow(flow("Cleanup", &tb, vec![], &zero)).await;
    let f_hook = k.flow(flow("Hook sender", &ta, vec![], &hook)).await;
    let f_nodev = k.flow(flow("Needs device", &tb, vec![], &tap)).await;
    let f_bad = k.flow(flow("Bad template", &tb, vec![], &missing)).await;
    let f_long = k.flow(flow("Long wait", &ta, vec![&d], &long)).await;
    let f_empty = k.flow(flow("Never run", &ta, vec![], &zero)).await;

    let r1 = k.done(&k.run_one(&f_night, json!({})).await).await;
    let r2 = k.done(&k.run_one(&f_night, json!({})).await).await;
    let r = k.run_resp(&f_clean, json!({}), Some("metrics-inv")).await;
    r.expect(202);
    let clean = k.done(&ids(&r.data()["executionIds"])[0]).await;
    let failed = k.done(&k.run_one(&f_hook, json!({})).await).await;
    k.run_resp(&f_nodev, json!({}), None).await.expect(202);
    let invalid = k.done(&k.run_one(&f_bad, json!({})).await).await;
    let e1 = k.run_one(&f_long, json!({})).await;
    k.wait_for(&e1, |e| e["status"] == "running", Duration::from_secs(5))
        .await;
    let e2 = k.run_one(&f_long, json!({})).await;
    let e3 = k.run_one(&f_long, json!({})).await;
    k.abort(&e3).await.expect(200);
    for (e, status) in [
        (&r1, "success"),
        (&r2, "success"),
        (&clean, "success"),
        (&failed, "failed"),
        (&invalid, "invalid"),
    ] {
        assert_eq!(e["status"], status, "{e}");
    }
    assert!(ms(&r1["startedAt"]) < ms(&r2["startedAt"]));

    let all = k.list("pageSize=100").await;
    assert_eq!(all.len(), 9);
    let count = |status: &str| all.iter().filter(|e| e["status"] == status).count();
    let expected_counts: HashMap<&str, usize> = [
        ("pending", 1),
        ("running", 1),
        ("success", 3),
        ("failed", 1),
        ("cancelled", 1),
        ("skipped", 1),
        ("invalid", 1),
    ]
    .into();
    for (status, n) in &expected_counts {
        assert_eq!(count(status), *n, "{status}");
    }
    let skipped = all.iter().find(|e| e["status"] == "skipped").unwrap();
    assert_eq!(skipped["flowId"], f_nodev.as_str());
    let id_set = |items: &[Value]| -> Vec<String> {
        let mut v: Vec<String> = items.iter().map(|e| str_of(&e["id"]).to_string()).collect();
        v.sort();
        v
    };
    let expect_ids = |pred: &dyn Fn(&Value) -> bool| -> Vec<String> {
        let v: Vec<Value> = all.iter().filter(|e| pred(e)).cloned().collect();
        id_set(&v)
    };

    // flowId, triggerId, invocationId.
    let rows = k.list(&format!("flowId={f_night}")).await;
    assert_eq!(
        id_set(&rows),
        expect_ids(&|e| e["flowId"] == f_night.as_str())
    );
    assert_eq!(rows.len(), 2);
    let rows = k.list(&format!("triggerId={ta}&pageSize=100")).await;
    assert_eq!(rows.len(), 6);
    assert_eq!(
        id_set(&rows),
        expect_ids(&|e| e["triggerId"] == ta.as_str())
    );
    let rows = k.list(&format!("triggerId={tb}&pageSize=100")).await;
    assert_eq!(rows.len(), 3);
    let rows = k.list("invocationId=metrics-inv").await;
    assert_eq!(id_set(&rows), [str_of(&clean["id"]).to_string()]);
    assert!(k.list(&format!("flowId={f_empty}")).await.is_empty());
    let r = s.get("/v1/executions?flowId=nope").await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), ["flowId"]);

    // status: comma-joined, repeated, both; empty elements ignored; case-sensitive.
    let ok_or_failed = expect_ids(&|e| e["status"] == "success" || e["status"] == "failed");
    assert_eq!(ok_or_failed.len(), 4);
    for q in [
        "status=success,failed",
        "status=success&status=failed",
        "status=success,&status=,failed",
    ] {
        assert_eq!(id_set(&k.list(q).await), ok_or_failed, "{q}");
    }
    assert_eq!(id_set(&k.list("status=running").await), [e1.as_str()]);
    let rows = k.list("status=pending,cancelled").await;
    let mut want = vec![e2.clone(), e3.clone()];
    want.sort();
    assert_eq!(id_set(&rows), want);
    for bad in ["status=bogus", "status=SUCCESS", "status=success,nope"] {
        let r = s.get(&format!("/v1/executions?{bad}")).await;
        r.expect_error(422, "validation_failed");
        assert_eq!(r.error_fields(), ["status"], "{bad}");
    }

    // search: flowName, triggerName, error; case-insensitive; wildcards are literal.
    let folded = |e: &Value| {
        format!(
            "{}\n{}\n{}",
            e["flowName"].as_str().unwrap_or(""),
            e["triggerName"].as_str().unwrap_or(""),
            e["error"].as_str().unwrap_or("")
        )
        .to_lowercase()
    };
    for (needle, n) in [
        ("nightly", Some(2)),
        ("NIGHTLY REP", Some(2)),
        ("beta", Some(3)),
        ("unknown_webhook", Some(1)),
        ("UNKNOWN_WEBHOOK", Some(1)),
        ("No_Device", Some(1)),
        ("template_error", Some(1)),
        ("100%", Some(3)),
        ("%", Some(3)),
        ("y%r", Some(0)),
        ("t_r", None),
        ("*", Some(0)),
        ("zzz", Some(0)),
    ] {
        let rows = k
            .list(&format!("search={}&pageSize=100", enc(needle)))
            .await;
        let lower = needle.to_lowercase();
        let want = expect_ids(&|e| folded(e).contains(&lower));
        assert_eq!(id_set(&rows), want, "search {needle}");
        if let Some(n) = n {
            assert_eq!(rows.len(), n, "search {needle}");
        }
    }
    // `_` is literal: "Nightly Report" contains "t r", which a LIKE wildcard would match.
    let rows = k.list("search=t_r&pageSize=100").await;
    assert!(rows.iter().all(|e| e["flowId"] != f_night.as_str()));
    assert_eq!(
        k.list("search=&pageSize=100").await.len(),
        9,
        "empty = absent"
    );

    // from (inclusive) / to (exclusive) on the reference time; offsets accepted.
    let kr = &k;
    let night = |q: &str| {
        let q = format!("flowId={f_night}&{q}");
        async move { id_set(&kr.list(&q).await) }
    };
    let (id1, id2) = (str_of(&r1["id"]).to_string(), str_of(&r2["id"]).to_string());
    let (s1, s2) = (ms(&r1["startedAt"]), ms(&r2["startedAt"]));
    let at = |v: &Value| enc(str_of(v));
    assert_eq!(
        night(&format!("from={}", at(&r2["startedAt"]))).await,
        [id2.as_str()]
    );
    assert_eq!(
        night(&format!("to={}", at(&r2["startedAt"]))).await,
        [id1.as_str()]
    );
    assert_eq!(
        night(&format!(
            "from={}&to={}",
            at(&r1["startedAt"]),
            at(&r2["startedAt"])
        ))
        .await,
        [id1.as_str()]
    );
    assert_eq!(
        night(&format!("from={}", enc(&with_offset(s2, 120)))).await,
        [id2.as_str()]
    );
    assert_eq!(
        night(&format!("to={}", enc(&with_offset(s1 + 1, -330)))).await,
        [id1.as_str()]
    );
    // A skipped row's reference time is its enqueue time (= its finishedAt).
    let sk = &skipped["finishedAt"];
    assert_eq!(
        k.list(&format!("flowId={f_nodev}&from={}", at(sk)))
            .await
            .len(),
        1
    );
    assert!(
        k.list(&format!("flowId={f_nodev}&to={}", at(sk)))
            .await
            .is_empty()
    );
    for (q, field) in [("from=yesterday", "from"), ("to=2026-01-01T00:00:00", "to")] {
        let r = s.get(&format!("/v1/executions?{q}")).await;
        r.expect_error(422, "validation_failed");
        assert_eq!(r.error_fields(), [field]);
    }

    // Ordering.
    let order_ids = |items: &[Value]| -> Vec<String> {
        items.iter().map(|e| str_of(&e["id"]).to_string()).collect()
    };
    let ref_time = |e: &Value| -> Option<i64> {
        if !e["startedAt"].is_null() {
            Some(ms(&e["startedAt"]))
        } else if e["status"] == "skipped" {
            Some(ms(&e["finishedAt"]))
        } else {
            None
        }
    };
    let asc = k
        .list("orderBy=startedAt&orderByDirection=asc&pageSize=100")
        .await;
    let desc = k
        .list("orderBy=startedAt&orderByDirection=desc&pageSize=100")
        .await;
    let mut rev = order_ids(&desc);
    rev.reverse();
    assert_eq!(
        order_ids(&asc),
        rev,
        "startedAt desc = asc reversed (ties on id)"
    );
    let known: Vec<i64> = asc.iter().filter_map(ref_time).collect();
    assert!(
        known.windows(2).all(|w| w[0] <= w[1]),
        "startedAt asc: {known:?}"
    );
    assert_eq!(
        order_ids(&k.list("pageSize=100").await),
        order_ids(&desc),
        "default"
    );
    assert_eq!(
        order_ids(&k.list("orderBy=startedAt&pageSize=100").await),
        order_ids(&desc),
        "default direction desc"
    );
    for dir in ["asc", "desc"] {
        let rows = k
            .list(&format!(
                "orderBy=finishedAt&orderByDirection={dir}&pageSize=100"
            ))
            .await;
        let split = rows
            .iter()
            .position(|e| e["finishedAt"].is_null())
            .unwrap_or(rows.len());
        assert_eq!(split, 7, "{dir}: terminal rows first");
        assert!(
            rows[split..].iter().all(|e| e["finishedAt"].is_null()),
            "{dir}: nulls last"
        );
        let times: Vec<i64> = rows[..split].iter().map(|e| ms(&e["finishedAt"])).collect();
        let tails = order_ids(&rows[split..]);
        if dir == "asc" {
            assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
            assert!(tails.windows(2).all(|w| w[0] < w[1]), "ties by id asc");
        } else {
            assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
            assert!(tails.windows(2).all(|w| w[0] > w[1]), "ties by id desc");
        }
    }
    let asc = k
        .list("orderBy=status&orderByDirection=asc&pageSize=100")
        .await;
    let keys: Vec<(String, String)> = asc
        .iter()
        .map(|e| {
            (
                str_of(&e["status"]).to_string(),
                str_of(&e["id"]).to_string(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "status asc, ties by id asc");
    let mut rev = order_ids(&asc);
    rev.reverse();
    assert_eq!(
        order_ids(&k.list("orderBy=status&pageSize=100").await),
        rev,
        "status desc"
    );
    for (q, field) in [
        ("orderBy=name", "orderBy"),
        ("orderByDirection=up", "orderByDirection"),
    ] {
        let r = s.get(&format!("/v1/executions?{q}")).await;
        r.expect_error(422, "validation_failed");
        assert_eq!(r.error_fields(), [field]);
    }

    // Pagination.
    let mut paged = Vec::new();
    for page in 1..=3 {
        let r = k.list_resp(&format!("pageSize=4&page={page}")).await;
        let p = &r.body["pagination"];
        assert_eq!(
            p,
            &json!({"page": page, "pageSize": 4, "total": 9, "pages": 3,
                    "hasNext": page < 3, "hasPrev": page > 1})
        );
        paged.extend(r.body["items"].as_array().unwrap().clone());
    }
    assert_eq!(order_ids(&paged), order_ids(&desc));
    let r = k.list_resp("pageSize=4&page=4").await;
    assert_eq!(r.body["items"], json!([]));
    assert_eq!(r.body["pagination"]["total"], 9);
    let r = k.list_resp("status=success&pageSize=2").await;
    assert_eq!(r.body["pagination"]["total"], 3);
    assert_eq!(r.body["pagination"]["pages"], 2);
    for (q, field) in [
        ("pageSize=0", "pageSize"),
        ("pageSize=101", "pageSize"),
        ("page=0", "page"),
        ("page=x", "page"),
    ] {
        let r = s.get(&format!("/v1/executions?{q}")).await;
        r.expect_error(422, "validation_failed");
        assert_eq!(r.error_fields(), [field], "{q}");
    }

    // Metrics: the same rows, aggregated.
    let check_metrics = |m: &Value, rows: &[&Value]| {
        assert_eq!(m["total"], rows.len());
        for status in STATUSES {
            let n = rows.iter().filter(|e| e["status"] == status).count();
            assert_eq!(m["byStatus"][status], n, "byStatus.{status}: {m}");
        }
        let durations: Vec<i64> = rows
            .iter()
            .filter(|e| !e["startedAt"].is_null() && !e["finishedAt"].is_null())
            .map(|e| ms(&e["finishedAt"]) - ms(&e["startedAt"]))
            .collect();
        if durations.is_empty() {
            assert!(m["avgDurationMs"].is_null(), "{m}");
        } else {
            let avg = durations.iter().sum::<i64>() as f64 / durations.len() as f64;
            let got = m["avgDurationMs"].as_f64().expect("avgDurationMs");
            assert!((got - avg).abs() < 0.01, "avgDurationMs {got} vs {avg}");
        }
        let last = rows
            .iter()
            .filter(|e| !e["startedAt"].is_null())
            .map(|e| ms(&e["startedAt"]))
            .max();
        match last {
            None => assert!(m["lastExecutionAt"].is_null()),
            Some(t) => assert_eq!(ms(&m["lastExecutionAt"]), t),
        }
    };
    let every: Vec<&Value> = all.iter().collect();
    let m = k.metrics("").await;
    check_metrics(&m, &every);
    for (status, n) in &expected_counts {
        assert_eq!(m["byStatus"][status], *n);
    }
    let m = k.metrics(&format!("flowId={f_night}")).await;
    check_metrics(&m, &[&r1, &r2]);
    let of_tb: Vec<&Value> = all
        .iter()
        .filter(|e| e["triggerId"] == tb.as_str())
        .collect();
    check_metrics(&k.metrics(&format!("triggerId={tb}")).await, &of_tb);
    let m = k
        .metrics(&format!("flowId={f_night}&from={}", at(&r2["startedAt"])))
        .await;
    check_metrics(&m, &[&r2]);
    let m = k
        .metrics(&format!("flowId={f_night}&to={}", at(&r2["startedAt"])))
        .await;
    check_metrics(&m, &[&r1]);
    let m = k.metrics(&format!("flowId={f_empty}")).await;
    assert_eq!(m["total"], 0);
    assert!(m["avgDurationMs"].is_null());
    assert!(m["lastExecutionAt"].is_null());
    let r = s.get("/v1/executions/metrics?from=yesterday").await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), ["from"]);

    // Another owner sees nothing.
    let r = s
        .call_as(&s.other_key, Method::GET, "/v1/executions", None, &[])
        .await;
    r.expect(200);
    assert_eq!(r.body["pagination"]["total"], 0);
    let r = s
        .call_as(
            &s.other_key,
            Method::GET,
            "/v1/executions/metrics",
            None,
            &[],
        )
        .await;
    r.expect(200);
    assert_eq!(r.data()["total"], 0);
}

// ---------------------------------------------------------------------------------------------
// 6. Health

#[tokio::test]
async fn health_is_updated_by_live_outcomes_but_not_by_aborts() {
    let k = Kit::start(&[]).await;
    let t = k.trigger("Health").await;
    let long = k
        .action("flow.wait", "Long wait", json!({"seconds": 30}))
        .await;
    let hook = k
        .action(
            "webhooks.send",
            "Hook",
            json!({"webhookId": uuid::Uuid::new_v4().to_string()}),
        )
        .await;
    // Abort: no health change.
    let fa = k
        .flow(json!({"name": "Aborted", "triggerId": t, "actions": [node(&long, 0, "w")]}))
        .await;
    let r = k.fire(&t, json!({"payload": {}}), None).await;
    r.expect(202);
    let id = str_of(&k.list(&format!("flowId={fa}")).await[0]["id"]).to_string();
    k.wait_for(&id, |e| pstatus(e, 0) == "running", Duration::from_secs(5))
        .await;
    k.abort(&id).await.expect(200);
    let flow = k.get_flow(&fa).await;
    ms(&flow["lastTriggeredAt"]);
    assert_eq!(flow["status"], "healthy");
    assert_eq!(flow["consecutiveFailures"], 0);
    assert!(flow["lastFailureAt"].is_null());

    // healthMonitoringEnabled: false → failures change nothing.
    let fm = k
        .flow(
            json!({"name": "Unmonitored", "triggerId": t, "healthMonitoringEnabled": false,
                     "actions": [node(&hook, 0, "hook")]}),
        )
        .await;
    let e = k.done(&k.run_one(&fm, json!({})).await).await;
    assert_eq!(e["status"], "failed");
    // A monitored twin, run after it, shows when health has been recorded.
    let twin = k
        .flow(json!({"name": "Monitored", "triggerId": t, "actions": [node(&hook, 0, "hook")]}))
        .await;
    k.done(&k.run_one(&twin, json!({})).await).await;
    k.wait_flow(&twin, |f| f["status"] == "blocked").await;
    let flow = k.get_flow(&fm).await;
    assert_eq!(flow["status"], "healthy");
    assert_eq!(flow["consecutiveFailures"], 0);
    assert!(flow["lastFailureAt"].is_null());

    // A blocked flow is gated: fire → skipped `blocked`, not counted.
    let r = k
        .fire(&t, json!({"payload": {}}), Some("while-blocked"))
        .await;
    r.expect(202);
    let rows = k.list("invocationId=while-blocked").await;
    let twin_rows: Vec<&Value> = rows
        .iter()
        .filter(|e| e["flowId"] == twin.as_str())
        .collect();
    assert_eq!(twin_rows.len(), 1);
    assert_eq!(twin_rows[0]["status"], "skipped");
    assert_eq!(twin_rows[0]["error"], "blocked");
    let counted = rows.iter().filter(|e| e["status"] != "skipped").count();
    assert_eq!(r.body["enqueuedCount"], counted);
    let r = k.run_resp(&twin, json!({}), None).await;
    r.expect(202);
    assert_eq!(r.data(), &json!({"enqueuedCount": 0, "executionIds": []}));

    // Unblock → healthy; idempotent; failure facts kept.
    let before = k.get_flow(&twin).await;
    for _ in 0..2 {
        let r =
            k.s.post(&format!("/v1/flows/{twin}/unblock"), json!({}))
                .await;
        r.expect(200).schema(UNBLOCK);
        let f = r.data();
        assert_eq!(f["status"], "healthy");
        assert_eq!(f["consecutiveFailures"], 0);
        assert!(f["blockedAt"].is_null());
        assert_eq!(f["lastFailureAt"], before["lastFailureAt"]);
        assert_eq!(f["lastFailureCode"], "invalid_config");
    }
    for id in k.list("status=pending,running&pageSize=100").await {
        k.abort(str_of(&id["id"])).await;
    }
}

/// Needs the `adb` provider (§5.12) with `FLOWRUN_ADB`.
#[tokio::test]
async fn failures_count_to_the_threshold_and_success_resets() {
    let (adb_dir, adb) = fake_adb();
    let fail = adb_dir.path().join("fail");
    let s = Server::start_env(
        &["--failure-threshold", "2"],
        &[("FLOWRUN_ADB", adb.to_str().unwrap())],
    )
    .await;
    let k = Kit::with(s).await;
    let t = k.trigger("Threshold").await;
    let d = k.device("hp-1").await;
    let wait = k
        .action(
            "flow.wait",
            "Wait s",
            json!({"seconds": "{{event.payload.s}}"}),
        )
        .await;
    let tap = k
        .action("devices.tap", "Tap", json!({"x": 1, "y": 2}))
        .await;
    let f = k
        .flow(json!({"name": "Tapper", "triggerId": t, "deviceIds": [d],
                     "actions": [node(&wait, 0, "w"), node(&tap, 1, "tap")]}))
        .await;
    let fire = |s: f64| {
        let k = &k;
        let t = &t;
        async move {
            let r = k.fire(t, json!({"payload": {"s": s}}), None).await;
            r.expect(202);
            let inv = str_of(&r.body["invocationId"]).to_string();
            let rows = k.list(&format!("invocationId={inv}")).await;
            assert_eq!(rows.len(), 1);
            (r.body.clone(), str_of(&rows[0]["id"]).to_string())
        }
    };

    // A transient failure → failing (1).
    std::fs::write(&fail, "").unwrap();
    let (_, id) = fire(0.0).await;
    let e = k.done(&id).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(
        str_of(&e["error"]).starts_with("tap: transient: "),
        "{}",
        e["error"]
    );
    let log = std::fs::read_to_string(adb_dir.path().join("adb.log")).unwrap_or_default();
    assert!(
        log.contains("-s hp-1 shell input tap 1 2"),
        "adb calls: {log}"
    );
    let flow = k.wait_flow(&f, |f| f["consecutiveFailures"] == 1).await;
    assert_eq!(flow["status"], "failing");
    assert_eq!(flow["lastFailureCode"], "transient");
    assert!(flow["blockedAt"].is_null());
    ms(&flow["lastFailureAt"]);
    ms(&flow["lastTriggeredAt"]);

    // Abort kills the adb child at once, and counts for nothing.
    let slow = adb_dir.path().join("slow");
    let pid_file = adb_dir.path().join("slow.pid");
    std::fs::write(&slow, "").unwrap();
    let (_, id) = fire(0.0).await;
    k.wait_for(
        &id,
        |e| pstatus(e, 1) == "running" && pid_file.exists(),
        Duration::from_secs(5),
    )
    .await;
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t0 = Instant::now();
    k.abort(&id).await.expect(200);
    assert!(t0.elapsed() < Duration::from_secs(1));
    let e = k.exec(&id).await;
    assert_eq!(statuses(steps(&e)), ["success", "cancelled"]);
    ms(&steps(&e)[1]["finishedAt"]);
    // Gone or a zombie (state Z) = killed.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|st| {
                st.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with(|c| c != 'Z')
            })
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while alive() {
        assert!(
            Instant::now() < deadline,
            "adb child {pid} still running after abort"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_file(&slow).unwrap();
    let after_abort = k.get_flow(&f).await;
    assert_eq!(after_abort["consecutiveFailures"], 1);
    assert_eq!(after_abort["status"], "failing");
    assert_eq!(after_abort["lastFailureAt"], flow["lastFailureAt"]);

    // A success resets the counter (failure facts stay).
    std::fs::remove_file(&fail).unwrap();
    let (_, id) = fire(0.0).await;
    let e = k.done(&id).await;
    assert_eq!(e["status"], "success", "{e}");
    assert_eq!(steps(&e)[1]["body"], json!({"ok": true}));
    let flow = k.wait_flow(&f, |f| f["status"] == "healthy").await;
    assert_eq!(flow["consecutiveFailures"], 0);
    assert_eq!(flow["lastFailureCode"], "transient");

    // Two failures reach the threshold → blocked.
    std::fs::write(&fail, "").unwrap();
    for n in 1..=2 {
        let (_, id) = fire(0.0).await;
        assert_eq!(k.done(&id).await["status"], "failed");
        k.wait_flow(&f, |f| f["consecutiveFailures"] == n).await;
    }
    let flow = k.get_flow(&f).await;
    assert_eq!(flow["status"], "blocked");
    ms(&flow["blockedAt"]);

    // Gated while blocked.
    let (body, id) = fire(0.0).await;
    assert_eq!(body["enqueuedCount"], 0);
    let e = k.exec(&id).await;
    assert_eq!(e["status"], "skipped");
    assert_eq!(e["error"], "blocked");

    // Unblock → healthy; the next run goes through.
    std::fs::remove_file(&fail).unwrap();
    let r = k.s.post(&format!("/v1/flows/{f}/unblock"), json!({})).await;
    r.expect(200).schema(UNBLOCK);
    assert_eq!(r.data()["status"], "healthy");
    let (body, id) = fire(0.0).await;
    assert_eq!(body["enqueuedCount"], 1);
    assert_eq!(k.done(&id).await["status"], "success");

    // device not found blocks at once.
    std::fs::write(adb_dir.path().join("gone"), "").unwrap();
    let (_, id) = fire(0.0).await;
    let e = k.done(&id).await;
    assert!(
        str_of(&e["error"]).starts_with("tap: device_not_found: "),
        "{}",
        e["error"]
    );
    let flow = k.wait_flow(&f, |f| f["status"] == "blocked").await;
    assert_eq!(flow["consecutiveFailures"], 1);
    assert_eq!(flow["lastFailureCode"], "device_not_found");
}

// ---------------------------------------------------------------------------------------------
// 7. Cooldown and rate limit

#[tokio::test]
async fn cooldown_per_flow_and_per_device() {
    let k = Kit::start(&["--flow-rate-limit", "0"]).await;
    let s = &k.s;
    let zero = k
        .action("flow.wait", "Wait zero", json!({"seconds": 0}))
        .await;
    let d1 = k.device("cool-1").await;
    let d2 = k.device("cool-2").await;
    let d3 = k.device("cool-3").await;
    let fire = |t: String| {
        let k = &k;
        async move {
            let r = k.fire(&t, json!({"payload": {}}), None).await;
            r.expect(202);
            let inv = str_of(&r.body["invocationId"]).to_string();
            let rows = k.list(&format!("invocationId={inv}&pageSize=100")).await;
            (r.body["enqueuedCount"].as_i64().unwrap(), rows)
        }
    };
    let skipped_devices = |rows: &[Value]| {
        let mut v: Vec<String> = rows
            .iter()
            .filter(|e| e["status"] == "skipped")
            .map(|e| {
                assert_eq!(e["error"], "cooldown_active", "{e}");
                assert!(e["startedAt"].is_null());
                ms(&e["finishedAt"]);
                str_of(&e["deviceId"]).to_string()
            })
            .collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    // Scope flow: the opening firing runs on every target, the next is skipped on all.
    let t1 = k.trigger("Cool flow").await;
    let f1 = k
        .flow(
            json!({"name": "Cool flow", "triggerId": t1, "deviceIds": [d1, d2],
                     "cooldownSeconds": 3600, "cooldownScope": "flow",
                     "actions": [node(&zero, 0, "w")]}),
        )
        .await;
    let (n, rows) = fire(t1.clone()).await;
    assert_eq!(n, 2);
    assert!(rows.iter().all(|e| e["status"] != "skipped"));
    let (n, rows) = fire(t1.clone()).await;
    assert_eq!(n, 0);
    assert_eq!(skipped_devices(&rows), sorted(vec![d1.clone(), d2.clone()]));
    // run bypasses the cooldown.
    assert_eq!(k.run(&f1, json!({})).await.len(), 2);
    s.patch(
        &format!("/v1/flows/{f1}"),
        json!({"deviceIds": [d1, d2, d3]}),
    )
    .await
    .expect(200);
    let (n, rows) = fire(t1.clone()).await;
    assert_eq!(n, 0, "scope flow: a new device is in the flow's window too");
    assert_eq!(rows.len(), 3);

    // Scope device: one window per (flow, device).
    let t2 = k.trigger("Cool device").await;
    let f2 = k
        .flow(
            json!({"name": "Cool device", "triggerId": t2, "deviceIds": [d1, d2],
                     "cooldownSeconds": 3600, "cooldownScope": "device",
                     "actions": [node(&zero, 0, "w")]}),
        )
        .await;
    let (n, _) = fire(t2.clone()).await;
    assert_eq!(n, 2);
    s.patch(
        &format!("/v1/flows/{f2}"),
        json!({"deviceIds": [d1, d2, d3]}),
    )
    .await
    .expect(200);
    let (n, rows) = fire(t2.clone()).await;
    assert_eq!(n, 1, "only the new device is out of its window");
    assert_eq!(skipped_devices(&rows), sorted(vec![d1.clone(), d2.clone()]));
    let ran: Vec<&Value> = rows.iter().filter(|e| e["status"] != "skipped").collect();
    assert_eq!(ran[0]["deviceId"], d3.as_str());
    let (n, rows) = fire(t2.clone()).await;
    assert_eq!(n, 0);
    assert_eq!(rows.len(), 3);

    // run opens the window although it bypasses it.
    let t3 = k.trigger("Cool stamp").await;
    let f3 = k
        .flow(
            json!({"name": "Cool stamp", "triggerId": t3, "cooldownSeconds": 3600,
                     "actions": [node(&zero, 0, "w")]}),
        )
        .await;
    k.run_one(&f3, json!({})).await;
    let (n, rows) = fire(t3.clone()).await;
    assert_eq!(n, 0, "run stamped the cooldown");
    assert_eq!(rows[0]["error"], "cooldown_active");

    // cooldownSeconds 0: none.
    let t4 = k.trigger("No cooldown").await;
    k.flow(
        json!({"name": "No cooldown", "triggerId": t4, "cooldownSeconds": 0,
                  "actions": [node(&zero, 0, "w")]}),
    )
    .await;
    assert_eq!(fire(t4.clone()).await.0, 1);
    assert_eq!(fire(t4.clone()).await.0, 1);
}

#[tokio::test]
async fn rate_limit_per_flow() {
    let k = Kit::start(&["--flow-rate-limit", "2"]).await;
    let zero = k
        .action("flow.wait", "Wait zero", json!({"seconds": 0}))
        .await;
    let t = k.trigger("Limited").await;
    let other_t = k.trigger("Other").await;
    let f = k
        .flow(json!({"name": "Limited", "triggerId": t, "actions": [node(&zero, 0, "w")]}))
        .await;
    k.flow(json!({"name": "Other", "triggerId": other_t, "actions": [node(&zero, 0, "w")]}))
        .await;
    let fire = |t: String| {
        let k = &k;
        async move {
            let r = k.fire(&t, json!({"payload": {}}), None).await;
            r.expect(202);
            let inv = str_of(&r.body["invocationId"]).to_string();
            let rows = k.list(&format!("invocationId={inv}")).await;
            assert_eq!(rows.len(), 1);
            (r.body["enqueuedCount"].as_i64().unwrap(), rows[0].clone())
        }
    };
    assert_eq!(fire(t.clone()).await.0, 1);
    assert_eq!(fire(t.clone()).await.0, 1);
    let (n, row) = fire(t.clone()).await;
    assert_eq!(n, 0, "third fire within the minute");
    assert_eq!(row["status"], "skipped");
    assert_eq!(row["error"], "rate_limited");
    assert!(row["startedAt"].is_null());
    // run bypasses the limit.
    assert_eq!(k.run(&f, json!({})).await.len(), 1);
    assert_eq!(fire(t.clone()).await.0, 0);
    // Buckets are per flow.
    assert_eq!(fire(other_t.clone()).await.0, 1);
}

// ---------------------------------------------------------------------------------------------
// 8. Claim-time re-check

#[tokio::test]
async fn pending_rows_are_rechecked_when_claimed() {
    let k = Kit::start(&[]).await;
    let s = &k.s;
    let one = k
        .action("flow.wait", "One second", json!({"seconds": 1}))
        .await;
    let hook = k
        .action(
            "webhooks.send",
            "Hook",
            json!({"webhookId": uuid::Uuid::new_v4().to_string()}),
        )
        .await;
    let (da, dd, db) = (
        k.device("recheck-a").await,
        k.device("recheck-d").await,
        k.device("recheck-b").await,
    );
    let t = k.trigger("Recheck").await;
    let t_dis = k.trigger("Recheck disabled").await;
    let fa = k
        .flow(
            json!({"name": "Archived", "triggerId": t, "deviceIds": [da],
                     "actions": [node(&one, 0, "w")]}),
        )
        .await;
    let fd = k
        .flow(
            json!({"name": "Disabled", "triggerId": t_dis, "deviceIds": [dd],
                     "actions": [node(&one, 0, "w")]}),
        )
        .await;
    let fb = k
        .flow(json!({"name": "Blocked", "triggerId": t, "deviceIds": [db],
                     "actions": [node(&one, 0, "w"), node(&hook, 1, "hook")]}))
        .await;

    // First runs hold each device.
    let a1 = k.run_one(&fa, json!({})).await;
    let r = k.fire(&t_dis, json!({"payload": {}}), None).await;
    r.expect(202);
    let d1 = str_of(&k.list(&format!("flowId={fd}")).await[0]["id"]).to_string();
    let b1 = k.run_one(&fb, json!({})).await;
    for id in [&a1, &d1, &b1] {
        k.wait_for(id, |e| e["status"] == "running", Duration::from_secs(5))
            .await;
    }
    // Second rows wait behind them.
    let a2 = k.run_one(&fa, json!({})).await;
    let r = k.fire(&t_dis, json!({"payload": {}}), Some("dis-2")).await;
    assert_eq!(r.body["enqueuedCount"], 1);
    let d2 = str_of(&k.list("invocationId=dis-2").await[0]["id"]).to_string();
    let b2 = k.run_one(&fb, json!({})).await;
    for id in [&a2, &d2, &b2] {
        assert_eq!(k.exec(id).await["status"], "pending");
    }
    // Then the flows change.
    s.delete(&format!("/v1/flows/{fa}")).await.expect(200);
    // §3.5: archiving ends the flow's pending rows at once (the claim re-check is the backstop).
    let e = k.exec(&a2).await;
    assert_eq!(e["status"], "skipped", "{e}");
    assert_eq!(e["error"], "archived");
    s.patch(&format!("/v1/flows/{fd}"), json!({"enabled": false}))
        .await
        .expect(200);
    // A run-origin row of a disabled flow is not affected.
    let d3 = k.run_one(&fd, json!({})).await;

    // Running rows finish normally (the blocked flow's first run fails and blocks it).
    assert_eq!(k.done(&a1).await["status"], "success");
    assert_eq!(k.done(&d1).await["status"], "success");
    assert_eq!(k.done(&b1).await["status"], "failed");
    for (id, code) in [(&a2, "archived"), (&d2, "disabled"), (&b2, "blocked")] {
        let e = k.done(id).await;
        assert_eq!(e["status"], "skipped", "{e}");
        assert_eq!(e["error"], code);
        assert!(e["startedAt"].is_null(), "{e}");
        ms(&e["finishedAt"]);
        assert!(e["result"].is_null(), "{e}");
        assert!(e["progress"].is_null(), "{e}");
    }
    assert_eq!(k.done(&d3).await["status"], "success");
}

// ---------------------------------------------------------------------------------------------
// 9. Crash recovery

#[tokio::test]
async fn last_triggered_at_written_behind_is_stored_by_a_clean_stop() {
    let k = Kit::start(&[]).await;
    let t = k.trigger("Behind").await;
    let zero = k.action("flow.wait", "Zero", json!({"seconds": 0})).await;
    let f = k
        .flow(json!({"name": "Behind", "triggerId": t, "actions": [node(&zero, 0, "w")]}))
        .await;
    k.fire(&t, json!({"payload": {}}), None).await.expect(202);
    let first = k.get_flow(&f).await["lastTriggeredAt"].clone();
    ms(&first);

    // A clean stop writes what is held in memory.
    let mut s = k.s;
    s.stop();
    let k = Kit::with(s.restart().await).await;
    assert_eq!(k.get_flow(&f).await["lastTriggeredAt"], first);
}

#[tokio::test]
async fn a_killed_server_resumes_at_the_interrupted_step() {
    let k = Kit::start(&["--lease-seconds", "2"]).await;
    let t = k.trigger("Crash").await;
    let short = k
        .action("flow.wait", "Short", json!({"seconds": 0.05}))
        .await;
    let long = k.action("flow.wait", "Long", json!({"seconds": 3})).await;
    let f = k
        .flow(json!({"name": "Crash", "triggerId": t, "actions": [
            node(&short, 0, "a"), node(&long, 1, "b"), node(&short, 2, "c")]}))
        .await;
    let id = k.run_one(&f, json!({})).await;
    let before = k
        .wait_for(
            &id,
            // Killed once `b` has run for half a second, so its remainder is clearly shorter.
            |e| {
                pstatus(e, 0) == "success"
                    && pstatus(e, 1) == "running"
                    && now_ms() - ms(&e["progress"]["steps"][1]["startedAt"]) >= 500
            },
            Duration::from_secs(5),
        )
        .await;
    let b_started = ms(&progress(&before)[1]["startedAt"]);
    assert_eq!(pstatus(&before, 2), "pending");

    let s = k.s.restart().await;
    let k = Kit::with(s).await;
    let e = k.wait_for(&id, is_terminal, Duration::from_secs(15)).await;
    assert_eq!(e["status"], "success", "{e}");
    assert_eq!(e["startedAt"], before["startedAt"]);
    let st = steps(&e);
    assert_eq!(statuses(st), ["success", "success", "success"]);
    // The step that had succeeded never re-ran.
    assert_eq!(st[0]["attempt"], 0);
    assert_eq!(st[0]["startedAt"], steps(&before)[0]["startedAt"]);
    assert_eq!(st[0]["finishedAt"], steps(&before)[0]["finishedAt"]);
    assert_eq!(progress(&e)[0]["attempt"], 0);
    assert_eq!(
        progress(&e)[0]["startedAt"],
        progress(&before)[0]["startedAt"]
    );
    // The interrupted step restarted in attempt 1 and waited only for the remainder.
    assert_eq!(st[1]["attempt"], 1);
    assert_eq!(progress(&e)[1]["attempt"], 1);
    assert_eq!(st[2]["attempt"], 1);
    let b_end = ms(&st[1]["finishedAt"]);
    assert!(
        b_end - b_started >= 2_900,
        "the wait still lasts its 3 s overall: {}",
        b_end - b_started
    );
    assert!(
        b_end - ms(&st[1]["startedAt"]) <= 2_600,
        "only the remainder is waited: {st:?}"
    );
    let flow = k.get_flow(&f).await;
    assert_eq!(flow["consecutiveFailures"], 0);
}

/// §5.2: in `flow.if` a path whose first segment is not a template root resolves under
/// `event.payload` (`flag` ≡ `event.payload.flag`).
#[tokio::test]
async fn flow_if_bare_paths_resolve_under_the_event_payload() {
    let k = Kit::start(&[]).await;
    let t = k.trigger("Bare").await;
    let gate = k
        .action(
            "flow.if",
            "Flag set",
            json!({"condition": {"field": "flag", "op": "eq", "value": true}}),
        )
        .await;
    let zero = k
        .action("flow.wait", "Wait zero", json!({"seconds": 0}))
        .await;
    let f = k
        .flow(json!({"name": "Bare", "triggerId": t, "actions": [
            node_with(&gate, 0, "gate", json!({"children": [node(&zero, 0, "inner")]}))]}))
        .await;
    let e = k.done(&k.run_one(&f, json!({"flag": true})).await).await;
    assert_eq!(steps(&e)[0]["body"], json!({"result": true}), "{e}");
    assert_eq!(steps(&e)[0]["children"][0]["status"], "success");
}

/// `devices.wait_for_text` on an adb device reads the UI dump (§5.12): text on screen →
/// success with `found: true`; absent until `timeoutSeconds` → failed, class `logic`.
#[tokio::test]
async fn wait_for_text_on_adb_reads_the_ui_dump() {
    let (adb_dir, adb) = fake_adb();
    std::fs::write(
        adb_dir.path().join("ui.xml"),
        r#"<hierarchy><node text="Welcome back" content-desc="" /></hierarchy>"#,
    )
    .unwrap();
    let s = Server::start_env(&[], &[("FLOWRUN_ADB", adb.to_str().unwrap())]).await;
    let k = Kit::with(s).await;
    let t = k.trigger("Texts").await;
    let d = k.device("ui-1").await;
    let seen = k
        .action(
            "devices.wait_for_text",
            "See welcome",
            json!({"text": "welcome", "timeoutSeconds": 5}),
        )
        .await;
    let missing = k
        .action(
            "devices.wait_for_text",
            "See goodbye",
            json!({"text": "Goodbye", "timeoutSeconds": 1}),
        )
        .await;
    k.flow(json!({"name": "Texts", "triggerId": t, "deviceIds": [d],
                  "actions": [node(&seen, 0, "seen"), node(&missing, 1, "missing")]}))
        .await;
    let r = k.fire(&t, json!({"payload": {}}), None).await;
    r.expect(202);
    let inv = str_of(&r.body["invocationId"]).to_string();
    let rows = k.list(&format!("invocationId={inv}")).await;
    assert_eq!(rows.len(), 1);
    let e = k.done(str_of(&rows[0]["id"])).await;
    assert_eq!(statuses(steps(&e)), ["success", "failed"], "{e}");
    assert_eq!(steps(&e)[0]["body"]["found"], true);
    assert_eq!(e["status"], "failed");
    assert_eq!(e["error"], "missing: logic: text_not_found");
    let log = std::fs::read_to_string(adb_dir.path().join("adb.log")).unwrap();
    assert!(
        log.contains("-s ui-1 exec-out uiautomator dump /dev/tty"),
        "adb calls: {log}"
    );
}
