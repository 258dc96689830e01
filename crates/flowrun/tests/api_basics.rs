//! Cross-cutting HTTP behaviour: auth, routing, errors, body limits, idempotency, ops routes.

mod common;

use common::{Server, assert_keys};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn healthz_and_openapi_need_no_key() {
    let s = Server::start().await;
    let r = s.call_as("", Method::GET, "/healthz", None, &[]).await;
    r.expect(200);
    assert_eq!(r.body["status"], "ok");
    assert!(r.body["store"] == "sqlite" || r.body["store"] == "postgres");
    assert!(r.headers.get("x-request-id").is_some());
    let r = s
        .call_as("", Method::GET, "/v1/openapi.json", None, &[])
        .await;
    r.expect(200);
    assert_eq!(r.body["openapi"], "3.1.0");
    let servers: Vec<_> = r.body["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["url"].clone())
        .collect();
    assert_eq!(servers, [json!("/v1"), json!("/")]);
    assert!(r.body["components"]["securitySchemes"]["bearer"].is_object());
    let paths = r.body["paths"].as_object().unwrap();
    let expected: &[(&str, &[&str])] = &[
        ("/triggers", &["get", "post"]),
        ("/triggers/{triggerId}", &["get", "patch", "delete"]),
        ("/action-catalog", &["get"]),
        ("/action-catalog/{catalogEntryId}", &["get"]),
        ("/actions/services", &["get"]),
        ("/actions/services/{service}/methods", &["get"]),
        ("/actions", &["get", "post"]),
        ("/actions/{actionId}", &["get", "patch", "delete"]),
        ("/flows", &["get", "post"]),
        ("/flows/capacity", &["get"]),
        ("/flows/{flowId}", &["get", "patch", "delete"]),
        ("/flows/{flowId}/clone", &["post"]),
        ("/flows/{flowId}/unblock", &["post"]),
        ("/flows/{flowId}/repairs", &["get"]),
        ("/flows/{flowId}/delivery-options", &["get"]),
        ("/flows/{flowId}/actions", &["get", "post", "put"]),
        ("/flows/{flowId}/actions/{flowActionId}", &["delete"]),
        ("/devices", &["get", "post"]),
        ("/devices/{deviceId}", &["get", "patch", "delete"]),
        ("/timezones", &["get"]),
        ("/triggers/{triggerId}/fire", &["post"]),
        ("/flows/{flowId}/run", &["post"]),
        ("/flows/{flowId}/dry-run", &["post"]),
        ("/flows/{flowId}/verify", &["post"]),
        ("/flows/{flowId}/activate", &["post"]),
        ("/flows/validate", &["post"]),
        ("/flows/template-context", &["get"]),
        ("/events/ingest", &["post"]),
        ("/events/dry-run", &["post"]),
        ("/app-events/catalog", &["get"]),
        ("/app-events/catalog/{appEventType}", &["get"]),
        ("/executions", &["get"]),
        ("/executions/metrics", &["get"]),
        ("/executions/{executionId}", &["get"]),
        ("/executions/{executionId}/abort", &["post"]),
        ("/webhooks", &["get", "post"]),
        ("/webhooks/{webhookId}", &["get", "patch", "delete"]),
        ("/webhooks/{webhookId}/rotate-secret", &["post"]),
        ("/webhooks/{webhookId}/test", &["post"]),
        ("/webhooks/deliveries", &["get"]),
        ("/webhooks/deliveries/stats", &["get"]),
        ("/webhooks/{webhookId}/deliveries", &["get"]),
        ("/webhooks/{webhookId}/deliveries/{deliveryId}", &["get"]),
        ("/webhooks/integrations", &["get"]),
        ("/webhooks/integrations/{capabilityId}/targets", &["get"]),
        (
            "/executions/{executionId}/screenshots/{screenshotId}",
            &["get"],
        ),
        ("/artifacts/{token}", &["get"]),
    ];
    // The signed artifact route needs no bearer key.
    assert_eq!(
        paths["/artifacts/{token}"]["get"]["security"],
        json!([{}]),
        "artifact route security"
    );
    assert!(
        paths["/executions/{executionId}/screenshots/{screenshotId}"]["get"]["responses"]["302"]
            .is_object()
    );
    for (path, methods) in expected {
        let ops = paths
            .get(*path)
            .unwrap_or_else(|| panic!("openapi lacks {path}"));
        for m in *methods {
            assert!(ops.get(*m).is_some(), "openapi lacks {m} {path}");
            assert!(
                ops[*m]["responses"].is_object(),
                "{m} {path} documents no responses"
            );
        }
    }
}

#[tokio::test]
async fn every_api_route_needs_a_valid_key() {
    let s = Server::start().await;
    for key in [
        "",
        "nope",
        "dr_sk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let r = s.call_as(key, Method::GET, "/v1/devices", None, &[]).await;
        r.expect_error(401, "unauthorized");
    }
    // A key issued by `flowrun keys create` works; the request id is echoed.
    let r = s
        .call_as(
            &s.other_key,
            Method::GET,
            "/devices",
            None,
            &[("x-request-id", "req-123")],
        )
        .await;
    r.expect(200);
    assert_eq!(r.headers["x-request-id"], "req-123");
}

#[tokio::test]
async fn routing_errors_have_the_spec_body() {
    let s = Server::start().await;
    s.get("/v1/nothing-here")
        .await
        .expect_error(404, "not_found");
    let r = s.call(Method::PUT, "/v1/devices", None).await;
    r.expect_error(405, "method_not_allowed");
    let allow = r.headers["allow"].to_str().unwrap().to_string();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    // One trailing slash is tolerated, at the root and under /v1.
    s.get("/devices/").await.expect(200);
    s.get("/v1/devices/").await.expect(200);
}

#[tokio::test]
async fn malformed_json_is_400_and_oversized_bodies_413() {
    let s = Server::start_with(&["--body-limit", "4096"]).await;
    s.raw(Method::POST, "/v1/devices", b"{not json".to_vec())
        .await
        .expect_error(400, "invalid_json");
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(5000));
    s.raw(Method::POST, "/v1/devices", big.into_bytes())
        .await
        .expect_error(413, "payload_too_large");
    let r = s.raw(Method::POST, "/v1/devices", b"[1]".to_vec()).await;
    r.expect_error(422, "validation_failed");
}

#[tokio::test]
async fn idempotency_replays_and_rejects_reuse() {
    let s = Server::start().await;
    let body = json!({"name": "Pixel", "provider": "adb", "address": "emulator-5554"});
    let h = [("Idempotency-Key", "stainless-python-retry-1")];
    let first = s
        .call_as(&s.key, Method::POST, "/v1/devices", Some(&body), &h)
        .await;
    first.expect(201);
    assert!(first.headers.get("idempotent-replayed").is_none());
    // /v1 and the root are one route for idempotency; the replay is byte for byte.
    let again = s
        .call_as(&s.key, Method::POST, "/devices", Some(&body), &h)
        .await;
    again.expect(201);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.text, first.text);
    let list = s.get("/v1/devices").await;
    assert_eq!(list.body["pagination"]["total"], 1);
    // Same key, different body.
    let other = json!({"name": "Other", "provider": "adb", "address": "x"});
    s.call_as(&s.key, Method::POST, "/v1/devices", Some(&other), &h)
        .await
        .expect_error(422, "idempotency_key_reused");
    // A failed outcome releases the key: the retry executes again.
    let bad = json!({"name": ""});
    let h2 = [("Idempotency-Key", "k-2")];
    s.call_as(&s.key, Method::POST, "/v1/devices", Some(&bad), &h2)
        .await
        .expect(422);
    let good = json!({"name": "B", "provider": "adb", "address": "b"});
    s.call_as(&s.key, Method::POST, "/v1/devices", Some(&good), &h2)
        .await
        .expect(201);
    let h3 = [("Idempotency-Key", "k-3")];
    s.call_as(&s.key, Method::POST, "/v1/devices", Some(&bad), &h3)
        .await
        .expect(422);
    s.call_as(&s.key, Method::POST, "/v1/devices", Some(&bad), &h3)
        .await
        .expect(422);
    // Keys are scoped per owner.
    s.call_as(&s.other_key, Method::POST, "/v1/devices", Some(&other), &h)
        .await
        .expect(201);
    // Invalid keys.
    let long = "k".repeat(256);
    s.call_as(
        &s.key,
        Method::POST,
        "/v1/devices",
        Some(&good),
        &[("Idempotency-Key", long.as_str())],
    )
    .await
    .expect_error(422, "invalid_idempotency_key");
    // GET ignores the header.
    s.call_as(
        &s.key,
        Method::GET,
        "/v1/devices",
        None,
        &[("Idempotency-Key", long.as_str())],
    )
    .await
    .expect(200);
}

#[tokio::test]
async fn error_bodies_have_exactly_error_code_details() {
    let s = Server::start().await;
    let r = s.get("/v1/devices/not-a-uuid").await;
    r.expect_error(404, "not_found");
    assert_keys(&r.body, &["error", "code", "details"]);
    assert_eq!(r.body["error"], "Device 'not-a-uuid' not found");
}
