//! Stored rows as the wire shows them (§4.7).

use flowrun_core::Ts;
use flowrun_core::execution::{
    ExecState, Execution, ExecutionListItem, ExecutionSummary, Metrics, MetricsByStatus,
};
use flowrun_store::{ExecMetrics, ExecutionRow};

fn ts(ms: Option<i64>) -> Option<Ts> {
    ms.and_then(Ts::from_millis)
}

fn summary(row: &ExecutionRow, state: &ExecState) -> ExecutionSummary {
    ExecutionSummary {
        id: row.id,
        flow_id: row.flow_id,
        flow_name: row.flow_name.clone(),
        trigger_id: row.trigger_id,
        trigger_name: row.trigger_name.clone(),
        event_id: row.event_id.clone(),
        invocation_id: row.invocation_id.clone(),
        kind: row.kind.clone(),
        status: Some(row.status.clone()),
        device_id: row.device_id,
        error: row.error.clone(),
        started_at: ts(row.started_at),
        finished_at: ts(row.finished_at),
        recording_id: state.recording_id.clone(),
        recording_device_id: state.recording_device_id.clone(),
        result: state.result.clone(),
    }
}

/// `ExecutionSummary` (abort response).
pub fn execution_summary(row: &ExecutionRow) -> ExecutionSummary {
    summary(row, &ExecState::parse(&row.state))
}

/// `ExecutionListItem`.
pub fn execution_list_item(row: &ExecutionRow) -> ExecutionListItem {
    let state = ExecState::parse(&row.state);
    ExecutionListItem {
        summary: summary(row, &state),
        created_by: row.created_by.clone(),
        recordings: state.recordings,
    }
}

/// `Execution` (the full record).
pub fn execution(row: &ExecutionRow) -> Execution {
    let state = ExecState::parse(&row.state);
    Execution {
        item: ExecutionListItem {
            summary: summary(row, &state),
            created_by: row.created_by.clone(),
            recordings: state.recordings.clone(),
        },
        agent_id: None,
        progress: state.progress,
        files: state.files,
        screenshots: state.screenshots,
        deliveries: state.deliveries,
    }
}

pub fn metrics(m: &ExecMetrics) -> Metrics {
    let b = m.by_status;
    Metrics {
        total: m.total,
        avg_duration_ms: m.avg_duration_ms,
        last_execution_at: ts(m.last_started_at),
        by_status: MetricsByStatus {
            pending: b[0],
            running: b[1],
            success: b[2],
            failed: b[3],
            cancelled: b[4],
            skipped: b[5],
            invalid: b[6],
        },
    }
}
