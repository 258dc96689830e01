//! The stored definitions as they appear on the wire (camelCase, every key present).
//!
//! Each struct serialises to exactly the output object of the API spec (§4), so a handler
//! answers with the stored value itself; the same JSON is what the store persists.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::time::Ts;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    /// `event` | `schedule` | `custom`
    pub activation: String,
    pub event_type: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub conditions: Option<Value>,
    pub schedule_rule: Option<ScheduleRule>,
    pub timezone: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub custom_payload_schema: Option<Value>,
    pub next_fire_time: Option<Ts>,
    pub owner_id: String,
    pub created_by: Option<String>,
    pub user_id: String,
    pub created_at: Ts,
    pub updated_at: Ts,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleRule {
    /// `once` | `cron` | `recurring`
    #[serde(rename = "type")]
    pub kind: String,
    pub date_time: Option<String>,
    pub expression: Option<String>,
    pub rrule: Option<String>,
    pub jitter: Option<Jitter>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Jitter {
    pub before_minutes: Option<i64>,
    pub after_minutes: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    pub id: Uuid,
    pub catalog_entry_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub service: String,
    pub method: String,
    #[schema(value_type = Object)]
    pub params: Value,
    #[schema(value_type = Option<Object>)]
    pub params_schema: Option<Value>,
    pub owner_id: String,
    pub created_by: Option<String>,
    pub user_id: String,
    pub created_at: Ts,
    pub updated_at: Ts,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub trigger_id: Uuid,
    pub device_ids: Vec<Uuid>,
    pub agent_id: Option<Uuid>,
    /// `enabled` | `disabled` | `archived`
    pub lifecycle_status: String,
    pub enabled: bool,
    pub archived_at: Option<Ts>,
    /// `healthy` | `failing` | `blocked`
    pub status: String,
    pub consecutive_failures: i64,
    pub last_failure_at: Option<Ts>,
    pub last_failure_code: Option<String>,
    pub blocked_at: Option<Ts>,
    pub last_triggered_at: Option<Ts>,
    pub health_monitoring_enabled: bool,
    pub self_healing_enabled: bool,
    pub self_healing_max_attempts: i64,
    pub cooldown_seconds: Option<i64>,
    /// `flow` | `device`
    pub cooldown_scope: String,
    pub notify_on_success: bool,
    pub notify_on_failure: bool,
    pub notify_webhook_id: Option<Uuid>,
    pub recording_policy: RecordingPolicy,
    pub recording_enabled: bool,
    pub delivery: Option<DeliveryConfig>,
    pub template_resolution_version: i64,
    pub owner_id: String,
    pub created_by: Option<String>,
    pub user_id: String,
    pub created_at: Ts,
    pub updated_at: Ts,
}

impl Flow {
    pub fn is_archived(&self) -> bool {
        self.lifecycle_status == "archived"
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingPolicy {
    /// `off` | `flow` | `selected_steps`
    pub mode: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryConfig {
    /// `mobilerun` | `one_drive` | `google_drive`
    pub destination: String,
    pub folder: Option<String>,
    pub recording: Option<DeliveryRecording>,
    #[schema(value_type = Option<Object>)]
    pub screenshots: Option<Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecording {
    pub filename: String,
}

/// One node of a flow's action tree (a binding of an action at a position).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowAction {
    pub id: Uuid,
    pub flow_id: Uuid,
    pub action_id: Uuid,
    pub parent_flow_action_id: Option<Uuid>,
    pub position: i64,
    pub key: String,
    pub name_override: Option<String>,
    pub overrides: Option<Overrides>,
    pub continue_on_error: bool,
    pub recording_enabled: bool,
    pub created_at: Ts,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Overrides {
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
}

/// A flow together with its action tree, the unit the store persists.
/// `nodes` is kept in list order: top-level by position, each followed by its children.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowRecord {
    pub flow: Flow,
    pub nodes: Vec<FlowAction>,
    /// Cooldown windows (never on the wire; kept with the flow so they survive restarts).
    #[serde(default)]
    #[schema(ignore)]
    pub gates: GateState,
}

/// Open cooldown windows of a flow (§5.6), as end instants in ms since the epoch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct GateState {
    /// Scope `flow`: the window's end.
    pub cooldown_until: Option<i64>,
    /// Scope `device`: per device id (`""` = the null device), the window's end.
    pub device_cooldown_until: std::collections::BTreeMap<String, i64>,
}

impl FlowRecord {
    /// Re-establishes list order: top-level bindings by position, each followed by its
    /// children by position.
    pub fn sort_nodes(&mut self) {
        let mut top: Vec<FlowAction> = self
            .nodes
            .iter()
            .filter(|n| n.parent_flow_action_id.is_none())
            .cloned()
            .collect();
        top.sort_by_key(|n| n.position);
        let mut out = Vec::with_capacity(self.nodes.len());
        for t in top {
            let mut children: Vec<FlowAction> = self
                .nodes
                .iter()
                .filter(|n| n.parent_flow_action_id == Some(t.id))
                .cloned()
                .collect();
            children.sort_by_key(|n| n.position);
            out.push(t);
            out.extend(children);
        }
        self.nodes = out;
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub id: Uuid,
    pub name: String,
    /// `adb` | `mobilerun`
    pub provider: String,
    pub address: String,
    /// `unknown` | `online` | `offline` | `busy`
    pub state: String,
    pub created_at: Ts,
    pub updated_at: Ts,
    pub owner_id: String,
}

/// Who is calling: the owner (tenant) and the actor named by the API key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub owner_id: String,
    pub actor_id: String,
}
