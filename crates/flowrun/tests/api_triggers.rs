//! Triggers (§3.1, §4.2, §5.1–5.3) and time zones (§3.9), black-box.

mod common;

use common::{Resp, Server, assert_keys};
use flowrun_core::time::{Ts, parse_rfc3339};
use reqwest::Method;
use serde_json::{Value, json};

const TRIGGER_KEYS: [&str; 15] = [
    "id",
    "name",
    "description",
    "activation",
    "eventType",
    "conditions",
    "scheduleRule",
    "timezone",
    "customPayloadSchema",
    "nextFireTime",
    "ownerId",
    "createdBy",
    "userId",
    "createdAt",
    "updatedAt",
];
/// Expected `(field, code)` pairs of a 422.
type FieldCodes = Vec<(&'static str, &'static str)>;

const RULE_KEYS: [&str; 5] = ["type", "dateTime", "expression", "rrule", "jitter"];

const CREATE: &str = "workflows.trigger_create_response.TriggerCreateResponse";
const LIST: &str = "workflows.trigger_list_response.TriggerListResponse";
const RETRIEVE: &str = "workflows.trigger_retrieve_response.TriggerRetrieveResponse";
const UPDATE: &str = "workflows.trigger_update_response.TriggerUpdateResponse";
const DELETE: &str = "workflows.trigger_delete_response.TriggerDeleteResponse";
const TIMEZONES: &str = "workflows.timezone_list_response.TimezoneListResponse";

async fn create(s: &Server, body: Value) -> Resp {
    let r = s.post("/v1/triggers", body).await;
    r.expect(201).schema(CREATE);
    assert_keys(r.data(), &TRIGGER_KEYS);
    r
}

/// A 422 with exactly these (field, code) pairs, in any order.
#[track_caller]
fn assert_field_errors(r: &Resp, want: &[(&str, &str)]) {
    r.expect_error(422, "validation_failed");
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

fn ts(s: &Value) -> Ts {
    parse_rfc3339(s.as_str().unwrap_or_else(|| panic!("not a timestamp: {s}")))
        .unwrap_or_else(|| panic!("not RFC 3339: {s}"))
}

// ---------------------------------------------------------------------------------------
// CRUD
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn event_trigger_crud() {
    let s = Server::start().await;
    let conditions = json!({"all": [
        {"field": "amount", "op": "gt", "value": 10},
        {"path": "payload.items[0].name", "operator": "eq", "value": "apple"}
    ]});
    let r = create(
        &s,
        json!({"activation": "event", "name": "Order", "description": "New orders",
               "eventType": "order.created", "conditions": conditions}),
    )
    .await;
    let d = r.data();
    let id = r.id();
    assert_eq!(d["activation"], "event");
    assert_eq!(d["name"], "Order");
    assert_eq!(d["description"], "New orders");
    assert_eq!(d["eventType"], "order.created");
    assert_eq!(d["conditions"], conditions, "echoed as sent, aliases kept");
    for k in [
        "scheduleRule",
        "timezone",
        "customPayloadSchema",
        "nextFireTime",
    ] {
        assert_eq!(d[k], Value::Null, "{k}");
    }
    assert_eq!(d["ownerId"], "default");
    assert_eq!(d["userId"], "default");
    assert_eq!(d["createdBy"], "default");
    assert_eq!(d["createdAt"], d["updatedAt"]);
    assert!(d["createdAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(id, id.to_lowercase());

    // Any letter case, with and without /v1.
    let r = s.get(&format!("/triggers/{}", id.to_uppercase())).await;
    r.expect(200).schema(RETRIEVE);
    assert_keys(r.data(), &TRIGGER_KEYS);
    assert_eq!(r.data(), d);

    let r = s
        .patch(
            &format!("/v1/triggers/{id}"),
            json!({"name": "Renamed", "description": null}),
        )
        .await;
    r.expect(200).schema(UPDATE);
    assert_keys(r.data(), &TRIGGER_KEYS);
    assert_eq!(r.data()["name"], "Renamed");
    assert_eq!(r.data()["description"], Value::Null);
    assert_eq!(r.data()["eventType"], "order.created", "unsent fields keep");
    assert_eq!(r.data()["conditions"], conditions);
    assert_eq!(r.data()["createdAt"], d["createdAt"]);
    assert!(ts(&r.data()["updatedAt"]) >= ts(&d["updatedAt"]));

    // An empty PATCH changes nothing but is fine.
    let r = s.patch(&format!("/triggers/{id}"), json!({})).await;
    r.expect(200).schema(UPDATE);
    assert_eq!(r.data()["name"], "Renamed");

    let r = s.delete(&format!("/v1/triggers/{id}")).await;
    r.expect(200).schema(DELETE);
    assert_keys(&r.body, &["message"]);
    assert_eq!(r.body["message"], format!("Trigger {id} deleted"));
    s.get(&format!("/v1/triggers/{id}"))
        .await
        .expect_error(404, "not_found");
    s.delete(&format!("/v1/triggers/{id}"))
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn custom_trigger_with_payload_schema() {
    let s = Server::start().await;
    let schema = json!({"type": "object", "required": ["orderId"],
                        "properties": {"orderId": {"type": "string", "format": "uuid"}}});
    let r = create(
        &s,
        json!({"activation": "custom", "name": "Manual", "customPayloadSchema": schema}),
    )
    .await;
    assert_eq!(r.data()["customPayloadSchema"], schema);
    assert_eq!(r.data()["description"], Value::Null);
    let id = r.id();
    for dialect in [
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-07/schema#",
    ] {
        create(
            &s,
            json!({"activation": "custom", "name": "d",
                   "customPayloadSchema": {"$schema": dialect, "type": "object"}}),
        )
        .await;
    }
    // Without a schema any object is accepted; null clears it.
    let r = s
        .patch(
            &format!("/v1/triggers/{id}"),
            json!({"customPayloadSchema": null}),
        )
        .await;
    r.expect(200).schema(UPDATE);
    assert_eq!(r.data()["customPayloadSchema"], Value::Null);
    create(&s, json!({"activation": "custom", "name": "bare"})).await;
}

#[tokio::test]
async fn other_owners_and_bad_ids_are_not_found() {
    let s = Server::start().await;
    let id = create(&s, json!({"activation": "custom", "name": "mine"}))
        .await
        .id();
    let url = format!("/v1/triggers/{id}");
    for (method, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({"name": "x"}))),
        (Method::DELETE, None),
    ] {
        let r = s
            .call_as(&s.other_key, method.clone(), &url, body.as_ref(), &[])
            .await;
        r.expect_error(404, "not_found");
        assert!(r.body["error"].as_str().unwrap().contains(&id));
    }
    let r = s
        .call_as(&s.other_key, Method::GET, "/v1/triggers", None, &[])
        .await;
    r.expect(200).schema(LIST);
    assert_eq!(r.body["pagination"]["total"], 0);

    let unknown = "0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87";
    for raw in [unknown, "abc", "0193a8c27d1e7c4e9a0b3f2d1c0b9a87"] {
        let path = format!("/v1/triggers/{raw}");
        let r = s.get(&path).await;
        r.expect_error(404, "not_found");
        assert!(
            r.body["error"].as_str().unwrap().contains(raw),
            "{}",
            r.text
        );
        s.patch(&path, json!({"name": "x"}))
            .await
            .expect_error(404, "not_found");
        s.delete(&path).await.expect_error(404, "not_found");
    }
    // Still there for its owner.
    s.get(&url).await.expect(200);
}

#[tokio::test]
async fn every_route_needs_a_key() {
    let s = Server::start().await;
    let id = create(&s, json!({"activation": "custom", "name": "t"}))
        .await
        .id();
    let item = format!("/v1/triggers/{id}");
    let body = json!({"activation": "custom", "name": "x"});
    for key in ["", "nope"] {
        for (method, path, body) in [
            (Method::GET, "/v1/triggers", None),
            (Method::POST, "/v1/triggers", Some(&body)),
            (Method::GET, item.as_str(), None),
            (Method::PATCH, item.as_str(), Some(&body)),
            (Method::DELETE, item.as_str(), None),
            (Method::GET, "/v1/timezones", None),
            (Method::GET, "/timezones", None),
        ] {
            s.call_as(key, method, path, body, &[])
                .await
                .expect_error(401, "unauthorized");
        }
    }
    s.get(&item).await.expect(200);
}

// ---------------------------------------------------------------------------------------
// Validation (§4.2, §5.1, §5.2)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn create_validates_fields() {
    let s = Server::start().await;
    let post = |body: Value| s.post("/v1/triggers", body);
    assert_field_errors(
        &post(json!({})).await,
        &[("activation", "required"), ("name", "required")],
    );
    assert_field_errors(
        &post(json!({"activation": "cron", "name": ""})).await,
        &[("activation", "invalid_value"), ("name", "invalid_value")],
    );
    assert_field_errors(
        &post(json!({"activation": "custom", "name": "n".repeat(201),
                     "description": "d".repeat(2001)}))
        .await,
        &[("name", "too_long"), ("description", "too_long")],
    );
    assert_field_errors(
        &post(json!({"activation": 1, "name": 2, "description": 3})).await,
        &[
            ("activation", "invalid_type"),
            ("name", "invalid_type"),
            ("description", "invalid_type"),
        ],
    );
    // Limits are inclusive.
    create(
        &s,
        json!({"activation": "custom", "name": "n".repeat(200), "description": "d".repeat(2000)}),
    )
    .await;
    create(
        &s,
        json!({"activation": "custom", "name": "n", "description": null}),
    )
    .await;

    // eventType: 1..200, no whitespace.
    for bad in ["", "a b", "tab\there", "new\nline"] {
        assert_field_errors(
            &post(json!({"activation": "event", "name": "e", "eventType": bad})).await,
            &[("eventType", "invalid_value")],
        );
    }
    assert_field_errors(
        &post(json!({"activation": "event", "name": "e", "eventType": "e".repeat(201)})).await,
        &[("eventType", "too_long")],
    );
    create(
        &s,
        json!({"activation": "event", "name": "e", "eventType": "e".repeat(200)}),
    )
    .await;

    // Not an object / not JSON.
    assert_field_errors(&post(json!([1, 2])).await, &[("body", "invalid_type")]);
    s.raw(Method::POST, "/v1/triggers", b"{nope".to_vec())
        .await
        .expect_error(400, "invalid_json");

    // Nothing was stored by the failures.
    let r = s.get("/v1/triggers").await;
    assert_eq!(r.body["pagination"]["total"], 3);
}

#[tokio::test]
async fn activation_rules() {
    let s = Server::start().await;
    let post = |body: Value| s.post("/v1/triggers", body);
    let rule = json!({"type": "cron", "expression": "0 9 * * *"});
    // Required per activation.
    assert_field_errors(
        &post(json!({"activation": "event", "name": "e"})).await,
        &[("eventType", "required")],
    );
    assert_field_errors(
        &post(json!({"activation": "schedule", "name": "s"})).await,
        &[("scheduleRule", "required")],
    );
    assert_field_errors(
        &post(json!({"activation": "schedule", "name": "s", "scheduleRule": rule})).await,
        &[("timezone", "required")],
    );
    // Rejected per activation when non-null.
    assert_field_errors(
        &post(json!({"activation": "event", "name": "e", "eventType": "x",
                     "scheduleRule": rule, "timezone": "UTC", "customPayloadSchema": {}}))
        .await,
        &[
            ("scheduleRule", "not_allowed"),
            ("timezone", "not_allowed"),
            ("customPayloadSchema", "not_allowed"),
        ],
    );
    assert_field_errors(
        &post(
            json!({"activation": "schedule", "name": "s", "scheduleRule": rule,
                     "timezone": "UTC", "eventType": "x", "conditions": {},
                     "customPayloadSchema": {}}),
        )
        .await,
        &[
            ("eventType", "not_allowed"),
            ("conditions", "not_allowed"),
            ("customPayloadSchema", "not_allowed"),
        ],
    );
    assert_field_errors(
        &post(
            json!({"activation": "custom", "name": "c", "eventType": "x",
                     "conditions": {}, "scheduleRule": rule, "timezone": "UTC"}),
        )
        .await,
        &[
            ("eventType", "not_allowed"),
            ("conditions", "not_allowed"),
            ("scheduleRule", "not_allowed"),
            ("timezone", "not_allowed"),
        ],
    );
    // null counts as absent.
    create(
        &s,
        json!({"activation": "custom", "name": "c", "eventType": null, "conditions": null,
               "scheduleRule": null, "timezone": null}),
    )
    .await;
    // timezone is optional for `once`.
    create(
        &s,
        json!({"activation": "schedule", "name": "o",
               "scheduleRule": {"type": "once", "dateTime": "2099-01-01T00:00:00Z"}}),
    )
    .await;
    create(
        &s,
        json!({"activation": "schedule", "name": "o", "timezone": "Asia/Tokyo",
               "scheduleRule": {"type": "once", "dateTime": "2099-01-01T00:00:00Z"}}),
    )
    .await;
}

#[tokio::test]
async fn timezone_must_be_supported() {
    let s = Server::start().await;
    let rule = json!({"type": "cron", "expression": "0 9 * * *"});
    for bad in ["Mars/Olympus_Mons", "europe/berlin", "UTC ", "", "+02:00"] {
        assert_field_errors(
            &s.post(
                "/v1/triggers",
                json!({"activation": "schedule", "name": "s", "scheduleRule": rule, "timezone": bad}),
            )
            .await,
            &[("timezone", "unsupported_zone")],
        );
    }
    assert_field_errors(
        &s.post(
            "/v1/triggers",
            json!({"activation": "schedule", "name": "s", "scheduleRule": rule, "timezone": 5}),
        )
        .await,
        &[("timezone", "invalid_type")],
    );
    for good in ["UTC", "Europe/Berlin", "US/Eastern", "Etc/GMT+5"] {
        let r = create(
            &s,
            json!({"activation": "schedule", "name": "s", "scheduleRule": rule, "timezone": good}),
        )
        .await;
        assert_eq!(r.data()["timezone"], good);
    }
}

#[tokio::test]
async fn schedule_rule_validation() {
    let s = Server::start().await;
    let post = |rule: Value, tz: Value| {
        s.post(
            "/v1/triggers",
            json!({"activation": "schedule", "name": "s", "scheduleRule": rule, "timezone": tz}),
        )
    };
    let utc = json!("UTC");
    let cases: Vec<(Value, Value, FieldCodes)> = vec![
        (
            json!({}),
            utc.clone(),
            vec![("scheduleRule.type", "required")],
        ),
        (
            json!({"type": "hourly"}),
            utc.clone(),
            vec![("scheduleRule.type", "invalid_value")],
        ),
        (
            json!("0 * * * *"),
            utc.clone(),
            vec![("scheduleRule", "invalid_type")],
        ),
        (
            json!({"type": "cron"}),
            utc.clone(),
            vec![("scheduleRule.expression", "required")],
        ),
        (
            json!({"type": "once"}),
            utc.clone(),
            vec![("scheduleRule.dateTime", "required")],
        ),
        (
            json!({"type": "recurring", "rrule": null}),
            utc.clone(),
            vec![("scheduleRule.rrule", "required")],
        ),
        (
            json!({"type": "once", "dateTime": "2099-01-01T00:00:00Z",
                   "expression": "* * * * *", "rrule": "FREQ=DAILY"}),
            utc.clone(),
            vec![
                ("scheduleRule.expression", "not_allowed"),
                ("scheduleRule.rrule", "not_allowed"),
            ],
        ),
        (
            json!({"type": "cron", "expression": "* * * * *", "dateTime": "2099-01-01T00:00:00Z"}),
            utc.clone(),
            vec![("scheduleRule.dateTime", "not_allowed")],
        ),
        (
            json!({"type": "once", "dateTime": "next tuesday"}),
            utc.clone(),
            vec![("scheduleRule.dateTime", "invalid_value")],
        ),
        (
            json!({"type": "once", "dateTime": "2099-01-01T09:00:00"}),
            Value::Null,
            vec![("timezone", "required")],
        ),
        (
            json!({"type": "recurring", "rrule": "FREQ=DAILY"}),
            Value::Null,
            vec![("timezone", "required")],
        ),
        (
            json!({"type": "once", "dateTime": "2099-01-01T00:00:00Z",
                   "jitter": {"beforeMinutes": 1441, "afterMinutes": -1}}),
            utc.clone(),
            vec![
                ("scheduleRule.jitter.beforeMinutes", "invalid_value"),
                ("scheduleRule.jitter.afterMinutes", "invalid_value"),
            ],
        ),
        (
            json!({"type": "once", "dateTime": "2099-01-01T00:00:00Z",
                   "jitter": {"beforeMinutes": 2.5}}),
            utc.clone(),
            vec![("scheduleRule.jitter.beforeMinutes", "invalid_type")],
        ),
    ];
    for (rule, tz, want) in cases {
        assert_field_errors(&post(rule.clone(), tz).await, &want);
    }
    for bad in [
        "* * * *",
        "0 0 L * *",
        "0 0 15W * *",
        "0 0 * * 1#2",
        "0 0 ? * MON",
        "0 0 * * 5L",
        "61 * * * *",
        "0 0 30 2 *",
        "@reboot",
        "",
    ] {
        assert_field_errors(
            &post(json!({"type": "cron", "expression": bad}), utc.clone()).await,
            &[("scheduleRule.expression", "invalid_cron")],
        );
    }
    for bad in [
        "FREQ=SECONDLY",
        "FREQ=DAILY;BYHOUR=24",
        "DTSTART:20260101T090000Z\nRRULE:FREQ=DAILY\nEXDATE:20260102T090000Z",
        "RDATE:20260102T090000Z\nRRULE:FREQ=DAILY",
        "INTERVAL=2",
        "not a rule",
    ] {
        assert_field_errors(
            &post(json!({"type": "recurring", "rrule": bad}), utc.clone()).await,
            &[("scheduleRule.rrule", "invalid_rrule")],
        );
    }
    for good in [
        "0 9 * * MON-FRI",
        "*/5 * * * *",
        "30 0 9 * * *",
        "0 0 1 jan,jul *",
        "0 0 13 * FRI",
        "0 12 * * 7",
        "@yearly",
        "@midnight",
        "@hourly",
    ] {
        create(
            &s,
            json!({"activation": "schedule", "name": "c", "timezone": "UTC",
                   "scheduleRule": {"type": "cron", "expression": good}}),
        )
        .await;
    }
    for good in [
        "FREQ=DAILY",
        "RRULE:FREQ=WEEKLY;BYDAY=MO,WE",
        "DTSTART:20260101T090000Z\nRRULE:FREQ=DAILY;COUNT=3",
        "DTSTART;TZID=Europe/Paris:20260101T090000\r\nRRULE:FREQ=MONTHLY",
        "DTSTART:20260101T090000\nFREQ=HOURLY;INTERVAL=6",
    ] {
        create(
            &s,
            json!({"activation": "schedule", "name": "r", "timezone": "Europe/Berlin",
                   "scheduleRule": {"type": "recurring", "rrule": good}}),
        )
        .await;
    }
}

#[tokio::test]
async fn conditions_validation() {
    let s = Server::start().await;
    let post = |c: Value| {
        s.post(
            "/v1/triggers",
            json!({"activation": "event", "name": "e", "eventType": "x", "conditions": c}),
        )
    };
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!([1]), vec!["conditions"]),
        (
            json!({"all": [{"field": "a", "op": "equals", "value": 1}]}),
            vec!["conditions.all[0].op"],
        ),
        (
            json!({"all": [{"field": "a", "op": "eq"}]}),
            vec!["conditions.all[0].value"],
        ),
        (
            json!({"any": [{"field": "a", "path": "b", "op": "exists"}]}),
            vec!["conditions.any[0].path"],
        ),
        (
            json!({"field": "a", "op": "eq", "operator": "eq", "value": 1}),
            vec!["conditions.operator"],
        ),
        (
            json!({"field": "a", "op": "eq", "value": 1, "extra": true}),
            vec!["conditions.extra"],
        ),
        (
            json!({"all": [], "field": "a", "op": "exists"}),
            vec!["conditions"],
        ),
        (
            json!({"field": "a", "op": "in", "value": "x"}),
            vec!["conditions.value"],
        ),
        (
            json!({"field": "a", "op": "starts_with", "value": 1}),
            vec!["conditions.value"],
        ),
        (
            json!({"field": "a", "op": "matches", "value": "(unclosed"}),
            vec!["conditions.value"],
        ),
        (
            json!({"field": "a", "op": "matches", "value": "(?<=x)y"}),
            vec!["conditions.value"],
        ),
        (
            json!({"field": "a", "op": "matches", "value": "a".repeat(1025)}),
            vec!["conditions.value"],
        ),
        (
            json!({"not": {"all": [{"op": "exists"}]}}),
            vec!["conditions.not.all[0].field"],
        ),
    ];
    for (c, want) in cases {
        let r = post(c.clone()).await;
        let pairs: Vec<(&str, &str)> = want.iter().map(|f| (*f, "invalid_condition")).collect();
        assert_field_errors(&r, &pairs);
    }
    // Depth: 10 levels pass, 11 fail.
    let nest = |levels: usize| {
        let mut node = json!({"field": "a", "op": "exists"});
        for _ in 1..levels {
            node = json!({ "not": node });
        }
        node
    };
    create(
        &s,
        json!({"activation": "event", "name": "e", "eventType": "x", "conditions": nest(10)}),
    )
    .await;
    let r = post(nest(11)).await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_codes(), ["invalid_condition"]);
    // Leaves: 100 pass, 101 fail.
    let leaves = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"field": format!("f{i}"), "op": "exists"}))
            .collect()
    };
    create(
        &s,
        json!({"activation": "event", "name": "e", "eventType": "x",
               "conditions": {"any": leaves(100)}}),
    )
    .await;
    assert_field_errors(
        &post(json!({"any": leaves(101)})).await,
        &[("conditions", "invalid_condition")],
    );
    // null and {} pass; {} is echoed.
    let r = create(
        &s,
        json!({"activation": "event", "name": "e", "eventType": "x", "conditions": {}}),
    )
    .await;
    assert_eq!(r.data()["conditions"], json!({}));
    let r = create(
        &s,
        json!({"activation": "event", "name": "e", "eventType": "x", "conditions": null}),
    )
    .await;
    assert_eq!(r.data()["conditions"], Value::Null);
}

#[tokio::test]
async fn payload_schema_must_compile() {
    let s = Server::start().await;
    let post = |schema: Value| {
        s.post(
            "/v1/triggers",
            json!({"activation": "custom", "name": "c", "customPayloadSchema": schema}),
        )
    };
    for bad in [
        json!({"type": "nope"}),
        json!({"$ref": "https://example.com/schema.json"}),
        json!({"properties": {"a": {"$ref": "http://example.com/a.json#/x"}}}),
        json!({"$schema": "http://json-schema.org/draft-04/schema#"}),
        json!({"$schema": 7}),
        json!({"minimum": "zero"}),
    ] {
        assert_field_errors(
            &post(bad.clone()).await,
            &[("customPayloadSchema", "invalid_schema")],
        );
    }
    assert_field_errors(
        &post(json!("string")).await,
        &[("customPayloadSchema", "invalid_type")],
    );
    assert_field_errors(
        &post(json!(true)).await,
        &[("customPayloadSchema", "invalid_type")],
    );
    // Local references are fine.
    create(
        &s,
        json!({"activation": "custom", "name": "c", "customPayloadSchema":
               {"$defs": {"id": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/id"}}}}),
    )
    .await;
}

#[tokio::test]
async fn every_problem_is_reported_at_once() {
    let s = Server::start().await;
    let r = s
        .post(
            "/v1/triggers",
            json!({
                "activation": "schedule",
                "name": "",
                "description": 5,
                "eventType": "x",
                "timezone": "Nowhere/Land",
                "scheduleRule": {"type": "cron", "expression": "0 0 L * *",
                                 "jitter": {"afterMinutes": 5000}},
                "customPayloadSchema": {"type": "nope"}
            }),
        )
        .await;
    assert_field_errors(
        &r,
        &[
            ("name", "invalid_value"),
            ("description", "invalid_type"),
            ("eventType", "not_allowed"),
            ("customPayloadSchema", "not_allowed"),
            ("timezone", "unsupported_zone"),
            ("scheduleRule.expression", "invalid_cron"),
            ("scheduleRule.jitter.afterMinutes", "invalid_value"),
        ],
    );
    // With an unknown activation every sent field is still checked.
    let r = s
        .post(
            "/v1/triggers",
            json!({"activation": "webhook", "name": "n",
                   "conditions": {"field": "a", "op": "nope", "value": 1},
                   "customPayloadSchema": {"type": "nope"}}),
        )
        .await;
    assert_field_errors(
        &r,
        &[
            ("activation", "invalid_value"),
            ("conditions.op", "invalid_condition"),
            ("customPayloadSchema", "invalid_schema"),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Schedules (§5.3)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn schedule_next_fire_time() {
    let s = Server::start().await;
    // once with an offset: an absolute instant.
    let r = create(
        &s,
        json!({"activation": "schedule", "name": "once",
               "scheduleRule": {"type": "once", "dateTime": "2099-05-01T09:00:00+02:00"}}),
    )
    .await;
    let rule = &r.data()["scheduleRule"];
    assert_keys(rule, &RULE_KEYS);
    assert_eq!(
        rule,
        &json!({"type": "once", "dateTime": "2099-05-01T09:00:00+02:00",
                "expression": null, "rrule": null, "jitter": null})
    );
    assert_eq!(r.data()["nextFireTime"], "2099-05-01T07:00:00.000Z");
    assert_eq!(r.data()["timezone"], Value::Null);

    // once without an offset: local time in the trigger's zone.
    let r = create(
        &s,
        json!({"activation": "schedule", "name": "local", "timezone": "Europe/Berlin",
               "scheduleRule": {"type": "once", "dateTime": "2099-07-01T09:00:00"}}),
    )
    .await;
    assert_eq!(r.data()["nextFireTime"], "2099-07-01T07:00:00.000Z");
    assert_eq!(r.data()["scheduleRule"]["dateTime"], "2099-07-01T09:00:00");

    // In the spring-forward gap (Berlin, 2030-03-31 02:00 → 03:00): first valid instant.
    let r = create(
        &s,
        json!({"activation": "schedule", "name": "gap", "timezone": "Europe/Berlin",
               "scheduleRule": {"type": "once", "dateTime": "2030-03-31T02:30:00"}}),
    )
    .await;
    assert_eq!(r.data()["nextFireTime"], "2030-03-31T01:00:00.000Z");

    // A past `once` is accepted and never fires.
    let r = create(
        &s,
        json!({"activation": "schedule", "name": "past",
               "scheduleRule": {"type": "once", "dateTime": "2001-01-01T00:00:00Z"}}),
    )
    .await;
    assert_eq!(r.data()["nextFireTime"], Value::Null);

    // cron: next Jan 1st at midnight UTC after creation.
    let r = create(
        &s,
        json!({"activation": "schedule", "name": "cron", "timezone": "UTC",
               "scheduleRule": {"type": "cron", "expression": "@yearly"}}),
    )
    .await;
    let created = r.data()["createdAt"].as_str().unwrap().to_string();
    let year: i32 = created[..4].parse().unwrap();
    assert_eq!(
        r.data()["nextFireTime"],
        format!("{}-01-01T00:00:00.000Z", year + 1)
    );
    assert_eq!(r.data()["scheduleRule"]["expression"], "@yearly");

    // Every minute: strictly after creation, on a whole minute.
    let r = create(
        &s,
        json!({"activation": "schedule", "name": "minutely", "timezone": "America/New_York",
               "scheduleRule": {"type": "cron", "expression": "* * * * *"}}),
    )
    .await;
    let next = ts(&r.data()["nextFireTime"]);
    let created = ts(&r.data()["createdAt"]);
    assert!(next > created);
    assert!(next.millis() - created.millis() <= 60_000);
    assert_eq!(next.millis() % 60_000, 0);

    // recurring: COUNT exhausted before creation → null; a DTSTART in the future → it.
    let r = create(
        &s,
        json!({"activation": "schedule", "name": "done", "timezone": "UTC",
               "scheduleRule": {"type": "recurring",
                                "rrule": "DTSTART:20200101T090000Z\nRRULE:FREQ=DAILY;COUNT=3"}}),
    )
    .await;
    assert_eq!(r.data()["nextFireTime"], Value::Null);
    let r = create(
        &s,
        json!({"activation": "schedule", "name": "later", "timezone": "UTC",
               "scheduleRule": {"type": "recurring",
                                "rrule": "DTSTART;TZID=America/New_York:20990102T080000\nRRULE:FREQ=DAILY"}}),
    )
    .await;
    assert_eq!(r.data()["nextFireTime"], "2099-01-02T13:00:00.000Z");
    let r = create(
        &s,
        json!({"activation": "schedule", "name": "until", "timezone": "UTC",
               "scheduleRule": {"type": "recurring",
                                "rrule": "FREQ=DAILY;UNTIL=20200101T000000Z"}}),
    )
    .await;
    assert_eq!(r.data()["nextFireTime"], Value::Null);

    // Without DTSTART the anchor is createdAt: FREQ=DAILY fires at the creation time of day.
    let r = create(
        &s,
        json!({"activation": "schedule", "name": "daily", "timezone": "UTC",
               "scheduleRule": {"type": "recurring", "rrule": "FREQ=DAILY"}}),
    )
    .await;
    let created = ts(&r.data()["createdAt"]);
    let next = ts(&r.data()["nextFireTime"]);
    assert_eq!(next.millis(), created.millis() / 1000 * 1000 + 86_400_000);
}

#[tokio::test]
async fn jitter_is_deterministic() {
    let s = Server::start().await;
    let r = create(
        &s,
        json!({"activation": "schedule", "name": "j",
               "scheduleRule": {"type": "once", "dateTime": "2099-05-01T07:00:00Z",
                                "jitter": {"beforeMinutes": 30, "afterMinutes": 90}}}),
    )
    .await;
    assert_eq!(
        r.data()["scheduleRule"]["jitter"],
        json!({"beforeMinutes": 30, "afterMinutes": 90})
    );
    let id = r.id();
    let nominal = parse_rfc3339("2099-05-01T07:00:00Z").unwrap();
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    let offset = flowrun_core::schedule::jitter_offset(uuid, nominal.0, 30 * 60, 90 * 60);
    assert!((-1800..=5400).contains(&offset));
    let want = Ts::from_millis(nominal.millis() + offset * 1000).unwrap();
    assert_eq!(r.data()["nextFireTime"], want.to_rfc3339());
    // Reading it back (or renaming) does not re-roll.
    let r = s.get(&format!("/v1/triggers/{id}")).await;
    assert_eq!(r.data()["nextFireTime"], want.to_rfc3339());
    let r = s
        .patch(&format!("/v1/triggers/{id}"), json!({"name": "renamed"}))
        .await;
    assert_eq!(r.data()["nextFireTime"], want.to_rfc3339());
    // Partial jitter echoes the missing side as null.
    let r = create(
        &s,
        json!({"activation": "schedule", "name": "j2",
               "scheduleRule": {"type": "once", "dateTime": "2099-05-01T07:00:00Z",
                                "jitter": {"afterMinutes": 0}}}),
    )
    .await;
    assert_eq!(
        r.data()["scheduleRule"]["jitter"],
        json!({"beforeMinutes": null, "afterMinutes": 0})
    );
    assert_eq!(r.data()["nextFireTime"], "2099-05-01T07:00:00.000Z");
}

// ---------------------------------------------------------------------------------------
// PATCH merge semantics (§3.1)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn patch_changes_activation() {
    let s = Server::start().await;
    let r = create(
        &s,
        json!({"activation": "event", "name": "e", "eventType": "a.b",
               "conditions": {"field": "x", "op": "exists"}}),
    )
    .await;
    let url = format!("/v1/triggers/{}", r.id());

    // Fields the new activation forbids are refused when sent…
    assert_field_errors(
        &s.patch(
            &url,
            json!({"activation": "custom", "eventType": "c.d", "timezone": "UTC"}),
        )
        .await,
        &[("eventType", "not_allowed"), ("timezone", "not_allowed")],
    );
    // …and required ones must be there after the merge.
    assert_field_errors(
        &s.patch(&url, json!({"activation": "schedule"})).await,
        &[("scheduleRule", "required")],
    );
    assert_field_errors(
        &s.patch(
            &url,
            json!({"activation": "schedule", "scheduleRule": {"type": "cron", "expression": "0 * * * *"}}),
        )
        .await,
        &[("timezone", "required")],
    );
    // Stored fields the new activation forbids are dropped.
    let r = s.patch(&url, json!({"activation": "custom"})).await;
    r.expect(200).schema(UPDATE);
    assert_eq!(r.data()["activation"], "custom");
    assert_eq!(r.data()["eventType"], Value::Null);
    assert_eq!(r.data()["conditions"], Value::Null);

    let r = s
        .patch(
            &url,
            json!({"activation": "schedule", "timezone": "Europe/Berlin",
                   "scheduleRule": {"type": "cron", "expression": "0 9 * * *"}}),
        )
        .await;
    r.expect(200).schema(UPDATE);
    assert!(r.data()["nextFireTime"].is_string());
    let r = s
        .patch(&url, json!({"activation": "event", "eventType": "back"}))
        .await;
    r.expect(200).schema(UPDATE);
    assert_eq!(r.data()["scheduleRule"], Value::Null);
    assert_eq!(r.data()["timezone"], Value::Null);
    assert_eq!(r.data()["nextFireTime"], Value::Null);
    assert_eq!(r.data()["eventType"], "back");
    // Not back to the old conditions: they were dropped.
    assert_eq!(r.data()["conditions"], Value::Null);

    // Invalid values.
    assert_field_errors(
        &s.patch(&url, json!({"activation": "manual", "name": null}))
            .await,
        &[("activation", "invalid_value"), ("name", "invalid_type")],
    );
    assert_field_errors(
        &s.patch(&url, json!({"eventType": null})).await,
        &[("eventType", "required")],
    );
    assert_field_errors(
        &s.patch(&url, json!({"conditions": {"all": [{"field": "a"}]}}))
            .await,
        &[("conditions.all[0].op", "invalid_condition")],
    );
    s.raw(Method::PATCH, &url, b"[".to_vec())
        .await
        .expect_error(400, "invalid_json");
    // Nothing changed by the failures.
    let r = s.get(&url).await;
    assert_eq!(r.data()["activation"], "event");
    assert_eq!(r.data()["eventType"], "back");
}

#[tokio::test]
async fn patch_clears_and_reschedules() {
    let s = Server::start().await;
    let r = create(
        &s,
        json!({"activation": "event", "name": "e", "eventType": "a",
               "conditions": {"field": "x", "op": "exists"}}),
    )
    .await;
    let url = format!("/v1/triggers/{}", r.id());
    let r = s.patch(&url, json!({"conditions": null})).await;
    r.expect(200).schema(UPDATE);
    assert_eq!(r.data()["conditions"], Value::Null);
    let c = json!({"any": [{"path": "sender", "operator": "ends_with", "value": "@x.com"}]});
    let r = s.patch(&url, json!({"conditions": c})).await;
    assert_eq!(r.data()["conditions"], c);
    let r = s.patch(&url, json!({"eventType": "b"})).await;
    assert_eq!(r.data()["conditions"], c);
    assert_eq!(r.data()["eventType"], "b");

    // Schedules: a changed rule recomputes nextFireTime.
    let r = create(
        &s,
        json!({"activation": "schedule", "name": "s", "timezone": "UTC",
               "scheduleRule": {"type": "once", "dateTime": "2099-01-01T00:00:00Z"}}),
    )
    .await;
    let url = format!("/v1/triggers/{}", r.id());
    assert_eq!(r.data()["nextFireTime"], "2099-01-01T00:00:00.000Z");
    let r = s
        .patch(
            &url,
            json!({"scheduleRule": {"type": "once", "dateTime": "2098-06-01T12:00:00"}}),
        )
        .await;
    r.expect(200).schema(UPDATE);
    assert_eq!(r.data()["nextFireTime"], "2098-06-01T12:00:00.000Z");
    // A changed zone moves an offset-less `once`.
    let r = s.patch(&url, json!({"timezone": "Asia/Tokyo"})).await;
    r.expect(200);
    assert_eq!(r.data()["nextFireTime"], "2098-06-01T03:00:00.000Z");
    // Clearing the zone of an offset-less `once` is refused.
    assert_field_errors(
        &s.patch(&url, json!({"timezone": null})).await,
        &[("timezone", "required")],
    );
    // Switching to cron keeps the zone.
    let r = s
        .patch(
            &url,
            json!({"scheduleRule": {"type": "cron", "expression": "0 0 1 1 *"}}),
        )
        .await;
    r.expect(200).schema(UPDATE);
    assert_eq!(r.data()["timezone"], "Asia/Tokyo");
    let next = r.data()["nextFireTime"].as_str().unwrap().to_string();
    assert!(next.ends_with("-12-31T15:00:00.000Z"), "{next}");
    assert_eq!(r.data()["scheduleRule"]["dateTime"], Value::Null);
    // A past `once` clears nextFireTime.
    let r = s
        .patch(
            &url,
            json!({"scheduleRule": {"type": "once", "dateTime": "2001-01-01T00:00:00Z"}}),
        )
        .await;
    r.expect(200);
    assert_eq!(r.data()["nextFireTime"], Value::Null);
    // Clearing the rule of a schedule trigger is refused.
    assert_field_errors(
        &s.patch(&url, json!({"scheduleRule": null})).await,
        &[("scheduleRule", "required")],
    );
}

// ---------------------------------------------------------------------------------------
// Listing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn list_filters_search_and_order() {
    let s = Server::start().await;
    let mut ids = Vec::new();
    for (name, description, activation, event_type) in [
        (
            "Bravo",
            Some("handles 100% of orders"),
            "event",
            Some("order.created"),
        ),
        ("alpha", None, "event", Some("order.created.v2")),
        ("Charlie", Some("ÉCLAIR batch"), "custom", None),
        ("delta", Some("nightly"), "schedule", None),
    ] {
        let mut body = json!({"activation": activation, "name": name, "description": description});
        if let Some(e) = event_type {
            body["eventType"] = json!(e);
        }
        if activation == "schedule" {
            body["timezone"] = json!("UTC");
            body["scheduleRule"] = json!({"type": "cron", "expression": "0 3 * * *"});
        }
        ids.push(create(&s, body).await.id());
    }
    // Another owner's trigger never shows up.
    s.call_as(
        &s.other_key,
        Method::POST,
        "/v1/triggers",
        Some(&json!({"activation": "custom", "name": "alpha other"})),
        &[],
    )
    .await
    .expect(201);

    let names = |r: &Resp| -> Vec<String> {
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    };
    let r = s.get("/v1/triggers").await;
    r.expect(200).schema(LIST);
    assert_keys(&r.body, &["items", "pagination"]);
    for item in r.body["items"].as_array().unwrap() {
        assert_keys(item, &TRIGGER_KEYS);
    }
    assert_eq!(
        names(&r),
        ["delta", "Charlie", "alpha", "Bravo"],
        "newest first"
    );
    assert_eq!(
        r.body["pagination"],
        json!({"page": 1, "pageSize": 20, "total": 4, "pages": 1, "hasNext": false, "hasPrev": false})
    );

    for (query, want) in [
        ("activation=event", vec!["alpha", "Bravo"]),
        ("activation=custom", vec!["Charlie"]),
        ("activation=schedule", vec!["delta"]),
        ("eventType=order.created", vec!["Bravo"]),
        ("eventType=order", vec![]),
        ("eventType=ORDER.CREATED", vec![]),
        ("search=ALPHA", vec!["alpha"]),
        ("search=night", vec!["delta"]),
        ("search=100%25", vec!["Bravo"]),
        ("search=%25", vec!["Bravo"]),
        ("search=_", vec![]),
        ("search=éclair", vec!["Charlie"]),
        ("search=", vec!["delta", "Charlie", "alpha", "Bravo"]),
        ("activation=event&search=bravo", vec!["Bravo"]),
        (
            "orderBy=name&orderByDirection=asc",
            vec!["Bravo", "Charlie", "alpha", "delta"],
        ),
        ("orderBy=name", vec!["delta", "alpha", "Charlie", "Bravo"]),
        (
            "orderBy=createdAt&orderByDirection=asc",
            vec!["Bravo", "alpha", "Charlie", "delta"],
        ),
    ] {
        let r = s.get(&format!("/v1/triggers?{query}")).await;
        r.expect(200).schema(LIST);
        assert_eq!(names(&r), want, "{query}");
        assert_eq!(r.body["pagination"]["total"], want.len(), "{query}");
    }

    // updatedAt follows the last change.
    s.patch(
        &format!("/v1/triggers/{}", ids[1]),
        json!({"description": "touched"}),
    )
    .await
    .expect(200);
    let r = s.get("/v1/triggers?orderBy=updatedAt").await;
    assert_eq!(names(&r)[0], "alpha");
    let r = s
        .get("/v1/triggers?orderBy=updatedAt&orderByDirection=asc")
        .await;
    assert_eq!(names(&r)[3], "alpha");

    for (query, field) in [
        ("activation=Event", "activation"),
        ("orderBy=id", "orderBy"),
        ("orderByDirection=up", "orderByDirection"),
        ("pageSize=0", "pageSize"),
        ("pageSize=101", "pageSize"),
        ("page=0", "page"),
        ("page=1.5", "page"),
    ] {
        let r = s.get(&format!("/v1/triggers?{query}")).await;
        r.expect_error(422, "validation_failed");
        assert_eq!(r.error_fields(), [field], "{query}");
    }
}

#[tokio::test]
async fn list_paginates() {
    let s = Server::start().await;
    for i in 0..5 {
        create(&s, json!({"activation": "custom", "name": format!("t{i}")})).await;
    }
    let r = s.get("/triggers?pageSize=1&page=2").await;
    r.expect(200).schema(LIST);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["items"][0]["name"], "t3");
    assert_eq!(
        r.body["pagination"],
        json!({"page": 2, "pageSize": 1, "total": 5, "pages": 5, "hasNext": true, "hasPrev": true})
    );
    let r = s.get("/v1/triggers?pageSize=1&page=5").await;
    assert_eq!(r.body["items"][0]["name"], "t0");
    assert_eq!(r.body["pagination"]["hasNext"], false);
    let r = s.get("/v1/triggers?pageSize=2&page=3").await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["pagination"]["pages"], 3);
    let r = s.get("/v1/triggers?pageSize=100").await;
    r.expect(200).schema(LIST);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 5);
    assert_eq!(
        r.body["pagination"],
        json!({"page": 1, "pageSize": 100, "total": 5, "pages": 1, "hasNext": false, "hasPrev": false})
    );
    // Past the last page: empty items, real totals.
    let r = s.get("/v1/triggers?pageSize=2&page=9").await;
    r.expect(200).schema(LIST);
    assert_eq!(r.body["items"], json!([]));
    assert_eq!(
        r.body["pagination"],
        json!({"page": 9, "pageSize": 2, "total": 5, "pages": 3, "hasNext": false, "hasPrev": true})
    );
    // No triggers at all for the other owner.
    let r = s
        .call_as(&s.other_key, Method::GET, "/v1/triggers", None, &[])
        .await;
    r.expect(200).schema(LIST);
    assert_eq!(
        r.body["pagination"],
        json!({"page": 1, "pageSize": 20, "total": 0, "pages": 0, "hasNext": false, "hasPrev": false})
    );
}

// ---------------------------------------------------------------------------------------
// Delete while in use
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn delete_refuses_while_a_live_flow_uses_it() {
    let s = Server::start().await;
    let trigger = create(&s, json!({"activation": "custom", "name": "t"}))
        .await
        .id();
    let cat = s.get("/v1/action-catalog?pageSize=100").await;
    cat.expect(200);
    let wait = cat.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["method"] == "flow.wait")
        .expect("catalog has flow.wait")["id"]
        .clone();
    let action = s
        .post(
            "/v1/actions",
            json!({"catalogEntryId": wait, "name": "Wait", "params": {"seconds": 1}}),
        )
        .await;
    action.expect(201);
    let flow_body = |name: &str| {
        json!({"name": name, "triggerId": trigger,
               "actions": [{"actionId": action.id(), "position": 0}]})
    };
    let a = s.post("/v1/flows", flow_body("a")).await;
    a.expect(201);
    let b = s.post("/v1/flows", flow_body("b")).await;
    b.expect(201);

    let r = s.delete(&format!("/v1/triggers/{trigger}")).await;
    r.expect_error(409, "in_use");
    let mut flow_ids: Vec<String> = r.body["details"]["flowIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    flow_ids.sort();
    let mut want = vec![a.id(), b.id()];
    want.sort();
    assert_eq!(flow_ids, want);

    // Archived flows do not count.
    s.delete(&format!("/v1/flows/{}", a.id())).await.expect(200);
    let r = s.delete(&format!("/v1/triggers/{trigger}")).await;
    r.expect_error(409, "in_use");
    assert_eq!(r.body["details"]["flowIds"], json!([b.id()]));
    s.delete(&format!("/v1/flows/{}", b.id())).await.expect(200);
    let r = s.delete(&format!("/v1/triggers/{trigger}")).await;
    r.expect(200).schema(DELETE);
    assert_eq!(r.body["message"], format!("Trigger {trigger} deleted"));
}

// ---------------------------------------------------------------------------------------
// Time zones (§3.9)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn timezones_list_every_accepted_zone() {
    let s = Server::start().await;
    let r = s.get("/v1/timezones").await;
    r.expect(200).schema(TIMEZONES);
    assert_keys(&r.body, &["data"]);
    let zones: Vec<&str> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z.as_str().unwrap())
        .collect();
    assert!(zones.len() > 400, "{} zones", zones.len());
    assert!(zones.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    for z in [
        "UTC",
        "Etc/UTC",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "US/Eastern",
    ] {
        assert!(zones.contains(&z), "{z}");
    }
    let root = s.get("/timezones").await;
    root.expect(200).schema(TIMEZONES);
    assert_eq!(root.body, r.body);
    // The other owner sees the same list.
    let other = s
        .call_as(&s.other_key, Method::GET, "/v1/timezones", None, &[])
        .await;
    assert_eq!(other.body, r.body);
}
