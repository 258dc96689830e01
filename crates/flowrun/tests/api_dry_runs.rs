//! Dry runs (§3.5 flow dry-run, §3.7 event dry-run), validate, template-context, verify and
//! activate (§3.5, §5.10, §5.14).
//!
//! "Changes nothing" is shown from the outside: execution counts (`GET /executions/metrics`)
//! and gate state (a cooldown window, rate-limit tokens) are the same before and after any
//! number of dry runs, and the firings that follow behave exactly as without them. Nothing
//! sleeps to synchronise: waits poll with deadlines.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Resp, Server, assert_keys, check_schema};
use reqwest::Method;
use serde_json::{Value, json};

const FLOW_DRY_RUN: &str = "workflows.flow_dry_run_response.FlowDryRunResponse";
const FLOW_DRY_RUN_DATA: &str = "workflows.flow_dry_run_response.Data";
const EVENT_DRY_RUN: &str = "workflows.event_dry_run_response.EventDryRunResponse";
const VALIDATE: &str = "workflows.flow_validate_response.FlowValidateResponse";
const TEMPLATE_CONTEXT: &str =
    "workflows.flow_template_context_response.FlowTemplateContextResponse";
const VERIFY: &str = "workflows.flow_verify_response.FlowVerifyResponse";
const ACTIVATE: &str = "workflows.flow_activate_response.FlowActivateResponse";

const DRY_RUN_KEYS: [&str; 8] = [
    "activation",
    "validation",
    "conditionsPassed",
    "nextFireTime",
    "gates",
    "rateLimited",
    "wouldFire",
    "actions",
];
const GATES_KEYS: [&str; 5] = [
    "enabled",
    "deviceAttached",
    "deviceIds",
    "blocked",
    "cooldownActive",
];
const ACTION_KEYS: [&str; 9] = [
    "flowActionId",
    "key",
    "name",
    "service",
    "method",
    "params",
    "continueOnError",
    "recordingEnabled",
    "children",
];
/// A webhook endpoint id (none exist: steps using it fail at run time, which is fine here).
const HOOK: &str = "0193a8c2-7d1e-7c4e-9a0b-000000000001";
const VERIFY_KEYS: [&str; 8] = [
    "executionId",
    "flowId",
    "triggerId",
    "invocationId",
    "deviceId",
    "kind",
    "status",
    "deduplicated",
];

// ---------------------------------------------------------------------------------------------
// Helpers

struct Kit {
    s: Server,
    cat: HashMap<String, String>,
}

impl Kit {
    async fn start(args: &[&str]) -> Kit {
        let s = Server::start_with(args).await;
        let cat = s.catalog_ids().await;
        Kit { s, cat }
    }

    async fn action(&self, method: &str, name: &str, params: Value) -> String {
        let r = self
            .s
            .post(
                "/v1/actions",
                json!({"catalogEntryId": self.cat[method], "name": name, "params": params}),
            )
            .await;
        r.expect(201);
        r.id()
    }

    async fn trigger(&self, body: Value) -> String {
        let r = self.s.post("/v1/triggers", body).await;
        r.expect(201);
        r.id()
    }

    async fn custom_trigger(&self) -> String {
        self.trigger(json!({"activation": "custom", "name": "custom"}))
            .await
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
        r.id()
    }

    async fn get_flow(&self, id: &str) -> Value {
        let r = self.s.get(&format!("/v1/flows/{id}")).await;
        r.expect(200);
        r.data().clone()
    }

    async fn flow_dry_run(&self, flow: &str, body: Value) -> Value {
        let r = self
            .s
            .post(&format!("/v1/flows/{flow}/dry-run"), body)
            .await;
        r.expect(200).schema(FLOW_DRY_RUN);
        check_dry_run_keys(r.data());
        r.data().clone()
    }

    async fn event_dry_run(&self, body: Value) -> Value {
        let r = self.s.post("/v1/events/dry-run", body).await;
        r.expect(200).schema(EVENT_DRY_RUN);
        assert_keys(r.data(), &["matchedFlows", "validation"]);
        assert_keys(&r.data()["validation"], &["valid", "errors"]);
        for m in r.data()["matchedFlows"].as_array().unwrap() {
            assert_keys(m, &["flow", "trigger", "actions", "gates", "wouldFire"]);
            assert_keys(&m["gates"], &GATES_KEYS);
            check_action_keys(&m["actions"]);
        }
        r.data().clone()
    }

    async fn fire(&self, trigger: &str, payload: Value) -> Value {
        let r = self
            .s
            .post(
                &format!("/v1/triggers/{trigger}/fire"),
                json!({"payload": payload}),
            )
            .await;
        r.expect(202);
        r.body.clone()
    }

    async fn run(&self, flow: &str, payload: Value) -> Vec<String> {
        let r = self
            .s
            .post(
                &format!("/v1/flows/{flow}/run"),
                json!({"payload": payload}),
            )
            .await;
        r.expect(202);
        strs(&r.data()["executionIds"])
    }

    async fn verify(&self, flow: &str, body: Value) -> Resp {
        self.s.post(&format!("/v1/flows/{flow}/verify"), body).await
    }

    async fn activate(&self, flow: &str, execution: &str) -> Resp {
        self.s
            .post(
                &format!("/v1/flows/{flow}/activate"),
                json!({"verificationExecutionId": execution}),
            )
            .await
    }

    async fn validate(&self, body: Value) -> Value {
        let r = self.s.post("/v1/flows/validate", body).await;
        r.expect(200).schema(VALIDATE);
        assert_keys(r.data(), &["valid", "errors", "warnings"]);
        for e in r.data()["errors"].as_array().unwrap() {
            assert_keys(e, &["code", "field", "message", "knownSteps", "reference"]);
        }
        for w in r.data()["warnings"].as_array().unwrap() {
            assert_keys(w, &["code", "message", "connectKey", "destination"]);
        }
        assert_eq!(
            r.data()["valid"],
            r.data()["errors"].as_array().unwrap().is_empty()
        );
        r.data().clone()
    }

    async fn metrics_total(&self) -> i64 {
        let r = self.s.get("/v1/executions/metrics").await;
        r.expect(200);
        r.data()["total"].as_i64().unwrap()
    }

    async fn executions(&self, query: &str) -> Vec<Value> {
        let r = self.s.get(&format!("/v1/executions?{query}")).await;
        r.expect(200);
        r.body["items"].as_array().unwrap().clone()
    }

    /// Polls the execution until `pred` holds.
    async fn wait_exec(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.s.get(&format!("/v1/executions/{id}")).await;
            r.expect(200);
            if pred(r.data()) {
                return r.data().clone();
            }
            assert!(
                Instant::now() < deadline,
                "execution {id} did not reach the expected state; last: {}",
                r.text
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn done(&self, id: &str) -> Value {
        self.wait_exec(id, |e| {
            ["success", "failed", "cancelled", "skipped", "invalid"].contains(&str_of(&e["status"]))
        })
        .await
    }

    /// Polls `GET /executions?<query>` until it lists `n` rows.
    async fn wait_rows(&self, query: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let rows = self.executions(query).await;
            if rows.len() >= n {
                assert_eq!(rows.len(), n, "{query}: {rows:?}");
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "{query} lists {} rows, want {n}",
                rows.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn node(action: &str, position: i64, key: &str) -> Value {
    json!({"actionId": action, "position": position, "key": key})
}

fn with(mut v: Value, extra: Value) -> Value {
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn check_action_keys(actions: &Value) {
    for a in actions.as_array().unwrap() {
        assert_keys(a, &ACTION_KEYS);
        check_action_keys(&a["children"]);
    }
}

fn check_dry_run_keys(d: &Value) {
    assert_keys(d, &DRY_RUN_KEYS);
    assert_keys(&d["gates"], &GATES_KEYS);
    assert_keys(&d["validation"], &["valid", "errors"]);
    for e in d["validation"]["errors"].as_array().unwrap() {
        assert_keys(e, &["field", "message"]);
    }
    check_action_keys(&d["actions"]);
}

fn error_fields(d: &Value) -> Vec<String> {
    d["validation"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| str_of(&e["field"]).to_string())
        .collect()
}

/// The `(code, field)` pairs of a ValidateResult.
fn codes(v: &Value) -> Vec<(String, String)> {
    v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                str_of(&e["code"]).to_string(),
                str_of(&e["field"]).to_string(),
            )
        })
        .collect()
}

fn has(v: &Value, code: &str, field: &str) -> bool {
    codes(v).iter().any(|(c, f)| c == code && f == field)
}

fn warning_codes(v: &Value) -> Vec<String> {
    v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| str_of(&w["code"]).to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Flow dry-run

#[tokio::test]
async fn flow_dry_run_resolves_templates_and_changes_nothing() {
    let k = Kit::start(&["--flow-rate-limit", "3"]).await;
    let t = k
        .trigger(json!({
            "activation": "custom", "name": "orders",
            "customPayloadSchema": {
                "type": "object",
                "properties": {"n": {"type": "integer"}, "who": {"type": "string"}},
                "required": ["n"]
            }
        }))
        .await;
    let wait = k
        .action(
            "flow.wait",
            "Wait",
            json!({"seconds": "{{event.payload.n}}"}),
        )
        .await;
    let each = k
        .action(
            "flow.for_each",
            "Each",
            json!({"items": [1, 2], "itemVariable": "row"}),
        )
        .await;
    let hook = k
        .action("flow.wait", "Inner", json!({"seconds": "{{loop.index}}"}))
        .await;
    let flow = k
        .flow(json!({
            "name": "Dry", "triggerId": t, "cooldownSeconds": 3600,
            "actions": [
                with(node(&wait, 0, "first"), json!({"nameOverride": "First wait"})),
                with(node(&each, 1, "loop_over"), json!({
                    "overrides": {"params": {"items": ["{{event.payload.who}}", "{{steps.first.body.waitedSeconds}}"]}},
                    "children": [with(node(&hook, 0, "inner"), json!({"continueOnError": true}))]
                })),
            ]
        }))
        .await;
    assert_eq!(k.metrics_total().await, 0);

    let d = k
        .flow_dry_run(&flow, json!({"payload": {"n": 0, "who": "ann"}}))
        .await;
    assert_eq!(d["activation"], "custom");
    assert_eq!(d["validation"], json!({"valid": true, "errors": []}));
    assert!(d["conditionsPassed"].is_null());
    assert!(d["nextFireTime"].is_null());
    assert_eq!(
        d["gates"],
        json!({"enabled": true, "deviceAttached": true, "deviceIds": [], "blocked": false, "cooldownActive": false})
    );
    assert_eq!(d["rateLimited"], false);
    assert_eq!(d["wouldFire"], true);
    let a = &d["actions"];
    assert_eq!(a.as_array().unwrap().len(), 2);
    assert_eq!(a[0]["key"], "first");
    assert_eq!(a[0]["name"], "First wait");
    assert_eq!(a[0]["service"], "tasks_api");
    assert_eq!(a[0]["method"], "flow.wait");
    // A whole token takes the JSON type of the payload value.
    assert_eq!(a[0]["params"], json!({"seconds": 0}));
    assert_eq!(a[0]["children"], json!([]));
    // Step and loop tokens stay literal; overrides replace the action's top-level keys.
    assert_eq!(
        a[1]["params"],
        json!({"items": ["ann", "{{steps.first.body.waitedSeconds}}"], "itemVariable": "row"})
    );
    assert_eq!(a[1]["children"][0]["key"], "inner");
    assert_eq!(a[1]["children"][0]["continueOnError"], true);
    assert_eq!(
        a[1]["children"][0]["params"],
        json!({"seconds": "{{loop.index}}"})
    );

    // Any number of dry runs consume no rate-limit token (3 per minute) and open no window.
    for _ in 0..5 {
        let d = k
            .flow_dry_run(&flow, json!({"payload": {"n": 0, "who": "ann"}}))
            .await;
        assert_eq!(d["rateLimited"], false);
        assert_eq!(d["gates"]["cooldownActive"], false);
    }
    assert_eq!(k.metrics_total().await, 0, "dry runs store nothing");

    // The first fire after them is enqueued (no window was opened) and runs.
    let fired = k.fire(&t, json!({"n": 0, "who": "ann"})).await;
    assert_eq!(fired["enqueuedCount"], 1);
    let rows = k.wait_rows(&format!("flowId={flow}"), 1).await;
    let first = k.done(str_of(&rows[0]["id"])).await;
    assert_eq!(first["status"], "success");

    // Now the window is open: reported, and identical before and after dry runs.
    let before = k.metrics_total().await;
    for _ in 0..3 {
        let d = k
            .flow_dry_run(&flow, json!({"payload": {"n": 0, "who": "ann"}}))
            .await;
        assert_eq!(d["gates"]["cooldownActive"], true);
        assert_eq!(d["wouldFire"], false);
        assert_eq!(d["validation"]["valid"], true);
    }
    assert_eq!(k.metrics_total().await, before);
    let fired = k.fire(&t, json!({"n": 0, "who": "ann"})).await;
    assert_eq!(fired["enqueuedCount"], 0);
    let rows = k
        .wait_rows(&format!("flowId={flow}&status=skipped"), 1)
        .await;
    assert_eq!(rows[0]["error"], "cooldown_active");

    // Rate limit: `run` takes the remaining tokens (1 by fire + 2 here); the dry run then
    // reports rateLimited but still wouldFire-independent of it (informational).
    k.run(&flow, json!({"n": 0, "who": "ann"})).await;
    k.run(&flow, json!({"n": 0, "who": "ann"})).await;
    let d = k
        .flow_dry_run(&flow, json!({"payload": {"n": 0, "who": "ann"}}))
        .await;
    assert_eq!(d["rateLimited"], true);
    let total = k.metrics_total().await;
    let d2 = k
        .flow_dry_run(&flow, json!({"payload": {"n": 0, "who": "ann"}}))
        .await;
    assert_eq!(d2["rateLimited"], true);
    assert_eq!(k.metrics_total().await, total);
    // Dry runs touch nothing on the flow either.
    let f = k.get_flow(&flow).await;
    assert_eq!(f["status"], "healthy");

    // Invalid payloads and template errors are reported, not refused.
    let d = k
        .flow_dry_run(&flow, json!({"payload": {"n": "zero"}}))
        .await;
    assert_eq!(d["validation"]["valid"], false);
    assert!(error_fields(&d).contains(&"payload.n".to_string()), "{d}");
    assert_eq!(d["wouldFire"], false);
    let d = k.flow_dry_run(&flow, json!({"payload": {"n": 1}})).await;
    assert_eq!(
        error_fields(&d),
        vec!["actions.loop_over.params.items[0]".to_string()],
        "{d}"
    );
    // The unresolved params are shown as configured.
    assert_eq!(
        d["actions"][1]["params"]["items"][0],
        "{{event.payload.who}}"
    );
    // Resolved params are validated against the schema like at claim time.
    let d = k
        .flow_dry_run(&flow, json!({"payload": {"n": -4, "who": "x"}}))
        .await;
    assert_eq!(
        error_fields(&d),
        vec!["actions.first.params.seconds".to_string()],
        "{d}"
    );
    assert!(str_of(&d["validation"]["errors"][0]["message"]).starts_with("invalid_params"));

    // Shape errors are 422; the body is optional; unknown / archived flows are 404.
    k.s.post(&format!("/v1/flows/{flow}/dry-run"), json!({"payload": 5}))
        .await
        .expect_error(422, "validation_failed");
    let r =
        k.s.call(Method::POST, &format!("/flows/{flow}/dry-run"), None)
            .await;
    r.expect(200);
    assert_eq!(
        r.data()["validation"]["valid"],
        false,
        "payload.n is required"
    );
    k.s.post(
        "/v1/flows/0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87/dry-run",
        json!({}),
    )
    .await
    .expect_error(404, "not_found");
    k.s.delete(&format!("/v1/flows/{flow}")).await.expect(200);
    k.s.post(&format!("/v1/flows/{flow}/dry-run"), json!({}))
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn flow_dry_run_gates_devices_conditions_and_schedules() {
    let k = Kit::start(&[]).await;
    let d1 = k.device("dry-1").await;
    let d2 = k.device("dry-2").await;
    let wait = k.action("flow.wait", "Wait", json!({"seconds": 0})).await;
    let typ = k
        .action(
            "devices.type",
            "Type",
            json!({"text": "{{execution.device.name}} / {{event.deviceId}} / {{source}}"}),
        )
        .await;
    let custom = k.custom_trigger().await;

    // Two devices: every device is a target; templates see the first.
    let multi = k
        .flow(
            json!({"name": "Multi", "triggerId": custom, "deviceIds": [d1, d2],
                     "actions": [node(&typ, 0, "type")]}),
        )
        .await;
    let d = k.flow_dry_run(&multi, json!({})).await;
    assert_eq!(d["gates"]["deviceIds"], json!([d1, d2]));
    assert_eq!(d["gates"]["deviceAttached"], true);
    assert!(
        d["gates"]["cooldownActive"].is_null(),
        "no cooldown configured"
    );
    assert_eq!(
        d["actions"][0]["params"]["text"],
        format!("dry-1 / {d1} / custom")
    );
    assert_eq!(d["wouldFire"], true);

    // A device step without devices: no target.
    let lonely = k
        .flow(json!({"name": "Lonely", "triggerId": custom, "actions": [node(&typ, 0, "type")]}))
        .await;
    let d = k.flow_dry_run(&lonely, json!({})).await;
    assert_eq!(d["gates"]["deviceAttached"], false);
    assert_eq!(d["gates"]["deviceIds"], json!([]));
    assert_eq!(d["wouldFire"], false);

    // Disabled flows are reported, not skipped.
    let off = k
        .flow(json!({"name": "Off", "triggerId": custom, "enabled": false,
                     "actions": [node(&wait, 0, "w")]}))
        .await;
    let d = k.flow_dry_run(&off, json!({})).await;
    assert_eq!(d["gates"]["enabled"], false);
    assert_eq!(d["wouldFire"], false);

    // Blocked: an invalid live run blocks a flow at once (invalid_config).
    let bad = k
        .action(
            "flow.wait",
            "Bad",
            json!({"seconds": "{{event.payload.s}}"}),
        )
        .await;
    let blocked = k
        .flow(json!({"name": "Blocked", "triggerId": custom, "actions": [node(&bad, 0, "b")]}))
        .await;
    let ids = k.run(&blocked, json!({})).await;
    assert_eq!(k.done(&ids[0]).await["status"], "invalid");
    let deadline = Instant::now() + Duration::from_secs(5);
    while k.get_flow(&blocked).await["status"] != "blocked" {
        assert!(Instant::now() < deadline, "flow never blocked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let d = k.flow_dry_run(&blocked, json!({"payload": {"s": 1}})).await;
    assert_eq!(d["gates"]["blocked"], true);
    assert_eq!(d["validation"]["valid"], true);
    assert_eq!(d["wouldFire"], false);

    // Event triggers: catalog payload check and conditions.
    let sms = k
        .trigger(json!({"activation": "event", "name": "sms", "eventType": "device.sms.received",
                        "conditions": {"all": [{"field": "payload.message", "op": "contains", "value": "code"}]}}))
        .await;
    let on_sms = k
        .flow(json!({"name": "On SMS", "triggerId": sms, "actions": [node(&wait, 0, "w")]}))
        .await;
    let d = k
        .flow_dry_run(&on_sms, json!({"payload": {"message": "your code is 1"}}))
        .await;
    assert_eq!(d["activation"], "event");
    assert_eq!(d["conditionsPassed"], true);
    assert_eq!(d["wouldFire"], true);
    let d = k
        .flow_dry_run(&on_sms, json!({"payload": {"message": "hello"}}))
        .await;
    assert_eq!(d["conditionsPassed"], false);
    assert_eq!(d["validation"]["valid"], true);
    assert_eq!(d["wouldFire"], false);
    let d = k
        .flow_dry_run(&on_sms, json!({"payload": {"message": 5}}))
        .await;
    assert_eq!(error_fields(&d), vec!["payload.message".to_string()]);
    assert_eq!(d["wouldFire"], false);

    // Schedule triggers: nextFireTime as the trigger reports it; no conditions.
    let sched = k
        .trigger(
            json!({"activation": "schedule", "name": "yearly", "timezone": "UTC",
                        "scheduleRule": {"type": "cron", "expression": "0 0 1 1 *"}}),
        )
        .await;
    let next = k.s.get(&format!("/v1/triggers/{sched}")).await.data()["nextFireTime"].clone();
    assert!(next.is_string());
    let on_sched = k
        .flow(json!({"name": "Yearly", "triggerId": sched, "actions": [node(&wait, 0, "w")]}))
        .await;
    let d = k
        .flow_dry_run(&on_sched, json!({"payload": {"x": 1}}))
        .await;
    assert_eq!(d["activation"], "schedule");
    assert_eq!(d["nextFireTime"], next);
    assert!(d["conditionsPassed"].is_null());
    assert_eq!(d["validation"], json!({"valid": true, "errors": []}));
    assert_eq!(d["wouldFire"], true);
}

#[tokio::test]
async fn device_scoped_cooldown_is_active_only_when_every_target_cools() {
    let k = Kit::start(&[]).await;
    let d1 = k.device("cool-1").await;
    let d2 = k.device("cool-2").await;
    let wait = k.action("flow.wait", "Wait", json!({"seconds": 0})).await;
    let t = k
        .trigger(json!({"activation": "event", "name": "ev", "eventType": "app.cool"}))
        .await;
    let flow = k
        .flow(
            json!({"name": "Cool", "triggerId": t, "deviceIds": [d1, d2],
                     "cooldownSeconds": 3600, "cooldownScope": "device",
                     "actions": [node(&wait, 0, "w")]}),
        )
        .await;
    let d = k.flow_dry_run(&flow, json!({})).await;
    assert_eq!(d["gates"]["cooldownActive"], false);
    // An event from d1 runs on d1 only and opens d1's window.
    k.s.post(
        "/v1/events/ingest",
        json!({"eventType": "app.cool", "deviceId": d1}),
    )
    .await
    .expect(202);
    let rows = k.wait_rows(&format!("flowId={flow}"), 1).await;
    assert_eq!(rows[0]["deviceId"], d1.as_str());
    k.done(str_of(&rows[0]["id"])).await;
    // Both targets → not every one cools.
    let d = k.flow_dry_run(&flow, json!({})).await;
    assert_eq!(d["gates"]["cooldownActive"], false);
    let e = k
        .event_dry_run(json!({"eventType": "app.cool", "deviceId": d1}))
        .await;
    assert_eq!(e["matchedFlows"][0]["gates"]["cooldownActive"], true);
    assert_eq!(e["matchedFlows"][0]["gates"]["deviceIds"], json!([d1]));
    assert_eq!(e["matchedFlows"][0]["wouldFire"], false);
    let e = k
        .event_dry_run(json!({"eventType": "app.cool", "deviceId": d2}))
        .await;
    assert_eq!(e["matchedFlows"][0]["gates"]["cooldownActive"], false);
    assert_eq!(e["matchedFlows"][0]["wouldFire"], true);
    // An unbound device: listed, no target, cooldown null.
    let e = k
        .event_dry_run(
            json!({"eventType": "app.cool", "deviceId": "0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87"}),
        )
        .await;
    let g = &e["matchedFlows"][0]["gates"];
    assert_eq!(g["deviceAttached"], false);
    assert!(g["cooldownActive"].is_null());
    assert_eq!(e["matchedFlows"][0]["wouldFire"], false);
    assert_eq!(k.executions(&format!("flowId={flow}")).await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Event dry-run

#[tokio::test]
async fn event_dry_run_matches_like_ingest_without_enqueuing() {
    let k = Kit::start(&[]).await;
    let dev = k.device("ev-1").await;
    // webhooks.send takes free-form params (and fails at run time: no such endpoint).
    let echo = k
        .action(
            "webhooks.send",
            "Echo",
            json!({"webhookId": HOOK, "payload": {"kind": "{{event.payload.kind}}", "type": "{{event.eventType}}"}}),
        )
        .await;
    let cond = k
        .trigger(
            json!({"activation": "event", "name": "kind a", "eventType": "app.test",
                        "conditions": {"field": "kind", "op": "eq", "value": "a"}}),
        )
        .await;
    let plain = k
        .trigger(json!({"activation": "event", "name": "any", "eventType": "app.test"}))
        .await;
    let other = k
        .trigger(json!({"activation": "event", "name": "other", "eventType": "app.other"}))
        .await;
    let f_cond = k
        .flow(json!({"name": "A", "triggerId": cond, "actions": [node(&echo, 0, "echo")]}))
        .await;
    let f_off = k
        .flow(json!({"name": "Off", "triggerId": plain, "enabled": false,
                     "actions": [node(&echo, 0, "echo")]}))
        .await;
    let f_dev = k
        .flow(json!({"name": "Dev", "triggerId": cond, "deviceIds": [dev],
                     "actions": [node(&echo, 0, "echo")]}))
        .await;
    let f_other = k
        .flow(json!({"name": "Other", "triggerId": other, "actions": [node(&echo, 0, "echo")]}))
        .await;
    let archived = k
        .flow(json!({"name": "Gone", "triggerId": plain, "actions": [node(&echo, 0, "echo")]}))
        .await;
    k.s.delete(&format!("/v1/flows/{archived}"))
        .await
        .expect(200);

    let e = k
        .event_dry_run(json!({"eventType": "app.test", "payload": {"kind": "a"}}))
        .await;
    assert_eq!(e["validation"], json!({"valid": true, "errors": []}));
    let m = e["matchedFlows"].as_array().unwrap();
    let ids: Vec<&str> = m.iter().map(|x| str_of(&x["flow"]["id"])).collect();
    assert_eq!(ids, vec![f_cond.as_str(), f_off.as_str(), f_dev.as_str()]);
    assert!(!ids.contains(&f_other.as_str()));
    assert_eq!(m[0]["trigger"]["id"], cond.as_str());
    assert_eq!(m[0]["wouldFire"], true);
    assert_eq!(
        m[0]["actions"][0]["params"],
        json!({"webhookId": HOOK, "payload": {"kind": "a", "type": "app.test"}})
    );
    assert_eq!(m[1]["gates"]["enabled"], false);
    assert_eq!(m[1]["wouldFire"], false);
    assert_eq!(m[2]["gates"]["deviceIds"], json!([dev]));
    assert_eq!(m[2]["wouldFire"], true);

    // Conditions decide the match.
    let e = k
        .event_dry_run(json!({"eventType": "app.test", "payload": {"kind": "b"}}))
        .await;
    let ids: Vec<&str> = e["matchedFlows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| str_of(&x["flow"]["id"]))
        .collect();
    assert_eq!(ids, vec![f_off.as_str()]);
    // An event type nobody listens to.
    let e = k.event_dry_run(json!({"eventType": "app.none"})).await;
    assert_eq!(e["matchedFlows"], json!([]));

    // Catalog payload mismatches are reported with 200 (ingest would refuse them).
    let e = k
        .event_dry_run(json!({"eventType": "device.sms.received", "payload": {"message": 5}}))
        .await;
    assert_eq!(e["validation"]["valid"], false);
    assert_eq!(e["validation"]["errors"][0]["field"], "payload.message");
    // Shape errors are 422.
    for body in [
        json!({}),
        json!({"eventType": "a b"}),
        json!({"eventType": "x", "deviceId": "nope"}),
        json!({"eventType": "x", "payload": [1]}),
    ] {
        k.s.post("/v1/events/dry-run", body)
            .await
            .expect_error(422, "validation_failed");
    }

    // Template errors fail only their flow.
    let strict = k
        .action(
            "flow.wait",
            "Strict",
            json!({"seconds": "{{event.payload.n}}"}),
        )
        .await;
    let f_strict = k
        .flow(
            json!({"name": "Strict", "triggerId": other, "actions": [node(&strict, 0, "strict")]}),
        )
        .await;
    let e = k
        .event_dry_run(json!({"eventType": "app.other", "payload": {"kind": "z"}}))
        .await;
    let m = e["matchedFlows"].as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0]["flow"]["id"], f_other.as_str());
    assert_eq!(m[0]["wouldFire"], true);
    assert_eq!(m[1]["flow"]["id"], f_strict.as_str());
    assert_eq!(m[1]["wouldFire"], false);
    assert_eq!(
        e["validation"]["errors"][0]["field"],
        "matchedFlows[1].actions.strict.params.seconds"
    );

    // WhatsApp notifications also match the derived event type.
    let wa = k
        .trigger(json!({"activation": "event", "name": "wa",
                        "eventType": "app.whatsapp.message_received"}))
        .await;
    let greet = k
        .action(
            "webhooks.send",
            "Greet",
            json!({"webhookId": HOOK, "payload": {"from": "{{event.payload.sender}}"}}),
        )
        .await;
    let f_wa = k
        .flow(json!({"name": "WA", "triggerId": wa, "actions": [node(&greet, 0, "greet")]}))
        .await;
    let e = k
        .event_dry_run(json!({"eventType": "device.notification.posted",
                              "payload": {"package": "com.whatsapp", "title": "Bob", "text": "hi"}}))
        .await;
    assert_eq!(e["matchedFlows"][0]["flow"]["id"], f_wa.as_str());
    assert_eq!(
        e["matchedFlows"][0]["actions"][0]["params"]["payload"]["from"],
        "Bob"
    );

    // Nothing was enqueued by any of this: a real event creates exactly its own rows.
    assert_eq!(k.metrics_total().await, 0);
    k.s.post(
        "/v1/events/ingest",
        json!({"eventType": "app.test", "payload": {"kind": "a"}}),
    )
    .await
    .expect(202);
    let rows = k.wait_rows(&format!("flowId={f_cond}"), 1).await;
    k.done(str_of(&rows[0]["id"])).await;
    let rows = k.wait_rows(&format!("flowId={f_dev}"), 1).await;
    k.done(str_of(&rows[0]["id"])).await;
    assert_eq!(k.metrics_total().await, 2);
}

// ---------------------------------------------------------------------------------------------
// Validate

#[tokio::test]
async fn validate_reports_every_problem_with_its_code() {
    let k = Kit::start(&[]).await;
    let t = k.custom_trigger().await;
    let wait = k.action("flow.wait", "Wait", json!({"seconds": 0})).await;
    let each = k
        .action("flow.for_each", "Each", json!({"items": [1]}))
        .await;
    let tap = k
        .action("devices.tap", "Tap", json!({"x": 1, "y": 2}))
        .await;
    let nobody = "0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87";
    let flows_before = k.s.get("/v1/flows").await.body["pagination"]["total"].clone();

    // A valid definition with a draft node; warnings do not make it invalid.
    let ev = k
        .trigger(json!({"activation": "event", "name": "odd", "eventType": "custom.thing"}))
        .await;
    let v = k
        .validate(json!({
            "name": "ok", "triggerId": ev, "notifyOnFailure": true,
            "delivery": {"destination": "one_drive"},
            "actions": [
                node(&tap, 0, "tap"),
                {"draft": {"service": "tasks_api", "method": "flow.wait", "name": "Draft wait",
                           "params": {"seconds": "{{steps.tap.body.ok}}"}}, "position": 1},
                node(&each, 2, "each"),
            ]
        }))
        .await;
    assert_eq!(v["valid"], true, "{v}");
    let mut w = warning_codes(&v);
    w.sort();
    assert_eq!(
        w,
        vec![
            "destination_not_connected",
            "empty_body",
            "no_devices",
            "notify_without_webhook",
            "unknown_event_type"
        ]
    );
    let dest = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["code"] == "destination_not_connected")
        .unwrap();
    assert_eq!(dest["destination"], "one_drive");
    assert_eq!(dest["connectKey"], "one_drive");
    // triggerId is optional.
    let v = k
        .validate(json!({"name": "x", "actions": [node(&wait, 0, "w")]}))
        .await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["warnings"], json!([]));
    let v = k
        .validate(json!({"name": "x", "triggerId": t, "actions": [node(&wait, 0, "w")]}))
        .await;
    assert_eq!(v, json!({"valid": true, "errors": [], "warnings": []}));

    // Missing everything / wrong types.
    let v = k.validate(json!({})).await;
    assert!(has(&v, "required", "name"), "{v}");
    assert!(has(&v, "required", "actions"), "{v}");
    assert!(!codes(&v).iter().any(|(_, f)| f == "triggerId"));
    let v = k
        .validate(json!({"name": 5, "cooldownSeconds": -1, "actions": [7]}))
        .await;
    assert!(has(&v, "invalid_type", "name"), "{v}");
    assert!(has(&v, "invalid_value", "cooldownSeconds"), "{v}");
    assert!(has(&v, "invalid_type", "actions[0]"), "{v}");
    let r = k.s.post("/v1/flows/validate", json!([1])).await;
    r.expect(200).schema(VALIDATE);
    assert!(has(r.data(), "invalid_type", "body"));

    // Unknown references.
    let v = k
        .validate(json!({
            "name": "refs", "triggerId": nobody, "deviceIds": [nobody], "notifyWebhookId": nobody,
            "delivery": {"destination": "mobilerun", "folder": "x"},
            "actions": [node(nobody, 0, "a")]
        }))
        .await;
    for (code, field) in [
        ("unknown_trigger", "triggerId"),
        ("unknown_device", "deviceIds[0]"),
        ("unknown_webhook", "notifyWebhookId"),
        ("unknown_action", "actions[0].actionId"),
        ("folder_not_allowed", "delivery.folder"),
    ] {
        assert!(has(&v, code, field), "{code} {field}: {v}");
    }

    // Tree rules.
    let v = k
        .validate(json!({
            "name": "tree",
            "actions": [
                node(&wait, 0, "same"),
                node(&wait, 0, "same"),
                node(&wait, 1, "Bad Key"),
                node(&wait, 2, "steps"),
                with(node(&wait, 3, "parent"), json!({"children": [node(&wait, 0, "kid")]})),
                with(node(&each, 4, "loop"), json!({"children": [
                    with(node(&wait, 0, "deep"), json!({"children": [node(&wait, 0, "deeper")]}))
                ]})),
            ]
        }))
        .await;
    for (code, field) in [
        ("duplicate_position", "actions[1].position"),
        ("duplicate_key", "actions[1].key"),
        ("invalid_key", "actions[2].key"),
        ("reserved_key", "actions[3].key"),
        ("children_not_allowed", "actions[4].children"),
        ("too_deep", "actions[5].children[0].children"),
    ] {
        assert!(has(&v, code, field), "{code} {field}: {v}");
    }

    // Drafts, params, conditions and templates.
    let v = k
        .validate(json!({
            "name": "drafts",
            "actions": [
                {"draft": {"service": "tasks_api", "method": "flow.nope", "name": "Nope"}, "position": 0},
                {"draft": {"service": "tasks_api", "method": "flow.wait", "name": "W",
                           "params": {"seconds": "abc"}}, "position": 1, "key": "w"},
                {"draft": {"service": "tasks_api", "method": "flow.if", "name": "If",
                           "params": {"condition": {"field": "x", "op": "bogus"}}}, "position": 2, "key": "cond"},
                with(node(&wait, 3, "first"), json!({"overrides": {"params": {"seconds": -5}}})),
                with(node(&wait, 4, "t1"), json!({"overrides": {"params": {"seconds": "{{ event.payload.n"}}})),
                with(node(&wait, 5, "t2"), json!({"overrides": {"params": {"seconds": "{{owner.email}}"}}})),
                with(node(&wait, 6, "t3"), json!({"overrides": {"params": {"seconds": "{{payload.n}}"}}})),
                with(node(&wait, 7, "fwd"), json!({"overrides": {"params": {"seconds": "{{steps.later.body.waitedSeconds}}"}}})),
                with(node(&wait, 8, "later"), json!({"overrides": {"params": {"seconds": "{{steps.first.body.waitedSeconds}}", "x": "{{loop.index}}"}}})),
                with(node(&each, 9, "each"), json!({"children": [
                    with(node(&wait, 0, "kid1"), json!({"overrides": {"params": {"seconds": "{{item}} {{steps.each.status}}"}}})),
                    with(node(&wait, 1, "kid2"), json!({"overrides": {"params": {"seconds": "{{steps.kid1.body}} {{loop.item}} {{steps.kid3.body}}"}}})),
                ]})),
                {"draft": {"service": "tasks_api", "method": "flow.wait", "name": "Kids"}, "position": 10,
                 "children": [node(&wait, 0, "x")]},
            ]
        }))
        .await;
    for (code, field) in [
        ("unknown_method", "actions[0].draft.method"),
        ("invalid_params", "actions[1].params.seconds"),
        ("invalid_condition", "actions[2].params.condition.op"),
        ("invalid_params", "actions[3].params.seconds"),
        ("invalid_template", "actions[4].params.seconds"),
        ("invalid_params", "actions[10].params.seconds"),
        ("forbidden_path", "actions[5].params.seconds"),
        ("invalid_template", "actions[6].params.seconds"),
        ("unknown_step_reference", "actions[7].params.seconds"),
        ("invalid_template", "actions[8].params.x"),
        (
            "unknown_step_reference",
            "actions[9].children[0].params.seconds",
        ),
        (
            "unknown_step_reference",
            "actions[9].children[1].params.seconds",
        ),
        ("children_not_allowed", "actions[10].children"),
    ] {
        assert!(has(&v, code, field), "{code} {field}: {v}");
    }
    let refs: Vec<&Value> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["code"] == "unknown_step_reference")
        .collect();
    assert_eq!(refs.len(), 3, "{v}");
    assert_eq!(refs[0]["reference"], "later");
    assert_eq!(
        refs[0]["knownSteps"],
        json!(["nope", "w", "cond", "first", "t1", "t2", "t3"])
    );
    // Inside a loop: steps before the loop and earlier siblings, not the loop itself.
    assert_eq!(refs[1]["reference"], "each");
    assert_eq!(refs[2]["reference"], "kid3");
    let known = strs(&refs[2]["knownSteps"]);
    assert!(known.contains(&"later".to_string()) && known.contains(&"kid1".to_string()));
    assert!(!known.contains(&"each".to_string()));
    // Errors without a step reference carry nulls.
    let other = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["code"] == "unknown_method")
        .unwrap();
    assert!(other["knownSteps"].is_null() && other["reference"].is_null());
    // A broken template is not also reported as a param of the wrong type.
    assert!(
        !has(&v, "invalid_params", "actions[4].params.seconds"),
        "{v}"
    );

    // Malformed JSON is the only 400; nothing was stored.
    k.s.raw(Method::POST, "/v1/flows/validate", b"{nope".to_vec())
        .await
        .expect_error(400, "invalid_json");
    assert_eq!(
        k.s.get("/v1/flows").await.body["pagination"]["total"],
        flows_before
    );
}

// ---------------------------------------------------------------------------------------------
// Template context and routing

#[tokio::test]
async fn template_context_per_version_and_literal_routes() {
    let k = Kit::start(&[]).await;
    for (q, v) in [
        ("", 3),
        ("?templateResolutionVersion=1", 1),
        ("?templateResolutionVersion=2", 2),
        ("?templateResolutionVersion=3", 3),
    ] {
        for prefix in ["/v1", ""] {
            let r =
                k.s.get(&format!("{prefix}/flows/template-context{q}"))
                    .await;
            r.expect(200).schema(TEMPLATE_CONTEXT);
            let d = r.data();
            assert_keys(
                d,
                &[
                    "templateResolutionVersion",
                    "grammar",
                    "roots",
                    "payloadAliases",
                    "stepReference",
                    "loop",
                ],
            );
            assert_eq!(d["templateResolutionVersion"], v);
            assert_keys(
                &d["stepReference"],
                &["pattern", "note", "keyRule", "slugRule"],
            );
            assert_eq!(
                d["payloadAliases"],
                if v == 3 {
                    json!([])
                } else {
                    json!(["payload", "trigger.payload"])
                }
            );
            for root in d["roots"].as_array().unwrap() {
                assert_keys(root, &["name", "description", "shape"]);
            }
        }
    }
    for bad in ["4", "0", "abc", "2.5"] {
        let r =
            k.s.get(&format!(
                "/v1/flows/template-context?templateResolutionVersion={bad}"
            ))
            .await;
        r.expect_error(422, "validation_failed");
        assert_eq!(r.error_fields(), vec!["templateResolutionVersion"]);
    }
    // Literal segments are not flow ids; other methods are 405.
    let r = k.s.post("/v1/flows/template-context", json!({})).await;
    r.expect_error(405, "method_not_allowed");
    let r = k.s.get("/v1/flows/validate").await;
    r.expect_error(405, "method_not_allowed");

    // Every new route is documented.
    let r = k.s.get("/openapi.json").await;
    r.expect(200);
    let paths = r.body["paths"].as_object().unwrap();
    for (path, m) in [
        ("/flows/{flowId}/dry-run", "post"),
        ("/events/dry-run", "post"),
        ("/flows/validate", "post"),
        ("/flows/template-context", "get"),
        ("/flows/{flowId}/verify", "post"),
        ("/flows/{flowId}/activate", "post"),
    ] {
        assert!(
            paths[path][m]["responses"].is_object(),
            "openapi lacks {m} {path}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Verify and activate

#[tokio::test]
async fn verify_runs_once_per_invocation_and_ignores_gates() {
    let k = Kit::start(&[]).await;
    let t = k
        .trigger(json!({"activation": "custom", "name": "c",
                        "customPayloadSchema": {"type": "object", "properties": {"n": {"type": "integer"}}}}))
        .await;
    let wait = k
        .action("flow.wait", "Wait", json!({"seconds": "{{chainDepth}}"}))
        .await;
    let flow = k
        .flow(
            json!({"name": "V", "triggerId": t, "enabled": false, "cooldownSeconds": 3600,
                     "actions": [node(&wait, 0, "w")]}),
        )
        .await;

    let r = k
        .verify(&flow, json!({"invocationId": "inv-1", "payload": {"n": 1}}))
        .await;
    r.expect(202).schema(VERIFY);
    assert_keys(r.data(), &VERIFY_KEYS);
    let v = r.data().clone();
    assert_eq!(v["flowId"], flow.as_str());
    assert_eq!(v["triggerId"], t.as_str());
    assert_eq!(v["invocationId"], "inv-1");
    assert!(v["deviceId"].is_null());
    assert_eq!(v["kind"], "verification");
    assert_eq!(v["status"], "pending");
    assert_eq!(v["deduplicated"], false);
    let id = str_of(&v["executionId"]).to_string();
    let e = k.done(&id).await;
    assert_eq!(e["status"], "success", "{e}");
    assert_eq!(e["kind"], "verification");
    assert_eq!(e["invocationId"], "inv-1");
    assert_eq!(e["result"]["steps"][0]["params"]["seconds"], 0);

    // Same invocation id (any payload, any Idempotency-Key): 200 with the current status.
    for key in ["k-a", "k-b"] {
        let r =
            k.s.call_as(
                &k.s.key,
                Method::POST,
                &format!("/v1/flows/{flow}/verify"),
                Some(&json!({"invocationId": "inv-1", "payload": {"n": 2}})),
                &[("Idempotency-Key", key)],
            )
            .await;
        r.expect(200).schema(VERIFY);
        assert_eq!(r.data()["executionId"], id.as_str());
        assert_eq!(r.data()["status"], "success");
        assert_eq!(r.data()["deduplicated"], true);
    }
    assert_eq!(k.executions(&format!("flowId={flow}")).await.len(), 1);

    // Verification never touches the flow; cooldown, enabled and the window are ignored.
    let f = k.get_flow(&flow).await;
    assert!(f["lastTriggeredAt"].is_null());
    assert_eq!(f["enabled"], false);
    k.s.patch(&format!("/v1/flows/{flow}"), json!({"enabled": true}))
        .await
        .expect(200);
    k.fire(&t, json!({})).await;
    let d = k.flow_dry_run(&flow, json!({})).await;
    assert_eq!(d["gates"]["cooldownActive"], true);
    let r = k.verify(&flow, json!({"invocationId": "inv-2"})).await;
    r.expect(202);
    let e = k.done(str_of(&r.data()["executionId"])).await;
    assert_eq!(e["status"], "success");

    // Concurrent verifies with one invocation id: exactly one run.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let base = k.s.url(&format!("/v1/flows/{flow}/verify"));
        let key = k.s.key.clone();
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(base)
                .bearer_auth(key)
                .json(&json!({"invocationId": "inv-race"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 202], "{statuses:?}");
    assert_eq!(k.executions("invocationId=inv-race").await.len(), 1);

    // Refusals.
    let r = k.verify(&flow, json!({})).await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), vec!["invocationId"]);
    k.verify(&flow, json!({"invocationId": ""}))
        .await
        .expect_error(422, "validation_failed");
    let r = k
        .verify(&flow, json!({"invocationId": "p", "payload": {"n": "one"}}))
        .await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), vec!["payload.n"]);
    k.verify(
        "0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87",
        json!({"invocationId": "x"}),
    )
    .await
    .expect_error(404, "not_found");
    k.s.delete(&format!("/v1/flows/{flow}")).await.expect(200);
    k.verify(&flow, json!({"invocationId": "after"}))
        .await
        .expect_error(404, "not_found");
    // Even a known invocation id of an archived flow.
    k.verify(&flow, json!({"invocationId": "inv-1"}))
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn verify_device_and_condition_refusals() {
    let k = Kit::start(&[]).await;
    let d1 = k.device("v-1").await;
    let d2 = k.device("v-2").await;
    let stranger = k.device("v-3").await;
    let wait = k.action("flow.wait", "Wait", json!({"seconds": 0})).await;
    let tap = k
        .action("devices.tap", "Tap", json!({"x": 1, "y": 1}))
        .await;
    let t = k.custom_trigger().await;

    let two = k
        .flow(json!({"name": "Two", "triggerId": t, "deviceIds": [d1, d2], "actions": [node(&wait, 0, "w")]}))
        .await;
    k.verify(&two, json!({"invocationId": "a"}))
        .await
        .expect_error(422, "device_id_required");
    let r = k
        .verify(&two, json!({"invocationId": "a", "deviceId": stranger}))
        .await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), vec!["deviceId"]);
    let r = k
        .verify(&two, json!({"invocationId": "a", "deviceId": d2}))
        .await;
    r.expect(202);
    assert_eq!(r.data()["deviceId"], d2.as_str());
    let e = k.done(str_of(&r.data()["executionId"])).await;
    assert_eq!(e["status"], "success");
    assert_eq!(e["deviceId"], d2.as_str());

    let one = k
        .flow(json!({"name": "One", "triggerId": t, "deviceIds": [d1], "actions": [node(&wait, 0, "w")]}))
        .await;
    let r = k.verify(&one, json!({"invocationId": "a"})).await;
    r.expect(202);
    assert_eq!(r.data()["deviceId"], d1.as_str());

    let needs = k
        .flow(json!({"name": "Needs", "triggerId": t, "actions": [node(&tap, 0, "tap")]}))
        .await;
    k.verify(&needs, json!({"invocationId": "a"}))
        .await
        .expect_error(422, "no_device");
    let free = k
        .flow(json!({"name": "Free", "triggerId": t, "actions": [node(&wait, 0, "w")]}))
        .await;
    let r = k
        .verify(&free, json!({"invocationId": "a", "deviceId": d1}))
        .await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), vec!["deviceId"]);

    // Event triggers: conditions must pass; the refusal carries the dry-run report.
    let ev = k
        .trigger(
            json!({"activation": "event", "name": "sms", "eventType": "device.sms.received",
                        "conditions": {"field": "message", "op": "starts_with", "value": "GO"}}),
        )
        .await;
    let on_ev = k
        .flow(json!({"name": "Ev", "triggerId": ev, "enabled": false, "actions": [node(&wait, 0, "w")]}))
        .await;
    let r = k
        .verify(
            &on_ev,
            json!({"invocationId": "e1", "payload": {"message": "stop"}}),
        )
        .await;
    r.expect_error(409, "conditions_not_met");
    let report = &r.body["details"]["dryRun"];
    check_schema(FLOW_DRY_RUN_DATA, report);
    check_dry_run_keys(report);
    assert_eq!(report["conditionsPassed"], false);
    assert_eq!(report["wouldFire"], false);
    assert_eq!(report["gates"]["enabled"], false);
    let r = k
        .verify(
            &on_ev,
            json!({"invocationId": "e1", "payload": {"message": 3}}),
        )
        .await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), vec!["payload.message"]);
    let r = k
        .verify(
            &on_ev,
            json!({"invocationId": "e1", "payload": {"message": "GO now"}}),
        )
        .await;
    r.expect(202);
    assert_eq!(
        k.done(str_of(&r.data()["executionId"])).await["status"],
        "success"
    );
    assert_eq!(k.metrics_total().await, 3);
}

#[tokio::test]
async fn activate_needs_a_successful_verification_of_the_unchanged_graph() {
    let k = Kit::start(&[]).await;
    let d1 = k.device("a-1").await;
    let t = k.custom_trigger().await;
    let wait = k.action("flow.wait", "Wait", json!({"seconds": 0})).await;
    let slow = k.action("flow.wait", "Slow", json!({"seconds": 60})).await;
    let bad = k
        .action(
            "flow.wait",
            "Bad",
            json!({"seconds": "{{event.payload.s}}"}),
        )
        .await;
    let new_flow = |name: &str, action: &str| json!({"name": name, "triggerId": t, "enabled": false, "actions": [node(action, 0, "w")]});
    let flow = k.flow(new_flow("A", &wait)).await;
    let other = k.flow(new_flow("B", &wait)).await;

    // Happy path.
    let r = k.verify(&flow, json!({"invocationId": "ok"})).await;
    r.expect(202);
    let ok = str_of(&r.data()["executionId"]).to_string();
    assert_eq!(k.done(&ok).await["status"], "success");
    // Settings that are not part of the graph may change in between.
    k.s.patch(
        &format!("/v1/flows/{flow}"),
        json!({"name": "A2", "description": "d"}),
    )
    .await
    .expect(200);
    let r = k.activate(&flow, &ok).await;
    r.expect(200).schema(ACTIVATE);
    assert_eq!(r.data()["enabled"], true);
    assert_eq!(r.data()["lifecycleStatus"], "enabled");
    assert_eq!(r.data()["name"], "A2");
    assert_eq!(k.get_flow(&flow).await["enabled"], true);
    // Already enabled: 200 without any check.
    let r = k
        .activate(&flow, "0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87")
        .await;
    r.expect(200).schema(ACTIVATE);
    assert_eq!(r.data()["enabled"], true);

    // Refusals on a disabled flow.
    k.s.post(&format!("/v1/flows/{other}/activate"), json!({}))
        .await
        .expect_error(422, "validation_failed");
    k.activate(&other, "0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87")
        .await
        .expect_error(404, "not_found");
    // A verification of another flow, or a live run of this one.
    k.activate(&other, &ok)
        .await
        .expect_error(409, "verification_flow_mismatch");
    let live = k.run(&other, json!({})).await;
    k.done(&live[0]).await;
    k.activate(&other, &live[0])
        .await
        .expect_error(409, "verification_flow_mismatch");

    // Not successful: still running, and invalid.
    let slow_flow = k.flow(new_flow("Slow", &slow)).await;
    let r = k.verify(&slow_flow, json!({"invocationId": "slow"})).await;
    r.expect(202);
    let running = str_of(&r.data()["executionId"]).to_string();
    let r = k.activate(&slow_flow, &running).await;
    r.expect_error(409, "verification_not_successful");
    assert!(["pending", "running"].contains(&str_of(&r.body["details"]["status"])));
    k.s.post(&format!("/v1/executions/{running}/abort"), json!({}))
        .await
        .expect(200);
    let r = k.activate(&slow_flow, &running).await;
    r.expect_error(409, "verification_not_successful");
    assert_eq!(r.body["details"]["status"], "cancelled");
    let bad_flow = k.flow(new_flow("Bad", &bad)).await;
    let r = k.verify(&bad_flow, json!({"invocationId": "bad"})).await;
    r.expect(202);
    let invalid = str_of(&r.data()["executionId"]).to_string();
    assert_eq!(k.done(&invalid).await["status"], "invalid");
    let r = k.activate(&bad_flow, &invalid).await;
    r.expect_error(409, "verification_not_successful");
    assert_eq!(r.body["details"]["status"], "invalid");
    // Verification (even invalid) never touches health.
    assert_eq!(k.get_flow(&bad_flow).await["status"], "healthy");

    // The graph changed since the verification: tree replaced, or devices changed.
    let r = k.verify(&other, json!({"invocationId": "v1"})).await;
    r.expect(202);
    let v1 = str_of(&r.data()["executionId"]).to_string();
    assert_eq!(k.done(&v1).await["status"], "success");
    k.s.put(
        &format!("/v1/flows/{other}/actions"),
        json!({"actions": [node(&wait, 0, "renamed")]}),
    )
    .await
    .expect(200);
    k.activate(&other, &v1)
        .await
        .expect_error(409, "flow_changed_since_verification");
    let r = k.verify(&other, json!({"invocationId": "v2"})).await;
    r.expect(202);
    let v2 = str_of(&r.data()["executionId"]).to_string();
    assert_eq!(k.done(&v2).await["status"], "success");
    k.s.patch(&format!("/v1/flows/{other}"), json!({"deviceIds": [d1]}))
        .await
        .expect(200);
    k.activate(&other, &v2)
        .await
        .expect_error(409, "flow_changed_since_verification");
    // The action's own params are part of the graph too.
    let r = k
        .verify(&other, json!({"invocationId": "v3", "deviceId": d1}))
        .await;
    r.expect(202);
    let v3 = str_of(&r.data()["executionId"]).to_string();
    assert_eq!(k.done(&v3).await["status"], "success");
    k.s.patch(
        &format!("/v1/actions/{wait}"),
        json!({"params": {"seconds": 0.0}}),
    )
    .await
    .expect(200);
    k.s.patch(
        &format!("/v1/actions/{wait}"),
        json!({"params": {"seconds": 1}}),
    )
    .await
    .expect(200);
    k.activate(&other, &v3)
        .await
        .expect_error(409, "flow_changed_since_verification");
    k.s.patch(
        &format!("/v1/actions/{wait}"),
        json!({"params": {"seconds": 0}}),
    )
    .await
    .expect(200);
    let r = k.activate(&other, &v3).await;
    r.expect(200);
    assert_eq!(r.data()["enabled"], true);

    // Archived flows are 404.
    k.s.delete(&format!("/v1/flows/{bad_flow}"))
        .await
        .expect(200);
    k.activate(&bad_flow, &invalid)
        .await
        .expect_error(404, "not_found");
}
