//! Flows and their action trees (§3.5, §3.6, §5.9, §5.18, §5.19).

mod common;

use common::{Resp, Server, assert_keys};
use reqwest::Method;
use serde_json::{Value, json};

const FLOW_KEYS: [&str; 32] = [
    "id",
    "name",
    "description",
    "triggerId",
    "deviceIds",
    "agentId",
    "lifecycleStatus",
    "enabled",
    "archivedAt",
    "status",
    "consecutiveFailures",
    "lastFailureAt",
    "lastFailureCode",
    "blockedAt",
    "lastTriggeredAt",
    "healthMonitoringEnabled",
    "selfHealingEnabled",
    "selfHealingMaxAttempts",
    "cooldownSeconds",
    "cooldownScope",
    "notifyOnSuccess",
    "notifyOnFailure",
    "notifyWebhookId",
    "recordingPolicy",
    "recordingEnabled",
    "delivery",
    "templateResolutionVersion",
    "ownerId",
    "createdBy",
    "userId",
    "createdAt",
    "updatedAt",
];

const NODE_KEYS: [&str; 11] = [
    "id",
    "flowId",
    "actionId",
    "parentFlowActionId",
    "position",
    "key",
    "nameOverride",
    "overrides",
    "continueOnError",
    "recordingEnabled",
    "createdAt",
];

const CREATE: &str = "workflows.flow_create_response.FlowCreateResponse";
const LIST: &str = "workflows.flow_list_response.FlowListResponse";
const GET: &str = "workflows.flow_retrieve_response.FlowRetrieveResponse";
const UPDATE: &str = "workflows.flow_update_response.FlowUpdateResponse";
const DELETE: &str = "workflows.flow_delete_response.FlowDeleteResponse";
const CLONE: &str = "workflows.flow_clone_response.FlowCloneResponse";
const CAPACITY: &str = "workflows.flow_capacity_response.FlowCapacityResponse";
const UNBLOCK: &str = "workflows.flow_unblock_response.FlowUnblockResponse";
const REPAIRS: &str = "workflows.flow_list_repairs_response.FlowListRepairsResponse";
const DELIVERY: &str = "workflows.flow_delivery_options_response.FlowDeliveryOptionsResponse";
const NODES: &str = "workflows.flows.action_list_response.ActionListResponse";
const ADD: &str = "workflows.flows.action_add_response.ActionAddResponse";
const REMOVE: &str = "workflows.flows.action_remove_response.ActionRemoveResponse";
const REPLACE: &str = "workflows.flows.action_replace_response.ActionReplaceResponse";
const ERROR_KEYS: [&str; 3] = ["error", "code", "details"];

/// Ids of the objects a flow refers to, all owned by the default owner.
struct Fx {
    trigger: String,
    wait: String,
    each: String,
    cond: String,
    tap: String,
}

async fn fixtures(s: &Server) -> Fx {
    fixtures_as(s, &s.key).await
}

async fn fixtures_as(s: &Server, key: &str) -> Fx {
    let cat = s
        .call_as(
            key,
            Method::GET,
            "/v1/action-catalog?pageSize=100",
            None,
            &[],
        )
        .await;
    cat.expect(200);
    let entry = |method: &str| {
        cat.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["method"] == method)
            .unwrap_or_else(|| panic!("catalog has {method}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let trigger = create_trigger(s, key, "t").await;
    let wait = create_action(s, key, &entry("flow.wait"), "Wait", json!({"seconds": 1})).await;
    let each = create_action(
        s,
        key,
        &entry("flow.for_each"),
        "Each item",
        json!({"items": [1, 2]}),
    )
    .await;
    let cond = create_action(
        s,
        key,
        &entry("flow.if"),
        "Check",
        json!({"condition": {"field": "x", "op": "eq", "value": 1}}),
    )
    .await;
    let tap = create_action(
        s,
        key,
        &entry("devices.tap"),
        "Tap",
        json!({"x": 1, "y": 2}),
    )
    .await;
    Fx {
        trigger,
        wait,
        each,
        cond,
        tap,
    }
}

async fn create_trigger(s: &Server, key: &str, name: &str) -> String {
    let r = s
        .call_as(
            key,
            Method::POST,
            "/v1/triggers",
            Some(&json!({"activation": "custom", "name": name})),
            &[],
        )
        .await;
    r.expect(201);
    r.id()
}

async fn create_action(s: &Server, key: &str, entry: &str, name: &str, params: Value) -> String {
    let r = s
        .call_as(
            key,
            Method::POST,
            "/v1/actions",
            Some(&json!({"catalogEntryId": entry, "name": name, "params": params})),
            &[],
        )
        .await;
    r.expect(201);
    r.id()
}

async fn create_device(s: &Server, address: &str) -> String {
    let r = s
        .post(
            "/v1/devices",
            json!({"name": address, "provider": "adb", "address": address}),
        )
        .await;
    r.expect(201);
    r.id()
}

/// Creates a flow with one Wait step and extra settings merged in.
async fn create_flow(s: &Server, fx: &Fx, extra: Value) -> Resp {
    let mut body = json!({
        "name": "Flow",
        "triggerId": fx.trigger,
        "actions": [{"actionId": fx.wait, "position": 0}],
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = s.post("/v1/flows", body).await;
    r.expect(201).schema(CREATE);
    assert_keys(r.data(), &FLOW_KEYS);
    r
}

/// A 422 with exactly these (field, code) pairs, in any order.
#[track_caller]
fn assert_field_errors(r: &Resp, want: &[(&str, &str)]) {
    r.expect_error(422, "validation_failed");
    assert_keys(&r.body, &ERROR_KEYS);
    let mut have: Vec<(String, String)> =
        r.error_fields().into_iter().zip(r.error_codes()).collect();
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|(f, c)| (f.to_string(), c.to_string()))
        .collect();
    have.sort();
    want.sort();
    assert_eq!(have, want, "body: {}", r.text);
}

async fn list(s: &Server, query: &str) -> Resp {
    s.get(&format!("/v1/flows{query}")).await
}

fn names(r: &Resp) -> Vec<String> {
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect()
}

fn keys_of(r: &Resp) -> Vec<String> {
    r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["key"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn create_applies_defaults_and_reads_back() {
    let s = Server::start().await;
    let fx = fixtures(&s).await;
    let r = create_flow(&s, &fx, json!({})).await;
    let f = r.data().clone();
    let id = r.id();
    for (k, v) in [
        ("name", json!("Flow")),
        ("description", json!(null)),
        ("triggerId", json!(fx.trigger)),
        ("deviceIds", json!([])),
        ("agentId", json!(null)),
        ("lifecycleStatus", json!("enabled")),
        ("enabled", json!(true)),
        ("archivedAt", json!(null)),
        ("status", json!("healthy")),
        ("consecutiveFailures", json!(0)),
        ("lastFailureAt", json!(null)),
        ("lastFailureCode", json!(null)),
        ("blockedAt", json!(null)),
        ("lastTriggeredAt", json!(null)),
        ("healthMonitoringEnabled", json!(true)),
        ("selfHealingEnabled", json!(false)),
        ("selfHealingMaxAttempts", json!(3)),
        ("cooldownSeconds", json!(null)),
        ("cooldownScope", json!("flow")),
        ("notifyOnSuccess", json!(false)),
        ("notifyOnFailure", json!(false)),
        ("notifyWebhookId", json!(null)),
        ("recordingPolicy", json!({"mode": "off"})),
        ("recordingEnabled", json!(false)),
        ("delivery", json!(null)),
        ("templateResolutionVersion", json!(3)),
        ("ownerId", json!("default")),
        ("userId", json!("default")),
    ] {
        assert_eq!(f[k], v, "{k}");
    }
    assert!(f["createdBy"].is_string());
    assert_eq!(f["createdAt"], f["updatedAt"]);

    // Root path and upper-case ids read the same flow; the flow does not embed its actions.
    let g = s.get(&format!("/flows/{}", id.to_uppercase())).await;
    g.expect(200).schema(GET);
    assert_eq!(g.data(), &f);

    let n = s.get(&format!("/v1/flows/{id}/actions")).await;
    n.expect(200).schema(NODES);
    let nodes = n.body["data"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_keys(&nodes[0], &NODE_KEYS);
    assert_eq!(nodes[0]["key"], "wait");
    assert_eq!(nodes[0]["flowId"], id.as_str());
    assert_eq!(nodes[0]["actionId"], fx.wait.as_str());
    assert_eq!(nodes[0]["parentFlowActionId"], json!(null));
    assert_eq!(nodes[0]["nameOverride"], json!(null));
    assert_eq!(nodes[0]["overrides"], json!(null));
    assert_eq!(nodes[0]["continueOnError"], false);
    assert_eq!(nodes[0]["recordingEnabled"], false);
}

#[tokio::test]
async fn create_stores_every_setting_and_the_tree() {
    let s = Server::start().await;
    let fx = fixtures(&s).await;
    let d1 = create_device(&s, "a1").await;
    let d2 = create_device(&s, "a2").await;
    let r = create_flow(
        &s,
        &fx,
        json!({
            "name": "Everything",
            "description": "all settings",
            "deviceIds": [d2, d1],
            "enabled": false,
            "cooldownSeconds": 31536000,
            "cooldownScope": "device",
            "notifyOnSuccess": true,
            "notifyOnFailure": true,
            "notifyWebhookId": null,
            "healthMonitoringEnabled": false,
            "selfHealingEnabled": true,
            "selfHealingMaxAttempts": 10,
            "recordingPolicy": {"mode": "selected_steps"},
            "recordingEnabled": false,
            "delivery": {"destination": "one_drive", "folder": "/Runs",
                         "recording": {"filename": "run.mp4"}, "screenshots": {"all": true}},
            "actions": [
                {"actionId": fx.each, "position": 20, "key": "loop_items", "children": [
                    {"actionId": fx.tap, "position": 5, "nameOverride": "Tap OK",
                     "overrides": {"params": {"x": 9}}, "continueOnError": true,
                     "recordingEnabled": true},
                    {"actionId": fx.wait, "position": 1},
                ]},
                {"actionId": fx.wait, "position": 3},
                {"actionId": fx.cond, "position": 7, "children": []},
            ],
        }),
    )
    .await;
    let f = r.data();
    assert_eq!(f["description"], "all settings");
    assert_eq!(f["deviceIds"], json!([d2, d1]));
    assert_eq!(f["enabled"], false);
    assert_eq!(f["lifecycleStatus"], "disabled");
    assert_eq!(f["cooldownSeconds"], 31536000);
    assert_eq!(f["cooldownScope"], "device");
    assert_eq!(f["notifyOnSuccess"], true);
    assert_eq!(f["notifyOnFailure"], true);
    assert_eq!(f["healthMonitoringEnabled"], false);
    assert_eq!(f["selfHealingEnabled"], true);
    assert_eq!(f["selfHealingMaxAttempts"], 10);
    assert_eq!(
        f["recordingPolicy"],
        json!({"mode": "selected_steps"}),
        "recordingPolicy wins over recordingEnabled"
    );
    assert_eq!(f["recordingEnabled"], true);
    assert_eq!(
        f["delivery"],
        json!({"destination": "one_drive", "folder": "/Runs",
               "recording": {"filename": "run.mp4"}, "screenshots": {"all": true}})
    );

    // Flat, depth-first, by position: wait(3), check(7), loop(20) + children by position.
    // Omitted keys are derived in body order, so the loop's child claimed `wait` first.
    let n = s.get(&format!("/v1/flows/{}/actions", r.id())).await;
    n.expect(200).schema(NODES);
    assert_eq!(
        keys_of(&n),
        ["wait_2", "check", "loop_items", "wait", "tap-ok"]
    );
    let nodes = n.body["data"].as_array().unwrap();
    let positions: Vec<i64> = nodes
        .iter()
        .map(|n| n["position"].as_i64().unwrap())
        .collect();
    assert_eq!(positions, [3, 7, 20, 1, 5]);
    let parent = nodes[2]["id"].clone();
    assert_eq!(nodes[3]["parentFlowActionId"], parent);
    assert_eq!(nodes[4]["parentFlowActionId"], parent);
    assert_eq!(nodes[4]["nameOverride"], "Tap OK");
    assert_eq!(nodes[4]["overrides"], json!({"params": {"x": 9}}));
    assert_eq!(nodes[4]["continueOnError"], true);
    assert_eq!(nodes[4]["recordingEnabled"], true);

    // The deprecated flag alone maps to a mode.
    let r = create_flow(&s, &fx, json!({"recordingEnabled": true})).await;
    assert_eq!(r.data()["recordingPolicy"], json!({"mode": "flow"}));
    assert_eq!(r.data()["recordingEnabled"], true);
    let r = create_flow(
        &s,
        &fx,
        json!({"recordingPolicy": {"mode": "off"}, "recordingEnabled": true}),
    )
    .await;
    assert_eq!(r.data()["recordingPolicy"], json!({"mode": "off"}));
    assert_eq!(r.data()["recordingEnabled"], false);
    let r = create_flow(
        &s,
        &fx,
        json!({"delivery": {"destination": "mobilerun", "recording": null}, "cooldownSeconds": 0}),
    )
    .await;
    assert_eq!(
        r.data()["delivery"],
        json!({"destination": "mobilerun", "folder": null, "recording": null, "screenshots": null})
    );
    assert_eq!(r.data()["cooldownSeconds"], 0);
}

#[tokio::test]
async fn create_validates_every_rule() {
    let s = Server::start().await;
    let fx = fixtures(&s).await;
    let foreign = fixtures_as(&s, &s.other_key).await;
    let device = create_device(&s, "d").await;
    let missing = "0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87";
    let post = |body: Value| s.post("/v1/flows", body);

    assert_field_errors(
        &post(json!({})).await,
        &[
            ("name", "required"),
            ("triggerId", "required"),
            ("actions", "required"),
        ],
    );
    let r = post(json!([1])).await;
    assert_field_errors(&r, &[("body", "invalid_type")]);
    s.raw(Method::POST, "/v1/flows", b"{\"name\":".to_vec())
        .await
        .expect_error(400, "invalid_json");

    let base = |extra: Value| {
        let mut b = json!({
            "name": "f",
            "triggerId": fx.trigger,
            "actions": [{"actionId": fx.wait, "position": 0}],
        });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };

    // Settings, all reported together.
    let r = post(base(json!({
        "name": "x".repeat(201),
        "description": "d".repeat(2001),
        "triggerId": foreign.trigger,
        "deviceIds": [device, missing, device],
        "enabled": "yes",
        "cooldownSeconds": 31536001,
        "cooldownScope": "global",
        "notifyOnSuccess": 1,
        "notifyWebhookId": missing,
        "selfHealingMaxAttempts": 11,
        "recordingPolicy": {"mode": "always"},
        "delivery": {"destination": "mobilerun", "folder": "/x",
                     "recording": {"filename": "f".repeat(256)}},
    })))
    .await;
    assert_field_errors(
        &r,
        &[
            ("name", "too_long"),
            ("description", "too_long"),
            ("triggerId", "unknown_reference"),
            ("deviceIds[2]", "duplicate"),
            ("enabled", "invalid_type"),
            ("cooldownSeconds", "invalid_value"),
            ("cooldownScope", "invalid_value"),
            ("notifyOnSuccess", "invalid_type"),
            ("notifyWebhookId", "unknown_reference"),
            ("selfHealingMaxAttempts", "invalid_value"),
            ("recordingPolicy.mode", "invalid_value"),
            ("delivery.folder", "not_allowed"),
            ("delivery.recording.filename", "too_long"),
        ],
    );
    let r = post(base(json!({
        "name": "",
        "triggerId": missing,
        "deviceIds": [missing],
        "cooldownSeconds": -1,
        "selfHealingMaxAttempts": 0,
        "recordingPolicy": {},
        "delivery": {"destination": "dropbox", "recording": {"filename": ""}},
    })))
    .await;
    assert_field_errors(
        &r,
        &[
            ("name", "invalid_value"),
            ("triggerId", "unknown_reference"),
            ("deviceIds[0]", "unknown_reference"),
            ("cooldownSeconds", "invalid_value"),
            ("selfHealingMaxAttempts", "invalid_value"),
            ("recordingPolicy.mode", "required"),
            ("delivery.destination", "invalid_value"),
            ("delivery.recording.filename", "invalid_value"),
        ],
    );
    let r = post(base(
        json!({"triggerId": "nope", "cooldownSeconds": 1.5, "delivery": {}}),
    ))
    .await;
    assert_field_errors(
        &r,
        &[
            ("triggerId", "invalid_value"),
            ("cooldownSeconds", "invalid_type"),
            ("delivery.destination", "required"),
        ],
    );

    // The tree.
    let r = post(base(json!({"actions": []}))).await;
    assert_field_errors(&r, &[("actions", "invalid_value")]);
    let r = post(base(json!({"actions": {}}))).await;
    assert_field_errors(&r, &[("actions", "invalid_type")]);
    let r = post(base(json!({"actions": [
        {"actionId": foreign.wait, "position": 0},
        {"actionId": missing, "position": 1},
        {"actionId": fx.wait, "position": 1, "key": "Bad"},
        {"actionId": fx.wait, "position": 2, "key": "trigger"},
        {"actionId": fx.wait, "position": 3, "key": "__x"},
        {"actionId": fx.tap, "position": 4, "key": "same",
         "children": [{"actionId": fx.wait, "position": 0}]},
        {"actionId": fx.each, "position": 5, "children": [
            {"actionId": fx.wait, "position": 0, "key": "same"},
            {"actionId": fx.cond, "position": 0,
             "children": [{"actionId": fx.wait, "position": 0}]},
        ]},
        {"position": -1, "nameOverride": "", "overrides": {"params": []},
         "continueOnError": null, "recordingEnabled": "no"},
    ]})))
    .await;
    assert_field_errors(
        &r,
        &[
            ("actions[0].actionId", "unknown_reference"),
            ("actions[1].actionId", "unknown_reference"),
            ("actions[2].position", "duplicate"),
            ("actions[2].key", "invalid_key"),
            ("actions[3].key", "reserved_key"),
            ("actions[4].key", "reserved_key"),
            ("actions[5].children", "children_not_allowed"),
            ("actions[6].children[0].key", "duplicate"),
            ("actions[6].children[1].position", "duplicate"),
            ("actions[6].children[1].children", "too_deep"),
            ("actions[7].actionId", "required"),
            ("actions[7].position", "invalid_value"),
            ("actions[7].nameOverride", "invalid_value"),
            ("actions[7].overrides.params", "invalid_type"),
            ("actions[7].continueOnError", "invalid_type"),
            ("actions[7].recordingEnabled", "invalid_type"),
        ],
    );
    let too_many: Vec<Value> = (0..201)
        .map(|i| json!({"actionId": fx.wait, "position": i}))
        .collect();
    let r = post(base(json!({"actions": too_many}))).await;
    assert_field_errors(&r, &[("actions", "invalid_value")]);
    let max: Vec<Value> = (0..200)
        .map(|i| json!({"actionId": fx.wait, "position": i}))
        .collect();
    post(base(json!({"actions": max}))).await.expect(201);

    // Only the last body created anything.
    let l = s.get("/v1/flows").await;
    l.expect(200).schema(LIST);
    assert_eq!(l.body["pagination"]["total"], 1);
}

#[tokio::test]
async fn list_filters_searches_orders_and_paginates() {
    let s = Server::start().await;
    let fx = fixtures(&s).await;
    let t2 = create_trigger(&s, &s.key, "second").await;
    let b = create_flow(
        &s,
        &fx,
        json!({"name": "beta", "description": "Needle in HAY"}),
    )
    .await;
    create_flow(&s, &fx, json!({"name": "alpha", "enabled": false})).await;
    create_flow(&s, &fx, json!({"name": "gamma", "triggerId": t2})).await;
    let archived = create_flow(&s, &fx, json!({"name": "archived"})).await;
    s.delete(&format!("/v1/flows/{}", archived.id()))
        .await
        .expect(200);
    let actor = b.data()["createdBy"].as_str().unwrap().to_string();

    let r = list(&s, "").await;
    r.expect(200).schema(LIST);
    assert_keys(&r.body, &["items", "pagination"]);
    for item in r.body["items"].as_array().unwrap() {
        assert_keys(item, &FLOW_KEYS);
    }
    assert_eq!(names(&r), ["gamma", "alpha", "beta"], "createdAt desc");
    assert_eq!(
        r.body["pagination"],
        json!({"page": 1, "pageSize": 20, "total": 3, "pages": 1, "hasNext": false, "hasPrev": false})
    );

    for (q, want) in [
        (
            "?orderBy=name&orderByDirection=asc",
            vec!["alpha", "beta", "gamma"],
        ),
        ("?orderBy=name", vec!["gamma", "beta", "alpha"]),
        (
            "?orderBy=createdAt&orderByDirection=asc",
            vec!["beta", "alpha", "gamma"],
        ),
        ("?enabled=false", vec!["alpha"]),
        ("?enabled=true&orderByDirection=asc", vec!["beta", "gamma"]),
        (&format!("?triggerId={t2}"), vec!["gamma"]),
        (&format!("?triggerId={}", fx.trigger), vec!["alpha", "beta"]),
        (
            "?status=healthy,failing&status=blocked",
            vec!["gamma", "alpha", "beta"],
        ),
        ("?status=blocked", vec![]),
        ("?agentId=unassigned", vec!["gamma", "alpha", "beta"]),
        ("?agentId=0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87", vec![]),
        ("?mine=true", vec!["gamma", "alpha", "beta"]),
        ("?mine=false", vec!["gamma", "alpha", "beta"]),
        (
            &format!("?createdBy={actor}"),
            vec!["gamma", "alpha", "beta"],
        ),
        ("?createdBy=someone-else", vec![]),
        ("?search=nEEDLE", vec!["beta"]),
        ("?search=AMM", vec!["gamma"]),
        ("?search=%25", vec![]),
        ("?search=", vec!["gamma", "alpha", "beta"]),
        ("?search=archived", vec![]),
    ] {
        let r = list(&s, q).await;
        r.expect(200).schema(LIST);
        assert_eq!(names(&r), want, "{q}");
        assert_eq!(r.body["pagination"]["total"], want.len(), "{q}");
    }

    // updatedAt moves with a PATCH.
    s.patch(
        &format!("/v1/flows/{}", b.id()),
        json!({"notifyOnSuccess": true}),
    )
    .await
    .expect(200);
    let r = list(&s, "?orderBy=updatedAt").await;
    assert_eq!(names(&r)[0], "beta");
    let r = list(&s, "?orderBy=updatedAt&orderByDirection=asc").await;
    assert_eq!(names(&r)[2], "beta");

    // Pagination edges.
    let r = list(&s, "?pageSize=1&page=2").await;
    r.expect(200).schema(LIST);
    assert_eq!(names(&r), ["alpha"]);
    assert_eq!(
        r.body["pagination"],
        json!({"page": 2, "pageSize": 1, "total": 3, "pages": 3, "hasNext": true, "hasPrev": true})
    );
    let r = list(&s, "?pageSize=100").await;
    assert_eq!(names(&r).len(), 3);
    assert_eq!(r.body["pagination"]["pages"], 1);
    let r = list(&s, "?pageSize=2&page=5").await;
    r.expect(200).schema(LIST);
    assert_eq!(r.body["items"], json!([]));
    assert_eq!(
        r.body["pagination"],
        json!({"page": 5, "pageSize": 2, "total": 3, "pages": 2, "hasNext": false, "hasPrev": true})
    );

    for (q, field) in [
        ("?pageSize=0", "pageSize"),
        ("?pageSize=101", "pageSize"),
        ("?page=0", "page"),
        ("?enabled=TRUE", "enabled"),
        ("?mine=1", "mine"),
        ("?status=healthy,sick", "status"),
        ("?agentId=agent-1", "agentId"),
        ("?triggerId=xyz", "triggerId"),
        ("?orderBy=status", "orderBy"),
        ("?orderByDirection=up", "orderByDirection"),
        ("?mine=true&createdBy=someone", "createdBy"),
    ] {
        let r = list(&s, q).await;
        r.expect_error(422, "validation_failed");
        assert_eq!(r.error_fields(), [field], "{q}");
    }

    // Another owner sees nothing.
    let r = s
        .call_as(&s.other_key, Method::GET, "/v1/flows", None, &[])
        .await;
    r.expect(200).schema(LIST);
    assert_eq!(r.body["pagination"]["total"], 0);
}

#[tokio::test]
async fn patch_changes_settings_only() {
    let s = Server::start().await;
    let fx = fixtures(&s).await;
    let d1 = create_device(&s, "p1").await;
    let t2 = create_trigger(&s, &s.key, "t2").await;
    let created = create_flow(&s, &fx, json!({"cooldownSeconds": 30})).await;
    let id = created.id();
    let url = format!("/v1/flows/{id}");

    let r = s
        .patch(
            &url,
            json!({
                "name": "Renamed",
                "description": "text",
                "triggerId": t2,
                "deviceIds": [d1],
                "cooldownSeconds": null,
                "cooldownScope": "device",
                "notifyOnFailure": true,
                "healthMonitoringEnabled": false,
                "selfHealingEnabled": true,
                "selfHealingMaxAttempts": 1,
                "recordingEnabled": true,
                "delivery": {"destination": "google_drive", "folder": "x"},
                "actions": [],
                "status": "blocked",
                "consecutiveFailures": 9,
                "templateResolutionVersion": 1,
            }),
        )
        .await;
    r.expect(200).schema(UPDATE);
    assert_keys(r.data(), &FLOW_KEYS);
    let f = r.data();
    assert_eq!(f["name"], "Renamed");
    assert_eq!(f["description"], "text");
    assert_eq!(f["triggerId"], t2.as_str());
    assert_eq!(f["deviceIds"], json!([d1]));
    assert_eq!(f["cooldownSeconds"], json!(null));
    assert_eq!(f["cooldownScope"], "device");
    assert_eq!(f["notifyOnFailure"], true);
    assert_eq!(f["healthMonitoringEnabled"], false);
    assert_eq!(f["selfHealingEnabled"], true);
    assert_eq!(f["selfHealingMaxAttempts"], 1);
    assert_eq!(f["recordingPolicy"], json!({"mode": "flow"}));
    assert_eq!(f["recordingEnabled"], true);
    assert_eq!(f["delivery"]["destination"], "google_drive");
    // Health, version and identity are not settings.
    assert_eq!(f["status"], "healthy");
    assert_eq!(f["consecutiveFailures"], 0);
    assert_eq!(f["templateResolutionVersion"], 3);
    assert_eq!(f["createdAt"], created.data()["createdAt"]);
    assert_ne!(f["updatedAt"], created.data()["updatedAt"]);
    let n = s.get(&format!("{url}/actions")).await;
    assert_eq!(keys_of(&n), ["wait"], "the tree is untouched");

    // Nullable fields clear; the deprecated flag keeps a recording mode or turns it off.
    let r = s
        .patch(
            &url,
            json!({"description": null, "delivery": null, "notifyWebhookId": null,
                   "recordingPolicy": {"mode": "selected_steps"}}),
        )
        .await;
    r.expect(200).schema(UPDATE);
    assert_eq!(r.data()["description"], json!(null));
    assert_eq!(r.data()["delivery"], json!(null));
    let r = s.patch(&url, json!({"recordingEnabled": true})).await;
    assert_eq!(r.data()["recordingPolicy"]["mode"], "selected_steps");
    let r = s.patch(&url, json!({"recordingEnabled": false})).await;
    assert_eq!(r.data()["recordingPolicy"]["mode"], "off");
    assert_eq!(r.data()["recordingEnabled"], false);

    // Two spellings of one switch.
    let r = s.patch(&url, json!({"lifecycleStatus": "disabled"})).await;
    r.expect(200).schema(UPDATE);
    assert_eq!(r.data()["enabled"], false);
    assert_eq!(r.data()["lifecycleStatus"], "disabled");
    let r = s.patch(&url, json!({"enabled": true})).await;
    assert_eq!(r.data()["lifecycleStatus"], "enabled");
    let r = s
        .patch(
            &url,
            json!({"enabled": false, "lifecycleStatus": "disabled"}),
        )
        .await;
    assert_eq!(r.data()["lifecycleStatus"], "disabled");
    let r = s
        .patch(
            &url,
            json!({"enabled": true, "lifecycleStatus": "disabled"}),
        )
        .await;
    assert_field_errors(&r, &[("lifecycleStatus", "invalid_value")]);
    let r = s.patch(&url, json!({"lifecycleStatus": "archived"})).await;
    assert_field_errors(&r, &[("lifecycleStatus", "not_allowed")]);
    let r = s.patch(&url, json!({"lifecycleStatus": "paused"})).await;
    assert_field_errors(&r, &[("lifecycleStatus", "invalid_value")]);

    let r = s
        .patch(
            &url,
            json!({"name": null, "triggerId": "0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87",
                   "deviceIds": ["0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87"],
                   "notifyWebhookId": "0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87",
                   "cooldownSeconds": 31536001, "selfHealingMaxAttempts": 0,
                   "delivery": {"destination": "mobilerun", "folder": "f"}}),
        )
        .await;
    assert_field_errors(
        &r,
        &[
            ("name", "invalid_type"),
            ("triggerId", "unknown_reference"),
            ("deviceIds[0]", "unknown_reference"),
            ("notifyWebhookId", "unknown_reference"),
            ("cooldownSeconds", "invalid_value"),
            ("selfHealingMaxAttempts", "invalid_value"),
            ("delivery.folder", "not_allowed"),
        ],
    );
    // Nothing of a rejected PATCH was applied; an empty PATCH changes nothing but updatedAt.
    let r = s.patch(&url, json!({})).await;
    r.expect(200).schema(UPDATE);
    assert_eq!(r.data()["name"], "Renamed");
    assert_eq!(r.data()["lifecycleStatus"], "disabled");
    let r = s.call(Method::PATCH, &url, None).await;
    r.expect(200).schema(UPDATE);
}

#[tokio::test]
async fn archive_hides_the_flow_and_paths_answer_404() {
    let s = Server::start().await;
    let fx = fixtures(&s).await;
    let id = create_flow(&s, &fx, json!({})).await.id();
    let other_id = create_flow(&s, &fx, json!({})).await.id();

    // Unauthenticated.
    for key in ["", "dr_sk_nope"] {
        s.call_as(key, Method::GET, "/v1/flows", None, &[])
            .await
            .expect_error(401, "unauthorized");
        s.call_as(key, Method::GET, &format!("/v1/flows/{id}"), None, &[])
            .await
            .expect_error(401, "unauthorized");
    }

    // Another owner cannot see or touch it.
    for (m, path) in [
        (Method::GET, format!("/v1/flows/{id}")),
        (Method::PATCH, format!("/v1/flows/{id}")),
        (Method::DELETE, format!("/v1/flows/{id}")),
        (Method::POST, format!("/v1/flows/{id}/clone")),
        (Method::POST, format!("/v1/flows/{id}/unblock")),
        (Method::GET, format!("/v1/flows/{id}/repairs")),
        (Method::GET, format!("/v1/flows/{id}/delivery-options")),
        (Method::GET, format!("/v1/flows/{id}/actions")),
        (Method::PUT, format!("/v1/flows/{id}/actions")),
        (Method::POST, format!("/v1/flows/{id}/actions")),
    ] {
        let r = s
            .call_as(&s.other_key, m.clone(), &path, Some(&json!({})), &[])
            .await;
        r.expect_error(404, "not_found");
        assert_keys(&r.body, &ERROR_KEYS);
        assert_eq!(
            r.body["details"],
            json!({"resource": "flow", "id": id}),
            "{m} {path}"
        );
    }

    let r = s.delete(&format!("/v1/flows/{id}")).await;
    r.expect(200).schema(DELETE);
    assert_keys(&r.body, &["message"]);
    assert_eq!(r.body["message"], format!("Flow {id} archived"));
    let again = s.delete(&format!("/flows/{}", id.to_uppercase())).await;
    again.expect(200).schema(DELETE);
    assert_eq!(again.body, r.body);

    let unknown = "0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87";
    for fid in [id.as_str(), unknown, "abc"] {
        for (m, path) in [
            (Method::GET, format!("/v1/flows/{fid}")),
            (Method::PATCH, format!("/v1/flows/{fid}")),
            (Method::POST, format!("/v1/flows/{fid}/clone")),
            (Method::POST, format!("/v1/flows/{fid}/unblock")),
            (Method::GET, format!("/v1/flows/{fid}/repairs")),
            (Method::GET, format!("/v1/flows/{fid}/delivery-options")),
            (Method::GET, format!("/v1/flows/{fid}/actions")),
            (Method::PUT, format!("/v1/flows/{fid}/actions")),
            (Method::POST, format!("/v1/flows/{fid}/actions")),
            (Method::DELETE, format!("/v1/flows/{fid}/actions/{unknown}")),
        ] {
            let r = s.call(m.clone(), &path, Some(&json!({}))).await;
            r.expect_error(404, "not_found");
            assert_eq!(
                r.body["error"],
                format!("Flow '{fid}' not found"),
                "{m} {path}"
            );
        }
    }
    for fid in [unknown, "abc"] {
        s.delete(&format!("/v1/flows/{fid}"))
            .await
            .expect_error(404, "not_found");
    }
    let l = s.get("/v1/flows").await;
    assert_eq!(l.body["pagination"]["total"], 1);
    assert_eq!(l.body["items"][0]["id"], other_id.as_str());
}

#[tokio::test]
async fn capacity_is_unlimited_by_default() {
    let s = Server::start().await;
    let r = s.get("/v1/flows/capacity").await;
    r.expect(200).schema(CAPACITY);
    assert_keys(r.data(), &["included", "remaining", "status"]);
    assert_eq!(
        r.data(),
        &json!({"included": 2147483647, "remaining": 2147483647, "status": "available"})
    );
    let fx = fixtures(&s).await;
    create_flow(&s, &fx, json!({})).await;
    let r = s.get("/flows/capacity?agentId=unassigned").await;
    r.expect(200).schema(CAPACITY);
    assert_eq!(r.data()["remaining"], 2147483646);
    s.get("/v1/flows/capacity?agentId=x")
        .await
        .expect_error(422, "validation_failed");
}

#[tokio::test]
async fn capacity_limit_blocks_create_and_clone_until_archive() {
    let s = Server::start_with(&["--routine-limit", "2"]).await;
    let fx = fixtures(&s).await;
    let r = s.get("/v1/flows/capacity").await;
    r.expect(200).schema(CAPACITY);
    assert_eq!(
        r.data(),
        &json!({"included": 2, "remaining": 2, "status": "available"})
    );
    let first = create_flow(&s, &fx, json!({})).await.id();
    s.post(&format!("/v1/flows/{first}/clone"), json!({}))
        .await
        .expect(201)
        .schema(CLONE);

    let r = s.get("/v1/flows/capacity").await;
    assert_eq!(
        r.data(),
        &json!({"included": 2, "remaining": 0, "status": "exhausted"})
    );
    // Another bucket is empty, another owner has its own count.
    let r = s
        .get("/v1/flows/capacity?agentId=0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87")
        .await;
    r.expect(200).schema(CAPACITY);
    assert_eq!(r.data()["remaining"], 2);
    let r = s
        .call_as(&s.other_key, Method::GET, "/v1/flows/capacity", None, &[])
        .await;
    assert_eq!(r.data()["remaining"], 2);

    let r = s
        .post(
            "/v1/flows",
            json!({"name": "x", "triggerId": fx.trigger,
                   "actions": [{"actionId": fx.wait, "position": 0}]}),
        )
        .await;
    r.expect_error(409, "capacity_exhausted");
    assert_keys(&r.body, &ERROR_KEYS);
    assert_eq!(r.body["details"], json!({"included": 2, "remaining": 0}));
    let r = s.post(&format!("/v1/flows/{first}/clone"), json!({})).await;
    r.expect_error(409, "capacity_exhausted");
    assert_eq!(r.body["details"], json!({"included": 2, "remaining": 0}));

    s.delete(&format!("/v1/flows/{first}")).await.expect(200);
    let r = s.get("/v1/flows/capacity").await;
    assert_eq!(
        r.data(),
        &json!({"included": 2, "remaining": 1, "status": "available"})
    );
    create_flow(&s, &fx, json!({})).await;
}

#[tokio::test]
async fn clone_copies_settings_and_tree() {
    let s = Server::start().await;
    let fx = fixtures(&s).await;
    let d1 = create_device(&s, "c1").await;
    let d2 = create_device(&s, "c2").await;
    let src = create_flow(
        &s,
        &fx,
        json!({
            "name": "Source",
            "description": "desc",
            "deviceIds": [d1],
            "cooldownSeconds": 5,
            "recordingPolicy": {"mode": "flow"},
            "delivery": {"destination": "mobilerun"},
            "actions": [
                {"actionId": fx.cond, "position": 4, "key": "gate", "children": [
                    {"actionId": fx.tap, "position": 2, "overrides": {"params": {"x": 3}}},
                ]},
                {"actionId": fx.wait, "position": 9, "nameOverride": "Pause"},
            ],
        }),
    )
    .await;
    let src_id = src.id();
    let r = s
        .post(&format!("/v1/flows/{src_id}/clone"), json!({}))
        .await;
    r.expect(201).schema(CLONE);
    assert_keys(r.data(), &FLOW_KEYS);
    let c = r.data();
    assert_ne!(c["id"], src.data()["id"]);
    assert_eq!(c["name"], "Source (copy)");
    assert_eq!(c["deviceIds"], json!([d1]));
    assert_eq!(c["enabled"], false);
    assert_eq!(c["lifecycleStatus"], "disabled");
    assert_eq!(c["status"], "healthy");
    assert_eq!(c["consecutiveFailures"], 0);
    for k in [
        "description",
        "triggerId",
        "cooldownSeconds",
        "cooldownScope",
        "recordingPolicy",
        "recordingEnabled",
        "delivery",
        "templateResolutionVersion",
        "selfHealingMaxAttempts",
    ] {
        assert_eq!(c[k], src.data()[k], "{k}");
    }
    let src_nodes = s.get(&format!("/v1/flows/{src_id}/actions")).await;
    let copy_nodes = s.get(&format!("/v1/flows/{}/actions", r.id())).await;
    copy_nodes.expect(200).schema(NODES);
    let (a, b) = (
        src_nodes.body["data"].as_array().unwrap(),
        copy_nodes.body["data"].as_array().unwrap(),
    );
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 3);
    for (x, y) in a.iter().zip(b) {
        assert_ne!(x["id"], y["id"]);
        assert_eq!(y["flowId"], r.data()["id"]);
        for k in [
            "actionId",
            "position",
            "key",
            "nameOverride",
            "overrides",
            "continueOnError",
            "recordingEnabled",
        ] {
            assert_eq!(x[k], y[k], "{k}");
        }
    }
    assert_eq!(b[1]["parentFlowActionId"], b[0]["id"]);

    let r = s
        .post(
            &format!("/flows/{src_id}/clone"),
            json!({"name": "Named", "deviceIds": [d2, d1]}),
        )
        .await;
    r.expect(201).schema(CLONE);
    assert_eq!(r.data()["name"], "Named");
    assert_eq!(r.data()["deviceIds"], json!([d2, d1]));
    let r = s
        .post(
            &format!("/v1/flows/{}/clone", r.id()),
            json!({"deviceIds": []}),
        )
        .await;
    r.expect(201);
    assert_eq!(r.data()["deviceIds"], json!([]));
    assert_eq!(r.data()["name"], "Named (copy)");

    let r = s
        .post(
            &format!("/v1/flows/{src_id}/clone"),
            json!({"name": "", "deviceIds": [d1, "x"]}),
        )
        .await;
    assert_field_errors(
        &r,
        &[("name", "invalid_value"), ("deviceIds[1]", "invalid_value")],
    );
    let r = s
        .post(
            &format!("/v1/flows/{src_id}/clone"),
            json!({"name": "x".repeat(201), "deviceIds": [d1, "0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87"]}),
        )
        .await;
    assert_field_errors(
        &r,
        &[("name", "too_long"), ("deviceIds[1]", "unknown_reference")],
    );
}

#[tokio::test]
async fn unblock_repairs_and_delivery_options() {
    let s = Server::start().await;
    let fx = fixtures(&s).await;
    let f = create_flow(&s, &fx, json!({})).await;
    let id = f.id();

    let r = s
        .call(Method::POST, &format!("/v1/flows/{id}/unblock"), None)
        .await;
    r.expect(200).schema(UNBLOCK);
    assert_keys(r.data(), &FLOW_KEYS);
    assert_eq!(r.data()["status"], "healthy");
    assert_eq!(r.data()["consecutiveFailures"], 0);
    assert_eq!(r.data()["blockedAt"], json!(null));
    assert_eq!(
        r.data(),
        f.data(),
        "unblocking a healthy flow changes nothing"
    );
    s.post(&format!("/flows/{id}/unblock"), json!({}))
        .await
        .expect(200)
        .schema(UNBLOCK);

    let r = s.get(&format!("/v1/flows/{id}/repairs")).await;
    r.expect(200).schema(REPAIRS);
    assert_eq!(r.body, json!({"data": []}));

    let r = s.get(&format!("/v1/flows/{id}/delivery-options")).await;
    r.expect(200).schema(DELIVERY);
    assert_keys(
        r.data(),
        &[
            "recordingMode",
            "canDeliverRecording",
            "hasFilesUpload",
            "directUploadStep",
            "destinations",
        ],
    );
    assert_eq!(r.data()["recordingMode"], "off");
    assert_eq!(r.data()["canDeliverRecording"], false);
    assert_eq!(r.data()["hasFilesUpload"], false);
    assert_eq!(r.data()["directUploadStep"], json!(null));
    assert_eq!(
        r.data()["destinations"],
        json!([
            {"key": "mobilerun", "label": "Mobilerun", "connection": "connected",
             "connectKey": "mobilerun", "iconUrl": null},
            {"key": "one_drive", "label": "OneDrive", "connection": "not_connected",
             "connectKey": "one_drive", "iconUrl": null},
            {"key": "google_drive", "label": "Google Drive", "connection": "not_connected",
             "connectKey": "google_drive", "iconUrl": null},
        ])
    );
    for d in r.data()["destinations"].as_array().unwrap() {
        assert_keys(d, &["key", "label", "connection", "connectKey", "iconUrl"]);
    }

    let url = format!("/v1/flows/{id}/delivery-options");
    s.patch(
        &format!("/v1/flows/{id}"),
        json!({"recordingPolicy": {"mode": "flow"}}),
    )
    .await
    .expect(200);
    let r = s.get(&url).await;
    r.expect(200).schema(DELIVERY);
    assert_eq!(r.data()["recordingMode"], "flow");
    assert_eq!(r.data()["canDeliverRecording"], true);
    s.patch(
        &format!("/v1/flows/{id}"),
        json!({"delivery": {"destination": "one_drive"}}),
    )
    .await
    .expect(200);
    assert_eq!(s.get(&url).await.data()["canDeliverRecording"], false);
    s.patch(
        &format!("/v1/flows/{id}"),
        json!({"delivery": {"destination": "mobilerun"}, "recordingPolicy": {"mode": "selected_steps"}}),
    )
    .await
    .expect(200);
    let r = s.get(&url).await;
    assert_eq!(r.data()["recordingMode"], "selected_steps");
    assert_eq!(r.data()["canDeliverRecording"], true);
}

#[tokio::test]
async fn flow_actions_add_and_remove() {
    let s = Server::start().await;
    let fx = fixtures(&s).await;
    let f = create_flow(
        &s,
        &fx,
        json!({"actions": [
            {"actionId": fx.wait, "position": 0},
            {"actionId": fx.each, "position": 1, "key": "loop_1", "children": [
                {"actionId": fx.tap, "position": 0},
            ]},
        ]}),
    )
    .await;
    let id = f.id();
    let url = format!("/v1/flows/{id}/actions");
    let list = s.get(&url).await;
    let loop_id = list.body["data"][1]["id"].as_str().unwrap().to_string();
    let tap_id = list.body["data"][2]["id"].as_str().unwrap().to_string();
    let mut updated = f.data()["updatedAt"].clone();

    // Top-level add with derived key and its own children.
    let r = s
        .post(
            &url,
            json!({"actionId": fx.cond, "position": 5, "nameOverride": "Is ready",
                   "children": [{"actionId": fx.wait, "position": 0}]}),
        )
        .await;
    r.expect(201).schema(ADD);
    assert_keys(r.data(), &NODE_KEYS);
    assert_eq!(r.data()["key"], "is-ready");
    assert_eq!(r.data()["parentFlowActionId"], json!(null));
    assert_eq!(r.data()["flowId"], id.as_str());
    let cond_id = r.id();
    let g = s.get(&format!("/v1/flows/{id}")).await;
    assert_ne!(g.data()["updatedAt"], updated, "add bumps updatedAt");
    updated = g.data()["updatedAt"].clone();

    // A child under the loop; keys derived against the whole flow.
    let r = s
        .post(
            &url,
            json!({"actionId": fx.wait, "position": 3, "parentFlowActionId": loop_id,
                   "overrides": {"params": {"seconds": 2}}, "continueOnError": true}),
        )
        .await;
    r.expect(201).schema(ADD);
    assert_eq!(r.data()["key"], "wait_3");
    assert_eq!(r.data()["parentFlowActionId"], loop_id.as_str());
    assert_eq!(r.data()["overrides"], json!({"params": {"seconds": 2}}));
    let child_id = r.id();

    let l = s.get(&url).await;
    l.expect(200).schema(NODES);
    assert_eq!(
        keys_of(&l),
        ["wait", "loop_1", "tap", "wait_3", "is-ready", "wait_2"]
    );

    // Add rules.
    for (body, want) in [
        (
            json!({"actionId": fx.wait, "position": 0}),
            vec![("position", "duplicate")],
        ),
        (
            json!({"actionId": fx.wait, "position": 0, "parentFlowActionId": loop_id}),
            vec![("position", "duplicate")],
        ),
        (
            json!({"actionId": fx.wait, "position": 9, "key": "tap"}),
            vec![("key", "duplicate")],
        ),
        (
            json!({"actionId": fx.wait, "position": 9, "key": "now"}),
            vec![("key", "reserved_key")],
        ),
        (
            json!({"actionId": fx.wait, "position": 9, "key": "-x"}),
            vec![("key", "invalid_key")],
        ),
        (
            json!({"actionId": fx.wait, "position": 9, "parentFlowActionId": tap_id}),
            vec![("parentFlowActionId", "too_deep")],
        ),
        (
            json!({"actionId": fx.wait, "position": 9, "parentFlowActionId": list.body["data"][0]["id"]}),
            vec![("parentFlowActionId", "children_not_allowed")],
        ),
        (
            json!({"actionId": fx.wait, "position": 9,
                   "parentFlowActionId": "0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87"}),
            vec![("parentFlowActionId", "unknown_reference")],
        ),
        (
            json!({"actionId": fx.each, "position": 9, "parentFlowActionId": loop_id,
                   "children": [{"actionId": fx.wait, "position": 0}]}),
            vec![("children", "too_deep")],
        ),
        (
            json!({"actionId": fx.tap, "position": 9,
                   "children": [{"actionId": fx.wait, "position": 0}]}),
            vec![("children", "children_not_allowed")],
        ),
        (
            json!({"actionId": "0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87", "position": -2}),
            vec![
                ("actionId", "unknown_reference"),
                ("position", "invalid_value"),
            ],
        ),
        (
            json!({}),
            vec![("actionId", "required"), ("position", "required")],
        ),
        (json!([]), vec![("body", "invalid_type")]),
    ] {
        let r = s.post(&url, body).await;
        assert_field_errors(&r, &want);
    }

    // Remove: a child, then a parent with its children, then the last top-level one.
    let r = s.delete(&format!("{url}/{child_id}")).await;
    r.expect(200).schema(REMOVE);
    assert_keys(&r.body, &["message"]);
    assert_eq!(r.body["message"], format!("Flow action {child_id} removed"));
    let g = s.get(&format!("/v1/flows/{id}")).await;
    assert_ne!(g.data()["updatedAt"], updated, "remove bumps updatedAt");
    s.delete(&format!("{url}/{child_id}"))
        .await
        .expect_error(404, "not_found");
    s.delete(&format!("{url}/abc"))
        .await
        .expect_error(404, "not_found");
    s.delete(&format!("/flows/{id}/actions/{}", cond_id.to_uppercase()))
        .await
        .expect(200)
        .schema(REMOVE);
    assert_eq!(keys_of(&s.get(&url).await), ["wait", "loop_1", "tap"]);
    s.delete(&format!("{url}/{loop_id}")).await.expect(200);
    assert_eq!(keys_of(&s.get(&url).await), ["wait"]);
    let last = s.get(&url).await.body["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s.delete(&format!("{url}/{last}")).await;
    r.expect_error(409, "last_action");
    assert_keys(&r.body, &["error", "code"]);

    // Another flow's node is not this flow's node.
    let other = create_flow(&s, &fx, json!({})).await.id();
    s.delete(&format!("/v1/flows/{other}/actions/{last}"))
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn flow_actions_replace() {
    let s = Server::start().await;
    let fx = fixtures(&s).await;
    let f = create_flow(&s, &fx, json!({})).await;
    let id = f.id();
    let url = format!("/v1/flows/{id}/actions");
    let before = s.get(&url).await.body["data"][0]["id"].clone();

    let r = s
        .put(
            &url,
            json!({"actions": [
                {"actionId": fx.each, "position": 2, "key": "each", "children": [
                    {"actionId": fx.wait, "position": 1, "key": "pause"},
                    {"actionId": fx.tap, "position": 0, "key": "tap"},
                ]},
                {"actionId": fx.wait, "position": 0, "key": "wait", "recordingEnabled": true},
            ]}),
        )
        .await;
    r.expect(200).schema(REPLACE);
    assert_eq!(keys_of(&r), ["wait", "each", "tap", "pause"]);
    for n in r.body["data"].as_array().unwrap() {
        assert_keys(n, &NODE_KEYS);
        assert_ne!(n["id"], before);
        assert_eq!(n["flowId"], id.as_str());
    }
    assert_eq!(r.body["data"][0]["recordingEnabled"], true);
    assert_eq!(
        s.get(&url).await.body,
        r.body,
        "GET lists what PUT answered"
    );
    let g = s.get(&format!("/v1/flows/{id}")).await;
    assert_ne!(g.data()["updatedAt"], f.data()["updatedAt"]);

    // Version 3 needs explicit keys everywhere; nothing is replaced on failure.
    let r = s
        .put(
            &url,
            json!({"actions": [
                {"actionId": fx.cond, "position": 0, "children": [
                    {"actionId": fx.wait, "position": 0},
                ]},
                {"actionId": fx.wait, "position": 1, "key": "ok"},
            ]}),
        )
        .await;
    assert_field_errors(
        &r,
        &[
            ("actions[0].key", "key_required"),
            ("actions[0].children[0].key", "key_required"),
        ],
    );
    for (body, want) in [
        (json!({"actions": []}), vec![("actions", "invalid_value")]),
        (json!({}), vec![("actions", "required")]),
        (
            json!({"actions": [
                {"actionId": fx.wait, "position": 0, "key": "a"},
                {"actionId": fx.wait, "position": 0, "key": "a"},
            ]}),
            vec![
                ("actions[1].position", "duplicate"),
                ("actions[1].key", "duplicate"),
            ],
        ),
        (
            json!({"actions": [{"actionId": fx.wait, "position": 0, "key": "prev"}]}),
            vec![("actions[0].key", "reserved_key")],
        ),
    ] {
        assert_field_errors(&s.put(&url, body).await, &want);
    }
    assert_eq!(
        keys_of(&s.get(&url).await),
        ["wait", "each", "tap", "pause"]
    );
}

#[tokio::test]
async fn references_in_use_block_deletes_until_archive() {
    let s = Server::start().await;
    let fx = fixtures(&s).await;
    let device = create_device(&s, "ref").await;
    let f1 = create_flow(&s, &fx, json!({"deviceIds": [device]}))
        .await
        .id();
    let f2 = create_flow(
        &s,
        &fx,
        json!({"actions": [
            {"actionId": fx.cond, "position": 0, "children": [
                {"actionId": fx.tap, "position": 0},
            ]},
        ]}),
    )
    .await
    .id();

    let r = s.delete(&format!("/v1/triggers/{}", fx.trigger)).await;
    r.expect_error(409, "in_use");
    let mut ids: Vec<String> = r.body["details"]["flowIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut want = vec![f1.clone(), f2.clone()];
    want.sort();
    assert_eq!(ids, want);
    let r = s.delete(&format!("/v1/actions/{}", fx.wait)).await;
    r.expect_error(409, "in_use");
    assert_eq!(r.body["details"]["flowIds"], json!([f1]));
    let r = s.delete(&format!("/v1/actions/{}", fx.tap)).await;
    r.expect_error(409, "in_use");
    assert_eq!(
        r.body["details"]["flowIds"],
        json!([f2]),
        "children count too"
    );
    let r = s.delete(&format!("/v1/devices/{device}")).await;
    r.expect_error(409, "in_use");
    assert_eq!(r.body["details"]["flowIds"], json!([f1]));

    s.delete(&format!("/v1/flows/{f1}")).await.expect(200);
    s.delete(&format!("/v1/actions/{}", fx.wait))
        .await
        .expect(200);
    s.delete(&format!("/v1/devices/{device}")).await.expect(200);
    let r = s.delete(&format!("/v1/triggers/{}", fx.trigger)).await;
    r.expect_error(409, "in_use");
    assert_eq!(r.body["details"]["flowIds"], json!([f2]));
    s.delete(&format!("/v1/flows/{f2}")).await.expect(200);
    s.delete(&format!("/v1/actions/{}", fx.tap))
        .await
        .expect(200);
    s.delete(&format!("/v1/triggers/{}", fx.trigger))
        .await
        .expect(200);
}

#[tokio::test]
async fn create_replays_with_an_idempotency_key() {
    let s = Server::start().await;
    let fx = fixtures(&s).await;
    let body = json!({"name": "once", "triggerId": fx.trigger,
                      "actions": [{"actionId": fx.wait, "position": 0}]});
    let headers = [("Idempotency-Key", "create-flow-1")];
    let first = s
        .call_as(&s.key, Method::POST, "/v1/flows", Some(&body), &headers)
        .await;
    first.expect(201).schema(CREATE);
    let again = s
        .call_as(&s.key, Method::POST, "/flows", Some(&body), &headers)
        .await;
    again.expect(201).schema(CREATE);
    assert_eq!(again.text, first.text);
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    let l = s.get("/v1/flows").await;
    assert_eq!(
        l.body["pagination"]["total"], 1,
        "the replay created nothing"
    );
    let mut changed = body.clone();
    changed["name"] = json!("twice");
    s.call_as(&s.key, Method::POST, "/v1/flows", Some(&changed), &headers)
        .await
        .expect_error(422, "idempotency_key_reused");
}
