//! What enqueue fixes on a row (§5.7): the action tree with params, the trigger, the event and
//! the device, plus the §5.14 graph hash of the flow.

use flowrun_core::catalog;
use flowrun_core::execution::{DeviceSnap, SnapStep, Snapshot};
use flowrun_core::model::{Device, FlowAction, FlowRecord, Trigger};
use flowrun_store::{Defs, canonical_json};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The trigger-side inputs of a run.
pub struct RunInputs<'a> {
    pub source: &'a str,
    pub payload: &'a Value,
    pub event_id: Option<&'a str>,
    pub event_type: Option<&'a str>,
    /// The event's own device (events), else the target.
    pub event_device: Option<Uuid>,
    pub received_at: &'a str,
    pub schedule: Value,
    pub user_id: Option<&'a str>,
    pub capture_screenshots: bool,
}

/// The action tree of a flow as steps, children nested (`nodes` are in list order).
pub fn steps_of(defs: &Defs, rec: &FlowRecord) -> Vec<SnapStep> {
    let owner = &rec.flow.owner_id;
    let snap = |n: &FlowAction| {
        let action = defs.action(owner, n.action_id);
        let method = action.map(|a| a.method.clone()).unwrap_or_default();
        let service = action.map(|a| a.service.clone()).unwrap_or_default();
        let name = n
            .name_override
            .clone()
            .or_else(|| action.map(|a| a.name.clone()))
            .unwrap_or_else(|| method.clone());
        SnapStep {
            flow_action_id: n.id,
            action_id: n.action_id,
            key: n.key.clone(),
            name,
            service,
            method,
            action_params: action.map(|a| a.params.clone()).unwrap_or(json!({})),
            override_params: n.overrides.as_ref().and_then(|o| o.params.clone()),
            continue_on_error: n.continue_on_error,
            recording_enabled: n.recording_enabled,
            children: Vec::new(),
        }
    };
    let mut out: Vec<SnapStep> = Vec::new();
    let mut index_of_top = std::collections::HashMap::new();
    for n in &rec.nodes {
        match n.parent_flow_action_id {
            None => {
                index_of_top.insert(n.id, out.len());
                out.push(snap(n));
            }
            Some(p) => {
                if let Some(&i) = index_of_top.get(&p) {
                    out[i].children.push(snap(n));
                }
            }
        }
    }
    out
}

/// Whether any step of the tree acts on a device.
pub fn needs_device(steps: &[SnapStep]) -> bool {
    steps
        .iter()
        .any(|s| catalog::needs_device(&s.method, &s.service) || needs_device(&s.children))
}

pub fn device_snap(d: &Device) -> DeviceSnap {
    DeviceSnap {
        id: d.id,
        name: d.name.clone(),
        provider: d.provider.clone(),
        address: d.address.clone(),
    }
}

pub fn build(
    rec: &FlowRecord,
    trigger: &Trigger,
    steps: Vec<SnapStep>,
    device: Option<&Device>,
    inputs: &RunInputs<'_>,
) -> Snapshot {
    let f = &rec.flow;
    Snapshot {
        source: inputs.source.to_string(),
        template_version: f.template_resolution_version,
        trigger: json!({
            "id": trigger.id,
            "name": trigger.name,
            "activation": trigger.activation,
            "eventType": trigger.event_type,
        }),
        flow: json!({
            "id": f.id,
            "name": f.name,
            "description": f.description,
            "deviceIds": f.device_ids,
            "templateResolutionVersion": f.template_resolution_version,
        }),
        event: json!({
            "id": inputs.event_id,
            "eventType": inputs.event_type,
            "deviceId": inputs.event_device.or(device.map(|d| d.id)),
            "payload": inputs.payload,
            "receivedAt": inputs.received_at,
        }),
        schedule: inputs.schedule.clone(),
        chain_depth: 0,
        user_id: inputs.user_id.map(str::to_string),
        device: device.map(device_snap),
        capture_screenshots: inputs.capture_screenshots,
        health_monitoring: f.health_monitoring_enabled,
        steps,
    }
}

/// §5.14: SHA-256 (hex) of the canonical JSON of the flow's graph.
pub fn graph_hash(defs: &Defs, rec: &FlowRecord, trigger: &Trigger) -> String {
    let f = &rec.flow;
    let mut device_ids: Vec<String> = f.device_ids.iter().map(|d| d.to_string()).collect();
    device_ids.sort();
    let key_of = |id: Uuid| rec.nodes.iter().find(|n| n.id == id).map(|n| n.key.clone());
    let nodes: Vec<Value> = rec
        .nodes
        .iter()
        .map(|n| {
            let action = defs.action(&f.owner_id, n.action_id);
            json!({
                "key": n.key,
                "parentKey": n.parent_flow_action_id.and_then(key_of),
                "position": n.position,
                "actionId": n.action_id,
                "method": action.map(|a| a.method.clone()),
                "actionParams": action.map(|a| a.params.clone()),
                "nameOverride": n.name_override,
                "overrides": n.overrides,
                "continueOnError": n.continue_on_error,
                "recordingEnabled": n.recording_enabled,
            })
        })
        .collect();
    let graph = json!({
        "triggerId": f.trigger_id,
        "trigger": {
            "activation": trigger.activation,
            "eventType": trigger.event_type,
            "conditions": trigger.conditions,
            "scheduleRule": trigger.schedule_rule,
            "timezone": trigger.timezone,
            "customPayloadSchema": trigger.custom_payload_schema,
        },
        "templateResolutionVersion": f.template_resolution_version,
        "deviceIds": device_ids,
        "nodes": nodes,
    });
    hex::encode(Sha256::digest(canonical_json(&graph).as_bytes()))
}
