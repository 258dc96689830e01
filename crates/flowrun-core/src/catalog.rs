//! The built-in action catalog (§5.11): every method the engine can run, with the JSON
//! Schema of its params and of its output `body`.
//!
//! Catalog content is fixed per server version; ids are UUIDv5 of the method so they are the
//! same on every installation.

use std::sync::LazyLock;

use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::ids::catalog_entry_id;

pub const SERVICES: [&str; 5] = [
    "tasks_api",
    "devices_api",
    "agents_api",
    "webhooks",
    "integrations_api",
];

/// One catalog entry as served by `GET /action-catalog` (built-ins have null timestamps).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogEntry {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub service: String,
    pub method: String,
    pub provider: String,
    #[schema(value_type = Option<Object>)]
    pub params_schema: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub output_schema: Option<Value>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

impl CatalogEntry {
    /// Whether steps of this method act on the execution's device.
    pub fn needs_device(&self) -> bool {
        needs_device(&self.method, &self.service)
    }

    /// Whether nodes of this method may have children (`flow.for_each`, `flow.if`).
    pub fn allows_children(&self) -> bool {
        allows_children(&self.method)
    }
}

/// Device-free = `flow.*`, `webhooks.send` and any `integrations_api` method.
pub fn needs_device(method: &str, service: &str) -> bool {
    !(method.starts_with("flow.") || method == "webhooks.send" || service == "integrations_api")
}

pub fn allows_children(method: &str) -> bool {
    method == "flow.for_each" || method == "flow.if"
}

fn obj(properties: Value, required: &[&str]) -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

fn out(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required})
}

const NAMED_KEYS: [&str; 12] = [
    "back",
    "home",
    "enter",
    "delete",
    "tab",
    "escape",
    "menu",
    "search",
    "recent_apps",
    "volume_up",
    "volume_down",
    "power",
];

fn build() -> Vec<CatalogEntry> {
    let ok = || out(json!({"ok": {"const": true}}), &["ok"]);
    let coord = |d: &str, ex: u32| json!({"type": "integer", "minimum": 0, "description": d, "examples": [ex]});
    let mut v = vec![
        (
            "flow.wait",
            "Wait",
            "tasks_api",
            "Pauses the flow for a number of seconds.",
            obj(
                json!({"seconds": {"type": "number", "minimum": 0, "maximum": 86400,
                    "description": "Seconds to wait", "examples": [5]}}),
                &["seconds"],
            ),
            out(json!({"waitedSeconds": {"type": "number"}}), &["waitedSeconds"]),
        ),
        (
            "flow.for_each",
            "For each",
            "tasks_api",
            "Runs its child steps once per item of a list.",
            obj(
                json!({
                    "items": {"type": ["array", "string"], "description": "The list to iterate, or a template resolving to one", "examples": [["a", "b"]]},
                    "itemVariable": {"type": "string", "pattern": crate::keys::KEY_PATTERN, "default": "item", "description": "Name under which the current item is visible to templates"},
                    "maxIterations": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100, "description": "Upper bound on iterations"}
                }),
                &["items"],
            ),
            out(
                json!({"count": {"type": "integer"}, "truncated": {"type": "boolean"},
                    "iterations": {"type": "array", "items": {"type": "object"}}}),
                &["count", "truncated", "iterations"],
            ),
        ),
        (
            "flow.if",
            "If",
            "tasks_api",
            "Runs its child steps only when a condition holds.",
            obj(
                json!({"condition": {"type": "object", "description": "A condition tree (all/any/not/leaf)", "examples": [{"field": "event.payload.amount", "op": "gt", "value": 10}]}}),
                &["condition"],
            ),
            out(json!({"result": {"type": "boolean"}}), &["result"]),
        ),
        (
            "tasks.run",
            "Run agent task",
            "tasks_api",
            "Runs an agent task on the device and waits for its result.",
            obj(
                json!({
                    "task": {"type": "string", "minLength": 1, "maxLength": 20000, "description": "What the agent should do", "examples": ["Open settings and enable dark mode"]},
                    "llmModel": {"type": "string", "description": "Model to use (server default when omitted)"},
                    "maxSteps": {"type": "integer", "minimum": 1, "maximum": 500, "description": "Maximum agent steps"},
                    "executionTimeout": {"type": "integer", "minimum": 1, "maximum": 2700, "default": 900, "description": "Timeout in seconds"},
                    "outputSchema": {"type": "object", "description": "JSON Schema of a structured output"},
                    "reasoning": {"type": "boolean", "description": "Enable reasoning"},
                    "vision": {"type": "boolean", "description": "Enable vision"},
                    "temperature": {"type": "number", "minimum": 0, "maximum": 2, "description": "Sampling temperature"},
                    "apps": {"type": "array", "items": {"type": "string"}, "description": "Apps the task may use"},
                    "files": {"type": "array", "items": {"type": "string"}, "description": "Files available to the task"},
                    "credentials": {"type": "array", "description": "Stored credentials to expose", "items": {"type": "object", "properties": {"packageName": {"type": "string"}, "credentialNames": {"type": "array", "items": {"type": "string"}}}, "required": ["packageName", "credentialNames"], "additionalProperties": false}},
                    "vpnCountry": {"type": "string", "enum": ["US", "BR", "FR", "DE", "IN", "JP", "KR", "ZA"], "description": "VPN exit country"},
                    "displayId": {"type": "integer", "description": "Display to act on"}
                }),
                &["task"],
            ),
            out(
                json!({"taskId": {"type": "string"}, "status": {"type": "string"},
                    "succeeded": {"type": ["boolean", "null"]}, "output": {},
                    "steps": {"type": ["integer", "null"]}}),
                &["taskId", "status", "succeeded", "output", "steps"],
            ),
        ),
        (
            "devices.tap",
            "Tap",
            "devices_api",
            "Taps the screen at a point.",
            obj(json!({"x": coord("X coordinate in pixels", 540), "y": coord("Y coordinate in pixels", 1200)}), &["x", "y"]),
            ok(),
        ),
        (
            "devices.swipe",
            "Swipe",
            "devices_api",
            "Swipes from one point to another.",
            obj(
                json!({"startX": coord("Start X", 540), "startY": coord("Start Y", 1600), "endX": coord("End X", 540), "endY": coord("End Y", 400),
                    "durationMs": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 300, "description": "Swipe duration in milliseconds"}}),
                &["startX", "startY", "endX", "endY"],
            ),
            ok(),
        ),
        (
            "devices.type",
            "Type text",
            "devices_api",
            "Types text into the focused field.",
            obj(
                json!({"text": {"type": "string", "maxLength": 10000, "description": "Text to type", "examples": ["hello"]},
                    "clear": {"type": "boolean", "default": false, "description": "Clear the field first"}}),
                &["text"],
            ),
            ok(),
        ),
        (
            "devices.key",
            "Press key",
            "devices_api",
            "Presses a key.",
            obj(
                json!({"key": {"description": "Android key code or a named key",
                    "anyOf": [{"type": "integer", "minimum": 0, "maximum": 400}, {"type": "string", "enum": NAMED_KEYS}],
                    "examples": ["home"]}}),
                &["key"],
            ),
            out(json!({"ok": {"const": true}, "keyCode": {"type": "integer"}}), &["ok", "keyCode"]),
        ),
        (
            "devices.app.start",
            "Start app",
            "devices_api",
            "Starts an app.",
            obj(
                json!({"packageName": {"type": "string", "minLength": 1, "description": "Android package name", "examples": ["com.android.settings"]},
                    "activity": {"type": "string", "description": "Activity to start"}}),
                &["packageName"],
            ),
            ok(),
        ),
        (
            "devices.app.stop",
            "Stop app",
            "devices_api",
            "Force-stops an app.",
            obj(
                json!({"packageName": {"type": "string", "minLength": 1, "description": "Android package name", "examples": ["com.android.settings"]}}),
                &["packageName"],
            ),
            ok(),
        ),
        (
            "devices.screenshot",
            "Take screenshot",
            "devices_api",
            "Captures the screen and stores it with the execution.",
            obj(json!({}), &[]),
            out(
                json!({"screenshotId": {"type": "string"}, "mimeType": {"const": "image/png"}}),
                &["screenshotId", "mimeType"],
            ),
        ),
        (
            "devices.wait_for_text",
            "Wait for text",
            "devices_api",
            "Waits until a text appears on screen.",
            obj(
                json!({"text": {"type": "string", "description": "Text to look for", "examples": ["Welcome"]},
                    "timeoutSeconds": {"type": "integer", "minimum": 1, "maximum": 600, "default": 30, "description": "How long to wait"},
                    "exact": {"type": "boolean", "default": false, "description": "Exact match instead of a case-insensitive substring"}}),
                &["text"],
            ),
            out(json!({"found": {"const": true}, "elapsedMs": {"type": "integer"}}), &["found", "elapsedMs"]),
        ),
        (
            "agent.run",
            "Run agent",
            "agents_api",
            "Runs a configured agent on the device and waits for its result.",
            obj(
                json!({"agentId": {"type": "string", "minLength": 1, "description": "Agent to run"},
                    "input": {"type": ["string", "object"], "description": "Input for the agent"},
                    "timeoutSeconds": {"type": "integer", "minimum": 1, "maximum": 2700, "default": 900, "description": "Timeout in seconds"},
                    "requestVerdict": {"type": "boolean", "default": false, "description": "Ask the agent for a verdict"}}),
                &["agentId"],
            ),
            out(
                json!({"agentRunId": {"type": "string"}, "status": {"type": "string"},
                    "succeeded": {"type": ["boolean", "null"]}, "output": {},
                    "verdict": {"type": ["object", "null"]}}),
                &["agentRunId", "status", "succeeded", "output", "verdict"],
            ),
        ),
        (
            "webhooks.send",
            "Send webhook",
            "webhooks",
            "Queues a signed delivery to one of your webhook endpoints.",
            obj(
                json!({"webhookId": {"type": "string", "format": "uuid", "description": "Target webhook endpoint"},
                    "payload": {"type": "object", "default": {}, "description": "Data to send"}}),
                &["webhookId"],
            ),
            out(
                json!({"eventId": {"type": "string"}, "deliveryId": {"type": "string", "format": "uuid"}}),
                &["eventId", "deliveryId"],
            ),
        ),
    ]
    .into_iter()
    .map(|(method, name, service, desc, params, output)| CatalogEntry {
        id: catalog_entry_id(method),
        name: name.to_string(),
        description: Some(desc.to_string()),
        service: service.to_string(),
        method: method.to_string(),
        provider: "mobilerun".to_string(),
        params_schema: Some(params),
        output_schema: Some(output),
        created_at: None,
        updated_at: None,
    })
    .collect::<Vec<_>>();
    v.sort_by(|a, b| (&a.service, &a.method).cmp(&(&b.service, &b.method)));
    v
}

static ENTRIES: LazyLock<Vec<CatalogEntry>> = LazyLock::new(build);

/// Every entry, ordered by `service` then `method`.
pub fn entries() -> &'static [CatalogEntry] {
    &ENTRIES
}

pub fn by_id(id: Uuid) -> Option<&'static CatalogEntry> {
    ENTRIES.iter().find(|e| e.id == id)
}

pub fn by_method(method: &str) -> Option<&'static CatalogEntry> {
    ENTRIES.iter().find(|e| e.method == method)
}

/// One parameter of a service method (`GET /actions/services/{service}/methods`).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct MethodParam {
    pub name: String,
    /// `string` | `number` | `boolean` | `object` | `array`
    #[serde(rename = "type")]
    pub kind: String,
    pub required: bool,
    pub description: String,
    #[schema(value_type = Option<Object>)]
    pub default: Value,
    #[schema(value_type = Option<Object>)]
    pub example: Value,
}

/// A method of a service with its params, derived from the entry's `paramsSchema`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceMethod {
    pub method: String,
    pub params: Vec<MethodParam>,
}

/// The methods of one service, ordered by method; `None` for an unknown service.
pub fn service_methods(service: &str) -> Option<Vec<ServiceMethod>> {
    if !SERVICES.contains(&service) {
        return None;
    }
    let mut out: Vec<ServiceMethod> = ENTRIES
        .iter()
        .filter(|e| e.service == service)
        .map(|e| ServiceMethod {
            method: e.method.clone(),
            params: e
                .params_schema
                .as_ref()
                .map(method_params)
                .unwrap_or_default(),
        })
        .collect();
    out.sort_by(|a, b| a.method.cmp(&b.method));
    Some(out)
}

/// The top-level properties of a params schema, in declaration order (§3.3).
pub fn method_params(schema: &Value) -> Vec<MethodParam> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema["properties"].as_object() else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, p)| MethodParam {
            name: name.clone(),
            kind: param_type(p),
            required: required.contains(&name.as_str()),
            description: p["description"].as_str().unwrap_or_default().to_string(),
            default: p.get("default").cloned().unwrap_or(Value::Null),
            example: p["examples"]
                .as_array()
                .and_then(|a| a.first())
                .cloned()
                .unwrap_or(Value::Null),
        })
        .collect()
}

/// The wire type of one property: `integer` reads as `number`, a union as its first non-null
/// member, `anyOf` as its first branch. A property without any type accepts anything; the
/// wire enum has no "any", and `object` is the closest honest answer.
fn param_type(p: &Value) -> String {
    fn wire(t: &str) -> Option<&str> {
        match t {
            "integer" => Some("number"),
            "string" | "number" | "boolean" | "object" | "array" => Some(t),
            _ => None,
        }
    }
    let found = match &p["type"] {
        Value::String(t) => wire(t),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).find_map(wire),
        _ => None,
    };
    if let Some(t) = found {
        return t.to_string();
    }
    if let Some(first) = p["anyOf"].as_array().and_then(|a| a.first()) {
        return param_type(first);
    }
    "object".to_string()
}

/// Maps a named key of `devices.key` to its Android key code.
pub fn key_code(name: &str) -> Option<i64> {
    Some(match name {
        "back" => 4,
        "home" => 3,
        "enter" => 66,
        "delete" => 67,
        "tab" => 61,
        "escape" => 111,
        "menu" => 82,
        "search" => 84,
        "recent_apps" => 187,
        "volume_up" => 24,
        "volume_down" => 25,
        "power" => 26,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_has_schemas_that_compile() {
        assert_eq!(entries().len(), 14);
        for e in entries() {
            let s = e.params_schema.as_ref().unwrap();
            jsonschema::draft202012::new(s).unwrap_or_else(|err| panic!("{}: {err}", e.method));
            assert!(e.output_schema.is_some());
        }
    }

    #[test]
    fn ordered_by_service_then_method() {
        let keys: Vec<_> = entries()
            .iter()
            .map(|e| (e.service.clone(), e.method.clone()))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn service_methods_follow_the_schema() {
        let tasks = service_methods("tasks_api").unwrap();
        let names: Vec<_> = tasks.iter().map(|m| m.method.as_str()).collect();
        assert_eq!(
            names,
            ["flow.for_each", "flow.if", "flow.wait", "tasks.run"]
        );
        let each = &tasks[0].params;
        let pnames: Vec<_> = each.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(pnames, ["items", "itemVariable", "maxIterations"]);
        assert_eq!(each[0].kind, "array", "first non-null member of the union");
        assert!(each[0].required);
        assert_eq!(each[0].example, json!(["a", "b"]));
        assert_eq!(each[2].kind, "number", "integer reads as number");
        assert_eq!(each[2].default, json!(100));
        assert!(!each[2].required);
        assert_eq!(each[2].example, Value::Null);
        let devices = service_methods("devices_api").unwrap();
        let key = devices.iter().find(|m| m.method == "devices.key").unwrap();
        assert_eq!(
            key.params[0].kind, "number",
            "anyOf reads as its first branch"
        );
        let shot = devices
            .iter()
            .find(|m| m.method == "devices.screenshot")
            .unwrap();
        assert!(shot.params.is_empty());
        assert_eq!(service_methods("integrations_api").unwrap().len(), 0);
        assert!(service_methods("nope").is_none());
        assert_eq!(param_type(&json!({"type": ["null", "integer"]})), "number");
        assert_eq!(param_type(&json!({})), "object");
    }

    #[test]
    fn device_free_methods() {
        assert!(!by_method("flow.wait").unwrap().needs_device());
        assert!(!by_method("webhooks.send").unwrap().needs_device());
        assert!(by_method("devices.tap").unwrap().needs_device());
        assert!(by_method("flow.if").unwrap().allows_children());
    }
}
