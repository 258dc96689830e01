//! The engine's series on `/metrics` (§3.12), recorded through the `metrics` facade: a no-op
//! until the binary installs a recorder, and a few atomic adds per event once it has.

use std::time::Duration;

use flowrun_store::ExecutionRow;

/// Rows committed by one enqueue batch, by status (`pending` or `skipped`).
pub(crate) fn enqueued(rows: &[ExecutionRow]) {
    let pending = rows.iter().filter(|r| r.status == "pending").count();
    let skipped = rows.len() - pending;
    if pending > 0 {
        metrics::counter!("flowrun_executions_enqueued_total", "status" => "pending")
            .increment(pending as u64);
    }
    if skipped > 0 {
        metrics::counter!("flowrun_executions_enqueued_total", "status" => "skipped")
            .increment(skipped as u64);
    }
}

/// A terminal write that won: counted by kind and status, with the run's duration.
pub(crate) fn finished(
    kind: &str,
    status: &str,
    started_ms: Option<i64>,
    finished_ms: Option<i64>,
) {
    metrics::counter!("flowrun_executions_finished_total",
        "kind" => kind.to_owned(), "status" => status.to_owned())
    .increment(1);
    if let (Some(s), Some(f)) = (started_ms, finished_ms) {
        metrics::histogram!("flowrun_execution_duration_seconds", "kind" => kind.to_owned())
            .record((f - s).max(0) as f64 / 1000.0);
    }
}

/// An abort that won; `took` runs from the request to the in-flight step's signal.
pub(crate) fn aborted(row: &ExecutionRow, took: Duration) {
    finished(&row.kind, "cancelled", row.started_at, row.finished_at);
    metrics::histogram!("flowrun_abort_to_cancel_seconds").record(took.as_secs_f64());
}

/// A schedule occurrence handed to fan-out, `late` after its fire instant.
pub(crate) fn schedule_fired(late: Duration) {
    metrics::histogram!("flowrun_schedule_lateness_seconds").record(late.as_secs_f64());
}

/// A webhook delivery attempt's outcome: `success`, `retry` or `dead`.
pub(crate) fn webhook_attempt(outcome: &'static str) {
    metrics::counter!("flowrun_webhook_deliveries_total", "outcome" => outcome).increment(1);
}
