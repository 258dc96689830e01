//! What enqueue fixes on a row (§5.7): the action tree with params, the trigger, the event and
//! the device, plus the §5.14 graph hash of the flow.

use flowrun_core::catalog;
use flowrun_core::execution::{DeviceSnap, SnapStep, Snapshot};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flowrun_core::model::{Action, Device, FlowAction, FlowRecord, Trigger};
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
/// [`graph_hash`] of what an earlier call saw, kept while the flow's definition, its trigger
/// and its actions are the same: every firing needs the hash, and computing it (canonical
/// JSON of the whole tree and SHA-256) cost more than the rest of planning the row. The
/// trigger and actions are compared by identity (a change stores a new `Arc`; the entry
/// holds the old one, so its address cannot be reused), the flow's parts by value (its
/// record is stored again by every firing, for `lastTriggeredAt`).
pub fn graph_hash_cached(defs: &Defs, rec: &FlowRecord, trigger: &Arc<Trigger>) -> String {
    struct Seen {
        trigger: Arc<Trigger>,
        actions: Vec<Option<Arc<Action>>>,
        nodes: Vec<FlowAction>,
        trigger_id: Uuid,
        template_resolution_version: i64,
        device_ids: Vec<Uuid>,
        hash: String,
    }
    static SEEN: std::sync::LazyLock<Mutex<HashMap<Uuid, Seen>>> =
        std::sync::LazyLock::new(Default::default);
    let f = &rec.flow;
    let actions: Vec<Option<Arc<Action>>> = rec
        .nodes
        .iter()
        .map(|n| defs.action(&f.owner_id, n.action_id).cloned())
        .collect();
    let same = |s: &Seen| {
        Arc::ptr_eq(&s.trigger, trigger)
            && s.actions.len() == actions.len()
            && s.actions.iter().zip(&actions).all(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            })
            && s.nodes == rec.nodes
            && s.trigger_id == f.trigger_id
            && s.template_resolution_version == f.template_resolution_version
            && s.device_ids == f.device_ids
    };
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = seen.get(&f.id).filter(|s| same(s)) {
        return s.hash.clone();
    }
    let hash = graph_hash(defs, rec, trigger);
    if seen.len() >= 10_000 {
        seen.clear();
    }
    seen.insert(
        f.id,
        Seen {
            trigger: trigger.clone(),
            actions,
            nodes: rec.nodes.clone(),
            trigger_id: f.trigger_id,
            template_resolution_version: f.template_resolution_version,
            device_ids: f.device_ids.clone(),
            hash: hash.clone(),
        },
    );
    hash
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const AT: &str = "2026-01-01T00:00:00.000Z";

    fn trigger(id: Uuid, event_type: &str) -> Arc<Trigger> {
        Arc::new(
            serde_json::from_value(json!({
                "id": id, "name": "t", "description": null, "activation": "event",
                "eventType": event_type, "conditions": null, "scheduleRule": null,
                "timezone": null, "customPayloadSchema": null, "nextFireTime": null,
                "ownerId": "o", "createdBy": null, "userId": "o",
                "createdAt": AT, "updatedAt": AT,
            }))
            .unwrap(),
        )
    }

    fn action(id: Uuid, params: Value) -> Arc<Action> {
        Arc::new(
            serde_json::from_value(json!({
                "id": id, "catalogEntryId": Uuid::from_u128(9), "name": "a",
                "description": null, "service": "webhooks", "method": "webhooks.send",
                "params": params, "paramsSchema": null, "ownerId": "o", "createdBy": null,
                "userId": "o", "createdAt": AT, "updatedAt": AT,
            }))
            .unwrap(),
        )
    }

    fn flow(id: Uuid, trigger_id: Uuid, action_id: Uuid, key: &str) -> FlowRecord {
        serde_json::from_value(json!({
            "flow": {
                "id": id, "name": "f", "description": null,
                "triggerId": trigger_id, "deviceIds": [], "agentId": null,
                "lifecycleStatus": "enabled", "enabled": true,
                "archivedAt": null, "status": "healthy", "consecutiveFailures": 0,
                "lastFailureAt": null, "lastFailureCode": null, "blockedAt": null,
                "lastTriggeredAt": null, "healthMonitoringEnabled": true,
                "selfHealingEnabled": false, "selfHealingMaxAttempts": 3,
                "cooldownSeconds": null, "cooldownScope": "flow", "notifyOnSuccess": false,
                "notifyOnFailure": false, "notifyWebhookId": null,
                "recordingPolicy": {"mode": "off"}, "recordingEnabled": false,
                "delivery": null, "templateResolutionVersion": 3, "ownerId": "o",
                "createdBy": null, "userId": "o", "createdAt": AT, "updatedAt": AT
            },
            "nodes": [{
                "id": Uuid::from_u128(50), "flowId": id, "actionId": action_id,
                "parentFlowActionId": null, "position": 0, "key": key,
                "nameOverride": null, "overrides": null, "continueOnError": false,
                "recordingEnabled": false, "createdAt": AT,
            }]
        }))
        .unwrap()
    }

    #[test]
    fn the_kept_graph_hash_follows_every_change_of_its_inputs() {
        let (flow_id, trigger_id, action_id) =
            (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut defs = Defs::default();
        let t = trigger(trigger_id, "a.b");
        defs.actions
            .insert(action_id, action(action_id, json!({"n": 1})));
        let rec = flow(flow_id, trigger_id, action_id, "k");
        let fresh = |defs: &Defs, rec: &FlowRecord, t: &Arc<Trigger>| {
            let kept = graph_hash_cached(defs, rec, t);
            assert_eq!(kept, graph_hash(defs, rec, t), "the kept hash is the hash");
            kept
        };
        let first = fresh(&defs, &rec, &t);
        assert_eq!(fresh(&defs, &rec, &t), first, "unchanged inputs, same hash");

        // Runtime state of the flow is not part of the graph.
        let mut fired = rec.clone();
        fired.flow.last_triggered_at = Some(flowrun_core::Ts::now());
        assert_eq!(fresh(&defs, &fired, &t), first);

        // A changed action (stored as a new Arc), node, trigger or device list moves it.
        defs.actions
            .insert(action_id, action(action_id, json!({"n": 2})));
        let by_action = fresh(&defs, &rec, &t);
        assert_ne!(by_action, first);
        let by_node = fresh(&defs, &flow(flow_id, trigger_id, action_id, "k2"), &t);
        assert_ne!(by_node, by_action);
        let by_trigger = fresh(&defs, &rec, &trigger(trigger_id, "a.c"));
        assert_ne!(by_trigger, by_action);
        let mut with_device = rec.clone();
        with_device.flow.device_ids = vec![Uuid::from_u128(7)];
        assert_ne!(fresh(&defs, &with_device, &t), by_action);
    }
}
