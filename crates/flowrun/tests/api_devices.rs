//! Devices registry (§3.11).

mod common;

use common::{Server, assert_keys};
use serde_json::json;

const DEVICE_KEYS: [&str; 8] = [
    "id",
    "name",
    "provider",
    "address",
    "state",
    "createdAt",
    "updatedAt",
    "ownerId",
];

#[tokio::test]
async fn device_crud_and_rules() {
    let s = Server::start().await;
    let r = s
        .post(
            "/v1/devices",
            json!({"name": "Pixel 8", "provider": "adb", "address": "emulator-5554"}),
        )
        .await;
    r.expect(201);
    assert_keys(r.data(), &DEVICE_KEYS);
    assert_eq!(r.data()["state"], "unknown");
    let id = r.id();

    s.post(
        "/v1/devices",
        json!({"name": "dup", "provider": "adb", "address": "emulator-5554"}),
    )
    .await
    .expect_error(409, "already_exists");
    // Same address under another provider is a different device.
    s.post(
        "/v1/devices",
        json!({"name": "cloud", "provider": "mobilerun", "address": "emulator-5554"}),
    )
    .await
    .expect(201);

    let r = s
        .post(
            "/v1/devices",
            json!({"name": "", "provider": "ios", "address": ""}),
        )
        .await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), ["name", "provider", "address"]);

    let r = s.get(&format!("/devices/{}", id.to_uppercase())).await;
    r.expect(200);
    assert_eq!(r.data()["id"], id.as_str());

    let r = s
        .patch(
            &format!("/v1/devices/{id}"),
            json!({"name": "Renamed", "provider": "mobilerun"}),
        )
        .await;
    r.expect(200);
    assert_eq!(r.data()["name"], "Renamed");
    assert_eq!(r.data()["provider"], "adb", "provider is immutable");

    // Filters and search.
    let r = s.get("/v1/devices?provider=adb").await;
    assert_eq!(r.body["pagination"]["total"], 1);
    let r = s.get("/v1/devices?search=RENAM").await;
    assert_eq!(r.body["pagination"]["total"], 1);
    let r = s.get("/v1/devices?provider=ios").await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), ["provider"]);

    // Another owner cannot see it.
    let r = s
        .call_as(
            &s.other_key,
            reqwest::Method::GET,
            &format!("/v1/devices/{id}"),
            None,
            &[],
        )
        .await;
    r.expect_error(404, "not_found");

    let r = s.delete(&format!("/v1/devices/{id}")).await;
    r.expect(200);
    assert_eq!(r.body["message"], format!("Device {id} deleted"));
    s.get(&format!("/v1/devices/{id}"))
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn device_list_paginates() {
    let s = Server::start().await;
    for i in 0..3 {
        s.post(
            "/v1/devices",
            json!({"name": format!("d{i}"), "provider": "adb", "address": format!("a{i}")}),
        )
        .await
        .expect(201);
    }
    let r = s.get("/v1/devices?pageSize=1&page=2").await;
    r.expect(200);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["items"][0]["name"], "d1", "newest first");
    assert_eq!(
        r.body["pagination"],
        json!({"page": 2, "pageSize": 1, "total": 3, "pages": 3, "hasNext": true, "hasPrev": true})
    );
    let r = s.get("/v1/devices?pageSize=100&page=9").await;
    assert_eq!(r.body["items"], json!([]));
    assert_eq!(r.body["pagination"]["total"], 3);
    for bad in ["pageSize=0", "pageSize=101", "page=0", "page=x"] {
        s.get(&format!("/v1/devices?{bad}"))
            .await
            .expect_error(422, "validation_failed");
    }
}
