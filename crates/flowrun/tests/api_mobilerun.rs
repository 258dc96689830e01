//! The `mobilerun` device provider (§5.12) end to end: the real server's provider talks
//! HTTP to `flowrun-cloud-standin`, a local stand-in of the Mobilerun cloud that records
//! every request. Also device probes (§3.11) for both providers.
//!
//! Nothing here sleeps to synchronise: executions, devices and the stand-in's request log
//! are polled until a predicate holds or a deadline passes.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Server;
use common::cloud::Cloud;
use reqwest::Method;
use serde_json::{Value, json};

const CLOUD_KEY: &str = "mr-test-key";
const TERMINAL: [&str; 5] = ["success", "failed", "cancelled", "skipped", "invalid"];

struct Kit {
    s: Server,
    cloud: Cloud,
    cat: HashMap<String, String>,
}

impl Kit {
    /// A stand-in cloud accepting [`CLOUD_KEY`] and a server configured with `server_key`.
    async fn start_with_key(server_key: &str, extra_env: &[(&str, &str)]) -> Kit {
        let cloud = Cloud::start(CLOUD_KEY).await;
        let url = cloud.api_url();
        let mut env = vec![
            ("FLOWRUN_MOBILERUN_BASE_URL", url.as_str()),
            ("FLOWRUN_MOBILERUN_API_KEY", server_key),
            ("FLOWRUN_MOBILERUN_POLL_MS", "20"),
        ];
        env.extend_from_slice(extra_env);
        let s = Server::start_env(&[], &env).await;
        let cat = s.catalog_ids().await;
        Kit { s, cloud, cat }
    }

    async fn start() -> Kit {
        Self::start_with_key(CLOUD_KEY, &[]).await
    }

    async fn device(&self, provider: &str, address: &str) -> String {
        let r = self
            .s
            .post(
                "/v1/devices",
                json!({"name": address, "provider": provider, "address": address}),
            )
            .await;
        r.expect(201);
        r.id()
    }

    async fn action(&self, method: &str, params: Value) -> String {
        let r = self
            .s
            .post(
                "/v1/actions",
                json!({"catalogEntryId": self.cat[method], "name": method, "params": params}),
            )
            .await;
        r.expect(201);
        r.id()
    }

    /// A flow on one device whose steps are `(key, method, params)` in order.
    async fn flow(&self, device: &str, steps: &[(&str, &str, Value)]) -> String {
        let t = self
            .s
            .post(
                "/v1/triggers",
                json!({"activation": "custom", "name": "Cloud"}),
            )
            .await;
        t.expect(201);
        let mut nodes = Vec::new();
        for (i, (key, method, params)) in steps.iter().enumerate() {
            let a = self.action(method, params.clone()).await;
            nodes.push(json!({"actionId": a, "position": i, "key": key}));
        }
        let r = self
            .s
            .post(
                "/v1/flows",
                json!({"name": "Cloud flow", "triggerId": t.id(), "deviceIds": [device],
                       "actions": nodes}),
            )
            .await;
        r.expect(201);
        r.id()
    }

    async fn run(&self, flow: &str) -> String {
        let r = self
            .s
            .post(&format!("/v1/flows/{flow}/run"), json!({"payload": {}}))
            .await;
        r.expect(202);
        r.data()["executionIds"][0].as_str().unwrap().to_string()
    }

    async fn wait_exec(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.s.get(&format!("/v1/executions/{id}")).await;
            r.expect(200);
            if pred(r.data()) {
                return r.data().clone();
            }
            assert!(
                Instant::now() < deadline,
                "execution {id} did not get there; last: {}",
                r.text
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn done(&self, id: &str) -> Value {
        self.wait_exec(id, |e| TERMINAL.iter().any(|t| e["status"] == *t))
            .await
    }

    async fn wait_device_state(&self, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.s.get(&format!("/v1/devices/{id}")).await;
            r.expect(200);
            if r.data()["state"] == state {
                return r.data().clone();
            }
            assert!(
                Instant::now() < deadline,
                "device {id} never became {state}; last: {}",
                r.text
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the flow until `pred` holds (health is recorded just after the terminal write).
    async fn wait_flow(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = self.s.get(&format!("/v1/flows/{id}")).await;
            r.expect(200);
            if pred(r.data()) {
                return r.data().clone();
            }
            assert!(
                Instant::now() < deadline,
                "flow {id} did not reach the expected state; last: {}",
                r.text
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The cloud requests other than probes (`GET /v1/devices/{id}`).
    async fn calls(&self) -> Vec<Value> {
        self.cloud
            .requests()
            .await
            .into_iter()
            .filter(|r| !(r["method"] == "GET" && is_probe_path(r["path"].as_str().unwrap())))
            .collect()
    }
}

fn is_probe_path(p: &str) -> bool {
    p.strip_prefix("/v1/devices/")
        .is_some_and(|rest| !rest.contains('/'))
}

fn step(e: &Value, i: usize) -> &Value {
    &e["result"]["steps"][i]
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

#[tokio::test]
async fn tasks_run_returns_the_result_and_its_task_id_as_session() {
    let k = Kit::start().await;
    let d = k.device("mobilerun", "cloud-dev-1").await;
    k.cloud
        .script(json!({"statuses": ["queued", "running"], "output": {"price": 42}, "steps": 7}))
        .await;
    let f = k
        .flow(
            &d,
            &[(
                "shop",
                "tasks.run",
                json!({"task": "Find the price", "maxSteps": 10, "vision": true}),
            )],
        )
        .await;
    let e = k.done(&k.run(&f).await).await;
    assert_eq!(e["status"], "success", "{e}");
    let s = step(&e, 0);
    let task_id = s["body"]["taskId"].as_str().expect("taskId").to_string();
    assert_eq!(
        s["body"],
        json!({"taskId": task_id, "status": "completed", "succeeded": true,
               "output": {"price": 42}, "steps": 7})
    );
    assert_eq!(s["sessionId"], task_id.as_str());

    let calls = k.calls().await;
    let created = &calls[0];
    assert_eq!(created["method"], "POST");
    assert_eq!(created["path"], "/v1/tasks/");
    assert_eq!(created["authorization"], format!("Bearer {CLOUD_KEY}"));
    assert_eq!(
        created["body"],
        json!({"task": "Find the price", "maxSteps": 10, "vision": true,
               "deviceId": "cloud-dev-1", "llmModel": "mobilerun/mobile-agent-fast"})
    );
    let status_path = format!("/v1/tasks/{task_id}/status");
    let polls: Vec<&Value> = calls.iter().filter(|r| r["path"] == status_path).collect();
    assert_eq!(polls.len(), 3, "queued, running, completed: {calls:#?}");
    assert!(polls.iter().all(|r| r["method"] == "GET"));
    let last = calls.last().unwrap();
    assert_eq!(
        (last["method"].as_str(), last["path"].as_str()),
        (Some("GET"), Some(format!("/v1/tasks/{task_id}").as_str()))
    );
    assert!(
        !calls
            .iter()
            .any(|r| r["path"].as_str().unwrap().ends_with("/cancel")),
        "a finished task is never cancelled"
    );
}

#[tokio::test]
async fn a_task_that_does_not_succeed_fails_the_step_as_logic() {
    let k = Kit::start().await;
    let d = k.device("mobilerun", "cloud-dev-2").await;
    k.cloud
        .script(json!({"succeeded": false, "finalStatus": "failed", "message": "no such item"}))
        .await;
    let f = k
        .flow(
            &d,
            &[(
                "shop",
                "tasks.run",
                json!({"task": "Buy it", "llmModel": "m-1"}),
            )],
        )
        .await;
    let e = k.done(&k.run(&f).await).await;
    assert_eq!(e["status"], "failed", "{e}");
    let err = e["error"].as_str().unwrap();
    assert!(
        err.starts_with("shop: logic: task_failed: no such item"),
        "{err}"
    );
    let task_id = k.calls().await[1]["path"]
        .as_str()
        .unwrap()
        .trim_start_matches("/v1/tasks/")
        .trim_end_matches("/status")
        .to_string();
    assert_eq!(step(&e, 0)["sessionId"], task_id.as_str());
    let created = &k.calls().await[0];
    assert_eq!(created["body"]["llmModel"], "m-1", "a named model is kept");
    k.wait_flow(&f, |f| f["lastFailureCode"] == "logic").await;
}

#[tokio::test]
async fn agent_run_follows_the_run_and_copies_the_verdict() {
    let k = Kit::start().await;
    let d = k.device("mobilerun", "cloud-dev-3").await;
    k.cloud
        .script(json!({"statuses": ["running"], "output": "done",
                       "verdict": {"outcome": "ok", "summary": "all good", "reason": null}}))
        .await;
    let f = k
        .flow(
            &d,
            &[(
                "agent",
                "agent.run",
                json!({"agentId": "agent-7", "input": {"q": 1}, "requestVerdict": true}),
            )],
        )
        .await;
    let e = k.done(&k.run(&f).await).await;
    assert_eq!(e["status"], "success", "{e}");
    let s = step(&e, 0);
    let run_id = s["body"]["agentRunId"].as_str().unwrap().to_string();
    assert_eq!(s["sessionId"], run_id.as_str());
    assert_eq!(s["body"]["output"], "done");
    assert_eq!(s["body"]["verdict"]["outcome"], "ok");
    assert_eq!(s["verdict"]["outcome"], "ok");
    assert_eq!(s["verdict"]["summary"], "all good");
    let created = &k.calls().await[0];
    assert_eq!(created["path"], "/v1/agents/agent-7/runs");
    assert_eq!(
        created["body"],
        json!({"deviceId": "cloud-dev-3", "input": {"q": 1}, "timeoutSeconds": 900,
               "requestVerdict": true})
    );
}

#[tokio::test]
async fn device_steps_call_the_device_endpoints() {
    let k = Kit::start().await;
    let d = k.device("mobilerun", "phone-9").await;
    k.cloud
        .device("phone-9", json!({"texts": ["Welcome back, Ada"]}))
        .await;
    let f = k
        .flow(
            &d,
            &[
                ("tap", "devices.tap", json!({"x": 10, "y": 20})),
                (
                    "swipe",
                    "devices.swipe",
                    json!({"startX": 1, "startY": 2, "endX": 3, "endY": 4}),
                ),
                (
                    "type",
                    "devices.type",
                    json!({"text": "hello world", "clear": true}),
                ),
                ("key", "devices.key", json!({"key": "back"})),
                (
                    "start",
                    "devices.app.start",
                    json!({"packageName": "com.example.mail", "activity": ".Main"}),
                ),
                (
                    "stop",
                    "devices.app.stop",
                    json!({"packageName": "com.example.mail"}),
                ),
                ("shot", "devices.screenshot", json!({})),
                (
                    "wait",
                    "devices.wait_for_text",
                    json!({"text": "welcome BACK"}),
                ),
            ],
        )
        .await;
    let e = k.done(&k.run(&f).await).await;
    assert_eq!(e["status"], "success", "{e}");
    assert_eq!(step(&e, 0)["body"], json!({"ok": true}));
    assert_eq!(step(&e, 3)["body"], json!({"ok": true, "keyCode": 4}));
    assert_eq!(step(&e, 6)["body"]["mimeType"], "image/png");
    assert_eq!(step(&e, 7)["body"]["found"], true);

    let calls: Vec<(String, String, Value)> = k
        .calls()
        .await
        .into_iter()
        .map(|r| {
            assert_eq!(r["authorization"], format!("Bearer {CLOUD_KEY}"));
            (
                r["method"].as_str().unwrap().to_string(),
                r["path"].as_str().unwrap().to_string(),
                r["body"].clone(),
            )
        })
        .collect();
    let p = |s: &str| format!("/v1/devices/phone-9{s}");
    let want = vec![
        ("POST".to_string(), p("/tap"), json!({"x": 10, "y": 20})),
        (
            "POST".into(),
            p("/swipe"),
            json!({"startX": 1, "startY": 2, "endX": 3, "endY": 4, "duration": 300}),
        ),
        (
            "POST".into(),
            p("/keyboard"),
            json!({"text": "hello world", "clear": true}),
        ),
        ("PUT".into(), p("/keyboard"), json!({"key": 4})),
        (
            "PUT".into(),
            p("/apps/com.example.mail"),
            json!({"activity": ".Main"}),
        ),
        ("PATCH".into(), p("/apps/com.example.mail"), json!({})),
        ("GET".into(), p("/screenshot"), Value::Null),
        ("GET".into(), p("/ui-state"), Value::Null),
    ];
    assert_eq!(calls, want);
}

#[tokio::test]
async fn a_rejected_key_is_permission_denied_and_blocks_the_flow() {
    let k = Kit::start_with_key("not-the-key", &[]).await;
    let d = k.device("mobilerun", "phone-1").await;
    let f = k
        .flow(&d, &[("tap", "devices.tap", json!({"x": 1, "y": 1}))])
        .await;
    let e = k.done(&k.run(&f).await).await;
    assert_eq!(e["status"], "failed", "{e}");
    let err = e["error"].as_str().unwrap();
    assert!(err.starts_with("tap: permission_denied: "), "{err}");
    assert!(!err.contains("not-the-key"), "the key never shows: {err}");
    k.wait_flow(&f, |f| {
        f["status"] == "blocked" && f["lastFailureCode"] == "permission_denied"
    })
    .await;
    let tap = k
        .cloud
        .wait_request(
            |r| r["path"] == "/v1/devices/phone-1/tap",
            Duration::from_secs(1),
        )
        .await;
    assert_eq!(tap["authorization"], "Bearer not-the-key");
}

#[tokio::test]
async fn an_unknown_cloud_device_is_device_not_found() {
    let k = Kit::start().await;
    k.cloud.device("ghost", json!({"missing": true})).await;
    let d = k.device("mobilerun", "ghost").await;
    let f = k
        .flow(&d, &[("tap", "devices.tap", json!({"x": 1, "y": 1}))])
        .await;
    let e = k.done(&k.run(&f).await).await;
    assert_eq!(e["status"], "failed", "{e}");
    let err = e["error"].as_str().unwrap();
    assert!(err.starts_with("tap: device_not_found: "), "{err}");
    k.wait_flow(&f, |f| {
        f["status"] == "blocked" && f["lastFailureCode"] == "device_not_found"
    })
    .await;
}

#[tokio::test]
async fn abort_during_a_long_task_cancels_it_in_the_cloud_within_100_ms() {
    let k = Kit::start().await;
    let d = k.device("mobilerun", "cloud-long").await;
    k.cloud.script(json!({"durationMs": 600_000})).await;
    let f = k
        .flow(
            &d,
            &[("long", "tasks.run", json!({"task": "Take your time"}))],
        )
        .await;
    let id = k.run(&f).await;
    // The task exists in the cloud and is being followed.
    let created = k
        .cloud
        .wait_request(|r| r["path"] == "/v1/tasks/", Duration::from_secs(10))
        .await;
    assert_eq!(created["method"], "POST");
    let first_poll = k
        .cloud
        .wait_request(
            |r| r["path"].as_str().unwrap().ends_with("/status"),
            Duration::from_secs(10),
        )
        .await;
    let task_id = first_poll["path"]
        .as_str()
        .unwrap()
        .trim_start_matches("/v1/tasks/")
        .trim_end_matches("/status")
        .to_string();

    let r =
        k.s.call(Method::POST, &format!("/v1/executions/{id}/abort"), None)
            .await;
    let replied_at = now_ms();
    r.expect(200);
    let cancel_path = format!("/v1/tasks/{task_id}/cancel");
    let cancel = k
        .cloud
        .wait_request(|r| r["path"] == cancel_path, Duration::from_secs(5))
        .await;
    assert_eq!(cancel["method"], "POST");
    assert_eq!(cancel["authorization"], format!("Bearer {CLOUD_KEY}"));
    let lag = cancel["at"].as_f64().unwrap() - replied_at;
    eprintln!("cloud cancel recorded {lag:.1} ms after the abort reply");
    assert!(
        lag <= 100.0,
        "the cloud task was cancelled {lag:.1} ms after the abort reply"
    );
    let e = k.done(&id).await;
    assert_eq!(e["status"], "cancelled");
    assert_eq!(step(&e, 0)["status"], "cancelled");
    let cancels = k
        .calls()
        .await
        .into_iter()
        .filter(|r| r["path"] == cancel_path)
        .count();
    assert_eq!(cancels, 1);
}

/// A stand-in `adb` whose `get-state` answers `device` for serial `adb-on` only.
fn fake_adb() -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adb");
    std::fs::write(
        &path,
        "#!/bin/sh\n\
         if [ \"$2\" = adb-on ]; then echo device; exit 0; fi\n\
         echo \"error: device '$2' not found\" >&2; exit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, path)
}

#[tokio::test]
async fn probes_set_devices_online_and_offline() {
    let (_dir, adb) = fake_adb();
    let k = Kit::start_with_key(CLOUD_KEY, &[("FLOWRUN_ADB", adb.to_str().unwrap())]).await;
    k.cloud.device("cloud-gone", json!({"missing": true})).await;

    // At registration.
    let on = k.device("mobilerun", "cloud-on").await;
    let gone = k.device("mobilerun", "cloud-gone").await;
    let adb_on = k.device("adb", "adb-on").await;
    let adb_off = k.device("adb", "adb-off").await;
    k.wait_device_state(&on, "online").await;
    k.wait_device_state(&gone, "offline").await;
    k.wait_device_state(&adb_on, "online").await;
    k.wait_device_state(&adb_off, "offline").await;
    let r = k.s.get("/v1/devices?state=online").await;
    assert_eq!(r.body["pagination"]["total"], 2);

    // On an address change: reset to unknown, then probed again.
    k.cloud
        .device("cloud-gone-too", json!({"missing": true}))
        .await;
    let r =
        k.s.patch(
            &format!("/v1/devices/{on}"),
            json!({"address": "cloud-gone-too"}),
        )
        .await;
    r.expect(200);
    assert_eq!(r.data()["state"], "unknown");
    k.wait_device_state(&on, "offline").await;
    k.cloud
        .wait_request(
            |r| r["method"] == "GET" && r["path"] == "/v1/devices/cloud-gone-too",
            Duration::from_secs(1),
        )
        .await;

    // After a device step: the device came back, a step ran on it, the probe after the
    // step sees it (the periodic probe is a minute away).
    k.cloud.device("cloud-gone-too", json!({})).await;
    let f = k
        .flow(&on, &[("tap", "devices.tap", json!({"x": 1, "y": 1}))])
        .await;
    let e = k.done(&k.run(&f).await).await;
    assert_eq!(e["status"], "success", "{e}");
    k.wait_device_state(&on, "online").await;
}
