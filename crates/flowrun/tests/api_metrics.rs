//! `GET /metrics` (§3.12): Prometheus text of this node, without a key; 404 when disabled.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use reqwest::Method;
use serde_json::json;

async fn scrape(s: &Server) -> String {
    let r = s.call_as("", Method::GET, "/metrics", None, &[]).await;
    r.expect(200);
    let ct = r.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    r.text
}

/// The value of the sample whose line starts with `series` (name and labels as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_events_runs_and_describe_the_queue_and_devices() {
    let s = Server::start().await;
    let catalog = s.get("/v1/action-catalog?pageSize=100").await;
    let wait = catalog.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["method"] == "flow.wait")
        .unwrap()["id"]
        .clone();
    let trigger = s
        .post("/v1/triggers", json!({"name": "m", "activation": "custom"}))
        .await
        .id();
    let action = s
        .post(
            "/v1/actions",
            json!({"name": "pause", "catalogEntryId": wait, "params": {"seconds": 0}}),
        )
        .await
        .id();
    s.post(
        "/v1/flows",
        json!({"name": "m", "triggerId": trigger, "actions": [{"actionId": action, "position": 0}]}),
    )
    .await
    .expect(201);
    s.post(
        "/v1/devices",
        json!({"name": "phone", "provider": "adb", "address": "metrics-1"}),
    )
    .await
    .expect(201);
    s.post(
        &format!("/v1/triggers/{trigger}/fire"),
        json!({"payload": {}}),
    )
    .await
    .expect(202);
    s.post(
        "/v1/events/ingest",
        json!({"eventType": "custom.metrics", "payload": {}}),
    )
    .await
    .expect(202);
    // Unauthenticated requests are counted too.
    s.call_as("", Method::GET, "/v1/flows", None, &[])
        .await
        .expect(401);

    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(&s).await;
        let done = sample(
            &text,
            r#"flowrun_executions_finished_total{kind="live",status="success"}"#,
        );
        if done == Some(1.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "the run did not finish: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(sample(&text, "flowrun_events_ingested_total"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            r#"flowrun_executions_enqueued_total{status="pending"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "flowrun_queue_depth"), Some(0.0));
    // The device's probe may already have run: it is in exactly one of these states.
    let devices: f64 = ["unknown", "offline", "online"]
        .iter()
        .filter_map(|st| sample(&text, &format!(r#"flowrun_devices{{state="{st}"}}"#)))
        .sum();
    assert_eq!(devices, 1.0, "{text}");
    assert_eq!(
        sample(
            &text,
            r#"flowrun_http_requests_total{method="POST",route="/v1/triggers/{triggerId}/fire",status="202"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"flowrun_http_requests_total{method="GET",route="/v1/flows",status="401"}"#
        ),
        Some(1.0)
    );
    assert!(
        text.contains("flowrun_http_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(
        text.contains(r#"flowrun_execution_duration_seconds_count{kind="live"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_can_be_disabled() {
    let s = Server::start_with(&["--metrics", "false"]).await;
    let r = s.call_as("", Method::GET, "/metrics", None, &[]).await;
    r.expect(404);
    assert_eq!(r.body["code"], "not_found");
}
