//! Outbound webhooks through the API (§3.10, §4.9, §5.11 `webhooks.send`, §5.16
//! notifications, §5.17 delivery): endpoint CRUD with the secret shown once, rotation, test
//! deliveries, the delivery feed, stats and attempts, Standard Webhooks signatures checked
//! with the secret, the retry schedule (with a tiny time scale) ending `dead`, endpoint
//! health and re-enabling, and the SSRF guard (IP literals, a name resolving to loopback,
//! redirects that are never followed).
//!
//! Deliveries go to a [`Receiver`]: a small HTTP/1.1 server on `127.0.0.1:0` inside the test
//! that records every request and answers as told. Servers that deliver to it run with
//! `FLOWRUN_ALLOW_PRIVATE_TARGETS=true` or a CIDR allowlist naming 127.0.0.1.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Server, assert_keys};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CREATE: &str = "webhooks_root.webhook_create_response.WebhookCreateResponse";
const GET: &str = "webhooks_root.webhook_retrieve_response.WebhookRetrieveResponse";
const LIST: &str = "webhooks_root.webhook_list_response.WebhookListResponse";
const ROTATE: &str = "webhooks_root.webhook_rotate_secret_response.WebhookRotateSecretResponse";
const TEST: &str = "webhooks_root.webhook_test_delivery_response.WebhookTestDeliveryResponse";
const FEED: &str = "webhooks.delivery_list_response.DeliveryListResponse";
const FOR_WEBHOOK: &str =
    "webhooks.delivery_list_for_webhook_response.DeliveryListForWebhookResponse";
const ATTEMPTS: &str =
    "webhooks.delivery_retrieve_attempts_response.DeliveryRetrieveAttemptsResponse";
const STATS: &str = "webhooks.delivery_stats_response.DeliveryStatsResponse";
const INTEGRATIONS: &str = "webhooks.integration_list_response.IntegrationListResponse";
const TARGETS: &str = "webhooks.integration_list_targets_response.IntegrationListTargetsResponse";

const WEBHOOK_KEYS: [&str; 14] = [
    "id",
    "kind",
    "url",
    "integration",
    "description",
    "eventTypes",
    "state",
    "health",
    "blockedAt",
    "blockedReason",
    "signingEnabled",
    "createdBy",
    "createdAt",
    "updatedAt",
];
const DELIVERY_KEYS: [&str; 15] = [
    "id",
    "endpointId",
    "eventId",
    "eventType",
    "source",
    "occurredAt",
    "status",
    "attempts",
    "lastStatusCode",
    "lastError",
    "durationMs",
    "isTest",
    "createdAt",
    "completedAt",
    "createdBy",
];
const FEED_EXTRA: [&str; 3] = ["endpointKind", "endpointUrl", "endpointLabel"];
const ATTEMPT_KEYS: [&str; 12] = [
    "attemptNo",
    "sentAt",
    "requestUrl",
    "requestMethod",
    "requestHeaders",
    "requestBody",
    "signed",
    "responseStatus",
    "responseHeaders",
    "responseSnippet",
    "durationMs",
    "error",
];

// ---------------------------------------------------------------------------------------------
// The receiver

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: String,
    at: Instant,
}

/// How the receiver answers.
#[derive(Clone, Debug)]
enum Answer {
    Status(u16),
    /// `302` with this `Location`.
    Redirect(String),
    /// `200` after this long.
    Slow(Duration),
}

#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<Answer>>,
}

impl Receiver {
    async fn start(answer: Answer) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            got: Arc::default(),
            answer: Arc::new(Mutex::new(answer)),
        };
        let me = r.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move { me.serve(sock).await });
            }
        });
        r
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn requests(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived.
    async fn wait(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "receiver got {} of {n} requests",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Reads one HTTP/1.1 request, records it and answers (then closes the connection).
    async fn serve(&self, mut sock: tokio::net::TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            let Ok(n) = sock.read(&mut chunk).await else {
                return;
            };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let Ok(n) = sock.read(&mut chunk).await else {
                return;
            };
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body =
            String::from_utf8_lossy(&buf[head_end..(head_end + len).min(buf.len())]).into_owned();
        self.got.lock().unwrap().push(Received {
            path,
            headers,
            body,
            at: Instant::now(),
        });
        let answer = self.answer.lock().unwrap().clone();
        let answer = match answer {
            Answer::Slow(d) => {
                tokio::time::sleep(d).await;
                Answer::Status(200)
            }
            other => other,
        };
        let resp = match answer {
            Answer::Status(s) => {
                let body = format!("{{\"received\":true,\"status\":{s}}}");
                format!(
                    "HTTP/1.1 {s} X\r\ncontent-type: application/json\r\nx-receiver: yes\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            }
            Answer::Redirect(to) => format!(
                "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            ),
            Answer::Slow(_) => unreachable!("answered above"),
        };
        let _ = sock.write_all(resp.as_bytes()).await;
        let _ = sock.shutdown().await;
    }
}

/// Checks a request's Standard Webhooks signature with the endpoint secret.
fn verify_signature(secret: &str, r: &Received) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ secret"))
        .expect("base64 secret");
    let id = &r.headers["webhook-id"];
    let ts = &r.headers["webhook-timestamp"];
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{}", r.body).as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    r.headers["webhook-signature"]
        .split(' ')
        .any(|s| s == expected)
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A server plus the built-in catalog ids.
struct Kit {
    s: Server,
    cat: HashMap<String, String>,
}

impl Kit {
    async fn start(env: &[(&str, &str)]) -> Kit {
        let s = Server::start_env(&[], env).await;
        let cat = s.catalog_ids().await;
        Kit { s, cat }
    }

    /// Starts a server that may deliver to 127.0.0.1.
    async fn open() -> Kit {
        Self::start(&[("FLOWRUN_ALLOW_PRIVATE_TARGETS", "true")]).await
    }

    /// Creates an endpoint; returns (id, secret).
    async fn webhook(&self, body: Value) -> (String, String) {
        let r = self.s.post("/v1/webhooks", body).await;
        r.expect(201).schema(CREATE);
        let mut keys = WEBHOOK_KEYS.to_vec();
        keys.push("secret");
        assert_keys(r.data(), &keys);
        (r.id(), r.data()["secret"].as_str().unwrap().to_string())
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

    /// A flow of these actions (keys `s0`, `s1`, …) with extra settings.
    async fn flow(&self, actions: &[String], settings: Value) -> String {
        let trigger = self.trigger().await;
        let nodes: Vec<Value> = actions
            .iter()
            .enumerate()
            .map(|(i, a)| json!({"actionId": a, "position": i, "key": format!("s{i}")}))
            .collect();
        let mut body = json!({"name": "Hooks", "triggerId": trigger, "actions": nodes});
        for (k, v) in settings.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = self.s.post("/v1/flows", body).await;
        r.expect(201);
        r.id()
    }

    async fn run(&self, flow: &str, payload: Value) -> String {
        let r = self
            .s
            .post(
                &format!("/v1/flows/{flow}/run"),
                json!({"payload": payload}),
            )
            .await;
        r.expect(202);
        r.data()["executionIds"][0].as_str().unwrap().to_string()
    }

    /// Polls an execution until it is terminal.
    async fn done(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.s.get(&format!("/v1/executions/{id}")).await;
            r.expect(200);
            let status = r.data()["status"].as_str().unwrap_or_default().to_string();
            if !["pending", "running"].contains(&status.as_str()) {
                return r.data().clone();
            }
            assert!(Instant::now() < deadline, "execution {id} still {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The deliveries of an endpoint (schema-checked).
    async fn deliveries(&self, webhook: &str) -> Vec<Value> {
        let r = self
            .s
            .get(&format!("/v1/webhooks/{webhook}/deliveries?pageSize=100"))
            .await;
        r.expect(200).schema(FOR_WEBHOOK);
        let items = r.body["items"].as_array().unwrap().clone();
        for i in &items {
            assert_keys(i, &DELIVERY_KEYS);
        }
        items
    }

    /// One delivery with its attempts (schema-checked).
    async fn delivery(&self, webhook: &str, id: &str) -> Value {
        let r = self
            .s
            .get(&format!("/v1/webhooks/{webhook}/deliveries/{id}"))
            .await;
        r.expect(200).schema(ATTEMPTS);
        assert_keys(r.data(), &DELIVERY_KEYS);
        for a in r.data()["attempts"].as_array().unwrap() {
            assert_keys(a, &ATTEMPT_KEYS);
        }
        r.data().clone()
    }

    /// Polls a delivery until `pred` holds.
    async fn wait_delivery(
        &self,
        webhook: &str,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.delivery(webhook, id).await;
            if pred(&d) {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "delivery {id} did not reach the expected state; last: {d}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn get_webhook(&self, id: &str) -> Value {
        let r = self.s.get(&format!("/v1/webhooks/{id}")).await;
        r.expect(200).schema(GET);
        assert_keys(r.data(), &WEBHOOK_KEYS);
        r.data().clone()
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

// ---------------------------------------------------------------------------------------------
// webhooks.send

#[tokio::test]
async fn three_webhook_steps_deliver_three_signed_requests() {
    let k = Kit::open().await;
    let rx = Receiver::start(Answer::Status(200)).await;
    let (hook, secret) = k
        .webhook(json!({"url": rx.url("/hook"), "description": "Receiver"}))
        .await;
    let mut actions = Vec::new();
    for i in 0..3 {
        actions.push(
            k.action(
                "webhooks.send",
                &format!("Send {i}"),
                json!({"webhookId": hook, "payload": {"n": i, "from": "{{event.payload.who}}"}}),
            )
            .await,
        );
    }
    let flow = k.flow(&actions, json!({})).await;
    let exec = k.run(&flow, json!({"who": "tester"})).await;
    let e = k.done(&exec).await;
    assert_eq!(e["status"], "success", "{e}");

    let got = rx.wait(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.requests().len(), 3, "exactly three requests");
    let steps = e["result"]["steps"].as_array().unwrap();
    let mut seen = Vec::new();
    for r in &got {
        assert_eq!(r.path, "/hook");
        assert!(verify_signature(&secret, r), "signature of {}", r.body);
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(r.headers["user-agent"].starts_with("flowrun/"));
        let ts: i64 = r.headers["webhook-timestamp"].parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((now - ts).abs() < 60, "timestamp {ts} is now");
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_keys(&body, &["id", "type", "occurredAt", "source", "data"]);
        assert_eq!(body["id"], r.headers["webhook-id"].as_str());
        assert_eq!(body["type"], "workflow.step.webhook");
        assert_eq!(body["source"], "workflows");
        let data = &body["data"];
        assert_keys(data, &["executionId", "flowId", "stepKey", "payload"]);
        assert_eq!(data["executionId"], exec.as_str());
        assert_eq!(data["flowId"], flow.as_str());
        assert_eq!(data["payload"]["from"], "tester");
        let n = data["payload"]["n"].as_i64().unwrap() as usize;
        assert_eq!(data["stepKey"], format!("s{n}"));
        // The step's body names the event and the delivery.
        let step_body = &steps[n]["body"];
        assert_eq!(step_body["eventId"], body["id"]);
        seen.push(n);
        // The delivery record of that event: success, one attempt with the signed request.
        let feed =
            k.s.get(&format!(
                "/v1/webhooks/deliveries?eventId={}",
                str_of(&body["id"])
            ))
            .await;
        feed.expect(200).schema(FEED);
        let items = feed.body["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        let item = &items[0];
        let keys: Vec<&str> = DELIVERY_KEYS.iter().chain(&FEED_EXTRA).copied().collect();
        assert_keys(item, &keys);
        assert_eq!(item["id"], step_body["deliveryId"]);
        assert_eq!(item["endpointLabel"], "Receiver");
        assert_eq!(item["endpointUrl"], rx.url("/hook").as_str());
        assert_eq!(item["endpointKind"], "http");
        let d = k
            .wait_delivery(&hook, str_of(&item["id"]), Duration::from_secs(5), |d| {
                d["status"] == "success"
            })
            .await;
        assert_eq!(d["eventType"], "workflow.step.webhook");
        assert_eq!(d["isTest"], false);
        assert_eq!(d["lastStatusCode"], 200);
        assert!(d["completedAt"].is_string());
        let attempts = d["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1);
        let a = &attempts[0];
        assert_eq!(a["attemptNo"], 1);
        assert_eq!(a["requestMethod"], "POST");
        assert_eq!(a["signed"], true);
        assert_eq!(a["responseStatus"], 200);
        assert_eq!(a["requestBody"], r.body.as_str());
        assert_eq!(
            a["requestHeaders"]["webhook-signature"],
            r.headers["webhook-signature"].as_str()
        );
        assert_eq!(a["responseHeaders"]["x-receiver"], "yes");
        assert!(str_of(&a["responseSnippet"]).contains("received"));
        assert!(a["error"].is_null());
    }
    seen.sort();
    assert_eq!(seen, [0, 1, 2]);
    let health = k.get_webhook(&hook).await;
    assert_eq!(health["health"], "healthy");
}

#[tokio::test]
async fn webhook_steps_to_unknown_or_deleted_endpoints_fail_invalid_config() {
    let k = Kit::open().await;
    let rx = Receiver::start(Answer::Status(200)).await;
    let (hook, _) = k.webhook(json!({"url": rx.url("/")})).await;
    // Another owner's endpoint is unknown to this owner.
    let r =
        k.s.call_as(
            &k.s.other_key,
            Method::POST,
            "/v1/webhooks",
            Some(&json!({"url": rx.url("/other")})),
            &[],
        )
        .await;
    r.expect(201);
    let foreign = r.id();
    for target in [foreign.clone(), hook.clone()] {
        if target == hook {
            k.s.delete(&format!("/v1/webhooks/{hook}"))
                .await
                .expect(204);
        }
        let a = k
            .action("webhooks.send", "Send", json!({"webhookId": target}))
            .await;
        let flow = k.flow(&[a], json!({})).await;
        let e = k.done(&k.run(&flow, json!({})).await).await;
        assert_eq!(e["status"], "failed", "{e}");
        let err = str_of(&e["error"]);
        assert!(err.starts_with("s0: invalid_config: "), "{err}");
    }
    assert!(rx.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Retries, dead deliveries, endpoint health

#[tokio::test]
async fn a_failing_receiver_gets_the_retry_schedule_then_dead_and_blocks() {
    // 30 s, 2 min, 10 min, 1 h, 6 h, 24 h scaled by 1e-5: 0.3 ms … 864 ms.
    let k = Kit::start(&[
        ("FLOWRUN_WEBHOOK_ALLOW_CIDRS", "127.0.0.0/8"),
        ("FLOWRUN_WEBHOOK_RETRY_SCALE", "0.00001"),
        ("FLOWRUN_WEBHOOK_BLOCK_AFTER", "2"),
    ])
    .await;
    let rx = Receiver::start(Answer::Status(503)).await;
    let (hook, secret) = k.webhook(json!({"url": rx.url("/fail")})).await;
    let a = k
        .action(
            "webhooks.send",
            "Send",
            json!({"webhookId": hook, "payload": {"x": 1}}),
        )
        .await;
    let flow = k.flow(&[a], json!({})).await;
    let e = k.done(&k.run(&flow, json!({})).await).await;
    assert_eq!(e["status"], "success", "queued is success: {e}");
    let delivery_id = str_of(&e["result"]["steps"][0]["body"]["deliveryId"]).to_string();

    let d = k
        .wait_delivery(&hook, &delivery_id, Duration::from_secs(20), |d| {
            d["status"] == "dead"
        })
        .await;
    assert_eq!(d["lastStatusCode"], 503);
    assert_eq!(d["lastError"], "http_503");
    assert!(d["completedAt"].is_string());
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 7, "{d}");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a["attemptNo"], i as i64 + 1);
        assert_eq!(a["responseStatus"], 503);
        assert_eq!(a["error"], "http_503");
        assert!(str_of(&a["responseSnippet"]).contains("503"));
    }
    let got = rx.requests();
    assert_eq!(got.len(), 7);
    // One event: the same webhook-id on every attempt, each freshly signed.
    for r in &got {
        assert_eq!(r.headers["webhook-id"], got[0].headers["webhook-id"]);
        assert!(verify_signature(&secret, r));
    }
    // The gaps follow the (scaled) schedule: the last one is the 24 h delay (864 ms).
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[5] >= Duration::from_millis(800), "{gaps:?}");
    assert!(gaps[4] >= Duration::from_millis(200), "{gaps:?}");
    assert!(gaps[5] > gaps[3], "{gaps:?}");
    // The feed and the list agree.
    let r = k.s.get("/v1/webhooks/deliveries?status=dead").await;
    r.expect(200).schema(FEED);
    assert_eq!(r.body["pagination"]["total"], 1);
    assert_eq!(k.deliveries(&hook).await[0]["attempts"], 7);

    // One dead delivery → failing.
    let w = k.get_webhook(&hook).await;
    assert_eq!(w["health"], "failing");
    assert!(w["blockedAt"].is_null());
    let r = k.s.get("/v1/webhooks?status=failing").await;
    r.expect(200).schema(LIST);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["counts"]["failing"], 1);

    // A second dead delivery (block threshold 2) → blocked.
    let e = k.done(&k.run(&flow, json!({})).await).await;
    let second = str_of(&e["result"]["steps"][0]["body"]["deliveryId"]).to_string();
    k.wait_delivery(&hook, &second, Duration::from_secs(20), |d| {
        d["status"] == "dead"
    })
    .await;
    let w = k.get_webhook(&hook).await;
    assert_eq!(w["health"], "blocked", "{w}");
    assert_eq!(w["blockedReason"], "consecutive_failures");
    assert!(w["blockedAt"].is_string());
    let r = k.s.get("/v1/webhooks?status=blocked").await;
    r.expect(200).schema(LIST);
    assert_eq!(r.body["counts"]["blocked"], 1);
    assert_eq!(r.body["counts"]["failing"], 0);
    assert_eq!(r.body["items"][0]["id"], hook.as_str());

    // While blocked, new deliveries are skipped without a request.
    let before = rx.requests().len();
    let e = k.done(&k.run(&flow, json!({})).await).await;
    let third = str_of(&e["result"]["steps"][0]["body"]["deliveryId"]).to_string();
    let d = k.delivery(&hook, &third).await;
    assert_eq!(d["status"], "skipped");
    assert_eq!(d["lastError"], "endpoint_blocked");
    assert_eq!(d["attempts"].as_array().unwrap().len(), 0);

    // PATCH state ACTIVE re-enables it.
    rx.set(Answer::Status(204));
    let r =
        k.s.patch(&format!("/v1/webhooks/{hook}"), json!({"state": "ACTIVE"}))
            .await;
    r.expect(200).schema(GET);
    assert_eq!(r.data()["health"], "healthy");
    assert!(r.data()["blockedAt"].is_null());
    assert!(r.data()["blockedReason"].is_null());
    let e = k.done(&k.run(&flow, json!({})).await).await;
    let fourth = str_of(&e["result"]["steps"][0]["body"]["deliveryId"]).to_string();
    k.wait_delivery(&hook, &fourth, Duration::from_secs(5), |d| {
        d["status"] == "success"
    })
    .await;
    assert_eq!(rx.requests().len(), before + 1);

    let r = k.s.get("/v1/webhooks/deliveries/stats").await;
    r.expect(200).schema(STATS);
    assert_keys(r.data(), &["total", "byStatus", "successRate"]);
    assert_eq!(
        r.data()["byStatus"],
        json!({"pending": 0, "success": 1, "skipped": 1, "dead": 2})
    );
    assert_eq!(r.data()["total"], 4);
    let rate = r.data()["successRate"].as_f64().unwrap();
    assert!((rate - 1.0 / 3.0).abs() < 1e-9, "{rate}");
}

#[tokio::test]
async fn pending_deliveries_survive_a_restart() {
    // Retries an hour apart at scale 1e-3 (30 ms, 120 ms, 600 ms, 3.6 s, …): the delivery is
    // still pending when the server is killed, and the next server finishes it.
    let k = Kit::start(&[
        ("FLOWRUN_ALLOW_PRIVATE_TARGETS", "true"),
        ("FLOWRUN_WEBHOOK_RETRY_SCALE", "0.001"),
    ])
    .await;
    let rx = Receiver::start(Answer::Status(500)).await;
    let (hook, _) = k.webhook(json!({"url": rx.url("/later")})).await;
    let a = k
        .action("webhooks.send", "Send", json!({"webhookId": hook}))
        .await;
    let flow = k.flow(&[a], json!({})).await;
    let e = k.done(&k.run(&flow, json!({})).await).await;
    let id = str_of(&e["result"]["steps"][0]["body"]["deliveryId"]).to_string();
    // Three attempts recorded; the fourth is due 600 ms after the third.
    let d = k
        .wait_delivery(&hook, &id, Duration::from_secs(10), |d| {
            d["attempts"].as_array().unwrap().len() >= 3
        })
        .await;
    assert_eq!(d["status"], "pending");
    rx.set(Answer::Status(200));
    let Kit { s, cat } = k;
    let s = s.restart().await;
    let k = Kit { s, cat };
    let d = k
        .wait_delivery(&hook, &id, Duration::from_secs(20), |d| {
            d["status"] == "success"
        })
        .await;
    let n = d["attempts"].as_array().unwrap().len();
    assert!((4..=7).contains(&n), "{d}");
    assert_eq!(d["attempts"][n - 1]["responseStatus"], 200);
}

#[tokio::test]
async fn an_attempt_cut_by_a_crash_is_retried_after_restart() {
    if std::env::var("FLOWRUN_TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        // Several nodes may share PostgreSQL: the claim of a lost node is retried when its
        // lease (60 s) runs out, which this test does not wait for.
        return;
    }
    let k = Kit::open().await;
    // The receiver holds the first request (the attempt is in flight when the server dies).
    let rx = Receiver::start(Answer::Slow(Duration::from_secs(8))).await;
    let (hook, _) = k.webhook(json!({"url": rx.url("/slow")})).await;
    let a = k
        .action("webhooks.send", "Send", json!({"webhookId": hook}))
        .await;
    let flow = k.flow(&[a], json!({})).await;
    let e = k.done(&k.run(&flow, json!({})).await).await;
    let id = str_of(&e["result"]["steps"][0]["body"]["deliveryId"]).to_string();
    rx.wait(1, Duration::from_secs(5)).await;
    rx.set(Answer::Status(200));
    let Kit { s, cat } = k;
    let s = s.restart().await;
    let k = Kit { s, cat };
    let d = k
        .wait_delivery(&hook, &id, Duration::from_secs(5), |d| {
            d["status"] == "success"
        })
        .await;
    assert_eq!(d["attempts"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(rx.wait(2, Duration::from_secs(1)).await.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// SSRF guard

#[tokio::test]
async fn ssrf_guard_refuses_private_targets_at_create() {
    let k = Kit::start(&[]).await;
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9000/",
        "http://192.168.0.10/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[::ffff:127.0.0.1]/",
        // A DNS name that resolves to loopback.
        "http://localhost:8080/hook",
    ] {
        let r = k.s.post("/v1/webhooks", json!({"url": url})).await;
        r.expect_error(422, "validation_failed");
        assert_eq!(r.error_fields(), ["url"], "{url}: {}", r.text);
        assert!(r.text.contains("address_not_allowed"), "{}", r.text);
    }
    for url in ["ftp://example.com/", "not a url", "/relative"] {
        let r = k.s.post("/v1/webhooks", json!({"url": url})).await;
        r.expect_error(422, "validation_failed");
        assert_eq!(r.error_fields(), ["url"], "{url}");
    }
    let r = k.s.get("/v1/webhooks").await;
    assert_eq!(r.body["pagination"]["total"], 0);
}

#[tokio::test]
async fn cidr_allowlist_admits_only_the_listed_networks() {
    let k = Kit::start(&[("FLOWRUN_WEBHOOK_ALLOW_CIDRS", "127.0.0.1/32")]).await;
    let rx = Receiver::start(Answer::Status(200)).await;
    k.webhook(json!({"url": rx.url("/ok")})).await;
    for url in [
        "http://127.0.0.2/",
        "http://10.0.0.1/",
        // localhost also resolves to ::1 (or only to 127.0.0.1 on hosts without IPv6, which
        // the allowlist admits), so only the literal cases are asserted strictly.
        "http://[::1]/",
    ] {
        let r = k.s.post("/v1/webhooks", json!({"url": url})).await;
        r.expect_error(422, "validation_failed");
        assert_eq!(r.error_fields(), ["url"], "{url}");
    }
}

#[tokio::test]
async fn redirects_are_never_followed() {
    let k = Kit::start(&[("FLOWRUN_WEBHOOK_ALLOW_CIDRS", "127.0.0.1/32")]).await;
    let target = Receiver::start(Answer::Status(200)).await;
    let metadata = "http://169.254.169.254/latest/meta-data/";
    let rx = Receiver::start(Answer::Redirect(metadata.to_string())).await;
    let (hook, _) = k.webhook(json!({"url": rx.url("/redirect")})).await;
    let r =
        k.s.call(Method::POST, &format!("/v1/webhooks/{hook}/test"), None)
            .await;
    r.expect(200).schema(TEST);
    assert_keys(r.data(), &["success", "statusCode", "error"]);
    assert_eq!(r.data()["success"], false);
    assert_eq!(r.data()["statusCode"], 302);
    assert_eq!(r.data()["error"], "http_302");
    // Redirect to an allowed receiver: still not followed.
    rx.set(Answer::Redirect(target.url("/landed")));
    let r =
        k.s.call(Method::POST, &format!("/v1/webhooks/{hook}/test"), None)
            .await;
    assert_eq!(r.data()["statusCode"], 302);
    assert_eq!(rx.requests().len(), 2);
    assert!(target.requests().is_empty(), "the redirect was followed");
    let items = k.deliveries(&hook).await;
    assert_eq!(items.len(), 2);
    for d in &items {
        assert_eq!(d["status"], "dead");
        assert_eq!(d["isTest"], true);
        assert_eq!(d["attempts"], 1, "tests are never retried");
    }
}

// ---------------------------------------------------------------------------------------------
// Notifications

#[tokio::test]
async fn notifications_one_per_terminal_live_run_for_the_configured_outcome() {
    let k = Kit::open().await;
    let rx = Receiver::start(Answer::Status(200)).await;
    let (hook, secret) = k.webhook(json!({"url": rx.url("/notify")})).await;
    let wait = k
        .action(
            "flow.wait",
            "Wait",
            json!({"seconds": "{{event.payload.s}}"}),
        )
        .await;
    let fail = k
        .action(
            "webhooks.send",
            "Broken",
            json!({"webhookId": uuid::Uuid::new_v4().to_string()}),
        )
        .await;

    // Success notifications only.
    let ok_flow = k
        .flow(
            std::slice::from_ref(&wait),
            json!({"notifyOnSuccess": true, "notifyOnFailure": false, "notifyWebhookId": hook}),
        )
        .await;
    let e1 = k.run(&ok_flow, json!({"s": 0})).await;
    let e1v = k.done(&e1).await;
    assert_eq!(e1v["status"], "success");
    let got = rx.wait(1, Duration::from_secs(5)).await;
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert!(verify_signature(&secret, &got[0]));
    assert_eq!(body["type"], "workflow.run.completed");
    assert_eq!(body["source"], "workflows");
    let data = &body["data"];
    assert_keys(
        data,
        &[
            "executionId",
            "flowId",
            "flowName",
            "triggerId",
            "invocationId",
            "eventId",
            "deviceId",
            "status",
            "error",
            "startedAt",
            "finishedAt",
        ],
    );
    assert_eq!(data["executionId"], e1.as_str());
    assert_eq!(data["flowId"], ok_flow.as_str());
    assert_eq!(data["flowName"], "Hooks");
    assert_eq!(data["status"], "success");
    assert!(data["error"].is_null());
    assert_eq!(data["finishedAt"], e1v["finishedAt"]);
    assert_eq!(data["startedAt"], e1v["startedAt"]);
    assert_eq!(data["triggerId"], e1v["triggerId"]);

    // An aborted run notifies nothing.
    let e2 = k.run(&ok_flow, json!({"s": 30})).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = k.s.get(&format!("/v1/executions/{e2}")).await;
        if r.data()["status"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    k.s.call(Method::POST, &format!("/v1/executions/{e2}/abort"), None)
        .await
        .expect(200);
    assert_eq!(k.done(&e2).await["status"], "cancelled");

    // A verification run notifies nothing.
    let r =
        k.s.post(
            &format!("/v1/flows/{ok_flow}/verify"),
            json!({"invocationId": "verify-1", "payload": {"s": 0}}),
        )
        .await;
    r.expect(202);
    let v = str_of(&r.data()["executionId"]).to_string();
    assert_eq!(k.done(&v).await["status"], "success");

    // Failure notifications only: a failed run notifies, a successful one does not.
    let fail_flow = k
        .flow(
            &[fail],
            json!({"notifyOnSuccess": false, "notifyOnFailure": true, "notifyWebhookId": hook,
                   "healthMonitoringEnabled": false}),
        )
        .await;
    let e3 = k.run(&fail_flow, json!({})).await;
    let e3v = k.done(&e3).await;
    assert_eq!(e3v["status"], "failed");
    let quiet_flow = k
        .flow(
            std::slice::from_ref(&wait),
            json!({"notifyOnSuccess": false, "notifyOnFailure": true, "notifyWebhookId": hook}),
        )
        .await;
    assert_eq!(
        k.done(&k.run(&quiet_flow, json!({"s": 0})).await).await["status"],
        "success"
    );

    let got = rx.wait(2, Duration::from_secs(5)).await;
    // Give stray notifications (there must be none) time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_now = rx.requests();
    assert_eq!(got_now.len(), 2, "{got_now:?}");
    let body: Value = serde_json::from_str(&got[1].body).unwrap();
    assert_eq!(body["type"], "workflow.run.failed");
    assert_eq!(body["data"]["executionId"], e3.as_str());
    assert_eq!(body["data"]["status"], "failed");
    assert_eq!(body["data"]["error"], e3v["error"]);
    let items = k.deliveries(&hook).await;
    assert_eq!(items.len(), 2);
    let mut types: Vec<&str> = items.iter().map(|d| str_of(&d["eventType"])).collect();
    types.sort();
    assert_eq!(types, ["workflow.run.completed", "workflow.run.failed"]);

    // Endpoints subscribed to other types record the notification `skipped`.
    k.s.patch(
        &format!("/v1/webhooks/{hook}"),
        json!({"eventTypes": ["workflow.run.failed"]}),
    )
    .await
    .expect(200);
    k.done(&k.run(&ok_flow, json!({"s": 0})).await).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let skipped = loop {
        let items = k.deliveries(&hook).await;
        if items.len() == 3 {
            break items[0].clone();
        }
        assert!(Instant::now() < deadline, "{items:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(skipped["status"], "skipped");
    assert_eq!(skipped["lastError"], "not_subscribed");
    assert_eq!(rx.requests().len(), 2);
}

#[tokio::test]
async fn notify_webhook_id_must_name_a_live_endpoint_of_the_owner() {
    let k = Kit::open().await;
    let trigger = k.trigger().await;
    let wait = k.action("flow.wait", "Wait", json!({"seconds": 0})).await;
    let body = |hook: &str| {
        json!({"name": "N", "triggerId": trigger, "notifyWebhookId": hook,
               "actions": [{"actionId": wait, "position": 0}]})
    };
    let unknown = uuid::Uuid::new_v4().to_string();
    let r = k.s.post("/v1/flows", body(&unknown)).await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), ["notifyWebhookId"]);
    let (hook, _) = k.webhook(json!({"url": "http://127.0.0.1:9/"})).await;
    let r = k.s.post("/v1/flows", body(&hook)).await;
    r.expect(201);
    assert_eq!(r.data()["notifyWebhookId"], hook.as_str());
    // Another owner's endpoint is unknown.
    let r =
        k.s.call_as(
            &k.s.other_key,
            Method::POST,
            "/v1/webhooks",
            Some(&json!({"url": "http://127.0.0.1:9/"})),
            &[],
        )
        .await;
    let foreign = r.id();
    let r = k.s.post("/v1/flows", body(&foreign)).await;
    r.expect_error(422, "validation_failed");
    // A deleted one too.
    k.s.delete(&format!("/v1/webhooks/{hook}"))
        .await
        .expect(204);
    let r = k.s.post("/v1/flows", body(&hook)).await;
    r.expect_error(422, "validation_failed");
}

// ---------------------------------------------------------------------------------------------
// CRUD, secrets, tests, feed

#[tokio::test]
async fn endpoints_crud_with_the_secret_shown_once() {
    let k = Kit::open().await;
    let rx = Receiver::start(Answer::Status(200)).await;
    let (hook, secret) = k
        .webhook(json!({"url": rx.url("/a"), "description": "Alpha",
                        "eventTypes": ["workflow.run.failed"]}))
        .await;
    assert!(secret.starts_with("whsec_"));
    assert_eq!(
        STANDARD.decode(&secret["whsec_".len()..]).unwrap().len(),
        32
    );
    let w = k.get_webhook(&hook).await;
    assert!(w.get("secret").is_none(), "GET never shows the secret");
    assert_eq!(w["kind"], "http");
    assert_eq!(w["url"], rx.url("/a").as_str());
    assert_eq!(w["description"], "Alpha");
    assert_eq!(w["eventTypes"], json!(["workflow.run.failed"]));
    assert_eq!(w["state"], "ACTIVE");
    assert_eq!(w["health"], "healthy");
    assert_eq!(w["signingEnabled"], true);
    assert!(w["integration"].is_null());
    assert_eq!(w["createdBy"], "default");
    // Both spellings of the path, and upper-case ids.
    k.s.get(&format!("/webhooks/{}", hook.to_uppercase()))
        .await
        .expect(200);

    // A second endpoint, then the list with counts.
    let (b, _) = k.webhook(json!({"url": rx.url("/b")})).await;
    let r = k.s.get("/v1/webhooks").await;
    r.expect(200).schema(LIST);
    assert_eq!(r.body["items"][0]["id"], b.as_str(), "createdAt desc");
    for i in r.body["items"].as_array().unwrap() {
        assert_keys(i, &WEBHOOK_KEYS);
    }
    assert_eq!(
        r.body["counts"],
        json!({"active": 2, "failing": 0, "blocked": 0, "disabled": 0, "total": 2})
    );
    let r = k.s.get("/v1/webhooks?search=ALPHA").await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    let r = k.s.get("/v1/webhooks?kind=integration").await;
    assert_eq!(r.body["counts"]["total"], 0);
    let r = k.s.get("/v1/webhooks?mine=true").await;
    assert_eq!(r.body["pagination"]["total"], 2);
    k.s.get("/v1/webhooks?mine=true&createdBy=x")
        .await
        .expect_error(422, "validation_failed");
    k.s.get("/v1/webhooks?status=nope")
        .await
        .expect_error(422, "validation_failed");

    // PATCH: at least one field; description null clears it; DISABLED lists as disabled.
    k.s.patch(&format!("/v1/webhooks/{b}"), json!({}))
        .await
        .expect_error(422, "validation_failed");
    k.s.patch(&format!("/v1/webhooks/{b}"), json!({"state": "DELETED"}))
        .await
        .expect_error(422, "validation_failed");
    let r =
        k.s.patch(
            &format!("/v1/webhooks/{hook}"),
            json!({"description": null, "state": "DISABLED", "eventTypes": []}),
        )
        .await;
    r.expect(200).schema(GET);
    assert!(r.data()["description"].is_null());
    assert_eq!(r.data()["eventTypes"], json!([]));
    assert_eq!(r.data()["state"], "DISABLED");
    let r = k.s.get("/v1/webhooks?status=disabled").await;
    assert_eq!(r.body["items"][0]["id"], hook.as_str());
    assert_eq!(r.body["counts"]["disabled"], 1);
    assert_eq!(r.body["counts"]["active"], 1);

    // Create validation.
    for (body, field) in [
        (json!({}), "url"),
        (json!({"url": 5}), "url"),
        (
            json!({"url": rx.url("/"), "description": "x".repeat(501)}),
            "description",
        ),
        (
            json!({"url": rx.url("/"), "eventTypes": [""]}),
            "eventTypes[0]",
        ),
        (json!({"url": rx.url("/"), "eventTypes": "a"}), "eventTypes"),
        (
            json!({"kind": "integration", "capability": {"id": "slack", "revision": 1}, "args": {}}),
            "capability",
        ),
    ] {
        let r = k.s.post("/v1/webhooks", body.clone()).await;
        r.expect_error(422, "validation_failed");
        assert_eq!(r.error_fields(), [field], "{body}");
    }

    // Another owner sees none of it.
    let r =
        k.s.call_as(
            &k.s.other_key,
            Method::GET,
            &format!("/v1/webhooks/{hook}"),
            None,
            &[],
        )
        .await;
    r.expect_error(404, "not_found");
    let r =
        k.s.call_as(&k.s.other_key, Method::GET, "/v1/webhooks", None, &[])
            .await;
    assert_eq!(r.body["counts"]["total"], 0);

    // DELETE → 204 without a body; gone from reads.
    let r = k.s.delete(&format!("/v1/webhooks/{b}")).await;
    r.expect(204);
    assert!(r.text.is_empty());
    k.s.get(&format!("/v1/webhooks/{b}"))
        .await
        .expect_error(404, "not_found");
    k.s.delete(&format!("/v1/webhooks/{b}"))
        .await
        .expect_error(404, "not_found");
    k.s.get("/v1/webhooks/not-a-uuid")
        .await
        .expect_error(404, "not_found");
    let r = k.s.get("/v1/webhooks").await;
    assert_eq!(r.body["counts"]["total"], 1);
}

#[tokio::test]
async fn create_replays_the_current_state_without_the_secret() {
    let k = Kit::open().await;
    let body = json!({"url": "http://127.0.0.1:9/replay"});
    let post = |key: &'static str| {
        let s = &k.s;
        let body = body.clone();
        async move {
            s.call_as(
                &s.key,
                Method::POST,
                "/v1/webhooks",
                Some(&body),
                &[("Idempotency-Key", key)],
            )
            .await
        }
    };
    let first = post("create-1").await;
    first.expect(201).schema(CREATE);
    let id = first.id();
    assert!(first.data()["secret"].is_string());
    k.s.patch(
        &format!("/v1/webhooks/{id}"),
        json!({"description": "later"}),
    )
    .await
    .expect(200);
    let again = post("create-1").await;
    again.expect(201).schema(CREATE);
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.id(), id);
    assert!(again.data()["secret"].is_null());
    assert_eq!(again.data()["description"], "later", "current state");
    let r = k.s.get("/v1/webhooks").await;
    assert_eq!(r.body["pagination"]["total"], 1, "nothing created twice");
    k.s.delete(&format!("/v1/webhooks/{id}")).await.expect(204);
    post("create-1").await.expect_error(404, "not_found");
}

#[tokio::test]
async fn rotation_invalidates_the_old_secret_and_tests_are_recorded() {
    let k = Kit::open().await;
    let rx = Receiver::start(Answer::Status(200)).await;
    let (hook, old) = k
        .webhook(json!({"url": rx.url("/t"), "eventTypes": ["something.else"]}))
        .await;
    // A test ignores eventTypes and state.
    k.s.patch(
        &format!("/v1/webhooks/{hook}"),
        json!({"state": "DISABLED"}),
    )
    .await
    .expect(200);
    let r =
        k.s.call(Method::POST, &format!("/v1/webhooks/{hook}/test"), None)
            .await;
    r.expect(200).schema(TEST);
    assert_eq!(
        r.data().clone(),
        json!({"success": true, "statusCode": 200, "error": null})
    );
    let got = rx.wait(1, Duration::from_secs(5)).await;
    assert!(verify_signature(&old, &got[0]));
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["type"], "webhook.test");
    assert_eq!(body["source"], "webhooks");
    assert_eq!(body["data"], json!({"webhookId": hook}));

    let r =
        k.s.call(
            Method::POST,
            &format!("/v1/webhooks/{hook}/rotate-secret"),
            None,
        )
        .await;
    r.expect(200).schema(ROTATE);
    let new = str_of(&r.data()["secret"]).to_string();
    assert!(new.starts_with("whsec_"));
    assert_ne!(new, old);
    k.s.call(Method::POST, &format!("/v1/webhooks/{hook}/test"), None)
        .await
        .expect(200);
    let got = rx.wait(2, Duration::from_secs(5)).await;
    assert!(verify_signature(&new, &got[1]));
    assert!(
        !verify_signature(&old, &got[1]),
        "the old secret no longer signs"
    );

    // A failing test names the failure.
    rx.set(Answer::Status(418));
    let r =
        k.s.call(Method::POST, &format!("/v1/webhooks/{hook}/test"), None)
            .await;
    assert_eq!(
        r.data().clone(),
        json!({"success": false, "statusCode": 418, "error": "http_418"})
    );

    // Recorded: isTest, createdBy, one attempt each, in the feed and in the stats.
    let items = k.deliveries(&hook).await;
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["status"], "dead");
    assert_eq!(items[1]["status"], "success");
    for d in &items {
        assert_eq!(d["isTest"], true);
        assert_eq!(d["eventType"], "webhook.test");
        assert_eq!(d["createdBy"], "default");
        assert_eq!(d["source"], "webhooks");
        assert_eq!(d["attempts"], 1);
    }
    let d = k.delivery(&hook, str_of(&items[0]["id"])).await;
    assert_eq!(d["attempts"][0]["responseStatus"], 418);
    // Tests leave health alone.
    assert_eq!(k.get_webhook(&hook).await["health"], "healthy");
    let r =
        k.s.get(&format!(
            "/v1/webhooks/{hook}/deliveries?eventId={}",
            str_of(&items[2]["eventId"])
        ))
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    let r = k.s.get("/v1/webhooks/deliveries/stats?kind=http").await;
    r.expect(200).schema(STATS);
    assert_eq!(r.data()["total"], 3);
    assert!((r.data()["successRate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    let r =
        k.s.get("/v1/webhooks/deliveries/stats?kind=integration")
            .await;
    assert_eq!(r.data()["total"], 0);
    assert!(r.data()["successRate"].is_null());
    let r =
        k.s.get("/v1/webhooks/deliveries?since=2100-01-01T00:00:00Z")
            .await;
    r.expect(200).schema(FEED);
    assert_eq!(r.body["pagination"]["total"], 0);
    k.s.get("/v1/webhooks/deliveries?status=bad")
        .await
        .expect_error(422, "validation_failed");

    // A delivery is found only under its own endpoint.
    let (other, _) = k.webhook(json!({"url": rx.url("/o")})).await;
    k.s.get(&format!(
        "/v1/webhooks/{other}/deliveries/{}",
        str_of(&items[0]["id"])
    ))
    .await
    .expect_error(404, "not_found");

    // Deleting the endpoint keeps its deliveries in the feed.
    k.s.delete(&format!("/v1/webhooks/{hook}"))
        .await
        .expect(204);
    let r = k.s.get("/v1/webhooks/deliveries").await;
    r.expect(200).schema(FEED);
    assert_eq!(r.body["pagination"]["total"], 3);
    assert_eq!(r.body["items"][0]["endpointId"], hook.as_str());
    k.s.call(Method::POST, &format!("/v1/webhooks/{hook}/test"), None)
        .await
        .expect_error(404, "not_found");
    k.s.call(
        Method::POST,
        &format!("/v1/webhooks/{hook}/rotate-secret"),
        None,
    )
    .await
    .expect_error(404, "not_found");
}

#[tokio::test]
async fn deleting_an_endpoint_skips_its_pending_deliveries() {
    let k = Kit::start(&[
        ("FLOWRUN_ALLOW_PRIVATE_TARGETS", "true"),
        ("FLOWRUN_WEBHOOK_RETRY_SCALE", "0.01"),
    ])
    .await;
    let rx = Receiver::start(Answer::Status(500)).await;
    let (hook, _) = k.webhook(json!({"url": rx.url("/x")})).await;
    let a = k
        .action("webhooks.send", "Send", json!({"webhookId": hook}))
        .await;
    let flow = k.flow(&[a], json!({})).await;
    let e = k.done(&k.run(&flow, json!({})).await).await;
    let id = str_of(&e["result"]["steps"][0]["body"]["deliveryId"]).to_string();
    rx.wait(1, Duration::from_secs(5)).await;
    k.s.delete(&format!("/v1/webhooks/{hook}"))
        .await
        .expect(204);
    let r = k.s.get("/v1/webhooks/deliveries").await;
    let d = &r.body["items"][0];
    assert_eq!(d["id"], id.as_str());
    assert_eq!(d["status"], "skipped");
    let n = rx.requests().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.requests().len(), n, "no attempt after the delete");
}

#[tokio::test]
async fn literal_paths_win_and_integrations_are_empty() {
    let k = Kit::open().await;
    let r = k.s.get("/v1/webhooks/deliveries").await;
    r.expect(200).schema(FEED);
    let r = k.s.get("/webhooks/deliveries/stats").await;
    r.expect(200).schema(STATS);
    assert_eq!(
        r.data().clone(),
        json!({"total": 0, "byStatus": {"pending": 0, "success": 0, "skipped": 0, "dead": 0},
               "successRate": null})
    );
    let r = k.s.get("/v1/webhooks/integrations").await;
    r.expect(200).schema(INTEGRATIONS);
    assert_eq!(r.body, json!({"data": []}));
    let r =
        k.s.get("/v1/webhooks/integrations/slack.post/targets?revision=1")
            .await;
    r.expect(200).schema(TARGETS);
    assert_eq!(r.body, json!({"data": []}));
    let r =
        k.s.get("/v1/webhooks/integrations/slack.post/targets")
            .await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), ["revision"]);
    k.s.get("/v1/webhooks/integrations/x/targets?revision=1.5")
        .await
        .expect_error(422, "validation_failed");
    let r =
        k.s.call(Method::DELETE, "/v1/webhooks/deliveries", None)
            .await;
    r.expect_error(405, "method_not_allowed");
    let d = uuid::Uuid::new_v4();
    k.s.get(&format!("/v1/webhooks/{d}/deliveries"))
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn every_webhook_route_is_documented_and_needs_a_key() {
    let k = Kit::open().await;
    let r =
        k.s.call_as("", Method::GET, "/openapi.json", None, &[])
            .await;
    r.expect(200);
    let paths = r.body["paths"].as_object().unwrap();
    let expected: &[(&str, &[&str])] = &[
        ("/webhooks", &["get", "post"]),
        ("/webhooks/{webhookId}", &["get", "patch", "delete"]),
        ("/webhooks/{webhookId}/rotate-secret", &["post"]),
        ("/webhooks/{webhookId}/test", &["post"]),
        ("/webhooks/{webhookId}/deliveries", &["get"]),
        ("/webhooks/{webhookId}/deliveries/{deliveryId}", &["get"]),
        ("/webhooks/deliveries", &["get"]),
        ("/webhooks/deliveries/stats", &["get"]),
        ("/webhooks/integrations", &["get"]),
        ("/webhooks/integrations/{capabilityId}/targets", &["get"]),
    ];
    for (path, methods) in expected {
        let ops = paths
            .get(*path)
            .unwrap_or_else(|| panic!("openapi lacks {path}"));
        for m in *methods {
            assert!(ops[*m]["responses"].is_object(), "openapi lacks {m} {path}");
        }
    }
    let id = uuid::Uuid::new_v4();
    for (m, path) in [
        (Method::GET, "/v1/webhooks".to_string()),
        (Method::POST, "/v1/webhooks".to_string()),
        (Method::GET, "/v1/webhooks/deliveries".to_string()),
        (Method::GET, "/v1/webhooks/deliveries/stats".to_string()),
        (Method::GET, "/v1/webhooks/integrations".to_string()),
        (Method::POST, format!("/v1/webhooks/{id}/test")),
        (Method::DELETE, format!("/v1/webhooks/{id}")),
    ] {
        k.s.call_as("", m, &path, Some(&json!({})), &[])
            .await
            .expect_error(401, "unauthorized");
    }
}
