//! What a run leaves besides its step results (§5.15, §5.18): screenshots (bytes stored as
//! artifacts, records in the execution state), delivery records at the terminal state, and
//! self-healing repair episodes opened by failed live runs.

use std::sync::Arc;

use flowrun_actions::CapturedImage;
use flowrun_core::Ts;
use flowrun_core::execution::{DeliveryRecord, ExecState, Screenshot, step_status};
use flowrun_store::{ArtifactRow, ExecutionRow, Registry, RepairRow, Store, StoreError};
use uuid::Uuid;

use crate::Shared;

/// Where a screenshot was taken, in §4.7 coordinates.
#[derive(Clone, Debug)]
pub(crate) struct ShotPlace {
    pub step_index: i64,
    pub iteration_index: i64,
    pub step_name: String,
    /// `task` | `agent`
    pub source: &'static str,
}

/// Stores an image's bytes and returns its `Screenshot` record (id = artifact id).
pub(crate) async fn store_screenshot(
    store: &Arc<dyn Store>,
    owner_id: &str,
    execution_id: Uuid,
    seq: i64,
    place: ShotPlace,
    image: CapturedImage,
    captured_at: Ts,
) -> Result<Screenshot, StoreError> {
    let id = Uuid::now_v7().to_string();
    store
        .insert_artifact(&ArtifactRow {
            id: id.clone(),
            owner_id: owner_id.to_string(),
            execution_id,
            mime_type: image.mime_type.clone(),
            bytes: image.bytes,
            created_at: Ts::now().millis(),
        })
        .await?;
    Ok(Screenshot {
        id,
        seq,
        source: place.source.to_string(),
        step_index: place.step_index,
        iteration_index: place.iteration_index,
        step_name: place.step_name,
        mime_type: image.mime_type,
        captured_at: Some(captured_at),
    })
}

/// Adds the flow's delivery records to a state that is becoming terminal (§5.18): one per
/// screenshot when `delivery.screenshots` is non-null. Local storage (`mobilerun`) holds the
/// bytes already, so those succeed; the cloud drives are never connected. This build records
/// no video, so `delivery.recording` produces a record only for a recording that exists —
/// none today. A state that already has deliveries keeps them (written once).
pub(crate) fn add_deliveries(
    registry: &Registry,
    owner_id: &str,
    flow_id: Uuid,
    state: &mut ExecState,
    at: Ts,
) {
    if !state.deliveries.is_empty() || state.screenshots.is_empty() {
        return;
    }
    let delivery = {
        let defs = registry.read();
        match defs.flow_any(owner_id, flow_id) {
            Some(rec) => rec.flow.delivery.clone(),
            None => None,
        }
    };
    let Some(delivery) = delivery else { return };
    if delivery.screenshots.as_ref().is_none_or(|v| v.is_null()) {
        return;
    }
    let local = delivery.destination == "mobilerun";
    state.deliveries = state
        .screenshots
        .iter()
        .map(|s| DeliveryRecord {
            artifact: "screenshot".to_string(),
            destination: delivery.destination.clone(),
            status: if local { "succeeded" } else { "failed" }.to_string(),
            filename: format!("screenshot-{}.{}", s.seq, extension(&s.mime_type)),
            folder: delivery.folder.clone(),
            step_index: (s.step_index >= 0).then_some(s.step_index),
            web_url: None,
            error_code: (!local).then(|| "not_connected".to_string()),
            started_at: Some(at),
            finished_at: Some(at),
        })
        .collect();
}

fn extension(mime: &str) -> &str {
    match mime {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        _ => "bin",
    }
}

/// A `failed` live run of a flow with self-healing opens a repair episode unless one is
/// still open (§5.15). No repair agent is configured in this build, so the record ends at
/// once `escalated` with `no_repair_agent`.
pub(crate) async fn open_repair(
    shared: &Arc<Shared>,
    row: &ExecutionRow,
    failed_step_index: i64,
    original_slug: &str,
) {
    let max_attempts = {
        let defs = shared.registry.read();
        match defs.flow_any(&row.owner_id, row.flow_id) {
            Some(rec) if rec.flow.self_healing_enabled => rec.flow.self_healing_max_attempts,
            _ => return,
        }
    };
    let now = Ts::now().millis();
    let repair = RepairRow {
        id: Uuid::now_v7(),
        owner_id: row.owner_id.clone(),
        flow_id: row.flow_id,
        episode: 0,
        attempt: 1,
        max_attempts,
        status: "escalated".to_string(),
        source_execution_id: row.id,
        failed_step_index,
        original_slug: original_slug.to_string(),
        candidate_slug: String::new(),
        device_id: row.device_id,
        agent_run_id: None,
        chat_session_id: None,
        verdict: None,
        error: Some("no_repair_agent".to_string()),
        started_at: Some(now),
        finished_at: Some(now),
        created_at: now,
        updated_at: now,
    };
    if let Err(e) = shared.store.open_repair(&repair).await {
        tracing::error!(error = %e, flow = %row.flow_id, "opening a repair failed");
    }
}

/// The step a lost worker's run failed at (after its open steps were failed): the first
/// failed top-level step, else the first skipped one.
pub(crate) fn failed_step(state: &ExecState) -> (i64, String) {
    let steps = state.result.as_ref().map(|r| &r.steps[..]).unwrap_or(&[]);
    steps
        .iter()
        .find(|s| s.status == step_status::FAILED)
        .or_else(|| steps.iter().find(|s| s.status == step_status::SKIPPED))
        .map(|s| (s.index, s.key.clone()))
        .unwrap_or((0, String::new()))
}
