//! Action catalog, services and actions (§3.2–3.4, §5.11).

mod common;

use common::{Server, assert_keys};
use reqwest::Method;
use serde_json::{Value, json};

const CATALOG_KEYS: [&str; 10] = [
    "id",
    "name",
    "description",
    "service",
    "method",
    "provider",
    "paramsSchema",
    "outputSchema",
    "createdAt",
    "updatedAt",
];

const ACTION_KEYS: [&str; 13] = [
    "id",
    "catalogEntryId",
    "name",
    "description",
    "service",
    "method",
    "params",
    "paramsSchema",
    "ownerId",
    "createdBy",
    "userId",
    "createdAt",
    "updatedAt",
];

const SERVICES: [&str; 5] = [
    "tasks_api",
    "devices_api",
    "agents_api",
    "webhooks",
    "integrations_api",
];

const LIST_CATALOG: &str = "workflows.action_catalog_list_response.ActionCatalogListResponse";
const GET_CATALOG: &str =
    "workflows.action_catalog_retrieve_response.ActionCatalogRetrieveResponse";
const LIST_SERVICES: &str = "workflows.actions.service_list_response.ServiceListResponse";
const LIST_METHODS: &str =
    "workflows.actions.service_list_methods_response.ServiceListMethodsResponse";
const CREATE: &str = "workflows.action_create_response.ActionCreateResponse";
const LIST: &str = "workflows.action_list_response.ActionListResponse";
const GET: &str = "workflows.action_retrieve_response.ActionRetrieveResponse";
const UPDATE: &str = "workflows.action_update_response.ActionUpdateResponse";
const DELETE: &str = "workflows.action_delete_response.ActionDeleteResponse";

/// The stable catalog id of a method (UUIDv5, URL namespace).
fn catalog_id(method: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("flowrun:action-catalog:{method}").as_bytes(),
    )
    .to_string()
}

fn methods_of(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["method"].as_str().unwrap().to_string())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn create(s: &Server, method: &str, name: &str, params: Value) -> String {
    let r = s
        .post(
            "/v1/actions",
            json!({"catalogEntryId": catalog_id(method), "name": name, "params": params}),
        )
        .await;
    r.expect(201).schema(CREATE);
    r.id()
}

#[tokio::test]
async fn catalog_lists_every_builtin_in_fixed_order() {
    let s = Server::start().await;
    let r = s.get("/v1/action-catalog?pageSize=100").await;
    r.expect(200).schema(LIST_CATALOG);
    assert_keys(&r.body, &["items", "pagination"]);
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 14);
    assert_eq!(
        r.body["pagination"],
        json!({"page": 1, "pageSize": 100, "total": 14, "pages": 1, "hasNext": false, "hasPrev": false})
    );
    let order: Vec<(String, String)> = items
        .iter()
        .map(|e| {
            (
                e["service"].as_str().unwrap().to_string(),
                e["method"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut want = order.clone();
    want.sort();
    assert_eq!(order, want, "ordered by service then method");
    for e in items {
        assert_keys(e, &CATALOG_KEYS);
        let method = e["method"].as_str().unwrap();
        assert_eq!(e["id"], catalog_id(method), "stable id of {method}");
        assert_eq!(e["provider"], "mobilerun");
        assert_eq!(e["createdAt"], Value::Null);
        assert_eq!(e["updatedAt"], Value::Null);
        assert_eq!(e["paramsSchema"]["additionalProperties"], false);
        assert!(e["outputSchema"].is_object());
    }
    assert_eq!(
        sorted(methods_of(&r.body["items"])),
        sorted(
            [
                "agent.run",
                "devices.app.start",
                "devices.app.stop",
                "devices.key",
                "devices.screenshot",
                "devices.swipe",
                "devices.tap",
                "devices.type",
                "devices.wait_for_text",
                "flow.for_each",
                "flow.if",
                "flow.wait",
                "tasks.run",
                "webhooks.send",
            ]
            .map(String::from)
            .to_vec()
        )
    );

    // Default page size is 20: everything fits.
    let r = s.get("/action-catalog").await;
    r.expect(200).schema(LIST_CATALOG);
    assert_eq!(r.body["pagination"]["pageSize"], 20);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 14);
}

#[tokio::test]
async fn catalog_filters_and_pages() {
    let s = Server::start().await;
    let r = s.get("/v1/action-catalog?service=devices_api").await;
    r.expect(200).schema(LIST_CATALOG);
    assert_eq!(r.body["pagination"]["total"], 8);
    assert!(
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["service"] == "devices_api")
    );

    // Array semantics: comma-joined, repeated, both; empty elements ignored.
    for q in [
        "service=webhooks,agents_api",
        "service=webhooks&service=agents_api",
        "service=webhooks,&service=agents_api&service=",
    ] {
        let r = s.get(&format!("/v1/action-catalog?{q}")).await;
        r.expect(200).schema(LIST_CATALOG);
        assert_eq!(
            methods_of(&r.body["items"]),
            ["agent.run", "webhooks.send"],
            "{q}: agents_api sorts before webhooks"
        );
    }
    let r = s.get("/v1/action-catalog?service=integrations_api").await;
    r.expect(200).schema(LIST_CATALOG);
    assert_eq!(r.body["items"], json!([]));
    assert_eq!(r.body["pagination"]["pages"], 0);
    // An empty value equals absence.
    let r = s.get("/v1/action-catalog?service=").await;
    assert_eq!(r.body["pagination"]["total"], 14);

    let r = s.get("/v1/action-catalog?service=Devices_api").await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), ["service"]);

    // pageSize 1 walks the list one entry at a time, in the same order.
    let all = s.get("/v1/action-catalog?pageSize=100").await;
    let all = methods_of(&all.body["items"]);
    let r = s.get("/v1/action-catalog?pageSize=1&page=3").await;
    r.expect(200).schema(LIST_CATALOG);
    assert_eq!(methods_of(&r.body["items"]), [all[2].clone()]);
    assert_eq!(
        r.body["pagination"],
        json!({"page": 3, "pageSize": 1, "total": 14, "pages": 14, "hasNext": true, "hasPrev": true})
    );
    let r = s.get("/v1/action-catalog?pageSize=1&page=14").await;
    assert_eq!(r.body["pagination"]["hasNext"], false);
    assert_eq!(methods_of(&r.body["items"]), [all[13].clone()]);
    let r = s.get("/v1/action-catalog?pageSize=5&page=3").await;
    assert_eq!(methods_of(&r.body["items"]), all[10..14].to_vec());
    // Past the last page: empty with the real totals.
    let r = s.get("/v1/action-catalog?page=4&pageSize=5").await;
    r.expect(200).schema(LIST_CATALOG);
    assert_eq!(r.body["items"], json!([]));
    assert_eq!(
        r.body["pagination"],
        json!({"page": 4, "pageSize": 5, "total": 14, "pages": 3, "hasNext": false, "hasPrev": true})
    );
    for bad in [
        "pageSize=0",
        "pageSize=101",
        "page=0",
        "page=1.5",
        "pageSize=x",
    ] {
        let r = s.get(&format!("/v1/action-catalog?{bad}")).await;
        r.expect_error(422, "validation_failed");
        assert_eq!(r.error_fields().len(), 1, "{bad}");
    }
}

#[tokio::test]
async fn catalog_entry_by_id() {
    let s = Server::start().await;
    let id = catalog_id("devices.tap");
    let r = s.get(&format!("/v1/action-catalog/{id}")).await;
    r.expect(200).schema(GET_CATALOG);
    assert_keys(&r.body, &["data"]);
    assert_keys(r.data(), &CATALOG_KEYS);
    assert_eq!(r.data()["method"], "devices.tap");
    assert_eq!(r.data()["name"], "Tap");
    assert_eq!(r.data()["service"], "devices_api");
    assert_eq!(r.data()["paramsSchema"]["required"], json!(["x", "y"]));
    // Any letter case on input, lowercase on output.
    let r = s
        .get(&format!("/action-catalog/{}", id.to_uppercase()))
        .await;
    r.expect(200).schema(GET_CATALOG);
    assert_eq!(r.data()["id"], id.as_str());

    let unknown = uuid::Uuid::new_v4().to_string();
    let r = s.get(&format!("/v1/action-catalog/{unknown}")).await;
    r.expect_error(404, "not_found");
    assert!(r.body["error"].as_str().unwrap().contains(&unknown));
    let r = s.get("/v1/action-catalog/flow.wait").await;
    r.expect_error(404, "not_found");
    assert!(r.body["error"].as_str().unwrap().contains("'flow.wait'"));
}

#[tokio::test]
async fn services_and_their_methods() {
    let s = Server::start().await;
    let r = s.get("/v1/actions/services").await;
    r.expect(200).schema(LIST_SERVICES);
    assert_keys(&r.body, &["data"]);
    assert_eq!(r.body["data"], json!(SERVICES));
    // The literal route wins over /actions/{actionId} at both mount points and with a
    // trailing slash.
    for path in ["/actions/services", "/actions/services/"] {
        let r = s.get(path).await;
        r.expect(200).schema(LIST_SERVICES);
        assert_eq!(r.body["data"], json!(SERVICES));
    }

    // Only GET exists there; other methods do not fall through to /actions/{actionId}.
    let r = s.delete("/v1/actions/services").await;
    r.expect_error(405, "method_not_allowed");
    assert!(r.headers["allow"].to_str().unwrap().contains("GET"));

    let want: [(&str, &[&str]); 5] = [
        (
            "tasks_api",
            &["flow.for_each", "flow.if", "flow.wait", "tasks.run"],
        ),
        (
            "devices_api",
            &[
                "devices.app.start",
                "devices.app.stop",
                "devices.key",
                "devices.screenshot",
                "devices.swipe",
                "devices.tap",
                "devices.type",
                "devices.wait_for_text",
            ],
        ),
        ("agents_api", &["agent.run"]),
        ("webhooks", &["webhooks.send"]),
        ("integrations_api", &[]),
    ];
    for (service, methods) in want {
        let r = s
            .get(&format!("/v1/actions/services/{service}/methods"))
            .await;
        r.expect(200).schema(LIST_METHODS);
        assert_keys(&r.body, &["data"]);
        assert_eq!(methods_of(&r.body["data"]), methods, "{service}");
        for m in r.body["data"].as_array().unwrap() {
            assert_keys(m, &["method", "params"]);
            for p in m["params"].as_array().unwrap() {
                assert_keys(
                    p,
                    &[
                        "name",
                        "type",
                        "required",
                        "description",
                        "default",
                        "example",
                    ],
                );
                assert!(p["description"].is_string());
            }
        }
    }

    // Params come from the schema's top-level properties in declaration order.
    let r = s.get("/v1/actions/services/devices_api/methods").await;
    let data = r.body["data"].as_array().unwrap();
    let swipe = data
        .iter()
        .find(|m| m["method"] == "devices.swipe")
        .unwrap();
    let names: Vec<_> = swipe["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["startX", "startY", "endX", "endY", "durationMs"]);
    let duration = &swipe["params"][4];
    assert_eq!(duration["type"], "number", "integer reads as number");
    assert_eq!(duration["required"], false);
    assert_eq!(duration["default"], 300);
    assert_eq!(duration["example"], Value::Null);
    assert_eq!(swipe["params"][0]["required"], true);
    assert_eq!(swipe["params"][0]["default"], Value::Null);
    assert_eq!(swipe["params"][0]["example"], 540);
    let key = data.iter().find(|m| m["method"] == "devices.key").unwrap();
    assert_eq!(key["params"][0]["type"], "number", "anyOf → first branch");
    assert_eq!(key["params"][0]["example"], "home");
    let shot = data
        .iter()
        .find(|m| m["method"] == "devices.screenshot")
        .unwrap();
    assert_eq!(shot["params"], json!([]));

    let r = s.get("/v1/actions/services/tasks_api/methods").await;
    let each = &r.body["data"][0];
    assert_eq!(each["method"], "flow.for_each");
    assert_eq!(each["params"][0]["name"], "items");
    assert_eq!(each["params"][0]["type"], "array", "union → first non-null");
    assert_eq!(each["params"][1]["default"], "item");
    let wait = &r.body["data"][2];
    assert_eq!(wait["params"][0]["example"], 5);
    assert_eq!(wait["params"][0]["description"], "Seconds to wait");

    let r = s.get("/v1/actions/services/nope/methods").await;
    r.expect_error(404, "not_found");
    assert!(r.body["error"].as_str().unwrap().contains("'nope'"));
    // Services are case-sensitive.
    s.get("/v1/actions/services/Tasks_api/methods")
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn action_crud() {
    let s = Server::start().await;
    let body = json!({
        "catalogEntryId": catalog_id("devices.tap"),
        "name": "Tap OK",
        "description": "Taps the OK button",
        "params": {"x": 100, "y": 200},
    });
    let r = s.post("/v1/actions", body).await;
    r.expect(201).schema(CREATE);
    assert_keys(&r.body, &["data"]);
    let a = r.data().clone();
    assert_keys(&a, &ACTION_KEYS);
    assert_eq!(a["catalogEntryId"], catalog_id("devices.tap"));
    assert_eq!(a["service"], "devices_api");
    assert_eq!(a["method"], "devices.tap");
    assert_eq!(a["params"], json!({"x": 100, "y": 200}));
    assert_eq!(a["paramsSchema"]["required"], json!(["x", "y"]));
    assert_eq!(a["ownerId"], "default");
    assert_eq!(a["userId"], "default");
    assert_eq!(a["createdBy"], "default");
    assert_eq!(a["createdAt"], a["updatedAt"]);
    let id = r.id();

    // params default to {} and description to null.
    let r = s
        .post(
            "/v1/actions",
            json!({"catalogEntryId": catalog_id("devices.screenshot"), "name": "Shot"}),
        )
        .await;
    r.expect(201).schema(CREATE);
    assert_eq!(r.data()["params"], json!({}));
    assert_eq!(r.data()["description"], Value::Null);

    let r = s.get(&format!("/v1/actions/{id}")).await;
    r.expect(200).schema(GET);
    assert_keys(&r.body, &["data"]);
    assert_eq!(r.data(), &a);
    let r = s.get(&format!("/actions/{}", id.to_uppercase())).await;
    r.expect(200).schema(GET);
    assert_eq!(r.data()["id"], id.as_str());

    // PATCH: only sent fields change; params replace the whole object; catalogEntryId ignored.
    let r = s
        .patch(
            &format!("/v1/actions/{id}"),
            json!({"name": "Tap Cancel", "params": {"x": "{{event.payload.x}}", "y": 5},
                   "catalogEntryId": catalog_id("flow.wait")}),
        )
        .await;
    r.expect(200).schema(UPDATE);
    assert_keys(&r.body, &["data"]);
    assert_keys(r.data(), &ACTION_KEYS);
    assert_eq!(r.data()["name"], "Tap Cancel");
    assert_eq!(r.data()["description"], "Taps the OK button");
    assert_eq!(
        r.data()["params"],
        json!({"x": "{{event.payload.x}}", "y": 5})
    );
    assert_eq!(r.data()["method"], "devices.tap");
    assert_eq!(r.data()["catalogEntryId"], catalog_id("devices.tap"));
    assert_eq!(r.data()["createdAt"], a["createdAt"]);
    assert!(r.data()["updatedAt"].as_str().unwrap() >= a["updatedAt"].as_str().unwrap());

    let r = s
        .patch(&format!("/v1/actions/{id}"), json!({"description": null}))
        .await;
    r.expect(200).schema(UPDATE);
    assert_eq!(r.data()["description"], Value::Null);
    assert_eq!(r.data()["name"], "Tap Cancel");
    // An empty body changes nothing but is valid.
    let r = s.patch(&format!("/v1/actions/{id}"), json!({})).await;
    r.expect(200).schema(UPDATE);
    assert_eq!(
        r.data()["params"],
        json!({"x": "{{event.payload.x}}", "y": 5})
    );

    // The stored state is what GET returns.
    let r = s.get(&format!("/v1/actions/{id}")).await;
    assert_eq!(r.data()["description"], Value::Null);
    assert_eq!(r.data()["name"], "Tap Cancel");

    let r = s.delete(&format!("/v1/actions/{id}")).await;
    r.expect(200).schema(DELETE);
    assert_keys(&r.body, &["message"]);
    assert_eq!(r.body["message"], format!("Action {id} deleted"));
    s.get(&format!("/v1/actions/{id}"))
        .await
        .expect_error(404, "not_found");
    s.delete(&format!("/v1/actions/{id}"))
        .await
        .expect_error(404, "not_found");
    s.patch(&format!("/v1/actions/{id}"), json!({"name": "x"}))
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn create_validation_is_422_with_every_field() {
    let s = Server::start().await;
    let r = s
        .post(
            "/v1/actions",
            json!({"name": "", "description": "d".repeat(2001), "params": [1]}),
        )
        .await;
    r.expect_error(422, "validation_failed");
    assert_eq!(
        sorted(r.error_fields()),
        sorted(
            ["catalogEntryId", "name", "description", "params"]
                .map(String::from)
                .to_vec()
        )
    );

    let r = s
        .post(
            "/v1/actions",
            json!({"catalogEntryId": "not-a-uuid", "name": "x".repeat(201)}),
        )
        .await;
    r.expect_error(422, "validation_failed");
    assert_eq!(sorted(r.error_fields()), ["catalogEntryId", "name"]);

    let r = s
        .post(
            "/v1/actions",
            json!({"catalogEntryId": uuid::Uuid::new_v4(), "name": "n"}),
        )
        .await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), ["catalogEntryId"]);
    assert_eq!(r.error_codes(), ["unknown_reference"]);

    // Wrong types of the body itself are 422, not 400.
    let r = s
        .post(
            "/v1/actions",
            json!({"catalogEntryId": catalog_id("flow.wait"), "name": 3, "description": 4, "params": "x"}),
        )
        .await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), ["name", "description", "params"]);
    assert!(r.error_codes().iter().all(|c| c == "invalid_type"));
    let r = s
        .post(
            "/v1/actions",
            json!({"catalogEntryId": catalog_id("flow.wait"), "name": "w", "params": null}),
        )
        .await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), ["params"]);

    let r = s.post("/v1/actions", json!([1])).await;
    r.expect_error(422, "validation_failed");
    // Boundaries that pass: 200-char name, 2000-char description, unknown fields ignored.
    let r = s
        .post(
            "/v1/actions",
            json!({"catalogEntryId": catalog_id("flow.wait"), "name": "n".repeat(200),
                   "description": "d".repeat(2000), "params": {"seconds": 0}, "extra": true}),
        )
        .await;
    r.expect(201).schema(CREATE);
    assert_keys(r.data(), &ACTION_KEYS);

    let r = s
        .raw(Method::POST, "/v1/actions", b"{\"name\": ".to_vec())
        .await;
    r.expect_error(400, "invalid_json");

    // Nothing was stored by the failures.
    let r = s.get("/v1/actions").await;
    assert_eq!(r.body["pagination"]["total"], 1);
}

/// An expected `(field, code)` pair of `details.errors`.
type FieldCode = (&'static str, &'static str);

#[tokio::test]
async fn params_failing_the_schema_are_400_invalid_params() {
    let s = Server::start().await;
    let cases: Vec<(&str, Value, Vec<FieldCode>)> = vec![
        (
            "devices.tap",
            json!({}),
            vec![("params.x", "required"), ("params.y", "required")],
        ),
        (
            "devices.tap",
            json!({"x": -1, "y": "high", "z": 1}),
            vec![
                ("params.x", "invalid_value"),
                ("params.y", "invalid_type"),
                ("params.z", "not_allowed"),
            ],
        ),
        (
            "devices.tap",
            json!({"x": 1.5, "y": 2}),
            vec![("params.x", "invalid_type")],
        ),
        (
            "devices.tap",
            json!({"x": 1, "y": 2, "deviceId": "abc"}),
            vec![("params.deviceId", "not_allowed")],
        ),
        (
            "flow.wait",
            json!({"seconds": 86401}),
            vec![("params.seconds", "invalid_value")],
        ),
        (
            "tasks.run",
            json!({"task": "", "vpnCountry": "XX", "temperature": 3,
                   "credentials": [{"packageName": 1, "credentialNames": ["a"]}, {}]}),
            vec![
                ("params.credentials[0].packageName", "invalid_type"),
                ("params.credentials[1].credentialNames", "required"),
                ("params.credentials[1].packageName", "required"),
                ("params.task", "invalid_value"),
                ("params.temperature", "invalid_value"),
                ("params.vpnCountry", "invalid_value"),
            ],
        ),
        (
            "devices.key",
            json!({"key": "jump"}),
            vec![("params.key", "invalid_value")],
        ),
        (
            "webhooks.send",
            json!({"webhookId": "not-a-uuid", "payload": []}),
            vec![
                ("params.payload", "invalid_type"),
                ("params.webhookId", "invalid_value"),
            ],
        ),
        (
            "flow.for_each",
            json!({"items": 3, "itemVariable": "loop", "maxIterations": 1001}),
            vec![
                ("params.itemVariable", "reserved_key"),
                ("params.items", "invalid_type"),
                ("params.maxIterations", "invalid_value"),
            ],
        ),
        (
            "devices.type",
            json!({"text": "t".repeat(10001)}),
            vec![("params.text", "too_long")],
        ),
    ];
    for (method, params, want) in cases {
        let r = s
            .post(
                "/v1/actions",
                json!({"catalogEntryId": catalog_id(method), "name": "n", "params": params}),
            )
            .await;
        r.expect_error(400, "invalid_params");
        let errors = r.body["details"]["errors"].as_array().unwrap();
        let mut got: Vec<(String, String)> = errors
            .iter()
            .map(|e| {
                assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
                (
                    e["field"].as_str().unwrap().to_string(),
                    e["code"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        got.sort();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(f, c)| (f.to_string(), c.to_string()))
            .collect();
        assert_eq!(got, want, "{method} {params}");
    }
    // Nothing stored.
    let r = s.get("/v1/actions").await;
    assert_eq!(r.body["pagination"]["total"], 0);

    // PATCH re-validates the replacement params and leaves the action unchanged on failure.
    let id = create(&s, "devices.tap", "tap", json!({"x": 1, "y": 2})).await;
    let r = s
        .patch(
            &format!("/v1/actions/{id}"),
            json!({"name": "renamed", "params": {"x": 1}}),
        )
        .await;
    r.expect_error(400, "invalid_params");
    assert_eq!(r.error_fields(), ["params.y"]);
    let r = s
        .patch(
            &format!("/v1/actions/{id}"),
            json!({"params": {"x": 1, "y": 1, "deviceId": "d"}}),
        )
        .await;
    r.expect_error(400, "invalid_params");
    assert_eq!(r.error_fields(), ["params.deviceId"]);
    let r = s.get(&format!("/v1/actions/{id}")).await;
    assert_eq!(r.data()["name"], "tap");
    assert_eq!(r.data()["params"], json!({"x": 1, "y": 2}));
    // Shape errors of the PATCH body are 422.
    let r = s
        .patch(
            &format!("/v1/actions/{id}"),
            json!({"name": "", "description": 1, "params": "x"}),
        )
        .await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_fields(), ["name", "description", "params"]);
    let r = s
        .patch(&format!("/v1/actions/{id}"), json!({"name": null}))
        .await;
    r.expect_error(422, "validation_failed");
}

#[tokio::test]
async fn templates_satisfy_any_constraint() {
    let s = Server::start().await;
    let cases = [
        (
            "devices.tap",
            json!({"x": "{{event.payload.x}}", "y": "{{ event.payload.y }}"}),
        ),
        (
            "devices.swipe",
            json!({"startX": "{{a}}", "startY": 0, "endX": 10, "endY": "{{steps.find.body.y}}", "durationMs": "{{b}}"}),
        ),
        ("devices.key", json!({"key": "{{event.payload.key}}"})),
        ("flow.wait", json!({"seconds": "{{event.payload.delay}}"})),
        ("flow.for_each", json!({"items": "{{event.payload.rows}}"})),
        ("flow.if", json!({"condition": "{{event.payload.cond}}"})),
        (
            "tasks.run",
            json!({"task": "Say {{event.payload.name}}", "vpnCountry": "{{flow.name}}",
                             "reasoning": "{{event.payload.reasoning}}",
                             "apps": ["{{event.payload.app}}"],
                             "credentials": [{"packageName": "a", "credentialNames": "{{x}}"}]}),
        ),
        (
            "webhooks.send",
            json!({"webhookId": "{{event.payload.hook}}", "payload": "{{event.payload}}"}),
        ),
    ];
    for (method, params) in cases {
        let r = s
            .post(
                "/v1/actions",
                json!({"catalogEntryId": catalog_id(method), "name": method, "params": params}),
            )
            .await;
        r.expect(201).schema(CREATE);
        assert_eq!(r.data()["params"], params, "stored as sent");
    }
    // A template does not excuse a missing required key, an unknown key or deviceId.
    let r = s
        .post(
            "/v1/actions",
            json!({"catalogEntryId": catalog_id("devices.tap"), "name": "t",
                   "params": {"x": "{{event.payload.x}}", "deviceId": "{{event.deviceId}}"}}),
        )
        .await;
    r.expect_error(400, "invalid_params");
    assert_eq!(sorted(r.error_fields()), ["params.deviceId", "params.y"]);
    // An unclosed token is plain text, checked like any string.
    let r = s
        .post(
            "/v1/actions",
            json!({"catalogEntryId": catalog_id("devices.tap"), "name": "t",
                   "params": {"x": "{{event.payload.x", "y": 1}}),
        )
        .await;
    r.expect_error(400, "invalid_params");
    assert_eq!(r.error_fields(), ["params.x"]);
}

#[tokio::test]
async fn list_filters_search_order_and_pages() {
    let s = Server::start().await;
    let a = create(&s, "devices.tap", "Bravo tap", json!({"x": 1, "y": 1})).await;
    let b = create(&s, "flow.wait", "alpha wait", json!({"seconds": 1})).await;
    let r = s
        .post(
            "/v1/actions",
            json!({"catalogEntryId": catalog_id("webhooks.send"), "name": "Charlie",
                   "description": "Notify the ÜBER team",
                   "params": {"webhookId": "0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87"}}),
        )
        .await;
    r.expect(201);
    let c = r.id();
    let d = create(&s, "tasks.run", "delta", json!({"task": "t"})).await;
    // Make `a` the most recently updated.
    s.patch(
        &format!("/v1/actions/{a}"),
        json!({"description": "50% off_*"}),
    )
    .await
    .expect(200);

    fn ids(r: &common::Resp) -> Vec<String> {
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    }

    let r = s.get("/v1/actions").await;
    r.expect(200).schema(LIST);
    assert_keys(&r.body, &["items", "pagination"]);
    for item in r.body["items"].as_array().unwrap() {
        assert_keys(item, &ACTION_KEYS);
    }
    assert_eq!(
        ids(&r),
        [d.as_str(), c.as_str(), b.as_str(), a.as_str()],
        "createdAt desc by default"
    );
    let r = s.get("/v1/actions?orderByDirection=asc").await;
    assert_eq!(ids(&r), [a.as_str(), b.as_str(), c.as_str(), d.as_str()]);
    let r = s.get("/v1/actions?orderBy=name&orderByDirection=asc").await;
    r.expect(200).schema(LIST);
    assert_eq!(
        ids(&r),
        [a.as_str(), c.as_str(), b.as_str(), d.as_str()],
        "byte order: upper case first"
    );
    let r = s.get("/v1/actions?orderBy=updatedAt").await;
    assert_eq!(ids(&r)[0], a);

    let r = s.get("/v1/actions?service=tasks_api,webhooks").await;
    r.expect(200).schema(LIST);
    assert_eq!(ids(&r), [d.as_str(), c.as_str(), b.as_str()]);
    let r = s
        .get("/v1/actions?service=devices_api&service=integrations_api")
        .await;
    assert_eq!(ids(&r), [a.as_str()]);

    // Search: case-insensitive substring over name and description; wildcards are literal.
    let r = s.get("/v1/actions?search=TAP").await;
    r.expect(200).schema(LIST);
    assert_eq!(ids(&r), [a.as_str()]);
    let r = s.get("/v1/actions?search=%C3%BCber").await;
    assert_eq!(
        ids(&r),
        [c.as_str()],
        "matches the description, Unicode folded"
    );
    let r = s.get("/v1/actions?search=50%25").await;
    assert_eq!(ids(&r), [a.as_str()]);
    let r = s.get("/v1/actions?search=%25").await;
    assert_eq!(ids(&r), [a.as_str()], "% is literal");
    let r = s.get("/v1/actions?search=_").await;
    assert_eq!(ids(&r), [a.as_str()], "_ is literal");
    let r = s.get("/v1/actions?search=zzz").await;
    assert_eq!(r.body["items"], json!([]));
    assert_eq!(r.body["pagination"]["total"], 0);
    let r = s.get("/v1/actions?search=").await;
    assert_eq!(r.body["pagination"]["total"], 4, "empty search = absent");
    let r = s
        .get("/v1/actions?search=ALPHA&service=tasks_api,devices_api")
        .await;
    assert_eq!(ids(&r), [b.as_str()], "filters combine");

    // Pagination edges.
    let r = s.get("/v1/actions?pageSize=1&page=2").await;
    r.expect(200).schema(LIST);
    assert_eq!(ids(&r), [c.as_str()]);
    assert_eq!(
        r.body["pagination"],
        json!({"page": 2, "pageSize": 1, "total": 4, "pages": 4, "hasNext": true, "hasPrev": true})
    );
    let r = s.get("/v1/actions?pageSize=100").await;
    assert_eq!(ids(&r).len(), 4);
    assert_eq!(r.body["pagination"]["pages"], 1);
    let r = s
        .get("/v1/actions?pageSize=3&page=2&orderByDirection=asc")
        .await;
    assert_eq!(ids(&r), [d.as_str()]);
    let r = s.get("/v1/actions?page=3&pageSize=2").await;
    r.expect(200).schema(LIST);
    assert_eq!(r.body["items"], json!([]));
    assert_eq!(
        r.body["pagination"],
        json!({"page": 3, "pageSize": 2, "total": 4, "pages": 2, "hasNext": false, "hasPrev": true})
    );

    // Invalid query values: every problem reported.
    let r = s
        .get("/v1/actions?orderBy=id&orderByDirection=up&service=x&pageSize=0")
        .await;
    r.expect_error(422, "validation_failed");
    assert_eq!(
        sorted(r.error_fields()),
        ["orderBy", "orderByDirection", "pageSize", "service"]
    );
}

#[tokio::test]
async fn actions_are_per_owner() {
    let s = Server::start().await;
    let id = create(&s, "flow.wait", "mine", json!({"seconds": 1})).await;
    let other = |method: Method, path: String, body: Option<Value>| {
        let s = &s;
        async move {
            s.call_as(&s.other_key, method, &path, body.as_ref(), &[])
                .await
        }
    };
    other(Method::GET, format!("/v1/actions/{id}"), None)
        .await
        .expect_error(404, "not_found");
    other(
        Method::PATCH,
        format!("/v1/actions/{id}"),
        Some(json!({"name": "x"})),
    )
    .await
    .expect_error(404, "not_found");
    other(Method::DELETE, format!("/v1/actions/{id}"), None)
        .await
        .expect_error(404, "not_found");
    let r = other(Method::GET, "/v1/actions".to_string(), None).await;
    r.expect(200).schema(LIST);
    assert_eq!(r.body["items"], json!([]));
    assert_eq!(r.body["pagination"]["total"], 0);
    // The catalog is global.
    let r = other(Method::GET, "/v1/action-catalog".to_string(), None).await;
    r.expect(200).schema(LIST_CATALOG);
    assert_eq!(r.body["pagination"]["total"], 14);
    // Still there for its owner.
    s.get(&format!("/v1/actions/{id}")).await.expect(200);
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404() {
    let s = Server::start().await;
    let unknown = uuid::Uuid::new_v4().to_string();
    for path in [
        format!("/v1/actions/{unknown}"),
        "/v1/actions/abc".to_string(),
        format!("/v1/actions/{}", unknown.replace('-', "")),
    ] {
        let r = s.get(&path).await;
        r.expect_error(404, "not_found");
        let raw = path.rsplit('/').next().unwrap();
        assert!(
            r.body["error"].as_str().unwrap().contains(raw),
            "message names the id: {}",
            r.text
        );
        assert_eq!(r.body["details"]["id"], raw);
        s.patch(&path, json!({"name": "x"}))
            .await
            .expect_error(404, "not_found");
        s.delete(&path).await.expect_error(404, "not_found");
    }
}

#[tokio::test]
async fn every_route_needs_a_key() {
    let s = Server::start().await;
    let id = create(&s, "flow.wait", "w", json!({"seconds": 1})).await;
    let entry = catalog_id("flow.wait");
    let routes: [(Method, String); 9] = [
        (Method::GET, "/v1/action-catalog".into()),
        (Method::GET, format!("/v1/action-catalog/{entry}")),
        (Method::GET, "/v1/actions/services".into()),
        (Method::GET, "/v1/actions/services/tasks_api/methods".into()),
        (Method::GET, "/v1/actions".into()),
        (Method::POST, "/v1/actions".into()),
        (Method::GET, format!("/v1/actions/{id}")),
        (Method::PATCH, format!("/v1/actions/{id}")),
        (Method::DELETE, format!("/v1/actions/{id}")),
    ];
    for (method, path) in routes {
        for key in ["", "dr_sk_nope"] {
            let r = s
                .call_as(key, method.clone(), &path, Some(&json!({})), &[])
                .await;
            r.expect_error(401, "unauthorized");
        }
    }
    // The action survived the unauthenticated DELETE.
    s.get(&format!("/v1/actions/{id}")).await.expect(200);
}

/// `DELETE` refuses while a non-archived flow binds the action. Needs the flows API; until
/// that route exists this test only checks the unbound delete.
#[tokio::test]
async fn delete_in_use_is_409_with_flow_ids() {
    let s = Server::start().await;
    let id = create(&s, "flow.wait", "w", json!({"seconds": 1})).await;
    let trigger = s
        .post(
            "/v1/triggers",
            json!({"activation": "custom", "name": "manual"}),
        )
        .await;
    if route_missing(&trigger) {
        eprintln!("skipping the in-use half: POST /triggers is not served yet");
        s.delete(&format!("/v1/actions/{id}")).await.expect(200);
        return;
    }
    trigger.expect(201);
    let flow = s
        .post(
            "/v1/flows",
            json!({"name": "f", "triggerId": trigger.id(),
                   "actions": [{"actionId": id, "position": 0}]}),
        )
        .await;
    if route_missing(&flow) {
        eprintln!("skipping the in-use half: POST /flows is not served yet");
        s.delete(&format!("/v1/actions/{id}")).await.expect(200);
        return;
    }
    flow.expect(201);
    let flow_id = flow.id();
    let r = s.delete(&format!("/v1/actions/{id}")).await;
    r.expect_error(409, "in_use");
    assert_eq!(r.body["details"]["flowIds"], json!([flow_id]));
    s.get(&format!("/v1/actions/{id}")).await.expect(200);
    // Archiving the flow releases the action.
    s.delete(&format!("/v1/flows/{flow_id}")).await.expect(200);
    let r = s.delete(&format!("/v1/actions/{id}")).await;
    r.expect(200).schema(DELETE);
    assert_eq!(r.body["message"], format!("Action {id} deleted"));
}

/// A route another part of the server does not serve yet (not an error of this module).
fn route_missing(r: &common::Resp) -> bool {
    r.status.as_u16() == 404
        && r.body["error"]
            .as_str()
            .is_some_and(|m| m.starts_with("No route"))
        || r.status.as_u16() == 405
}
