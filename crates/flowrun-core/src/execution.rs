//! Executions as the wire shows them (§4.7) and the run state the engine keeps per row.
//!
//! [`ExecState`] is the mutable part of an execution (progress, step results, recordings,
//! screenshots, files, deliveries), stored as one JSON document and rewritten as the run
//! advances; [`Snapshot`] is what enqueue fixed (the action tree with params, the trigger, the
//! event, the device, the template version), so later edits of definitions never change a run.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::time::Ts;

/// Status of one step (§4.7 `ProgressStep.status`, `StepResult.status`).
pub mod step_status {
    pub const PENDING: &str = "pending";
    pub const RUNNING: &str = "running";
    pub const SUCCESS: &str = "success";
    pub const FAILED: &str = "failed";
    pub const SKIPPED: &str = "skipped";
    pub const CANCELLED: &str = "cancelled";
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProgressStep {
    pub index: i64,
    pub name: String,
    pub service: String,
    pub method: String,
    pub status: String,
    pub started_at: Option<Ts>,
    pub finished_at: Option<Ts>,
    pub session_id: Option<String>,
    pub attempt: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub current_index: Option<i64>,
    pub total: i64,
    pub steps: Vec<ProgressStep>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// `ok` | `flaky` | `broken`
    pub outcome: String,
    pub summary: String,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepResult {
    pub index: i64,
    pub key: String,
    pub name: String,
    pub service: String,
    pub method: String,
    pub status: String,
    pub started_at: Option<Ts>,
    pub finished_at: Option<Ts>,
    pub attempt: i64,
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub body: Option<Value>,
    pub error: Option<String>,
    pub verdict: Option<Verdict>,
    pub session_id: Option<String>,
    #[schema(no_recursion)]
    pub children: Option<Vec<StepResult>>,
    #[schema(no_recursion)]
    pub iterations: Option<Vec<Vec<StepResult>>>,
}

impl StepResult {
    /// The record templates see under `steps.<key>` (§5.9).
    pub fn record(&self) -> Value {
        serde_json::json!({
            "status": self.status,
            "body": self.body,
            "error": self.error,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        })
    }

    /// Marks this step and everything under it that had not ended as `cancelled`; a step
    /// that was running gets `finished_at = at`.
    pub fn cancel_open(&mut self, at: Ts) {
        if self.status == step_status::RUNNING {
            self.finished_at = Some(at);
        }
        if matches!(
            self.status.as_str(),
            step_status::RUNNING | step_status::PENDING
        ) {
            self.status = step_status::CANCELLED.to_string();
        }
        for c in self.children.iter_mut().flatten() {
            c.cancel_open(at);
        }
        for it in self.iterations.iter_mut().flatten() {
            for c in it {
                c.cancel_open(at);
            }
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionResult {
    pub steps: Vec<StepResult>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingSegment {
    pub id: String,
    /// `flow` | `step`
    pub scope: String,
    pub status: String,
    pub step_index: i64,
    pub parent_index: i64,
    pub child_index: i64,
    pub iteration_index: i64,
    pub attempt: i64,
    pub flow_action_id: Option<Uuid>,
    pub recording_id: Option<String>,
    pub recording_device_id: Option<String>,
    pub last_error: Option<String>,
    pub started_at: Option<Ts>,
    pub stopped_at: Option<Ts>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Screenshot {
    pub id: String,
    pub seq: i64,
    /// `task` | `agent` | `recording`
    pub source: String,
    pub step_index: i64,
    pub iteration_index: i64,
    pub step_name: String,
    pub mime_type: String,
    pub captured_at: Option<Ts>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileRef {
    pub file_id: String,
    pub filename: String,
    pub mime_type: String,
    pub size_bytes: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    pub artifact: String,
    pub destination: String,
    pub status: String,
    pub filename: String,
    pub folder: Option<String>,
    pub step_index: Option<i64>,
    pub web_url: Option<String>,
    pub error_code: Option<String>,
    pub started_at: Option<Ts>,
    pub finished_at: Option<Ts>,
}

/// `Repair` (§4.8): one attempt of a self-healing episode.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Repair {
    pub id: Uuid,
    pub flow_id: Uuid,
    pub episode: i64,
    pub attempt: i64,
    pub max_attempts: i64,
    /// `pending` | `running` | `canary` | `promoting` | `repaired` | `failed` | `escalated`
    pub status: String,
    pub source_execution_id: Uuid,
    pub failed_step_index: i64,
    pub original_slug: String,
    pub candidate_slug: String,
    pub device_id: Option<Uuid>,
    pub agent_run_id: Option<String>,
    pub chat_session_id: Option<String>,
    pub verdict: Option<Verdict>,
    pub error: Option<String>,
    pub started_at: Option<Ts>,
    pub finished_at: Option<Ts>,
    pub created_at: Option<Ts>,
    pub updated_at: Option<Ts>,
}

/// The mutable state of an execution, stored as one JSON document.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct ExecState {
    pub progress: Option<Progress>,
    pub result: Option<ExecutionResult>,
    pub recordings: Vec<RecordingSegment>,
    pub screenshots: Vec<Screenshot>,
    pub files: Vec<FileRef>,
    pub deliveries: Vec<DeliveryRecord>,
    pub recording_id: Option<String>,
    pub recording_device_id: Option<String>,
}

impl ExecState {
    /// Parses a stored state; an unreadable document reads as empty (never fails a read).
    pub fn parse(json: &str) -> Self {
        serde_json::from_str(json).unwrap_or_default()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("state serialises")
    }

    /// The state after an abort at `at`: every step that had not ended is `cancelled`.
    pub fn cancelled(mut self, at: Ts) -> Self {
        if let Some(p) = &mut self.progress {
            for s in &mut p.steps {
                if s.status == step_status::RUNNING {
                    s.finished_at = Some(at);
                }
                if matches!(
                    s.status.as_str(),
                    step_status::RUNNING | step_status::PENDING
                ) {
                    s.status = step_status::CANCELLED.to_string();
                }
            }
        }
        if let Some(r) = &mut self.result {
            for s in &mut r.steps {
                s.cancel_open(at);
            }
        }
        self
    }
}

/// A device as enqueue saw it (`execution.device` in templates).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSnap {
    pub id: Uuid,
    pub name: String,
    pub provider: String,
    pub address: String,
}

/// One step of the enqueued action tree.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapStep {
    pub flow_action_id: Uuid,
    pub action_id: Uuid,
    pub key: String,
    /// Display name: `nameOverride`, else the action's name.
    pub name: String,
    pub service: String,
    pub method: String,
    pub action_params: Value,
    pub override_params: Option<Value>,
    pub continue_on_error: bool,
    pub recording_enabled: bool,
    #[serde(default)]
    pub children: Vec<SnapStep>,
}

impl SnapStep {
    /// `action.params` shallow-merged with `overrides.params` (§5.9).
    pub fn merged_params(&self) -> Value {
        let mut out = match &self.action_params {
            Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        if let Some(Value::Object(o)) = &self.override_params {
            for (k, v) in o {
                out.insert(k.clone(), v.clone());
            }
        }
        Value::Object(out)
    }
}

/// Everything enqueue fixed for a run (§5.7).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// `event` | `schedule` | `custom` | `run` | `verification`
    pub source: String,
    pub template_version: i64,
    /// Template root `trigger` (`{id, name, activation, eventType}`).
    pub trigger: Value,
    /// Template root `flow`.
    pub flow: Value,
    /// Template root `event` (`{id, eventType, deviceId, payload, receivedAt}`).
    pub event: Value,
    /// Template root `schedule` (null unless scheduled).
    pub schedule: Value,
    pub chain_depth: i64,
    /// The actor whose call caused the run (null for scheduled rows).
    pub user_id: Option<String>,
    pub device: Option<DeviceSnap>,
    pub capture_screenshots: bool,
    pub health_monitoring: bool,
    pub steps: Vec<SnapStep>,
}

impl Snapshot {
    /// The `progress` of a row at enqueue: every top-level step `pending`.
    pub fn initial_progress(&self) -> Progress {
        Progress {
            current_index: None,
            total: self.steps.len() as i64,
            steps: self
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| ProgressStep {
                    index: i as i64,
                    name: s.name.clone(),
                    service: s.service.clone(),
                    method: s.method.clone(),
                    status: step_status::PENDING.to_string(),
                    started_at: None,
                    finished_at: None,
                    session_id: None,
                    attempt: 0,
                })
                .collect(),
        }
    }
}

/// `ExecutionSummary` (§4.7): the abort response and the base of the other views.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionSummary {
    pub id: Uuid,
    pub flow_id: Uuid,
    pub flow_name: Option<String>,
    pub trigger_id: Uuid,
    pub trigger_name: Option<String>,
    pub event_id: Option<String>,
    pub invocation_id: Option<String>,
    /// `live` | `dry_run` | `verification`
    pub kind: String,
    pub status: Option<String>,
    pub device_id: Option<Uuid>,
    pub error: Option<String>,
    pub started_at: Option<Ts>,
    pub finished_at: Option<Ts>,
    pub recording_id: Option<String>,
    pub recording_device_id: Option<String>,
    pub result: Option<ExecutionResult>,
}

/// `ExecutionListItem` (§4.7).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionListItem {
    #[serde(flatten)]
    pub summary: ExecutionSummary,
    pub created_by: Option<String>,
    pub recordings: Vec<RecordingSegment>,
}

/// `Execution` (§4.7): the full record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    #[serde(flatten)]
    pub item: ExecutionListItem,
    pub agent_id: Option<Uuid>,
    pub progress: Option<Progress>,
    pub files: Vec<FileRef>,
    pub screenshots: Vec<Screenshot>,
    pub deliveries: Vec<DeliveryRecord>,
}

/// `Metrics.byStatus`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetricsByStatus {
    pub pending: i64,
    pub running: i64,
    pub success: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub skipped: i64,
    pub invalid: i64,
}

/// `Metrics` (§4.7).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    pub total: i64,
    pub avg_duration_ms: Option<f64>,
    pub last_execution_at: Option<Ts>,
    pub by_status: MetricsByStatus,
}

/// `TriggerFireResult` (bare).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerFireResult {
    pub deduplicated: bool,
    pub enqueued_count: i64,
    pub invocation_id: String,
}

/// `FlowRunResult`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowRunResult {
    pub enqueued_count: i64,
    pub execution_ids: Vec<Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(status: &str) -> StepResult {
        StepResult {
            index: 0,
            key: "k".into(),
            name: "n".into(),
            service: "tasks_api".into(),
            method: "flow.wait".into(),
            status: status.into(),
            started_at: None,
            finished_at: None,
            attempt: 0,
            params: None,
            body: None,
            error: None,
            verdict: None,
            session_id: None,
            children: None,
            iterations: None,
        }
    }

    #[test]
    fn cancelling_ends_open_steps_and_keeps_finished_ones() {
        let at = Ts::from_millis(1_000).unwrap();
        let mut running = step("running");
        running.children = Some(vec![step("success"), step("pending")]);
        let state = ExecState {
            result: Some(ExecutionResult {
                steps: vec![step("success"), running, step("pending")],
            }),
            ..Default::default()
        }
        .cancelled(at);
        let steps = state.result.unwrap().steps;
        assert_eq!(steps[0].status, "success");
        assert_eq!(steps[1].status, "cancelled");
        assert_eq!(steps[1].finished_at, Some(at));
        let children = steps[1].children.as_ref().unwrap();
        assert_eq!(children[0].status, "success");
        assert_eq!(children[1].status, "cancelled");
        assert_eq!(children[1].finished_at, None);
        assert_eq!(steps[2].status, "cancelled");
    }

    #[test]
    fn merged_params_override_top_level_keys() {
        let s = SnapStep {
            flow_action_id: Uuid::nil(),
            action_id: Uuid::nil(),
            key: "k".into(),
            name: "n".into(),
            service: "tasks_api".into(),
            method: "flow.wait".into(),
            action_params: serde_json::json!({"a": 1, "b": {"x": 1}}),
            override_params: Some(serde_json::json!({"b": {"y": 2}})),
            continue_on_error: false,
            recording_enabled: false,
            children: vec![],
        };
        assert_eq!(
            s.merged_params(),
            serde_json::json!({"a": 1, "b": {"y": 2}})
        );
    }
}
