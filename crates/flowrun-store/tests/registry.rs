//! The registry's write-behind of `lastTriggeredAt`: memory at once, the store at the flush,
//! and a reload of an older stored copy never undoes a value not stored yet.

mod common;

use std::sync::Arc;

use flowrun_core::Ts;
use flowrun_core::model::FlowRecord;
use flowrun_store::{Change, DocKind, Registry};
use uuid::Uuid;

fn flow(id: Uuid) -> FlowRecord {
    serde_json::from_value(serde_json::json!({
        "flow": {
            "id": id, "name": "f", "description": null,
            "triggerId": Uuid::from_u128(1000), "deviceIds": [], "agentId": null,
            "lifecycleStatus": "enabled", "enabled": true,
            "archivedAt": null, "status": "healthy", "consecutiveFailures": 0,
            "lastFailureAt": null, "lastFailureCode": null, "blockedAt": null,
            "lastTriggeredAt": null, "healthMonitoringEnabled": true,
            "selfHealingEnabled": false, "selfHealingMaxAttempts": 3,
            "cooldownSeconds": null, "cooldownScope": "flow", "notifyOnSuccess": false,
            "notifyOnFailure": false, "notifyWebhookId": null,
            "recordingPolicy": {"mode": "off"}, "recordingEnabled": false,
            "delivery": null, "templateResolutionVersion": 3, "ownerId": "o",
            "createdBy": null, "userId": "o",
            "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-01T00:00:00.000Z"
        },
        "nodes": []
    }))
    .expect("flow record")
}

async fn stored_last_triggered(registry: &Registry, id: Uuid) -> Option<Ts> {
    let doc = registry
        .store()
        .load_doc(DocKind::Flow, &id.to_string())
        .await
        .unwrap()
        .expect("stored flow");
    let f: FlowRecord = serde_json::from_str(&doc.json).unwrap();
    f.flow.last_triggered_at
}

fn in_memory(registry: &Registry, id: Uuid) -> Option<Ts> {
    registry
        .read()
        .flow("o", id)
        .unwrap()
        .flow
        .last_triggered_at
}

#[tokio::test]
async fn last_triggered_at_is_written_behind() {
    common::on_each_backend(|store| async move {
        let registry = Arc::new(Registry::load(store).await.unwrap());
        let id = Uuid::new_v4();
        registry
            .apply(vec![Change::PutFlow(flow(id))])
            .await
            .unwrap();
        assert_eq!(registry.flush_behind().await.unwrap(), 0);

        let at = Ts::from_millis(1_800_000_000_000).unwrap();
        let mut fired = flow(id);
        fired.flow.last_triggered_at = Some(at);
        registry
            .apply_enqueue(
                Vec::new(),
                vec![fired],
                Vec::new(),
                Vec::new(),
                &[],
                at.millis(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(in_memory(&registry, id), Some(at), "memory at once");
        assert_eq!(stored_last_triggered(&registry, id).await, None);

        // A reload of the older stored copy keeps the value not stored yet.
        registry
            .reload(DocKind::Flow, &id.to_string())
            .await
            .unwrap();
        assert_eq!(in_memory(&registry, id), Some(at));

        assert_eq!(registry.flush_behind().await.unwrap(), 1);
        assert_eq!(stored_last_triggered(&registry, id).await, Some(at));
        assert_eq!(registry.flush_behind().await.unwrap(), 0, "nothing left");
    })
    .await;
}
