//! Screenshots, artifacts, delivery records and self-healing repairs through the API (§3.8,
//! §3.13, §4.7, §4.8, §5.15, §5.18), with the recording stand-in `adb` as the phone.
//!
//! Nothing here sleeps to synchronise: executions and repair lists are polled until a
//! predicate holds or a deadline passes.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::adb::{PNG, fake_adb};
use common::{Server, assert_keys, check_schema};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;

const GET: &str = "workflows.execution_retrieve_response.ExecutionRetrieveResponse";
const REPAIRS: &str = "workflows.flow_list_repairs_response.FlowListRepairsResponse";
const SIGNING_KEY: &str = "test-artifact-signing-key-0123456789abcdef";

const SCREENSHOT_KEYS: [&str; 8] = [
    "id",
    "seq",
    "source",
    "stepIndex",
    "iterationIndex",
    "stepName",
    "mimeType",
    "capturedAt",
];
const DELIVERY_KEYS: [&str; 10] = [
    "artifact",
    "destination",
    "status",
    "filename",
    "folder",
    "stepIndex",
    "webUrl",
    "errorCode",
    "startedAt",
    "finishedAt",
];
const REPAIR_KEYS: [&str; 19] = [
    "id",
    "flowId",
    "episode",
    "attempt",
    "maxAttempts",
    "status",
    "sourceExecutionId",
    "failedStepIndex",
    "originalSlug",
    "candidateSlug",
    "deviceId",
    "agentRunId",
    "chatSessionId",
    "verdict",
    "error",
    "startedAt",
    "finishedAt",
    "createdAt",
    "updatedAt",
];

/// A server whose `adb` is the stand-in, plus the catalog ids (method → entry id).
struct Kit {
    s: Server,
    adb_dir: tempfile::TempDir,
    cat: HashMap<String, String>,
    /// Follows no redirects and sends no key.
    bare: reqwest::Client,
}

impl Kit {
    async fn start(args: &[&str]) -> Kit {
        Self::start_env(args, &[]).await
    }

    async fn start_env(args: &[&str], env: &[(&str, &str)]) -> Kit {
        let (adb_dir, adb) = fake_adb();
        let mut env = env.to_vec();
        env.push(("FLOWRUN_ADB", adb.to_str().unwrap()));
        let s = Server::start_env(args, &env).await;
        let cat = s.catalog_ids().await;
        let bare = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Kit {
            s,
            adb_dir,
            cat,
            bare,
        }
    }

    fn marker(&self, name: &str, on: bool) {
        let path = self.adb_dir.path().join(name);
        if on {
            std::fs::write(path, "").unwrap();
        } else {
            let _ = std::fs::remove_file(path);
        }
    }

    fn adb_log(&self) -> String {
        std::fs::read_to_string(self.adb_dir.path().join("adb.log")).unwrap_or_default()
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

    async fn trigger(&self) -> String {
        let r = self
            .s
            .post(
                "/v1/triggers",
                json!({"activation": "custom", "name": "Manual"}),
            )
            .await;
        r.expect(201);
        r.id()
    }

    async fn device(&self, address: &str) -> String {
        self.device_of("adb", address).await
    }

    async fn device_of(&self, provider: &str, address: &str) -> String {
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

    async fn flow(&self, body: Value) -> String {
        let r = self.s.post("/v1/flows", body).await;
        r.expect(201);
        r.id()
    }

    /// `POST /flows/{id}/run` with `body`; the one enqueued execution id.
    async fn run(&self, flow: &str, body: Value) -> String {
        let r = self.s.post(&format!("/v1/flows/{flow}/run"), body).await;
        r.expect(202);
        let ids = r.data()["executionIds"].as_array().unwrap().clone();
        assert_eq!(ids.len(), 1, "{}", r.body);
        ids[0].as_str().unwrap().to_string()
    }

    async fn exec(&self, id: &str) -> Value {
        let r = self.s.get(&format!("/v1/executions/{id}")).await;
        r.expect(200).schema(GET);
        r.data().clone()
    }

    async fn wait_exec(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let e = self.exec(id).await;
            if pred(&e) {
                return e;
            }
            assert!(Instant::now() < deadline, "execution {id}: {e}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn done(&self, id: &str) -> Value {
        let e = self
            .wait_exec(id, |e| {
                ["success", "failed", "cancelled", "skipped", "invalid"]
                    .contains(&e["status"].as_str().unwrap_or(""))
            })
            .await;
        for s in e["screenshots"].as_array().unwrap() {
            assert_keys(s, &SCREENSHOT_KEYS);
        }
        for d in e["deliveries"].as_array().unwrap() {
            assert_keys(d, &DELIVERY_KEYS);
        }
        e
    }

    /// `GET /executions/{id}/screenshots/{sid}` as `key` without following the redirect.
    async fn screenshot(&self, key: &str, path: &str, host: Option<&str>) -> reqwest::Response {
        let mut req = self.bare.get(self.s.url(path));
        if !key.is_empty() {
            req = req.bearer_auth(key);
        }
        if let Some(h) = host {
            req = req.header("host", h);
        }
        req.send().await.unwrap()
    }

    /// Follows a screenshot's 302 and returns (status, content type, cache control, bytes).
    async fn fetch_screenshot(&self, exec: &str, sid: &str) -> (u16, String, String, Vec<u8>) {
        let r = self
            .screenshot(
                &self.s.key,
                &format!("/v1/executions/{exec}/screenshots/{sid}"),
                None,
            )
            .await;
        assert_eq!(r.status(), 302);
        let location = r.headers()["location"].to_str().unwrap().to_string();
        self.get_bare(&location).await
    }

    async fn get_bare(&self, url: &str) -> (u16, String, String, Vec<u8>) {
        let r = self.bare.get(url).send().await.unwrap();
        let header = |name: &str| {
            r.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let (status, ct, cc) = (
            r.status().as_u16(),
            header("content-type"),
            header("cache-control"),
        );
        (status, ct, cc, r.bytes().await.unwrap().to_vec())
    }

    async fn repairs(&self, flow: &str) -> Vec<Value> {
        let r = self.s.get(&format!("/v1/flows/{flow}/repairs")).await;
        r.expect(200).schema(REPAIRS);
        assert_keys(&r.body, &["data"]);
        let items = r.body["data"].as_array().unwrap().clone();
        for item in &items {
            assert_keys(item, &REPAIR_KEYS);
        }
        items
    }

    async fn wait_repairs(&self, flow: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let items = self.repairs(flow).await;
            if items.len() >= n {
                assert_eq!(items.len(), n, "{items:?}");
                return items;
            }
            assert!(Instant::now() < deadline, "repairs of {flow}: {items:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn node(action: &str, position: i64, key: &str) -> Value {
    json!({"actionId": action, "position": position, "key": key})
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token as the server would sign it with [`SIGNING_KEY`].
fn forge(claims: &Value, key: &str) -> String {
    let body = B64.encode(serde_json::to_vec(claims).unwrap());
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("{body}.{}", B64.encode(mac.finalize().into_bytes()))
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_screenshot_step_is_stored_and_served_through_a_signed_url() {
    let k = Kit::start(&[]).await;
    let t = k.trigger().await;
    let d = k.device("phone-1").await;
    let shot = k
        .action("devices.screenshot", "Capture screen", json!({}))
        .await;
    let f = k
        .flow(json!({"name": "Shooter", "triggerId": t, "deviceIds": [d],
                     "actions": [node(&shot, 0, "shot")]}))
        .await;
    let id = k.run(&f, json!({})).await;
    let e = k.done(&id).await;
    assert_eq!(e["status"], "success", "{e}");
    assert!(
        k.adb_log().contains("-s phone-1 exec-out screencap -p"),
        "{}",
        k.adb_log()
    );

    let shots = e["screenshots"].as_array().unwrap();
    assert_eq!(shots.len(), 1, "{e}");
    let s0 = &shots[0];
    assert_eq!(s0["seq"], 0);
    assert_eq!(s0["source"], "task");
    assert_eq!(s0["stepIndex"], 0);
    assert_eq!(s0["iterationIndex"], -1);
    assert_eq!(s0["stepName"], "Capture screen");
    assert_eq!(s0["mimeType"], "image/png");
    assert!(s0["capturedAt"].is_string());
    let sid = str_of(&s0["id"]).to_string();
    // The step's output names the stored screenshot.
    let body = &e["result"]["steps"][0]["body"];
    assert_eq!(body["screenshotId"], sid.as_str(), "{body}");
    assert_eq!(body["mimeType"], "image/png");

    // 302 to an absolute signed URL on the request's origin, valid five minutes.
    for prefix in ["/v1", ""] {
        let r = k
            .screenshot(
                &k.s.key,
                &format!("{prefix}/executions/{id}/screenshots/{sid}"),
                None,
            )
            .await;
        assert_eq!(r.status(), 302);
        let location = r.headers()["location"].to_str().unwrap().to_string();
        assert!(
            location.starts_with(&format!("{}/v1/artifacts/", k.s.base)),
            "{location}"
        );
        assert!(r.bytes().await.unwrap().is_empty());
        let token = location.rsplit('/').next().unwrap();
        let claims: Value =
            serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_keys(&claims, &["ownerId", "artifactId", "exp"]);
        assert_eq!(claims["ownerId"], "default");
        assert_eq!(claims["artifactId"], sid.as_str());
        let exp = claims["exp"].as_i64().unwrap();
        assert!((exp - now_secs() - 300).abs() <= 5, "exp {exp}");

        // The signed URL serves the exact bytes without a key.
        let (status, ct, cc, bytes) = k.get_bare(&location).await;
        assert_eq!(status, 200);
        assert_eq!(ct, "image/png");
        assert_eq!(cc, "private, max-age=300");
        assert_eq!(bytes, PNG);
        // Also at the root.
        let root = location.replace("/v1/artifacts/", "/artifacts/");
        assert_eq!(k.get_bare(&root).await.3, PNG);
    }

    // Without a configured public URL the origin is the request's Host.
    let r = k
        .screenshot(
            &k.s.key,
            &format!("/v1/executions/{id}/screenshots/{sid}"),
            Some("flowrun.example.test:9999"),
        )
        .await;
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with("http://flowrun.example.test:9999/v1/artifacts/"),
        "{location}"
    );

    // Tampered tokens are 404: another signature, other claims under the same signature,
    // garbage.
    let good = {
        let r = k
            .screenshot(
                &k.s.key,
                &format!("/v1/executions/{id}/screenshots/{sid}"),
                None,
            )
            .await;
        r.headers()["location"].to_str().unwrap().to_string()
    };
    let token = good.rsplit('/').next().unwrap().to_string();
    let (body, sig) = token.split_once('.').unwrap();
    let other_sig = forge(
        &json!({"ownerId": "default", "artifactId": sid, "exp": now_secs() + 300}),
        "some-other-key-0123456789abcdefghij",
    );
    let swapped_claims = B64.encode(
        serde_json::to_vec(
            &json!({"ownerId": "other", "artifactId": sid, "exp": now_secs() + 300}),
        )
        .unwrap(),
    );
    for bad in [
        format!("{body}.{}", other_sig.split_once('.').unwrap().1),
        format!("{swapped_claims}.{sig}"),
        format!("{body}.{}", &sig[..sig.len() - 2]),
        "garbage".to_string(),
        format!("{body}."),
    ] {
        let r =
            k.s.call_as("", Method::GET, &format!("/v1/artifacts/{bad}"), None, &[])
                .await;
        r.expect_error(404, "not_found");
        assert!(!r.text.contains(&sid), "{}", r.text);
    }

    // Unknown, foreign or malformed ids are 404; a key is required.
    let fake_sid = "0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87";
    for (key, path) in [
        (
            k.s.key.as_str(),
            format!("/v1/executions/{id}/screenshots/{fake_sid}"),
        ),
        (
            k.s.key.as_str(),
            format!("/v1/executions/{fake_sid}/screenshots/{sid}"),
        ),
        (
            k.s.key.as_str(),
            format!("/v1/executions/nope/screenshots/{sid}"),
        ),
        (
            k.s.other_key.as_str(),
            format!("/v1/executions/{id}/screenshots/{sid}"),
        ),
    ] {
        let r = k.s.call_as(key, Method::GET, &path, None, &[]).await;
        r.expect_error(404, "not_found");
    }
    k.s.call_as(
        "",
        Method::GET,
        &format!("/v1/executions/{id}/screenshots/{sid}"),
        None,
        &[],
    )
    .await
    .expect_error(401, "unauthorized");

    // The signing key lives in the database: a URL signed before a restart still works after.
    let Kit {
        s,
        adb_dir,
        cat,
        bare,
    } = k;
    let k = Kit {
        s: s.restart().await,
        adb_dir,
        cat,
        bare,
    };
    let moved = good.replace(&good[..good.find("/v1/").unwrap()], &k.s.base);
    let (status, _, _, bytes) = k.get_bare(&moved).await;
    assert_eq!(status, 200);
    assert_eq!(bytes, PNG);
}

#[tokio::test]
async fn expired_tokens_and_other_owners_artifacts_are_404_and_the_public_url_is_the_origin() {
    let k = Kit::start(&[
        "--public-url",
        "https://flowrun.example.com/",
        "--artifact-signing-key",
        SIGNING_KEY,
    ])
    .await;
    let t = k.trigger().await;
    let d = k.device("phone-2").await;
    let shot = k.action("devices.screenshot", "Shot", json!({})).await;
    let f = k
        .flow(json!({"name": "Shooter", "triggerId": t, "deviceIds": [d],
                     "actions": [node(&shot, 0, "shot")]}))
        .await;
    let id = k.run(&f, json!({})).await;
    let e = k.done(&id).await;
    assert_eq!(e["status"], "success", "{e}");
    let sid = str_of(&e["screenshots"][0]["id"]).to_string();

    let r = k
        .screenshot(
            &k.s.key,
            &format!("/v1/executions/{id}/screenshots/{sid}"),
            None,
        )
        .await;
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("https://flowrun.example.com/v1/artifacts/"),
        "{location}"
    );
    let token = location.rsplit('/').next().unwrap();
    // The configured key signs the token.
    let claims: Value =
        serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(forge(&claims, SIGNING_KEY), token);
    let local = |token: &str| format!("{}/v1/artifacts/{token}", k.s.base);
    assert_eq!(k.get_bare(&local(token)).await.3, PNG);

    // Expired a second ago → 404; one valid for a minute → 200.
    let expired = forge(
        &json!({"ownerId": "default", "artifactId": sid, "exp": now_secs() - 1}),
        SIGNING_KEY,
    );
    let (status, ..) = k.get_bare(&local(&expired)).await;
    assert_eq!(status, 404);
    let fresh = forge(
        &json!({"ownerId": "default", "artifactId": sid, "exp": now_secs() + 60}),
        SIGNING_KEY,
    );
    assert_eq!(k.get_bare(&local(&fresh)).await.0, 200);
    // A well-signed token naming another owner does not reach this owner's artifact.
    let foreign = forge(
        &json!({"ownerId": "other", "artifactId": sid, "exp": now_secs() + 60}),
        SIGNING_KEY,
    );
    let r =
        k.s.call_as(
            "",
            Method::GET,
            &format!("/v1/artifacts/{foreign}"),
            None,
            &[],
        )
        .await;
    r.expect_error(404, "not_found");
}

#[tokio::test]
async fn capture_screenshots_adds_one_after_every_device_step() {
    let k = Kit::start(&[]).await;
    let t = k.trigger().await;
    let d = k.device("phone-3").await;
    let tap = k
        .action("devices.tap", "Tap", json!({"x": 1, "y": 2}))
        .await;
    let wait = k.action("flow.wait", "Wait", json!({"seconds": 0})).await;
    let each = k
        .action("flow.for_each", "Each", json!({"items": [1, 2]}))
        .await;
    let shot = k.action("devices.screenshot", "Shot", json!({})).await;
    let f = k
        .flow(
            json!({"name": "Capture", "triggerId": t, "deviceIds": [d], "actions": [
                node(&tap, 0, "tap"),
                node(&wait, 1, "wait"),
                {"actionId": each, "position": 2, "key": "each",
                 "children": [node(&tap, 0, "inner_tap")]},
                node(&shot, 3, "shot"),
            ]}),
        )
        .await;

    let id = k
        .run(&f, json!({"payload": {}, "captureScreenshots": true}))
        .await;
    let e = k.done(&id).await;
    assert_eq!(e["status"], "success", "{e}");
    let shots = e["screenshots"].as_array().unwrap();
    let coords: Vec<(i64, i64, i64)> = shots
        .iter()
        .map(|s| {
            (
                s["seq"].as_i64().unwrap(),
                s["stepIndex"].as_i64().unwrap(),
                s["iterationIndex"].as_i64().unwrap(),
            )
        })
        .collect();
    // tap; nothing for flow.wait or the loop itself; each iteration's tap; the screenshot
    // step's own image, then the capture after it.
    assert_eq!(
        coords,
        [(0, 0, -1), (1, 2, 0), (2, 2, 1), (3, 3, -1), (4, 3, -1)],
        "{e}"
    );
    assert!(shots.iter().all(|s| s["source"] == "task"));
    assert_eq!(shots[1]["stepName"], "Tap");
    assert_eq!(
        e["result"]["steps"][3]["body"]["screenshotId"], shots[3]["id"],
        "the step's own image comes first"
    );
    let ids: std::collections::HashSet<&str> = shots.iter().map(|s| str_of(&s["id"])).collect();
    assert_eq!(ids.len(), 5);
    for s in shots {
        let (status, ct, _, bytes) = k.fetch_screenshot(&id, str_of(&s["id"])).await;
        assert_eq!((status, ct.as_str()), (200, "image/png"));
        assert_eq!(bytes, PNG);
    }

    // Without captureScreenshots only the screenshot step stores one.
    let id = k.run(&f, json!({})).await;
    let e = k.done(&id).await;
    assert_eq!(e["status"], "success", "{e}");
    assert_eq!(e["screenshots"].as_array().unwrap().len(), 1, "{e}");
    assert_eq!(e["screenshots"][0]["seq"], 0);

    // A capture that fails never fails the step; a screenshot step that cannot capture does.
    k.marker("noscreen", true);
    let only_taps = k
        .flow(json!({"name": "Taps", "triggerId": t, "deviceIds": [d],
                     "actions": [node(&tap, 0, "tap"), node(&tap, 1, "tap2")]}))
        .await;
    let id = k.run(&only_taps, json!({"captureScreenshots": true})).await;
    let e = k.done(&id).await;
    assert_eq!(e["status"], "success", "{e}");
    assert_eq!(e["screenshots"], json!([]));
    let id = k.run(&f, json!({})).await;
    let e = k.done(&id).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(
        str_of(&e["error"]).starts_with("shot: transient: "),
        "{}",
        e["error"]
    );
    assert_eq!(e["screenshots"], json!([]));
}

#[tokio::test]
async fn cloud_device_screenshots_are_stored_and_served_alike() {
    const CLOUD_KEY: &str = "cloud-key-for-screenshots";
    let cloud = common::cloud::Cloud::start(CLOUD_KEY).await;
    let url = cloud.api_url();
    let k = Kit::start_env(
        &[],
        &[
            ("FLOWRUN_MOBILERUN_BASE_URL", url.as_str()),
            ("FLOWRUN_MOBILERUN_API_KEY", CLOUD_KEY),
        ],
    )
    .await;
    let t = k.trigger().await;
    let d = k.device_of("mobilerun", "cloud-phone").await;
    let tap = k
        .action("devices.tap", "Tap", json!({"x": 1, "y": 2}))
        .await;
    let shot = k.action("devices.screenshot", "Shot", json!({})).await;
    let f = k
        .flow(
            json!({"name": "Cloud shots", "triggerId": t, "deviceIds": [d],
                     "actions": [node(&tap, 0, "tap"), node(&shot, 1, "shot")]}),
        )
        .await;
    let id = k.run(&f, json!({"captureScreenshots": true})).await;
    let e = k.done(&id).await;
    assert_eq!(e["status"], "success", "{e}");
    let shots = e["screenshots"].as_array().unwrap();
    let coords: Vec<(i64, i64)> = shots
        .iter()
        .map(|s| (s["seq"].as_i64().unwrap(), s["stepIndex"].as_i64().unwrap()))
        .collect();
    assert_eq!(coords, [(0, 0), (1, 1), (2, 1)], "{e}");
    // The bytes served are the cloud's screenshot, exactly.
    let want = reqwest::Client::new()
        .get(format!("{url}/devices/cloud-phone/screenshot"))
        .bearer_auth(CLOUD_KEY)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    assert!(want.starts_with(b"\x89PNG"));
    for s in shots {
        let (status, ct, cc, bytes) = k.fetch_screenshot(&id, str_of(&s["id"])).await;
        assert_eq!(
            (status, ct.as_str(), cc.as_str()),
            (200, "image/png", "private, max-age=300")
        );
        assert_eq!(bytes, want);
    }
    let screenshot_calls = cloud
        .requests()
        .await
        .into_iter()
        .filter(|r| r["path"] == "/v1/devices/cloud-phone/screenshot")
        .count();
    // Two captures and the step, plus the test's own call.
    assert_eq!(screenshot_calls, 4);
}

#[tokio::test]
async fn delivery_records_are_written_at_the_terminal_state() {
    let k = Kit::start(&[]).await;
    let t = k.trigger().await;
    let d = k.device("phone-4").await;
    let shot = k.action("devices.screenshot", "Shot", json!({})).await;
    let wait = k.action("flow.wait", "Wait", json!({"seconds": 0})).await;
    let f = k
        .flow(json!({"name": "Deliver", "triggerId": t, "deviceIds": [d],
                     "actions": [node(&wait, 0, "wait"), node(&shot, 1, "shot")],
                     "delivery": {"destination": "mobilerun", "screenshots": {}}}))
        .await;
    let id = k.run(&f, json!({})).await;
    let e = k.done(&id).await;
    assert_eq!(e["status"], "success", "{e}");
    let deliveries = e["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{e}");
    let r = &deliveries[0];
    assert_eq!(r["artifact"], "screenshot");
    assert_eq!(r["destination"], "mobilerun");
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["filename"], "screenshot-0.png");
    assert_eq!(r["folder"], Value::Null);
    assert_eq!(r["stepIndex"], 1);
    assert_eq!(r["webUrl"], Value::Null);
    assert_eq!(r["errorCode"], Value::Null);
    assert!(r["startedAt"].is_string() && r["finishedAt"].is_string());

    // Cloud drives are never connected.
    k.s.patch(
        &format!("/v1/flows/{f}"),
        json!({"delivery": {"destination": "google_drive", "folder": "Runs", "screenshots": true}}),
    )
    .await
    .expect(200);
    let e = k.done(&k.run(&f, json!({})).await).await;
    let r = &e["deliveries"][0];
    assert_eq!(e["deliveries"].as_array().unwrap().len(), 1, "{e}");
    assert_eq!(r["destination"], "google_drive");
    assert_eq!(r["status"], "failed");
    assert_eq!(r["errorCode"], "not_connected");
    assert_eq!(r["folder"], "Runs");

    // No screenshots requested, or no delivery at all → no records.
    k.s.patch(
        &format!("/v1/flows/{f}"),
        json!({"delivery": {"destination": "mobilerun", "recording": {"filename": "run.mp4"}}}),
    )
    .await
    .expect(200);
    let e = k.done(&k.run(&f, json!({})).await).await;
    assert_eq!(e["screenshots"].as_array().unwrap().len(), 1);
    assert_eq!(e["deliveries"], json!([]));
    k.s.patch(&format!("/v1/flows/{f}"), json!({"delivery": null}))
        .await
        .expect(200);
    let e = k.done(&k.run(&f, json!({})).await).await;
    assert_eq!(e["deliveries"], json!([]));

    // An aborted run gets its records with the `cancelled` write.
    let long_wait = k
        .action("flow.wait", "Long wait", json!({"seconds": 30}))
        .await;
    let aborted = k
        .flow(json!({"name": "Aborted", "triggerId": t, "deviceIds": [d],
                     "actions": [node(&shot, 0, "shot"), node(&long_wait, 1, "wait")],
                     "delivery": {"destination": "mobilerun", "screenshots": true}}))
        .await;
    let id = k.run(&aborted, json!({})).await;
    k.wait_exec(&id, |e| e["progress"]["steps"][1]["status"] == "running")
        .await;
    k.s.post(&format!("/v1/executions/{id}/abort"), json!({}))
        .await
        .expect(200);
    let e = k.done(&id).await;
    assert_eq!(e["status"], "cancelled", "{e}");
    assert_eq!(e["screenshots"].as_array().unwrap().len(), 1, "{e}");
    assert_eq!(e["deliveries"].as_array().unwrap().len(), 1, "{e}");
    assert_eq!(e["deliveries"][0]["status"], "succeeded");

    // A failed run delivers what it captured before failing (the stand-in's taps fail).
    let tap = k
        .action("devices.tap", "Tap", json!({"x": 1, "y": 1}))
        .await;
    let failing = k
        .flow(
            json!({"name": "Fails later", "triggerId": t, "deviceIds": [d],
                     "actions": [node(&shot, 0, "shot"), node(&tap, 1, "tap")],
                     "delivery": {"destination": "one_drive", "screenshots": "all"}}),
        )
        .await;
    k.marker("fail", true);
    let e = k.done(&k.run(&failing, json!({})).await).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(e["deliveries"].as_array().unwrap().len(), 1, "{e}");
    assert_eq!(e["deliveries"][0]["destination"], "one_drive");
    assert_eq!(e["deliveries"][0]["stepIndex"], 0);
    assert_eq!(e["deliveries"][0]["errorCode"], "not_connected");
}

#[tokio::test]
async fn failed_live_runs_open_repairs_that_escalate_without_a_repair_agent() {
    let k = Kit::start(&[]).await;
    let t = k.trigger().await;
    let d = k.device("phone-5").await;
    let wait = k
        .action(
            "flow.wait",
            "Wait",
            json!({"seconds": "{{event.payload.s}}"}),
        )
        .await;
    let tap = k
        .action("devices.tap", "Tap", json!({"x": 1, "y": 1}))
        .await;
    let healing = k
        .flow(json!({"name": "Healing", "triggerId": t, "deviceIds": [d],
                     "selfHealingEnabled": true, "selfHealingMaxAttempts": 2,
                     "healthMonitoringEnabled": false,
                     "actions": [node(&wait, 0, "wait"), node(&tap, 1, "tap")]}))
        .await;
    let plain = k
        .flow(json!({"name": "Plain", "triggerId": t, "deviceIds": [d],
                     "healthMonitoringEnabled": false,
                     "actions": [node(&tap, 0, "tap")]}))
        .await;
    assert!(k.repairs(&healing).await.is_empty());

    // Runs that must not open a repair: success, invalid, cancelled, verification, and a
    // failure of a flow without self-healing.
    let ok = k
        .done(&k.run(&healing, json!({"payload": {"s": 0}})).await)
        .await;
    assert_eq!(ok["status"], "success", "{ok}");
    let invalid = k.done(&k.run(&healing, json!({"payload": {}})).await).await;
    assert_eq!(invalid["status"], "invalid", "{invalid}");
    k.marker("slow", true);
    let id = k.run(&healing, json!({"payload": {"s": 0}})).await;
    k.wait_exec(&id, |e| e["progress"]["steps"][1]["status"] == "running")
        .await;
    k.s.post(&format!("/v1/executions/{id}/abort"), json!({}))
        .await
        .expect(200);
    k.marker("slow", false);
    assert_eq!(k.done(&id).await["status"], "cancelled");
    k.marker("fail", true);
    let r =
        k.s.post(
            &format!("/v1/flows/{healing}/verify"),
            json!({"invocationId": "verify-1", "deviceId": d, "payload": {"s": 0}}),
        )
        .await;
    r.expect(202);
    let verification = k.done(str_of(&r.data()["executionId"])).await;
    assert_eq!(verification["status"], "failed", "{verification}");
    let plain_failed = k.done(&k.run(&plain, json!({})).await).await;
    assert_eq!(plain_failed["status"], "failed");

    // A failed live run opens episode 1, escalated at once.
    let id = k.run(&healing, json!({"payload": {"s": 0}})).await;
    let e = k.done(&id).await;
    assert_eq!(e["status"], "failed", "{e}");
    let repairs = k.wait_repairs(&healing, 1).await;
    let r = &repairs[0];
    assert_eq!(r["flowId"], healing.as_str());
    assert_eq!(r["episode"], 1);
    assert_eq!(r["attempt"], 1);
    assert_eq!(r["maxAttempts"], 2);
    assert_eq!(r["status"], "escalated");
    assert_eq!(r["sourceExecutionId"], id.as_str());
    assert_eq!(r["failedStepIndex"], 1);
    assert_eq!(r["originalSlug"], "tap");
    assert_eq!(r["candidateSlug"], "");
    assert_eq!(r["deviceId"], d.as_str());
    assert_eq!(r["agentRunId"], Value::Null);
    assert_eq!(r["chatSessionId"], Value::Null);
    assert_eq!(r["verdict"], Value::Null);
    assert_eq!(r["error"], "no_repair_agent");
    for field in ["startedAt", "finishedAt", "createdAt", "updatedAt"] {
        assert!(r[field].is_string(), "{field}: {r}");
    }
    assert!(k.repairs(&plain).await.is_empty());

    // The episode is closed, so the next failure opens episode 2 (newest first).
    let id2 = k.run(&healing, json!({"payload": {"s": 0}})).await;
    assert_eq!(k.done(&id2).await["status"], "failed");
    let repairs = k.wait_repairs(&healing, 2).await;
    assert_eq!(repairs[0]["episode"], 2);
    assert_eq!(repairs[0]["sourceExecutionId"], id2.as_str());
    assert_eq!(repairs[1]["episode"], 1);

    // Per owner, and gone with the archived flow.
    k.s.call_as(
        &k.s.other_key,
        Method::GET,
        &format!("/v1/flows/{healing}/repairs"),
        None,
        &[],
    )
    .await
    .expect_error(404, "not_found");
    k.s.delete(&format!("/v1/flows/{healing}"))
        .await
        .expect(200);
    k.s.get(&format!("/v1/flows/{healing}/repairs"))
        .await
        .expect_error(404, "not_found");
    check_schema(REPAIRS, &json!({"data": repairs}));
}
