//! Events (§3.7, §5.4): durable ingest, routing by event type and conditions, device
//! targeting, gates, the WhatsApp derivation, the app-event catalog, and exactly-once routing
//! across a crash.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::Server;
use reqwest::Method;
use serde_json::{Value, json};

async fn catalog_id(s: &Server, method: &str) -> String {
    let r = s.get("/v1/action-catalog?pageSize=100").await;
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["method"] == method)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn action(s: &Server, method: &str, params: Value) -> String {
    let entry = catalog_id(s, method).await;
    s.post(
        "/v1/actions",
        json!({"name": method, "catalogEntryId": entry, "params": params}),
    )
    .await
    .expect(201)
    .id()
}

async fn event_trigger(s: &Server, event_type: &str, conditions: Value) -> String {
    s.post(
        "/v1/triggers",
        json!({"name": format!("on {event_type}"), "activation": "event",
               "eventType": event_type, "conditions": conditions}),
    )
    .await
    .expect(201)
    .id()
}

async fn flow(s: &Server, trigger: &str, action: &str, extra: Value) -> String {
    let mut body = json!({"name": "events flow", "triggerId": trigger,
                          "actions": [{"actionId": action, "position": 0}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    s.post("/v1/flows", body).await.expect(201).id()
}

async fn ingest(s: &Server, body: Value) -> String {
    let r = s.post("/v1/events/ingest", body).await;
    r.expect(202)
        .schema("workflows.event_ingest_response.EventIngestResponse");
    r.body["eventId"].as_str().unwrap().to_string()
}

/// Every execution of a trigger (all pages).
async fn executions_of(s: &Server, trigger: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for page in 1.. {
        let r = s
            .get(&format!(
                "/v1/executions?triggerId={trigger}&pageSize=100&page={page}&orderByDirection=asc"
            ))
            .await;
        r.expect(200);
        let items = r.body["items"].as_array().unwrap().clone();
        out.extend(items);
        if r.body["pagination"]["hasNext"] != true {
            break;
        }
    }
    out
}

/// Polls until the trigger has `n` executions (or the deadline passes).
async fn wait_for_count(s: &Server, trigger: &str, n: i64, timeout: Duration) -> i64 {
    let deadline = Instant::now() + timeout;
    loop {
        let total = s
            .get(&format!("/v1/executions/metrics?triggerId={trigger}"))
            .await
            .body["data"]["total"]
            .as_i64()
            .unwrap();
        if total >= n || Instant::now() > deadline {
            return total;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ingest_validates_shape_and_known_payload_types() {
    let s = Server::start().await;
    let id = ingest(
        &s,
        json!({"eventType": "custom.thing", "payload": {"any": [1, 2]}}),
    )
    .await;
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    ingest(&s, json!({"eventType": "device.user.present"})).await;
    let r = s
        .post(
            "/v1/events/ingest",
            json!({"eventType": "device.sms.received", "payload": {"message": 5, "extra": true}}),
        )
        .await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), ["payload.message"]);
    for (body, field) in [
        (json!({}), "eventType"),
        (json!({"eventType": "has space"}), "eventType"),
        (json!({"eventType": ""}), "eventType"),
        (json!({"eventType": "x", "payload": []}), "payload"),
        (json!({"eventType": "x", "deviceId": "nope"}), "deviceId"),
    ] {
        let r = s.post("/v1/events/ingest", body.clone()).await;
        r.expect_error(422, "validation_failed");
        assert_eq!(r.error_fields(), [field], "{body}");
    }
    // Nothing invalid was stored or routed.
    let m = s.get("/v1/executions/metrics").await;
    assert_eq!(m.body["data"]["total"], 0);
}

#[tokio::test]
async fn app_event_catalog_lists_and_gets_types() {
    let s = Server::start().await;
    let r = s.get("/v1/app-events/catalog").await;
    r.expect(200);
    let types: Vec<&str> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["appEventType"].as_str().unwrap())
        .collect();
    assert_eq!(types.len(), 14);
    assert!(types.windows(2).all(|w| w[0] < w[1]));
    let r = s.get("/v1/app-events/catalog/device.sms.received").await;
    r.expect(200);
    assert_eq!(r.body["data"]["sourceEventType"], "SMS_RECEIVED");
    assert_eq!(r.body["data"]["category"], "device");
    assert!(r.body["data"]["packageName"].is_null());
    s.get("/v1/app-events/catalog/nope.nope")
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn events_run_exactly_the_flows_whose_conditions_pass_on_the_right_devices() {
    let s = Server::start().await;
    let wait = action(&s, "flow.wait", json!({"seconds": 0})).await;
    let codes = event_trigger(
        &s,
        "device.sms.received",
        json!({"field": "message", "op": "contains", "value": "code"}),
    )
    .await;
    let any_sms = event_trigger(&s, "device.sms.received", Value::Null).await;
    let other = event_trigger(&s, "device.SMS.received", Value::Null).await;
    let d1 = s
        .post(
            "/v1/devices",
            json!({"name": "a", "provider": "adb", "address": "serial-a"}),
        )
        .await
        .id();
    let d2 = s
        .post(
            "/v1/devices",
            json!({"name": "b", "provider": "adb", "address": "serial-b"}),
        )
        .await
        .id();
    let f_codes = flow(&s, &codes, &wait, json!({})).await;
    let f_devices = flow(&s, &any_sms, &wait, json!({"deviceIds": [d1, d2]})).await;
    let f_other = flow(&s, &other, &wait, json!({})).await;

    // Matches `codes` (device-free flow) and `any_sms` on d1 only.
    let e1 = ingest(
        &s,
        json!({"eventType": "device.sms.received", "deviceId": d1,
               "payload": {"message": "your code is 1234"}}),
    )
    .await;
    // Matches only `any_sms`, on both devices (no deviceId).
    let e2 = ingest(
        &s,
        json!({"eventType": "device.sms.received", "payload": {"message": "hello"}}),
    )
    .await;
    // Unregistered device: `any_sms` has devices, none matches → nothing; `codes` fails.
    let e3 = ingest(
        &s,
        json!({"eventType": "device.sms.received", "deviceId": uuid::Uuid::new_v4(),
               "payload": {"message": "hello"}}),
    )
    .await;
    assert_eq!(
        wait_for_count(&s, &codes, 1, Duration::from_secs(10)).await,
        1
    );
    assert_eq!(
        wait_for_count(&s, &any_sms, 3, Duration::from_secs(10)).await,
        3
    );
    // The router has passed every event (later events were routed in order).
    let marker = event_trigger(&s, "marker", Value::Null).await;
    flow(&s, &marker, &wait, json!({})).await;
    ingest(&s, json!({"eventType": "marker"})).await;
    assert_eq!(
        wait_for_count(&s, &marker, 1, Duration::from_secs(10)).await,
        1
    );

    let rows = executions_of(&s, &codes).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["eventId"], e1.as_str());
    assert_eq!(rows[0]["flowId"], f_codes.as_str());
    assert!(rows[0]["deviceId"].is_null());
    assert!(rows[0]["invocationId"].is_null());

    let rows = executions_of(&s, &any_sms).await;
    let mut got: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r["flowId"], f_devices.as_str());
            (
                r["eventId"].as_str().unwrap().to_string(),
                r["deviceId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (e1.clone(), d1.clone()),
        (e2.clone(), d1.clone()),
        (e2.clone(), d2.clone()),
    ];
    want.sort();
    assert_eq!(got, want);
    assert!(rows.iter().all(|r| r["eventId"] != e3.as_str()));
    // Event types match case-sensitively.
    assert_eq!(executions_of(&s, &other).await.len(), 0);
    let _ = f_other;
}

#[tokio::test]
async fn an_event_inside_a_cooldown_yields_a_skipped_execution() {
    let s = Server::start().await;
    let wait = action(&s, "flow.wait", json!({"seconds": 0})).await;
    let t = event_trigger(&s, "device.app.entered", Value::Null).await;
    let f = flow(&s, &t, &wait, json!({"cooldownSeconds": 3600})).await;
    ingest(
        &s,
        json!({"eventType": "device.app.entered", "payload": {"package": "a"}}),
    )
    .await;
    ingest(
        &s,
        json!({"eventType": "device.app.entered", "payload": {"package": "b"}}),
    )
    .await;
    assert_eq!(wait_for_count(&s, &t, 2, Duration::from_secs(10)).await, 2);
    let rows = executions_of(&s, &t).await;
    let statuses: HashSet<(String, Option<String>)> = rows
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap().to_string(),
                r["error"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert!(statuses.contains(&("skipped".into(), Some("cooldown_active".into()))));
    let flow = s.get(&format!("/v1/flows/{f}")).await;
    assert!(flow.body["data"]["lastTriggeredAt"].is_string());
}

#[tokio::test]
async fn whatsapp_notifications_derive_a_message_event() {
    let s = Server::start().await;
    let wait = action(&s, "flow.wait", json!({"seconds": 0})).await;
    let t = event_trigger(
        &s,
        "app.whatsapp.message_received",
        json!({"field": "sender", "op": "eq", "value": "Alice"}),
    )
    .await;
    flow(&s, &t, &wait, json!({})).await;
    let id = ingest(
        &s,
        json!({"eventType": "device.notification.posted",
               "payload": {"package": "com.whatsapp", "title": "Alice", "text": "hi", "post_time": 0}}),
    )
    .await;
    ingest(
        &s,
        json!({"eventType": "device.notification.posted",
               "payload": {"package": "com.android.chrome", "title": "Alice"}}),
    )
    .await;
    assert_eq!(wait_for_count(&s, &t, 1, Duration::from_secs(10)).await, 1);
    let rows = executions_of(&s, &t).await;
    assert_eq!(rows.len(), 1);
    // The derived event has its own id, never returned.
    assert_ne!(rows[0]["eventId"], id.as_str());
}

/// 10,000 events ingested concurrently, the server killed with SIGKILL right after the last
/// 202 and restarted: every accepted event is routed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_events_survive_a_crash_and_are_routed_exactly_once() {
    let s = Server::start().await;
    // A flow that needs a device and has none: each routed event leaves one `skipped` row
    // (`no_device`) and nothing runs, so the test measures routing only.
    let tap = action(&s, "devices.tap", json!({"x": 1, "y": 1})).await;
    let t = event_trigger(&s, "load.tick", Value::Null).await;
    flow(&s, &t, &tap, json!({})).await;

    const N: usize = 10_000;
    const CLIENTS: usize = 64;
    let s = std::sync::Arc::new(s);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (c..N).step_by(CLIENTS) {
                let r = s
                    .post(
                        "/v1/events/ingest",
                        json!({"eventType": "load.tick", "payload": {"i": i}}),
                    )
                    .await;
                r.expect(202);
                ids.push(r.body["eventId"].as_str().unwrap().to_string());
            }
            ids
        }));
    }
    let mut accepted = HashSet::new();
    for t in tasks {
        accepted.extend(t.await.unwrap());
    }
    assert_eq!(accepted.len(), N);
    let s = std::sync::Arc::into_inner(s).expect("no other users");
    let s = s.restart().await;

    let total = wait_for_count(&s, &t, N as i64, Duration::from_secs(120)).await;
    assert_eq!(total, N as i64);
    let rows = executions_of(&s, &t).await;
    assert_eq!(rows.len(), N);
    let mut routed = HashSet::new();
    for r in &rows {
        assert_eq!(r["status"], "skipped");
        assert_eq!(r["error"], "no_device");
        assert!(
            routed.insert(r["eventId"].as_str().unwrap().to_string()),
            "event routed twice: {}",
            r["eventId"]
        );
    }
    assert_eq!(routed, accepted);
}

#[tokio::test]
async fn an_idempotency_key_stores_and_routes_the_event_once() {
    let s = Server::start().await;
    let tap = action(&s, "devices.tap", json!({"x": 1, "y": 1})).await;
    let t = event_trigger(&s, "keyed.tick", Value::Null).await;
    flow(&s, &t, &tap, json!({})).await;
    let body = json!({"eventType": "keyed.tick", "payload": {"n": 1}});
    let h = [("Idempotency-Key", "ingest-retry-1")];
    let first = s
        .call_as(&s.key, Method::POST, "/v1/events/ingest", Some(&body), &h)
        .await;
    first.expect(202);
    assert!(first.headers.get("idempotent-replayed").is_none());
    // A retry replays the first reply byte for byte and stores nothing.
    let again = s
        .call_as(&s.key, Method::POST, "/events/ingest", Some(&body), &h)
        .await;
    again.expect(202);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.text, first.text);
    let other = json!({"eventType": "keyed.tick", "payload": {"n": 2}});
    s.call_as(&s.key, Method::POST, "/v1/events/ingest", Some(&other), &h)
        .await
        .expect_error(422, "idempotency_key_reused");
    // A refused request does not take its key.
    let bad = json!({"eventType": "has space"});
    let h2 = [("Idempotency-Key", "ingest-retry-2")];
    s.call_as(&s.key, Method::POST, "/v1/events/ingest", Some(&bad), &h2)
        .await
        .expect_error(422, "validation_failed");
    // Concurrent requests with one key (one group commit or several): one event. A request
    // that finds the first still in flight may be told so (409, retry later).
    let s = std::sync::Arc::new(s);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        let other = other.clone();
        tasks.push(tokio::spawn(async move {
            let r = s
                .call_as(&s.key, Method::POST, "/v1/events/ingest", Some(&other), &h2)
                .await;
            if r.status.as_u16() == 409 {
                r.expect_error(409, "idempotency_request_in_progress");
                return None;
            }
            r.expect(202);
            Some(r.body["eventId"].as_str().unwrap().to_string())
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "one event for one key: {ids:?}");
    assert_eq!(wait_for_count(&s, &t, 2, Duration::from_secs(10)).await, 2);
    let rows = executions_of(&s, &t).await;
    assert_eq!(rows.len(), 2);
    let routed: HashSet<String> = rows
        .iter()
        .map(|r| r["eventId"].as_str().unwrap().to_string())
        .collect();
    let expected: HashSet<String> = [
        first.body["eventId"].as_str().unwrap().to_string(),
        ids.into_iter().next().unwrap(),
    ]
    .into();
    assert_eq!(routed, expected);
}
