//! The app-event catalog (§5.4): the device event types flowrun knows, their payload fields,
//! the payload check applied at ingest, and the WhatsApp event derived from notifications.

use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::FieldErrors;
use crate::validate::type_name;

/// One payload field of a catalog entry.
#[derive(Clone, Debug, Serialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PayloadField {
    pub name: String,
    /// `string` | `number` | `boolean` | `object` | `array`
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    #[schema(value_type = Option<Object>)]
    pub example: Option<Value>,
}

/// `AppEventType` (§4.6).
#[derive(Clone, Debug, Serialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppEventType {
    pub app_event_type: String,
    pub app_name: String,
    /// `app` | `system` | `device` | `webhook`
    pub category: String,
    pub label: String,
    pub package_name: Option<String>,
    pub source_event_type: String,
    pub payload_schema: Vec<PayloadField>,
}

type FieldSpec = (&'static str, &'static str, &'static str, Value);

fn field((name, kind, description, example): FieldSpec) -> PayloadField {
    PayloadField {
        name: name.to_string(),
        kind: kind.to_string(),
        description: description.to_string(),
        example: (!example.is_null()).then_some(example),
    }
}

fn device(ty: &str, source: &str, label: &str, fields: Vec<FieldSpec>) -> AppEventType {
    AppEventType {
        app_event_type: ty.to_string(),
        app_name: "Android".to_string(),
        category: "device".to_string(),
        label: label.to_string(),
        package_name: None,
        source_event_type: source.to_string(),
        payload_schema: fields.into_iter().map(field).collect(),
    }
}

fn build() -> Vec<AppEventType> {
    let battery = || {
        vec![(
            "battery_level",
            "string",
            "Battery level in percent",
            json!("15"),
        )]
    };
    let mut all = vec![
        device(
            "device.notification.posted",
            "NOTIFICATION_POSTED",
            "Notification posted",
            vec![
                (
                    "package",
                    "string",
                    "Package of the app that posted it",
                    json!("com.whatsapp"),
                ),
                ("title", "string", "Notification title", json!("Alice")),
                ("text", "string", "Notification text", json!("Hi there")),
                ("tag", "string", "Notification tag", Value::Null),
                ("key", "string", "Notification key", Value::Null),
                ("id", "number", "Notification id", json!(42)),
                (
                    "post_time",
                    "number",
                    "Posting time (ms since the epoch)",
                    json!(1767225600000u64),
                ),
                (
                    "is_ongoing",
                    "boolean",
                    "Whether the notification is ongoing",
                    json!(false),
                ),
            ],
        ),
        device(
            "device.notification.removed",
            "NOTIFICATION_REMOVED",
            "Notification removed",
            vec![
                (
                    "package",
                    "string",
                    "Package of the app that posted it",
                    json!("com.whatsapp"),
                ),
                ("key", "string", "Notification key", Value::Null),
                ("id", "number", "Notification id", json!(42)),
                ("removed", "boolean", "Whether it was removed", json!(true)),
            ],
        ),
        device(
            "device.app.entered",
            "APP_ENTERED",
            "App opened",
            vec![
                (
                    "package",
                    "string",
                    "Package now in the foreground",
                    json!("com.android.chrome"),
                ),
                (
                    "previous_package",
                    "string",
                    "Package before it",
                    Value::Null,
                ),
            ],
        ),
        device(
            "device.app.exited",
            "APP_EXITED",
            "App left",
            vec![
                (
                    "package",
                    "string",
                    "Package that left the foreground",
                    json!("com.android.chrome"),
                ),
                ("next_package", "string", "Package after it", Value::Null),
            ],
        ),
        device(
            "device.battery.level_changed",
            "BATTERY_LEVEL_CHANGED",
            "Battery level changed",
            vec![
                (
                    "battery_level",
                    "string",
                    "Battery level in percent",
                    json!("80"),
                ),
                (
                    "is_charging",
                    "string",
                    "Whether the device is charging",
                    json!("true"),
                ),
            ],
        ),
        device(
            "device.battery.low",
            "BATTERY_LOW",
            "Battery low",
            battery(),
        ),
        device(
            "device.battery.okay",
            "BATTERY_OKAY",
            "Battery okay",
            battery(),
        ),
        device(
            "device.power.connected",
            "POWER_CONNECTED",
            "Power connected",
            battery(),
        ),
        device(
            "device.power.disconnected",
            "POWER_DISCONNECTED",
            "Power disconnected",
            battery(),
        ),
        device(
            "device.user.present",
            "USER_PRESENT",
            "Device unlocked",
            vec![],
        ),
        device(
            "device.network.connected",
            "NETWORK_CONNECTED",
            "Network connected",
            vec![(
                "network_type",
                "string",
                "WIFI, CELLULAR, ETHERNET or OTHER",
                json!("WIFI"),
            )],
        ),
        device(
            "device.network.type_changed",
            "NETWORK_TYPE_CHANGED",
            "Network type changed",
            vec![
                (
                    "network_type",
                    "string",
                    "WIFI, CELLULAR, ETHERNET or OTHER",
                    json!("CELLULAR"),
                ),
                (
                    "previous_network_type",
                    "string",
                    "The type before",
                    json!("WIFI"),
                ),
            ],
        ),
        device(
            "device.sms.received",
            "SMS_RECEIVED",
            "SMS received",
            vec![
                (
                    "phone_number",
                    "string",
                    "Sender's number",
                    json!("+4915112345678"),
                ),
                (
                    "message",
                    "string",
                    "Message text",
                    json!("Your code is 1234"),
                ),
                (
                    "contact_name",
                    "string",
                    "Sender's contact name",
                    Value::Null,
                ),
            ],
        ),
        AppEventType {
            app_event_type: "app.whatsapp.message_received".to_string(),
            app_name: "WhatsApp".to_string(),
            category: "app".to_string(),
            label: "WhatsApp message received".to_string(),
            package_name: Some("com.whatsapp".to_string()),
            source_event_type: "NOTIFICATION_POSTED".to_string(),
            payload_schema: vec![
                (
                    "sender",
                    "string",
                    "Who sent it (notification title)",
                    json!("Alice"),
                ),
                ("text", "string", "Message text", json!("Hi there")),
                (
                    "chatName",
                    "string",
                    "Chat name (null when unknown)",
                    Value::Null,
                ),
                (
                    "packageName",
                    "string",
                    "com.whatsapp",
                    json!("com.whatsapp"),
                ),
                (
                    "postedAt",
                    "string",
                    "When it was posted (RFC 3339)",
                    json!("2026-01-01T00:00:00.000Z"),
                ),
            ]
            .into_iter()
            .map(field)
            .collect(),
        },
    ];
    all.sort_by(|a, b| a.app_event_type.cmp(&b.app_event_type));
    all
}

static CATALOG: std::sync::LazyLock<Vec<AppEventType>> = std::sync::LazyLock::new(build);

/// Every entry, ordered by `appEventType`.
pub fn catalog() -> &'static [AppEventType] {
    &CATALOG
}

pub fn entry(event_type: &str) -> Option<&'static AppEventType> {
    CATALOG.iter().find(|e| e.app_event_type == event_type)
}

/// The payload check of §5.4: each listed field, when present (and not null), must have the
/// listed type; extra fields are allowed; unknown event types accept any object. Errors are
/// reported under `prefix` (`payload.title`).
pub fn check_payload(event_type: &str, payload: &Map<String, Value>, prefix: &str) -> FieldErrors {
    let mut errs = FieldErrors::new();
    let Some(e) = entry(event_type) else {
        return errs;
    };
    for f in &e.payload_schema {
        let Some(v) = payload.get(&f.name) else {
            continue;
        };
        if v.is_null() {
            continue;
        }
        let ok = match f.kind.as_str() {
            "string" => v.is_string(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "object" => v.is_object(),
            "array" => v.is_array(),
            _ => true,
        };
        if !ok {
            errs.push(
                format!("{prefix}.{}", f.name),
                "invalid_type",
                format!(
                    "{} of {event_type} must be a {}, got {}",
                    f.name,
                    f.kind,
                    type_name(v)
                ),
            );
        }
    }
    errs
}

/// The WhatsApp event derived from a `device.notification.posted` of `com.whatsapp` (§5.4):
/// its payload, or `None` when the notification is not WhatsApp's.
pub fn derive_whatsapp(event_type: &str, payload: &Map<String, Value>) -> Option<Value> {
    if event_type != "device.notification.posted"
        || payload.get("package").and_then(Value::as_str) != Some("com.whatsapp")
    {
        return None;
    }
    let posted_at = payload
        .get("post_time")
        .and_then(Value::as_f64)
        .and_then(|ms| crate::Ts::from_millis(ms as i64))
        .map(|t| Value::String(t.to_rfc3339()))
        .unwrap_or(Value::Null);
    Some(json!({
        "sender": payload.get("title").cloned().unwrap_or(Value::Null),
        "text": payload.get("text").cloned().unwrap_or(Value::Null),
        "chatName": null,
        "packageName": "com.whatsapp",
        "postedAt": posted_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_ordered_and_complete() {
        let types: Vec<&str> = catalog()
            .iter()
            .map(|e| e.app_event_type.as_str())
            .collect();
        assert_eq!(types.len(), 14);
        let mut sorted = types.clone();
        sorted.sort();
        assert_eq!(types, sorted);
        assert_eq!(
            entry("app.whatsapp.message_received")
                .unwrap()
                .package_name
                .as_deref(),
            Some("com.whatsapp")
        );
        assert!(
            entry("device.user.present")
                .unwrap()
                .payload_schema
                .is_empty()
        );
    }

    #[test]
    fn payload_fields_are_type_checked_when_present() {
        let p = |v: Value| v.as_object().unwrap().clone();
        assert!(
            check_payload(
                "device.notification.posted",
                &p(json!({"title": "x", "extra": 1})),
                "payload"
            )
            .is_empty()
        );
        let errs = check_payload(
            "device.notification.posted",
            &p(json!({"title": 5, "id": "7", "is_ongoing": null})),
            "payload",
        );
        let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["payload.title", "payload.id"]);
        assert!(check_payload("custom.thing", &p(json!({"title": 5})), "payload").is_empty());
    }

    #[test]
    fn whatsapp_is_derived_from_its_notifications_only() {
        let p = json!({"package": "com.whatsapp", "title": "Alice", "text": "hi", "post_time": 0});
        let d = derive_whatsapp("device.notification.posted", p.as_object().unwrap()).unwrap();
        assert_eq!(d["sender"], "Alice");
        assert_eq!(d["postedAt"], "1970-01-01T00:00:00.000Z");
        assert!(d["chatName"].is_null());
        let other = json!({"package": "com.android.chrome"});
        assert!(
            derive_whatsapp("device.notification.posted", other.as_object().unwrap()).is_none()
        );
    }
}
